// SPDX-License-Identifier: MIT
#pragma once
/// ISO9660 images (Rock Ridge and Joliet) written with libarchive: Packer's
/// cd_files / cd_content CD and cloud-init NoCloud seeds. File contents are
/// streamed, never held whole in memory; the image appears whole or not at
/// all.

#include <string>
#include <vector>

#include "result.hpp"

namespace kiln {

/// One thing to put on the image.
struct IsoEntry {
  enum class Kind { host, content };
  Kind kind = Kind::host;
  /// host: a file or directory on this machine (Packer's cd_files). A file
  /// lands at the root under its base name; a directory lands at the root
  /// under its own name with everything below it, or, when the path ends in
  /// "/", its contents land at the root. Symbolic links are followed: the
  /// target is copied where the link was.
  std::string source;
  /// content: the path on the image ("user-data", "a/b.cfg"); parent
  /// directories are made (Packer's cd_content).
  std::string path;
  std::string content;

  static IsoEntry host(std::string source) { return {Kind::host, std::move(source), {}, {}}; }
  static IsoEntry text(std::string path, std::string content) {
    return {Kind::content, {}, std::move(path), std::move(content)};
  }
};

/// Writes an ISO9660 image at `path` labelled `label` (its volume id, at
/// most 32 bytes; "" means Packer's default "packer"), holding `entries` in
/// order: a later entry replaces an earlier file at the same path, and
/// content entries replace host files (content takes precedence, as in
/// Packer). Errors: Exit::noinput (a source is missing or unreadable),
/// Exit::dataerr (bad label, a content path outside the image, a file and a
/// directory at the same path), Exit::cantcreat / Exit::ioerr (writing).
Status write_iso(const std::string& path, const std::string& label,
                 const std::vector<IsoEntry>& entries);

/// Writes a cloud-init NoCloud seed: an ISO labelled "cidata" holding
/// "meta-data" and "user-data". Errors: as write_iso().
Status write_cloud_init_seed(const std::string& path, const std::string& meta_data,
                             const std::string& user_data);

}  // namespace kiln

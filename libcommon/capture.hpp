// SPDX-License-Identifier: MIT
#pragma once
/// Capturing a provisioned machine: sysprep (kiln's `sysprep` key), a
/// graceful shutdown as Packer's qemu builder does it (with kiln's ACPI
/// fallback before a forced stop), and the one disk converted into every
/// image format the build asks for, in parallel, into Packer's
/// output_directory. Adds the record's "artifacts" section.

#include <rapidjson/document.h>

#include <chrono>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "disk_image.hpp"
#include "result.hpp"

namespace kiln::capture {

struct Options {
  /// News of each step, for the log.
  std::function<void(std::string_view)> say;
  /// Something the user should know that is not a failure.
  std::function<void(std::string_view)> warn;
  /// A line a remote command (sysprep, shutdown_command) printed.
  std::function<void(std::string_view line, bool is_stderr)> output;
  /// Conversion progress (see disk_image::ConvertOptions::progress).
  std::function<void(const disk_image::Progress&)> progress;
  /// Conversions at once; 0 = one per core.
  unsigned jobs = 0;
  /// Passphrase of an encrypted private key ("" = none).
  std::string passphrase;
  /// Secrets for messages stored in the record.
  std::vector<std::string> secrets;
};

/// The builder ids of Packer's artifacts.
inline constexpr std::string_view kQemuBuilderId = "transcend.qemu";
inline constexpr std::string_view kNullBuilderId = "fnoeding.null";

/// Captures the machine of `record` (a build record with a live "machine"
/// and no "error"): sysprep, shutdown, conversion; adds "artifacts", marks
/// the machine stopped and removes its run directory. A null build gets
/// Packer's null artifact (no files) and its host is left alone.
///
/// On failure before the machine is off, on_error=abort leaves it running
/// (the message says how to log in); otherwise it is stopped. A failure
/// or interrupt during conversion leaves no partial image, no temporary
/// file and no qemu-img; the output directory is removed as Packer removes
/// it. Errors: Exit::dataerr (no machine, already stopped), those of
/// sysprep (Exit::failed when its script failed), of the shutdown
/// (Exit::tempfail: the guest had to be killed and allow_unclean_shutdown
/// is not set), of disk_image::convert and OutputDirectory::prepare.
Status capture(rapidjson::Document& record, const Options& options);

/// What `capture --disk` converts without a machine.
struct DiskJob {
  std::string disk;                         ///< the source image
  std::vector<disk_image::Format> formats;  ///< first = primary
  std::string output_directory;
  std::string vm_name;  ///< "" = the disk's file name less its extension
  bool force = false;
  bool compress = false;  ///< qcow2 -c
};

/// Converts a disk without a machine and returns the "artifacts" section
/// for `record`'s allocator. Errors: as disk_image::convert, and
/// Exit::config for a bad job.
Status capture_disk(rapidjson::Document& record, const DiskJob& job, const Options& options);

}  // namespace kiln::capture

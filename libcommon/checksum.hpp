// SPDX-License-Identifier: MIT
#pragma once
/// Packer's checksum post-processor: digests of artifact files, written to
/// checksum files that `sha256sum -c` (and md5sum, sha1sum, ...) accept.
///
/// Packer's rules (post-processor/checksum/post-processor.go, 1.6.6):
///  - checksum_types defaults to ["md5"]; known: md5 sha1 sha224 sha256
///    sha384 sha512; anything else fails configuration with
///    "Unrecognized checksum type: X".
///  - output defaults to default_output and is rendered with the build's
///    template context plus {{.BuildName}}, {{.BuilderType}} and
///    {{.ChecksumType}}; missing folders are made (0755).
///  - for every type, then every file, one line "<lowercase hex>\t<base name
///    of the file>\n" is APPENDED to that type's file (an existing file keeps
///    its lines: several builds may share one file).
/// kiln reads every file once for all types, and rewrites each checksum
/// file atomically (old lines + new ones, under a lock beside it, so
/// parallel builds sharing a file lose nothing).

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "result.hpp"
#include "template_text.hpp"

namespace kiln::checksum {

/// The digests Packer's checksum post-processor knows.
enum class Algorithm { md5, sha1, sha224, sha256, sha384, sha512 };

/// "md5", "sha1"... (Packer's checksum_types spelling).
std::string_view name(Algorithm a);
/// The algorithm named `name` (exact, lowercase), or nullopt.
std::optional<Algorithm> parse_algorithm(std::string_view name);

/// Called with the bytes done so far and the total, from the caller's
/// thread, after each block.
using Progress = std::function<void(std::uint64_t done, std::uint64_t total)>;

/// Lowercase hex digests of the file at `path`, one per entry of
/// `algorithms` and in that order, reading the file once: blocks of 4 MiB
/// are read ahead while each algorithm digests them in its own thread.
/// Memory stays flat (a few blocks). Errors: Exit::noinput (cannot open),
/// Exit::ioerr (read error), Exit::interrupted (a signal arrived; checked
/// between blocks), Exit::software (OpenSSL refused the digest).
Result<std::vector<std::string>> digest_file(const std::string& path,
                                             const std::vector<Algorithm>& algorithms,
                                             const Progress& progress = {});

/// Packer's line for one file: "<hex>\t<base name of file>\n".
/// (GNU sha256sum -c accepts a tab as the separator; see checksum_test.)
std::string line(std::string_view hex, std::string_view file);

/// Packer's default output template.
inline constexpr std::string_view default_output =
    "packer_{{.BuildName}}_{{.BuilderType}}_{{.ChecksumType}}.checksum";

/// The post-processor's settings, as in the template.
struct Options {
  std::vector<std::string> checksum_types;  ///< empty = Packer's ["md5"]
  std::string output;                       ///< template; "" = default_output
  std::string build_name;                   ///< {{.BuildName}}
  std::string builder_type;                 ///< {{.BuilderType}}
  /// A file's SHA-256 when it is known already and still right (capture
  /// digests the images it writes); only used when sha256 is the one type.
  std::function<std::optional<std::string>(const std::string& path)> known_sha256;
};

/// Checks the settings as Packer's Configure does: every type known and the
/// output template's syntax. Errors: Exit::config naming the bad value.
Status check(const Options& options);

/// One checksum file written.
struct Written {
  std::string path;      ///< as rendered from the output template
  std::string type;      ///< the checksum type of its lines (first, if shared)
  bool created = false;  ///< it did not exist before (Packer then adds it
                         ///< to the artifact's files)
};

/// Runs the post-processor on an artifact's `files`: renders each type's
/// output with `context` (its fields plus BuildName, BuilderType and
/// ChecksumType), digests every file (one read per file for all types) and
/// appends the lines. Nothing is written unless every digest succeeded.
/// Errors: those of check(), of rendering (Exit::dataerr), of digest_file,
/// Exit::cantcreat/ioerr (cannot write a checksum file), Exit::tempfail
/// (another process held a checksum file's lock for too long).
Result<std::vector<Written>> run(const std::vector<std::string>& files, const Options& options,
                                 const tmpl::Context& context, const Progress& progress = {});

}  // namespace kiln::checksum

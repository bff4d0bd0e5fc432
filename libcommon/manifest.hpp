// SPDX-License-Identifier: MIT
#pragma once
/// Packer's manifest post-processor: a JSON file listing every build's
/// artifact files, appended to across builds and runs.
///
/// The file, exactly as Packer 1.6.6 writes it (post-processor/manifest/
/// post-processor.go and artifact.go, encoding/json's MarshalIndent with
/// prefix "" and indent "  ", no newline at the end):
///
///     {
///       "builds": [
///         {
///           "name": "web",                  build name (string)
///           "builder_type": "qemu",         (string)
///           "build_time": 1700000000,       unix seconds (integer); the
///                                           key is left out when 0
///                                           (strip_time)
///           "files": [                      null when the artifact has none
///             {
///               "name": "out/disk.qcow2",   as given, or its base name
///                                           (strip_path)
///               "size": 123                 bytes (integer); 0 when the
///                                           file cannot be stat'ed
///             }
///           ],
///           "artifact_id": "",              (string)
///           "packer_run_uuid": "…",         (string, "" when unset)
///           "custom_data": null             null, or an object of strings
///                                           with its keys sorted
///         }
///       ],
///       "last_run_uuid": "…"
///     }
///
/// Strings are escaped as Go does: \" \\ \n \r \t, other control
/// characters and < > & U+2028 U+2029 as \u00XX/\u20XX (lowercase hex),
/// invalid UTF-8 as \ufffd. Empty arrays and objects are written "[]" and
/// "{}". An existing manifest is read with Go's json.Unmarshal rules
/// (unknown keys dropped, keys matched case-insensitively, null leaves a
/// field empty) and rewritten whole.

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "result.hpp"

namespace kiln::manifest {

/// One artifact file of a build.
struct File {
  std::string name;
  std::int64_t size = 0;
};

/// One entry of "builds".
struct Build {
  std::string name;
  std::string builder_type;
  std::int64_t build_time = 0;             ///< 0: key left out
  std::optional<std::vector<File>> files;  ///< nullopt: null
  std::string artifact_id;
  std::string packer_run_uuid;
  std::optional<std::map<std::string, std::string>> custom_data;  ///< nullopt: null
};

/// The whole file.
struct Manifest {
  std::optional<std::vector<Build>> builds;  ///< nullopt: null
  std::string last_run_uuid;
};

/// The manifest's text, byte for byte as Packer writes it.
std::string to_json(const Manifest& manifest);

/// Reads a manifest's text as Packer does (json.Unmarshal into its
/// structs). Errors: Exit::dataerr (not JSON, or a member of the wrong
/// type), naming `name`.
Result<Manifest> parse(std::string_view text, const std::string& name);

/// Packer's default output.
inline constexpr std::string_view default_output = "packer-manifest.json";

/// The post-processor's settings, as in the template (already rendered:
/// output and custom_data values are template strings in Packer, rendered
/// by the caller with the build's context).
struct Options {
  std::string output;       ///< "" = default_output
  bool strip_path = false;  ///< record base names only
  bool strip_time = false;  ///< leave build_time out
  std::optional<std::map<std::string, std::string>> custom_data;
  bool force = false;    ///< Packer's -force: a manifest of another run
                         ///< (last_run_uuid != run_uuid) starts afresh
  std::string run_uuid;  ///< PACKER_RUN_UUID of this run; may be ""
  std::chrono::milliseconds lock_timeout{60000};
};

/// The artifact the entry describes.
struct Artifact {
  std::string build_name;
  std::string builder_type;
  std::string id;                  ///< artifact_id
  std::vector<std::string> files;  ///< paths as the build reported them
};

/// The entry Packer would add for `artifact` at unix time `now`: file
/// sizes from stat (0 when missing), strip_path, strip_time, custom_data.
Build entry(const Artifact& artifact, const Options& options, std::int64_t now);

/// Adds entry(artifact, options, now) to the manifest at options.output,
/// creating it (and its folder) when missing; under an UpdateLock so that
/// parallel builds lose nothing, and rewritten atomically (the file's mode
/// is kept; 0644 when new). Returns the path written. Errors:
/// Exit::dataerr (the existing manifest does not parse), Exit::tempfail
/// (the lock was held longer than lock_timeout), Exit::interrupted,
/// Exit::cantcreat/ioerr.
Result<std::string> record(const Artifact& artifact, const Options& options, std::int64_t now);

/// An exclusive lock on updating `path` that other processes honour: an
/// flock(2) on "<path>.lock" (Packer's lock file name), which is removed
/// when the lock is released. Whoever rewrites a shared file (a manifest, a
/// checksum file) holds one around read-modify-rename.
class UpdateLock {
 public:
  /// Waits up to `timeout` for the lock. Errors: Exit::cantcreat (cannot
  /// create the lock file), Exit::tempfail (timed out), Exit::interrupted.
  static Result<UpdateLock> acquire(
      const std::filesystem::path& path,
      std::chrono::milliseconds timeout = std::chrono::milliseconds(60000));

  UpdateLock(UpdateLock&& other) noexcept;
  UpdateLock& operator=(UpdateLock&&) = delete;
  UpdateLock(const UpdateLock&) = delete;
  ~UpdateLock();

 private:
  UpdateLock(std::filesystem::path lock, int fd) : lock_(std::move(lock)), fd_(fd) {}
  std::filesystem::path lock_;
  int fd_ = -1;
};

}  // namespace kiln::manifest

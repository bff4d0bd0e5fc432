// SPDX-License-Identifier: MIT
#pragma once
/// Disk images with qemu-img: what an image is (info, check), where a
/// build's images go (Packer's output_directory, vm_name and format rules),
/// and turning one provisioned disk into images for several platforms at
/// once (convert), each written whole or not at all.

#include <sys/stat.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "result.hpp"

namespace kiln::disk_image {

/// The image formats kiln writes. qcow2 and raw are Packer's qemu formats;
/// vmdk (streamOptimized: VMware, OVA), vhdx (dynamic: Hyper-V) and vdi
/// (dynamic: VirtualBox) are kiln's extra ones.
enum class Format { qcow2, raw, vmdk, vhdx, vdi };

/// Every format, in the order above.
const std::vector<Format>& formats();
/// qemu-img's name of the format ("qcow2", "raw", ...).
std::string_view name(Format format);
/// The file extension without the dot; the same as the name for all five.
std::string_view extension(Format format);
/// Parses a format name. Errors: Exit::config naming the formats, with a
/// suggestion for a likely misspelling.
Result<Format> parse_format(std::string_view name);

/// What `qemu-img info` says of an image.
struct Info {
  std::string format;              ///< qemu's name: qcow2, raw, vmdk, ...
  std::uint64_t virtual_size = 0;  ///< the size the guest sees, bytes
  std::uint64_t actual_size = 0;   ///< bytes allocated on the host
  std::string backing_file;        ///< as recorded in the image; "" = none
  std::string full_backing_file;   ///< resolved by qemu-img; "" = none
  std::string backing_format;      ///< "" when not recorded
};

/// Reads an image's header with `qemu-img info --output=json -U` (shared
/// lock: works while a machine still has the disk open). Errors:
/// Exit::noinput (missing or unreadable), Exit::dataerr (not an image
/// qemu-img understands), Exit::unavailable (qemu-img missing).
Result<Info> info(const std::string& path);

/// What `qemu-img check` found.
struct CheckReport {
  bool supported = true;              ///< false: the format has no consistency check
  std::uint64_t leaked_clusters = 0;  ///< wasted space, not damage
};

/// Checks an image's consistency with `qemu-img check` (qcow2, vmdk, vhdx
/// and vdi have a check; raw has none: supported=false). Errors:
/// Exit::dataerr (corrupt: qemu-img's findings in the message),
/// Exit::noinput (missing), Exit::ioerr (the check itself failed).
Result<CheckReport> check(const std::string& path);

// ---------------------------------------------------------------- naming

/// Packer's default vm_name: "packer-" + the build's name.
std::string default_vm_name(std::string_view build_name);
/// Packer's default output_directory: "output-" + the build's name.
std::string default_output_directory(std::string_view build_name);

/// One image to write.
struct Target {
  std::filesystem::path path;
  Format format = Format::qcow2;
  /// qcow2 only: compressed clusters (`-c`, Packer's disk_compression).
  bool compress = false;
  /// Packer's skip_compaction: the source file is copied as it is (holes
  /// kept) instead of converted, so a qcow2 overlay stays an overlay on
  /// its backing file (Packer's use_backing_file), referred to by an
  /// absolute path. Needs a source of the target's format. Ignored when
  /// `compress` is set: Packer then converts anyway.
  bool skip_compaction = false;
};

/// Where a build's images go: the primary image is output_directory/vm_name
/// exactly as given (Packer adds no extension); each extra format is
/// vm_name with its extension replaced when it ends in one of the known
/// image extensions (.qcow2 .raw .img .vmdk .vhdx .vdi), else appended:
/// "demo.qcow2" + vmdk -> "demo.vmdk", "demo" + vmdk -> "demo.vmdk".
/// Extra formats equal to the primary one or repeated are dropped. The
/// primary target comes first. Errors: Exit::config (vm_name empty, ".",
/// "..", or with a '/'; two images would get the same name).
Result<std::vector<Target>> plan_targets(const std::filesystem::path& output_directory,
                                         const std::string& vm_name, Format format,
                                         const std::vector<Format>& extra_formats);

/// Packer's check of output_directory before a build: it must not exist
/// unless `force`. Errors: Exit::cantcreat ("Output directory 'X' already
/// exists. It must not exist.").
Status check_output_directory(const std::filesystem::path& dir, bool force);

/// A build's output directory, made for this build. With `force` an
/// existing one is deleted first (Packer's -force). Destroyed before
/// keep(), it is removed with everything in it, as Packer removes it when
/// a build fails or is cancelled.
class OutputDirectory {
 public:
  /// Errors: Exit::cantcreat (exists without force; cannot be made or
  /// removed), Exit::config (force on "/", the current directory, one of
  /// its parents or the home directory, which are never deleted).
  static Result<OutputDirectory> prepare(const std::filesystem::path& dir, bool force);

  OutputDirectory(OutputDirectory&& other) noexcept;
  OutputDirectory& operator=(OutputDirectory&&) = delete;
  OutputDirectory(const OutputDirectory&) = delete;
  ~OutputDirectory();

  const std::filesystem::path& path() const { return path_; }
  /// The build succeeded: the directory stays.
  void keep() { kept_ = true; }

 private:
  explicit OutputDirectory(std::filesystem::path p) : path_(std::move(p)) {}
  std::filesystem::path path_;
  bool kept_ = false;
};

// ------------------------------------------------------------ conversion

/// One image written by convert().
struct Artifact {
  std::filesystem::path path;
  Format format = Format::qcow2;
  std::uint64_t size = 0;          ///< the file's length (st_size, what ls -l shows)
  std::uint64_t allocated = 0;     ///< bytes it takes on disk (st_blocks * 512; less for holes)
  std::uint64_t virtual_size = 0;  ///< the guest's disk size, from qemu-img info
  std::string sha256;              ///< lowercase hex of the file; "" when not asked
  std::int64_t mtime_ns = 0;       ///< its modification time when digested (ns since 1970)
};

/// A file's modification time in nanoseconds since 1970: an artifact's
/// mtime_ns in the record (taken when capture digests an image; compared by
/// artifact-post before it uses that digest again).
inline std::int64_t mtime_ns(const struct stat& st) {
  return static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
}

enum class Stage { converting, digesting, done };

/// Progress of one target, and of the whole run.
struct Progress {
  std::size_t target = 0;  ///< index into the targets given
  Stage stage = Stage::converting;
  double fraction = 0;  ///< of this stage, 0..1 (qemu-img convert -p for converting)
  double overall = 0;   ///< of the whole run, 0..1 (conversion counts 4/5 of a
                        ///< target when it is digested, the digest 1/5)
};

struct ConvertOptions {
  /// Targets converted at once; 0 = std::thread::hardware_concurrency().
  unsigned jobs = 0;
  /// On failure also remove the targets this run already finished.
  bool all_or_nothing = false;
  /// Compute each output's sha256: one more streaming pass over it (holes
  /// are not read), on a thread of its own while the other targets
  /// convert. It cannot overlap its own conversion: qemu-img rewrites a
  /// qcow2's tables at the end, so the file is final only then.
  bool digest = true;
  /// Called on the calling thread: for each target at work, at most every
  /// 100 ms; and once with Stage::done when a target's file is in place.
  std::function<void(const Progress&)> progress;
  /// The whole run's limit; 0 = none.
  std::chrono::milliseconds timeout{0};
};

/// Converts the disk at `source` (any format qemu-img reads; a backing
/// chain is flattened) into every target at once, up to `jobs` at a time,
/// each with `qemu-img convert -p -f SRC -O FMT` plus Packer's options (-c
/// for compress; -o subformat=streamOptimized for vmdk, subformat=dynamic
/// for vhdx). Each image is written under its final file name in a hidden
/// folder beside it (vmdk records its own file name inside), digested, and
/// renamed onto `path` (replacing a file there) only when complete. If the
/// source is still locked by a machine shutting down, a conversion is
/// retried (10 tries, 1 s more each time), as Packer does.
/// On failure, interrupt (signals::interrupted) or timeout every running
/// qemu-img is ended and waited for, and every partial file and hidden
/// folder removed; finished targets stay unless all_or_nothing.
/// Returns the artifacts in the targets' order. Memory stays flat.
/// Errors: Exit::noinput (source missing), Exit::config (no targets, the
/// same path twice, compress with a format other than qcow2,
/// skip_compaction with a source of another format), Exit::cantcreat
/// (a target's folder missing or not writable), Exit::ioerr (qemu-img
/// failed: its message included; disk full), Exit::tempfail (timeout, or
/// the source stayed locked), Exit::interrupted.
Result<std::vector<Artifact>> convert(const std::string& source, const std::vector<Target>& targets,
                                      const ConvertOptions& options = {});

/// Lowercase hex SHA-256 of a file in 8 MiB reads; holes (SEEK_HOLE) are
/// hashed as the zeros they read as, without reading them. Stops early
/// (Exit::interrupted) when `stop` returns true between blocks;
/// `done_bytes` hears how far it got. Errors: Exit::noinput (cannot open),
/// Exit::ioerr (read failed).
Result<std::string> file_sha256(const std::string& path, const std::function<bool()>& stop = {},
                                const std::function<void(std::uint64_t)>& done_bytes = {});

}  // namespace kiln::disk_image

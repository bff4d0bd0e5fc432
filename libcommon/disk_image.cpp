// SPDX-License-Identifier: MIT
#include "disk_image.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <rapidjson/document.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/process.hpp>
#include <boost/process/extend.hpp>
#include <cerrno>
#include <cstring>
#include <future>
#include <memory>
#include <optional>
#include <set>
#include <thread>

#include "fd.hpp"
#include "process.hpp"
#include "signals.hpp"
#include "text.hpp"

namespace kiln::disk_image {

namespace fs = std::filesystem;
namespace bp = boost::process;
using Clock = std::chrono::steady_clock;

// ------------------------------------------------------------ formats

const std::vector<Format>& formats() {
  static const std::vector<Format> all = {Format::qcow2, Format::raw, Format::vmdk, Format::vhdx,
                                          Format::vdi};
  return all;
}

std::string_view name(Format format) {
  switch (format) {
    case Format::qcow2:
      return "qcow2";
    case Format::raw:
      return "raw";
    case Format::vmdk:
      return "vmdk";
    case Format::vhdx:
      return "vhdx";
    case Format::vdi:
      return "vdi";
  }
  return "?";
}

std::string_view extension(Format format) { return name(format); }

Result<Format> parse_format(std::string_view word) {
  std::vector<std::string> names;
  for (Format f : formats()) {
    if (name(f) == word) return f;
    names.emplace_back(name(f));
  }
  std::string message = "unknown image format '" + std::string(word) + "'";
  if (auto close = text::suggest(word, names); !close.empty())
    message += "; did you mean '" + close + "'?";
  message += " The formats are " + text::join(names, ", ");
  return Error(Exit::config, message);
}

// ------------------------------------------------------------ qemu-img

namespace {

/// The last non-empty line of qemu-img's stderr: its error message.
std::string last_line(std::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' '))
    text.remove_suffix(1);
  size_t nl = text.find_last_of('\n');
  return std::string(nl == std::string_view::npos ? text : text.substr(nl + 1));
}

std::string trimmed(std::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' '))
    text.remove_suffix(1);
  return std::string(text);
}

Status readable(const std::string& path) {
  if (::access(path.c_str(), R_OK) != 0)
    return Error(Exit::noinput, "cannot read image " + path + ": " + std::strerror(errno));
  return {};
}

constexpr auto kQuickTimeout = std::chrono::seconds(120);

process::Command command(std::string program, std::vector<std::string> args) {
  process::Command cmd;
  cmd.program = std::move(program);
  cmd.args = std::move(args);
  return cmd;
}

}  // namespace

Result<Info> info(const std::string& path) {
  if (auto st = readable(path); !st) return st.error();
  auto out =
      process::run(command("qemu-img", {"info", "--output=json", "-U", path}), kQuickTimeout);
  if (!out) return out.error();
  if (out->exit_code != 0)
    return Error(Exit::dataerr, "qemu-img cannot read " + path + ": " + last_line(out->err));

  rapidjson::Document doc;
  doc.Parse(out->out.c_str());
  if (doc.HasParseError() || !doc.IsObject())
    return Error(Exit::software, "qemu-img info gave no JSON object for " + path);
  Info info;
  auto str = [&](const char* key) -> std::string {
    auto it = doc.FindMember(key);
    return it != doc.MemberEnd() && it->value.IsString() ? it->value.GetString() : "";
  };
  auto num = [&](const char* key) -> std::uint64_t {
    auto it = doc.FindMember(key);
    return it != doc.MemberEnd() && it->value.IsUint64() ? it->value.GetUint64() : 0;
  };
  info.format = str("format");
  info.virtual_size = num("virtual-size");
  info.actual_size = num("actual-size");
  info.backing_file = str("backing-filename");
  info.full_backing_file = str("full-backing-filename");
  info.backing_format = str("backing-filename-format");
  return info;
}

Result<CheckReport> check(const std::string& path) {
  if (auto st = readable(path); !st) return st.error();
  auto out = process::run(command("qemu-img", {"check", path}), std::chrono::minutes(30));
  if (!out) return out.error();
  CheckReport report;
  // qemu-img check's exit codes: 0 clean, 1 check failed, 2 corrupt,
  // 3 leaked clusters only, 63 the format has no check.
  switch (out->exit_code) {
    case 0:
      return report;
    case 3: {
      const std::string& text = out->out;
      size_t at = text.find(" leaked clusters were found");
      if (at != std::string::npos) {
        size_t begin = text.find_last_not_of("0123456789", at - 1);
        begin = begin == std::string::npos ? 0 : begin + 1;
        report.leaked_clusters = std::strtoull(text.c_str() + begin, nullptr, 10);
      }
      return report;
    }
    case 63:
      report.supported = false;
      return report;
    case 2:
      return Error(Exit::dataerr, "image " + path + " is corrupt: " +
                                      trimmed(out->out.empty() ? out->err : out->out));
    default:
      return Error(Exit::ioerr,
                   "qemu-img check of " + path + " failed: " + last_line(out->err + out->out));
  }
}

// ------------------------------------------------------------ naming

std::string default_vm_name(std::string_view build_name) {
  return "packer-" + std::string(build_name);
}

std::string default_output_directory(std::string_view build_name) {
  return "output-" + std::string(build_name);
}

Result<std::vector<Target>> plan_targets(const fs::path& output_directory,
                                         const std::string& vm_name, Format format,
                                         const std::vector<Format>& extra_formats) {
  if (vm_name.empty() || vm_name == "." || vm_name == ".." ||
      vm_name.find('/') != std::string::npos)
    return Error(Exit::config, "vm_name '" + vm_name + "' is not a file name");

  // The stem loses an image extension, never any other suffix: "web.v2"
  // + vmdk is "web.v2.vmdk".
  std::string stem = vm_name;
  static const std::vector<std::string> known = {".qcow2", ".raw",  ".img",
                                                 ".vmdk",  ".vhdx", ".vdi"};
  for (const auto& ext : known)
    if (stem.size() > ext.size() && stem.compare(stem.size() - ext.size(), ext.size(), ext) == 0) {
      stem.resize(stem.size() - ext.size());
      break;
    }

  std::vector<Target> targets;
  targets.push_back({output_directory / vm_name, format});
  for (Format extra : extra_formats) {
    bool seen = false;
    for (const auto& t : targets) seen = seen || t.format == extra;
    if (seen) continue;
    Target t{output_directory / (stem + "." + std::string(extension(extra))), extra};
    for (const auto& other : targets)
      if (other.path == t.path)
        return Error(Exit::config, "the " + std::string(name(extra)) + " image and the " +
                                       std::string(name(other.format)) + " image would both be " +
                                       t.path.string() + "; give vm_name another extension");
    targets.push_back(std::move(t));
  }
  return targets;
}

Status check_output_directory(const fs::path& dir, bool force) {
  std::error_code ec;
  if (!force && fs::exists(fs::symlink_status(dir, ec)))
    return Error(Exit::cantcreat,
                 "Output directory '" + dir.string() + "' already exists. It must not exist.");
  return {};
}

namespace {

/// Directories that -force never deletes: the root, the working
/// directory or one of its parents, and the home directory.
bool too_precious_to_delete(const fs::path& dir) {
  std::error_code ec;
  fs::path target = fs::weakly_canonical(fs::absolute(dir, ec), ec);
  if (ec || target.empty() || target == target.root_path()) return true;
  fs::path cwd = fs::weakly_canonical(fs::current_path(ec), ec);
  for (fs::path p = cwd; !p.empty(); p = p.parent_path()) {
    if (p == target) return true;
    if (p == p.parent_path()) break;
  }
  if (const char* home = ::getenv("HOME"); home && *home)
    if (fs::weakly_canonical(home, ec) == target) return true;
  return false;
}

}  // namespace

Result<OutputDirectory> OutputDirectory::prepare(const fs::path& dir, bool force) {
  if (auto st = check_output_directory(dir, force); !st) return st.error();
  std::error_code ec;
  if (fs::exists(fs::symlink_status(dir, ec))) {
    if (too_precious_to_delete(dir))
      return Error(Exit::config, "refusing to delete output directory '" + dir.string() +
                                     "' for -force: it is the root, the home directory or "
                                     "holds the current directory");
    fs::remove_all(dir, ec);
    if (ec)
      return Error(Exit::cantcreat, "cannot delete previous output directory '" + dir.string() +
                                        "': " + ec.message());
  }
  fs::create_directories(dir, ec);
  if (ec)
    return Error(Exit::cantcreat,
                 "cannot create output directory '" + dir.string() + "': " + ec.message());
  return OutputDirectory(dir);
}

OutputDirectory::OutputDirectory(OutputDirectory&& other) noexcept
    : path_(std::move(other.path_)), kept_(other.kept_) {
  other.kept_ = true;  // the moved-from object owns nothing to remove
}

OutputDirectory::~OutputDirectory() {
  if (kept_ || path_.empty()) return;
  std::error_code ec;
  fs::remove_all(path_, ec);
}

// ------------------------------------------------------------ digest

namespace {

std::string to_hex(const unsigned char* bytes, unsigned len) {
  static const char* hex = "0123456789abcdef";
  std::string s;
  s.reserve(len * 2);
  for (unsigned i = 0; i < len; ++i) {
    s += hex[bytes[i] >> 4];
    s += hex[bytes[i] & 15];
  }
  return s;
}

}  // namespace

Result<std::string> file_sha256(const std::string& path, const std::function<bool()>& stop,
                                const std::function<void(std::uint64_t)>& done_bytes) {
  UniqueFd file(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (file.get() < 0)
    return Error(Exit::noinput, "cannot read " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(file.get(), &st) != 0)
    return Error(Exit::ioerr, "cannot read " + path + ": " + std::strerror(errno));
  ::posix_fadvise(file.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1)
    return Error(Exit::software, "cannot set up SHA-256");
  auto read_error = [&] {
    return Error(Exit::ioerr, "cannot read " + path + ": " + std::strerror(errno));
  };

  // Big reads: a freshly written image is in the page cache, so the cost
  // is the hash plus one syscall per block. Holes (most of a sparse raw
  // image) are hashed from a buffer of zeros instead of read: reading them
  // would fill the page cache with zeroed pages, which is slow and evicts
  // what other work needs.
  constexpr size_t kBlock = 8 << 20;
  std::vector<unsigned char> buf(kBlock);
  std::vector<unsigned char> zeros;
  const off_t size = st.st_size;
  off_t pos = 0;
  while (pos < size) {
    off_t data = ::lseek(file.get(), pos, SEEK_DATA);
    if (data < 0) data = errno == ENXIO ? size : pos;  // ENXIO: a hole to the end
    off_t hole = data < size ? ::lseek(file.get(), data, SEEK_HOLE) : size;
    if (hole < 0) hole = size;
    if (data > pos && zeros.empty()) zeros.resize(kBlock);
    for (off_t at = pos; at < data;) {
      if (stop && stop()) return Error(Exit::interrupted, "digest of " + path + " interrupted");
      size_t n = static_cast<size_t>(std::min<off_t>(data - at, kBlock));
      EVP_DigestUpdate(ctx.get(), zeros.data(), n);
      at += static_cast<off_t>(n);
      if (done_bytes) done_bytes(static_cast<std::uint64_t>(at));
    }
    for (off_t at = data; at < hole;) {
      if (stop && stop()) return Error(Exit::interrupted, "digest of " + path + " interrupted");
      size_t want = static_cast<size_t>(std::min<off_t>(hole - at, kBlock));
      ssize_t n = ::pread(file.get(), buf.data(), want, at);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return read_error();
      if (n == 0) {  // shorter than fstat said: it changed under us
        errno = EIO;
        return read_error();
      }
      EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(n));
      at += n;
      if (done_bytes) done_bytes(static_cast<std::uint64_t>(at));
    }
    pos = hole;
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &len);
  return to_hex(md, len);
}

// ------------------------------------------------------------ conversion

namespace {

/// Puts qemu-img in a process group of its own: a terminal's Ctrl-C then
/// reaches only the tool, which ends its children in order and cleans up.
/// If the tool itself is killed (kill -9), qemu-img gets SIGKILL too, so
/// that no conversion goes on writing for nobody.
struct OwnProcessGroup : bp::extend::handler {
  template <class Executor>
  void on_exec_setup(Executor&) const {
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  }
};

/// A folder beside the targets ("<dir>/.kiln-convert-XXXXXX") where each
/// image is written under its final name; removed with whatever is left in
/// it.
class Staging {
 public:
  static Result<std::unique_ptr<Staging>> create(const fs::path& dir) {
    std::string pattern = ((dir.empty() ? fs::path(".") : dir) / ".kiln-convert-XXXXXX").string();
    if (!::mkdtemp(pattern.data()))
      return Error(Exit::cantcreat, "cannot create files in " +
                                        (dir.empty() ? std::string(".") : dir.string()) + ": " +
                                        std::strerror(errno));
    return std::unique_ptr<Staging>(new Staging(pattern));
  }
  ~Staging() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;
  const fs::path& path() const { return path_; }

 private:
  explicit Staging(fs::path p) : path_(std::move(p)) {}
  fs::path path_;
};

/// A background step on a thread of its own (a sparse copy or a digest):
/// reports bytes done, stops when asked.
struct Worker {
  std::thread thread;
  std::atomic<std::uint64_t> done{0};
  std::atomic<bool> finished{false};
  std::uint64_t total = 0;
  Status status;                     // read only after `finished`
  std::string sha256;                // likewise
  std::optional<Result<Info>> info;  // likewise: the image's, beside a digest

  ~Worker() {
    if (thread.joinable()) thread.join();
  }
};

/// Copies a file keeping its holes (SEEK_DATA/SEEK_HOLE, then
/// copy_file_range, which reflinks where the filesystem can).
Status sparse_copy(const std::string& from, const std::string& to, const std::atomic<bool>& stop,
                   std::atomic<std::uint64_t>& done) {
  UniqueFd in(::open(from.c_str(), O_RDONLY | O_CLOEXEC));
  if (in.get() < 0)
    return Error(Exit::noinput, "cannot read " + from + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(in.get(), &st) != 0)
    return Error(Exit::ioerr, "cannot read " + from + ": " + std::strerror(errno));
  UniqueFd out(::open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (out.get() < 0)
    return Error(Exit::cantcreat, "cannot create " + to + ": " + std::strerror(errno));
  const off_t size = st.st_size;
  auto write_error = [&] {
    return Error(Exit::ioerr, "cannot copy " + from + " to " + to + ": " + std::strerror(errno));
  };
  std::vector<char> buf;
  off_t pos = 0;
  while (pos < size) {
    off_t data = ::lseek(in.get(), pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // only a hole is left
      data = pos;                 // no hole support: all data
    }
    off_t hole = ::lseek(in.get(), data, SEEK_HOLE);
    if (hole < 0) hole = size;
    for (off_t at = data; at < hole;) {
      if (stop) return Error(Exit::interrupted, "copy of " + from + " interrupted");
      size_t chunk = static_cast<size_t>(std::min<off_t>(hole - at, 64 << 20));
      loff_t src = at, dst = at;
      ssize_t n = ::copy_file_range(in.get(), &src, out.get(), &dst, chunk, 0);
      if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP)) {
        if (buf.empty()) buf.resize(8 << 20);
        n = ::pread(in.get(), buf.data(), std::min(chunk, buf.size()), at);
        if (n > 0 && ::pwrite(out.get(), buf.data(), static_cast<size_t>(n), at) != n) n = -1;
      }
      if (n < 0) {
        if (errno == EINTR) continue;
        return write_error();
      }
      if (n == 0) break;
      at += n;
      done = static_cast<std::uint64_t>(at);
    }
    pos = hole;
  }
  if (::ftruncate(out.get(), size) != 0) return write_error();
  done = static_cast<std::uint64_t>(size);
  return {};
}

bool lock_conflict(const std::string& err) {
  return err.find("Failed to get shared \"write\" lock") != std::string::npos ||
         err.find("Failed to get \"write\" lock") != std::string::npos;
}

/// The last "(12.34/100%)" qemu-img convert -p printed, as 0..1.
std::optional<double> parse_progress(std::string_view text) {
  size_t end = text.rfind("/100%)");
  if (end == std::string_view::npos) return std::nullopt;
  size_t open = text.rfind('(', end);
  if (open == std::string_view::npos) return std::nullopt;
  std::string number(text.substr(open + 1, end - open - 1));
  char* stop = nullptr;
  double percent = std::strtod(number.c_str(), &stop);
  if (stop == number.c_str()) return std::nullopt;
  return std::clamp(percent / 100.0, 0.0, 1.0);
}

constexpr int kLockTries = 10;

/// One target's way through the run.
struct Job {
  enum class State { waiting, retry_wait, converting, copying, digesting, done, failed };

  std::size_t index = 0;
  Target target;
  fs::path staged;  ///< the file being written, under its final name
  State state = State::waiting;
  bool copy = false;  ///< skip_compaction: a sparse copy, not a conversion

  // qemu-img convert
  bp::child child;
  pid_t group = 0;
  std::unique_ptr<bp::async_pipe> out_pipe, err_pipe;
  std::array<char, 4096> out_buf{}, err_buf{};
  bool out_open = false, err_open = false;
  std::string out_tail, err_text;
  int tries = 0;
  Clock::time_point retry_at;

  std::unique_ptr<Worker> worker;
  double convert_fraction = 0;
  double digest_fraction = 0;
  Artifact artifact;
  bool finalized = false;  ///< renamed onto its path
};

/// The run's loop on the calling thread: qemu-img children on one
/// io_context, copies and digests on worker threads, progress and every
/// rename from here. (process::run_streaming is tied to the process-wide
/// interrupt; here one target's failure must end its siblings too, so the
/// children are kept by hand, in their own process groups as it does.)
class Run {
 public:
  Run(std::string qemu_img, const std::string& source, const Info& source_info,
      const ConvertOptions& options, std::vector<Job>& jobs)
      : qemu_img_(std::move(qemu_img)),
        source_(source),
        source_info_(source_info),
        options_(options),
        jobs_(jobs),
        guard_(boost::asio::make_work_guard(io_)) {
    // Compressing (streamOptimized vmdk, qcow2 with -c) costs the most CPU;
    // a raw image's digest reads its whole virtual size.
    auto cost = [](const Target& t) {
      if (t.format == Format::vmdk || t.compress) return 0;
      if (t.format == Format::raw) return 1;
      return 2;
    };
    for (std::size_t i = 0; i < jobs_.size(); ++i) by_cost_.push_back(i);
    std::stable_sort(by_cost_.begin(), by_cost_.end(), [&](std::size_t a, std::size_t b) {
      return cost(jobs_[a].target) < cost(jobs_[b].target);
    });
  }

  ~Run() {
    stop_all();
    for (auto& job : jobs_) job.out_pipe.reset(), job.err_pipe.reset();
  }
  Run(const Run&) = delete;
  Run& operator=(const Run&) = delete;

  Status go();
  /// Ends every child (SIGTERM to its group, SIGKILL after 2 s) and waits
  /// for it, and stops and joins every worker.
  void stop_all();

 private:
  void start(Job& job);
  void read_out(Job& job);
  void read_err(Job& job);
  Status step(Job& job);
  Status conversion_ended(Job& job);
  Status copy_ended(Job& job);
  void start_digest(Job& job);
  Status finalize(Job& job);
  void report(bool now);
  double overall() const;

  std::string qemu_img_;
  const std::string& source_;
  const Info& source_info_;
  const ConvertOptions& options_;
  std::vector<Job>& jobs_;
  std::vector<std::size_t> by_cost_;  ///< jobs_ indexes, the costliest first
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard_;
  std::atomic<bool> stop_{false};
  Clock::time_point last_report_{};
};

void Run::read_out(Job& job) {
  job.out_pipe->async_read_some(boost::asio::buffer(job.out_buf),
                                [this, &job](const boost::system::error_code& ec, size_t n) {
                                  if (n > 0) {
                                    job.out_tail.append(job.out_buf.data(), n);
                                    if (auto f = parse_progress(job.out_tail))
                                      job.convert_fraction = *f;
                                    if (job.out_tail.size() > 256)
                                      job.out_tail.erase(0, job.out_tail.size() - 64);
                                  }
                                  if (ec)
                                    job.out_open = false;
                                  else
                                    read_out(job);
                                });
}

void Run::read_err(Job& job) {
  job.err_pipe->async_read_some(boost::asio::buffer(job.err_buf),
                                [this, &job](const boost::system::error_code& ec, size_t n) {
                                  // qemu-img's complaints are short; a bound keeps memory flat
                                  // anyway.
                                  if (n > 0 && job.err_text.size() < 65536)
                                    job.err_text.append(job.err_buf.data(), n);
                                  if (ec)
                                    job.err_open = false;
                                  else
                                    read_err(job);
                                });
}

void Run::start(Job& job) {
  if (job.copy) {
    job.state = Job::State::copying;
    job.worker = std::make_unique<Worker>();
    Worker* w = job.worker.get();
    std::error_code ec;
    w->total = std::max<std::uint64_t>(fs::file_size(source_, ec), 1);
    std::string from = source_, to = job.staged.string();
    w->thread = std::thread([w, from, to, this] {
      w->status = sparse_copy(from, to, stop_, w->done);
      w->finished = true;
      boost::asio::post(io_, [] {});  // wakes the loop
    });
    return;
  }

  std::vector<std::string> args = {"convert",           "-p", "-f",
                                   source_info_.format, "-O", std::string(name(job.target.format))};
  if (job.target.compress) args.push_back("-c");
  if (job.target.format == Format::vmdk)
    args.insert(args.end(), {"-o", "subformat=streamOptimized"});
  if (job.target.format == Format::vhdx) args.insert(args.end(), {"-o", "subformat=dynamic"});
  args.push_back(source_);
  args.push_back(job.staged.string());

  job.out_tail.clear();
  job.err_text.clear();
  job.convert_fraction = 0;
  job.out_pipe = std::make_unique<bp::async_pipe>(io_);
  job.err_pipe = std::make_unique<bp::async_pipe>(io_);
  job.state = Job::State::converting;
  job.tries++;
  std::error_code ec;
  std::string why;
  try {
    job.child =
        bp::child(qemu_img_, bp::args(args), bp::std_out > *job.out_pipe,
                  bp::std_err > *job.err_pipe, bp::std_in < bp::null, OwnProcessGroup{}, ec);
    if (ec) why = ec.message();
  } catch (const std::exception& e) {
    why = e.what();
  }
  if (!why.empty()) {
    job.state = Job::State::failed;
    job.err_text = "cannot start qemu-img: " + why;
    return;
  }
  job.group = job.child.id();
  job.out_open = job.err_open = true;
  read_out(job);
  read_err(job);
}

void Run::start_digest(Job& job) {
  job.worker = std::make_unique<Worker>();
  job.state = Job::State::digesting;
  Worker* w = job.worker.get();
  std::error_code ec;
  w->total = std::max<std::uint64_t>(fs::file_size(job.staged, ec), 1);
  std::string path = job.staged.string();
  w->thread = std::thread([w, path, this] {
    // qemu-img info (for the virtual size) runs beside the digest, not
    // after it.
    auto looked = std::async(std::launch::async, [path] { return info(path); });
    auto sum = file_sha256(
        path, [this] { return stop_.load(); }, [w](std::uint64_t n) { w->done = n; });
    if (sum)
      w->sha256 = *sum;
    else
      w->status = sum.error();
    w->info = looked.get();
    w->finished = true;
    boost::asio::post(io_, [] {});  // wakes the loop
  });
}

Status Run::finalize(Job& job) {
  if (job.worker && job.worker->thread.joinable()) job.worker->thread.join();
  Result<Info> image =
      job.worker && job.worker->info ? std::move(*job.worker->info) : info(job.staged.string());
  if (!image) return image.error();
  struct stat st {};
  if (::stat(job.staged.c_str(), &st) != 0)
    return Error(Exit::ioerr, "cannot stat " + job.staged.string() + ": " + std::strerror(errno));
  if (::rename(job.staged.c_str(), job.target.path.c_str()) != 0)
    return Error(Exit::cantcreat, "cannot rename the finished image onto " +
                                      job.target.path.string() + ": " + std::strerror(errno));
  job.finalized = true;
  job.state = Job::State::done;
  job.artifact.path = job.target.path;
  job.artifact.format = job.target.format;
  job.artifact.size = static_cast<std::uint64_t>(st.st_size);
  job.artifact.allocated = static_cast<std::uint64_t>(st.st_blocks) * 512;
  job.artifact.virtual_size = image->virtual_size;
  if (job.worker) job.artifact.sha256 = job.worker->sha256;
  job.artifact.mtime_ns = mtime_ns(st);
  job.worker.reset();
  if (options_.progress) options_.progress({job.index, Stage::done, 1.0, overall()});
  return {};
}

Status Run::conversion_ended(Job& job) {
  std::error_code ec;
  job.child.wait(ec);
  const int native = job.child.native_exit_code();
  job.out_pipe.reset();
  job.err_pipe.reset();
  job.group = 0;
  if (WIFEXITED(native) && WEXITSTATUS(native) == 0) {
    job.convert_fraction = 1;
    if (options_.digest) {
      start_digest(job);
      return {};
    }
    return finalize(job);
  }
  const std::string what = "qemu-img convert to " + job.target.path.string();
  std::string why = last_line(job.err_text);
  if (WIFSIGNALED(native))
    why = "killed by signal " + std::to_string(WTERMSIG(native)) + (why.empty() ? "" : ": " + why);
  if (lock_conflict(job.err_text)) {
    // A machine that was just shut down can hold its disk's lock a moment
    // longer; Packer retries for the same reason.
    ::unlink(job.staged.c_str());
    if (job.tries < kLockTries) {
      job.state = Job::State::retry_wait;
      job.retry_at = Clock::now() + std::chrono::seconds(std::min(job.tries, 10));
      return {};
    }
    return Error(Exit::tempfail, what + " failed: the source is still in use after " +
                                     std::to_string(kLockTries) + " tries: " + why);
  }
  return Error(Exit::ioerr, what + " failed: " + (why.empty() ? "no message" : why));
}

Status Run::copy_ended(Job& job) {
  job.worker->thread.join();
  if (!job.worker->status) return job.worker->status;
  job.convert_fraction = 1;
  // A copied overlay keeps naming its backing file; a relative name would
  // not resolve from the output folder, so it is made absolute.
  const fs::path backing = source_info_.backing_file;
  if (!backing.empty() && backing.is_relative()) {
    std::error_code ec;
    fs::path absolute = fs::absolute(fs::path(source_).parent_path() / backing, ec);
    std::vector<std::string> args = {
        "rebase", "-u", "-f", source_info_.format, "-b", absolute.lexically_normal().string()};
    if (!source_info_.backing_format.empty())
      args.insert(args.end(), {"-F", source_info_.backing_format});
    args.push_back(job.staged.string());
    auto out = process::run(command(qemu_img_, args), kQuickTimeout);
    if (!out) return out.error();
    if (out->exit_code != 0)
      return Error(Exit::ioerr, "qemu-img rebase of " + job.target.path.string() +
                                    " failed: " + last_line(out->err));
  }
  if (options_.digest) {
    job.worker.reset();
    start_digest(job);
    return {};
  }
  job.worker.reset();
  return finalize(job);
}

Status Run::step(Job& job) {
  switch (job.state) {
    case Job::State::converting:
      if (!job.out_open && !job.err_open) return conversion_ended(job);
      return {};
    case Job::State::copying:
      if (job.worker->finished) return copy_ended(job);
      return {};
    case Job::State::digesting:
      if (job.worker->finished) {
        job.worker->thread.join();
        if (!job.worker->status) return job.worker->status;
        job.digest_fraction = 1;
        return finalize(job);
      }
      return {};
    case Job::State::failed:
      return Error(Exit::software, job.err_text);
    default:
      return {};
  }
}

double Run::overall() const {
  if (jobs_.empty()) return 1;
  double sum = 0;
  for (const auto& job : jobs_) {
    if (job.state == Job::State::done)
      sum += 1;
    else if (options_.digest)
      sum += 0.8 * job.convert_fraction + 0.2 * job.digest_fraction;
    else
      sum += job.convert_fraction;
  }
  return sum / static_cast<double>(jobs_.size());
}

void Run::report(bool now) {
  for (auto& job : jobs_)
    if (job.worker && (job.state == Job::State::copying || job.state == Job::State::digesting)) {
      double f =
          static_cast<double>(job.worker->done.load()) / static_cast<double>(job.worker->total);
      f = std::clamp(f, 0.0, 1.0);
      (job.state == Job::State::copying ? job.convert_fraction : job.digest_fraction) = f;
    }
  if (!options_.progress) return;
  auto t = Clock::now();
  if (!now && t - last_report_ < std::chrono::milliseconds(100)) return;
  last_report_ = t;
  const double all = overall();
  for (const auto& job : jobs_) {
    switch (job.state) {
      case Job::State::converting:
      case Job::State::copying:
      case Job::State::retry_wait:
        options_.progress({job.index, Stage::converting, job.convert_fraction, all});
        break;
      case Job::State::digesting:
        options_.progress({job.index, Stage::digesting, job.digest_fraction, all});
        break;
      default:
        break;
    }
  }
}

Status Run::go() {
  const unsigned limit =
      options_.jobs ? options_.jobs : std::max(1u, std::thread::hardware_concurrency());
  const auto began = Clock::now();
  for (;;) {
    if (signals::interrupted()) return Error(Exit::interrupted, "image conversion interrupted");
    if (options_.timeout.count() > 0 && Clock::now() - began > options_.timeout)
      return Error(Exit::tempfail, "image conversion did not finish within " +
                                       std::to_string(options_.timeout.count() / 1000) + " s");

    // A target holds its slot from the start of its conversion to the
    // end of its digest; a digest overlaps the other targets' work. The
    // longest work starts first (see by_cost_), so that it does not run
    // alone at the end.
    unsigned busy = 0;
    for (const auto& job : jobs_)
      busy += job.state != Job::State::waiting && job.state != Job::State::done;
    for (std::size_t i : by_cost_) {
      Job& job = jobs_[i];
      if (job.state == Job::State::retry_wait && Clock::now() >= job.retry_at) start(job);
      if (job.state == Job::State::waiting && busy < limit) {
        start(job);
        ++busy;
      }
    }

    // Until something happens (a child's output or end, a worker's end,
    // which posts to io_), 25 ms at most; then whatever else is ready.
    io_.run_one_for(std::chrono::milliseconds(25));
    io_.poll();

    bool all_done = true;
    for (auto& job : jobs_) {
      if (auto st = step(job); !st) return st;
      all_done = all_done && job.state == Job::State::done;
    }
    if (all_done) return {};
    report(false);
  }
}

void Run::stop_all() {
  stop_ = true;
  bool any = false;
  for (auto& job : jobs_)
    if (job.state == Job::State::converting && job.group > 0) {
      ::kill(-job.group, SIGTERM);
      any = true;
    }
  if (any) {
    // The children close their pipes as they die; past two seconds
    // whatever is left is killed.
    const auto term_at = Clock::now();
    auto open = [&] {
      for (const auto& job : jobs_)
        if (job.state == Job::State::converting && (job.out_open || job.err_open)) return true;
      return false;
    };
    while (open() && Clock::now() - term_at < std::chrono::seconds(2))
      io_.run_for(std::chrono::milliseconds(20));
    for (auto& job : jobs_)
      if (job.state == Job::State::converting && job.group > 0) {
        ::kill(-job.group, SIGKILL);
        std::error_code ec;
        job.child.wait(ec);
        job.group = 0;
        job.state = Job::State::failed;
      }
  }
  for (auto& job : jobs_)
    if (job.worker && job.worker->thread.joinable()) job.worker->thread.join();
}

}  // namespace

Result<std::vector<Artifact>> convert(const std::string& source, const std::vector<Target>& targets,
                                      const ConvertOptions& options) {
  if (targets.empty()) return Error(Exit::config, "no images to write");
  std::set<fs::path> seen;
  for (const auto& t : targets) {
    std::error_code ec;
    fs::path where = fs::weakly_canonical(fs::absolute(t.path, ec), ec);
    if (t.path.filename().empty())
      return Error(Exit::config, "image path " + t.path.string() + " names no file");
    if (!seen.insert(where).second)
      return Error(Exit::config, "two images would be written to " + t.path.string());
    if (t.compress && t.format != Format::qcow2)
      return Error(Exit::config, "compression is a qcow2 option; " + t.path.string() + " is " +
                                     std::string(name(t.format)));
  }
  auto source_info = info(source);
  if (!source_info) {
    Error e = std::move(source_info).error();
    return e;
  }
  for (const auto& t : targets)
    if (t.skip_compaction && !t.compress && source_info->format != name(t.format))
      return Error(Exit::config, "skip_compaction copies the disk as it is, so " + t.path.string() +
                                     " would be " + source_info->format + ", not " +
                                     std::string(name(t.format)));
  auto qemu_img = process::find_program("qemu-img");
  if (!qemu_img) return qemu_img.error();

  // Declared before the run, so destroyed after it: the children are
  // ended before their files go.
  std::map<fs::path, std::unique_ptr<Staging>> staging;
  std::vector<Job> jobs(targets.size());
  for (size_t i = 0; i < targets.size(); ++i) {
    fs::path dir = targets[i].path.parent_path();
    if (dir.empty()) dir = ".";
    auto& slot = staging[dir];
    if (!slot) {
      std::error_code ec;
      if (!fs::is_directory(dir, ec))
        return Error(Exit::cantcreat,
                     "cannot write " + targets[i].path.string() + ": " + dir.string() +
                         (fs::exists(dir, ec) ? " is not a folder" : ": no such folder"));
      auto made = Staging::create(dir);
      if (!made) return made.error();
      slot = std::move(*made);
    }
    jobs[i].index = i;
    jobs[i].target = targets[i];
    jobs[i].staged = slot->path() / targets[i].path.filename();
    jobs[i].copy = targets[i].skip_compaction && !targets[i].compress;
  }

  Run run(*qemu_img, source, *source_info, options, jobs);
  Status status = run.go();
  if (!status) {
    run.stop_all();
    Error error = std::move(status).error();
    std::vector<std::string> kept;
    for (const auto& job : jobs)
      if (job.finalized) {
        if (options.all_or_nothing)
          ::unlink(job.target.path.c_str());
        else
          kept.push_back(job.target.path.string());
      }
    if (!kept.empty()) error.message += " (finished and kept: " + text::join(kept, ", ") + ")";
    return error;
  }
  std::vector<Artifact> artifacts;
  for (auto& job : jobs) artifacts.push_back(std::move(job.artifact));
  return artifacts;
}

}  // namespace kiln::disk_image

// SPDX-License-Identifier: MIT
#include "compress.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "atomic_file.hpp"
#include "fd.hpp"
#include "signals.hpp"
#include "text.hpp"

namespace kiln::compress {

namespace fs = std::filesystem;

namespace {

constexpr size_t kBlockSize = size_t{4} << 20;

struct ArchiveDeleter {
  void operator()(struct archive* a) const { archive_write_free(a); }
};
struct EntryDeleter {
  void operator()(archive_entry* e) const { archive_entry_free(e); }
};
struct FreeDeleter {
  void operator()(char* p) const { std::free(p); }
};

std::string user_name(uid_t uid) {
  static std::mutex m;
  static std::map<uid_t, std::string> cache;
  std::lock_guard lock(m);
  if (auto it = cache.find(uid); it != cache.end()) return it->second;
  std::string name;
  std::vector<char> buf(16384);
  struct passwd pw {
  }, *found = nullptr;
  if (::getpwuid_r(uid, &pw, buf.data(), buf.size(), &found) == 0 && found) name = pw.pw_name;
  return cache[uid] = name;
}

std::string group_name(gid_t gid) {
  static std::mutex m;
  static std::map<gid_t, std::string> cache;
  std::lock_guard lock(m);
  if (auto it = cache.find(gid); it != cache.end()) return it->second;
  std::string name;
  std::vector<char> buf(16384);
  struct group gr {
  }, *found = nullptr;
  if (::getgrgid_r(gid, &gr, buf.data(), buf.size(), &found) == 0 && found) name = gr.gr_name;
  return cache[gid] = name;
}

// A zip entry's name must be relative: drop what would climb out.
std::string zip_name(std::string_view path) {
  for (;;) {
    if (!path.empty() && path.front() == '/') {
      path.remove_prefix(1);
    } else if (path.substr(0, 2) == "./") {
      path.remove_prefix(2);
    } else if (path.substr(0, 3) == "../") {
      path.remove_prefix(3);
    } else {
      break;
    }
  }
  return std::string(path);
}

Error archive_error(struct archive* a, const fs::path& target, Exit code = Exit::ioerr) {
  const char* msg = archive_error_string(a);
  return Error(code, "cannot write " + target.string() + ": " + (msg ? msg : "libarchive failed"));
}

// Sets a libarchive option; a setting this libarchive lacks is an error
// unless `optional` (threads for zstd appeared in a later libarchive).
Status option(struct archive* a, const char* module, const char* key, const std::string& value,
              const fs::path& target, bool optional = false) {
  int r = std::strcmp(module, "zip") == 0
              ? archive_write_set_format_option(a, module, key, value.c_str())
              : archive_write_set_filter_option(a, module, key, value.c_str());
  if (r == ARCHIVE_OK || optional) return {};
  return Error(Exit::software, "cannot write " + target.string() + ": libarchive refused " +
                                   module + ":" + key + "=" + value);
}

// gzip on every core, as Packer's pgzip does: the stream is cut into 4 MiB
// chunks, each compressed by its own libarchive gzip writer on a worker
// thread into one gzip member, and the members are written in order. gzip,
// tar, bsdtar (so vagrant), Go and Python read concatenated members as one
// stream; the cut costs under 0.1% of ratio (a 32 KiB window lost per 4 MiB).
// At most two chunks per worker are in flight, so memory stays flat.
class GzipMembers {
 public:
  static constexpr size_t kChunk = size_t{4} << 20;

  GzipMembers(int fd, int level, unsigned threads) : fd_(fd), level_(level) {
    max_in_flight_ = 2 * threads;
    for (unsigned i = 0; i < threads; ++i) workers_.emplace_back([this] { work(); });
    pending_.reserve(kChunk);
  }
  ~GzipMembers() {
    {
      std::lock_guard lock(m_);
      stop_ = true;
    }
    job_ready_.notify_all();
    for (auto& t : workers_) t.join();
  }
  GzipMembers(const GzipMembers&) = delete;
  GzipMembers& operator=(const GzipMembers&) = delete;

  // Takes bytes of the uncompressed stream.
  bool write(const char* data, size_t size) {
    while (size > 0) {
      size_t take = std::min(size, kChunk - pending_.size());
      pending_.append(data, take);
      data += take;
      size -= take;
      if (pending_.size() == kChunk && !submit()) return false;
    }
    return true;
  }

  // Compresses what is left and writes every member.
  bool finish() {
    if (!pending_.empty() && !submit()) return false;
    while (!jobs_.empty())
      if (!write_oldest()) return false;
    return true;
  }

  const std::string& error() const { return error_; }

 private:
  struct Job {
    std::string input;
    std::string output;
    std::string error;
    bool done = false;
  };

  bool submit() {
    auto job = std::make_shared<Job>();
    job->input.swap(pending_);
    pending_.clear();
    pending_.reserve(kChunk);
    {
      std::lock_guard lock(m_);
      queue_.push_back(job);
      jobs_.push_back(job);
    }
    job_ready_.notify_one();
    while (jobs_.size() > max_in_flight_)
      if (!write_oldest()) return false;
    return true;
  }

  bool write_oldest() {
    std::shared_ptr<Job> job = jobs_.front();
    {
      std::unique_lock lock(m_);
      job_done_.wait(lock, [&] { return job->done; });
      jobs_.pop_front();
    }
    if (!job->error.empty()) {
      error_ = job->error;
      return false;
    }
    std::string_view out = job->output;
    while (!out.empty()) {
      ssize_t n = ::write(fd_, out.data(), out.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        error_ = std::strerror(errno);
        return false;
      }
      out.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  static la_ssize_t append(struct archive*, void* to, const void* data, size_t size) {
    static_cast<std::string*>(to)->append(static_cast<const char*>(data), size);
    return static_cast<la_ssize_t>(size);
  }

  void compress(Job& job) const {
    std::unique_ptr<struct archive, ArchiveDeleter> a(archive_write_new());
    std::unique_ptr<archive_entry, EntryDeleter> entry(archive_entry_new());
    job.output.reserve(job.input.size() / 2 + 4096);
    const std::string level = std::to_string(level_);
    bool ok =
        a && entry && archive_write_set_format_raw(a.get()) == ARCHIVE_OK &&
        archive_write_add_filter_gzip(a.get()) == ARCHIVE_OK &&
        archive_write_set_filter_option(a.get(), "gzip", "compression-level", level.c_str()) ==
            ARCHIVE_OK &&
        archive_write_set_filter_option(a.get(), "gzip", "timestamp", nullptr) == ARCHIVE_OK &&
        archive_write_set_bytes_per_block(a.get(), 0) == ARCHIVE_OK &&
        archive_write_open2(a.get(), &job.output, nullptr, &GzipMembers::append, nullptr,
                            nullptr) == ARCHIVE_OK;
    if (ok) {
      archive_entry_set_filetype(entry.get(), AE_IFREG);
      archive_entry_set_size(entry.get(), static_cast<la_int64_t>(job.input.size()));
      ok = archive_write_header(a.get(), entry.get()) == ARCHIVE_OK &&
           archive_write_data(a.get(), job.input.data(), job.input.size()) ==
               static_cast<la_ssize_t>(job.input.size()) &&
           archive_write_close(a.get()) == ARCHIVE_OK;
    }
    if (!ok) {
      const char* msg = a ? archive_error_string(a.get()) : nullptr;
      job.error = msg ? msg : "gzip compression failed";
    }
  }

  void work() {
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock lock(m_);
        job_ready_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (stop_) return;
        job = queue_.front();
        queue_.pop_front();
      }
      compress(*job);
      job->input = std::string();
      {
        std::lock_guard lock(m_);
        job->done = true;
      }
      job_done_.notify_all();
    }
  }

  int fd_;
  int level_;
  size_t max_in_flight_;
  std::string pending_;
  std::deque<std::shared_ptr<Job>> jobs_;   // in stream order, owned by the caller
  std::deque<std::shared_ptr<Job>> queue_;  // not yet taken by a worker
  std::vector<std::thread> workers_;
  std::mutex m_;
  std::condition_variable job_ready_, job_done_;
  bool stop_ = false;
  std::string error_;
};

// Where libarchive's output goes: the temporary file, or the parallel
// gzip in front of it. Once `discard` is set (the write failed), writes
// fail at once, so that closing the archive to free libarchive's state
// (archive_write_fail() would leak it) flushes nothing and ends early.
struct Sink {
  int fd = -1;
  GzipMembers* gzip = nullptr;
  bool discard = false;
};

la_ssize_t sink_write(struct archive* a, void* opaque, const void* data, size_t size) {
  auto* sink = static_cast<Sink*>(opaque);
  if (sink->discard) {
    archive_set_error(a, ECANCELED, "output abandoned");
    return -1;
  }
  if (sink->gzip) {
    if (!sink->gzip->write(static_cast<const char*>(data), size)) {
      archive_set_error(a, EIO, "%s", sink->gzip->error().c_str());
      return -1;
    }
    return static_cast<la_ssize_t>(size);
  }
  const char* p = static_cast<const char*>(data);
  size_t left = size;
  while (left > 0) {
    ssize_t n = ::write(sink->fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      archive_set_error(a, errno, "%s", std::strerror(errno));
      return -1;
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  return static_cast<la_ssize_t>(size);
}

}  // namespace

std::string_view name(Archive a) {
  switch (a) {
    case Archive::tar:
      return "tar";
    case Archive::zip:
      return "zip";
    case Archive::none:
      break;
  }
  return "none";
}

std::string_view name(Algorithm a) {
  switch (a) {
    case Algorithm::gzip:
      return "gzip";
    case Algorithm::xz:
      return "xz";
    case Algorithm::zstd:
      return "zstd";
    case Algorithm::lz4:
      return "lz4";
    case Algorithm::bgzf:
      return "bgzf";
    case Algorithm::none:
      break;
  }
  return "none";
}

Format detect_format(std::string_view output_template, std::string_view format) {
  std::string subject(output_template);
  if (!format.empty()) subject += "." + std::string(format);
  // Every match of Packer's regexp \.([a-z0-9]+), left to right, without
  // overlap (by hand: std::regex is slow and trips GCC's sanitizer builds).
  auto word = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  std::vector<std::string> items;
  for (size_t i = 0; i < subject.size(); ++i) {
    if (subject[i] != '.') continue;
    size_t end = i + 1;
    while (end < subject.size() && word(subject[end])) ++end;
    if (end == i + 1) continue;
    items.push_back(subject.substr(i + 1, end - i - 1));
    i = end - 1;
  }
  Format tar_gzip{Archive::tar, Algorithm::gzip};
  if (items.empty()) return tar_gzip;
  const std::string& last = items.back();
  const std::string before = items.size() > 1 ? items[items.size() - 2] : "";
  Format f{Archive::none, Algorithm::none};
  if (before == "tar") f.archive = Archive::tar;
  if (last == "zip") return {Archive::zip, Algorithm::none};
  if (last == "tar") return {Archive::tar, Algorithm::none};
  static const std::map<std::string, Algorithm> algorithms = {
      {"gz", Algorithm::gzip},   {"xz", Algorithm::xz},    {"lz4", Algorithm::lz4},
      {"bgzf", Algorithm::bgzf}, {"zst", Algorithm::zstd},
  };
  if (auto it = algorithms.find(last); it != algorithms.end()) {
    f.algorithm = it->second;
    return f;
  }
  return tar_gzip;
}

Result<int> normalize_level(int level) {
  if (level > 9) return 9;
  if (level == 0 || level == -1) return 6;
  if (level < -1)
    return Error(Exit::config, "Invalid compression level " + std::to_string(level) +
                                   ". Expected an integer from -1 to 9.");
  return level;
}

std::vector<Entry> packer_entries(const std::vector<std::string>& files, Archive archive) {
  std::vector<Entry> entries;
  for (const auto& f : files) {
    Entry e;
    e.source = f;
    e.name = archive == Archive::zip ? zip_name(f) : text::go_base(f);
    entries.push_back(std::move(e));
  }
  return entries;
}

Status write(const fs::path& target, const std::vector<Entry>& entries, const Settings& settings,
             const Progress& progress) {
  const Format f = settings.format;
  if (f.algorithm == Algorithm::bgzf)
    return Error(Exit::config, "bgzf (blocked gzip) output is not supported; use .gz");
  // An archive of nothing is what Packer writes for an artifact without
  // files; a compressed stream needs its one file.
  if (f.archive == Archive::none && entries.size() != 1)
    return Error(Exit::config, "Can only have 1 input file when not using tar/zip. Found " +
                                   std::to_string(entries.size()) + " files");

  // Open every source first: a missing one fails before any output exists.
  struct Source {
    UniqueFd fd;
    struct stat st {};
  };
  std::vector<Source> sources(entries.size());
  std::uint64_t total = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    const Entry& e = entries[i];
    if (e.content) {
      total += e.content->size();
      continue;
    }
    sources[i].fd.reset(::open(e.source.c_str(), O_RDONLY | O_CLOEXEC));
    if (sources[i].fd.get() < 0 || ::fstat(sources[i].fd.get(), &sources[i].st) != 0)
      return Error(Exit::noinput,
                   "Unable to read file " + e.source.string() + ": " + std::strerror(errno));
    if (!S_ISREG(sources[i].st.st_mode))
      return Error(Exit::noinput,
                   "Unable to read file " + e.source.string() + ": not a regular file");
    ::posix_fadvise(sources[i].fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
    total += static_cast<std::uint64_t>(sources[i].st.st_size);
  }

  if (target.has_parent_path()) {
    std::error_code ec;
    fs::create_directories(target.parent_path(), ec);
    if (ec)
      return Error(Exit::cantcreat,
                   "Unable to create dir for archive " + target.string() + ": " + ec.message());
  }
  auto file = AtomicFile::create(target, 0644);
  if (!file) return file.error();

  // Outlive the archive, which writes into them until it is closed.
  Sink sink;
  sink.fd = file->fd();
  std::unique_ptr<GzipMembers> gzip;
  std::unique_ptr<struct archive, ArchiveDeleter> owner(archive_write_new());
  struct archive* a = owner.get();
  if (!a) return Error(Exit::software, "libarchive: out of memory");
  // On any early return, close the archive into nothing: its end must not
  // reach the temporary file (removed anyway), and libarchive frees its
  // compressor state only when closing.
  struct DiscardGuard {
    struct archive* a;
    Sink& sink;
    bool armed = true;
    ~DiscardGuard() {
      if (!armed) return;
      sink.discard = true;
      archive_write_close(a);
    }
  } discard_guard{a, sink};

  int r = ARCHIVE_OK;
  switch (f.archive) {
    case Archive::tar:
      r = archive_write_set_format_gnutar(a);
      break;
    case Archive::zip:
      r = archive_write_set_format_zip(a);
      break;
    case Archive::none:
      r = archive_write_set_format_raw(a);
      break;
  }
  if (r != ARCHIVE_OK) return archive_error(a, target, Exit::software);
  const std::string level = std::to_string(settings.level);
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const std::string threads = std::to_string(settings.threads ? settings.threads : cores);
  switch (f.algorithm) {
    case Algorithm::gzip:  // GzipMembers below, on every core
      break;
    case Algorithm::xz:
      r = archive_write_add_filter_xz(a);
      if (r == ARCHIVE_OK) {
        if (auto st = option(a, "xz", "compression-level", level, target); !st) return st;
        if (auto st = option(a, "xz", "threads", threads, target, true); !st) return st;
      }
      break;
    case Algorithm::zstd:
      r = archive_write_add_filter_zstd(a);
      if (r == ARCHIVE_OK) {
        if (auto st = option(a, "zstd", "compression-level", level, target); !st) return st;
        if (auto st = option(a, "zstd", "threads", threads, target, true); !st) return st;
      }
      break;
    case Algorithm::lz4:
      r = archive_write_add_filter_lz4(a);
      if (r == ARCHIVE_OK)
        if (auto st = option(a, "lz4", "compression-level", level, target); !st) return st;
      break;
    case Algorithm::none:
    case Algorithm::bgzf:
      break;
  }
  if (r != ARCHIVE_OK) return archive_error(a, target, Exit::software);
  if (f.archive == Archive::zip)
    if (auto st = option(a, "zip", "compression-level", level, target); !st) return st;
  // No padding after the end: only a tape wants whole 10 KiB blocks.
  archive_write_set_bytes_in_last_block(a, 1);
  if (f.algorithm == Algorithm::gzip) {
    gzip = std::make_unique<GzipMembers>(file->fd(), std::clamp(settings.level, 1, 9),
                                         settings.threads ? settings.threads : cores);
    sink.gzip = gzip.get();
    // Whole blocks would only be copied again into 4 MiB chunks.
    archive_write_set_bytes_per_block(a, 0);
  }
  if (archive_write_open2(a, &sink, nullptr, &sink_write, nullptr, nullptr) != ARCHIVE_OK)
    return archive_error(a, target);

  std::unique_ptr<char, FreeDeleter> buffer(
      static_cast<char*>(std::aligned_alloc(4096, kBlockSize)));
  if (!buffer) return Error(Exit::software, "out of memory");
  std::uint64_t done = 0;
  auto interrupted = [&] {
    return Error(Exit::interrupted, "writing " + target.string() + " interrupted");
  };
  auto put = [&](const char* data, size_t size) -> Status {
    while (size > 0) {
      la_ssize_t w = archive_write_data(a, data, size);
      if (w <= 0) return archive_error(a, target);
      data += w;
      size -= static_cast<size_t>(w);
    }
    return {};
  };

  for (size_t i = 0; i < entries.size(); ++i) {
    const Entry& e = entries[i];
    const Source& s = sources[i];
    std::unique_ptr<archive_entry, EntryDeleter> entry(archive_entry_new());
    const std::uint64_t size =
        e.content ? e.content->size() : static_cast<std::uint64_t>(s.st.st_size);
    archive_entry_copy_pathname(entry.get(), e.name.c_str());
    archive_entry_set_filetype(entry.get(), AE_IFREG);
    unsigned perm = e.mode ? *e.mode : e.content ? 0644u : (s.st.st_mode & 07777);
    archive_entry_set_perm(entry.get(), static_cast<mode_t>(perm));
    archive_entry_set_size(entry.get(), static_cast<la_int64_t>(size));
    const uid_t uid = e.content ? ::geteuid() : s.st.st_uid;
    const gid_t gid = e.content ? ::getegid() : s.st.st_gid;
    archive_entry_set_uid(entry.get(), uid);
    archive_entry_set_gid(entry.get(), gid);
    if (auto u = user_name(uid); !u.empty()) archive_entry_copy_uname(entry.get(), u.c_str());
    if (auto g = group_name(gid); !g.empty()) archive_entry_copy_gname(entry.get(), g.c_str());
    // Packer zeroes the times (reproducible archives).
    archive_entry_set_mtime(entry.get(), 0, 0);
    if (archive_write_header(a, entry.get()) < ARCHIVE_WARN) return archive_error(a, target);

    if (e.content) {
      if (auto st = put(e.content->data(), e.content->size()); !st) return st;
      done += size;
      if (progress) progress(done, total);
    } else {
      std::uint64_t left = size;
      while (left > 0) {
        if (signals::interrupted()) return interrupted();
        size_t want = left < kBlockSize ? static_cast<size_t>(left) : kBlockSize;
        ssize_t got = ::read(s.fd.get(), buffer.get(), want);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0)
          return Error(Exit::ioerr,
                       "cannot read " + e.source.string() + ": " + std::strerror(errno));
        if (got == 0)
          return Error(Exit::dataerr, e.source.string() + " shrank while being archived");
        if (auto st = put(buffer.get(), static_cast<size_t>(got)); !st) return st;
        left -= static_cast<std::uint64_t>(got);
        done += static_cast<std::uint64_t>(got);
        if (progress) progress(done, total);
      }
    }
    if (archive_write_finish_entry(a) < ARCHIVE_WARN) return archive_error(a, target);
  }
  if (signals::interrupted()) return interrupted();
  // Closed once, whatever it returns (a second close would free twice).
  discard_guard.armed = false;
  if (archive_write_close(a) != ARCHIVE_OK) return archive_error(a, target);
  if (gzip && !gzip->finish())
    return Error(Exit::ioerr, "cannot write " + target.string() + ": " + gzip->error());
  return file->commit();
}

Status check(const Options& options) {
  const std::string output = options.output.empty() ? std::string(default_output) : options.output;
  if (auto st = tmpl::check_syntax(output); !st)
    return Error(Exit::config, "Error parsing target template: " + st.error().message);
  if (auto level = normalize_level(options.compression_level); !level) return level.error();
  if (detect_format(output, options.format).algorithm == Algorithm::bgzf)
    return Error(Exit::config, "bgzf (blocked gzip) output is not supported; use .gz");
  return {};
}

Result<Written> run(const std::vector<std::string>& files, const Options& options,
                    const tmpl::Context& context, const Progress& progress) {
  if (auto st = check(options); !st) return st.error();
  const std::string output = options.output.empty() ? std::string(default_output) : options.output;
  const Format format = detect_format(output, options.format);
  tmpl::Context ctx = context;
  ctx.fields["BuildName"] = options.build_name;
  ctx.fields["BuilderType"] = options.builder_type;
  auto target = tmpl::render(output, ctx);
  if (!target)
    return Error(Exit::dataerr, "Error interpolating output value: " + target.error().message);
  if (format.archive == Archive::none && files.size() != 1) {
    std::string list;
    for (const auto& f : files) list += (list.empty() ? "" : " ") + f;
    return Error(Exit::config, "Can only have 1 input file when not using tar/zip. Found " +
                                   std::to_string(files.size()) + " files: [" + list + "]");
  }
  Settings settings;
  settings.format = format;
  settings.level = *normalize_level(options.compression_level);
  settings.threads = options.threads;
  if (auto st = write(*target, packer_entries(files, format.archive), settings, progress); !st)
    return st.error();
  std::error_code ec;
  auto size = fs::file_size(*target, ec);
  return Written{*target, format, ec ? 0 : size};
}

}  // namespace kiln::compress

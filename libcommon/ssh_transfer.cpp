// SPDX-License-Identifier: MIT
// File transfer over a Session: SFTP through libssh2, and SCP as the
// protocol OpenSSH's `scp -t` (sink) and `scp -f` (source) speak on an exec
// channel, so that trees, modes and the server's error lines are ours to
// handle. Every wait is the session's poll() on the socket and the signal
// pipe; a stall is "no byte moved on the socket", counted by the session's
// send/recv callbacks.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <utility>
#include <vector>

#include "atomic_file.hpp"
#include "fd.hpp"
#include "signals.hpp"
#include "ssh.hpp"
#include "ssh_internal.hpp"

namespace kiln::ssh {

using namespace detail;
namespace fs = std::filesystem;
using TransferMethod = Session::TransferMethod;
using TransferOptions = Session::TransferOptions;
using RemoteStat = Session::RemoteStat;

namespace {

/// What one SFTP write or read call may have in flight. libssh2 1.10 cuts
/// one libssh2_sftp_write() into 30000-byte WRITE requests sent back to
/// back and answered as they come, and one libssh2_sftp_read() into read
/// requests for up to 4 times its size (8 MiB at most), so the buffer is
/// the pipeline. Measured through loopback to OpenSSH: 256 KiB uploads at
/// about half the speed, 1-2 MiB at the speed of libssh2's cipher, 4 MiB
/// and more slower again (more than sshd's 2 MiB channel window in
/// flight); 2 MiB also gives reads the most read-ahead. Memory stays at
/// this and libssh2's copy of it.
constexpr size_t kBufferSize = 2u << 20;
/// The receive window of SCP download channels (libssh2's default is 2 MiB).
constexpr unsigned kScpWindow = 8u << 20;
/// The largest SSH packet a server may ask for (RFC 4254 allows any; OpenSSH
/// uses 32 KiB, and libssh2 caps what it accepts at 256 KiB).
constexpr size_t kMaxPacket = 256u << 10;
/// Progress is reported after this much more, or this much time.
constexpr uint64_t kProgressBytes = 256u << 10;
constexpr milliseconds kProgressEvery{200};
/// How long an SFTP start may take before a probe looks into it (use_sftp).
constexpr milliseconds kSftpPatience{1500};
/// SFTP's "open for writing, create, truncate".
constexpr unsigned long kWriteFlags = LIBSSH2_FXF_WRITE | LIBSSH2_FXF_CREAT | LIBSSH2_FXF_TRUNC;

std::string lowercase(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string errno_text(int e) { return lowercase(std::strerror(e)); }

/// `s` as one word for a POSIX shell.
std::string shell_quote(std::string_view s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'')
      out += "'\\''";
    else
      out += c;
  }
  return out + "'";
}

std::string octal(int mode) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode) & 07777u);
  return buf;
}

/// The words OpenSSH's sftp client uses for an SFTP status code.
std::string sftp_status_text(unsigned long code) {
  switch (code) {
    case LIBSSH2_FX_EOF:
      return "end of file";
    case LIBSSH2_FX_NO_SUCH_FILE:
    case LIBSSH2_FX_NO_SUCH_PATH:
      return "no such file or directory";
    case LIBSSH2_FX_PERMISSION_DENIED:
      return "permission denied";
    case LIBSSH2_FX_FAILURE:
      return "failure (SFTP gives no reason: a full disk, a read-only file system?)";
    case LIBSSH2_FX_BAD_MESSAGE:
      return "bad message";
    case LIBSSH2_FX_OP_UNSUPPORTED:
      return "operation unsupported";
    case LIBSSH2_FX_FILE_ALREADY_EXISTS:
      return "it already exists";
    case LIBSSH2_FX_WRITE_PROTECT:
      return "write protected";
    case LIBSSH2_FX_NO_SPACE_ON_FILESYSTEM:
      return "no space left on the device";
    case LIBSSH2_FX_QUOTA_EXCEEDED:
      return "quota exceeded";
    case LIBSSH2_FX_DIR_NOT_EMPTY:
      return "folder not empty";
    case LIBSSH2_FX_NOT_A_DIRECTORY:
      return "not a directory";
    case LIBSSH2_FX_INVALID_FILENAME:
      return "invalid file name";
    case LIBSSH2_FX_LINK_LOOP:
      return "too many levels of symbolic links";
    default:
      return "SFTP status " + std::to_string(code);
  }
}

/// `path` without its last component ("." when there is none).
std::string remote_parent(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string remote_name(const std::string& path) {
  auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string remote_join(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  return dir.back() == '/' ? dir + name : dir + "/" + name;
}

/// Reads all of `n` bytes unless the file ends first. Errors: Exit::ioerr.
Result<size_t> read_some(int fd, char* buf, size_t n, const std::string& path) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::read(fd, buf + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return Error(Exit::ioerr, "cannot read " + path + ": " + errno_text(errno));
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  return got;
}

Status write_all_fd(int fd, const char* data, size_t n, const std::string& path) {
  while (n > 0) {
    ssize_t w = ::write(fd, data, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return Error(Exit::ioerr, "cannot write " + path + ": " + errno_text(errno));
    data += w;
    n -= static_cast<size_t>(w);
  }
  return {};
}

/// What an upload reads: an open local file or bytes in memory.
struct Source {
  int fd = -1;
  std::string path;  ///< for messages
  std::string_view data;

  Result<size_t> read(char* buf, size_t n) {
    if (fd >= 0) return read_some(fd, buf, n, path);
    size_t k = std::min(n, data.size());
    std::memcpy(buf, data.data(), k);
    data.remove_prefix(k);
    return k;
  }
};

// ---------------------------------------------------------------- one transfer

/// The bookkeeping of one public transfer call: waits with the stall
/// watch, progress, and errors worded alike.
class Transfer {
 public:
  Transfer(SessionState& im, const TransferOptions& opt)
      : im(im), opt(opt), seen_(im.bytes_moved), quiet_since_(Clock::now()) {}

  SessionState& im;
  const TransferOptions& opt;

  /// Waits once for the socket as libssh2 asks. Returns 0 (try again),
  /// kTimedOut (nothing moved for the stall timeout) or kInterrupted.
  int wait() {
    for (;;) {
      note_movement();
      auto deadline = opt.stall_timeout.count() > 0 ? quiet_since_ + opt.stall_timeout
                                                    : Clock::time_point::max();
      Waited w = wait_fd(im.fd, blocked_events(im.s), deadline, true, milliseconds(1000));
      if (w == Waited::interrupted) return kInterrupted;
      if (w != Waited::timeout) return 0;
      if (im.bytes_moved == seen_) return stalled();
    }
  }

  /// Between steps that did not wait: kInterrupted, kTimedOut or 0.
  int check() {
    if (signals::interrupted()) return kInterrupted;
    note_movement();
    if (opt.stall_timeout.count() > 0 && Clock::now() - quiet_since_ >= opt.stall_timeout)
      return stalled();
    return 0;
  }

  /// Runs `op` (a libssh2 call returning 0 or an error code) to its end.
  template <class Op>
  int drive(Op&& op) {
    for (;;) {
      if (int c = check()) return c;
      int rc = op();
      if (rc != LIBSSH2_ERROR_EAGAIN) return rc;
      if (int w = wait()) return w;
    }
  }

  void begin(uint64_t total) {
    total_ = total;
    report(true);
  }
  void grow_total(uint64_t more) { total_ += more; }
  void advance(uint64_t n) {
    done_ += n;
    report(false);
  }
  void end() {
    if (reported_ != done_ || done_ == 0) report(true);
  }

  /// The Error for `rc` from `doing` (e.g. "writing /tmp/x").
  Error failure(int rc, const std::string& doing) const {
    if (rc == kTimedOut)
      return Error(Exit::tempfail, "no data moved for " + seconds_text(opt.stall_timeout) +
                                       " while " + doing + " on " + im.where);
    if (rc == kInterrupted)
      return Error(Exit::interrupted, "interrupted while " + doing + " on " + im.where);
    if (is_connection_loss(rc))
      return Error(Exit::protocol, "connection lost to " + im.where + " while " + doing + " (" +
                                       loss_reason(rc) + ")");
    if (rc == LIBSSH2_ERROR_SFTP_PROTOCOL && im.sftp)
      return Error(Exit::protocol, doing + " on " + im.where + " failed: " +
                                       sftp_status_text(libssh2_sftp_last_error(im.sftp)));
    return Error(Exit::protocol, doing + " on " + im.where + " failed: " + im.last_error());
  }

  /// When cleanup after a failure must be over: kCleanupTime from its
  /// first step, shared by all its steps (a dead peer costs it once); at
  /// once after a stall, as a peer silent that long will not answer now.
  Clock::time_point cleanup_deadline() {
    if (!cleanup_deadline_)
      cleanup_deadline_ = Clock::now() + (stalled_ ? milliseconds(0) : kCleanupTime);
    return *cleanup_deadline_;
  }

  /// The SFTP status of the last failed call, 0 when it was not one.
  unsigned long sftp_status(int rc) const {
    return rc == LIBSSH2_ERROR_SFTP_PROTOCOL && im.sftp ? libssh2_sftp_last_error(im.sftp) : 0;
  }

 private:
  int stalled() {
    stalled_ = true;
    return kTimedOut;
  }
  void note_movement() {
    if (im.bytes_moved != seen_) {
      seen_ = im.bytes_moved;
      quiet_since_ = Clock::now();
    }
  }
  void report(bool force) {
    if (!opt.progress) return;
    auto now = Clock::now();
    if (!force && done_ - reported_ < kProgressBytes && now - reported_at_ < kProgressEvery) return;
    reported_ = done_;
    reported_at_ = now;
    opt.progress(done_, std::max(total_, done_));
  }

  uint64_t seen_;
  Clock::time_point quiet_since_;
  std::optional<Clock::time_point> cleanup_deadline_;
  bool stalled_ = false;
  uint64_t total_ = 0;
  uint64_t done_ = 0;
  uint64_t reported_ = 0;
  Clock::time_point reported_at_{};
};

/// Runs libssh2 calls for cleanup: no signal watch (a signal may be what
/// we clean up after), and one shared deadline.
template <class Op>
int drive_cleanup(SessionState& im, Clock::time_point deadline, Op&& op) {
  return im.drive(std::forward<Op>(op), deadline, false);
}

// ---------------------------------------------------------------- SFTP

/// Whether the server runs an SFTP subsystem: false when it refuses to
/// start one, or when it ends without answering SSH_FXP_INIT (as
/// "Subsystem sftp /bin/false" does, or a missing sftp-server). Asked on
/// a channel of our own because libssh2 1.10's sftp_init waits forever
/// for the answer from a channel that has closed.
Result<bool> probe_sftp(Transfer& t) {
  SessionState& im = t.im;
  const std::string doing = "starting SFTP";
  LIBSSH2_CHANNEL* raw = nullptr;
  int rc = t.drive([&] {
    raw = libssh2_channel_open_session(im.s);
    return raw ? 0 : libssh2_session_last_errno(im.s);
  });
  if (rc != 0) return t.failure(rc, doing);
  Channel channel(im, raw);
  rc = t.drive([&] { return libssh2_channel_subsystem(raw, "sftp"); });
  if (rc == LIBSSH2_ERROR_CHANNEL_REQUEST_DENIED) return false;
  if (rc != 0) return t.failure(rc, doing);
  // SSH_FXP_INIT, version 3: length 5, type 1, version.
  static const char init[] = {0, 0, 0, 5, 1, 0, 0, 0, 3};
  size_t sent = 0;
  rc = t.drive([&] {
    for (;;) {
      ssize_t n = libssh2_channel_write_ex(raw, 0, init + sent, sizeof init - sent);
      if (n < 0) return static_cast<int>(n);
      sent += static_cast<size_t>(n);
      if (sent == sizeof init) return 0;
    }
  });
  if (rc != 0) return t.failure(rc, doing);
  std::string answer;
  rc = t.drive([&] {
    char buf[256];
    for (;;) {
      ssize_t n = libssh2_channel_read_ex(raw, 0, buf, sizeof buf);
      if (n > 0) {
        answer.append(buf, static_cast<size_t>(n));
        if (answer.size() >= 5) return 0;
        continue;
      }
      if (n == 0) return 0;  // the end: no (whole) answer
      return static_cast<int>(n);
    }
  });
  if (rc != 0 && rc != LIBSSH2_ERROR_CHANNEL_CLOSED && rc != LIBSSH2_ERROR_CHANNEL_EOF_SENT)
    return t.failure(rc, doing);
  const bool offered = answer.size() >= 5 && answer[4] == 2;  // SSH_FXP_VERSION
  // Our EOF ends sftp-server; its CLOSE then comes at once.
  rc = t.drive([&] { return libssh2_channel_send_eof(raw); });
  if (rc == 0) rc = t.drive([&] { return libssh2_channel_close(raw); });
  if (rc == 0) rc = t.drive([&] { return libssh2_channel_wait_closed(raw); });
  if (rc == 0) channel.finished();
  return offered;
}

/// Whether this transfer goes by SFTP, starting the subsystem on first
/// use. Under `automatic`, a server that refuses the subsystem (or whose
/// subsystem ends at once) means SCP from then on.
///
/// The subsystem is started once, by libssh2_sftp_init itself. libssh2
/// 1.10's sftp_init waits forever for the answer from a subsystem that
/// ended before giving one, so a start that has not finished after
/// kSftpPatience is looked into by probe_sftp on a channel of its own,
/// which sees such an end: no SFTP then, and the start is left unfinished
/// (the session frees it); an SFTP the probe found working is waited for.
Result<bool> use_sftp(Transfer& t, TransferMethod method) {
  SessionState& im = t.im;
  if (method == TransferMethod::scp) return false;
  if (im.sftp) return true;
  auto none = [&]() -> Result<bool> {
    im.has_sftp = false;
    if (method == TransferMethod::automatic) return false;
    return Error(Exit::protocol, im.where + " offers no SFTP subsystem");
  };
  if (im.has_sftp == false) return none();
  // true: the probe saw an SFTP server answer; else what use_sftp returns.
  auto probe = [&]() -> Result<bool> {
    auto offered = probe_sftp(t);
    if (!offered) return offered.error();
    if (!*offered) return none();
    return true;
  };
  im.reap();
  const std::string doing = "starting SFTP";
  const auto patience_until = Clock::now() + kSftpPatience;
  bool probed = false;
  for (;;) {
    if (int c = t.check()) return t.failure(c, doing);
    LIBSSH2_SFTP* sftp = libssh2_sftp_init(im.s);
    if (sftp) {
      im.sftp = sftp;
      im.has_sftp = true;
      return true;
    }
    const int rc = libssh2_session_last_errno(im.s);
    if (rc != LIBSSH2_ERROR_EAGAIN) {
      if (is_connection_loss(rc)) return t.failure(rc, doing);
      // Refused (the server has no such subsystem): libssh2 says so in
      // these words. Any other failure is told apart by the probe.
      if (im.last_error().find("Unable to request SFTP subsystem") != std::string::npos)
        return none();
      if (auto p = probe(); !p || !*p) return p;
      return t.failure(rc, doing);
    }
    if (!probed) {
      Waited w = wait_fd(im.fd, blocked_events(im.s), patience_until, true, kSftpPatience);
      if (w == Waited::interrupted) return t.failure(kInterrupted, doing);
      if (w != Waited::timeout) continue;
      probed = true;
      if (auto p = probe(); !p || !*p) return p;
      continue;
    }
    if (int w = t.wait()) return t.failure(w, doing);
  }
}

/// stat (links followed) of `path`; nullopt when there is nothing there.
Result<std::optional<LIBSSH2_SFTP_ATTRIBUTES>> sftp_stat(Transfer& t, const std::string& path) {
  LIBSSH2_SFTP_ATTRIBUTES a{};
  int rc = t.drive([&] {
    return libssh2_sftp_stat_ex(t.im.sftp, path.data(), static_cast<unsigned>(path.size()),
                                LIBSSH2_SFTP_STAT, &a);
  });
  if (rc == 0) return std::optional<LIBSSH2_SFTP_ATTRIBUTES>(a);
  auto status = t.sftp_status(rc);
  if (status == LIBSSH2_FX_NO_SUCH_FILE || status == LIBSSH2_FX_NO_SUCH_PATH)
    return std::optional<LIBSSH2_SFTP_ATTRIBUTES>();
  return t.failure(rc, "looking at " + path);
}

bool is_dir(const LIBSSH2_SFTP_ATTRIBUTES& a) {
  return (a.flags & LIBSSH2_SFTP_ATTR_PERMISSIONS) && LIBSSH2_SFTP_S_ISDIR(a.permissions);
}

bool is_file(const LIBSSH2_SFTP_ATTRIBUTES& a) {
  return (a.flags & LIBSSH2_SFTP_ATTR_PERMISSIONS) && LIBSSH2_SFTP_S_ISREG(a.permissions);
}

Status sftp_set_mode(Transfer& t, const std::string& path, int mode) {
  LIBSSH2_SFTP_ATTRIBUTES a{};
  a.flags = LIBSSH2_SFTP_ATTR_PERMISSIONS;
  a.permissions = static_cast<unsigned long>(mode) & 07777u;
  int rc = t.drive([&] {
    return libssh2_sftp_stat_ex(t.im.sftp, path.data(), static_cast<unsigned>(path.size()),
                                LIBSSH2_SFTP_SETSTAT, &a);
  });
  if (rc != 0) return t.failure(rc, "setting the mode of " + path);
  return {};
}

/// Makes the folder `path` unless one is there. Returns whether it did.
Result<bool> sftp_mkdir(Transfer& t, const std::string& path, int mode) {
  int rc = t.drive([&] {
    return libssh2_sftp_mkdir_ex(t.im.sftp, path.data(), static_cast<unsigned>(path.size()), mode);
  });
  if (rc == 0) return true;
  // OpenSSH answers "failure" for an existing path: see what is there.
  if (t.sftp_status(rc) != 0) {
    auto st = sftp_stat(t, path);
    if (st && *st && is_dir(**st)) return false;
    if (st && *st)
      return Error(Exit::protocol, "creating the folder " + path + " on " + t.im.where +
                                       " failed: a file is in the way");
  }
  return t.failure(rc, "creating the folder " + path);
}

/// mkdir -p: every missing folder of `path`, the last one with exactly
/// `mode` (when `exact`), the others as the server's umask makes them.
/// Returns whether the last one was created.
Result<bool> sftp_mkdirs(Transfer& t, const std::string& path, int mode, bool exact = true) {
  auto st = sftp_stat(t, path);
  if (!st) return st.error();
  if (*st) {
    if (is_dir(**st)) return false;
    return Error(Exit::protocol, "creating the folder " + path + " on " + t.im.where +
                                     " failed: a file is in the way");
  }
  std::string parent = remote_parent(path);
  if (parent != path && parent != "." && parent != "/") {
    auto made = sftp_mkdirs(t, parent, 0755, false);
    if (!made) return made.error();
  }
  auto made = sftp_mkdir(t, path, mode);
  if (!made) return made.error();
  if (*made && exact) {
    // mkdir's mode passes through the server's umask.
    if (auto s = sftp_set_mode(t, path, mode); !s) return s.error();
  }
  return *made;
}

/// One remote file being written by SFTP. Destroyed before finish() (an
/// error, an interrupt, an exception from a progress callback), it takes
/// back what it wrote: the partial file is removed if the connection
/// still allows, within the transfer's cleanup time.
class SftpWriter {
 public:
  SftpWriter(Transfer& t, std::string path) : t_(t), path_(std::move(path)) {}
  SftpWriter(const SftpWriter&) = delete;
  SftpWriter& operator=(const SftpWriter&) = delete;
  ~SftpWriter() {
    if (h_ || created_) abandon();
  }

  Status open(int mode) {
    int rc = t_.drive([&] {
      h_ = libssh2_sftp_open_ex(t_.im.sftp, path_.data(), static_cast<unsigned>(path_.size()),
                                kWriteFlags, mode, LIBSSH2_SFTP_OPENFILE);
      return h_ ? 0 : libssh2_session_last_errno(t_.im.s);
    });
    if (rc != 0) {
      h_ = nullptr;
      Error e = t_.failure(rc, "creating " + path_);
      if (t_.sftp_status(rc) == LIBSSH2_FX_FAILURE) {
        auto st = sftp_stat(t_, path_);
        if (st && *st && is_dir(**st))
          e.message =
              "creating " + path_ + " on " + t_.im.where + " failed: a folder is in the way";
      }
      return e;
    }
    created_ = true;
    return {};
  }

  /// Streams `src` to the file, keeping up to kBufferSize in flight.
  Status write(Source& src, std::vector<char>& buf) {
    buf_ = &buf;
    bool at_end = false;
    int idle = 0;
    for (;;) {
      if (int c = t_.check()) return t_.failure(c, "writing " + path_);
      // What libssh2 sent and the server has not acknowledged stays at the
      // head of the buffer (libssh2 counts it and skips it); new data goes
      // after it, so the pipeline never drains while the file lasts.
      if (!at_end && end_ - start_ <= buf.size() / 2) {
        std::memmove(buf.data(), buf.data() + start_, end_ - start_);
        end_ -= start_;
        start_ = 0;
        auto n = src.read(buf.data() + end_, buf.size() - end_);
        if (!n) return n.error();
        end_ += *n;
        at_end = end_ < buf.size();
      }
      if (start_ == end_) break;
      ssize_t n = libssh2_sftp_write(h_, buf.data() + start_, end_ - start_);
      if (n > 0) {
        start_ += static_cast<size_t>(n);
        t_.advance(static_cast<uint64_t>(n));
        idle = 0;
        continue;
      }
      if (n == LIBSSH2_ERROR_EAGAIN || (n == 0 && ++idle > 1)) {
        if (int w = t_.wait()) return t_.failure(w, "writing " + path_);
        continue;
      }
      if (n == 0) continue;
      // libssh2 has dropped what it had in flight: nothing to take back.
      start_ = end_;
      return t_.failure(static_cast<int>(n), "writing " + path_);
    }
    return {};
  }

  /// Sets the mode (the server's umask does not apply) and closes.
  Status finish(int mode) {
    LIBSSH2_SFTP_ATTRIBUTES a{};
    a.flags = LIBSSH2_SFTP_ATTR_PERMISSIONS;
    a.permissions = static_cast<unsigned long>(mode) & 07777u;
    int rc = t_.drive([&] { return libssh2_sftp_fstat_ex(h_, &a, 1); });
    if (rc != 0) return t_.failure(rc, "setting the mode of " + path_);
    rc = t_.drive([&] { return libssh2_sftp_close_handle(h_); });
    h_ = nullptr;
    if (rc != 0) return t_.failure(rc, "closing " + path_);
    created_ = false;
    return {};
  }

 private:
  void abandon() {
    SessionState& im = t_.im;
    const auto deadline = t_.cleanup_deadline();
    // Let libssh2 finish what it has in flight (a packet half sent would
    // block every other request), without adding to it.
    while (h_ && buf_ && start_ < end_ && Clock::now() < deadline) {
      ssize_t n = libssh2_sftp_write(h_, buf_->data() + start_, end_ - start_);
      if (n > 0) {
        start_ += static_cast<size_t>(n);
      } else if (n == LIBSSH2_ERROR_EAGAIN || n == 0) {
        wait_fd(im.fd, blocked_events(im.s), deadline, false, milliseconds(100));
      } else {
        break;
      }
    }
    if (h_ &&
        drive_cleanup(im, deadline, [&] { return libssh2_sftp_close_handle(h_); }) == kTimedOut)
      im.orphaned_handles.push_back(h_);
    h_ = nullptr;
    if (created_)
      drive_cleanup(im, deadline, [&] {
        return libssh2_sftp_unlink_ex(im.sftp, path_.data(), static_cast<unsigned>(path_.size()));
      });
  }

  Transfer& t_;
  std::string path_;
  LIBSSH2_SFTP_HANDLE* h_ = nullptr;
  bool created_ = false;
  std::vector<char>* buf_ = nullptr;
  size_t start_ = 0;
  size_t end_ = 0;
};

Status sftp_upload(Transfer& t, Source& src, const std::string& remote, int mode,
                   std::vector<char>& buf) {
  SftpWriter w(t, remote);
  if (auto s = w.open(mode); !s) return s;
  if (auto s = w.write(src, buf); !s) return s;
  return w.finish(mode);
}

/// A remote handle closed when it goes (best effort).
class SftpHandle {
 public:
  SftpHandle(Transfer& t, LIBSSH2_SFTP_HANDLE* h) : t_(t), h_(h) {}
  SftpHandle(const SftpHandle&) = delete;
  SftpHandle& operator=(const SftpHandle&) = delete;
  ~SftpHandle() {
    if (h_ && drive_cleanup(t_.im, t_.cleanup_deadline(),
                            [&] { return libssh2_sftp_close_handle(h_); }) == kTimedOut)
      t_.im.orphaned_handles.push_back(h_);
  }
  LIBSSH2_SFTP_HANDLE* get() const { return h_; }
  /// Closes it and says how that went.
  Status close(Transfer& t, const std::string& path) {
    int rc = t.drive([&] { return libssh2_sftp_close_handle(h_); });
    h_ = nullptr;
    if (rc != 0) return t.failure(rc, "closing " + path);
    return {};
  }

 private:
  Transfer& t_;
  LIBSSH2_SFTP_HANDLE* h_;
};

/// Streams the remote file `remote` into `fd` (`local` names it).
Status sftp_download(Transfer& t, const std::string& remote, int fd, const std::string& local,
                     std::vector<char>& buf) {
  LIBSSH2_SFTP_HANDLE* raw = nullptr;
  int rc = t.drive([&] {
    raw = libssh2_sftp_open_ex(t.im.sftp, remote.data(), static_cast<unsigned>(remote.size()),
                               LIBSSH2_FXF_READ, 0, LIBSSH2_SFTP_OPENFILE);
    return raw ? 0 : libssh2_session_last_errno(t.im.s);
  });
  if (rc != 0) return t.failure(rc, "opening " + remote);
  SftpHandle h(t, raw);
  for (;;) {
    if (int c = t.check()) return t.failure(c, "reading " + remote);
    ssize_t n = libssh2_sftp_read(h.get(), buf.data(), buf.size());
    if (n > 0) {
      if (auto s = write_all_fd(fd, buf.data(), static_cast<size_t>(n), local); !s) return s;
      t.advance(static_cast<uint64_t>(n));
      continue;
    }
    if (n == 0) break;
    if (n != LIBSSH2_ERROR_EAGAIN) return t.failure(static_cast<int>(n), "reading " + remote);
    if (int w = t.wait()) return t.failure(w, "reading " + remote);
  }
  return h.close(t, remote);
}

struct RemoteEntry {
  std::string rel;  ///< path below the root, "a/b"
  bool dir = false;
  int mode = 0;
  uint64_t size = 0;
};

/// The tree under `dir` (links followed), parents before their content.
Status sftp_list_tree(Transfer& t, const std::string& dir, const std::string& rel,
                      std::vector<RemoteEntry>& out, int depth) {
  if (depth > 64)
    return Error(Exit::protocol, "the tree under " + dir + " on " + t.im.where +
                                     " is deeper than 64 levels (a link loop?)");
  LIBSSH2_SFTP_HANDLE* raw = nullptr;
  int rc = t.drive([&] {
    raw = libssh2_sftp_open_ex(t.im.sftp, dir.data(), static_cast<unsigned>(dir.size()), 0, 0,
                               LIBSSH2_SFTP_OPENDIR);
    return raw ? 0 : libssh2_session_last_errno(t.im.s);
  });
  if (rc != 0) return t.failure(rc, "listing " + dir);
  SftpHandle h(t, raw);
  std::vector<std::pair<std::string, LIBSSH2_SFTP_ATTRIBUTES>> names;
  std::vector<char> name(4096);
  for (;;) {
    LIBSSH2_SFTP_ATTRIBUTES a{};
    int n = t.drive(
        [&] { return libssh2_sftp_readdir_ex(h.get(), name.data(), name.size(), nullptr, 0, &a); });
    if (n == 0) break;
    if (n < 0) return t.failure(n, "listing " + dir);
    std::string entry(name.data(), static_cast<size_t>(n));
    if (entry == "." || entry == "..") continue;
    names.emplace_back(std::move(entry), a);
  }
  if (auto s = h.close(t, dir); !s) return s;
  std::sort(names.begin(), names.end(),
            [](const auto& x, const auto& y) { return x.first < y.first; });
  for (auto& named : names) {
    const std::string path = remote_join(dir, named.first);
    LIBSSH2_SFTP_ATTRIBUTES a = named.second;
    if ((a.flags & LIBSSH2_SFTP_ATTR_PERMISSIONS) && LIBSSH2_SFTP_S_ISLNK(a.permissions)) {
      auto st = sftp_stat(t, path);
      if (!st) return st.error();
      if (!*st)
        return Error(Exit::protocol,
                     "the symbolic link " + path + " on " + t.im.where + " leads nowhere");
      a = **st;
    }
    RemoteEntry e;
    e.rel = rel.empty() ? named.first : rel + "/" + named.first;
    e.mode = static_cast<int>(a.permissions & 07777u);
    if (is_dir(a)) {
      e.dir = true;
      out.push_back(e);
      if (auto s = sftp_list_tree(t, path, e.rel, out, depth + 1); !s) return s;
    } else if (is_file(a)) {
      e.size = a.filesize;
      out.push_back(e);
    } else {
      return Error(Exit::protocol,
                   path + " on " + t.im.where + " is neither a regular file nor a folder");
    }
  }
  return {};
}

// ---------------------------------------------------------------- SCP

/// The `scp` program on the server, run with -t (we send) or -f (it
/// sends) on an exec channel. Destroyed before finish(), the channel is
/// closed and left to the session.
class Scp {
 public:
  explicit Scp(Transfer& t) : t_(t) {}
  Scp(const Scp&) = delete;
  Scp& operator=(const Scp&) = delete;
  ~Scp() {
    // A packet libssh2 has half sent must go out before anything else can.
    const auto deadline = t_.cleanup_deadline();
    while (!pending_.empty() && Clock::now() < deadline) {
      ssize_t n = libssh2_channel_write_ex(channel_->get(), 0, pending_.data(), pending_.size());
      if (n != LIBSSH2_ERROR_EAGAIN) break;
      wait_fd(t_.im.fd, blocked_events(t_.im.s), deadline, false, milliseconds(100));
    }
  }

  /// Runs `command` (an scp invocation) on a new channel.
  Status start(const std::string& command, const std::string& doing) {
    SessionState& im = t_.im;
    im.reap();
    LIBSSH2_CHANNEL* raw = nullptr;
    int rc = t_.drive([&] {
      raw = libssh2_channel_open_ex(im.s, "session", sizeof "session" - 1, kScpWindow,
                                    LIBSSH2_CHANNEL_PACKET_DEFAULT, nullptr, 0);
      return raw ? 0 : libssh2_session_last_errno(im.s);
    });
    if (rc != 0) return t_.failure(rc, doing);
    channel_.emplace(im, raw);
    rc = t_.drive([&] { return libssh2_channel_exec(raw, command.c_str()); });
    if (rc == LIBSSH2_ERROR_CHANNEL_REQUEST_DENIED)
      return Error(Exit::protocol, im.where + " refused to run scp while " + doing);
    if (rc != 0) return t_.failure(rc, doing);
    return {};
  }

  /// Sends all of `data`; `count` says whether it is file content.
  Status send(std::string_view data, const std::string& doing, bool count = false) {
    while (!data.empty()) {
      if (int c = t_.check()) return t_.failure(c, doing);
      size_t chunk = std::min<size_t>(data.size(), kBufferSize);
      ssize_t n = libssh2_channel_write_ex(channel_->get(), 0, data.data(), chunk);
      if (n > 0) {
        pending_.clear();
        data.remove_prefix(static_cast<size_t>(n));
        if (count) t_.advance(static_cast<uint64_t>(n));
        continue;
      }
      if (n == LIBSSH2_ERROR_EAGAIN || n == 0) {
        // libssh2 may hold a packet of it half sent, which must go out
        // before anything else can; keep it should we stop here.
        pending_.assign(data.data(), data.data() + std::min<size_t>(chunk, kMaxPacket));
        if (int w = t_.wait()) return t_.failure(w, doing);
        continue;
      }
      pending_.clear();
      return lost(static_cast<int>(n), doing);
    }
    return {};
  }

  /// Reads the sink's or source's answer: a NUL byte, or a line saying
  /// what went wrong (which also ends the transfer).
  Status expect_ok(const std::string& doing) {
    auto c = byte(doing);
    if (!c) return c.error();
    if (*c == 0) return {};
    std::string line;
    if (*c == 1 || *c == 2) {
      auto rest = this->line(doing);
      if (!rest) return rest.error();
      line = *rest;
    } else {
      line = "unexpected answer '" + std::string(1, *c) + "'";
    }
    return refused(doing, line);
  }

  Status send_ok(const std::string& doing) { return send(std::string_view("\0", 1), doing); }

  /// The next byte from the remote scp; its end is an error naming what
  /// it wrote on stderr.
  Result<char> byte(const std::string& doing) {
    if (pos_ == in_.size()) {
      if (auto s = fill(doing); !s) return s.error();
    }
    return in_[pos_++];
  }

  /// A line without its '\n' (at most 64 KiB).
  Result<std::string> line(const std::string& doing) {
    std::string out;
    for (;;) {
      auto c = byte(doing);
      if (!c) return c.error();
      if (*c == '\n') return out;
      out += *c;
      if (out.size() > 65536) return Error(Exit::protocol, "scp sent an overlong line");
    }
  }

  /// Passes exactly `n` bytes on to `sink`.
  Status receive(uint64_t n, const std::function<Status(const char*, size_t)>& sink,
                 const std::string& doing) {
    while (n > 0) {
      if (pos_ == in_.size()) {
        if (auto s = fill(doing); !s) return s;
      }
      size_t k = static_cast<size_t>(std::min<uint64_t>(n, in_.size() - pos_));
      if (auto s = sink(in_.data() + pos_, k); !s) return s;
      pos_ += k;
      n -= k;
      t_.advance(k);
    }
    return {};
  }

  /// Ends the exchange: our EOF, the rest of its output, its exit status.
  Status finish(const std::string& doing) {
    LIBSSH2_CHANNEL* ch = channel_->get();
    int rc = t_.drive([&] { return libssh2_channel_send_eof(ch); });
    if (rc != 0) return lost(rc, doing);
    // What it says after the last record is an error line, if anything.
    std::string rest(in_.begin() + static_cast<std::ptrdiff_t>(pos_), in_.end());
    while (!eof_) {
      auto s = fill(doing);
      if (!s && !eof_) return s;
      if (rest.size() < 4096) rest.append(in_.begin(), in_.end());
      pos_ = in_.size();
    }
    rc = t_.drive([&] { return libssh2_channel_close(ch); });
    if (rc == 0) rc = t_.drive([&] { return libssh2_channel_wait_closed(ch); });
    if (rc != 0) return lost(rc, doing);
    channel_->finished();
    int status = libssh2_channel_get_exit_status(ch);
    if (!rest.empty() && (rest[0] == 1 || rest[0] == 2)) return refused(doing, rest.substr(1));
    if (status != 0) return refused(doing, "scp exited with status " + std::to_string(status));
    return {};
  }

  const std::string& errors() const { return stderr_; }

 private:
  Status fill(const std::string& doing) {
    LIBSSH2_CHANNEL* ch = channel_->get();
    in_.resize(256 * 1024);
    pos_ = 0;
    for (;;) {
      if (int c = t_.check()) {
        in_.clear();
        return t_.failure(c, doing);
      }
      drain_stderr();
      ssize_t n = libssh2_channel_read_ex(ch, 0, in_.data(), in_.size());
      if (n > 0) {
        in_.resize(static_cast<size_t>(n));
        return {};
      }
      if (n == 0 || libssh2_channel_eof(ch)) {
        in_.clear();
        eof_ = true;
        drain_stderr();
        return refused(doing, "scp ended early");
      }
      if (n != LIBSSH2_ERROR_EAGAIN) {
        in_.clear();
        return lost(static_cast<int>(n), doing);
      }
      if (int w = t_.wait()) {
        in_.clear();
        return t_.failure(w, doing);
      }
    }
  }

  /// Keeps the last few KiB of what scp wrote on stderr (and keeps its
  /// window open).
  void drain_stderr() {
    char buf[4096];
    for (;;) {
      ssize_t n =
          libssh2_channel_read_ex(channel_->get(), SSH_EXTENDED_DATA_STDERR, buf, sizeof buf);
      if (n <= 0) return;
      stderr_.append(buf, static_cast<size_t>(n));
      if (stderr_.size() > 8192) stderr_.erase(0, stderr_.size() - 8192);
    }
  }

  Error refused(const std::string& doing, std::string why) const {
    auto trim = [](std::string s) {
      while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
      return s;
    };
    why = trim(why);
    std::string err = trim(stderr_);
    if (!err.empty() && why.find(err) == std::string::npos) why += " (" + err + ")";
    return Error(Exit::protocol, doing + " on " + t_.im.where + " failed: " + why);
  }

  Error lost(int rc, const std::string& doing) const {
    if (rc == kTimedOut || rc == kInterrupted || is_connection_loss(rc))
      return t_.failure(rc, doing);
    return Error(Exit::protocol, doing + " on " + t_.im.where + " failed: " + t_.im.last_error());
  }

  Transfer& t_;
  std::optional<Channel> channel_;
  std::vector<char> in_;
  size_t pos_ = 0;
  bool eof_ = false;
  std::string stderr_;
  /// The start of what the last write left unsent (libssh2 sends one
  /// packet per write call: at most kMaxPacket of it).
  std::vector<char> pending_;
};

/// "T<mtime> 0 <atime> 0\n", so that `scp -p -t` sets exact modes.
std::string scp_times(int64_t mtime, int64_t atime) {
  return "T" + std::to_string(std::max<int64_t>(mtime, 0)) + " 0 " +
         std::to_string(std::max<int64_t>(atime, 0)) + " 0\n";
}

Status check_scp_name(const std::string& name, const std::string& path) {
  if (name.find('\n') != std::string::npos || name.find('\r') != std::string::npos)
    return Error(Exit::dataerr, "SCP cannot carry the name " + path + ": it has a line break");
  return {};
}

/// Sends one file record and its content to a sink.
/// `began` is true while the remote file exists only in part.
Status scp_send_file(Scp& scp, Source& src, uint64_t size, const std::string& name, int mode,
                     int64_t mtime, int64_t atime, const std::string& remote,
                     std::vector<char>& buf, bool& began) {
  const std::string doing = "writing " + remote;
  if (auto s = scp.send(scp_times(mtime, atime), doing); !s) return s;
  if (auto s = scp.expect_ok(doing); !s) return s;
  if (auto s = scp.send("C" + octal(mode) + " " + std::to_string(size) + " " + name + "\n", doing);
      !s)
    return s;
  if (auto s = scp.expect_ok("creating " + remote); !s) return s;
  began = true;
  uint64_t left = size;
  while (left > 0) {
    auto n = src.read(buf.data(), static_cast<size_t>(std::min<uint64_t>(left, buf.size())));
    if (!n) return n.error();
    if (*n == 0)
      return Error(Exit::ioerr, "cannot read " + src.path + ": it became shorter while read");
    if (auto s = scp.send(std::string_view(buf.data(), *n), doing, true); !s) return s;
    left -= *n;
  }
  if (auto s = scp.send_ok(doing); !s) return s;
  if (auto s = scp.expect_ok(doing); !s) return s;
  began = false;
  return {};
}

// ---------------------------------------------------------------- local trees

struct LocalEntry {
  std::string path;  ///< on this machine
  std::string rel;   ///< below the root, "a/b"
  bool dir = false;
  int mode = 0;
  uint64_t size = 0;
  int64_t mtime = 0;
  int64_t atime = 0;
};

/// The tree under `dir` (links followed), parents before their content.
/// `ancestors` holds the folders on the way down, to catch a link loop.
Status walk_local(const std::string& dir, const std::string& rel, std::vector<LocalEntry>& out,
                  std::set<std::pair<dev_t, ino_t>>& ancestors) {
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), ::closedir);
  if (!d) return Error(Exit::noinput, "cannot read the folder " + dir + ": " + errno_text(errno));
  std::vector<std::string> names;
  errno = 0;
  while (dirent* e = ::readdir(d.get())) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(std::move(n));
  }
  if (errno != 0)
    return Error(Exit::noinput, "cannot read the folder " + dir + ": " + errno_text(errno));
  d.reset();
  std::sort(names.begin(), names.end());
  for (const auto& n : names) {
    LocalEntry e;
    e.path = dir + "/" + n;
    e.rel = rel.empty() ? n : rel + "/" + n;
    struct stat st {};
    if (::stat(e.path.c_str(), &st) != 0) {
      int err = errno;
      struct stat lst {};
      if (::lstat(e.path.c_str(), &lst) == 0 && S_ISLNK(lst.st_mode))
        return Error(Exit::noinput, "the symbolic link " + e.path + " leads nowhere");
      return Error(Exit::noinput, "cannot read " + e.path + ": " + errno_text(err));
    }
    e.mode = static_cast<int>(st.st_mode & 07777);
    e.mtime = st.st_mtim.tv_sec;
    e.atime = st.st_atim.tv_sec;
    if (S_ISDIR(st.st_mode)) {
      auto id = std::make_pair(st.st_dev, st.st_ino);
      if (ancestors.count(id))
        return Error(Exit::noinput, e.path + " leads back into the folder tree it is in");
      e.dir = true;
      out.push_back(e);
      ancestors.insert(id);
      if (auto s = walk_local(e.path, e.rel, out, ancestors); !s) return s;
      ancestors.erase(id);
    } else if (S_ISREG(st.st_mode)) {
      e.size = static_cast<uint64_t>(st.st_size);
      out.push_back(e);
    } else {
      return Error(Exit::noinput, e.path + " is neither a regular file nor a folder");
    }
  }
  return {};
}

/// Opens a local file to upload and says what it is. Errors: Exit::noinput.
Result<std::unique_ptr<UniqueFd>> open_local(const std::string& local, struct stat& st) {
  auto fd = std::make_unique<UniqueFd>(::open(local.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd->get() < 0) return Error(Exit::noinput, "cannot read " + local + ": " + errno_text(errno));
  if (::fstat(fd->get(), &st) != 0)
    return Error(Exit::noinput, "cannot read " + local + ": " + errno_text(errno));
  if (!S_ISREG(st.st_mode)) return Error(Exit::noinput, local + " is not a regular file");
  ::posix_fadvise(fd->get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  return fd;
}

/// A download tree being put together in a hidden folder: beside the
/// target when the target does not exist (then renamed onto it), inside
/// it when it does (then merged into it). Removed unless published.
class Stage {
 public:
  static Result<std::unique_ptr<Stage>> create(const std::string& target, int root_mode) {
    auto stage = std::unique_ptr<Stage>(new Stage());
    stage->target_ = target;
    stage->root_mode_ = root_mode;
    struct stat st {};
    std::string pattern;
    if (::stat(target.c_str(), &st) == 0) {
      if (!S_ISDIR(st.st_mode))
        return Error(Exit::cantcreat, "cannot download a folder onto " + target + ": a file");
      stage->merge_ = true;
      pattern = target + "/.kiln-download-XXXXXX";
    } else {
      fs::path t = fs::path(target).lexically_normal();
      if (!t.has_filename()) t = t.parent_path();
      fs::path parent = t.parent_path();
      if (parent.empty()) parent = ".";
      pattern = (parent / ("." + t.filename().string() + ".tmp-XXXXXX")).string();
    }
    if (!::mkdtemp(pattern.data()))
      return Error(Exit::cantcreat,
                   "cannot create a folder beside " + target + ": " + errno_text(errno));
    stage->dir_ = pattern;
    return stage;
  }
  Stage(const Stage&) = delete;
  Stage& operator=(const Stage&) = delete;
  ~Stage() {
    if (dir_.empty()) return;
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  const std::string& dir() const { return dir_; }
  std::string path_of(const std::string& rel) const { return dir_ + "/" + rel; }

  Status make_dir(const std::string& rel, int mode) {
    if (::mkdir(path_of(rel).c_str(), 0700) != 0 && errno != EEXIST)
      return Error(Exit::cantcreat,
                   "cannot create the folder " + path_of(rel) + ": " + errno_text(errno));
    dir_modes_[rel] = mode;
    return {};
  }

  /// Moves the tree into place and gives the folders their modes.
  Status publish() {
    if (!merge_) {
      if (auto s = apply_modes(dir_); !s) return s;
      if (::chmod(dir_.c_str(), static_cast<mode_t>(root_mode_)) != 0 ||
          ::rename(dir_.c_str(), target_.c_str()) != 0)
        return Error(Exit::cantcreat, "cannot move the download into place at " + target_ + ": " +
                                          errno_text(errno));
      dir_.clear();
      return {};
    }
    if (auto s = merge(dir_, target_); !s) return s;
    ::rmdir(dir_.c_str());
    dir_.clear();
    return apply_modes(target_);
  }

 private:
  Stage() = default;

  /// Gives the folders below `root` their modes, deepest first: a folder
  /// without write or search permission changes only after its content.
  Status apply_modes(const std::string& root) {
    for (auto it = dir_modes_.rbegin(); it != dir_modes_.rend(); ++it) {
      const std::string path = root + "/" + it->first;
      if (::chmod(path.c_str(), static_cast<mode_t>(it->second)) != 0)
        return Error(Exit::cantcreat, "cannot set the mode of " + path + ": " + errno_text(errno));
    }
    return {};
  }

  /// Moves everything in `from` into `to`, into folders that exist there.
  Status merge(const std::string& from, const std::string& to) {
    std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(from.c_str()), ::closedir);
    if (!d) return Error(Exit::cantcreat, "cannot read " + from + ": " + errno_text(errno));
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d.get())) {
      std::string n = e->d_name;
      if (n != "." && n != "..") names.push_back(std::move(n));
    }
    d.reset();
    for (const auto& n : names) {
      const std::string src = from + "/" + n;
      const std::string dst = to + "/" + n;
      struct stat s {
      }, t{};
      if (::lstat(src.c_str(), &s) == 0 && S_ISDIR(s.st_mode) && ::stat(dst.c_str(), &t) == 0 &&
          S_ISDIR(t.st_mode)) {
        if (auto st = merge(src, dst); !st) return st;
        ::rmdir(src.c_str());
      } else if (::rename(src.c_str(), dst.c_str()) != 0) {
        return Error(Exit::cantcreat,
                     "cannot move the download into place at " + dst + ": " + errno_text(errno));
      }
    }
    return {};
  }

  std::string target_;
  std::string dir_;
  int root_mode_ = 0755;
  bool merge_ = false;
  std::map<std::string, int> dir_modes_;
};

/// A file inside a Stage: created exclusively, given its mode when done.
Status stage_file(const std::string& path, int mode, const std::function<Status(int fd)>& fill) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (fd.get() < 0)
    return Error(Exit::cantcreat, "cannot create " + path + ": " + errno_text(errno));
  if (auto s = fill(fd.get()); !s) return s;
  if (::fchmod(fd.get(), static_cast<mode_t>(mode)) != 0)
    return Error(Exit::ioerr, "cannot set the mode of " + path + ": " + errno_text(errno));
  return {};
}

/// A name the server sent for a file in a folder: one plain component.
bool safe_name(const std::string& n) {
  return !n.empty() && n != "." && n != ".." && n.find('/') == std::string::npos;
}

/// Parses "C0644 1234 name" / "D0755 0 name" into mode, size and name.
bool parse_record(const std::string& line, int& mode, uint64_t& size, std::string& name) {
  if (line.size() < 2) return false;
  const char* p = line.c_str() + 1;
  char* end = nullptr;
  unsigned long m = std::strtoul(p, &end, 8);
  if (end == p || *end != ' ' || m > 07777) return false;
  p = end + 1;
  if (!std::isdigit(static_cast<unsigned char>(*p))) return false;
  unsigned long long sz = std::strtoull(p, &end, 10);
  if (*end != ' ') return false;
  mode = static_cast<int>(m);
  size = sz;
  name = std::string(end + 1);
  return true;
}

/// Runs `command` on the server to clean up after a failed transfer: no
/// signal watch, until `deadline`, its outcome ignored.
void run_for_cleanup(SessionState& im, const std::string& command, Clock::time_point deadline) {
  im.reap();
  LIBSSH2_CHANNEL* raw = nullptr;
  int rc = drive_cleanup(im, deadline, [&] {
    raw = libssh2_channel_open_session(im.s);
    return raw ? 0 : libssh2_session_last_errno(im.s);
  });
  if (rc != 0) return;
  Channel channel(im, raw);
  if (drive_cleanup(im, deadline, [&] { return libssh2_channel_exec(raw, command.c_str()); }) != 0)
    return;
  if (drive_cleanup(im, deadline, [&] { return libssh2_channel_send_eof(raw); }) != 0) return;
  char buf[512];
  rc = drive_cleanup(im, deadline, [&] {
    for (;;) {
      ssize_t n = libssh2_channel_read_ex(raw, 0, buf, sizeof buf);
      if (n > 0) continue;
      if (n == LIBSSH2_ERROR_EAGAIN) {
        // Its stderr, if any, must not fill the window either.
        while (libssh2_channel_read_ex(raw, SSH_EXTENDED_DATA_STDERR, buf, sizeof buf) > 0) {
        }
      }
      return static_cast<int>(n);
    }
  });
  if (rc != 0) return;
  rc = drive_cleanup(im, deadline, [&] { return libssh2_channel_close(raw); });
  if (rc == 0) rc = drive_cleanup(im, deadline, [&] { return libssh2_channel_wait_closed(raw); });
  if (rc == 0) channel.finished();
}

/// Removes a remote file that an SCP upload left in part (`rm -f`), when
/// it goes while armed. Declared before the Scp, so the sink has been
/// told to stop first.
class PartialScpFile {
 public:
  explicit PartialScpFile(Transfer& t) : t_(t) {}
  PartialScpFile(const PartialScpFile&) = delete;
  PartialScpFile& operator=(const PartialScpFile&) = delete;
  ~PartialScpFile() {
    if (armed) run_for_cleanup(t_.im, "rm -f -- " + shell_quote(path), t_.cleanup_deadline());
  }
  std::string path;
  bool armed = false;

 private:
  Transfer& t_;
};

/// One file up by SCP, into exactly `remote`.
Status scp_put(Transfer& t, Source& src, uint64_t size, const std::string& remote, int mode,
               int64_t mtime, int64_t atime, std::vector<char>& buf) {
  const std::string name = remote_name(remote);
  if (auto s = check_scp_name(name, remote); !s) return s;
  if (name.empty() || name == "." || name == "..")
    return Error(Exit::usage, "'" + remote + "' does not name a file");
  PartialScpFile partial(t);
  partial.path = remote;
  Scp scp(t);
  const std::string doing = "creating " + remote;
  // Into the folder by name (-d: it must be one), so that the file lands
  // at exactly `remote` and never inside a folder of that name.
  if (auto s = scp.start("scp -p -d -t -- " + shell_quote(remote_parent(remote)), doing); !s)
    return s;
  if (auto s = scp.expect_ok(doing); !s) return s;
  if (auto s = scp_send_file(scp, src, size, name, mode, mtime, atime, remote, buf, partial.armed);
      !s)
    return s;
  return scp.finish("writing " + remote);
}

Status put_one(Transfer& t, bool sftp, Source& src, uint64_t size, const std::string& remote,
               int mode, int64_t mtime, int64_t atime, std::vector<char>& buf) {
  if (sftp) return sftp_upload(t, src, remote, mode, buf);
  return scp_put(t, src, size, remote, mode, mtime, atime, buf);
}

}  // namespace

// ---------------------------------------------------------------- Session

Session::TransferMethod Session::automatic_method() const {
  if (!state_->has_sftp) return TransferMethod::automatic;
  return *state_->has_sftp ? TransferMethod::sftp : TransferMethod::scp;
}

Result<Session::RemoteStat> Session::remote_stat(const std::string& path, TransferMethod method) {
  TransferOptions opt;
  opt.method = method;
  Transfer t(*state_, opt);
  auto sftp = use_sftp(t, method);
  if (!sftp) return sftp.error();
  RemoteStat out;
  if (*sftp) {
    auto st = sftp_stat(t, path);
    if (!st) return st.error();
    if (!*st) return out;
    out.exists = true;
    out.is_directory = is_dir(**st);
    out.mode = static_cast<int>((*st)->permissions & 07777u);
    out.size = (*st)->filesize;
    return out;
  }
  const std::string q = shell_quote(path);
  std::string said, err;
  auto r = exec(
      "if [ -d " + q + " ]; then echo d; elif [ -e " + q + " ]; then echo f; else echo n; fi",
      [&](std::string_view d) { said += d; }, [&](std::string_view d) { err += d; });
  if (!r) return r.error();
  if (*r != 0 || said.empty())
    return Error(Exit::protocol, "looking at " + path + " on " + state_->where + " failed: " + err);
  out.exists = said[0] != 'n';
  out.is_directory = said[0] == 'd';
  return out;
}

Result<bool> Session::remote_is_directory(const std::string& path, TransferMethod method) {
  auto st = remote_stat(path, method);
  if (!st) return st.error();
  return st->is_directory;
}

Status Session::make_remote_directories(const std::string& path, int mode, TransferMethod method) {
  TransferOptions opt;
  opt.method = method;
  Transfer t(*state_, opt);
  auto sftp = use_sftp(t, method);
  if (!sftp) return sftp.error();
  if (*sftp) {
    auto made = sftp_mkdirs(t, path, mode);
    if (!made) return made.error();
    return {};
  }
  std::string err;
  auto r = exec("mkdir -p -m " + octal(mode) + " -- " + shell_quote(path), nullptr,
                [&](std::string_view d) { err += d; });
  if (!r) return r.error();
  if (*r != 0) {
    while (!err.empty() && std::isspace(static_cast<unsigned char>(err.back()))) err.pop_back();
    return Error(Exit::protocol,
                 "creating the folder " + path + " on " + state_->where + " failed: " + err);
  }
  return {};
}

Status Session::upload_file(const std::string& local, const std::string& remote_path,
                            const TransferOptions& opt, std::optional<int> mode) {
  struct stat st {};
  auto fd = open_local(local, st);
  if (!fd) return fd.error();
  Transfer t(*state_, opt);
  auto sftp = use_sftp(t, opt.method);
  if (!sftp) return sftp.error();
  std::vector<char> buf(kBufferSize);
  Source src{(*fd)->get(), local, {}};
  const int m = mode ? *mode & 07777 : static_cast<int>(st.st_mode & 07777);
  const auto size = static_cast<uint64_t>(st.st_size);
  t.begin(size);
  if (auto s =
          put_one(t, *sftp, src, size, remote_path, m, st.st_mtim.tv_sec, st.st_atim.tv_sec, buf);
      !s)
    return s;
  t.end();
  return {};
}

Status Session::upload_data(std::string_view data, const std::string& remote_path, int mode,
                            const TransferOptions& opt) {
  Transfer t(*state_, opt);
  auto sftp = use_sftp(t, opt.method);
  if (!sftp) return sftp.error();
  std::vector<char> buf(std::clamp<size_t>(data.size(), 1, kBufferSize));
  Source src{-1, "", data};
  const auto now = static_cast<int64_t>(::time(nullptr));
  t.begin(data.size());
  if (auto s = put_one(t, *sftp, src, data.size(), remote_path, mode & 07777, now, now, buf); !s)
    return s;
  t.end();
  return {};
}

Status Session::upload_directory(const std::string& local_dir, const std::string& remote_dir,
                                 const TransferOptions& opt) {
  struct stat root {};
  if (::stat(local_dir.c_str(), &root) != 0)
    return Error(Exit::noinput, "cannot read " + local_dir + ": " + errno_text(errno));
  if (!S_ISDIR(root.st_mode)) return Error(Exit::noinput, local_dir + " is not a folder");
  const int root_mode = static_cast<int>(root.st_mode & 07777);
  std::vector<LocalEntry> entries;
  std::set<std::pair<dev_t, ino_t>> ancestors{{root.st_dev, root.st_ino}};
  if (auto s = walk_local(local_dir, "", entries, ancestors); !s) return s;
  uint64_t total = 0;
  for (const auto& e : entries) total += e.size;

  Transfer t(*state_, opt);
  auto sftp = use_sftp(t, opt.method);
  if (!sftp) return sftp.error();
  std::vector<char> buf(kBufferSize);
  t.begin(total);

  if (*sftp) {
    // Folders are writable by us while they fill, and get their modes
    // after, deepest first.
    auto made = sftp_mkdirs(t, remote_dir, root_mode | 0700);
    if (!made) return made.error();
    for (const auto& e : entries) {
      const std::string remote = remote_join(remote_dir, e.rel);
      if (e.dir) {
        auto m = sftp_mkdir(t, remote, e.mode | 0700);
        if (!m) return m.error();
        continue;
      }
      struct stat st {};
      auto fd = open_local(e.path, st);
      if (!fd) return fd.error();
      Source src{(*fd)->get(), e.path, {}};
      if (auto s = sftp_upload(t, src, remote, e.mode, buf); !s) return s;
    }
    for (auto it = entries.rbegin(); it != entries.rend(); ++it)
      if (it->dir)
        if (auto s = sftp_set_mode(t, remote_join(remote_dir, it->rel), it->mode); !s) return s;
    if (*made)
      if (auto s = sftp_set_mode(t, remote_dir, root_mode); !s) return s;
    t.end();
    return {};
  }

  for (const auto& e : entries)
    if (auto s = check_scp_name(remote_name(e.rel), e.path); !s) return s;
  // One command: into the folder when it exists (its mode stays); else
  // make its parents and send the folder itself as a D record, which the
  // sink creates writable for us and gives its mode at the end. The first
  // line says which.
  std::string dir = remote_dir;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  const std::string top = remote_name(dir);
  if (auto s = check_scp_name(top, remote_dir); !s) return s;
  const bool can_make = !top.empty() && top != "." && top != "..";
  const std::string q = shell_quote(dir);
  const std::string parent = shell_quote(remote_parent(dir));
  const std::string sink = "scp -r -p -d -t -- ";
  std::string command = "if [ -d " + q + " ]; then echo there && exec " + sink + q + "; fi";
  if (can_make)
    command += "; mkdir -p -- " + parent + " && echo made && exec " + sink + parent;
  else
    command += "; mkdir -p -- " + q + " && echo there && exec " + sink + q;
  PartialScpFile partial(t);
  Scp scp(t);
  const std::string doing = "copying into " + remote_dir;
  if (auto s = scp.start(command, doing); !s) return s;
  auto said = scp.line(doing);
  if (!said) return said.error();
  const bool made = *said == "made";
  if (auto s = scp.expect_ok(doing); !s) return s;
  std::vector<std::string> open_dirs;  // rel paths of the D records not yet ended
  // Ends the D records that `rel` is not inside of ("" is the root).
  auto close_until = [&](const std::string& rel) -> Status {
    auto inside = [&](const std::string& d) { return d.empty() || rel.rfind(d + "/", 0) == 0; };
    while (!open_dirs.empty() && !inside(open_dirs.back())) {
      if (auto s = scp.send("E\n", doing); !s) return s;
      if (auto s = scp.expect_ok(doing); !s) return s;
      open_dirs.pop_back();
    }
    return {};
  };
  if (made) {
    if (auto s = scp.send(scp_times(root.st_mtim.tv_sec, root.st_atim.tv_sec), doing); !s) return s;
    if (auto s = scp.expect_ok(doing); !s) return s;
    if (auto s = scp.send("D" + octal(root_mode) + " 0 " + top + "\n", doing); !s) return s;
    if (auto s = scp.expect_ok("creating the folder " + dir); !s) return s;
    open_dirs.push_back("");  // the root, ended last
  }
  for (const auto& e : entries) {
    if (auto s = close_until(e.rel); !s) return s;
    const std::string remote = remote_join(dir, e.rel);
    const std::string name = remote_name(e.rel);
    if (e.dir) {
      if (auto s = scp.send(scp_times(e.mtime, e.atime), doing); !s) return s;
      if (auto s = scp.expect_ok(doing); !s) return s;
      if (auto s = scp.send("D" + octal(e.mode) + " 0 " + name + "\n", doing); !s) return s;
      if (auto s = scp.expect_ok("creating the folder " + remote); !s) return s;
      open_dirs.push_back(e.rel);
      continue;
    }
    struct stat st {};
    auto fd = open_local(e.path, st);
    if (!fd) return fd.error();
    Source src{(*fd)->get(), e.path, {}};
    partial.path = remote;
    if (auto s = scp_send_file(scp, src, e.size, name, e.mode, e.mtime, e.atime, remote, buf,
                               partial.armed);
        !s)
      return s;
  }
  while (!open_dirs.empty()) {
    if (auto s = scp.send("E\n", doing); !s) return s;
    if (auto s = scp.expect_ok(doing); !s) return s;
    open_dirs.pop_back();
  }
  if (auto s = scp.finish(doing); !s) return s;
  t.end();
  return {};
}

namespace {

/// The content of a file the SCP source has just announced, into `fd`.
Status scp_receive_file(Scp& scp, const std::string& remote, int fd, const std::string& local,
                        uint64_t size) {
  const std::string doing = "reading " + remote;
  if (auto s = scp.send_ok(doing); !s) return s;
  auto write = [&](const char* p, size_t n) { return write_all_fd(fd, p, n, local); };
  if (auto s = scp.receive(size, write, doing); !s) return s;
  if (auto s = scp.expect_ok(doing); !s) return s;
  return scp.send_ok(doing);
}

}  // namespace

Status Session::download_file(const std::string& remote_path, const std::string& local,
                              const TransferOptions& opt) {
  struct stat lst {};
  if (::stat(local.c_str(), &lst) == 0 && S_ISDIR(lst.st_mode))
    return Error(Exit::cantcreat, "cannot download a file onto " + local + ": a folder");
  Transfer t(*state_, opt);
  auto sftp = use_sftp(t, opt.method);
  if (!sftp) return sftp.error();
  std::vector<char> buf(kBufferSize);
  const std::string doing = "reading " + remote_path;

  if (*sftp) {
    auto st = sftp_stat(t, remote_path);
    if (!st) return st.error();
    if (!*st)
      return Error(Exit::protocol,
                   doing + " on " + state_->where + " failed: no such file or directory");
    if (!is_file(**st))
      return Error(Exit::protocol, doing + " on " + state_->where + " failed: not a regular file");
    auto file = AtomicFile::create(local, static_cast<unsigned>((*st)->permissions & 07777u));
    if (!file) return file.error();
    t.begin((*st)->filesize);
    if (auto s = sftp_download(t, remote_path, file->fd(), local, buf); !s) return s;
    if (auto s = file->commit(); !s) return s;
    t.end();
    return {};
  }

  Scp scp(t);
  if (auto s = scp.start("scp -p -f -- " + shell_quote(remote_path), doing); !s) return s;
  if (auto s = scp.send_ok(doing); !s) return s;
  t.begin(0);
  std::optional<AtomicFile> file;
  for (;;) {
    auto c = scp.byte(doing);
    if (!c) return c.error();
    auto line = scp.line(doing);
    if (!line) return line.error();
    const std::string record = std::string(1, *c) + *line;
    if (*c == 'T') {
      if (auto s = scp.send_ok(doing); !s) return s;
      continue;
    }
    int mode = 0;
    uint64_t size = 0;
    std::string name;
    if (*c == 'C' && parse_record(record, mode, size, name)) {
      auto f = AtomicFile::create(local, static_cast<unsigned>(mode));
      if (!f) return f.error();
      file.emplace(std::move(*f));
      t.grow_total(size);
      if (auto s = scp_receive_file(scp, remote_path, file->fd(), local, size); !s) return s;
      break;
    }
    if (*c == 1 || *c == 2)
      return Error(Exit::protocol, doing + " on " + state_->where + " failed: " + *line);
    return Error(Exit::protocol, doing + " on " + state_->where +
                                     " failed: scp sent an unexpected record '" + record + "'");
  }
  if (auto s = scp.finish(doing); !s) return s;
  if (auto s = file->commit(); !s) return s;
  t.end();
  return {};
}

Status Session::download_directory(const std::string& remote_dir, const std::string& local_dir,
                                   const TransferOptions& opt) {
  Transfer t(*state_, opt);
  auto sftp = use_sftp(t, opt.method);
  if (!sftp) return sftp.error();
  std::vector<char> buf(kBufferSize);
  const std::string doing = "reading " + remote_dir;

  if (*sftp) {
    auto st = sftp_stat(t, remote_dir);
    if (!st) return st.error();
    if (!*st)
      return Error(Exit::protocol,
                   doing + " on " + state_->where + " failed: no such file or directory");
    if (!is_dir(**st))
      return Error(Exit::protocol, doing + " on " + state_->where + " failed: not a folder");
    std::vector<RemoteEntry> entries;
    if (auto s = sftp_list_tree(t, remote_dir, "", entries, 0); !s) return s;
    uint64_t total = 0;
    for (const auto& e : entries) total += e.size;
    auto stage = Stage::create(local_dir, static_cast<int>((*st)->permissions & 07777u));
    if (!stage) return stage.error();
    t.begin(total);
    for (const auto& e : entries) {
      if (e.dir) {
        if (auto s = (*stage)->make_dir(e.rel, e.mode); !s) return s;
        continue;
      }
      const std::string path = (*stage)->path_of(e.rel);
      const std::string remote = remote_join(remote_dir, e.rel);
      auto fill = [&](int fd) { return sftp_download(t, remote, fd, path, buf); };
      if (auto s = stage_file(path, e.mode, fill); !s) return s;
    }
    if (auto s = (*stage)->publish(); !s) return s;
    t.end();
    return {};
  }

  Scp scp(t);
  if (auto s = scp.start("scp -r -p -f -- " + shell_quote(remote_dir), doing); !s) return s;
  if (auto s = scp.send_ok(doing); !s) return s;
  t.begin(0);
  std::unique_ptr<Stage> stage;
  std::vector<std::string> open_dirs;  // rel paths; the root is ""
  auto failed = [&](const std::string& why) {
    return Error(Exit::protocol, doing + " on " + state_->where + " failed: " + why);
  };
  do {
    auto c = scp.byte(doing);
    if (!c) return c.error();
    auto line = scp.line(doing);
    if (!line) return line.error();
    const std::string record = std::string(1, *c) + *line;
    if (*c == 1 || *c == 2) return failed(*line);
    if (*c == 'T') {
      if (auto s = scp.send_ok(doing); !s) return s;
      continue;
    }
    if (*c == 'E' && !open_dirs.empty()) {
      open_dirs.pop_back();
      if (auto s = scp.send_ok(doing); !s) return s;
      continue;
    }
    int mode = 0;
    uint64_t size = 0;
    std::string name;
    if ((*c != 'C' && *c != 'D') || !parse_record(record, mode, size, name))
      return failed("scp sent an unexpected record '" + record + "'");
    if (!stage) {
      if (*c != 'D') return failed("not a folder");
      auto made = Stage::create(local_dir, mode);
      if (!made) return made.error();
      stage = std::move(*made);
      open_dirs.push_back("");
      if (auto s = scp.send_ok(doing); !s) return s;
      continue;
    }
    if (!safe_name(name)) return failed("scp sent the unsafe name '" + name + "'");
    const std::string rel = open_dirs.back().empty() ? name : open_dirs.back() + "/" + name;
    if (*c == 'D') {
      if (auto s = stage->make_dir(rel, mode); !s) return s;
      open_dirs.push_back(rel);
      if (auto s = scp.send_ok(doing); !s) return s;
      continue;
    }
    t.grow_total(size);
    const std::string path = stage->path_of(rel);
    const std::string remote = remote_join(remote_dir, rel);
    auto fill = [&](int fd) { return scp_receive_file(scp, remote, fd, path, size); };
    if (auto s = stage_file(path, mode, fill); !s) return s;
  } while (!stage || !open_dirs.empty());
  if (auto s = scp.finish(doing); !s) return s;
  if (auto s = stage->publish(); !s) return s;
  t.end();
  return {};
}

}  // namespace kiln::ssh

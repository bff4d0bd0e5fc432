// SPDX-License-Identifier: MIT
#pragma once
/// Internal to the SSH communicator (ssh.cpp, ssh_transfer.cpp), not part
/// of libcommon's interface: the state behind a Session and the
/// interruptible waits every libssh2 call goes through.

#include <libssh2.h>
#include <libssh2_sftp.h>
#include <poll.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "result.hpp"
#include "ssh.hpp"

namespace kiln::ssh::detail {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

/// How long cleanup (signalling a command, closing, disconnecting, removing
/// a partial upload) may wait for a peer that no longer answers.
inline constexpr milliseconds kCleanupTime{1500};
/// drive()'s results besides libssh2's own codes (which are small negatives).
inline constexpr int kTimedOut = -100000;
inline constexpr int kInterrupted = -100001;

/// "850 ms", "2.5 s".
std::string seconds_text(Clock::duration d);

enum class Waited { ready, idle, timeout, interrupted };

/// Waits until `fd` has one of `events`, `deadline` passes, a signal
/// arrives (when `watch_signals`), or `cap` elapses (then idle).
Waited wait_fd(int fd, short events, Clock::time_point deadline, bool watch_signals,
               milliseconds cap = std::chrono::seconds(60));

/// True for the libssh2 codes that mean the TCP connection is gone.
bool is_connection_loss(int rc);
/// Words for such a code, e.g. "the server closed the connection".
std::string loss_reason(int rc);

/// The poll() events libssh2 is waiting for on the socket (POLLIN when it
/// says none: an agent round trip, or nothing pending at all).
inline short blocked_events(LIBSSH2_SESSION* s) {
  int dirs = libssh2_session_block_directions(s);
  short events = 0;
  if (dirs & LIBSSH2_SESSION_BLOCK_INBOUND) events |= POLLIN;
  if (dirs & LIBSSH2_SESSION_BLOCK_OUTBOUND) events |= POLLOUT;
  return events ? events : POLLIN;
}

struct SessionState {
  int fd = -1;
  LIBSSH2_SESSION* s = nullptr;
  bool handshaken = false;
  std::string where;
  HostKey host_key;
  int keepalive_seconds = 0;
  const std::string* kbd_password = nullptr;  ///< during keyboard-interactive
  /// The server's auth methods, asked once: libssh2 1.10 leaks the previous
  /// answer when libssh2_userauth_list() is called again.
  std::optional<std::string> auth_methods;
  /// Channels whose command we stopped waiting for: closed on our side,
  /// freed once the server has closed them too (or with the session).
  std::vector<LIBSSH2_CHANNEL*> abandoned;
  /// Bytes sent and received on the socket so far (counted by the send and
  /// recv callbacks libssh2 calls), so a transfer can tell a slow peer from
  /// a stalled one.
  uint64_t bytes_moved = 0;
  /// The SFTP subsystem, started by the first transfer that uses it and
  /// kept for the next ones.
  LIBSSH2_SFTP* sftp = nullptr;
  /// Whether the server offers SFTP, once a transfer has asked.
  std::optional<bool> has_sftp;
  /// SFTP handles a failed transfer could not close (the peer stopped
  /// answering): libssh2 frees a handle only in libssh2_sftp_close_handle,
  /// tried again when the session goes.
  std::vector<LIBSSH2_SFTP_HANDLE*> orphaned_handles;

  /// Sends EOF and CLOSE for `ch` without waiting for the server's CLOSE,
  /// which OpenSSH sends only once the command has exited.
  void abandon(LIBSSH2_CHANNEL* ch) {
    drive([&] { return libssh2_channel_close(ch); }, Clock::now() + milliseconds(200), false);
    abandoned.push_back(ch);
  }
  /// Frees the abandoned channels the server has closed since.
  void reap() {
    std::erase_if(abandoned, [](LIBSSH2_CHANNEL* ch) {
      return libssh2_channel_free(ch) != LIBSSH2_ERROR_EAGAIN;
    });
  }

  SessionState() = default;
  SessionState(const SessionState&) = delete;
  SessionState& operator=(const SessionState&) = delete;
  ~SessionState();

  std::string last_error() const {
    char* msg = nullptr;
    int len = 0;
    libssh2_session_last_error(s, &msg, &len, 0);
    return msg && len > 0 ? std::string(msg, static_cast<size_t>(len))
                          : std::string("unknown error");
  }

  /// Calls `op` (a libssh2 call returning 0 or an error code) until it stops
  /// answering EAGAIN, waiting on the socket in between. Returns its code,
  /// or kTimedOut / kInterrupted.
  template <class Op>
  int drive(Op&& op, Clock::time_point deadline, bool watch_signals = true) {
    for (;;) {
      int rc = op();
      if (rc != LIBSSH2_ERROR_EAGAIN) return rc;
      // EAGAIN with no socket direction comes from an agent round trip:
      // poll briefly rather than not at all.
      bool waits_on_socket = libssh2_session_block_directions(s) != 0;
      milliseconds cap = waits_on_socket ? std::chrono::seconds(60) : milliseconds(10);
      Waited w = wait_fd(fd, blocked_events(s), deadline, watch_signals, cap);
      if (w == Waited::timeout) return kTimedOut;
      if (w == Waited::interrupted) return kInterrupted;
    }
  }

  /// The Error for a failed `drive` of `doing` (e.g. "authentication").
  Error failure(int rc, const std::string& doing) const {
    if (rc == kTimedOut) return Error(Exit::tempfail, doing + " on " + where + " timed out");
    if (rc == kInterrupted)
      return Error(Exit::interrupted, "interrupted during " + doing + " on " + where);
    if (is_connection_loss(rc))
      return Error(Exit::protocol, "connection lost to " + where + " during " + doing + " (" +
                                       loss_reason(rc) + ")");
    return Error(Exit::protocol, doing + " on " + where + " failed: " + last_error());
  }
};

/// A session channel, freed when it goes out of scope once its command has
/// ended. Otherwise (timeout, interrupt, lost connection, an exception from
/// a callback) it is closed on our side and left to the session to free,
/// since OpenSSH closes a channel only when its command has exited.
class Channel {
 public:
  Channel(SessionState& state, LIBSSH2_CHANNEL* ch) : state_(state), ch_(ch) {}
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;
  ~Channel() {
    if (!finished_) {
      state_.abandon(ch_);
      return;
    }
    int rc =
        state_.drive([&] { return libssh2_channel_free(ch_); }, Clock::now() + kCleanupTime, false);
    if (rc == kTimedOut) state_.abandoned.push_back(ch_);
  }
  LIBSSH2_CHANNEL* get() const { return ch_; }
  /// The command has exited and both sides have closed the channel.
  void finished() { finished_ = true; }

 private:
  SessionState& state_;
  LIBSSH2_CHANNEL* ch_;
  bool finished_ = false;
};

}  // namespace kiln::ssh::detail

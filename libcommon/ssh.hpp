// SPDX-License-Identifier: MIT
#pragma once
/// The SSH communicator: one connection to a machine, authenticated with a
/// key, an agent or a password, that runs commands and streams their output.
/// Built on libssh2 in non-blocking mode: every wait is a poll() that also
/// watches kiln::signals::wake_fd(), so Ctrl-C ends any wait at once.
/// Passwords and passphrases never appear in an Error's message.

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "result.hpp"

namespace kiln::ssh {

namespace detail {
struct SessionState;  // the socket and libssh2 session, in ssh.cpp
}

/// Where the SSH server listens and whom to log in as.
struct Endpoint {
  std::string host;  ///< a name or an IPv4/IPv6 address
  int port = 22;
  std::string user;
};

/// What to authenticate with; empty fields are not tried.
struct Credentials {
  std::string private_key_file;  ///< OpenSSH or PEM private key (ed25519, ecdsa, rsa)
  std::string passphrase;        ///< for an encrypted key ("" = none)
  std::string password;          ///< password, or keyboard-interactive answered with it
  bool agent = false;            ///< try the keys of the agent at SSH_AUTH_SOCK
};

/// A public key as OpenSSH writes it.
struct HostKey {
  std::string openssh;      ///< "ssh-ed25519 AAAA..." (type and base64 blob)
  std::string fingerprint;  ///< "SHA256:..." as `ssh-keygen -lf` prints it
};

/// Reads a public key line ("type base64 [comment]", as in a .pub file or
/// authorized_keys) into its OpenSSH form without the comment and its
/// fingerprint. Errors: Exit::dataerr when it is not such a line.
Result<HostKey> parse_public_key(std::string_view line);

/// One TCP connection and its SSH session. Movable, not copyable; the
/// destructor disconnects (waiting at most a moment for a dead peer).
/// Later file transfer (SFTP, SCP) belongs here too: it uses the same
/// session and the same interruptible waits as exec().
class Session {
 public:
  /// Opens a TCP connection to `ep` and does the SSH handshake, retrying a
  /// refused, unreachable or dropped connection every ~200 ms until
  /// `timeout` has passed. Errors: Exit::tempfail (no handshake before the
  /// timeout; the message says the last reason), Exit::protocol (the peer is
  /// not an SSH server or the key exchange failed), Exit::config (unknown
  /// host name or port out of range), Exit::interrupted.
  static Result<Session> connect(const Endpoint& ep, std::chrono::milliseconds timeout);

  Session(Session&&) noexcept;
  Session& operator=(Session&&) noexcept;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session();

  /// The key the server presented in the handshake.
  const HostKey& host_key() const;

  /// Checks the server's key against `expected`, a public key line or a
  /// "SHA256:..." fingerprint. Errors: Exit::protocol "host key mismatch:
  /// expected SHA256:x, got SHA256:y", Exit::dataerr (`expected` unreadable).
  Status pin_host_key(const std::string& expected);

  /// Logs in as `user`, trying the agent, the key, then the password, each
  /// only when given. Errors: Exit::protocol "permission denied for user U
  /// (tried: ...; server accepts: ...)" or a lost connection; Exit::noinput
  /// (key file unreadable); Exit::config (key file not a private key, or
  /// wrong or missing passphrase); Exit::tempfail (no answer in `timeout`);
  /// Exit::interrupted.
  Status authenticate(const std::string& user, const Credentials& cred,
                      std::chrono::milliseconds timeout = std::chrono::seconds(60));

  /// Runs `command` with the user's shell, its stdin at its end at once,
  /// passing its stdout and stderr to `out` and `err` chunk by chunk as they
  /// arrive; returns its exit status (128+N when signal N ended it).
  /// Errors: Exit::protocol (the connection was lost: the message says so),
  /// Exit::tempfail (still running after `timeout`, 0 = no limit),
  /// Exit::interrupted (a signal arrived). On timeout or interrupt the
  /// channel is closed, which closes the command's stdin and output (it ends
  /// at its next write, by SIGPIPE); with libssh2 1.11 or later it is also
  /// sent TERM.
  Result<int> exec(const std::string& command, const std::function<void(std::string_view)>& out,
                   const std::function<void(std::string_view)>& err,
                   std::chrono::milliseconds timeout = std::chrono::milliseconds(0));

  /// Sends an SSH keepalive every `interval_seconds` while exec() waits, so
  /// a NAT or firewall keeps an idle connection; 0 turns it off.
  void keepalive(int interval_seconds);

 private:
  explicit Session(std::unique_ptr<detail::SessionState> state);
  friend Result<HostKey> wait_until_ready(const Endpoint&, const Credentials&,
                                          std::chrono::steady_clock::time_point,
                                          const std::function<Status()>&);
  std::unique_ptr<detail::SessionState> state_;
};

/// Waits for a booting machine: connects, handshakes and authenticates as
/// `ep.user` every ~200 ms until it works or `deadline` passes, calling
/// `should_stop()` before each try (its Error is returned as is). Returns
/// the host key of the server that let us in. Errors: Exit::tempfail after
/// the deadline, with the last failure in the message; Exit::interrupted;
/// at once, the errors no retry can cure (Exit::config, Exit::noinput).
Result<HostKey> wait_until_ready(const Endpoint& ep, const Credentials& cred,
                                 std::chrono::steady_clock::time_point deadline,
                                 const std::function<Status()>& should_stop);

/// Writes a new ed25519 key pair: the private key unencrypted in OpenSSH
/// format at `path` (mode 0600) and "ssh-ed25519 AAAA... comment" at
/// `path`.pub, each atomically. Returns the public key line (no newline).
/// Errors: Exit::usage (comment has a line break), Exit::cantcreat,
/// Exit::ioerr, Exit::software (libcrypto failed).
Result<std::string> generate_ed25519(const std::string& path, const std::string& comment);

}  // namespace kiln::ssh

// SPDX-License-Identifier: MIT
#pragma once
/// The SSH communicator: one connection to a machine, authenticated with a
/// key, an agent or a password, that runs commands and streams their output.
/// Built on libssh2 in non-blocking mode: every wait is a poll() that also
/// watches kiln::signals::wake_fd(), so Ctrl-C ends any wait at once.
/// Passwords and passphrases never appear in an Error's message.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "result.hpp"

namespace kiln::ssh {

namespace detail {
struct SessionState;  // the socket and libssh2 session, in ssh_internal.hpp
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

/// The fingerprint a pin stands for: `expected` is a public key line or a
/// "SHA256:..." fingerprint (trailing '=' padding and spaces ignored).
/// Errors: Exit::dataerr (`expected` unreadable).
Result<std::string> pinned_fingerprint(const std::string& expected);

/// One TCP connection and its SSH session. Movable, not copyable; the
/// destructor disconnects (waiting at most a moment for a dead peer).
/// File transfer (SFTP, SCP) uses the same session and the same
/// interruptible waits as exec().
class Session {
 public:
  /// How files travel.
  enum class TransferMethod {
    automatic,  ///< SFTP, or SCP when the server has no SFTP subsystem (found out once per session)
    sftp,       ///< SFTP only
    scp,        ///< SCP only: the `scp` program on the server, with a shell to run it
  };

  /// Called as bytes are acknowledged: `done` of `total` bytes of file
  /// content; at the start, every few hundred KiB or 200 ms, and at the end.
  using Progress = std::function<void(uint64_t done, uint64_t total)>;

  struct TransferOptions {
    TransferMethod method = TransferMethod::automatic;
    Progress progress;  ///< may be empty; an exception from it ends the transfer (cleaned up)
    /// Exit::tempfail when no byte moves on the connection for this long
    /// (Packer's ssh_read_write_timeout); 0 = wait as long as it takes.
    std::chrono::milliseconds stall_timeout{0};
  };

  /// What is at a remote path (symbolic links followed).
  struct RemoteStat {
    bool exists = false;
    bool is_directory = false;
    int mode = 0;       ///< permission bits (07777), when it exists (SFTP only: 0 by SCP)
    uint64_t size = 0;  ///< of a file (SFTP only: 0 by SCP)
  };

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

  /// For a process that forked and left this connection to its child: frees
  /// the libssh2 state here and closes this process's copy of the socket,
  /// without a word to the server and without shutting the socket down (the
  /// child's copy stays open). The session is unusable afterwards.
  void leave_to_child();

  // File transfer. Remote paths are taken as they are (relative ones from
  // the login directory); the caller applies Packer's destination rules
  // with remote_stat(). Every transfer stops at once on a signal
  // (Exit::interrupted) and on a stall (see TransferOptions). Errors common
  // to all: Exit::protocol (the connection was lost, or the server refused:
  // the message names the remote path and says the server's reason, e.g.
  // "no such file or directory", "permission denied"; a forced method the
  // server lacks), Exit::tempfail (stalled), Exit::interrupted.

  /// Copies the local file `local` to exactly `remote_path`, replacing a
  /// file there; its folder must exist. The remote file gets `mode`, or
  /// else the local file's permission bits. A failed or interrupted upload
  /// removes the partial remote file where the connection still allows.
  /// Errors: Exit::noinput (`local` missing, unreadable, not a regular
  /// file), Exit::ioerr (reading it failed midway).
  Status upload_file(const std::string& local, const std::string& remote_path,
                     const TransferOptions& opt, std::optional<int> mode = {});

  /// Writes `data` to exactly `remote_path` with `mode`, as upload_file.
  Status upload_data(std::string_view data, const std::string& remote_path, int mode,
                     const TransferOptions& opt);

  /// Copies the tree under `local_dir` into `remote_dir`, which is created
  /// with its parents if missing (then with `local_dir`'s mode; an existing
  /// one keeps its own). Files, subfolders and their permission bits land
  /// inside it; symbolic links are followed (copied as what they point
  /// to, as scp -r does), a link back into the tree is an error. Progress
  /// counts the sum of the file sizes. A failure leaves what was copied
  /// before it. Errors: Exit::noinput (`local_dir` missing, not a
  /// folder, or something in it unreadable or a dangling link),
  /// Exit::dataerr (SCP cannot carry a name with a line break).
  Status upload_directory(const std::string& local_dir, const std::string& remote_dir,
                          const TransferOptions& opt);

  /// Copies the remote file `remote_path` to exactly `local` (replacing a
  /// file there), with the remote file's permission bits. Written under a
  /// temporary name and renamed when complete: a failure leaves nothing.
  /// Errors: Exit::protocol (also when `remote_path` is missing or a
  /// folder), Exit::cantcreat (cannot write beside `local`), Exit::ioerr.
  Status download_file(const std::string& remote_path, const std::string& local,
                       const TransferOptions& opt);

  /// Copies the tree under `remote_dir` into `local_dir` (created if
  /// missing, with `remote_dir`'s mode), with permission bits; remote
  /// symbolic links are followed. The tree is assembled in a hidden
  /// temporary folder and moved into place when complete: a failure
  /// leaves nothing. With SFTP progress counts the whole tree from the
  /// start; with SCP the total grows as the server announces files.
  /// Errors: as download_file, and Exit::cantcreat when `local_dir` is a
  /// file.
  Status download_directory(const std::string& remote_dir, const std::string& local_dir,
                            const TransferOptions& opt);

  /// What is at `path` on the server. Errors: as above, with Exit::protocol
  /// when the server will not say (permission denied on a parent).
  Result<RemoteStat> remote_stat(const std::string& path,
                                 TransferMethod method = TransferMethod::automatic);

  /// remote_stat(path).is_directory.
  Result<bool> remote_is_directory(const std::string& path,
                                   TransferMethod method = TransferMethod::automatic);

  /// Creates the folder `path` and its missing parents with `mode` (as
  /// `mkdir -p`); an existing folder is left as it is. Errors: Exit::protocol
  /// (a file is in the way, permission denied), and as above.
  Status make_remote_directories(const std::string& path, int mode = 0755,
                                 TransferMethod method = TransferMethod::automatic);

  /// What `automatic` means on this session: `sftp` or `scp` once a
  /// transfer has found out whether the server offers SFTP, `automatic`
  /// before.
  TransferMethod automatic_method() const;

 private:
  explicit Session(std::unique_ptr<detail::SessionState> state);
  friend Result<Session> ready_session(const Endpoint&, const Credentials&,
                                       std::chrono::steady_clock::time_point,
                                       const std::function<Status()>&, int);
  std::unique_ptr<detail::SessionState> state_;
};

/// Waits for a booting machine: connects, handshakes and authenticates as
/// `ep.user` every ~200 ms until it works or `deadline` passes, calling
/// `should_stop()` before each try (its Error is returned as is). Returns
/// the host key of the server that let us in. Errors: Exit::tempfail after
/// the deadline, with the last failure in the message; Exit::interrupted;
/// at once, the errors no retry can cure (Exit::config, Exit::noinput).
/// `probe_port`, when not 0, is a port on `ep.host` that qemu's user network
/// forwards to a port the booting machine does not listen on: the server's
/// port is tried often only once a connection there was refused (before,
/// only after 10 s and every 5 s), because each connection made while the
/// guest's network is down reaches its SSH server later, stale, and costs
/// it a process just when it comes up.
Result<HostKey> wait_until_ready(const Endpoint& ep, const Credentials& cred,
                                 std::chrono::steady_clock::time_point deadline,
                                 const std::function<Status()>& should_stop, int probe_port = 0);

/// wait_until_ready(), returning the session that logged in (its host key
/// is host_key()), for a caller that goes on using it.
Result<Session> ready_session(const Endpoint& ep, const Credentials& cred,
                              std::chrono::steady_clock::time_point deadline,
                              const std::function<Status()>& should_stop, int probe_port = 0);

/// Writes a new ed25519 key pair: the private key unencrypted in OpenSSH
/// format at `path` (mode 0600) and "ssh-ed25519 AAAA... comment" at
/// `path`.pub, each atomically. Returns the public key line (no newline).
/// Errors: Exit::usage (comment has a line break), Exit::cantcreat,
/// Exit::ioerr, Exit::software (libcrypto failed).
Result<std::string> generate_ed25519(const std::string& path, const std::string& comment);

}  // namespace kiln::ssh

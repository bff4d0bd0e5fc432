// SPDX-License-Identifier: MIT
#pragma once
/// The communicator of one build: one SSH connection to its machine, reused
/// by every provisioning step, with the host key pinned, keepalives, and a
/// reconnect after a disconnect the build expected (a reboot). Remote
/// commands that are interrupted or time out are ended on the machine too.

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "result.hpp"
#include "ssh.hpp"

namespace kiln::keeper {
class Client;
}

namespace kiln::communicator {

/// Packer's exit status for a command whose connection dropped before it
/// ended (CmdDisconnect): valid_exit_codes may list it.
constexpr int kDisconnected = 2300218;

/// Receives a command's output chunk by chunk.
using Sink = std::function<void(std::string_view)>;

/// Where the machine is and how to log in.
struct Target {
  ssh::Endpoint endpoint;
  ssh::Credentials credentials;
  /// The key the machine showed at launch: a public key line or a
  /// "SHA256:..." fingerprint. Every connection must present it ("" = the
  /// first connection's key is pinned for the later ones).
  std::string host_key;
  int keepalive_seconds = 5;
  /// No byte moving for this long is a time-out (ssh_read_write_timeout;
  /// 0 = none).
  std::chrono::milliseconds read_write_timeout{0};
  ssh::Session::TransferMethod transfer = ssh::Session::TransferMethod::automatic;
  /// The unix socket of the machine's connection keeper (keeper.hpp), which
  /// holds a session logged in already: used when it answers, instead of a
  /// connection of our own ("" = none).
  std::string keeper;
};

class Communicator {
 public:
  explicit Communicator(Target target);
  /// Uses `session`, logged in to `target` already (the keeper's start).
  Communicator(Target target, ssh::Session session);
  Communicator(Communicator&&) noexcept;
  Communicator& operator=(Communicator&&) noexcept;
  ~Communicator();

  /// Connects, checks the host key and logs in, retrying a refused or
  /// dropped connection until `timeout`; or, when the target names a keeper
  /// that answers, uses the keeper's session. Errors: Exit::protocol (host key
  /// mismatch with both fingerprints, login denied), Exit::tempfail (no
  /// answer in time), Exit::config / Exit::noinput (key file), interrupted.
  Status connect(std::chrono::milliseconds timeout);

  /// Runs `command` with the user's shell and returns its exit status;
  /// kDisconnected when the connection dropped while it ran (the next call
  /// connects again). On timeout (0 = none) or interrupt the command's
  /// process group on the machine is sent TERM before the Error returns.
  /// Errors: Exit::tempfail, Exit::interrupted, Exit::protocol (could not
  /// start it).
  Result<int> run(const std::string& command, const Sink& out, const Sink& err,
                  std::chrono::milliseconds timeout = std::chrono::milliseconds(0));

  /// File transfer through the session (SFTP, else SCP); see ssh.hpp.
  /// `progress` gets bytes done and total.
  using Progress = std::function<void(uint64_t, uint64_t)>;
  Status upload_file(const std::string& local, const std::string& remote, const Progress& progress,
                     std::optional<int> mode = std::nullopt);
  Status upload_data(std::string_view data, const std::string& remote, int mode);
  Status upload_directory(const std::string& local, const std::string& remote,
                          const Progress& progress);
  Status download_file(const std::string& remote, const std::string& local,
                       const Progress& progress);
  Status download_directory(const std::string& remote, const std::string& local,
                            const Progress& progress);
  Result<bool> is_directory(const std::string& remote);

  /// Forgets the connection (after a reboot began); the next call
  /// connects again.
  void drop();
  bool connected() const { return session_.has_value() || keeper_ != nullptr; }
  /// Whether the keeper's session is used.
  bool through_keeper() const { return keeper_ != nullptr; }

  /// "user@host:port", for messages and the `ssh` command a user can run.
  std::string where() const;
  const Target& target() const { return target_; }

 private:
  Status ensure();
  /// The keeper, when the target names one that answers (asked once) and
  /// its socket has not broken since.
  keeper::Client* keeper();
  ssh::Session::TransferOptions transfer_options(const Progress& progress) const;
  /// Ends the process group whose leader is `pid` on the machine.
  void end_remote(int pid);

  Target target_;
  std::optional<ssh::Session> session_;
  std::unique_ptr<keeper::Client> keeper_;
  bool keeper_asked_ = false;
};

}  // namespace kiln::communicator

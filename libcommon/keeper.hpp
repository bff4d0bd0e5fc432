// SPDX-License-Identifier: MIT
#pragma once
/// The connection keeper of a machine: a small process vm-launch leaves
/// beside the machine's supervisor, holding the SSH session that found the
/// guest ready, and serving it to the tools that come next (provision,
/// capture) through a unix socket in the run directory. A build then logs
/// in once, as Packer's single process does, instead of once per tool; on a
/// slow guest each login costs tens of milliseconds of its CPU.
///
/// The socket speaks JSON lines. After the keeper's greeting
/// {"keeper":1,"where":"user@host:port","host_key":K}, a client sends one request at a
/// time: {"op":"run","command":C,"timeout_ms":N}, {"op":"upload_file",
/// "local":L,"remote":R[,"mode":M]}, {"op":"upload_data","data":BASE64,
/// "remote":R,"mode":M}, {"op":"upload_directory"|"download_file"|
/// "download_directory","local":L,"remote":R}, {"op":"is_directory",
/// "remote":R}, {"op":"drop"}. The keeper answers with any number of
/// {"out":BASE64}, {"err":BASE64} and {"progress":[DONE,TOTAL]}, then one
/// of {"status":N}, {"ok":true}, {"is_directory":B} or {"error":{"code":N,
/// "message":M}}. {"op":"cancel"} during a request ends it as a signal
/// would (the remote command gets TERM); a client that hangs up cancels
/// too. Local paths are absolute: the keeper reads and writes them itself.
///
/// One client is served at a time; a client that gets no greeting soon
/// (another is being served) connects on its own instead. The keeper ends
/// with the supervisor; a session left idle for a while is replaced by a
/// fresh login when the next client comes (the guest may have restarted
/// its SSH server or rebooted meanwhile).

#include <memory>
#include <string>

#include "communicator.hpp"
#include "result.hpp"
#include "ssh.hpp"

namespace kiln::keeper {

/// Starts the keeper of a machine: binds `socket_path` (mode 0600), then
/// forks a detached process that serves `session` (logged in to `target`)
/// there until the process `supervisor_pid` ends, writing its log to
/// `log_path` and its pid to keeper.pid beside the socket. This process gives the session up
/// without a word to the server. Errors: Exit::cantcreat (the socket), Exit::software (fork).
Status start(const std::string& socket_path, const communicator::Target& target,
             ssh::Session session, int supervisor_pid, const std::string& log_path);

/// A tool's end of the socket.
class Client {
 public:
  /// Connects and waits up to `greeting` for the keeper's greeting.
  /// Errors: Exit::unavailable (no keeper there, or it is busy).
  static Result<std::unique_ptr<Client>> connect(const std::string& socket_path,
                                                 std::chrono::milliseconds greeting);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  Result<int> run(const std::string& command, const communicator::Sink& out,
                  const communicator::Sink& err, std::chrono::milliseconds timeout);
  Status upload_file(const std::string& local, const std::string& remote,
                     const communicator::Communicator::Progress& progress, std::optional<int> mode);
  Status upload_data(std::string_view data, const std::string& remote, int mode);
  Status upload_directory(const std::string& local, const std::string& remote,
                          const communicator::Communicator::Progress& progress);
  Status download_file(const std::string& remote, const std::string& local,
                       const communicator::Communicator::Progress& progress);
  Status download_directory(const std::string& remote, const std::string& local,
                            const communicator::Communicator::Progress& progress);
  Result<bool> is_directory(const std::string& remote);
  Status drop();

  /// False once the keeper's socket broke: the caller goes on without it.
  bool usable() const { return fd_ >= 0; }
  /// What the keeper's session is logged in to: "user@host:port", and the
  /// host key it was pinned to (OpenSSH format).
  const std::string& where() const { return where_; }
  const std::string& host_key() const { return host_key_; }

 private:
  explicit Client(int fd) : fd_(fd) {}
  struct Reply;
  Result<Reply> call(const std::string& request, const communicator::Sink& out,
                     const communicator::Sink& err,
                     const communicator::Communicator::Progress& progress);
  /// A request's outcome when only its success counts.
  static Status done(const Result<Reply>& r);
  int fd_ = -1;
  std::string buffer_;
  std::string where_;
  std::string host_key_;
};

}  // namespace kiln::keeper

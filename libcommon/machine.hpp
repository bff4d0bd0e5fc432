// SPDX-License-Identifier: MIT
#pragma once
/// Machines that live between commands: each has a run directory (its
/// disk overlay, keys, serial log, QMP socket, machine.json) under the run
/// root, a supervisor process that owns qemu, and a forwarded SSH port held
/// by a lock for the machine's whole life, so that launches running at the
/// same time never get the same port.

#include <chrono>
#include <string>
#include <vector>

#include "result.hpp"

namespace kiln::machine {

/// $KILN_RUN_DIR, else ${XDG_RUNTIME_DIR:-/tmp}/kiln-UID; created 0700.
Result<std::string> run_root();

/// A TCP port on 127.0.0.1 in [min, max] that was free when taken and is
/// locked (flock on run_root/ports/PORT.lock) until every copy of fd() is
/// closed; a supervisor inherits the fd and so holds the port.
class PortLock {
 public:
  /// Errors: Exit::unavailable when every port in the range is taken.
  static Result<PortLock> acquire(int min, int max);
  PortLock(PortLock&& o) noexcept : port_(o.port_), fd_(o.fd_) { o.fd_ = -1; }
  PortLock& operator=(PortLock&&) = delete;
  PortLock(const PortLock&) = delete;
  ~PortLock();
  int port() const { return port_; }
  int fd() const { return fd_; }

 private:
  PortLock(int port, int fd) : port_(port), fd_(fd) {}
  int port_;
  int fd_;
};

/// A live machine as its run directory describes it.
struct Live {
  std::string id;
  std::string build;
  std::string run_dir;
  int supervisor_pid = 0;
  int qemu_pid = 0;
  int ssh_port = 0;
  std::string accelerator;
  long started = 0;  ///< unix seconds
  long expires = 0;  ///< unix seconds; the supervisor ends it then
};

/// Every machine whose supervisor is alive, oldest first. Run directories
/// left by a supervisor that died are removed on the way.
std::vector<Live> list();

/// How a machine is ended: `clean` gives the guest an ACPI power-down
/// first; `immediate` quits qemu at once (a launch that failed).
enum class Shutdown { clean, immediate };

/// Ends machine `id` and waits until its run directory is gone: asks its
/// supervisor (SIGTERM for a clean shutdown: ACPI power-down, then qemu's
/// quit, then a kill; SIGINT for an immediate one); if the supervisor is
/// gone, kills qemu itself and removes the directory. Errors:
/// Exit::noinput (no such machine), Exit::tempfail.
Status stop(const std::string& id, std::chrono::milliseconds timeout = std::chrono::seconds(60),
            Shutdown how = Shutdown::clean);

/// The machine that launcher process `pid` (a vm-launch) started and had
/// not handed over yet (no machine.json), or "" when there is none.
std::string launched_by(int pid);

/// A claim on a machine's run directory by the process that captures its
/// disk: while the holder lives, the supervisor leaves the directory (the
/// disk) behind when qemu ends, list() neither lists nor removes it, and
/// stop() counts the machine as stopped once qemu is gone. The claim is a
/// file "held-by" with the holder's pid; a holder that dies (kill -9) no
/// longer protects the directory, so the next list() removes it.
class Hold {
 public:
  /// Errors: Exit::cantcreat (the run directory is not writable),
  /// Exit::noinput (it does not exist: the machine is gone).
  static Result<Hold> take(const std::string& run_dir);
  Hold(Hold&& o) noexcept : dir_(std::move(o.dir_)) { o.dir_.clear(); }
  Hold& operator=(Hold&&) = delete;
  Hold(const Hold&) = delete;
  /// Removes the run directory (unless a "keep" file asks to keep it).
  ~Hold();
  const std::string& dir() const { return dir_; }
  /// Gives the directory back to the machine's supervisor (the machine
  /// stays running) instead of removing it.
  void release();

 private:
  explicit Hold(std::string dir) : dir_(std::move(dir)) {}
  std::string dir_;
};

/// True when a live process holds `run_dir` (see Hold).
bool held(const std::string& run_dir);

/// True when process `pid` exists and its command line mentions `marker`
/// (guards against a recycled pid).
bool process_alive(int pid, const std::string& marker);

}  // namespace kiln::machine

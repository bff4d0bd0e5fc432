// SPDX-License-Identifier: MIT
#include "process.hpp"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <boost/asio/io_context.hpp>
#include <boost/process.hpp>
#include <boost/process/extend.hpp>
#include <future>

#include "signals.hpp"

namespace kiln::process {

namespace bp = boost::process;

Result<std::string> find_program(const std::string& name) {
  if (name.find('/') != std::string::npos) {
    if (::access(name.c_str(), X_OK) == 0) return name;
    return Error(Exit::unavailable, "program " + name + " is missing or not executable");
  }
  auto path = bp::search_path(name);
  if (path.empty())
    return Error(Exit::unavailable, "program " + name + " is not installed (not found on PATH)");
  return path.string();
}

namespace {

/// Adds `env` to the child's environment, in the child (Boost.Process
/// 1.74's environment lookup reads past its buffer: AddressSanitizer
/// reports it).
struct AddEnvironment : bp::extend::handler {
  const std::map<std::string, std::string>& env;
  explicit AddEnvironment(const std::map<std::string, std::string>& e) : env(e) {}
  template <class Executor>
  void on_exec_setup(Executor& e) const {
    for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
    e.env = ::environ;  // the array execve() gets, taken before the fork
  }
};

}  // namespace

Result<Output> run(const Command& cmd, std::chrono::milliseconds timeout) {
  auto exe = find_program(cmd.program);
  if (!exe) return exe.error();

  boost::asio::io_context io;
  std::future<std::string> out, err;
  const AddEnvironment child_env(cmd.env);

  bp::child child;
  std::error_code ec;
  bp::async_pipe in_pipe(io);
  try {
    std::string cwd = cmd.cwd.empty() ? std::string(".") : cmd.cwd;
    if (cmd.input) {
      child = bp::child(*exe, bp::args(cmd.args), bp::std_out > out, bp::std_err > err,
                        bp::std_in < in_pipe, child_env, bp::start_dir(cwd), io, ec);
    } else {
      child = bp::child(*exe, bp::args(cmd.args), bp::std_out > out, bp::std_err > err,
                        bp::std_in < bp::null, child_env, bp::start_dir(cwd), io, ec);
    }
  } catch (const std::exception& e) {
    return Error(Exit::software, "cannot start " + cmd.program + ": " + e.what());
  }
  if (ec) return Error(Exit::software, "cannot start " + cmd.program + ": " + ec.message());
  if (cmd.input) {
    boost::asio::async_write(in_pipe, boost::asio::buffer(*cmd.input),
                             [&](const boost::system::error_code&, size_t) { in_pipe.close(); });
  }

  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::optional<Error> failure;
  while (!io.stopped()) {
    io.run_for(std::chrono::milliseconds(50));
    if (signals::interrupted()) {
      failure = Error(Exit::interrupted, cmd.program + " interrupted");
    } else if (timeout.count() > 0 && std::chrono::steady_clock::now() > deadline) {
      failure = Error(Exit::tempfail, cmd.program + " did not finish within " +
                                          std::to_string(timeout.count() / 1000.0) + " s");
    }
    if (failure) {
      child.terminate(ec);
      break;
    }
  }
  child.wait(ec);
  if (failure) return *failure;

  Output result;
  result.out = out.get();
  result.err = err.get();
  int native = child.native_exit_code();
  if (WIFSIGNALED(native))
    result.exit_code = 128 + WTERMSIG(native);
  else
    result.exit_code = child.exit_code();
  return result;
}

namespace {

/// Puts the child in a process group of its own, so the group can be
/// ended as a whole and a terminal's Ctrl-C reaches only the tool.
struct OwnProcessGroup : bp::extend::handler {
  template <class Executor>
  void on_exec_setup(Executor&) const {
    ::setpgid(0, 0);
  }
};

/// Reads a pipe chunk by chunk into `sink` until its end.
void pump(bp::async_pipe& pipe, std::array<char, 65536>& buf, const Sink& sink) {
  pipe.async_read_some(boost::asio::buffer(buf),
                       [&pipe, &buf, &sink](const boost::system::error_code& ec, size_t n) {
                         if (n > 0 && sink) sink(std::string_view(buf.data(), n));
                         if (!ec) pump(pipe, buf, sink);
                       });
}

}  // namespace

Result<int> run_streaming(const Command& cmd, const Sink& out, const Sink& err,
                          std::chrono::milliseconds timeout) {
  auto exe = find_program(cmd.program);
  if (!exe) return exe.error();

  boost::asio::io_context io;
  bp::async_pipe out_pipe(io), err_pipe(io), in_pipe(io);
  const AddEnvironment child_env(cmd.env);

  bp::child child;
  std::error_code ec;
  try {
    std::string cwd = cmd.cwd.empty() ? std::string(".") : cmd.cwd;
    if (cmd.input)
      child = bp::child(*exe, bp::args(cmd.args), bp::std_out > out_pipe, bp::std_err > err_pipe,
                        bp::std_in < in_pipe, child_env, bp::start_dir(cwd), OwnProcessGroup{}, ec);
    else
      child =
          bp::child(*exe, bp::args(cmd.args), bp::std_out > out_pipe, bp::std_err > err_pipe,
                    bp::std_in < bp::null, child_env, bp::start_dir(cwd), OwnProcessGroup{}, ec);
  } catch (const std::exception& e) {
    return Error(Exit::software, "cannot start " + cmd.program + ": " + e.what());
  }
  if (ec) return Error(Exit::software, "cannot start " + cmd.program + ": " + ec.message());
  const pid_t group = child.id();

  if (cmd.input)
    boost::asio::async_write(in_pipe, boost::asio::buffer(*cmd.input),
                             [&](const boost::system::error_code&, size_t) { in_pipe.close(); });
  std::array<char, 65536> out_buf, err_buf;
  pump(out_pipe, out_buf, out);
  pump(err_pipe, err_buf, err);

  const auto start = std::chrono::steady_clock::now();
  std::optional<Error> failure;
  // Both pipes at their end: the group's last writer is gone.
  while (!io.stopped()) {
    io.run_for(std::chrono::milliseconds(50));
    if (signals::interrupted())
      failure = Error(Exit::interrupted, cmd.program + " interrupted");
    else if (timeout.count() > 0 && std::chrono::steady_clock::now() - start > timeout)
      failure = Error(Exit::tempfail, cmd.program + " did not finish within " +
                                          std::to_string(timeout.count() / 1000) + " s");
    if (failure) break;
  }
  if (failure) {
    ::kill(-group, SIGTERM);
    const auto term_at = std::chrono::steady_clock::now();
    // The group's members close the pipes as they die; past two seconds
    // whatever is left is killed.
    while (!io.stopped() && std::chrono::steady_clock::now() - term_at < std::chrono::seconds(2))
      io.run_for(std::chrono::milliseconds(50));
    ::kill(-group, SIGKILL);
    child.wait(ec);
    return *failure;
  }
  child.wait(ec);
  int native = child.native_exit_code();
  if (WIFSIGNALED(native)) return 128 + WTERMSIG(native);
  return child.exit_code();
}

}  // namespace kiln::process

// SPDX-License-Identifier: MIT
#include "process.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/process.hpp>
#include <future>

#include "signals.hpp"

namespace kiln::process {

namespace bp = boost::process;

Result<std::string> find_program(const std::string& name) {
  if (name.find('/') != std::string::npos) {
    if (::access(name.c_str(), X_OK) == 0) return name;
    return Error(Exit::unavailable,
                 "program " + name + " is missing or not executable");
  }
  auto path = bp::search_path(name);
  if (path.empty())
    return Error(Exit::unavailable,
                 "program " + name + " is not installed (not found on PATH)");
  return path.string();
}

Result<Output> run(const Command& cmd, std::chrono::milliseconds timeout) {
  auto exe = find_program(cmd.program);
  if (!exe) return exe.error();

  boost::asio::io_context io;
  std::future<std::string> out, err;
  auto env = boost::this_process::environment();
  bp::environment child_env = env;
  for (const auto& [k, v] : cmd.env) child_env[k] = v;

  bp::child child;
  std::error_code ec;
  bp::async_pipe in_pipe(io);
  try {
    std::string cwd = cmd.cwd.empty() ? std::string(".") : cmd.cwd;
    if (cmd.input) {
      child = bp::child(*exe, bp::args(cmd.args), bp::std_out > out,
                        bp::std_err > err, bp::std_in < in_pipe, child_env,
                        bp::start_dir(cwd), io, ec);
    } else {
      child = bp::child(*exe, bp::args(cmd.args), bp::std_out > out,
                        bp::std_err > err, bp::std_in < bp::null, child_env,
                        bp::start_dir(cwd), io, ec);
    }
  } catch (const std::exception& e) {
    return Error(Exit::software, "cannot start " + cmd.program + ": " + e.what());
  }
  if (ec)
    return Error(Exit::software,
                 "cannot start " + cmd.program + ": " + ec.message());
  if (cmd.input) {
    boost::asio::async_write(in_pipe, boost::asio::buffer(*cmd.input),
                             [&](const boost::system::error_code&, size_t) {
                               in_pipe.close();
                             });
  }

  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::optional<Error> failure;
  while (!io.stopped()) {
    io.run_for(std::chrono::milliseconds(50));
    if (signals::interrupted()) {
      failure = Error(Exit::interrupted, cmd.program + " interrupted");
    } else if (timeout.count() > 0 &&
               std::chrono::steady_clock::now() > deadline) {
      failure = Error(Exit::tempfail,
                      cmd.program + " did not finish within " +
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

}  // namespace kiln::process

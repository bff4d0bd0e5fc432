// SPDX-License-Identifier: MIT
#pragma once
/// Running the real tools of the trade (qemu-img, qemu, ansible-playbook,
/// local shell commands) with Boost.Process: output captured, a time limit,
/// and the child ended when the tool is interrupted.

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "result.hpp"

namespace kiln::process {

struct Command {
  std::string program;  ///< a name looked up on PATH, or a path
  std::vector<std::string> args;
  std::map<std::string, std::string> env;  ///< added to the environment
  std::string cwd;                         ///< "" = the current directory
  std::optional<std::string> input;        ///< fed to stdin, else /dev/null
};

struct Output {
  int exit_code = 0;  ///< 128+N when ended by signal N
  std::string out;
  std::string err;
};

/// The absolute path of `name` on PATH (or `name` itself when it contains a
/// slash and is executable). Errors: Exit::unavailable naming the program.
Result<std::string> find_program(const std::string& name);

/// Runs `cmd` to completion and returns its exit code and output; a
/// non-zero exit is not an Error. Errors: Exit::unavailable (program
/// missing), Exit::tempfail (still running after `timeout`, which is then
/// killed; 0 = no limit), Exit::interrupted (a signal arrived; the child is
/// terminated first), Exit::software (could not start).
Result<Output> run(const Command& cmd,
                   std::chrono::milliseconds timeout = std::chrono::milliseconds(0));

/// Receives a child's output chunk by chunk, as it arrives.
using Sink = std::function<void(std::string_view)>;

/// Runs `cmd` in its own process group, passing its stdout and stderr to
/// `out` and `err` as they arrive (for live logs of long commands); returns
/// its exit code (128+N when ended by signal N). On timeout or interrupt the
/// whole group gets SIGTERM, then SIGKILL two seconds later, and is waited
/// for, so a script's own children do not outlive it. Errors as run().
Result<int> run_streaming(const Command& cmd, const Sink& out, const Sink& err,
                          std::chrono::milliseconds timeout = std::chrono::milliseconds(0));

}  // namespace kiln::process

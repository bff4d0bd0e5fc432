// SPDX-License-Identifier: MIT
#pragma once
/// Provisioning one build record: connect to its machine once (host key
/// pinned), run the build's provisioners in order with Packer's
/// pause_before, max_retries and timeout, run the error-cleanup-provisioner
/// when one fails, and add the record's "provisioned" section. A failed
/// build's machine is stopped (on_error=cleanup) or left running for the
/// user to log in (abort).

#include <rapidjson/document.h>

#include <functional>
#include <string>
#include <string_view>

#include "communicator.hpp"
#include "result.hpp"

namespace kiln::provision {

struct Options {
  /// News of each step, for the log.
  std::function<void(std::string_view)> say;
  /// A line a command printed, for the log (already split into lines).
  std::function<void(std::string_view line, bool is_stderr)> output;
  /// A progress sink for a transfer (may return {}).
  std::function<communicator::Communicator::Progress(const std::string& label)> progress;
  /// A terminal is there: breakpoints wait, on_error=ask asks.
  bool interactive = false;
  /// on_error=ask: shows the failure and returns 'c' (clean up), 'a'
  /// (abort, keep the machine) or 'r' (retry the step).
  std::function<char(const std::string& failure)> ask;
  /// Passphrase of an encrypted private key ("" = none).
  std::string passphrase;
  /// A password to log in with that the record does not hold ("" = the
  /// record's password_ref, if any).
  std::string password;
  /// Secrets for messages stored in the record.
  std::vector<std::string> secrets;
};

/// Provisions `record` (a build record with a live "machine" and no
/// "error") and adds "provisioned". On failure the section lists what ran,
/// and the Error names the provisioner ("provisioner 2 (shell): ...");
/// the machine has then been stopped unless on_error is abort (the
/// message says how to log in) — machine.state says which. Errors as
/// provisioner::run, plus Exit::dataerr (no machine in the record).
Status provision(rapidjson::Document& record, const Options& options);

/// How to reach the record's machine: its communicator section (host, port,
/// user, key file, pinned host key, the record's password) and the
/// builder's SSH settings; `passphrase` and `password` as in Options.
communicator::Target machine_target(const rapidjson::Document& record,
                                    const std::string& passphrase = {},
                                    const std::string& password = {});

/// The `ssh` command line that logs in to the record's machine.
std::string ssh_command(const rapidjson::Value& record);

}  // namespace kiln::provision

// SPDX-License-Identifier: MIT
#pragma once
/// Packer's provisioners, run against a build's machine: shell (scripts
/// uploaded and run over SSH), file (uploads and downloads with Packer's
/// trailing-slash rules), shell-local (commands on this host), ansible (the
/// real ansible-playbook with a generated inventory) and breakpoint. Each
/// takes one normalized provisioner object of a build record (see
/// schemas/build.schema.json) and reports the command's exit status.

#include <rapidjson/document.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>

#include "communicator.hpp"
#include "result.hpp"

namespace kiln::provisioner {

/// What a provisioner may use and whom it tells.
struct Environment {
  std::string build_name;    ///< PACKER_BUILD_NAME
  std::string builder_type;  ///< PACKER_BUILDER_TYPE
  /// The build's machine; null when the build has no communicator.
  communicator::Communicator* comm = nullptr;
  /// Packer's generated data of the machine, for templates and for local
  /// commands: Host, Port, User, SSHPrivateKeyFile, PackerHTTPAddr, ...
  std::map<std::string, std::string> generated;
  /// A step's news ("Uploading a => b").
  std::function<void(std::string_view)> say;
  /// One line a command printed (remote or local), stderr or not.
  std::function<void(std::string_view line, bool is_stderr)> output;
  /// A progress sink for a transfer named `label` (may return {}).
  std::function<communicator::Communicator::Progress(const std::string& label)> progress;
  /// The breakpoint provisioner may wait for Enter on the terminal.
  bool interactive = false;
};

/// What a provisioner did.
struct Step {
  int exit_code = 0;  ///< of its (last) command; 0 when it ran none
  bool skipped = false;
  std::string note;  ///< why it was skipped, for the record
};

/// Runs provisioner `p` (an object with "type") within `timeout` (0 =
/// none). Errors: Exit::failed (a command exited with a code not in
/// valid_exit_codes: the message has the code and the last lines of its
/// output), Exit::protocol (SSH), Exit::tempfail (timeout, or the machine
/// did not come back within start_retry_timeout), Exit::interrupted,
/// Exit::noinput (a local file is missing), Exit::unavailable (a program
/// such as ansible-playbook is missing), Exit::config.
Result<Step> run(const rapidjson::Value& p, Environment& env,
                 std::chrono::milliseconds timeout = std::chrono::milliseconds(0));

/// A shell provisioner kiln makes itself (provision --inline and --script,
/// capture's sysprep) with the settings template-validate would fill in:
/// `lines` are the inline commands, or with `scripts` the local scripts to
/// upload; /tmp as remote folder; exit status 0 only.
rapidjson::Value make_shell(const std::vector<std::string>& lines, bool scripts,
                            std::string_view shebang, std::string_view execute_command,
                            rapidjson::Document::AllocatorType& a);

/// Packer's flattened environment variables ({{.Vars}}): PACKER_BUILD_NAME,
/// PACKER_BUILDER_TYPE, the HTTP server's address when there is one, then
/// `environment_vars` and `env`, sorted by name, single quotes escaped,
/// each formatted with `env_var_format` ("%s='%s' ").
std::string flattened_vars(const rapidjson::Value& p, const Environment& env);

/// Go's fmt.Sprintf for a format whose verbs are %s (and %%), as Packer
/// uses env_var_format.
std::string go_sprintf(std::string_view format, const std::vector<std::string>& args);

/// Where a file provisioner's upload of `source` lands for `destination`,
/// with Packer's rules: a destination ending in "/" is a folder the file
/// goes into; a source folder ending in "/" has its contents copied into
/// the destination, otherwise the folder itself is.
std::string upload_target(const std::string& source, const std::string& destination,
                          bool source_is_directory);

}  // namespace kiln::provisioner

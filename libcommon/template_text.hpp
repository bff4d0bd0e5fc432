// SPDX-License-Identifier: MIT
#pragma once
/// Packer's template strings: Go text/template syntax ({{ ... }} actions,
/// pipelines, parenthesised calls, string/raw/number literals, .Field
/// references) with Packer's function set (user, env, timestamp, isotime,
/// strftime, uuid, pwd, template_dir, build_name, build_type, split,
/// replace, replace_all, upper, lower, packer_version).

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "result.hpp"

namespace kiln::tmpl {

/// Everything a template string may refer to while it is rendered.
struct Context {
  /// {{user `name`}}: the variable's value, or an Error (undefined).
  std::function<Result<std::string>(const std::string&)> user;
  /// {{env `NAME`}} is only allowed in variable defaults, as in Packer.
  bool env_allowed = false;
  std::string build_name;      ///< {{build_name}}
  std::string build_type;      ///< {{build_type}}
  std::string template_dir;    ///< {{template_dir}}, absolute
  std::string pwd;             ///< {{pwd}}
  std::string packer_version;  ///< {{packer_version}}
  std::int64_t timestamp = 0;  ///< unix seconds, fixed when the tool starts
  /// {{ .Name }} and friends. A field not listed here is an error, unless
  /// defer_unknown_fields is set: then the whole action is copied to the
  /// output unchanged, to be rendered later by the tool that knows it
  /// (e.g. {{ .HTTPIP }} in boot_command, rendered by vm-launch).
  std::map<std::string, std::string> fields;
  bool defer_unknown_fields = false;
};

/// Renders `text`. Errors (Exit::dataerr) name the function or field and
/// the problem: unknown function ("function \"foo\" not defined"), sed
/// (deprecated in Packer, an error), bad arguments, unclosed action,
/// env outside variables, a user variable that does not exist.
Result<std::string> render(std::string_view text, const Context& ctx);

/// Checks only the syntax of `text` and that every function it calls
/// exists; evaluates nothing. Used by --syntax-only.
Status check_syntax(std::string_view text);

/// True when `text` contains a template action at all ("{{").
bool has_actions(std::string_view text);

}  // namespace kiln::tmpl

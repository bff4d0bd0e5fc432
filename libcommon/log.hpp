// SPDX-License-Identifier: MIT
#pragma once
/// The tool's voice on stderr: human lines ("tool: error: build 'web': ...",
/// coloured on a terminal) or JSON events (--log-format=json), with every
/// registered secret replaced by <sensitive> before the text leaves.
/// Only tools log; libcommon returns values and never writes here.

#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "result.hpp"

namespace kiln::log {

enum class Level { error = 0, warning = 1, info = 2, debug = 3, trace = 4 };
enum class Format { human, json };

/// Named extra values of a JSON event ("fields").
using Fields = std::map<std::string, std::string>;

/// Replaces every occurrence of each secret in `text` by "<sensitive>".
/// Longer secrets are replaced first, so one secret inside another does not
/// leave a fragment behind.
std::string redact(std::string_view text, const std::vector<std::string>& secrets);

class Logger {
 public:
  /// `verbosity`: -1 = quiet (errors only), 0 = default (up to info),
  /// 1 = debug, 2+ = trace. `color` is honoured only for human format.
  Logger(std::string tool, Format format = Format::human, int verbosity = 0, bool color = false,
         std::FILE* out = stderr);

  /// Every later line is prefixed with this build's name ("" for none).
  void set_build(std::string name);
  /// Registers a value that must never appear in output (empty ignored).
  void add_secret(std::string value);
  const std::vector<std::string>& secrets() const { return secrets_; }
  std::string redact(std::string_view text) const;

  bool enabled(Level level) const;
  void write(Level level, std::string_view message, const Fields& fields = {});

  void error(std::string_view m, const Fields& f = {}) { write(Level::error, m, f); }
  void warning(std::string_view m, const Fields& f = {}) { write(Level::warning, m, f); }
  void info(std::string_view m, const Fields& f = {}) { write(Level::info, m, f); }
  void debug(std::string_view m, const Fields& f = {}) { write(Level::debug, m, f); }

  /// Reports an Error once, with its location: "file:line:col: message".
  void report(const Error& e, Level level = Level::error);

  const std::string& tool() const { return tool_; }
  Format format() const { return format_; }

 private:
  std::string tool_;
  Format format_;
  int verbosity_;
  bool color_;
  std::FILE* out_;
  std::string build_;
  std::vector<std::string> secrets_;
  std::mutex mutex_;  // provisioner output streams from several threads
};

/// "file:line:col: message" (parts that are unknown are left out), followed
/// by the JSON pointer in brackets when there is one.
std::string describe(const Error& e);

/// UTC time "2026-11-21T07:49:00.123Z".
std::string now_iso8601();

}  // namespace kiln::log

// SPDX-License-Identifier: MIT
#pragma once
/// Build records: one JSON object per build, one per line (JSON Lines),
/// validated against schemas/record.schema.json on the way in and out.
/// Keys a tool does not know are kept; a record with an "error" section is
/// a failed build that downstream tools pass on untouched.

#include <rapidjson/document.h>

#include <istream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "result.hpp"

namespace kiln::record {

/// The record format version this library reads and writes.
constexpr int kVersion = 1;

/// Reads records from a stream, one per line; blank lines are skipped.
class Reader {
 public:
  /// `name` is used in messages ("-" is shown as "stdin").
  Reader(std::istream& in, std::string name);

  /// The next record, std::nullopt at the end of input. Errors
  /// (Exit::dataerr) name the input and line: invalid or truncated JSON,
  /// not an object, a record that breaks the schema, a newer format.
  Result<std::optional<rapidjson::Document>> next();

  int line() const { return line_; }

 private:
  std::istream& in_;
  std::string name_;
  int line_ = 0;
};

/// Checks a record against the record schema (and the kiln version).
Status validate(const rapidjson::Value& record);

/// Serializes one record as one line (pretty on a terminal when `pretty`).
std::string serialize(const rapidjson::Value& record, bool pretty = false);

/// Writes one record and flushes. Errors: Exit::ioerr (e.g. the reader of
/// the pipe went away: a broken pipe is not success).
Status write(std::FILE* out, const rapidjson::Value& record, bool pretty = false);

/// True when the record carries an "error" section.
bool failed(const rapidjson::Value& record);

/// A new record {"kiln": 1}.
rapidjson::Document make();

/// A record for a tool used without one (provision --host, capture --disk,
/// artifact-post --artifact): a build named `name` of builder type `type`
/// with no provisioners, post-processors or captures, on_error=cleanup, no
/// template (its folder is the current one), a fresh run_uuid and the
/// current time. Callers add to build.builder and the lists.
rapidjson::Document make_standalone(const std::string& name, const std::string& type);

/// Adds (or replaces) the "error" section describing `e`, raised by `tool`
/// for build `build` ("" when unknown). `extra` may list further errors
/// found in the same pass (they go to error.errors). Messages are redacted
/// with `secrets` before they are stored.
void set_error(rapidjson::Document& record, std::string_view tool, const Error& e,
               std::string_view build = {}, const Errors& extra = {},
               const std::vector<std::string>& secrets = {});

/// The values the build marks as secret (build.sensitive pointers), for a
/// Logger to redact.
std::vector<std::string> secrets(const rapidjson::Value& record);

/// The build name of a record ("" when it has none).
std::string build_name(const rapidjson::Value& record);

}  // namespace kiln::record

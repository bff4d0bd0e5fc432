// SPDX-License-Identifier: MIT
#pragma once
/// Packer JSON templates: parsed, variables resolved, every builder,
/// provisioner and post-processor checked against schemas/template.schema.json
/// and Packer's per-type rules, and turned into normalized build sections.

#include <rapidjson/document.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "json.hpp"
#include "result.hpp"

namespace kiln::templates {

/// The Packer version kiln's template language matches ({{packer_version}},
/// min_packer_version).
inline constexpr const char* kPackerVersion = "1.6.6";

/// What to load and how, as given on the command line.
struct Request {
  std::string path;  ///< the template; "-" reads stdin
  /// -var NAME=VALUE and -var-file FILE. As in Packer, every var file
  /// applies before any -var; within each kind later wins.
  struct VarSource {
    bool is_file = false;
    std::string text;  ///< "NAME=VALUE" or the file's path
  };
  std::vector<VarSource> vars;
  std::vector<std::string> only;    ///< names or globs
  std::vector<std::string> except;  ///< names or globs
  bool syntax_only = false;
  std::string on_error = "cleanup";
  bool force = false;          ///< Packer's -force: existing outputs may be replaced
  std::int64_t timestamp = 0;  ///< unix seconds; fixed for the whole run
  /// The template's text, when the caller has it already (tests, fuzzing);
  /// `path` then only names it.
  std::optional<std::string> template_text;
};

/// What came of it: the build sections (one per selected build, in template
/// order), or the errors; warnings either way. `secrets` lists values that
/// must be redacted from anything shown.
struct Outcome {
  std::vector<rapidjson::Document> builds;
  Errors errors;
  Errors warnings;
  std::vector<std::string> secrets;
  /// Exit::dataerr for a bad template, Exit::noinput when it (or a var
  /// file) cannot be read; meaningful only when errors is non-empty.
  Exit exit = Exit::ok;
  /// Each file read, indexed by line, for quoting lines in messages.
  std::vector<json::SourceMap> sources;
};

/// Loads, checks and normalizes a template. Never throws; every problem
/// found is in Outcome::errors, each with file, line, column and pointer
/// where they are known.
Outcome load(const Request& request);

}  // namespace kiln::templates

// SPDX-License-Identifier: MIT
#pragma once
/// Per-type rules of Packer's builders, provisioners and post-processors
/// (what Packer's Prepare() checks and fills in), applied to one plugin
/// configuration after interpolation and type coercion.

#include <rapidjson/document.h>

#include <string>
#include <string_view>
#include <vector>

#include "result.hpp"

namespace kiln::rules {

enum class Kind { builder, provisioner, post_processor };

/// What a rule may need to know about the build it runs in.
struct BuildInfo {
  std::string name;          ///< the build's name (builder "name" or type)
  std::string type;          ///< the builder's type
  std::string template_dir;  ///< absolute folder of the template
  bool force = false;        ///< Packer's -force: outputs may be replaced
};

/// Checks `config` (a JSON object whose values already have the types the
/// schema gives them, and the schema's defaults filled in) against the
/// rules of plugin `type` of `kind`, and fills in defaults that depend on
/// other values (e.g. qemu's vm_name from the build name). Appends every
/// violation to `errors` and every warning to `warnings`, each with
/// Location::pointer set to `pointer` + "/key" of the offending key (or
/// `pointer` itself for a rule about the whole object). Never throws.
void apply(Kind kind, std::string_view type, rapidjson::Value& config,
           rapidjson::Document::AllocatorType& alloc, const BuildInfo& build,
           const std::string& pointer, Errors& errors, Errors& warnings);

/// Packer's defaults for the shell provisioner's execute_command and
/// env_var_format, which differ with use_env_var_file. template-validate
/// fills them in; provision falls back on them for a record without them.
std::string_view shell_execute_command(bool use_env_var_file);
std::string_view shell_env_var_format(bool use_env_var_file);

}  // namespace kiln::rules

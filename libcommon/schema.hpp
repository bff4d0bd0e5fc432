// SPDX-License-Identifier: MIT
#pragma once
/// The JSON Schemas of schemas/, compiled into the library, and validation
/// against them with RapidJSON's schema validator.

#include <rapidjson/document.h>

#include <string_view>

#include "result.hpp"

namespace kiln::schema {

/// The parsed JSON of an embedded schema, e.g. "template.schema.json".
/// Aborts the program if the name is unknown: that is a build defect.
const rapidjson::Document& document(std::string_view name);

/// Validates `value` against the embedded schema `name` (references to the
/// other schema files resolve among the embedded ones). The Error
/// (Exit::dataerr) names the offending JSON pointer and the rule broken,
/// e.g. "/build/on_error: must be one of cleanup, abort, ask".
Status validate(const rapidjson::Value& value, std::string_view name);

}  // namespace kiln::schema

// SPDX-License-Identifier: MIT
#pragma once
/// Files compiled into the library at build time: the JSON Schemas of
/// schemas/, so every tool validates with exactly the files shipped.

#include <optional>
#include <string_view>
#include <vector>

namespace kiln::embedded {

struct File {
  std::string_view name;  ///< base name, e.g. "record.schema.json"
  std::string_view data;
};

/// Every embedded file, in build order.
const std::vector<File>& files();

/// The contents of the embedded file with this base name, if any.
std::optional<std::string_view> find(std::string_view name);

}  // namespace kiln::embedded

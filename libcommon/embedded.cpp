// SPDX-License-Identifier: MIT
#include "embedded.hpp"

namespace kiln::embedded {

std::optional<std::string_view> find(std::string_view name) {
  for (const File& f : files())
    if (f.name == name) return f.data;
  return std::nullopt;
}

}  // namespace kiln::embedded

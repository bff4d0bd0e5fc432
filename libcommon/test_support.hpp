// SPDX-License-Identifier: MIT
#pragma once
/// Helpers shared by the unit tests (header-only; tests only).

#include <stdlib.h>

#include <filesystem>
#include <stdexcept>
#include <string>
#include <system_error>

namespace kiln::testing {

/// A fresh directory under $TMPDIR, removed with everything in it when the
/// object goes.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& prefix = "kiln-test") {
    std::string t = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
    if (!::mkdtemp(t.data())) throw std::runtime_error("mkdtemp failed for " + t);
    path = t;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

}  // namespace kiln::testing

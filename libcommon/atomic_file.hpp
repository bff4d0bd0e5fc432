// SPDX-License-Identifier: MIT
#pragma once
/// Outputs appear whole or not at all: an AtomicFile writes under a hidden
/// temporary name beside the target and renames it onto the target in
/// commit(). Destroyed without commit(), it removes the temporary file.

#include <filesystem>
#include <string>
#include <string_view>

#include "result.hpp"

namespace kiln {

class AtomicFile {
 public:
  /// Creates "<dir>/.<name>.tmp-XXXXXX" with `mode`. Errors: Exit::cantcreat.
  static Result<AtomicFile> create(const std::filesystem::path& target, unsigned mode = 0644);

  AtomicFile(AtomicFile&& other) noexcept;
  AtomicFile& operator=(AtomicFile&&) = delete;
  AtomicFile(const AtomicFile&) = delete;
  ~AtomicFile();

  int fd() const { return fd_; }
  const std::filesystem::path& temp_path() const { return temp_; }
  const std::filesystem::path& target() const { return target_; }

  /// Writes all of `data`. Errors: Exit::ioerr (disk full, ...).
  Status write(std::string_view data);
  /// fsyncs, closes and renames onto the target. Errors: Exit::ioerr.
  Status commit();

 private:
  AtomicFile(std::filesystem::path target, std::filesystem::path temp, int fd)
      : target_(std::move(target)), temp_(std::move(temp)), fd_(fd) {}
  std::filesystem::path target_;
  std::filesystem::path temp_;
  int fd_ = -1;
  bool committed_ = false;
};

/// Writes `data` to `target` atomically (AtomicFile, then commit).
Status write_file_atomically(const std::filesystem::path& target, std::string_view data,
                             unsigned mode = 0644);

/// Reads a whole (small) file. Errors: Exit::noinput when missing or
/// unreadable, naming the file and the reason.
Result<std::string> read_file(const std::filesystem::path& path);

}  // namespace kiln

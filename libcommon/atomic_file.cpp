// SPDX-License-Identifier: MIT
#include "atomic_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace kiln {

namespace fs = std::filesystem;

Result<AtomicFile> AtomicFile::create(const fs::path& target, unsigned mode) {
  fs::path dir = target.parent_path();
  if (dir.empty()) dir = ".";
  std::string pattern = (dir / ("." + target.filename().string() + ".tmp-XXXXXX")).string();
  int fd = ::mkstemp(pattern.data());
  if (fd < 0)
    return Error(Exit::cantcreat,
                 "cannot create a file in " + dir.string() + ": " + std::strerror(errno));
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  ::fchmod(fd, static_cast<mode_t>(mode));
  return AtomicFile(target, fs::path(pattern), fd);
}

AtomicFile::AtomicFile(AtomicFile&& o) noexcept
    : target_(std::move(o.target_)),
      temp_(std::move(o.temp_)),
      fd_(o.fd_),
      committed_(o.committed_) {
  o.fd_ = -1;
  o.committed_ = true;  // the moved-from object owns nothing to remove
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !temp_.empty()) ::unlink(temp_.c_str());
}

Status AtomicFile::write(std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd_, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error(Exit::ioerr, "cannot write " + target_.string() + ": " + std::strerror(errno));
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return {};
}

Status AtomicFile::commit() {
  if (::fsync(fd_) != 0 || ::close(fd_) != 0) {
    fd_ = -1;
    return Error(Exit::ioerr, "cannot write " + target_.string() + ": " + std::strerror(errno));
  }
  fd_ = -1;
  if (::rename(temp_.c_str(), target_.c_str()) != 0)
    return Error(Exit::ioerr,
                 "cannot rename onto " + target_.string() + ": " + std::strerror(errno));
  committed_ = true;
  return {};
}

Status write_file_atomically(const fs::path& target, std::string_view data, unsigned mode) {
  auto file = AtomicFile::create(target, mode);
  if (!file) return file.error();
  if (auto st = file->write(data); !st) return st;
  return file->commit();
}

Result<std::string> read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return Error(Exit::noinput, "cannot read " + path.string() + ": " + std::strerror(errno));
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad())
    return Error(Exit::ioerr, "cannot read " + path.string() + ": " + std::strerror(errno));
  std::error_code ec;
  if (fs::is_directory(path, ec))
    return Error(Exit::noinput, "cannot read " + path.string() + ": is a directory");
  return ss.str();
}

}  // namespace kiln

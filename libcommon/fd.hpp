// SPDX-License-Identifier: MIT
#pragma once
/// A UniqueFd owns one file descriptor and closes it when destroyed or
/// reset; moving hands the ownership on, release() hands it to the caller.
/// With it, the small helpers for pidfds and unix socket addresses.

#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <optional>
#include <string>
#include <utility>

namespace kiln {

class UniqueFd {
 public:
  /// Owns nothing (-1).
  UniqueFd() = default;
  /// Owns `fd`; -1 owns nothing.
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(std::exchange(other.fd_, -1));
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  /// The descriptor, still owned; -1 when none.
  int get() const { return fd_; }
  /// Gives the descriptor up without closing it; the caller closes it.
  int release() { return std::exchange(fd_, -1); }
  /// Closes the descriptor owned (if any) and owns `fd` instead.
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

/// A pidfd of process `pid` (readable once it has exited), or an empty
/// UniqueFd where the kernel has none.
inline UniqueFd open_pidfd(pid_t pid) {
  return UniqueFd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
}

/// The address of the unix socket at `path`, or nothing when the path is
/// too long for one.
inline std::optional<sockaddr_un> unix_address(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof addr.sun_path) return std::nullopt;
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

}  // namespace kiln

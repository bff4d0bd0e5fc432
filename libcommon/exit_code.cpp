// SPDX-License-Identifier: MIT
#include "exit_code.hpp"

namespace kiln {

std::string_view exit_name(Exit e) {
  switch (e) {
    case Exit::ok:
      return "ok";
    case Exit::failed:
      return "failed";
    case Exit::usage:
      return "usage";
    case Exit::dataerr:
      return "data";
    case Exit::noinput:
      return "no-input";
    case Exit::unavailable:
      return "unavailable";
    case Exit::software:
      return "internal";
    case Exit::cantcreat:
      return "cannot-create";
    case Exit::ioerr:
      return "io";
    case Exit::tempfail:
      return "timeout";
    case Exit::protocol:
      return "protocol";
    case Exit::noperm:
      return "permission";
    case Exit::config:
      return "config";
    case Exit::interrupted:
      return "interrupted";
  }
  return "unknown";
}

}  // namespace kiln

// SPDX-License-Identifier: MIT
#pragma once
/// The exit statuses of every kiln tool, named once (sysexits.h values).

#include <ostream>
#include <string_view>

namespace kiln {

enum class Exit : int {
  ok = 0,
  failed = 1,        ///< a provisioned command itself failed
  usage = 64,        ///< bad option or argument
  dataerr = 65,      ///< bad template or record
  noinput = 66,      ///< input file missing or unreadable
  unavailable = 69,  ///< a needed program or service is unavailable
  software = 70,     ///< internal error
  cantcreat = 73,    ///< cannot create output
  ioerr = 74,        ///< I/O error
  tempfail = 75,     ///< timed out; try again
  protocol = 76,     ///< remote protocol or SSH error
  noperm = 77,       ///< permission denied
  config = 78,       ///< configuration error
  interrupted = 130  ///< SIGINT or SIGTERM
};

inline int to_int(Exit e) { return static_cast<int>(e); }

/// A short lowercase name for the status, used in error records and logs.
std::string_view exit_name(Exit e);

inline std::ostream& operator<<(std::ostream& os, Exit e) {
  return os << to_int(e) << " (" << exit_name(e) << ")";
}

}  // namespace kiln

// SPDX-License-Identifier: MIT
#pragma once
/// The template's `sysprep` key: resetting a provisioned machine's identity
/// before its disk is captured, as virt-sysprep does, so that every machine
/// made from the image gets its own. The operations run as one POSIX sh
/// script (busybox ash too) on the running guest, over the communicator,
/// as root, just before shutdown.

#include <string>
#include <string_view>
#include <vector>

#include "result.hpp"

namespace kiln::sysprep {

/// One operation: its name in templates and its one-line description.
struct Operation {
  std::string_view name;
  std::string_view description;
};

/// Every operation, in the order they run: machine-id, ssh-host-keys,
/// logs, shell-history, tmp, dhcp-leases, package-cache (the names of the
/// template schema's sysprep enum).
const std::vector<Operation>& operations();

/// What `"sysprep": true` means: every operation.
std::vector<std::string> default_operations();

/// Checks names and puts them in running order without repeats; "all"
/// stands for every operation. Errors: Exit::dataerr naming the unknown
/// one, with a suggestion for a likely misspelling and the list.
Result<std::vector<std::string>> select(const std::vector<std::string>& names);

/// The sh script that performs `names` (checked as select() does) on the
/// machine it runs on. Missing files and folders are fine; it exits 1 when
/// something could not be removed or emptied (each failing operation named
/// on stderr, the others still done), 2 when KILN_SYSPREP_ROOT is set but
/// not a folder. KILN_SYSPREP_ROOT (default: empty) is a prefix to every
/// path, to run it on a copy of a root tree. It never follows a symbolic
/// link out of the tree it empties. Errors: as select().
Result<std::string> script(const std::vector<std::string>& names);

}  // namespace kiln::sysprep

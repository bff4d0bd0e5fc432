// SPDX-License-Identifier: MIT
#pragma once
/// Which accelerator a machine gets. `auto` uses KVM only when KVM really
/// runs a guest well: a tiny probe guest (a boot sector that writes to the
/// serial port) must get there under KVM, within the time limit, and sooner
/// than under TCG. On hosts where /dev/kvm opens but guests crawl or hang
/// (nested virtualization without help from the outer host), that fails and
/// the launch falls back to TCG; the verdict is remembered per host (kernel
/// release and qemu version) so later launches do not pay for the probe.

#include <chrono>
#include <optional>
#include <string>

#include "result.hpp"

namespace kiln::accel {

struct Verdict {
  std::string accelerator;   ///< "kvm" or "tcg"
  std::string reason;        ///< why, for the log: "cached", "probe ran", ...
  double probe_seconds = 0;  ///< time spent probing (0 when not probed)
};

/// Decides for `asked` (Packer's accelerator: auto or unset, kvm, tcg,
/// none = tcg). kvm is honoured as asked (Exit::unavailable when /dev/kvm
/// cannot be opened); hvf, xen, hax, whpx are Exit::config errors on this
/// host. The verdict cache lives in `cache_dir` (created when missing).
Result<Verdict> decide(const std::string& asked, const std::string& qemu_binary,
                       const std::string& cache_dir,
                       std::chrono::milliseconds probe_timeout = std::chrono::seconds(15));

/// Boots the probe guest under `accelerator` and returns the seconds until
/// it wrote to its serial port, or nullopt if it did not within `timeout`.
/// Errors: Exit::unavailable (qemu cannot start), Exit::interrupted.
Result<std::optional<double>> probe_seconds(const std::string& qemu_binary,
                                            const std::string& accelerator,
                                            std::chrono::milliseconds timeout);

}  // namespace kiln::accel

// SPDX-License-Identifier: MIT
#pragma once
/// Starting a build's machine: the disk (a qcow2 overlay on the base image,
/// which is never written), seeds and CDs, the accelerator, a supervisor
/// process that owns qemu for the machine's whole life (so it outlives
/// vm-launch), the boot command, and the wait until the communicator
/// answers. Adds the record's "machine" section.

#include <rapidjson/document.h>

#include <chrono>
#include <functional>
#include <string>
#include <string_view>

#include "result.hpp"

namespace kiln::launch {

struct Options {
  /// The supervisor ends the machine after this long, whatever happens.
  std::chrono::seconds max_lifetime = std::chrono::hours(2);
  /// Where per-host verdicts are kept (the KVM probe).
  std::string cache_dir;
  /// Called with a line for the log at each step ("booting", "ready"...).
  std::function<void(std::string_view)> progress;
};

/// Launches the machine of `record` (which must have a build and no error)
/// and adds `machine`. On any failure nothing is left running and the run
/// directory is gone. Errors: Exit::unavailable (qemu missing, qemu exited
/// or the guest panicked before it was ready: the serial console's tail is
/// in the message), Exit::tempfail (ssh_timeout ran out), Exit::noinput
/// (base image or ISO missing), Exit::dataerr (checksum mismatch),
/// Exit::config (an option kiln does not support yet), Exit::interrupted.
Status launch(rapidjson::Document& record, const Options& options);

/// The default cache folder: $KILN_CACHE or ~/.cache/kiln.
std::string default_cache_dir();

}  // namespace kiln::launch

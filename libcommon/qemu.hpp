// SPDX-License-Identifier: MIT
#pragma once
/// qemu's command line for a build's machine, as Packer's qemu builder makes
/// it: default switches from the builder's settings, replaced switch by
/// switch by `qemuargs`, whose {{ .HTTPIP }}, {{ .HTTPPort }},
/// {{ .SSHHostPort }}, {{ .OutputDir }} and {{ .Name }} are rendered here.

#include <rapidjson/document.h>

#include <string>
#include <vector>

#include "result.hpp"

namespace kiln::qemu {

/// A guest port nothing listens on, as a rule (TCP port 1, tcpmux): its
/// refusal tells the launcher that the guest's network is up (see
/// ssh::wait_until_ready).
constexpr int kProbeGuestPort = 1;

/// The -netdev user option that forwards 127.0.0.1:`host_port` to the
/// guest's `guest_port`: "hostfwd=tcp:127.0.0.1:H-:G".
std::string hostfwd(int host_port, int guest_port);

/// What the launcher decided before qemu starts.
struct Inputs {
  std::string accelerator;           ///< "kvm" or "tcg", already decided
  std::string disk;                  ///< the disk qemu boots (an overlay)
  std::string install_iso;           ///< "" for disk_image builds
  std::vector<std::string> cdroms;   ///< further CDs: cd_files, the seed
  int ssh_host_port = 0;             ///< forwarded to the guest's ssh_port
  /// Forwarded to kProbeGuestPort, beside ssh_host_port (0 = none).
  int probe_host_port = 0;
  int http_port = 0;                 ///< 0 when nothing is served
  std::string http_ip = "10.0.2.2";  ///< the host as the guest sees it
  std::string qmp_socket;
  std::string serial_log;
  bool display = false;  ///< a window may be opened (headless false + $DISPLAY)
};

/// The whole command line after the binary, in order. Errors
/// (Exit::dataerr) name the qemuargs entry that cannot be rendered.
Result<std::vector<std::string>> command_line(const rapidjson::Value& builder, const Inputs& in);

/// The builder's options kiln does not implement yet, each set to something
/// other than its default: one Error each, naming the key
/// ("/builder/floppy_files: not supported yet").
Errors unsupported(const rapidjson::Value& builder);

/// Shell-style quoting of a command line, for logs and error messages.
std::string quoted(const std::string& binary, const std::vector<std::string>& args);

}  // namespace kiln::qemu

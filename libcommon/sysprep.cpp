// SPDX-License-Identifier: MIT
#include "sysprep.hpp"

#include <algorithm>

#include "text.hpp"

namespace kiln::sysprep {

namespace {

/// An operation with the sh function that performs it. Every path is
/// under "$R" (KILN_SYSPREP_ROOT); a glob that matches nothing stays
/// literal and is skipped by the [ -e ] tests in the helpers.
struct Step {
  Operation op;
  std::string_view function;  ///< the name of its sh function
  std::string_view body;      ///< that function's body
};

const std::vector<Step>& steps() {
  static const std::vector<Step> all = {
      {{"machine-id",
        "empty /etc/machine-id (kept, so the next boot makes a new ID) and remove a "
        "copy in /var/lib/dbus/machine-id"},
       "sysprep_machine_id",
       R"sh(  f="$R/etc/machine-id"
  dbus="$R/var/lib/dbus/machine-id"
  if [ -L "$f" ]; then
    # The one known layout with a link: /etc/machine-id -> dbus's file,
    # which then is the ID itself and is emptied, not removed.
    case "$(readlink "$f")" in
      /var/lib/dbus/machine-id|../var/lib/dbus/machine-id)
        if [ -f "$dbus" ] && [ ! -L "$dbus" ]; then true > "$dbus" || return 1; fi ;;
    esac
    return 0
  fi
  # Emptied, never removed: an empty file is how systemd knows to make a
  # new ID at first boot, also on a read-only /etc.
  if [ -f "$f" ]; then true > "$f" || return 1; fi
  if [ -f "$dbus" ] && [ ! -L "$dbus" ]; then rm -f "$dbus" || return 1; fi
  return 0
)sh"},
      {{"ssh-host-keys",
        "remove the SSH host keys (/etc/ssh/ssh_host_*, dropbear's "
        "/etc/dropbear/dropbear_*_host_key); each machine makes its own at first boot"},
       "sysprep_ssh_host_keys",
       R"sh(  remove_files "$R"/etc/ssh/ssh_host_* "$R"/etc/dropbear/dropbear_*_host_key
)sh"},
      {{"logs",
        "empty the logs under /var/log (owner and mode kept); remove rotated and "
        "compressed ones and the systemd journal"},
       "sysprep_logs",
       R"sh(  d="$R/var/log"
  if [ ! -d "$d" ] || [ -L "$d" ]; then return 0; fi
  empty_dirs "$d/journal" || return 1
  find "$d" -type f \( -name '*.[0-9]' -o -name '*.gz' -o -name '*.xz' -o -name '*.bz2' \
    -o -name '*.zst' -o -name '*.old' -o -name '*-[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]' \) \
    -exec rm -f {} + || return 1
  # Emptied rather than removed: daemons expect their files, with their
  # owner and mode, to be there.
  find "$d" -type f -exec sh -c 'for f; do true > "$f" || exit 1; done' sh {} + || return 1
)sh"},
      {{"shell-history",
        "remove the shell and REPL histories of root and of every /home/* user "
        "(.bash_history, .ash_history, .zsh_history, fish, python, mysql, psql...)"},
       "sysprep_shell_history",
       R"sh(  for h in "$R/root" "$R"/home/*; do
    if [ ! -d "$h" ] || [ -L "$h" ]; then continue; fi
    remove_files "$h/.bash_history" "$h/.ash_history" "$h/.zsh_history" "$h/.zhistory" \
      "$h/.sh_history" "$h/.history" "$h/.histfile" "$h/.local/share/fish/fish_history" \
      "$h/.python_history" "$h/.lesshst" "$h/.mysql_history" "$h/.psql_history" \
      "$h/.sqlite_history" "$h/.node_repl_history" || return 1
  done
  return 0
)sh"},
      {{"tmp", "remove everything in /tmp and /var/tmp (the folders stay)"},
       "sysprep_tmp",
       R"sh(  empty_dirs "$R/tmp" "$R/var/tmp"
)sh"},
      {{"dhcp-leases",
        "remove DHCP leases and DUIDs (/var/lib/dhcp, /var/lib/dhclient, /var/lib/dhcpcd, "
        "NetworkManager's leases)"},
       "sysprep_dhcp_leases",
       R"sh(  for d in "$R/var/lib/dhcp" "$R/var/lib/dhclient" "$R/var/lib/dhcpcd" "$R/var/db/dhcpcd"; do
    if [ ! -d "$d" ] || [ -L "$d" ]; then continue; fi
    find "$d" -mindepth 1 -maxdepth 1 \( -type f -o -type l \) -exec rm -f {} + || return 1
  done
  remove_files "$R"/var/lib/NetworkManager/*lease* "$R"/var/lib/NetworkManager/*.duid
)sh"},
      {{"package-cache",
        "remove downloaded packages and package indexes' caches (apt's "
        "/var/cache/apt, dnf, yum, zypper, apk, pacman)"},
       "sysprep_package_cache",
       R"sh(  remove_files "$R"/var/cache/apt/archives/*.deb "$R"/var/cache/apt/archives/partial/* \
    "$R"/var/cache/apt/*.bin || return 1
  empty_dirs "$R/var/cache/dnf" "$R/var/cache/yum" "$R/var/cache/zypp/packages" \
    "$R/var/cache/apk" "$R/var/cache/pacman/pkg"
)sh"},
  };
  return all;
}

/// The script's start: the root prefix and the helpers. Written for
/// POSIX sh and busybox ash: no arrays, no `local` (so every function's
/// variables have names of their own), no [[ ]]. Files are emptied with
/// `true >`, not `: >`: a failed redirection on a special built-in such as
/// `:` ends a POSIX shell, where the other operations must still run.
constexpr std::string_view kPrologue = R"sh(#!/bin/sh
# kiln sysprep: resets this machine's identity before its disk is captured.
# Run as root. KILN_SYSPREP_ROOT=DIR works on the tree under DIR instead of /.
unset HISTFILE
R="${KILN_SYSPREP_ROOT:-}"
while [ "${R%/}" != "$R" ]; do R="${R%/}"; done
if [ -n "${KILN_SYSPREP_ROOT:-}" ] && [ ! -d "$KILN_SYSPREP_ROOT" ]; then
  echo "sysprep: KILN_SYSPREP_ROOT=$KILN_SYSPREP_ROOT is not a folder" >&2
  exit 2
fi
status=0

# Removes each file or link named (a link, never what it points to);
# missing ones and folders are skipped.
remove_files() {
  for rf_path in "$@"; do
    if [ -L "$rf_path" ] || { [ -e "$rf_path" ] && [ ! -d "$rf_path" ]; }; then
      rm -f "$rf_path" || return 1
    fi
  done
  return 0
}

# Removes everything inside each folder named, keeping the folder; a
# folder that is missing or a link is skipped.
empty_dirs() {
  for ed_dir in "$@"; do
    if [ ! -d "$ed_dir" ] || [ -L "$ed_dir" ]; then continue; fi
    find "$ed_dir" -mindepth 1 -maxdepth 1 -exec rm -rf {} + || return 1
  done
  return 0
}

)sh";

}  // namespace

const std::vector<Operation>& operations() {
  static const std::vector<Operation> all = [] {
    std::vector<Operation> ops;
    for (const auto& s : steps()) ops.push_back(s.op);
    return ops;
  }();
  return all;
}

std::vector<std::string> default_operations() {
  std::vector<std::string> names;
  for (const auto& op : operations()) names.emplace_back(op.name);
  return names;
}

Result<std::vector<std::string>> select(const std::vector<std::string>& names) {
  const std::vector<std::string> known = default_operations();
  std::vector<bool> chosen(known.size(), false);
  for (const auto& name : names) {
    if (name == "all") {
      chosen.assign(known.size(), true);
      continue;
    }
    auto it = std::find(known.begin(), known.end(), name);
    if (it == known.end()) {
      std::vector<std::string> words = known;
      words.push_back("all");
      std::string message = "unknown sysprep operation '" + name + "'";
      if (auto close = text::suggest(name, words); !close.empty())
        message += "; did you mean '" + close + "'?";
      message += " The operations are " + text::join(known, ", ") + " (or all)";
      return Error(Exit::dataerr, message);
    }
    chosen[static_cast<size_t>(it - known.begin())] = true;
  }
  std::vector<std::string> ordered;
  for (size_t i = 0; i < known.size(); ++i)
    if (chosen[i]) ordered.push_back(known[i]);
  return ordered;
}

Result<std::string> script(const std::vector<std::string>& names) {
  auto chosen = select(names);
  if (!chosen) return chosen.error();
  std::string out(kPrologue);
  out += "# Operations: " + (chosen->empty() ? std::string("none") : text::join(*chosen, " ")) +
         "\n\n";
  std::string calls;
  for (const auto& step : steps()) {
    if (std::find(chosen->begin(), chosen->end(), step.op.name) == chosen->end()) continue;
    out += "# " + std::string(step.op.name) + ": " + std::string(step.op.description) + "\n";
    out += std::string(step.function) + "() {\n" + std::string(step.body) + "}\n\n";
    calls += std::string(step.function) + " || { echo \"sysprep: " + std::string(step.op.name) +
             ": failed\" >&2; status=1; }\n";
  }
  out += calls;
  out += "exit $status\n";
  return out;
}

}  // namespace kiln::sysprep

// SPDX-License-Identifier: MIT
#pragma once
/// Packer's boot_command: the keys typed into a machine's console before it
/// can be reached over the network ("<esc><wait>linux ks=...<enter>").
/// parse() turns the text into key presses (qemu qcodes, US layout) and
/// waits; type() sends them to qemu over QMP.

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "result.hpp"

namespace kiln {
class Qmp;
}

namespace kiln::boot_command {

/// One thing to do: press some keys together, or wait.
struct Step {
  enum class Kind { press, wait };
  Kind kind = Kind::press;
  /// For press: the qcodes pressed together, held modifiers first and the
  /// key itself last, e.g. {"shift", "a"} for "A", {"ctrl", "alt", "delete"}.
  std::vector<std::string> keys;
  /// For wait: how long (always positive).
  std::chrono::nanoseconds duration{0};

  static Step press(std::vector<std::string> keys) { return {Kind::press, std::move(keys), {}}; }
  static Step wait(std::chrono::nanoseconds d) { return {Kind::wait, {}, d}; }
  bool operator==(const Step&) const = default;
};

/// Parses a boot_command with Packer's grammar and its special keys. The
/// entries are one text, as Packer joins them. "<leftCtrlOn>" holds a key
/// for the presses that follow, until "<leftCtrlOff>" (held keys are part
/// of each press; a key held and released with nothing pressed meanwhile is
/// pressed once). Anything in <> that Packer does not know ("<foo>",
/// "<WAIT>", "<wait05>") is typed literally, as Packer does. Errors
/// (Exit::dataerr, naming the entry and column): a character with no key on
/// a US keyboard (non-ASCII, control characters), a wait that is not
/// positive or does not fit a Go duration.
Result<std::vector<Step>> parse(const std::vector<std::string>& boot_command);

/// A step as Packer's notation, for logs: "<wait1.5s>", "<leftCtrl+c>".
std::string describe(const Step& step);

/// Sends `steps` to the machine: each press with QMP send-key, held for
/// `key_interval`, then `key_interval` of pause before the next (Packer's
/// boot_key_interval); waits sleep. `should_stop` is asked before every
/// step and during waits; its error ends the typing and is returned (e.g.
/// "qemu exited"). Errors: Exit::interrupted on a signal, QMP errors.
Status type(Qmp& qmp, const std::vector<Step>& steps, std::chrono::milliseconds key_interval,
            const std::function<Status()>& should_stop);

}  // namespace kiln::boot_command

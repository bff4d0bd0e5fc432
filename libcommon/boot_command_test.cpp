// SPDX-License-Identifier: MIT
#define BOOST_TEST_MODULE boot_command
#include "boot_command.hpp"

#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <boost/process.hpp>
#include <boost/process/extend.hpp>
#include <boost/test/unit_test.hpp>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "qmp.hpp"
#include "signals.hpp"

using namespace kiln;
using namespace kiln::boot_command;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace bp = boost::process;

namespace {

using Keys = std::vector<std::string>;

std::vector<Step> ok(const std::vector<std::string>& cmd) {
  auto r = parse(cmd);
  BOOST_REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  return *r;
}

std::vector<Step> ok(const std::string& cmd) { return ok(std::vector<std::string>{cmd}); }

Error fails(const std::vector<std::string>& cmd) {
  auto r = parse(cmd);
  BOOST_REQUIRE_MESSAGE(!r.ok(), "parse should fail");
  return r.error();
}

Step press(Keys k) { return Step::press(std::move(k)); }

std::string show(const std::vector<Step>& steps) {
  std::string s;
  for (const auto& st : steps) s += describe(st) + " ";
  return s;
}

#define CHECK_STEPS(actual, ...)                                                   \
  do {                                                                             \
    std::vector<Step> expected_{__VA_ARGS__};                                      \
    auto actual_ = (actual);                                                       \
    BOOST_TEST((actual_ == expected_), show(actual_) << "!= " << show(expected_)); \
  } while (0)

// Every qcode that the parser may produce, from qemu's QKeyCode list.
const std::set<std::string> kKnownQcodes = {"shift",
                                            "shift_r",
                                            "alt",
                                            "alt_r",
                                            "ctrl",
                                            "ctrl_r",
                                            "menu",
                                            "esc",
                                            "1",
                                            "2",
                                            "3",
                                            "4",
                                            "5",
                                            "6",
                                            "7",
                                            "8",
                                            "9",
                                            "0",
                                            "minus",
                                            "equal",
                                            "backspace",
                                            "tab",
                                            "q",
                                            "w",
                                            "e",
                                            "r",
                                            "t",
                                            "y",
                                            "u",
                                            "i",
                                            "o",
                                            "p",
                                            "bracket_left",
                                            "bracket_right",
                                            "ret",
                                            "a",
                                            "s",
                                            "d",
                                            "f",
                                            "g",
                                            "h",
                                            "j",
                                            "k",
                                            "l",
                                            "semicolon",
                                            "apostrophe",
                                            "grave_accent",
                                            "backslash",
                                            "z",
                                            "x",
                                            "c",
                                            "v",
                                            "b",
                                            "n",
                                            "m",
                                            "comma",
                                            "dot",
                                            "slash",
                                            "spc",
                                            "f1",
                                            "f2",
                                            "f3",
                                            "f4",
                                            "f5",
                                            "f6",
                                            "f7",
                                            "f8",
                                            "f9",
                                            "f10",
                                            "f11",
                                            "f12",
                                            "home",
                                            "pgup",
                                            "pgdn",
                                            "end",
                                            "left",
                                            "up",
                                            "down",
                                            "right",
                                            "insert",
                                            "delete",
                                            "meta_l",
                                            "meta_r",
                                            "compose"};

}  // namespace

BOOST_AUTO_TEST_CASE(empty_command_has_no_steps) {
  BOOST_TEST(ok(std::vector<std::string>{}).empty());
  BOOST_TEST(ok(std::vector<std::string>{"", ""}).empty());
}

BOOST_AUTO_TEST_CASE(plain_text_is_one_press_per_character) {
  CHECK_STEPS(ok("ab 1"), press({"a"}), press({"b"}), press({"spc"}), press({"1"}));
}

BOOST_AUTO_TEST_CASE(uppercase_and_shifted_symbols_add_shift) {
  CHECK_STEPS(ok("Az!~_\"?"), press({"shift", "a"}), press({"z"}), press({"shift", "1"}),
              press({"shift", "grave_accent"}), press({"shift", "minus"}),
              press({"shift", "apostrophe"}), press({"shift", "slash"}));
}

BOOST_AUTO_TEST_CASE(every_printable_ascii_character_has_keys) {
  const std::string unshifted = "abcdefghijklmnopqrstuvwxyz0123456789-=[]\\;',./` ";
  const std::string shifted = "ABCDEFGHIJKLMNOPQRSTUVWXYZ)!@#$%^&*(_+{}|:\"<>?~";
  for (char c = 0x20; c < 0x7f; ++c) {
    std::string text(1, c);
    auto steps = ok(text);
    BOOST_REQUIRE_MESSAGE(steps.size() == 1u, "character " << text);
    const Keys& keys = steps[0].keys;
    bool is_shifted = shifted.find(c) != std::string::npos;
    BOOST_TEST((is_shifted || unshifted.find(c) != std::string::npos), text);
    BOOST_TEST(keys.size() == (is_shifted ? 2u : 1u), text);
    if (is_shifted) BOOST_TEST(keys[0] == "shift", text);
    for (const auto& k : keys) BOOST_TEST(kKnownQcodes.count(k) == 1u, text << " -> " << k);
  }
  // A shifted symbol and its unshifted partner share the key.
  for (size_t i = 0; i < 10; ++i) {
    auto a = ok(std::string(1, "0123456789"[i]));
    auto b = ok(std::string(1, ")!@#$%^&*("[i]));
    BOOST_TEST(a[0].keys[0] == b[0].keys[1]);
  }
  CHECK_STEPS(ok("-=[]\\;',./`"), press({"minus"}), press({"equal"}), press({"bracket_left"}),
              press({"bracket_right"}), press({"backslash"}), press({"semicolon"}),
              press({"apostrophe"}), press({"comma"}), press({"dot"}), press({"slash"}),
              press({"grave_accent"}));
}

BOOST_AUTO_TEST_CASE(special_keys) {
  const std::vector<std::pair<std::string, std::string>> table = {
      {"bs", "backspace"},
      {"del", "delete"},
      {"enter", "ret"},
      {"return", "ret"},
      {"esc", "esc"},
      {"tab", "tab"},
      {"up", "up"},
      {"down", "down"},
      {"left", "left"},
      {"right", "right"},
      {"spacebar", "spc"},
      {"insert", "insert"},
      {"home", "home"},
      {"end", "end"},
      {"pageUp", "pgup"},
      {"pageDown", "pgdn"},
      {"menu", "compose"},
      {"leftAlt", "alt"},
      {"leftCtrl", "ctrl"},
      {"leftShift", "shift"},
      {"leftSuper", "meta_l"},
      {"rightAlt", "alt_r"},
      {"rightCtrl", "ctrl_r"},
      {"rightShift", "shift_r"},
      {"rightSuper", "meta_r"},
      {"leftMeta", "meta_l"},
      {"rightMeta", "meta_r"},
  };
  for (const auto& [name, qcode] : table) {
    CHECK_STEPS(ok("<" + name + ">"), press({qcode}));
    BOOST_TEST(kKnownQcodes.count(qcode) == 1u);
  }
  for (int i = 1; i <= 12; ++i)
    CHECK_STEPS(ok("<f" + std::to_string(i) + ">"), press({"f" + std::to_string(i)}));
}

BOOST_AUTO_TEST_CASE(special_keys_ignore_case) {
  CHECK_STEPS(ok("<ENTER><PageUp><pagedown><LEFTALT><Esc>"), press({"ret"}), press({"pgup"}),
              press({"pgdn"}), press({"alt"}), press({"esc"}));
}

BOOST_AUTO_TEST_CASE(held_keys_join_the_presses_until_released) {
  CHECK_STEPS(ok("<leftCtrlOn>c<leftCtrlOff>x"), press({"ctrl", "c"}), press({"x"}));
  CHECK_STEPS(ok("<leftAltOn><f2><leftAltOff>"), press({"alt", "f2"}));
  CHECK_STEPS(ok("<leftCtrlOn><leftAltOn><del><leftAltOff><leftCtrlOff>"),
              press({"ctrl", "alt", "delete"}));
  CHECK_STEPS(ok("<leftShiftOn>ab<leftShiftOff>"), press({"shift", "a"}), press({"shift", "b"}));
  // On and Off in any case, on special keys and on characters.
  CHECK_STEPS(ok("<LEFTCTRLON>c<leftctrloff>"), press({"ctrl", "c"}));
  CHECK_STEPS(ok("<aOn>b<aOff>"), press({"a", "b"}));
  CHECK_STEPS(ok("<AON>b<AOFF>"), press({"shift", "a", "b"}));
  CHECK_STEPS(ok("<enterOn><enterOff>"), press({"ret"}));
}

BOOST_AUTO_TEST_CASE(a_key_held_without_presses_is_pressed_once) {
  CHECK_STEPS(ok("<leftShiftOn><leftShiftOff>"), press({"shift"}));
  CHECK_STEPS(ok("<leftAltOn>"), press({"alt"}));
  CHECK_STEPS(ok("<leftCtrlOn>a<leftShiftOn><leftShiftOff><leftCtrlOff>"), press({"ctrl", "a"}),
              press({"ctrl", "shift"}));
  // A release of a key that is not held does nothing.
  CHECK_STEPS(ok("<leftCtrlOff>a"), press({"a"}));
}

BOOST_AUTO_TEST_CASE(waits) {
  CHECK_STEPS(ok("<wait>"), Step::wait(1s));
  CHECK_STEPS(ok("<wait5>"), Step::wait(5s));
  CHECK_STEPS(ok("<wait10>"), Step::wait(10s));
  CHECK_STEPS(ok("<wait1m30s>"), Step::wait(90s));
  CHECK_STEPS(ok("<wait500ms>"), Step::wait(500ms));
  CHECK_STEPS(ok("<wait1.5s>"), Step::wait(1500ms));
  CHECK_STEPS(ok("<wait2h>"), Step::wait(2h));
  CHECK_STEPS(ok("<wait10us><wait3ns>"), Step::wait(10us), Step::wait(3ns));
  CHECK_STEPS(ok("<wait7\xC2\xB5s>"), Step::wait(7us));
  CHECK_STEPS(ok("a<wait>b"), press({"a"}), Step::wait(1s), press({"b"}));
}

BOOST_AUTO_TEST_CASE(unknown_brackets_are_typed_literally) {
  const Keys lt{"shift", "comma"}, gt{"shift", "dot"};
  CHECK_STEPS(ok("<foo>"), press(lt), press({"f"}), press({"o"}), press({"o"}), press(gt));
  // As in Packer: "wait" is case-sensitive, a wait needs a number Go reads
  // without a leading zero, and a special key must be followed by > or On/Off.
  for (std::string text : {"<WAIT>", "<wait05>", "<wait 5>", "<wait1.5>", "<delete>", "<f13>",
                           "<escape>", "<enterx>", "<>", "<", ">", "<<enter"}) {
    auto steps = ok(text);
    BOOST_TEST(steps.size() == text.size(), text);  // one press per character
  }
  CHECK_STEPS(ok("<<enter>>"), press(lt), press({"ret"}), press(gt));
  BOOST_TEST(ok("<wait5s5>").size() == 9u);
}

BOOST_AUTO_TEST_CASE(entries_are_one_text) {
  CHECK_STEPS(ok(std::vector<std::string>{"<wai", "t5>", "<ent", "er>"}), Step::wait(5s),
              press({"ret"}));
}

BOOST_AUTO_TEST_CASE(waits_must_be_positive) {
  for (std::string text : {"<wait0>", "<wait0s>", "<wait-1s>", "<wait-0.5h>"}) {
    auto e = fails({"ab", text});
    BOOST_TEST(e.code == Exit::dataerr);
    BOOST_TEST(e.message.find("boot_command[1] column 1: a wait must be positive") == 0u,
               e.message);
  }
}

BOOST_AUTO_TEST_CASE(waits_must_fit_a_go_duration) {
  auto e = fails({"<wait99999999999999999999h>"});
  BOOST_TEST(e.message.find("boot_command[0] column 1: invalid duration") == 0u, e.message);
  e = fails({"x<wait10000000000>"});
  BOOST_TEST(e.message.find("boot_command[0] column 2: ") == 0u, e.message);
  e = fails({"<wait1s-2s>"});
  BOOST_TEST(e.message.find("invalid duration") != std::string::npos, e.message);
}

BOOST_AUTO_TEST_CASE(characters_without_a_key_are_errors_naming_entry_and_column) {
  auto e = fails({"abc", "", "d\xC3\xA9"});
  BOOST_TEST(e.code == Exit::dataerr);
  BOOST_TEST(e.message.find("boot_command[2] column 2: cannot type '\xC3\xA9'") == 0u, e.message);
  e = fails({"abc\ty"});
  BOOST_TEST(e.message.find("boot_command[0] column 4: cannot type '\\x09'") == 0u, e.message);
  e = fails({"ok\n"});
  BOOST_TEST(e.message.find("column 3") != std::string::npos, e.message);
  e = fails({"<\xC3\xA9On>"});
  BOOST_TEST(e.message.find("column 1: cannot type") != std::string::npos, e.message);
}

BOOST_AUTO_TEST_CASE(describe_steps) {
  BOOST_TEST(describe(press({"ctrl", "alt", "delete"})) == "ctrl+alt+delete");
  BOOST_TEST(describe(Step::wait(90s)) == "<wait90s>");
  BOOST_TEST(describe(Step::wait(1500ms)) == "<wait1.5s>");
  BOOST_TEST(describe(Step::wait(250ms)) == "<wait250ms>");
}

// ---- typing into qemu ----

namespace {

/// qemu with its QMP socket and serial log in a temporary directory. The
/// destructor ends it (SIGTERM, then SIGKILL), reaps it and removes the
/// directory; should the test process die first, the kernel kills qemu.
class Qemu {
 public:
  explicit Qemu(std::vector<std::string> args) {
    std::string tmpl = "/tmp/kiln-boot-XXXXXX";
    BOOST_REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    dir = tmpl;
    socket = (dir / "qmp.sock").string();
    serial = (dir / "serial.log").string();
    args.insert(args.end(),
                {"-accel", "tcg", "-display", "none", "-nodefaults", "-no-user-config", "-qmp",
                 "unix:" + socket + ",server=on,wait=off", "-serial", "file:" + serial});
    child_ = bp::child(
        bp::search_path("qemu-system-x86_64"), bp::args(args),
        bp::std_in<bp::null, bp::std_out> bp::null, bp::std_err > (dir / "qemu.err").string(),
        bp::extend::on_exec_setup = [](auto&) { ::prctl(PR_SET_PDEATHSIG, SIGKILL); });
  }
  ~Qemu() {
    std::error_code ec;
    if (child_.valid() && child_.running(ec)) {
      ::kill(child_.id(), SIGTERM);
      for (int i = 0; i < 50 && child_.running(ec); ++i) std::this_thread::sleep_for(100ms);
      if (child_.running(ec)) child_.terminate(ec);
    }
    if (child_.valid()) child_.wait(ec);
    fs::remove_all(dir, ec);
  }
  Qemu(const Qemu&) = delete;
  Qemu& operator=(const Qemu&) = delete;

  Qmp qmp() {
    auto r = Qmp::connect(socket, 20s);
    BOOST_REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
    return std::move(r).value();
  }
  std::string serial_text() const {
    std::ifstream in(serial, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  /// Waits until the serial log contains `text`.
  bool serial_shows(const std::string& text, std::chrono::seconds limit) {
    auto end = std::chrono::steady_clock::now() + limit;
    std::error_code ec;
    while (std::chrono::steady_clock::now() < end) {
      if (serial_text().find(text) != std::string::npos) return true;
      if (!child_.running(ec)) return false;
      std::this_thread::sleep_for(100ms);
    }
    return false;
  }

  fs::path dir;
  std::string socket;
  std::string serial;

 private:
  bp::child child_;
};

Status keep_going() { return {}; }

fs::path base_image_dir() {
  if (const char* c = std::getenv("KILN_CACHE")) return fs::path(c) / "base";
  const char* home = std::getenv("HOME");
  return fs::path(home ? home : "/root") / ".cache/kiln/base";
}

}  // namespace

BOOST_AUTO_TEST_CASE(type_sends_the_keys_and_waits) {
  Qemu q({"-S", "-m", "64"});
  Qmp qmp = q.qmp();
  auto steps = ok("<leftCtrlOn>a<leftCtrlOff>Hi<wait300ms><enter>");
  auto start = std::chrono::steady_clock::now();
  auto st = type(qmp, steps, 5ms, keep_going);
  BOOST_REQUIRE_MESSAGE(st.ok(), (st.ok() ? "" : st.error().message));
  BOOST_TEST((std::chrono::steady_clock::now() - start >= 300ms));
}

BOOST_AUTO_TEST_CASE(a_key_qemu_refuses_names_the_step) {
  Qemu q({"-S", "-m", "64"});
  Qmp qmp = q.qmp();
  auto st = type(qmp, {Step::press({"ctrl", "kiln-no-key"})}, 5ms, keep_going);
  BOOST_REQUIRE(!st.ok());
  BOOST_TEST(st.error().code == Exit::protocol);
  BOOST_TEST(st.error().message.find("typing ctrl+kiln-no-key") == 0u, st.error().message);
}

BOOST_AUTO_TEST_CASE(should_stop_ends_typing_even_during_a_long_wait) {
  Qemu q({"-S", "-m", "64"});
  Qmp qmp = q.qmp();
  int asked = 0;
  auto stop_soon = [&]() -> Status {
    if (++asked > 3) return Error(Exit::software, "qemu went away");
    return {};
  };
  auto start = std::chrono::steady_clock::now();
  auto st = type(qmp, ok("ab<wait10m>c"), 5ms, stop_soon);
  BOOST_REQUIRE(!st.ok());
  BOOST_TEST(st.error().message == "qemu went away");
  BOOST_TEST((std::chrono::steady_clock::now() - start < 5s));
}

BOOST_AUTO_TEST_CASE(type_into_a_real_guest) {
  fs::path base = base_image_dir();
  fs::path manifest = base / "manifest.json";
  if (!fs::exists(manifest) || !fs::exists(base / "vmlinuz")) {
    // The project's test command builds the VM first and sets this, so a
    // missing VM there is a failure, not a quiet skip.
    BOOST_TEST(!std::getenv("KILN_REQUIRE_TEST_VM"), "no test VM at " << base);
    BOOST_TEST_MESSAGE("skipped: no test VM at " << base << " (tests/vm/build-image makes it)");
    return;
  }
  // Direct-kernel boot in echo mode: the guest's screen console (tty1, fed
  // by the emulated PS/2 keyboard) prints every line typed on the serial
  // port as "KILN-ECHO: <line>".
  Qemu q({"-m", "256", "-smp", "1", "-vga", "std", "-drive",
          "file=" + (base / "debian-tiny.qcow2").string() + ",if=virtio,format=qcow2,snapshot=on",
          "-kernel", (base / "vmlinuz").string(), "-initrd", (base / "initrd.img").string(),
          "-append", "root=/dev/vda2 console=ttyS0 kiln.mode=echo"});
  Qmp qmp = q.qmp();
  BOOST_REQUIRE_MESSAGE(q.serial_shows("KILN-GUEST-READY", 120s),
                        "the guest did not come up; serial log:\n"
                            << q.serial_text());
  // The console on tty1 starts just after; knock until it answers.
  bool answered = false;
  for (int i = 0; i < 20 && !answered; ++i) {
    BOOST_REQUIRE(type(qmp, ok("ping<enter>"), 10ms, keep_going).ok());
    answered = q.serial_shows("KILN-ECHO: ping", 3s);
  }
  BOOST_REQUIRE_MESSAGE(answered, "no echo from the guest; serial log:\n" << q.serial_text());

  // Every printable character, shifted and not; <bs> and ctrl+u edit the
  // line as a terminal does; entries are one text.
  const std::string all = "Hello, World! a-b_c=+[]{}\\|;:'\",./?`~!@#$%^&*()<>0123456789 END";
  auto steps = ok(std::vector<std::string>{"garbage<leftCtrlOn>u<leftCtrlOff>", all,
                                           "xy<bs><bs><wai", "t500ms><enter>"});
  auto st = type(qmp, steps, 10ms, keep_going);
  BOOST_REQUIRE_MESSAGE(st.ok(), (st.ok() ? "" : st.error().message));
  BOOST_TEST_REQUIRE(q.serial_shows("KILN-ECHO: " + all + "\r\n", 20s), "serial log:\n"
                                                                            << q.serial_text());
  // The shifted special keys: <leftShiftOn> makes capitals.
  BOOST_REQUIRE(
      type(qmp, ok("<leftShiftOn>shout<leftShiftOff> quietly<return>"), 10ms, keep_going).ok());
  BOOST_TEST(q.serial_shows("KILN-ECHO: SHOUT quietly\r\n", 20s), q.serial_text());
}

// Last: the interrupted flag stays set for the rest of the process.
BOOST_AUTO_TEST_CASE(a_signal_ends_a_wait) {
  Qemu q({"-S", "-m", "64"});
  Qmp qmp = q.qmp();
  signals::InterruptGuard guard;
  std::thread t([] {
    std::this_thread::sleep_for(300ms);
    signals::raise_for_test(SIGINT);
  });
  auto start = std::chrono::steady_clock::now();
  auto st = type(qmp, ok("a<wait10m>b"), 5ms, keep_going);
  t.join();
  BOOST_REQUIRE(!st.ok());
  BOOST_TEST(st.error().code == Exit::interrupted);
  BOOST_TEST((std::chrono::steady_clock::now() - start < 5s));
}

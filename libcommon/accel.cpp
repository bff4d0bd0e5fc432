// SPDX-License-Identifier: MIT
#include "accel.hpp"

#include <fcntl.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <boost/process.hpp>
#include <filesystem>
#include <fstream>

#include "atomic_file.hpp"
#include "digest.hpp"
#include "process.hpp"
#include "signals.hpp"

namespace kiln::accel {

namespace fs = std::filesystem;
namespace bp = boost::process;
using namespace std::chrono_literals;

namespace {

/// A boot sector that writes 'K' to the first serial port and halts: the
/// smallest guest that shows the CPU really runs.
std::string probe_disk() {
  std::string sector(512, '\0');
  const unsigned char code[] = {
      0xBA, 0xF8, 0x03,  // mov dx, 0x3f8
      0xB0, 0x4B,        // mov al, 'K'
      0xEE,              // out dx, al
      0xF4,              // hlt
      0xEB, 0xFD,        // jmp back to hlt
  };
  std::copy(std::begin(code), std::end(code), sector.begin());
  sector[510] = static_cast<char>(0x55);
  sector[511] = static_cast<char>(0xAA);
  sector.resize(1 << 20, '\0');  // a size every BIOS takes for a disk
  return sector;
}

std::string host_key(const std::string& qemu_binary) {
  struct utsname u {};
  ::uname(&u);
  std::string version = "unknown";
  auto out = process::run({qemu_binary, {"--version"}, {}, {}, {}}, 10s);
  if (out && out->exit_code == 0) version = out->out.substr(0, out->out.find('\n'));
  return std::string(u.release) + " | " + version;
}

bool kvm_opens() {
  int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (fd < 0) return false;
  ::close(fd);
  return true;
}

}  // namespace

Result<std::optional<double>> probe_seconds(const std::string& qemu_binary,
                                            const std::string& accelerator,
                                            std::chrono::milliseconds timeout) {
  auto exe = process::find_program(qemu_binary);
  if (!exe) return exe.error();
  char dir_template[] = "/tmp/kiln-kvm-probe-XXXXXX";
  if (!::mkdtemp(dir_template))
    return Error(Exit::cantcreat, "cannot create a folder for the KVM probe");
  fs::path dir = dir_template;
  struct Cleanup {
    fs::path d;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(d, ec);
    }
  } cleanup{dir};
  if (auto st = write_file_atomically(dir / "probe.img", probe_disk()); !st) return st.error();
  fs::path serial = dir / "serial.log";
  std::error_code ec;
  auto start = std::chrono::steady_clock::now();
  bp::child qemu(
      *exe,
      bp::args({"-accel", accelerator, "-nodefaults", "-no-user-config", "-display", "none", "-m",
                "16", "-drive", "file=" + (dir / "probe.img").string() + ",format=raw,if=ide",
                "-boot", "c", "-serial", "file:" + serial.string()}),
      bp::std_out > bp::null, bp::std_err > bp::null, bp::std_in < bp::null, ec);
  if (ec) return Error(Exit::unavailable, "cannot start " + *exe + ": " + ec.message());
  auto deadline = start + timeout;
  std::optional<double> seen;
  bool interrupted = false;
  while (std::chrono::steady_clock::now() < deadline) {
    std::ifstream in(serial);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (text.find('K') != std::string::npos) {
      seen = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      break;
    }
    if (!qemu.running(ec)) break;  // qemu refused the accelerator outright
    if (!signals::sleep_for(50ms)) {
      interrupted = true;
      break;
    }
  }
  qemu.terminate(ec);
  qemu.wait(ec);
  if (interrupted) return Error(Exit::interrupted, "interrupted while probing " + accelerator);
  return seen;
}

Result<Verdict> decide(const std::string& asked, const std::string& qemu_binary,
                       const std::string& cache_dir, std::chrono::milliseconds probe_timeout) {
  if (asked == "tcg" || asked == "none") return Verdict{"tcg", "asked", 0};
  if (asked == "kvm") {
    if (!kvm_opens())
      return Error(Exit::unavailable,
                   "accelerator kvm was asked for, but /dev/kvm cannot be opened");
    return Verdict{"kvm", "asked", 0};
  }
  if (!asked.empty() && asked != "auto")
    return Error(Exit::config, "accelerator \"" + asked +
                                   "\" is not available on Linux hosts; "
                                   "use auto, kvm or tcg");
  if (!kvm_opens()) return Verdict{"tcg", "/dev/kvm cannot be opened", 0};

  std::string key = host_key(qemu_binary);
  fs::path cache = fs::path(cache_dir) / ("kvm-" + digest::sha256_hex(key).substr(0, 16));
  if (auto text = read_file(cache); text) {
    std::string v = text->substr(0, text->find('\n'));
    if (v == "kvm" || v == "tcg") return Verdict{v, "remembered for this host", 0};
  }
  auto start = std::chrono::steady_clock::now();
  auto tcg = probe_seconds(qemu_binary, "tcg", probe_timeout);
  if (!tcg) return tcg.error();
  // KVM is only chosen when it beats TCG, so it need not be waited for any
  // longer than TCG took.
  auto kvm_limit = probe_timeout;
  if (*tcg)
    kvm_limit =
        std::min(probe_timeout, std::chrono::milliseconds(static_cast<long>(**tcg * 1000) + 50));
  auto kvm = probe_seconds(qemu_binary, "kvm", kvm_limit);
  if (!kvm) return kvm.error();
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  bool use_kvm = *kvm && (!*tcg || **kvm < **tcg);
  std::string verdict = use_kvm ? "kvm" : "tcg";
  auto shown = [](const std::optional<double>& t) {
    return t ? std::to_string(*t).substr(0, 4) + " s" : std::string("no answer");
  };
  std::string reason = "probe guest: kvm " + shown(*kvm) + ", tcg " + shown(*tcg);
  std::error_code ec;
  fs::create_directories(cache_dir, ec);
  // A cache that cannot be written only costs the next launch a probe.
  (void)write_file_atomically(cache, verdict + "\n" + key + "\n");
  return Verdict{verdict, reason, seconds};
}

}  // namespace kiln::accel

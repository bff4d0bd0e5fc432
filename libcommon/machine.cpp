// SPDX-License-Identifier: MIT
#include "machine.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>

#include "atomic_file.hpp"
#include "json.hpp"
#include "signals.hpp"

namespace kiln::machine {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

Result<std::string> run_root() {
  std::string root;
  if (const char* r = std::getenv("KILN_RUN_DIR"); r && *r) {
    root = r;
  } else {
    const char* x = std::getenv("XDG_RUNTIME_DIR");
    root = std::string(x && *x ? x : "/tmp") + "/kiln-" + std::to_string(::getuid());
  }
  std::error_code ec;
  fs::create_directories(root + "/ports", ec);
  if (ec) return Error(Exit::cantcreat, "cannot create " + root + ": " + ec.message());
  ::chmod(root.c_str(), 0700);
  return root;
}

namespace {

bool port_free(int port) {
  int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return false;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(s);
  return ok;
}

}  // namespace

Result<PortLock> PortLock::acquire(int min, int max) {
  auto root = run_root();
  if (!root) return root.error();
  if (min > max) std::swap(min, max);
  // Start at a random place so that launches at the same moment rarely
  // contend for the same lock.
  std::mt19937 rng(std::random_device{}());
  int span = max - min + 1;
  int offset = std::uniform_int_distribution<int>(0, span - 1)(rng);
  for (int i = 0; i < span; ++i) {
    int port = min + (offset + i) % span;
    std::string path = *root + "/ports/" + std::to_string(port) + ".lock";
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) continue;
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      ::close(fd);
      continue;
    }
    if (!port_free(port)) {
      ::close(fd);
      continue;
    }
    return PortLock(port, fd);
  }
  return Error(Exit::unavailable, "no free port in " + std::to_string(min) + ".." +
                                      std::to_string(max) + " (host_port_min..host_port_max)");
}

PortLock::~PortLock() {
  if (fd_ >= 0) ::close(fd_);
}

bool process_alive(int pid, const std::string& marker) {
  if (pid <= 0 || ::kill(pid, 0) != 0) return false;
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline");
  std::string cmd((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::replace(cmd.begin(), cmd.end(), '\0', ' ');
  return cmd.find(marker) != std::string::npos;
}

namespace {

int read_pid(const fs::path& file) {
  std::ifstream in(file);
  int pid = 0;
  in >> pid;
  return pid;
}

std::optional<Live> describe(const fs::path& dir) {
  auto text = read_file(dir / "machine.json");
  if (!text) return std::nullopt;
  json::Document d;
  if (!json::parse(*text, d) || !d.IsObject()) return std::nullopt;
  Live m;
  m.id = dir.filename().string();
  m.run_dir = dir.string();
  auto n = [](const json::Value& o, const char* k) {
    return static_cast<long>(json::number_or(o, k, 0));
  };
  m.build = json::string_or(d, "build");
  m.accelerator = json::string_or(d, "accelerator");
  m.supervisor_pid = static_cast<int>(n(d, "supervisor_pid"));
  m.qemu_pid = static_cast<int>(n(d, "pid"));
  m.started = n(d, "started");
  m.expires = n(d, "expires");
  if (auto c = d.FindMember("communicator"); c != d.MemberEnd() && c->value.IsObject())
    m.ssh_port = static_cast<int>(n(c->value, "port"));
  return m;
}

}  // namespace

std::string launched_by(int pid) {
  auto root = run_root();
  if (!root || pid <= 0) return {};
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(*root, ec)) {
    if (!e.is_directory() || e.path().filename() == "ports") continue;
    if (read_pid(e.path() / "launcher.pid") == pid && !fs::exists(e.path() / "machine.json"))
      return e.path().filename().string();
  }
  return {};
}

Result<Hold> Hold::take(const std::string& run_dir) {
  std::error_code ec;
  if (!fs::is_directory(run_dir, ec))
    return Error(Exit::noinput, "the machine's run directory " + run_dir + " is gone");
  if (auto st =
          write_file_atomically(fs::path(run_dir) / "held-by", std::to_string(::getpid()) + "\n");
      !st)
    return Error(Exit::cantcreat, st.error().message);
  return Hold(run_dir);
}

Hold::~Hold() {
  if (dir_.empty()) return;
  std::error_code ec;
  if (fs::exists(fs::path(dir_) / "keep", ec))
    fs::remove(fs::path(dir_) / "held-by", ec);
  else
    fs::remove_all(dir_, ec);
}

void Hold::release() {
  std::error_code ec;
  if (!dir_.empty()) fs::remove(fs::path(dir_) / "held-by", ec);
  dir_.clear();
}

bool held(const std::string& run_dir) {
  std::ifstream in(fs::path(run_dir) / "held-by");
  int pid = 0;
  in >> pid;
  return pid > 0 && ::kill(pid, 0) == 0;
}

std::vector<Live> list() {
  std::vector<Live> out;
  auto root = run_root();
  if (!root) return out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(*root, ec)) {
    if (!e.is_directory() || e.path().filename() == "ports") continue;
    int sup = read_pid(e.path() / "supervisor.pid");
    if (!process_alive(sup, "vm-launch")) {
      if (held(e.path().string())) continue;  // its disk is being captured
      // A supervisor that died (kill -9) leaves its qemu and directory.
      int qemu = read_pid(e.path() / "qemu.pid");
      if (process_alive(qemu, e.path().string())) ::kill(qemu, SIGKILL);
      if (sup > 0 || fs::exists(e.path() / "machine.json")) fs::remove_all(e.path(), ec);
      continue;
    }
    if (auto m = describe(e.path())) out.push_back(*m);
  }
  std::sort(out.begin(), out.end(),
            [](const Live& a, const Live& b) { return a.started < b.started; });
  return out;
}

Status stop(const std::string& id, std::chrono::milliseconds timeout, Shutdown how) {
  auto root = run_root();
  if (!root) return root.error();
  if (id.empty() || id.find('/') != std::string::npos || id == "ports" || id[0] == '.')
    return Error(Exit::noinput, "no machine '" + id + "'");
  fs::path dir = fs::path(*root) / id;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return Error(Exit::noinput, "no machine '" + id + "'");
  int sup = read_pid(dir / "supervisor.pid");
  if (process_alive(sup, "vm-launch")) ::kill(sup, how == Shutdown::clean ? SIGTERM : SIGINT);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (fs::exists(dir, ec)) {
    if (!process_alive(sup, "vm-launch")) {
      int qemu = read_pid(dir / "qemu.pid");
      if (process_alive(qemu, dir.string())) ::kill(qemu, SIGKILL);
      if (held(dir.string())) break;  // the holder removes it
      fs::remove_all(dir, ec);
      break;
    }
    if (std::chrono::steady_clock::now() > deadline)
      return Error(Exit::tempfail, "machine '" + id + "' did not stop in time");
    ::usleep(50 * 1000);
  }
  return {};
}

}  // namespace kiln::machine

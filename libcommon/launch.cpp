// SPDX-License-Identifier: MIT
#include "launch.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/process.hpp>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include "accel.hpp"
#include "atomic_file.hpp"
#include "boot_command.hpp"
#include "digest.hpp"
#include "http_server.hpp"
#include "iso.hpp"
#include "json.hpp"
#include "keeper.hpp"
#include "machine.hpp"
#include "process.hpp"
#include "provision.hpp"
#include "qemu.hpp"
#include "qmp.hpp"
#include "signals.hpp"
#include "ssh.hpp"
#include "template_text.hpp"
#include "text.hpp"

namespace kiln::launch {

namespace fs = std::filesystem;
namespace bp = boost::process;
using namespace std::chrono_literals;
using rapidjson::Value;

std::string default_cache_dir() {
  if (const char* c = std::getenv("KILN_CACHE"); c && *c) return c;
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : "/tmp") + "/.cache/kiln";
}

namespace {

using json::bool_or;
using json::number_or;
using json::string_or;
using json::strings_of;

/// The last `lines` lines of a file, for error messages.
std::string tail(const fs::path& file, size_t lines = 15) {
  std::ifstream in(file, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (char& c : text)
    if (c == '\r' || (static_cast<unsigned char>(c) < 32 && c != '\n' && c != '\t')) c = ' ';
  size_t pos = text.size();
  while (pos > 0 && text[pos - 1] == '\n') --pos;
  text.resize(pos);
  size_t n = 0;
  while (pos > 0) {
    if (text[pos - 1] == '\n' && ++n == lines) break;
    --pos;
  }
  return text.substr(pos);
}

/// The line of the serial log that reports a kernel panic, if any.
/// Watches a serial log for the kernel's panic line, reading only what was
/// added since the last look (the wait for SSH looks many times a second).
class PanicWatch {
 public:
  explicit PanicWatch(fs::path serial) : serial_(std::move(serial)) {}

  /// The panic line (trimmed), once there is one; empty before.
  const std::string& check() {
    if (!found_.empty()) return found_;
    std::ifstream in(serial_, std::ios::binary);
    if (!in || !in.seekg(static_cast<std::streamoff>(read_))) return found_;
    std::string added((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    read_ += added.size();
    pending_ += added;
    // Whole lines go; a partial one is kept for the next look (and is
    // searched too: the panic may be the last thing written).
    for (size_t nl; (nl = pending_.find('\n')) != std::string::npos; pending_.erase(0, nl + 1))
      if (take(pending_.substr(0, nl))) return found_;
    if (take(pending_)) return found_;
    if (pending_.size() > 4096) pending_.erase(0, pending_.size() - 4096);
    return found_;
  }

 private:
  bool take(std::string line) {
    if (line.find("Kernel panic") == std::string::npos) return false;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    found_ = std::move(line);
    return true;
  }
  fs::path serial_;
  std::uint64_t read_ = 0;
  std::string pending_, found_;
};

/// A local path from Packer's iso_url forms: a path or file://.
std::string local_path(const std::string& url) {
  if (text::starts_with(url, "file://")) return url.substr(7);
  if (url.find("://") != std::string::npos) return {};
  return url;
}

struct ImageInfo {
  std::string format;
  uint64_t virtual_size = 0;
};

Result<ImageInfo> image_info(const std::string& path) {
  auto out = process::run({"qemu-img", {"info", "--output=json", path}, {}, {}, {}}, 60s);
  if (!out) return out.error();
  if (out->exit_code != 0)
    return Error(Exit::dataerr, "qemu-img cannot read " + path + ": " + out->err);
  json::Document d;
  if (!json::parse(out->out, d) || !d.IsObject())
    return Error(Exit::software, "qemu-img info gave no JSON for " + path);
  ImageInfo info;
  info.format = string_or(d, "format", "raw");
  info.virtual_size = static_cast<uint64_t>(number_or(d, "virtual-size", 0));
  return info;
}

Status qemu_img(const std::vector<std::string>& args) {
  auto out = process::run({"qemu-img", args, {}, {}, {}}, 300s);
  if (!out) return out.error();
  if (out->exit_code != 0)
    return Error(Exit::software, "qemu-img " + text::join(args, " ") + ": " + out->err);
  return {};
}

/// Everything the supervisor needs, decided before it is forked.
struct Plan {
  std::string id;
  fs::path run_dir;
  std::string qemu_binary;
  json::Document builder;
  qemu::Inputs inputs;
  std::string http_directory;
  std::map<std::string, std::string> http_content;
  std::string http_bind = "0.0.0.0";
  int http_min = 8000, http_max = 9000;
  long expires = 0;
  int launcher = 0;  ///< vm-launch's pid: the machine ends if it dies before the handover
};

/// Removes a run directory unless ownership passed to a supervisor.
struct RunDirGuard {
  fs::path dir;
  bool released = false;
  ~RunDirGuard() {
    if (released || dir.empty()) return;
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

/// Asks qemu to end: ACPI power-down first when `graceful` (a clean guest
/// shutdown), then quit, then a kill.
void end_qemu(bp::child& qemu, const std::string& qmp_socket, bool graceful) {
  std::error_code ec;
  auto qmp = Qmp::connect(qmp_socket, 2s);
  if (qmp) {
    if (graceful) {
      (void)qmp->system_powerdown();
      for (int i = 0; i < 100 && qemu.running(ec); ++i) ::usleep(100 * 1000);
    }
    if (qemu.running(ec)) (void)qmp->quit();
  }
  for (int i = 0; i < 50 && qemu.running(ec); ++i) ::usleep(100 * 1000);
  if (qemu.running(ec)) qemu.terminate(ec);
  qemu.wait(ec);
}

/// The supervisor: owns qemu until it ends (guest power-off, a stop
/// request by SIGTERM, or the maximum lifetime), then removes the run
/// directory. Reports "ok QEMU_PID HTTP_PORT" or "error CODE MESSAGE" on
/// `report` once qemu runs (or could not start). Returns the exit status.
int supervise(Plan& plan, int report) {
  signals::reset_after_fork();
  auto say = [&](const std::string& line) {
    if (report < 0) return;
    std::string l = line + "\n";
    ssize_t r = ::write(report, l.data(), l.size());
    (void)r;
    ::close(report);
    report = -1;
  };
  auto cleanup = [&] {
    std::error_code ec;
    if (!fs::exists(plan.run_dir / "keep", ec) && !machine::held(plan.run_dir.string()))
      fs::remove_all(plan.run_dir, ec);
  };
  auto fail = [&](const Error& e) {
    say("error " + std::to_string(to_int(e.code)) + " " + e.message);
    cleanup();
    return 1;
  };
  (void)write_file_atomically(plan.run_dir / "supervisor.pid", std::to_string(::getpid()) + "\n");
  // Who launched it, so that whoever notices the launcher's death can find
  // the machine before the handover (kiln-build does).
  (void)write_file_atomically(plan.run_dir / "launcher.pid", std::to_string(plan.launcher) + "\n");

  std::unique_ptr<HttpServer> http;
  if (!plan.http_directory.empty() || !plan.http_content.empty()) {
    HttpServerConfig cfg;
    cfg.directory = plan.http_directory;
    cfg.content = plan.http_content;
    cfg.bind_address = plan.http_bind;
    cfg.port_min = plan.http_min;
    cfg.port_max = plan.http_max;
    auto started = HttpServer::start(cfg);
    if (!started) return fail(started.error());
    http = std::move(*started);
    plan.inputs.http_port = http->port();
  }
  auto args = qemu::command_line(plan.builder, plan.inputs);
  if (!args) return fail(args.error());
  (void)write_file_atomically(plan.run_dir / "qemu.cmdline",
                              qemu::quoted(plan.qemu_binary, *args) + "\n");
  std::error_code ec;
  std::string log = (plan.run_dir / "qemu.log").string();
  bp::child qemu(plan.qemu_binary, bp::args(*args), bp::std_in<bp::null, bp::std_out> log,
                 bp::std_err > log, ec);
  if (ec)
    return fail(Error(Exit::unavailable, "cannot start " + plan.qemu_binary + ": " + ec.message()));
  (void)write_file_atomically(plan.run_dir / "qemu.pid", std::to_string(qemu.id()) + "\n");
  say("ok " + std::to_string(qemu.id()) + " " + std::to_string(plan.inputs.http_port));

  while (qemu.running(ec)) {
    bool stop = !signals::sleep_for(200ms) || std::time(nullptr) >= plan.expires;
    // Until vm-launch has written machine.json (the handover), the machine
    // is its launcher's: a launcher killed on the way (kill -9) cannot stop
    // it, so it ends here, with nothing in it worth a clean shutdown.
    if (!stop && plan.launcher > 0 && ::kill(plan.launcher, 0) != 0 &&
        !fs::exists(plan.run_dir / "machine.json", ec)) {
      end_qemu(qemu, plan.inputs.qmp_socket, false);
      break;
    }
    if (stop) {
      // SIGTERM (vm-launch --stop) and the end of the lifetime power the
      // guest off cleanly; SIGINT (a launch that failed or was cut short)
      // ends it at once: there is nothing in it worth a clean shutdown.
      bool graceful = signals::received() != SIGINT;
      // The stop request is being answered: let the shutdown's own waits
      // (QMP) run instead of ending at once.
      signals::clear();
      end_qemu(qemu, plan.inputs.qmp_socket, graceful);
      break;
    }
  }
  qemu.wait(ec);
  http.reset();
  cleanup();
  return 0;
}

/// Forks the supervisor (detached: its own session, reparented to init) and
/// waits for its report. On success returns qemu's pid and the HTTP port.
Result<std::pair<int, int>> start_supervisor(Plan& plan) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0)
    return Error(Exit::software, std::string("pipe: ") + std::strerror(errno));
  pid_t child = ::fork();
  if (child < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return Error(Exit::software, std::string("fork: ") + std::strerror(errno));
  }
  if (child == 0) {
    ::close(fds[0]);
    ::setsid();
    if (::fork() != 0) ::_exit(0);
    // The supervisor: no terminal, its log in the run directory.
    int null = ::open("/dev/null", O_RDWR);
    std::string logp = (plan.run_dir / "supervisor.log").string();
    int log = ::open(logp.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    ::dup2(null, 0);
    ::dup2(log >= 0 ? log : null, 1);
    ::dup2(log >= 0 ? log : null, 2);
    ::_exit(supervise(plan, fds[1]));
  }
  ::close(fds[1]);
  int status = 0;
  ::waitpid(child, &status, 0);
  std::string reply;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n > 0) {
      reply.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    break;
  }
  ::close(fds[0]);
  std::istringstream in(reply);
  std::string word;
  in >> word;
  if (word == "ok") {
    int pid = 0, port = 0;
    in >> pid >> port;
    return std::make_pair(pid, port);
  }
  if (word == "error") {
    int code = 70;
    in >> code;
    std::string msg;
    std::getline(in, msg);
    if (!msg.empty() && msg[0] == ' ') msg.erase(0, 1);
    return Error(static_cast<Exit>(code), msg);
  }
  return Error(Exit::software, "the machine's supervisor ended without a word");
}

std::string sanitize(const std::string& name) {
  std::string out;
  for (char c : name) out += (std::isalnum(static_cast<unsigned char>(c)) || c == '-') ? c : '-';
  if (out.size() > 24) out.resize(24);
  return out.empty() ? "machine" : out;
}

Result<std::string> verify_iso(const Value& b) {
  std::vector<std::string> urls = strings_of(b, "iso_urls");
  std::string path;
  for (const std::string& u : urls) {
    std::string p = local_path(u);
    std::error_code ec;
    if (!p.empty() && fs::exists(p, ec)) {
      path = p;
      break;
    }
  }
  if (path.empty()) {
    bool remote = std::any_of(urls.begin(), urls.end(),
                              [](const std::string& u) { return local_path(u).empty(); });
    return Error(remote ? Exit::config : Exit::noinput,
                 remote ? "downloading " + text::join(urls, ", ") +
                              " is not supported by kiln yet; "
                              "give a local path or file:// URL"
                        : "no file at " + text::join(urls, ", "));
  }
  std::string sum = string_or(b, "iso_checksum", "none");
  if (sum != "none") {
    auto colon = sum.find(':');
    std::string type = colon == std::string::npos ? "sha256" : sum.substr(0, colon);
    std::string want = colon == std::string::npos ? sum : sum.substr(colon + 1);
    auto got = digest::file_hex(path, type);
    if (!got) return got.error();
    if (!text::iequals(*got, want))
      return Error(Exit::dataerr, "checksum mismatch for " + path + ": " + type + " is " + *got +
                                      ", the template says " + want);
  }
  return path;
}

}  // namespace

Status launch(rapidjson::Document& record, const Options& options) {
  auto progress = [&](std::string_view m) {
    if (options.progress) options.progress(m);
  };
  auto& a = record.GetAllocator();
  const Value& build = record["build"];
  const Value& b = build["builder"];
  const std::string type = string_or(build, "type");
  const std::string name = string_or(build, "name");
  const std::string communicator = string_or(b, "communicator", "ssh");

  ssh::Credentials cred;
  cred.private_key_file = string_or(b, "ssh_private_key_file");
  cred.password = string_or(b, "ssh_password");
  cred.agent = bool_or(b, "ssh_agent_auth");
  const std::string user = string_or(b, "ssh_username");
  const auto ssh_timeout =
      std::chrono::milliseconds(static_cast<long>(number_or(b, "ssh_timeout", 300) * 1000));

  Value machine(rapidjson::kObjectType);
  auto put = [&](Value& obj, const char* key, const std::string& v) {
    obj.AddMember(Value(key, a), Value(v, a), a);
  };

  if (type == "null") {
    std::string host = string_or(b, "ssh_host");
    int port = static_cast<int>(number_or(b, "ssh_port", 22));
    put(machine, "id", "null-" + sanitize(name));
    put(machine, "driver", "null");
    Value comm(rapidjson::kObjectType);
    put(comm, "type", communicator);
    if (communicator == "ssh") {
      progress("checking that " + user + "@" + host + ":" + std::to_string(port) + " answers");
      auto key = ssh::wait_until_ready({host, port, user}, cred,
                                       std::chrono::steady_clock::now() + ssh_timeout,
                                       [] { return Status(); });
      if (!key) return key.error();
      put(comm, "host", host);
      comm.AddMember("port", port, a);
      put(comm, "username", user);
      if (!cred.private_key_file.empty()) put(comm, "private_key_file", cred.private_key_file);
      if (!cred.password.empty()) put(comm, "password_ref", "/build/builder/ssh_password");
      put(comm, "host_key", key->openssh);
      put(comm, "host_key_fingerprint", key->fingerprint);
    }
    machine.AddMember("communicator", comm, a);
    record.AddMember("machine", machine, a);
    return {};
  }

  if (auto errs = qemu::unsupported(b); !errs.empty()) return errs.front();

  Plan plan;
  plan.qemu_binary = string_or(b, "qemu_binary", "qemu-system-x86_64");
  auto exe = process::find_program(plan.qemu_binary);
  if (!exe) return exe.error();
  plan.qemu_binary = *exe;

  auto accel = accel::decide(string_or(b, "accelerator", "auto"), plan.qemu_binary,
                             options.cache_dir + "/accel");
  if (!accel) return accel.error();
  progress("accelerator " + accel->accelerator + " (" + accel->reason + ")");

  auto root = machine::run_root();
  if (!root) return root.error();
  plan.id = sanitize(name) + "-" + digest::random_uuid().substr(0, 8);
  plan.run_dir = fs::path(*root) / plan.id;
  std::error_code ec;
  if (!fs::create_directory(plan.run_dir, ec))
    return Error(Exit::cantcreat, "cannot create " + plan.run_dir.string() + ": " + ec.message());
  ::chmod(plan.run_dir.c_str(), 0700);
  RunDirGuard guard{plan.run_dir};

  const int port_min = static_cast<int>(number_or(b, "host_port_min", 2222));
  const int port_max = static_cast<int>(number_or(b, "host_port_max", 4444));
  auto port = machine::PortLock::acquire(port_min, port_max);
  if (!port) return port.error();
  // The network probe's port (see ssh::wait_until_ready), from the same range.
  std::optional<machine::PortLock> probe;
  if (communicator == "ssh") {
    auto p = machine::PortLock::acquire(port_min, port_max);
    if (!p) return p.error();
    probe.emplace(std::move(*p));
  }

  // The disk: always an overlay, so the base image is never written.
  fs::path disk = plan.run_dir / "disk.qcow2";
  uint64_t want = static_cast<uint64_t>(number_or(b, "disk_size", 40960)) * 1024 * 1024;
  std::string base;
  if (bool_or(b, "disk_image")) {
    auto iso = verify_iso(b);
    if (!iso) return iso.error();
    base = fs::absolute(*iso).string();
    auto info = image_info(base);
    if (!info) return info.error();
    std::vector<std::string> args = {"create",     "-q", "-f", "qcow2",      "-F",
                                     info->format, "-b", base, disk.string()};
    if (want > info->virtual_size && !bool_or(b, "skip_resize_disk"))
      args.push_back(std::to_string(want));
    if (auto st = qemu_img(args); !st) return st;
  } else {
    auto iso = verify_iso(b);
    if (!iso) return iso.error();
    plan.inputs.install_iso = fs::absolute(*iso).string();
    if (auto st = qemu_img({"create", "-q", "-f", "qcow2", disk.string(), std::to_string(want)});
        !st)
      return st;
  }

  // Credentials: given, or a fresh key pair offered through cloud-init.
  if (communicator == "ssh" && cred.private_key_file.empty() && cred.password.empty() &&
      !cred.agent) {
    auto pub = ssh::generate_ed25519((plan.run_dir / "id_ed25519").string(), "kiln-" + plan.id);
    if (!pub) return pub.error();
    cred.private_key_file = (plan.run_dir / "id_ed25519").string();
    if (bool_or(b, "cloud_init")) {
      std::string meta = "instance-id: " + plan.id + "\nlocal-hostname: " + sanitize(name) + "\n";
      std::string userdata = "#cloud-config\nssh_authorized_keys:\n  - " + *pub + "\n";
      fs::path seed = plan.run_dir / "seed.iso";
      if (auto st = write_cloud_init_seed(seed.string(), meta, userdata); !st) return st;
      plan.inputs.cdroms.push_back(seed.string());
    }
  }
  std::vector<IsoEntry> cd;
  for (const std::string& f : strings_of(b, "cd_files")) cd.push_back(IsoEntry::host(f));
  if (auto c = b.FindMember("cd_content"); c != b.MemberEnd() && c->value.IsObject())
    for (auto m = c->value.MemberBegin(); m != c->value.MemberEnd(); ++m)
      if (m->value.IsString())
        cd.push_back(IsoEntry::text(m->name.GetString(), m->value.GetString()));
  if (!cd.empty()) {
    fs::path iso = plan.run_dir / "cd.iso";
    if (auto st = write_iso(iso.string(), string_or(b, "cd_label"), cd); !st) return st;
    plan.inputs.cdroms.push_back(iso.string());
  }

  plan.builder.CopyFrom(b, plan.builder.GetAllocator());
  plan.inputs.accelerator = accel->accelerator;
  plan.inputs.disk = disk.string();
  plan.inputs.ssh_host_port = port->port();
  if (probe) plan.inputs.probe_host_port = probe->port();
  plan.inputs.qmp_socket = (plan.run_dir / "qmp.sock").string();
  plan.inputs.serial_log = (plan.run_dir / "serial.log").string();
  plan.inputs.display = !bool_or(b, "headless") && std::getenv("DISPLAY");
  plan.http_directory = string_or(b, "http_directory");
  if (auto c = b.FindMember("http_content"); c != b.MemberEnd() && c->value.IsObject())
    for (auto m = c->value.MemberBegin(); m != c->value.MemberEnd(); ++m)
      if (m->value.IsString()) plan.http_content[m->name.GetString()] = m->value.GetString();
  plan.http_bind = string_or(b, "http_bind_address", "0.0.0.0");
  plan.http_min = static_cast<int>(number_or(b, "http_port_min", 8000));
  plan.http_max = static_cast<int>(number_or(b, "http_port_max", 9000));
  long started = static_cast<long>(std::time(nullptr));
  plan.expires = started + static_cast<long>(options.max_lifetime.count());
  plan.launcher = static_cast<int>(::getpid());

  progress("starting qemu (" + plan.id + ")");
  auto run = start_supervisor(plan);
  if (!run) return run.error();
  guard.released = true;  // the supervisor owns the directory now
  // Plain names: clang 14 cannot capture structured bindings in lambdas.
  const int qemu_pid = run->first;
  const int http_port = run->second;
  // From here on a failure must stop the machine.
  struct Stopper {
    std::string id;
    bool armed = true;
    ~Stopper() {
      if (armed) (void)machine::stop(id, 30s, machine::Shutdown::immediate);
    }
  } stopper{plan.id};

  fs::path serial = plan.inputs.serial_log;
  PanicWatch panics(serial);
  auto check_alive = [&]() -> Status {
    if (signals::interrupted()) return Error(Exit::interrupted, "interrupted");
    const std::string& panic = panics.check();
    if (!panic.empty())
      return Error(Exit::unavailable, "the guest panicked before it was ready: " + panic +
                                          "\nserial console (last lines):\n" + tail(serial));
    if (!machine::process_alive(qemu_pid, plan.run_dir.string()))
      return Error(Exit::unavailable,
                   "qemu exited before the guest was ready; serial console "
                   "(last lines):\n" +
                       tail(serial) + "\nqemu said:\n" + tail(plan.run_dir / "qemu.log", 5));
    return {};
  };

  std::vector<std::string> boot = strings_of(b, "boot_command");
  double boot_wait = number_or(b, "boot_wait", 10);
  if (!boot.empty()) {
    progress("waiting " + std::to_string(static_cast<int>(boot_wait)) + " s (boot_wait)");
    auto until = std::chrono::steady_clock::now() +
                 std::chrono::milliseconds(static_cast<long>(boot_wait * 1000));
    while (std::chrono::steady_clock::now() < until) {
      if (auto st = check_alive(); !st) return st;
      signals::sleep_for(100ms);
    }
    tmpl::Context ctx;
    ctx.fields = {{"HTTPIP", plan.inputs.http_ip},
                  {"HTTPPort", std::to_string(http_port)},
                  {"Name", string_or(b, "vm_name")},
                  {"SSHHostPort", std::to_string(port->port())},
                  {"OutputDir", string_or(b, "output_directory")}};
    std::vector<std::string> rendered;
    for (const std::string& line : boot) {
      auto r = tmpl::render(line, ctx);
      if (!r) return Error(Exit::dataerr, "boot_command: " + r.error().message);
      rendered.push_back(*r);
    }
    auto steps = boot_command::parse(rendered);
    if (!steps) return steps.error();
    auto qmp = Qmp::connect(plan.inputs.qmp_socket, 10s);
    if (!qmp) return qmp.error();
    progress("typing the boot command");
    auto interval =
        std::chrono::milliseconds(static_cast<long>(number_or(b, "boot_key_interval", 0.1) * 1000));
    if (interval.count() <= 0) interval = 100ms;
    if (auto st = boot_command::type(*qmp, *steps, interval, check_alive); !st) return st;
  }

  Value comm(rapidjson::kObjectType);
  put(comm, "type", communicator);
  std::optional<ssh::Session> session;  // the one that found the guest ready
  if (communicator == "ssh") {
    progress("waiting for SSH on 127.0.0.1:" + std::to_string(port->port()));
    // The probe only when qemu forwards it (qemuargs may bring their own
    // -netdev).
    int probe_port = 0;
    if (probe) {
      std::ifstream in(plan.run_dir / "qemu.cmdline");
      std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (cmdline.find(qemu::hostfwd(probe->port(), qemu::kProbeGuestPort)) != std::string::npos)
        probe_port = probe->port();
    }
    auto ready = ssh::ready_session({"127.0.0.1", port->port(), user}, cred,
                                    std::chrono::steady_clock::now() + ssh_timeout, check_alive,
                                    probe_port);
    if (!ready) {
      Error e = ready.error();
      if (e.code == Exit::tempfail)
        e.message = "the guest's SSH did not answer within ssh_timeout (" +
                    std::to_string(ssh_timeout.count() / 1000) + " s): " + e.message +
                    "\nserial console (last lines):\n" + tail(serial);
      return e;
    }
    put(comm, "host", "127.0.0.1");
    comm.AddMember("port", port->port(), a);
    put(comm, "username", user);
    if (!cred.private_key_file.empty()) put(comm, "private_key_file", cred.private_key_file);
    if (!cred.password.empty()) put(comm, "password_ref", "/build/builder/ssh_password");
    if (cred.agent) comm.AddMember("agent", true, a);
    put(comm, "host_key", ready->host_key().openssh);
    put(comm, "host_key_fingerprint", ready->host_key().fingerprint);
    session.emplace(std::move(*ready));
  }

  put(machine, "id", plan.id);
  put(machine, "driver", "qemu");
  put(machine, "build", name);
  put(machine, "run_dir", plan.run_dir.string());
  machine.AddMember("pid", qemu_pid, a);
  int sup = 0;
  std::ifstream(plan.run_dir / "supervisor.pid") >> sup;
  machine.AddMember("supervisor_pid", sup, a);
  put(machine, "accelerator", accel->accelerator);
  put(machine, "qmp_socket", plan.inputs.qmp_socket);
  put(machine, "serial_log", plan.inputs.serial_log);
  Value disks(rapidjson::kArrayType);
  Value d(rapidjson::kObjectType);
  put(d, "path", disk.string());
  put(d, "format", "qcow2");
  put(d, "interface", string_or(b, "disk_interface", "virtio"));
  if (!base.empty()) put(d, "base", base);
  disks.PushBack(d, a);
  machine.AddMember("disks", disks, a);
  if (http_port > 0) machine.AddMember("http_port", http_port, a);
  machine.AddMember("started", static_cast<int64_t>(started), a);
  machine.AddMember("expires", static_cast<int64_t>(plan.expires), a);
  machine.AddMember("communicator", comm, a);
  // machine.json lets --list and --stop find it without the record.
  if (auto st = write_file_atomically(plan.run_dir / "machine.json",
                                      json::to_string(machine) + "\n", 0600);
      !st)
    return st;
  record.AddMember("machine", machine, a);
  if (session) {
    // The session that found the guest ready stays with the machine's
    // keeper, for the tools that come next.
    const std::string sock = (plan.run_dir / "ssh.sock").string();
    auto target = provision::machine_target(record, cred.passphrase, "");
    if (auto st = keeper::start(sock, target, std::move(*session), sup,
                                (plan.run_dir / "keeper.log").string());
        st)
      record["machine"]["communicator"].AddMember("keeper", Value(sock, a), a);
    else
      progress("no connection keeper (" + st.error().message + "): each tool logs in itself");
    session.reset();
  }
  stopper.armed = false;
  progress("ready");
  return {};
}

}  // namespace kiln::launch

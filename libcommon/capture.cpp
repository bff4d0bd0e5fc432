// SPDX-License-Identifier: MIT
#include "capture.hpp"

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <optional>

#include "communicator.hpp"
#include "fd.hpp"
#include "json.hpp"
#include "machine.hpp"
#include "provision.hpp"
#include "provisioner.hpp"
#include "qmp.hpp"
#include "signals.hpp"
#include "sysprep.hpp"
#include "template_rules.hpp"
#include "text.hpp"

namespace kiln::capture {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using json::bool_or;
using json::number_or;
using json::string_or;
using json::strings_of;
using rapidjson::Value;
using Clock = std::chrono::steady_clock;

namespace {

std::chrono::milliseconds seconds_of(const Value& obj, const char* key, double fallback) {
  return std::chrono::milliseconds(static_cast<long long>(number_or(obj, key, fallback) * 1000));
}

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

/// Splits a command's output chunks into lines for Options::output.
class LineSink {
 public:
  LineSink(const Options& o, bool is_stderr) : o_(o), is_stderr_(is_stderr) {}
  ~LineSink() { flush(); }
  void operator()(std::string_view chunk) {
    buf_.append(chunk);
    for (size_t nl; (nl = buf_.find('\n')) != std::string::npos; buf_.erase(0, nl + 1))
      emit(buf_.substr(0, nl));
  }
  void flush() {
    if (!buf_.empty()) emit(buf_);
    buf_.clear();
  }
  const std::string& last() const { return last_; }

 private:
  void emit(const std::string& line) {
    last_ = line;
    if (o_.output) o_.output(line, is_stderr_);
  }
  const Options& o_;
  bool is_stderr_;
  std::string buf_, last_;
};

/// The machine as capture sees it.
struct Machine {
  std::string id;
  std::string run_dir;
  std::string qmp_socket;
  std::string disk;
  int qemu_pid = 0;
  bool alive() const { return machine::process_alive(qemu_pid, run_dir); }
  /// Waits until qemu is gone or `until`; false on timeout or interrupt.
  bool wait_gone(Clock::time_point until) const {
    // A pidfd wakes the wait the moment qemu exits (alive() first ties the
    // pid to this machine's run directory).
    const UniqueFd pidfd = alive() ? open_pidfd(qemu_pid) : UniqueFd();
    while (alive()) {
      const auto now = Clock::now();
      if (now >= until || signals::interrupted()) return false;
      const int ms = static_cast<int>(std::min<long long>(
          100, std::chrono::ceil<std::chrono::milliseconds>(until - now).count()));
      pollfd p[2] = {{pidfd.get(), POLLIN, 0}, {signals::wake_fd(), POLLIN, 0}};
      if (pidfd.get() < 0 || ::poll(p, p[1].fd >= 0 ? 2 : 1, ms) < 0) ::usleep(20 * 1000);
    }
    return true;
  }
};

/// Packer's qemu shutdown step, with kiln's ACPI power-down before a kill.
/// Returns whether the machine had to be killed.
Result<bool> shut_down(const Machine& m, const Value& builder, const std::string& comm_type,
                       std::optional<communicator::Communicator>& comm, const Options& o) {
  auto say = [&](const std::string& s) {
    if (o.say) o.say(s);
  };
  auto warn = [&](const std::string& s) {
    if (o.warn) o.warn(s);
  };
  const auto timeout = seconds_of(builder, "shutdown_timeout", 300);
  const std::string command = string_or(builder, "shutdown_command");
  const auto t0 = Clock::now();
  std::string why;

  auto acpi = [&](const std::string& reason) {
    say(reason + "; sending an ACPI power-down");
    auto q = Qmp::connect(m.qmp_socket, 5s);
    if (q)
      (void)q->system_powerdown();
    else
      warn("cannot reach qemu's QMP socket: " + q.error().message);
  };

  if (comm_type == "none") {
    say("Waiting for shutdown...");
    if (m.wait_gone(t0 + timeout)) return false;
    why = "the machine did not shut itself down within shutdown_timeout (" +
          std::to_string(timeout.count() / 1000) + " s)";
  } else if (!command.empty()) {
    say("Gracefully halting virtual machine...");
    if (comm) {
      LineSink out(o, false), err(o, true);
      auto r = comm->run(
          command, [&](std::string_view c) { out(c); }, [&](std::string_view c) { err(c); },
          timeout);
      out.flush();
      err.flush();
      comm.reset();  // the connection goes with the machine
      if (!r && r.error().code == Exit::interrupted) return r.error();
      if (r && *r != 0 && *r != communicator::kDisconnected)
        warn("shutdown_command exited " + std::to_string(*r) +
             (err.last().empty() ? std::string() : ": " + err.last()));
      else if (!r)
        warn("shutdown_command: " + first_line(r.error().message));
    }
    if (m.wait_gone(t0 + timeout)) return false;
    why = "the machine did not shut down within shutdown_timeout (" +
          std::to_string(timeout.count() / 1000) + " s) after shutdown_command";
  } else {
    // Packer halts the machine at once; its page cache may still hold the
    // provisioners' last writes. kiln flushes it and asks for an ACPI
    // power-down first, and halts only when that is ignored.
    if (comm) {
      (void)comm->run("sync", {}, {}, 30s);
      comm.reset();
    }
    const auto grace = std::min<std::chrono::milliseconds>(timeout, 30s);
    acpi("Halting the virtual machine (no shutdown_command)");
    if (m.wait_gone(Clock::now() + grace)) return false;
    if (signals::interrupted()) return Error(Exit::interrupted, "interrupted");
    warn("the guest ignored the ACPI power-down for " + std::to_string(grace.count() / 1000) +
         " s; halting it (as Packer does without a shutdown_command)");
    (void)machine::stop(m.id, 30s, machine::Shutdown::immediate);
    return false;
  }
  if (signals::interrupted()) return Error(Exit::interrupted, "interrupted");
  acpi(why);
  const auto grace = std::clamp<std::chrono::milliseconds>(timeout, 5s, 30s);
  if (m.wait_gone(Clock::now() + grace)) {
    warn("the machine shut down after the ACPI power-down");
    return false;
  }
  if (signals::interrupted()) return Error(Exit::interrupted, "interrupted");
  const std::string waited = std::to_string(grace.count() / 1000) + " s";
  warn(why + ", nor " + waited + " after an ACPI power-down: killing it");
  (void)machine::stop(m.id, 30s, machine::Shutdown::immediate);
  if (!bool_or(builder, "allow_unclean_shutdown"))
    return Error(Exit::tempfail,
                 why + ", nor " + waited +
                     " after an ACPI power-down; it was killed, and its disk may be "
                     "inconsistent (allow_unclean_shutdown: true captures it anyway)");
  return true;
}

Value file_entry(const disk_image::Artifact& art, rapidjson::Document::AllocatorType& a) {
  Value f(rapidjson::kObjectType);
  f.AddMember("path", Value(fs::absolute(art.path).lexically_normal().string(), a), a);
  f.AddMember("format", Value(std::string(disk_image::name(art.format)), a), a);
  f.AddMember("size", static_cast<uint64_t>(art.size), a);
  f.AddMember("allocated", static_cast<uint64_t>(art.allocated), a);
  f.AddMember("virtual_size", static_cast<uint64_t>(art.virtual_size), a);
  if (!art.sha256.empty()) {
    f.AddMember("sha256", Value(art.sha256, a), a);
    // What artifact-post checks before it uses that digest again.
    f.AddMember("mtime_ns", static_cast<int64_t>(art.mtime_ns), a);
  }
  return f;
}

void set_artifacts(rapidjson::Document& record, std::string_view builder_id, std::string_view id,
                   const std::string& directory, const std::vector<disk_image::Artifact>& files) {
  auto& a = record.GetAllocator();
  Value art(rapidjson::kObjectType);
  art.AddMember("builder_id", Value(std::string(builder_id), a), a);
  art.AddMember("id", Value(std::string(id), a), a);
  art.AddMember("producer", "capture", a);
  if (!directory.empty())
    art.AddMember("directory", Value(fs::absolute(directory).lexically_normal().string(), a), a);
  Value list(rapidjson::kArrayType);
  for (const auto& f : files) list.PushBack(file_entry(f, a), a);
  art.AddMember("files", list, a);
  Value arts(rapidjson::kArrayType);
  arts.PushBack(art, a);
  if (record.HasMember("artifacts")) record.RemoveMember("artifacts");
  record.AddMember("artifacts", arts, a);
}

/// Converts `disk` into the targets in a fresh output directory.
Result<std::vector<disk_image::Artifact>> convert_into(
    const std::string& disk, const std::string& dir, bool force,
    const std::vector<disk_image::Target>& targets, const Options& o) {
  auto out = disk_image::OutputDirectory::prepare(dir, force);
  if (!out) return out.error();
  disk_image::ConvertOptions co;
  co.jobs = o.jobs;
  co.all_or_nothing = true;
  co.progress = o.progress;
  if (o.say) {
    std::vector<std::string> names;
    for (const auto& t : targets) names.push_back(t.path.filename().string());
    o.say("converting the disk to " + text::join(names, ", ") + " in " + dir);
  }
  auto arts = disk_image::convert(disk, targets, co);
  if (!arts) return arts.error();
  out->keep();
  return arts;
}

}  // namespace

Status capture(rapidjson::Document& record, const Options& o) {
  auto& a = record.GetAllocator();
  const Value& build = record["build"];
  const Value& builder = build["builder"];
  if (string_or(build, "type") == "null") {
    set_artifacts(record, kNullBuilderId, "Null", "", {});
    return {};
  }
  auto ms = record.FindMember("machine");
  if (ms == record.MemberEnd() || !ms->value.IsObject())
    return Error(Exit::dataerr,
                 "the record has no machine to capture: run vm-launch first "
                 "(or give --disk)");
  const Value& mach = ms->value;
  if (string_or(mach, "state") == "stopped")
    return Error(Exit::dataerr,
                 "the record's machine " + string_or(mach, "id") + " has been stopped already");
  Machine m;
  m.id = string_or(mach, "id");
  m.run_dir = string_or(mach, "run_dir");
  m.qmp_socket = string_or(mach, "qmp_socket");
  m.qemu_pid = static_cast<int>(number_or(mach, "pid", 0));
  if (auto d = mach.FindMember("disks");
      d != mach.MemberEnd() && d->value.IsArray() && !d->value.Empty())
    m.disk = string_or(d->value[0], "path");
  if (m.disk.empty()) return Error(Exit::dataerr, "the record's machine lists no disk");

  // Plan everything that can be wrong before the machine goes down.
  auto primary = disk_image::parse_format(string_or(builder, "format", "qcow2"));
  if (!primary) return primary.error();
  std::vector<disk_image::Format> extra;
  for (const std::string& f : strings_of(build, "captures")) {
    auto fmt = disk_image::parse_format(f);
    if (!fmt) return fmt.error();
    extra.push_back(*fmt);
  }
  const std::string dir = string_or(builder, "output_directory",
                                    disk_image::default_output_directory(string_or(build, "name")));
  auto targets = disk_image::plan_targets(
      dir, string_or(builder, "vm_name", disk_image::default_vm_name(string_or(build, "name"))),
      *primary, extra);
  if (!targets) return targets.error();
  if (*primary == disk_image::Format::qcow2) {
    (*targets)[0].compress = bool_or(builder, "disk_compression");
    (*targets)[0].skip_compaction = bool_or(builder, "use_backing_file");
  }
  const bool force = bool_or(build, "force");
  if (auto st = disk_image::check_output_directory(dir, force); !st) return st;

  auto hold = machine::Hold::take(m.run_dir);
  if (!hold) return hold.error();
  const std::string comm_type = string_or(mach["communicator"], "type", "ssh");
  const std::string on_error = string_or(build, "on_error", "cleanup");
  bool off = false;
  auto mark_stopped = [&] {
    Value& mm = record["machine"];
    if (mm.HasMember("state")) mm.RemoveMember("state");
    mm.AddMember("state", "stopped", a);
  };
  // A failure while the machine runs: abort leaves it (and releases the
  // hold); otherwise it is stopped and the hold removes the directory.
  auto fail = [&](Error e) -> Error {
    if (!off && on_error == "abort" && e.code != Exit::interrupted) {
      hold->release();
      e.message += "\nthe machine " + m.id + " is left running (on_error=abort); log in with:\n  " +
                   provision::ssh_command(record) + "\nand end it with: vm-launch --stop " + m.id;
      return e;
    }
    if (!off) (void)machine::stop(m.id, 30s, machine::Shutdown::immediate);
    mark_stopped();
    return e;
  };

  std::optional<communicator::Communicator> comm;
  const std::vector<std::string> ops = strings_of(builder, "sysprep");
  // SSH runs sysprep and shutdown_command, or (without one) a sync.
  if (comm_type == "ssh" && m.alive()) {
    comm.emplace(provision::machine_target(record, o.passphrase));
    if (o.say) o.say("connecting to " + comm->where());
    if (auto st = comm->connect(seconds_of(builder, "ssh_timeout", 300)); !st) {
      Error e = st.error();
      e.step = "connect";
      return fail(e);
    }
  }

  if (!ops.empty()) {
    if (!comm) return fail(Error(Exit::config, "sysprep needs the ssh communicator"));
    auto script = sysprep::script(ops);
    if (!script) return fail(script.error());
    if (o.say) o.say("sysprep: " + text::join(ops, ", "));
    provisioner::Environment env;
    env.build_name = string_or(build, "name");
    env.builder_type = string_or(build, "type");
    env.comm = &*comm;
    env.output = o.output;
    const bool sudo = string_or(mach["communicator"], "username") != "root";
    rapidjson::Document holder;
    const Value step =
        provisioner::make_shell({*script}, false, "/bin/sh",
                                sudo ? "chmod +x {{.Path}}; sudo -n {{.Vars}} {{.Path}}"
                                     : rules::shell_execute_command(false),
                                holder.GetAllocator());
    if (auto r = provisioner::run(step, env, 300s); !r) {
      Error e = r.error();
      e.step = "sysprep";
      e.message = "sysprep: " + e.message;
      if (sudo)
        e.message +=
            "\n(sysprep runs as root through sudo -n: the user needs "
            "password-less sudo)";
      return fail(e);
    }
  }

  auto killed = shut_down(m, builder, comm_type, comm, o);
  if (!killed) {
    Error e = killed.error();
    e.step = "shutdown";
    return fail(e);
  }
  off = true;
  // The supervisor leaves once qemu has; the disk stays (held).
  mark_stopped();
  if (signals::interrupted()) return Error(Exit::interrupted, "interrupted");

  auto arts = convert_into(m.disk, dir, force, *targets, o);
  if (!arts) {
    Error e = arts.error();
    e.step = "convert";
    return e;
  }
  set_artifacts(record, kQemuBuilderId, "VM", dir, *arts);
  return {};
}

Status capture_disk(rapidjson::Document& record, const DiskJob& job, const Options& o) {
  if (job.formats.empty()) return Error(Exit::config, "no image format asked for");
  std::string vm_name = job.vm_name;
  if (vm_name.empty()) {
    vm_name = fs::path(job.disk).filename().string();
    for (auto f : disk_image::formats()) {
      const std::string ext = "." + std::string(disk_image::extension(f));
      if (vm_name.size() > ext.size() && vm_name.ends_with(ext)) {
        vm_name.resize(vm_name.size() - ext.size());
        break;
      }
    }
    vm_name += "." + std::string(disk_image::extension(job.formats[0]));
  }
  std::vector<disk_image::Format> extra(job.formats.begin() + 1, job.formats.end());
  auto targets = disk_image::plan_targets(job.output_directory, vm_name, job.formats[0], extra);
  if (!targets) return targets.error();
  if (job.compress) {
    if (job.formats[0] != disk_image::Format::qcow2)
      return Error(Exit::config, "--compress needs qcow2 as the first format");
    (*targets)[0].compress = true;
  }
  if (auto st = disk_image::check_output_directory(job.output_directory, job.force); !st) return st;
  auto arts = convert_into(job.disk, job.output_directory, job.force, *targets, o);
  if (!arts) return arts.error();
  set_artifacts(record, kQemuBuilderId, "VM", job.output_directory, *arts);
  return {};
}

}  // namespace kiln::capture

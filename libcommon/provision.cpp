// SPDX-License-Identifier: MIT
#include "provision.hpp"

#include <rapidjson/pointer.h>

#include <chrono>
#include <cmath>

#include "json.hpp"
#include "machine.hpp"
#include "provisioner.hpp"
#include "signals.hpp"

namespace kiln::provision {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using json::bool_or;
using json::number_or;
using json::string_or;
using rapidjson::Value;

namespace {

std::chrono::milliseconds seconds_of(const Value& obj, const char* key, double fallback) {
  return std::chrono::milliseconds(static_cast<long long>(number_or(obj, key, fallback) * 1000));
}

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

}  // namespace

communicator::Target machine_target(const rapidjson::Document& record,
                                    const std::string& passphrase, const std::string& password) {
  const Value& comm = record["machine"]["communicator"];
  const Value& builder = record["build"]["builder"];
  communicator::Target t;
  t.endpoint.host = string_or(comm, "host", "127.0.0.1");
  t.endpoint.port = static_cast<int>(number_or(comm, "port", 22));
  t.endpoint.user = string_or(comm, "username");
  t.credentials.private_key_file = string_or(comm, "private_key_file");
  t.credentials.passphrase = passphrase;
  t.credentials.agent = bool_or(comm, "agent");
  if (auto ref = string_or(comm, "password_ref"); !ref.empty()) {
    if (const Value* pw = rapidjson::Pointer(ref.c_str()).Get(record); pw && pw->IsString())
      t.credentials.password = pw->GetString();
  }
  if (!password.empty()) t.credentials.password = password;
  t.host_key = string_or(comm, "host_key", string_or(comm, "host_key_fingerprint"));
  t.keeper = string_or(comm, "keeper");
  t.keepalive_seconds = static_cast<int>(number_or(builder, "ssh_keep_alive_interval", 5));
  t.read_write_timeout = seconds_of(builder, "ssh_read_write_timeout", 0);
  const std::string method = string_or(builder, "ssh_file_transfer_method");
  t.transfer = method == "sftp"  ? ssh::Session::TransferMethod::sftp
               : method == "scp" ? ssh::Session::TransferMethod::scp
                                 : ssh::Session::TransferMethod::automatic;
  return t;
}

namespace {

/// Packer's generated data for templates and local commands.
std::map<std::string, std::string> generated_of(const Value& machine, const Value& build) {
  std::map<std::string, std::string> g;
  const Value& comm = machine["communicator"];
  g["ID"] = string_or(machine, "id");
  g["ConnType"] = string_or(comm, "type", "ssh");
  g["Host"] = string_or(comm, "host");
  if (comm.HasMember("port"))
    g["Port"] = std::to_string(static_cast<int>(number_or(comm, "port", 22)));
  g["User"] = string_or(comm, "username");
  g["SSHPrivateKeyFile"] = string_or(comm, "private_key_file");
  g["SSHAgentAuth"] = bool_or(comm, "agent") ? "true" : "false";
  g["PackerRunUUID"] = string_or(build, "run_uuid");
  if (machine.HasMember("http_port")) {
    // The guest reaches the host's HTTP server through qemu's user network.
    std::string port = std::to_string(static_cast<int>(number_or(machine, "http_port", 0)));
    g["PackerHTTPIP"] = "10.0.2.2";
    g["PackerHTTPPort"] = port;
    g["PackerHTTPAddr"] = "10.0.2.2:" + port;
  }
  return g;
}

void put_entry(Value& list, rapidjson::Document::AllocatorType& a, int index,
               const std::string& type, const char* status, double seconds,
               std::optional<int> exit_code, int attempts, const std::string& note) {
  Value e(rapidjson::kObjectType);
  e.AddMember("index", index, a);
  e.AddMember("type", Value(type, a), a);
  e.AddMember("status", Value(status, a), a);
  e.AddMember("duration", std::round(seconds * 1000) / 1000, a);
  if (exit_code) e.AddMember("exit_code", *exit_code, a);
  if (attempts > 0) e.AddMember("attempts", attempts, a);
  if (!note.empty()) e.AddMember("note", Value(note, a), a);
  list.PushBack(e, a);
}

}  // namespace

std::string ssh_command(const Value& record) {
  auto m = record.FindMember("machine");
  if (m == record.MemberEnd() || !m->value.HasMember("communicator")) return {};
  const Value& c = m->value["communicator"];
  std::string cmd = "ssh";
  if (auto key = string_or(c, "private_key_file"); !key.empty()) cmd += " -i " + key;
  if (auto port = static_cast<int>(number_or(c, "port", 22)); port != 22)
    cmd += " -p " + std::to_string(port);
  // The machine's host key changes with every build: keep it out of the
  // user's known_hosts.
  cmd += " -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null";
  cmd += " " + string_or(c, "username") + "@" + string_or(c, "host", "127.0.0.1");
  return cmd;
}

Status provision(rapidjson::Document& record, const Options& o) {
  auto& a = record.GetAllocator();
  auto m = record.FindMember("machine");
  if (m == record.MemberEnd() || !m->value.IsObject())
    return Error(Exit::dataerr,
                 "the record has no machine to provision: run vm-launch first (or give --host)");
  if (string_or(m->value, "state") == "stopped")
    return Error(Exit::dataerr,
                 "the record's machine " + string_or(m->value, "id") + " has been stopped already");
  const Value& build = record["build"];
  const Value& builder = build["builder"];
  const Value& comm_section = m->value["communicator"];
  const std::string id = string_or(m->value, "id");
  std::string on_error = string_or(build, "on_error", "cleanup");
  const std::string driver = string_or(m->value, "driver");

  provisioner::Environment env;
  env.build_name = string_or(build, "name");
  env.builder_type = string_or(build, "type");
  env.generated = generated_of(m->value, build);
  env.say = o.say;
  env.output = o.output;
  env.progress = o.progress;
  env.interactive = o.interactive;

  std::optional<communicator::Communicator> comm;
  auto say = [&](const std::string& s) {
    if (o.say) o.say(s);
  };

  Value done(rapidjson::kArrayType);
  // Stores what ran so far (also when this function fails).
  struct Store {
    rapidjson::Document& record;
    Value& done;
    ~Store() {
      auto& al = record.GetAllocator();
      if (record.HasMember("provisioned")) record.RemoveMember("provisioned");
      record.AddMember("provisioned", done, al);
    }
  } store{record, done};

  const Value* list = nullptr;
  if (auto p = build.FindMember("provisioners"); p != build.MemberEnd() && p->value.IsArray())
    list = &p->value;
  const bool any = list && !list->Empty();

  if (string_or(comm_section, "type") == "ssh" && any) {
    comm.emplace(machine_target(record, o.passphrase, o.password));
    say("connecting to " + comm->where());
    if (auto st = comm->connect(seconds_of(builder, "ssh_timeout", 300)); !st) {
      Error e = st.error();
      e.step = "connect";
      return e;
    }
    env.comm = &*comm;
  }

  // What a failure does with the machine, once.
  auto handle_failure = [&](Error e, int index, const std::string& type) -> Error {
    e.step = index >= 0 ? "provisioner " + std::to_string(index) + " (" + type + ")" : "provision";
    e.message = e.step + ": " + e.message;
    const Value* cleanup = nullptr;
    if (auto c = build.FindMember("error_cleanup_provisioner");
        c != build.MemberEnd() && c->value.IsObject())
      cleanup = &c->value;
    if (cleanup && !signals::interrupted()) {
      say("running the error-cleanup-provisioner");
      auto t0 = Clock::now();
      auto r = provisioner::run(*cleanup, env, seconds_of(*cleanup, "timeout", 0));
      double secs = std::chrono::duration<double>(Clock::now() - t0).count();
      put_entry(done, a, -1, string_or(*cleanup, "type"), r ? "ok" : "failed", secs,
                r ? std::optional<int>(r->exit_code) : std::nullopt, 1,
                r ? std::string() : first_line(r.error().message));
      if (!r) say("the error-cleanup-provisioner failed too: " + first_line(r.error().message));
    }
    if (on_error == "abort") {
      if (driver == "qemu")
        e.message += "\nthe machine " + id + " is left running (on_error=abort); log in with:\n  " +
                     ssh_command(record) + "\nand end it with: vm-launch --stop " + id;
      return e;
    }
    if (driver == "qemu") {
      comm.reset();
      // A machine that is gone already (it crashed, or powered itself off)
      // needs no stopping.
      if (auto st = machine::stop(id, 30s, machine::Shutdown::immediate);
          !st && st.error().code != Exit::noinput)
        e.message += "\n(stopping the machine failed too: " + st.error().message + ")";
      Value& mach = record["machine"];
      if (mach.HasMember("state")) mach.RemoveMember("state");
      mach.AddMember("state", "stopped", a);
    }
    return e;
  };

  if (!any) return {};
  for (rapidjson::SizeType i = 0; i < list->Size(); ++i) {
    const Value& p = (*list)[i];
    const std::string type = string_or(p, "type");
    const int index = static_cast<int>(i);
    const auto t0 = Clock::now();
    if (auto pause = seconds_of(p, "pause_before", 0); pause.count() > 0) {
      say("Pausing " + std::to_string(pause.count() / 1000.0).substr(0, 5) +
          " s before the next provisioner...");
      if (!signals::sleep_for(pause)) {
        put_entry(done, a, index, type, "failed", 0, std::nullopt, 0, "interrupted");
        return handle_failure(Error(Exit::interrupted, "interrupted"), index, type);
      }
    }
    const int tries = 1 + std::max(0, static_cast<int>(number_or(p, "max_retries", 0)));
    const auto timeout = seconds_of(p, "timeout", 0);
    for (int attempt = 1;; ++attempt) {
      say("provisioner " + std::to_string(index) + " (" + type + ")" +
          (attempt > 1 ? " attempt " + std::to_string(attempt) : std::string()));
      auto r = provisioner::run(p, env, timeout);
      double secs = std::chrono::duration<double>(Clock::now() - t0).count();
      if (r) {
        put_entry(done, a, index, type, r->skipped ? "skipped" : "ok", secs,
                  type == "shell" || type == "shell-local" || type == "ansible"
                      ? std::optional<int>(r->exit_code)
                      : std::nullopt,
                  attempt, r->note);
        break;
      }
      Error e = r.error();
      if (e.code != Exit::interrupted && !signals::interrupted() && attempt < tries) {
        say("provisioner " + std::to_string(index) + " (" + type +
            ") failed, retrying: " + first_line(e.message));
        if (signals::sleep_for(2s)) continue;
      }
      if (e.code != Exit::interrupted && signals::interrupted())
        e = Error(Exit::interrupted, "interrupted: " + e.message);
      if (e.code != Exit::interrupted && on_error == "ask" && o.ask) {
        char answer =
            o.ask("provisioner " + std::to_string(index) + " (" + type + "): " + e.message);
        if (answer == 'r') {
          attempt = 0;
          continue;
        }
        on_error = answer == 'a' ? "abort" : "cleanup";
      }
      std::optional<int> code;
      if (auto pos = e.message.find("exit status: "); pos != std::string::npos)
        code = std::atoi(e.message.c_str() + pos + 13);
      put_entry(done, a, index, type, "failed", secs, code, attempt, first_line(e.message));
      return handle_failure(std::move(e), index, type);
    }
    if (signals::interrupted()) {
      return handle_failure(Error(Exit::interrupted, "interrupted"), index, type);
    }
  }
  return {};
}

}  // namespace kiln::provision

// SPDX-License-Identifier: MIT
#include "provisioner.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "atomic_file.hpp"
#include "json.hpp"
#include "process.hpp"
#include "signals.hpp"
#include "template_rules.hpp"
#include "template_text.hpp"

namespace kiln::provisioner {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using json::bool_or;
using json::number_or;
using json::string_or;
using json::strings_of;
using rapidjson::Value;

namespace {

constexpr size_t kTailLines = 10;

std::chrono::milliseconds seconds_of(const Value& p, const char* key, double fallback) {
  return std::chrono::milliseconds(static_cast<long long>(number_or(p, key, fallback) * 1000));
}

/// Splits a stream of chunks into lines for the log and keeps the last
/// few for an error message.
class LineCollector {
 public:
  LineCollector(Environment& env, std::deque<std::string>& tail, bool is_stderr)
      : env_(env), tail_(tail), is_stderr_(is_stderr) {}
  LineCollector(const LineCollector&) = delete;
  ~LineCollector() { flush(); }

  void operator()(std::string_view chunk) {
    partial_.append(chunk);
    size_t start = 0;
    for (size_t nl; (nl = partial_.find('\n', start)) != std::string::npos; start = nl + 1)
      emit(std::string_view(partial_).substr(start, nl - start));
    partial_.erase(0, start);
    // A line that never ends (a progress bar) is shown in pieces.
    if (partial_.size() > 8192) {
      emit(partial_);
      partial_.clear();
    }
  }
  void flush() {
    if (!partial_.empty()) emit(partial_);
    partial_.clear();
  }

 private:
  void emit(std::string_view line) {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (env_.output) env_.output(line, is_stderr_);
    tail_.emplace_back(line);
    if (tail_.size() > kTailLines) tail_.pop_front();
  }
  Environment& env_;
  std::deque<std::string>& tail_;
  bool is_stderr_;
  std::string partial_;
};

std::string tail_text(const std::deque<std::string>& tail) {
  if (tail.empty()) return "(it printed nothing)";
  std::string s = "last lines of its output:";
  for (const auto& l : tail) s += "\n  " + l;
  return s;
}

std::string codes_text(const std::vector<int>& codes) {
  std::string s = "[";
  for (size_t i = 0; i < codes.size(); ++i) s += (i ? " " : "") + std::to_string(codes[i]);
  return s + "]";
}

std::vector<int> valid_exit_codes(const Value& p) {
  std::vector<int> codes;
  auto it = p.FindMember("valid_exit_codes");
  if (it != p.MemberEnd() && it->value.IsArray())
    for (const auto& v : it->value.GetArray())
      if (v.IsNumber()) codes.push_back(static_cast<int>(v.GetDouble()));
  if (codes.empty()) codes.push_back(0);
  return codes;
}

/// Exit::failed for a code that is not valid, as Packer words it.
Status check_exit(int code, const std::vector<int>& valid, const std::deque<std::string>& tail,
                  const std::string& what) {
  if (std::find(valid.begin(), valid.end(), code) != valid.end()) return {};
  return Error(Exit::failed, what + " exited with non-zero exit status: " + std::to_string(code) +
                                 ". Allowed exit codes are: " + codes_text(valid) + "\n" +
                                 tail_text(tail));
}

/// The remaining time until `deadline`, at least 1 ms; 0 = no deadline.
std::chrono::milliseconds remaining(Clock::time_point deadline) {
  if (deadline == Clock::time_point::max()) return 0ms;
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return std::max(left, 1ms);
}

Status past(Clock::time_point deadline, const std::string& what) {
  if (deadline != Clock::time_point::max() && Clock::now() >= deadline)
    return Error(Exit::tempfail, what + " did not finish within the provisioner's timeout");
  return {};
}

Result<std::string> read_local(const std::string& path) {
  auto text = read_file(path);
  if (!text) return Error(Exit::noinput, "cannot read " + path + ": " + text.error().message);
  return *text;
}

tmpl::Context template_context(const Environment& env) {
  tmpl::Context ctx;
  ctx.build_name = env.build_name;
  ctx.build_type = env.builder_type;
  ctx.user = [](const std::string& name) -> Result<std::string> {
    return Error(Exit::dataerr, "user variable " + name + " was not resolved before provisioning");
  };
  for (const auto& [k, v] : env.generated) ctx.fields[k] = v;
  return ctx;
}

/// Packer's retry.Config{StartTimeout}: calls `op` until it succeeds, it
/// fails in a way no retry cures, or `start_retry` has passed; the machine
/// may be rebooting meanwhile.
template <class Op>
auto with_retry(Environment& env, std::chrono::milliseconds start_retry, Clock::time_point deadline,
                const std::string& what, Op&& op) -> decltype(op()) {
  const auto give_up = Clock::now() + start_retry;
  for (int attempt = 1;; ++attempt) {
    auto r = op();
    if (r) return r;
    Error e = r.error();
    bool retryable = e.code == Exit::protocol || e.code == Exit::tempfail;
    if (!retryable || signals::interrupted() || Clock::now() >= give_up ||
        (deadline != Clock::time_point::max() && Clock::now() >= deadline))
      return e;
    if (env.say) env.say("retrying " + what + " (" + e.message + ")");
    env.comm->drop();
    auto wait = std::min<Clock::duration>(give_up - Clock::now(), 60s);
    auto connect_for = std::chrono::duration_cast<std::chrono::milliseconds>(wait);
    if (connect_for.count() <= 0) return e;
    if (auto st = env.comm->connect(connect_for); !st) {
      if (st.error().code != Exit::tempfail && st.error().code != Exit::protocol) return st.error();
      if (!signals::sleep_for(1s)) return Error(Exit::interrupted, "interrupted");
    }
  }
}

// ------------------------------------------------------------------ shell

Result<Step> run_shell(const Value& p, Environment& env, Clock::time_point deadline) {
  if (!env.comm) return Error(Exit::config, "the shell provisioner needs a communicator (ssh)");
  const bool binary = bool_or(p, "binary");
  const bool expect_disconnect = bool_or(p, "expect_disconnect");
  const bool skip_clean = bool_or(p, "skip_clean");
  const bool use_env_var_file = bool_or(p, "use_env_var_file");
  const auto start_retry = seconds_of(p, "start_retry_timeout", 300);
  const std::string folder = string_or(p, "remote_folder", "/tmp");
  static thread_local std::mt19937 rng{std::random_device{}()};
  std::string file = string_or(p, "remote_file");
  if (file.empty()) file = "script_" + std::to_string(rng() % 9999) + ".sh";
  std::string remote_path = string_or(p, "remote_path");
  if (remote_path.empty()) remote_path = folder + "/" + file;
  const auto valid = valid_exit_codes(p);

  // The scripts' contents: inline lines become one script with the shebang.
  std::vector<std::pair<std::string, std::string>> scripts;  // label, text
  if (auto in = p.FindMember("inline"); in != p.MemberEnd() && in->value.IsArray()) {
    std::string text = "#!" + string_or(p, "inline_shebang", "/bin/sh -e") + "\n";
    for (const auto& line : strings_of(p, "inline")) text += line + "\n";
    scripts.emplace_back("inline script", std::move(text));
  } else {
    for (const auto& path : strings_of(p, "scripts")) {
      auto text = read_local(path);
      if (!text) return text.error();
      std::string t = std::move(*text);
      if (!binary) t.erase(std::remove(t.begin(), t.end(), '\r'), t.end());
      scripts.emplace_back(path, std::move(t));
    }
  }

  tmpl::Context ctx = template_context(env);
  std::string vars = flattened_vars(p, env);
  std::string env_var_file;
  if (use_env_var_file) {
    env_var_file = folder + "/varfile_" + std::to_string(rng() % 9999) + ".sh";
    auto st = with_retry(env, start_retry, deadline, "uploading the variables file",
                         [&] { return env.comm->upload_data(vars, env_var_file, 0600); });
    if (!st) return st.error();
  }
  ctx.fields["Vars"] = vars;
  ctx.fields["Path"] = remote_path;
  ctx.fields["EnvVarFile"] = env_var_file;
  // Packer's default, as template-validate writes it, for a record made by
  // other means that leaves execute_command out.
  auto command = tmpl::render(
      string_or(p, "execute_command", std::string(rules::shell_execute_command(use_env_var_file))),
      ctx);
  if (!command) return Error(Exit::config, "execute_command: " + command.error().message);

  Step step;
  for (const auto& script : scripts) {
    const std::string& label = script.first;
    const std::string& text = script.second;
    if (env.say) env.say("Provisioning with shell script: " + label);
    std::deque<std::string> tail;
    int code = 0;
    auto st = with_retry(env, start_retry, deadline, "the script", [&]() -> Status {
      // Uploaded with mode 0755 (SFTP and SCP both set it), which spares
      // the separate chmod Packer runs: a round trip per script.
      if (auto s = env.comm->upload_data(text, remote_path, 0755); !s) return s;
      tail.clear();
      LineCollector out(env, tail, false), err(env, tail, true);
      // The script removes itself when it ends (Packer's rm -f afterwards,
      // without a round trip of its own); only a run the connection did not
      // survive needs the separate removal below.
      std::string full = *command;
      if (!skip_clean) full += "\n__kiln_status=$?; rm -f " + remote_path + "; exit $__kiln_status";
      auto r = env.comm->run(
          full, [&](std::string_view c) { out(c); }, [&](std::string_view c) { err(c); },
          remaining(deadline));
      out.flush();
      err.flush();
      if (!r) return r.error();
      code = *r;
      return {};
    });
    if (!st) return st.error();
    step.exit_code = code;
    if (code == communicator::kDisconnected) {
      if (!expect_disconnect)
        return Error(Exit::protocol,
                     "Script disconnected unexpectedly. If you expected your script to "
                     "disconnect, i.e. from a restart, you can try adding "
                     "\"expect_disconnect\": true or \"valid_exit_codes\": [0, 2300218] to the "
                     "shell provisioner parameters.\n" +
                         tail_text(tail));
      if (env.say) env.say("the connection dropped, as expected");
    } else if (auto c = check_exit(code, valid, tail, "Script"); !c) {
      return c.error();
    }
    if (skip_clean || code != communicator::kDisconnected) continue;
    auto clean = with_retry(env, start_retry, deadline, "removing the script", [&]() -> Status {
      auto r = env.comm->run("rm -f " + remote_path, {}, {}, 60s);
      if (!r) return r.error();
      if (*r == communicator::kDisconnected)
        return Error(Exit::protocol, "Disconnect while removing temporary script.");
      if (*r != 0)
        return Error(Exit::failed, "Error removing temporary script at " + remote_path + "!");
      return {};
    });
    if (!clean) return clean.error();
  }
  if (!skip_clean && !env_var_file.empty()) {
    auto clean =
        with_retry(env, start_retry, deadline, "removing the variables file", [&]() -> Status {
          auto r = env.comm->run("rm -f " + env_var_file, {}, {}, 60s);
          if (!r) return r.error();
          return {};
        });
    if (!clean) return clean.error();
  }
  if (auto pause = seconds_of(p, "pause_after", 0); pause.count() > 0) {
    if (env.say)
      env.say("Pausing " + std::to_string(pause.count() / 1000.0) + " s after this provisioner...");
    if (!signals::sleep_for(pause)) return Error(Exit::interrupted, "interrupted while pausing");
  }
  return step;
}

// ------------------------------------------------------------------- file

Result<Step> run_file(const Value& p, Environment& env, Clock::time_point deadline) {
  if (!env.comm) return Error(Exit::config, "the file provisioner needs a communicator (ssh)");
  const std::string destination = string_or(p, "destination");
  const bool download = string_or(p, "direction", "upload") == "download";
  auto progress = [&](const std::string& label) {
    return env.progress ? env.progress(label) : communicator::Communicator::Progress{};
  };

  if (auto c = p.FindMember("content"); c != p.MemberEnd() && c->value.IsString()) {
    std::string dst = destination;
    if (!dst.empty() && dst.back() == '/')
      return Error(Exit::config,
                   "file provisioner: \"content\" needs a file destination, not the "
                   "folder " +
                       dst);
    if (env.say) env.say("Uploading content => " + dst);
    if (auto st = env.comm->upload_data(
            std::string_view(c->value.GetString(), c->value.GetStringLength()), dst, 0644);
        !st)
      return st.error();
    return Step{};
  }

  for (const std::string& src : strings_of(p, "sources")) {
    if (auto st = past(deadline, "the file provisioner"); !st) return st.error();
    if (download) {
      std::string dst = destination;
      std::string dir = dst;
      if (dst.empty() || dst.back() != '/')
        dir = fs::path(dst).parent_path().string();
      else if (src.empty() || (src.back() != '/' && src.back() != '*'))
        dst = (fs::path(dst) / fs::path(src).filename()).string();
      if (env.say) env.say("Downloading " + src + " => " + destination);
      if (!dir.empty()) {
        std::error_code ec;
        fs::create_directories(dir, ec);
        if (ec) return Error(Exit::cantcreat, "cannot create " + dir + ": " + ec.message());
      }
      if (src.find_first_of("*?[") != std::string::npos)
        return Error(Exit::config, "file provisioner: downloading with a pattern (" + src +
                                       ") is not supported; name a folder ending in /");
      Status st = !src.empty() && src.back() == '/'
                      ? env.comm->download_directory(src, dst, progress(src))
                      : env.comm->download_file(src, dst, progress(src));
      if (!st) return st.error();
      continue;
    }
    std::error_code ec;
    auto status = fs::status(src, ec);
    if (ec || !fs::exists(status))
      return Error(Exit::noinput, "Bad source '" + src + "': no such file or folder");
    const bool is_dir = fs::is_directory(status);
    const std::string target = upload_target(src, destination, is_dir);
    if (env.say) env.say("Uploading " + src + " => " + destination);
    if (is_dir) {
      if (auto st = env.comm->upload_directory(src, target, progress(src)); !st) return st.error();
      continue;
    }
    if (destination.empty() || destination.back() != '/') {
      // Packer's SCP upload cannot write over a folder; say so plainly.
      auto d = env.comm->is_directory(target);
      if (d && *d)
        return Error(Exit::config, "cannot upload " + src + " to " + target +
                                       ": it is a folder on the machine; end the destination "
                                       "with / to upload into it");
    }
    if (auto st = env.comm->upload_file(src, target, progress(fs::path(src).filename().string()));
        !st)
      return st.error();
  }
  return Step{};
}

/// Runs a local command with its output going to the log line by line;
/// `tail` keeps its last lines for an error message.
Result<int> run_local(Environment& env, const process::Command& cmd, Clock::time_point deadline,
                      std::deque<std::string>& tail) {
  LineCollector out(env, tail, false), err(env, tail, true);
  auto r = process::run_streaming(
      cmd, [&](std::string_view c) { out(c); }, [&](std::string_view c) { err(c); },
      remaining(deadline));
  out.flush();
  err.flush();
  return r;
}

// ------------------------------------------------------------ shell-local

Result<Step> run_shell_local(const Value& p, Environment& env, Clock::time_point deadline) {
  if (auto only = strings_of(p, "only_on");
      !only.empty() && std::find(only.begin(), only.end(), "linux") == only.end()) {
    Step s;
    s.skipped = true;
    s.note = "only_on does not list linux";
    if (env.say) env.say("Skipping shell-local: only_on does not list this host's OS (linux)");
    return s;
  }
  const auto valid = valid_exit_codes(p);
  std::vector<std::string> exec_template = strings_of(p, "execute_command");
  if (exec_template.empty()) exec_template = {"/bin/sh", "-c", "{{.Vars}} {{.Script}}"};

  // Scripts to run: inline lines (and Packer's "command", folded into
  // inline by the loader) go into one temporary script with the shebang.
  std::vector<std::string> scripts = strings_of(p, "scripts");
  struct Remove {
    std::string path;
    ~Remove() {
      if (!path.empty()) ::unlink(path.c_str());
    }
  } remove_inline;
  if (auto in = strings_of(p, "inline"); !in.empty()) {
    std::string text = "#!" + string_or(p, "inline_shebang", "/bin/sh -e") + "\n";
    for (const auto& line : in) text += line + "\n";
    std::string t = (fs::temp_directory_path() / "kiln-shell-local-XXXXXX").string();
    int fd = ::mkstemp(t.data());
    if (fd < 0)
      return Error(Exit::cantcreat,
                   "cannot create a temporary script in " + fs::temp_directory_path().string());
    remove_inline.path = t;
    bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
    ::fchmod(fd, 0700);
    ::close(fd);
    if (!ok) return Error(Exit::ioerr, "cannot write the temporary script " + t);
    scripts.push_back(t);
  }

  std::string vars = flattened_vars(p, env);
  std::map<std::string, std::string> child_env;
  child_env["PACKER_BUILD_NAME"] = env.build_name;
  child_env["PACKER_BUILDER_TYPE"] = env.builder_type;
  for (const auto& kv : strings_of(p, "environment_vars")) {
    auto eq = kv.find('=');
    if (eq != std::string::npos) child_env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  if (auto e = p.FindMember("env"); e != p.MemberEnd() && e->value.IsObject())
    for (const auto& m : e->value.GetObject())
      if (m.value.IsString()) child_env[m.name.GetString()] = m.value.GetString();
  // The machine's coordinates, for scripts that reach it themselves.
  const std::pair<const char*, const char*> coords[] = {{"Host", "KILN_SSH_HOST"},
                                                        {"Port", "KILN_SSH_PORT"},
                                                        {"User", "KILN_SSH_USER"},
                                                        {"SSHPrivateKeyFile", "KILN_SSH_KEY_FILE"},
                                                        {"ID", "KILN_MACHINE_ID"}};
  for (const auto& [field, var] : coords)
    if (auto it = env.generated.find(field); it != env.generated.end() && !it->second.empty())
      child_env[var] = it->second;

  Step step;
  for (const std::string& script : scripts) {
    if (env.say)
      env.say(script == remove_inline.path ? "Running local inline commands"
                                           : "Running local shell script: " + script);
    tmpl::Context ctx = template_context(env);
    ctx.fields["Vars"] = vars;
    ctx.fields["Script"] = script;
    ctx.fields["Command"] = script;
    std::vector<std::string> argv;
    for (const auto& part : exec_template) {
      auto r = tmpl::render(part, ctx);
      if (!r) return Error(Exit::config, "execute_command: " + r.error().message);
      argv.push_back(*r);
    }
    std::deque<std::string> tail;
    auto r = run_local(env, {argv[0], {argv.begin() + 1, argv.end()}, child_env, {}, {}}, deadline,
                       tail);
    if (!r) return r.error();
    step.exit_code = *r;
    if (auto c = check_exit(*r, valid, tail, "Local command"); !c) return c.error();
  }
  return step;
}

// ----------------------------------------------------------------- ansible

Result<Step> run_ansible(const Value& p, Environment& env, Clock::time_point deadline) {
  auto gen = [&](const char* k) {
    auto it = env.generated.find(k);
    return it == env.generated.end() ? std::string() : it->second;
  };
  if (!env.comm && gen("Host").empty())
    return Error(Exit::config, "the ansible provisioner needs a machine reachable over SSH");
  const std::string user = string_or(p, "user", gen("User"));
  const std::string alias = string_or(p, "host_alias", "default");
  std::string host = gen("Host"), port = gen("Port"), key = gen("SSHPrivateKeyFile");

  // The inventory: Packer's line for Ansible 2, then one copy per group.
  std::string line =
      alias + " ansible_host=" + host + " ansible_user=" + user + " ansible_port=" + port + "\n";
  std::string inventory = line;
  for (const auto& g : strings_of(p, "groups")) inventory += "[" + g + "]\n" + line;
  for (const auto& g : strings_of(p, "empty_groups")) inventory += "[" + g + "]\n";
  std::string inv_path = (fs::temp_directory_path() / "kiln-ansible-inventory-XXXXXX").string();
  int fd = ::mkstemp(inv_path.data());
  if (fd < 0) return Error(Exit::cantcreat, "cannot create the inventory file");
  struct Remove {
    std::string path;
    ~Remove() { ::unlink(path.c_str()); }
  } remove_inventory{inv_path};
  bool ok =
      ::write(fd, inventory.data(), inventory.size()) == static_cast<ssize_t>(inventory.size());
  ::close(fd);
  if (!ok) return Error(Exit::ioerr, "cannot write the inventory file " + inv_path);

  std::map<std::string, std::string> child_env;
  for (const auto& kv : strings_of(p, "ansible_env_vars")) {
    auto eq = kv.find('=');
    if (eq != std::string::npos) child_env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  auto stream = [&](const process::Command& cmd, const std::string& what) -> Result<int> {
    std::deque<std::string> tail;
    auto r = run_local(env, cmd, deadline, tail);
    if (!r) return r.error();
    if (*r != 0)
      return Error(Exit::failed, what + " exited with non-zero exit status: " + std::to_string(*r) +
                                     "\n" + tail_text(tail));
    return *r;
  };

  if (auto galaxy = string_or(p, "galaxy_file"); !galaxy.empty()) {
    std::vector<std::string> args = {"install", "-r", galaxy};
    if (bool_or(p, "galaxy_force_install")) args.push_back("-f");
    if (auto roles = string_or(p, "roles_path"); !roles.empty()) {
      args.push_back("-p");
      args.push_back(roles);
    }
    if (env.say) env.say("Executing Ansible Galaxy");
    auto r = stream({string_or(p, "galaxy_command", "ansible-galaxy"), args, child_env, {}, {}},
                    "ansible-galaxy");
    if (!r) return r.error();
  }

  std::vector<std::string> args;
  args.push_back("-e");
  args.push_back("packer_build_name=\"" + env.build_name + "\"");
  args.push_back("-e");
  args.push_back("packer_builder_type=" + env.builder_type);
  if (auto http = gen("PackerHTTPAddr"); !http.empty()) {
    args.push_back("-e");
    args.push_back("packer_http_addr=" + http);
  }
  if (!key.empty()) {
    args.push_back("--ssh-extra-args");
    auto extra = strings_of(p, "ansible_ssh_extra_args");
    std::string joined;
    for (const auto& e : extra) joined += e;
    args.push_back(extra.empty() ? "-o IdentitiesOnly=yes" : joined);
  }
  for (const auto& a : strings_of(p, "extra_arguments")) args.push_back(a);
  if (!key.empty()) {
    args.push_back("-e");
    args.push_back("ansible_ssh_private_key_file=" + key);
  }
  args.push_back("-i");
  args.push_back(inv_path);
  args.push_back(fs::absolute(string_or(p, "playbook_file")).string());
  const std::string command = string_or(p, "command", "ansible-playbook");
  std::string shown = command;
  for (const auto& a : args) shown += " " + a;
  if (env.say) env.say("Executing Ansible: " + shown);
  auto r = stream({command, args, child_env, {}, {}}, "ansible-playbook");
  if (!r) return r.error();
  Step s;
  s.exit_code = *r;
  return s;
}

// -------------------------------------------------------------- breakpoint

Result<Step> run_breakpoint(const Value& p, Environment& env) {
  Step s;
  const std::string note = string_or(p, "note");
  if (bool_or(p, "disable")) {
    if (env.say)
      env.say("Breakpoint provisioner with note \"" + note + "\" disabled, continuing...");
    s.skipped = true;
    s.note = "disabled";
    return s;
  }
  int tty = env.interactive ? ::open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC) : -1;
  if (tty < 0 || !::isatty(tty)) {
    if (tty >= 0) ::close(tty);
    if (env.say)
      env.say("Breakpoint with note \"" + note + "\": no terminal to wait on, continuing");
    s.skipped = true;
    s.note = "no terminal";
    return s;
  }
  std::string prompt =
      "Pausing at breakpoint provisioner with note \"" + note + "\". Press enter to continue.\n";
  (void)::write(tty, prompt.data(), prompt.size());
  struct pollfd fds[2] = {{tty, POLLIN, 0}, {signals::wake_fd(), POLLIN, 0}};
  for (;;) {
    int n = ::poll(fds, signals::wake_fd() >= 0 ? 2 : 1, 500);
    if (signals::interrupted()) {
      ::close(tty);
      return Error(Exit::interrupted, "interrupted at the breakpoint");
    }
    if (n > 0 && (fds[0].revents & (POLLIN | POLLHUP))) {
      char buf[256];
      ssize_t got = ::read(tty, buf, sizeof buf);
      if (got <= 0 ||
          std::string_view(buf, static_cast<size_t>(got)).find('\n') != std::string_view::npos)
        break;
    }
  }
  ::close(tty);
  return s;
}

}  // namespace

std::string go_sprintf(std::string_view format, const std::vector<std::string>& args) {
  std::string out;
  size_t next = 0;
  for (size_t i = 0; i < format.size(); ++i) {
    if (format[i] != '%' || i + 1 == format.size()) {
      out += format[i];
      continue;
    }
    char verb = format[++i];
    if (verb == '%') {
      out += '%';
    } else if (verb == 's' || verb == 'v') {
      out += next < args.size() ? args[next] : std::string("%!") + verb + "(MISSING)";
      ++next;
    } else {
      out += '%';
      out += verb;
    }
  }
  return out;
}

rapidjson::Value make_shell(const std::vector<std::string>& lines, bool scripts,
                            std::string_view shebang, std::string_view execute_command,
                            rapidjson::Document::AllocatorType& a) {
  Value p(rapidjson::kObjectType);
  p.AddMember("type", "shell", a);
  Value list(rapidjson::kArrayType);
  for (const std::string& l : lines) list.PushBack(Value(l, a), a);
  p.AddMember(rapidjson::StringRef(scripts ? "scripts" : "inline"), list, a);
  Value codes(rapidjson::kArrayType);
  codes.PushBack(0, a);
  p.AddMember("valid_exit_codes", codes, a);
  p.AddMember("inline_shebang", Value(std::string(shebang), a), a);
  p.AddMember("remote_folder", "/tmp", a);
  p.AddMember("start_retry_timeout", 300.0, a);
  p.AddMember("env_var_format", Value(std::string(rules::shell_env_var_format(false)), a), a);
  p.AddMember("execute_command", Value(std::string(execute_command), a), a);
  return p;
}

std::string flattened_vars(const Value& p, const Environment& env) {
  std::map<std::string, std::string> vars;
  vars["PACKER_BUILD_NAME"] = env.build_name;
  vars["PACKER_BUILDER_TYPE"] = env.builder_type;
  auto gen = [&](const char* k) {
    auto it = env.generated.find(k);
    return it == env.generated.end() ? std::string() : it->second;
  };
  if (auto a = gen("PackerHTTPAddr"); !a.empty()) vars["PACKER_HTTP_ADDR"] = a;
  if (auto a = gen("PackerHTTPIP"); !a.empty()) vars["PACKER_HTTP_IP"] = a;
  if (auto a = gen("PackerHTTPPort"); !a.empty()) vars["PACKER_HTTP_PORT"] = a;
  auto escape = [](std::string v) {
    std::string o;
    for (char c : v) o += c == '\'' ? std::string("'\"'\"'") : std::string(1, c);
    return o;
  };
  for (const auto& kv : strings_of(p, "environment_vars")) {
    auto eq = kv.find('=');
    if (eq == std::string::npos) continue;
    vars[kv.substr(0, eq)] = escape(kv.substr(eq + 1));
  }
  if (auto e = p.FindMember("env"); e != p.MemberEnd() && e->value.IsObject())
    for (const auto& m : e->value.GetObject())
      if (m.value.IsString()) vars[m.name.GetString()] = escape(m.value.GetString());
  const std::string format = string_or(
      p, "env_var_format", std::string(rules::shell_env_var_format(bool_or(p, "use_env_var_file"))));
  std::string flat;
  for (const auto& [k, v] : vars) flat += go_sprintf(format, {k, v});
  return flat;
}

std::string upload_target(const std::string& source, const std::string& destination,
                          bool source_is_directory) {
  if (source_is_directory) {
    if (!source.empty() && source.back() == '/') return destination;
    std::string base = fs::path(source).filename().string();
    return destination.empty() || destination.back() == '/' ? destination + base
                                                            : destination + "/" + base;
  }
  if (!destination.empty() && destination.back() == '/')
    return destination + fs::path(source).filename().string();
  return destination;
}

Result<Step> run(const Value& p, Environment& env, std::chrono::milliseconds timeout) {
  const auto deadline = timeout.count() > 0 ? Clock::now() + timeout : Clock::time_point::max();
  const std::string type = string_or(p, "type");
  Result<Step> r = Error(Exit::config, "provisioner type \"" + type + "\" is not supported");
  if (type == "shell")
    r = run_shell(p, env, deadline);
  else if (type == "file")
    r = run_file(p, env, deadline);
  else if (type == "shell-local")
    r = run_shell_local(p, env, deadline);
  else if (type == "ansible")
    r = run_ansible(p, env, deadline);
  else if (type == "breakpoint")
    r = run_breakpoint(p, env);
  if (!r && r.error().code == Exit::tempfail && timeout.count() > 0 && Clock::now() >= deadline) {
    Error e = r.error();
    e.message = "did not finish within its timeout (" + std::to_string(timeout.count() / 1000) +
                " s): " + e.message;
    return e;
  }
  return r;
}

}  // namespace kiln::provisioner

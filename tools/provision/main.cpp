// SPDX-License-Identifier: MIT
// provision: build records with a live machine in, the build's provisioners
// run against it, records with a "provisioned" section out. With --host it
// provisions any SSH host without a record and writes the record it made.

#include <unistd.h>

#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "atomic_file.hpp"
#include "cli.hpp"
#include "gotime.hpp"
#include "log.hpp"
#include "provision.hpp"
#include "provisioner.hpp"
#include "record.hpp"
#include "signals.hpp"
#include "template_rules.hpp"

namespace {

using namespace kiln;
namespace fs = std::filesystem;

/// A step given on the command line, in the order given.
struct Step {
  std::string kind;  ///< script, file or inline
  std::string value;
};

struct Options {
  cli::Common common;
  std::string input = "-";
  std::string host;
  int port = 22;
  std::string user;
  std::string key;
  std::string password_file;
  std::string passphrase_file;
  bool agent = false;
  std::string host_key;
  std::string name = "provision";
  double ssh_timeout = 300;
  std::vector<Step> steps;
};

/// --script, --file and --inline in command-line order (Boost keeps each
/// option's values apart).
std::vector<Step> steps_in_order(int argc, const char* const argv[]) {
  std::vector<Step> steps;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--") break;
    if (a.size() < 2 || a[0] != '-') continue;
    std::string name = a.substr(a[1] == '-' ? 2 : 1);
    std::string value;
    bool inline_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      inline_value = true;
    }
    if (name != "script" && name != "file" && name != "inline") continue;
    if (!inline_value) {
      if (i + 1 >= argc) break;
      value = argv[++i];
    }
    steps.push_back({name, value});
  }
  return steps;
}

Result<cli::Outcome> parse_argv(int argc, const char* const argv[], Options& o) {
  cli::Parser p("provision", "[OPTIONS] [RECORDS]",
                "Run each build record's provisioners (RECORDS, or stdin) against its\n"
                "machine and write the records with a provisioned section; or, with\n"
                "--host, provision any SSH host and write the record made for it.");
  std::string timeout = "5m";
  std::vector<std::string> scripts, files, inlines;
  p.options().add_options()("host", cli::po::value<std::string>(&o.host)->value_name("HOST"),
                            "provision this SSH host instead of records' machines")(
      "port", cli::po::value<int>(&o.port)->value_name("PORT"), "its SSH port (default 22)")(
      "user", cli::po::value<std::string>(&o.user)->value_name("USER"),
      "the user to log in as (default: $USER)")(
      "key", cli::po::value<std::string>(&o.key)->value_name("FILE"),
      "log in with this private key (ed25519, ecdsa or rsa)")(
      "passphrase-file", cli::po::value<std::string>(&o.passphrase_file)->value_name("FILE"),
      "read the passphrase of an encrypted key from FILE")(
      "password-file", cli::po::value<std::string>(&o.password_file)->value_name("FILE"),
      "log in with the password in FILE (its first line)")(
      "agent", "log in with the keys of the ssh-agent at SSH_AUTH_SOCK")(
      "host-key", cli::po::value<std::string>(&o.host_key)->value_name("KEY"),
      "accept only this host key: a public key line or a SHA256:... fingerprint")(
      "ssh-timeout", cli::po::value<std::string>(&timeout)->value_name("DURATION"),
      "give up reaching the host after this long (default 5m)")(
      "name", cli::po::value<std::string>(&o.name)->value_name("NAME"),
      "the build's name in the record and the log (default provision)")(
      "script", cli::po::value<std::vector<std::string>>(&scripts)->value_name("FILE"),
      "upload and run a shell script (repeatable; steps run in the order given)")(
      "file", cli::po::value<std::vector<std::string>>(&files)->value_name("SRC:DST"),
      "upload SRC to DST on the host, with the file provisioner's rules (repeatable)")(
      "inline", cli::po::value<std::vector<std::string>>(&inlines)->value_name("COMMAND"),
      "run a shell command on the host (repeatable)");
  p.records(o.input);
  cli::po::variables_map vm;
  auto outcome = p.parse(argc, argv, vm, o.common);
  if (!outcome || outcome->stop) return outcome;
  o.agent = vm.count("agent") > 0;
  if (!gotime::parse_duration(timeout, o.ssh_timeout) || o.ssh_timeout <= 0)
    return Error(Exit::usage, "--ssh-timeout must be a positive duration such as 30s or 5m, not '" +
                                  timeout + "'");
  o.steps = steps_in_order(argc, argv);
  bool standalone_only = !o.user.empty() || !o.key.empty() || !o.password_file.empty() || o.agent ||
                         !o.host_key.empty() || !o.steps.empty() || vm.count("port") > 0;
  if (o.host.empty() && standalone_only)
    return Error(Exit::usage,
                 "--port, --user, --key, --password-file, --agent, --host-key, "
                 "--script, --file and --inline need --host");
  if (!o.host.empty() && vm.count("records"))
    return Error(Exit::usage, "give either --host or RECORDS, not both");
  for (const Step& s : o.steps)
    if (s.kind == "file" && s.value.find(':') == std::string::npos)
      return Error(Exit::usage, "--file needs SRC:DST, not '" + s.value + "'");
  if (o.port < 1 || o.port > 65535) return Error(Exit::usage, "--port must be between 1 and 65535");
  return outcome;
}

std::string first_line_of(const std::string& path, Error& failure) {
  auto text = read_file(path);
  if (!text) {
    failure = Error(Exit::noinput, "cannot read " + path + ": " + text.error().message);
    return {};
  }
  return text->substr(0, text->find('\n'));
}

/// The record a standalone run makes: a null build whose provisioners are
/// the steps given, and its machine, the host.
Result<rapidjson::Document> standalone_record(const Options& o, std::string& passphrase,
                                              std::string& password) {
  rapidjson::Document rec = record::make_standalone(o.name, "null");
  auto& a = rec.GetAllocator();
  auto str = [&](const std::string& s) { return rapidjson::Value(s, a); };
  Error failure;
  if (!o.password_file.empty()) {
    password = first_line_of(o.password_file, failure);
    if (!failure.message.empty()) return failure;
  }
  if (!o.passphrase_file.empty()) {
    passphrase = first_line_of(o.passphrase_file, failure);
    if (!failure.message.empty()) return failure;
  }
  std::string user = o.user;
  if (user.empty()) {
    const char* u = std::getenv("USER");
    user = u ? u : "root";
  }

  rapidjson::Value builder(rapidjson::kObjectType);
  builder.AddMember("type", "null", a);
  builder.AddMember("communicator", "ssh", a);
  builder.AddMember("ssh_host", str(o.host), a);
  builder.AddMember("ssh_port", o.port, a);
  builder.AddMember("ssh_username", str(user), a);
  builder.AddMember("ssh_timeout", o.ssh_timeout, a);
  if (!o.key.empty())
    builder.AddMember("ssh_private_key_file", str(fs::absolute(o.key).string()), a);

  rapidjson::Value provisioners(rapidjson::kArrayType);
  for (const Step& s : o.steps) {
    rapidjson::Value p(rapidjson::kObjectType);
    if (s.kind == "file") {
      auto colon = s.value.find(':');
      std::string src = s.value.substr(0, colon);
      std::string abs = fs::absolute(src).string();
      if (!src.empty() && src.back() == '/' && abs.back() != '/') abs += '/';
      p.AddMember("type", "file", a);
      p.AddMember("direction", "upload", a);
      rapidjson::Value sources(rapidjson::kArrayType);
      sources.PushBack(str(abs), a);
      p.AddMember("sources", sources, a);
      p.AddMember("destination", str(s.value.substr(colon + 1)), a);
    } else {
      p = provisioner::make_shell({s.kind == "script" ? fs::absolute(s.value).string() : s.value},
                                  s.kind == "script", "/bin/sh -e",
                                  rules::shell_execute_command(false), a);
    }
    provisioners.PushBack(p, a);
  }

  rec["build"]["builder"] = builder;
  rec["build"]["provisioners"] = provisioners;

  rapidjson::Value comm(rapidjson::kObjectType);
  comm.AddMember("type", "ssh", a);
  comm.AddMember("host", str(o.host), a);
  comm.AddMember("port", o.port, a);
  comm.AddMember("username", str(user), a);
  if (!o.key.empty()) comm.AddMember("private_key_file", str(fs::absolute(o.key).string()), a);
  if (o.agent) comm.AddMember("agent", true, a);
  if (!o.host_key.empty()) {
    if (o.host_key.rfind("SHA256:", 0) == 0)
      comm.AddMember("host_key_fingerprint", str(o.host_key), a);
    else
      comm.AddMember("host_key", str(o.host_key), a);
  }
  rapidjson::Value machine(rapidjson::kObjectType);
  std::string id = "null-";
  for (char c : o.name) id += std::isalnum(static_cast<unsigned char>(c)) ? c : '-';
  machine.AddMember("id", str(id), a);
  machine.AddMember("driver", "null", a);
  machine.AddMember("build", str(o.name), a);
  machine.AddMember("communicator", comm, a);
  rec.AddMember("machine", machine, a);
  if (auto st = record::validate(rec); !st) return st.error();
  return rec;
}

/// on_error=ask: the question on the terminal, as Packer asks it.
char ask_on_terminal(const std::string& failure) {
  std::FILE* tty = std::fopen("/dev/tty", "r+");
  if (!tty) return 'c';
  std::fprintf(tty,
               "%s\n[c] Clean up and exit, [a] abort without cleanup, or [r] retry step "
               "(build may fail even if retry succeeds)? ",
               failure.c_str());
  std::fflush(tty);
  char line[64] = {};
  char answer = 'c';
  while (std::fgets(line, sizeof line, tty)) {
    char c = line[0];
    if (c == 'c' || c == 'a' || c == 'r') {
      answer = c;
      break;
    }
    std::fprintf(tty, "[c], [a] or [r]? ");
    std::fflush(tty);
  }
  std::fclose(tty);
  return answer;
}

Exit run(const Options& o) {
  log::Logger log = cli::make_logger("provision", o.common);
  const bool terminal = ::isatty(STDERR_FILENO) == 1;

  provision::Options po;
  po.say = [&](std::string_view m) { log.info(m); };
  po.output = [&](std::string_view line, bool) { log.info(line); };
  po.interactive = ::isatty(STDIN_FILENO) == 1 || o.input != "-" || !o.host.empty();
  po.ask = ask_on_terminal;
  if (terminal && o.common.log_format == "human") {
    po.progress = [&](const std::string& label) -> communicator::Communicator::Progress {
      auto last = std::make_shared<std::chrono::steady_clock::time_point>();
      return [label, last](uint64_t done, uint64_t total) {
        auto now = std::chrono::steady_clock::now();
        if (done != total && now - *last < std::chrono::milliseconds(200)) return;
        *last = now;
        int pct = total ? static_cast<int>(done * 100 / total) : 100;
        std::fprintf(stderr, "\r\033[Kprovision: %s %3d%% (%llu / %llu MiB)", label.c_str(), pct,
                     static_cast<unsigned long long>(done >> 20),
                     static_cast<unsigned long long>(total >> 20));
        if (done == total) std::fputc('\n', stderr);
        std::fflush(stderr);
      };
    };
  }

  auto work = [&](rapidjson::Document& rec) -> Status {
    po.secrets = log.secrets();
    return provision::provision(rec, po);
  };
  if (o.host.empty()) return cli::pass_records(o.input, "provision", log, work);

  auto rec = standalone_record(o, po.passphrase, po.password);
  log.add_secret(po.password);
  log.add_secret(po.passphrase);
  if (!rec) {
    log.report(rec.error());
    return rec.error().code;
  }
  Exit result = Exit::ok;
  cli::pass_record(*rec, "provision", log, work, result);
  return signals::interrupted() ? Exit::interrupted : result;
}

}  // namespace

int main(int argc, char* argv[]) {
  return kiln::cli::main<Options>("provision", argc, argv, parse_argv, run);
}

// SPDX-License-Identifier: MIT
// kiln-build: `packer build` made of kiln's tools. Checks the template with
// template-validate, then runs vm-launch | provision | capture |
// artifact-post for every selected build, several at once, with Packer's
// options, Packer's output (human, -timestamp-ui or -machine-readable) and
// Packer's closing summary. Each build's whole log is also kept in
// <output_directory>.log.

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cli.hpp"
#include "json.hpp"
#include "log.hpp"
#include "pipeline.hpp"
#include "process.hpp"
#include "record.hpp"
#include "signals.hpp"
#include "text.hpp"

namespace {

using namespace kiln;
namespace fs = std::filesystem;
using json::string_or;

struct Options {
  cli::Common common;
  std::string template_path;
  std::vector<std::string> vars, var_files;
  std::string only, except;
  bool force = false;
  std::string on_error = "cleanup";
  int parallel_builds = 0;
  bool timestamp_ui = false;
  bool machine_readable = false;
  bool debug = false;
};

Result<cli::Outcome> parse_argv(int argc, const char* const argv[], Options& o) {
  cli::Parser p("kiln-build", "[OPTIONS] TEMPLATE",
                "Build every selected build of a Packer JSON template, as packer build\n"
                "does: template-validate | vm-launch | provision | capture | artifact-post.");
  p.options().add_options()("only", cli::po::value<std::string>(&o.only)->value_name("NAMES"),
                            "only these builds: names or globs, comma-separated (also -only)")(
      "except", cli::po::value<std::string>(&o.except)->value_name("NAMES"),
      "all builds but these (also -except)")(
      "var", cli::po::value<std::vector<std::string>>(&o.vars)->value_name("NAME=VALUE"),
      "set a user variable (repeatable; also -var)")(
      "var-file", cli::po::value<std::vector<std::string>>(&o.var_files)->value_name("FILE"),
      "read user variables from a JSON file (repeatable; also -var-file)")(
      "force", "replace existing outputs (also -force)")(
      "on-error", cli::po::value<std::string>(&o.on_error)->value_name("WHAT"),
      "cleanup (default), abort (leave a failed build's machine running) or "
      "ask (also -on-error)")("parallel-builds",
                              cli::po::value<int>(&o.parallel_builds)->value_name("N"),
                              "builds at once; 0 (default) = all")(
      "timestamp-ui", "prefix each line with the time (also -timestamp-ui)")(
      "machine-readable",
      "Packer's machine-readable lines on stdout "
      "(also -machine-readable)")("debug",
                                  "pause after each stage until Enter is pressed (also -debug)")(
      "template", cli::po::value<std::string>(&o.template_path)->value_name("TEMPLATE"),
      "the template (the positional argument)");
  p.positional("template", 1);
  cli::po::variables_map vm;
  auto outcome = p.parse(argc, argv, vm, o.common);
  if (!outcome || outcome->stop) return outcome;
  o.force = vm.count("force") > 0;
  o.timestamp_ui = vm.count("timestamp-ui") > 0;
  o.machine_readable = vm.count("machine-readable") > 0;
  o.debug = vm.count("debug") > 0;
  if (o.template_path.empty()) return Error(Exit::usage, "a TEMPLATE is needed");
  if (o.on_error != "cleanup" && o.on_error != "abort" && o.on_error != "ask")
    return Error(Exit::usage, "--on-error must be cleanup, abort or ask, not '" + o.on_error + "'");
  if (o.parallel_builds < 0) return Error(Exit::usage, "--parallel-builds must be 0 or more");
  return outcome;
}

/// Where kiln's other tools are: beside this program (installed), in
/// ../tools (the build tree), else on PATH.
std::string tools_dir() {
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return {};
  for (const fs::path& d : {self.parent_path(), self.parent_path().parent_path() / "tools"})
    if (::access((d / "vm-launch").c_str(), X_OK) == 0) return d.string();
  return {};
}

/// Packer's machine-readable escaping of one field.
std::string mr_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == ',')
      out += "%!(PACKER_COMMA)";
    else if (c == '\n')
      out += "\\n";
    else if (c == '\r')
      out += "\\r";
    else
      out += c;
  }
  return out;
}

/// A path as Packer shows it: relative to the current folder when inside it.
std::string shown(const std::string& path) {
  std::error_code ec;
  fs::path cwd = fs::current_path(ec);
  fs::path p(path);
  if (!ec && p.is_absolute()) {
    auto rel = p.lexically_relative(cwd);
    if (!rel.empty() && *rel.begin() != "..") return rel.string();
  }
  return path;
}

/// The UI: Packer's lines on stdout, serialized across build threads.
class Ui {
 public:
  Ui(const Options& o, bool color) : o_(o), color_(color) {}

  void say(const std::string& build, const std::string& text, bool error = false) {
    std::lock_guard<std::mutex> lock(m_);
    if (o_.machine_readable) {
      line_raw(",ui," + std::string(error ? "error" : "say") + "," +
               mr_escape(build.empty() ? text : "==> " + build + ": " + text));
      return;
    }
    std::string s = build.empty() ? text : "==> " + build + ": " + text;
    if (color_) s = "\033[" + std::string(error ? "1;31" : colour(build)) + "m" + s + "\033[0m";
    line(s);
  }
  /// A machine-readable line for a target (build).
  void machine(const std::string& target, const std::string& type,
               const std::vector<std::string>& data) {
    if (!o_.machine_readable) return;
    std::lock_guard<std::mutex> lock(m_);
    std::string s = target + "," + type;
    for (const auto& d : data) s += "," + mr_escape(d);
    line_raw(s);
  }
  /// A closing line: after an empty line ("\n" in machine-readable form).
  void headline(const std::string& text, bool error = false) {
    std::lock_guard<std::mutex> lock(m_);
    if (o_.machine_readable) {
      line_raw(",ui," + std::string(error ? "error" : "say") + "," + mr_escape("\n==> " + text));
      return;
    }
    line("");
    std::string s = "==> " + text;
    if (color_) s = "\033[" + std::string(error ? "1;31" : "1;32") + "m" + s + "\033[0m";
    line(s);
  }
  void plain(const std::string& text) {
    std::lock_guard<std::mutex> lock(m_);
    if (o_.machine_readable)
      line_raw(",ui,say," + mr_escape(text));
    else
      line(text);
  }

 private:
  const char* colour(const std::string& build) {
    static const char* palette[] = {"1;32", "1;36", "1;35", "1;33", "1;34"};
    for (size_t i = 0; i < builds_.size(); ++i)
      if (builds_[i] == build) return palette[i % 5];
    builds_.push_back(build);
    return palette[(builds_.size() - 1) % 5];
  }
  void line(const std::string& s) {
    std::string out = s;
    if (o_.timestamp_ui && !out.empty()) out = gotime_now() + ": " + out;
    std::fputs((out + "\n").c_str(), stdout);
    std::fflush(stdout);
  }
  void line_raw(const std::string& s) {
    std::string out = std::to_string(std::time(nullptr)) + "," + s + "\n";
    std::fputs(out.c_str(), stdout);
    std::fflush(stdout);
  }
  static std::string gotime_now() {
    std::time_t t = std::time(nullptr);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
    return buf;
  }
  const Options& o_;
  bool color_;
  std::mutex m_;
  std::vector<std::string> builds_;
};

/// Packer's artifact String() for the artifacts kiln makes.
std::string artifact_string(const rapidjson::Value& art) {
  const std::string id = string_or(art, "builder_id");
  std::vector<std::string> files;
  if (auto f = art.FindMember("files"); f != art.MemberEnd() && f->value.IsArray())
    for (const auto& file : f->value.GetArray()) files.push_back(shown(string_or(file, "path")));
  if (id == "transcend.qemu") return "VM files in directory: " + shown(string_or(art, "directory"));
  if (id == "fnoeding.null") return "Did not export anything. This is the null builder";
  if (id == "packer.post-processor.compress")
    return "compressed artifacts in: " + (files.empty() ? std::string() : files[0]);
  if (id == "mitchellh.post-processor.vagrant")
    return "'" + string_or(art, "id") +
           "' provider box: " + (files.empty() ? std::string() : files[0]);
  return "Created artifact from files: " + text::join(files, ", ");
}

/// A duration as Packer prints it: its two largest units ("1 minute 2
/// seconds", "4 milliseconds 781 microseconds").
std::string go_duration(std::chrono::steady_clock::duration d) {
  long long us = std::chrono::duration_cast<std::chrono::microseconds>(d).count();
  const std::pair<long long, const char*> units[] = {{3600LL * 1000000, "hour"},
                                                     {60LL * 1000000, "minute"},
                                                     {1000000, "second"},
                                                     {1000, "millisecond"},
                                                     {1, "microsecond"}};
  std::vector<std::string> parts;
  for (const auto& [size, name] : units) {
    long long n = us / size;
    us %= size;
    if (n == 0 && parts.empty()) continue;
    if (n > 0) parts.push_back(std::to_string(n) + " " + name + (n == 1 ? "" : "s"));
    if (parts.size() == 2 || (!parts.empty() && n == 0)) break;
  }
  return parts.empty() ? "0 seconds" : text::join(parts, " ");
}

/// The log file kept beside a build's artifacts: <output_directory>.log.
std::string log_path(const rapidjson::Value& record) {
  const rapidjson::Value& build = record["build"];
  std::string dir = string_or(build["builder"], "output_directory");
  if (dir.empty()) {
    dir = string_or(build["template"], "dir", ".");
    dir = (fs::path(dir) / ("output-" + string_or(build, "name"))).string();
  }
  return dir + ".log";
}

struct BuildResult {
  std::string name;
  pipeline::Outcome outcome;
};

Exit run(const Options& o) {
  log::Logger log = cli::make_logger("kiln-build", o.common);
  const bool color =
      o.common.color == "always" ||
      (o.common.color == "auto" && ::isatty(STDOUT_FILENO) && !std::getenv("NO_COLOR"));
  Ui ui(o, color && !o.machine_readable);
  const std::string tools = tools_dir();
  auto tool = [&](const std::string& name) {
    return tools.empty() ? name : (fs::path(tools) / name).string();
  };

  // 1. The template, checked once; one record per selected build.
  process::Command validate;
  validate.program = tool("template-validate");
  for (const auto& v : o.vars) validate.args.insert(validate.args.end(), {"--var", v});
  for (const auto& v : o.var_files) validate.args.insert(validate.args.end(), {"--var-file", v});
  if (!o.only.empty()) validate.args.insert(validate.args.end(), {"--only", o.only});
  if (!o.except.empty()) validate.args.insert(validate.args.end(), {"--except", o.except});
  if (o.force) validate.args.push_back("--force");
  validate.args.insert(validate.args.end(), {"--on-error", o.on_error});
  validate.args.push_back("--color=never");
  validate.args.push_back(o.template_path);
  auto checked = process::run(validate);
  if (!checked) {
    log.report(checked.error());
    return checked.error().code;
  }
  // template-validate's findings: on stderr as it writes them, or as
  // machine-readable ui lines.
  if (!checked->err.empty()) {
    if (o.machine_readable) {
      for (const auto& l : text::split_lines(checked->err))
        if (!l.empty()) ui.say("", l, checked->exit_code != 0);
    } else {
      std::fputs(checked->err.c_str(), stderr);
    }
  }
  if (checked->exit_code != 0) return static_cast<Exit>(checked->exit_code);
  std::vector<rapidjson::Document> records;
  for (const auto& line : text::split_lines(checked->out)) {
    if (line.empty()) continue;
    rapidjson::Document d;
    if (!json::parse(line, d) || !d.IsObject()) {
      log.error("template-validate wrote something that is not a record: " + line.substr(0, 80));
      return Exit::software;
    }
    records.push_back(std::move(d));
  }
  if (records.empty()) {
    ui.plain("==> No builds to run");
    return Exit::ok;
  }

  // 2. The builds, up to -parallel-builds at once.
  const char* tmpdir = std::getenv("TMPDIR");
  std::string tmp_root = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/kiln-build-XXXXXX";
  std::vector<char> tmp_buf(tmp_root.begin(), tmp_root.end());
  tmp_buf.push_back('\0');
  if (!::mkdtemp(tmp_buf.data())) {
    log.error("cannot create a work folder in " + tmp_root);
    return Exit::cantcreat;
  }
  const std::string work(tmp_buf.data());
  struct RemoveWork {
    std::string dir;
    ~RemoveWork() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } remove_work{work};

  if (!o.machine_readable) {
    for (const auto& r : records)
      ui.plain(record::build_name(r) + ": output will be in this color.");
    ui.plain("");
  }

  std::mutex pause_mutex;
  std::vector<BuildResult> results(records.size());
  std::atomic<size_t> next{0};
  const size_t workers = o.parallel_builds == 0
                             ? records.size()
                             : std::min(records.size(), static_cast<size_t>(o.parallel_builds));
  auto worker = [&] {
    for (;;) {
      size_t i = next++;
      if (i >= records.size()) return;
      const rapidjson::Document& rec = records[i];
      const std::string name = record::build_name(rec);
      const std::string dir = (fs::path(work) / std::to_string(i)).string();
      fs::create_directories(dir);
      const fs::path logp = log_path(rec);
      std::error_code ec;
      fs::create_directories(logp.parent_path(), ec);
      std::ofstream logfile(logp, std::ios::trunc);
      if (!logfile) ui.say(name, "warning: cannot write the build's log to " + logp.string());
      pipeline::Options po;
      po.tools_dir = tools;
      po.work_dir = dir;
      if (o.common.verbosity > 0) po.tool_args.push_back("-v");
      po.event = [&](const pipeline::Event& e) {
        if (e.level == "debug" || e.level == "trace") {
          if (o.common.verbosity < 1) return;
        }
        std::string msg = e.message;
        // The tools prefix their messages with the build; the UI has it.
        for (const std::string& prefix : {"build '" + name + "': "})
          if (msg.rfind(prefix, 0) == 0) msg = msg.substr(prefix.size());
        if (logfile)
          logfile << e.time << " " << e.tool << " " << e.level << ": " << msg << "\n" << std::flush;
        if (o.common.verbosity < 0 && e.level != "error") return;
        ui.say(name,
               (e.level == "error"     ? "error: "
                : e.level == "warning" ? "warning: "
                                       : "") +
                   msg,
               e.level == "error");
      };
      if (o.debug)
        po.after_stage = [&](const std::string& stage) {
          std::lock_guard<std::mutex> lock(pause_mutex);
          ui.say(name, "Pausing after run of step '" + stage + "'. Press enter to continue.");
          std::ifstream tty("/dev/tty");
          std::string line;
          if (tty) std::getline(tty, line);
        };
      results[i].name = name;
      const auto began = std::chrono::steady_clock::now();
      results[i].outcome = pipeline::run(rec, po);
      const auto& out = results[i].outcome;
      const std::string took = go_duration(std::chrono::steady_clock::now() - began);
      if (logfile) logfile << (out.ok ? "finished\n" : "errored: " + out.message + "\n");
      if (out.ok)
        ui.plain("Build '" + name + "' finished after " + took + ".");
      else
        ui.say("", "Build '" + name + "' errored after " + took + ": " + out.message, true);
      if (!out.ok) ui.machine(name, "error", {out.message});
    }
  };
  std::vector<std::thread> threads;
  for (size_t t = 0; t < workers; ++t) threads.emplace_back(worker);
  for (auto& t : threads) t.join();

  // 3. Packer's summary.
  bool any_failed = false;
  for (const auto& r : results) any_failed = any_failed || !r.outcome.ok;
  if (signals::interrupted()) {
    ui.headline("Builds cancelled: every machine was stopped; no partial artifact is left.", true);
    return Exit::interrupted;
  }
  if (any_failed) {
    ui.headline("Some builds didn't complete successfully and had errors:", true);
    for (const auto& r : results)
      if (!r.outcome.ok)
        ui.plain("--> " + r.name + ": " +
                 r.outcome.message.substr(0, r.outcome.message.find('\n')));
    ui.machine("", "error-count",
               {std::to_string(std::count_if(results.begin(), results.end(),
                                             [](const BuildResult& r) { return !r.outcome.ok; }))});
  }
  bool any_artifact = false;
  for (const auto& r : results)
    if (r.outcome.ok && r.outcome.record.HasMember("artifacts") &&
        !r.outcome.record["artifacts"].Empty())
      any_artifact = true;
  if (!any_artifact) {
    ui.headline("Builds finished but no artifacts were created.");
  } else {
    ui.headline("Builds finished. The artifacts of successful builds are:");
    for (const auto& r : results) {
      if (!r.outcome.ok || !r.outcome.record.HasMember("artifacts")) continue;
      const auto& arts = r.outcome.record["artifacts"];
      ui.machine(r.name, "artifact-count", {std::to_string(arts.Size())});
      for (rapidjson::SizeType i = 0; i < arts.Size(); ++i) {
        const auto& art = arts[i];
        const std::string idx = std::to_string(i);
        ui.machine(r.name, "artifact", {idx, "builder-id", string_or(art, "builder_id")});
        ui.machine(r.name, "artifact", {idx, "id", string_or(art, "id")});
        ui.machine(r.name, "artifact", {idx, "string", artifact_string(art)});
        std::vector<std::string> files;
        if (auto f = art.FindMember("files"); f != art.MemberEnd() && f->value.IsArray())
          for (const auto& file : f->value.GetArray())
            files.push_back(shown(string_or(file, "path")));
        ui.machine(r.name, "artifact", {idx, "files-count", std::to_string(files.size())});
        for (size_t k = 0; k < files.size(); ++k)
          ui.machine(r.name, "artifact", {idx, "file", std::to_string(k), files[k]});
        ui.machine(r.name, "artifact", {idx, "end"});
        if (!o.machine_readable)
          ui.plain("--> " + r.name + ": " + artifact_string(art));
        else
          ui.machine("", "ui", {"say", "--> " + r.name + ": " + artifact_string(art)});
      }
    }
  }
  return any_failed ? Exit::failed : Exit::ok;
}

}  // namespace

int main(int argc, char* argv[]) {
  return kiln::cli::main<Options>("kiln-build", argc, argv, parse_argv, run);
}

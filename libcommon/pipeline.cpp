// SPDX-License-Identifier: MIT
#include "pipeline.hpp"

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "fd.hpp"
#include "json.hpp"
#include "machine.hpp"
#include "record.hpp"
#include "signals.hpp"

extern char** environ;

namespace kiln::pipeline {

namespace fs = std::filesystem;
using json::string_or;
using Clock = std::chrono::steady_clock;

const std::vector<std::string>& stages() {
  static const std::vector<std::string> all = {"vm-launch", "provision", "capture",
                                               "artifact-post"};
  return all;
}

namespace {

/// How a stage ended.
struct Ended {
  int status = 0;  ///< exit status, or 128+N when ended by signal N
  bool signaled = false;
  int pid = 0;
};

Event event_of(const std::string& line, const std::string& tool) {
  Event e;
  e.tool = tool;
  json::Document d;
  if (json::parse(line, d) && d.IsObject() && d.HasMember("message")) {
    e.time = string_or(d, "time");
    e.tool = string_or(d, "tool", tool);
    e.level = string_or(d, "level", "info");
    e.message = string_or(d, "message");
  } else {
    e.level = "error";
    e.message = line;
  }
  return e;
}

/// Runs one stage: `program args... input` with stdout into `output` and
/// stderr read line by line into events. Interrupts are passed on.
Result<Ended> run_stage(const std::string& program, const std::vector<std::string>& args,
                        const std::string& tool, const std::string& output, const Options& o) {
  int err_pipe[2];
  if (::pipe2(err_pipe, O_CLOEXEC) != 0)
    return Error(Exit::software, std::string("pipe: ") + std::strerror(errno));
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, output.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0600);
  posix_spawn_file_actions_adddup2(&fa, err_pipe[1], STDERR_FILENO);
  std::vector<std::string> argv_s = {program};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  int rc = program.find('/') != std::string::npos
               ? ::posix_spawn(&pid, program.c_str(), &fa, nullptr, argv.data(), environ)
               : ::posix_spawnp(&pid, program.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(err_pipe[1]);
  if (rc != 0) {
    ::close(err_pipe[0]);
    return Error(Exit::unavailable, "cannot run " + program + ": " + std::strerror(rc));
  }

  std::string buf;
  auto emit_lines = [&](bool all) {
    for (size_t nl; (nl = buf.find('\n')) != std::string::npos; buf.erase(0, nl + 1))
      if (o.event && nl > 0) o.event(event_of(buf.substr(0, nl), tool));
    if (all && !buf.empty()) {
      if (o.event) o.event(event_of(buf, tool));
      buf.clear();
    }
  };
  bool sent_int = false;
  Clock::time_point kill_at = Clock::time_point::max();
  // An interrupt is passed on once (the terminal's Ctrl-C reached the stage
  // already, being in the same process group; a signal sent to kiln-build
  // alone did not); a stage that outlasts the grace period is killed.
  auto pass_on_interrupt = [&] {
    if (signals::interrupted() && !sent_int) {
      ::kill(pid, SIGINT);
      sent_int = true;
      kill_at = Clock::now() + o.grace;
    }
    if (Clock::now() >= kill_at) {
      ::kill(pid, SIGKILL);
      kill_at = Clock::time_point::max();
    }
  };
  for (;;) {
    pass_on_interrupt();
    pollfd p{err_pipe[0], POLLIN, 0};
    int n = ::poll(&p, 1, 200);
    if (n < 0 && errno != EINTR) break;
    if (n <= 0) continue;
    char chunk[8192];
    ssize_t got = ::read(err_pipe[0], chunk, sizeof chunk);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;  // the stage closed stderr: it is ending
    buf.append(chunk, static_cast<size_t>(got));
    emit_lines(false);
  }
  emit_lines(true);
  ::close(err_pipe[0]);
  int status = 0;
  // The stage closed stderr as it ends: a pidfd says the moment it has.
  const UniqueFd exited = open_pidfd(pid);
  for (;;) {
    pid_t w = ::waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (w < 0 && errno != EINTR)
      return Error(Exit::software, "waitpid: " + std::string(std::strerror(errno)));
    pass_on_interrupt();
    pollfd p{exited.get(), POLLIN, 0};
    if (exited.get() < 0 || ::poll(&p, 1, 50) < 0) ::usleep(50 * 1000);
  }
  Ended e;
  e.pid = pid;
  if (WIFSIGNALED(status)) {
    e.signaled = true;
    e.status = 128 + WTERMSIG(status);
  } else {
    e.status = WEXITSTATUS(status);
  }
  return e;
}

/// The record a stage wrote, if it wrote a whole one.
std::optional<rapidjson::Document> read_record(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    rapidjson::Document d;
    if (json::parse(line, d) && d.IsObject() && record::validate(d)) return d;
    return std::nullopt;
  }
  return std::nullopt;
}

/// Removes the hidden temporary files (AtomicFile's ".NAME.tmp-XXXXXX")
/// that a killed artifact-post left where post-processors write: beside the
/// artifacts, in the template's folder and in the current one; only those
/// made since `since`.
int remove_temporaries(const rapidjson::Value& last, fs::file_time_type since) {
  std::vector<fs::path> dirs = {fs::current_path()};
  const rapidjson::Value& build = last["build"];
  if (auto t = build.FindMember("template"); t != build.MemberEnd())
    dirs.emplace_back(string_or(t->value, "dir", "."));
  if (auto a = last.FindMember("artifacts"); a != last.MemberEnd() && a->value.IsArray())
    for (const auto& art : a->value.GetArray()) {
      if (auto d = string_or(art, "directory"); !d.empty()) dirs.emplace_back(d);
      if (auto f = art.FindMember("files"); f != art.MemberEnd() && f->value.IsArray())
        for (const auto& file : f->value.GetArray())
          dirs.push_back(fs::path(string_or(file, "path")).parent_path());
    }
  int removed = 0;
  for (const auto& dir : dirs) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string n = e.path().filename().string();
      const auto pos = n.rfind(".tmp-");
      if (n.size() < 2 || n[0] != '.' || pos == std::string::npos || n.size() - pos != 11) continue;
      std::error_code ec2;
      if (fs::last_write_time(e.path(), ec2) < since || ec2) continue;
      if (fs::remove(e.path(), ec2)) ++removed;
    }
  }
  return removed;
}

/// A stage died without a word: end what it left running or half done.
std::string clean_up_after(const rapidjson::Value& last, const std::string& stage,
                           fs::file_time_type since = fs::file_time_type::min(), int pid = 0) {
  std::string done;
  if (stage == "vm-launch" && pid > 0) {
    // A launch cut short: its machine ends by itself; wait until it has.
    if (std::string id = machine::launched_by(pid); !id.empty()) {
      (void)machine::stop(id, std::chrono::seconds(60), machine::Shutdown::immediate);
      done += "; the machine it was starting (" + id + ") was stopped";
    }
  }
  if (auto m = last.FindMember("machine"); m != last.MemberEnd() && m->value.IsObject()) {
    const std::string id = string_or(m->value, "id");
    if (string_or(m->value, "driver") == "qemu" && string_or(m->value, "state") != "stopped" &&
        !id.empty()) {
      auto st = machine::stop(id, std::chrono::seconds(60), machine::Shutdown::immediate);
      if (st)
        done += "; its machine " + id + " was stopped";
      else if (st.error().code != Exit::noinput)
        done += "; stopping its machine " + id + " failed: " + st.error().message;
    }
  }
  if (stage == "artifact-post" && since != fs::file_time_type::min()) {
    if (int n = remove_temporaries(last, since); n > 0)
      done += "; " + std::to_string(n) + " partial output file(s) removed";
  }
  if (stage == "capture") {
    const rapidjson::Value& b = last["build"]["builder"];
    if (std::string dir = string_or(b, "output_directory"); !dir.empty()) {
      std::error_code ec;
      if (fs::exists(dir, ec)) {
        fs::remove_all(dir, ec);
        done += "; its partial output directory " + dir + " was removed";
      }
    }
  }
  return done;
}

}  // namespace

Outcome run(const rapidjson::Value& record, const Options& o) {
  Outcome out;
  out.record.CopyFrom(record, out.record.GetAllocator());
  std::string input = (fs::path(o.work_dir) / "build.json").string();
  {
    std::ofstream f(input);
    f << record::serialize(record) << "\n";
    if (!f) {
      out.exit = Exit::cantcreat;
      out.message = "cannot write " + input;
      return out;
    }
  }
  const auto& all = stages();
  for (size_t i = 0; i < all.size(); ++i) {
    const std::string& stage = all[i];
    if (signals::interrupted()) {
      out.exit = Exit::interrupted;
      out.stage = stage;
      out.message = "interrupted";
      out.message += clean_up_after(out.record, stage);
      return out;
    }
    const std::string output = (fs::path(o.work_dir) / (stage + ".json")).string();
    std::vector<std::string> args = o.tool_args;
    args.push_back("--log-format=json");
    args.push_back(input);
    const std::string program =
        o.tools_dir.empty() ? stage : (fs::path(o.tools_dir) / stage).string();
    const auto since = fs::file_time_type::clock::now();
    auto ended = run_stage(program, args, stage, output, o);
    if (!ended) {
      out.exit = ended.error().code;
      out.stage = stage;
      out.message = ended.error().message + clean_up_after(out.record, stage);
      return out;
    }
    auto rec = read_record(output);
    if (!rec) {
      out.exit = ended->status == 0 ? Exit::software : static_cast<Exit>(ended->status);
      out.stage = stage;
      out.message =
          stage +
          (ended->signaled ? " was killed by signal " + std::to_string(ended->status - 128)
                           : " ended (exit " + std::to_string(ended->status) + ")") +
          " without writing a record" + clean_up_after(out.record, stage, since, ended->pid);
      if (signals::interrupted()) out.exit = Exit::interrupted;
      return out;
    }
    out.record = std::move(*rec);
    if (record::failed(out.record) || ended->status != 0) {
      const rapidjson::Value& e = out.record.HasMember("error") ? out.record["error"] : out.record;
      out.exit = ended->status != 0 ? static_cast<Exit>(ended->status) : Exit::software;
      out.stage = stage;
      out.message =
          string_or(e, "message", stage + " failed (exit " + std::to_string(ended->status) + ")");
      // A stage interrupted mid-way handled its own machine; make sure.
      if (ended->status == 130 || signals::interrupted()) {
        out.exit = Exit::interrupted;
        out.message += clean_up_after(out.record, stage);
      }
      return out;
    }
    input = output;
    if (i + 1 < all.size() && o.after_stage) o.after_stage(stage);
  }
  out.ok = true;
  return out;
}

}  // namespace kiln::pipeline

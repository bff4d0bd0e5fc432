// SPDX-License-Identifier: MIT
// vm-launch: build records in, each build's machine started and reachable,
// records with a "machine" section out. Also lists and stops machines.

#include <algorithm>
#include <ctime>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "cli.hpp"
#include "gotime.hpp"
#include "json.hpp"
#include "launch.hpp"
#include "log.hpp"
#include "machine.hpp"
#include "record.hpp"
#include "signals.hpp"

namespace {

using namespace kiln;

struct Options {
  cli::Common common;
  std::string input = "-";
  bool list = false;
  std::vector<std::string> stop;
  std::chrono::seconds max_lifetime = std::chrono::hours(2);
};

Result<cli::Outcome> parse_argv(int argc, const char* const argv[], Options& o) {
  cli::Parser p("vm-launch", "[OPTIONS] [RECORDS]",
                "Start the machine of each build record (RECORDS, or stdin), wait\n"
                "until it answers, and write the records with a machine section.");
  std::string lifetime = "2h";
  p.options().add_options()("list",
                            "list live machines (tab-separated: id, build, pid, port, "
                            "accelerator, seconds left) and exit")(
      "stop", cli::po::value<std::vector<std::string>>(&o.stop)->value_name("ID"),
      "power off machine ID (repeatable; \"all\" for every one; \"-\" for the "
      "machines of the records on stdin) and remove its run directory")(
      "max-lifetime", cli::po::value<std::string>(&lifetime)->value_name("DURATION"),
      "end a machine this long after it started, whatever happens "
      "(default 2h; a Go duration such as 90m)");
  p.records(o.input);
  cli::po::variables_map vm;
  auto outcome = p.parse(argc, argv, vm, o.common);
  if (!outcome || outcome->stop) return outcome;
  o.list = vm.count("list") > 0;
  double seconds = 0;
  if (!gotime::parse_duration(lifetime, seconds) || seconds <= 0)
    return Error(
        Exit::usage,
        "--max-lifetime must be a positive duration such as 2h or 90m, not '" + lifetime + "'");
  o.max_lifetime = std::chrono::seconds(static_cast<long>(seconds));
  return outcome;
}

Exit list_machines() {
  long now = static_cast<long>(std::time(nullptr));
  std::string out;
  for (const machine::Live& m : machine::list())
    out += m.id + "\t" + m.build + "\t" + std::to_string(m.qemu_pid) + "\t" +
           std::to_string(m.ssh_port) + "\t" + m.accelerator + "\t" +
           std::to_string(m.expires > now ? m.expires - now : 0) + "\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  return std::fflush(stdout) == 0 ? Exit::ok : Exit::ioerr;
}

Exit stop_machines(const Options& o, log::Logger& log) {
  std::vector<std::string> ids, from_records;
  for (const std::string& s : o.stop) {
    if (s == "all") {
      for (const machine::Live& m : machine::list()) ids.push_back(m.id);
    } else if (s == "-") {
      record::Reader in(std::cin, "-");
      for (;;) {
        auto r = in.next();
        if (!r) {
          log.report(r.error());
          return r.error().code;
        }
        if (!r->has_value()) break;
        // A record whose machine is stopped already, or one named twice
        // (the records of one build's stages), asks for nothing more.
        const auto& rec = **r;
        auto m = rec.FindMember("machine");
        if (m != rec.MemberEnd() && m->value.IsObject() &&
            json::string_or(m->value, "driver") == "qemu" &&
            json::string_or(m->value, "state") != "stopped") {
          const std::string id = json::string_or(m->value, "id");
          if (!id.empty() && std::find(ids.begin(), ids.end(), id) == ids.end()) {
            ids.push_back(id);
            from_records.push_back(id);
          }
        }
      }
    } else {
      ids.push_back(s);
    }
  }
  Exit worst = Exit::ok;
  for (const std::string& id : ids) {
    if (auto st = machine::stop(id); !st) {
      // A record's machine that has ended by now is what was asked for.
      if (st.error().code == Exit::noinput &&
          std::find(from_records.begin(), from_records.end(), id) != from_records.end())
        continue;
      log.report(st.error());
      worst = st.error().code;
    } else {
      log.info("stopped " + id);
    }
  }
  return worst;
}

Exit run(const Options& o) {
  log::Logger log = cli::make_logger("vm-launch", o.common);
  if (o.list) return list_machines();
  if (!o.stop.empty()) return stop_machines(o, log);

  launch::Options lo;
  lo.max_lifetime = o.max_lifetime;
  lo.cache_dir = launch::default_cache_dir();
  lo.progress = [&](std::string_view m) { log.info(m); };
  return cli::pass_records(o.input, "vm-launch", log, [&](rapidjson::Document& rec) -> Status {
    Status st;
    if (rec.HasMember("machine"))
      st = Error(Exit::dataerr,
                 "the record already has a machine (" +
                     std::string(rec["machine"].HasMember("id") && rec["machine"]["id"].IsString()
                                     ? rec["machine"]["id"].GetString()
                                     : "?") +
                     ")");
    else
      st = launch::launch(rec, lo);
    if (st) return st;
    Error e = st.error();
    e.step = "launch";
    return e;
  });
}

}  // namespace

int main(int argc, char* argv[]) {
  return kiln::cli::main<Options>("vm-launch", argc, argv, parse_argv, run);
}

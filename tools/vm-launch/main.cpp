// SPDX-License-Identifier: MIT
// vm-launch: build records in, each build's machine started and reachable,
// records with a "machine" section out. Also lists and stops machines.

#include <ctime>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "cli.hpp"
#include "gotime.hpp"
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
  p.options().add_options()
      ("list", "list live machines (tab-separated: id, build, pid, port, "
               "accelerator, seconds left) and exit")
      ("stop", cli::po::value<std::vector<std::string>>(&o.stop)->value_name("ID"),
       "power off machine ID (repeatable; \"all\" for every one; \"-\" for the "
       "machines of the records on stdin) and remove its run directory")
      ("max-lifetime", cli::po::value<std::string>(&lifetime)->value_name("DURATION"),
       "end a machine this long after it started, whatever happens "
       "(default 2h; a Go duration such as 90m)")
      ("records", cli::po::value<std::string>(&o.input)->value_name("RECORDS"),
       "the records to read (the positional argument; - is stdin)");
  p.positional("records", 1);
  cli::po::variables_map vm;
  auto outcome = p.parse(argc, argv, vm, o.common);
  if (!outcome || outcome->stop) return outcome;
  o.list = vm.count("list") > 0;
  double seconds = 0;
  if (!gotime::parse_duration(lifetime, seconds) || seconds <= 0)
    return Error(Exit::usage, "--max-lifetime must be a positive duration such as 2h or 90m, not '" +
                                  lifetime + "'");
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
  std::vector<std::string> ids;
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
        const auto& rec = **r;
        auto m = rec.FindMember("machine");
        if (m != rec.MemberEnd() && m->value.IsObject() && m->value.HasMember("id") &&
            m->value["id"].IsString() && std::string(m->value["driver"].GetString()) == "qemu")
          ids.emplace_back(m->value["id"].GetString());
      }
    } else {
      ids.push_back(s);
    }
  }
  Exit worst = Exit::ok;
  for (const std::string& id : ids) {
    if (auto st = machine::stop(id); !st) {
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

  std::ifstream file;
  if (o.input != "-") {
    file.open(o.input);
    if (!file) {
      log.report(Error(Exit::noinput, "cannot read " + o.input));
      return Exit::noinput;
    }
  }
  record::Reader in(o.input == "-" ? std::cin : file, o.input);
  bool pretty = cli::stdout_is_terminal();
  Exit result = Exit::ok;
  launch::Options lo;
  lo.max_lifetime = o.max_lifetime;
  lo.cache_dir = launch::default_cache_dir();
  lo.progress = [&](std::string_view m) { log.info(m); };
  for (;;) {
    auto next = in.next();
    if (!next) {
      log.report(next.error());
      rapidjson::Document rec = record::make();
      record::set_error(rec, "vm-launch", next.error());
      (void)record::write(stdout, rec, pretty);
      return next.error().code;
    }
    if (!next->has_value()) break;
    rapidjson::Document rec = std::move(**next);
    log.set_build(record::build_name(rec));
    if (record::failed(rec)) {
      // An earlier stage failed: pass the record on, do nothing for it.
      int code = rec["error"]["exit"].GetInt();
      if (result == Exit::ok) result = static_cast<Exit>(code);
      if (auto st = record::write(stdout, rec, pretty); !st) return st.error().code;
      continue;
    }
    for (const std::string& s : record::secrets(rec)) log.add_secret(s);
    Status st;
    if (rec.HasMember("machine"))
      st = Error(Exit::dataerr, "the record already has a machine (" +
                                    std::string(rec["machine"].HasMember("id") && rec["machine"]["id"].IsString()
                                                    ? rec["machine"]["id"].GetString() : "?") + ")");
    else
      st = launch::launch(rec, lo);
    if (!st) {
      Error e = st.error();
      e.step = "launch";
      log.report(e);
      record::set_error(rec, "vm-launch", e, record::build_name(rec), {}, log.secrets());
      if (result == Exit::ok) result = e.code;
    }
    if (auto w = record::write(stdout, rec, pretty); !w) {
      log.report(w.error());
      return w.error().code;
    }
    if (signals::interrupted()) return Exit::interrupted;
  }
  return result;
}

}  // namespace

int main(int argc, char* argv[]) {
  kiln::signals::InterruptGuard guard;
  Options options;
  auto parsed = parse_argv(argc, argv, options);
  if (!parsed) return kiln::to_int(kiln::cli::usage_error("vm-launch", parsed.error()));
  if (parsed->stop) return kiln::to_int(parsed->exit);
  return kiln::to_int(run(options));
}

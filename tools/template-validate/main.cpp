// SPDX-License-Identifier: MIT
// template-validate: a Packer JSON template in, one build record per
// selected build out.

#include <cstdio>
#include <ctime>
#include <string>
#include <vector>

#include "cli.hpp"
#include "json.hpp"
#include "log.hpp"
#include "record.hpp"
#include "signals.hpp"
#include "template.hpp"
#include "text.hpp"

namespace {

using namespace kiln;

struct Options {
  cli::Common common;
  templates::Request request;
};

Result<cli::Outcome> parse_argv(int argc, const char* const argv[], Options& o) {
  cli::Parser p("template-validate", "[OPTIONS] TEMPLATE",
                "Check a Packer JSON template and write one build record per\n"
                "selected build on stdout (JSON Lines). TEMPLATE - reads stdin.");
  std::vector<std::string> only, except;
  std::string on_error = "cleanup";
  p.options().add_options()("var",
                            cli::po::value<std::vector<std::string>>()->value_name("NAME=VALUE"),
                            "set a user variable (repeatable; also -var)")(
      "var-file", cli::po::value<std::vector<std::string>>()->value_name("FILE"),
      "read user variables from a JSON file (repeatable; also -var-file)")(
      "only", cli::po::value<std::vector<std::string>>(&only)->value_name("NAMES"),
      "only these builds: names or globs, comma-separated (also -only)")(
      "except", cli::po::value<std::vector<std::string>>(&except)->value_name("NAMES"),
      "all builds but these: names or globs (also -except)")(
      "syntax-only", "only check the syntax; write no records (also -syntax-only)")(
      "force",
      "outputs may be replaced: an existing output_directory is no "
      "error, and capture overwrites (also -force)")(
      "on-error", cli::po::value<std::string>(&on_error)->value_name("WHAT"),
      "what later tools do with a failed build's machine: cleanup (default), "
      "abort (leave it running) or ask")("template",
                                         cli::po::value<std::string>()->value_name("TEMPLATE"),
                                         "the template (the positional argument)");
  p.positional("template", 1);
  cli::po::variables_map vm;
  auto outcome = p.parse(argc, argv, vm, o.common);
  if (!outcome || outcome->stop) return outcome;

  if (!vm.count("template")) return Error(Exit::usage, "no template given");
  o.request.path = vm["template"].as<std::string>();
  if (vm.count("var-file"))
    for (const std::string& f : vm["var-file"].as<std::vector<std::string>>())
      o.request.vars.push_back({true, f});
  if (vm.count("var"))
    for (const std::string& v : vm["var"].as<std::vector<std::string>>())
      o.request.vars.push_back({false, v});
  // Packer splits on commas and keeps spaces: "-only=a, b" names " b".
  auto names = [](const std::string& list, std::vector<std::string>& out) {
    size_t start = 0;
    for (;;) {
      size_t comma = list.find(',', start);
      std::string n = list.substr(start, comma == std::string::npos ? comma : comma - start);
      if (!n.empty()) out.push_back(n);
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  };
  for (const std::string& s : only) names(s, o.request.only);
  for (const std::string& s : except) names(s, o.request.except);
  o.request.syntax_only = vm.count("syntax-only") > 0;
  o.request.force = vm.count("force") > 0;
  if (on_error != "cleanup" && on_error != "abort" && on_error != "ask")
    return Error(Exit::usage, "--on-error must be cleanup, abort or ask, not '" + on_error + "'");
  o.request.on_error = on_error;
  o.request.timestamp = static_cast<std::int64_t>(std::time(nullptr));
  return outcome;
}

/// The lines of the file an error points into, for quoting.
void report(log::Logger& log, const Error& e, const templates::Outcome& out, log::Level level) {
  log.report(e, level);
  if (log.format() != log::Format::human || e.where.line < 1 || !log.enabled(level)) return;
  for (const json::SourceMap& map : out.sources) {
    if (map.name() != e.where.file) continue;
    std::fprintf(stderr, "%s\n", log.redact(json::quote_line(map, e.where)).c_str());
    return;
  }
}

Exit run(const Options& o) {
  log::Logger log = cli::make_logger("template-validate", o.common);
  templates::Outcome out = templates::load(o.request);
  for (const std::string& s : out.secrets) log.add_secret(s);
  for (const Error& w : out.warnings) report(log, w, out, log::Level::warning);
  if (signals::interrupted()) return Exit::interrupted;
  bool pretty = cli::stdout_is_terminal();

  if (!out.errors.empty()) {
    for (const Error& e : out.errors) report(log, e, out, log::Level::error);
    Error first = out.errors.front();
    first.code = out.exit == Exit::ok ? Exit::dataerr : out.exit;
    first.step = "validate";
    std::string source = o.request.path == "-" ? "stdin" : o.request.path;
    if (out.errors.size() > 1)
      first.message = std::to_string(out.errors.size()) + " errors in " + source +
                      "; the first: " + first.message;
    rapidjson::Document rec = record::make();
    record::set_error(rec, "template-validate", first, {},
                      out.errors.size() > 1 ? out.errors : Errors{}, log.secrets());
    if (auto st = record::write(stdout, rec, pretty); !st) log.report(st.error());
    return first.code;
  }
  if (o.request.syntax_only) {
    log.info("syntax-only check passed");
    return Exit::ok;
  }
  for (rapidjson::Document& build : out.builds) {
    rapidjson::Document rec = record::make();
    rec.AddMember("build", build, rec.GetAllocator());
    if (auto st = record::validate(rec); !st) {
      log.report(Error(Exit::software, "internal error: " + st.error().message));
      return Exit::software;
    }
    if (auto st = record::write(stdout, rec, pretty); !st) {
      log.report(st.error());
      return st.error().code;
    }
    log.set_build(record::build_name(rec));
    log.debug("record written");
    log.set_build("");
  }
  return Exit::ok;
}

}  // namespace

int main(int argc, char* argv[]) {
  return kiln::cli::main<Options>("template-validate", argc, argv, parse_argv, run);
}

// SPDX-License-Identifier: MIT
// artifact-post: build records with the builder's artifact in, the build's
// post-processor chains run on it, records with the artifacts left and a
// "post" section out. With --artifact/--post it post-processes any files
// without a record and writes the record it made.

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "cli.hpp"
#include "json.hpp"
#include "log.hpp"
#include "post.hpp"
#include "record.hpp"
#include "signals.hpp"

namespace {

using namespace kiln;

struct Options {
  cli::Common common;
  std::string input = "-";
  post::Request request;
  bool standalone = false;
};

Result<cli::Outcome> parse_argv(int argc, const char* const argv[], Options& o) {
  cli::Parser p("artifact-post", "[OPTIONS] [RECORDS]",
                "Run each build record's post-processors (RECORDS, or stdin) on its\n"
                "artifact and write the records with the artifacts left and a post\n"
                "section; or, with --artifact and --post, post-process any files.");
  p.options().add_options()(
      "artifact", cli::po::value<std::vector<std::string>>(&o.request.files)->value_name("FILE"),
      "post-process this file instead of records' artifacts (repeatable: one "
      "artifact of all the files given)")(
      "post", cli::po::value<std::vector<std::string>>(&o.request.posts)->value_name("PP"),
      "a chain to run: a type (checksum), a JSON object of one post-processor or "
      "a JSON array of them (repeatable; each is one chain)")(
      "post-file", cli::po::value<std::string>(&o.request.post_file)->value_name("FILE"),
      "read chains from a JSON file holding a Packer post-processors array")(
      "name", cli::po::value<std::string>(&o.request.name)->value_name("NAME"),
      "the build's name with --artifact/--post (default artifact-post)");
  p.records(o.input);
  cli::po::variables_map vm;
  auto outcome = p.parse(argc, argv, vm, o.common);
  if (!outcome || outcome->stop) return outcome;
  o.standalone =
      !o.request.files.empty() || !o.request.posts.empty() || !o.request.post_file.empty();
  if (o.standalone && vm.count("records"))
    return Error(Exit::usage, "give either RECORDS or --artifact/--post/--post-file, not both");
  if (vm.count("name") && !o.standalone)
    return Error(Exit::usage, "--name needs --artifact, --post or --post-file");
  if (o.request.name.empty()) return Error(Exit::usage, "--name must not be empty");
  for (const std::string& pp : o.request.posts)
    if (auto st = post::check_post_argument(pp); !st) return st.error();
  o.request.timestamp = static_cast<std::int64_t>(std::time(nullptr));
  return outcome;
}

/// A progress bar on a terminal for one long step.
post::Progress progress_bar(const std::string& label) {
  auto last = std::make_shared<std::chrono::steady_clock::time_point>();
  auto shown = std::make_shared<bool>(false);
  return [label, last, shown](std::uint64_t done, std::uint64_t total) {
    auto now = std::chrono::steady_clock::now();
    if (done != total && now - *last < std::chrono::milliseconds(200)) return;
    if (done == total && !*shown) return;  // too quick to be worth a bar
    *last = now;
    *shown = true;
    int pct = total ? static_cast<int>(done * 100 / total) : 100;
    std::fprintf(stderr, "\r\033[Kartifact-post: %s %3d%% (%llu / %llu MiB)", label.c_str(), pct,
                 static_cast<unsigned long long>(done >> 20),
                 static_cast<unsigned long long>(total >> 20));
    if (done == total) std::fputc('\n', stderr);
    std::fflush(stderr);
  };
}

/// An error with the line it points at quoted, when the file is known.
void report(log::Logger& log, const Error& e, const post::Standalone& made, log::Level level) {
  log.report(e, level);
  if (log.format() != log::Format::human || e.where.line < 1 || !log.enabled(level)) return;
  for (const json::SourceMap& map : made.sources)
    if (map.name() == e.where.file) {
      std::fprintf(stderr, "%s\n", log.redact(json::quote_line(map, e.where)).c_str());
      return;
    }
}

Exit run(const Options& o) {
  log::Logger log = cli::make_logger("artifact-post", o.common);
  post::Options po;
  po.say = [&](std::string_view m) { log.info(m); };
  po.output = [&](std::string_view line, bool) { log.info(line); };
  if (::isatty(STDERR_FILENO) == 1 && o.common.log_format == "human" && o.common.verbosity >= 0)
    po.progress = progress_bar;
  auto work = [&](rapidjson::Document& rec) -> Status {
    po.secrets = log.secrets();
    return post::run(rec, po);
  };
  if (!o.standalone) return cli::pass_records(o.input, "artifact-post", log, work);

  post::Standalone made = post::standalone_record(o.request);
  for (const std::string& s : made.secrets) log.add_secret(s);
  log.set_build(o.request.name);
  for (const Error& w : made.warnings) report(log, w, made, log::Level::warning);
  if (!made.errors.empty()) {
    for (const Error& e : made.errors) report(log, e, made, log::Level::error);
    Error first = made.errors.front();
    first.code = made.exit == Exit::ok ? Exit::dataerr : made.exit;
    first.step = "validate";
    if (made.errors.size() > 1)
      first.message =
          std::to_string(made.errors.size()) + " errors; the first: " + log::describe(first);
    rapidjson::Document rec = record::make();
    record::set_error(rec, "artifact-post", first, o.request.name,
                      made.errors.size() > 1 ? made.errors : Errors{}, log.secrets());
    if (auto st = record::write(stdout, rec, cli::stdout_is_terminal()); !st)
      log.report(st.error());
    return first.code;
  }
  Exit result = Exit::ok;
  cli::pass_record(*made.record, "artifact-post", log, work, result);
  return signals::interrupted() ? Exit::interrupted : result;
}

}  // namespace

int main(int argc, char* argv[]) {
  return kiln::cli::main<Options>("artifact-post", argc, argv, parse_argv, run);
}

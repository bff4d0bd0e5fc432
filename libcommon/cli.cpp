// SPDX-License-Identifier: MIT
#include "cli.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>

#include "record.hpp"
#include "signals.hpp"

namespace kiln::cli {

namespace {

constexpr unsigned kColumns = 80;

int parse_style() {
  namespace style = po::command_line_style;
  // Guessing would make "-v" ambiguous with --var/--verbose/--version once
  // single-dash long options are allowed; Packer users type -var exactly.
  return (style::default_style & ~style::allow_guessing) | style::allow_long_disguise;
}

Status write_stdout(const std::string& text) {
  if (std::fwrite(text.data(), 1, text.size(), stdout) != text.size() || std::fflush(stdout) != 0)
    return Error(Exit::ioerr, std::string("cannot write to stdout: ") + std::strerror(errno));
  return {};
}

}  // namespace

Parser::Parser(std::string tool, std::string usage, std::string summary)
    : tool_(std::move(tool)),
      usage_(std::move(usage)),
      summary_(std::move(summary)),
      own_("Options", kColumns, kColumns / 2),
      common_("Common options", kColumns, kColumns / 2) {
  common_.add_options()("help,h", "show this help and exit")(
      "version", "show the version and exit")("verbose,v",
                                              "more detail on stderr (repeat for even more)")(
      "quiet,q", "only errors on stderr")("log-format",
                                          po::value<std::string>()->value_name("FORMAT"),
                                          "human (default) or json: one JSON event per line")(
      "color", po::value<std::string>()->value_name("WHEN"), "auto (default), always or never");
}

std::string Parser::help() const {
  std::ostringstream out;
  out << "Usage: " << tool_ << " " << usage_ << "\n" << summary_ << "\n";
  if (!own_.options().empty()) out << "\n" << own_;
  out << "\n" << common_;
  out << "\nExit status: 0 ok, 64 usage, 65 bad input, 66 input missing,\n"
         "70 internal error, 74 I/O error, 130 interrupted; see "
      << tool_ << "(1).\n";
  return out.str();
}

Result<Outcome> Parser::parse(int argc, const char* const argv[], po::variables_map& vm,
                              Common& common) {
  po::options_description all;
  all.add(own_).add(common_);
  po::parsed_options parsed(nullptr);
  try {
    parsed = po::command_line_parser(argc, argv)
                 .options(all)
                 .positional(positional_)
                 .style(parse_style())
                 .run();
    int verbose = 0;
    bool quiet = false;
    for (const auto& o : parsed.options) {
      if (o.string_key == "verbose") ++verbose;
      if (o.string_key == "quiet") quiet = true;
    }
    // -v may be repeated; count it before store() rejects the repeat.
    std::erase_if(parsed.options, [](const po::option& o) { return o.string_key == "verbose"; });
    po::store(parsed, vm);
    po::notify(vm);
    common.verbosity = quiet ? -1 : std::min(verbose, 2);
  } catch (const po::error& e) {
    return Error(Exit::usage, e.what());
  }
  common.help = vm.count("help") > 0;
  common.version = vm.count("version") > 0;
  if (vm.count("log-format")) {
    common.log_format = vm["log-format"].as<std::string>();
    if (common.log_format != "human" && common.log_format != "json")
      return Error(Exit::usage,
                   "--log-format must be human or json, not '" + common.log_format + "'");
  }
  if (vm.count("color")) {
    common.color = vm["color"].as<std::string>();
    if (common.color == "true") common.color = "always";
    if (common.color == "false") common.color = "never";
    if (common.color != "auto" && common.color != "always" && common.color != "never")
      return Error(Exit::usage,
                   "--color must be auto, always or never, not '" + common.color + "'");
  }
  if (common.help) {
    if (auto st = write_stdout(help()); !st) return st.error();
    return Outcome{true, Exit::ok};
  }
  if (common.version) {
    if (auto st = write_stdout(tool_ + " (kiln) " KILN_VERSION "\n"); !st) return st.error();
    return Outcome{true, Exit::ok};
  }
  return Outcome{};
}

log::Logger make_logger(const std::string& tool, const Common& common) {
  bool color = false;
  if (common.color == "always") color = true;
  if (common.color == "auto") color = ::isatty(STDERR_FILENO) && !std::getenv("NO_COLOR");
  return log::Logger(tool, common.log_format == "json" ? log::Format::json : log::Format::human,
                     common.verbosity, color);
}

Exit usage_error(const std::string& tool, const Error& e) {
  std::string line = tool + ": " + e.message + " (see " + tool + " --help)\n";
  std::fwrite(line.data(), 1, line.size(), stderr);
  return e.code;
}

bool stdout_is_terminal() { return ::isatty(STDOUT_FILENO); }

bool pass_record(rapidjson::Document& record, const std::string& tool, log::Logger& log,
                 const RecordWork& work, Exit& result) {
  log.set_build(record::build_name(record));
  if (record::failed(record)) {
    if (result == Exit::ok) result = static_cast<Exit>(record["error"]["exit"].GetInt());
  } else {
    for (const std::string& s : record::secrets(record)) log.add_secret(s);
    if (auto st = work(record); !st) {
      const Error& e = st.error();
      log.report(e);
      record::set_error(record, tool, e, record::build_name(record), {}, log.secrets());
      if (result == Exit::ok) result = e.code;
    }
  }
  if (auto w = record::write(stdout, record, stdout_is_terminal()); !w) {
    log.report(w.error());
    result = w.error().code;
    return false;
  }
  return true;
}

Exit pass_records(const std::string& input, const std::string& tool, log::Logger& log,
                  const RecordWork& work) {
  std::ifstream file;
  if (input != "-") {
    file.open(input);
    if (!file) {
      log.report(Error(Exit::noinput, "cannot read " + input));
      return Exit::noinput;
    }
  }
  record::Reader in(input == "-" ? std::cin : file, input);
  Exit result = Exit::ok;
  for (;;) {
    auto next = in.next();
    if (!next) {
      log.report(next.error());
      rapidjson::Document rec = record::make();
      record::set_error(rec, tool, next.error());
      (void)record::write(stdout, rec, stdout_is_terminal());
      return next.error().code;
    }
    if (!next->has_value()) break;
    rapidjson::Document rec = std::move(**next);
    if (!pass_record(rec, tool, log, work, result)) return result;
    if (signals::interrupted()) return Exit::interrupted;
  }
  return result;
}

}  // namespace kiln::cli

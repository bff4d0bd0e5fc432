// SPDX-License-Identifier: MIT
#pragma once
/// The command line every tool shares: Boost.Program_options with Packer's
/// single-dash long options also accepted (-var, -only), the common options
/// (--help, --version, -v, -q, --log-format, --color), --help in 80 columns
/// on stdout, and one specific line on stderr (exit 64) for a bad option.

#include <rapidjson/document.h>

#include <boost/program_options.hpp>
#include <functional>
#include <string>
#include <vector>

#include "exit_code.hpp"
#include "log.hpp"
#include "result.hpp"
#include "signals.hpp"

namespace kiln::cli {

namespace po = boost::program_options;

/// The options every tool has.
struct Common {
  bool help = false;
  bool version = false;
  int verbosity = 0;  ///< -1 quiet, 0 normal, 1 -v, 2 -vv
  std::string log_format = "human";
  std::string color = "auto";
};

/// What parse() decided: go on, or stop now with this exit status (after
/// --help or --version has been printed).
struct Outcome {
  bool stop = false;
  Exit exit = Exit::ok;
};

class Parser {
 public:
  /// `usage`: the synopsis after the tool's name ("[OPTIONS] TEMPLATE");
  /// `summary`: one or two lines on what the tool does.
  Parser(std::string tool, std::string usage, std::string summary);

  /// The tool's own options; add to it before parse().
  po::options_description& options() { return own_; }
  /// Declares a positional argument; max -1 means any number.
  void positional(const char* name, int max) { positional_.add(name, max); }
  /// The records a tool reads: --records RECORDS, also the positional
  /// argument; "-" (the default) is stdin. Add it last: it ends the list.
  void records(std::string& input) {
    own_.add_options()("records", po::value<std::string>(&input)->value_name("RECORDS"),
                       "the records to read (the positional argument; - is stdin)");
    positional("records", 1);
  }

  /// Parses argv into `vm` and `common`. Prints --help/--version itself.
  /// Errors: Exit::usage with one line naming the bad option or value.
  Result<Outcome> parse(int argc, const char* const argv[], po::variables_map& vm, Common& common);

  std::string help() const;
  const std::string& tool() const { return tool_; }

 private:
  std::string tool_;
  std::string usage_;
  std::string summary_;
  po::options_description own_;
  po::options_description common_;
  po::positional_options_description positional_;
};

/// The Logger the common options ask for (colour only on a terminal).
log::Logger make_logger(const std::string& tool, const Common& common);

/// Reports a usage error on one line of stderr and returns Exit::usage.
Exit usage_error(const std::string& tool, const Error& e);

/// True when stdout is a terminal (records are then pretty-printed).
bool stdout_is_terminal();

/// What a tool does to one build record that carries no error.
using RecordWork = std::function<Status(rapidjson::Document& record)>;

/// Passes one record through a tool: a failed record (an earlier stage's
/// error) goes on untouched; otherwise the record's secrets are registered
/// with `log`, `work` runs, and an Error it returns is reported once and
/// becomes the record's error section. The record is then written to
/// stdout. `result` keeps the first failure's exit status. Returns false
/// when stdout cannot be written (`result` then says so).
bool pass_record(rapidjson::Document& record, const std::string& tool, log::Logger& log,
                 const RecordWork& work, Exit& result);

/// Reads the records of `input` ("-" = stdin) and passes each through
/// pass_record. An unreadable input or record is reported (and written as
/// an error record). Returns the first failure's status, or
/// Exit::interrupted once a signal has come.
Exit pass_records(const std::string& input, const std::string& tool, log::Logger& log,
                  const RecordWork& work);

/// A tool's main(): Ctrl-C and SIGTERM are caught for the whole run
/// (signals::InterruptGuard), `parse` reads the command line (a usage error
/// is one line on stderr, exit 64; --help and --version stop there), then
/// `run` does the work and its Exit is the process's status.
template <class Options>
int main(const std::string& tool, int argc, char* argv[],
         Result<Outcome> (*parse)(int, const char* const[], Options&),
         Exit (*run)(const Options&)) {
  signals::InterruptGuard guard;
  Options options;
  auto parsed = parse(argc, argv, options);
  if (!parsed) return to_int(usage_error(tool, parsed.error()));
  if (parsed->stop) return to_int(parsed->exit);
  return to_int(run(options));
}

}  // namespace kiln::cli

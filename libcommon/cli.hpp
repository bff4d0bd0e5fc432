// SPDX-License-Identifier: MIT
#pragma once
/// The command line every tool shares: Boost.Program_options with Packer's
/// single-dash long options also accepted (-var, -only), the common options
/// (--help, --version, -v, -q, --log-format, --color), --help in 80 columns
/// on stdout, and one specific line on stderr (exit 64) for a bad option.

#include <string>
#include <vector>

#include <boost/program_options.hpp>

#include "log.hpp"
#include "result.hpp"

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

  /// Parses argv into `vm` and `common`. Prints --help/--version itself.
  /// Errors: Exit::usage with one line naming the bad option or value.
  Result<Outcome> parse(int argc, const char* const argv[],
                        po::variables_map& vm, Common& common);

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

}  // namespace kiln::cli

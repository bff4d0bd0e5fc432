// SPDX-License-Identifier: MIT
#pragma once
/// One build through the stages after template-validate — vm-launch,
/// provision, capture, artifact-post — as kiln-build runs it: each stage a
/// child process reading the record the one before wrote (the records are
/// files, so a stage can be paused after, or re-run), its log read as JSON
/// events, and what a stage that dies without a word leaves behind (a
/// running machine, a half-written output directory) cleaned up.

#include <rapidjson/document.h>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "exit_code.hpp"
#include "result.hpp"

namespace kiln::pipeline {

/// The stages, in order.
const std::vector<std::string>& stages();

/// One line a stage logged: its --log-format=json event, or a line that
/// was not JSON (a crash message) as an error.
struct Event {
  std::string time;  ///< as the tool wrote it (ISO 8601, UTC)
  std::string tool;
  std::string level;  ///< error, warning, info, debug, trace
  std::string message;
};

struct Options {
  /// Where the tools are; "" = on PATH.
  std::string tools_dir;
  /// The build's records go here, one file per stage.
  std::string work_dir;
  /// Added to every stage's command line (-v, -q...).
  std::vector<std::string> tool_args;
  /// Each log line of a stage, on the build's own thread.
  std::function<void(const Event&)> event;
  /// Called after each stage that succeeded but the last (Packer's -debug
  /// pause); returns when the build may go on.
  std::function<void(const std::string& stage)> after_stage;
  /// How long a stage may take to clean up after it was interrupted
  /// before it is killed.
  std::chrono::seconds grace{180};
};

/// What became of a build.
struct Outcome {
  rapidjson::Document record;  ///< the last record written (with "error" on failure)
  bool ok = false;
  Exit exit = Exit::ok;  ///< the failing stage's status
  std::string stage;     ///< the failing stage; "" when ok
  std::string message;   ///< what failed, for the summary
};

/// Runs `record` (one build record from template-validate) through the
/// stages. A stage that fails writes an error record and has already
/// handled its machine as the build's on_error says; a stage that dies
/// without writing a record (killed, crashed) leaves that to this
/// function, which stops the build's machine and removes capture's
/// output directory. When the process is interrupted (signals), the
/// running stage is sent SIGINT, given `grace` to clean up, and the
/// outcome is Exit::interrupted. Never throws.
Outcome run(const rapidjson::Value& record, const Options& options);

}  // namespace kiln::pipeline

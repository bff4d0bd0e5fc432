// SPDX-License-Identifier: MIT
#pragma once
/// Packer's post-processing of a build: every chain of build.post_processors
/// run on the builder's artifact (the record's "artifacts" section), as
/// Packer 1.6.6's core/build.go runs them:
///  - each chain starts from the builder's artifact; within a chain each
///    post-processor gets the artifact of the one before;
///  - each post-processor says whether its input is kept by default and
///    whether that default overrides the user (checksum, manifest and
///    shell-local: kept, forced; artifice: kept; compress and vagrant
///    (libvirt): not kept); keep_input_artifact overrides an unforced
///    default;
///  - an intermediate artifact that is not kept is destroyed (its files
///    removed; the builder's artifact removes its output directory); the
///    builder's artifact is destroyed at the end unless the first
///    post-processor of some chain kept it (or there are no chains);
///  - the artifacts left are, in order: the builder's (when kept), then for
///    each chain its kept intermediates and its last artifact.
/// kiln's differences: an artifact whose files were removed later in its
/// chain is not listed (a pass-through post-processor's artifact is listed
/// twice, as Packer lists it); and when a post-processor fails or a signal
/// arrives, the builder's artifact is kept, so that the post-processing
/// can be run again.

#include <rapidjson/document.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "json.hpp"
#include "result.hpp"

namespace kiln::post {

/// Called with bytes done so far and the total of one long step.
using Progress = std::function<void(std::uint64_t done, std::uint64_t total)>;

/// Whom the post-processors tell, and how.
struct Options {
  /// A post-processor's news ("Archive out.tar.gz completed").
  std::function<void(std::string_view)> say;
  /// One line a shell-local command printed.
  std::function<void(std::string_view line, bool is_stderr)> output;
  /// A progress sink for a long step named `label` (may return {}).
  std::function<Progress(const std::string& label)> progress;
  /// Values redacted from what the record's post section says.
  std::vector<std::string> secrets;
  /// Compression threads; 0 = every core.
  unsigned threads = 0;
};

/// Runs the post-processor chains of `record` (a record without an error)
/// on its builder artifact; replaces "artifacts" with what is left and
/// adds "post" (schemas/post.schema.json). A record without artifacts is a
/// null build's: its artifact has no files (a qemu build's must have one).
/// Every chain runs even when another failed, as in Packer; the first
/// failure is returned, with step "post-processor C.P (type)" (chain and
/// position from 0) and a message naming it, after the record has been
/// updated (the post section says what each post-processor did). Errors:
/// Exit::dataerr (no builder artifact, or the post-processors already ran),
/// Exit::interrupted (the rest is skipped), and those of the
/// post-processors: Exit::config (settings), noinput, cantcreat, ioerr,
/// failed (a shell-local command), unavailable (qemu-img missing).
Status run(rapidjson::Document& record, const Options& options);

/// What a record made without a template (artifact-post --artifact/--post)
/// is made of.
struct Request {
  std::string name = "artifact-post";  ///< the build's name
  std::vector<std::string> files;      ///< the artifact's files
  /// A file holding a Packer "post-processors" array ("" = none); its
  /// chains come first.
  std::string post_file;
  /// One chain each, as one element of Packer's "post-processors": a type
  /// name, a JSON object or a JSON array.
  std::vector<std::string> posts;
  std::int64_t timestamp = 0;  ///< unix seconds of the run
};

/// The record made, or why not.
struct Standalone {
  std::optional<rapidjson::Document> record;
  Errors errors;  ///< each with where (file, line...) when known
  Errors warnings;
  Exit exit = Exit::ok;                  ///< meaningful when errors is non-empty
  std::vector<json::SourceMap> sources;  ///< files read, for quoting lines
  std::vector<std::string> secrets;
};

/// Checks one --post value: a post-processor type name, or JSON text (an
/// object or an array). Errors: Exit::usage, naming the problem.
Status check_post_argument(std::string_view text);

/// Makes the record of a null build named request.name whose
/// post-processors are the chains given, normalized exactly as
/// template-validate normalizes a template's (relative paths are relative
/// to the current directory), and whose artifact is the files given:
/// builder_id "kiln.files", id "", each file's absolute path, format (by
/// its extension: qcow2, raw, vmdk, vhdx, vdi, or "file") and size.
/// Errors (in Standalone::errors): Exit::noinput (a file is missing),
/// Exit::dataerr (a bad post-processor: unknown type or key, a value of the
/// wrong type, Packer's own checks).
Standalone standalone_record(const Request& request);

}  // namespace kiln::post

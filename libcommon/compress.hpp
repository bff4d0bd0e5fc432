// SPDX-License-Identifier: MIT
#pragma once
/// Packer's compress post-processor with libarchive: an artifact's files
/// into one tar or zip archive, or one file into a compressed stream.
///
/// Packer's rules (post-processor/compress/post-processor.go, 1.6.6):
///  - output defaults to default_output; the format comes from the
///    UNRENDERED output template (or from "<output>.<format>" when format is
///    set): of all ".ext" groups (regexp \.([a-z0-9]+), lowercase only), the
///    last decides: "tar" or "zip" make that archive, uncompressed; "gz"
///    (pgzip), "xz", "lz4", "bgzf" compress, and a "tar" just before it
///    makes a tar first (x.tar.gz); no group, or an unknown last one (".tgz",
///    ".raw", ".zst"...), gives tar + gzip.
///  - compression_level: above 9 becomes 9; 0 and -1 become the default
///    (6); Packer's gzip rejects below -2 ("Invalid compression level.
///    Expected an integer from -1 to 9."). Packer ignores it for zip and xz.
///  - tar: GNU format, entries named by the file's base name, mode, owner
///    (uid, gid and their names) from the file, times zeroed. zip: entries
///    named by the path as given, deflated.
///  - without tar or zip exactly one input file is allowed ("Can only have
///    1 input file when not using tar/zip. Found N files: [...]").
/// kiln's differences: ".zst" means zstd (Packer 1.6.6 would write tar+gzip
/// under that name); bgzf is rejected (Exit::config); the level is also
/// applied to zip, xz, zstd and lz4; zip names lose a leading "/", "./" and
/// "../" (the zip format forbids absolute names); gzip (as concatenated
/// gzip members of 4 MiB input each, which every gzip reader takes as one
/// stream), xz and zstd compress on every core; the output is written under
/// a temporary name and renamed.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "result.hpp"
#include "template_text.hpp"

namespace kiln::compress {

enum class Archive { none, tar, zip };
enum class Algorithm { none, gzip, xz, zstd, lz4, bgzf };

/// What to write: an archive of entries, a compression of one stream, or
/// both (tar + gzip).
struct Format {
  Archive archive = Archive::tar;
  Algorithm algorithm = Algorithm::gzip;
  bool operator==(const Format&) const = default;
};

/// "tar", "zip"... and "gzip", "xz"..., "none" (for messages and records).
std::string_view name(Archive a);
std::string_view name(Algorithm a);

/// Packer's detectFromFilename: the format of `output_template` (not yet
/// rendered) and the optional `format` setting.
Format detect_format(std::string_view output_template, std::string_view format = {});

/// Packer's compression_level after its normalization: >9 → 9, 0 and -1 →
/// 6. Errors: Exit::config below -1 (Packer's gzip accepts -2, Huffman
/// only, which libarchive cannot do).
Result<int> normalize_level(int compression_level);

/// Called with input bytes done so far and the total.
using Progress = std::function<void(std::uint64_t done, std::uint64_t total)>;

/// One member of an archive (or the one stream compressed).
struct Entry {
  std::string name;                    ///< path inside the archive
  std::filesystem::path source;        ///< the file read, unless content
  std::optional<std::string> content;  ///< data held in memory instead
  std::optional<unsigned> mode;        ///< permissions; default: the
                                       ///< source's, 0644 for content
};

/// Entries for an artifact's files named as Packer names them: tar by the
/// base name, zip by the path as given (less a leading "/", "./", "../").
std::vector<Entry> packer_entries(const std::vector<std::string>& files, Archive archive);

/// How to write.
struct Settings {
  Format format;
  int level = 6;         ///< 1..9 as normalize_level returns (0: store)
  unsigned threads = 0;  ///< for gzip, xz and zstd; 0 = every core
};

/// Writes `entries` to `target` (its folder made when missing) in
/// `settings.format`, streaming each source in 4 MiB blocks (memory stays
/// flat whatever the sizes). The file appears complete or not at all: a
/// failure or an interrupt (checked between blocks) removes the temporary
/// file. No entries make an empty tar or zip. Errors: Exit::config (bgzf;
/// not exactly one entry without an archive), Exit::noinput (a source cannot be read),
/// Exit::dataerr (a source changed size while read), Exit::cantcreat, Exit::ioerr,
/// Exit::interrupted, Exit::software (libarchive refused a setting).
Status write(const std::filesystem::path& target, const std::vector<Entry>& entries,
             const Settings& settings, const Progress& progress = {});

/// Packer's default output template.
inline constexpr std::string_view default_output = "packer_{{.BuildName}}_{{.BuilderType}}";

/// The post-processor's settings, as in the template.
struct Options {
  std::string output;         ///< template; "" = default_output
  std::string format;         ///< Packer's "format": an extension to assume
  int compression_level = 0;  ///< as written; 0 = unset
  std::string build_name;     ///< {{.BuildName}}
  std::string builder_type;   ///< {{.BuilderType}}
  unsigned threads = 0;       ///< 0 = every core
};

/// Checks the settings as Packer's Configure and PostProcess would, before
/// any work: the output template's syntax, the level, the format (bgzf is
/// refused). Errors: Exit::config.
Status check(const Options& options);

/// What run() wrote.
struct Written {
  std::string path;  ///< the rendered output
  Format format;
  std::uint64_t size = 0;  ///< bytes of the output
};

/// Runs the post-processor on an artifact's `files`: renders the output
/// with `context` plus BuildName and BuilderType, detects the format and
/// writes it (see write()). Errors: those of check(), rendering
/// (Exit::dataerr), Packer's one-input rule (Exit::config), and write().
Result<Written> run(const std::vector<std::string>& files, const Options& options,
                    const tmpl::Context& context, const Progress& progress = {});

}  // namespace kiln::compress

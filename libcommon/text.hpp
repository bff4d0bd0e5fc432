// SPDX-License-Identifier: MIT
#pragma once
/// Small text operations shared by the tools: spelling suggestions,
/// shell-style globs, list splitting, base64.

#include <string>
#include <string_view>
#include <vector>

namespace kiln::text {

/// Optimal-string-alignment distance (Levenshtein plus transpositions).
size_t edit_distance(std::string_view a, std::string_view b);

/// The candidate closest to `word` when it is close enough to be a likely
/// misspelling (distance at most a third of the word, at least 1); else "".
std::string suggest(std::string_view word, const std::vector<std::string>& candidates);

/// fnmatch-style glob: * ? and [...] (with ! or ^ negation); no escapes
/// beyond "\\x" meaning a literal x.
bool glob_match(std::string_view pattern, std::string_view name);

/// The lines of `s` without their newlines (a last line without one too).
std::vector<std::string> split_lines(std::string_view s);

/// Splits on `sep`, trimming spaces around each item and dropping empties.
std::vector<std::string> split_list(std::string_view s, char sep = ',');

/// Joins with `sep`.
std::string join(const std::vector<std::string>& items, std::string_view sep);

/// Padded base64 (RFC 4648), without line breaks.
std::string base64(std::string_view data);
/// Decodes padded base64 into `out`; false when `text` is not base64 (the
/// empty text decodes to nothing).
bool unbase64(std::string_view text, std::string& out);

/// True when `s` starts/ends with `affix`.
bool starts_with(std::string_view s, std::string_view affix);
bool ends_with(std::string_view s, std::string_view affix);

/// Escapes text for HTML as Go's template.HTMLEscapeString does: < > & ' "
/// become entities and NUL becomes U+FFFD.
std::string html_escape(std::string_view s);

/// ASCII case-insensitive equality.
bool iequals(std::string_view a, std::string_view b);

/// The last element of a slash-separated path as Go's filepath.Base gives
/// it (Packer names files with it): trailing slashes dropped, "." for "",
/// "/" for "/".
std::string go_base(std::string_view path);

/// Replaces every occurrence of `from` (non-empty) by `to`.
std::string replace_all(std::string_view s, std::string_view from, std::string_view to);

}  // namespace kiln::text

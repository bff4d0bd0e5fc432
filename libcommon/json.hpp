// SPDX-License-Identifier: MIT
#pragma once
/// JSON text in and out with RapidJSON, keeping where every value came from
/// so that errors can name the file, line and column of a key.

#include <rapidjson/document.h>

#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "result.hpp"

namespace kiln::json {

using Document = rapidjson::Document;
using Value = rapidjson::Value;
using Allocator = rapidjson::Document::AllocatorType;

/// A parsed text and the byte offset of every value in it, by JSON pointer.
/// For an object member the offset is that of its key; for an array element
/// that of the element itself.
class SourceMap {
 public:
  SourceMap() = default;
  SourceMap(std::string name, std::string text);

  const std::string& name() const { return name_; }
  const std::string& text() const { return text_; }

  /// Location of `pointer`, or of its nearest ancestor that was recorded.
  Location locate(const std::string& pointer) const;
  /// Location of a byte offset into the text.
  Location at_offset(size_t offset) const;
  /// The text of line `line` (1-based), without its newline.
  std::string_view line_text(int line) const;

  void record(std::string pointer, size_t offset);
  /// The recorded offset of `pointer`, or 0.
  size_t offset_of(const std::string& pointer) const;

 private:
  std::string name_;
  std::string text_;
  std::vector<size_t> line_starts_;
  std::unordered_map<std::string, size_t> offsets_;
};

/// Parses `text` (named `name` in messages) into `doc`, recording positions
/// in `map`. A syntax error is returned (Exit::dataerr) with its location
/// and a message that quotes the line with a caret under the column.
/// Duplicate keys are not fatal: each one is appended to `duplicates`.
Status parse(std::string_view text, const std::string& name, Document& doc, SourceMap& map,
             Errors& duplicates);

/// Parses one JSON text without positions (records, small files). Syntax
/// errors carry the byte offset in the message.
Status parse(std::string_view text, Document& doc);

/// Serializes a value: compact (one line) or indented with two spaces.
std::string to_string(const Value& value, bool pretty = false);

/// Escapes a key for use as a JSON pointer token (~ → ~0, / → ~1).
std::string pointer_token(std::string_view key);

/// Appends "/token" to a pointer.
std::string child(const std::string& pointer, std::string_view key);
std::string child(const std::string& pointer, size_t index);

/// Calls `visit(string_value, pointer)` for every string in `value`, at any
/// depth, with the JSON pointer of each (below `pointer`).
void for_each_string(Value& value, const std::string& pointer,
                     const std::function<void(Value&, const std::string&)>& visit);

/// Typed reads of an object's member, with a fallback when the member is
/// missing or of another type (the record's settings are already
/// normalized; these only spare every caller the FindMember dance).
std::string string_or(const Value& obj, const char* key, const std::string& fallback = {});
double number_or(const Value& obj, const char* key, double fallback);
bool bool_or(const Value& obj, const char* key, bool fallback = false);
/// The string elements of an array member ({} when missing).
std::vector<std::string> strings_of(const Value& obj, const char* key);

/// A short description of a value's JSON type: "string", "object"...
const char* type_name(const Value& value);

/// The line of `map` at `where`, with a caret under the column, for error
/// messages: "  3 |   "cpus": two,\n    |           ^".
std::string quote_line(const SourceMap& map, const Location& where);

}  // namespace kiln::json

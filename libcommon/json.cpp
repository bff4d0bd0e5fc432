// SPDX-License-Identifier: MIT
#include "json.hpp"

#include <rapidjson/error/en.h>
#include <rapidjson/prettywriter.h>
#include <rapidjson/reader.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <set>

namespace kiln::json {

SourceMap::SourceMap(std::string name, std::string text)
    : name_(std::move(name)), text_(std::move(text)) {
  line_starts_.push_back(0);
  for (size_t i = 0; i < text_.size(); ++i)
    if (text_[i] == '\n') line_starts_.push_back(i + 1);
}

void SourceMap::record(std::string pointer, size_t offset) {
  offsets_.emplace(std::move(pointer), offset);
}

size_t SourceMap::offset_of(const std::string& pointer) const {
  auto it = offsets_.find(pointer);
  return it == offsets_.end() ? 0 : it->second;
}

Location SourceMap::at_offset(size_t offset) const {
  Location loc;
  loc.file = name_;
  if (line_starts_.empty()) return loc;
  auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), offset);
  size_t line = static_cast<size_t>(it - line_starts_.begin());  // 1-based
  loc.line = static_cast<int>(line);
  loc.column = static_cast<int>(offset - line_starts_[line - 1]) + 1;
  return loc;
}

Location SourceMap::locate(const std::string& pointer) const {
  std::string p = pointer;
  for (;;) {
    auto it = offsets_.find(p);
    if (it != offsets_.end()) {
      Location loc = at_offset(it->second);
      loc.pointer = pointer;
      return loc;
    }
    if (p.empty()) break;
    p.erase(p.rfind('/'));
  }
  Location loc;
  loc.file = name_;
  loc.pointer = pointer;
  return loc;
}

std::string_view SourceMap::line_text(int line) const {
  if (line < 1 || static_cast<size_t>(line) > line_starts_.size()) return {};
  size_t start = line_starts_[static_cast<size_t>(line) - 1];
  size_t end = text_.find('\n', start);
  if (end == std::string::npos) end = text_.size();
  if (end > start && text_[end - 1] == '\r') --end;
  return std::string_view(text_).substr(start, end - start);
}

std::string pointer_token(std::string_view key) {
  std::string out;
  out.reserve(key.size());
  for (char c : key) {
    if (c == '~')
      out += "~0";
    else if (c == '/')
      out += "~1";
    else
      out += c;
  }
  return out;
}

std::string child(const std::string& pointer, std::string_view key) {
  return pointer + "/" + pointer_token(key);
}

std::string child(const std::string& pointer, size_t index) {
  return pointer + "/" + std::to_string(index);
}

namespace {

/// Input stream that counts bytes, so events can be placed in the text.
struct CountingStream {
  using Ch = char;
  explicit CountingStream(std::string_view s) : s_(s) {}
  Ch Peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  Ch Take() { return i_ < s_.size() ? s_[i_++] : '\0'; }
  size_t Tell() const { return i_; }
  Ch* PutBegin() { return nullptr; }
  void Put(Ch) {}
  void Flush() {}
  size_t PutEnd(Ch*) { return 0; }

  std::string_view s_;
  size_t i_ = 0;
};

/// Forwards SAX events to the document while recording, for every value,
/// its JSON pointer and where it starts, and noticing duplicate keys.
class Tracker {
 public:
  Tracker(Document& doc, const CountingStream& in, SourceMap& map, Errors& duplicates)
      : doc_(doc), in_(in), map_(map), duplicates_(duplicates) {}

  bool Null() { return scalar(doc_.Null()); }
  bool Bool(bool b) { return scalar(doc_.Bool(b)); }
  bool Int(int i) { return scalar(doc_.Int(i)); }
  bool Uint(unsigned u) { return scalar(doc_.Uint(u)); }
  bool Int64(int64_t i) { return scalar(doc_.Int64(i)); }
  bool Uint64(uint64_t u) { return scalar(doc_.Uint64(u)); }
  bool Double(double d) { return scalar(doc_.Double(d)); }
  bool RawNumber(const char* s, rapidjson::SizeType n, bool copy) {
    return scalar(doc_.RawNumber(s, n, copy));
  }
  bool String(const char* s, rapidjson::SizeType n, bool copy) {
    place(string_start(in_.Tell()));
    return doc_.String(s, n, copy);
  }
  bool StartObject() {
    if (too_deep()) return false;
    place(bracket_offset());
    frames_.push_back(Frame{current_, true, {}, 0, {}});
    return doc_.StartObject();
  }
  bool Key(const char* s, rapidjson::SizeType n, bool copy) {
    Frame& f = frames_.back();
    f.key.assign(s, n);
    size_t start = string_start(in_.Tell());
    std::string ptr = child(f.pointer, f.key);
    if (!f.keys.insert(f.key).second) {
      Error e(Exit::dataerr, "duplicate key \"" + f.key + "\"", map_.at_offset(start));
      e.where.pointer = ptr;
      duplicates_.push_back(std::move(e));
    } else {
      map_.record(ptr, start);
    }
    return doc_.Key(s, n, copy);
  }
  bool EndObject(rapidjson::SizeType n) {
    frames_.pop_back();
    return doc_.EndObject(n);
  }
  bool StartArray() {
    if (too_deep()) return false;
    place(bracket_offset());
    frames_.push_back(Frame{current_, false, {}, 0, {}});
    return doc_.StartArray();
  }
  bool EndArray(rapidjson::SizeType n) {
    frames_.pop_back();
    return doc_.EndArray(n);
  }

 public:
  /// Every value keeps its pointer, so depth costs quadratic memory; no
  /// template or record comes near this.
  static constexpr size_t kMaxDepth = 256;
  bool exceeded_depth() const { return exceeded_; }

 private:
  bool too_deep() {
    if (frames_.size() < kMaxDepth) return false;
    exceeded_ = true;
    return true;
  }

  struct Frame {
    std::string pointer;
    bool object;
    std::string key;
    size_t index;
    std::set<std::string> keys;
  };

  /// Sets current_ to the pointer of the value that starts at `offset`.
  void place(size_t offset) {
    if (frames_.empty()) {
      current_.clear();
      map_.record("", offset);
      return;
    }
    Frame& f = frames_.back();
    if (f.object) {
      current_ = child(f.pointer, f.key);
    } else {
      current_ = child(f.pointer, f.index++);
      map_.record(current_, offset);
    }
  }
  bool scalar(bool ok) {
    size_t end = in_.Tell();
    size_t start = end;
    const std::string_view s = in_.s_;
    while (start > 0 && std::string_view("+-.0123456789eEtruefalsn").find(s[start - 1]) !=
                            std::string_view::npos)
      --start;
    place(start);
    return ok;
  }

  /// The offset of the '{' or '[' just seen: the iterative reader reports
  /// the start before it consumes the bracket, the recursive one after.
  size_t bracket_offset() const {
    size_t at = in_.Tell();
    const std::string_view s = in_.s_;
    if (at < s.size() && (s[at] == '{' || s[at] == '[')) return at;
    return at > 0 ? at - 1 : 0;
  }

  /// The offset of the opening quote of the string that ends at `end`.
  size_t string_start(size_t end) const {
    const std::string_view s = in_.s_;
    if (end < 2) return 0;
    size_t i = end - 2;  // the character before the closing quote
    for (;;) {
      if (s[i] == '"') {
        size_t slashes = 0;
        while (i > slashes && s[i - 1 - slashes] == '\\') ++slashes;
        if (slashes % 2 == 0) return i;
      }
      if (i == 0) return 0;
      --i;
    }
  }

  Document& doc_;
  const CountingStream& in_;
  SourceMap& map_;
  Errors& duplicates_;
  std::vector<Frame> frames_;
  std::string current_;
  bool exceeded_ = false;
};

constexpr unsigned kParseFlags =
    rapidjson::kParseIterativeFlag | rapidjson::kParseValidateEncodingFlag;

}  // namespace

std::string quote_line(const SourceMap& map, const Location& where) {
  if (where.line < 1) return {};
  std::string_view text = map.line_text(where.line);
  std::string num = std::to_string(where.line);
  std::string out = " " + num + " | ";
  out.append(text);
  out += "\n " + std::string(num.size(), ' ') + " | ";
  int col = std::max(where.column, 1);
  for (int i = 1; i < col && static_cast<size_t>(i - 1) < text.size(); ++i)
    out += text[static_cast<size_t>(i - 1)] == '\t' ? '\t' : ' ';
  out += '^';
  return out;
}

Status parse(std::string_view text, const std::string& name, Document& doc, SourceMap& map,
             Errors& duplicates) {
  map = SourceMap(name, std::string(text));
  CountingStream in(map.text());
  rapidjson::Reader reader;
  rapidjson::ParseResult result;
  bool too_deep = false;
  auto generate = [&](Document& handler) {
    Tracker tracker(handler, in, map, duplicates);
    result = reader.Parse<kParseFlags>(in, tracker);
    too_deep = tracker.exceeded_depth();
    return !result.IsError();
  };
  doc.Populate(generate);
  if (result.IsError()) {
    Location where = map.at_offset(result.Offset());
    std::string msg = "invalid JSON: ";
    if (too_deep)
      msg += "nested more than " + std::to_string(Tracker::kMaxDepth) + " levels deep";
    else
      msg += rapidjson::GetParseError_En(result.Code());
    if (!msg.empty() && msg.back() == '.') msg.pop_back();
    doc.SetNull();
    return Error(Exit::dataerr, msg, where);
  }
  return {};
}

Status parse(std::string_view text, Document& doc) {
  doc.Parse<kParseFlags>(text.data(), text.size());
  if (doc.HasParseError()) {
    std::string msg = "invalid JSON at byte " + std::to_string(doc.GetErrorOffset()) + ": " +
                      rapidjson::GetParseError_En(doc.GetParseError());
    doc.SetNull();
    return Error(Exit::dataerr, msg);
  }
  return {};
}

std::string to_string(const Value& value, bool pretty) {
  rapidjson::StringBuffer buf;
  if (pretty) {
    rapidjson::PrettyWriter<rapidjson::StringBuffer> w(buf);
    w.SetIndent(' ', 2);
    value.Accept(w);
  } else {
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    value.Accept(w);
  }
  return std::string(buf.GetString(), buf.GetSize());
}

void for_each_string(Value& v, const std::string& pointer,
                     const std::function<void(Value&, const std::string&)>& visit) {
  if (v.IsString()) {
    visit(v, pointer);
  } else if (v.IsArray()) {
    for (rapidjson::SizeType i = 0; i < v.Size(); ++i)
      for_each_string(v[i], child(pointer, i), visit);
  } else if (v.IsObject()) {
    for (auto m = v.MemberBegin(); m != v.MemberEnd(); ++m)
      for_each_string(m->value, child(pointer, m->name.GetString()), visit);
  }
}

std::string string_or(const Value& obj, const char* key, const std::string& fallback) {
  auto it = obj.FindMember(key);
  return it != obj.MemberEnd() && it->value.IsString()
             ? std::string(it->value.GetString(), it->value.GetStringLength())
             : fallback;
}

double number_or(const Value& obj, const char* key, double fallback) {
  auto it = obj.FindMember(key);
  return it != obj.MemberEnd() && it->value.IsNumber() ? it->value.GetDouble() : fallback;
}

bool bool_or(const Value& obj, const char* key, bool fallback) {
  auto it = obj.FindMember(key);
  return it != obj.MemberEnd() && it->value.IsBool() ? it->value.GetBool() : fallback;
}

std::vector<std::string> strings_of(const Value& obj, const char* key) {
  std::vector<std::string> out;
  auto it = obj.FindMember(key);
  if (it != obj.MemberEnd() && it->value.IsArray())
    for (const auto& v : it->value.GetArray())
      if (v.IsString()) out.emplace_back(v.GetString(), v.GetStringLength());
  return out;
}

const char* type_name(const Value& v) {
  switch (v.GetType()) {
    case rapidjson::kNullType:
      return "null";
    case rapidjson::kFalseType:
    case rapidjson::kTrueType:
      return "boolean";
    case rapidjson::kObjectType:
      return "object";
    case rapidjson::kArrayType:
      return "array";
    case rapidjson::kStringType:
      return "string";
    case rapidjson::kNumberType:
      return v.IsDouble() ? "number" : "integer";
  }
  return "value";
}

}  // namespace kiln::json

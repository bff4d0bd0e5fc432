// SPDX-License-Identifier: MIT
// Packer 1.6.6 renders template strings with Go's text/template and its own
// function map; this file reproduces that behaviour without Go. The work is
// done in three passes over the string: a Lexer splits text from actions
// (applying the {{- and -}} trim markers as it goes), a Parser builds a
// small tree (text, actions, if/else/end), and a Renderer evaluates it.
//
// Where Go versions differ, newlines inside actions follow Go 1.16+ (they
// are spaces), because that is the more forgiving reading of a template.

#include "template_text.hpp"

#include <locale.h>
#include <wctype.h>

#include <array>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <system_error>
#include <utility>
#include <variant>

#include "digest.hpp"
#include "gotime.hpp"
#include "text.hpp"

namespace kiln::tmpl {
namespace {

// Bounds that keep hostile input (the module is fuzzed) cheap: nesting is
// recursive in the parser and renderer, and replace/replace_all can grow a
// value geometrically when nested.
constexpr int kMaxDepth = 100;
constexpr std::size_t kMaxValueBytes = std::size_t{8} << 20;
constexpr std::string_view kMaxValueText = "8 MiB";

constexpr char32_t kRuneError = 0xFFFD;
constexpr char32_t kMaxRune = 0x10FFFF;
constexpr std::string_view kRfc3339 = "2006-01-02T15:04:05Z07:00";

// ---------------------------------------------------------------------------
// UTF-8 and Go's string quoting.

struct Rune {
  char32_t value = 0;
  std::size_t size = 0;
};

// Decodes one rune at s[i] exactly as utf8.DecodeRuneInString does: an
// invalid or short sequence yields U+FFFD with size 1.
Rune decode_rune(std::string_view s, std::size_t i) {
  if (i >= s.size()) return {kRuneError, 0};
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c0 = byte(0);
  if (c0 < 0x80) return {c0, 1};
  unsigned char lo = 0x80;
  unsigned char hi = 0xBF;
  std::size_t len = 0;
  char32_t value = 0;
  if (c0 >= 0xC2 && c0 <= 0xDF) {
    len = 2;
    value = c0 & 0x1F;
  } else if (c0 >= 0xE0 && c0 <= 0xEF) {
    len = 3;
    value = c0 & 0x0F;
    if (c0 == 0xE0) lo = 0xA0;
    if (c0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (c0 >= 0xF0 && c0 <= 0xF4) {
    len = 4;
    value = c0 & 0x07;
    if (c0 == 0xF0) lo = 0x90;
    if (c0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return {kRuneError, 1};
  }
  if (s.size() - i < len) return {kRuneError, 1};
  if (byte(1) < lo || byte(1) > hi) return {kRuneError, 1};
  for (std::size_t k = 2; k < len; ++k)
    if ((byte(k) & 0xC0) != 0x80) return {kRuneError, 1};
  for (std::size_t k = 1; k < len; ++k) value = (value << 6) | (byte(k) & 0x3F);
  return {value, len};
}

bool valid_rune(std::int64_t r) { return r >= 0 && r <= kMaxRune && !(r >= 0xD800 && r <= 0xDFFF); }

void encode_rune(char32_t r, std::string& out) {
  if (!valid_rune(r)) r = kRuneError;
  if (r < 0x80) {
    out += static_cast<char>(r);
  } else if (r < 0x800) {
    out += static_cast<char>(0xC0 | (r >> 6));
    out += static_cast<char>(0x80 | (r & 0x3F));
  } else if (r < 0x10000) {
    out += static_cast<char>(0xE0 | (r >> 12));
    out += static_cast<char>(0x80 | ((r >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (r & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (r >> 18));
    out += static_cast<char>(0x80 | ((r >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((r >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (r & 0x3F));
  }
}

std::size_t rune_count(std::string_view s) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < s.size(); i += decode_rune(s, i).size) ++n;
  return n;
}

// Unicode case mapping and printability come from glibc's built-in C.UTF-8
// locale, used through its own handle so the process locale is untouched.
class UnicodeTables {
 public:
  UnicodeTables() : locale_(newlocale(LC_CTYPE_MASK, "C.UTF-8", locale_t{})) {}
  ~UnicodeTables() {
    if (locale_ != locale_t{}) freelocale(locale_);
  }
  UnicodeTables(const UnicodeTables&) = delete;
  UnicodeTables& operator=(const UnicodeTables&) = delete;

  char32_t upper(char32_t r) const {
    if (r < 0x80) return (r >= 'a' && r <= 'z') ? r - 32 : r;
    if (locale_ == locale_t{}) return r;
    return static_cast<char32_t>(towupper_l(static_cast<wint_t>(r), locale_));
  }
  char32_t lower(char32_t r) const {
    if (r < 0x80) return (r >= 'A' && r <= 'Z') ? r + 32 : r;
    if (locale_ == locale_t{}) return r;
    return static_cast<char32_t>(towlower_l(static_cast<wint_t>(r), locale_));
  }
  bool printable(char32_t r) const {
    if (r < 0x80) return r >= 0x20 && r < 0x7F;
    if (locale_ == locale_t{}) return true;
    return iswprint_l(static_cast<wint_t>(r), locale_) != 0;
  }
  bool letter(char32_t r) const {
    if (r < 0x80) return (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z');
    if (locale_ == locale_t{}) return false;
    return iswalpha_l(static_cast<wint_t>(r), locale_) != 0;
  }

 private:
  locale_t locale_;
};

const UnicodeTables& unicode() {
  static const UnicodeTables tables;
  return tables;
}

constexpr std::string_view kLowerHex = "0123456789abcdef";
constexpr std::string_view kUpperHex = "0123456789ABCDEF";

void append_hex(std::string& out, std::uint32_t v, int digits,
                std::string_view alphabet = kLowerHex) {
  for (int shift = (digits - 1) * 4; shift >= 0; shift -= 4) out += alphabet[(v >> shift) & 0xF];
}

void append_quoted_rune(std::string& out, char32_t r, char quote) {
  if (r == static_cast<char32_t>(quote) || r == '\\') {
    out += '\\';
    out += static_cast<char>(r);
    return;
  }
  if (unicode().printable(r)) {
    encode_rune(r, out);
    return;
  }
  switch (r) {
    case '\a':
      out += "\\a";
      return;
    case '\b':
      out += "\\b";
      return;
    case '\f':
      out += "\\f";
      return;
    case '\n':
      out += "\\n";
      return;
    case '\r':
      out += "\\r";
      return;
    case '\t':
      out += "\\t";
      return;
    case '\v':
      out += "\\v";
      return;
    default:
      break;
  }
  if (r < 0x20 || r == 0x7F) {
    out += "\\x";
    append_hex(out, r, 2);
  } else if (r < 0x10000) {
    out += "\\u";
    append_hex(out, r, 4);
  } else {
    out += "\\U";
    append_hex(out, r, 8);
  }
}

// strconv.Quote: what Go's %q prints, and how error messages show names.
std::string go_quote(std::string_view s) {
  std::string out = "\"";
  for (std::size_t i = 0; i < s.size();) {
    const Rune r = decode_rune(s, i);
    if (r.value == kRuneError && r.size == 1) {
      out += "\\x";
      append_hex(out, static_cast<unsigned char>(s[i]), 2);
    } else {
      append_quoted_rune(out, r.value, '"');
    }
    i += r.size;
  }
  out += '"';
  return out;
}

// strconv.QuoteRune, for %q of an integer.
std::string go_quote_rune(std::int64_t r) {
  std::string out = "'";
  append_quoted_rune(out, valid_rune(r) ? static_cast<char32_t>(r) : kRuneError, '\'');
  out += '\'';
  return out;
}

// ---------------------------------------------------------------------------
// Values: Go templates here only ever see strings, ints and bools.

using Value = std::variant<std::string, std::int64_t, bool>;

std::string_view type_name(const Value& v) {
  switch (v.index()) {
    case 0:
      return "string";
    case 1:
      return "int";
    default:
      return "bool";
  }
}

// fmt's %v.
std::string to_text(const Value& v) {
  if (const auto* s = std::get_if<std::string>(&v)) return *s;
  if (const auto* i = std::get_if<std::int64_t>(&v)) return std::to_string(*i);
  return std::get<bool>(v) ? "true" : "false";
}

// text/template's notion of truth: the zero value of a type is false.
bool truth(const Value& v) {
  if (const auto* s = std::get_if<std::string>(&v)) return !s->empty();
  if (const auto* i = std::get_if<std::int64_t>(&v)) return *i != 0;
  return std::get<bool>(v);
}

// ---------------------------------------------------------------------------
// The functions a template may call: Packer's map plus Go's builtins.

enum class Param : std::uint8_t { kString, kInt, kAny };

enum class Fn : std::uint8_t {
  kBuildName,
  kBuildType,
  kEnv,
  kIsotime,
  kStrftime,
  kPwd,
  kSplit,
  kTemplateDir,
  kTimestamp,
  kUuid,
  kUser,
  kPackerVersion,
  kReplace,
  kReplaceAll,
  kUpper,
  kLower,
  kSed,
  kNetwork,
  kAnd,
  kOr,
  kNot,
  kLen,
  kIndex,
  kPrint,
  kPrintf,
  kPrintln,
  kEq,
  kNe,
  kLt,
  kLe,
  kGt,
  kGe,
  kHtml,
  kJs,
  kUrlquery,
  kUnsupported,
};

struct FuncSpec {
  std::string_view name;
  Fn fn;
  std::uint8_t fixed;           // parameters before any variadic tail
  std::array<Param, 4> params;  // types of the fixed parameters
  bool variadic;
  Param rest;  // type of each variadic argument
};

constexpr Param kS = Param::kString;
constexpr Param kI = Param::kInt;
constexpr Param kA = Param::kAny;

constexpr std::array kFunctions = std::to_array<FuncSpec>({
    // Packer 1.6.6, template/interpolate/funcs.go.
    {"build_name", Fn::kBuildName, 0, {}, false, kA},
    {"build_type", Fn::kBuildType, 0, {}, false, kA},
    {"env", Fn::kEnv, 1, {kS}, false, kA},
    {"isotime", Fn::kIsotime, 0, {}, true, kS},
    {"strftime", Fn::kStrftime, 1, {kS}, false, kA},
    {"pwd", Fn::kPwd, 0, {}, false, kA},
    {"split", Fn::kSplit, 3, {kS, kS, kI}, false, kA},
    {"template_dir", Fn::kTemplateDir, 0, {}, false, kA},
    {"timestamp", Fn::kTimestamp, 0, {}, false, kA},
    {"uuid", Fn::kUuid, 0, {}, false, kA},
    {"user", Fn::kUser, 1, {kS}, false, kA},
    {"packer_version", Fn::kPackerVersion, 0, {}, false, kA},
    {"replace", Fn::kReplace, 4, {kS, kS, kI, kS}, false, kA},
    {"replace_all", Fn::kReplaceAll, 3, {kS, kS, kS}, false, kA},
    {"upper", Fn::kUpper, 1, {kS}, false, kA},
    {"lower", Fn::kLower, 1, {kS}, false, kA},
    {"sed", Fn::kSed, 0, {}, true, kA},
    {"consul_key", Fn::kNetwork, 0, {}, true, kA},
    {"vault", Fn::kNetwork, 0, {}, true, kA},
    {"aws_secretsmanager", Fn::kNetwork, 0, {}, true, kA},
    // Go 1.15 text/template builtins.
    {"and", Fn::kAnd, 1, {kA}, true, kA},
    {"or", Fn::kOr, 1, {kA}, true, kA},
    {"not", Fn::kNot, 1, {kA}, false, kA},
    {"len", Fn::kLen, 1, {kA}, false, kA},
    {"index", Fn::kIndex, 1, {kA}, true, kA},
    {"print", Fn::kPrint, 0, {}, true, kA},
    {"printf", Fn::kPrintf, 1, {kS}, true, kA},
    {"println", Fn::kPrintln, 0, {}, true, kA},
    {"eq", Fn::kEq, 1, {kA}, true, kA},
    {"ne", Fn::kNe, 2, {kA, kA}, false, kA},
    {"lt", Fn::kLt, 2, {kA, kA}, false, kA},
    {"le", Fn::kLe, 2, {kA, kA}, false, kA},
    {"gt", Fn::kGt, 2, {kA, kA}, false, kA},
    {"ge", Fn::kGe, 2, {kA, kA}, false, kA},
    {"html", Fn::kHtml, 0, {}, true, kA},
    {"js", Fn::kJs, 0, {}, true, kA},
    {"urlquery", Fn::kUrlquery, 0, {}, true, kA},
    {"call", Fn::kUnsupported, 0, {}, true, kA},
    {"slice", Fn::kUnsupported, 0, {}, true, kA},
});

const FuncSpec* find_function(std::string_view name) {
  for (const FuncSpec& f : kFunctions)
    if (f.name == name) return &f;
  return nullptr;
}

Param param_type(const FuncSpec& f, std::size_t i) { return i < f.fixed ? f.params[i] : f.rest; }

// ---------------------------------------------------------------------------
// Positions in messages.

std::string where(std::string_view src, std::size_t pos) {
  std::size_t line = 1;
  std::size_t line_start = 0;
  for (std::size_t i = 0; i < pos && i < src.size(); ++i) {
    if (src[i] == '\n') {
      ++line;
      line_start = i + 1;
    }
  }
  const std::string column = std::to_string(pos - line_start + 1);
  if (line == 1) return " at column " + column;
  return " at line " + std::to_string(line) + ", column " + column;
}

Error error_at(std::string_view src, std::size_t pos, const std::string& msg) {
  return Error(Exit::dataerr, msg + where(src, pos));
}

// ---------------------------------------------------------------------------
// Lexer.

enum class Tok : std::uint8_t {
  kText,
  kLeftDelim,
  kRightDelim,
  kSpace,
  kIdentifier,
  kKeyword,
  kField,
  kDot,
  kString,
  kRawString,
  kNumber,
  kChar,
  kBool,
  kPipe,
  kLeftParen,
  kRightParen,
  kVariable,
  kDeclare,
  kAssign,
  kOther,
  kEof,
};

struct Token {
  Tok kind = Tok::kEof;
  std::size_t pos = 0;  // first byte in the source
  std::size_t end = 0;  // one past the last byte; text tokens are trimmed
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

bool is_digit(char c) { return c >= '0' && c <= '9'; }

constexpr std::array<std::string_view, 11> kKeywords = {"if",   "else",   "end",      "range",
                                                        "with", "define", "template", "block",
                                                        "nil",  "break",  "continue"};

class Lexer {
 public:
  explicit Lexer(std::string_view src) : src_(src) {}

  Status run() {
    std::size_t pos = 0;
    bool trim_leading = false;
    while (true) {
      const std::size_t open = src_.find("{{", pos);
      std::size_t text_begin = pos;
      std::size_t text_end = open == std::string_view::npos ? src_.size() : open;
      if (trim_leading)
        while (text_begin < text_end && is_space(src_[text_begin])) ++text_begin;
      const bool trim_trailing = open != std::string_view::npos && left_trim_at(open + 2);
      if (trim_trailing)
        while (text_end > text_begin && is_space(src_[text_end - 1])) --text_end;
      if (text_end > text_begin) emit(Tok::kText, text_begin, text_end);
      if (open == std::string_view::npos) break;

      const std::size_t inner = open + 2 + (trim_trailing ? 2 : 0);
      if (src_.substr(inner).starts_with("/*")) {
        const std::size_t close = src_.find("*/", inner + 2);
        if (close == std::string_view::npos) return error_at(src_, open, "unclosed comment");
        const std::size_t after = close + 2;
        if (right_trim_at(after)) {
          trim_leading = true;
          pos = after + 4;
        } else if (src_.substr(after).starts_with("}}")) {
          trim_leading = false;
          pos = after + 2;
        } else {
          return error_at(src_, open, "comment ends before closing delimiter");
        }
        continue;
      }
      emit(Tok::kLeftDelim, open, inner);
      Status st = lex_action(open, inner, pos, trim_leading);
      if (!st) return st;
    }
    emit(Tok::kEof, src_.size(), src_.size());
    return {};
  }

  std::vector<Token>& tokens() { return tokens_; }

 private:
  void emit(Tok kind, std::size_t pos, std::size_t end) {
    tokens_.push_back(Token{kind, pos, end});
  }

  // "{{- " trims the text before it; the space is part of the marker, so
  // that "{{-3}}" stays the number -3.
  bool left_trim_at(std::size_t i) const {
    return i + 1 < src_.size() && src_[i] == '-' && is_space(src_[i + 1]);
  }
  bool right_trim_at(std::size_t i) const {
    return i + 4 <= src_.size() && is_space(src_[i]) && src_[i + 1] == '-' && src_[i + 2] == '}' &&
           src_[i + 3] == '}';
  }
  bool right_delim_at(std::size_t i) const { return src_.substr(i).starts_with("}}"); }

  // Letters (Unicode ones too), digits and '_', as Go's isAlphaNumeric.
  std::size_t alnum_size(std::size_t i) const {
    if (i >= src_.size()) return 0;
    const char c = src_[i];
    if (c == '_' || is_digit(c)) return 1;
    const Rune r = decode_rune(src_, i);
    if (r.value == kRuneError && r.size == 1) return 0;
    return unicode().letter(r.value) ? r.size : 0;
  }
  std::size_t scan_alnum(std::size_t i) const {
    while (std::size_t n = alnum_size(i)) i += n;
    return i;
  }

  // Whether an identifier or field may end here (Go's atTerminator).
  bool terminator_at(std::size_t i) const {
    if (i >= src_.size()) return true;
    switch (src_[i]) {
      case ' ':
      case '\t':
      case '\r':
      case '\n':
      case '.':
      case ',':
      case '|':
      case ':':
      case ')':
      case '(':
      case '}':
        return true;
      default:
        return false;
    }
  }

  std::string describe_char(std::size_t i) const {
    const Rune r = decode_rune(src_, i);
    std::string out = "U+";
    append_hex(out, r.value, r.value > 0xFFFF ? 6 : 4, kUpperHex);
    if (unicode().printable(r.value) && !(r.value == kRuneError && r.size == 1)) {
      out += " '";
      encode_rune(r.value, out);
      out += '\'';
    }
    return out;
  }

  // Scans a Go number literal the way text/template's lexer does; the
  // parser decides what it means.
  std::optional<std::size_t> scan_number(std::size_t i) const {
    const auto accept = [&](std::string_view set) {
      if (i < src_.size() && set.find(src_[i]) != std::string_view::npos) {
        ++i;
        return true;
      }
      return false;
    };
    const auto accept_run = [&](std::string_view set) {
      while (accept(set)) {
      }
    };
    accept("+-");
    std::string_view digits = "0123456789_";
    if (accept("0")) {
      if (accept("xX")) {
        digits = "0123456789abcdefABCDEF_";
      } else if (accept("oO")) {
        digits = "01234567_";
      } else if (accept("bB")) {
        digits = "01_";
      }
    }
    accept_run(digits);
    if (accept(".")) accept_run(digits);
    if (digits.size() == 11 && accept("eE")) {
      accept("+-");
      accept_run("0123456789_");
    }
    if (digits.size() == 23 && accept("pP")) {
      accept("+-");
      accept_run("0123456789_");
    }
    accept("i");
    if (alnum_size(i) > 0) return std::nullopt;
    return i;
  }

  Status lex_action(std::size_t open, std::size_t i, std::size_t& next, bool& trim_leading) {
    int depth = 0;
    const std::size_t n = src_.size();
    while (true) {
      const bool trim = right_trim_at(i);
      if (trim || right_delim_at(i)) {
        if (depth > 0) return error_at(src_, open, "unclosed left paren");
        const std::size_t end = i + (trim ? 4 : 2);
        emit(Tok::kRightDelim, i, end);
        next = end;
        trim_leading = trim;
        return {};
      }
      if (i >= n) return error_at(src_, open, "unclosed action \"{{\"");
      const char c = src_[i];
      const std::size_t start = i;
      if (is_space(c)) {
        while (i < n && is_space(src_[i]) && !right_trim_at(i)) ++i;
        // A lone space before "-}}" belongs to the trim marker.
        if (i == start) continue;
        emit(Tok::kSpace, start, i);
        continue;
      }
      switch (c) {
        case '|':
          emit(Tok::kPipe, i, i + 1);
          ++i;
          continue;
        case '(':
          if (++depth > kMaxDepth)
            return error_at(src_, open,
                            "parentheses nested more than " + std::to_string(kMaxDepth) + " deep");
          emit(Tok::kLeftParen, i, i + 1);
          ++i;
          continue;
        case ')':
          if (depth == 0) return error_at(src_, open, "unexpected right paren U+0029 ')'");
          --depth;
          emit(Tok::kRightParen, i, i + 1);
          ++i;
          continue;
        case '"':
        case '\'': {
          ++i;
          while (true) {
            if (i >= n || src_[i] == '\n')
              return error_at(
                  src_, open,
                  c == '"' ? "unterminated quoted string" : "unterminated character constant");
            const char d = src_[i++];
            if (d == c) break;
            if (d == '\\' && i < n && src_[i] != '\n') ++i;
          }
          emit(c == '"' ? Tok::kString : Tok::kChar, start, i);
          continue;
        }
        case '`': {
          const std::size_t close = src_.find('`', i + 1);
          if (close == std::string_view::npos)
            return error_at(src_, open, "unterminated raw quoted string");
          i = close + 1;
          emit(Tok::kRawString, start, i);
          continue;
        }
        case '$':
          i = scan_alnum(i + 1);
          if (!terminator_at(i)) return error_at(src_, open, "bad character " + describe_char(i));
          emit(Tok::kVariable, start, i);
          continue;
        case ':':
          if (i + 1 < n && src_[i + 1] == '=') {
            emit(Tok::kDeclare, i, i + 2);
            i += 2;
            continue;
          }
          return error_at(src_, open, "expected :=");
        case '=':
          emit(Tok::kAssign, i, i + 1);
          ++i;
          continue;
        case '.':
          if (i + 1 < n && is_digit(src_[i + 1])) break;  // a number
          if (terminator_at(i + 1)) {
            emit(Tok::kDot, i, i + 1);
            ++i;
            continue;
          }
          i = scan_alnum(i + 1);
          if (!terminator_at(i)) return error_at(src_, open, "bad character " + describe_char(i));
          emit(Tok::kField, start, i);
          continue;
        default:
          break;
      }
      if (c == '+' || c == '-' || c == '.' || is_digit(c)) {
        const auto end = scan_number(i);
        if (!end) {
          const std::size_t bad = scan_number_prefix_end(i);
          return error_at(src_, open, "bad number syntax: " + go_quote(src_.substr(i, bad - i)));
        }
        i = *end;
        emit(Tok::kNumber, start, i);
        continue;
      }
      if (alnum_size(i) > 0) {
        i = scan_alnum(i);
        if (!terminator_at(i)) return error_at(src_, open, "bad character " + describe_char(i));
        const std::string_view word = src_.substr(start, i - start);
        Tok kind = Tok::kIdentifier;
        if (word == "true" || word == "false") {
          kind = Tok::kBool;
        } else {
          for (std::string_view k : kKeywords)
            if (word == k) kind = Tok::kKeyword;
        }
        emit(kind, start, i);
        continue;
      }
      if (c > 0x20 && c < 0x7F) {
        emit(Tok::kOther, i, i + 1);
        ++i;
        continue;
      }
      return error_at(src_, open, "unrecognized character in action: " + describe_char(i));
    }
  }

  // For the message about a bad number: the literal up to and including the
  // offending character.
  std::size_t scan_number_prefix_end(std::size_t i) const {
    std::size_t j = i + 1;
    while (j < src_.size() &&
           (alnum_size(j) > 0 || src_[j] == '.' || src_[j] == '+' || src_[j] == '-'))
      j += std::max<std::size_t>(alnum_size(j), 1);
    return j;
  }

  std::string_view src_;
  std::vector<Token> tokens_;
};

// ---------------------------------------------------------------------------
// Literals, as strconv reads them.

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

struct Unquoted {
  char32_t value = 0;
  bool multibyte = false;  // a rune to encode, not a raw byte
};

// strconv.UnquoteChar: one character or escape of a quoted literal.
std::optional<Unquoted> unquote_char(std::string_view s, std::size_t& i, char quote) {
  if (i >= s.size()) return std::nullopt;
  const char c = s[i];
  if (c == quote) return std::nullopt;
  if (static_cast<unsigned char>(c) >= 0x80) {
    const Rune r = decode_rune(s, i);
    i += r.size;
    return Unquoted{r.value, true};
  }
  if (c != '\\') {
    ++i;
    return Unquoted{static_cast<unsigned char>(c), false};
  }
  if (i + 1 >= s.size()) return std::nullopt;
  const char e = s[i + 1];
  i += 2;
  switch (e) {
    case 'a':
      return Unquoted{'\a', false};
    case 'b':
      return Unquoted{'\b', false};
    case 'f':
      return Unquoted{'\f', false};
    case 'n':
      return Unquoted{'\n', false};
    case 'r':
      return Unquoted{'\r', false};
    case 't':
      return Unquoted{'\t', false};
    case 'v':
      return Unquoted{'\v', false};
    case '\\':
      return Unquoted{'\\', false};
    case '\'':
    case '"':
      if (e != quote) return std::nullopt;
      return Unquoted{static_cast<unsigned char>(e), false};
    case 'x':
    case 'u':
    case 'U': {
      const std::size_t digits = e == 'x' ? 2 : e == 'u' ? 4 : 8;
      if (s.size() - i < digits) return std::nullopt;
      std::uint32_t v = 0;
      for (std::size_t k = 0; k < digits; ++k) {
        const int h = hex_value(s[i + k]);
        if (h < 0) return std::nullopt;
        v = (v << 4) | static_cast<std::uint32_t>(h);
      }
      i += digits;
      if (e == 'x') return Unquoted{v, false};
      if (!valid_rune(v)) return std::nullopt;
      return Unquoted{v, true};
    }
    default:
      break;
  }
  if (e >= '0' && e <= '7') {
    if (s.size() - i < 2) return std::nullopt;
    std::uint32_t v = static_cast<std::uint32_t>(e - '0');
    for (std::size_t k = 0; k < 2; ++k) {
      const char d = s[i + k];
      if (d < '0' || d > '7') return std::nullopt;
      v = (v << 3) | static_cast<std::uint32_t>(d - '0');
    }
    i += 2;
    if (v > 255) return std::nullopt;
    return Unquoted{v, false};
  }
  return std::nullopt;
}

// strconv.Unquote of a double-quoted literal (quotes included).
std::optional<std::string> unquote_string(std::string_view lit) {
  const std::string_view body = lit.substr(1, lit.size() - 2);
  std::string out;
  out.reserve(body.size());
  for (std::size_t i = 0; i < body.size();) {
    const auto u = unquote_char(body, i, '"');
    if (!u) return std::nullopt;
    if (u->multibyte) {
      encode_rune(u->value, out);
    } else {
      out += static_cast<char>(u->value);
    }
  }
  return out;
}

// strconv.Unquote drops carriage returns from raw strings.
std::string unquote_raw(std::string_view lit) {
  std::string out;
  for (char c : lit.substr(1, lit.size() - 2))
    if (c != '\r') out += c;
  return out;
}

// strconv's underscoreOK: '_' only between digits or after a base prefix.
bool underscores_ok(std::string_view s) {
  char saw = '^';
  std::size_t i = 0;
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) s.remove_prefix(1);
  bool hex = false;
  const auto lower = [](char c) { return static_cast<char>(c | 0x20); };
  if (s.size() >= 2 && s[0] == '0' &&
      (lower(s[1]) == 'b' || lower(s[1]) == 'o' || lower(s[1]) == 'x')) {
    i = 2;
    saw = '0';
    hex = lower(s[1]) == 'x';
  }
  for (; i < s.size(); ++i) {
    const char c = s[i];
    if (is_digit(c) || (hex && lower(c) >= 'a' && lower(c) <= 'f')) {
      saw = '0';
      continue;
    }
    if (c == '_') {
      if (saw != '0') return false;
      saw = '_';
      continue;
    }
    if (saw == '_') return false;
    saw = '!';
  }
  return saw != '_';
}

enum class IntParse { kOk, kSyntax, kRange };

// strconv.ParseInt(s, 0, 64).
IntParse parse_go_int(std::string_view s, std::int64_t& out) {
  const std::string_view original = s;
  bool negative = false;
  if (!s.empty() && (s[0] == '+' || s[0] == '-')) {
    negative = s[0] == '-';
    s.remove_prefix(1);
  }
  if (s.empty()) return IntParse::kSyntax;
  unsigned base = 10;
  if (s[0] == '0') {
    const char p = s.size() >= 3 ? static_cast<char>(s[1] | 0x20) : '\0';
    if (p == 'b' || p == 'o' || p == 'x') {
      base = p == 'b' ? 2 : p == 'o' ? 8 : 16;
      s.remove_prefix(2);
    } else {
      base = 8;
      s.remove_prefix(1);
    }
  }
  std::uint64_t value = 0;
  bool underscores = false;
  constexpr std::uint64_t kLimit = std::uint64_t{1} << 63;
  bool overflow = false;
  for (char c : s) {
    if (c == '_') {
      underscores = true;
      continue;
    }
    const int d = hex_value(c);
    if (d < 0 || static_cast<unsigned>(d) >= base) return IntParse::kSyntax;
    if (value > (UINT64_MAX - static_cast<unsigned>(d)) / base) {
      overflow = true;
      continue;
    }
    value = value * base + static_cast<unsigned>(d);
  }
  if (underscores && !underscores_ok(original)) return IntParse::kSyntax;
  if (overflow || value > (negative ? kLimit : kLimit - 1)) return IntParse::kRange;
  out = negative ? static_cast<std::int64_t>(~value + 1) : static_cast<std::int64_t>(value);
  return IntParse::kOk;
}

// ---------------------------------------------------------------------------
// Parse tree.

struct Pipeline;

struct Operand {
  enum class Kind : std::uint8_t { kFunction, kField, kDot, kString, kInt, kBool, kPipeline };
  Kind kind = Kind::kString;
  std::string text;  // function name, field path ("A.B"), string value
  std::int64_t number = 0;
  bool boolean = false;
  const FuncSpec* func = nullptr;
  std::unique_ptr<Pipeline> pipeline;
};

struct Command {
  std::vector<Operand> args;
};

struct Pipeline {
  std::vector<Command> commands;
};

struct Span {
  std::size_t begin = 0;
  std::size_t end = 0;
};

struct IfBlock;

struct Item {
  enum class Kind : std::uint8_t { kText, kAction, kIf };
  Kind kind = Kind::kText;
  Span span;  // the text, or the whole action with its delimiters
  Pipeline pipeline;
  std::unique_ptr<IfBlock> block;
};

using List = std::vector<Item>;

struct IfBlock {
  Span open;  // {{if ...}}, or {{else if ...}} for a chained branch
  // For a chained branch: where "{{" or "{{- " ends and where "if" starts,
  // to copy it through as a plain {{if ...}} when it alone is deferred.
  bool chained = false;
  std::size_t delim_end = 0;
  std::size_t keyword = 0;
  Pipeline condition;
  List then_list;
  List else_list;  // for {{else if}}: one kIf item holding the rest
  bool else_if = false;
  Span else_span;  // {{else}}; empty when there is none
  Span end_span;   // {{end}}; empty (at its end) when a chained branch holds it
};

// ---------------------------------------------------------------------------
// Parser.

class Parser {
 public:
  Parser(std::string_view src, std::vector<Token>& tokens) : src_(src), tokens_(tokens) {}

  Result<List> run() {
    List list;
    Stop stop = Stop::kEof;
    Span span;
    if (!parse_list(list, 0, stop, span)) return std::move(*error_);
    if (stop != Stop::kEof) {
      action_ = span.begin;
      fail(stop == Stop::kElse ? "unexpected {{else}}" : "unexpected {{end}}");
      return std::move(*error_);
    }
    return list;
  }

 private:
  enum class Stop : std::uint8_t { kEof, kElse, kEnd };

  std::string_view view(const Token& t) const { return src_.substr(t.pos, t.end - t.pos); }

  // The token list always ends with kEof; reading never goes past it.
  const Token& peek() const { return tokens_[i_]; }
  const Token& next() {
    const Token& t = tokens_[i_];
    if (i_ + 1 < tokens_.size()) ++i_;
    return t;
  }
  const Token& peek_non_space() {
    while (peek().kind == Tok::kSpace) next();
    return peek();
  }
  const Token& next_non_space() {
    peek_non_space();
    return next();
  }

  bool fail(const std::string& msg) {
    if (!error_) error_ = error_at(src_, action_, msg);
    return false;
  }

  std::string describe(const Token& t) const {
    switch (t.kind) {
      case Tok::kRightDelim:
        return "\"}}\"";
      case Tok::kEof:
        return "end of text";
      default:
        break;
    }
    std::string_view v = view(t);
    if (v.size() > 40) v = v.substr(0, 40);
    return go_quote(v);
  }

  bool parse_list(List& out, int depth, Stop& stop, Span& stop_span) {
    while (true) {
      const Token& t = next();
      if (t.kind == Tok::kEof) {
        stop = Stop::kEof;
        return true;
      }
      if (t.kind == Tok::kText) {
        Item item;
        item.kind = Item::Kind::kText;
        item.span = {t.pos, t.end};
        out.push_back(std::move(item));
        continue;
      }
      // Only text and left delimiters appear between actions.
      const std::size_t open = t.pos;
      action_ = open;
      const Token& k = peek_non_space();
      if (k.kind == Tok::kKeyword) {
        const std::string_view word = view(k);
        if (word == "if") {
          next_non_space();
          Item item;
          item.kind = Item::Kind::kIf;
          item.block = std::make_unique<IfBlock>();
          if (!parse_if(*item.block, open, depth + 1)) return false;
          item.span = {open, item.block->end_span.end};
          out.push_back(std::move(item));
          continue;
        }
        if (word == "else") {
          else_delim_end_ = t.end;
          next_non_space();
          stop = Stop::kElse;
          stop_span = {open, open};
          return true;
        }
        if (word == "end") {
          next_non_space();
          if (!expect_close("end")) return false;
          stop = Stop::kEnd;
          stop_span = {open, last_close_};
          return true;
        }
        if (word != "nil") return fail("{{" + std::string(word) + "}} is not supported by kiln");
      }
      Item item;
      item.kind = Item::Kind::kAction;
      if (!parse_pipeline(item.pipeline, 0, Tok::kRightDelim, "command")) return false;
      item.span = {open, last_close_};
      out.push_back(std::move(item));
    }
  }

  bool expect_close(std::string_view context) {
    const Token& t = next_non_space();
    if (t.kind != Tok::kRightDelim)
      return fail("unexpected " + describe(t) + " in " + std::string(context));
    last_close_ = t.end;
    return true;
  }

  bool parse_if(IfBlock& b, std::size_t open, int depth) {
    if (depth > kMaxDepth)
      return fail("{{if}} nested more than " + std::to_string(kMaxDepth) + " deep");
    b.open.begin = open;
    if (!parse_pipeline(b.condition, 0, Tok::kRightDelim, "if")) return false;
    b.open.end = last_close_;
    Stop stop = Stop::kEof;
    Span span;
    if (!parse_list(b.then_list, depth, stop, span)) return false;
    if (stop == Stop::kEof) {
      action_ = open;
      return fail("missing {{end}} for {{if}}");
    }
    if (stop == Stop::kElse) {
      const Token& k = peek_non_space();
      if (k.kind == Tok::kKeyword && view(k) == "if") {
        // {{else if}} is an if nested in the else branch that shares the
        // outer {{end}}.
        const std::size_t keyword = k.pos;
        next_non_space();
        b.else_if = true;
        Item item;
        item.kind = Item::Kind::kIf;
        item.block = std::make_unique<IfBlock>();
        item.block->chained = true;
        item.block->delim_end = else_delim_end_;
        item.block->keyword = keyword;
        if (!parse_if(*item.block, span.begin, depth + 1)) return false;
        const std::size_t end = item.block->end_span.end;
        item.span = {span.begin, end};
        b.end_span = {end, end};
        b.else_list.push_back(std::move(item));
        return true;
      }
      if (!expect_close("else")) return false;
      b.else_span = {span.begin, last_close_};
      if (!parse_list(b.else_list, depth, stop, span)) return false;
      if (stop == Stop::kEof) {
        action_ = open;
        return fail("missing {{end}} for {{if}}");
      }
      if (stop == Stop::kElse) {
        action_ = span.begin;
        return fail("expected {{end}}; found {{else}}");
      }
    }
    b.end_span = span;
    return true;
  }

  bool parse_pipeline(Pipeline& p, int depth, Tok end, std::string_view context) {
    const Token& first = peek_non_space();
    if (first.kind == Tok::kVariable)
      return fail("template variables (" + describe(first) + ") are not supported by kiln");
    while (true) {
      Command cmd;
      if (!parse_command(cmd, depth)) return false;
      if (cmd.args.empty()) {
        return fail(p.commands.empty() ? "missing value for " + std::string(context)
                                       : std::string("missing command after \"|\""));
      }
      p.commands.push_back(std::move(cmd));
      const Token& t = next_non_space();
      if (t.kind == Tok::kPipe) continue;
      if (t.kind == end) {
        if (end == Tok::kRightDelim) last_close_ = t.end;
        break;
      }
      return fail("unexpected " + describe(t) + " in " + std::string(context));
    }
    // Only something that can take the piped value may follow a "|".
    for (std::size_t i = 1; i < p.commands.size(); ++i) {
      switch (p.commands[i].args.front().kind) {
        case Operand::Kind::kBool:
        case Operand::Kind::kDot:
        case Operand::Kind::kInt:
        case Operand::Kind::kString:
          return fail("non executable command in pipeline stage " + std::to_string(i + 1));
        default:
          break;
      }
    }
    return true;
  }

  bool parse_command(Command& cmd, int depth) {
    while (true) {
      const Token& t = peek_non_space();
      switch (t.kind) {
        case Tok::kPipe:
        case Tok::kRightDelim:
        case Tok::kRightParen:
        case Tok::kEof:
          return true;
        default:
          break;
      }
      Operand op;
      if (!parse_operand(op, depth)) return false;
      cmd.args.push_back(std::move(op));
      // Operands are separated by spaces: "upper(x)" or "\"a\"\"b\"" are not
      // two operands.
      switch (peek().kind) {
        case Tok::kSpace:
        case Tok::kPipe:
        case Tok::kRightDelim:
        case Tok::kRightParen:
          break;
        default:
          return fail("unexpected " + describe(peek()) + " in operand");
      }
    }
  }

  bool parse_operand(Operand& op, int depth) {
    const Token& t = next();
    const std::string_view text = view(t);
    using K = Operand::Kind;
    switch (t.kind) {
      case Tok::kIdentifier: {
        op.kind = K::kFunction;
        op.text = std::string(text);
        op.func = find_function(text);
        if (op.func == nullptr) return fail("function " + go_quote(text) + " not defined");
        if (op.func->fn == Fn::kSed)
          return fail(
              "template function sed is deprecated, use replace or "
              "replace_all instead");
        break;
      }
      case Tok::kDot:
        op.kind = K::kDot;
        break;
      case Tok::kField:
        op.kind = K::kField;
        op.text = std::string(text.substr(1));
        break;
      case Tok::kString: {
        auto s = unquote_string(text);
        if (!s) return fail("invalid syntax in string literal " + describe(t));
        op.kind = K::kString;
        op.text = std::move(*s);
        break;
      }
      case Tok::kRawString:
        op.kind = K::kString;
        op.text = unquote_raw(text);
        break;
      case Tok::kChar: {
        std::size_t i = 1;
        const auto u = unquote_char(text, i, '\'');
        if (!u || i + 1 != text.size())
          return fail("malformed character constant: " + std::string(text));
        op.kind = K::kInt;
        op.number = u->value;
        break;
      }
      case Tok::kNumber:
        op.kind = K::kInt;
        if (!parse_number(text, op.number)) return false;
        break;
      case Tok::kBool:
        op.kind = K::kBool;
        op.boolean = text == "true";
        break;
      case Tok::kLeftParen:
        op.kind = K::kPipeline;
        op.pipeline = std::make_unique<Pipeline>();
        if (!parse_pipeline(*op.pipeline, depth + 1, Tok::kRightParen, "parenthesized pipeline"))
          return false;
        break;
      case Tok::kVariable:
      case Tok::kDeclare:
      case Tok::kAssign:
        return fail("template variables (" + describe(t) + ") are not supported by kiln");
      case Tok::kKeyword:
        if (text == "nil") return fail("nil is not a command");
        return fail("unexpected " + describe(t) + " in operand");
      default:
        return fail("unexpected " + describe(t) + " in operand");
    }
    while (peek().kind == Tok::kField) {
      const Token& f = next();
      if (op.kind != K::kField)
        return fail("unexpected " + describe(f) + " after term (field access " +
                    "on a value is not supported by kiln)");
      op.text += view(f);
    }
    return true;
  }

  // Go's parse.NewNumber for the cases a template can use: integers in any
  // base, character constants, and floats with an integral value.
  bool parse_number(std::string_view text, std::int64_t& out) {
    switch (parse_go_int(text, out)) {
      case IntParse::kOk:
        return true;
      case IntParse::kRange:
        return fail("number " + std::string(text) + " is out of range");
      case IntParse::kSyntax:
        break;
    }
    const bool hex = text.find_first_of("xX") != std::string_view::npos;
    if (!hex && text.find_first_of(".eE") != std::string_view::npos && text.back() != 'i' &&
        underscores_ok(text)) {
      std::string digits;
      for (char c : text)
        if (c != '_' && c != '+') digits += c;
      double d = 0;
      const auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), d);
      if (!digits.empty() && ec == std::errc() && ptr == digits.data() + digits.size() &&
          std::isfinite(d)) {
        if (d == std::trunc(d) && d >= -9.2233720368547758e18 && d < 9.2233720368547758e18) {
          out = static_cast<std::int64_t>(d);
          return true;
        }
        return fail("floating-point number " + std::string(text) + " is not supported by kiln");
      }
    }
    return fail("illegal number syntax: " + go_quote(text));
  }

  std::string_view src_;
  std::vector<Token>& tokens_;
  std::size_t i_ = 0;
  std::size_t action_ = 0;
  std::size_t last_close_ = 0;
  std::size_t else_delim_end_ = 0;  // end of the "{{" or "{{- " of the last else
  std::optional<Error> error_;
};

// ---------------------------------------------------------------------------
// Packer's and Go's string functions.

// strings.Count, with Go's convention for an empty separator.
std::size_t go_count(std::string_view s, std::string_view sep) {
  if (sep.empty()) return rune_count(s) + 1;
  std::size_t n = 0;
  for (std::size_t i = s.find(sep); i != std::string_view::npos; i = s.find(sep, i + sep.size()))
    ++n;
  return n;
}

// strings.Replace(s, old, new, n); nullopt when the result would be longer
// than the value limit.
std::optional<std::string> go_replace(std::string_view s, std::string_view old,
                                      std::string_view repl, std::int64_t n) {
  if (old == repl || n == 0) return std::string(s);
  const std::size_t m = go_count(s, old);
  if (m == 0) return std::string(s);
  const std::size_t count =
      (n < 0 || static_cast<std::uint64_t>(n) > m) ? m : static_cast<std::size_t>(n);
  if (repl.size() > old.size() &&
      (repl.size() - old.size()) > (kMaxValueBytes - std::min(s.size(), kMaxValueBytes)) / count)
    return std::nullopt;
  std::string out;
  out.reserve(s.size() + count * repl.size());
  std::size_t start = 0;
  for (std::size_t k = 0; k < count; ++k) {
    std::size_t j = start;
    if (old.empty()) {
      if (k > 0) j += decode_rune(s, start).size;
    } else {
      j = s.find(old, start);
    }
    out.append(s.substr(start, j - start));
    out.append(repl);
    start = j + old.size();
  }
  out.append(s.substr(start));
  return out;
}

// Element i of strings.Split(s, sep), or nullopt with the element count.
std::optional<std::string> go_split_piece(std::string_view s, std::string_view sep, std::int64_t i,
                                          std::size_t& count) {
  if (sep.empty()) {
    // strings.Split explodes into runes; invalid bytes become U+FFFD except
    // in the last piece, which is the rest of the string as it is.
    count = rune_count(s);
    if (i < 0 || static_cast<std::uint64_t>(i) >= count) return std::nullopt;
    std::size_t pos = 0;
    for (std::int64_t k = 0; k < i; ++k) pos += decode_rune(s, pos).size;
    if (static_cast<std::size_t>(i) + 1 == count) return std::string(s.substr(pos));
    const Rune r = decode_rune(s, pos);
    if (r.value == kRuneError) {
      std::string out;
      encode_rune(kRuneError, out);
      return out;
    }
    return std::string(s.substr(pos, r.size));
  }
  count = go_count(s, sep) + 1;
  if (i < 0 || static_cast<std::uint64_t>(i) >= count) return std::nullopt;
  std::size_t start = 0;
  for (std::int64_t k = 0; k < i; ++k) start = s.find(sep, start) + sep.size();
  const std::size_t end = s.find(sep, start);
  return std::string(
      s.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
}

// strings.ToUpper / ToLower: ASCII fast path, else rune by rune, where an
// invalid byte becomes U+FFFD as strings.Map makes it.
std::string go_map_case(std::string_view s, bool to_upper) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    const Rune r = decode_rune(s, i);
    if (r.size == 1 && r.value < 0x80) {
      const char c = s[i];
      if (to_upper && c >= 'a' && c <= 'z') {
        out += static_cast<char>(c - 32);
      } else if (!to_upper && c >= 'A' && c <= 'Z') {
        out += static_cast<char>(c + 32);
      } else {
        out += c;
      }
    } else {
      encode_rune(to_upper ? unicode().upper(r.value) : unicode().lower(r.value), out);
    }
    i += r.size;
  }
  return out;
}

// fmt.Sprint: a space between operands when neither side is a string.
std::string go_sprint(std::span<const Value> args) {
  std::string out;
  bool prev_string = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const bool is_string = std::holds_alternative<std::string>(args[i]);
    if (i > 0 && !is_string && !prev_string) out += ' ';
    out += to_text(args[i]);
    prev_string = is_string;
  }
  return out;
}

std::string go_sprintln(std::span<const Value> args) {
  std::string out;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (i > 0) out += ' ';
    out += to_text(args[i]);
  }
  out += '\n';
  return out;
}

std::size_t total_size(std::span<const Value> args) {
  std::size_t n = 0;
  for (const Value& v : args) {
    const auto* s = std::get_if<std::string>(&v);
    n += s ? s->size() + 1 : 24;  // 24 covers any int or bool
  }
  return n;
}

struct Verb {
  bool minus = false;
  bool plus = false;
  bool sharp = false;
  bool space = false;
  bool zero = false;
  std::optional<std::size_t> width;
  std::optional<std::size_t> precision;
};

std::string integer_digits(std::int64_t v, unsigned base, bool upper) {
  const std::string_view alphabet = upper ? kUpperHex : kLowerHex;
  std::uint64_t u = v < 0 ? ~static_cast<std::uint64_t>(v) + 1 : static_cast<std::uint64_t>(v);
  std::string digits;
  do {
    digits += alphabet[u % base];
    u /= base;
  } while (u != 0);
  return {digits.rbegin(), digits.rend()};
}

// Pads to the width in runes, as fmt does; zeros go after a sign.
void pad(std::string& s, const Verb& v, bool numeric) {
  if (!v.width) return;
  const std::size_t runes = rune_count(s);
  if (runes >= *v.width) return;
  const std::size_t fill = *v.width - runes;
  if (v.minus) {
    s.append(fill, ' ');
  } else if (v.zero) {
    const std::size_t at =
        (numeric && !s.empty() && (s[0] == '-' || s[0] == '+' || s[0] == ' ')) ? 1 : 0;
    s.insert(at, fill, '0');
  } else {
    s.insert(0, fill, ' ');
  }
}

std::string format_integer(std::int64_t v, char32_t verb, const Verb& f) {
  unsigned base = 10;
  bool upper = false;
  std::string prefix;
  switch (verb) {
    case 'x':
      base = 16;
      if (f.sharp) prefix = "0x";
      break;
    case 'X':
      base = 16;
      upper = true;
      if (f.sharp) prefix = "0X";
      break;
    case 'o':
      base = 8;
      if (f.sharp) prefix = "0";
      break;
    case 'b':
      base = 2;
      break;
    default:
      break;
  }
  std::string digits = integer_digits(v, base, upper);
  if (f.precision && digits.size() < *f.precision)
    digits.insert(0, *f.precision - digits.size(), '0');
  std::string out;
  if (v < 0) {
    out += '-';
  } else if (f.plus) {
    out += '+';
  } else if (f.space) {
    out += ' ';
  }
  out += prefix;
  out += digits;
  Verb g = f;
  if (f.precision) g.zero = false;  // fmt ignores 0 when a precision is set
  pad(out, g, true);
  return out;
}

std::string bad_verb(char32_t verb, const Value& arg) {
  std::string out = "%!";
  encode_rune(verb, out);
  out += '(';
  out += type_name(arg);
  out += '=';
  out += to_text(arg);
  out += ')';
  return out;
}

std::string truncate_runes(std::string_view s, std::optional<std::size_t> n) {
  if (!n) return std::string(s);
  std::size_t pos = 0;
  for (std::size_t k = 0; k < *n && pos < s.size(); ++k) pos += decode_rune(s, pos).size;
  return std::string(s.substr(0, pos));
}

std::string hex_bytes(std::string_view s, bool upper) {
  std::string out;
  for (char c : s) append_hex(out, static_cast<unsigned char>(c), 2, upper ? kUpperHex : kLowerHex);
  return out;
}

// One verb of fmt.Sprintf applied to one argument.
std::string format_one(char32_t verb, const Verb& f, const Value& arg) {
  const auto* s = std::get_if<std::string>(&arg);
  const auto* i = std::get_if<std::int64_t>(&arg);
  const auto* b = std::get_if<bool>(&arg);
  std::string out;
  switch (verb) {
    case 'v':
      if (i) return format_integer(*i, 'd', f);
      out = (s && f.sharp) ? go_quote(*s) : to_text(arg);
      if (s && !f.sharp) out = truncate_runes(out, f.precision);
      break;
    case 's':
      if (!s) return bad_verb(verb, arg);
      out = truncate_runes(*s, f.precision);
      break;
    case 'q':
      if (s)
        out = go_quote(truncate_runes(*s, f.precision));
      else if (i)
        out = go_quote_rune(*i);
      else
        return bad_verb(verb, arg);
      break;
    case 'd':
    case 'o':
    case 'b':
      if (!i) return bad_verb(verb, arg);
      return format_integer(*i, verb, f);
    case 'x':
    case 'X':
      if (i) return format_integer(*i, verb, f);
      if (!s) return bad_verb(verb, arg);
      out = hex_bytes(truncate_runes(*s, f.precision), verb == 'X');
      break;
    case 't':
      if (!b) return bad_verb(verb, arg);
      out = to_text(arg);
      break;
    case 'c':
      if (!i) return bad_verb(verb, arg);
      encode_rune(valid_rune(*i) ? static_cast<char32_t>(*i) : kRuneError, out);
      break;
    default:
      return bad_verb(verb, arg);
  }
  pad(out, f, false);
  return out;
}

// fmt.Sprintf with the verbs templates use (%s %d %v %q %x %X %o %b %t %c
// %%), flags, width and precision; mistakes print as fmt prints them.
// Returns nullopt when the result would exceed the value limit.
std::optional<std::string> go_sprintf(std::string_view format, std::span<const Value> args) {
  constexpr std::size_t kMaxWidth = 1'000'000;  // fmt's own limit
  std::string out;
  std::size_t arg = 0;
  std::size_t i = 0;
  const auto number = [&](std::optional<std::size_t>& into, bool& bad) {
    std::size_t n = 0;
    bool any = false;
    while (i < format.size() && is_digit(format[i])) {
      n = n * 10 + static_cast<std::size_t>(format[i] - '0');
      if (n > kMaxWidth) {
        bad = true;
        n = kMaxWidth;
      }
      any = true;
      ++i;
    }
    if (any && !bad) into = n;
  };
  while (i < format.size()) {
    const std::size_t pct = format.find('%', i);
    if (pct == std::string_view::npos) {
      out.append(format.substr(i));
      break;
    }
    out.append(format.substr(i, pct - i));
    i = pct + 1;
    Verb f;
    for (; i < format.size(); ++i) {
      const char c = format[i];
      if (c == '-')
        f.minus = true;
      else if (c == '+')
        f.plus = true;
      else if (c == '#')
        f.sharp = true;
      else if (c == ' ')
        f.space = true;
      else if (c == '0')
        f.zero = !f.minus;
      else
        break;
    }
    bool bad_width = false;
    number(f.width, bad_width);
    if (bad_width) out += "%!(BADWIDTH)";
    if (i < format.size() && format[i] == '.') {
      ++i;
      bool bad_prec = false;
      number(f.precision, bad_prec);
      if (!f.precision && !bad_prec) f.precision = 0;
      if (bad_prec) out += "%!(BADPREC)";
    }
    if (i >= format.size()) {
      out += "%!(NOVERB)";
      break;
    }
    const Rune verb = decode_rune(format, i);
    i += verb.size;
    if (verb.value == '%') {
      out += '%';
      continue;
    }
    if (arg >= args.size()) {
      out += "%!";
      encode_rune(verb.value, out);
      out += "(MISSING)";
      continue;
    }
    out += format_one(verb.value, f, args[arg++]);
    if (out.size() > kMaxValueBytes) return std::nullopt;
  }
  if (arg < args.size()) {
    out += "%!(EXTRA ";
    for (std::size_t k = arg; k < args.size(); ++k) {
      if (k > arg) out += ", ";
      out += type_name(args[k]);
      out += '=';
      out += to_text(args[k]);
    }
    out += ')';
  }
  if (out.size() > kMaxValueBytes) return std::nullopt;
  return out;
}

// template.JSEscapeString.
std::string go_js_escape(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      switch (c) {
        case '\\':
          out += "\\\\";
          break;
        case '\'':
          out += "\\'";
          break;
        case '"':
          out += "\\\"";
          break;
        case '<':
          out += "\\u003C";
          break;
        case '>':
          out += "\\u003E";
          break;
        case '&':
          out += "\\u0026";
          break;
        case '=':
          out += "\\u003D";
          break;
        default:
          if (c < ' ') {
            out += "\\u00";
            append_hex(out, c, 2, kUpperHex);
          } else {
            out += static_cast<char>(c);
          }
      }
      ++i;
      continue;
    }
    const Rune r = decode_rune(s, i);
    if (unicode().printable(r.value)) {
      out.append(s.substr(i, r.size));
    } else {
      out += "\\u";
      append_hex(out, r.value, r.value > 0xFFFF ? 8 : 4, kUpperHex);
    }
    i += r.size;
  }
  return out;
}

// url.QueryEscape.
std::string go_query_escape(std::string_view s) {
  std::string out;
  for (char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(ch) || c == '-' || c == '_' ||
        c == '.' || c == '~') {
      out += ch;
    } else if (c == ' ') {
      out += '+';
    } else {
      out += '%';
      append_hex(out, c, 2, kUpperHex);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// Renderer.

class Renderer {
 public:
  Renderer(std::string_view src, const Context& ctx) : src_(src), ctx_(ctx) {}

  Result<std::string> run(const List& list) {
    std::string out;
    if (!render_list(list, out)) return std::move(*error_);
    return out;
  }

 private:
  // nullopt: evaluation stopped, either with error_ set or, when error_ is
  // empty, because the action refers to a field that is rendered later.
  using Eval = std::optional<Value>;

  std::string_view slice(Span s) const { return src_.substr(s.begin, s.end - s.begin); }

  Eval fail(const std::string& msg) {
    if (!error_) error_ = error_at(src_, action_, msg);
    return std::nullopt;
  }

  bool append(std::string& out, std::string_view piece) {
    if (piece.size() > kMaxValueBytes - std::min(out.size(), kMaxValueBytes)) {
      fail("the rendered text is longer than " + std::string(kMaxValueText));
      return false;
    }
    out.append(piece);
    return true;
  }

  bool render_list(const List& list, std::string& out) {
    for (const Item& item : list) {
      switch (item.kind) {
        case Item::Kind::kText:
          if (!append(out, slice(item.span))) return false;
          break;
        case Item::Kind::kAction: {
          action_ = item.span.begin;
          const Eval v = pipeline(item.pipeline);
          if (v) {
            if (!append(out, to_text(*v))) return false;
          } else if (error_) {
            return false;
          } else if (!append(out, slice(item.span))) {
            return false;
          }
          break;
        }
        case Item::Kind::kIf:
          if (!render_if(*item.block, false, out)) return false;
          break;
      }
    }
    return true;
  }

  // `keep` copies the if/else/end actions through for a later renderer
  // (their condition refers to a deferred field), rendering the branches.
  bool render_if(const IfBlock& b, bool keep, std::string& out) {
    if (!keep) {
      action_ = b.open.begin;
      const Eval v = pipeline(b.condition);
      if (v) return render_list(truth(*v) ? b.then_list : b.else_list, out);
      if (error_) return false;
      if (b.chained) {
        // The branches before this {{else if}} were decided and dropped,
        // so it has to stand on its own as an {{if}}.
        return append(out, slice({b.open.begin, b.delim_end})) &&
               append(out, slice({b.keyword, b.open.end})) && render_rest_of_if(b, out);
      }
    }
    if (!append(out, slice(b.open))) return false;
    return render_rest_of_if(b, out);
  }

  bool render_rest_of_if(const IfBlock& b, std::string& out) {
    if (!render_list(b.then_list, out)) return false;
    if (b.else_if) {
      if (!render_if(*b.else_list.front().block, true, out)) return false;
    } else if (b.else_span.end > b.else_span.begin) {
      if (!append(out, slice(b.else_span)) || !render_list(b.else_list, out)) return false;
    }
    return append(out, slice(b.end_span));
  }

  Eval pipeline(const Pipeline& p) {
    Eval prev;
    for (const Command& cmd : p.commands) {
      Eval v = command(cmd, prev ? &*prev : nullptr);
      if (!v) return v;
      prev = std::move(v);
    }
    return prev;
  }

  Eval command(const Command& cmd, const Value* final) {
    const Operand& head = cmd.args.front();
    if (head.kind == Operand::Kind::kFunction)
      return call(head, std::span(cmd.args).subspan(1), final);
    if (cmd.args.size() > 1 || final != nullptr)
      return fail("can't give argument to non-function " + describe(head));
    return operand(head);
  }

  static std::string describe(const Operand& op) {
    switch (op.kind) {
      case Operand::Kind::kField:
        return "." + op.text;
      case Operand::Kind::kDot:
        return ".";
      case Operand::Kind::kString:
        return go_quote(op.text);
      case Operand::Kind::kInt:
        return std::to_string(op.number);
      case Operand::Kind::kBool:
        return op.boolean ? "true" : "false";
      case Operand::Kind::kPipeline:
        return "(...)";
      case Operand::Kind::kFunction:
        return op.text;
    }
    return {};
  }

  Eval operand(const Operand& op) {
    switch (op.kind) {
      case Operand::Kind::kFunction:
        return call(op, {}, nullptr);
      case Operand::Kind::kField: {
        const auto it = ctx_.fields.find(op.text);
        if (it != ctx_.fields.end()) return Value(it->second);
        if (ctx_.defer_unknown_fields) return std::nullopt;
        return fail("can't evaluate field " + op.text + ": it is not available here");
      }
      case Operand::Kind::kDot:
        if (ctx_.defer_unknown_fields) return std::nullopt;
        return Value(std::string());
      case Operand::Kind::kString:
        return Value(op.text);
      case Operand::Kind::kInt:
        return Value(op.number);
      case Operand::Kind::kBool:
        return Value(op.boolean);
      case Operand::Kind::kPipeline:
        return pipeline(*op.pipeline);
    }
    return fail("internal error: unknown operand");
  }

  static bool matches(Param p, const Value& v) {
    switch (p) {
      case Param::kString:
        return std::holds_alternative<std::string>(v);
      case Param::kInt:
        return std::holds_alternative<std::int64_t>(v);
      case Param::kAny:
        return true;
    }
    return false;
  }

  static std::string_view param_name(Param p) {
    return p == Param::kString ? "string" : p == Param::kInt ? "int" : "any";
  }

  Eval call(const Operand& fn, std::span<const Operand> args, const Value* final) {
    const FuncSpec& f = *fn.func;
    const std::size_t got = args.size() + (final ? 1 : 0);
    const std::string name(f.name);
    if (!f.variadic && got != f.fixed)
      return fail("wrong number of args for " + name + ": want " + std::to_string(f.fixed) +
                  " got " + std::to_string(got));
    if (f.variadic && got < f.fixed)
      return fail("wrong number of args for " + name + ": want at least " +
                  std::to_string(f.fixed) + " got " + std::to_string(got));
    std::vector<Value> values;
    values.reserve(got);
    for (const Operand& a : args) {
      Eval v = operand(a);
      if (!v) return v;
      values.push_back(std::move(*v));
    }
    if (final) values.push_back(*final);
    for (std::size_t i = 0; i < values.size(); ++i) {
      const Param p = param_type(f, i);
      if (!matches(p, values[i]))
        return fail("wrong type for argument " + std::to_string(i + 1) + " of " + name +
                    ": expected " + std::string(param_name(p)) + "; got " +
                    std::string(type_name(values[i])));
    }
    Eval result = invoke(f, values);
    if (result) {
      if (const auto* s = std::get_if<std::string>(&*result); s && s->size() > kMaxValueBytes)
        return fail("the result of " + name + " is longer than " + std::string(kMaxValueText));
    }
    return result;
  }

  // A Go function that returned an error: text/template's wording.
  Eval call_error(const FuncSpec& f, const std::string& msg) {
    return fail("error calling " + std::string(f.name) + ": " + msg);
  }

  Eval too_long(const FuncSpec& f) {
    return fail("the result of " + std::string(f.name) + " is longer than " +
                std::string(kMaxValueText));
  }

  static const std::string& str(const Value& v) { return std::get<std::string>(v); }
  static std::int64_t num(const Value& v) { return std::get<std::int64_t>(v); }

  Eval invoke(const FuncSpec& f, std::vector<Value>& a) {
    switch (f.fn) {
      case Fn::kBuildName:
        if (ctx_.build_name.empty()) return call_error(f, "build_name not available");
        return Value(ctx_.build_name);
      case Fn::kBuildType:
        if (ctx_.build_type.empty()) return call_error(f, "build_type not available");
        return Value(ctx_.build_type);
      case Fn::kEnv: {
        if (!ctx_.env_allowed) return call_error(f, "env vars are not allowed here");
        const char* v = std::getenv(str(a[0]).c_str());
        return Value(std::string(v ? v : ""));
      }
      case Fn::kIsotime:
        if (a.size() > 1) {
          std::string list;
          for (const Value& v : a) list += (list.empty() ? "" : " ") + str(v);
          return call_error(f, "too many values, 1 needed: [" + list + "]");
        }
        return Value(
            gotime::format(ctx_.timestamp, 0, a.empty() ? kRfc3339 : std::string_view(str(a[0]))));
      case Fn::kStrftime:
        return Value(gotime::strftime(ctx_.timestamp, str(a[0])));
      case Fn::kPwd: {
        if (!ctx_.pwd.empty()) return Value(ctx_.pwd);
        std::error_code ec;
        const auto cwd = std::filesystem::current_path(ec);
        if (ec) return call_error(f, ec.message());
        return Value(cwd.string());
      }
      case Fn::kSplit: {
        const std::int64_t i = num(a[2]);
        std::size_t count = 0;
        auto piece = go_split_piece(str(a[0]), str(a[1]), i, count);
        if (piece) return Value(std::move(*piece));
        if (i < 0)
          return call_error(f, "runtime error: index out of range [" + std::to_string(i) + "]");
        return call_error(f, "the substring " + std::to_string(i) +
                                 " was unavailable using the separator value, " + str(a[1]) +
                                 ", only " + std::to_string(count) + " values were found");
      }
      case Fn::kTemplateDir:
        if (ctx_.template_dir.empty()) return call_error(f, "template path not available");
        return Value(ctx_.template_dir);
      case Fn::kTimestamp:
        return Value(std::to_string(ctx_.timestamp));
      case Fn::kUuid:
        return Value(digest::random_uuid());
      case Fn::kUser: {
        if (!ctx_.user) return call_error(f, "user variables are not available here");
        Result<std::string> r = ctx_.user(str(a[0]));
        if (!r) return call_error(f, r.error().message);
        return Value(std::move(r).value());
      }
      case Fn::kPackerVersion:
        // Like build_name, Packer has no version to give in variables.
        if (ctx_.packer_version.empty()) return call_error(f, "packer_version not available");
        return Value(ctx_.packer_version);
      case Fn::kReplace: {
        auto r = go_replace(str(a[3]), str(a[0]), str(a[1]), num(a[2]));
        if (!r) return too_long(f);
        return Value(std::move(*r));
      }
      case Fn::kReplaceAll: {
        auto r = go_replace(str(a[2]), str(a[0]), str(a[1]), -1);
        if (!r) return too_long(f);
        return Value(std::move(*r));
      }
      case Fn::kUpper:
        return Value(go_map_case(str(a[0]), true));
      case Fn::kLower:
        return Value(go_map_case(str(a[0]), false));
      case Fn::kSed:  // rejected by the parser; kept for completeness
        return fail(
            "template function sed is deprecated, use replace or "
            "replace_all instead");
      case Fn::kNetwork:
        return fail("function \"" + std::string(f.name) +
                    "\" is not supported by kiln (it needs a network service)");
      case Fn::kUnsupported:
        return fail("function \"" + std::string(f.name) + "\" is not supported by kiln");
      case Fn::kAnd:
      case Fn::kOr: {
        // Go 1.15 evaluates every argument, then picks one.
        std::size_t k = 0;
        while (k + 1 < a.size() && truth(a[k]) == (f.fn == Fn::kAnd)) ++k;
        return std::move(a[k]);
      }
      case Fn::kNot:
        return Value(!truth(a[0]));
      case Fn::kLen:
        if (const auto* s = std::get_if<std::string>(&a[0]))
          return Value(static_cast<std::int64_t>(s->size()));
        return call_error(f, "len of type " + std::string(type_name(a[0])));
      case Fn::kIndex: {
        Value item = a[0];
        for (std::size_t k = 1; k < a.size(); ++k) {
          const auto* s = std::get_if<std::string>(&item);
          if (!s) return call_error(f, "can't index item of type " + std::string(type_name(item)));
          const auto* x = std::get_if<std::int64_t>(&a[k]);
          if (!x)
            return call_error(f,
                              "cannot index slice/array with type " + std::string(type_name(a[k])));
          if (*x < 0 || static_cast<std::uint64_t>(*x) >= s->size())
            return call_error(f, "index out of range: " + std::to_string(*x));
          // Indexing a Go string yields a byte, which prints as a number.
          item = Value(static_cast<std::int64_t>(
              static_cast<unsigned char>((*s)[static_cast<std::size_t>(*x)])));
        }
        return item;
      }
      case Fn::kPrint:
      case Fn::kPrintln:
        if (total_size(a) > kMaxValueBytes) return too_long(f);
        return Value(f.fn == Fn::kPrint ? go_sprint(a) : go_sprintln(a));
      case Fn::kPrintf: {
        auto r = go_sprintf(str(a[0]), std::span(a).subspan(1));
        if (!r) return too_long(f);
        return Value(std::move(*r));
      }
      case Fn::kEq:
        if (a.size() == 1) return call_error(f, "missing argument for comparison");
        for (std::size_t k = 1; k < a.size(); ++k) {
          if (a[k].index() != a[0].index())
            return call_error(f, "incompatible types for comparison");
          if (a[k] == a[0]) return Value(true);
        }
        return Value(false);
      case Fn::kNe:
        if (a[1].index() != a[0].index()) return call_error(f, "incompatible types for comparison");
        return Value(a[0] != a[1]);
      case Fn::kLt:
      case Fn::kLe:
      case Fn::kGt:
      case Fn::kGe: {
        if (a[1].index() != a[0].index()) return call_error(f, "incompatible types for comparison");
        if (std::holds_alternative<bool>(a[0])) return call_error(f, "invalid type for comparison");
        const bool less = a[0] < a[1];
        const bool equal = a[0] == a[1];
        switch (f.fn) {
          case Fn::kLt:
            return Value(less);
          case Fn::kLe:
            return Value(less || equal);
          case Fn::kGt:
            return Value(!less && !equal);
          default:
            return Value(!less);
        }
      }
      case Fn::kHtml:
      case Fn::kJs:
      case Fn::kUrlquery: {
        if (total_size(a) > kMaxValueBytes) return too_long(f);
        const std::string s =
            (a.size() == 1 && std::holds_alternative<std::string>(a[0])) ? str(a[0]) : go_sprint(a);
        if (f.fn == Fn::kHtml) return Value(text::html_escape(s));
        if (f.fn == Fn::kJs) return Value(go_js_escape(s));
        return Value(go_query_escape(s));
      }
    }
    return fail("internal error: unknown function " + std::string(f.name));
  }

  std::string_view src_;
  const Context& ctx_;
  std::size_t action_ = 0;
  std::optional<Error> error_;
};

Result<List> parse(std::string_view text) {
  Lexer lexer(text);
  Status st = lexer.run();
  if (!st) return std::move(st).error();
  return Parser(text, lexer.tokens()).run();
}

Error internal_error(const char* what) {
  return Error(Exit::software, std::string("internal error in the template engine: ") + what);
}

}  // namespace

Result<std::string> render(std::string_view text, const Context& ctx) {
  try {
    Result<List> list = parse(text);
    if (!list) return std::move(list).error();
    return Renderer(text, ctx).run(*list);
  } catch (const std::exception& e) {
    return internal_error(e.what());
  } catch (...) {
    return internal_error("unknown exception");
  }
}

Status check_syntax(std::string_view text) {
  try {
    Result<List> list = parse(text);
    if (!list) return std::move(list).error();
    return {};
  } catch (const std::exception& e) {
    return internal_error(e.what());
  } catch (...) {
    return internal_error("unknown exception");
  }
}

bool has_actions(std::string_view text) { return text.find("{{") != std::string_view::npos; }

}  // namespace kiln::tmpl

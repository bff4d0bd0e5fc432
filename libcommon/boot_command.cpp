// SPDX-License-Identifier: MIT
#include "boot_command.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string_view>

#include "gotime.hpp"
#include "qmp.hpp"
#include "signals.hpp"

namespace kiln::boot_command {

namespace {

using namespace std::chrono_literals;
constexpr size_t npos = std::string_view::npos;

// Packer's special keys, in the order of its grammar's ordered choice (the
// first name that matches wins, so "f10" comes before "f1"), with the qcode
// each one means. Packer sends X keysyms over VNC; qemu's en-us keymap turns
// the Menu keysym into the PC "application" key, which is qcode "compose"
// (qcode "menu" is a different key that PC keyboards do not have).
struct Special {
  std::string_view name;  // lowercase
  std::string_view qcode;
};
constexpr std::array<Special, 39> kSpecials{{
    {"bs", "backspace"},
    {"del", "delete"},
    {"enter", "ret"},
    {"esc", "esc"},
    {"f10", "f10"},
    {"f11", "f11"},
    {"f12", "f12"},
    {"f1", "f1"},
    {"f2", "f2"},
    {"f3", "f3"},
    {"f4", "f4"},
    {"f5", "f5"},
    {"f6", "f6"},
    {"f7", "f7"},
    {"f8", "f8"},
    {"f9", "f9"},
    {"return", "ret"},
    {"tab", "tab"},
    {"up", "up"},
    {"down", "down"},
    {"spacebar", "spc"},
    {"insert", "insert"},
    {"home", "home"},
    {"end", "end"},
    {"pageup", "pgup"},
    {"pagedown", "pgdn"},
    {"leftalt", "alt"},
    {"leftctrl", "ctrl"},
    {"leftmeta", "meta_l"},
    {"leftshift", "shift"},
    {"rightalt", "alt_r"},
    {"rightctrl", "ctrl_r"},
    {"rightmeta", "meta_r"},
    {"rightshift", "shift_r"},
    {"leftsuper", "meta_l"},
    {"rightsuper", "meta_r"},
    {"left", "left"},
    {"right", "right"},
    {"menu", "compose"},
}};

// The unshifted US-layout key of each printable ASCII symbol, and the symbol
// typed with shift on the same key.
struct Symbol {
  char plain;
  char shifted;
  std::string_view qcode;
};
constexpr std::array<Symbol, 21> kSymbols{{
    {'1', '!', "1"},
    {'2', '@', "2"},
    {'3', '#', "3"},
    {'4', '$', "4"},
    {'5', '%', "5"},
    {'6', '^', "6"},
    {'7', '&', "7"},
    {'8', '*', "8"},
    {'9', '(', "9"},
    {'0', ')', "0"},
    {'-', '_', "minus"},
    {'=', '+', "equal"},
    {'[', '{', "bracket_left"},
    {']', '}', "bracket_right"},
    {'\\', '|', "backslash"},
    {';', ':', "semicolon"},
    {'\'', '"', "apostrophe"},
    {'`', '~', "grave_accent"},
    {',', '<', "comma"},
    {'.', '>', "dot"},
    {'/', '?', "slash"},
}};

/// The keys that type `c` on a US keyboard ({"shift", "a"} for 'A').
std::optional<std::vector<std::string>> keys_for(char32_t c) {
  if (c >= 'a' && c <= 'z') return std::vector<std::string>{std::string(1, static_cast<char>(c))};
  if (c >= 'A' && c <= 'Z')
    return std::vector<std::string>{"shift", std::string(1, static_cast<char>(c - 'A' + 'a'))};
  if (c == ' ') return std::vector<std::string>{"spc"};
  for (const Symbol& s : kSymbols) {
    if (c == static_cast<char32_t>(s.plain)) return std::vector<std::string>{std::string(s.qcode)};
    if (c == static_cast<char32_t>(s.shifted))
      return std::vector<std::string>{"shift", std::string(s.qcode)};
  }
  return std::nullopt;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool starts_with_nocase(std::string_view s, size_t at, std::string_view word) {
  if (s.size() - at < word.size()) return false;
  for (size_t k = 0; k < word.size(); ++k)
    if (lower(s[at + k]) != word[k]) return false;
  return true;
}

/// Decodes the UTF-8 character at `at`; an invalid byte is U+FFFD, 1 byte.
std::pair<char32_t, size_t> decode(std::string_view s, size_t at) {
  auto b = static_cast<unsigned char>(s[at]);
  if (b < 0x80) return {b, 1};
  size_t len = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 0;
  if (len == 0 || at + len > s.size() || b >= 0xF8) return {0xFFFD, 1};
  char32_t c = b & (0x3F >> (len - 1));
  for (size_t k = 1; k < len; ++k) {
    auto cont = static_cast<unsigned char>(s[at + k]);
    if ((cont & 0xC0) != 0x80) return {0xFFFD, 1};
    c = (c << 6) | (cont & 0x3F);
  }
  return {c, len};
}

std::string show_char(char32_t c, std::string_view raw) {
  if (c < 0x20 || c == 0x7F) {
    static const char* hex = "0123456789abcdef";
    std::string s = "\\x";
    s += hex[(c >> 4) & 0xF];
    s += hex[c & 0xF];
    return s;
  }
  return std::string(raw);
}

/// One parsed element of the text.
struct Token {
  enum class Kind { press, on, off, wait } kind;
  std::vector<std::string> keys;
  std::chrono::nanoseconds duration{0};
};

class Parser {
 public:
  explicit Parser(const std::vector<std::string>& entries) {
    for (const auto& e : entries) {
      starts_.push_back(text_.size());
      text_ += e;
    }
  }

  Result<std::vector<Step>> run() {
    std::string_view s = text_;
    size_t i = 0;
    while (i < s.size()) {
      size_t start = i;
      auto token = next(i);
      if (!token) return Error(token.error().code, where(start) + token.error().message);
      apply(*token);
    }
    for (Held& h : held_) {
      if (!h.used) {
        emit_press({});
        break;
      }
    }
    return std::move(steps_);
  }

 private:
  struct Held {
    std::vector<std::string> keys;
    bool used = false;
  };

  std::string where(size_t offset) const {
    size_t entry = 0;
    while (entry + 1 < starts_.size() && starts_[entry + 1] <= offset) ++entry;
    // The last entry starting at or before the offset: empty entries share
    // their start with the next one and never hold a character.
    size_t column = 1;
    for (size_t k = starts_[entry]; k < offset;) {
      k += decode(text_, k).second;
      ++column;
    }
    return "boot_command[" + std::to_string(entry) + "] column " + std::to_string(column) + ": ";
  }

  // Integer = '0' / [1-9][0-9]*
  size_t integer(size_t p) const {
    std::string_view s = text_;
    if (p >= s.size()) return npos;
    if (s[p] == '0') return p + 1;
    if (s[p] < '1' || s[p] > '9') return npos;
    ++p;
    while (p < s.size() && is_digit(s[p])) ++p;
    return p;
  }
  // Number = '-'? Integer ('.' [0-9]+)?
  size_t number(size_t p) const {
    std::string_view s = text_;
    if (p < s.size() && s[p] == '-') ++p;
    p = integer(p);
    if (p == npos) return npos;
    if (p + 1 < s.size() && s[p] == '.' && is_digit(s[p + 1])) {
      p += 2;
      while (p < s.size() && is_digit(s[p])) ++p;
    }
    return p;
  }
  size_t unit(size_t p) const {
    static constexpr std::array<std::string_view, 7> kUnits{"ns", "us", "\xC2\xB5s", "ms",
                                                            "s",  "m",  "h"};
    std::string_view rest = std::string_view(text_).substr(p);
    for (auto u : kUnits)
      if (rest.substr(0, u.size()) == u) return p + u.size();
    return npos;
  }

  /// "<wait>", "<wait5>", "<wait1m30s>"; nullopt when the text at `i` is
  /// not a wait (it is then typed).
  std::optional<Result<Token>> wait(size_t i, size_t& next_i) const {
    std::string_view s = text_;
    if (s.substr(i, 5) != "<wait") return std::nullopt;
    size_t j = i + 5;
    auto close = [&](size_t p) { return p < s.size() && s[p] == '>'; };
    auto make = [&](std::chrono::nanoseconds d, size_t end) -> Result<Token> {
      next_i = end + 1;
      if (d <= 0ns)
        return Error(Exit::dataerr, "a wait must be positive, got \"" +
                                        std::string(s.substr(i, end + 1 - i)) + "\"");
      return Token{Token::Kind::wait, {}, d};
    };
    // Duration = (Number TimeUnit)+
    size_t p = j;
    size_t duration_end = npos;
    for (;;) {
      size_t n = number(p);
      if (n == npos) break;
      size_t u = unit(n);
      if (u == npos) break;
      p = duration_end = u;
    }
    if (duration_end != npos) {
      if (!close(duration_end)) return std::nullopt;
      std::string_view text = s.substr(j, duration_end - j);
      double seconds = 0;
      if (!gotime::parse_duration(text, seconds)) {
        next_i = duration_end + 1;
        return Result<Token>(Error(Exit::dataerr, "invalid duration \"" + std::string(text) +
                                                      "\" in \"<wait" + std::string(text) + ">\""));
      }
      return make(std::chrono::nanoseconds(std::llround(seconds * 1e9)), duration_end);
    }
    // Integer: whole seconds.
    if (size_t n = integer(j); n != npos) {
      if (!close(n)) return std::nullopt;
      std::string_view digits = s.substr(j, n - j);
      // A Go duration holds at most 2^63-1 ns, about 9223372036 s.
      if (digits.size() > 10 || std::stoull(std::string(digits)) > 9223372036ULL) {
        next_i = n + 1;
        return Result<Token>(
            Error(Exit::dataerr, "wait of " + std::string(digits) + " seconds is too long"));
      }
      return make(std::chrono::seconds(std::stoll(std::string(digits))), n);
    }
    if (!close(j)) return std::nullopt;
    return make(1s, j);
  }

  /// "on"/"off" (any case) then '>' at `p`: the action, and where it ends.
  std::optional<std::pair<Token::Kind, size_t>> toggle(size_t p) const {
    std::string_view s = text_;
    if (starts_with_nocase(s, p, "on") && p + 2 < s.size() && s[p + 2] == '>')
      return std::pair{Token::Kind::on, p + 3};
    if (starts_with_nocase(s, p, "off") && p + 3 < s.size() && s[p + 3] == '>')
      return std::pair{Token::Kind::off, p + 4};
    return std::nullopt;
  }

  Result<std::vector<std::string>> char_keys(size_t at) const {
    auto [c, len] = decode(text_, at);
    auto keys = keys_for(c);
    if (!keys) {
      std::string shown = show_char(c, std::string_view(text_).substr(at, len));
      return Error(Exit::dataerr,
                   "cannot type '" + shown +
                       "': only printable ASCII has a key on a US keyboard (use <enter>, "
                       "<tab>... for the others)");
    }
    return *keys;
  }

  Result<Token> next(size_t& i) const {
    std::string_view s = text_;
    if (s[i] == '<') {
      // Wait / CharToggle / Special, in the grammar's order.
      size_t after = i;
      if (auto w = wait(i, after)) {
        i = after;
        return std::move(*w);
      }
      if (i + 1 < s.size()) {
        size_t len = decode(s, i + 1).second;
        if (auto t = toggle(i + 1 + len)) {
          auto keys = char_keys(i + 1);
          if (!keys) return keys.error();
          i = t->second;
          return Token{t->first, std::move(*keys), {}};
        }
      }
      for (const Special& sp : kSpecials) {
        if (!starts_with_nocase(s, i + 1, sp.name)) continue;
        size_t p = i + 1 + sp.name.size();
        std::vector<std::string> keys{std::string(sp.qcode)};
        if (p < s.size() && s[p] == '>') {
          i = p + 1;
          return Token{Token::Kind::press, std::move(keys), {}};
        }
        if (auto t = toggle(p)) {
          i = t->second;
          return Token{t->first, std::move(keys), {}};
        }
        break;  // the ordered choice is committed to this name
      }
    }
    auto keys = char_keys(i);
    if (!keys) return keys.error();
    i += decode(s, i).second;
    return Token{Token::Kind::press, std::move(*keys), {}};
  }

  void emit_press(const std::vector<std::string>& keys) {
    std::vector<std::string> all;
    auto add = [&](const std::string& k) {
      if (std::find(all.begin(), all.end(), k) == all.end()) all.push_back(k);
    };
    for (Held& h : held_) {
      for (const auto& k : h.keys) add(k);
      h.used = true;
    }
    for (const auto& k : keys) add(k);
    if (!all.empty()) steps_.push_back(Step::press(std::move(all)));
  }

  void apply(Token& t) {
    switch (t.kind) {
      case Token::Kind::press:
        emit_press(t.keys);
        break;
      case Token::Kind::wait:
        steps_.push_back(Step::wait(t.duration));
        break;
      case Token::Kind::on:
        held_.push_back({std::move(t.keys), false});
        break;
      case Token::Kind::off: {
        // Releases the latest hold of the same key; releasing a key that is
        // not held does nothing (as a key-up event would).
        auto it = std::find_if(held_.rbegin(), held_.rend(),
                               [&](const Held& h) { return h.keys.back() == t.keys.back(); });
        if (it == held_.rend()) break;
        if (!it->used) emit_press({});
        held_.erase(std::next(it).base());
        break;
      }
    }
  }

  std::string text_;
  std::vector<size_t> starts_;
  std::vector<Held> held_;
  std::vector<Step> steps_;
};

std::string format_duration(std::chrono::nanoseconds d) {
  auto ns = d.count();
  auto fmt = [](double v, const char* unit) {
    std::string s = std::to_string(v);
    s.erase(s.find_last_not_of('0') + 1);
    if (!s.empty() && s.back() == '.') s.pop_back();
    return s + unit;
  };
  if (ns % 1000000000 == 0) return std::to_string(ns / 1000000000) + "s";
  if (ns >= 1000000000) return fmt(static_cast<double>(ns) / 1e9, "s");
  if (ns % 1000000 == 0) return std::to_string(ns / 1000000) + "ms";
  return std::to_string(ns) + "ns";
}

}  // namespace

Result<std::vector<Step>> parse(const std::vector<std::string>& boot_command) {
  return Parser(boot_command).run();
}

std::string describe(const Step& step) {
  if (step.kind == Step::Kind::wait) return "<wait" + format_duration(step.duration) + ">";
  std::string s;
  for (const auto& k : step.keys) {
    if (!s.empty()) s += '+';
    s += k;
  }
  return s;
}

Status type(Qmp& qmp, const std::vector<Step>& steps, std::chrono::milliseconds key_interval,
            const std::function<Status()>& should_stop) {
  auto interrupted = [] {
    return Error(Exit::interrupted, "interrupted while typing the boot command");
  };
  // Sleeps in short slices so that a dead machine or a signal ends a long
  // <wait10m> promptly.
  auto pause = [&](std::chrono::nanoseconds d) -> Status {
    auto end = std::chrono::steady_clock::now() + d;
    for (;;) {
      auto left =
          std::chrono::ceil<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
      if (left <= 0ms) return {};
      if (!signals::sleep_for(std::min<std::chrono::milliseconds>(left, 200ms)))
        return interrupted();
      if (left > 200ms && should_stop) {
        if (auto st = should_stop(); !st) return st;
      }
    }
  };
  for (const Step& step : steps) {
    if (signals::interrupted()) return interrupted();
    if (should_stop) {
      if (auto st = should_stop(); !st) return st;
    }
    if (step.kind == Step::Kind::wait) {
      if (auto st = pause(step.duration); !st) return st;
      continue;
    }
    if (auto st = qmp.send_key(step.keys, key_interval); !st) {
      Error e = st.error();
      e.message = "typing " + describe(step) + ": " + e.message;
      return e;
    }
    if (auto st = pause(key_interval); !st) return st;
  }
  return {};
}

}  // namespace kiln::boot_command

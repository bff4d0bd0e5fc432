// SPDX-License-Identifier: MIT
#include "gotime.hpp"

#include <array>
#include <cstddef>

namespace kiln::gotime {
namespace {

constexpr std::int64_t kSecondsPerDay = 86400;
constexpr std::int64_t kNanosPerSecond = 1'000'000'000;

constexpr std::array<std::string_view, 7> kLongDayNames = {
    "Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"};
constexpr std::array<std::string_view, 12> kLongMonthNames = {
    "January", "February", "March",     "April",   "May",      "June",
    "July",    "August",   "September", "October", "November", "December"};

std::int64_t floor_div(std::int64_t a, std::int64_t b) {
  std::int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

std::int64_t floor_mod(std::int64_t a, std::int64_t b) {
  std::int64_t r = a % b;
  if (r != 0 && ((r < 0) != (b < 0))) r += b;
  return r;
}

/// A UTC instant broken down the way Go's time package sees it.
struct Civil {
  std::int64_t year = 0;
  int month = 1;    // 1..12
  int day = 1;      // 1..31
  int yday = 1;     // 1..366
  int weekday = 0;  // 0 = Sunday
  int hour = 0;
  int minute = 0;
  int second = 0;
  std::int32_t nanos = 0;
};

bool is_leap(std::int64_t y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

Civil to_civil(std::int64_t unix_seconds, std::int32_t nanos) {
  // Normalise out-of-range nanoseconds into the seconds, as time.Unix does.
  std::int64_t ns = nanos;
  if (ns < 0 || ns >= kNanosPerSecond) {
    std::int64_t carry = floor_div(ns, kNanosPerSecond);
    ns -= carry * kNanosPerSecond;
    // Saturate rather than overflow at the very ends of the int64 range.
    if (carry > 0 && unix_seconds > INT64_MAX - carry) {
      unix_seconds = INT64_MAX;
    } else if (carry < 0 && unix_seconds < INT64_MIN - carry) {
      unix_seconds = INT64_MIN;
    } else {
      unix_seconds += carry;
    }
  }
  Civil c;
  c.nanos = static_cast<std::int32_t>(ns);
  std::int64_t days = floor_div(unix_seconds, kSecondsPerDay);
  std::int64_t secs = floor_mod(unix_seconds, kSecondsPerDay);
  c.hour = static_cast<int>(secs / 3600);
  c.minute = static_cast<int>(secs % 3600 / 60);
  c.second = static_cast<int>(secs % 60);
  // 1970-01-01 was a Thursday.
  c.weekday = static_cast<int>(floor_mod(days + 4, 7));

  // Days to proleptic Gregorian date (H. Hinnant's civil_from_days); the
  // int64 range of days/86400 keeps every intermediate far from overflow.
  std::int64_t z = days + 719468;
  std::int64_t era = floor_div(z, 146097);
  std::int64_t doe = z - era * 146097;
  std::int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  std::int64_t y = yoe + era * 400;
  std::int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  std::int64_t mp = (5 * doy + 2) / 153;
  c.day = static_cast<int>(doy - (153 * mp + 2) / 5 + 1);
  c.month = static_cast<int>(mp < 10 ? mp + 3 : mp - 9);
  if (c.month <= 2) ++y;
  c.year = y;

  static constexpr std::array<int, 12> kDaysBefore = {0,   31,  59,  90,  120, 151,
                                                      181, 212, 243, 273, 304, 334};
  c.yday = kDaysBefore[static_cast<std::size_t>(c.month - 1)] + c.day;
  if (c.month > 2 && is_leap(c.year)) ++c.yday;
  return c;
}

/// Go's appendInt: optional '-', then the digits zero-padded to `width`.
void append_int(std::string& out, std::int64_t x, int width) {
  std::uint64_t u = static_cast<std::uint64_t>(x);
  if (x < 0) {
    out.push_back('-');
    u = ~u + 1;  // two's complement negation without signed overflow
  }
  char digits[24];
  int n = 0;
  do {
    digits[n++] = static_cast<char>('0' + u % 10);
    u /= 10;
  } while (u != 0);
  for (int pad = width - n; pad > 0; --pad) out.push_back('0');
  while (n > 0) out.push_back(digits[--n]);
}

// Layout elements, in the order Go's nextStdChunk recognises them.
enum class Std {
  kNone,
  kLongMonth,              // January
  kMonth,                  // Jan
  kNumMonth,               // 1
  kZeroMonth,              // 01
  kLongWeekDay,            // Monday
  kWeekDay,                // Mon
  kDay,                    // 2
  kUnderDay,               // _2
  kZeroDay,                // 02
  kUnderYearDay,           // __2
  kZeroYearDay,            // 002
  kHour,                   // 15
  kHour12,                 // 3
  kZeroHour12,             // 03
  kMinute,                 // 4
  kZeroMinute,             // 04
  kSecond,                 // 5
  kZeroSecond,             // 05
  kLongYear,               // 2006
  kYear,                   // 06
  kPM,                     // PM
  kpm,                     // pm
  kTZ,                     // MST
  kISO8601TZ,              // Z0700
  kISO8601SecondsTZ,       // Z070000
  kISO8601ShortTZ,         // Z07
  kISO8601ColonTZ,         // Z07:00
  kISO8601ColonSecondsTZ,  // Z07:00:00
  kNumTZ,                  // -0700
  kNumSecondsTZ,           // -070000
  kNumShortTZ,             // -07
  kNumColonTZ,             // -07:00
  kNumColonSecondsTZ,      // -07:00:00
  kFracSecond0,            // .000 or ,000
  kFracSecond9,            // .999 or ,999
};

struct Chunk {
  std::string_view prefix;
  Std std = Std::kNone;
  std::string_view suffix;
  int frac_digits = 0;  // for the fractional-second elements
  char frac_sep = '.';
};

bool starts_with_lower(std::string_view s) { return !s.empty() && s[0] >= 'a' && s[0] <= 'z'; }

bool is_digit_at(std::string_view s, std::size_t i) {
  return i < s.size() && s[i] >= '0' && s[i] <= '9';
}

/// Go's nextStdChunk: the text before the first layout element, the element
/// and the rest. Ported case by case so that ambiguous layouts ("Month",
/// "_2006", ".0001") split exactly as Go splits them.
Chunk next_std_chunk(std::string_view layout) {
  auto at = [&](std::size_t i, std::string_view word) {
    return layout.substr(i, word.size()) == word;
  };
  auto make = [&](std::size_t i, Std std, std::size_t len) {
    return Chunk{layout.substr(0, i), std, layout.substr(i + len)};
  };
  const std::size_t n = layout.size();
  for (std::size_t i = 0; i < n; ++i) {
    switch (layout[i]) {
      case 'J':
        if (at(i, "Jan")) {
          if (at(i, "January")) return make(i, Std::kLongMonth, 7);
          if (!starts_with_lower(layout.substr(i + 3))) {
            return make(i, Std::kMonth, 3);
          }
        }
        break;
      case 'M':
        if (i + 3 <= n) {
          if (at(i, "Mon")) {
            if (at(i, "Monday")) return make(i, Std::kLongWeekDay, 6);
            if (!starts_with_lower(layout.substr(i + 3))) {
              return make(i, Std::kWeekDay, 3);
            }
          }
          if (at(i, "MST")) return make(i, Std::kTZ, 3);
        }
        break;
      case '0':
        if (i + 2 <= n && layout[i + 1] >= '1' && layout[i + 1] <= '6') {
          static constexpr std::array<Std, 6> kStd0x = {Std::kZeroMonth,  Std::kZeroDay,
                                                        Std::kZeroHour12, Std::kZeroMinute,
                                                        Std::kZeroSecond, Std::kYear};
          return make(i, kStd0x[static_cast<std::size_t>(layout[i + 1] - '1')], 2);
        }
        if (at(i, "002")) return make(i, Std::kZeroYearDay, 3);
        break;
      case '1':
        if (at(i, "15")) return make(i, Std::kHour, 2);
        return make(i, Std::kNumMonth, 1);
      case '2':
        if (at(i, "2006")) return make(i, Std::kLongYear, 4);
        return make(i, Std::kDay, 1);
      case '_':
        if (i + 1 < n && layout[i + 1] == '2') {
          // "_2006" is a literal underscore followed by the long year.
          if (at(i + 1, "2006")) {
            return Chunk{layout.substr(0, i + 1), Std::kLongYear, layout.substr(i + 5)};
          }
          return make(i, Std::kUnderDay, 2);
        }
        if (at(i, "__2")) return make(i, Std::kUnderYearDay, 3);
        break;
      case '3':
        return make(i, Std::kHour12, 1);
      case '4':
        return make(i, Std::kMinute, 1);
      case '5':
        return make(i, Std::kSecond, 1);
      case 'P':
        if (at(i, "PM")) return make(i, Std::kPM, 2);
        break;
      case 'p':
        if (at(i, "pm")) return make(i, Std::kpm, 2);
        break;
      case '-':
        if (at(i, "-070000")) return make(i, Std::kNumSecondsTZ, 7);
        if (at(i, "-07:00:00")) return make(i, Std::kNumColonSecondsTZ, 9);
        if (at(i, "-0700")) return make(i, Std::kNumTZ, 5);
        if (at(i, "-07:00")) return make(i, Std::kNumColonTZ, 6);
        if (at(i, "-07")) return make(i, Std::kNumShortTZ, 3);
        break;
      case 'Z':
        if (at(i, "Z070000")) return make(i, Std::kISO8601SecondsTZ, 7);
        if (at(i, "Z07:00:00")) {
          return make(i, Std::kISO8601ColonSecondsTZ, 9);
        }
        if (at(i, "Z0700")) return make(i, Std::kISO8601TZ, 5);
        if (at(i, "Z07:00")) return make(i, Std::kISO8601ColonTZ, 6);
        if (at(i, "Z07")) return make(i, Std::kISO8601ShortTZ, 3);
        break;
      case '.':
      case ',':
        if (i + 1 < n && (layout[i + 1] == '0' || layout[i + 1] == '9')) {
          char ch = layout[i + 1];
          std::size_t j = i + 1;
          while (j < n && layout[j] == ch) ++j;
          // Only a run that ends the digits is a fractional second.
          if (!is_digit_at(layout, j)) {
            Chunk c{layout.substr(0, i), ch == '9' ? Std::kFracSecond9 : Std::kFracSecond0,
                    layout.substr(j)};
            // Go packs the count into 12 bits; mimic its wrap-around.
            c.frac_digits = static_cast<int>((j - (i + 1)) & 0xfff);
            c.frac_sep = layout[i];
            return c;
          }
        }
        break;
      default:
        break;
    }
  }
  return Chunk{layout, Std::kNone, {}};
}

void append_nanos(std::string& out, std::int32_t nanos, const Chunk& c) {
  bool trim = c.std == Std::kFracSecond9;
  int n = c.frac_digits;
  if (trim && (n == 0 || nanos == 0)) return;
  std::size_t dot = out.size();
  out.push_back(c.frac_sep);
  append_int(out, nanos, 9);
  if (n < 9) out.resize(out.size() - static_cast<std::size_t>(9 - n));
  if (trim) {
    while (out.size() > dot + 1 && out.back() == '0') out.pop_back();
    if (out.size() == dot + 1) out.pop_back();
  }
}

int hour12(int hour) {
  int hr = hour % 12;
  return hr == 0 ? 12 : hr;
}

}  // namespace

std::string format(std::int64_t unix_seconds, std::int32_t nanos, std::string_view layout) {
  const Civil t = to_civil(unix_seconds, nanos);
  std::string out;
  out.reserve(layout.size() + 10);
  while (!layout.empty()) {
    Chunk c = next_std_chunk(layout);
    out.append(c.prefix);
    if (c.std == Std::kNone) break;
    layout = c.suffix;
    switch (c.std) {
      case Std::kYear: {
        std::int64_t y = t.year < 0 ? -t.year : t.year;
        append_int(out, y % 100, 2);
        break;
      }
      case Std::kLongYear:
        append_int(out, t.year, 4);
        break;
      case Std::kMonth:
        out.append(kLongMonthNames[static_cast<std::size_t>(t.month - 1)].substr(0, 3));
        break;
      case Std::kLongMonth:
        out.append(kLongMonthNames[static_cast<std::size_t>(t.month - 1)]);
        break;
      case Std::kNumMonth:
        append_int(out, t.month, 0);
        break;
      case Std::kZeroMonth:
        append_int(out, t.month, 2);
        break;
      case Std::kWeekDay:
        out.append(kLongDayNames[static_cast<std::size_t>(t.weekday)].substr(0, 3));
        break;
      case Std::kLongWeekDay:
        out.append(kLongDayNames[static_cast<std::size_t>(t.weekday)]);
        break;
      case Std::kDay:
        append_int(out, t.day, 0);
        break;
      case Std::kUnderDay:
        if (t.day < 10) out.push_back(' ');
        append_int(out, t.day, 0);
        break;
      case Std::kZeroDay:
        append_int(out, t.day, 2);
        break;
      case Std::kUnderYearDay:
        if (t.yday < 100) {
          out.push_back(' ');
          if (t.yday < 10) out.push_back(' ');
        }
        append_int(out, t.yday, 0);
        break;
      case Std::kZeroYearDay:
        append_int(out, t.yday, 3);
        break;
      case Std::kHour:
        append_int(out, t.hour, 2);
        break;
      case Std::kHour12:
        append_int(out, hour12(t.hour), 0);
        break;
      case Std::kZeroHour12:
        append_int(out, hour12(t.hour), 2);
        break;
      case Std::kMinute:
        append_int(out, t.minute, 0);
        break;
      case Std::kZeroMinute:
        append_int(out, t.minute, 2);
        break;
      case Std::kSecond:
        append_int(out, t.second, 0);
        break;
      case Std::kZeroSecond:
        append_int(out, t.second, 2);
        break;
      case Std::kPM:
        out.append(t.hour >= 12 ? "PM" : "AM");
        break;
      case Std::kpm:
        out.append(t.hour >= 12 ? "pm" : "am");
        break;
      case Std::kISO8601TZ:
      case Std::kISO8601SecondsTZ:
      case Std::kISO8601ShortTZ:
      case Std::kISO8601ColonTZ:
      case Std::kISO8601ColonSecondsTZ:
        // The offset is always zero here, so every ISO 8601 form is "Z".
        out.push_back('Z');
        break;
      case Std::kNumTZ:
        out.append("+0000");
        break;
      case Std::kNumSecondsTZ:
        out.append("+000000");
        break;
      case Std::kNumShortTZ:
        out.append("+00");
        break;
      case Std::kNumColonTZ:
        out.append("+00:00");
        break;
      case Std::kNumColonSecondsTZ:
        out.append("+00:00:00");
        break;
      case Std::kTZ:
        out.append("UTC");
        break;
      case Std::kFracSecond0:
      case Std::kFracSecond9:
        append_nanos(out, t.nanos, c);
        break;
      case Std::kNone:
        break;
    }
  }
  return out;
}

std::string strftime(std::int64_t unix_seconds, std::string_view format_text) {
  // jehiah/go-strftime maps each conversion to a Go layout and formats it
  // with time.Format; unknown conversions are copied with their '%'.
  auto layout_for = [](char c) -> std::string_view {
    switch (c) {
      case 'B':
        return "January";
      case 'b':
        return "Jan";
      case 'm':
        return "01";
      case 'A':
        return "Monday";
      case 'a':
        return "Mon";
      case 'd':
        return "02";
      case 'H':
        return "15";
      case 'I':
        return "03";
      case 'M':
        return "04";
      case 'S':
        return "05";
      case 'Y':
        return "2006";
      case 'y':
        return "06";
      case 'p':
        return "PM";
      case 'Z':
        return "MST";
      case 'z':
        return "-0700";
      case 'L':
        return ".000";
      default:
        return {};
    }
  };
  std::string out;
  out.reserve(format_text.size());
  const std::size_t n = format_text.size();
  std::size_t i = 0;
  while (i < n) {
    std::size_t ni = format_text.find('%', i);
    if (ni == std::string_view::npos) ni = n;
    out.append(format_text.substr(i, ni - i));
    if (ni + 1 < n) {
      char c = format_text[ni + 1];
      if (c == '%') {
        out.push_back('%');
      } else if (std::string_view layout = layout_for(c); !layout.empty()) {
        out.append(format(unix_seconds, 0, layout));
      } else {
        out.push_back('%');
        out.push_back(c);
      }
    } else if (ni < n) {
      out.push_back('%');  // a lone trailing '%'
    }
    i = ni + 2;
  }
  return out;
}

bool parse_duration(std::string_view text, double& seconds) {
  // A port of time.ParseDuration: [-+]?([0-9]*(\.[0-9]*)?[a-z]+)+
  constexpr std::uint64_t kLimit = std::uint64_t{1} << 63;
  std::string_view s = text;
  bool neg = false;
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) {
    neg = s[0] == '-';
    s.remove_prefix(1);
  }
  if (s == "0") {
    seconds = 0;
    return true;
  }
  if (s.empty()) return false;
  auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
  std::uint64_t total = 0;
  while (!s.empty()) {
    if (!(s[0] == '.' || is_digit(s[0]))) return false;
    // Consume [0-9]*
    std::uint64_t v = 0;
    std::size_t i = 0;
    for (; i < s.size() && is_digit(s[i]); ++i) {
      if (v > kLimit / 10) return false;
      v = v * 10 + static_cast<std::uint64_t>(s[i] - '0');
      if (v > kLimit) return false;
    }
    bool pre = i != 0;
    s.remove_prefix(i);
    // Consume (\.[0-9]*)?
    std::uint64_t f = 0;
    double scale = 1;
    bool post = false;
    if (!s.empty() && s[0] == '.') {
      s.remove_prefix(1);
      bool overflow = false;
      std::size_t j = 0;
      for (; j < s.size() && is_digit(s[j]); ++j) {
        if (overflow) continue;
        if (f > (kLimit - 1) / 10) {
          overflow = true;
          continue;
        }
        std::uint64_t y = f * 10 + static_cast<std::uint64_t>(s[j] - '0');
        if (y > kLimit) {
          overflow = true;
          continue;
        }
        f = y;
        scale *= 10;
      }
      post = j != 0;
      s.remove_prefix(j);
    }
    if (!pre && !post) return false;
    // Consume the unit: everything up to the next number.
    std::size_t u = 0;
    while (u < s.size() && s[u] != '.' && !is_digit(s[u])) ++u;
    if (u == 0) return false;
    std::string_view unit_name = s.substr(0, u);
    s.remove_prefix(u);
    std::uint64_t unit = 0;
    if (unit_name == "ns") {
      unit = 1;
    } else if (unit_name == "us" || unit_name == "\xc2\xb5s" ||
               unit_name == "\xce\xbcs") {  // U+00B5 and U+03BC
      unit = 1'000;
    } else if (unit_name == "ms") {
      unit = 1'000'000;
    } else if (unit_name == "s") {
      unit = 1'000'000'000;
    } else if (unit_name == "m") {
      unit = 60'000'000'000;
    } else if (unit_name == "h") {
      unit = 3'600'000'000'000;
    } else {
      return false;
    }
    if (v > kLimit / unit) return false;
    v *= unit;
    if (f > 0) {
      // Go uses float64 here too, to stay nanosecond-exact for hours.
      v += static_cast<std::uint64_t>(static_cast<double>(f) * (static_cast<double>(unit) / scale));
      if (v > kLimit) return false;
    }
    total += v;
    if (total > kLimit) return false;
  }
  if (!neg && total > kLimit - 1) return false;
  double ns = static_cast<double>(total);
  seconds = (neg ? -ns : ns) / 1e9;
  return true;
}

}  // namespace kiln::gotime

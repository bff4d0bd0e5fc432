// SPDX-License-Identifier: MIT
#define BOOST_TEST_MODULE gotime
#include "gotime.hpp"

#include <boost/test/unit_test.hpp>
#include <string>

namespace gt = kiln::gotime;

namespace {

// Go's reference time, 2006-01-02T15:04:05-07:00, as a UTC instant:
// 2006-01-02T22:04:05Z, a Monday.
constexpr std::int64_t kReference = 1136239445;
// 2012-06-21T02:12:56Z, the instant go-strftime's own tests use.
constexpr std::int64_t kStrftimeExample = 1340244776;

std::string fmt(std::string_view layout, std::int32_t nanos = 0) {
  return gt::format(kReference, nanos, layout);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(go_format)

BOOST_AUTO_TEST_CASE(go_predefined_layouts) {
  BOOST_TEST(fmt("2006-01-02T15:04:05Z07:00") == "2006-01-02T22:04:05Z");
  BOOST_TEST(fmt("2006-01-02T15:04:05.999999999Z07:00", 120000000) == "2006-01-02T22:04:05.12Z");
  BOOST_TEST(fmt("Mon Jan _2 15:04:05 2006") == "Mon Jan  2 22:04:05 2006");
  BOOST_TEST(fmt("Mon Jan _2 15:04:05 MST 2006") == "Mon Jan  2 22:04:05 UTC 2006");
  BOOST_TEST(fmt("Mon Jan 02 15:04:05 -0700 2006") == "Mon Jan 02 22:04:05 +0000 2006");
  BOOST_TEST(fmt("02 Jan 06 15:04 MST") == "02 Jan 06 22:04 UTC");
  BOOST_TEST(fmt("02 Jan 06 15:04 -0700") == "02 Jan 06 22:04 +0000");
  BOOST_TEST(fmt("Monday, 02-Jan-06 15:04:05 MST") == "Monday, 02-Jan-06 22:04:05 UTC");
  BOOST_TEST(fmt("Mon, 02 Jan 2006 15:04:05 MST") == "Mon, 02 Jan 2006 22:04:05 UTC");
  BOOST_TEST(fmt("Mon, 02 Jan 2006 15:04:05 -0700") == "Mon, 02 Jan 2006 22:04:05 +0000");
  BOOST_TEST(fmt("3:04PM") == "10:04PM");
  BOOST_TEST(fmt("01/02 03:04:05PM '06 -0700") == "01/02 10:04:05PM '06 +0000");
  BOOST_TEST(fmt("Jan _2 15:04:05.000000", 123456789) == "Jan  2 22:04:05.123456");
  BOOST_TEST(fmt("2006-01-02 15:04:05") == "2006-01-02 22:04:05");
}

BOOST_AUTO_TEST_CASE(every_element) {
  BOOST_TEST(fmt("January Jan 1 01") == "January Jan 1 01");
  BOOST_TEST(fmt("Monday Mon") == "Monday Mon");
  BOOST_TEST(fmt("2 _2 02") == "2  2 02");
  BOOST_TEST(fmt("__2 002") == "  2 002");
  BOOST_TEST(fmt("15 3 03") == "22 10 10");
  BOOST_TEST(fmt("4 04 5 05") == "4 04 5 05");
  BOOST_TEST(fmt("2006 06") == "2006 06");
  BOOST_TEST(fmt("PM pm") == "PM pm");
  BOOST_TEST(fmt("MST") == "UTC");
}

BOOST_AUTO_TEST_CASE(zones_in_utc) {
  BOOST_TEST(fmt("Z07:00|Z0700|Z07|Z070000|Z07:00:00") == "Z|Z|Z|Z|Z");
  BOOST_TEST(fmt("-07:00|-0700|-07|-070000|-07:00:00") == "+00:00|+0000|+00|+000000|+00:00:00");
}

BOOST_AUTO_TEST_CASE(fractional_seconds) {
  BOOST_TEST(fmt("05.000", 123456789) == "05.123");
  BOOST_TEST(fmt("05,000", 123456789) == "05,123");
  BOOST_TEST(fmt("05.000000000", 123456789) == "05.123456789");
  BOOST_TEST(fmt("05.999", 100000000) == "05.1");
  BOOST_TEST(fmt("05,999", 100000000) == "05,1");
  BOOST_TEST(fmt("05.999", 0) == "05");
  BOOST_TEST(fmt("05.000", 0) == "05.000");
  BOOST_TEST(fmt("05.999999999", 1) == "05.000000001");
  // More than nine digits still prints nanoseconds only.
  BOOST_TEST(fmt("05.0000000000", 5) == "05.000000005");
  // A run followed by another digit is not a fractional second: ".0001"
  // is ".00" and the month "01", ".0002" is ".0" and the year day "002".
  BOOST_TEST(gt::format(kStrftimeExample, 0, ".0001") == ".0006");
  BOOST_TEST(gt::format(kStrftimeExample, 0, ".0002") == ".0173");
}

BOOST_AUTO_TEST_CASE(ambiguous_layouts_split_like_go) {
  BOOST_TEST(fmt("Month") == "Month");  // "Mon" before a lower-case letter
  BOOST_TEST(fmt("Janet") == "Janet");
  BOOST_TEST(fmt("MonJan") == "MonJan");  // both stand alone here
  BOOST_TEST(fmt("_2006") == "_2006");    // literal '_' then the year
  BOOST_TEST(fmt("1502") == "2202");      // "15" then "02"
  BOOST_TEST(fmt("123") == "1210");       // month, day, 12-hour
  BOOST_TEST(fmt("no layout here") == "no layout here");
  BOOST_TEST(fmt("") == "");
}

BOOST_AUTO_TEST_CASE(calendar_edges) {
  BOOST_TEST(gt::format(0, 0, "2006-01-02 15:04:05 Monday") == "1970-01-01 00:00:00 Thursday");
  BOOST_TEST(gt::format(-1, 0, "2006-01-02 15:04:05 Mon") == "1969-12-31 23:59:59 Wed");
  BOOST_TEST(gt::format(951782400, 0, "2006-01-02 Mon 002") == "2000-02-29 Tue 060");
  BOOST_TEST(gt::format(978220800, 0, "2006-01-02 002 __2") == "2000-12-31 366 366");
  BOOST_TEST(gt::format(-62135596800, 0, "2006-01-02 Monday") == "0001-01-01 Monday");
  BOOST_TEST(gt::format(-62167219200, 0, "2006-01-02 002") == "0000-01-01 001");
  BOOST_TEST(gt::format(-62198755200, 0, "2006-01-02 06") == "-0001-01-01 01");
  BOOST_TEST(gt::format(253402300799, 0, "2006-01-02T15:04:05") == "9999-12-31T23:59:59");
  BOOST_TEST(gt::format(253402300800, 0, "2006") == "10000");
  BOOST_TEST(gt::format(43200, 0, "3PM 03pm") == "12PM 12pm");
  BOOST_TEST(gt::format(0, 0, "3PM") == "12AM");
}

BOOST_AUTO_TEST_CASE(nanoseconds_out_of_range_carry_into_seconds) {
  BOOST_TEST(gt::format(0, 1'500'000'000, "15:04:05.000") == "00:00:01.500");
  BOOST_TEST(gt::format(0, -1, "2006 15:04:05.000000000") == "1969 23:59:59.999999999");
}

BOOST_AUTO_TEST_CASE(extreme_instants_do_not_crash) {
  BOOST_TEST(!gt::format(INT64_MAX, 999999999, "2006 002 Mon").empty());
  BOOST_TEST(!gt::format(INT64_MIN, -999999999, "2006 002 Mon").empty());
  BOOST_TEST(!gt::format(INT64_MAX, INT32_MAX, "2006").empty());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(go_strftime)

BOOST_AUTO_TEST_CASE(go_strftime_examples) {
  BOOST_TEST(gt::strftime(kStrftimeExample, "%Y-%m-%d %H:%M:%S") == "2012-06-21 02:12:56");
  BOOST_TEST(gt::strftime(kStrftimeExample, "aaabbb0123456789%Y") == "aaabbb01234567892012");
  BOOST_TEST(gt::strftime(kStrftimeExample, "%0%1%%%2") == "%0%1%%2");
  BOOST_TEST(gt::strftime(kStrftimeExample, "%H:%M:%S%L") == "02:12:56.000");
}

BOOST_AUTO_TEST_CASE(every_conversion) {
  BOOST_TEST(gt::strftime(kReference, "%A %a %B %b %d %H %I %M %S %m") ==
             "Monday Mon January Jan 02 22 10 04 05 01");
  BOOST_TEST(gt::strftime(kReference, "%Y %y %p %Z %z") == "2006 06 PM UTC +0000");
}

BOOST_AUTO_TEST_CASE(literals_and_unknown_conversions) {
  // Text outside conversions is not a Go layout: "2006" stays "2006".
  BOOST_TEST(gt::strftime(kReference, "2006 Jan %j %e") == "2006 Jan %j %e");
  BOOST_TEST(gt::strftime(kReference, "100%") == "100%");
  BOOST_TEST(gt::strftime(kReference, "%") == "%");
  BOOST_TEST(gt::strftime(kReference, "%%Y") == "%Y");
  BOOST_TEST(gt::strftime(kReference, "") == "");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(go_parse_duration)

BOOST_AUTO_TEST_CASE(accepts_go_durations) {
  struct Case {
    const char* text;
    double seconds;
  };
  const Case cases[] = {
      {"0", 0},
      {"+0", 0},
      {"-0", 0},
      {"5s", 5},
      {"30s", 30},
      {"1478s", 1478},
      {"-5s", -5},
      {"+5s", 5},
      {"-0s", 0},
      {"5.0s", 5},
      {"5.6s", 5.6},
      {"5.s", 5},
      {".5s", 0.5},
      {"1.0s", 1},
      {"1.00s", 1},
      {"1.004s", 1.004},
      {"100.00100s", 100.001},
      {"10ns", 1e-8},
      {"11us", 11e-6},
      {"12\xc2\xb5s", 12e-6},
      {"12\xce\xbcs", 12e-6},
      {"13ms", 0.013},
      {"14s", 14},
      {"15m", 900},
      {"16h", 57600},
      {"3h30m", 12600},
      {"10.5s4m", 250.5},
      {"-2m3.4s", -123.4},
      {"1h2m3s4ms5us6ns", 3723.004005006},
      {"39h9m14.425s", 140954.425},
      {"1h2m3.5s", 3723.5},
      {"300ms", 0.3},
      {"-1.5h", -5400},
      {"9223372036854775807ns", 9223372036.854775807},
      {"-9223372036854775808ns", -9223372036.854775808},
  };
  for (const Case& c : cases) {
    double got = -12345;
    BOOST_TEST_CONTEXT(c.text) {
      BOOST_TEST(gt::parse_duration(c.text, got));
      BOOST_TEST(got == c.seconds, boost::test_tools::tolerance(1e-12));
    }
  }
}

BOOST_AUTO_TEST_CASE(rejects_what_go_rejects) {
  const char* cases[] = {
      "",
      "3",
      "-",
      "s",
      ".",
      "-.",
      ".s",
      "+.s",
      "1d",
      "1x",
      "1h1",
      "1e3s",
      " 1s",
      "1s ",
      "1 s",
      "--1s",
      "1.5.5s",
      "\xc2\xb5s",
      "9223372036854775808ns",
      "3000000h",
      "9223372036854775807ns1ns",
  };
  for (const char* text : cases) {
    double got = 42;
    BOOST_TEST_CONTEXT('"' << text << '"') {
      BOOST_TEST(!gt::parse_duration(text, got));
      BOOST_TEST(got == 42);
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

#define BOOST_TEST_MODULE log
#include "log.hpp"

#include <boost/test/unit_test.hpp>
#include <cstdio>
#include <string>

#include "json.hpp"

using namespace kiln;

namespace {
std::string capture(const std::function<void(log::Logger&)>& f, log::Format fmt,
                    int verbosity = 0) {
  std::FILE* tmp = std::tmpfile();
  {
    log::Logger l("prov", fmt, verbosity, false, tmp);
    f(l);
  }
  std::rewind(tmp);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, tmp)) > 0) out.append(buf, n);
  std::fclose(tmp);
  return out;
}
}  // namespace

BOOST_AUTO_TEST_CASE(redacts_longest_secret_first) {
  std::vector<std::string> s = {"pass", "password1"};
  BOOST_TEST(log::redact("x password1 pass", s) == "x <sensitive> <sensitive>");
}

BOOST_AUTO_TEST_CASE(human_lines_have_tool_level_and_build) {
  auto out = capture(
      [](log::Logger& l) {
        l.set_build("web");
        l.add_secret("hunter2");
        l.error("login with hunter2 failed");
      },
      log::Format::human);
  BOOST_TEST(out == "prov: error: build 'web': login with <sensitive> failed\n");
}

BOOST_AUTO_TEST_CASE(json_events_are_one_object_per_line) {
  auto out = capture(
      [](log::Logger& l) {
        l.add_secret("s3cret");
        l.warning("w", {{"key", "s3cret"}});
        l.info("i");
      },
      log::Format::json);
  auto nl = out.find('\n');
  BOOST_REQUIRE(nl != std::string::npos);
  json::Document d;
  BOOST_REQUIRE(json::parse(out.substr(0, nl), d).ok());
  BOOST_TEST(std::string(d["tool"].GetString()) == "prov");
  BOOST_TEST(std::string(d["level"].GetString()) == "warning");
  BOOST_TEST(d["build"].IsNull());
  BOOST_TEST(std::string(d["fields"]["key"].GetString()) == "<sensitive>");
  BOOST_TEST(d.HasMember("time"));
}

BOOST_AUTO_TEST_CASE(quiet_and_verbose) {
  auto quiet = capture(
      [](log::Logger& l) {
        l.info("i");
        l.warning("w");
        l.error("e");
      },
      log::Format::human, -1);
  BOOST_TEST(quiet == "prov: error: e\n");
  auto normal = capture([](log::Logger& l) { l.debug("d"); }, log::Format::human, 0);
  BOOST_TEST(normal.empty());
  auto verbose = capture([](log::Logger& l) { l.debug("d"); }, log::Format::human, 1);
  BOOST_TEST(verbose == "prov: debug: d\n");
}

BOOST_AUTO_TEST_CASE(describe_names_place) {
  Error e(Exit::dataerr, "bad", Location{"t.json", 3, 7, "/a"});
  BOOST_TEST(log::describe(e) == "t.json:3:7: bad");
}

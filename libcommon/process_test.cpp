#define BOOST_TEST_MODULE process
#include "process.hpp"

#include <signal.h>

#include <boost/test/unit_test.hpp>
#include <csignal>
#include <fstream>
#include <thread>
#include <vector>

#include "signals.hpp"
#include "test_support.hpp"

using namespace kiln;
using namespace std::chrono_literals;

BOOST_AUTO_TEST_CASE(captures_output_and_exit_code) {
  process::Command c{"sh", {"-c", "echo out; echo err >&2; exit 3"}, {}, {}, {}};
  auto r = process::run(c);
  BOOST_REQUIRE(r.ok());
  BOOST_TEST(r->exit_code == 3);
  BOOST_TEST(r->out == "out\n");
  BOOST_TEST(r->err == "err\n");
}

BOOST_AUTO_TEST_CASE(environment_cwd_and_input) {
  process::Command c{"sh",
                     {"-c", "printf '%s:' \"$KILN_X\"; pwd; cat"},
                     {{"KILN_X", "y"}},
                     "/tmp",
                     std::string("fed")};
  auto r = process::run(c);
  BOOST_REQUIRE(r.ok());
  BOOST_TEST(r->out == "y:/tmp\nfed");
}

BOOST_AUTO_TEST_CASE(large_output_does_not_deadlock) {
  process::Command c{
      "sh", {"-c", "head -c 3000000 /dev/zero; head -c 3000000 /dev/zero >&2"}, {}, {}, {}};
  auto r = process::run(c);
  BOOST_REQUIRE(r.ok());
  BOOST_TEST(r->out.size() == 3000000u);
  BOOST_TEST(r->err.size() == 3000000u);
}

BOOST_AUTO_TEST_CASE(missing_program_is_unavailable) {
  auto r = process::run({"kiln-no-such-program", {}, {}, {}, {}});
  BOOST_REQUIRE(!r.ok());
  BOOST_TEST(r.error().code == Exit::unavailable);
  BOOST_TEST(r.error().message.find("kiln-no-such-program") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(timeout_kills_the_child) {
  auto start = std::chrono::steady_clock::now();
  auto r = process::run({"sleep", {"30"}, {}, {}, {}}, 300ms);
  BOOST_REQUIRE(!r.ok());
  BOOST_TEST(r.error().code == Exit::tempfail);
  BOOST_TEST((std::chrono::steady_clock::now() - start < 5s));
}

BOOST_AUTO_TEST_CASE(signal_terminates_the_child) {
  signals::InterruptGuard guard;
  signals::raise_for_test(SIGINT);
  auto r = process::run({"sleep", {"30"}, {}, {}, {}});
  BOOST_REQUIRE(!r.ok());
  BOOST_TEST(r.error().code == Exit::interrupted);
  signals::clear();
}

BOOST_AUTO_TEST_CASE(streaming_passes_output_as_it_arrives) {
  std::string out, err;
  std::vector<std::chrono::steady_clock::time_point> seen;
  auto r = process::run_streaming(
      {"sh", {"-c", "echo one; sleep 0.3; echo two; echo bad >&2; exit 4"}, {}, {}, {}},
      [&](std::string_view s) {
        out += s;
        seen.push_back(std::chrono::steady_clock::now());
      },
      [&](std::string_view s) { err += s; });
  BOOST_REQUIRE(r.ok());
  BOOST_TEST(*r == 4);
  BOOST_TEST(out == "one\ntwo\n");
  BOOST_TEST(err == "bad\n");
  // "one" arrived before "two" was written, not at the end.
  BOOST_REQUIRE(seen.size() == 2u);
  BOOST_TEST((seen[1] - seen[0] > 200ms));
}

BOOST_AUTO_TEST_CASE(streaming_timeout_ends_the_whole_group) {
  kiln::testing::TempDir dir;
  std::string pidfile = (dir.path / "pid").string();
  auto r = process::run_streaming(
      {"sh", {"-c", "sleep 30 & echo $! > " + pidfile + "; wait"}, {}, {}, {}}, {}, {}, 500ms);
  BOOST_REQUIRE(!r.ok());
  BOOST_TEST(r.error().code == Exit::tempfail);
  std::ifstream f(pidfile);
  pid_t grandchild = 0;
  f >> grandchild;
  BOOST_REQUIRE(grandchild > 0);
  // The background sleep was in the group: gone (or a zombie of init's).
  bool gone = false;
  for (int i = 0; i < 40 && !gone; ++i) {
    gone = ::kill(grandchild, 0) != 0;
    std::ifstream st("/proc/" + std::to_string(grandchild) + "/stat");
    std::string a, b, state;
    if (st >> a >> b >> state && state == "Z") gone = true;
    if (!gone) std::this_thread::sleep_for(50ms);
  }
  BOOST_TEST(gone);
}

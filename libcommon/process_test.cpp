#define BOOST_TEST_MODULE process
#include <boost/test/unit_test.hpp>

#include <csignal>

#include "process.hpp"
#include "signals.hpp"

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
  process::Command c{"sh", {"-c", "printf '%s:' \"$KILN_X\"; pwd; cat"},
                     {{"KILN_X", "y"}}, "/tmp", std::string("fed")};
  auto r = process::run(c);
  BOOST_REQUIRE(r.ok());
  BOOST_TEST(r->out == "y:/tmp\nfed");
}

BOOST_AUTO_TEST_CASE(large_output_does_not_deadlock) {
  process::Command c{"sh", {"-c", "head -c 3000000 /dev/zero; head -c 3000000 /dev/zero >&2"},
                     {}, {}, {}};
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
}

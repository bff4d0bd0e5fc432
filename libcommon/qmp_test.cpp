// SPDX-License-Identifier: MIT
#define BOOST_TEST_MODULE qmp
#include "qmp.hpp"

#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/process.hpp>
#include <boost/process/extend.hpp>
#include <boost/test/unit_test.hpp>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <thread>

#include "signals.hpp"
#include "test_support.hpp"

using namespace kiln;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace bp = boost::process;

namespace {

/// A temporary directory, removed with everything in it.
using kiln::testing::TempDir;

/// qemu without a guest, paused (-S), with its QMP socket in a temporary
/// directory. The destructor ends it (SIGTERM, then SIGKILL) and reaps it;
/// should the test process die first, the kernel kills qemu too.
class BareQemu {
 public:
  BareQemu() {
    socket = (dir_.path / "qmp.sock").string();
    child_ = bp::child(
        bp::search_path("qemu-system-x86_64"),
        bp::args({"-accel", "tcg", "-display", "none", "-nodefaults", "-no-user-config", "-m", "64",
                  "-qmp", "unix:" + socket + ",server=on,wait=off", "-S"}),
        bp::std_in<bp::null, bp::std_out> bp::null, bp::std_err > (dir_.path / "err").string(),
        bp::extend::on_exec_setup = [](auto&) { ::prctl(PR_SET_PDEATHSIG, SIGKILL); });
  }
  ~BareQemu() { stop(); }
  BareQemu(const BareQemu&) = delete;
  BareQemu& operator=(const BareQemu&) = delete;

  /// True when qemu exits within `d`.
  bool exits_within(std::chrono::milliseconds d) {
    std::error_code ec;
    auto end = std::chrono::steady_clock::now() + d;
    while (std::chrono::steady_clock::now() < end) {
      if (!child_.running(ec)) return true;
      std::this_thread::sleep_for(20ms);
    }
    return !child_.running(ec);
  }
  int pid() const { return child_.id(); }

  std::string socket;

 private:
  void stop() {
    std::error_code ec;
    if (!child_.valid()) return;
    if (child_.running(ec)) {
      ::kill(child_.id(), SIGTERM);
      if (!exits_within(5000ms)) child_.terminate(ec);
    }
    child_.wait(ec);
  }
  TempDir dir_;
  bp::child child_;
};

/// A unix socket server in a thread that accepts one client, writes
/// `says` and keeps the connection open for a while.
class FakeServer {
 public:
  explicit FakeServer(std::string says) {
    path = (dir_.path / "fake.sock").string();
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, path.c_str());
    BOOST_REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    BOOST_REQUIRE(::listen(fd_, 1) == 0);
    thread_ = std::thread([this, says] {
      int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      if (!says.empty()) (void)!::write(c, says.data(), says.size());
      char buf[256];
      // Reads until the client hangs up or the test ends.
      while (::read(c, buf, sizeof buf) > 0) {
      }
      ::close(c);
    });
  }
  ~FakeServer() {
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }
  std::string path;

 private:
  TempDir dir_;
  int fd_ = -1;
  std::thread thread_;
};

Qmp connected(const BareQemu& q) {
  auto r = Qmp::connect(q.socket, 20s);
  BOOST_REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  return std::move(r).value();
}

}  // namespace

BOOST_AUTO_TEST_CASE(connects_and_reports_the_prelaunch_state) {
  BareQemu q;
  Qmp qmp = connected(q);
  BOOST_TEST(qmp.qemu_version().find('.') != std::string::npos, qmp.qemu_version());
  auto st = qmp.query_status();
  BOOST_REQUIRE_MESSAGE(st.ok(), (st.ok() ? "" : st.error().message));
  BOOST_TEST((*st == "prelaunch" || *st == "paused"), *st);
}

BOOST_AUTO_TEST_CASE(execute_returns_the_reply) {
  BareQemu q;
  Qmp qmp = connected(q);
  auto r = qmp.execute("query-version");
  BOOST_REQUIRE(r.ok());
  BOOST_TEST(r->IsObject());
  BOOST_TEST((*r)["qemu"]["major"].GetInt() >= 2);
  // With arguments, and without a required one.
  BOOST_REQUIRE(qmp.execute("qom-list", nullptr).ok() == false);  // path is required
  rapidjson::Document path(rapidjson::kObjectType);
  path.AddMember("path", "/machine", path.GetAllocator());
  auto list = qmp.execute("qom-list", &path);
  BOOST_REQUIRE_MESSAGE(list.ok(), (list.ok() ? "" : list.error().message));
  BOOST_TEST(list->IsArray());
}

BOOST_AUTO_TEST_CASE(an_unknown_command_is_a_protocol_error) {
  BareQemu q;
  Qmp qmp = connected(q);
  auto r = qmp.execute("kiln-no-such-command");
  BOOST_REQUIRE(!r.ok());
  BOOST_TEST(r.error().code == Exit::protocol);
  BOOST_TEST(r.error().message.find("kiln-no-such-command") != std::string::npos,
             r.error().message);
  BOOST_TEST(r.error().message.find("CommandNotFound") != std::string::npos, r.error().message);
  // The session is still usable after an error.
  BOOST_TEST(qmp.query_status().ok());
}

BOOST_AUTO_TEST_CASE(events_are_kept_aside_while_waiting_for_replies) {
  BareQemu q;
  Qmp qmp = connected(q);
  BOOST_REQUIRE(qmp.execute("cont").ok());
  auto st = qmp.query_status();
  BOOST_REQUIRE(st.ok());
  BOOST_TEST(*st == "running");
  BOOST_REQUIRE(qmp.execute("stop").ok());
  BOOST_TEST(*qmp.query_status() == "paused");
  auto resume = qmp.wait_event("RESUME", 5s);
  BOOST_REQUIRE_MESSAGE(resume.ok(), (resume.ok() ? "" : resume.error().message));
  BOOST_TEST(resume->timestamp > 1e9);
  auto events = qmp.take_events();
  bool saw_stop = false;
  for (const auto& e : events) saw_stop = saw_stop || e.name == "STOP";
  BOOST_TEST(saw_stop);
  BOOST_TEST(qmp.take_events().empty());
}

BOOST_AUTO_TEST_CASE(powerdown_without_a_guest_only_signals) {
  BareQemu q;
  Qmp qmp = connected(q);
  BOOST_REQUIRE(qmp.execute("cont").ok());
  BOOST_REQUIRE(qmp.system_powerdown().ok());
  auto ev = qmp.wait_event("POWERDOWN", 5s);
  BOOST_TEST(ev.ok());
  // No guest answers the button: qemu keeps running.
  BOOST_TEST(*qmp.query_status() == "running");
  auto none = qmp.wait_event("SHUTDOWN", 300ms);
  BOOST_REQUIRE(!none.ok());
  BOOST_TEST(none.error().code == Exit::tempfail);
}

BOOST_AUTO_TEST_CASE(send_key_is_accepted_and_bad_keys_are_refused) {
  BareQemu q;
  Qmp qmp = connected(q);
  BOOST_TEST(qmp.send_key({"ctrl", "alt", "delete"}, 50ms).ok());
  BOOST_TEST(qmp.send_key({"a"}, 0ms).ok());
  auto bad = qmp.send_key({"kiln-not-a-key"}, 0ms);
  BOOST_REQUIRE(!bad.ok());
  BOOST_TEST(bad.error().code == Exit::protocol);
}

BOOST_AUTO_TEST_CASE(quit_ends_qemu) {
  BareQemu q;
  Qmp qmp = connected(q);
  auto st = qmp.quit();
  BOOST_REQUIRE_MESSAGE(st.ok(), (st.ok() ? "" : st.error().message));
  BOOST_TEST(q.exits_within(10s));
  // The connection is gone; further commands say so.
  auto r = qmp.query_status(2s);
  BOOST_REQUIRE(!r.ok());
  BOOST_TEST(r.error().code == Exit::protocol);
  BOOST_TEST(qmp.closed());
}

BOOST_AUTO_TEST_CASE(shutdown_event_is_seen_when_qemu_quits) {
  BareQemu q;
  Qmp qmp = connected(q);
  BOOST_REQUIRE(qmp.quit().ok());
  (void)qmp.poll_events();
  bool shutdown = false;
  for (const auto& e : qmp.take_events()) shutdown = shutdown || e.name == "SHUTDOWN";
  BOOST_TEST(shutdown);
}

BOOST_AUTO_TEST_CASE(a_missing_socket_times_out) {
  TempDir dir;
  auto start = std::chrono::steady_clock::now();
  auto r = Qmp::connect((dir.path / "none.sock").string(), 300ms);
  BOOST_REQUIRE(!r.ok());
  BOOST_TEST(r.error().code == Exit::tempfail);
  BOOST_TEST((std::chrono::steady_clock::now() - start < 3s));
}

BOOST_AUTO_TEST_CASE(the_socket_may_appear_after_connect_starts) {
  // qemu is started after the client begins to wait for it.
  std::optional<Result<Qmp>> r;
  TempDir dir;
  auto path = (dir.path / "late.sock").string();
  std::thread client([&] { r.emplace(Qmp::connect(path, 20s)); });
  std::this_thread::sleep_for(300ms);
  {
    // Start qemu on that very path.
    bp::child late(
        bp::search_path("qemu-system-x86_64"),
        bp::args({"-accel", "tcg", "-display", "none", "-nodefaults", "-S", "-qmp",
                  "unix:" + path + ",server=on,wait=off"}),
        bp::std_in<bp::null, bp::std_out> bp::null, bp::std_err > bp::null,
        bp::extend::on_exec_setup = [](auto&) { ::prctl(PR_SET_PDEATHSIG, SIGKILL); });
    client.join();
    BOOST_TEST_REQUIRE(r->ok(), (r->ok() ? "" : r->error().message));
    BOOST_TEST((*r)->quit().ok());
    std::error_code ec;
    if (!late.wait_for(10s, ec)) late.terminate(ec);
    late.wait(ec);
  }
}

BOOST_AUTO_TEST_CASE(something_else_than_qmp_is_refused) {
  FakeServer server("SSH-2.0-OpenSSH_9.2\r\n");
  auto r = Qmp::connect(server.path, 2s);
  BOOST_REQUIRE(!r.ok());
  BOOST_TEST(r.error().code == Exit::protocol);
  BOOST_TEST(r.error().message.find("SSH-2.0") != std::string::npos, r.error().message);
}

BOOST_AUTO_TEST_CASE(a_silent_server_times_out) {
  FakeServer server("");
  auto start = std::chrono::steady_clock::now();
  auto r = Qmp::connect(server.path, 400ms);
  BOOST_REQUIRE(!r.ok());
  BOOST_TEST(r.error().code == Exit::tempfail);
  BOOST_TEST((std::chrono::steady_clock::now() - start < 3s));
}

BOOST_AUTO_TEST_CASE(a_server_that_refuses_capabilities_is_an_error) {
  FakeServer server(
      "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 0, \"major\": 9}}, "
      "\"capabilities\": []}}\r\n"
      "{\"event\": \"X\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 0}}\r\n"
      "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}, \"id\": \"kiln-1\"}\r\n");
  auto r = Qmp::connect(server.path, 2s);
  BOOST_REQUIRE(!r.ok());
  BOOST_TEST(r.error().code == Exit::protocol);
  BOOST_TEST(r.error().message.find("qmp_capabilities") != std::string::npos, r.error().message);
  BOOST_TEST(r.error().message.find("no (GenericError)") != std::string::npos, r.error().message);
}

// Last: the interrupted flag stays set for the rest of the process.
BOOST_AUTO_TEST_CASE(a_signal_ends_a_wait) {
  BareQemu q;
  Qmp qmp = connected(q);
  signals::InterruptGuard guard;
  std::thread t([] {
    std::this_thread::sleep_for(200ms);
    signals::raise_for_test(SIGINT);
  });
  auto start = std::chrono::steady_clock::now();
  auto r = qmp.wait_event("SHUTDOWN", 20s);
  t.join();
  BOOST_REQUIRE(!r.ok());
  BOOST_TEST(r.error().code == Exit::interrupted);
  BOOST_TEST((std::chrono::steady_clock::now() - start < 5s));
}

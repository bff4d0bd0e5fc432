// SPDX-License-Identifier: MIT
#define BOOST_TEST_MODULE http_server
#include "http_server.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <boost/test/unit_test.hpp>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include "process.hpp"
#include "test_support.hpp"

using namespace kiln;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

using kiln::testing::TempDir;

void write(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}

std::unique_ptr<HttpServer> serve(HttpServerConfig config) {
  config.bind_address = "127.0.0.1";
  auto r = HttpServer::start(std::move(config));
  BOOST_REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  return std::move(r).value();
}

/// Runs real curl (30 s at most) and returns what it printed.
process::Output curl(std::vector<std::string> args) {
  args.insert(args.begin(), {"-sS", "--max-time", "30"});
  auto r = process::run({"curl", std::move(args), {}, {}, {}}, 60s);
  BOOST_REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  return *r;
}

std::string url(const HttpServer& s, const std::string& path) {
  return "http://127.0.0.1:" + std::to_string(s.port()) + path;
}

/// The status code curl saw for `path` (without normalizing the path).
std::string status_of(const HttpServer& s, const std::string& path,
                      std::vector<std::string> extra = {}) {
  std::vector<std::string> args{"--path-as-is", "-o", "/dev/null", "-w", "%{http_code}"};
  args.insert(args.end(), extra.begin(), extra.end());
  args.push_back(url(s, path));
  return curl(args).out;
}

HttpServerConfig in_dir(const fs::path& dir) {
  HttpServerConfig c;
  c.directory = dir.string();
  return c;
}

}  // namespace

BOOST_AUTO_TEST_CASE(serves_a_file_with_its_length_and_type) {
  TempDir t;
  write(t.path / "ks.cfg", "text\nlang en_US\n");
  auto server = serve(in_dir(t.path));
  BOOST_TEST(server->port() >= 8000);
  BOOST_TEST(server->port() <= 9000);
  auto r = curl({"-D", "-", url(*server, "/ks.cfg")});
  BOOST_TEST(r.exit_code == 0, r.err);
  BOOST_TEST(r.out.find("HTTP/1.1 200 OK\r\n") == 0u, r.out);
  BOOST_TEST(r.out.find("Content-Length: 16\r\n") != std::string::npos, r.out);
  BOOST_TEST(r.out.find("Content-Type: text/plain; charset=utf-8\r\n") != std::string::npos);
  BOOST_TEST(r.out.find("Last-Modified: ") != std::string::npos);
  BOOST_TEST(r.out.substr(r.out.size() - 16) == "text\nlang en_US\n");
}

BOOST_AUTO_TEST_CASE(head_has_the_length_and_no_body) {
  TempDir t;
  write(t.path / "a.bin", std::string(1000, '\x01'));
  auto server = serve(in_dir(t.path));
  auto r = curl({"-I", url(*server, "/a.bin")});
  BOOST_TEST(r.out.find("Content-Length: 1000\r\n") != std::string::npos, r.out);
  BOOST_TEST(r.out.find("Content-Type: application/octet-stream\r\n") != std::string::npos, r.out);
  BOOST_TEST(r.out.size() < 400u);
}

BOOST_AUTO_TEST_CASE(missing_files_are_404) {
  TempDir t;
  write(t.path / "here", "x");
  auto server = serve(in_dir(t.path));
  BOOST_TEST(status_of(*server, "/nothere") == "404");
  BOOST_TEST(status_of(*server, "/here/deeper") == "404");
  BOOST_TEST(curl({url(*server, "/nothere")}).out == "404 page not found\n");
}

BOOST_AUTO_TEST_CASE(path_traversal_is_refused) {
  TempDir t;
  write(t.path / "secret", "do not serve\n");
  write(t.path / "www" / "public", "ok\n");
  auto server = serve(in_dir(t.path / "www"));
  BOOST_TEST(status_of(*server, "/public") == "200");
  for (std::string evil : {"/../secret", "/a/../../secret", "/%2e%2e/secret", "/%2E%2E%2Fsecret",
                           "/..%2fsecret", "/public/..", "/%00", "/bad%zz"}) {
    BOOST_TEST(status_of(*server, evil) == "400", evil);
  }
  // Nothing of the secret came out, whatever the spelling.
  BOOST_TEST(curl({"--path-as-is", url(*server, "/../secret")}).out.find("do not") ==
             std::string::npos);
}

BOOST_AUTO_TEST_CASE(http_content_takes_precedence) {
  TempDir t;
  write(t.path / "preseed.cfg", "from the directory\n");
  write(t.path / "other.cfg", "other\n");
  HttpServerConfig c = in_dir(t.path);
  c.content = {{"/preseed.cfg", "from content\n"}, {"user-data", "#cloud-config\n"}};
  auto server = serve(c);
  BOOST_TEST(curl({url(*server, "/preseed.cfg")}).out == "from content\n");
  BOOST_TEST(curl({url(*server, "/user-data")}).out == "#cloud-config\n");
  BOOST_TEST(curl({url(*server, "/other.cfg")}).out == "other\n");
  BOOST_TEST(curl({url(*server, "/user-data?x=1")}).out == "#cloud-config\n");
}

BOOST_AUTO_TEST_CASE(content_alone_needs_no_directory) {
  HttpServerConfig c;
  c.content = {{"/meta-data", "instance-id: x\n"}};
  auto server = serve(c);
  BOOST_TEST(curl({url(*server, "/meta-data")}).out == "instance-id: x\n");
  BOOST_TEST(status_of(*server, "/") == "404");
}

BOOST_AUTO_TEST_CASE(a_big_file_is_streamed_with_flat_memory) {
  TempDir t;
  fs::path big = t.path / "big.img";
  {
    std::ofstream out(big, std::ios::binary);
    std::string block(1 << 20, '\0');
    for (size_t i = 0; i < block.size(); ++i) block[i] = static_cast<char>(i * 7 % 251);
    for (int i = 0; i < 50; ++i) out << block;
  }
  auto server = serve(in_dir(t.path));
  struct rusage before {};
  ::getrusage(RUSAGE_SELF, &before);
  auto r = curl(
      {"-o", (t.path / "copy.img").string(), "-w", "%{size_download}", url(*server, "/big.img")});
  struct rusage after {};
  ::getrusage(RUSAGE_SELF, &after);
  BOOST_TEST(r.out == "52428800");
  long grown_kib = after.ru_maxrss - before.ru_maxrss;
  BOOST_TEST(grown_kib < 16 * 1024, "peak memory grew by " << grown_kib << " KiB");
  auto a = process::run({"cmp", {big.string(), (t.path / "copy.img").string()}, {}, {}, {}});
  BOOST_REQUIRE(a.ok());
  BOOST_TEST(a->exit_code == 0, a->out);
}

BOOST_AUTO_TEST_CASE(two_servers_get_two_ports_and_a_full_range_is_an_error) {
  TempDir t;
  HttpServerConfig c = in_dir(t.path);
  c.port_min = 8100;
  c.port_max = 8200;
  auto one = serve(c);
  auto two = serve(c);
  BOOST_TEST(one->port() != two->port());
  BOOST_TEST(one->port() >= 8100);
  BOOST_TEST(two->port() <= 8200);
  BOOST_TEST(status_of(*one, "/") == "200");
  BOOST_TEST(status_of(*two, "/") == "200");

  c.port_min = c.port_max = one->port();
  c.bind_address = "127.0.0.1";
  auto taken = HttpServer::start(c);
  BOOST_REQUIRE(!taken.ok());
  BOOST_TEST(taken.error().code == Exit::unavailable);
  BOOST_TEST(taken.error().message.find(std::to_string(one->port())) != std::string::npos);
}

BOOST_AUTO_TEST_CASE(the_system_may_choose_the_port) {
  HttpServerConfig c;
  c.content = {{"/x", "y"}};
  c.port_min = c.port_max = 0;
  auto s = serve(c);
  BOOST_TEST(s->port() > 0);
  BOOST_TEST(curl({url(*s, "/x")}).out == "y");
}

BOOST_AUTO_TEST_CASE(directories_redirect_then_list_or_serve_their_index) {
  TempDir t;
  write(t.path / "sub" / "a file.txt", "a");
  write(t.path / "sub" / "inner" / "b", "b");
  write(t.path / "site" / "index.html", "<h1>hi</h1>");
  auto server = serve(in_dir(t.path));
  auto r = curl({"-D", "-", "-o", "/dev/null", url(*server, "/sub")});
  BOOST_TEST(r.out.find("HTTP/1.1 301") == 0u, r.out);
  BOOST_TEST(r.out.find("Location: sub/\r\n") != std::string::npos, r.out);
  std::string list = curl({"-L", url(*server, "/sub")}).out;
  BOOST_TEST(list.find("<a href=\"a%20file.txt\">a file.txt</a>") != std::string::npos, list);
  BOOST_TEST(list.find("<a href=\"inner/\">inner/</a>") != std::string::npos, list);
  BOOST_TEST(curl({url(*server, "/site/")}).out == "<h1>hi</h1>");
}

BOOST_AUTO_TEST_CASE(keep_alive_http_1_0_and_methods) {
  TempDir t;
  write(t.path / "a", "A");
  write(t.path / "b", "B");
  auto server = serve(in_dir(t.path));
  // Two requests over one connection.
  auto r = curl({"-w", "[%{num_connects}]", url(*server, "/a"), url(*server, "/b")});
  BOOST_TEST(r.out == "A[1]B[0]", r.out);
  // HTTP/1.0.
  auto old = curl({"-0", "-D", "-", url(*server, "/a")});
  BOOST_TEST(old.out.find("Connection: close\r\n") != std::string::npos, old.out);
  BOOST_TEST(old.out.back() == 'A');
  BOOST_TEST(status_of(*server, "/a", {"-X", "POST", "-d", "x=1"}) == "405");
  BOOST_TEST(status_of(*server, "/a", {"-X", "DELETE"}) == "405");
}

BOOST_AUTO_TEST_CASE(many_clients_at_once) {
  TempDir t;
  write(t.path / "f", std::string(200000, 'f'));
  auto server = serve(in_dir(t.path));
  std::string u = url(*server, "/f");
  auto r = process::run(
      {"sh",
       {"-c",
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do curl -s --max-time 30 \"$0\" | wc -c & done; wait",
        u},
       {},
       {},
       {}},
      60s);
  BOOST_REQUIRE(r.ok());
  std::istringstream in(r->out);
  int n = 0;
  for (std::string line; std::getline(in, line); ++n) BOOST_TEST(line == "200000");
  BOOST_TEST(n == 12);
}

BOOST_AUTO_TEST_CASE(a_garbage_request_is_400_and_a_huge_head_431) {
  TempDir t;
  auto server = serve(in_dir(t.path));
  auto raw = [&](const std::string& text) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(server->port());
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    BOOST_REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    timeval tv{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    (void)!::send(fd, text.data(), text.size(), MSG_NOSIGNAL);
    std::string got;
    char buf[4096];
    for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;)
      got.append(buf, static_cast<size_t>(n));
    ::close(fd);
    return got;
  };
  BOOST_TEST(raw("NONSENSE\r\n\r\n").find("HTTP/1.1 400 ") == 0u);
  BOOST_TEST(raw("GET / HTTP/2.0\r\n\r\n").find("HTTP/1.1 505 ") == 0u);
  BOOST_TEST(raw("GET / HTTP/1.1\r\nX: " + std::string(20000, 'x')).find("HTTP/1.1 431 ") == 0u);
  // Pipelined requests are answered in order.
  write(t.path / "p", "P");
  std::string two =
      raw("GET /p HTTP/1.1\r\nHost: x\r\n\r\nGET /p HTTP/1.1\r\nConnection: close\r\n\r\n");
  BOOST_TEST(two.find("HTTP/1.1 200 OK") != two.rfind("HTTP/1.1 200 OK"), two);
}

BOOST_AUTO_TEST_CASE(requests_are_reported) {
  TempDir t;
  write(t.path / "a", "A");
  std::mutex m;
  std::vector<std::string> lines;
  HttpServerConfig c = in_dir(t.path);
  c.on_request = [&](const std::string& line) {
    std::lock_guard<std::mutex> lock(m);
    lines.push_back(line);
  };
  {
    auto server = serve(c);
    curl({url(*server, "/a")});
    curl({url(*server, "/none")});
  }
  BOOST_REQUIRE(lines.size() == 2u);
  BOOST_TEST(lines[0] == "GET /a 200 1");
  BOOST_TEST(lines[1] == "GET /none 404 19");
}

BOOST_AUTO_TEST_CASE(destroying_the_server_frees_its_port) {
  TempDir t;
  std::string u;
  uint16_t port = 0;
  {
    auto server = serve(in_dir(t.path));
    u = url(*server, "/");
    port = server->port();
    BOOST_TEST(status_of(*server, "/") == "200");
  }
  auto r = curl({u});
  BOOST_TEST(r.exit_code == 7, r.err);  // couldn't connect
  HttpServerConfig c = in_dir(t.path);
  c.port_min = c.port_max = port;
  auto again = serve(c);
  BOOST_TEST(again->port() == port);
}

BOOST_AUTO_TEST_CASE(configuration_errors) {
  HttpServerConfig missing;
  missing.directory = "/nonexistent/kiln";
  auto r = HttpServer::start(missing);
  BOOST_REQUIRE(!r.ok());
  BOOST_TEST(r.error().code == Exit::noinput);

  HttpServerConfig address;
  address.bind_address = "not-an-address";
  r = HttpServer::start(address);
  BOOST_REQUIRE(!r.ok());
  BOOST_TEST(r.error().code == Exit::config);

  HttpServerConfig range;
  range.port_min = 9000;
  range.port_max = 8000;
  r = HttpServer::start(range);
  BOOST_REQUIRE(!r.ok());
  BOOST_TEST(r.error().code == Exit::config);

  HttpServerConfig dots;
  dots.content = {{"/../x", "y"}};
  r = HttpServer::start(dots);
  BOOST_REQUIRE(!r.ok());
  BOOST_TEST(r.error().code == Exit::config);
}

// SPDX-License-Identifier: MIT
#include "http_server.hpp"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <list>
#include <map>
#include <string_view>
#include <system_error>
#include <vector>

#include "fd.hpp"
#include "text.hpp"

namespace kiln {

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr size_t kMaxHead = 16 * 1024;
constexpr size_t kMaxConnections = 64;
constexpr auto kIdleTimeout = 30s;   // waiting for a request
constexpr auto kStallTimeout = 60s;  // a client that stops reading

char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

/// An HTTP date, "Sun, 06 Nov 1994 08:49:37 GMT", whatever the locale.
std::string http_date(time_t t) {
  static const char* kDays[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  struct tm tm {};
  ::gmtime_r(&t, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s, %02d %s %04d %02d:%02d:%02d GMT", kDays[tm.tm_wday],
                tm.tm_mday, kMonths[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                tm.tm_sec);
  return buf;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  c = lower(c);
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

/// Percent-decodes a URL path; false on a bad escape or a NUL.
bool url_decode(std::string_view in, std::string& out) {
  out.clear();
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out += in[i];
      continue;
    }
    if (i + 2 >= in.size()) return false;
    int hi = hex_value(in[i + 1]), lo = hex_value(in[i + 2]);
    if (hi < 0 || lo < 0) return false;
    char c = static_cast<char>(hi * 16 + lo);
    if (c == '\0') return false;
    out += c;
    i += 2;
  }
  return true;
}

std::string url_escape(std::string_view s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (std::isalnum(c) || std::strchr("-._~/!$&'()*+,;=:@", ch) != nullptr) {
      out += ch;
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

/// Splits a decoded URL path into its segments, dropping empty ones and
/// ".". Returns false when a segment is "..": nothing may climb out of the
/// served tree, however it is spelled.
bool path_segments(std::string_view path, std::vector<std::string>& out) {
  out.clear();
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    std::string_view seg = path.substr(i, j - i);
    if (seg == "..") return false;
    if (!seg.empty() && seg != ".") out.emplace_back(seg);
    i = j + 1;
  }
  return true;
}

std::string join_segments(const std::vector<std::string>& segs) {
  std::string s;
  for (const auto& x : segs) s += "/" + x;
  return s.empty() ? "/" : s;
}

const char* reason_phrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 301:
      return "Moved Permanently";
    case 400:
      return "Bad Request";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Unknown";
  }
}

std::string content_type(std::string_view name, std::string_view first_bytes) {
  static const std::pair<const char*, const char*> kTypes[] = {
      {".html", "text/html; charset=utf-8"},
      {".htm", "text/html; charset=utf-8"},
      {".css", "text/css; charset=utf-8"},
      {".js", "text/javascript; charset=utf-8"},
      {".json", "application/json"},
      {".xml", "text/xml; charset=utf-8"},
      {".txt", "text/plain; charset=utf-8"},
      {".iso", "application/octet-stream"},
      {".gz", "application/gzip"},
      {".tar", "application/x-tar"},
      {".zip", "application/zip"},
      {".xz", "application/x-xz"},
      {".png", "image/png"},
      {".svg", "image/svg+xml"}};
  for (const auto& [ext, type] : kTypes) {
    std::string_view e = ext;
    if (name.size() >= e.size() && iequals(name.substr(name.size() - e.size()), e)) return type;
  }
  // Like Go's sniffing for what installers fetch (kickstart, preseed,
  // autounattend, cloud-config): text unless it holds control bytes.
  for (char ch : first_bytes) {
    auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 && c != '\n' && c != '\r' && c != '\t' && c != '\f' && c != 0x1b)
      return "application/octet-stream";
  }
  return "text/plain; charset=utf-8";
}

struct Connection {
  UniqueFd fd;
  std::string in;
  std::string out;  // the response head (and small bodies) still to send
  size_t out_off = 0;
  UniqueFd file;  // a file body, streamed with sendfile after `out`
  off_t file_off = 0;
  off_t file_end = 0;
  bool writing = false;
  bool close_after = false;
  Clock::time_point last_activity = Clock::now();
  std::string log_line;
};

class Loop {
 public:
  Loop(const HttpServerConfig& config, int listen_fd, int wake_fd)
      : config_(config), listen_fd_(listen_fd), wake_fd_(wake_fd) {}

  void run() {
    for (;;) {
      std::vector<pollfd> fds;
      fds.push_back({wake_fd_, POLLIN, 0});
      bool accepting = conns_.size() < kMaxConnections;
      fds.push_back({listen_fd_, static_cast<short>(accepting ? POLLIN : 0), 0});
      for (auto& c : conns_)
        fds.push_back({c.fd.get(), static_cast<short>(c.writing ? POLLOUT : POLLIN), 0});
      int n = ::poll(fds.data(), fds.size(), 1000);
      if (n < 0 && errno != EINTR) return;
      if (fds[0].revents != 0) return;  // stop requested
      auto now = Clock::now();
      size_t k = 2;
      for (auto it = conns_.begin(); it != conns_.end(); ++k) {
        bool keep = true;
        short ev = fds[k].revents;
        if (ev & (POLLERR | POLLNVAL)) {
          keep = false;
        } else if (ev != 0) {
          it->last_activity = now;
          keep = it->writing ? on_writable(*it) : on_readable(*it);
        } else {
          keep = now - it->last_activity < (it->writing ? kStallTimeout : kIdleTimeout);
        }
        it = keep ? std::next(it) : conns_.erase(it);
      }
      if (fds[1].revents & POLLIN) accept_all();
    }
  }

 private:
  void accept_all() {
    while (conns_.size() < kMaxConnections) {
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;
      Connection c;
      c.fd = UniqueFd(fd);
      conns_.push_back(std::move(c));
    }
  }

  bool on_readable(Connection& c) {
    char buf[8192];
    ssize_t n = ::recv(c.fd.get(), buf, sizeof buf, 0);
    if (n == 0) return false;
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    c.in.append(buf, static_cast<size_t>(n));
    return handle_buffered(c);
  }

  /// Answers the request in the buffer, if it is complete.
  bool handle_buffered(Connection& c) {
    size_t end = c.in.find("\r\n\r\n");
    size_t skip = 4;
    if (end == std::string::npos) {
      end = c.in.find("\n\n");
      skip = 2;
    }
    if (end == std::string::npos) {
      if (c.in.size() > kMaxHead) {
        error_response(c, 431, true);
        return start_writing(c);
      }
      return true;
    }
    std::string head = c.in.substr(0, end);
    c.in.erase(0, end + skip);
    respond(c, head);
    return start_writing(c);
  }

  bool start_writing(Connection& c) {
    c.writing = true;
    return on_writable(c);
  }

  bool on_writable(Connection& c) {
    while (c.out_off < c.out.size()) {
      ssize_t n =
          ::send(c.fd.get(), c.out.data() + c.out_off, c.out.size() - c.out_off, MSG_NOSIGNAL);
      if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
      c.out_off += static_cast<size_t>(n);
    }
    while (c.file.get() >= 0 && c.file_off < c.file_end) {
      size_t chunk = static_cast<size_t>(std::min<off_t>(c.file_end - c.file_off, 1 << 20));
      ssize_t n = ::sendfile(c.fd.get(), c.file.get(), &c.file_off, chunk);
      if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
      if (n == 0) return false;  // the file shrank: the promised length cannot be kept
    }
    // Done with this response.
    if (config_.on_request) config_.on_request(c.log_line);
    if (c.close_after) {
      ::shutdown(c.fd.get(), SHUT_WR);
      return false;
    }
    c.out.clear();
    c.out_off = 0;
    c.file.reset();
    c.writing = false;
    return handle_buffered(c);  // a pipelined request may be waiting
  }

  void head(Connection& c, int status, const std::string& extra, off_t length) {
    c.out = "HTTP/1.1 " + std::to_string(status) + " " + reason_phrase(status) + "\r\n";
    c.out += "Date: " + http_date(::time(nullptr)) + "\r\n";
    c.out += "Server: kiln\r\n";
    c.out += extra;
    c.out += "Content-Length: " + std::to_string(length) + "\r\n";
    c.out += c.close_after ? "Connection: close\r\n" : "Connection: keep-alive\r\n";
    c.out += "\r\n";
    c.out_off = 0;
  }

  void text_response(Connection& c, int status, const std::string& extra, const std::string& type,
                     const std::string& body, bool head_only) {
    head(c, status, extra + "Content-Type: " + type + "\r\n", static_cast<off_t>(body.size()));
    if (!head_only) c.out += body;
    c.log_line += " " + std::to_string(status) + " " + std::to_string(body.size());
  }

  void error_response(Connection& c, int status, bool close, bool head_only = false) {
    if (close) c.close_after = true;
    std::string body = std::to_string(status) + " " + reason_phrase(status) + "\n";
    if (status == 404) body = "404 page not found\n";  // Go's words, as Packer's server
    std::string extra = "X-Content-Type-Options: nosniff\r\n";
    if (status == 405) extra += "Allow: GET, HEAD\r\n";
    text_response(c, status, extra, "text/plain; charset=utf-8", body, head_only);
  }

  void respond(Connection& c, const std::string& head_text) {
    // Request line.
    size_t eol = head_text.find('\n');
    std::string_view line = trim(std::string_view(head_text).substr(0, eol));
    size_t s1 = line.find(' ');
    size_t s2 = line.rfind(' ');
    c.log_line = std::string(line.substr(0, std::min<size_t>(line.size(), 200)));
    if (s1 == std::string_view::npos || s2 == s1) return error_response(c, 400, true);
    std::string_view method = line.substr(0, s1);
    std::string_view target = trim(line.substr(s1 + 1, s2 - s1 - 1));
    std::string_view version = line.substr(s2 + 1);
    if (version.substr(0, 5) != "HTTP/") return error_response(c, 400, true);
    bool http11 = version == "HTTP/1.1";
    if (!http11 && version != "HTTP/1.0") return error_response(c, 505, true);
    c.log_line = std::string(method) + " " + std::string(target.substr(0, 200));

    // Headers: only what decides whether the connection stays open.
    bool keep_alive = http11;
    bool has_body = false;
    std::string_view rest =
        eol == std::string::npos ? std::string_view() : std::string_view(head_text).substr(eol + 1);
    while (!rest.empty()) {
      size_t nl = rest.find('\n');
      std::string_view h = trim(rest.substr(0, nl));
      rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
      size_t colon = h.find(':');
      if (colon == std::string_view::npos) continue;
      std::string_view name = trim(h.substr(0, colon));
      std::string_view value = trim(h.substr(colon + 1));
      if (iequals(name, "connection")) {
        if (iequals(value, "close")) keep_alive = false;
        if (iequals(value, "keep-alive")) keep_alive = true;
      } else if (iequals(name, "content-length")) {
        has_body = value != "0";
      } else if (iequals(name, "transfer-encoding")) {
        has_body = true;
      }
    }
    // A body is never read; closing afterwards keeps it from being taken
    // for the next request.
    c.close_after = !keep_alive || has_body;

    bool head_only = method == "HEAD";
    if (method != "GET" && !head_only) return error_response(c, 405, c.close_after);

    // The path: absolute-form targets are reduced to theirs; the query goes.
    std::string_view raw = target;
    if (raw.substr(0, 7) == "http://" || raw.substr(0, 8) == "https://") {
      size_t p = raw.find('/', raw.find("//") + 2);
      raw = p == std::string_view::npos ? std::string_view("/") : raw.substr(p);
    }
    raw = raw.substr(0, raw.find_first_of("?#"));
    if (raw.empty() || raw[0] != '/') return error_response(c, 400, true, head_only);
    std::string decoded;
    std::vector<std::string> segs;
    if (!url_decode(raw, decoded) || !path_segments(decoded, segs))
      return error_response(c, 400, c.close_after, head_only);
    std::string clean = join_segments(segs);

    if (auto it = config_.content.find(clean); it != config_.content.end())
      return text_response(c, 200, "", content_type(clean, it->second.substr(0, 512)), it->second,
                           head_only);
    if (config_.directory.empty()) return error_response(c, 404, c.close_after, head_only);
    serve_path(c, decoded, segs, head_only);
  }

  void serve_path(Connection& c, const std::string& url_path, const std::vector<std::string>& segs,
                  bool head_only) {
    std::string fs_path = config_.directory;
    for (const auto& s : segs) fs_path += "/" + s;
    UniqueFd fd(::open(fs_path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
    if (fd.get() < 0) {
      int status = (errno == EACCES || errno == EPERM) ? 403 : 404;
      return error_response(c, status, c.close_after, head_only);
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) return error_response(c, 500, c.close_after, head_only);
    std::string base = segs.empty() ? "" : segs.back();
    bool trailing_slash = !url_path.empty() && url_path.back() == '/';

    if (S_ISDIR(st.st_mode)) {
      // As Go's file server: "/dir" → "dir/"; "/dir/" → its index.html or a
      // listing.
      if (!trailing_slash) {
        std::string loc = url_escape(base) + "/";
        return text_response(
            c, 301, "Location: " + loc + "\r\n", "text/html; charset=utf-8",
            "<a href=\"" + text::html_escape(loc) + "\">Moved Permanently</a>.\n\n", head_only);
      }
      std::string index = fs_path + "/index.html";
      UniqueFd ifd(::open(index.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
      struct stat ist {};
      if (ifd.get() >= 0 && ::fstat(ifd.get(), &ist) == 0 && S_ISREG(ist.st_mode))
        return file_response(c, std::move(ifd), ist, "index.html", head_only);
      return listing(c, fs_path, head_only);
    }
    if (!S_ISREG(st.st_mode)) return error_response(c, 404, c.close_after, head_only);
    if (trailing_slash) {
      std::string loc = "../" + url_escape(base);
      return text_response(c, 301, "Location: " + loc + "\r\n", "text/html; charset=utf-8",
                           "<a href=\"" + text::html_escape(loc) + "\">Moved Permanently</a>.\n\n",
                           head_only);
    }
    // Served in blocking mode by sendfile on a non-blocking socket.
    ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) & ~O_NONBLOCK);
    file_response(c, std::move(fd), st, base, head_only);
  }

  void file_response(Connection& c, UniqueFd fd, const struct stat& st, const std::string& name,
                     bool head_only) {
    char sniff[512];
    ssize_t got = ::pread(fd.get(), sniff, sizeof sniff, 0);
    std::string_view first(sniff, got > 0 ? static_cast<size_t>(got) : 0);
    head(c, 200,
         "Content-Type: " + content_type(name, first) +
             "\r\nLast-Modified: " + http_date(st.st_mtime) + "\r\nAccept-Ranges: none\r\n",
         st.st_size);
    c.log_line += " 200 " + std::to_string(st.st_size);
    if (head_only || st.st_size == 0) return;
    c.file = std::move(fd);
    c.file_off = 0;
    c.file_end = st.st_size;
  }

  void listing(Connection& c, const std::string& dir, bool head_only) {
    std::vector<std::string> names;
    if (DIR* d = ::opendir(dir.c_str())) {
      while (dirent* e = ::readdir(d)) {
        std::string n = e->d_name;
        if (n == "." || n == "..") continue;
        struct stat st {};
        if (::stat((dir + "/" + n).c_str(), &st) == 0 && S_ISDIR(st.st_mode)) n += "/";
        names.push_back(std::move(n));
      }
      ::closedir(d);
    } else {
      return error_response(c, 403, c.close_after, head_only);
    }
    std::sort(names.begin(), names.end());
    std::string body = "<pre>\n";
    for (const auto& n : names)
      body +=
          "<a href=\"" + text::html_escape(url_escape(n)) + "\">" + text::html_escape(n) + "</a>\n";
    body += "</pre>\n";
    text_response(c, 200, "", "text/html; charset=utf-8", body, head_only);
  }

 private:
  const HttpServerConfig& config_;
  int listen_fd_;
  int wake_fd_;
  std::list<Connection> conns_;
};

}  // namespace

Result<std::unique_ptr<HttpServer>> HttpServer::start(HttpServerConfig config) {
  if (!config.directory.empty()) {
    struct stat st {};
    if (::stat(config.directory.c_str(), &st) != 0)
      return Error(Exit::noinput,
                   "http_directory " + config.directory + ": " + std::strerror(errno));
    if (!S_ISDIR(st.st_mode))
      return Error(Exit::noinput, "http_directory " + config.directory + " is not a directory");
  }
  std::map<std::string, std::string> content;
  for (auto& [path, body] : config.content) {
    std::vector<std::string> segs;
    if (!path_segments(path, segs))
      return Error(Exit::config, "http_content path \"" + path + "\" may not contain \"..\"");
    content[join_segments(segs)] = body;
  }
  config.content = std::move(content);
  if (config.port_min < 0 || config.port_max > 65535 || config.port_min > config.port_max)
    return Error(Exit::config, "bad HTTP port range " + std::to_string(config.port_min) + "-" +
                                   std::to_string(config.port_max));
  if (config.bind_address.empty()) config.bind_address = "0.0.0.0";

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_PASSIVE;
  addrinfo* res = nullptr;
  if (int rc = ::getaddrinfo(config.bind_address.c_str(), "0", &hints, &res); rc != 0)
    return Error(Exit::config,
                 "bad HTTP bind address \"" + config.bind_address + "\": " + ::gai_strerror(rc));
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> ai(res, &::freeaddrinfo);

  UniqueFd listener;
  uint16_t chosen = 0;
  for (int port = config.port_min; port <= config.port_max; ++port) {
    UniqueFd fd(::socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (fd.get() < 0) return Error(Exit::software, std::string("socket: ") + std::strerror(errno));
    int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_storage addr{};
    std::memcpy(&addr, ai->ai_addr, ai->ai_addrlen);
    if (addr.ss_family == AF_INET)
      reinterpret_cast<sockaddr_in*>(&addr)->sin_port = htons(static_cast<uint16_t>(port));
    else
      reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port = htons(static_cast<uint16_t>(port));
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), ai->ai_addrlen) != 0) {
      if (errno == EADDRINUSE) continue;
      if (errno == EACCES)
        return Error(Exit::noperm,
                     "cannot listen on port " + std::to_string(port) + " without privileges");
      return Error(Exit::config,
                   "cannot listen on " + config.bind_address + ": " + std::strerror(errno));
    }
    if (::listen(fd.get(), 64) != 0) {
      if (errno == EADDRINUSE) continue;  // taken between bind and listen
      return Error(Exit::software, std::string("listen: ") + std::strerror(errno));
    }
    socklen_t len = sizeof addr;
    ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len);
    chosen = ntohs(addr.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&addr)->sin_port
                                             : reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
    listener = std::move(fd);
    break;
  }
  if (listener.get() < 0)
    return Error(Exit::unavailable, "no free port for the HTTP server on " + config.bind_address +
                                        " in " + std::to_string(config.port_min) + "-" +
                                        std::to_string(config.port_max));
  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (wake.get() < 0) return Error(Exit::software, std::string("eventfd: ") + std::strerror(errno));
  std::unique_ptr<HttpServer> server(
      new HttpServer(std::move(config), listener.release(), wake.release(), chosen));
  try {
    HttpServer* s = server.get();
    s->thread_ = std::thread([s] { Loop(s->config_, s->listen_fd_, s->wake_fd_).run(); });
  } catch (const std::system_error& e) {
    return Error(Exit::software, std::string("cannot start the HTTP server's thread: ") + e.what());
  }
  return server;
}

HttpServer::HttpServer(HttpServerConfig config, int listen_fd, int wake_fd, uint16_t port)
    : config_(std::move(config)), listen_fd_(listen_fd), wake_fd_(wake_fd), port_(port) {}

HttpServer::~HttpServer() {
  uint64_t one = 1;
  ssize_t r = ::write(wake_fd_, &one, sizeof one);
  (void)r;  // a full counter still wakes the loop
  if (thread_.joinable()) thread_.join();
  ::close(listen_fd_);
  ::close(wake_fd_);
}

}  // namespace kiln

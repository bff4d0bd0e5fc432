// SPDX-License-Identifier: MIT
#include "keeper.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <thread>

#include "atomic_file.hpp"
#include "fd.hpp"
#include "json.hpp"
#include "signals.hpp"
#include "text.hpp"

namespace kiln::keeper {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using communicator::Communicator;
using json::Document;
using json::Value;
using text::base64;
using text::unbase64;

namespace {

/// A session left unused this long is replaced by a fresh login when the
/// next client comes: the guest may have rebooted or restarted its server.
constexpr auto kIdleLimit = 10s;
/// How often the keeper looks whether its machine's supervisor still runs.
constexpr int kLookEveryMs = 200;
/// How long a cancelled request may take to end before the client gives up.
constexpr auto kCancelGrace = 10s;

bool send_all(int fd, std::string_view s) {
  while (!s.empty()) {
    ssize_t n = ::send(fd, s.data(), s.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    s.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

/// One JSON line: {key: value} with a string value.
std::string message(const char* key, std::string_view value) {
  Document d(rapidjson::kObjectType);
  auto& a = d.GetAllocator();
  d.AddMember(rapidjson::StringRef(key),
              Value(value.data(), static_cast<rapidjson::SizeType>(value.size()), a), a);
  return json::to_string(d) + "\n";
}

std::string error_message(const Error& e) {
  Document d(rapidjson::kObjectType);
  auto& a = d.GetAllocator();
  Value err(rapidjson::kObjectType);
  err.AddMember("code", to_int(e.code), a);
  err.AddMember("message", Value(e.message, a), a);
  d.AddMember("error", err, a);
  return json::to_string(d) + "\n";
}

/// Whether the process behind `pidfd` (or `pid`, where the kernel has no
/// pidfd) still runs; one that ended is not, even before it is reaped.
bool alive(const UniqueFd& pidfd, int pid) {
  if (pidfd.get() >= 0) {
    pollfd p{pidfd.get(), POLLIN, 0};
    return ::poll(&p, 1, 0) == 0;
  }
  return pid > 0 && (::kill(pid, 0) == 0 || errno == EPERM);
}

// ------------------------------------------------------------------ server

/// Watches a client while one of its requests runs: a cancel or a hang-up
/// interrupts the request as a signal would.
class Watcher {
 public:
  explicit Watcher(int client) {
    if (::pipe2(stop_, O_CLOEXEC) != 0) stop_[0] = stop_[1] = -1;
    thread_ = std::thread([this, client] {
      pollfd p[2] = {{client, POLLIN, 0}, {stop_[0], POLLIN, 0}};
      for (;;) {
        if (::poll(p, 2, -1) < 0) {
          if (errno == EINTR) continue;
          return;
        }
        if (p[1].revents) return;
        if (p[0].revents) {
          char buf[512];
          ssize_t n = ::recv(client, buf, sizeof buf, 0);
          if (n < 0 && errno == EINTR) continue;
          // Anything but a cancel is out of turn: taken as one too.
          cancelled_ = true;
          signals::raise_for_test(SIGINT);
          return;
        }
      }
    });
  }
  ~Watcher() {
    stop();
    for (int fd : stop_)
      if (fd >= 0) ::close(fd);
  }
  /// Stops watching; returns whether the request was cancelled (the
  /// interrupt it raised is then still to be cleared).
  bool stop() {
    if (thread_.joinable()) {
      if (stop_[1] >= 0) {
        char c = 1;
        ssize_t r = ::write(stop_[1], &c, 1);
        (void)r;
      }
      thread_.join();
    }
    return cancelled_;
  }

 private:
  int stop_[2] = {-1, -1};
  std::atomic<bool> cancelled_{false};
  std::thread thread_;
};

class Server {
 public:
  Server(int listen_fd, Communicator comm, int supervisor_pid)
      : listen_(listen_fd),
        comm_(std::move(comm)),
        supervisor_(supervisor_pid),
        supervisor_fd_(open_pidfd(supervisor_pid)) {}

  void serve() {
    while (alive(supervisor_fd_, supervisor_) && !signals::interrupted()) {
      pollfd p[3] = {
          {listen_, POLLIN, 0}, {supervisor_fd_.get(), POLLIN, 0}, {signals::wake_fd(), POLLIN, 0}};
      int n = ::poll(p, 3, kLookEveryMs);
      if (n <= 0 || !p[0].revents) continue;
      UniqueFd client(::accept4(listen_, nullptr, nullptr, SOCK_CLOEXEC));
      if (client.get() < 0) continue;
      if (Clock::now() - last_used_ > kIdleLimit) comm_.drop();
      if (!send_all(client.get(), greeting())) continue;
      serve_client(client.get());
      last_used_ = Clock::now();
    }
  }

 private:
  std::string greeting() const {
    Document d(rapidjson::kObjectType);
    auto& a = d.GetAllocator();
    d.AddMember("keeper", 1, a);
    d.AddMember("where", Value(comm_.where(), a), a);
    d.AddMember("host_key", Value(comm_.target().host_key, a), a);
    return json::to_string(d) + "\n";
  }

  void serve_client(int client) {
    std::string buffer;
    for (;;) {
      auto nl = buffer.find('\n');
      if (nl == std::string::npos) {
        pollfd p[3] = {{client, POLLIN, 0},
                       {supervisor_fd_.get(), POLLIN, 0},
                       {signals::wake_fd(), POLLIN, 0}};
        int n = ::poll(p, 3, kLookEveryMs);
        if (signals::interrupted() || !alive(supervisor_fd_, supervisor_)) return;
        if (n <= 0 || !p[0].revents) continue;
        char buf[65536];
        ssize_t got = ::recv(client, buf, sizeof buf, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return;  // the client is done
        buffer.append(buf, static_cast<size_t>(got));
        continue;
      }
      std::string line = buffer.substr(0, nl);
      buffer.erase(0, nl + 1);
      Document req;
      if (!json::parse(line, req) || !req.IsObject()) {
        (void)send_all(client, error_message(Error(Exit::protocol, "unreadable request")));
        return;
      }
      std::string reply;
      {
        Watcher watcher(client);
        reply = handle(client, req);
        if (watcher.stop()) signals::clear();
      }
      if (!send_all(client, reply)) return;
    }
  }

  /// Runs one request; returns its final line.
  std::string handle(int client, const Document& req) {
    const std::string op = json::string_or(req, "op");
    const std::string local = json::string_or(req, "local");
    const std::string remote = json::string_or(req, "remote");
    auto progress = [client](uint64_t done, uint64_t total) {
      (void)send_all(
          client, "{\"progress\":[" + std::to_string(done) + "," + std::to_string(total) + "]}\n");
    };
    auto done = [](const Status& st) {
      return st ? std::string("{\"ok\":true}\n") : error_message(st.error());
    };
    if (op == "run") {
      auto r = comm_.run(
          json::string_or(req, "command"),
          [client](std::string_view c) { (void)send_all(client, message("out", base64(c))); },
          [client](std::string_view c) { (void)send_all(client, message("err", base64(c))); },
          std::chrono::milliseconds(static_cast<long long>(json::number_or(req, "timeout_ms", 0))));
      if (!r) return error_message(r.error());
      return "{\"status\":" + std::to_string(*r) + "}\n";
    }
    if (op == "upload_file") {
      std::optional<int> mode;
      if (req.HasMember("mode")) mode = static_cast<int>(json::number_or(req, "mode", 0644));
      return done(comm_.upload_file(local, remote, progress, mode));
    }
    if (op == "upload_data") {
      std::string data;
      if (!unbase64(json::string_or(req, "data"), data))
        return error_message(Error(Exit::protocol, "upload_data: the data is not base64"));
      return done(
          comm_.upload_data(data, remote, static_cast<int>(json::number_or(req, "mode", 0644))));
    }
    if (op == "upload_directory") return done(comm_.upload_directory(local, remote, progress));
    if (op == "download_file") return done(comm_.download_file(remote, local, progress));
    if (op == "download_directory") return done(comm_.download_directory(remote, local, progress));
    if (op == "is_directory") {
      auto r = comm_.is_directory(remote);
      if (!r) return error_message(r.error());
      return std::string("{\"is_directory\":") + (*r ? "true" : "false") + "}\n";
    }
    if (op == "drop") {
      comm_.drop();
      return "{\"ok\":true}\n";
    }
    return error_message(Error(Exit::protocol, "unknown request '" + op + "'"));
  }

  int listen_;
  Communicator comm_;
  int supervisor_;
  UniqueFd supervisor_fd_;
  Clock::time_point last_used_ = Clock::now();
};

}  // namespace

Status start(const std::string& socket_path, const communicator::Target& target,
             ssh::Session session, int supervisor_pid, const std::string& log_path) {
  const auto addr = unix_address(socket_path);
  if (!addr) return Error(Exit::cantcreat, "the keeper's socket path is too long: " + socket_path);
  UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (listener.get() < 0)
    return Error(Exit::cantcreat, std::string("socket: ") + std::strerror(errno));
  ::unlink(socket_path.c_str());
  mode_t old = ::umask(0177);
  int bound = ::bind(listener.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr);
  ::umask(old);
  if (bound != 0 || ::listen(listener.get(), 8) != 0)
    return Error(Exit::cantcreat, "cannot listen on " + socket_path + ": " + std::strerror(errno));

  pid_t child = ::fork();
  if (child < 0) {
    ::unlink(socket_path.c_str());
    return Error(Exit::software, std::string("fork: ") + std::strerror(errno));
  }
  if (child == 0) {
    ::setsid();
    if (pid_t keeper = ::fork(); keeper != 0) {
      // Written before start() returns.
      if (keeper > 0)
        (void)write_file_atomically(fs::path(socket_path).parent_path() / "keeper.pid",
                                    std::to_string(keeper) + "\n");
      ::_exit(keeper > 0 ? 0 : 1);
    }
    signals::reset_after_fork();
    int null = ::open("/dev/null", O_RDWR);
    int log = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    ::dup2(null, 0);
    ::dup2(log >= 0 ? log : null, 1);
    ::dup2(log >= 0 ? log : null, 2);
    {
      Communicator comm(target, std::move(session));
      Server(listener.get(), std::move(comm), supervisor_pid).serve();
    }
    ::_exit(0);
  }
  int status = 0;
  while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    ::unlink(socket_path.c_str());
    return Error(Exit::software, "fork: cannot start the connection keeper");
  }
  // The keeper has the session now: give this copy up without a word.
  session.leave_to_child();
  return {};
}

// ------------------------------------------------------------------ client

struct Client::Reply {
  Document doc;
};

Result<std::unique_ptr<Client>> Client::connect(const std::string& socket_path,
                                                std::chrono::milliseconds greeting) {
  const auto addr = unix_address(socket_path);
  if (socket_path.empty() || !addr) return Error(Exit::unavailable, "no keeper socket");
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0 ||
      ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr) != 0)
    return Error(Exit::unavailable, "no keeper at " + socket_path + ": " + std::strerror(errno));
  std::unique_ptr<Client> c(new Client(fd.release()));
  const auto until = Clock::now() + greeting;
  while (c->buffer_.find('\n') == std::string::npos) {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(until - Clock::now()).count();
    pollfd p{c->fd_, POLLIN, 0};
    if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) <= 0)
      return Error(Exit::unavailable, "the keeper at " + socket_path + " did not answer");
    char buf[512];
    ssize_t n = ::recv(c->fd_, buf, sizeof buf, 0);
    if (n <= 0) return Error(Exit::unavailable, "the keeper at " + socket_path + " hung up");
    c->buffer_.append(buf, static_cast<size_t>(n));
  }
  auto nl = c->buffer_.find('\n');
  Document hello;
  if (!json::parse(c->buffer_.substr(0, nl), hello) || !hello.IsObject() ||
      json::number_or(hello, "keeper", 0) != 1)
    return Error(Exit::unavailable, "not a keeper at " + socket_path);
  c->buffer_.erase(0, nl + 1);
  c->where_ = json::string_or(hello, "where");
  c->host_key_ = json::string_or(hello, "host_key");
  return c;
}

Status Client::done(const Result<Reply>& r) {
  if (!r) return r.error();
  return {};
}

Client::~Client() {
  if (fd_ >= 0) ::close(fd_);
}

Result<Client::Reply> Client::call(const std::string& request, const communicator::Sink& out,
                                   const communicator::Sink& err,
                                   const Communicator::Progress& progress) {
  auto broken = [this](const std::string& why) {
    ::close(fd_);
    fd_ = -1;
    return Error(Exit::protocol, "connection lost: the machine's connection keeper " + why);
  };
  if (fd_ < 0) return broken("is gone");
  if (!send_all(fd_, request + "\n")) return broken("hung up");
  bool cancelled = false;
  Clock::time_point give_up{};
  for (;;) {
    auto nl = buffer_.find('\n');
    if (nl == std::string::npos) {
      if (!cancelled && signals::interrupted()) {
        cancelled = true;
        give_up = Clock::now() + kCancelGrace;
        (void)send_all(fd_, "{\"op\":\"cancel\"}\n");
      }
      if (cancelled && Clock::now() >= give_up) {
        ::close(fd_);
        fd_ = -1;
        return Error(Exit::interrupted, "interrupted");
      }
      pollfd p[2] = {{fd_, POLLIN, 0}, {signals::wake_fd(), POLLIN, 0}};
      int nfds = (!cancelled && p[1].fd >= 0) ? 2 : 1;
      if (::poll(p, static_cast<nfds_t>(nfds), cancelled ? 100 : 1000) <= 0) continue;
      if (!p[0].revents) continue;
      char buf[65536];
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return broken("ended");
      buffer_.append(buf, static_cast<size_t>(n));
      continue;
    }
    Reply r;
    bool ok = static_cast<bool>(json::parse(std::string_view(buffer_).substr(0, nl), r.doc));
    buffer_.erase(0, nl + 1);
    if (!ok || !r.doc.IsObject()) return broken("sent an unreadable line");
    std::string data;
    if (auto m = r.doc.FindMember("out"); m != r.doc.MemberEnd() && m->value.IsString()) {
      if (out && unbase64(m->value.GetString(), data)) out(data);
      continue;
    }
    if (auto m = r.doc.FindMember("err"); m != r.doc.MemberEnd() && m->value.IsString()) {
      if (err && unbase64(m->value.GetString(), data)) err(data);
      continue;
    }
    if (auto m = r.doc.FindMember("progress");
        m != r.doc.MemberEnd() && m->value.IsArray() && m->value.Size() == 2) {
      if (progress) progress(m->value[0].GetUint64(), m->value[1].GetUint64());
      continue;
    }
    if (auto m = r.doc.FindMember("error"); m != r.doc.MemberEnd() && m->value.IsObject())
      return Error(static_cast<Exit>(json::number_or(m->value, "code", 70)),
                   json::string_or(m->value, "message"));
    return r;
  }
}

namespace {

std::string request(std::initializer_list<std::pair<const char*, std::string>> fields,
                    std::optional<long long> number_key_value = std::nullopt,
                    const char* number_key = nullptr) {
  Document d(rapidjson::kObjectType);
  auto& a = d.GetAllocator();
  for (const auto& [k, v] : fields) d.AddMember(rapidjson::StringRef(k), Value(v, a), a);
  if (number_key && number_key_value)
    d.AddMember(rapidjson::StringRef(number_key), Value(static_cast<int64_t>(*number_key_value)),
                a);
  return json::to_string(d);
}

std::string absolute(const std::string& path) {
  std::error_code ec;
  auto p = fs::absolute(path, ec);
  return ec ? path : p.string();
}

}  // namespace

Result<int> Client::run(const std::string& command, const communicator::Sink& out,
                        const communicator::Sink& err, std::chrono::milliseconds timeout) {
  auto r = call(request({{"op", "run"}, {"command", command}}, timeout.count(), "timeout_ms"), out,
                err, {});
  if (!r) return r.error();
  return static_cast<int>(json::number_or(r->doc, "status", 0));
}

Status Client::upload_file(const std::string& local, const std::string& remote,
                           const Communicator::Progress& progress, std::optional<int> mode) {
  auto r = call(request({{"op", "upload_file"}, {"local", absolute(local)}, {"remote", remote}},
                        mode ? std::optional<long long>(*mode) : std::nullopt, "mode"),
                {}, {}, progress);
  return done(r);
}

Status Client::upload_data(std::string_view data, const std::string& remote, int mode) {
  auto r = call(
      request({{"op", "upload_data"}, {"data", base64(data)}, {"remote", remote}}, mode, "mode"),
      {}, {}, {});
  return done(r);
}

Status Client::upload_directory(const std::string& local, const std::string& remote,
                                const Communicator::Progress& progress) {
  auto r =
      call(request({{"op", "upload_directory"}, {"local", absolute(local)}, {"remote", remote}}),
           {}, {}, progress);
  return done(r);
}

Status Client::download_file(const std::string& remote, const std::string& local,
                             const Communicator::Progress& progress) {
  auto r = call(request({{"op", "download_file"}, {"local", absolute(local)}, {"remote", remote}}),
                {}, {}, progress);
  return done(r);
}

Status Client::download_directory(const std::string& remote, const std::string& local,
                                  const Communicator::Progress& progress) {
  auto r =
      call(request({{"op", "download_directory"}, {"local", absolute(local)}, {"remote", remote}}),
           {}, {}, progress);
  return done(r);
}

Result<bool> Client::is_directory(const std::string& remote) {
  auto r = call(request({{"op", "is_directory"}, {"remote", remote}}), {}, {}, {});
  if (!r) return r.error();
  auto m = r->doc.FindMember("is_directory");
  return m != r->doc.MemberEnd() && m->value.IsBool() && m->value.GetBool();
}

Status Client::drop() {
  auto r = call(request({{"op", "drop"}}), {}, {}, {});
  return done(r);
}

}  // namespace kiln::keeper

// SPDX-License-Identifier: MIT
#include "qmp.hpp"

#include <fcntl.h>
#include <poll.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "fd.hpp"
#include "signals.hpp"

namespace kiln {

namespace {

using namespace std::chrono_literals;
using Clock = Qmp::Clock;

// A reply bigger than this is not something kiln asked for.
constexpr size_t kMaxMessage = 16 * 1024 * 1024;

Error interrupted_error() { return Error(Exit::interrupted, "interrupted while talking to qemu"); }

int ms_until(Clock::time_point deadline) {
  auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
  if (left < 0) return 0;
  return static_cast<int>(std::min<long long>(left, 60000));
}

/// Waits until `fd` has `events`, the deadline passes (false), or a signal
/// arrives (Exit::interrupted).
Result<bool> wait_fd(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    if (signals::interrupted()) return interrupted_error();
    struct pollfd p[2] = {{fd, events, 0}, {signals::wake_fd(), POLLIN, 0}};
    int n = ::poll(p, signals::wake_fd() >= 0 ? 2 : 1, ms_until(deadline));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error(Exit::ioerr, std::string("poll: ") + std::strerror(errno));
    }
    if (signals::interrupted()) return interrupted_error();
    if (p[0].revents != 0) return true;
    if (Clock::now() >= deadline) return false;
  }
}

std::string to_text(const rapidjson::Value& v) {
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  v.Accept(w);
  return std::string(buf.GetString(), buf.GetSize());
}

std::string member_string(const rapidjson::Value& obj, const char* name) {
  if (!obj.IsObject()) return {};
  auto it = obj.FindMember(name);
  if (it == obj.MemberEnd() || !it->value.IsString()) return {};
  return std::string(it->value.GetString(), it->value.GetStringLength());
}

}  // namespace

Result<Qmp> Qmp::connect(const std::string& socket_path, std::chrono::milliseconds timeout) {
  const auto address = unix_address(socket_path);
  if (!address)
    return Error(Exit::config, "QMP socket path is too long for a unix socket: " + socket_path);
  const sockaddr_un addr = *address;
  auto deadline = Clock::now() + timeout;

  int fd = -1;
  std::string last_error;
  for (;;) {
    fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return Error(Exit::ioerr, std::string("socket: ") + std::strerror(errno));
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) break;
    int err = errno;
    ::close(fd);
    fd = -1;
    // Not there yet, not listening yet, or its queue is full: qemu may be
    // starting, so try again until the deadline.
    if (err != ENOENT && err != ECONNREFUSED && err != EAGAIN)
      return Error(Exit::ioerr,
                   "cannot connect to QMP socket " + socket_path + ": " + std::strerror(err));
    last_error = std::strerror(err);
    if (Clock::now() >= deadline)
      return Error(Exit::tempfail, "QMP socket " + socket_path + " did not answer within " +
                                       std::to_string(timeout.count()) + " ms: " + last_error);
    if (!signals::sleep_for(std::min<std::chrono::milliseconds>(
            50ms, std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()))))
      return interrupted_error();
  }

  Qmp qmp(fd, socket_path);
  rapidjson::Document greeting;
  if (auto st = qmp.read_message(greeting, deadline); !st) {
    Error e = st.error();
    e.message = "QMP greeting from " + socket_path + ": " + e.message;
    return e;
  }
  if (!greeting.IsObject() || !greeting.HasMember("QMP"))
    return Error(Exit::protocol,
                 socket_path + " is not a QMP socket: it said " + to_text(greeting));
  const auto& qmp_info = greeting["QMP"];
  if (qmp_info.IsObject() && qmp_info.HasMember("version") && qmp_info["version"].IsObject()) {
    const auto& v = qmp_info["version"];
    if (v.HasMember("qemu") && v["qemu"].IsObject()) {
      const auto& q = v["qemu"];
      auto part = [&](const char* k) {
        return q.HasMember(k) && q[k].IsInt() ? std::to_string(q[k].GetInt()) : std::string("0");
      };
      qmp.version_ = part("major") + "." + part("minor") + "." + part("micro");
    }
  }
  auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
  if (auto r = qmp.execute("qmp_capabilities", nullptr, std::max(left, 1ms)); !r)
    return std::move(r).error();
  return qmp;
}

Qmp::Qmp(Qmp&& o) noexcept
    : fd_(o.fd_),
      path_(std::move(o.path_)),
      buffer_(std::move(o.buffer_)),
      events_(std::move(o.events_)),
      version_(std::move(o.version_)),
      next_id_(o.next_id_),
      closed_(o.closed_) {
  o.fd_ = -1;
}

Qmp& Qmp::operator=(Qmp&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    o.fd_ = -1;
    path_ = std::move(o.path_);
    buffer_ = std::move(o.buffer_);
    events_ = std::move(o.events_);
    version_ = std::move(o.version_);
    next_id_ = o.next_id_;
    closed_ = o.closed_;
  }
  return *this;
}

Qmp::~Qmp() {
  if (fd_ >= 0) ::close(fd_);
}

Error Qmp::closed_error() const {
  return Error(Exit::protocol, "qemu closed the QMP connection (" + path_ + ")");
}

Status Qmp::fill(Clock::time_point deadline, bool block) {
  if (closed_) return closed_error();
  for (;;) {
    char chunk[65536];
    ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
    if (n > 0) {
      buffer_.append(chunk, static_cast<size_t>(n));
      if (buffer_.size() > kMaxMessage)
        return Error(Exit::protocol,
                     "QMP message longer than " + std::to_string(kMaxMessage) + " bytes");
      return {};
    }
    if (n == 0) {
      closed_ = true;
      return closed_error();
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      if (errno == ECONNRESET) {
        closed_ = true;
        return closed_error();
      }
      return Error(Exit::ioerr, "reading QMP socket " + path_ + ": " + std::strerror(errno));
    }
    if (!block) return {};
    auto ready = wait_fd(fd_, POLLIN, deadline);
    if (!ready) return std::move(ready).error();
    if (!*ready) return Error(Exit::tempfail, "qemu did not answer on " + path_ + " in time");
  }
}

Result<bool> Qmp::next_buffered(rapidjson::Document& msg) {
  for (;;) {
    size_t nl = buffer_.find('\n');
    if (nl == std::string::npos) return false;
    std::string line = buffer_.substr(0, nl);
    buffer_.erase(0, nl + 1);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    msg.Parse(line.c_str(), line.size());
    if (msg.HasParseError() || !msg.IsObject())
      return Error(Exit::protocol,
                   "qemu sent something that is not a QMP message: " + line.substr(0, 200));
    return true;
  }
}

Status Qmp::read_message(rapidjson::Document& msg, Clock::time_point deadline) {
  for (;;) {
    auto got = next_buffered(msg);
    if (!got) return std::move(got).error();
    if (*got) return {};
    if (auto st = fill(deadline, true); !st) return st;
  }
}

Status Qmp::send_all(const std::string& text, Clock::time_point deadline) {
  if (closed_) return closed_error();
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = ::send(fd_, text.data() + off, text.size() - off, MSG_NOSIGNAL);
    if (n >= 0) {
      off += static_cast<size_t>(n);
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EPIPE || errno == ECONNRESET) {
      closed_ = true;
      return closed_error();
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      return Error(Exit::ioerr, "writing QMP socket " + path_ + ": " + std::strerror(errno));
    auto ready = wait_fd(fd_, POLLOUT, deadline);
    if (!ready) return std::move(ready).error();
    if (!*ready)
      return Error(Exit::tempfail, "qemu did not take a command on " + path_ + " in time");
  }
  return {};
}

void Qmp::keep_event(rapidjson::Document& msg) {
  QmpEvent ev;
  ev.name = member_string(msg, "event");
  auto data = msg.FindMember("data");
  if (data != msg.MemberEnd()) ev.data.CopyFrom(data->value, ev.data.GetAllocator());
  auto ts = msg.FindMember("timestamp");
  if (ts != msg.MemberEnd() && ts->value.IsObject()) {
    const auto& t = ts->value;
    if (t.HasMember("seconds") && t["seconds"].IsNumber()) ev.timestamp += t["seconds"].GetDouble();
    if (t.HasMember("microseconds") && t["microseconds"].IsNumber())
      ev.timestamp += t["microseconds"].GetDouble() / 1e6;
  }
  events_.push_back(std::move(ev));
}

Result<rapidjson::Document> Qmp::execute(const std::string& command,
                                         const rapidjson::Value* arguments,
                                         std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  // Every command carries its own id, so that a late reply to an earlier
  // command that timed out is never taken for this one's.
  std::string id = "kiln-" + std::to_string(next_id_++);
  rapidjson::Document req(rapidjson::kObjectType);
  auto& a = req.GetAllocator();
  req.AddMember("execute", rapidjson::Value(command.c_str(), a), a);
  if (arguments != nullptr) req.AddMember("arguments", rapidjson::Value(*arguments, a), a);
  req.AddMember("id", rapidjson::Value(id.c_str(), a), a);
  auto annotate = [&](Error e) {
    e.message = command + ": " + e.message;
    return e;
  };
  if (auto st = send_all(to_text(req) + "\n", deadline); !st) return annotate(st.error());

  for (;;) {
    rapidjson::Document msg;
    if (auto st = read_message(msg, deadline); !st) return annotate(st.error());
    if (msg.HasMember("event")) {
      keep_event(msg);
      continue;
    }
    if (member_string(msg, "id") != id) continue;  // a reply to an abandoned command
    if (auto err = msg.FindMember("error"); err != msg.MemberEnd()) {
      std::string desc = member_string(err->value, "desc");
      std::string cls = member_string(err->value, "class");
      if (desc.empty()) desc = to_text(err->value);
      return Error(Exit::protocol,
                   "qemu refused " + command + ": " + desc + (cls.empty() ? "" : " (" + cls + ")"));
    }
    auto ret = msg.FindMember("return");
    if (ret == msg.MemberEnd())
      return Error(Exit::protocol,
                   "qemu's reply to " + command + " has no return: " + to_text(msg));
    rapidjson::Document out;
    out.CopyFrom(ret->value, out.GetAllocator());
    return out;
  }
}

std::vector<QmpEvent> Qmp::take_events() {
  std::vector<QmpEvent> out;
  out.swap(events_);
  return out;
}

Status Qmp::poll_events() {
  for (;;) {
    rapidjson::Document msg;
    auto got = next_buffered(msg);
    if (!got) return std::move(got).error();
    if (*got) {
      if (msg.HasMember("event")) keep_event(msg);
      continue;
    }
    size_t before = buffer_.size();
    if (auto st = fill(Clock::now(), false); !st) return st;
    if (buffer_.size() == before) return {};
  }
}

Result<QmpEvent> Qmp::wait_event(const std::string& name, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    auto it = std::find_if(events_.begin(), events_.end(),
                           [&](const QmpEvent& e) { return e.name == name; });
    if (it != events_.end()) {
      QmpEvent ev = std::move(*it);
      events_.erase(it);
      return ev;
    }
    rapidjson::Document msg;
    if (auto st = read_message(msg, deadline); !st) {
      Error e = st.error();
      if (e.code == Exit::tempfail)
        e.message = "no " + name + " event within " + std::to_string(timeout.count()) + " ms";
      return e;
    }
    if (msg.HasMember("event")) keep_event(msg);
  }
}

Status Qmp::system_powerdown(std::chrono::milliseconds timeout) {
  auto r = execute("system_powerdown", nullptr, timeout);
  if (!r) return std::move(r).error();
  return {};
}

Status Qmp::quit(std::chrono::milliseconds timeout) {
  auto r = execute("quit", nullptr, timeout);
  if (!r && !closed_) return std::move(r).error();
  return {};
}

Result<std::string> Qmp::query_status(std::chrono::milliseconds timeout) {
  auto r = execute("query-status", nullptr, timeout);
  if (!r) return std::move(r).error();
  std::string status = member_string(*r, "status");
  if (status.empty()) return Error(Exit::protocol, "query-status: no status in " + to_text(*r));
  return status;
}

Status Qmp::send_key(const std::vector<std::string>& qcodes, std::chrono::milliseconds hold,
                     std::chrono::milliseconds timeout) {
  rapidjson::Document args(rapidjson::kObjectType);
  auto& a = args.GetAllocator();
  rapidjson::Value keys(rapidjson::kArrayType);
  for (const auto& q : qcodes) {
    rapidjson::Value key(rapidjson::kObjectType);
    key.AddMember("type", "qcode", a);
    key.AddMember("data", rapidjson::Value(q.c_str(), a), a);
    keys.PushBack(key, a);
  }
  args.AddMember("keys", keys, a);
  if (hold.count() > 0) args.AddMember("hold-time", static_cast<int64_t>(hold.count()), a);
  auto r = execute("send-key", &args, timeout);
  if (!r) return std::move(r).error();
  return {};
}

}  // namespace kiln

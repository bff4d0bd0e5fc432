// SPDX-License-Identifier: MIT
#include "communicator.hpp"

#include <charconv>

#include "keeper.hpp"
#include "signals.hpp"

namespace kiln::communicator {

using namespace std::chrono_literals;

namespace {

/// The first line of a wrapped command's stdout: the remote shell's pid,
/// which leads the command's process group (the SSH server starts every
/// session in a session of its own).
constexpr std::string_view kPidMarker = "kiln-pid ";

/// Whether the keeper's host key (OpenSSH format) is `pinned` (as
/// ssh::pinned_fingerprint reads it); an empty pin takes any key.
bool same_host_key(const std::string& key, const std::string& pinned) {
  if (pinned.empty()) return true;
  auto k = ssh::parse_public_key(key);
  auto want = ssh::pinned_fingerprint(pinned);
  return k && want && k->fingerprint == *want;
}

}  // namespace

/// How long a tool waits for the keeper's greeting before it connects on
/// its own (the keeper serves one tool at a time).
constexpr auto kKeeperGreeting = 1s;

Communicator::Communicator(Target target) : target_(std::move(target)) {}

Communicator::Communicator(Target target, ssh::Session session) : target_(std::move(target)) {
  session.keepalive(target_.keepalive_seconds);
  session_.emplace(std::move(session));
  keeper_asked_ = true;  // this is the keeper's own session
}

Communicator::Communicator(Communicator&&) noexcept = default;
Communicator& Communicator::operator=(Communicator&&) noexcept = default;
Communicator::~Communicator() = default;

keeper::Client* Communicator::keeper() {
  if (!keeper_asked_) {
    keeper_asked_ = true;
    // Only a keeper logged in where this target says, to the host key it
    // pins: another user or a changed key connects on its own (and fails
    // as it should).
    if (!target_.keeper.empty())
      if (auto c = keeper::Client::connect(target_.keeper, kKeeperGreeting);
          c && (*c)->where() == where() && same_host_key((*c)->host_key(), target_.host_key))
        keeper_ = std::move(*c);
  }
  if (keeper_ && !keeper_->usable()) keeper_.reset();
  return keeper_.get();
}

std::string Communicator::where() const {
  return target_.endpoint.user + "@" + target_.endpoint.host + ":" +
         std::to_string(target_.endpoint.port);
}

Status Communicator::connect(std::chrono::milliseconds timeout) {
  session_.reset();
  if (keeper()) return {};
  auto s = ssh::Session::connect(target_.endpoint, timeout);
  if (!s) return s.error();
  if (!target_.host_key.empty()) {
    if (auto st = s->pin_host_key(target_.host_key); !st) return st;
  } else {
    target_.host_key = s->host_key().openssh;
  }
  if (auto st = s->authenticate(target_.endpoint.user, target_.credentials, timeout); !st)
    return st;
  s->keepalive(target_.keepalive_seconds);
  session_.emplace(std::move(*s));
  return {};
}

Status Communicator::ensure() {
  if (session_) return {};
  return connect(60s);
}

void Communicator::drop() {
  session_.reset();
  if (keeper_) (void)keeper_->drop();
}

ssh::Session::TransferOptions Communicator::transfer_options(const Progress& progress) const {
  ssh::Session::TransferOptions o;
  o.method = target_.transfer;
  o.progress = progress;
  o.stall_timeout = target_.read_write_timeout;
  return o;
}

void Communicator::end_remote(int pid) {
  if (!session_ || pid <= 1) return;
  // The interrupt that brought us here would end this wait at once too.
  int sig = signals::received();
  signals::clear();
  std::string p = std::to_string(pid);
  (void)session_->exec("kill -TERM -" + p + " 2>/dev/null || kill -TERM " + p, {}, {}, 3s);
  if (sig != 0) signals::raise_for_test(sig);
}

Result<int> Communicator::run(const std::string& command, const Sink& out, const Sink& err,
                              std::chrono::milliseconds timeout) {
  if (auto* k = keeper()) {
    auto r = k->run(command, out, err, timeout);
    if (!r && r.error().code == Exit::protocol &&
        r.error().message.find("connection lost") != std::string::npos)
      return kDisconnected;
    return r;
  }
  if (auto st = ensure(); !st) return st.error();
  int pid = 0;
  std::string head;  // stdout until the pid line is complete
  bool head_done = false;
  auto out_sink = [&](std::string_view chunk) {
    if (head_done) {
      if (out) out(chunk);
      return;
    }
    head.append(chunk);
    auto nl = head.find('\n');
    if (nl == std::string::npos) return;
    std::string_view line(head.data(), nl);
    if (line.substr(0, kPidMarker.size()) == kPidMarker) {
      auto digits = line.substr(kPidMarker.size());
      std::from_chars(digits.data(), digits.data() + digits.size(), pid);
      head_done = true;
      if (out && head.size() > nl + 1) out(std::string_view(head).substr(nl + 1));
    } else {
      head_done = true;
      if (out) out(head);
    }
    head.clear();
  };
  auto r =
      session_->exec("echo " + std::string(kPidMarker) + "$$; " + command, out_sink, err, timeout);
  if (!head_done && !head.empty() && out) out(head);
  if (r) return *r;
  Error e = r.error();
  if (e.code == Exit::tempfail || e.code == Exit::interrupted) {
    end_remote(pid);
    return e;
  }
  if (e.code == Exit::protocol && e.message.find("connection lost") != std::string::npos) {
    session_.reset();
    return kDisconnected;
  }
  session_.reset();
  return e;
}

namespace {

/// A transfer that failed on the connection leaves the session unusable.
Status forget_on_failure(Status st, std::optional<ssh::Session>& session) {
  if (!st && (st.error().code == Exit::protocol || st.error().code == Exit::tempfail))
    session.reset();
  return st;
}

}  // namespace

Status Communicator::upload_file(const std::string& local, const std::string& remote,
                                 const Progress& progress, std::optional<int> mode) {
  if (auto* k = keeper()) return k->upload_file(local, remote, progress, mode);
  if (auto st = ensure(); !st) return st;
  return forget_on_failure(session_->upload_file(local, remote, transfer_options(progress), mode),
                           session_);
}

Status Communicator::upload_data(std::string_view data, const std::string& remote, int mode) {
  if (auto* k = keeper()) return k->upload_data(data, remote, mode);
  if (auto st = ensure(); !st) return st;
  return forget_on_failure(session_->upload_data(data, remote, mode, transfer_options({})),
                           session_);
}

Status Communicator::upload_directory(const std::string& local, const std::string& remote,
                                      const Progress& progress) {
  if (auto* k = keeper()) return k->upload_directory(local, remote, progress);
  if (auto st = ensure(); !st) return st;
  return forget_on_failure(session_->upload_directory(local, remote, transfer_options(progress)),
                           session_);
}

Status Communicator::download_file(const std::string& remote, const std::string& local,
                                   const Progress& progress) {
  if (auto* k = keeper()) return k->download_file(remote, local, progress);
  if (auto st = ensure(); !st) return st;
  return forget_on_failure(session_->download_file(remote, local, transfer_options(progress)),
                           session_);
}

Status Communicator::download_directory(const std::string& remote, const std::string& local,
                                        const Progress& progress) {
  if (auto* k = keeper()) return k->download_directory(remote, local, progress);
  if (auto st = ensure(); !st) return st;
  return forget_on_failure(session_->download_directory(remote, local, transfer_options(progress)),
                           session_);
}

Result<bool> Communicator::is_directory(const std::string& remote) {
  if (auto* k = keeper()) return k->is_directory(remote);
  if (auto st = ensure(); !st) return st.error();
  auto r = session_->remote_is_directory(remote);
  if (!r) (void)forget_on_failure(r.error(), session_);
  return r;
}

}  // namespace kiln::communicator

// SPDX-License-Identifier: MIT
#include "ssh.hpp"

#include <libssh2.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <vector>

#include "atomic_file.hpp"
#include "fd.hpp"
#include "signals.hpp"
#include "ssh_internal.hpp"
#include "text.hpp"

namespace kiln::ssh {

using namespace detail;
using text::base64;
using text::unbase64;

namespace detail {

std::string seconds_text(Clock::duration d) {
  auto ms = std::chrono::duration_cast<milliseconds>(d).count();
  if (ms < 1000) return std::to_string(ms) + " ms";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f s", static_cast<double>(ms) / 1000.0);
  return buf;
}

Waited wait_fd(int fd, short events, Clock::time_point deadline, bool watch_signals,
               milliseconds cap) {
  if (watch_signals && signals::interrupted()) return Waited::interrupted;
  auto now = Clock::now();
  if (now >= deadline) return Waited::timeout;
  auto left =
      deadline == Clock::time_point::max() ? cap : std::chrono::ceil<milliseconds>(deadline - now);
  int ms = static_cast<int>(std::min(left, cap).count());
  pollfd p[2] = {{fd, events, 0}, {signals::wake_fd(), POLLIN, 0}};
  nfds_t n = watch_signals && p[1].fd >= 0 ? 2 : 1;
  int rc = ::poll(p, n, ms);
  if (watch_signals && signals::interrupted()) return Waited::interrupted;
  if (rc > 0 && p[0].revents != 0) return Waited::ready;
  if (Clock::now() >= deadline) return Waited::timeout;
  return Waited::idle;
}

bool is_connection_loss(int rc) {
  switch (rc) {
    case LIBSSH2_ERROR_SOCKET_NONE:
    case LIBSSH2_ERROR_SOCKET_SEND:
    case LIBSSH2_ERROR_SOCKET_RECV:
    case LIBSSH2_ERROR_SOCKET_DISCONNECT:
    case LIBSSH2_ERROR_SOCKET_TIMEOUT:
    case LIBSSH2_ERROR_BAD_SOCKET:
    case LIBSSH2_ERROR_BANNER_SEND:
      return true;
    default:
      return false;
  }
}

std::string loss_reason(int rc) {
  switch (rc) {
    case LIBSSH2_ERROR_SOCKET_DISCONNECT:
      return "the server closed the connection";
    case LIBSSH2_ERROR_SOCKET_RECV:
      return "the connection broke while reading (reset by the peer?)";
    case LIBSSH2_ERROR_SOCKET_SEND:
    case LIBSSH2_ERROR_BANNER_SEND:
      return "the connection broke while writing (reset by the peer?)";
    default:
      return "socket error";
  }
}

}  // namespace detail

namespace {

using namespace std::chrono_literals;

/// Pause between two tries to reach a server that is not up yet.
constexpr milliseconds kRetryEvery = 200ms;
/// While the connections first_to_speak opened stay silent, a new one
/// every kOpenEvery, the oldest kept for kMaxSilent * kOpenEvery (2.4 s);
/// after one the guest closed at once, the next after kAgainAfterClose.
/// With a network probe, the probe port gets one every kProbeEvery until
/// the guest's network answers; the server's port none for kBlindAfter,
/// then one every kBlindEvery; and every kSlowServerEvery once the network
/// answered.
constexpr milliseconds kOpenEvery = 50ms;
constexpr std::size_t kMaxSilent = 48;
constexpr milliseconds kAgainAfterClose = 25ms;
constexpr milliseconds kProbeEvery = 100ms;
constexpr milliseconds kBlindAfter = 10000ms;
constexpr milliseconds kBlindEvery = 5000ms;
constexpr milliseconds kSlowServerEvery = 500ms;
/// How long the first try of wait_until_ready may take, and how much longer
/// each try after one that ran out of time.
constexpr milliseconds kFirstTry = 600ms;
constexpr milliseconds kTryGrowth = 600ms;

int libssh2_ready() {
  static std::once_flag once;
  static int rc = 0;
  std::call_once(once, [] { rc = libssh2_init(0); });
  return rc;
}

// ---------------------------------------------------------------- encodings

std::string fingerprint(std::string_view blob) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(blob.data(), blob.size(), md, &len, EVP_sha256(), nullptr);
  std::string b64 = base64(std::string_view(reinterpret_cast<char*>(md), len));
  while (!b64.empty() && b64.back() == '=') b64.pop_back();
  return "SHA256:" + b64;
}

void put_u32(std::string& b, uint32_t v) {
  b += static_cast<char>(v >> 24);
  b += static_cast<char>(v >> 16);
  b += static_cast<char>(v >> 8);
  b += static_cast<char>(v);
}

void put_string(std::string& b, std::string_view s) {
  put_u32(b, static_cast<uint32_t>(s.size()));
  b.append(s);
}

/// The big-endian uint32 at the start of `b` (which has 4 bytes at least).
uint32_t be32(std::string_view b) {
  auto u = [&](size_t i) { return static_cast<uint32_t>(static_cast<unsigned char>(b[i])); };
  return u(0) << 24 | u(1) << 16 | u(2) << 8 | u(3);
}

/// The key type named at the start of an SSH public key blob, "" if none.
std::string blob_type(std::string_view blob) {
  if (blob.size() < 4) return "";
  uint32_t len = be32(blob);
  if (len == 0 || len > 64 || 4 + len > blob.size()) return "";
  std::string type(blob.substr(4, len));
  for (char c : type)
    if (c <= ' ' || c > '~') return "";
  return type;
}

/// A std::string for key material, wiped when it goes away. Callers reserve
/// its final size first so no reallocation leaves copies behind.
struct SecretString {
  std::string s;
  SecretString() = default;
  SecretString(const SecretString&) = delete;
  SecretString& operator=(const SecretString&) = delete;
  ~SecretString() { OPENSSL_cleanse(s.data(), s.size()); }
};

// ---------------------------------------------------------------- waiting

/// Signal names as SSH sends them (RFC 4254 6.10) and their Linux numbers.
int signal_number(std::string_view name) {
  static constexpr std::pair<std::string_view, int> kSignals[] = {
      {"HUP", 1},   {"INT", 2},   {"QUIT", 3},  {"ILL", 4},   {"TRAP", 5},  {"ABRT", 6},
      {"BUS", 7},   {"FPE", 8},   {"KILL", 9},  {"USR1", 10}, {"SEGV", 11}, {"USR2", 12},
      {"PIPE", 13}, {"ALRM", 14}, {"TERM", 15}, {"XCPU", 24}, {"XFSZ", 25}};
  if (name.substr(0, 3) == "SIG") name.remove_prefix(3);
  for (const auto& [n, number] : kSignals)
    if (n == name) return number;
  return 127;  // an unknown signal still reads as "ended by a signal" (255)
}

std::string join(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ", ") + p;
  return out;
}

bool offers(const std::string& methods, std::string_view method) {
  size_t start = 0;
  while (start <= methods.size()) {
    size_t end = methods.find(',', start);
    if (end == std::string::npos) end = methods.size();
    if (std::string_view(methods).substr(start, end - start) == method) return true;
    start = end + 1;
  }
  return false;
}

std::string where_of(const Endpoint& ep) {
  bool v6 = ep.host.find(':') != std::string::npos;
  return (v6 ? "[" + ep.host + "]" : ep.host) + ":" + std::to_string(ep.port);
}

/// A connected non-blocking TCP socket with TCP_NODELAY. Errors:
/// Exit::tempfail (refused, unreachable, no answer by `deadline`),
/// Exit::config (unknown host), Exit::interrupted.
Result<int> tcp_connect(const Endpoint& ep, Clock::time_point deadline) {
  const std::string where = where_of(ep);
  if (ep.port <= 0 || ep.port > 65535)
    return Error(Exit::config, "port " + std::to_string(ep.port) + " is out of range");
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  int gai = ::getaddrinfo(ep.host.c_str(), std::to_string(ep.port).c_str(), &hints, &found);
  if (gai == EAI_NONAME) return Error(Exit::config, "unknown host '" + ep.host + "'");
  if (gai != 0)
    return Error(Exit::tempfail, "cannot resolve " + ep.host + ": " + ::gai_strerror(gai));
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> list(found, ::freeaddrinfo);

  std::string reason = "no address";
  for (addrinfo* ai = found; ai; ai = ai->ai_next) {
    UniqueFd fd(
        ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
    if (fd.get() < 0) {
      reason = std::strerror(errno);
      continue;
    }
    if (::connect(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      if (errno != EINPROGRESS) {
        reason = std::strerror(errno);
        continue;
      }
      Waited w;
      while ((w = wait_fd(fd.get(), POLLOUT, deadline, true)) == Waited::idle) {
      }
      if (w == Waited::interrupted)
        return Error(Exit::interrupted, "interrupted while connecting to " + where);
      if (w == Waited::timeout) return Error(Exit::tempfail, "no answer from " + where);
      int so_error = 0;
      socklen_t len = sizeof so_error;
      ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &so_error, &len);
      if (so_error != 0) {
        reason = std::strerror(so_error);
        continue;
      }
    }
    int one = 1;
    ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd.release();
  }
  for (char& c : reason) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return Error(Exit::tempfail, "cannot connect to " + where + ": " + reason);
}

}  // namespace

// ---------------------------------------------------------------- session

namespace detail {

SessionState::~SessionState() {
  if (s) {
    auto deadline = Clock::now() + kCleanupTime;
    // SFTP goes first, politely while the peer answers. libssh2 frees what
    // is left of it with its channel when the session goes, should this
    // not finish.
    bool sftp_done = !sftp;
    if (sftp && orphaned_handles.empty())
      sftp_done = drive([&] { return libssh2_sftp_shutdown(sftp); }, deadline, false) != kTimedOut;
    if (handshaken)
      drive([&] { return libssh2_session_disconnect(s, "closed by kiln"); }, deadline, false);
    // With the socket shut, whatever libssh2 still wants to send fails at
    // once instead of waiting on a peer that may be gone.
    if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
    // Handles a peer stopped answering for are freed only by a close
    // (which fails now) and their requests by the SFTP shutdown after it.
    for (auto* h : orphaned_handles)
      for (int i = 0; i < 100 && libssh2_sftp_close_handle(h) == LIBSSH2_ERROR_EAGAIN; ++i) {
      }
    for (int i = 0; i < 100 && !sftp_done; ++i)
      sftp_done = libssh2_sftp_shutdown(sftp) != LIBSSH2_ERROR_EAGAIN;
    for (int i = 0; i < 100 && !abandoned.empty(); ++i) reap();
    for (int i = 0; i < 100 && libssh2_session_free(s) == LIBSSH2_ERROR_EAGAIN; ++i) {
    }
  }
  if (fd >= 0) ::close(fd);
}

}  // namespace detail

namespace {

using StatePtr = std::unique_ptr<detail::SessionState>;

/// libssh2's socket I/O (as its own, errors as -errno) that also counts the
/// bytes that move, for the stall timeout of transfers.
ssize_t counted_send(libssh2_socket_t fd, const void* buf, size_t len, int flags, void** abstract) {
  ssize_t n = ::send(fd, buf, len, flags);
  if (n < 0) return -errno;
  static_cast<detail::SessionState*>(*abstract)->bytes_moved += static_cast<uint64_t>(n);
  return n;
}

ssize_t counted_recv(libssh2_socket_t fd, void* buf, size_t len, int flags, void** abstract) {
  ssize_t n = ::recv(fd, buf, len, flags);
  if (n < 0) return -errno;
  static_cast<detail::SessionState*>(*abstract)->bytes_moved += static_cast<uint64_t>(n);
  return n;
}

/// Puts `first` at the head of libssh2's list of `method` and keeps every
/// other method it supports after them, so a server without them still
/// finds one in common.
void prefer(LIBSSH2_SESSION* s, int method, std::initializer_list<std::string_view> first) {
  const char** algs = nullptr;
  int n = libssh2_session_supported_algs(s, method, &algs);
  if (n <= 0 || !algs) return;
  const std::vector<std::string_view> supported(algs, algs + n);
  libssh2_free(s, algs);
  std::string list;
  auto add = [&](std::string_view m) { list += (list.empty() ? "" : ",") + std::string(m); };
  for (auto m : first)
    if (std::find(supported.begin(), supported.end(), m) != supported.end()) add(m);
  for (auto m : supported)
    if (std::find(first.begin(), first.end(), m) == first.end()) add(m);
  libssh2_session_method_pref(s, method, list.c_str());
}

/// The SSH handshake on a connected socket, which the session takes over.
/// Errors as Session::connect, with Exit::tempfail for every failure a
/// retry may cure.
Result<StatePtr> handshake(int fd, const Endpoint& ep, Clock::time_point deadline) {
  auto state = std::make_unique<detail::SessionState>();
  state->fd = fd;
  state->where = where_of(ep);
  state->s = libssh2_session_init_ex(nullptr, nullptr, nullptr, state.get());
  if (!state->s) return Error(Exit::software, "cannot create an SSH session: out of memory");
  libssh2_session_set_blocking(state->s, 0);
  libssh2_session_callback_set(state->s, LIBSSH2_CALLBACK_SEND,
                               reinterpret_cast<void*>(&counted_send));
  libssh2_session_callback_set(state->s, LIBSSH2_CALLBACK_RECV,
                               reinterpret_cast<void*>(&counted_recv));
  // Bulk transfer speed is the cipher's. libssh2 1.10 has neither
  // chacha20-poly1305 nor AES-GCM, and makes one libcrypto call per 16-byte
  // block, so the call dominates; AES-128's fewer rounds still cost ~10%
  // less than its default AES-256 (both CTR, with AES-NI). hmac-sha2-256
  // (SHA-NI) measured as fast as hmac-sha1 and faster than hmac-sha2-512.
  prefer(state->s, LIBSSH2_METHOD_CRYPT_CS, {"aes128-ctr", "aes256-ctr"});
  prefer(state->s, LIBSSH2_METHOD_CRYPT_SC, {"aes128-ctr", "aes256-ctr"});
  prefer(state->s, LIBSSH2_METHOD_MAC_CS, {"hmac-sha2-256"});
  prefer(state->s, LIBSSH2_METHOD_MAC_SC, {"hmac-sha2-256"});

  int rc = state->drive([&] { return libssh2_session_handshake(state->s, state->fd); }, deadline);
  if (rc == kTimedOut) return Error(Exit::tempfail, "no SSH handshake from " + state->where);
  if (rc == kInterrupted) return state->failure(rc, "the SSH handshake");
  if (rc != 0) {
    const char* banner = libssh2_session_banner_get(state->s);
    if (banner && std::strncmp(banner, "SSH-", 4) != 0)
      return Error(Exit::protocol, state->where + " is not an SSH server (it sent: " +
                                       std::string(banner).substr(0, 60) + ")");
    // A server that is still starting (or a port forwarder whose target is
    // not up yet) accepts and then drops the connection: worth a retry.
    if (is_connection_loss(rc))
      return Error(Exit::tempfail, state->where +
                                       " closed the connection during the SSH handshake (" +
                                       state->last_error() + ")");
    return Error(Exit::protocol,
                 "SSH handshake with " + state->where + " failed: " + state->last_error());
  }
  state->handshaken = true;

  size_t len = 0;
  int type = 0;
  const char* key = libssh2_session_hostkey(state->s, &len, &type);
  std::string_view blob(key ? key : "", key ? len : 0);
  std::string name = blob_type(blob);
  if (name.empty()) return Error(Exit::protocol, state->where + " sent an unreadable host key");
  state->host_key.openssh = name + " " + base64(blob);
  state->host_key.fingerprint = fingerprint(blob);
  return state;
}

/// One TCP connection and handshake, as handshake().
Result<StatePtr> open_once(const Endpoint& ep, Clock::time_point deadline) {
  auto fd = tcp_connect(ep, deadline);
  if (!fd) return fd.error();
  return handshake(*fd, ep, deadline);
}

/// Whether a wait for the SSH server at `where` goes on: should_stop()'s
/// Error, or Exit::interrupted after a signal.
Status keep_waiting(const std::function<Status()>& should_stop, const std::string& where) {
  if (should_stop)
    if (auto st = should_stop(); !st) return st;
  if (signals::interrupted())
    return Error(Exit::interrupted, "interrupted while waiting for SSH on " + where);
  return {};
}

/// The first of several connections to `ep` on which the server speaks (its
/// banner, peeked at, not read).
///
/// qemu's user network accepts a connection before the guest listens. When
/// the guest misses that connection's SYN (its network not up yet), the
/// connection stays silent until slirp sends the SYN again, seconds later,
/// and slirp keeps it even after this side closed it: once the guest's
/// server listens, every such stale connection reaches it, and the guest
/// spends its CPU starting a server process for each, just when the first
/// real login wants it. So, when `probe_port` (a host port qemu forwards to
/// a port the guest does not listen on) is given, connections go there
/// every kProbeEvery until the guest's network answers one (a reset; a
/// probe qemu refuses is tried again after kRetryEvery, qemu may not listen
/// yet), and to the server's port only after kBlindAfter, every kBlindEvery
/// (for a guest whose firewall drops the probe, or that listens there).
/// Without a probe, the server's port gets one every kOpenEvery.
///
/// Once the guest's network answered, a connection the server's port
/// closes (a reset: nothing listens yet) is followed by the next after
/// kAgainAfterClose, and a silent one by another after kSlowServerEvery.
/// A connection that failed on this side is retried after kRetryEvery; the
/// oldest silent ones are dropped beyond kMaxSilent. `should_stop()` runs
/// at each wake-up, every kOpenEvery or sooner (its Error is returned as
/// is). `network_up` says whether the guest's network answered already (an
/// earlier call) and is set when it does. Errors: Exit::tempfail when none
/// spoke by `until` (with the last reason), Exit::interrupted, and
/// tcp_connect's errors no retry cures.
Result<int> first_to_speak(const Endpoint& ep, int probe_port, bool& network_up,
                           Clock::time_point until, const std::function<Status()>& should_stop) {
  const std::string where = where_of(ep);
  Endpoint probe_ep = ep;
  probe_ep.port = probe_port;
  std::vector<UniqueFd> silent;  // to the server's port
  std::vector<UniqueFd> probes;  // to the probe port, while the network is not known up
  bool probing = probe_port > 0 && !network_up;
  std::string last = "no answer from " + where;
  auto next_open = probing ? Clock::now() + kBlindAfter : Clock::now();
  auto next_probe = Clock::now();
  // The guest's network answered: the server's port is tried at once, and
  // the probes are done.
  auto answered = [&](Clock::time_point now) {
    network_up = true;
    if (probing) next_open = now;
    probing = false;
    probes.clear();
  };
  for (;;) {
    if (auto st = keep_waiting(should_stop, where); !st) return std::move(st).error();
    auto now = Clock::now();
    if (now >= until) return Error(Exit::tempfail, last);
    if (probing && now >= next_probe) {
      if (probes.size() == kMaxSilent) probes.erase(probes.begin());
      auto fd = tcp_connect(probe_ep, std::min(until, now + kRetryEvery));
      auto pause = kProbeEvery;
      if (fd) {
        probes.emplace_back(*fd);
      } else if (fd.error().code == Exit::interrupted) {
        return fd.error();
      } else {
        pause = kRetryEvery;  // qemu may not listen yet
      }
      now = Clock::now();
      next_probe = now + pause;
    }
    if (now >= next_open) {
      if (silent.size() == kMaxSilent) silent.erase(silent.begin());  // the oldest
      auto fd = tcp_connect(ep, std::min(until, now + kRetryEvery));
      auto pause = probing ? kBlindEvery : network_up ? kSlowServerEvery : kOpenEvery;
      if (fd) {
        silent.emplace_back(*fd);
        last = "no answer from " + where;
      } else if (fd.error().code != Exit::tempfail) {
        return fd.error();
      } else {
        last = fd.error().message;
        pause = kRetryEvery;
      }
      now = Clock::now();
      next_open = now + pause;
    }
    std::vector<pollfd> polled;
    for (const auto& fd : silent) polled.push_back({fd.get(), POLLIN, 0});
    for (const auto& fd : probes) polled.push_back({fd.get(), POLLIN, 0});
    polled.push_back({signals::wake_fd(), POLLIN, 0});
    if (polled.back().fd < 0) polled.pop_back();
    auto wake = std::min({until, now + kRetryEvery, next_open});
    if (probing) wake = std::min(wake, next_probe);
    int ms = static_cast<int>(
        std::max<milliseconds::rep>(0, std::chrono::ceil<milliseconds>(wake - now).count()));
    if (::poll(polled.data(), polled.size(), ms) <= 0) continue;
    // Any word or close on a probe is the guest's network answering.
    for (std::size_t i = 0; i < probes.size(); ++i) {
      if (polled[silent.size() + i].revents != 0) {
        answered(Clock::now());
        break;
      }
    }
    for (std::size_t i = silent.size(); i-- > 0;) {
      if (polled[i].revents == 0) continue;
      char byte;
      ssize_t n = ::recv(silent[i].get(), &byte, 1, MSG_PEEK);
      if (n > 0) {
        network_up = true;
        return silent[i].release();  // the others close as they go
      }
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      last = where + " closed the connection before the SSH handshake" +
             (n < 0 ? std::string(" (") + std::strerror(errno) + ")" : std::string());
      silent.erase(silent.begin() + static_cast<std::ptrdiff_t>(i));
      answered(Clock::now());
      next_open = std::min(next_open, Clock::now() + kAgainAfterClose);
    }
  }
}

}  // namespace

Session::Session(std::unique_ptr<detail::SessionState> state) : state_(std::move(state)) {}
Session::Session(Session&&) noexcept = default;
Session& Session::operator=(Session&&) noexcept = default;
Session::~Session() = default;

Result<Session> Session::connect(const Endpoint& ep, milliseconds timeout) {
  if (libssh2_ready() != 0) return Error(Exit::software, "cannot initialise libssh2");
  const auto start = Clock::now();
  const auto deadline = start + timeout;
  std::string last = "no try finished";
  for (;;) {
    const auto tried_at = Clock::now();
    auto state = open_once(ep, deadline);
    if (state) return Session(std::move(*state));
    if (state.error().code != Exit::tempfail) return std::move(state).error();
    last = state.error().message;
    const auto next = std::min(tried_at + kRetryEvery, deadline);
    const auto now = Clock::now();
    if (now >= deadline) break;
    if (now < next && !signals::sleep_for(std::chrono::ceil<milliseconds>(next - now)))
      return Error(Exit::interrupted, "interrupted while connecting to " + where_of(ep));
    if (Clock::now() >= deadline) break;
  }
  return Error(Exit::tempfail, "no SSH server answered on " + where_of(ep) + " within " +
                                   seconds_text(Clock::now() - start) + " (last: " + last + ")");
}

const HostKey& Session::host_key() const {
  assert(state_);
  return state_->host_key;
}

Result<HostKey> parse_public_key(std::string_view line) {
  auto word = [&]() {
    size_t b = line.find_first_not_of(" \t\r\n");
    if (b == std::string_view::npos) return std::string_view();
    line.remove_prefix(b);
    size_t e = std::min(line.find_first_of(" \t\r\n"), line.size());
    auto w = line.substr(0, e);
    line.remove_prefix(e);
    return w;
  };
  std::string_view type = word();
  std::string_view b64 = word();
  std::string blob;
  if (type.empty() || !unbase64(b64, blob) || blob_type(blob) != type) {
    std::string shown(type.substr(0, 40));
    return Error(Exit::dataerr, "not an OpenSSH public key (\"type base64\"): '" + shown + "...'");
  }
  return HostKey{std::string(type) + " " + std::string(b64), fingerprint(blob)};
}

Result<std::string> pinned_fingerprint(const std::string& expected) {
  if (expected.rfind("SHA256:", 0) == 0) {
    std::string want = expected;
    while (!want.empty() &&
           (want.back() == '=' || std::isspace(static_cast<unsigned char>(want.back()))))
      want.pop_back();
    return want;
  }
  auto key = parse_public_key(expected);
  if (!key) return key.error();
  return key->fingerprint;
}

Status Session::pin_host_key(const std::string& expected) {
  auto want = pinned_fingerprint(expected);
  if (!want) return want.error();
  if (*want != state_->host_key.fingerprint)
    return Error(Exit::protocol, "host key mismatch: expected " + *want + ", got " +
                                     state_->host_key.fingerprint + " from " + state_->where);
  return {};
}

namespace {

/// The type of the key in a private key file ("ssh-rsa", ...), "" when it
/// cannot tell; used only to explain a refusal.
std::string private_key_type(const std::string& path) {
  auto text = read_file(path);
  if (!text) return "";
  SecretString pem;
  pem.s = std::move(*text);
  if (pem.s.find("-----BEGIN RSA PRIVATE KEY-----") != std::string::npos) return "ssh-rsa";
  const std::string_view begin = "-----BEGIN OPENSSH PRIVATE KEY-----";
  size_t b = pem.s.find(begin);
  size_t e = pem.s.find("-----END OPENSSH PRIVATE KEY-----");
  if (b == std::string::npos || e == std::string::npos || e < b) return "";
  SecretString b64;
  b64.s.reserve(e - b);
  for (size_t i = b + begin.size(); i < e; ++i)
    if (!std::isspace(static_cast<unsigned char>(pem.s[i]))) b64.s += pem.s[i];
  SecretString raw;
  raw.s.reserve(b64.s.size());
  if (!unbase64(b64.s, raw.s)) return "";
  // "openssh-key-v1\0", cipher, kdf, kdf options, key count, then the
  // first public key (never encrypted).
  std::string_view rest(raw.s);
  auto take = [&](std::string_view& field) {
    if (rest.size() < 4 || rest.size() - 4 < be32(rest)) return false;
    field = rest.substr(4, be32(rest));
    rest.remove_prefix(4 + field.size());
    return true;
  };
  std::string_view cipher, kdf, kdf_options, public_key;
  if (rest.substr(0, 15) != std::string_view("openssh-key-v1\0", 15)) return "";
  rest.remove_prefix(15);
  if (!take(cipher) || !take(kdf) || !take(kdf_options) || rest.size() < 4) return "";
  rest.remove_prefix(4);
  if (!take(public_key)) return "";
  return blob_type(public_key);
}

struct AgentCloser {
  void operator()(LIBSSH2_AGENT* a) const {
    libssh2_agent_disconnect(a);
    libssh2_agent_free(a);
  }
};

/// Answers every keyboard-interactive prompt with the password, as OpenSSH
/// servers with PAM ask for it that way.
void answer_with_password(const char*, int, const char*, int, int num_prompts,
                          const LIBSSH2_USERAUTH_KBDINT_PROMPT*,
                          LIBSSH2_USERAUTH_KBDINT_RESPONSE* responses, void** abstract) {
  auto* state = static_cast<detail::SessionState*>(*abstract);
  std::string_view pw;
  if (state && state->kbd_password) pw = *state->kbd_password;
  for (int i = 0; i < num_prompts; ++i) {
    // libssh2 frees the answers with free().
    responses[i].text = static_cast<char*>(std::malloc(pw.size() + 1));
    if (!responses[i].text) {
      responses[i].length = 0;
      continue;
    }
    std::memcpy(responses[i].text, pw.data(), pw.size());
    responses[i].length = static_cast<unsigned>(pw.size());
  }
}

}  // namespace

Status Session::authenticate(const std::string& user, const Credentials& cred,
                             milliseconds timeout) {
  detail::SessionState& im = *state_;
  const auto deadline = Clock::now() + timeout;
  const auto ulen = static_cast<unsigned>(user.size());

  if (libssh2_userauth_authenticated(im.s)) return {};
  int rc = 0;
  if (!im.auth_methods) {
    char* listed = nullptr;
    rc = im.drive(
        [&] {
          listed = libssh2_userauth_list(im.s, user.c_str(), ulen);
          if (listed || libssh2_userauth_authenticated(im.s)) return 0;
          return libssh2_session_last_errno(im.s);
        },
        deadline);
    if (rc != 0) return im.failure(rc, "authentication");
    if (!listed) return {};  // the server let us in with "none"
    im.auth_methods = listed;
  }
  const std::string& accepts = *im.auth_methods;
  bool rsa_tried = false;

  std::vector<std::string> tried;
  std::vector<std::string> refused_by_server;
  // A failed attempt: an Error unless it was a plain "no".
  auto attempt_failed = [&](int code, const std::string& what) -> std::optional<Error> {
    if (code == kTimedOut || code == kInterrupted) return im.failure(code, "authentication");
    if (is_connection_loss(code)) {
      if (tried.empty()) return im.failure(code, "authentication");
      return Error(Exit::protocol, "permission denied for user " + user + " on " + im.where +
                                       " (tried: " + join(tried) + ", then " + what +
                                       "; the server closed the connection)");
    }
    tried.push_back(what);
    return std::nullopt;
  };

  if (cred.agent) {
    const char* sock = std::getenv("SSH_AUTH_SOCK");
    if (!offers(accepts, "publickey")) {
      refused_by_server.push_back("agent keys");
    } else if (!sock || !*sock) {
      tried.push_back("agent (SSH_AUTH_SOCK is not set)");
    } else {
      std::unique_ptr<LIBSSH2_AGENT, AgentCloser> agent(libssh2_agent_init(im.s));
      if (!agent || libssh2_agent_connect(agent.get()) != 0) {
        tried.push_back(std::string("agent (cannot connect to ") + sock + ")");
      } else if (im.drive([&] { return libssh2_agent_list_identities(agent.get()); }, deadline) !=
                 0) {
        tried.push_back(std::string("agent (cannot list its keys at ") + sock + ")");
      } else {
        libssh2_agent_publickey* prev = nullptr;
        libssh2_agent_publickey* id = nullptr;
        int n = 0;
        while (libssh2_agent_get_identity(agent.get(), &id, prev) == 0) {
          ++n;
          rc = im.drive([&] { return libssh2_agent_userauth(agent.get(), user.c_str(), id); },
                        deadline);
          if (rc == 0) return {};
          std::string what = "publickey with agent key " + std::to_string(n);
          rsa_tried |= blob_type(std::string_view(reinterpret_cast<const char*>(id->blob),
                                                  id->blob_len)) == "ssh-rsa";
          if (id->comment && *id->comment) what += std::string(" (") + id->comment + ")";
          if (auto e = attempt_failed(rc, what)) return *e;
          prev = id;
        }
        if (n == 0) tried.push_back("agent (it holds no keys)");
      }
    }
  }

  if (!cred.private_key_file.empty()) {
    const std::string& path = cred.private_key_file;
    if (::access(path.c_str(), R_OK) != 0)
      return Error(Exit::noinput, "cannot read private key " + path + ": " + std::strerror(errno));
    if (!offers(accepts, "publickey")) {
      refused_by_server.push_back("publickey with " + path);
    } else {
      const char* pass = cred.passphrase.empty() ? nullptr : cred.passphrase.c_str();
      rc = im.drive(
          [&] {
            return libssh2_userauth_publickey_fromfile_ex(im.s, user.c_str(), ulen, nullptr,
                                                          path.c_str(), pass);
          },
          deadline);
      if (rc == 0) return {};
      if (rc == LIBSSH2_ERROR_FILE)
        return Error(Exit::config,
                     "cannot load private key " + path + ": " +
                         (pass ? "wrong passphrase, or not a private key libssh2 reads"
                               : "it needs a passphrase, or is not a private key "
                                 "libssh2 reads") +
                         " (OpenSSH or PEM; ed25519, ecdsa, rsa)");
      if (auto e = attempt_failed(rc, "publickey with " + path)) return *e;
      rsa_tried |= private_key_type(path) == "ssh-rsa";
    }
  }

  if (!cred.password.empty()) {
    if (offers(accepts, "password")) {
      rc = im.drive(
          [&] {
            return libssh2_userauth_password_ex(im.s, user.c_str(), ulen, cred.password.c_str(),
                                                static_cast<unsigned>(cred.password.size()),
                                                nullptr);
          },
          deadline);
      if (rc == 0) return {};
      if (rc == LIBSSH2_ERROR_PASSWORD_EXPIRED)
        return Error(Exit::protocol,
                     "the password of user " + user + " on " + im.where + " has expired");
      if (auto e = attempt_failed(rc, "password")) return *e;
    } else if (offers(accepts, "keyboard-interactive")) {
      im.kbd_password = &cred.password;
      rc = im.drive(
          [&] {
            return libssh2_userauth_keyboard_interactive_ex(im.s, user.c_str(), ulen,
                                                            answer_with_password);
          },
          deadline);
      im.kbd_password = nullptr;
      if (rc == 0) return {};
      if (auto e = attempt_failed(rc, "keyboard-interactive")) return *e;
    } else {
      refused_by_server.push_back("password");
    }
  }

  std::string msg = "permission denied for user " + user + " on " + im.where +
                    " (tried: " + (tried.empty() ? std::string("nothing") : join(tried));
  if (!refused_by_server.empty()) msg += "; not offered: " + join(refused_by_server);
  msg += "; server accepts: " + accepts + ")";
#if LIBSSH2_VERSION_NUM < 0x010b00
  if (rsa_tried)
    msg +=
        "; note: libssh2 before 1.11 signs with RSA keys as ssh-rsa (SHA-1), which "
        "OpenSSH 8.8 and later refuse unless PubkeyAcceptedAlgorithms allows it: "
        "an ed25519 or ecdsa key works everywhere";
#endif
  return Error(Exit::protocol, msg);
}

Result<int> Session::exec(const std::string& command,
                          const std::function<void(std::string_view)>& out,
                          const std::function<void(std::string_view)>& err, milliseconds timeout) {
  detail::SessionState& im = *state_;
  const auto start = Clock::now();
  const auto deadline = timeout.count() > 0 ? start + timeout : Clock::time_point::max();

  im.reap();
  LIBSSH2_CHANNEL* raw = nullptr;
  int rc = im.drive(
      [&] {
        raw = libssh2_channel_open_session(im.s);
        return raw ? 0 : libssh2_session_last_errno(im.s);
      },
      deadline);
  if (rc != 0) return im.failure(rc, "opening a session channel");
  Channel channel(im, raw);

  // Leaves a command we stop waiting for: the server is asked to send it
  // TERM where libssh2 can say so (1.11 and later; 1.10 refuses any channel
  // request after exec), and the Channel is closed, which also closes the
  // command's stdin, stdout and stderr, so a command that writes ends with
  // SIGPIPE.
  auto abandon = [&](Error e) -> Error {
#if LIBSSH2_VERSION_NUM >= 0x010b00
    im.drive([&] { return libssh2_channel_signal_ex(raw, "TERM", 4); }, Clock::now() + kCleanupTime,
             false);
#endif
    return e;
  };
  auto lost = [&](int code) -> Error {
    if (code == kTimedOut)
      return abandon(Error(
          Exit::tempfail,
          "the command on " + im.where + " was still running after " + seconds_text(timeout)));
    if (code == kInterrupted)
      return abandon(
          Error(Exit::interrupted, "interrupted while running the command on " + im.where));
    if (is_connection_loss(code))
      return Error(Exit::protocol, "connection lost to " + im.where +
                                       " while running the command (" + loss_reason(code) + ")");
    return Error(Exit::protocol,
                 "running the command on " + im.where + " failed: " + im.last_error());
  };

  rc = im.drive([&] { return libssh2_channel_exec(raw, command.c_str()); }, deadline);
  if (rc == LIBSSH2_ERROR_CHANNEL_REQUEST_DENIED)
    return Error(Exit::protocol, im.where + " refused to run the command");
  if (rc != 0) return lost(rc);
  // Nothing to feed it: a command that reads stdin sees its end at once,
  // as with process::run, instead of waiting for the timeout.
  rc = im.drive([&] { return libssh2_channel_send_eof(raw); }, deadline);
  if (rc != 0) return lost(rc);

  std::vector<char> buf(64 * 1024);
  // Reads what has arrived on one stream; a bounded number of chunks so a
  // fast writer on one stream cannot starve the other or the clock.
  auto pump = [&](int stream, const std::function<void(std::string_view)>& sink, bool& eof) -> int {
    for (int i = 0; i < 32; ++i) {
      ssize_t n = libssh2_channel_read_ex(raw, stream, buf.data(), buf.size());
      if (n > 0) {
        if (sink) sink(std::string_view(buf.data(), static_cast<size_t>(n)));
        continue;
      }
      if (n == 0) eof = true;
      return static_cast<int>(n);
    }
    return 0;
  };

  bool out_eof = false;
  bool err_eof = false;
  int stalls = 0;
  while (!(out_eof && err_eof)) {
    if (signals::interrupted()) return lost(kInterrupted);
    if (Clock::now() >= deadline) return lost(kTimedOut);
    int r1 = out_eof ? 0 : pump(0, out, out_eof);
    if (r1 < 0 && r1 != LIBSSH2_ERROR_EAGAIN) return lost(r1);
    int r2 = err_eof ? 0 : pump(SSH_EXTENDED_DATA_STDERR, err, err_eof);
    if (r2 < 0 && r2 != LIBSSH2_ERROR_EAGAIN) return lost(r2);
    // A stream that is neither drained nor ended stopped at its chunk budget.
    if (!(out_eof || r1 == LIBSSH2_ERROR_EAGAIN) || !(err_eof || r2 == LIBSSH2_ERROR_EAGAIN))
      continue;
    if (out_eof && err_eof) break;

    milliseconds cap = 60s;
    // Reading one stream pulls every packet off the socket, the other
    // stream's too: poll only when libssh2 holds nothing for this channel.
    unsigned long queued = 0;
    libssh2_channel_window_read_ex(raw, &queued, nullptr);
    if (queued > 0) {
      if (++stalls < 3) continue;
      cap = 50ms;  // data of an extended type we do not read: do not spin
    } else {
      stalls = 0;
    }
    if (im.keepalive_seconds > 0) {
      int next = 0;
      int k = libssh2_keepalive_send(im.s, &next);
      if (k != 0 && k != LIBSSH2_ERROR_EAGAIN) return lost(k);
      cap = std::min<milliseconds>(cap, std::chrono::seconds(std::max(next, 1)));
    }
    int dirs = libssh2_session_block_directions(im.s);
    short events = POLLIN;
    if (dirs & LIBSSH2_SESSION_BLOCK_OUTBOUND) events |= POLLOUT;
    Waited w = wait_fd(im.fd, events, deadline, true, cap);
    if (w == Waited::timeout) return lost(kTimedOut);
    if (w == Waited::interrupted) return lost(kInterrupted);
  }

  // The exit status travels just before the server's close of the channel.
  rc = im.drive([&] { return libssh2_channel_close(raw); }, deadline);
  if (rc == 0) rc = im.drive([&] { return libssh2_channel_wait_closed(raw); }, deadline);
  if (rc != 0) return lost(rc);
  channel.finished();

  char* sig = nullptr;
  size_t sig_len = 0;
  libssh2_channel_get_exit_signal(raw, &sig, &sig_len, nullptr, nullptr, nullptr, nullptr);
  if (sig) {
    std::string name(sig, sig_len);
    libssh2_free(im.s, sig);
    return 128 + signal_number(name);
  }
  return libssh2_channel_get_exit_status(raw);
}

void Session::leave_to_child() {
  if (!state_) return;
  // libssh2_session_free() sends nothing while no channel is open (the
  // keeper gets the session right after the login); the state's own
  // destructor would disconnect and shut the shared socket down.
  for (int i = 0; state_->s && i < 100 && libssh2_session_free(state_->s) == LIBSSH2_ERROR_EAGAIN;
       ++i) {
  }
  state_->s = nullptr;
  state_->sftp = nullptr;
  if (state_->fd >= 0) ::close(state_->fd);
  state_->fd = -1;
  state_.reset();
}

void Session::keepalive(int interval_seconds) {
  state_->keepalive_seconds = std::max(interval_seconds, 0);
  libssh2_keepalive_config(state_->s, 1, static_cast<unsigned>(state_->keepalive_seconds));
}

Result<HostKey> wait_until_ready(const Endpoint& ep, const Credentials& cred,
                                 Clock::time_point deadline,
                                 const std::function<Status()>& should_stop, int probe_port) {
  auto s = ready_session(ep, cred, deadline, should_stop, probe_port);
  if (!s) return s.error();
  return s->host_key();
}

Result<Session> ready_session(const Endpoint& ep, const Credentials& cred,
                              Clock::time_point deadline,
                              const std::function<Status()>& should_stop, int probe_port) {
  if (libssh2_ready() != 0) return Error(Exit::software, "cannot initialise libssh2");
  const auto start = Clock::now();
  const std::string where = where_of(ep);
  std::string last = "no try finished";
  int tries = 0;
  int slow_tries = 0;
  bool network_up = false;
  for (;;) {
    if (auto st = keep_waiting(should_stop, where); !st) return std::move(st).error();
    const auto tried_at = Clock::now();
    if (tried_at >= deadline) break;

    // A try starts once the server speaks (first_to_speak: qemu's user
    // network accepts a connection before the guest listens) and may not
    // take the whole deadline, so a guest that died is noticed between
    // tries; a try that ran out of time makes the next ones longer.
    Status st;
    auto fd = first_to_speak(ep, probe_port, network_up, deadline, should_stop);
    if (!fd) {
      if (fd.error().code != Exit::tempfail) return std::move(fd).error();
      if (tries == 0) last = fd.error().message;  // else the last try says more
      break;
    }
    const auto spoke_at = Clock::now();
    const auto try_until = std::min(deadline, spoke_at + kFirstTry + slow_tries * kTryGrowth);
    auto state = handshake(*fd, ep, try_until);
    if (state) {
      Session session(std::move(*state));
      const auto auth_until = std::min(deadline, std::max(try_until, Clock::now() + kFirstTry));
      st = session.authenticate(ep.user, cred,
                                std::chrono::ceil<milliseconds>(auth_until - Clock::now()));
      if (st) return session;
    } else {
      st = std::move(state).error();
    }
    if (Clock::now() >= try_until) ++slow_tries;
    // Tempfail and protocol errors are what a booting machine shows; the
    // rest (a missing key file, a bad host name) no wait can cure.
    Exit code = st.error().code;
    if (code != Exit::tempfail && code != Exit::protocol) return std::move(st).error();
    // A try the deadline cut short says less than the one before it.
    if (!(code == Exit::tempfail && Clock::now() >= deadline && tries > 0))
      last = st.error().message;
    ++tries;

    auto next = std::min(tried_at + kRetryEvery, deadline);
    auto now = Clock::now();
    if (now < next && !signals::sleep_for(std::chrono::ceil<milliseconds>(next - now)))
      return Error(Exit::interrupted, "interrupted while waiting for SSH on " + where);
  }
  return Error(Exit::tempfail, "timed out waiting for SSH on " + where + " after " +
                                   seconds_text(Clock::now() - start) + " (last: " + last + ")");
}

Result<std::string> generate_ed25519(const std::string& path, const std::string& comment) {
  if (comment.find_first_of("\r\n") != std::string::npos)
    return Error(Exit::usage, "a key comment cannot contain a line break");

  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
      EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"), EVP_PKEY_free);
  unsigned char pub[32];
  size_t pub_len = sizeof pub;
  SecretString seed;
  seed.s.assign(32, '\0');
  size_t seed_len = seed.s.size();
  uint32_t check = 0;
  if (!key || EVP_PKEY_get_raw_public_key(key.get(), pub, &pub_len) != 1 || pub_len != 32 ||
      EVP_PKEY_get_raw_private_key(key.get(), reinterpret_cast<unsigned char*>(seed.s.data()),
                                   &seed_len) != 1 ||
      seed_len != 32 || RAND_bytes(reinterpret_cast<unsigned char*>(&check), sizeof check) != 1)
    return Error(Exit::software, "cannot generate an ed25519 key with libcrypto");
  const std::string_view pub_view(reinterpret_cast<char*>(pub), pub_len);

  std::string blob;
  put_string(blob, "ssh-ed25519");
  put_string(blob, pub_view);

  // PROTOCOL.key in OpenSSH's sources: an unencrypted "openssh-key-v1".
  SecretString secret;
  secret.s.reserve(256 + comment.size());
  put_u32(secret.s, check);
  put_u32(secret.s, check);
  put_string(secret.s, "ssh-ed25519");
  put_string(secret.s, pub_view);
  put_u32(secret.s, 64);  // the private key is the seed then the public key
  secret.s.append(seed.s);
  secret.s.append(pub_view);
  put_string(secret.s, comment);
  for (char pad = 1; secret.s.size() % 8 != 0; ++pad) secret.s += pad;

  SecretString whole;
  whole.s.reserve(128 + blob.size() + secret.s.size());
  whole.s.append("openssh-key-v1", 15);  // with its terminating NUL
  put_string(whole.s, "none");           // cipher
  put_string(whole.s, "none");           // kdf
  put_string(whole.s, "");               // kdf options
  put_u32(whole.s, 1);                   // one key
  put_string(whole.s, blob);
  put_string(whole.s, secret.s);

  SecretString b64;
  b64.s = base64(whole.s);
  SecretString pem;
  pem.s.reserve(b64.s.size() + b64.s.size() / 70 + 80);
  pem.s += "-----BEGIN OPENSSH PRIVATE KEY-----\n";
  for (size_t i = 0; i < b64.s.size(); i += 70) {
    pem.s.append(b64.s, i, 70);
    pem.s += '\n';
  }
  pem.s += "-----END OPENSSH PRIVATE KEY-----\n";

  std::string line = "ssh-ed25519 " + base64(blob);
  if (!comment.empty()) line += " " + comment;

  auto priv_file = AtomicFile::create(path, 0600);
  if (!priv_file) return priv_file.error();
  auto pub_file = AtomicFile::create(path + ".pub", 0644);
  if (!pub_file) return pub_file.error();
  if (auto st = priv_file->write(pem.s); !st) return st.error();
  if (auto st = pub_file->write(line + "\n"); !st) return st.error();
  if (auto st = priv_file->commit(); !st) return st.error();
  if (auto st = pub_file->commit(); !st) return st.error();
  return line;
}

}  // namespace kiln::ssh

// SPDX-License-Identifier: MIT
#include "signals.hpp"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <csignal>

namespace kiln::signals {

namespace {

std::atomic<int> g_signal{0};
int g_pipe[2] = {-1, -1};
struct sigaction g_old[3];
constexpr int kSignals[3] = {SIGINT, SIGTERM, SIGHUP};
struct sigaction g_old_pipe;

void on_signal(int sig) {
  int expected = 0;
  g_signal.compare_exchange_strong(expected, sig);
  if (g_pipe[1] >= 0) {
    char c = 1;
    ssize_t r = ::write(g_pipe[1], &c, 1);
    (void)r;  // a full pipe already wakes the reader
  }
}

}  // namespace

InterruptGuard::InterruptGuard() {
  if (::pipe2(g_pipe, O_CLOEXEC | O_NONBLOCK) != 0) g_pipe[0] = g_pipe[1] = -1;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  for (int i = 0; i < 3; ++i) sigaction(kSignals[i], &sa, &g_old[i]);
  struct sigaction ign {};
  ign.sa_handler = SIG_IGN;
  sigemptyset(&ign.sa_mask);
  sigaction(SIGPIPE, &ign, &g_old_pipe);
}

InterruptGuard::~InterruptGuard() {
  for (int i = 0; i < 3; ++i) sigaction(kSignals[i], &g_old[i], nullptr);
  sigaction(SIGPIPE, &g_old_pipe, nullptr);
  for (int& fd : g_pipe) {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
}

bool interrupted() { return g_signal.load() != 0; }
int received() { return g_signal.load(); }
int wake_fd() { return g_pipe[0]; }

bool sleep_for(std::chrono::milliseconds d) {
  if (interrupted()) return false;
  if (g_pipe[0] < 0) {
    ::usleep(static_cast<useconds_t>(d.count() * 1000));
    return !interrupted();
  }
  struct pollfd p {
    g_pipe[0], POLLIN, 0
  };
  ::poll(&p, 1, static_cast<int>(d.count()));
  return !interrupted();
}

void clear() {
  g_signal.store(0);
  if (g_pipe[0] >= 0) {
    char buf[64];
    while (::read(g_pipe[0], buf, sizeof buf) > 0) {
    }
  }
}

void reset_after_fork() {
  g_signal.store(0);
  for (int& fd : g_pipe) {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  if (::pipe2(g_pipe, O_CLOEXEC | O_NONBLOCK) != 0) g_pipe[0] = g_pipe[1] = -1;
}

void raise_for_test(int sig) { on_signal(sig); }

}  // namespace kiln::signals

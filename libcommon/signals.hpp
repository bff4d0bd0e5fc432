// SPDX-License-Identifier: MIT
#pragma once
/// SIGINT/SIGTERM/SIGHUP become a flag that long operations poll; the tool
/// unwinds through its destructors (which clean up) and exits 130.
/// SIGPIPE is ignored so a closed stdout is an error value, not a death.

#include <chrono>

namespace kiln::signals {

/// Installs the handlers for the life of the object and restores the old
/// ones after. One per process, made first thing in main().
class InterruptGuard {
 public:
  InterruptGuard();
  ~InterruptGuard();
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;
};

/// True once SIGINT, SIGTERM or SIGHUP has arrived.
bool interrupted();
/// The signal that arrived, 0 if none.
int received();
/// A file descriptor that becomes readable when a signal arrives, for
/// poll()-based waits; -1 before an InterruptGuard exists.
int wake_fd();
/// Sleeps up to `d`, returning early (false) when interrupted.
bool sleep_for(std::chrono::milliseconds d);
/// Forgets the signal that arrived, for a process that answers it by
/// shutting down and needs interruptible waits to work while it does.
void clear();
/// In a child made by fork(): forget a signal the parent saw and give the
/// child its own wake pipe (the parent's would wake both).
void reset_after_fork();
/// Marks the process interrupted as if a signal had come (for tests).
void raise_for_test(int sig);

}  // namespace kiln::signals

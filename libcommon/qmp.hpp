// SPDX-License-Identifier: MIT
#pragma once
/// A client of qemu's machine protocol (QMP) over its unix socket: commands
/// and their replies, with the asynchronous events (SHUTDOWN, STOP,
/// GUEST_PANICKED...) kept aside for the caller. Every wait is bounded by a
/// timeout and ends early when the tool is interrupted (signals::wake_fd).

#include <rapidjson/document.h>

#include <chrono>
#include <string>
#include <vector>

#include "result.hpp"

namespace kiln {

/// One asynchronous QMP event, e.g. {"event": "SHUTDOWN", "data": {...}}.
struct QmpEvent {
  std::string name;          ///< "SHUTDOWN", "STOP", "GUEST_PANICKED"...
  rapidjson::Document data;  ///< the event's "data" object (null if none)
  double timestamp = 0;      ///< qemu's time of the event, unix seconds
};

/// A connected QMP session in command mode. Owns the socket; moving it moves
/// the session. Not thread-safe: one caller at a time.
class Qmp {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::chrono::milliseconds kDefaultTimeout{10000};

  /// Connects to the QMP socket at `socket_path`, reads qemu's greeting and
  /// enters command mode (qmp_capabilities). A socket that does not exist
  /// or refuses yet is retried until `timeout` (qemu may be starting).
  /// Errors: Exit::tempfail (nothing answered in time), Exit::protocol (not
  /// a QMP greeting, or the server closed), Exit::interrupted, Exit::ioerr.
  static Result<Qmp> connect(const std::string& socket_path,
                             std::chrono::milliseconds timeout = kDefaultTimeout);

  Qmp(Qmp&& other) noexcept;
  Qmp& operator=(Qmp&& other) noexcept;
  Qmp(const Qmp&) = delete;
  Qmp& operator=(const Qmp&) = delete;
  ~Qmp();

  /// Runs `command` with `arguments` (an object, or nullptr for none) and
  /// returns the reply's "return" value. Events that arrive meanwhile are
  /// kept for take_events(). Errors: Exit::protocol (qemu answered with an
  /// error: its class and desc; or the connection closed / spoke nonsense),
  /// Exit::tempfail (no reply within `timeout`), Exit::interrupted,
  /// Exit::ioerr.
  Result<rapidjson::Document> execute(const std::string& command,
                                      const rapidjson::Value* arguments = nullptr,
                                      std::chrono::milliseconds timeout = kDefaultTimeout);

  /// The events received so far, oldest first; the list is emptied.
  std::vector<QmpEvent> take_events();

  /// Reads whatever events are already waiting on the socket, without
  /// blocking, so take_events() sees them. Errors: as execute().
  Status poll_events();

  /// Waits until an event named `name` arrives (or has already arrived and
  /// not been taken) and returns it; other events stay queued. Errors:
  /// Exit::tempfail after `timeout`, Exit::protocol when qemu closes first,
  /// Exit::interrupted.
  Result<QmpEvent> wait_event(const std::string& name, std::chrono::milliseconds timeout);

  /// Presses the ACPI power button (the guest decides whether to power off).
  Status system_powerdown(std::chrono::milliseconds timeout = kDefaultTimeout);

  /// Ends qemu at once. qemu closing the connection before it answers counts
  /// as success.
  Status quit(std::chrono::milliseconds timeout = kDefaultTimeout);

  /// The run state: "running", "paused", "prelaunch", "shutdown",
  /// "guest-panicked", ... (query-status).
  Result<std::string> query_status(std::chrono::milliseconds timeout = kDefaultTimeout);

  /// Presses the keys `qcodes` together ("ctrl", "alt", "delete") and releases
  /// them after `hold` (send-key; qemu's own default when 0). The keys are
  /// queued in qemu: the call returns before they are released.
  Status send_key(const std::vector<std::string>& qcodes, std::chrono::milliseconds hold,
                  std::chrono::milliseconds timeout = kDefaultTimeout);

  /// qemu's version from the greeting, "7.2.18".
  const std::string& qemu_version() const { return version_; }
  /// True once qemu closed the connection.
  bool closed() const { return closed_; }

 private:
  Qmp(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}

  /// Reads one message into `msg`, waiting until `deadline`.
  Status read_message(rapidjson::Document& msg, Clock::time_point deadline);
  /// Parses the next complete line of the buffer, if any, into `msg`.
  Result<bool> next_buffered(rapidjson::Document& msg);
  Status fill(Clock::time_point deadline, bool block);
  Status send_all(const std::string& text, Clock::time_point deadline);
  void keep_event(rapidjson::Document& msg);
  Error closed_error() const;

  int fd_ = -1;
  std::string path_;
  std::string buffer_;
  std::vector<QmpEvent> events_;
  std::string version_;
  unsigned long next_id_ = 1;
  bool closed_ = false;
};

}  // namespace kiln

// SPDX-License-Identifier: MIT
#pragma once
/// The small HTTP server that hands files to an installer during boot
/// (Packer's http_directory and http_content): static GET and HEAD over
/// HTTP/1.0 and 1.1, served from a background thread for the life of the
/// object.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "result.hpp"

namespace kiln {

struct HttpServerConfig {
  /// Files under this directory are served (Packer's http_directory); ""
  /// for none. A path with a ".." segment is refused (400); symbolic links
  /// inside the directory are followed, as Packer does.
  std::string directory;
  /// URL path → body (Packer's http_content), e.g. {"/preseed.cfg", "..."};
  /// a missing leading "/" is added. Takes precedence over the directory.
  std::map<std::string, std::string> content;
  /// The address to listen on (Packer's http_bind_address).
  std::string bind_address = "0.0.0.0";
  /// The first free port in [port_min, port_max] is taken (Packer's
  /// http_port_min/max); 0 and 0 let the system choose.
  int port_min = 8000;
  int port_max = 9000;
  /// Called from the server's thread after each response with one line,
  /// "GET /ks.cfg 200 1234", for the tool's log; may be empty.
  std::function<void(const std::string&)> on_request;
};

/// A running server. Destroying it stops the thread, closes every
/// connection and frees the port.
class HttpServer {
 public:
  /// Binds and starts serving. Errors: Exit::noinput (the directory is
  /// missing or not a directory), Exit::config (bad address, port range or
  /// content path), Exit::unavailable (no free port in the range),
  /// Exit::noperm (a privileged port), Exit::software.
  static Result<std::unique_ptr<HttpServer>> start(HttpServerConfig config);

  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  /// The port it listens on.
  uint16_t port() const { return port_; }
  /// The address it listens on, as given.
  const std::string& address() const { return config_.bind_address; }

 private:
  HttpServer(HttpServerConfig config, int listen_fd, int wake_fd, uint16_t port);

  HttpServerConfig config_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;
  uint16_t port_ = 0;
  std::thread thread_;
};

}  // namespace kiln

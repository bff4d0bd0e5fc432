// SPDX-License-Identifier: MIT
#include "log.hpp"

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <chrono>
#include <ctime>

namespace kiln::log {

std::string redact(std::string_view text, const std::vector<std::string>& secrets) {
  std::vector<const std::string*> order;
  for (const std::string& s : secrets)
    if (!s.empty()) order.push_back(&s);
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->size() > b->size(); });
  std::string out(text);
  for (const std::string* s : order) {
    size_t pos = 0;
    while ((pos = out.find(*s, pos)) != std::string::npos) {
      out.replace(pos, s->size(), "<sensitive>");
      pos += 11;
    }
  }
  return out;
}

std::string now_iso8601() {
  using namespace std::chrono;
  auto now = system_clock::now();
  std::time_t t = system_clock::to_time_t(now);
  auto ms = duration_cast<milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[96];  // room for any int the compiler imagines in each field
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  return buf;
}

std::string describe(const Error& e) {
  std::string out;
  if (!e.where.file.empty()) {
    out += e.where.file;
    if (e.where.line > 0) {
      out += ":" + std::to_string(e.where.line);
      if (e.where.column > 0) out += ":" + std::to_string(e.where.column);
    }
    out += ": ";
  }
  out += e.message;
  return out;
}

Logger::Logger(std::string tool, Format format, int verbosity, bool color, std::FILE* out)
    : tool_(std::move(tool)),
      format_(format),
      verbosity_(verbosity),
      color_(color && format == Format::human),
      out_(out) {}

void Logger::set_build(std::string name) { build_ = std::move(name); }

void Logger::add_secret(std::string value) {
  if (value.empty()) return;
  if (std::find(secrets_.begin(), secrets_.end(), value) == secrets_.end())
    secrets_.push_back(std::move(value));
}

std::string Logger::redact(std::string_view text) const { return log::redact(text, secrets_); }

bool Logger::enabled(Level level) const {
  int threshold = verbosity_ < 0 ? 0 : 2 + verbosity_;
  return static_cast<int>(level) <= threshold;
}

namespace {

const char* level_name(Level l) {
  switch (l) {
    case Level::error:
      return "error";
    case Level::warning:
      return "warning";
    case Level::info:
      return "info";
    case Level::debug:
      return "debug";
    case Level::trace:
      return "trace";
  }
  return "info";
}

const char* level_color(Level l) {
  switch (l) {
    case Level::error:
      return "\033[1;31m";
    case Level::warning:
      return "\033[1;33m";
    default:
      return "\033[2m";
  }
}

}  // namespace

void Logger::write(Level level, std::string_view message, const Fields& fields) {
  if (!enabled(level)) return;
  std::string text = redact(message);
  std::string line;
  if (format_ == Format::json) {
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    w.StartObject();
    w.Key("time");
    w.String(now_iso8601());
    w.Key("tool");
    w.String(tool_);
    w.Key("build");
    if (build_.empty())
      w.Null();
    else
      w.String(build_);
    w.Key("level");
    w.String(level_name(level));
    w.Key("message");
    w.String(text);
    w.Key("fields");
    w.StartObject();
    for (const auto& [k, v] : fields) {
      w.Key(k.c_str(), static_cast<rapidjson::SizeType>(k.size()));
      w.String(redact(v));
    }
    w.EndObject();
    w.EndObject();
    line.assign(buf.GetString(), buf.GetSize());
  } else {
    line = tool_ + ": ";
    if (level == Level::error || level == Level::warning) {
      if (color_) line += level_color(level);
      line += level_name(level);
      if (color_) line += "\033[0m";
      line += ": ";
    } else if (level != Level::info) {
      if (color_) line += level_color(level);
      line += level_name(level);
      line += ": ";
      if (color_) line += "\033[0m";
    }
    if (!build_.empty()) line += "build '" + build_ + "': ";
    line += text;
    for (const auto& [k, v] : fields) line += " " + k + "=" + redact(v);
  }
  line += '\n';
  std::lock_guard<std::mutex> lock(mutex_);
  std::fwrite(line.data(), 1, line.size(), out_);
  std::fflush(out_);
}

void Logger::report(const Error& e, Level level) {
  Fields f;
  if (format_ == Format::json) {
    f["exit"] = std::to_string(to_int(e.code));
    if (!e.where.file.empty()) f["file"] = e.where.file;
    if (e.where.line > 0) f["line"] = std::to_string(e.where.line);
    if (e.where.column > 0) f["column"] = std::to_string(e.where.column);
    if (!e.where.pointer.empty()) f["pointer"] = e.where.pointer;
    if (!e.step.empty()) f["step"] = e.step;
  }
  write(level, describe(e), f);
}

}  // namespace kiln::log

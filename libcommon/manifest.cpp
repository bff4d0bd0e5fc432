// SPDX-License-Identifier: MIT
#include "manifest.hpp"

#include <fcntl.h>
#include <rapidjson/error/en.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "atomic_file.hpp"
#include "json.hpp"
#include "signals.hpp"
#include "text.hpp"

namespace kiln::manifest {

namespace fs = std::filesystem;

namespace {

// encoding/json's string encoder with HTML escaping on (json.Marshal's
// default), as in Go 1.15 to 1.21 (\b and \f are \u0008 and \u000c there).
void put_string(std::string& out, std::string_view s) {
  static const char* hex = "0123456789abcdef";
  out += '"';
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    if (b < 0x80) {
      if (b >= 0x20 && b != '"' && b != '\\' && b != '<' && b != '>' && b != '&') {
        out += static_cast<char>(b);
      } else if (b == '"' || b == '\\') {
        out += '\\';
        out += static_cast<char>(b);
      } else if (b == '\n') {
        out += "\\n";
      } else if (b == '\r') {
        out += "\\r";
      } else if (b == '\t') {
        out += "\\t";
      } else {
        out += "\\u00";
        out += hex[b >> 4];
        out += hex[b & 15];
      }
      ++i;
      continue;
    }
    // utf8.DecodeRuneInString: the sequence's length if valid, else 0.
    auto at = [&](size_t k) -> unsigned {
      return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0;
    };
    size_t size = 0;
    unsigned lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
      size = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
      size = 3;
      if (b == 0xE0) lo = 0xA0;
      if (b == 0xED) hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
      size = 4;
      if (b == 0xF0) lo = 0x90;
      if (b == 0xF4) hi = 0x8F;
    }
    bool valid = size > 0 && at(1) >= lo && at(1) <= hi;
    for (size_t k = 2; valid && k < size; ++k) valid = at(k) >= 0x80 && at(k) <= 0xBF;
    if (!valid) {
      out += "\\ufffd";
      ++i;
      continue;
    }
    if (size == 3 && b == 0xE2 && at(1) == 0x80 && (at(2) == 0xA8 || at(2) == 0xA9)) {
      out += at(2) == 0xA8 ? "\\u2028" : "\\u2029";
    } else {
      out.append(s.substr(i, size));
    }
    i += size;
  }
  out += '"';
}

void newline(std::string& out, int depth) {
  out += '\n';
  out.append(static_cast<size_t>(depth) * 2, ' ');
}

void put_key(std::string& out, int depth, std::string_view key, bool first) {
  if (!first) out += ',';
  newline(out, depth);
  put_string(out, key);
  out += ": ";
}

void put_build(std::string& out, const Build& b, int depth) {
  out += '{';
  put_key(out, depth + 1, "name", true);
  put_string(out, b.name);
  put_key(out, depth + 1, "builder_type", false);
  put_string(out, b.builder_type);
  if (b.build_time != 0) {  // `json:"build_time,omitempty"`
    put_key(out, depth + 1, "build_time", false);
    out += std::to_string(b.build_time);
  }
  put_key(out, depth + 1, "files", false);
  if (!b.files) {
    out += "null";
  } else if (b.files->empty()) {
    out += "[]";
  } else {
    out += '[';
    bool first = true;
    for (const auto& f : *b.files) {
      if (!first) out += ',';
      first = false;
      newline(out, depth + 2);
      out += '{';
      put_key(out, depth + 3, "name", true);
      put_string(out, f.name);
      put_key(out, depth + 3, "size", false);
      out += std::to_string(f.size);
      newline(out, depth + 2);
      out += '}';
    }
    newline(out, depth + 1);
    out += ']';
  }
  put_key(out, depth + 1, "artifact_id", false);
  put_string(out, b.artifact_id);
  put_key(out, depth + 1, "packer_run_uuid", false);
  put_string(out, b.packer_run_uuid);
  put_key(out, depth + 1, "custom_data", false);
  if (!b.custom_data) {
    out += "null";
  } else if (b.custom_data->empty()) {
    out += "{}";
  } else {
    out += '{';
    bool first = true;
    for (const auto& [k, v] : *b.custom_data) {
      put_key(out, depth + 2, k, first);
      first = false;
      put_string(out, v);
    }
    newline(out, depth + 1);
    out += '}';
  }
  newline(out, depth);
  out += '}';
}

// json.Unmarshal into Packer's structs: for every member of `obj`, the
// field whose name matches exactly or else ignoring ASCII case; later
// members win; unknown members are dropped.
template <class F>
Status each_field(const json::Value& obj, const char* where, const std::vector<const char*>& fields,
                  F&& assign) {
  if (!obj.IsObject())
    return Error(Exit::dataerr,
                 std::string("cannot unmarshal ") + json::type_name(obj) + " into " + where);
  for (auto m = obj.MemberBegin(); m != obj.MemberEnd(); ++m) {
    std::string_view key(m->name.GetString(), m->name.GetStringLength());
    const char* field = nullptr;
    for (const char* f : fields)
      if (key == f) field = f;
    if (!field)
      for (const char* f : fields)
        if (text::iequals(key, f)) field = f;
    if (!field) continue;
    if (auto st = assign(std::string_view(field), m->value); !st) return st;
  }
  return {};
}

Status get_string(const json::Value& v, std::string& out, std::string_view field) {
  if (v.IsNull()) return {};
  if (!v.IsString())
    return Error(Exit::dataerr, "cannot unmarshal " + std::string(json::type_name(v)) +
                                    " into field " + std::string(field) + " of type string");
  out.assign(v.GetString(), v.GetStringLength());
  return {};
}

Status get_int(const json::Value& v, std::int64_t& out, std::string_view field) {
  if (v.IsNull()) return {};
  if (!v.IsInt64())
    return Error(Exit::dataerr, "cannot unmarshal " + std::string(json::type_name(v)) +
                                    " into field " + std::string(field) + " of type int64");
  out = v.GetInt64();
  return {};
}

Result<Build> parse_build(const json::Value& v) {
  Build b;
  if (v.IsNull()) return b;
  auto st = each_field(
      v, "a build",
      {"name", "builder_type", "build_time", "files", "artifact_id", "packer_run_uuid",
       "custom_data"},
      [&](std::string_view f, const json::Value& x) -> Status {
        if (f == "name") return get_string(x, b.name, f);
        if (f == "builder_type") return get_string(x, b.builder_type, f);
        if (f == "build_time") return get_int(x, b.build_time, f);
        if (f == "artifact_id") return get_string(x, b.artifact_id, f);
        if (f == "packer_run_uuid") return get_string(x, b.packer_run_uuid, f);
        if (f == "files") {
          if (x.IsNull()) {
            b.files.reset();
            return {};
          }
          if (!x.IsArray())
            return Error(Exit::dataerr, "cannot unmarshal " + std::string(json::type_name(x)) +
                                            " into field files");
          b.files.emplace();
          for (const auto& e : x.GetArray()) {
            File file;
            if (!e.IsNull()) {
              auto fst = each_field(e, "a file", {"name", "size"},
                                    [&](std::string_view g, const json::Value& y) -> Status {
                                      if (g == "name") return get_string(y, file.name, g);
                                      return get_int(y, file.size, g);
                                    });
              if (!fst) return fst;
            }
            b.files->push_back(std::move(file));
          }
          return {};
        }
        // custom_data
        if (x.IsNull()) {
          b.custom_data.reset();
          return {};
        }
        if (!x.IsObject())
          return Error(Exit::dataerr, "cannot unmarshal " + std::string(json::type_name(x)) +
                                          " into field custom_data");
        b.custom_data.emplace();
        for (auto m = x.MemberBegin(); m != x.MemberEnd(); ++m) {
          std::string value;
          if (auto vst = get_string(m->value, value, "custom_data"); !vst) return vst;
          (*b.custom_data)[std::string(m->name.GetString(), m->name.GetStringLength())] = value;
        }
        return {};
      });
  if (!st) return st.error();
  return b;
}

}  // namespace

std::string to_json(const Manifest& m) {
  std::string out = "{";
  put_key(out, 1, "builds", true);
  if (!m.builds) {
    out += "null";
  } else if (m.builds->empty()) {
    out += "[]";
  } else {
    out += '[';
    bool first = true;
    for (const auto& b : *m.builds) {
      if (!first) out += ',';
      first = false;
      newline(out, 2);
      put_build(out, b, 2);
    }
    newline(out, 1);
    out += ']';
  }
  put_key(out, 1, "last_run_uuid", false);
  put_string(out, m.last_run_uuid);
  newline(out, 0);
  out += '}';
  return out;
}

Result<Manifest> parse(std::string_view text, const std::string& name) {
  // Not json::parse: Go reads invalid UTF-8 (as \ufffd) where a
  // validating parse would refuse the whole manifest.
  json::Document doc;
  doc.Parse<rapidjson::kParseIterativeFlag>(text.data(), text.size());
  if (doc.HasParseError())
    return Error(Exit::dataerr, "Unable to parse content from " + name + ": " +
                                    rapidjson::GetParseError_En(doc.GetParseError()) +
                                    " (at byte " + std::to_string(doc.GetErrorOffset()) + ")");
  Manifest m;
  if (doc.IsNull()) return m;
  auto st = each_field(doc, "the manifest", {"builds", "last_run_uuid"},
                       [&](std::string_view f, const json::Value& x) -> Status {
                         if (f == "last_run_uuid") return get_string(x, m.last_run_uuid, f);
                         if (x.IsNull()) {
                           m.builds.reset();
                           return {};
                         }
                         if (!x.IsArray())
                           return Error(Exit::dataerr, "cannot unmarshal " +
                                                           std::string(json::type_name(x)) +
                                                           " into field builds");
                         m.builds.emplace();
                         for (const auto& e : x.GetArray()) {
                           auto b = parse_build(e);
                           if (!b) return b.error();
                           m.builds->push_back(std::move(*b));
                         }
                         return {};
                       });
  if (!st)
    return Error(Exit::dataerr, "Unable to parse content from " + name + ": " + st.error().message);
  return m;
}

Build entry(const Artifact& artifact, const Options& options, std::int64_t now) {
  Build b;
  b.name = artifact.build_name;
  b.builder_type = artifact.builder_type;
  b.build_time = options.strip_time ? 0 : now;
  for (const auto& path : artifact.files) {
    File f;
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0) f.size = st.st_size;
    if (options.strip_path) {
      std::string_view p = path;
      while (p.size() > 1 && p.back() == '/') p.remove_suffix(1);
      auto slash = p.rfind('/');
      if (p != "/" && slash != std::string_view::npos) p.remove_prefix(slash + 1);
      f.name = p.empty() ? "." : std::string(p);
    } else {
      f.name = path;
    }
    if (!b.files) b.files.emplace();
    b.files->push_back(std::move(f));
  }
  b.artifact_id = artifact.id;
  b.packer_run_uuid = options.run_uuid;
  b.custom_data = options.custom_data;
  return b;
}

Result<std::string> record(const Artifact& artifact, const Options& options, std::int64_t now) {
  const std::string output = options.output.empty() ? std::string(default_output) : options.output;
  const fs::path target(output);
  if (target.has_parent_path()) {
    std::error_code ec;
    fs::create_directories(target.parent_path(), ec);
    if (ec)
      return Error(Exit::cantcreat,
                   "cannot create " + target.parent_path().string() + ": " + ec.message());
  }
  auto lock = UpdateLock::acquire(target, options.lock_timeout);
  if (!lock) return lock.error();

  Manifest m;
  unsigned mode = 0644;
  struct stat st {};
  if (::stat(output.c_str(), &st) == 0) {
    auto text = read_file(target);
    if (!text)
      return Error(Exit::noinput,
                   "Unable to open " + output + " for reading: " + text.error().message);
    if (!text->empty()) {
      auto parsed = parse(*text, output);
      if (!parsed) return parsed.error();
      m = std::move(*parsed);
    }
    mode = st.st_mode & 07777;
  } else if (errno != ENOENT) {
    return Error(Exit::noinput,
                 "Unable to open " + output + " for reading: " + std::strerror(errno));
  }
  if (options.force && options.run_uuid != m.last_run_uuid) m = Manifest{};
  if (!m.builds) m.builds.emplace();
  m.builds->push_back(entry(artifact, options, now));
  m.last_run_uuid = options.run_uuid;
  if (auto w = write_file_atomically(target, to_json(m), mode); !w) return w.error();
  return output;
}

Result<UpdateLock> UpdateLock::acquire(const fs::path& path, std::chrono::milliseconds timeout) {
  const fs::path lock = path.string() + ".lock";
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
      return Error(Exit::cantcreat, "cannot create " + lock.string() + ": " + std::strerror(errno));
    UpdateLock held(lock, fd);
    for (;;) {
      if (::flock(fd, LOCK_EX | LOCK_NB) == 0) break;
      if (errno != EWOULDBLOCK && errno != EINTR)
        return Error(Exit::cantcreat, "cannot lock " + lock.string() + ": " + std::strerror(errno));
      if (std::chrono::steady_clock::now() >= deadline) {
        held.lock_.clear();  // not ours to remove
        return Error(Exit::tempfail,
                     path.string() + " is locked by another process (" + lock.string() + ")");
      }
      if (!signals::sleep_for(std::chrono::milliseconds(10))) {
        held.lock_.clear();
        return Error(Exit::interrupted, "interrupted while waiting for " + lock.string());
      }
    }
    // The holder before us removes the lock file as it releases it; a lock
    // on a file no longer at that name guards nothing, so take the new one.
    struct stat mine {
    }, named{};
    if (::fstat(fd, &mine) == 0 && ::stat(lock.c_str(), &named) == 0 &&
        mine.st_dev == named.st_dev && mine.st_ino == named.st_ino)
      return held;
    held.lock_.clear();
  }
}

UpdateLock::UpdateLock(UpdateLock&& other) noexcept
    : lock_(std::move(other.lock_)), fd_(other.fd_) {
  other.lock_.clear();
  other.fd_ = -1;
}

UpdateLock::~UpdateLock() {
  // Removed while still locked, so that nobody locks the name in between.
  if (!lock_.empty()) ::unlink(lock_.c_str());
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace kiln::manifest

// SPDX-License-Identifier: MIT
#include "iso.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <utility>

#include "atomic_file.hpp"
#include "fd.hpp"

namespace kiln {

namespace {

namespace fs = std::filesystem;

/// What is at one path of the image.
struct Node {
  enum class Kind { directory, host_file, content } kind = Kind::directory;
  std::string source;                 // host_file: where to read it
  const std::string* text = nullptr;  // content: the caller's string
  mode_t mode = 0755;
  time_t mtime = 0;
};

using Tree = std::map<std::string, Node>;

struct ArchiveDeleter {
  void operator()(archive* a) const { archive_write_free(a); }
};
struct EntryDeleter {
  void operator()(archive_entry* e) const { archive_entry_free(e); }
};

Error errno_error(Exit code, const std::string& what) {
  return Error(code, what + ": " + std::strerror(errno));
}

class TreeBuilder {
 public:
  explicit TreeBuilder(time_t now) : now_(now) {}

  Status add_host(const std::string& source) {
    if (source.empty()) return Error(Exit::noinput, "empty path in the CD's files");
    struct stat st {};
    if (::stat(source.c_str(), &st) != 0) return errno_error(Exit::noinput, "cannot add " + source);
    if (!S_ISDIR(st.st_mode)) return add_file("", fs::path(source).filename().string(), source, st);
    // "dir" puts the directory itself at the root, "dir/" its contents.
    std::string at;
    if (source.back() != '/') {
      at = fs::path(source).lexically_normal().filename().string();
      if (at.empty() || at == "." || at == "..")
        at = fs::weakly_canonical(fs::absolute(source)).filename().string();
    }
    std::set<std::pair<dev_t, ino_t>> visiting;
    return add_dir(at, source, st, visiting);
  }

  Status add_content(const std::string& where, const std::string& text) {
    auto clean = clean_path(where);
    if (!clean) return std::move(clean).error();
    if (auto st = make_parents(*clean); !st) return st;
    Node n;
    n.kind = Node::Kind::content;
    n.text = &text;
    n.mode = 0644;
    n.mtime = now_;
    return put(*clean, n);
  }

  Tree take() { return std::move(tree_); }

 private:
  /// The path on the image, relative and without "." or "..": a content
  /// path may not climb out of the image.
  static Result<std::string> clean_path(const std::string& where) {
    fs::path p = fs::path(where).lexically_normal();
    std::string s = p.relative_path().string();
    while (!s.empty() && s.back() == '/') s.pop_back();
    if (s.empty() || s == ".")
      return Error(Exit::dataerr, "CD content path \"" + where + "\" names no file");
    if (s == ".." || s.rfind("../", 0) == 0)
      return Error(Exit::dataerr, "CD content path \"" + where + "\" is outside the CD");
    return s;
  }

  Status make_parents(const std::string& path) {
    for (size_t slash = path.find('/'); slash != std::string::npos;
         slash = path.find('/', slash + 1)) {
      Node d;
      d.mtime = now_;
      if (auto st = put(path.substr(0, slash), d); !st) return st;
    }
    return {};
  }

  Status put(const std::string& path, const Node& n) {
    auto [it, inserted] = tree_.try_emplace(path, n);
    if (inserted) return {};
    bool was_dir = it->second.kind == Node::Kind::directory;
    bool is_dir = n.kind == Node::Kind::directory;
    if (was_dir != is_dir)
      return Error(Exit::dataerr, "the CD cannot hold both a file and a directory at " + path);
    if (!is_dir) it->second = n;  // the later file wins, as when copying
    return {};
  }

  Status add_file(const std::string& dir, const std::string& name, const std::string& source,
                  const struct stat& st) {
    if (!S_ISREG(st.st_mode))
      return Error(Exit::noinput, "cannot add " + source + ": not a regular file or directory");
    Node n;
    n.kind = Node::Kind::host_file;
    n.source = source;
    n.mode = st.st_mode & 07777;
    n.mtime = st.st_mtime;
    std::string path = dir.empty() ? name : dir + "/" + name;
    if (auto s = make_parents(path); !s) return s;
    return put(path, n);
  }

  Status add_dir(const std::string& at, const std::string& source, const struct stat& st,
                 std::set<std::pair<dev_t, ino_t>>& visiting) {
    // A link back up the tree would copy forever.
    auto key = std::make_pair(st.st_dev, st.st_ino);
    if (visiting.count(key) != 0)
      return Error(Exit::dataerr, "cannot add " + source + ": a symbolic link loops back to it");
    visiting.insert(key);
    if (!at.empty()) {
      if (auto s = make_parents(at); !s) return s;
      Node d;
      d.mode = st.st_mode & 07777;
      d.mtime = st.st_mtime;
      if (auto s = put(at, d); !s) return s;
    }
    std::error_code ec;
    fs::directory_iterator it(source, ec), end;
    if (ec) return Error(Exit::noinput, "cannot read " + source + ": " + ec.message());
    for (; it != end; it.increment(ec)) {
      std::string child = it->path().string();
      std::string name = it->path().filename().string();
      struct stat cst {};
      // stat, not lstat: a link is replaced by what it points to.
      if (::stat(child.c_str(), &cst) != 0)
        return errno_error(Exit::noinput, "cannot add " + child);
      Status s = S_ISDIR(cst.st_mode)
                     ? add_dir(at.empty() ? name : at + "/" + name, child, cst, visiting)
                     : add_file(at, name, child, cst);
      if (!s) return s;
    }
    if (ec) return Error(Exit::noinput, "cannot read " + source + ": " + ec.message());
    visiting.erase(key);
    return {};
  }

  time_t now_;
  Tree tree_;
};

Error archive_error(archive* a, const std::string& target) {
  const char* msg = archive_error_string(a);
  return Error(Exit::ioerr, "cannot write ISO image " + target + ": " +
                                (msg ? msg : "unknown libarchive error"));
}

Status write_node(archive* a, const std::string& target, const std::string& path, const Node& n) {
  std::unique_ptr<archive_entry, EntryDeleter> e(archive_entry_new());
  archive_entry_set_pathname(e.get(), path.c_str());
  archive_entry_set_mtime(e.get(), n.mtime, 0);
  archive_entry_set_uid(e.get(), 0);
  archive_entry_set_gid(e.get(), 0);
  if (n.kind == Node::Kind::directory) {
    archive_entry_set_filetype(e.get(), AE_IFDIR);
    archive_entry_set_perm(e.get(), n.mode);
    if (archive_write_header(a, e.get()) != ARCHIVE_OK) return archive_error(a, target);
    return {};
  }
  archive_entry_set_filetype(e.get(), AE_IFREG);
  archive_entry_set_perm(e.get(), n.mode);
  if (n.kind == Node::Kind::content) {
    archive_entry_set_size(e.get(), static_cast<la_int64_t>(n.text->size()));
    if (archive_write_header(a, e.get()) != ARCHIVE_OK) return archive_error(a, target);
    if (!n.text->empty() && archive_write_data(a, n.text->data(), n.text->size()) !=
                                static_cast<la_ssize_t>(n.text->size()))
      return archive_error(a, target);
    return {};
  }
  UniqueFd in(::open(n.source.c_str(), O_RDONLY | O_CLOEXEC));
  if (in.get() < 0) return errno_error(Exit::noinput, "cannot read " + n.source);
  struct stat st {};
  if (::fstat(in.get(), &st) != 0) return errno_error(Exit::noinput, "cannot read " + n.source);
  archive_entry_set_size(e.get(), static_cast<la_int64_t>(st.st_size));
  if (archive_write_header(a, e.get()) != ARCHIVE_OK) return archive_error(a, target);
  std::unique_ptr<char[]> buf(new char[1 << 16]);
  off_t copied = 0;
  for (;;) {
    ssize_t got = ::read(in.get(), buf.get(), 1 << 16);
    if (got < 0) {
      if (errno == EINTR) continue;
      return errno_error(Exit::ioerr, "cannot read " + n.source);
    }
    if (got == 0) break;
    if (copied + got > st.st_size) break;  // grew while copied: its size was announced
    if (archive_write_data(a, buf.get(), static_cast<size_t>(got)) != got)
      return archive_error(a, target);
    copied += got;
  }
  if (copied != st.st_size)
    return Error(Exit::ioerr, n.source + " changed size while it was copied onto the CD");
  return {};
}

}  // namespace

Status write_iso(const std::string& path, const std::string& label,
                 const std::vector<IsoEntry>& entries) {
  std::string volume = label.empty() ? "packer" : label;
  if (volume.size() > 32)
    return Error(Exit::dataerr, "CD label \"" + volume + "\" is longer than 32 bytes");
  if (volume.find_first_of(",=") != std::string::npos)
    return Error(Exit::dataerr, "CD label \"" + volume + "\" may not hold ',' or '='");

  TreeBuilder builder(::time(nullptr));
  for (const auto& e : entries)
    if (e.kind == IsoEntry::Kind::host)
      if (auto st = builder.add_host(e.source); !st) return st;
  for (const auto& e : entries)
    if (e.kind == IsoEntry::Kind::content)
      if (auto st = builder.add_content(e.path, e.content); !st) return st;
  Tree tree = builder.take();

  auto file = AtomicFile::create(path, 0644);
  if (!file) return std::move(file).error();
  std::unique_ptr<archive, ArchiveDeleter> a(archive_write_new());
  if (!a) return Error(Exit::software, "libarchive: out of memory");
  if (archive_write_set_format_iso9660(a.get()) != ARCHIVE_OK) return archive_error(a.get(), path);
  // Rock Ridge (POSIX names and modes, for Linux) and Joliet (for Windows)
  // are libarchive's defaults; named here so that the image does not change
  // if the defaults do.
  std::string options = "iso9660:volume-id=" + volume + ",iso9660:rockridge,iso9660:joliet";
  if (archive_write_set_options(a.get(), options.c_str()) != ARCHIVE_OK)
    return archive_error(a.get(), path);
  // libarchive writes its blocks unpadded; an ISO is whole 2048-byte sectors.
  archive_write_set_bytes_in_last_block(a.get(), 1);
  if (archive_write_open_fd(a.get(), file->fd()) != ARCHIVE_OK) return archive_error(a.get(), path);
  for (const auto& [p, node] : tree)
    if (auto st = write_node(a.get(), path, p, node); !st) return st;
  if (archive_write_close(a.get()) != ARCHIVE_OK) return archive_error(a.get(), path);
  return file->commit();
}

Status write_cloud_init_seed(const std::string& path, const std::string& meta_data,
                             const std::string& user_data) {
  return write_iso(
      path, "cidata",
      {IsoEntry::text("meta-data", meta_data), IsoEntry::text("user-data", user_data)});
}

}  // namespace kiln

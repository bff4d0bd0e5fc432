// SPDX-License-Identifier: MIT
#include "checksum.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "atomic_file.hpp"
#include "fd.hpp"
#include "manifest.hpp"
#include "signals.hpp"
#include "text.hpp"

namespace kiln::checksum {

namespace fs = std::filesystem;

namespace {

constexpr std::array<std::pair<Algorithm, const char*>, 6> kNames = {{
    {Algorithm::md5, "md5"},
    {Algorithm::sha1, "sha1"},
    {Algorithm::sha224, "sha224"},
    {Algorithm::sha256, "sha256"},
    {Algorithm::sha384, "sha384"},
    {Algorithm::sha512, "sha512"},
}};

// Big blocks keep the per-block hand-over (a mutex, a wake-up) negligible
// next to the hashing; four of them let the reader run ahead of the slowest
// digest while the others are already done with a block.
constexpr size_t kBlockSize = size_t{4} << 20;
constexpr size_t kSlots = 4;

struct FreeDeleter {
  void operator()(unsigned char* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<unsigned char, FreeDeleter>;

struct MdCtxDeleter {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
struct MdDeleter {
  void operator()(EVP_MD* m) const { EVP_MD_free(m); }
};

std::string to_hex(const unsigned char* p, unsigned n) {
  static const char* hex = "0123456789abcdef";
  std::string s;
  s.reserve(n * 2);
  for (unsigned i = 0; i < n; ++i) {
    s += hex[p[i] >> 4];
    s += hex[p[i] & 15];
  }
  return s;
}

// The blocks handed from the reader (the caller's thread) to one thread
// per digest. A slot is free for the reader when every digest is done with
// it (pending == 0); block number `seq` lives in slot seq % kSlots.
struct Pipeline {
  struct Slot {
    Buffer data;
    size_t size = 0;
    size_t pending = 0;
  };
  std::mutex m;
  std::condition_variable block_ready;  // workers wait for a block
  std::condition_variable slot_free;    // the reader waits for a slot
  std::array<Slot, kSlots> slots;
  std::uint64_t published = 0;  // blocks [0, published) are readable
  bool finished = false;        // no block will follow `published`
  bool abort = false;           // stop now (error or interrupt)
  std::string worker_error;
};

void digest_worker(Pipeline& p, EVP_MD_CTX* ctx) {
  std::uint64_t next = 0;
  for (;;) {
    Pipeline::Slot* slot;
    {
      std::unique_lock lock(p.m);
      p.block_ready.wait(lock, [&] { return p.abort || next < p.published || p.finished; });
      if (p.abort || next >= p.published) return;
      slot = &p.slots[next % kSlots];
    }
    bool ok = EVP_DigestUpdate(ctx, slot->data.get(), slot->size) == 1;
    std::lock_guard lock(p.m);
    if (!ok) {
      p.worker_error = "OpenSSL could not update a digest";
      p.abort = true;
      p.slot_free.notify_all();
      p.block_ready.notify_all();
      return;
    }
    if (--slot->pending == 0) p.slot_free.notify_one();
    ++next;
  }
}

}  // namespace

std::string_view name(Algorithm a) {
  for (const auto& [alg, n] : kNames)
    if (alg == a) return n;
  return "md5";
}

std::optional<Algorithm> parse_algorithm(std::string_view n) {
  for (const auto& [alg, text] : kNames)
    if (n == text) return alg;
  return std::nullopt;
}

Result<std::vector<std::string>> digest_file(const std::string& path,
                                             const std::vector<Algorithm>& algorithms,
                                             const Progress& progress) {
  const size_t n = algorithms.size();
  std::vector<std::unique_ptr<EVP_MD, MdDeleter>> mds;
  std::vector<std::unique_ptr<EVP_MD_CTX, MdCtxDeleter>> ctxs;
  for (Algorithm a : algorithms) {
    // An explicit fetch once per file rather than the implicit one inside
    // every EVP_DigestInit of the legacy EVP_sha256() style.
    std::unique_ptr<EVP_MD, MdDeleter> md(
        EVP_MD_fetch(nullptr, std::string(name(a)).c_str(), nullptr));
    std::unique_ptr<EVP_MD_CTX, MdCtxDeleter> ctx(EVP_MD_CTX_new());
    if (!md || !ctx || EVP_DigestInit_ex(ctx.get(), md.get(), nullptr) != 1)
      return Error(Exit::software, "OpenSSL does not provide " + std::string(name(a)));
    mds.push_back(std::move(md));
    ctxs.push_back(std::move(ctx));
  }

  UniqueFd in(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (in.get() < 0)
    return Error(Exit::noinput, "cannot read " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(in.get(), &st) != 0 || S_ISDIR(st.st_mode))
    return Error(Exit::noinput,
                 "cannot read " + path + ": " +
                     (S_ISDIR(st.st_mode) ? "is a directory" : std::strerror(errno)));
  const std::uint64_t total = S_ISREG(st.st_mode) ? static_cast<std::uint64_t>(st.st_size) : 0;
  ::posix_fadvise(in.get(), 0, 0, POSIX_FADV_SEQUENTIAL);

  Pipeline p;
  for (auto& slot : p.slots) {
    slot.data.reset(static_cast<unsigned char*>(std::aligned_alloc(4096, kBlockSize)));
    if (!slot.data) return Error(Exit::software, "out of memory");
  }

  std::vector<std::thread> workers;
  workers.reserve(n);
  for (size_t i = 0; i < n; ++i) workers.emplace_back(digest_worker, std::ref(p), ctxs[i].get());

  std::optional<Error> failure;
  std::uint64_t done = 0;
  for (std::uint64_t seq = 0;; ++seq) {
    Pipeline::Slot& slot = p.slots[seq % kSlots];
    {
      std::unique_lock lock(p.m);
      p.slot_free.wait(lock, [&] { return p.abort || slot.pending == 0; });
      if (p.abort) break;
    }
    if (signals::interrupted()) {
      failure = Error(Exit::interrupted, "checksum of " + path + " interrupted");
      break;
    }
    size_t got = 0;
    while (got < kBlockSize) {
      ssize_t r = ::read(in.get(), slot.data.get() + got, kBlockSize - got);
      if (r < 0) {
        if (errno == EINTR) {
          if (signals::interrupted()) break;
          continue;
        }
        failure = Error(Exit::ioerr, "cannot read " + path + ": " + std::strerror(errno));
        break;
      }
      if (r == 0) break;
      got += static_cast<size_t>(r);
    }
    if (failure) break;
    if (got == 0) break;
    done += got;
    {
      std::lock_guard lock(p.m);
      slot.size = got;
      slot.pending = n;
      ++p.published;
    }
    p.block_ready.notify_all();
    if (progress) progress(done, total > done ? total : done);
    if (got < kBlockSize && !signals::interrupted()) break;  // end of file
  }
  {
    std::lock_guard lock(p.m);
    p.finished = true;
    if (failure) p.abort = true;
  }
  p.block_ready.notify_all();
  for (auto& t : workers) t.join();
  if (failure) return *failure;
  if (!p.worker_error.empty()) return Error(Exit::software, p.worker_error);
  if (signals::interrupted())
    return Error(Exit::interrupted, "checksum of " + path + " interrupted");

  std::vector<std::string> out;
  out.reserve(n);
  for (auto& ctx : ctxs) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    if (EVP_DigestFinal_ex(ctx.get(), md, &len) != 1)
      return Error(Exit::software, "OpenSSL could not finish a digest");
    out.push_back(to_hex(md, len));
  }
  return out;
}

std::string line(std::string_view hex, std::string_view file) {
  std::string s(hex);
  s += '\t';
  s += text::go_base(file);
  s += '\n';
  return s;
}

Status check(const Options& options) {
  for (const auto& t : options.checksum_types)
    if (!parse_algorithm(t)) return Error(Exit::config, "Unrecognized checksum type: " + t);
  const std::string output = options.output.empty() ? std::string(default_output) : options.output;
  if (auto st = tmpl::check_syntax(output); !st)
    return Error(Exit::config, "Error parsing target template: " + st.error().message);
  return {};
}

Result<std::vector<Written>> run(const std::vector<std::string>& files, const Options& options,
                                 const tmpl::Context& context, const Progress& progress) {
  if (auto st = check(options); !st) return st.error();
  if (files.empty()) return std::vector<Written>{};  // Packer writes nothing either
  std::vector<std::string> types = options.checksum_types;
  if (types.empty()) types = {"md5"};
  const std::string output = options.output.empty() ? std::string(default_output) : options.output;

  // Each distinct algorithm once, whatever the list repeats.
  std::vector<Algorithm> algorithms;
  for (const auto& t : types) {
    Algorithm a = *parse_algorithm(t);
    bool seen = false;
    for (Algorithm b : algorithms) seen = seen || a == b;
    if (!seen) algorithms.push_back(a);
  }

  std::uint64_t total = 0;
  for (const auto& f : files) {
    std::error_code ec;
    auto size = fs::file_size(f, ec);
    if (!ec) total += size;
  }
  // digests[file][algorithm index]
  std::vector<std::vector<std::string>> digests;
  std::uint64_t before = 0;
  for (const auto& f : files) {
    Progress each;
    if (progress)
      each = [&](std::uint64_t done, std::uint64_t) {
        progress(before + done, total > before + done ? total : before + done);
      };
    std::optional<std::string> known;
    if (algorithms.size() == 1 && algorithms[0] == Algorithm::sha256 && options.known_sha256)
      known = options.known_sha256(f);
    auto d = known ? Result<std::vector<std::string>>(std::vector<std::string>{*known})
                   : digest_file(f, algorithms, each);
    if (!d) return d.error();
    std::error_code ec;
    auto size = fs::file_size(f, ec);
    before += ec ? 0 : size;
    digests.push_back(std::move(*d));
  }

  // Packer's order: every file under the first type, then the next type;
  // several types may render to the same file.
  std::vector<std::pair<std::string, std::string>> outputs;  // path, lines
  std::vector<std::string> first_type;
  for (const auto& t : types) {
    tmpl::Context ctx = context;
    ctx.fields["BuildName"] = options.build_name;
    ctx.fields["BuilderType"] = options.builder_type;
    ctx.fields["ChecksumType"] = t;
    auto path = tmpl::render(output, ctx);
    if (!path) return Error(Exit::dataerr, "checksum output: " + path.error().message);
    size_t index = 0;
    while (index < outputs.size() && outputs[index].first != *path) ++index;
    if (index == outputs.size()) {
      outputs.emplace_back(*path, "");
      first_type.push_back(t);
    }
    size_t alg = 0;
    while (algorithms[alg] != *parse_algorithm(t)) ++alg;
    for (size_t i = 0; i < files.size(); ++i)
      outputs[index].second += line(digests[i][alg], files[i]);
  }

  std::vector<Written> written;
  for (size_t i = 0; i < outputs.size(); ++i) {
    const fs::path target = outputs[i].first;
    std::error_code ec;
    if (target.has_parent_path()) {
      fs::create_directories(target.parent_path(), ec);
      if (ec)
        return Error(Exit::cantcreat,
                     "cannot create " + target.parent_path().string() + ": " + ec.message());
    }
    auto lock = manifest::UpdateLock::acquire(target);
    if (!lock) return lock.error();
    std::string contents;
    unsigned mode = 0644;
    struct stat st {};
    const bool exists = ::stat(target.c_str(), &st) == 0;
    if (exists) {
      auto old = read_file(target);
      if (!old) return old.error();
      contents = std::move(*old);
      mode = st.st_mode & 07777;
    }
    contents += outputs[i].second;
    if (auto st2 = write_file_atomically(target, contents, mode); !st2) return st2.error();
    written.push_back({outputs[i].first, first_type[i], !exists});
  }
  return written;
}

}  // namespace kiln::checksum

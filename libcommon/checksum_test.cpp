// SPDX-License-Identifier: MIT
#define BOOST_TEST_MODULE checksum
#include "checksum.hpp"

#include <signal.h>

#include <boost/test/unit_test.hpp>
#include <fstream>
#include <random>
#include <thread>

#include "atomic_file.hpp"
#include "process.hpp"
#include "signals.hpp"
#include "test_support.hpp"

using namespace kiln;
namespace fs = std::filesystem;

namespace {

void write_random(const fs::path& p, size_t size, unsigned seed) {
  std::mt19937 rng(seed);
  std::string data(size, '\0');
  for (auto& c : data) c = static_cast<char>(rng() & 0xff);
  std::ofstream(p, std::ios::binary) << data;
}

// The digest as coreutils' md5sum, sha1sum... print it.
std::string coreutils(const std::string& alg, const fs::path& file) {
  auto out = process::run({alg + "sum", {file.string()}, {}, "", std::nullopt});
  BOOST_REQUIRE(out.ok());
  BOOST_REQUIRE_EQUAL(out->exit_code, 0);
  return out->out.substr(0, out->out.find(' '));
}

tmpl::Context context() {
  tmpl::Context c;
  c.user = [](const std::string& n) -> Result<std::string> {
    if (n == "version") return std::string("1.2");
    return Error(Exit::dataerr, "variable \"" + n + "\" is not set");
  };
  return c;
}

template <class R>
std::string why(const R& r) {
  return r.ok() ? std::string() : r.error().message;
}

}  // namespace

BOOST_AUTO_TEST_CASE(names) {
  for (auto a :
       {checksum::Algorithm::md5, checksum::Algorithm::sha1, checksum::Algorithm::sha224,
        checksum::Algorithm::sha256, checksum::Algorithm::sha384, checksum::Algorithm::sha512})
    BOOST_TEST((checksum::parse_algorithm(checksum::name(a)) == a));
  BOOST_TEST(!checksum::parse_algorithm("SHA256"));
  BOOST_TEST(!checksum::parse_algorithm("crc32"));
}

// Sizes around the 4 MiB block and past the ring of four slots.
BOOST_AUTO_TEST_CASE(digests_match_coreutils_at_block_edges) {
  testing::TempDir dir;
  const std::vector<std::string> algs = {"md5", "sha1", "sha224", "sha256", "sha384", "sha512"};
  std::vector<checksum::Algorithm> all;
  for (const auto& a : algs) all.push_back(*checksum::parse_algorithm(a));
  const size_t mib = size_t{1} << 20;
  unsigned seed = 1;
  for (size_t size :
       {size_t{0}, size_t{1}, 4 * mib - 1, 4 * mib, 4 * mib + 1, 8 * mib, 21 * mib + 12345}) {
    fs::path f = dir.path / ("f" + std::to_string(size));
    write_random(f, size, seed++);
    std::uint64_t last_done = 0, last_total = 0;
    auto got = checksum::digest_file(f.string(), all, [&](std::uint64_t done, std::uint64_t total) {
      BOOST_TEST(done >= last_done);
      last_done = done;
      last_total = total;
    });
    BOOST_REQUIRE_MESSAGE(got.ok(), why(got));
    BOOST_REQUIRE_EQUAL(got->size(), algs.size());
    for (size_t i = 0; i < algs.size(); ++i)
      BOOST_TEST((*got)[i] == coreutils(algs[i], f), algs[i] << " of " << size);
    BOOST_TEST(last_done == size);
    if (size > 0) BOOST_TEST(last_total == size);
  }
  // The same algorithm twice and one alone give the same digest.
  fs::path f = dir.path / "f8388608";
  auto twice =
      checksum::digest_file(f.string(), {checksum::Algorithm::sha256, checksum::Algorithm::sha256});
  auto once = checksum::digest_file(f.string(), {checksum::Algorithm::sha256});
  BOOST_REQUIRE(twice.ok() && once.ok());
  BOOST_TEST((*twice)[0] == (*once)[0]);
  BOOST_TEST((*twice)[1] == (*once)[0]);
}

BOOST_AUTO_TEST_CASE(digest_errors) {
  testing::TempDir dir;
  auto missing = checksum::digest_file((dir.path / "nope").string(), {checksum::Algorithm::md5});
  BOOST_REQUIRE(!missing.ok());
  BOOST_TEST((missing.error().code == Exit::noinput));
  auto directory = checksum::digest_file(dir.path.string(), {checksum::Algorithm::md5});
  BOOST_REQUIRE(!directory.ok());
  BOOST_TEST((directory.error().code == Exit::noinput));
}

BOOST_AUTO_TEST_CASE(interrupt_stops_between_blocks) {
  testing::TempDir dir;
  write_random(dir.path / "big", 12 << 20, 7);
  int calls = 0;
  auto got = checksum::digest_file((dir.path / "big").string(),
                                   {checksum::Algorithm::sha256, checksum::Algorithm::md5},
                                   [&](std::uint64_t, std::uint64_t) {
                                     if (++calls == 1) signals::raise_for_test(SIGINT);
                                   });
  signals::clear();
  BOOST_REQUIRE(!got.ok());
  BOOST_TEST((got.error().code == Exit::interrupted));
  BOOST_TEST(calls == 1);
}

BOOST_AUTO_TEST_CASE(line_is_packers) {
  BOOST_TEST(checksum::line("abc", "out/dir/disk.qcow2") == "abc\tdisk.qcow2\n");
  BOOST_TEST(checksum::line("abc", "disk") == "abc\tdisk\n");
  BOOST_TEST(checksum::line("abc", "out/dir/") == "abc\tdir\n");
}

BOOST_AUTO_TEST_CASE(check_rejects_unknown_types_and_bad_templates) {
  checksum::Options o;
  o.checksum_types = {"sha256", "crc32"};
  auto st = checksum::check(o);
  BOOST_REQUIRE(!st.ok());
  BOOST_TEST((st.error().code == Exit::config));
  BOOST_TEST(st.error().message == "Unrecognized checksum type: crc32");
  o.checksum_types = {"sha256"};
  o.output = "x_{{.BuildName";
  BOOST_TEST(!checksum::check(o).ok());
  o.output = "";
  BOOST_TEST(checksum::check(o).ok());
}

// Packer's files: default name, "hash<TAB>base name" lines, appended to
// across runs, accepted by the coreutils checkers.
BOOST_AUTO_TEST_CASE(run_writes_packers_files_that_sha256sum_accepts) {
  testing::TempDir dir;
  fs::create_directories(dir.path / "out");
  const fs::path a = dir.path / "out" / "disk.qcow2";
  const fs::path b = dir.path / "out" / "disk.vmdk";
  write_random(a, 5 << 20, 11);
  write_random(b, 1000, 12);

  fs::path cwd = fs::current_path();
  fs::current_path(dir.path);
  checksum::Options o;
  o.checksum_types = {"sha256", "md5"};
  o.build_name = "web";
  o.builder_type = "qemu";
  auto written = checksum::run({"out/disk.qcow2", "out/disk.vmdk"}, o, context());
  auto again = checksum::run({"out/disk.qcow2"}, o, context());
  fs::current_path(cwd);
  BOOST_REQUIRE_MESSAGE(written.ok(), why(written));
  BOOST_REQUIRE(again.ok());
  BOOST_REQUIRE_EQUAL(written->size(), 2u);
  BOOST_TEST((*written)[0].path == "packer_web_qemu_sha256.checksum");
  BOOST_TEST((*written)[0].type == "sha256");
  BOOST_TEST((*written)[0].created);
  BOOST_TEST((*written)[1].path == "packer_web_qemu_md5.checksum");
  BOOST_TEST(!(*again)[0].created);

  auto sha = read_file(dir.path / "packer_web_qemu_sha256.checksum");
  BOOST_REQUIRE(sha.ok());
  BOOST_TEST(*sha == coreutils("sha256", a) + "\tdisk.qcow2\n" + coreutils("sha256", b) +
                         "\tdisk.vmdk\n" + coreutils("sha256", a) + "\tdisk.qcow2\n");
  auto md5 = read_file(dir.path / "packer_web_qemu_md5.checksum");
  BOOST_REQUIRE(md5.ok());
  BOOST_TEST(md5->find(coreutils("md5", b) + "\tdisk.vmdk\n") != std::string::npos);

  for (const char* tool : {"sha256sum", "md5sum"}) {
    std::string file =
        std::string("../packer_web_qemu_") + (tool[0] == 's' ? "sha256" : "md5") + ".checksum";
    auto ok = process::run(
        {tool, {"--check", "--strict", file}, {}, (dir.path / "out").string(), std::nullopt});
    BOOST_REQUIRE(ok.ok());
    BOOST_TEST(ok->exit_code == 0, tool << ": " << ok->out << ok->err);
  }
  // And it can fail: a changed file is reported.
  std::ofstream(b, std::ios::app) << "x";
  auto bad = process::run({"sha256sum",
                           {"--check", "../packer_web_qemu_sha256.checksum"},
                           {},
                           (dir.path / "out").string(),
                           std::nullopt});
  BOOST_REQUIRE(bad.ok());
  BOOST_TEST(bad->exit_code != 0);
  // Nothing but the two checksum files beside the outputs (no temp, no lock).
  int entries = 0;
  for (const auto& e : fs::directory_iterator(dir.path)) {
    (void)e;
    ++entries;
  }
  BOOST_TEST(entries == 3);
}

BOOST_AUTO_TEST_CASE(types_sharing_one_output_follow_packers_order) {
  testing::TempDir dir;
  const fs::path a = dir.path / "a.img";
  const fs::path b = dir.path / "b.img";
  write_random(a, 100, 1);
  write_random(b, 200, 2);
  checksum::Options o;
  o.checksum_types = {"sha1", "sha512"};
  o.output = (dir.path / "sums" / "{{user `version`}}" / "SUMS").string();
  auto w = checksum::run({a.string(), b.string()}, o, context());
  BOOST_REQUIRE_MESSAGE(w.ok(), why(w));
  BOOST_REQUIRE_EQUAL(w->size(), 1u);
  BOOST_TEST((*w)[0].path == (dir.path / "sums/1.2/SUMS").string());
  auto text = read_file(dir.path / "sums/1.2/SUMS");
  BOOST_REQUIRE(text.ok());
  BOOST_TEST(*text == coreutils("sha1", a) + "\ta.img\n" + coreutils("sha1", b) + "\tb.img\n" +
                          coreutils("sha512", a) + "\ta.img\n" + coreutils("sha512", b) +
                          "\tb.img\n");
}

// A digest known already (capture's) is used, not read again; only when
// sha256 is the one type asked for.
BOOST_AUTO_TEST_CASE(a_known_sha256_is_used_instead_of_reading) {
  testing::TempDir dir;
  const fs::path a = dir.path / "a.img";
  const fs::path b = dir.path / "b.img";
  write_random(a, 100, 1);
  write_random(b, 100, 2);
  const std::string fake(64, 'f');
  std::vector<std::string> asked;
  checksum::Options o;
  o.checksum_types = {"sha256"};
  o.output = (dir.path / "SUMS_{{.ChecksumType}}").string();
  o.known_sha256 = [&](const std::string& path) -> std::optional<std::string> {
    asked.push_back(path);
    if (path == a.string()) return fake;
    return std::nullopt;
  };
  auto w = checksum::run({a.string(), b.string()}, o, context());
  BOOST_REQUIRE_MESSAGE(w.ok(), why(w));
  BOOST_TEST(asked.size() == 2u);
  auto text = read_file(dir.path / "SUMS_sha256");
  BOOST_REQUIRE(text.ok());
  BOOST_TEST(*text == fake + "\ta.img\n" + coreutils("sha256", b) + "\tb.img\n");

  // With another type the file is read anyway, and every digest is its own.
  asked.clear();
  o.checksum_types = {"sha256", "md5"};
  fs::remove(dir.path / "SUMS_sha256");
  w = checksum::run({a.string()}, o, context());
  BOOST_REQUIRE_MESSAGE(w.ok(), why(w));
  BOOST_TEST(asked.empty());
  text = read_file(dir.path / "SUMS_sha256");
  BOOST_REQUIRE(text.ok());
  BOOST_TEST(*text == coreutils("sha256", a) + "\ta.img\n");
}

BOOST_AUTO_TEST_CASE(a_missing_file_writes_nothing) {
  testing::TempDir dir;
  write_random(dir.path / "a", 10, 1);
  checksum::Options o;
  o.output = (dir.path / "sum_{{.ChecksumType}}").string();
  auto w = checksum::run({(dir.path / "a").string(), (dir.path / "gone").string()}, o, context());
  BOOST_REQUIRE(!w.ok());
  BOOST_TEST((w.error().code == Exit::noinput));
  BOOST_TEST(!fs::exists(dir.path / "sum_md5"));
  auto none = checksum::run({}, o, context());
  BOOST_REQUIRE(none.ok());
  BOOST_TEST(none->empty());
  BOOST_TEST(!fs::exists(dir.path / "sum_md5"));
  o.output = (dir.path / "{{.NoSuchField}}").string();
  auto bad = checksum::run({(dir.path / "a").string()}, o, context());
  BOOST_REQUIRE(!bad.ok());
  BOOST_TEST((bad.error().code == Exit::dataerr));
}

// Parallel builds appending to one checksum file lose no line.
BOOST_AUTO_TEST_CASE(parallel_appends_lose_nothing) {
  testing::TempDir dir;
  const int n = 8;
  for (int i = 0; i < n; ++i) write_random(dir.path / ("f" + std::to_string(i)), 1000 + i, i);
  std::vector<std::thread> threads;
  std::vector<int> ok(n, 0);
  for (int i = 0; i < n; ++i)
    threads.emplace_back([&, i] {
      checksum::Options o;
      o.checksum_types = {"sha256"};
      o.output = (dir.path / "SHA256SUMS").string();
      for (int round = 0; round < 5; ++round) {
        auto w =
            checksum::run({(dir.path / ("f" + std::to_string(i))).string()}, o, tmpl::Context{});
        ok[i] += w.ok() ? 1 : 0;
      }
    });
  for (auto& t : threads) t.join();
  for (int i = 0; i < n; ++i) BOOST_TEST(ok[i] == 5);
  auto text = read_file(dir.path / "SHA256SUMS");
  BOOST_REQUIRE(text.ok());
  size_t lines = 0;
  for (char c : *text) lines += c == '\n';
  BOOST_TEST(lines == size_t{n} * 5);
  auto check = process::run({"sha256sum",
                             {"--check", "--strict", "--quiet", "SHA256SUMS"},
                             {},
                             dir.path.string(),
                             std::nullopt});
  BOOST_REQUIRE(check.ok());
  BOOST_TEST(check->exit_code == 0);
  BOOST_TEST(!fs::exists(dir.path / "SHA256SUMS.lock"));
}

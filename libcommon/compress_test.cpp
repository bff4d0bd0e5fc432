// SPDX-License-Identifier: MIT
#define BOOST_TEST_MODULE compress
#include "compress.hpp"

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <fstream>
#include <random>

#include "atomic_file.hpp"
#include "process.hpp"
#include "signals.hpp"
#include "test_support.hpp"

using namespace kiln;
namespace fs = std::filesystem;
using compress::Algorithm;
using compress::Archive;
using compress::Format;

namespace {

template <class R>
std::string why(const R& r) {
  return r.ok() ? std::string() : r.error().message;
}

std::string random_bytes(size_t size, unsigned seed) {
  std::mt19937 rng(seed);
  std::string data(size, '\0');
  // Half random, half text: compressible but not trivially.
  for (size_t i = 0; i < size; ++i)
    data[i] =
        (i / 4096) % 2 ? static_cast<char>(rng() & 0xff) : static_cast<char>('a' + (rng() % 4));
  return data;
}

// Runs a command in `cwd`; returns its exit code and fills `out`.
int sh(const std::string& command, const fs::path& cwd, std::string* out = nullptr) {
  auto r = process::run({"sh", {"-c", command}, {}, cwd.string(), std::nullopt});
  BOOST_REQUIRE_MESSAGE(r.ok(), why(r));
  if (out) *out = r->out;
  if (r->exit_code != 0) BOOST_TEST_MESSAGE(command << ": " << r->err);
  return r->exit_code;
}

std::string slurp(const fs::path& p) {
  auto r = read_file(p);
  BOOST_REQUIRE_MESSAGE(r.ok(), why(r));
  return *r;
}

size_t entries_in(const fs::path& dir) {
  size_t n = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    (void)e;
    ++n;
  }
  return n;
}

// An artifact of three files: a 6 MiB image (more than one block), a
// small text and an executable script.
struct Artifact {
  testing::TempDir dir;
  std::vector<std::string> files;
  std::vector<std::string> contents;
  Artifact() {
    fs::create_directories(dir.path / "in" / "output-qemu");
    const std::vector<std::pair<std::string, std::string>> made = {
        {"output-qemu/disk.qcow2", random_bytes(6 << 20, 1)},
        {"output-qemu/notes.txt", "hello\n"},
        {"run.sh", "#!/bin/sh\necho hi\n"},
    };
    for (const auto& [name, data] : made) {
      std::ofstream(dir.path / "in" / name, std::ios::binary) << data;
      files.push_back("in/" + name);
      contents.push_back(data);
    }
    fs::permissions(dir.path / "in" / "run.sh", fs::perms(0755));
    fs::create_directories(dir.path / "x");
  }
  // Runs the post-processor with the working directory at dir.
  Result<compress::Written> run(const std::string& output, int level = 0,
                                std::vector<std::string> which = {},
                                const compress::Progress& progress = {}) {
    if (which.empty()) which = files;
    compress::Options o;
    o.output = output;
    o.compression_level = level;
    o.build_name = "web";
    o.builder_type = "qemu";
    fs::path cwd = fs::current_path();
    fs::current_path(dir.path);
    auto w = compress::run(which, o, tmpl::Context{}, progress);
    fs::current_path(cwd);
    return w;
  }
  // The extracted files (by base name) equal the inputs.
  void check_extracted(const fs::path& where) {
    for (size_t i = 0; i < files.size(); ++i)
      BOOST_TEST((slurp(where / fs::path(files[i]).filename()) == contents[i]),
                 files[i] << " differs after extraction");
  }
};

}  // namespace

BOOST_AUTO_TEST_CASE(format_from_the_output_as_packer_detects_it) {
  struct Case {
    const char* output;
    const char* format;
    Format expected;
  };
  const std::vector<Case> cases = {
      {"packer_{{.BuildName}}_{{.BuilderType}}", "", {Archive::tar, Algorithm::gzip}},
      {"out.tar", "", {Archive::tar, Algorithm::none}},
      {"out.zip", "", {Archive::zip, Algorithm::none}},
      {"out.tar.gz", "", {Archive::tar, Algorithm::gzip}},
      {"out.tgz", "", {Archive::tar, Algorithm::gzip}},
      {"out.gz", "", {Archive::none, Algorithm::gzip}},
      {"out.tar.xz", "", {Archive::tar, Algorithm::xz}},
      {"out.xz", "", {Archive::none, Algorithm::xz}},
      {"out.tar.zst", "", {Archive::tar, Algorithm::zstd}},
      {"out.zst", "", {Archive::none, Algorithm::zstd}},
      {"out.lz4", "", {Archive::none, Algorithm::lz4}},
      {"out.tar.lz4", "", {Archive::tar, Algorithm::lz4}},
      {"out.bgzf", "", {Archive::none, Algorithm::bgzf}},
      {"disk.raw", "", {Archive::tar, Algorithm::gzip}},
      {"out.TAR.GZ", "", {Archive::tar, Algorithm::gzip}},  // lowercase only
      {"out.zip.gz", "", {Archive::none, Algorithm::gzip}},
      {"out.tar.zip", "", {Archive::zip, Algorithm::none}},
      {"v1.2/disk.qcow2", "", {Archive::tar, Algorithm::gzip}},
      {"dir.tar/out", "", {Archive::tar, Algorithm::none}},  // any group counts
      {"{{.BuildName}}.box", "", {Archive::tar, Algorithm::gzip}},
      {"out", "tar.xz", {Archive::tar, Algorithm::xz}},
      {"out.zip", "gz", {Archive::none, Algorithm::gzip}},
      {"out..zip", "", {Archive::zip, Algorithm::none}},
      {"out.Tar.gz", "", {Archive::none, Algorithm::gzip}},
      {"out.tar.gz.", "", {Archive::tar, Algorithm::gzip}},
  };
  for (const auto& c : cases) {
    Format f = compress::detect_format(c.output, c.format);
    BOOST_TEST((f == c.expected), c.output << " + " << c.format << ": got "
                                           << compress::name(f.archive) << "/"
                                           << compress::name(f.algorithm));
  }
}

BOOST_AUTO_TEST_CASE(levels_are_normalized_as_packer_does) {
  BOOST_TEST(*compress::normalize_level(0) == 6);
  BOOST_TEST(*compress::normalize_level(-1) == 6);
  BOOST_TEST(*compress::normalize_level(1) == 1);
  BOOST_TEST(*compress::normalize_level(9) == 9);
  BOOST_TEST(*compress::normalize_level(42) == 9);
  auto bad = compress::normalize_level(-3);
  BOOST_REQUIRE(!bad.ok());
  BOOST_TEST((bad.error().code == Exit::config));
  compress::Options o;
  o.compression_level = -5;
  BOOST_TEST(!compress::check(o).ok());
  o.compression_level = 3;
  o.output = "x.bgzf";
  BOOST_TEST(!compress::check(o).ok());
  o.output = "x_{{.Bad";
  BOOST_TEST(!compress::check(o).ok());
  o.output = "";
  BOOST_TEST(compress::check(o).ok());
}

BOOST_AUTO_TEST_CASE(default_output_is_a_gzipped_tar_of_base_names) {
  Artifact art;
  std::uint64_t last = 0, total = 0;
  auto w = art.run("", 0, {}, [&](std::uint64_t d, std::uint64_t t) {
    BOOST_TEST(d >= last);
    last = d;
    total = t;
  });
  BOOST_REQUIRE_MESSAGE(w.ok(), why(w));
  BOOST_TEST(w->path == "packer_web_qemu");
  BOOST_TEST((w->format == Format{Archive::tar, Algorithm::gzip}));
  BOOST_TEST(w->size == fs::file_size(art.dir.path / "packer_web_qemu"));
  BOOST_TEST(last == total);
  BOOST_TEST(total == (6u << 20) + 6 + 18);
  BOOST_TEST(sh("gzip -t packer_web_qemu", art.dir.path) == 0);
  std::string listing;
  BOOST_TEST(sh("tar -tvzf packer_web_qemu", art.dir.path, &listing) == 0);
  BOOST_TEST(listing.find(" disk.qcow2\n") != std::string::npos, listing);
  BOOST_TEST(listing.find(" notes.txt\n") != std::string::npos, listing);
  BOOST_TEST(listing.find("-rwxr-xr-x") != std::string::npos, listing);  // run.sh's mode
  BOOST_TEST(listing.find("1970-01-01") != std::string::npos, listing);  // zeroed times
  BOOST_TEST(listing.find("output-qemu") == std::string::npos, listing);
  BOOST_TEST(sh("tar -xzf ../packer_web_qemu", art.dir.path / "x") == 0);
  art.check_extracted(art.dir.path / "x");
  // The level is applied: 9 packs tighter than 1.
  auto fast = art.run("fast.tar.gz", 1);
  auto best = art.run("best.tar.gz", 9);
  BOOST_REQUIRE(fast.ok() && best.ok());
  BOOST_TEST(best->size < fast->size);
  // GNU format, as Packer writes it for Google's importer.
  std::string magic;
  BOOST_TEST(sh("gzip -dc packer_web_qemu | dd bs=1 skip=257 count=8 2>/dev/null | od -c",
                art.dir.path, &magic) == 0);
  BOOST_TEST(magic.find("u   s   t   a   r          \\0") != std::string::npos, magic);
}

BOOST_AUTO_TEST_CASE(every_archive_format_reads_back_with_the_real_tools) {
  struct Case {
    std::string output;
    std::string test;     // integrity check
    std::string extract;  // run in x/
  };
  const std::vector<Case> cases = {
      {"a.tar", "tar -tf a.tar", "tar -xf ../a.tar"},
      {"a.tar.gz", "gzip -t a.tar.gz", "bsdtar -xf ../a.tar.gz"},
      {"a.tgz", "gzip -t a.tgz", "tar -xzf ../a.tgz"},
      {"a.tar.xz", "xz -t a.tar.xz", "tar -xJf ../a.tar.xz"},
      {"a.tar.zst", "zstd -q -t a.tar.zst", "tar --zstd -xf ../a.tar.zst"},
      {"a.tar.lz4", "lz4 -q -t a.tar.lz4", "lz4 -q -dc ../a.tar.lz4 | tar -xf -"},
  };
  for (const auto& c : cases) {
    Artifact art;
    auto w = art.run(c.output, 1);
    BOOST_REQUIRE_MESSAGE(w.ok(), c.output << ": " << why(w));
    BOOST_TEST(sh(c.test, art.dir.path) == 0, c.test);
    BOOST_TEST(sh(c.extract, art.dir.path / "x") == 0, c.extract);
    art.check_extracted(art.dir.path / "x");
    BOOST_TEST(entries_in(art.dir.path / "x") == 3u, c.output);
    BOOST_TEST(entries_in(art.dir.path) == 3u, c.output);  // in, x, the archive
  }
}

BOOST_AUTO_TEST_CASE(zip_keeps_the_paths_as_given) {
  Artifact art;
  auto w = art.run("out/a.zip", 0,
                   {art.files[0], "./" + art.files[1], (art.dir.path / art.files[2]).string()});
  BOOST_REQUIRE_MESSAGE(w.ok(), why(w));
  BOOST_TEST(sh("unzip -tq out/a.zip", art.dir.path) == 0);
  std::string names;
  BOOST_TEST(sh("python3 -c 'import zipfile,sys; "
                "print(\"\\n\".join(zipfile.ZipFile(sys.argv[1]).namelist()))' out/a.zip",
                art.dir.path, &names) == 0);
  const std::string absolute = (art.dir.path / art.files[2]).string().substr(1);
  BOOST_TEST(names == "in/output-qemu/disk.qcow2\nin/output-qemu/notes.txt\n" + absolute + "\n");
  BOOST_TEST(sh("python3 -m zipfile -e out/a.zip x", art.dir.path) == 0);
  BOOST_TEST((slurp(art.dir.path / "x" / art.files[0]) == art.contents[0]));
  BOOST_TEST((slurp(art.dir.path / "x" / absolute) == art.contents[2]));
}

BOOST_AUTO_TEST_CASE(single_streams_and_packers_one_input_rule) {
  for (const auto& [output, tool] :
       std::vector<std::pair<std::string, std::string>>{{"d.gz", "gzip -dc"},
                                                        {"d.xz", "xz -dc"},
                                                        {"d.zst", "zstd -q -dc"},
                                                        {"d.lz4", "lz4 -q -dc"}}) {
    Artifact art;
    auto w = art.run(output, 1, {art.files[0]});
    BOOST_REQUIRE_MESSAGE(w.ok(), output << ": " << why(w));
    BOOST_TEST(sh(tool + " " + output + " > x/disk", art.dir.path) == 0, output);
    BOOST_TEST((slurp(art.dir.path / "x" / "disk") == art.contents[0]), output);

    auto several = art.run("two." + output, 1);
    BOOST_REQUIRE(!several.ok());
    BOOST_TEST((several.error().code == Exit::config));
    BOOST_TEST(several.error().message.find("Can only have 1 input file when not using "
                                            "tar/zip. Found 3 files") == 0,
               several.error().message);
    BOOST_TEST(!fs::exists(art.dir.path / ("two." + output)));
  }
}

BOOST_AUTO_TEST_CASE(failures_and_interrupts_leave_nothing) {
  Artifact art;
  auto missing = art.run("m.tar.gz", 0, {art.files[0], "in/gone"});
  BOOST_REQUIRE(!missing.ok());
  BOOST_TEST((missing.error().code == Exit::noinput));
  BOOST_TEST(entries_in(art.dir.path) == 2u);

  int calls = 0;
  auto stopped = art.run("i.tar.xz", 0, {}, [&](std::uint64_t, std::uint64_t) {
    if (++calls == 1) signals::raise_for_test(SIGINT);
  });
  signals::clear();
  BOOST_REQUIRE(!stopped.ok());
  BOOST_TEST((stopped.error().code == Exit::interrupted));
  BOOST_TEST(calls == 1);
  BOOST_TEST(entries_in(art.dir.path) == 2u);  // no archive, no temporary file

  // An existing output is replaced only on success.
  std::ofstream(art.dir.path / "keep.tar") << "old";
  auto failed = art.run("keep.tar", 0, {"in/gone"});
  BOOST_REQUIRE(!failed.ok());
  BOOST_TEST(slurp(art.dir.path / "keep.tar") == "old");
}

BOOST_AUTO_TEST_CASE(entries_from_memory_with_their_own_mode) {
  testing::TempDir dir;
  std::vector<compress::Entry> entries(2);
  entries[0].name = "metadata.json";
  entries[0].content = "{}\n";
  entries[1].name = "sub/data";
  entries[1].content = std::string(100000, 'z');
  entries[1].mode = 0600;
  compress::Settings s;
  s.format = {Archive::tar, Algorithm::none};
  BOOST_REQUIRE(compress::write(dir.path / "m.tar", entries, s).ok());
  std::string listing;
  BOOST_TEST(sh("tar -tvf m.tar", dir.path, &listing) == 0);
  BOOST_TEST(listing.find("-rw-r--r--") != std::string::npos, listing);
  BOOST_TEST(listing.find("-rw-------") != std::string::npos, listing);
  BOOST_TEST(sh("tar -xOf m.tar sub/data | wc -c", dir.path, &listing) == 0);
  BOOST_TEST(listing == "100000\n");
  // No entries: an empty archive, as Packer writes for an artifact without files.
  BOOST_TEST(compress::write(dir.path / "none.tar", {}, s).ok());
  BOOST_TEST(sh("tar -tf none.tar", dir.path, &listing) == 0);
  BOOST_TEST(listing.empty());
  s.format = {Archive::zip, Algorithm::none};
  BOOST_TEST(compress::write(dir.path / "none.zip", {}, s).ok());
  BOOST_TEST(
      sh("python3 -c 'import zipfile; assert zipfile.ZipFile(\"none.zip\").namelist() == []'",
         dir.path) == 0);
  s.format = {Archive::none, Algorithm::gzip};
  BOOST_TEST(!compress::write(dir.path / "none.gz", {}, s).ok());
  s.format = {Archive::none, Algorithm::bgzf};
  BOOST_TEST(!compress::write(dir.path / "b.bgzf", entries, s).ok());
}

// 1 GiB through tar + zstd (on every core) with memory that does not grow
// with it: measured in a child process, whose peak starts where it forks.
BOOST_AUTO_TEST_CASE(memory_stays_flat_on_a_large_input) {
  testing::TempDir dir;
  {
    std::ofstream f(dir.path / "big.img", std::ios::binary);
    f.seekp((std::int64_t{1} << 30) - 1);
    f.put('x');
  }
  pid_t pid = ::fork();
  BOOST_REQUIRE(pid >= 0);
  if (pid == 0) {
    struct rusage before {
    }, after{};
    ::getrusage(RUSAGE_SELF, &before);
    compress::Settings s;
    s.format = {Archive::tar, Algorithm::zstd};
    s.level = 1;
    std::vector<compress::Entry> entries(1);
    entries[0].name = "big.img";
    entries[0].source = dir.path / "big.img";
    auto st = compress::write(dir.path / "big.tar.zst", entries, s);
    ::getrusage(RUSAGE_SELF, &after);
    long grown_mib = (after.ru_maxrss - before.ru_maxrss) / 1024;
    ::_exit(!st.ok() ? 255 : static_cast<int>(std::min(grown_mib, 250L)));
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  BOOST_REQUIRE(WIFEXITED(status));
  BOOST_TEST_MESSAGE("peak RSS grew by " << WEXITSTATUS(status) << " MiB");
  BOOST_TEST(WEXITSTATUS(status) != 255);
  BOOST_TEST(WEXITSTATUS(status) < 100);
  std::string size;
  BOOST_TEST(sh("zstd -q -dc big.tar.zst | tar -xOf - big.img | wc -c", dir.path, &size) == 0);
  BOOST_TEST(size == std::to_string(std::int64_t{1} << 30) + "\n");
}

// SPDX-License-Identifier: MIT
#define BOOST_TEST_MODULE iso
#include "iso.hpp"

#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <boost/process.hpp>
#include <boost/process/extend.hpp>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "process.hpp"
#include "test_support.hpp"

using namespace kiln;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace bp = boost::process;

namespace {

using kiln::testing::TempDir;

void write(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}

/// Runs a real tool and returns its stdout; the test fails if it fails.
std::string run(const std::string& program, std::vector<std::string> args) {
  auto r = process::run({program, std::move(args), {}, {}, {}});
  BOOST_REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  BOOST_REQUIRE_MESSAGE(r->exit_code == 0, program << " failed: " << r->err);
  return r->out;
}

/// The paths in the image, as bsdtar lists them.
std::vector<std::string> listing(const fs::path& iso) {
  std::istringstream in(run("bsdtar", {"-tf", iso.string()}));
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);)
    if (!line.empty() && line != ".") out.push_back(line);
  std::sort(out.begin(), out.end());
  return out;
}

std::string extract(const fs::path& iso, const std::string& member) {
  return run("bsdtar", {"-xOf", iso.string(), member});
}

std::vector<std::string> sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

bool no_temp_files(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp-") != std::string::npos) return false;
  return true;
}

}  // namespace

BOOST_AUTO_TEST_CASE(cloud_init_seed_is_a_cidata_iso_with_both_files) {
  TempDir t;
  fs::path iso = t.path / "seed.iso";
  std::string meta = "instance-id: kiln-1\nlocal-hostname: web\n";
  std::string user = "#cloud-config\nusers:\n  - name: kiln\n";
  auto st = write_cloud_init_seed(iso.string(), meta, user);
  BOOST_REQUIRE_MESSAGE(st.ok(), (st.ok() ? "" : st.error().message));

  // The primary descriptor holds the label in ISO9660's upper case; the
  // Joliet one keeps it as given, and that is the label blkid (so
  // cloud-init) sees, as with Packer's xorriso-made seeds.
  std::string info = run("isoinfo", {"-d", "-i", iso.string()});
  BOOST_TEST(info.find("Volume id: CIDATA\n") != std::string::npos, info);
  BOOST_TEST(run("blkid", {"-p", "-o", "value", "-s", "LABEL", iso.string()}) == "cidata\n");
  BOOST_TEST(info.find("Rock Ridge signatures") != std::string::npos, info);
  BOOST_TEST(info.find("Joliet with UCS level") != std::string::npos, info);
  BOOST_TEST(fs::file_size(iso) % 2048 == 0u);

  BOOST_TEST(listing(iso) == (std::vector<std::string>{"meta-data", "user-data"}),
             boost::test_tools::per_element());
  BOOST_TEST(extract(iso, "meta-data") == meta);
  BOOST_TEST(extract(iso, "user-data") == user);
  // The Rock Ridge names are what Linux sees; isoinfo -R reads them too.
  std::string rr = run("isoinfo", {"-R", "-f", "-i", iso.string()});
  BOOST_TEST(rr.find("/user-data") != std::string::npos, rr);
  BOOST_TEST(no_temp_files(t.path));
}

BOOST_AUTO_TEST_CASE(cd_files_land_like_packers) {
  TempDir t;
  fs::path src = t.path / "src";
  write(src / "ks.cfg", "kickstart\n");
  write(src / "tree" / "a.txt", "A\n");
  write(src / "tree" / "sub" / "deep" / "b.txt", "B\n");
  write(src / "flat" / "c.txt", "C\n");
  write(src / "flat" / "inner" / "d.txt", "D\n");
  fs::path iso = t.path / "cd.iso";
  auto st =
      write_iso(iso.string(), "KILN_CD",
                {IsoEntry::host((src / "ks.cfg").string()), IsoEntry::host((src / "tree").string()),
                 IsoEntry::host((src / "flat").string() + "/")});
  BOOST_REQUIRE_MESSAGE(st.ok(), (st.ok() ? "" : st.error().message));
  BOOST_TEST(run("isoinfo", {"-d", "-i", iso.string()}).find("Volume id: KILN_CD\n") !=
             std::string::npos);
  // A file at the root by its name; "tree" keeps its name; "flat/" spills
  // its contents at the root.
  BOOST_TEST(listing(iso) == sorted({"ks.cfg", "tree", "tree/a.txt", "tree/sub", "tree/sub/deep",
                                     "tree/sub/deep/b.txt", "c.txt", "inner", "inner/d.txt"}),
             boost::test_tools::per_element());
  BOOST_TEST(extract(iso, "tree/sub/deep/b.txt") == "B\n");
  BOOST_TEST(extract(iso, "inner/d.txt") == "D\n");
  BOOST_TEST(extract(iso, "ks.cfg") == "kickstart\n");
}

BOOST_AUTO_TEST_CASE(cd_content_takes_precedence_and_makes_directories) {
  TempDir t;
  write(t.path / "src" / "user-data", "from the file\n");
  fs::path iso = t.path / "cd.iso";
  auto st = write_iso(
      iso.string(), "",
      {IsoEntry::text("user-data", "from content\n"),
       IsoEntry::host((t.path / "src" / "user-data").string()),
       IsoEntry::text("/preseed/deep/debian.cfg", "d-i foo\n"), IsoEntry::text("empty", "")});
  BOOST_REQUIRE_MESSAGE(st.ok(), (st.ok() ? "" : st.error().message));
  BOOST_TEST(run("isoinfo", {"-d", "-i", iso.string()}).find("Volume id: PACKER\n") !=
             std::string::npos);
  BOOST_TEST(listing(iso) == sorted({"user-data", "preseed", "preseed/deep",
                                     "preseed/deep/debian.cfg", "empty"}),
             boost::test_tools::per_element());
  BOOST_TEST(extract(iso, "user-data") == "from content\n");
  BOOST_TEST(extract(iso, "preseed/deep/debian.cfg") == "d-i foo\n");
  BOOST_TEST(extract(iso, "empty") == "");
}

BOOST_AUTO_TEST_CASE(long_names_modes_and_links_survive) {
  TempDir t;
  fs::path src = t.path / "src";
  write(src / "A Long File-Name.with.several.dots.txt", "long\n");
  write(src / "run.sh", "#!/bin/sh\necho hi\n");
  fs::permissions(src / "run.sh", fs::perms(0755));
  fs::create_symlink("run.sh", src / "link-to-run");
  fs::create_directories(t.path / "elsewhere");
  write(t.path / "elsewhere" / "e.txt", "E\n");
  fs::create_directory_symlink(t.path / "elsewhere", src / "dirlink");
  fs::path iso = t.path / "cd.iso";
  auto st = write_iso(iso.string(), "x", {IsoEntry::host(src.string() + "/")});
  BOOST_REQUIRE_MESSAGE(st.ok(), (st.ok() ? "" : st.error().message));
  auto names = listing(iso);
  BOOST_TEST(names == sorted({"A Long File-Name.with.several.dots.txt", "run.sh", "link-to-run",
                              "dirlink", "dirlink/e.txt"}),
             boost::test_tools::per_element());
  // A link is replaced by what it points to.
  BOOST_TEST(extract(iso, "link-to-run") == "#!/bin/sh\necho hi\n");
  BOOST_TEST(extract(iso, "dirlink/e.txt") == "E\n");
  // Rock Ridge "useful" modes, as genisoimage -r (Packer's -rock): owner
  // root, readable by all, no write bits, executable by all if by any.
  std::string verbose = run("bsdtar", {"-tvf", iso.string(), "run.sh", "link-to-run"});
  BOOST_TEST(verbose.find("-r-xr-xr-x  1 0      0          18 ") == 0u, verbose);
}

BOOST_AUTO_TEST_CASE(a_link_loop_is_an_error) {
  TempDir t;
  fs::create_directories(t.path / "src" / "d");
  fs::create_directory_symlink("..", t.path / "src" / "d" / "up");
  auto st =
      write_iso((t.path / "cd.iso").string(), "x", {IsoEntry::host((t.path / "src").string())});
  BOOST_REQUIRE(!st.ok());
  BOOST_TEST(st.error().code == Exit::dataerr);
  BOOST_TEST(!fs::exists(t.path / "cd.iso"));
}

BOOST_AUTO_TEST_CASE(a_big_file_is_streamed) {
  TempDir t;
  fs::path big = t.path / "big.bin";
  {
    // 64 MiB of a repeating, non-zero pattern.
    std::ofstream out(big, std::ios::binary);
    std::string block(1 << 20, '\0');
    for (size_t i = 0; i < block.size(); ++i) block[i] = static_cast<char>('a' + i % 23);
    for (int i = 0; i < 64; ++i) out << block;
  }
  struct rusage before {};
  ::getrusage(RUSAGE_SELF, &before);
  fs::path iso = t.path / "big.iso";
  auto st = write_iso(iso.string(), "BIG", {IsoEntry::host(big.string())});
  BOOST_REQUIRE_MESSAGE(st.ok(), (st.ok() ? "" : st.error().message));
  struct rusage after {};
  ::getrusage(RUSAGE_SELF, &after);
  long grown_kib = after.ru_maxrss - before.ru_maxrss;
  BOOST_TEST(grown_kib < 24 * 1024, "peak memory grew by " << grown_kib << " KiB");
  std::string verbose = run("bsdtar", {"-tvf", iso.string()});
  BOOST_TEST(verbose.find(" 67108864 ") != std::string::npos, verbose);
  std::string a = run("sha256sum", {big.string()}).substr(0, 64);
  std::string b =
      run("sh", {"-c", "bsdtar -xOf \"$0\" big.bin | sha256sum", iso.string()}).substr(0, 64);
  BOOST_TEST(a == b);
}

BOOST_AUTO_TEST_CASE(errors_leave_no_image_behind) {
  TempDir t;
  fs::path iso = t.path / "cd.iso";
  write(iso, "the old image");

  auto missing = write_iso(iso.string(), "x", {IsoEntry::host((t.path / "nope").string())});
  BOOST_REQUIRE(!missing.ok());
  BOOST_TEST(missing.error().code == Exit::noinput);
  BOOST_TEST(missing.error().message.find("nope") != std::string::npos, missing.error().message);

  auto outside = write_iso(iso.string(), "x", {IsoEntry::text("../../etc/passwd", "x")});
  BOOST_REQUIRE(!outside.ok());
  BOOST_TEST(outside.error().code == Exit::dataerr);
  BOOST_TEST(outside.error().message.find("outside") != std::string::npos);

  auto nothing = write_iso(iso.string(), "x", {IsoEntry::text("a/..", "x")});
  BOOST_REQUIRE(!nothing.ok());
  BOOST_TEST(nothing.error().code == Exit::dataerr);

  auto label = write_iso(iso.string(), std::string(33, 'L'), {IsoEntry::text("a", "x")});
  BOOST_REQUIRE(!label.ok());
  BOOST_TEST(label.error().code == Exit::dataerr);

  write(t.path / "src" / "conf", "file\n");
  auto clash = write_iso(
      iso.string(), "x",
      {IsoEntry::host((t.path / "src" / "conf").string()), IsoEntry::text("conf/inner", "x")});
  BOOST_REQUIRE(!clash.ok());
  BOOST_TEST(clash.error().code == Exit::dataerr);

  auto nodir = write_iso((t.path / "no" / "such" / "dir" / "cd.iso").string(), "x",
                         {IsoEntry::text("a", "x")});
  BOOST_REQUIRE(!nodir.ok());
  BOOST_TEST(nodir.error().code == Exit::cantcreat);

  std::ifstream in(iso);
  std::string old((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  BOOST_TEST(old == "the old image");
  BOOST_TEST(no_temp_files(t.path));
}

BOOST_AUTO_TEST_CASE(an_existing_image_is_replaced_whole) {
  TempDir t;
  fs::path iso = t.path / "seed.iso";
  BOOST_REQUIRE(write_cloud_init_seed(iso.string(), "one", "one").ok());
  BOOST_REQUIRE(write_cloud_init_seed(iso.string(), "two", "2").ok());
  BOOST_TEST(extract(iso, "meta-data") == "two");
  BOOST_TEST(extract(iso, "user-data") == "2");
  BOOST_TEST(no_temp_files(t.path));
}

BOOST_AUTO_TEST_CASE(a_real_guest_reads_the_seed) {
  const char* cache = std::getenv("KILN_CACHE");
  const char* home = std::getenv("HOME");
  fs::path base =
      cache ? fs::path(cache) / "base" : fs::path(home ? home : "/root") / ".cache/kiln/base";
  if (!fs::exists(base / "manifest.json") || !fs::exists(base / "vmlinuz")) {
    // The project's test command builds the VM first and sets this, so a
    // missing VM there is a failure, not a quiet skip.
    BOOST_TEST(!std::getenv("KILN_REQUIRE_TEST_VM"), "no test VM at " << base);
    BOOST_TEST_MESSAGE("skipped: no test VM at " << base << " (tests/vm/build-image makes it)");
    return;
  }
  TempDir t;
  fs::path seed = t.path / "seed.iso";
  BOOST_REQUIRE(
      write_cloud_init_seed(seed.string(), "instance-id: kiln\nlocal-hostname: kiln-seeded\n",
                            "#cloud-config\nssh_authorized_keys:\n  - ssh-ed25519 AAAA kiln\n")
          .ok());
  fs::path serial = t.path / "serial.log";
  // The test VM's own NoCloud finds the seed by label, mounts it as iso9660
  // and takes the host name from meta-data; the serial getty then greets
  // with "kiln-seeded login:".
  bp::child qemu(
      bp::search_path("qemu-system-x86_64"),
      bp::args(
          {"-accel",
           "tcg",
           "-m",
           "256",
           "-smp",
           "1",
           "-display",
           "none",
           "-nodefaults",
           "-no-user-config",
           "-drive",
           "file=" + (base / "debian-tiny.qcow2").string() + ",if=virtio,format=qcow2,snapshot=on",
           "-drive",
           "file=" + seed.string() + ",media=cdrom,readonly=on",
           "-kernel",
           (base / "vmlinuz").string(),
           "-initrd",
           (base / "initrd.img").string(),
           "-append",
           "root=/dev/vda2 console=ttyS0",
           "-serial",
           "file:" + serial.string()}),
      bp::std_in<bp::null, bp::std_out> bp::null, bp::std_err > (t.path / "qemu.err").string(),
      bp::extend::on_exec_setup = [](auto&) { ::prctl(PR_SET_PDEATHSIG, SIGKILL); });
  // Ends qemu however the test leaves this scope.
  struct Stop {
    bp::child& c;
    ~Stop() {
      std::error_code ec;
      if (c.running(ec)) c.terminate(ec);
      c.wait(ec);
    }
  } stop{qemu};
  auto text = [&] {
    std::ifstream in(serial, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  bool done = false;
  auto end = std::chrono::steady_clock::now() + 120s;
  std::error_code ec;
  while (!done && std::chrono::steady_clock::now() < end && qemu.running(ec)) {
    done = text().find("kiln-seeded login:") != std::string::npos;
    if (!done) std::this_thread::sleep_for(200ms);
  }
  BOOST_TEST(text().find("KILN-CLOUD-INIT-DONE") != std::string::npos, text());
  BOOST_TEST(done, text());
}

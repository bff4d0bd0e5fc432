// SPDX-License-Identifier: MIT
#define BOOST_TEST_MODULE disk_image
#include "disk_image.hpp"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "process.hpp"
#include "signals.hpp"
#include "test_support.hpp"

using namespace kiln;
using namespace kiln::disk_image;
namespace fs = std::filesystem;
using kiln::testing::TempDir;

namespace {

process::Output sh(const std::string& script) {
  process::Command cmd;
  cmd.program = "sh";
  cmd.args = {"-c", script};
  auto out = process::run(cmd);
  BOOST_REQUIRE(out.ok());
  return *out;
}

/// The error's message, "" on success (Boost.Test builds messages eagerly).
template <class T>
std::string why(const Result<T>& r) {
  return r.ok() ? std::string() : r.error().message;
}

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

/// A 64 MiB qcow2 overlay on a qcow2 base, with known data in both.
fs::path make_source(const fs::path& dir) {
  auto out = sh("cd " + q(dir) +
                " && qemu-img create -q -f qcow2 base.qcow2 64M"
                " && qemu-io -f qcow2 -c 'write -P 0x5a 1M 1M' -c 'write -P 0x11 10M 4M' base.qcow2"
                " && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 disk.qcow2"
                " && qemu-io -f qcow2 -c 'write -P 0xa5 40M 3M' -c 'write -z 10M 1M' disk.qcow2");
  BOOST_REQUIRE_MESSAGE(out.exit_code == 0, out.err);
  return dir / "disk.qcow2";
}

std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

/// Processes whose parent is this test.
std::vector<int> children() {
  std::vector<int> found;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(e.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    // pid (comm) state ppid ...: comm may hold spaces, so read after ')'.
    size_t close = line.rfind(')');
    if (close == std::string::npos) continue;
    char state = 0;
    int ppid = 0;
    if (std::sscanf(line.c_str() + close + 1, " %c %d", &state, &ppid) == 2 && ppid == ::getpid())
      found.push_back(std::stoi(name));
  }
  return found;
}

}  // namespace

BOOST_AUTO_TEST_CASE(format_names) {
  BOOST_TEST(formats().size() == 5u);
  for (Format f : formats()) {
    auto back = parse_format(name(f));
    BOOST_REQUIRE(back.ok());
    BOOST_TEST((*back == f));
  }
  auto bad = parse_format("vmkd");
  BOOST_REQUIRE(!bad.ok());
  BOOST_TEST((bad.error().code == Exit::config));
  BOOST_TEST(bad.error().message.find("did you mean 'vmdk'?") != std::string::npos);
  BOOST_TEST(bad.error().message.find("qcow2, raw, vmdk, vhdx, vdi") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(target_names_follow_vm_name) {
  BOOST_TEST(default_vm_name("web") == "packer-web");
  BOOST_TEST(default_output_directory("web") == "output-web");

  auto plain = plan_targets("out", "packer-web", Format::qcow2, {Format::vmdk, Format::raw});
  BOOST_REQUIRE(plain.ok());
  BOOST_REQUIRE(plain->size() == 3u);
  BOOST_TEST((*plain)[0].path == fs::path("out/packer-web"));  // as Packer: no extension
  BOOST_TEST(((*plain)[0].format == Format::qcow2));
  BOOST_TEST((*plain)[1].path == fs::path("out/packer-web.vmdk"));
  BOOST_TEST((*plain)[2].path == fs::path("out/packer-web.raw"));

  auto replaced = plan_targets("o", "demo.qcow2", Format::qcow2,
                               {Format::vmdk, Format::qcow2, Format::vdi, Format::vmdk});
  BOOST_REQUIRE(replaced.ok());
  BOOST_REQUIRE(replaced->size() == 3u);  // qcow2 is the primary, vmdk once
  BOOST_TEST((*replaced)[0].path == fs::path("o/demo.qcow2"));
  BOOST_TEST((*replaced)[1].path == fs::path("o/demo.vmdk"));
  BOOST_TEST((*replaced)[2].path == fs::path("o/demo.vdi"));

  auto img = plan_targets("o", "disk.img", Format::raw, {Format::vhdx});
  BOOST_REQUIRE(img.ok());
  BOOST_TEST((*img)[1].path == fs::path("o/disk.vhdx"));

  auto dotted = plan_targets("o", "web.v2", Format::qcow2, {Format::vdi});
  BOOST_REQUIRE(dotted.ok());
  BOOST_TEST((*dotted)[1].path == fs::path("o/web.v2.vdi"));

  // A primary raw image named .vmdk would collide with the vmdk one.
  auto clash = plan_targets("o", "x.vmdk", Format::raw, {Format::vmdk});
  BOOST_REQUIRE(!clash.ok());
  BOOST_TEST((clash.error().code == Exit::config));

  for (std::string bad : {"", ".", "..", "a/b"}) {
    auto r = plan_targets("o", bad, Format::qcow2, {});
    BOOST_REQUIRE(!r.ok());
    BOOST_TEST((r.error().code == Exit::config));
  }
}

BOOST_AUTO_TEST_CASE(output_directory_as_packer) {
  TempDir tmp;
  const fs::path dir = tmp.path / "output-web";
  BOOST_TEST(check_output_directory(dir, false).ok());
  {
    auto made = OutputDirectory::prepare(dir, false);
    BOOST_REQUIRE(made.ok());
    BOOST_TEST(fs::is_directory(dir));
    std::ofstream(dir / "old.qcow2") << "old";
    made->keep();
  }
  BOOST_TEST(fs::exists(dir / "old.qcow2"));  // kept

  auto exists = check_output_directory(dir, false);
  BOOST_REQUIRE(!exists.ok());
  BOOST_TEST((exists.error().code == Exit::cantcreat));
  BOOST_TEST(exists.error().message ==
             "Output directory '" + dir.string() + "' already exists. It must not exist.");
  BOOST_TEST(!OutputDirectory::prepare(dir, false).ok());

  {
    auto forced = OutputDirectory::prepare(dir, true);  // -force: deleted first
    BOOST_REQUIRE(forced.ok());
    BOOST_TEST(fs::is_directory(dir));
    BOOST_TEST(!fs::exists(dir / "old.qcow2"));
    std::ofstream(dir / "half.qcow2") << "x";
  }
  BOOST_TEST(!fs::exists(dir));  // a build that did not keep it: removed

  // -force never deletes the working directory or a parent of it.
  auto cwd = OutputDirectory::prepare(".", true);
  BOOST_REQUIRE(!cwd.ok());
  BOOST_TEST((cwd.error().code == Exit::config));
  auto parent = OutputDirectory::prepare("..", true);
  BOOST_REQUIRE(!parent.ok());
  BOOST_TEST(fs::exists(fs::current_path()));
}

BOOST_AUTO_TEST_CASE(info_reads_the_header) {
  TempDir tmp;
  const fs::path src = make_source(tmp.path);
  auto i = info(src.string());
  BOOST_REQUIRE_MESSAGE(i.ok(), why(i));
  BOOST_TEST(i->format == "qcow2");
  BOOST_TEST(i->virtual_size == 64u << 20);
  BOOST_TEST(i->actual_size > 0u);
  BOOST_TEST(i->backing_file == "base.qcow2");
  BOOST_TEST(i->backing_format == "qcow2");

  auto missing = info((tmp.path / "nope.qcow2").string());
  BOOST_REQUIRE(!missing.ok());
  BOOST_TEST((missing.error().code == Exit::noinput));

  std::ofstream(tmp.path / "junk.qcow2") << "QFI\xfb not really";
  auto junk = info((tmp.path / "junk.qcow2").string());
  BOOST_REQUIRE(!junk.ok());
  BOOST_TEST((junk.error().code == Exit::dataerr));

  auto checked = check(src.string());
  BOOST_REQUIRE(checked.ok());
  BOOST_TEST(checked->supported);
  // A qcow2 header whose L1 table points past the end: corrupt.
  sh("cd " + q(tmp.path) +
     " && cp base.qcow2 broken.qcow2 && printf '\\377\\377\\377\\377' |"
     " dd of=broken.qcow2 bs=1 seek=40 conv=notrunc 2>/dev/null");
  auto broken = check((tmp.path / "broken.qcow2").string());
  BOOST_REQUIRE(!broken.ok());
}

BOOST_AUTO_TEST_CASE(converts_to_every_format) {
  TempDir tmp;
  const fs::path src = make_source(tmp.path);
  const fs::path out = tmp.path / "out";
  fs::create_directory(out);
  auto targets = plan_targets(out, "demo.qcow2", Format::qcow2,
                              {Format::raw, Format::vmdk, Format::vhdx, Format::vdi});
  BOOST_REQUIRE(targets.ok());

  std::vector<double> last(targets->size(), -1);
  std::vector<int> done(targets->size(), 0);
  double overall = 0;
  bool monotonic = true;
  ConvertOptions opts;
  opts.progress = [&](const Progress& p) {
    BOOST_REQUIRE(p.target < last.size());
    if (p.stage == Stage::done) done[p.target]++;
    if (p.overall + 1e-9 < overall) monotonic = false;
    overall = p.overall;
    last[p.target] = p.fraction;
  };
  auto made = convert(src.string(), *targets, opts);
  BOOST_REQUIRE_MESSAGE(made.ok(), why(made));
  BOOST_REQUIRE(made->size() == 5u);
  BOOST_TEST(monotonic);
  BOOST_TEST(overall == 1.0);

  for (size_t i = 0; i < made->size(); ++i) {
    const Artifact& a = (*made)[i];
    BOOST_TEST_CONTEXT(a.path) {
      BOOST_TEST(done[i] == 1);
      BOOST_TEST(a.path == (*targets)[i].path);
      BOOST_TEST((a.format == (*targets)[i].format));
      BOOST_TEST(a.virtual_size == 64u << 20);
      BOOST_TEST(a.size == fs::file_size(a.path));
      auto i2 = info(a.path.string());
      BOOST_REQUIRE(i2.ok());
      BOOST_TEST(i2->format == std::string(name(a.format)));
      BOOST_TEST(i2->virtual_size == 64u << 20);
      BOOST_TEST(i2->backing_file.empty());  // flattened
      auto c = check(a.path.string());
      BOOST_REQUIRE_MESSAGE(c.ok(), why(c));
      BOOST_TEST(c->supported == (a.format != Format::raw));
      BOOST_TEST(c->leaked_clusters == 0u);
      auto cmp = sh("qemu-img compare -f qcow2 -F " + std::string(name(a.format)) + " " + q(src) +
                    " " + q(a.path));
      BOOST_TEST(cmp.exit_code == 0, cmp.out + cmp.err);
      auto sum = sh("sha256sum " + q(a.path));
      BOOST_TEST(sum.out.substr(0, 64) == a.sha256);
      BOOST_TEST((::access(a.path.c_str(), R_OK) == 0));
      struct stat st {};
      ::stat(a.path.c_str(), &st);
      const mode_t mask = ::umask(0);
      ::umask(mask);
      BOOST_TEST((st.st_mode & 0777) == (0644u & ~mask));
    }
  }
  const Artifact& raw = (*made)[1];
  BOOST_TEST(raw.size == 64u << 20);
  BOOST_TEST(raw.allocated < raw.size);   // holes kept
  BOOST_TEST(raw.allocated >= 7u << 20);  // 1 + 4 + 3 MiB of data, less 1 MiB zeroed

  // vmdk names its own file inside: the final name, not a temporary one.
  auto desc = sh("grep -a -o 'RW [0-9]* SPARSE \"[^\"]*\"' " + q(out / "demo.vmdk"));
  BOOST_TEST(desc.out.find("\"demo.vmdk\"") != std::string::npos, desc.out);
  auto sub = sh("grep -a -c 'createType=\"streamOptimized\"' " + q(out / "demo.vmdk"));
  BOOST_TEST(sub.out == "1\n");

  // Nothing else was left in the folder.
  BOOST_TEST((entries(out) == std::vector<std::string>{"demo.qcow2", "demo.raw", "demo.vdi",
                                                       "demo.vhdx", "demo.vmdk"}));
}

BOOST_AUTO_TEST_CASE(compression_copy_and_bad_targets) {
  TempDir tmp;
  const fs::path src = make_source(tmp.path);
  ConvertOptions one;
  one.jobs = 1;
  one.digest = false;

  std::vector<Target> targets = {{tmp.path / "plain.qcow2", Format::qcow2},
                                 {tmp.path / "small.qcow2", Format::qcow2, true},
                                 {tmp.path / "copy.qcow2", Format::qcow2, false, true}};
  auto made = convert(src.string(), targets, one);
  BOOST_REQUIRE_MESSAGE(made.ok(), why(made));
  BOOST_TEST((*made)[0].sha256.empty());
  // The patterns compress to almost nothing.
  BOOST_TEST((*made)[1].size < (*made)[0].size / 4);
  auto compressed = sh("qemu-img check " + q(tmp.path / "small.qcow2"));
  BOOST_TEST(compressed.out.find("compressed clusters") != std::string::npos);
  BOOST_TEST(compressed.out.find(" 0.00% compressed") == std::string::npos, compressed.out);

  // skip_compaction: the overlay itself, on its base by an absolute path.
  auto copied = info((tmp.path / "copy.qcow2").string());
  BOOST_REQUIRE(copied.ok());
  BOOST_TEST(copied->backing_file == (tmp.path / "base.qcow2").string());
  for (const char* name : {"plain.qcow2", "small.qcow2", "copy.qcow2"}) {
    auto cmp = sh("qemu-img compare " + q(src) + " " + q(tmp.path / name));
    BOOST_TEST(cmp.exit_code == 0, name << ": " << cmp.out << cmp.err);
  }

  auto raw_copy = convert(src.string(), {{tmp.path / "x.raw", Format::raw, false, true}}, one);
  BOOST_REQUIRE(!raw_copy.ok());
  BOOST_TEST((raw_copy.error().code == Exit::config));
  auto raw_c = convert(src.string(), {{tmp.path / "x.raw", Format::raw, true}}, one);
  BOOST_REQUIRE(!raw_c.ok());
  BOOST_TEST((raw_c.error().code == Exit::config));
  auto twice = convert(
      src.string(), {{tmp.path / "x.raw", Format::raw}, {tmp.path / "./x.raw", Format::vdi}}, one);
  BOOST_REQUIRE(!twice.ok());
  BOOST_TEST((twice.error().code == Exit::config));
  auto missing = convert((tmp.path / "none.qcow2").string(), {{tmp.path / "x.raw", Format::raw}});
  BOOST_REQUIRE(!missing.ok());
  BOOST_TEST((missing.error().code == Exit::noinput));
  BOOST_TEST(!fs::exists(tmp.path / "x.raw"));
}

BOOST_AUTO_TEST_CASE(unwritable_folder_is_cantcreat) {
  TempDir tmp;
  const fs::path src = make_source(tmp.path);
  std::ofstream(tmp.path / "file") << "x";
  for (const fs::path& target : {tmp.path / "file" / "a.qcow2", tmp.path / "nowhere" / "a.qcow2",
                                 fs::path("/proc/a.qcow2")}) {
    auto r = convert(src.string(), {{target, Format::qcow2}});
    BOOST_REQUIRE(!r.ok());
    BOOST_TEST((r.error().code == Exit::cantcreat), target << ": " << r.error().message);
    BOOST_TEST(r.error().message.find(target.parent_path().string()) != std::string::npos,
               r.error().message);
  }
  if (::geteuid() != 0) {  // root writes anywhere
    fs::create_directory(tmp.path / "ro");
    fs::permissions(tmp.path / "ro", fs::perms::owner_read | fs::perms::owner_exec);
    auto r = convert(src.string(), {{tmp.path / "ro" / "a.qcow2", Format::qcow2}});
    BOOST_REQUIRE(!r.ok());
    BOOST_TEST((r.error().code == Exit::cantcreat));
    BOOST_TEST(r.error().message.find("Permission denied") != std::string::npos);
  }
}

BOOST_AUTO_TEST_CASE(failure_ends_the_run_and_all_or_nothing_removes_finished) {
  TempDir tmp;
  // vhdx holds at most 64 TiB: the qcow2 target succeeds, the vhdx fails.
  auto made = sh("qemu-img create -q -f qcow2 " + q(tmp.path / "huge.qcow2") + " 70T");
  BOOST_REQUIRE(made.exit_code == 0);
  const std::string src = (tmp.path / "huge.qcow2").string();
  const fs::path out = tmp.path / "out";
  fs::create_directory(out);
  std::vector<Target> targets = {{out / "a.qcow2", Format::qcow2}, {out / "a.vhdx", Format::vhdx}};
  ConvertOptions opts;
  opts.jobs = 1;

  auto kept = convert(src, targets, opts);
  BOOST_REQUIRE(!kept.ok());
  BOOST_TEST((kept.error().code == Exit::ioerr));
  BOOST_TEST(kept.error().message.find("max of 64TB") != std::string::npos, kept.error().message);
  BOOST_TEST(kept.error().message.find("finished and kept: " + (out / "a.qcow2").string()) !=
             std::string::npos);
  BOOST_TEST((entries(out) == std::vector<std::string>{"a.qcow2"}));

  fs::remove(out / "a.qcow2");
  opts.all_or_nothing = true;
  auto none = convert(src, targets, opts);
  BOOST_REQUIRE(!none.ok());
  BOOST_TEST(entries(out).empty());
}

BOOST_AUTO_TEST_CASE(interrupt_leaves_nothing_behind) {
  TempDir tmp;
  // Random data compresses slowly: streamOptimized vmdk takes seconds.
  auto made = sh("cd " + q(tmp.path) +
                 " && head -c 134217728 /dev/urandom > data.bin"
                 " && qemu-img create -q -f qcow2 big.qcow2 1G"
                 " && qemu-io -f qcow2 -c 'write -s data.bin 0 128M' big.qcow2 >/dev/null"
                 " && rm data.bin");
  BOOST_REQUIRE_MESSAGE(made.exit_code == 0, made.err);
  const fs::path out = tmp.path / "out";
  fs::create_directory(out);
  std::vector<Target> targets = {{out / "big.vmdk", Format::vmdk},
                                 {out / "big.vdi", Format::vdi},
                                 {out / "big.vhdx", Format::vhdx}};
  ConvertOptions opts;
  opts.jobs = 2;
  bool raised = false;
  size_t running_at_raise = 0;
  std::chrono::steady_clock::time_point raised_at;
  opts.progress = [&](const Progress& p) {
    if (!raised && p.stage == Stage::converting && p.fraction > 0.05) {
      raised = true;
      running_at_raise = children().size();
      raised_at = std::chrono::steady_clock::now();
      signals::raise_for_test(SIGINT);
    }
  };
  const auto began = std::chrono::steady_clock::now();
  auto r = convert((tmp.path / "big.qcow2").string(), targets, opts);
  const auto ended = std::chrono::steady_clock::now();
  signals::clear();
  BOOST_REQUIRE(!r.ok());
  BOOST_TEST((r.error().code == Exit::interrupted));
  BOOST_TEST(raised);
  BOOST_TEST(running_at_raise == 2u);  // two qemu-img at once, as asked
  BOOST_TEST(children().empty());
  BOOST_TEST(entries(out).empty());
  // qemu-img ends at SIGTERM: no wait for the two seconds' SIGKILL.
  BOOST_TEST(std::chrono::duration<double>(ended - raised_at).count() < 1.5);
  BOOST_TEST(std::chrono::duration<double>(ended - began).count() < 10.0);
}

BOOST_AUTO_TEST_CASE(waits_for_a_disk_still_locked) {
  TempDir tmp;
  const fs::path src = make_source(tmp.path);
  // qemu-io holds the disk's write lock for a while, like a machine
  // that is shutting down.
  auto holder = std::thread([&] { sh("qemu-io -c 'sleep 800' " + q(src)); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const auto began = std::chrono::steady_clock::now();
  auto r = convert(src.string(), {{tmp.path / "after.raw", Format::raw}});
  const double took =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  holder.join();
  BOOST_REQUIRE_MESSAGE(r.ok(), why(r));
  BOOST_TEST(took > 0.4);  // waited for the lock
  BOOST_TEST(sh("qemu-img compare " + q(src) + " " + q(tmp.path / "after.raw")).exit_code == 0);
}

BOOST_AUTO_TEST_CASE(digest_of_a_file) {
  TempDir tmp;
  sh("head -c 20000000 /dev/urandom > " + q(tmp.path / "f"));
  auto sum = file_sha256((tmp.path / "f").string());
  BOOST_REQUIRE(sum.ok());
  BOOST_TEST(*sum == sh("sha256sum " + q(tmp.path / "f")).out.substr(0, 64));
  // Holes before, between and after data are hashed as zeros.
  const fs::path sparse = tmp.path / "sparse";
  sh("truncate -s 50M " + q(sparse) + " && head -c 3000000 /dev/urandom | dd of=" + q(sparse) +
     " bs=1M seek=10 conv=notrunc 2>/dev/null && printf x | dd of=" + q(sparse) +
     " bs=1 seek=31457280 conv=notrunc 2>/dev/null");
  BOOST_TEST(fs::file_size(sparse) == 50u << 20);
  auto holes = file_sha256(sparse.string());
  BOOST_REQUIRE(holes.ok());
  BOOST_TEST(*holes == sh("sha256sum " + q(sparse)).out.substr(0, 64));
  std::uint64_t last = 0;
  BOOST_REQUIRE(file_sha256(sparse.string(), {}, [&](std::uint64_t n) { last = n; }).ok());
  BOOST_TEST(last == 50u << 20);

  auto stopped = file_sha256((tmp.path / "f").string(), [] { return true; });
  BOOST_REQUIRE(!stopped.ok());
  BOOST_TEST((stopped.error().code == Exit::interrupted));
  BOOST_TEST((file_sha256((tmp.path / "none").string()).error().code == Exit::noinput));
}

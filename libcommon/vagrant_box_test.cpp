// SPDX-License-Identifier: MIT
#define BOOST_TEST_MODULE vagrant_box
#include "vagrant_box.hpp"

#include <signal.h>

#include <boost/test/unit_test.hpp>
#include <fstream>
#include <random>

#include "atomic_file.hpp"
#include "process.hpp"
#include "signals.hpp"
#include "test_support.hpp"

using namespace kiln;
namespace fs = std::filesystem;

namespace {

template <class R>
std::string why(const R& r) {
  return r.ok() ? std::string() : r.error().message;
}

template <class R>
Exit code(const R& r) {
  return r.ok() ? Exit::ok : r.error().code;
}

int sh(const std::string& command, const fs::path& cwd, std::string* out = nullptr) {
  auto r = process::run({"sh", {"-c", command}, {}, cwd.string(), std::nullopt},
                        std::chrono::minutes(5));
  BOOST_REQUIRE_MESSAGE(r.ok(), why(r));
  if (out) *out = r->out;
  if (r->exit_code != 0) BOOST_TEST_MESSAGE(command << ": " << r->out << r->err);
  return r->exit_code;
}

std::string slurp(const fs::path& p) {
  auto r = read_file(p);
  BOOST_REQUIRE_MESSAGE(r.ok(), why(r));
  return *r;
}

// A qcow2 of 1.5 GiB virtual size with 6 MiB of data in it (two gzip members), and a
// Vagrantfile template using the box's fields and a user variable.
struct Fixture {
  testing::TempDir dir;
  fs::path image;
  tmpl::Context context;
  Fixture() {
    image = dir.path / "disk.qcow2";
    std::mt19937 rng(5);
    std::string data(6 << 20, '\0');
    for (auto& c : data) c = static_cast<char>(rng() & 0xff);
    std::ofstream(dir.path / "disk.raw", std::ios::binary) << data;
    fs::resize_file(dir.path / "disk.raw", (std::uint64_t{3} << 29));
    BOOST_REQUIRE(
        sh("qemu-img convert -f raw -O qcow2 disk.raw disk.qcow2 && rm disk.raw", dir.path) == 0);
    std::ofstream(dir.path / "custom.rb")
        << "# {{.Provider}} box of {{.BuildName}} ({{.ArtifactId}}), {{user `who`}}";
    std::ofstream(dir.path / "README.md") << "read me\n";
    context.user = [](const std::string& n) -> Result<std::string> {
      if (n == "who") return std::string("ops");
      return Error(Exit::dataerr, "variable \"" + n + "\" is not set");
    };
  }
  vagrant_box::Options options() const {
    vagrant_box::Options o;
    o.image = image.string();
    o.build_name = "web";
    o.artifact_id = "VM";
    return o;
  }
};

}  // namespace

BOOST_AUTO_TEST_CASE(packers_pieces) {
  BOOST_TEST(vagrant_box::size_in_gib(0) == 0u);
  BOOST_TEST(vagrant_box::size_in_gib(1) == 1u);
  BOOST_TEST(vagrant_box::size_in_gib(std::uint64_t{1} << 30) == 1u);
  BOOST_TEST(vagrant_box::size_in_gib((std::uint64_t{1} << 30) + 1) == 2u);
  BOOST_TEST(vagrant_box::size_in_gib(std::uint64_t{40960} << 20) == 40u);
  BOOST_TEST(*vagrant_box::libvirt_driver("kvm") == "kvm");
  for (const char* a : {"tcg", "none", "hvf"})
    BOOST_TEST(*vagrant_box::libvirt_driver(a) == "qemu");
  auto bad = vagrant_box::libvirt_driver("whpx");
  BOOST_REQUIRE(!bad.ok());
  BOOST_TEST((bad.error().code == Exit::config));
  BOOST_TEST(bad.error().message == "Unknown libvirt domain type: whpx");
  BOOST_TEST(vagrant_box::metadata_json("qcow2", 40) ==
             "{\"format\":\"qcow2\",\"provider\":\"libvirt\",\"virtual_size\":40}\n");
  // Packer's boxVagrantfileContents around libvirtVagrantfile.
  BOOST_TEST(vagrant_box::vagrantfile("kvm", "custom") ==
             "\n"
             "# The contents below were provided by the Packer Vagrant post-processor\n"
             "\n"
             "Vagrant.configure(\"2\") do |config|\n"
             "  config.vm.provider :libvirt do |libvirt|\n"
             "    libvirt.driver = \"kvm\"\n"
             "  end\n"
             "end\n"
             "\n"
             "\n"
             "# The contents below (if any) are custom contents provided by the\n"
             "# Packer template during image build.\n"
             "custom\n");
}

BOOST_AUTO_TEST_CASE(inspect_asks_qemu_img) {
  Fixture fx;
  auto info = vagrant_box::inspect(fx.image.string());
  BOOST_REQUIRE_MESSAGE(info.ok(), why(info));
  BOOST_TEST(info->format == "qcow2");
  BOOST_TEST(info->virtual_size == (std::uint64_t{3} << 29));
  auto missing = vagrant_box::inspect((fx.dir.path / "gone.qcow2").string());
  BOOST_REQUIRE(!missing.ok());
  BOOST_TEST((missing.error().code == Exit::noinput));
}

BOOST_AUTO_TEST_CASE(box_holds_what_packer_puts_in_it) {
  Fixture fx;
  auto o = fx.options();
  o.accelerator = "tcg";
  o.include = {(fx.dir.path / "README.md").string()};
  o.vagrantfile_template = (fx.dir.path / "custom.rb").string();
  fs::path cwd = fs::current_path();
  fs::current_path(fx.dir.path);
  std::uint64_t last = 0, total = 0;
  auto box = vagrant_box::make(o, fx.context, [&](std::uint64_t d, std::uint64_t t) {
    BOOST_TEST(d >= last);
    last = d;
    total = t;
  });
  fs::current_path(cwd);
  BOOST_REQUIRE_MESSAGE(box.ok(), why(box));
  BOOST_TEST(box->path == "packer_web_libvirt.box");
  BOOST_TEST(box->virtual_size_gib == 2u);
  BOOST_TEST(box->size == fs::file_size(fx.dir.path / box->path));
  BOOST_TEST(last == total);
  BOOST_TEST(total > fs::file_size(fx.image));

  const fs::path boxfile = fx.dir.path / box->path;
  BOOST_TEST(sh("gzip -t " + boxfile.string(), fx.dir.path) == 0);
  std::string names;
  BOOST_TEST(sh("tar -tzf " + boxfile.string(), fx.dir.path, &names) == 0);
  BOOST_TEST(names == "README.md\nVagrantfile\nbox.img\nmetadata.json\n");
  std::string listing;
  BOOST_TEST(sh("tar -tvzf " + boxfile.string(), fx.dir.path, &listing) == 0);
  size_t modes = 0;
  for (size_t at = 0; (at = listing.find("-rw-r--r--", at)) != std::string::npos; ++at) ++modes;
  BOOST_TEST(modes == 4u, listing);

  fs::create_directories(fx.dir.path / "x");
  BOOST_TEST(sh("tar -xzf " + boxfile.string(), fx.dir.path / "x") == 0);
  BOOST_TEST(sh("cmp box.img ../disk.qcow2", fx.dir.path / "x") == 0);
  std::string meta;
  BOOST_TEST(sh("python3 -c 'import json; m = json.load(open(\"metadata.json\")); "
                "print(m[\"provider\"], m[\"format\"], m[\"virtual_size\"], len(m))'",
                fx.dir.path / "x", &meta) == 0);
  BOOST_TEST(meta == "libvirt qcow2 2 3\n");
  BOOST_TEST(slurp(fx.dir.path / "x" / "Vagrantfile") ==
             vagrant_box::vagrantfile("qemu", "# libvirt box of web (VM), ops"));
  BOOST_TEST(slurp(fx.dir.path / "x" / "README.md") == "read me\n");
}

BOOST_AUTO_TEST_CASE(level_zero_is_a_plain_tar_and_includes_follow_packer) {
  Fixture fx;
  std::ofstream(fx.dir.path / "metadata.json") << "{\"provider\":\"libvirt\",\"mine\":1}\n";
  fs::create_directories(fx.dir.path / "inc");
  std::ofstream(fx.dir.path / "inc" / "Vagrantfile") << "# replaced\n";
  auto o = fx.options();
  o.compression_level = 0;
  o.output = (fx.dir.path / "out" / "{{.BuildName}}-{{.Provider}}.box").string();
  o.include = {(fx.dir.path / "metadata.json").string(),
               (fx.dir.path / "inc" / "Vagrantfile").string()};
  auto box = vagrant_box::make(o, fx.context);
  BOOST_REQUIRE_MESSAGE(box.ok(), why(box));
  BOOST_TEST(box->path == (fx.dir.path / "out" / "web-libvirt.box").string());
  std::string magic;
  BOOST_TEST(sh("head -c 2 out/web-libvirt.box | od -An -tx1", fx.dir.path, &magic) == 0);
  BOOST_TEST(magic != " 1f 8b\n");  // not gzip
  std::string text;
  BOOST_TEST(sh("tar -xOf out/web-libvirt.box metadata.json", fx.dir.path, &text) == 0);
  BOOST_TEST(text == "{\"provider\":\"libvirt\",\"mine\":1}\n");
  BOOST_TEST(sh("tar -xOf out/web-libvirt.box Vagrantfile", fx.dir.path, &text) == 0);
  BOOST_TEST(text == vagrant_box::vagrantfile("kvm", ""));
}

BOOST_AUTO_TEST_CASE(bad_settings_and_interrupts_leave_nothing) {
  Fixture fx;
  auto o = fx.options();
  o.output = (fx.dir.path / "b.box").string();
  o.compression_level = 10;
  BOOST_TEST((code(vagrant_box::make(o, fx.context)) == Exit::config));
  o.compression_level = -1;
  o.accelerator = "xen";
  BOOST_TEST((code(vagrant_box::make(o, fx.context)) == Exit::config));
  o.accelerator = "kvm";
  o.vagrantfile_template = (fx.dir.path / "nope.rb").string();
  BOOST_TEST((code(vagrant_box::make(o, fx.context)) == Exit::noinput));
  o.vagrantfile_template.clear();
  o.image = (fx.dir.path / "nope.qcow2").string();
  BOOST_TEST((code(vagrant_box::make(o, fx.context)) == Exit::noinput));
  o.image = fx.image.string();
  o.output = (fx.dir.path / "{{.Unknown}}.box").string();
  BOOST_TEST((code(vagrant_box::make(o, fx.context)) == Exit::dataerr));

  o.output = (fx.dir.path / "b.box").string();
  int calls = 0;
  auto stopped = vagrant_box::make(o, fx.context, [&](std::uint64_t, std::uint64_t) {
    if (++calls == 1) signals::raise_for_test(SIGINT);
  });
  signals::clear();
  BOOST_REQUIRE(!stopped.ok());
  BOOST_TEST((stopped.error().code == Exit::interrupted));
  size_t entries = 0;
  for (const auto& e : fs::directory_iterator(fx.dir.path)) {
    (void)e;
    ++entries;
  }
  BOOST_TEST(entries == 3u);  // disk.qcow2, custom.rb, README.md: no box, no temporary
}

// Vagrant itself accepts the box (Debian's vagrant, in a private VAGRANT_HOME).
BOOST_AUTO_TEST_CASE(vagrant_box_add_accepts_it) {
  auto vagrant = process::find_program("vagrant");
  BOOST_REQUIRE_MESSAGE(vagrant.ok(),
                        "vagrant is not installed (apt-get install vagrant): " << why(vagrant));
  Fixture fx;
  auto o = fx.options();
  o.output = (fx.dir.path / "t.box").string();
  o.vagrantfile_template = (fx.dir.path / "custom.rb").string();
  auto box = vagrant_box::make(o, fx.context);
  BOOST_REQUIRE_MESSAGE(box.ok(), why(box));
  // In the command rather than process::Command::env, which Boost.Process
  // 1.74 reads past the end of (AddressSanitizer says so).
  const std::string env =
      "VAGRANT_HOME=\"$PWD/vagrant.d\" VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_NO_PLUGINS=1 ";
  BOOST_TEST(sh(env + "vagrant box add --name kiln-test t.box", fx.dir.path) == 0);
  std::string list;
  BOOST_TEST(sh(env + "vagrant box list", fx.dir.path, &list) == 0);
  BOOST_TEST(list.find("kiln-test") != std::string::npos, list);
  BOOST_TEST(list.find("libvirt") != std::string::npos, list);
  // Vagrant unpacked the image unchanged.
  std::string found;
  BOOST_TEST(sh("find vagrant.d/boxes -name box.img", fx.dir.path, &found) == 0);
  BOOST_REQUIRE(!found.empty());
  found.pop_back();
  BOOST_TEST(sh("cmp " + found + " disk.qcow2", fx.dir.path) == 0);
}

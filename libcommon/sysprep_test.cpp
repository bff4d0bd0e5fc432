// SPDX-License-Identifier: MIT
#define BOOST_TEST_MODULE sysprep
#include "sysprep.hpp"

#include <rapidjson/document.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/test/unit_test.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "process.hpp"
#include "test_support.hpp"

using namespace kiln;
namespace fs = std::filesystem;
using kiln::testing::TempDir;

namespace {

/// A fake root filled with what a provisioned machine has.
struct Tree {
  TempDir dir{"kiln-sysprep"};
  fs::path root = dir.path / "root";
  fs::path outside = dir.path / "outside";

  void put(const std::string& rel, const std::string& content = "data\n") {
    fs::path p = root / rel;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << content;
  }
  bool exists(const std::string& rel) const { return fs::exists(fs::symlink_status(root / rel)); }
  std::uintmax_t size(const std::string& rel) const { return fs::file_size(root / rel); }

  Tree() {
    fs::create_directories(root);
    fs::create_directories(outside / "dir");
    std::ofstream(outside / "dir" / "precious") << "keep me\n";
    std::ofstream(outside / "keep.log") << "keep me too\n";

    put("etc/machine-id", "0123456789abcdef0123456789abcdef\n");
    put("var/lib/dbus/machine-id", "0123456789abcdef0123456789abcdef\n");

    for (const char* k : {"ssh_host_rsa_key", "ssh_host_rsa_key.pub", "ssh_host_ed25519_key",
                          "ssh_host_ed25519_key.pub", "ssh_host_ecdsa_key-cert.pub"})
      put(std::string("etc/ssh/") + k);
    put("etc/ssh/sshd_config");
    put("etc/ssh/ssh_config");
    put("etc/dropbear/dropbear_ed25519_host_key");
    put("etc/dropbear/dropbear_rsa_host_key");
    put("etc/dropbear/README");

    put("var/log/syslog", "many lines\n");
    fs::permissions(root / "var/log/syslog", fs::perms(0640));
    put("var/log/syslog.1");
    put("var/log/syslog.2.gz");
    put("var/log/messages.old");
    put("var/log/dpkg.log-20240101");
    put("var/log/Xorg.0.log");
    put("var/log/apt/history.log", "Start-Date: ...\n");
    put("var/log/apt/eipp.log.xz");
    put("var/log/wtmp", "binary");
    put("var/log/journal/0123456789abcdef0123456789abcdef/system.journal");
    put("var/log/journal/0123456789abcdef0123456789abcdef/user-1000.journal~");
    fs::create_symlink(outside / "keep.log", root / "var/log/link.log");

    put("root/.bash_history", "secret\n");
    put("root/.profile");
    put("home/alice/.ash_history");
    put("home/alice/.zsh_history");
    put("home/alice/.python_history");
    put("home/alice/notes.txt");
    put("home/bob/.local/share/fish/fish_history");
    put("home/bob/.bashrc");

    put("tmp/a");
    put("tmp/.hidden");
    put("tmp/dir/sub/file");
    fs::create_symlink(outside / "dir", root / "tmp/link");
    put("var/tmp/x");

    put("var/lib/dhcp/dhclient.eth0.leases");
    put("var/lib/dhclient/dhclient.leases");
    put("var/lib/dhcpcd/eth0.lease");
    put("var/lib/dhcpcd/duid");
    put("var/lib/NetworkManager/internal-0f2e-eth0.lease");
    put("var/lib/NetworkManager/NetworkManager.state");

    put("var/cache/apt/archives/curl_7.88_amd64.deb");
    put("var/cache/apt/archives/lock", "");
    put("var/cache/apt/archives/partial/half.deb");
    put("var/cache/apt/pkgcache.bin");
    put("var/cache/dnf/fedora/packages/x.rpm");
    put("var/cache/other/keep");
  }
};

/// Runs `text` with `shell` (a program and its leading arguments, e.g.
/// setpriv ... sh to drop root) on the tree under `root`.
process::Output run(const std::vector<std::string>& shell, const std::string& text,
                    const fs::path& root, const std::string& script_dir) {
  const fs::path file = fs::path(script_dir) / "sysprep.sh";
  std::ofstream(file) << text;
  fs::permissions(file, fs::perms(0644));
  // env(1) sets the variable: Command::env goes through Boost.Process
  // 1.74's environment lookup, which reads past a string's end (ASan).
  process::Command cmd;
  cmd.program = "env";
  cmd.args = {"KILN_SYSPREP_ROOT=" + root.string()};
  cmd.args.insert(cmd.args.end(), shell.begin(), shell.end());
  cmd.args.push_back(file.string());
  auto out = process::run(cmd, std::chrono::seconds(60));
  BOOST_REQUIRE(out.ok());
  return *out;
}

std::vector<std::vector<std::string>> shells() {
  std::vector<std::vector<std::string>> all = {{"sh"}};
  if (process::find_program("busybox").ok()) all.push_back({"busybox", "sh"});
  return all;
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : " ") + x;
  return s;
}

}  // namespace

BOOST_AUTO_TEST_CASE(names_match_the_template_schema) {
  const char* src = std::getenv("KILN_SOURCE_ROOT");
  std::ifstream in(fs::path(src ? src : ".") / "schemas/template.schema.json");
  BOOST_REQUIRE(in.good());
  std::stringstream text;
  text << in.rdbuf();
  rapidjson::Document doc;
  doc.Parse(text.str().c_str());
  BOOST_REQUIRE(!doc.HasParseError());

  // Wherever the schema defines "sysprep", its items' enum is the list.
  std::vector<std::string> in_schema;
  std::function<void(const rapidjson::Value&)> walk = [&](const rapidjson::Value& v) {
    if (v.IsObject()) {
      for (auto m = v.MemberBegin(); m != v.MemberEnd(); ++m) {
        if (std::string(m->name.GetString()) == "sysprep" && m->value.IsObject() &&
            m->value.HasMember("items") && m->value["items"].HasMember("enum"))
          for (const auto& e : m->value["items"]["enum"].GetArray())
            in_schema.push_back(e.GetString());
        walk(m->value);
      }
    } else if (v.IsArray()) {
      for (const auto& e : v.GetArray()) walk(e);
    }
  };
  walk(doc);
  BOOST_REQUIRE(!in_schema.empty());
  BOOST_TEST(joined(in_schema) == joined(sysprep::default_operations()));

  for (const auto& op : sysprep::operations()) {
    BOOST_TEST(!op.description.empty());
    BOOST_TEST(op.description.find('\n') == std::string_view::npos);
  }
}

BOOST_AUTO_TEST_CASE(selection) {
  auto all = sysprep::select({"all"});
  BOOST_REQUIRE(all.ok());
  BOOST_TEST(joined(*all) == joined(sysprep::default_operations()));
  BOOST_TEST(sysprep::default_operations().size() == 7u);

  auto some = sysprep::select({"logs", "machine-id", "logs"});
  BOOST_REQUIRE(some.ok());
  BOOST_TEST(joined(*some) == "machine-id logs");  // running order, once each

  auto none = sysprep::select({});
  BOOST_REQUIRE(none.ok());
  BOOST_TEST(none->empty());

  auto typo = sysprep::select({"logs", "ssh-hostkeys"});
  BOOST_REQUIRE(!typo.ok());
  BOOST_TEST((typo.error().code == Exit::dataerr));
  BOOST_TEST(typo.error().message.find("unknown sysprep operation 'ssh-hostkeys'; did you mean "
                                       "'ssh-host-keys'?") == 0);
  BOOST_TEST(typo.error().message.find("package-cache (or all)") != std::string::npos);

  auto far = sysprep::script({"hostname"});
  BOOST_REQUIRE(!far.ok());
  BOOST_TEST(far.error().message.find("did you mean") == std::string::npos);
}

BOOST_AUTO_TEST_CASE(every_operation_on_a_tree) {
  auto text = sysprep::script({"all"});
  BOOST_REQUIRE(text.ok());
  for (const auto& shell : shells()) {
    BOOST_TEST_CONTEXT(joined(shell)) {
      Tree t;
      auto out = run(shell, *text, t.root, t.dir.path.string());
      BOOST_TEST(out.exit_code == 0);
      BOOST_TEST(out.err == "");

      // machine-id: emptied, never removed; dbus's copy removed.
      BOOST_TEST(t.exists("etc/machine-id"));
      BOOST_TEST(t.size("etc/machine-id") == 0u);
      BOOST_TEST(!t.exists("var/lib/dbus/machine-id"));
      BOOST_TEST(t.exists("var/lib/dbus"));

      // ssh-host-keys
      for (const char* k : {"ssh_host_rsa_key", "ssh_host_rsa_key.pub", "ssh_host_ed25519_key",
                            "ssh_host_ed25519_key.pub", "ssh_host_ecdsa_key-cert.pub"})
        BOOST_TEST(!t.exists(std::string("etc/ssh/") + k), k);
      BOOST_TEST(t.exists("etc/ssh/sshd_config"));
      BOOST_TEST(t.exists("etc/ssh/ssh_config"));
      BOOST_TEST(!t.exists("etc/dropbear/dropbear_ed25519_host_key"));
      BOOST_TEST(!t.exists("etc/dropbear/dropbear_rsa_host_key"));
      BOOST_TEST(t.exists("etc/dropbear/README"));

      // logs: live ones emptied with their mode, old ones and the journal gone.
      for (const char* live :
           {"var/log/syslog", "var/log/Xorg.0.log", "var/log/apt/history.log", "var/log/wtmp"}) {
        BOOST_TEST(t.exists(live), live);
        BOOST_TEST(t.size(live) == 0u, live);
      }
      BOOST_TEST((fs::status(t.root / "var/log/syslog").permissions() == fs::perms(0640)));
      for (const char* old : {"var/log/syslog.1", "var/log/syslog.2.gz", "var/log/messages.old",
                              "var/log/dpkg.log-20240101", "var/log/apt/eipp.log.xz",
                              "var/log/journal/0123456789abcdef0123456789abcdef"})
        BOOST_TEST(!t.exists(old), old);
      BOOST_TEST(fs::is_directory(t.root / "var/log/journal"));
      BOOST_TEST(fs::is_directory(t.root / "var/log/apt"));
      BOOST_TEST(fs::file_size(t.outside / "keep.log") > 0u);  // a link is not followed

      // shell-history
      for (const char* h :
           {"root/.bash_history", "home/alice/.ash_history", "home/alice/.zsh_history",
            "home/alice/.python_history", "home/bob/.local/share/fish/fish_history"})
        BOOST_TEST(!t.exists(h), h);
      for (const char* kept : {"root/.profile", "home/alice/notes.txt", "home/bob/.bashrc"})
        BOOST_TEST(t.exists(kept), kept);

      // tmp: emptied, the folders kept, nothing followed out of it.
      BOOST_TEST(fs::is_empty(t.root / "tmp"));
      BOOST_TEST(fs::is_empty(t.root / "var/tmp"));
      BOOST_TEST(fs::exists(t.outside / "dir" / "precious"));

      // dhcp-leases
      BOOST_TEST(fs::is_empty(t.root / "var/lib/dhcp"));
      BOOST_TEST(fs::is_empty(t.root / "var/lib/dhclient"));
      BOOST_TEST(fs::is_empty(t.root / "var/lib/dhcpcd"));
      BOOST_TEST(!t.exists("var/lib/NetworkManager/internal-0f2e-eth0.lease"));
      BOOST_TEST(t.exists("var/lib/NetworkManager/NetworkManager.state"));

      // package-cache
      BOOST_TEST(!t.exists("var/cache/apt/archives/curl_7.88_amd64.deb"));
      BOOST_TEST(!t.exists("var/cache/apt/archives/partial/half.deb"));
      BOOST_TEST(t.exists("var/cache/apt/archives/partial"));
      BOOST_TEST(t.exists("var/cache/apt/archives/lock"));
      BOOST_TEST(!t.exists("var/cache/apt/pkgcache.bin"));
      BOOST_TEST(fs::is_empty(t.root / "var/cache/dnf"));
      BOOST_TEST(t.exists("var/cache/other/keep"));

      // A second run finds nothing to do and still succeeds.
      auto again = run(shell, *text, t.root, t.dir.path.string());
      BOOST_TEST(again.exit_code == 0);
      BOOST_TEST(again.err == "");
    }
  }
}

BOOST_AUTO_TEST_CASE(only_the_chosen_operations) {
  auto text = sysprep::script({"machine-id", "tmp"});
  BOOST_REQUIRE(text.ok());
  BOOST_TEST(text->find("sysprep_logs") == std::string::npos);
  Tree t;
  auto out = run({"sh"}, *text, t.root, t.dir.path.string());
  BOOST_TEST(out.exit_code == 0);
  BOOST_TEST(t.size("etc/machine-id") == 0u);
  BOOST_TEST(fs::is_empty(t.root / "tmp"));
  BOOST_TEST(t.exists("etc/ssh/ssh_host_rsa_key"));
  BOOST_TEST(t.size("var/log/syslog") > 0u);
  BOOST_TEST(t.exists("root/.bash_history"));
  BOOST_TEST(t.exists("var/lib/dhcp/dhclient.eth0.leases"));
  BOOST_TEST(t.exists("var/cache/apt/pkgcache.bin"));
}

BOOST_AUTO_TEST_CASE(machine_id_as_a_link_to_dbus) {
  TempDir dir;
  const fs::path root = dir.path / "root";
  fs::create_directories(root / "etc");
  fs::create_directories(root / "var/lib/dbus");
  std::ofstream(root / "var/lib/dbus/machine-id") << "0123456789abcdef0123456789abcdef\n";
  fs::create_symlink("/var/lib/dbus/machine-id", root / "etc/machine-id");
  auto out = run({"sh"}, *sysprep::script({"machine-id"}), root, dir.path.string());
  BOOST_TEST(out.exit_code == 0);
  BOOST_TEST(fs::is_symlink(root / "etc/machine-id"));
  BOOST_TEST(fs::exists(root / "var/lib/dbus/machine-id"));  // it is the ID: emptied
  BOOST_TEST(fs::file_size(root / "var/lib/dbus/machine-id") == 0u);
}

BOOST_AUTO_TEST_CASE(missing_paths_are_fine) {
  auto text = sysprep::script({"all"});
  for (const auto& shell : shells()) {
    TempDir empty;
    auto out = run(shell, *text, empty.path / ".", empty.path.string());
    BOOST_TEST(out.exit_code == 0, joined(shell));
    BOOST_TEST(out.err == "", joined(shell));
    // Only the script itself is there: nothing was created.
    BOOST_TEST(std::distance(fs::directory_iterator(empty.path), fs::directory_iterator()) == 1);
  }
  TempDir dir;
  auto bad = run({"sh"}, *text, dir.path / "nope", dir.path.string());
  BOOST_TEST(bad.exit_code == 2);
  BOOST_TEST(bad.err.find("not a folder") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(real_failures_are_reported) {
  auto text = sysprep::script({"machine-id", "ssh-host-keys", "tmp"});
  BOOST_REQUIRE(text.ok());
  Tree t;
  std::vector<std::string> shell = {"sh"};
  if (::geteuid() == 0) {
    // Root removes anything: run as nobody on root's files instead.
    if (!process::find_program("setpriv").ok()) return;
    fs::permissions(t.dir.path, fs::perms(0755));
    shell = {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh"};
  } else {
    fs::permissions(t.root / "tmp", fs::perms(0555));
    fs::permissions(t.root / "etc/ssh", fs::perms(0555));
    fs::permissions(t.root / "etc/machine-id", fs::perms(0444));
  }
  auto out = run(shell, *text, t.root, t.dir.path.string());
  if (::geteuid() != 0) {
    fs::permissions(t.root / "tmp", fs::perms(0755));
    fs::permissions(t.root / "etc/ssh", fs::perms(0755));
  }
  BOOST_TEST(out.exit_code == 1);
  BOOST_TEST(out.err.find("sysprep: machine-id: failed") != std::string::npos, out.err);
  BOOST_TEST(out.err.find("sysprep: ssh-host-keys: failed") != std::string::npos, out.err);
  BOOST_TEST(out.err.find("sysprep: tmp: failed") != std::string::npos, out.err);
  BOOST_TEST(t.exists("tmp/a"));
}

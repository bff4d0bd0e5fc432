#define BOOST_TEST_MODULE template_rules
#include "template_rules.hpp"

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <stdlib.h>
#include <unistd.h>

#include <boost/test/unit_test.hpp>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

using namespace kiln;
using rules::Kind;
namespace fs = std::filesystem;

namespace {

/// A template folder with the files the rules look for; removed at the end.
struct TemplateDir {
  fs::path dir;
  TemplateDir() {
    char name[] = "/tmp/kiln-rules-test-XXXXXX";
    BOOST_REQUIRE(::mkdtemp(name) != nullptr);
    dir = name;
    write("setup.sh", "#!/bin/sh\ntrue\n");
    write("cleanup.sh", "#!/bin/sh\ntrue\n");
    write("playbook.yml", "- hosts: all\n");
    write("SHA256SUMS",
          "ed363350696a726b7932db864dda019bd2017365c9e299627830f06954643f93  disk.iso\n"
          "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef  other.iso\n");
    write("Vagrantfile.tpl", "# vagrant\n");
    write("garbage.key", "not a key\n");
    write("id_test", openssh_key("none"));
    write("id_locked", openssh_key("aes256-ctr"));
    fs::create_directory(dir / "http");
    fs::create_directory(dir / "bin");
    write("bin/ansible-playbook", "#!/bin/sh\necho 'ansible-playbook 2.9.6'\n");
    fs::permissions(dir / "bin/ansible-playbook", fs::perms::owner_all);
  }
  ~TemplateDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  void write(const std::string& name, const std::string& text) const {
    std::ofstream(dir / name) << text;
  }
  std::string path(const std::string& name) const { return (dir / name).string(); }

  /// The start of an OpenSSH private key: as far as the rules read it.
  static std::string openssh_key(const std::string& cipher) {
    std::string blob("openssh-key-v1\0", 15);
    blob += std::string("\0\0\0", 3) + static_cast<char>(cipher.size()) + cipher;
    blob += std::string("\0\0\0\4none", 8);
    static const char* digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string b64;
    for (size_t i = 0; i < blob.size(); i += 3) {
      unsigned n = static_cast<unsigned char>(blob[i]) << 16;
      if (i + 1 < blob.size()) n |= static_cast<unsigned char>(blob[i + 1]) << 8;
      if (i + 2 < blob.size()) n |= static_cast<unsigned char>(blob[i + 2]);
      b64 += digits[(n >> 18) & 63];
      b64 += digits[(n >> 12) & 63];
      b64 += i + 1 < blob.size() ? digits[(n >> 6) & 63] : '=';
      b64 += i + 2 < blob.size() ? digits[n & 63] : '=';
    }
    return "-----BEGIN OPENSSH PRIVATE KEY-----\n" + b64 + "\n-----END OPENSSH PRIVATE KEY-----\n";
  }
};

/// The outcome of applying the rules to one configuration.
struct Checked {
  rapidjson::Document config;
  Errors errors;
  Errors warnings;

  const rapidjson::Value& operator[](const char* key) const { return config[key]; }
  bool has(const char* key) const { return config.HasMember(key); }
  std::string str(const char* key) const {
    return has(key) && config[key].IsString() ? config[key].GetString() : "<not a string>";
  }
  std::vector<std::string> strings(const char* key) const {
    std::vector<std::string> out;
    if (has(key) && config[key].IsArray())
      for (const auto& v : config[key].GetArray()) out.emplace_back(v.GetString());
    return out;
  }
  /// The message of the one error at `pointer`, or a note that there is
  /// none (or several).
  std::string error_at(const std::string& pointer) const { return only(errors, pointer); }
  std::string warning_at(const std::string& pointer) const { return only(warnings, pointer); }
  std::vector<std::string> error_pointers() const {
    std::vector<std::string> out;
    for (const auto& e : errors) out.push_back(e.where.pointer);
    return out;
  }

 private:
  static std::string only(const Errors& list, const std::string& pointer) {
    std::string found = "<nothing at " + pointer + ">";
    int n = 0;
    for (const auto& e : list)
      if (e.where.pointer == pointer) {
        found = e.message;
        ++n;
      }
    return n > 1 ? "<" + std::to_string(n) + " at " + pointer + ">" : found;
  }
};

Checked check(Kind kind, const std::string& type, const std::string& json, const TemplateDir& t,
              const std::string& pointer = "/builders/0", const std::string& build = "qemu") {
  Checked out;
  out.config.Parse(json.c_str());
  BOOST_REQUIRE_MESSAGE(!out.config.HasParseError() && out.config.IsObject(), json);
  rules::BuildInfo info{build, "qemu", t.dir.string()};
  rules::apply(kind, type, out.config, out.config.GetAllocator(), info, pointer, out.errors,
               out.warnings);
  return out;
}

// A qemu configuration that passes, as the generic code hands it over
// (schema defaults filled in, durations in seconds), with the members of
// `extra` added or replacing its own.
std::string qemu(const std::string& extra = "") {
  rapidjson::Document base, more;
  base.Parse(R"({"type": "qemu", "iso_url": "disk.iso", "iso_checksum": "none",
                 "ssh_username": "root", "ssh_timeout": 300, "boot_wait": 10,
                 "disk_size": "40960M", "format": "qcow2"})");
  more.Parse(("{" + extra + "}").c_str());
  BOOST_REQUIRE_MESSAGE(!more.HasParseError(), extra);
  for (auto& m : more.GetObject()) {
    base.RemoveMember(m.name);
    base.AddMember(rapidjson::Value(m.name, base.GetAllocator()),
                   rapidjson::Value(m.value, base.GetAllocator()), base.GetAllocator());
  }
  rapidjson::StringBuffer out;
  rapidjson::Writer<rapidjson::StringBuffer> writer(out);
  base.Accept(writer);
  return out.GetString();
}

const std::string P = "/builders/0";

}  // namespace

// ---- qemu ----

BOOST_AUTO_TEST_CASE(qemu_minimal_passes_and_gets_derived_defaults) {
  TemplateDir t;
  auto r = check(Kind::builder, "qemu", qemu(), t);
  BOOST_TEST(r.errors.empty());
  BOOST_TEST(r.warning_at(P + "/iso_checksum").find("A checksum of 'none' was specified") == 0);
  BOOST_TEST(r.str("vm_name") == "packer-qemu");
  BOOST_TEST(r.str("output_directory") == t.path("output-qemu"));
  BOOST_TEST(r.str("qemu_binary") == "qemu-system-x86_64");
  BOOST_TEST(r.str("communicator") == "ssh");
  BOOST_TEST(r.str("ssh_host") == "127.0.0.1");
  BOOST_TEST(r["host_port_min"].GetInt64() == 2222);
  BOOST_TEST(r["memory"].GetInt64() == 512);
  BOOST_TEST(r["disk_size"].GetInt64() == 40960);
  BOOST_TEST(!r.has("iso_url"));
  BOOST_TEST(r.strings("iso_urls") == std::vector<std::string>{t.path("disk.iso")});
  BOOST_TEST(r.strings("sysprep").empty());
  BOOST_TEST(!r.has("accelerator"));  // vm-launch detects it
}

BOOST_AUTO_TEST_CASE(qemu_names_come_from_the_build) {
  TemplateDir t;
  auto r = check(Kind::builder, "qemu", qemu(), t, P, "web");
  BOOST_TEST(r.str("vm_name") == "packer-web");
  BOOST_TEST(r.str("output_directory") == t.path("output-web"));
  auto given = check(Kind::builder, "qemu", qemu(R"("vm_name": "base.qcow2")"), t, P, "web");
  BOOST_TEST(given.str("vm_name") == "base.qcow2");
}

BOOST_AUTO_TEST_CASE(qemu_needs_one_iso_source_and_a_checksum) {
  TemplateDir t;
  auto none = check(Kind::builder, "qemu", R"({"type": "qemu", "ssh_username": "u"})", t);
  BOOST_TEST(none.error_at(P + "/iso_url") == "One of iso_url or iso_urls must be specified");
  auto both = check(Kind::builder, "qemu", qemu(R"("iso_urls": ["b.iso"])"), t);
  BOOST_TEST(both.error_at(P + "/iso_urls") == "Only one of iso_url or iso_urls must be specified");
  auto no_sum = check(Kind::builder, "qemu",
                      R"({"type": "qemu", "iso_url": "a.iso", "ssh_username": "u"})", t);
  BOOST_TEST(no_sum.error_at(P + "/iso_checksum") == "A checksum must be specified");
  auto skip = check(Kind::builder, "qemu",
                    R"({"type": "qemu", "iso_url": "http://x/a.iso", "iso_skip_cache": true,
                        "ssh_username": "u"})",
                    t);
  BOOST_TEST(skip.errors.empty());
  BOOST_TEST(skip.str("iso_checksum") == "none");
  BOOST_TEST(skip.strings("iso_urls") == std::vector<std::string>{"http://x/a.iso"});
}

BOOST_AUTO_TEST_CASE(qemu_checksums_read_as_go_getter_does) {
  TemplateDir t;
  struct Case {
    std::string sum, normalized, error;
  };
  const std::string sha256 = "ed363350696a726b7932db864dda019bd2017365c9e299627830f06954643f93";
  std::vector<Case> cases = {
      {"md5:090992BA9FD140077B0661CB75F7CE13", "md5:090992ba9fd140077b0661cb75f7ce13", ""},
      {"ebfb681885ddf1234c18094a45bbeafd91467911", "sha1:ebfb681885ddf1234c18094a45bbeafd91467911",
       ""},
      {"SHA256:" + sha256, "sha256:" + sha256, ""},
      {"file:SHA256SUMS", "sha256:" + sha256, ""},
      {"file:https://example.org/SHA256SUMS", "file:https://example.org/SHA256SUMS", ""},
      {"sha384:00", "", "unsupported checksum type: sha384 in \"sha384:00\""},
      {"sha224:abc", "", "invalid checksum: encoding/hex: odd length hex string in \"sha224:abc\""},
      {"sha256:xyz", "",
       "invalid checksum: encoding/hex: invalid byte: U+0078 'x' in \"sha256:xyz\""},
      {"abcd", "", "Unknown type for checksum abcd in \"abcd\""},
      {"file:missing.sum", "",
       "Error downloading checksum file: source path error: stat " + t.path("missing.sum") +
           ": no such file or directory in \"file:missing.sum\""},
      {"file:setup.sh", "", "no checksum found in: setup.sh in \"file:setup.sh\""},
  };
  for (const auto& c : cases) {
    auto r = check(Kind::builder, "qemu", qemu("\"iso_checksum\": \"" + c.sum + "\""), t);
    BOOST_TEST_CONTEXT(c.sum) {
      if (c.error.empty()) {
        BOOST_TEST(r.errors.empty());
        BOOST_TEST(r.str("iso_checksum") == c.normalized);
      } else {
        BOOST_TEST(r.error_at(P + "/iso_checksum") == c.error);
      }
    }
  }
  auto iso = check(Kind::builder, "qemu",
                   R"({"type": "qemu", "iso_url": "a.iso", "iso_checksum": "a.iso",
                       "ssh_username": "u"})",
                   t);
  BOOST_TEST(iso.errors.size() == 2u);
  BOOST_TEST(iso.errors[1].message ==
             "Error parsing checksum: .iso is not a valid checksum ending");
}

BOOST_AUTO_TEST_CASE(qemu_disk_size_becomes_mebibytes) {
  TemplateDir t;
  struct Case {
    std::string json;
    int64_t mib;
  };
  for (const Case& c : std::vector<Case>{{"\"10G\"", 10240},
                                         {"\"10240\"", 10240},
                                         {"20480", 20480},
                                         {"\"512k\"", 1},
                                         {"\"0\"", 40960},
                                         {"\"1t\"", 1048576},
                                         {"\"2147483648b\"", 2048}}) {
    auto r = check(Kind::builder, "qemu", qemu("\"disk_size\": " + c.json), t);
    BOOST_TEST_CONTEXT(c.json) {
      BOOST_TEST(r.errors.empty());
      BOOST_TEST(r["disk_size"].GetInt64() == c.mib);
    }
  }
  for (const char* bad : {"\"1.5G\"", "\"10GB\"", "\"G\"", "\"-1\""})
    BOOST_TEST(check(Kind::builder, "qemu", qemu(std::string("\"disk_size\": ") + bad), t)
                   .error_at(P + "/disk_size") == "Invalid disk size.");
}

BOOST_AUTO_TEST_CASE(qemu_closed_sets_and_combinations) {
  TemplateDir t;
  auto fmt = check(Kind::builder, "qemu", qemu(R"("format": "vmdk")"), t);
  BOOST_TEST(fmt.error_at(P + "/format") == "invalid format, only 'qcow2' or 'raw' are allowed");
  auto raw = check(Kind::builder, "qemu", qemu(R"("format": "raw", "disk_compression": true)"), t);
  BOOST_TEST(raw.errors.empty());
  BOOST_TEST(raw["skip_compaction"].GetBool());
  BOOST_TEST(!raw["disk_compression"].GetBool());
  auto backing = check(Kind::builder, "qemu", qemu(R"("use_backing_file": true)"), t);
  BOOST_TEST(backing.error_at(P + "/use_backing_file") ==
             "use_backing_file can only be enabled for QCOW2 images and when disk_image is true");
  auto backing_ok =
      check(Kind::builder, "qemu", qemu(R"("use_backing_file": true, "disk_image": true)"), t);
  BOOST_TEST(backing_ok.errors.empty());
  BOOST_TEST(backing_ok["skip_compaction"].GetBool());
  BOOST_TEST(check(Kind::builder, "qemu", qemu(R"("skip_resize_disk": true)"), t)
                 .error_at(P + "/skip_resize_disk") ==
             "skip_resize_disk can only be used when disk_image is true");
  BOOST_TEST(check(Kind::builder, "qemu", qemu(R"("accelerator": "auto")"), t)
                 .error_at(P + "/accelerator")
                 .find("invalid accelerator, only 'kvm'") == 0);
  BOOST_TEST(check(Kind::builder, "qemu", qemu(R"("disk_interface": "sata")"), t)
                 .error_at(P + "/disk_interface") == "unrecognized disk interface type");
  BOOST_TEST(
      check(Kind::builder, "qemu", qemu(R"("disk_cache": "x")"), t).error_at(P + "/disk_cache") ==
      "unrecognized disk cache type");
  BOOST_TEST(check(Kind::builder, "qemu", qemu(R"("disk_discard": "x")"), t)
                 .error_at(P + "/disk_discard") == "unrecognized disk discard type");
  BOOST_TEST(check(Kind::builder, "qemu", qemu(R"("disk_detect_zeroes": "x")"), t)
                 .error_at(P + "/disk_detect_zeroes") == "unrecognized disk detect zeroes setting");
  // Packer 1.6.6 does not check net_device or cdrom_interface.
  BOOST_TEST(
      check(Kind::builder, "qemu", qemu(R"("net_device": "e1000e", "cdrom_interface": "x")"), t)
          .errors.empty());
}

BOOST_AUTO_TEST_CASE(qemu_port_ranges) {
  TemplateDir t;
  BOOST_TEST(
      check(Kind::builder, "qemu", qemu(R"("http_port_min": 9500, "http_port_max": 9000)"), t)
          .error_at(P + "/http_port_min") == "http_port_min must be less than http_port_max");
  BOOST_TEST(check(Kind::builder, "qemu", qemu(R"("vnc_port_min": 7000, "vnc_port_max": 6000)"), t)
                 .error_at(P + "/vnc_port_min") == "vnc_port_min must be less than vnc_port_max");
  BOOST_TEST(
      check(Kind::builder, "qemu", qemu(R"("host_port_min": 5000, "host_port_max": 4000)"), t)
          .error_at(P + "/host_port_min") == "host_port_min must be less than host_port_max");
  BOOST_TEST(check(Kind::builder, "qemu", qemu(R"("host_port_min": -5)"), t)
                 .error_at(P + "/host_port_min") == "host_port_min must be positive");
  BOOST_TEST(
      check(Kind::builder, "qemu", qemu(R"("http_port_min": 8100, "http_port_max": 8100)"), t)
          .errors.empty());
  // The deprecated names win and leave the record.
  auto old = check(Kind::builder, "qemu",
                   qemu(R"("ssh_host_port_min": 3000, "ssh_host_port_max": 3100)"), t);
  BOOST_TEST(old["host_port_min"].GetInt64() == 3000);
  BOOST_TEST(old["host_port_max"].GetInt64() == 3100);
  BOOST_TEST(!old.has("ssh_host_port_min"));
  BOOST_TEST(check(Kind::builder, "qemu", qemu(R"("http_interface": "eth0")"), t)
                 .error_at(P + "/http_interface") ==
             "either http_interface of http_bind_address can be specified");
}

BOOST_AUTO_TEST_CASE(qemu_local_files_must_exist) {
  TemplateDir t;
  auto r =
      check(Kind::builder, "qemu",
            qemu(R"("floppy_files": [")" + t.path("setup.sh") + R"(", ")" + t.path("nope.cfg") +
                 R"(", "*.cfg"], "cd_files": ["[bad"], "floppy_dirs": ["/nonexistent-dir"])"),
            t);
  BOOST_TEST(r.error_at(P + "/floppy_files/1") == "Bad Floppy disk file '" + t.path("nope.cfg") +
                                                      "': stat " + t.path("nope.cfg") +
                                                      ": no such file or directory");
  BOOST_TEST(r.error_at(P + "/floppy_files/2") == "<nothing at " + P + "/floppy_files/2>");
  BOOST_TEST(r.error_at(P + "/cd_files/0") == "Bad CD disk file '[bad': syntax error in pattern");
  BOOST_TEST(
      r.error_at(P + "/floppy_dirs/0").find("Bad Floppy disk directory '/nonexistent-dir'") == 0);
  BOOST_TEST(r.errors.size() == 3u);
}

BOOST_AUTO_TEST_CASE(qemu_output_directory_must_not_exist) {
  TemplateDir t;
  auto r = check(Kind::builder, "qemu", qemu(R"("output_directory": "http")"), t);
  BOOST_TEST(r.error_at(P + "/output_directory") ==
             "Output directory '" + t.path("http") + "' already exists. It must not exist.");
}

BOOST_AUTO_TEST_CASE(qemu_boot_settings) {
  TemplateDir t;
  BOOST_TEST(
      check(Kind::builder, "qemu", qemu(R"("boot_command": ["<enter>"], "disable_vnc": true)"), t)
          .error_at(P + "/boot_command") == "A boot command cannot be used when vnc is disabled.");
  BOOST_TEST(check(Kind::builder, "qemu", qemu(R"("boot_wait": -1)"), t)["boot_wait"].GetDouble() ==
             0);
  BOOST_TEST(check(Kind::builder, "qemu", qemu(R"("boot_wait": 0)"), t)["boot_wait"].GetDouble() ==
             10);
  auto qmp = check(Kind::builder, "qemu", qemu(R"("vnc_use_password": true)"), t);
  BOOST_TEST(qmp["qmp_enable"].GetBool());
  BOOST_TEST(qmp.str("qmp_socket_path") == t.path("output-qemu/packer-qemu.monitor"));
}

// ---- communicators ----

BOOST_AUTO_TEST_CASE(ssh_needs_a_user_and_usable_keys) {
  TemplateDir t;
  auto no_user = check(Kind::builder, "qemu",
                       R"({"type": "qemu", "iso_url": "a.iso", "iso_checksum": "none"})", t);
  BOOST_TEST(no_user.error_at(P + "/ssh_username").find("An ssh_username must be specified") == 0);
  auto missing = check(Kind::builder, "qemu", qemu(R"("ssh_private_key_file": "nokey")"), t);
  BOOST_TEST(missing.error_at(P + "/ssh_private_key_file") ==
             "ssh_private_key_file is invalid: stat " + t.path("nokey") +
                 ": no such file or directory");
  auto garbage = check(Kind::builder, "qemu", qemu(R"("ssh_private_key_file": "garbage.key")"), t);
  BOOST_TEST(garbage.error_at(P + "/ssh_private_key_file") ==
             "ssh_private_key_file is invalid: Error setting up SSH config: Failed to read key '" +
                 t.path("garbage.key") + "': no key found");
  auto locked = check(Kind::builder, "qemu", qemu(R"("ssh_private_key_file": "id_locked")"), t);
  BOOST_TEST(locked.error_at(P + "/ssh_private_key_file").find("passphrase protected") !=
             std::string::npos);
  auto good = check(Kind::builder, "qemu", qemu(R"("ssh_private_key_file": "id_test")"), t);
  BOOST_TEST(good.errors.empty());
  BOOST_TEST(good.str("ssh_private_key_file") == t.path("id_test"));
  auto cert = check(
      Kind::builder, "qemu",
      qemu(R"("ssh_private_key_file": "id_test", "ssh_certificate_file": "id_test-cert.pub")"), t);
  BOOST_TEST(
      cert.error_at(P + "/ssh_certificate_file").find("unable to read certificate file: open ") !=
      std::string::npos);
}

BOOST_AUTO_TEST_CASE(key_files_expand_the_home_folder) {
  TemplateDir t;
  const char* old = std::getenv("HOME");
  std::string saved = old ? old : "";
  ::setenv("HOME", t.dir.c_str(), 1);
  // Both as written, and as a path resolution that took ~ literally left it.
  auto plain = check(Kind::builder, "qemu", qemu(R"("ssh_private_key_file": "~/id_test")"), t);
  auto mangled = check(Kind::builder, "qemu",
                       qemu(R"("ssh_private_key_file": ")" + t.path("~/id_test") + "\""), t);
  if (old)
    ::setenv("HOME", saved.c_str(), 1);
  else
    ::unsetenv("HOME");
  BOOST_TEST(plain.errors.empty());
  BOOST_TEST(plain.str("ssh_private_key_file") == t.path("id_test"));
  BOOST_TEST(mangled.str("ssh_private_key_file") == t.path("id_test"));
}

BOOST_AUTO_TEST_CASE(ssh_settings) {
  TemplateDir t;
  auto wait = check(Kind::builder, "qemu", qemu(R"("ssh_wait_timeout": 1200)"), t);
  BOOST_TEST(wait["ssh_timeout"].GetDouble() == 1200);
  BOOST_TEST(!wait.has("ssh_wait_timeout"));
  BOOST_TEST(check(Kind::builder, "qemu", qemu(R"("ssh_file_transfer_method": "rsync")"), t)
                 .error_at(P + "/ssh_file_transfer_method") ==
             "ssh_file_transfer_method ('rsync') is invalid, valid methods: sftp, scp");
  BOOST_TEST(check(Kind::builder, "qemu", qemu(R"("ssh_bastion_host": "b")"), t)
                 .error_at(P + "/ssh_bastion_host") ==
             "ssh_bastion_password or ssh_bastion_private_key_file must be specified");
  auto bastion = check(Kind::builder, "qemu",
                       qemu(R"("ssh_bastion_host": "b", "ssh_bastion_password": "p")"), t);
  BOOST_TEST(bastion.errors.empty());
  BOOST_TEST(bastion["ssh_bastion_port"].GetInt64() == 22);
  BOOST_TEST(
      check(Kind::builder, "qemu",
            qemu(R"("ssh_bastion_host": "b", "ssh_bastion_password": "p", "ssh_proxy_host": "x")"),
            t)
          .error_at(P + "/ssh_proxy_host") ==
      "please specify either ssh_bastion_host or ssh_proxy_host, not both");
  auto tunnels =
      check(Kind::builder, "qemu", qemu(R"("ssh_local_tunnels": ["8080:localhost:80", "foo"],
                               "ssh_remote_tunnels": ["a:b", "x:h:80"])"),
            t);
  BOOST_TEST(tunnels.error_at(P + "/ssh_local_tunnels/0") ==
             "<nothing at " + P + "/ssh_local_tunnels/0>");
  BOOST_TEST(tunnels.error_at(P + "/ssh_local_tunnels/1") ==
             "ssh_local_tunnels ('foo') is invalid: Error parsing tunnel 'foo': [foo]");
  BOOST_TEST(tunnels.error_at(P + "/ssh_remote_tunnels/0") ==
             "ssh_remote_tunnels ('a:b') is invalid: Error parsing forwarding, must be a tcp "
             "address: address b: missing port in address");
  BOOST_TEST(tunnels.error_at(P + "/ssh_remote_tunnels/1").find("Error parsing listening port") !=
             std::string::npos);
  auto key = check(Kind::builder, "qemu", qemu(R"("temporary_key_pair_type": "ecdsa")"), t);
  BOOST_TEST(key["temporary_key_pair_bits"].GetInt64() == 521);
}

BOOST_AUTO_TEST_CASE(other_communicators) {
  TemplateDir t;
  auto bad = check(Kind::builder, "qemu", qemu(R"("communicator": "telnet")"), t);
  BOOST_TEST(bad.error_at(P + "/communicator") == "Communicator type telnet is invalid");
  auto none = check(
      Kind::builder, "qemu",
      R"({"type": "qemu", "iso_url": "a.iso", "iso_checksum": "none", "communicator": "none"})", t);
  BOOST_TEST(none.errors.empty());
  auto winrm =
      check(Kind::builder, "qemu", qemu(R"("communicator": "winrm", "winrm_use_ssl": true)"), t);
  BOOST_TEST(winrm.error_at(P + "/winrm_username") == "winrm_username must be specified.");
  BOOST_TEST(winrm["winrm_port"].GetInt64() == 5986);
  BOOST_TEST(winrm["winrm_timeout"].GetDouble() == 1800);
}

BOOST_AUTO_TEST_CASE(null_builder_needs_a_way_in) {
  TemplateDir t;
  auto bare = check(Kind::builder, "null", R"({"type": "null"})", t, P, "null");
  BOOST_TEST(bare.errors.size() == 4u);
  BOOST_TEST(bare.error_at(P + "/ssh_host") ==
             "a Host must be specified, please reference your communicator documentation");
  BOOST_TEST(bare.error_at(P) ==
             "one authentication method must be specified, please reference "
             "your communicator documentation");
  auto none =
      check(Kind::builder, "null", R"({"type": "null", "communicator": "none"})", t, P, "null");
  BOOST_TEST(none.errors.empty());
  auto ok = check(Kind::builder, "null",
                  R"({"type": "null", "ssh_host": "h", "ssh_username": "u", "ssh_password": "p"})",
                  t, P, "null");
  BOOST_TEST(ok.errors.empty());
  auto two = check(Kind::builder, "null",
                   R"({"type": "null", "ssh_host": "h", "ssh_username": "u", "ssh_password": "p",
                       "ssh_agent_auth": true})",
                   t, P, "null");
  BOOST_TEST(
      two.error_at(P) ==
      "only one of ssh_agent_auth, ssh_password, and ssh_private_key_file must be specified");
  auto winrm = check(Kind::builder, "null",
                     R"({"type": "null", "communicator": "winrm", "winrm_host": "h",
                         "winrm_username": "u", "winrm_password": "p"})",
                     t, P, "null");
  BOOST_TEST(winrm.errors.empty());
}

// ---- kiln's additions ----

BOOST_AUTO_TEST_CASE(kiln_additions_are_normalized) {
  TemplateDir t;
  auto all = check(Kind::builder, "qemu", qemu(R"("sysprep": true)"), t);
  BOOST_TEST(all.strings("sysprep").size() == 7u);
  auto some = check(Kind::builder, "qemu", qemu(R"("sysprep": ["logs", "machine-id", "logs"])"), t);
  BOOST_TEST(some.strings("sysprep") == (std::vector<std::string>{"machine-id", "logs"}));
  auto bad = check(Kind::builder, "qemu", qemu(R"("sysprep": ["hostname"])"), t);
  BOOST_TEST(bad.error_at(P + "/sysprep/0").find("unknown sysprep operation 'hostname'") == 0);
  auto formats = check(Kind::builder, "qemu", qemu(R"("formats": ["vmdk", "raw", "vmdk"])"), t);
  BOOST_TEST(formats.strings("formats") == (std::vector<std::string>{"vmdk", "raw"}));
  auto seed = check(Kind::builder, "qemu", qemu(R"("cloud_init": true, "ssh_password": "p")"), t);
  BOOST_TEST(seed.errors.empty());
  BOOST_TEST(seed.warnings.size() == 3u);  // checksum none, a password, no disk image
  auto quiet = check(Kind::builder, "qemu", qemu(R"("cloud_init": true, "disk_image": true)"), t);
  BOOST_TEST(quiet.warnings.size() == 1u);
}

// ---- provisioners ----

const std::string V = "/provisioners/0";

BOOST_AUTO_TEST_CASE(shell_needs_exactly_one_kind_of_script) {
  TemplateDir t;
  auto none = check(Kind::provisioner, "shell", R"({"type": "shell", "inline": []})", t, V);
  BOOST_TEST(none.error_at(V) == "Either a script file or inline script must be specified.");
  auto both =
      check(Kind::provisioner, "shell",
            R"({"type": "shell", "inline": ["a"], "script": ")" + t.path("setup.sh") + "\"}", t, V);
  BOOST_TEST(both.error_at(V + "/inline") ==
             "Only a script file or an inline script can be specified, not both.");
  auto two = check(Kind::provisioner, "shell",
                   R"({"type": "shell", "script": ")" + t.path("setup.sh") + R"(", "scripts": [")" +
                       t.path("cleanup.sh") + "\"]}",
                   t, V);
  BOOST_TEST(two.error_at(V + "/script") == "Only one of script or scripts can be specified.");
  auto ok = check(Kind::provisioner, "shell",
                  R"({"type": "shell", "script": ")" + t.path("setup.sh") + "\"}", t, V);
  BOOST_TEST(ok.errors.empty());
  BOOST_TEST(!ok.has("script"));
  BOOST_TEST(ok.strings("scripts") == std::vector<std::string>{t.path("setup.sh")});
  BOOST_TEST(ok.str("execute_command") == "chmod +x {{.Path}}; {{.Vars}} {{.Path}}");
  BOOST_TEST(ok.str("remote_folder") == "/tmp");
}

BOOST_AUTO_TEST_CASE(shell_scripts_and_environment_are_checked) {
  TemplateDir t;
  auto r = check(Kind::provisioner, "shell",
                 R"({"type": "shell", "scripts": [")" + t.path("setup.sh") + R"(", ")" +
                     t.path("gone.sh") + R"("], "environment_vars": ["A=1", "B", "=c", "D= e"],
                     "use_env_var_file": true})",
                 t, V);
  BOOST_TEST(r.error_at(V + "/scripts/1") == "Bad script '" + t.path("gone.sh") + "': stat " +
                                                 t.path("gone.sh") + ": no such file or directory");
  BOOST_TEST(r.error_at(V + "/environment_vars/1") ==
             "Environment variable not in format 'key=value': B");
  BOOST_TEST(r.error_at(V + "/environment_vars/2") ==
             "Environment variable not in format 'key=value': =c");
  BOOST_TEST(r.errors.size() == 3u);
  BOOST_TEST(r.str("env_var_format") == "export %s='%s'\n");
}

BOOST_AUTO_TEST_CASE(file_provisioner_paths_follow_the_direction) {
  TemplateDir t;
  auto none = check(Kind::provisioner, "file", R"({"type": "file"})", t, V);
  BOOST_TEST(none.error_pointers() ==
             (std::vector<std::string>{V + "/source", V + "/destination"}));
  auto up = check(
      Kind::provisioner, "file",
      R"({"type": "file", "source": "setup.sh", "sources": ["http/"], "destination": "/tmp/"})", t,
      V);
  BOOST_TEST(up.errors.empty());
  BOOST_TEST(up.strings("sources") ==
             (std::vector<std::string>{t.path("http/"), t.path("setup.sh")}));
  BOOST_TEST(up.str("destination") == "/tmp/");
  auto missing = check(Kind::provisioner, "file",
                       R"({"type": "file", "source": "gone", "destination": "/x"})", t, V);
  BOOST_TEST(missing.error_at(V + "/source").find("Bad source '" + t.path("gone") + "': stat ") ==
             0);
  auto generated =
      check(Kind::provisioner, "file",
            R"({"type": "file", "source": "gone", "destination": "/x", "generated": true})", t, V);
  BOOST_TEST(generated.errors.empty());
  auto down = check(
      Kind::provisioner, "file",
      R"({"type": "file", "source": "/var/log/syslog", "destination": "logs/", "direction": "download"})",
      t, V);
  BOOST_TEST(down.errors.empty());
  BOOST_TEST(down.strings("sources") == std::vector<std::string>{"/var/log/syslog"});
  BOOST_TEST(down.str("destination") == t.path("logs") + "/");
  BOOST_TEST(
      check(Kind::provisioner, "file",
            R"({"type": "file", "source": "/a", "destination": "/b", "direction": "sideways"})", t,
            V)
          .error_at(V + "/direction") == "Direction must be one of: download, upload.");
  BOOST_TEST(check(Kind::provisioner, "file",
                   R"({"type": "file", "source": "setup.sh", "content": "x", "destination": "/b"})",
                   t, V)
                 .error_at(V + "/content") == "source(s) conflicts with content.");
}

BOOST_AUTO_TEST_CASE(shell_local_takes_one_thing_to_run) {
  TemplateDir t;
  auto none = check(Kind::provisioner, "shell-local", R"({"type": "shell-local"})", t, V);
  BOOST_TEST(none.error_at(V) ==
             "Command, Inline, Script and Scripts options cannot all be empty.");
  auto cmd = check(Kind::provisioner, "shell-local",
                   R"({"type": "shell-local", "command": "make"})", t, V);
  BOOST_TEST(cmd.errors.empty());
  BOOST_TEST(!cmd.has("command"));
  BOOST_TEST(cmd.strings("inline") == std::vector<std::string>{"make"});
  BOOST_TEST(cmd.strings("execute_command") ==
             (std::vector<std::string>{"/bin/sh", "-c", "{{.Vars}} {{.Script}}"}));
  auto two = check(Kind::provisioner, "shell-local",
                   R"({"type": "shell-local", "command": "make", "inline": ["x"]})", t, V);
  BOOST_TEST(
      two.error_at(V + "/command").find("You may only specify one of the following options") == 0);
  auto os = check(Kind::post_processor, "shell-local",
                  R"({"type": "shell-local", "inline": ["x"], "only_on": ["linux", "plan9"],
                      "environment_vars": ["BAD"]})",
                  t, "/post-processors/0/0");
  // Packer stops at the unknown system and reports nothing else.
  BOOST_TEST(os.errors.size() == 1u);
  BOOST_TEST(os.error_at("/post-processors/0/0/only_on/1") ==
             "Invalid OS specified in only_on: 'plan9'. Supported OS names: darwin, freebsd, "
             "linux, openbsd, solaris, windows");
  auto wsl = check(Kind::provisioner, "shell-local",
                   R"({"type": "shell-local", "inline": ["x"], "use_linux_pathing": true,
                       "tempfile_extension": ".ps1"})",
                   t, V);
  BOOST_TEST(wsl.error_at(V + "/use_linux_pathing").find("Windows Linux Subsystem") !=
             std::string::npos);
  BOOST_TEST(wsl.str("tempfile_extension") == "ps1");
}

BOOST_AUTO_TEST_CASE(ansible_checks_its_files_and_program) {
  TemplateDir t;
  auto none = check(Kind::provisioner, "ansible",
                    R"({"type": "ansible", "skip_version_check": true})", t, V);
  BOOST_TEST(none.error_at(V + "/playbook_file") == "playbook_file must be specified.");
  auto dir = check(Kind::provisioner, "ansible",
                   R"({"type": "ansible", "skip_version_check": true, "playbook_file": ")" +
                       t.path("http") + R"(", "local_port": 70000,
                       "inventory_directory": ")" +
                       t.path("setup.sh") + "\"}",
                   t, V);
  BOOST_TEST(dir.error_at(V + "/playbook_file") ==
             "playbook_file: " + t.path("http") + " must point to a file");
  BOOST_TEST(dir.error_at(V + "/local_port") == "local_port: 70000 must be a valid port");
  BOOST_TEST(dir.error_at(V + "/inventory_directory") ==
             "inventory_directory: " + t.path("setup.sh") + " must point to a directory");
  auto ok = check(Kind::provisioner, "ansible",
                  R"({"type": "ansible", "skip_version_check": true, "playbook_file": ")" +
                      t.path("playbook.yml") + "\"}",
                  t, V);
  BOOST_TEST(ok.errors.empty());
  BOOST_TEST(
      ok.strings("ansible_env_vars") ==
      (std::vector<std::string>{"ANSIBLE_HOST_KEY_CHECKING=False", "ANSIBLE_SCP_IF_SSH=True"}));
  BOOST_TEST(ok.str("command") == "ansible-playbook");
  auto program =
      check(Kind::provisioner, "ansible",
            R"({"type": "ansible", "command": "kiln-no-such-ansible", "playbook_file": ")" +
                t.path("playbook.yml") + "\"}",
            t, V);
  BOOST_REQUIRE(program.errors.size() == 1u);
  BOOST_TEST(program.errors[0].message ==
             "Error running \"kiln-no-such-ansible --version\": exec: \"kiln-no-such-ansible\": "
             "executable file not found in $PATH");
  BOOST_TEST(program.errors[0].code == Exit::unavailable);
  auto sh = check(
      Kind::provisioner, "ansible",
      R"({"type": "ansible", "command": "sh", "playbook_file": ")" + t.path("playbook.yml") + "\"}",
      t, V);
  BOOST_TEST(sh.errors.empty());
  // A relative path to the program is relative to the template's folder.
  auto local =
      check(Kind::provisioner, "ansible",
            R"({"type": "ansible", "command": "bin/ansible-playbook", "playbook_file": ")" +
                t.path("playbook.yml") + "\"}",
            t, V);
  BOOST_TEST(local.errors.empty());
  BOOST_TEST(local.str("command") == t.path("bin/ansible-playbook"));
  auto gone = check(Kind::provisioner, "ansible",
                    R"({"type": "ansible", "command": "bin/gone", "playbook_file": ")" +
                        t.path("playbook.yml") + "\"}",
                    t, V);
  BOOST_TEST(gone.error_at(V + "/command") == "Error running \"" + t.path("bin/gone") +
                                                  " --version\": exec: \"" + t.path("bin/gone") +
                                                  "\": stat " + t.path("bin/gone") +
                                                  ": no such file or directory");
}

BOOST_AUTO_TEST_CASE(breakpoint_and_unknown_types_are_left_alone) {
  TemplateDir t;
  auto bp = check(Kind::provisioner, "breakpoint", R"({"type": "breakpoint", "note": "n"})", t, V);
  BOOST_TEST(bp.errors.empty());
  BOOST_TEST(bp.config.MemberCount() == 2u);
  auto other = check(Kind::post_processor, "docker-push", R"({"type": "docker-push"})", t, V);
  BOOST_TEST(other.errors.empty());
  BOOST_TEST(other.config.MemberCount() == 1u);
}

// ---- post-processors ----

const std::string Q = "/post-processors/0";

BOOST_AUTO_TEST_CASE(checksum_types_are_known_ones) {
  TemplateDir t;
  auto r = check(Kind::post_processor, "checksum",
                 R"({"type": "checksum", "checksum_types": ["sha384", "crc32"]})", t, Q);
  BOOST_TEST(r.error_at(Q + "/checksum_types/1") == "Unrecognized checksum type: crc32");
  BOOST_TEST(r.errors.size() == 1u);
  auto d = check(Kind::post_processor, "checksum", R"({"type": "checksum"})", t, Q);
  BOOST_TEST(d.strings("checksum_types") == std::vector<std::string>{"md5"});
  BOOST_TEST(d.str("output") ==
             t.path("packer_{{.BuildName}}_{{.BuilderType}}_{{.ChecksumType}}.checksum"));
}

BOOST_AUTO_TEST_CASE(compress_format_comes_from_the_name) {
  TemplateDir t;
  struct Case {
    std::string settings, archive, algorithm;
  };
  for (const Case& c : std::vector<Case>{{R"("output": "a.tar.gz")", "tar", "pgzip"},
                                         {R"("output": "a.zip")", "zip", ""},
                                         {R"("output": "a.tar")", "tar", ""},
                                         {R"("output": "disk.raw.xz")", "", "xz"},
                                         {R"("output": "a.lz4")", "", "lz4"},
                                         {R"("output": "a.foo")", "tar", "pgzip"},
                                         {R"("output": "a", "format": "zip")", "zip", ""},
                                         {"", "tar", "pgzip"}}) {
    auto r = check(Kind::post_processor, "compress",
                   "{\"type\": \"compress\"" + (c.settings.empty() ? "" : ", " + c.settings) + "}",
                   t, Q);
    BOOST_TEST_CONTEXT(c.settings) {
      BOOST_TEST(r.str("archive") == c.archive);
      BOOST_TEST(r.str("algorithm") == c.algorithm);
    }
  }
  BOOST_TEST(check(Kind::post_processor, "compress",
                   R"({"type": "compress", "compression_level": 12})", t, Q)["compression_level"]
                 .GetInt64() == 9);
  BOOST_TEST(check(Kind::post_processor, "compress",
                   R"({"type": "compress", "compression_level": 0})", t, Q)["compression_level"]
                 .GetInt64() == 6);
  BOOST_TEST(check(Kind::post_processor, "compress",
                   R"({"type": "compress", "compression_level": -4})", t, Q)
                 .warning_at(Q + "/compression_level")
                 .find("Invalid compression level") == 0);
}

BOOST_AUTO_TEST_CASE(manifest_vagrant_and_artifice) {
  TemplateDir t;
  BOOST_TEST(
      check(Kind::post_processor, "manifest", R"({"type": "manifest"})", t, Q).str("output") ==
      t.path("packer-manifest.json"));
  auto missing =
      check(Kind::post_processor, "vagrant",
            R"({"type": "vagrant", "vagrantfile_template": ")" + t.path("nope.tpl") + "\"}", t, Q);
  BOOST_TEST(missing.error_at(Q + "/vagrantfile_template") ==
             "vagrantfile_template '" + t.path("nope.tpl") + "' does not exist");
  auto generated = check(Kind::post_processor, "vagrant",
                         R"({"type": "vagrant", "vagrantfile_template": "nope.tpl",
                             "vagrantfile_template_generated": true, "compression_level": -1})",
                         t, Q);
  BOOST_TEST(generated.errors.empty());
  BOOST_TEST(generated["compression_level"].GetInt64() == 6);
  BOOST_TEST(check(Kind::post_processor, "vagrant",
                   R"({"type": "vagrant", "provider_override": "kvm"})", t, Q)
                 .error_at(Q + "/provider_override")
                 .find("The given provider_override kvm is not valid") == 0);
  BOOST_TEST(check(Kind::post_processor, "vagrant",
                   R"({"type": "vagrant", "provider_override": "libvirt"})", t, Q)
                 .errors.empty());
  BOOST_TEST(check(Kind::post_processor, "artifice", R"({"type": "artifice", "files": []})", t, Q)
                 .error_at(Q + "/files") == "No files specified in artifice configuration");
  BOOST_TEST(
      check(Kind::post_processor, "artifice", R"({"type": "artifice", "files": ["a.img"]})", t, Q)
          .errors.empty());
}

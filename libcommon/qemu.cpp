// SPDX-License-Identifier: MIT
#include "qemu.hpp"

#include <algorithm>
#include <cctype>
#include <map>

#include "json.hpp"
#include "template_text.hpp"

namespace kiln::qemu {

namespace {

using rapidjson::Value;

using json::string_or;

/// A number setting as an integer (memory, cpus, ports are whole numbers).
long whole(const Value& b, const char* key, long fallback) {
  return static_cast<long>(json::number_or(b, key, static_cast<double>(fallback)));
}

/// One switch and the values it is given, in order ("-device" may repeat).
struct Switch {
  std::string name;
  std::vector<std::vector<std::string>> values;  ///< each: the words after it
};

void add(std::vector<Switch>& list, const std::string& name, std::vector<std::string> words) {
  for (Switch& s : list) {
    if (s.name == name) {
      s.values.push_back(std::move(words));
      return;
    }
  }
  list.push_back(Switch{name, {std::move(words)}});
}

}  // namespace

std::string hostfwd(int host_port, int guest_port) {
  return "hostfwd=tcp:127.0.0.1:" + std::to_string(host_port) + "-:" + std::to_string(guest_port);
}

Result<std::vector<std::string>> command_line(const Value& b, const Inputs& in) {
  std::vector<Switch> defaults;
  const std::string name = string_or(b, "vm_name", "packer");
  // None of qemu's own default devices: the machine gets the ones below
  // and what qemuargs add. qemu's default empty CD-ROM drive alone costs
  // about 0.35 s of every boot under TCG (the firmware probes it); its
  // floppy drive, parallel port and monitor serve no build either.
  add(defaults, "-nodefaults", {});
  add(defaults, "-name", {name});
  add(defaults, "-machine",
      {"type=" + string_or(b, "machine_type", "pc") + ",accel=" + in.accelerator});
  int ssh_port = static_cast<int>(whole(b, "ssh_port", 22));
  std::string netdev = "user,id=user.0";
  if (in.ssh_host_port > 0) netdev += "," + hostfwd(in.ssh_host_port, ssh_port);
  if (in.ssh_host_port > 0 && in.probe_host_port > 0)
    netdev += "," + hostfwd(in.probe_host_port, kProbeGuestPort);
  add(defaults, "-netdev", {netdev});
  add(defaults, "-device", {string_or(b, "net_device", "virtio-net") + ",netdev=user.0"});
  std::string drive = "file=" + in.disk + ",if=" + string_or(b, "disk_interface", "virtio") +
                      ",cache=" + string_or(b, "disk_cache", "writeback") +
                      ",discard=" + string_or(b, "disk_discard", "ignore") +
                      ",detect-zeroes=" + string_or(b, "disk_detect_zeroes", "off") +
                      ",format=qcow2";
  add(defaults, "-drive", {drive});
  for (const std::string& cd : in.cdroms)
    add(defaults, "-drive", {"file=" + cd + ",media=cdrom,readonly=on"});
  if (!in.install_iso.empty()) {
    add(defaults, "-cdrom", {in.install_iso});
    add(defaults, "-boot", {"once=d"});
  } else {
    add(defaults, "-boot", {"c"});
  }
  add(defaults, "-m", {std::to_string(whole(b, "memory", 512)) + "M"});
  long cpus = whole(b, "cpus", 1);
  add(defaults, "-smp", {std::to_string(cpus)});
  if (!in.display) add(defaults, "-display", {"none"});
  // qemu's default display adapter, kept (boot_command and a visible
  // console need one), unless qemuargs bring their own.
  add(defaults, "-vga", {"std"});
  add(defaults, "-qmp", {"unix:" + in.qmp_socket + ",server=on,wait=off"});
  add(defaults, "-serial", {"file:" + in.serial_log});

  // qemuargs: a switch given there replaces the default one of the same
  // name, all its values; several entries of one switch all apply.
  std::vector<Switch> user;
  tmpl::Context ctx;
  ctx.fields = {{"HTTPIP", in.http_ip},
                {"HTTPPort", std::to_string(in.http_port)},
                {"SSHHostPort", std::to_string(in.ssh_host_port)},
                {"OutputDir", string_or(b, "output_directory")},
                {"Name", name}};
  if (auto q = b.FindMember("qemuargs"); q != b.MemberEnd() && q->value.IsArray()) {
    for (rapidjson::SizeType i = 0; i < q->value.Size(); ++i) {
      const Value& entry = q->value[i];
      if (!entry.IsArray() || entry.Empty()) continue;
      std::vector<std::string> words;
      for (const auto& w : entry.GetArray()) {
        std::string text = w.IsString() ? w.GetString() : "";
        auto r = tmpl::render(text, ctx);
        if (!r) {
          Error e(Exit::dataerr,
                  "qemuargs entry " + std::to_string(i + 1) + ": " + r.error().message);
          e.where.pointer = "/build/builder/qemuargs/" + std::to_string(i);
          return e;
        }
        words.push_back(*r);
      }
      std::string sw = words.front();
      words.erase(words.begin());
      add(user, sw, std::move(words));
    }
  }
  auto brings_display = [](const Switch& s) {
    if (s.name != "-device") return false;
    return std::any_of(s.values.begin(), s.values.end(), [](const std::vector<std::string>& w) {
      if (w.empty()) return false;
      std::string driver = w.front().substr(0, w.front().find(','));
      std::transform(driver.begin(), driver.end(), driver.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      for (const char* kind : {"vga", "qxl", "gpu", "bochs-display", "ramfb", "cirrus"})
        if (driver.find(kind) != std::string::npos) return true;
      return false;
    });
  };
  if (std::any_of(user.begin(), user.end(), brings_display))
    defaults.erase(std::remove_if(defaults.begin(), defaults.end(),
                                  [](const Switch& s) { return s.name == "-vga"; }),
                   defaults.end());
  std::vector<std::string> args;
  auto emit = [&](const Switch& s) {
    for (const auto& words : s.values) {
      args.push_back(s.name);
      args.insert(args.end(), words.begin(), words.end());
    }
  };
  for (const Switch& s : defaults) {
    auto u =
        std::find_if(user.begin(), user.end(), [&](const Switch& x) { return x.name == s.name; });
    emit(u == user.end() ? s : *u);
  }
  for (const Switch& s : user) {
    bool is_default = std::any_of(defaults.begin(), defaults.end(),
                                  [&](const Switch& d) { return d.name == s.name; });
    if (!is_default) emit(s);
  }
  return args;
}

Errors unsupported(const Value& b) {
  // Each of these changes what the machine is or how it is reached in a way
  // vm-launch does not do yet; silently ignoring one would build something
  // else than the template says.
  static const char* const kKeys[] = {"floppy_files",
                                      "floppy_dirs",
                                      "floppy_content",
                                      "net_bridge",
                                      "disk_additional_size",
                                      "firmware",
                                      "efi_boot",
                                      "efi_firmware_code",
                                      "efi_firmware_vars",
                                      "vtpm",
                                      "vnc_use_password",
                                      "use_default_display",
                                      "display",
                                      "run_once",
                                      "ssh_bastion_host",
                                      "ssh_proxy_host",
                                      "ssh_local_tunnels",
                                      "ssh_remote_tunnels",
                                      "ssh_certificate_file",
                                      "ssh_keypair_name",
                                      "ssh_private_key",
                                      "ssh_public_key",
                                      "cpu_model",
                                      "sockets",
                                      "cores",
                                      "threads",
                                      "qmp_socket_path",
                                      "skip_nat_mapping"};
  Errors out;
  for (const char* key : kKeys) {
    auto it = b.FindMember(key);
    if (it == b.MemberEnd()) continue;
    const Value& v = it->value;
    bool unset = v.IsNull() || (v.IsString() && v.GetStringLength() == 0) ||
                 (v.IsArray() && v.Empty()) || (v.IsObject() && v.MemberCount() == 0) ||
                 (v.IsBool() && !v.GetBool()) || (v.IsNumber() && v.GetDouble() == 0);
    if (unset) continue;
    Error e(Exit::config,
            std::string("the qemu option \"") + key + "\" is not supported by kiln yet");
    e.where.pointer = std::string("/build/builder/") + key;
    out.push_back(std::move(e));
  }
  std::string comm = string_or(b, "communicator", "ssh");
  if (comm != "ssh" && comm != "none") {
    Error e(Exit::config, "the communicator \"" + comm + "\" is not supported by kiln yet");
    e.where.pointer = "/build/builder/communicator";
    out.push_back(std::move(e));
  }
  return out;
}

std::string quoted(const std::string& binary, const std::vector<std::string>& args) {
  auto q = [](const std::string& w) {
    if (!w.empty() && w.find_first_of(" \t\n'\"\\$`*?[]{}()<>|&;#~") == std::string::npos) return w;
    std::string out = "'";
    for (char c : w) {
      if (c == '\'')
        out += "'\\''";
      else
        out += c;
    }
    return out + "'";
  };
  std::string out = q(binary);
  for (const std::string& a : args) out += " " + q(a);
  return out;
}

}  // namespace kiln::qemu

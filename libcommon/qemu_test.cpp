#define BOOST_TEST_MODULE qemu
#include "qemu.hpp"

#include <boost/test/unit_test.hpp>

#include "json.hpp"
#include "text.hpp"

using namespace kiln;

namespace {
std::string line(const char* builder, const qemu::Inputs& in) {
  json::Document b;
  BOOST_REQUIRE(json::parse(builder, b).ok());
  auto args = qemu::command_line(b, in);
  BOOST_REQUIRE(args.ok());
  return text::join(*args, " ");
}
qemu::Inputs inputs() {
  qemu::Inputs in;
  in.accelerator = "tcg";
  in.disk = "/run/m/disk.qcow2";
  in.ssh_host_port = 2345;
  in.http_port = 8100;
  in.qmp_socket = "/run/m/qmp.sock";
  in.serial_log = "/run/m/serial.log";
  return in;
}
}  // namespace

BOOST_AUTO_TEST_CASE(defaults_follow_the_settings) {
  std::string l = line(R"({"vm_name": "web", "memory": 256, "cpus": 2, "machine_type": "q35",
    "disk_interface": "virtio-scsi", "net_device": "e1000", "ssh_port": 2222})",
                       inputs());
  BOOST_TEST(l.find("-name web") != std::string::npos, l);
  BOOST_TEST(l.find("-machine type=q35,accel=tcg") != std::string::npos, l);
  BOOST_TEST(l.find("hostfwd=tcp:127.0.0.1:2345-:2222") != std::string::npos, l);
  BOOST_TEST(l.find("-device e1000,netdev=user.0") != std::string::npos, l);
  BOOST_TEST(l.find("file=/run/m/disk.qcow2,if=virtio-scsi") != std::string::npos, l);
  BOOST_TEST(l.find("-m 256M -smp 2") != std::string::npos, l);
  BOOST_TEST(l.find("-boot c") != std::string::npos, l);
  BOOST_TEST(l.find("-display none") != std::string::npos, l);
  BOOST_TEST(l.find("-qmp unix:/run/m/qmp.sock,server=on,wait=off") != std::string::npos, l);
  BOOST_TEST(l.find(":1,") == std::string::npos, l);  // no network probe asked for
}

// The network probe's port goes to a guest port nothing listens on, beside
// the SSH port's forward on the same network.
BOOST_AUTO_TEST_CASE(the_network_probe_is_forwarded_beside_ssh) {
  auto in = inputs();
  in.probe_host_port = 2346;
  std::string l = line(R"({"ssh_port": 2222})", in);
  BOOST_TEST(l.find("-netdev user,id=user.0,hostfwd=tcp:127.0.0.1:2345-:2222,"
                    "hostfwd=tcp:127.0.0.1:2346-:1 ") != std::string::npos,
             l);
  BOOST_TEST(qemu::kProbeGuestPort == 1);
}

BOOST_AUTO_TEST_CASE(only_the_devices_the_build_needs) {
  // No default CD-ROM, floppy, parallel port or monitor: -nodefaults, then
  // qemu's default display adapter put back.
  std::string l = line("{}", inputs());
  BOOST_TEST(l.rfind("-nodefaults -name packer", 0) == 0, l);
  BOOST_TEST(l.find("-vga std") != std::string::npos, l);
  BOOST_TEST(l.find("media=cdrom") == std::string::npos, l);
  // A display of the template's own replaces it.
  l = line(R"({"qemuargs": [["-vga", "virtio"]]})", inputs());
  BOOST_TEST(l.find("-vga virtio") != std::string::npos, l);
  BOOST_TEST(l.find("-vga std") == std::string::npos, l);
  l = line(R"({"qemuargs": [["-device", "virtio-vga-gl"]]})", inputs());
  BOOST_TEST(l.find(" -vga ") == std::string::npos, l);
  l = line(R"({"qemuargs": [["-device", "qxl-vga,vgamem_mb=32"]]})", inputs());
  BOOST_TEST(l.find(" -vga ") == std::string::npos, l);
  l = line(R"({"qemuargs": [["-device", "virtio-rng-pci"]]})", inputs());
  BOOST_TEST(l.find("-vga std") != std::string::npos, l);
}

BOOST_AUTO_TEST_CASE(install_iso_and_cdroms) {
  auto in = inputs();
  in.install_iso = "/isos/debian.iso";
  in.cdroms = {"/run/m/seed.iso"};
  std::string l = line("{}", in);
  BOOST_TEST(l.find("-cdrom /isos/debian.iso") != std::string::npos, l);
  BOOST_TEST(l.find("-boot once=d") != std::string::npos, l);
  BOOST_TEST(l.find("file=/run/m/seed.iso,media=cdrom,readonly=on") != std::string::npos, l);
}

BOOST_AUTO_TEST_CASE(qemuargs_replace_defaults_switch_by_switch) {
  std::string l =
      line(R"({"vm_name": "v", "output_directory": "/out", "net_device": "e1000", "qemuargs": [
      ["-m", "1024M"],
      ["-kernel", "/k/vmlinuz"],
      ["-append", "console=ttyS0 ks=http://{{ .HTTPIP }}:{{ .HTTPPort }}/ks {{.Name}} {{ .OutputDir }} {{ .SSHHostPort }}"],
      ["-device", "virtio-rng-pci"],
      ["-device", "virtio-net,netdev=user.0"],
      ["-nographic"]]})",
           inputs());
  BOOST_TEST(l.find("-m 1024M") != std::string::npos, l);
  BOOST_TEST(l.find("-m 512M") == std::string::npos, l);
  BOOST_TEST(l.find("ks=http://10.0.2.2:8100/ks v /out 2345") != std::string::npos, l);
  // Both user -device entries, and no default one.
  BOOST_TEST(l.find("-device virtio-rng-pci -device virtio-net,netdev=user.0") != std::string::npos,
             l);
  BOOST_TEST(l.find("e1000") == std::string::npos, l);
  BOOST_TEST(l.find("-kernel /k/vmlinuz") != std::string::npos, l);
  BOOST_TEST(l.find("-nographic") != std::string::npos, l);
}

BOOST_AUTO_TEST_CASE(unsupported_options_are_named) {
  json::Document b;
  BOOST_REQUIRE(json::parse(R"({"floppy_files": ["a"], "net_bridge": "", "firmware": "x",
      "communicator": "winrm"})",
                            b)
                    .ok());
  auto errs = qemu::unsupported(b);
  BOOST_REQUIRE_EQUAL(errs.size(), 3u);
  BOOST_TEST(errs[0].message.find("floppy_files") != std::string::npos);
  BOOST_TEST(errs[0].code == Exit::config);
  BOOST_TEST(errs[2].message.find("winrm") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(quoting) {
  BOOST_TEST(qemu::quoted("qemu", {"-append", "a b", "it's"}) == "qemu -append 'a b' 'it'\\''s'");
}

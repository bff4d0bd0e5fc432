// SPDX-License-Identifier: MIT
#pragma once
/// Packer's vagrant post-processor for the libvirt provider: a .box (a
/// gzipped tar) holding the disk image as box.img, metadata.json, a
/// Vagrantfile and the user's include files.
///
/// Packer's rules (post-processor/vagrant/post-processor.go, libvirt.go,
/// util.go, 1.6.6):
///  - output defaults to default_output, rendered with the build's context
///    plus {{.ArtifactId}}, {{.BuildName}} and {{.Provider}} ("libvirt").
///  - compression_level: when absent, -1 (gzip's default, 6); 0 writes a
///    plain tar; 1..9 gzip levels; anything else is refused.
///  - the box holds, in name order (filepath.Walk), every include file by
///    its base name, "Vagrantfile", "box.img" and "metadata.json"; an
///    included metadata.json is kept instead of the generated one, an
///    included Vagrantfile or box.img is replaced. Entries are GNU tar,
///    mode 0644 (files Packer copied), times zeroed.
///  - metadata.json is Go's json.Encoder output of a map: keys sorted,
///    compact, a newline at the end:
///    {"format":"qcow2","provider":"libvirt","virtual_size":40}
///    virtual_size is in GiB, rounded up.
///  - the Vagrantfile is Packer's box template around the provider's part,
///    whose libvirt.driver is "kvm" for the kvm accelerator and "qemu" for
///    tcg, none and hvf (any other: "Unknown libvirt domain type: X"); the
///    user's vagrantfile_template is rendered with the same context and
///    added at the end.
/// kiln's difference: Packer takes virtual_size and format from the qemu
/// builder's disk_size and format settings; kiln asks qemu-img about the
/// image itself (the same figure for any whole-MiB disk_size).

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "result.hpp"
#include "template_text.hpp"

namespace kiln::vagrant_box {

/// Packer's default output template.
inline constexpr std::string_view default_output = "packer_{{ .BuildName }}_{{.Provider}}.box";

/// What qemu-img reports about a disk image.
struct ImageInfo {
  std::string format;              ///< "qcow2", "raw"...
  std::uint64_t virtual_size = 0;  ///< bytes
};

/// Runs `qemu-img info --output=json` on `image`. Errors: Exit::unavailable
/// (no qemu-img), Exit::noinput (qemu-img cannot open it, with its
/// message), Exit::dataerr (output without format or virtual-size),
/// Exit::interrupted, Exit::tempfail (no answer within a minute).
Result<ImageInfo> inspect(const std::string& image);

/// Bytes to whole GiB, rounded up (Packer never makes the disk smaller).
std::uint64_t size_in_gib(std::uint64_t bytes);

/// The libvirt driver for a qemu accelerator: "kvm" → "kvm"; "tcg",
/// "none", "hvf" → "qemu". Errors: Exit::config, Packer's message.
Result<std::string> libvirt_driver(std::string_view accelerator);

/// metadata.json exactly as Packer writes it (with its final newline).
std::string metadata_json(std::string_view format, std::uint64_t virtual_size_gib);

/// The box's Vagrantfile exactly as Packer writes it: its header, the
/// libvirt part with `driver`, then `custom` (the rendered
/// vagrantfile_template, or "").
std::string vagrantfile(std::string_view driver, std::string_view custom);

/// Called with bytes of the box's contents done so far and the total.
using Progress = std::function<void(std::uint64_t done, std::uint64_t total)>;

/// The post-processor's settings, as in the template.
struct Options {
  std::string image;                     ///< the disk image (qcow2)
  std::string accelerator = "kvm";       ///< the accelerator the build used
  std::string output;                    ///< template; "" = default_output
  std::optional<int> compression_level;  ///< nullopt = absent (gzip 6)
  std::vector<std::string> include;      ///< extra files, by base name
  std::string vagrantfile_template;      ///< a file; "" = none
  std::string build_name;                ///< {{.BuildName}}
  std::string artifact_id;               ///< {{.ArtifactId}}
};

/// Checks the settings before any work: the output template's syntax, the
/// level, the accelerator, that vagrantfile_template and every include
/// exist. Errors: Exit::config (Exit::noinput for a missing file).
Status check(const Options& options);

/// The box written.
struct Box {
  std::string path;  ///< the rendered output
  std::string provider = "libvirt";
  ImageInfo image;
  std::uint64_t virtual_size_gib = 0;
  std::uint64_t size = 0;  ///< bytes of the .box
};

/// Makes the box: inspects the image, renders output and Vagrantfile with
/// `context`, and streams everything into the .box (the image is read in
/// blocks, never whole); the file appears complete or not at all, also on
/// interrupt. Errors: those of check(), inspect(), rendering
/// (Exit::dataerr), and compress::write (Exit::noinput, ioerr, cantcreat,
/// interrupted...).
Result<Box> make(const Options& options, const tmpl::Context& context,
                 const Progress& progress = {});

}  // namespace kiln::vagrant_box

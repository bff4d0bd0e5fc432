// SPDX-License-Identifier: MIT
#include "vagrant_box.hpp"

#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <map>

#include "atomic_file.hpp"
#include "compress.hpp"
#include "json.hpp"
#include "process.hpp"
#include "text.hpp"

namespace kiln::vagrant_box {

namespace fs = std::filesystem;

namespace {

const char* const kLevelError = "Invalid compression level. Expected an integer from -1 to 9.";

tmpl::Context box_context(const tmpl::Context& context, const Options& options) {
  tmpl::Context ctx = context;
  ctx.fields["ArtifactId"] = options.artifact_id;
  ctx.fields["BuildName"] = options.build_name;
  ctx.fields["Provider"] = "libvirt";
  return ctx;
}

}  // namespace

Result<ImageInfo> inspect(const std::string& image) {
  auto out = process::run({"qemu-img", {"info", "--output=json", image}, {}, "", std::nullopt},
                          std::chrono::seconds(60));
  if (!out) return out.error();
  if (out->exit_code != 0) {
    std::string err = out->err;
    while (!err.empty() && (err.back() == '\n' || err.back() == ' ')) err.pop_back();
    return Error(Exit::noinput, "qemu-img cannot read " + image + ": " + err);
  }
  json::Document doc;
  if (auto st = json::parse(out->out, doc); !st)
    return Error(Exit::dataerr, "qemu-img info on " + image + ": " + st.error().message);
  if (!doc.IsObject() || !doc.HasMember("format") || !doc["format"].IsString() ||
      !doc.HasMember("virtual-size") || !doc["virtual-size"].IsUint64())
    return Error(Exit::dataerr, "qemu-img info on " + image + " gave no format or virtual-size");
  return ImageInfo{doc["format"].GetString(), doc["virtual-size"].GetUint64()};
}

std::uint64_t size_in_gib(std::uint64_t bytes) {
  const std::uint64_t gib = std::uint64_t{1} << 30;
  return bytes / gib + (bytes % gib ? 1 : 0);
}

Result<std::string> libvirt_driver(std::string_view accelerator) {
  if (accelerator == "kvm") return std::string("kvm");
  if (accelerator == "none" || accelerator == "tcg" || accelerator == "hvf")
    return std::string("qemu");
  return Error(Exit::config, "Unknown libvirt domain type: " + std::string(accelerator));
}

std::string metadata_json(std::string_view format, std::uint64_t virtual_size_gib) {
  // Go's encoder escapes < > & in strings; a qemu format name has none.
  return "{\"format\":\"" + std::string(format) +
         "\",\"provider\":\"libvirt\",\"virtual_size\":" + std::to_string(virtual_size_gib) + "}\n";
}

std::string vagrantfile(std::string_view driver, std::string_view custom) {
  return "\n# The contents below were provided by the Packer Vagrant post-processor\n"
         "\nVagrant.configure(\"2\") do |config|\n"
         "  config.vm.provider :libvirt do |libvirt|\n"
         "    libvirt.driver = \"" +
         std::string(driver) +
         "\"\n"
         "  end\n"
         "end\n"
         "\n"
         "\n# The contents below (if any) are custom contents provided by the\n"
         "# Packer template during image build.\n" +
         std::string(custom) + "\n";
}

Status check(const Options& options) {
  const std::string output = options.output.empty() ? std::string(default_output) : options.output;
  if (auto st = tmpl::check_syntax(output); !st)
    return Error(Exit::config, "Error parsing target template: " + st.error().message);
  if (options.compression_level &&
      (*options.compression_level < -1 || *options.compression_level > 9))
    return Error(Exit::config, kLevelError);
  if (auto d = libvirt_driver(options.accelerator); !d) return d.error();
  std::error_code ec;
  if (!options.vagrantfile_template.empty() && !fs::exists(options.vagrantfile_template, ec))
    return Error(Exit::noinput,
                 "vagrantfile_template '" + options.vagrantfile_template + "' does not exist");
  for (const auto& inc : options.include)
    if (!fs::is_regular_file(inc, ec))
      return Error(Exit::noinput,
                   "Error copying include file: " + inc + ": not a readable regular file");
  return {};
}

Result<Box> make(const Options& options, const tmpl::Context& context, const Progress& progress) {
  if (auto st = check(options); !st) return st.error();
  auto info = inspect(options.image);
  if (!info) return info.error();
  const tmpl::Context ctx = box_context(context, options);
  const std::string output_template =
      options.output.empty() ? std::string(default_output) : options.output;
  auto output = tmpl::render(output_template, ctx);
  if (!output) return Error(Exit::dataerr, "vagrant output: " + output.error().message);

  std::string custom;
  if (!options.vagrantfile_template.empty()) {
    auto text = read_file(options.vagrantfile_template);
    if (!text) return text.error();
    auto rendered = tmpl::render(*text, ctx);
    if (!rendered)
      return Error(Exit::dataerr, options.vagrantfile_template + ": " + rendered.error().message);
    custom = std::move(*rendered);
  }

  Box box;
  box.path = *output;
  box.image = *info;
  box.virtual_size_gib = size_in_gib(info->virtual_size);

  // The box's folder as Packer fills it: includes first, then the
  // provider's files over them, except that an included metadata.json
  // stays (WriteMetadata leaves an existing one). A map keeps the names in
  // the order filepath.Walk visits them.
  std::map<std::string, compress::Entry> files;
  for (const auto& inc : options.include) {
    compress::Entry e;
    e.name = text::go_base(inc);
    e.source = inc;
    files[e.name] = std::move(e);
  }
  compress::Entry image;
  image.name = "box.img";
  image.source = options.image;
  files["box.img"] = std::move(image);
  if (!files.count("metadata.json")) {
    compress::Entry meta;
    meta.name = "metadata.json";
    meta.content = metadata_json(info->format, box.virtual_size_gib);
    files["metadata.json"] = std::move(meta);
  }
  compress::Entry vf;
  vf.name = "Vagrantfile";
  vf.content = vagrantfile(*libvirt_driver(options.accelerator), custom);
  files["Vagrantfile"] = std::move(vf);

  std::vector<compress::Entry> entries;
  for (auto& [name, e] : files) {
    e.mode = 0644;
    entries.push_back(std::move(e));
  }
  compress::Settings settings;
  const int level = options.compression_level.value_or(-1);
  settings.format = {compress::Archive::tar,
                     level == 0 ? compress::Algorithm::none : compress::Algorithm::gzip};
  settings.level = level == -1 ? 6 : level;
  if (auto st = compress::write(box.path, entries, settings, progress); !st) return st.error();
  std::error_code ec;
  box.size = fs::file_size(box.path, ec);
  return box;
}

}  // namespace kiln::vagrant_box

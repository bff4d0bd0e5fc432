// SPDX-License-Identifier: MIT
// capture: build records with a provisioned machine in, the machine shut
// down and its disk converted to every image format the build asks for,
// records with an "artifacts" section out. With --disk it converts any disk
// image without a record and writes the record it made.

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "capture.hpp"
#include "cli.hpp"
#include "log.hpp"
#include "record.hpp"
#include "signals.hpp"
#include "text.hpp"

namespace {

using namespace kiln;
namespace fs = std::filesystem;

struct Options {
  cli::Common common;
  std::string input = "-";
  std::string disk;
  std::vector<std::string> formats;
  std::string output_dir;
  std::string vm_name;
  std::string name = "capture";
  std::string passphrase_file;
  bool force = false;
  bool compress = false;
  unsigned jobs = 0;
};

Result<cli::Outcome> parse_argv(int argc, const char* const argv[], Options& o) {
  cli::Parser p("capture", "[OPTIONS] [RECORDS]\n       capture --disk FILE [OPTIONS]",
                "Shut down the machine of each build record (RECORDS, or stdin), convert\n"
                "its disk to the build's image formats, and write the records with an\n"
                "artifacts section. With --disk, convert a disk image without a record.");
  p.options().add_options()("disk", cli::po::value<std::string>(&o.disk)->value_name("FILE"),
                            "convert this disk image (any format qemu-img reads) instead of a "
                            "record's machine")(
      "format", cli::po::value<std::vector<std::string>>(&o.formats)->value_name("LIST"),
      "with --disk: image formats to write, comma-separated, the first one "
      "primary (qcow2, raw, vmdk, vhdx, vdi; default qcow2)")(
      "output-dir", cli::po::value<std::string>(&o.output_dir)->value_name("DIR"),
      "with --disk: the folder for the images (must not exist unless --force; "
      "default output-NAME)")(
      "vm-name", cli::po::value<std::string>(&o.vm_name)->value_name("FILE"),
      "with --disk: the primary image's file name (default: the disk's name "
      "with the first format's extension)")(
      "name", cli::po::value<std::string>(&o.name)->value_name("NAME"),
      "with --disk: the build name of the record written (default capture)")(
      "force", "with --disk: replace an existing output folder (Packer's -force)")(
      "compress", "with --disk: compress a qcow2 primary image (disk_compression)")(
      "jobs", cli::po::value<unsigned>(&o.jobs)->value_name("N"),
      "conversions at once (default: one per core)")(
      "passphrase-file", cli::po::value<std::string>(&o.passphrase_file)->value_name("FILE"),
      "the passphrase of an encrypted SSH private key, in its first line");
  p.records(o.input);
  cli::po::variables_map vm;
  auto outcome = p.parse(argc, argv, vm, o.common);
  if (!outcome || outcome->stop) return outcome;
  o.force = vm.count("force") > 0;
  o.compress = vm.count("compress") > 0;
  const bool standalone = !o.disk.empty();
  for (const char* only : {"format", "output-dir", "vm-name", "name", "force", "compress"})
    if (!standalone && vm.count(only) && !vm[only].defaulted())
      return Error(Exit::usage, std::string("--") + only + " needs --disk");
  if (standalone && vm.count("records") && o.input != "-")
    return Error(Exit::usage, "give --disk or RECORDS, not both");
  return outcome;
}

/// A progress line on a terminal: every conversion at once.
class ProgressLine {
 public:
  explicit ProgressLine(bool enabled) : enabled_(enabled) {}
  void operator()(const disk_image::Progress& p) {
    if (!enabled_) return;
    auto now = std::chrono::steady_clock::now();
    const bool finished = p.stage == disk_image::Stage::done && p.overall >= 1.0;
    if (!finished && now - last_ < std::chrono::milliseconds(200)) return;
    last_ = now;
    std::fprintf(stderr, "\r\033[Kcapture: converting %3d%%", static_cast<int>(p.overall * 100));
    if (finished) std::fputc('\n', stderr);
    std::fflush(stderr);
  }

 private:
  bool enabled_;
  std::chrono::steady_clock::time_point last_{};
};

Result<std::string> first_line_of(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Error(Exit::noinput, "cannot read " + path);
  std::string line;
  std::getline(in, line);
  return line;
}

Exit run(const Options& o) {
  log::Logger log = cli::make_logger("capture", o.common);
  const bool terminal =
      ::isatty(STDERR_FILENO) == 1 && o.common.log_format == "human" && o.common.verbosity >= 0;
  ProgressLine progress(terminal);

  capture::Options co;
  co.say = [&](std::string_view m) { log.info(m); };
  co.warn = [&](std::string_view m) { log.warning(m); };
  co.output = [&](std::string_view line, bool) { log.info(line); };
  co.progress = [&](const disk_image::Progress& p) { progress(p); };
  co.jobs = o.jobs;
  if (!o.passphrase_file.empty()) {
    auto pass = first_line_of(o.passphrase_file);
    if (!pass) {
      log.report(pass.error());
      return pass.error().code;
    }
    co.passphrase = *pass;
    log.add_secret(co.passphrase);
  }

  if (!o.disk.empty()) {
    capture::DiskJob job;
    job.disk = o.disk;
    std::vector<std::string> names;
    for (const std::string& f : o.formats)
      for (const std::string& n : text::split_list(f)) names.push_back(n);
    if (names.empty()) names.push_back("qcow2");
    for (const std::string& n : names) {
      auto fmt = disk_image::parse_format(n);
      if (!fmt)
        return cli::usage_error("capture", Error(Exit::usage, "--format: " + fmt.error().message));
      job.formats.push_back(*fmt);
    }
    job.output_directory =
        o.output_dir.empty() ? disk_image::default_output_directory(o.name) : o.output_dir;
    job.vm_name = o.vm_name;
    job.force = o.force;
    job.compress = o.compress;
    rapidjson::Document rec = record::make_standalone(o.name, "qemu");
    {
      auto& a = rec.GetAllocator();
      rapidjson::Value& build = rec["build"];
      rapidjson::Value& builder = build["builder"];
      builder.AddMember("format", rapidjson::Value(names[0], a), a);
      builder.AddMember("output_directory", rapidjson::Value(job.output_directory, a), a);
      for (const std::string& n : names) build["captures"].PushBack(rapidjson::Value(n, a), a);
      build.AddMember("force", job.force, a);
    }
    Exit result = Exit::ok;
    cli::pass_record(
        rec, "capture", log,
        [&](rapidjson::Document& r) -> Status { return capture::capture_disk(r, job, co); },
        result);
    return signals::interrupted() ? Exit::interrupted : result;
  }

  return cli::pass_records(o.input, "capture", log, [&](rapidjson::Document& rec) -> Status {
    co.secrets = log.secrets();
    return capture::capture(rec, co);
  });
}

}  // namespace

int main(int argc, char* argv[]) {
  return kiln::cli::main<Options>("capture", argc, argv, parse_argv, run);
}

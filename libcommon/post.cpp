// SPDX-License-Identifier: MIT
#include "post.hpp"

#include <glob.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <memory>

#include "atomic_file.hpp"
#include "checksum.hpp"
#include "compress.hpp"
#include "disk_image.hpp"
#include "log.hpp"
#include "manifest.hpp"
#include "provisioner.hpp"
#include "record.hpp"
#include "signals.hpp"
#include "template.hpp"
#include "template_text.hpp"
#include "text.hpp"
#include "vagrant_box.hpp"

namespace kiln::post {

namespace fs = std::filesystem;
using json::bool_or;
using json::number_or;
using json::string_or;
using json::strings_of;
using rapidjson::Value;

namespace {

// Packer's BuilderId of each artifact kind.
constexpr const char* kNullBuilder = "fnoeding.null";
constexpr const char* kFilesBuilder = "kiln.files";
constexpr const char* kChecksumId = "packer.post-processor.checksum";
constexpr const char* kCompressId = "packer.post-processor.compress";
constexpr const char* kVagrantId = "mitchellh.post-processor.vagrant";
constexpr const char* kArtificeId = "packer.post-processor.artifice";

/// One artifact as the record holds it (Packer's Artifact: BuilderId, Id,
/// Files, Destroy). Post-processors that pass their input on return the
/// same object, so identity says whether two artifacts are one.
struct Artifact {
  rapidjson::Document json{rapidjson::kObjectType};
  bool destroyed = false;

  std::string builder_id() const { return string_or(json, "builder_id"); }
  std::string id() const { return string_or(json, "id"); }
  std::vector<std::string> files() const {
    std::vector<std::string> out;
    if (auto f = json.FindMember("files"); f != json.MemberEnd() && f->value.IsArray())
      for (const auto& e : f->value.GetArray())
        if (e.IsObject()) out.push_back(string_or(e, "path"));
    return out;
  }
};
using ArtifactPtr = std::shared_ptr<Artifact>;

/// A new artifact made by the post-processor at `producer`.
ArtifactPtr make_artifact(const char* builder_id, const std::string& id,
                          const std::string& producer) {
  auto art = std::make_shared<Artifact>();
  auto& a = art->json.GetAllocator();
  art->json.AddMember("builder_id", Value(builder_id, a), a);
  art->json.AddMember("id", Value(id, a), a);
  art->json.AddMember("producer", Value(producer, a), a);
  art->json.AddMember("files", Value(rapidjson::kArrayType), a);
  return art;
}

std::string absolute(const std::string& path) {
  std::error_code ec;
  std::string abs = fs::absolute(path, ec).lexically_normal().string();
  return ec ? path : abs;
}

/// Adds {"path", "format", "size"} for `path` (its size from stat; 0 when
/// it cannot be stat'ed, as Packer's manifest counts it).
void add_file(Artifact& art, const std::string& path, const std::string& format) {
  auto& a = art.json.GetAllocator();
  Value f(rapidjson::kObjectType);
  f.AddMember("path", Value(absolute(path), a), a);
  f.AddMember("format", Value(format, a), a);
  struct stat st {};
  std::int64_t size = ::stat(path.c_str(), &st) == 0 ? st.st_size : 0;
  f.AddMember("size", size, a);
  art.json["files"].PushBack(f, a);
}

/// The format of a file that is not known otherwise, from its extension.
std::string format_of(const std::string& path) {
  std::string ext = fs::path(path).extension().string();
  if (!ext.empty()) ext = ext.substr(1);
  for (const char* known : {"qcow2", "raw", "vmdk", "vhdx", "vdi"})
    if (ext == known) return ext;
  return "file";
}

/// compress's output as the artifacts' format names it: tar, tar.gz, gz...
std::string format_name(const compress::Format& f) {
  std::string alg;
  switch (f.algorithm) {
    case compress::Algorithm::none:
      break;
    case compress::Algorithm::gzip:
      alg = "gz";
      break;
    case compress::Algorithm::xz:
      alg = "xz";
      break;
    case compress::Algorithm::zstd:
      alg = "zst";
      break;
    case compress::Algorithm::lz4:
      alg = "lz4";
      break;
    case compress::Algorithm::bgzf:
      alg = "bgzf";
      break;
  }
  std::string arc(f.archive == compress::Archive::none ? "" : compress::name(f.archive));
  if (arc.empty()) return alg.empty() ? "file" : alg;
  return alg.empty() ? arc : arc + "." + alg;
}

/// Packer's Destroy: the builder's artifact removes its output directory,
/// the others their files; the null builder's and the files given with
/// --artifact remove nothing. Appends
/// what went to `removed`.
Status destroy(Artifact& art, std::vector<std::string>& removed) {
  if (art.destroyed) return {};
  art.destroyed = true;
  // The null builder exported nothing; files given with --artifact are the
  // user's own, never a build's output to clean up.
  if (art.builder_id() == kNullBuilder || art.builder_id() == kFilesBuilder) return {};
  std::vector<std::string> paths;
  if (std::string dir = string_or(art.json, "directory"); !dir.empty())
    paths.push_back(dir);
  else
    paths = art.files();
  for (const std::string& p : paths) {
    std::error_code ec;
    auto n = fs::remove_all(p, ec);
    if (ec) return Error(Exit::ioerr, "cannot remove " + p + ": " + ec.message());
    if (n > 0) removed.push_back(p);
  }
  return {};
}

/// What one post-processor did, for the post section.
struct StepReport {
  std::string type;
  std::string name;
  std::string status = "skipped";
  double duration = 0;
  std::vector<std::string> input;
  std::vector<std::string> output;
  std::vector<std::string> written;
  std::optional<bool> input_kept;
  std::string note;
};

/// What a post-processor returns, as Packer's PostProcess does: the new
/// artifact, whether its input is kept by default, and whether that
/// default overrides the user's keep_input_artifact.
struct Outcome {
  ArtifactPtr artifact;
  bool keep = false;
  bool force = false;
};

/// Everything a post-processor may use.
struct Job {
  const Value& build;
  const Value* machine;
  const Options& options;
  tmpl::Context context;  ///< the build's, with BuildName and BuilderType
  std::string build_name;
  std::string build_type;
  std::string producer;  ///< "artifact-post C.P"
  std::string label;     ///< "post-processor C.P (type)"
  StepReport& report;

  void say(const std::string& m) const {
    if (options.say) options.say(label + ": " + m);
  }
  Progress progress() const { return options.progress ? options.progress(label) : Progress{}; }
};

Result<std::string> render(const std::string& text, const tmpl::Context& ctx) {
  if (!tmpl::has_actions(text)) return text;
  return tmpl::render(text, ctx);
}

// ------------------------------------------------------------- checksum

Result<Outcome> run_checksum(const Value& pp, const ArtifactPtr& in, Job& job) {
  checksum::Options co;
  co.checksum_types = strings_of(pp, "checksum_types");
  co.output = string_or(pp, "output");
  co.build_name = job.build_name;
  co.builder_type = job.build_type;
  // A SHA-256 capture made as it wrote an image is used again while the
  // file is as it was then (the same size and modification time), rather
  // than read again.
  std::map<std::string, std::string> known;
  if (auto f = in->json.FindMember("files"); f != in->json.MemberEnd() && f->value.IsArray())
    for (const auto& e : f->value.GetArray()) {
      const std::string path = string_or(e, "path"), sum = string_or(e, "sha256");
      auto size = e.FindMember("size"), mtime = e.FindMember("mtime_ns");
      if (path.empty() || sum.empty() || size == e.MemberEnd() || !size->value.IsUint64() ||
          mtime == e.MemberEnd() || !mtime->value.IsInt64())
        continue;
      struct stat st {};
      if (::stat(path.c_str(), &st) != 0) continue;
      if (static_cast<std::uint64_t>(st.st_size) != size->value.GetUint64() ||
          disk_image::mtime_ns(st) != mtime->value.GetInt64())
        continue;
      known[absolute(path)] = sum;
    }
  co.known_sha256 = [&known](const std::string& path) -> std::optional<std::string> {
    auto k = known.find(absolute(path));
    if (k == known.end()) return std::nullopt;
    return k->second;
  };
  const auto files = in->files();
  if (!files.empty())
    job.say(
        "Computing " +
        text::join(co.checksum_types.empty() ? std::vector<std::string>{"md5"} : co.checksum_types,
                   ", ") +
        " of " + std::to_string(files.size()) + " file(s)");
  auto written = checksum::run(files, co, job.context, job.progress());
  if (!written) return written.error();
  // Packer's artifact: the input's files, then each checksum file it made.
  auto art = make_artifact(kChecksumId, "", job.producer);
  auto& a = art->json.GetAllocator();
  if (auto f = in->json.FindMember("files"); f != in->json.MemberEnd() && f->value.IsArray())
    for (const auto& e : f->value.GetArray()) art->json["files"].PushBack(Value(e, a), a);
  for (const auto& w : *written) {
    job.report.written.push_back(absolute(w.path));
    if (w.created) add_file(*art, w.path, "checksum");
    job.say("Wrote " + w.type + " checksums to " + w.path);
  }
  return Outcome{art, true, true};
}

// ------------------------------------------------------------- compress

Result<Outcome> run_compress(const Value& pp, const ArtifactPtr& in, Job& job) {
  compress::Options co;
  co.output = string_or(pp, "output");
  co.format = string_or(pp, "format");
  co.compression_level = static_cast<int>(number_or(pp, "compression_level", 0));
  co.build_name = job.build_name;
  co.builder_type = job.build_type;
  co.threads = job.options.threads;
  const auto files = in->files();
  const auto format =
      compress::detect_format(co.output.empty() ? compress::default_output : co.output, co.format);
  job.say(format.archive == compress::Archive::none
              ? "Compressing " + (files.empty() ? std::string("nothing") : files[0]) + " with " +
                    std::string(compress::name(format.algorithm))
              : "Archiving " + std::to_string(files.size()) + " file(s) as " + format_name(format));
  auto w = compress::run(files, co, job.context, job.progress());
  if (!w) return w.error();
  job.say("Archive " + w->path + " completed");
  auto art = make_artifact(kCompressId, "", job.producer);
  add_file(*art, w->path, format_name(w->format));
  job.report.written.push_back(absolute(w->path));
  return Outcome{art, false, false};
}

// ------------------------------------------------------------- manifest

Result<Outcome> run_manifest(const Value& pp, const ArtifactPtr& in, Job& job) {
  manifest::Options mo;
  auto out = render(string_or(pp, "output", std::string(manifest::default_output)), job.context);
  if (!out) return Error(Exit::dataerr, "output: " + out.error().message);
  mo.output = *out;
  mo.strip_path = bool_or(pp, "strip_path");
  mo.strip_time = bool_or(pp, "strip_time");
  if (auto cd = pp.FindMember("custom_data"); cd != pp.MemberEnd() && cd->value.IsObject()) {
    std::map<std::string, std::string> data;
    for (const auto& m : cd->value.GetObject()) {
      if (!m.value.IsString()) continue;
      auto v = render(std::string(m.value.GetString()), job.context);
      if (!v)
        return Error(Exit::dataerr, "custom_data \"" + std::string(m.name.GetString()) +
                                        "\": " + v.error().message);
      // A sensitive value never reaches a manifest.
      data[m.name.GetString()] = log::redact(*v, job.options.secrets);
    }
    mo.custom_data = std::move(data);
  }
  mo.force = bool_or(job.build, "force");
  mo.run_uuid = string_or(job.build, "run_uuid");
  manifest::Artifact ma;
  ma.build_name = job.build_name;
  ma.builder_type = job.build_type;
  ma.id = in->id();
  ma.files = in->files();
  // Packer stamps the entry when the post-processor runs.
  auto path = manifest::record(ma, mo, static_cast<std::int64_t>(std::time(nullptr)));
  if (!path) return path.error();
  job.say("Added the build to " + *path);
  job.report.written.push_back(absolute(*path));
  return Outcome{in, true, true};
}

// -------------------------------------------------------------- vagrant

/// The disk image a box is made of: the file in the builder's format, else
/// a qcow2, else the artifact's first file.
std::string box_image(const Artifact& in, const Value& build) {
  std::string wanted;
  if (auto b = build.FindMember("builder"); b != build.MemberEnd() && b->value.IsObject())
    wanted = string_or(b->value, "format");
  const Value& files = in.json["files"];
  for (const std::string& fmt : {wanted, std::string("qcow2")}) {
    if (fmt.empty()) continue;
    for (const auto& f : files.GetArray())
      if (f.IsObject() && string_or(f, "format") == fmt) return string_or(f, "path");
  }
  auto all = in.files();
  return all.empty() ? std::string() : all.front();
}

Result<Outcome> run_vagrant(const Value& pp, const ArtifactPtr& in, Job& job) {
  if (std::string p = string_or(pp, "provider_override"); !p.empty() && p != "libvirt")
    return Error(Exit::config, "provider_override \"" + p +
                                   "\" is not supported: kiln makes boxes for the libvirt "
                                   "provider only");
  vagrant_box::Options vo;
  vo.image = box_image(*in, job.build);
  if (vo.image.empty())
    return Error(Exit::noinput, "the artifact has no disk image to put in a box");
  // The accelerator the machine really used decides libvirt's driver.
  std::string accel;
  if (job.machine) accel = string_or(*job.machine, "accelerator");
  if (accel.empty())
    if (auto b = job.build.FindMember("builder"); b != job.build.MemberEnd() && b->value.IsObject())
      if (std::string c = string_or(b->value, "accelerator"); c != "auto") accel = c;
  vo.accelerator = accel.empty() ? "kvm" : accel;
  vo.output = string_or(pp, "output");
  if (pp.HasMember("compression_level"))
    vo.compression_level = static_cast<int>(number_or(pp, "compression_level", -1));
  vo.include = strings_of(pp, "include");
  vo.vagrantfile_template = string_or(pp, "vagrantfile_template");
  vo.build_name = job.build_name;
  vo.artifact_id = in->id();
  job.say("Making a libvirt box of " + vo.image);
  auto box = vagrant_box::make(vo, job.context, job.progress());
  if (!box) return box.error();
  job.say("Box " + box->path + " completed");
  auto art = make_artifact(kVagrantId, box->provider, job.producer);
  add_file(*art, box->path, "box");
  job.report.written.push_back(absolute(box->path));
  // The libvirt provider does not keep its input; vagrant forces its default.
  return Outcome{art, false, true};
}

// ------------------------------------------------------------- artifice

Result<Outcome> run_artifice(const Value& pp, const ArtifactPtr& in, Job& job) {
  if (auto f = in->files(); !f.empty())
    job.say("Discarding files from artifact: " + text::join(f, ", "));
  auto art = make_artifact(kArtificeId, "", job.producer);
  std::vector<std::string> used;
  // Packer's filepath.Glob: a pattern that matches nothing adds nothing.
  for (const std::string& pattern : strings_of(pp, "files")) {
    glob_t g{};
    int rc = ::glob(pattern.c_str(), 0, nullptr, &g);
    std::vector<std::string> matches;
    if (rc == 0)
      for (size_t i = 0; i < g.gl_pathc; ++i) matches.emplace_back(g.gl_pathv[i]);
    ::globfree(&g);
    if (rc != 0 && rc != GLOB_NOMATCH) return Error(Exit::ioerr, "cannot expand " + pattern);
    for (const std::string& m : matches) {
      struct stat st {};
      if (::stat(m.c_str(), &st) != 0)
        return Error(Exit::noinput, "stat " + m + ": " + std::strerror(errno));
      add_file(*art, m, format_of(m));
      used.push_back(m);
    }
  }
  job.say("Using these artifact files: " + text::join(used, ", "));
  return Outcome{art, true, false};
}

// ---------------------------------------------------------- shell-local

Result<Outcome> run_shell_local(const Value& pp, const ArtifactPtr& in, Job& job) {
  rapidjson::Document p;
  p.CopyFrom(pp, p.GetAllocator());
  // Packer's post-processor took execute_command as one string run by
  // "sh -c"; a list of one element is still read that way.
  if (auto e = p.FindMember("execute_command");
      e != p.MemberEnd() && e->value.IsArray() && e->value.Size() == 1) {
    Value cmd(rapidjson::kArrayType);
    cmd.PushBack("sh", p.GetAllocator());
    cmd.PushBack("-c", p.GetAllocator());
    cmd.PushBack(Value(e->value[0], p.GetAllocator()), p.GetAllocator());
    e->value = cmd;
  }
  provisioner::Environment env;
  env.build_name = job.build_name;
  env.builder_type = job.build_type;
  env.say = [&](std::string_view m) { job.say(std::string(m)); };
  env.output = job.options.output;
  auto step = provisioner::run(p, env);
  if (!step) return step.error();
  if (step->skipped) {
    job.report.status = "skipped";
    job.report.note = step->note;
  }
  return Outcome{in, true, true};
}

Result<Outcome> run_one(const std::string& type, const Value& pp, const ArtifactPtr& in, Job& job) {
  if (type == "checksum") return run_checksum(pp, in, job);
  if (type == "compress") return run_compress(pp, in, job);
  if (type == "manifest") return run_manifest(pp, in, job);
  if (type == "vagrant") return run_vagrant(pp, in, job);
  if (type == "artifice") return run_artifice(pp, in, job);
  if (type == "shell-local") return run_shell_local(pp, in, job);
  return Error(Exit::config, "post-processor type \"" + type + "\" is not supported");
}

Value strings_value(const std::vector<std::string>& v, rapidjson::Document::AllocatorType& a) {
  Value arr(rapidjson::kArrayType);
  for (const auto& s : v) arr.PushBack(Value(s, a), a);
  return arr;
}

/// The builder's artifact of the record: its one artifact, or a null
/// build's empty one.
Result<ArtifactPtr> builder_artifact(const rapidjson::Document& record) {
  const Value& build = record["build"];
  auto it = record.FindMember("artifacts");
  if (it == record.MemberEnd() || (it->value.IsArray() && it->value.Empty())) {
    if (string_or(build, "type") != "null")
      return Error(Exit::dataerr, "the record has no artifacts: run capture before artifact-post");
    // Packer's null builder: nothing exported, nothing to destroy.
    auto art = std::make_shared<Artifact>();
    auto& a = art->json.GetAllocator();
    art->json.AddMember("builder_id", rapidjson::StringRef(kNullBuilder), a);
    art->json.AddMember("id", "Null", a);
    art->json.AddMember("files", Value(rapidjson::kArrayType), a);
    return art;
  }
  if (!it->value.IsArray() || it->value.Size() != 1)
    return Error(Exit::dataerr, "the record has " + std::to_string(it->value.Size()) +
                                    " artifacts; artifact-post needs the builder's one");
  auto art = std::make_shared<Artifact>();
  art->json.CopyFrom(it->value[0], art->json.GetAllocator());
  return art;
}

}  // namespace

Status run(rapidjson::Document& record, const Options& options) {
  if (!record.HasMember("build") || !record["build"].IsObject())
    return Error(Exit::dataerr, "the record has no build section");
  if (record.HasMember("post"))
    return Error(Exit::dataerr,
                 "the build's post-processors have already run (the record has a post section)");
  auto builder = builder_artifact(record);
  if (!builder) return builder.error();
  const Value& build = record["build"];
  const Value* machine = record.HasMember("machine") ? &record["machine"] : nullptr;
  const Value& chains = build["post_processors"];

  const std::string build_name = string_or(build, "name");
  const std::string build_type = string_or(build, "type");
  tmpl::Context base;
  std::map<std::string, std::string> variables;
  if (auto v = build.FindMember("variables"); v != build.MemberEnd() && v->value.IsObject())
    for (const auto& m : v->value.GetObject())
      if (m.value.IsString()) variables[m.name.GetString()] = m.value.GetString();
  base.user = [variables](const std::string& n) -> Result<std::string> {
    auto it = variables.find(n);
    return it == variables.end() ? std::string() : it->second;
  };
  base.build_name = build_name;
  base.build_type = build_type;
  if (auto t = build.FindMember("template"); t != build.MemberEnd() && t->value.IsObject())
    base.template_dir = string_or(t->value, "dir");
  std::error_code ec;
  base.pwd = fs::current_path(ec).string();
  base.packer_version = templates::kPackerVersion;
  base.timestamp = static_cast<std::int64_t>(number_or(build, "timestamp", 0));
  base.fields["BuildName"] = build_name;
  base.fields["BuilderType"] = build_type;

  std::vector<std::vector<StepReport>> reports;
  for (const auto& chain : chains.GetArray()) {
    reports.emplace_back();
    for (const auto& pp : chain.GetArray()) {
      StepReport r;
      r.type = string_or(pp, "type");
      r.name = string_or(pp, "name");
      reports.back().push_back(std::move(r));
    }
  }

  bool keep_original = chains.Empty();
  std::vector<ArtifactPtr> results;
  std::vector<std::string> removed;
  Errors failures;
  bool stop = false;
  const ArtifactPtr& original = *builder;
  using Clock = std::chrono::steady_clock;

  for (rapidjson::SizeType c = 0; c < chains.Size() && !stop; ++c) {
    const Value& chain = chains[c];
    ArtifactPtr prior = original;
    bool chain_ok = true;
    for (rapidjson::SizeType i = 0; i < chain.Size(); ++i) {
      const Value& pp = chain[i];
      StepReport& report = reports[c][i];
      const std::string where = std::to_string(c) + "." + std::to_string(i);
      const std::string label = "post-processor " + where + " (" + report.type + ")";
      if (signals::interrupted()) {
        Error e(Exit::interrupted, label + ": interrupted before it started");
        e.step = label;
        failures.push_back(e);
        stop = true;
        chain_ok = false;
        break;
      }
      Job job{build, machine, options, base, build_name, build_type, "artifact-post " + where,
              label, report};
      if (options.say)
        options.say(report.name.empty() || report.name == report.type
                        ? "Running post-processor: " + report.type
                        : "Running post-processor: " + report.name + " (type " + report.type + ")");
      report.input = prior->files();
      report.status = "ok";
      const auto started = Clock::now();
      auto outcome = run_one(report.type, pp, prior, job);
      report.duration = std::chrono::duration<double>(Clock::now() - started).count();
      if (!outcome) {
        Error e = outcome.error();
        e.message = label + ": " + e.message;
        e.step = label;
        report.status = "failed";
        report.note = log::redact(e.message, options.secrets);
        failures.push_back(e);
        if (e.code == Exit::interrupted || signals::interrupted()) stop = true;
        chain_ok = false;
        break;
      }
      const ArtifactPtr artifact = outcome->artifact;
      bool keep = outcome->keep;
      // keep_input_artifact overrides the default, unless the
      // post-processor keeps its input by force.
      if (auto k = pp.FindMember("keep_input_artifact"); k != pp.MemberEnd() && k->value.IsBool()) {
        if (!(outcome->keep && !k->value.GetBool() && outcome->force)) keep = k->value.GetBool();
      }
      report.input_kept = keep;
      report.output = artifact->files();
      if (i == 0) {
        // Other chains may still need the builder's artifact: it is
        // destroyed (or kept) once every chain has run.
        if (keep) keep_original = true;
      } else if (keep) {
        results.push_back(prior);
      } else if (auto st = destroy(*prior, removed); !st) {
        Error e = st.error();
        e.message = label + ": failed cleaning up the prior artifact: " + e.message;
        e.step = label;
        failures.push_back(e);
      }
      prior = artifact;
    }
    if (chain_ok) results.push_back(prior);
  }

  // A failed post-processing keeps the builder's artifact to run again on.
  if (keep_original || !failures.empty()) {
    results.insert(results.begin(), original);
  } else if (auto st = destroy(*original, removed); !st) {
    Error e = st.error();
    e.message = "cannot destroy the builder's artifact: " + e.message;
    e.step = "post-processing";
    failures.push_back(e);
  }

  auto& a = record.GetAllocator();
  Value artifacts(rapidjson::kArrayType);
  // Packer's list, an artifact a pass-through post-processor (manifest,
  // shell-local) returned listed twice as Packer lists it; only one whose
  // files were removed later in its chain is left out.
  for (const ArtifactPtr& art : results) {
    if (art->destroyed) continue;
    artifacts.PushBack(Value(art->json, a), a);
  }
  record.RemoveMember("artifacts");
  record.AddMember("artifacts", artifacts, a);

  Value post(rapidjson::kObjectType);
  Value chain_reports(rapidjson::kArrayType);
  for (const auto& chain : reports) {
    Value steps(rapidjson::kArrayType);
    for (const StepReport& r : chain) {
      Value s(rapidjson::kObjectType);
      s.AddMember("type", Value(r.type, a), a);
      if (!r.name.empty()) s.AddMember("name", Value(r.name, a), a);
      s.AddMember("status", Value(r.status, a), a);
      s.AddMember("duration", r.duration, a);
      s.AddMember("input", strings_value(r.input, a), a);
      s.AddMember("output", strings_value(r.output, a), a);
      s.AddMember("written", strings_value(r.written, a), a);
      if (r.input_kept) s.AddMember("input_kept", *r.input_kept, a);
      if (!r.note.empty()) s.AddMember("note", Value(r.note, a), a);
      steps.PushBack(s, a);
    }
    chain_reports.PushBack(steps, a);
  }
  post.AddMember("chains", chain_reports, a);
  post.AddMember("builder_artifact_kept", !original->destroyed, a);
  post.AddMember("removed", strings_value(removed, a), a);
  record.AddMember("post", post, a);

  if (failures.empty()) return {};
  Error first = failures.front();
  if (failures.size() > 1)
    first.message += " (and " + std::to_string(failures.size() - 1) +
                     " more failure(s): see the record's post section)";
  return first;
}

Status check_post_argument(std::string_view text) {
  size_t start = text.find_first_not_of(" \t\n\r");
  if (start == std::string_view::npos) return Error(Exit::usage, "--post needs a post-processor");
  const char first = text[start];
  if (first == '{' || first == '[' || first == '"') {
    rapidjson::Document doc;
    if (auto st = json::parse(text, doc); !st)
      return Error(Exit::usage, "--post: not valid JSON: " + st.error().message);
    return {};
  }
  for (char c : text)
    if (!(std::islower(static_cast<unsigned char>(c)) ||
          std::isdigit(static_cast<unsigned char>(c)) || c == '-' || c == '_'))
      return Error(Exit::usage,
                   "--post: '" + std::string(text) +
                       "' is neither a post-processor type nor a JSON object or array");
  return {};
}

Standalone standalone_record(const Request& request) {
  Standalone out;
  for (const std::string& f : request.files) {
    struct stat st {};
    if (::stat(f.c_str(), &st) != 0) {
      out.errors.emplace_back(Exit::noinput, "cannot read " + f + ": " + std::strerror(errno));
      out.exit = Exit::noinput;
    } else if (S_ISDIR(st.st_mode)) {
      out.errors.emplace_back(Exit::noinput, f + " is a directory, not a file");
      out.exit = Exit::noinput;
    }
  }
  if (!out.errors.empty()) return out;

  // The chains as elements of one "post-processors" array: the file's
  // first, then each --post.
  std::vector<std::string> elements;
  size_t from_file = 0;
  json::SourceMap file_map;
  if (!request.post_file.empty()) {
    auto text = read_file(request.post_file);
    if (!text) {
      out.errors.push_back(Error(Exit::noinput, text.error().message));
      out.exit = Exit::noinput;
      return out;
    }
    rapidjson::Document doc;
    Errors dups;
    if (auto st = json::parse(*text, request.post_file, doc, file_map, dups); !st) {
      out.errors.push_back(st.error());
      out.exit = Exit::dataerr;
      out.sources.push_back(file_map);
      return out;
    }
    out.sources.push_back(file_map);
    if (!doc.IsArray()) {
      Error e(Exit::dataerr,
              "a Packer post-processors array ([...]) was expected, not " +
                  std::string(json::type_name(doc)),
              file_map.locate(""));
      out.errors.push_back(e);
      out.exit = Exit::dataerr;
      return out;
    }
    for (const auto& v : doc.GetArray()) elements.push_back(json::to_string(v));
    from_file = elements.size();
  }
  for (const std::string& p : request.posts) {
    size_t start = p.find_first_not_of(" \t\n\r");
    if (start != std::string::npos && (p[start] == '{' || p[start] == '[' || p[start] == '"')) {
      elements.push_back(p);
    } else {
      rapidjson::Value name(p.c_str(), static_cast<rapidjson::SizeType>(p.size()));
      elements.push_back(json::to_string(name));
    }
  }

  rapidjson::Document builder(rapidjson::kObjectType);
  auto& ba = builder.GetAllocator();
  builder.AddMember("type", "null", ba);
  builder.AddMember("name", Value(request.name, ba), ba);
  builder.AddMember("communicator", "none", ba);
  std::string text = "{\"builders\":[" + json::to_string(builder) + "],\"post-processors\":[";
  for (size_t i = 0; i < elements.size(); ++i) text += (i ? "," : "") + elements[i];
  text += "]}";

  templates::Request tr;
  tr.path = "artifact-post";
  tr.template_text = text;
  tr.timestamp = request.timestamp;
  templates::Outcome loaded = templates::load(tr);
  out.secrets = loaded.secrets;

  // Errors point into the text made above; say where the user wrote it.
  auto relocate = [&](Error e) {
    const std::string prefix = "/post-processors/";
    const std::string& ptr = e.where.pointer;
    e.where.line = 0;
    e.where.column = 0;
    if (ptr.rfind(prefix, 0) == 0) {
      size_t end = ptr.find('/', prefix.size());
      size_t k = std::stoul(ptr.substr(prefix.size(), end - prefix.size()));
      std::string rest = end == std::string::npos ? "" : ptr.substr(end);
      if (k < from_file) {
        std::string inner = "/" + std::to_string(k) + rest;
        e.where = file_map.locate(inner);
        e.where.pointer = inner;
      } else {
        const std::string& arg = request.posts[k - from_file];
        e.where.file = arg.size() <= 40 && arg.find('\n') == std::string::npos
                           ? "--post '" + arg + "'"
                           : "--post " + std::to_string(k - from_file + 1);
        e.where.pointer = rest;
      }
    } else if (ptr.rfind("/builders", 0) == 0) {
      e.where.file = "--name";
      e.where.pointer.clear();
    } else {
      e.where.file.clear();
    }
    return e;
  };
  for (const Error& w : loaded.warnings) out.warnings.push_back(relocate(w));
  if (!loaded.errors.empty()) {
    for (const Error& e : loaded.errors) out.errors.push_back(relocate(e));
    out.exit = loaded.exit == Exit::ok ? Exit::dataerr : loaded.exit;
    return out;
  }
  if (loaded.builds.size() != 1) {
    out.errors.emplace_back(Exit::software, "internal error: the build was not made");
    out.exit = Exit::software;
    return out;
  }

  rapidjson::Document rec = record::make();
  auto& a = rec.GetAllocator();
  Value build(loaded.builds.front(), a);
  std::error_code ec;
  const std::string cwd = fs::current_path(ec).string();
  build["template"]["path"].SetString(
      request.post_file.empty() ? std::string() : absolute(request.post_file), a);
  build["template"]["dir"].SetString(cwd, a);
  rec.AddMember("build", build, a);

  Artifact files;
  auto& fa = files.json.GetAllocator();
  files.json.AddMember("builder_id", rapidjson::StringRef(kFilesBuilder), fa);
  files.json.AddMember("id", "", fa);
  files.json.AddMember("producer", "artifact-post", fa);
  files.json.AddMember("files", Value(rapidjson::kArrayType), fa);
  for (const std::string& f : request.files) add_file(files, f, format_of(f));
  Value artifacts(rapidjson::kArrayType);
  artifacts.PushBack(Value(files.json, a), a);
  rec.AddMember("artifacts", artifacts, a);
  if (auto st = record::validate(rec); !st) {
    out.errors.emplace_back(Exit::software, "internal error: " + st.error().message);
    out.exit = Exit::software;
    return out;
  }
  out.record = std::move(rec);
  return out;
}

}  // namespace kiln::post

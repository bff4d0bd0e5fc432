// SPDX-License-Identifier: MIT
#define BOOST_TEST_MODULE post
#include "post.hpp"

#include <signal.h>
#include <unistd.h>

#include <boost/test/unit_test.hpp>
#include <fstream>

#include "json.hpp"
#include "record.hpp"
#include "signals.hpp"
#include "test_support.hpp"

using namespace kiln;
namespace fs = std::filesystem;

namespace {

/// Runs the tests in a fresh folder (relative outputs land there).
struct InTempDir {
  testing::TempDir dir{"kiln-post"};
  fs::path before = fs::current_path();
  InTempDir() { fs::current_path(dir.path); }
  ~InTempDir() { fs::current_path(before); }
};

void write(const fs::path& p, const std::string& text) {
  if (p.has_parent_path()) fs::create_directories(p.parent_path());
  std::ofstream(p) << text;
}

/// A record of a null build named "b" with `chains` (JSON text) whose
/// builder artifact is a qemu-like one: two files in output-b/.
rapidjson::Document record_with(const std::string& chains) {
  const std::string dir = (fs::current_path() / "output-b").string();
  write(dir + "/disk.qcow2", "qcow2 bytes");
  write(dir + "/disk.raw", "raw bytes");
  const std::string text =
      R"({"kiln":1,"build":{"name":"b","type":"null","builder":{"type":"null"},)"
      R"("provisioners":[],"post_processors":)" +
      chains + R"(,"captures":[],"on_error":"cleanup","template":{"path":"","dir":")" +
      fs::current_path().string() +
      R"(","sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},)"
      R"("variables":{"v":"value"},"run_uuid":"u-1","timestamp":1,"sensitive":[]},)"
      R"("artifacts":[{"builder_id":"transcend.qemu","id":"VM","producer":"capture","directory":")" +
      dir + R"(","files":[{"path":")" + dir +
      R"(/disk.qcow2","format":"qcow2","size":11},)"
      R"({"path":")" +
      dir + R"(/disk.raw","format":"raw","size":9}]}]})";
  rapidjson::Document rec;
  BOOST_REQUIRE(json::parse(text, rec).ok());
  auto valid = record::validate(rec);
  BOOST_REQUIRE_MESSAGE(valid.ok(), (valid.ok() ? std::string() : valid.error().message));
  return rec;
}

std::string ids(const rapidjson::Document& rec) {
  std::string s;
  for (const auto& a : rec["artifacts"].GetArray())
    s += (s.empty() ? "" : " ") + std::string(a["builder_id"].GetString());
  return s;
}

}  // namespace

BOOST_AUTO_TEST_CASE(no_chains_keep_the_builder_artifact) {
  InTempDir t;
  auto rec = record_with("[]");
  BOOST_REQUIRE(post::run(rec, {}).ok());
  BOOST_TEST(ids(rec) == "transcend.qemu");
  BOOST_TEST(rec["post"]["builder_artifact_kept"].GetBool());
  BOOST_TEST(fs::exists("output-b/disk.qcow2"));
  BOOST_TEST(record::validate(rec).ok());
}

BOOST_AUTO_TEST_CASE(compress_alone_destroys_the_output_directory) {
  InTempDir t;
  auto rec = record_with(R"([[{"type":"compress","output":"b.tar"}]])");
  auto st = post::run(rec, {});
  BOOST_REQUIRE_MESSAGE(st.ok(), (st.ok() ? std::string() : st.error().message));
  BOOST_TEST(ids(rec) == "packer.post-processor.compress");
  BOOST_TEST(!fs::exists("output-b"));
  BOOST_TEST(fs::exists("b.tar"));
  BOOST_TEST(rec["post"]["removed"][0].GetString() == (fs::current_path() / "output-b").string());
  BOOST_TEST(!rec["post"]["builder_artifact_kept"].GetBool());
  BOOST_TEST(record::validate(rec).ok());
}

BOOST_AUTO_TEST_CASE(keep_input_artifact_overrides_an_unforced_default) {
  InTempDir t;
  auto rec = record_with(R"([[{"type":"compress","output":"b.tar","keep_input_artifact":true}]])");
  BOOST_REQUIRE(post::run(rec, {}).ok());
  BOOST_TEST(ids(rec) == "transcend.qemu packer.post-processor.compress");
  BOOST_TEST(fs::exists("output-b/disk.raw"));
  BOOST_TEST(rec["post"]["chains"][0][0]["input_kept"].GetBool());
}

BOOST_AUTO_TEST_CASE(a_forced_keep_ignores_keep_input_artifact_false) {
  InTempDir t;
  auto rec = record_with(R"([[{"type":"checksum","keep_input_artifact":false}]])");
  BOOST_REQUIRE(post::run(rec, {}).ok());
  BOOST_TEST(ids(rec) == "transcend.qemu packer.post-processor.checksum");
  BOOST_TEST(fs::exists("output-b/disk.raw"));
  BOOST_TEST(fs::exists("packer_b_null_md5.checksum"));
}

BOOST_AUTO_TEST_CASE(an_intermediate_not_kept_is_destroyed) {
  InTempDir t;
  write("extra.txt", "x");
  auto rec = record_with(
      R"([[{"type":"artifice","files":["extra.txt"]},{"type":"compress","output":"e.tar"},)"
      R"({"type":"checksum","output":"e.sum"}]])");
  BOOST_REQUIRE(post::run(rec, {}).ok());
  BOOST_TEST(!fs::exists("extra.txt"));
  BOOST_TEST(fs::exists("output-b"));  // artifice kept the builder's artifact
  BOOST_TEST(ids(rec) ==
             "transcend.qemu packer.post-processor.compress packer.post-processor.checksum");
}

BOOST_AUTO_TEST_CASE(a_pass_through_artifact_is_listed_twice_as_packer_lists_it) {
  InTempDir t;
  auto rec = record_with(R"([[{"type":"manifest","output":"m.json"},{"type":"checksum"}]])");
  BOOST_REQUIRE(post::run(rec, {}).ok());
  // The builder's artifact: kept by the chain's first post-processor, then
  // passed on by manifest and kept by checksum.
  BOOST_TEST(ids(rec) == "transcend.qemu transcend.qemu packer.post-processor.checksum");
}

BOOST_AUTO_TEST_CASE(a_failure_names_the_post_processor_and_keeps_the_builder_artifact) {
  InTempDir t;
  write("afile", "a file, not a folder");
  auto rec = record_with(
      R"([[{"type":"compress","output":"afile/x.tar"},{"type":"checksum"}],[{"type":"compress","output":"ok.tar"}]])");
  auto st = post::run(rec, {});
  BOOST_REQUIRE(!st.ok());
  BOOST_TEST(st.error().code == Exit::cantcreat);
  BOOST_TEST(st.error().step == "post-processor 0.0 (compress)");
  BOOST_TEST(st.error().message.rfind("post-processor 0.0 (compress): ", 0) == 0);
  BOOST_TEST(fs::exists("output-b"));
  BOOST_TEST(fs::exists("ok.tar"));  // the other chain still ran
  BOOST_TEST(rec["post"]["chains"][0][1]["status"].GetString() == std::string("skipped"));
  BOOST_TEST(ids(rec) == "transcend.qemu packer.post-processor.compress");
}

BOOST_AUTO_TEST_CASE(templates_are_rendered_with_the_build_and_its_variables) {
  InTempDir t;
  auto rec = record_with(R"([[{"type":"manifest","output":"{{.BuildName}}-{{user `v`}}.json",)"
                         R"("custom_data":{"t":"{{.BuilderType}}"}}]])");
  BOOST_REQUIRE(post::run(rec, {}).ok());
  BOOST_TEST(fs::exists("b-value.json"));
}

BOOST_AUTO_TEST_CASE(a_record_whose_post_processors_ran_is_refused) {
  InTempDir t;
  auto rec = record_with("[]");
  BOOST_REQUIRE(post::run(rec, {}).ok());
  auto again = post::run(rec, {});
  BOOST_REQUIRE(!again.ok());
  BOOST_TEST(again.error().code == Exit::dataerr);
}

BOOST_AUTO_TEST_CASE(an_interrupt_skips_what_is_left) {
  InTempDir t;
  signals::InterruptGuard guard;
  signals::raise_for_test(SIGINT);
  auto rec = record_with(R"([[{"type":"checksum"}]])");
  auto st = post::run(rec, {});
  signals::clear();
  BOOST_REQUIRE(!st.ok());
  BOOST_TEST(st.error().code == Exit::interrupted);
  BOOST_TEST(fs::exists("output-b"));
  BOOST_TEST(!fs::exists("packer_b_null_md5.checksum"));
}

BOOST_AUTO_TEST_CASE(standalone_records_are_normalized_like_templates) {
  InTempDir t;
  write("f.bin", "12345");
  post::Request req;
  req.name = "web";
  req.files = {"f.bin"};
  req.posts = {"checksum", R"({"type":"compress","output":"f.tar"})"};
  auto made = post::standalone_record(req);
  BOOST_REQUIRE(made.errors.empty());
  const auto& rec = *made.record;
  BOOST_TEST(rec["artifacts"][0]["builder_id"].GetString() == std::string("kiln.files"));
  BOOST_TEST(rec["artifacts"][0]["files"][0]["path"].GetString() ==
             (fs::current_path() / "f.bin").string());
  // The checksum's defaults are filled in, as template-validate fills them.
  BOOST_TEST(rec["build"]["post_processors"][0][0]["checksum_types"][0].GetString() ==
             std::string("md5"));

  req.posts = {R"({"type":"checksum","outptu":"x"})"};
  auto bad = post::standalone_record(req);
  BOOST_REQUIRE(bad.errors.size() == 1u);
  BOOST_TEST(bad.exit == Exit::dataerr);
  BOOST_TEST(bad.errors[0].message.find("\"outptu\"") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(post_arguments_are_types_or_json) {
  BOOST_TEST(post::check_post_argument("checksum").ok());
  BOOST_TEST(post::check_post_argument(R"({"type":"compress"})").ok());
  BOOST_TEST(post::check_post_argument(R"(["artifice","checksum"])").ok());
  BOOST_TEST(post::check_post_argument("{bad").error().code == Exit::usage);
  BOOST_TEST(post::check_post_argument("two words").error().code == Exit::usage);
}

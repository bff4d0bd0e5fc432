// SPDX-License-Identifier: MIT
#define BOOST_TEST_MODULE manifest
#include "manifest.hpp"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/test/unit_test.hpp>
#include <fstream>
#include <set>
#include <thread>

#include "atomic_file.hpp"
#include "json.hpp"
#include "signals.hpp"
#include "test_support.hpp"

using namespace kiln;
namespace fs = std::filesystem;

namespace {

template <class R>
std::string why(const R& r) {
  return r.ok() ? std::string() : r.error().message;
}

// Written by Packer 1.6.6 (file builder "b<1>", manifest post-processor
// with the custom_data below), byte for byte.
const std::string kPackerEscapes =
    "{\n"
    "  \"builds\": [\n"
    "    {\n"
    "      \"name\": \"b\\u003c1\\u003e\",\n"
    "      \"builder_type\": \"file\",\n"
    "      \"build_time\": 1795257738,\n"
    "      \"files\": [\n"
    "        {\n"
    "          \"name\": \"out/a b.txt\",\n"
    "          \"size\": 1\n"
    "        }\n"
    "      ],\n"
    "      \"artifact_id\": \"File\",\n"
    "      \"packer_run_uuid\": \"1faf3b37-2b08-9827-0465-6ac866f9a8be\",\n"
    "      \"custom_data\": {\n"
    "        \"A\": \"upper\",\n"
    "        \"k\": \"q\\\"\\\\\\n\\r\\t\\u0001\\u0008\\u000c\\u003c\\u003e\\u0026"
    "\\u2028\\u2029 \xc3\xa9 \x7f \xef\xbf\xbd end\",\n"
    "        \"z\": \"\"\n"
    "      }\n"
    "    }\n"
    "  ],\n"
    "  \"last_run_uuid\": \"1faf3b37-2b08-9827-0465-6ac866f9a8be\"\n"
    "}";

// Written by Packer 1.6.6 with strip_path and strip_time, no custom_data.
const std::string kPackerStripped =
    "{\n"
    "  \"builds\": [\n"
    "    {\n"
    "      \"name\": \"web\",\n"
    "      \"builder_type\": \"file\",\n"
    "      \"files\": [\n"
    "        {\n"
    "          \"name\": \"artifact.txt\",\n"
    "          \"size\": 18\n"
    "        }\n"
    "      ],\n"
    "      \"artifact_id\": \"File\",\n"
    "      \"packer_run_uuid\": \"19ace4a7-c64a-a2ef-ecf5-a13498c3af57\",\n"
    "      \"custom_data\": null\n"
    "    }\n"
    "  ],\n"
    "  \"last_run_uuid\": \"19ace4a7-c64a-a2ef-ecf5-a13498c3af57\"\n"
    "}";

}  // namespace

BOOST_AUTO_TEST_CASE(to_json_matches_packer_byte_for_byte) {
  manifest::Build b;
  b.name = "b<1>";
  b.builder_type = "file";
  b.build_time = 1795257738;
  b.files = std::vector<manifest::File>{{"out/a b.txt", 1}};
  b.artifact_id = "File";
  b.packer_run_uuid = "1faf3b37-2b08-9827-0465-6ac866f9a8be";
  b.custom_data = std::map<std::string, std::string>{
      {"z", ""},
      {"k", "q\"\\\n\r\t\x01\b\f<>&\u2028\u2029 \xc3\xa9 \x7f \xef\xbf\xbd end"},
      {"A", "upper"}};
  manifest::Manifest m;
  m.builds = std::vector<manifest::Build>{b};
  m.last_run_uuid = b.packer_run_uuid;
  BOOST_TEST(manifest::to_json(m) == kPackerEscapes);

  manifest::Build s;
  s.name = "web";
  s.builder_type = "file";
  s.files = std::vector<manifest::File>{{"artifact.txt", 18}};
  s.artifact_id = "File";
  s.packer_run_uuid = "19ace4a7-c64a-a2ef-ecf5-a13498c3af57";
  m.builds = std::vector<manifest::Build>{s};
  m.last_run_uuid = s.packer_run_uuid;
  BOOST_TEST(manifest::to_json(m) == kPackerStripped);
}

BOOST_AUTO_TEST_CASE(go_escapes_and_empty_values) {
  manifest::Build b;
  b.name = std::string("a\x00z\x1f\xff\xc3(\xe0\x80\x80\xed\xa0\x80\xf4\x90\x80\x80", 17);
  b.files = std::vector<manifest::File>{};
  b.custom_data = std::map<std::string, std::string>{};
  manifest::Manifest m;
  m.builds = std::vector<manifest::Build>{b};
  std::string json = manifest::to_json(m);
  // Invalid UTF-8 (a lone byte, a cut sequence, an overlong form, a
  // surrogate, past U+10FFFF) becomes \ufffd one byte at a time, as Go does.
  BOOST_TEST(json.find("\"name\": \"a\\u0000z\\u001f\\ufffd\\ufffd(\\ufffd\\ufffd\\ufffd"
                       "\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd\",") != std::string::npos,
             json);
  BOOST_TEST(json.find("\"files\": [],") != std::string::npos);
  BOOST_TEST(json.find("\"custom_data\": {}\n") != std::string::npos);
  BOOST_TEST(json.find("build_time") == std::string::npos);
  manifest::Manifest empty;
  BOOST_TEST(manifest::to_json(empty) == "{\n  \"builds\": null,\n  \"last_run_uuid\": \"\"\n}");
}

BOOST_AUTO_TEST_CASE(parse_reads_packers_files_back_unchanged) {
  for (const auto& text : {kPackerEscapes, kPackerStripped}) {
    auto m = manifest::parse(text, "m.json");
    BOOST_REQUIRE_MESSAGE(m.ok(), why(m));
    BOOST_TEST(manifest::to_json(*m) == text);
  }
}

BOOST_AUTO_TEST_CASE(parse_follows_go_unmarshal) {
  // Keys match ignoring case, the last duplicate wins, unknown keys go,
  // null leaves a field empty.
  auto m = manifest::parse(
      R"({"Builds":[{"NAME":"x","name":"y","extra":1,"Files":[{"Name":"f","SIZE":3},null],
          "build_time":null,"custom_data":{"k":null}}, null],"last_run_uuid":null})",
      "m.json");
  BOOST_REQUIRE_MESSAGE(m.ok(), why(m));
  BOOST_REQUIRE(m->builds.has_value());
  BOOST_REQUIRE_EQUAL(m->builds->size(), 2u);
  const auto& b = (*m->builds)[0];
  BOOST_TEST(b.name == "y");
  BOOST_TEST(b.build_time == 0);
  BOOST_REQUIRE(b.files.has_value());
  BOOST_REQUIRE_EQUAL(b.files->size(), 2u);
  BOOST_TEST((*b.files)[0].name == "f");
  BOOST_TEST((*b.files)[0].size == 3);
  BOOST_TEST((*b.files)[1].name == "");
  BOOST_REQUIRE(b.custom_data.has_value());
  BOOST_TEST(b.custom_data->at("k") == "");
  BOOST_TEST(!(*m->builds)[1].files.has_value());
  BOOST_TEST(manifest::parse("null", "m").ok());
  // Invalid UTF-8 is read (Go makes it U+FFFD) and written back as \ufffd.
  auto latin1 = manifest::parse("{\"builds\":[{\"name\":\"caf\xe9\"}]}", "m");
  BOOST_REQUIRE_MESSAGE(latin1.ok(), why(latin1));
  BOOST_TEST(manifest::to_json(*latin1).find("\"name\": \"caf\\ufffd\",") != std::string::npos);

  for (const char* bad :
       {"[]", "{\"builds\":{}}", "{\"builds\":[{\"build_time\":1.5}]}",
        "{\"builds\":[{\"build_time\":\"1\"}]}", "{\"builds\":[{\"files\":[{\"size\":1e3}]}]}",
        "{\"builds\":[{\"custom_data\":{\"a\":1}}]}", "{\"last_run_uuid\":5}", "{\"builds\":[", "",
        "{} x"}) {
    auto r = manifest::parse(bad, "m.json");
    BOOST_TEST(!r.ok(), bad);
    if (!r.ok()) {
      BOOST_TEST((r.error().code == Exit::dataerr));
      BOOST_TEST(r.error().message.find("m.json") != std::string::npos);
    }
  }
}

BOOST_AUTO_TEST_CASE(entry_stats_files_and_strips) {
  testing::TempDir dir;
  std::ofstream(dir.path / "disk.qcow2") << "12345";
  manifest::Artifact a{
      "web", "qemu", "VM", {(dir.path / "disk.qcow2").string(), (dir.path / "gone").string()}};
  manifest::Options o;
  auto e = manifest::entry(a, o, 1700000000);
  BOOST_TEST(e.build_time == 1700000000);
  BOOST_REQUIRE(e.files.has_value());
  BOOST_TEST((*e.files)[0].name == (dir.path / "disk.qcow2").string());
  BOOST_TEST((*e.files)[0].size == 5);
  BOOST_TEST((*e.files)[1].size == 0);
  BOOST_TEST(!e.custom_data.has_value());
  o.strip_path = true;
  o.strip_time = true;
  o.custom_data = std::map<std::string, std::string>{{"k", "v"}};
  o.run_uuid = "u1";
  e = manifest::entry(a, o, 1700000000);
  BOOST_TEST(e.build_time == 0);
  BOOST_TEST((*e.files)[0].name == "disk.qcow2");
  BOOST_TEST(e.packer_run_uuid == "u1");
  BOOST_TEST(e.custom_data->at("k") == "v");
  a.files.clear();
  BOOST_TEST(!manifest::entry(a, o, 1).files.has_value());
}

BOOST_AUTO_TEST_CASE(record_appends_across_runs_and_force_starts_afresh) {
  testing::TempDir dir;
  manifest::Options o;
  o.output = (dir.path / "sub" / "m.json").string();
  o.run_uuid = "run-1";
  manifest::Artifact a{"one", "qemu", "id1", {}};
  auto w = manifest::record(a, o, 100);
  BOOST_REQUIRE_MESSAGE(w.ok(), why(w));
  BOOST_TEST(*w == o.output);
  a.build_name = "two";
  BOOST_REQUIRE(manifest::record(a, o, 200).ok());
  o.run_uuid = "run-2";
  a.build_name = "three";
  BOOST_REQUIRE(manifest::record(a, o, 300).ok());  // no force: appended
  auto text = read_file(o.output);
  BOOST_REQUIRE(text.ok());
  auto m = manifest::parse(*text, "m");
  BOOST_REQUIRE(m.ok());
  BOOST_REQUIRE_EQUAL(m->builds->size(), 3u);
  BOOST_TEST(m->last_run_uuid == "run-2");
  BOOST_TEST((*m->builds)[0].packer_run_uuid == "run-1");
  BOOST_TEST((*m->builds)[2].name == "three");
  BOOST_TEST((*m->builds)[2].build_time == 300);
  BOOST_TEST(text->back() == '}');

  o.force = true;  // same run: kept
  a.build_name = "four";
  BOOST_REQUIRE(manifest::record(a, o, 400).ok());
  m = manifest::parse(*read_file(o.output), "m");
  BOOST_TEST(m->builds->size() == 4u);
  o.run_uuid = "run-3";  // another run with -force: truncated
  a.build_name = "five";
  BOOST_REQUIRE(manifest::record(a, o, 500).ok());
  m = manifest::parse(*read_file(o.output), "m");
  BOOST_REQUIRE_EQUAL(m->builds->size(), 1u);
  BOOST_TEST((*m->builds)[0].name == "five");
  BOOST_TEST(!fs::exists(o.output + ".lock"));

  // A manifest that does not parse is an error and stays as it was.
  std::ofstream(o.output, std::ios::trunc) << "{broken";
  auto bad = manifest::record(a, o, 600);
  BOOST_REQUIRE(!bad.ok());
  BOOST_TEST((bad.error().code == Exit::dataerr));
  BOOST_TEST(*read_file(o.output) == "{broken");
}

BOOST_AUTO_TEST_CASE(lock_times_out_and_stops_on_interrupt) {
  testing::TempDir dir;
  fs::path target = dir.path / "m.json";
  auto held = manifest::UpdateLock::acquire(target);
  BOOST_REQUIRE(held.ok());
  auto second = manifest::UpdateLock::acquire(target, std::chrono::milliseconds(100));
  BOOST_REQUIRE(!second.ok());
  BOOST_TEST((second.error().code == Exit::tempfail));
  BOOST_TEST(fs::exists(dir.path / "m.json.lock"));  // the holder's, kept

  std::thread interrupter([] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    signals::raise_for_test(SIGTERM);
  });
  auto third = manifest::UpdateLock::acquire(target, std::chrono::milliseconds(5000));
  interrupter.join();
  signals::clear();
  BOOST_REQUIRE(!third.ok());
  BOOST_TEST((third.error().code == Exit::interrupted));
  { auto release = std::move(*held); }
  BOOST_TEST(!fs::exists(dir.path / "m.json.lock"));
  BOOST_TEST(manifest::UpdateLock::acquire(target, std::chrono::milliseconds(100)).ok());
}

// Several processes, each with several threads, append at once: every
// entry arrives.
BOOST_AUTO_TEST_CASE(parallel_appends_from_processes_and_threads_lose_nothing) {
  testing::TempDir dir;
  const std::string output = (dir.path / "packer-manifest.json").string();
  const int processes = 4, threads = 3, rounds = 10;
  std::vector<pid_t> children;
  for (int p = 0; p < processes; ++p) {
    pid_t pid = ::fork();
    BOOST_REQUIRE(pid >= 0);
    if (pid == 0) {
      std::vector<std::thread> ts;
      std::atomic<int> failures{0};
      for (int t = 0; t < threads; ++t)
        ts.emplace_back([&, t] {
          manifest::Options o;
          o.output = output;
          o.run_uuid = "run";
          for (int r = 0; r < rounds; ++r) {
            manifest::Artifact a{
                "p" + std::to_string(p) + "t" + std::to_string(t) + "r" + std::to_string(r),
                "qemu",
                "",
                {}};
            if (!manifest::record(a, o, 1).ok()) ++failures;
          }
        });
      for (auto& t : ts) t.join();
      ::_exit(failures == 0 ? 0 : 1);
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    BOOST_TEST((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  }
  auto text = read_file(output);
  BOOST_REQUIRE(text.ok());
  auto m = manifest::parse(*text, output);
  BOOST_REQUIRE_MESSAGE(m.ok(), why(m));
  std::set<std::string> names;
  for (const auto& b : *m->builds) names.insert(b.name);
  BOOST_TEST(m->builds->size() == size_t{processes * threads * rounds});
  BOOST_TEST(names.size() == size_t{processes * threads * rounds});
  size_t leftovers = 0;
  for (const auto& e : fs::directory_iterator(dir.path))
    leftovers += e.path().filename() != "packer-manifest.json";
  BOOST_TEST(leftovers == 0u);
}

#define BOOST_TEST_MODULE record
#include "record.hpp"

#include <boost/test/unit_test.hpp>
#include <sstream>

#include "json.hpp"

using namespace kiln;

namespace {
const char* kBuild =
    R"({"kiln":1,"build":{"name":"web","type":"qemu","builder":{"type":"qemu"},)"
    R"("provisioners":[],"error_cleanup_provisioner":null,"post_processors":[],)"
    R"("captures":["qcow2"],"on_error":"cleanup","template":{"path":"/t.json",)"
    R"("dir":"/","sha256":"0000000000000000000000000000000000000000000000000000000000000000"},)"
    R"("variables":{},"sensitive":[],"run_uuid":"u","timestamp":1},"x-mine":{"kept":true}})";
}

BOOST_AUTO_TEST_CASE(reads_records_and_keeps_unknown_keys) {
  std::istringstream in(std::string(kBuild) + "\n\n" + kBuild + "\n");
  record::Reader r(in, "-");
  auto a = r.next();
  BOOST_REQUIRE(a.ok());
  BOOST_REQUIRE(a->has_value());
  BOOST_TEST((**a)["x-mine"]["kept"].GetBool());
  BOOST_TEST(record::build_name(**a) == "web");
  auto b = r.next();
  BOOST_REQUIRE(b.ok() && b->has_value());
  BOOST_TEST(r.line() == 3);
  auto end = r.next();
  BOOST_REQUIRE(end.ok());
  BOOST_TEST(!end->has_value());
  // Round trip: what is written reads back the same.
  BOOST_TEST(record::serialize(**a) == std::string(kBuild) + "\n");
}

BOOST_AUTO_TEST_CASE(truncated_record_is_rejected_with_its_line) {
  std::string cut = std::string(kBuild).substr(0, 60);
  std::istringstream in(std::string(kBuild) + "\n" + cut);
  record::Reader r(in, "records.jsonl");
  BOOST_REQUIRE(r.next().ok());
  auto bad = r.next();
  BOOST_REQUIRE(!bad.ok());
  BOOST_TEST(bad.error().code == Exit::dataerr);
  BOOST_TEST(bad.error().message.find("records.jsonl:2: truncated") == 0);
}

BOOST_AUTO_TEST_CASE(schema_violations_name_the_key) {
  std::string rec = kBuild;
  rec.replace(rec.find("\"cleanup\""), 9, "\"explode\"");
  std::istringstream in(rec + "\n");
  record::Reader r(in, "-");
  auto bad = r.next();
  BOOST_REQUIRE(!bad.ok());
  BOOST_TEST_MESSAGE(bad.error().message);
  BOOST_TEST(bad.error().message.find("stdin:1: bad record: /build/on_error") == 0);
  BOOST_TEST(bad.error().message.find("cleanup, abort, ask") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(rejects_non_objects_and_newer_versions) {
  std::istringstream a("[1,2]\n");
  BOOST_TEST(!record::Reader(a, "-").next().ok());
  std::istringstream b("{\"kiln\":2,\"error\":{\"tool\":\"x\",\"exit\":1,\"message\":\"m\"}}\n");
  auto r = record::Reader(b, "-").next();
  BOOST_REQUIRE(!r.ok());
  BOOST_TEST(r.error().message.find("newer") != std::string::npos);
  std::istringstream c("{\"kiln\":1}\n");
  BOOST_TEST(!record::Reader(c, "-").next().ok());  // neither build nor error
}

BOOST_AUTO_TEST_CASE(error_records_are_valid_and_redacted) {
  json::Document rec;
  BOOST_REQUIRE(json::parse(kBuild, rec).ok());
  Error e(Exit::protocol, "password hunter2 refused", Location{"t.json", 2, 3, "/builders/0"});
  e.step = "connect";
  record::set_error(rec, "provision", e, "web", {}, {"hunter2"});
  BOOST_TEST(record::failed(rec));
  BOOST_TEST(record::validate(rec).ok());
  BOOST_TEST(rec["error"]["exit"].GetInt() == 76);
  BOOST_TEST(std::string(rec["error"]["message"].GetString()) == "password <sensitive> refused");
  BOOST_TEST(rec["error"]["line"].GetInt() == 2);
  BOOST_TEST(rec["x-mine"]["kept"].GetBool());
}

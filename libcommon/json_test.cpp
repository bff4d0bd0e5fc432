#define BOOST_TEST_MODULE json
#include "json.hpp"

#include <boost/test/unit_test.hpp>

using namespace kiln;

BOOST_AUTO_TEST_CASE(locates_keys_and_elements) {
  std::string text = "{\n  \"builders\": [\n    {\"type\": \"qemu\",\n     \"cpus\": 2}\n  ]\n}\n";
  json::Document doc;
  json::SourceMap map;
  Errors dups;
  BOOST_REQUIRE(json::parse(text, "t.json", doc, map, dups).ok());
  BOOST_TEST(dups.empty());
  auto cpus = map.locate("/builders/0/cpus");
  BOOST_TEST(cpus.file == "t.json");
  BOOST_TEST(cpus.line == 4);
  BOOST_TEST(cpus.column == 6);
  auto elem = map.locate("/builders/0");
  BOOST_TEST(elem.line == 3);
  BOOST_TEST(elem.column == 5);
  // An unknown child falls back to its nearest recorded ancestor.
  auto missing = map.locate("/builders/0/nope");
  BOOST_TEST(missing.line == 3);
  BOOST_TEST(missing.pointer == "/builders/0/nope");
}

BOOST_AUTO_TEST_CASE(escaped_keys_are_located_at_their_quote) {
  std::string text = R"({"a\"b": 1, "c/d": {"e~f": true}})";
  json::Document doc;
  json::SourceMap map;
  Errors dups;
  BOOST_REQUIRE(json::parse(text, "x", doc, map, dups).ok());
  BOOST_TEST(map.locate("/a\"b").column == 2);
  BOOST_TEST(map.locate("/c~1d/e~0f").column == 21);
}

BOOST_AUTO_TEST_CASE(duplicate_keys_are_reported_not_fatal) {
  std::string text = "{\"a\": 1,\n \"a\": 2, \"b\": {\"x\": 1, \"x\": 1}}";
  json::Document doc;
  json::SourceMap map;
  Errors dups;
  BOOST_REQUIRE(json::parse(text, "d.json", doc, map, dups).ok());
  BOOST_REQUIRE_EQUAL(dups.size(), 2u);
  BOOST_TEST(dups[0].message == "duplicate key \"a\"");
  BOOST_TEST(dups[0].where.line == 2);
  BOOST_TEST(dups[0].where.column == 2);
  BOOST_TEST(dups[1].where.pointer == "/b/x");
}

BOOST_AUTO_TEST_CASE(syntax_error_has_location_and_caret) {
  std::string text = "{\n  \"a\": 1,\n  \"b\": tru\n}";
  json::Document doc;
  json::SourceMap map;
  Errors dups;
  auto st = json::parse(text, "s.json", doc, map, dups);
  BOOST_REQUIRE(!st.ok());
  BOOST_TEST(st.error().code == Exit::dataerr);
  BOOST_TEST(st.error().where.line == 3);
  BOOST_TEST(st.error().message.find("invalid JSON") == 0);
  std::string quote = json::quote_line(map, st.error().where);
  BOOST_TEST(quote.find("3 |   \"b\": tru") != std::string::npos);
  BOOST_TEST(quote.find('^') != std::string::npos);
}

BOOST_AUTO_TEST_CASE(trailing_comma_and_truncation_are_errors) {
  json::Document doc;
  json::SourceMap map;
  Errors dups;
  BOOST_TEST(!json::parse("{\"a\": [1,]}", "t", doc, map, dups).ok());
  BOOST_TEST(!json::parse("{\"a\": ", "t", doc, map, dups).ok());
  BOOST_TEST(!json::parse("", "t", doc, map, dups).ok());
}

BOOST_AUTO_TEST_CASE(deep_nesting_does_not_overflow) {
  std::string text(100000, '[');
  json::Document doc;
  json::SourceMap map;
  Errors dups;
  auto st = json::parse(text, "deep", doc, map, dups);
  BOOST_REQUIRE(!st.ok());
  BOOST_TEST(st.error().message.find("nested more than") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(serializes_compact_and_pretty) {
  json::Document doc;
  BOOST_REQUIRE(json::parse(R"({"a":[1,"x"]})", doc).ok());
  BOOST_TEST(json::to_string(doc) == R"({"a":[1,"x"]})");
  BOOST_TEST(json::to_string(doc, true).find("\n  \"a\"") != std::string::npos);
  BOOST_TEST(json::pointer_token("a/b~c") == "a~1b~0c");
}

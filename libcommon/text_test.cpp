#define BOOST_TEST_MODULE text
#include "text.hpp"

#include <boost/test/unit_test.hpp>

using namespace kiln;

BOOST_AUTO_TEST_CASE(edit_distance_counts_transpositions_once) {
  BOOST_TEST(text::edit_distance("ssh_username", "ssh_usernme") == 1u);
  BOOST_TEST(text::edit_distance("cpus", "cups") == 1u);
  BOOST_TEST(text::edit_distance("", "abc") == 3u);
}

BOOST_AUTO_TEST_CASE(suggests_only_close_words) {
  std::vector<std::string> keys = {"ssh_username", "ssh_password", "memory"};
  BOOST_TEST(text::suggest("ssh_usernme", keys) == "ssh_username");
  BOOST_TEST(text::suggest("memroy", keys) == "memory");
  BOOST_TEST(text::suggest("banana", keys) == "");
}

BOOST_AUTO_TEST_CASE(globs) {
  BOOST_TEST(text::glob_match("qemu-*", "qemu-web"));
  BOOST_TEST(!text::glob_match("qemu-*", "null"));
  BOOST_TEST(text::glob_match("*", ""));
  BOOST_TEST(text::glob_match("a?c", "abc"));
  BOOST_TEST(text::glob_match("[ab]x", "bx"));
  BOOST_TEST(!text::glob_match("[!ab]x", "bx"));
  BOOST_TEST(text::glob_match("*-*-end", "a-b-c-end"));
  BOOST_TEST(!text::glob_match("web", "web2"));
}

BOOST_AUTO_TEST_CASE(lists) {
  auto l = text::split_list(" a, b ,,c ");
  BOOST_REQUIRE_EQUAL(l.size(), 3u);
  BOOST_TEST(l[1] == "b");
  BOOST_TEST(text::join(l, "+") == "a+b+c");
  BOOST_TEST(text::replace_all("aXbXc", "X", "--") == "a--b--c");
}

BOOST_AUTO_TEST_CASE(go_base_follows_gos_filepath_base) {
  BOOST_TEST(kiln::text::go_base("") == ".");
  BOOST_TEST(kiln::text::go_base("/") == "/");
  BOOST_TEST(kiln::text::go_base("///") == "/");
  BOOST_TEST(kiln::text::go_base("a/b/c.qcow2") == "c.qcow2");
  BOOST_TEST(kiln::text::go_base("out/dir//") == "dir");
  BOOST_TEST(kiln::text::go_base("plain") == "plain");
}

BOOST_AUTO_TEST_CASE(base64_round_trips_any_bytes) {
  BOOST_TEST(text::base64("") == "");
  BOOST_TEST(text::base64("f") == "Zg==");
  BOOST_TEST(text::base64("foobar") == "Zm9vYmFy");
  std::string bytes;
  for (int i = 0; i < 256; ++i) bytes += static_cast<char>(i);
  std::string back;
  BOOST_TEST(text::unbase64(text::base64(bytes), back));
  BOOST_TEST(back == bytes);
  BOOST_TEST(text::unbase64("Zm8=", back));
  BOOST_TEST(back == "fo");
  BOOST_TEST(text::unbase64("", back));
  BOOST_TEST(back.empty());
  BOOST_TEST(!text::unbase64("Zm8", back));   // not padded
  BOOST_TEST(!text::unbase64("Zm*=", back));  // not base64
}

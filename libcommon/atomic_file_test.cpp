#define BOOST_TEST_MODULE atomic_file
#include "atomic_file.hpp"

#include <boost/test/unit_test.hpp>
#include <filesystem>

#include "test_support.hpp"

using namespace kiln;
namespace fs = std::filesystem;

namespace {
using kiln::testing::TempDir;

size_t entries(const TempDir& d) {
  return static_cast<size_t>(std::distance(fs::directory_iterator(d.path), {}));
}
}  // namespace

BOOST_AUTO_TEST_CASE(appears_only_on_commit) {
  TempDir d;
  fs::path target = d.path / "out.txt";
  auto f = AtomicFile::create(target, 0600);
  BOOST_REQUIRE(f.ok());
  BOOST_REQUIRE(f->write("hello").ok());
  BOOST_TEST(!fs::exists(target));
  BOOST_TEST(entries(d) == 1u);
  BOOST_REQUIRE(f->commit().ok());
  BOOST_TEST(fs::exists(target));
  BOOST_TEST(*read_file(target) == "hello");
  BOOST_TEST(static_cast<int>(fs::status(target).permissions() & fs::perms::all) == 0600);
}

BOOST_AUTO_TEST_CASE(abandoned_file_leaves_nothing) {
  TempDir d;
  {
    auto f = AtomicFile::create(d.path / "x.img");
    BOOST_REQUIRE(f.ok());
    BOOST_REQUIRE(f->write("partial").ok());
  }
  BOOST_TEST(entries(d) == 0u);
}

BOOST_AUTO_TEST_CASE(replaces_existing_target_whole) {
  TempDir d;
  fs::path target = d.path / "f";
  BOOST_REQUIRE(write_file_atomically(target, "old").ok());
  BOOST_REQUIRE(write_file_atomically(target, "new contents").ok());
  BOOST_TEST(*read_file(target) == "new contents");
  BOOST_TEST(entries(d) == 1u);
}

BOOST_AUTO_TEST_CASE(errors_name_the_file) {
  auto r = read_file("/nonexistent/kiln/file");
  BOOST_REQUIRE(!r.ok());
  BOOST_TEST(r.error().code == Exit::noinput);
  BOOST_TEST(r.error().message.find("/nonexistent/kiln/file") != std::string::npos);
  auto c = AtomicFile::create("/nonexistent/dir/out");
  BOOST_REQUIRE(!c.ok());
  BOOST_TEST(c.error().code == Exit::cantcreat);
}

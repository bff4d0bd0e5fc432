#define BOOST_TEST_MODULE template
#include "template.hpp"

#include <unistd.h>

#include <boost/test/unit_test.hpp>
#include <filesystem>

#include "json.hpp"

using namespace kiln;
namespace fs = std::filesystem;

namespace {

templates::Outcome load(const std::string& text,
                        std::vector<templates::Request::VarSource> vars = {},
                        std::vector<std::string> only = {}) {
  templates::Request r;
  r.path = "/srv/t/web.json";
  r.template_text = text;
  r.timestamp = 1136239445;
  r.vars = std::move(vars);
  r.only = std::move(only);
  return templates::load(r);
}

std::string messages(const templates::Outcome& o) {
  std::string s;
  for (const Error& e : o.errors) s += e.message + "\n";
  return s;
}

const char* kNull = R"({
  "variables": {"user": "root", "pw": null},
  "sensitive-variables": ["pw"],
  "builders": [{"type": "null", "ssh_host": "127.0.0.1",
                "ssh_username": "{{user `user`}}", "ssh_password": "{{user `pw`}}"}],
  "provisioners": [{"type": "shell", "inline": ["echo {{build_name}}"],
                    "pause_before": "1m30s"}],
  "post-processors": ["manifest", [{"type": "checksum", "checksum_types": "sha256"}]]
})";

}  // namespace

BOOST_AUTO_TEST_CASE(normalizes_a_build) {
  auto o = load(kNull, {{false, "pw=hunter2"}});
  BOOST_REQUIRE_MESSAGE(o.errors.empty(), messages(o));
  BOOST_REQUIRE_EQUAL(o.builds.size(), 1u);
  const auto& b = o.builds[0];
  BOOST_TEST(std::string(b["name"].GetString()) == "null");
  BOOST_TEST(std::string(b["builder"]["ssh_username"].GetString()) == "root");
  BOOST_TEST(std::string(b["provisioners"][0]["inline"][0].GetString()) == "echo null");
  BOOST_TEST(b["provisioners"][0]["pause_before"].GetDouble() == 90.0);
  BOOST_TEST(b["post_processors"].Size() == 2u);
  // A single checksum type is lifted into a list, as Packer decodes it.
  BOOST_TEST(b["post_processors"][1][0]["checksum_types"].IsArray());
  BOOST_TEST(std::string(b["template"]["dir"].GetString()) == "/srv/t");
  BOOST_TEST(b["timestamp"].GetInt64() == 1136239445);
  // The password is secret wherever it ends up.
  BOOST_TEST((std::find(o.secrets.begin(), o.secrets.end(), "hunter2") != o.secrets.end()));
  bool marked = false;
  for (const auto& p : b["sensitive"].GetArray())
    if (std::string(p.GetString()) == "/builder/ssh_password") marked = true;
  BOOST_TEST(marked);
}

BOOST_AUTO_TEST_CASE(missing_required_variable) {
  auto o = load(kNull);
  BOOST_TEST(o.exit == Exit::dataerr);
  BOOST_TEST(messages(o).find("required variable not set: pw") != std::string::npos);
  BOOST_TEST(o.builds.empty());
}

BOOST_AUTO_TEST_CASE(reports_every_error_with_its_place) {
  auto o = load(R"({
  "builders": [{"type": "null", "ssh_host": "h", "ssh_usernme": "x", "ssh_port": "twenty"}],
  "provisioners": [{"type": "shel", "inline": ["x"]}]
})");
  BOOST_TEST(o.exit == Exit::dataerr);
  std::string m = messages(o);
  BOOST_TEST(m.find("did you mean \"ssh_username\"") != std::string::npos, m);
  BOOST_TEST(m.find("did you mean \"shell\"") != std::string::npos, m);
  BOOST_TEST(m.find("ssh_port") != std::string::npos, m);
  bool located = false;
  for (const Error& e : o.errors)
    if (e.where.pointer == "/builders/0/ssh_usernme") {
      BOOST_TEST(e.where.line == 2);
      BOOST_TEST(e.where.column == 50);
      located = true;
    }
  BOOST_TEST(located);
}

BOOST_AUTO_TEST_CASE(weak_typing_as_packer) {
  auto o = load(R"({"builders": [{"type": "null", "ssh_host": "h", "ssh_username": "u",
    "ssh_password": "p", "ssh_port": "0x16", "ssh_pty": "true", "ssh_timeout": "2m"}]})");
  BOOST_REQUIRE_MESSAGE(o.errors.empty(), messages(o));
  const auto& b = o.builds[0]["builder"];
  BOOST_TEST(b["ssh_port"].GetInt() == 22);
  BOOST_TEST(b["ssh_pty"].GetBool());
  BOOST_TEST(b["ssh_timeout"].GetDouble() == 120.0);
  auto bad = load(R"({"builders": [{"type": "null", "ssh_host": "h", "ssh_username": "u",
    "ssh_password": "p", "ssh_port": " 22"}]})");
  BOOST_TEST(!bad.errors.empty());
}

BOOST_AUTO_TEST_CASE(duplicate_keys_and_unknown_root_keys) {
  auto o = load(R"({"builders": [], "builders": [], "bulders": 1})");
  std::string m = messages(o);
  BOOST_TEST(m.find("duplicate key \"builders\"") != std::string::npos, m);
  BOOST_TEST(m.find("did you mean \"builders\"") != std::string::npos, m);
}

BOOST_AUTO_TEST_CASE(only_selects_builds_by_name_or_glob) {
  std::string t = R"({"builders": [
    {"type": "null", "name": "qemu-a", "communicator": "none"},
    {"type": "null", "name": "qemu-b", "communicator": "none"},
    {"type": "null", "name": "other", "communicator": "none"}]})";
  BOOST_TEST(load(t, {}, {"qemu-*"}).builds.size() == 2u);
  BOOST_TEST(load(t, {}, {"other"}).builds.size() == 1u);
  auto none = load(t, {}, {"nothing"});
  BOOST_TEST(none.errors.empty());
  BOOST_TEST(none.builds.empty());
  BOOST_TEST(!none.warnings.empty());
}

BOOST_AUTO_TEST_CASE(var_files_apply_before_vars) {
  char dir[] = "/tmp/kiln-template-test-XXXXXX";
  BOOST_REQUIRE(::mkdtemp(dir));
  std::string file = std::string(dir) + "/v.json";
  {
    std::FILE* f = std::fopen(file.c_str(), "w");
    std::fputs("{\"user\": \"from-file\"}", f);
    std::fclose(f);
  }
  auto o = load(kNull, {{false, "user=from-var"}, {true, file}, {false, "pw=x"}});
  BOOST_REQUIRE_MESSAGE(o.errors.empty(), messages(o));
  BOOST_TEST(std::string(o.builds[0]["builder"]["ssh_username"].GetString()) == "from-var");
  fs::remove_all(dir);
}

BOOST_AUTO_TEST_CASE(nested_chain_is_an_error) {
  auto o = load(R"({"builders": [{"type": "null", "communicator": "none"}],
    "post-processors": [["manifest", ["checksum"]]]})");
  BOOST_TEST(messages(o).find("cannot contain another chain") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(syntax_errors_stop_at_once) {
  auto o = load("{\"builders\": [}");
  BOOST_REQUIRE_EQUAL(o.errors.size(), 1u);
  BOOST_TEST(o.errors[0].where.line == 1);
  BOOST_TEST(o.errors[0].where.column == 15);
}

BOOST_AUTO_TEST_CASE(existing_output_directory_needs_force) {
  char dir[] = "/tmp/kiln-template-test-XXXXXX";
  BOOST_REQUIRE(::mkdtemp(dir));
  fs::create_directory(std::string(dir) + "/output-q");
  std::string t = R"({"builders": [{"type": "qemu", "name": "q", "iso_url": "base.qcow2",
    "iso_checksum": "none", "disk_image": true, "ssh_username": "root"}]})";
  templates::Request r;
  r.path = std::string(dir) + "/t.json";
  r.template_text = t;
  auto refused = templates::load(r);
  BOOST_TEST(messages(refused).find("already exists") != std::string::npos, messages(refused));
  r.force = true;
  auto forced = templates::load(r);
  BOOST_TEST(forced.errors.empty(), messages(forced));
  BOOST_REQUIRE_EQUAL(forced.builds.size(), 1u);
  BOOST_TEST(forced.builds[0]["force"].GetBool());
  BOOST_TEST(std::string(forced.builds[0]["builder"]["output_directory"].GetString()) ==
             std::string(dir) + "/output-q");
  fs::remove_all(dir);
}

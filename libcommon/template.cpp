// SPDX-License-Identifier: MIT
#include "template.hpp"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <tuple>

#include "atomic_file.hpp"
#include "digest.hpp"
#include "gotime.hpp"
#include "json.hpp"
#include "schema.hpp"
#include "template_rules.hpp"
#include "template_text.hpp"
#include "text.hpp"

namespace kiln::templates {

namespace {

namespace fs = std::filesystem;
using rapidjson::Value;
using Alloc = rapidjson::Document::AllocatorType;

const char* const kSchema = "template.schema.json";

/// One plugin object of the template (builder, provisioner or
/// post-processor step) and where it sits.
struct Plugin {
  std::string pointer;  ///< e.g. /provisioners/2 or /post-processors/1/0
  std::string type;
  const Value* raw = nullptr;  ///< nullptr for a post-processor given by name
  std::string label;           ///< "provisioner 3 (shell)" for messages
};

struct Builder {
  Plugin plugin;
  std::string name;
};

/// Compares versions "1.6.6" numerically, part by part.
int compare_versions(const std::string& a, const std::string& b) {
  auto parts = [](const std::string& v) {
    std::vector<long> out;
    std::string s = v;
    if (!s.empty() && (s[0] == 'v' || s[0] == 'V')) s.erase(0, 1);
    for (const std::string& p : text::split_list(s, '.')) {
      out.push_back(std::strtol(p.c_str(), nullptr, 10));
    }
    return out;
  };
  auto pa = parts(a), pb = parts(b);
  size_t n = std::max(pa.size(), pb.size());
  pa.resize(n, 0);
  pb.resize(n, 0);
  for (size_t i = 0; i < n; ++i)
    if (pa[i] != pb[i]) return pa[i] < pb[i] ? -1 : 1;
  return 0;
}

bool valid_version(const std::string& v) {
  std::string s = v;
  if (!s.empty() && (s[0] == 'v' || s[0] == 'V')) s.erase(0, 1);
  if (s.empty()) return false;
  bool digit = false;
  for (char c : s) {
    if (c >= '0' && c <= '9') {
      digit = true;
    } else if (c == '.') {
      if (!digit) return false;
      digit = false;
    } else if (c == '-' || c == '+') {
      return digit;  // pre-release or build metadata follows
    } else {
      return false;
    }
  }
  return digit;
}

/// Go's strconv.FormatFloat(f, 'f', -1, 64) for the values templates hold.
std::string format_float(double d) {
  if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 1e18) {
    return std::to_string(static_cast<long long>(d));
  }
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::fixed);
  return std::string(buf, r.ptr);
}

/// mapstructure's weak conversion of a JSON value to a Go string.
std::optional<std::string> weak_string(const Value& v) {
  if (v.IsString()) return std::string(v.GetString(), v.GetStringLength());
  if (v.IsBool()) return std::string(v.GetBool() ? "1" : "0");
  if (v.IsInt64()) return std::to_string(v.GetInt64());
  if (v.IsUint64()) return std::to_string(v.GetUint64());
  if (v.IsNumber()) return format_float(v.GetDouble());
  return std::nullopt;
}

std::string shown(const Value& v) {
  if (v.IsString()) return "\"" + std::string(v.GetString()) + "\"";
  std::string s = json::to_string(v);
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

class Loader {
 public:
  Loader(const Request& request, Outcome& out) : req_(request), out_(out) {}

  void run();

 private:
  // --- reporting -------------------------------------------------------
  void error(const std::string& pointer, std::string message) {
    Error e(Exit::dataerr, std::move(message), map_.locate(pointer));
    for (const Error& seen : out_.errors)
      if (seen.message == e.message && seen.where.pointer == e.where.pointer)
        return;  // one provisioner checked for several builds
    out_.errors.push_back(std::move(e));
  }
  void warning(const std::string& pointer, std::string message) {
    Error e(Exit::dataerr, std::move(message), map_.locate(pointer));
    for (const Error& seen : out_.warnings)
      if (seen.message == e.message && seen.where.pointer == e.where.pointer) return;
    out_.warnings.push_back(std::move(e));
  }
  void fail_input(Error e) {
    out_.exit = e.code;
    out_.errors.push_back(std::move(e));
  }

  // --- steps -----------------------------------------------------------
  bool read_template();
  void check_root();
  void collect_builders();
  void collect_provisioners();
  void collect_post_processors();
  bool check_plugin_object(const Value& v, const std::string& pointer, const char* kind,
                           Plugin& out);
  void check_run_list(Value& obj, const std::string& pointer, const std::string& label,
                      bool strict);
  bool read_user_variables();
  void resolve_variables();
  void check_min_version();
  bool selected(const std::string& name) const;
  void make_build(const Builder& b);

  // --- normalization ---------------------------------------------------
  tmpl::Context context(const Builder* b) const;
  void interpolate(Value& v, const std::string& pointer, const tmpl::Context& c, Alloc& a);
  std::optional<Value> normalize(rules::Kind kind, const Plugin& p, const Builder& b, Alloc& a,
                                 const Value* override_obj = nullptr,
                                 const std::string& override_ptr = {});
  void coerce(Value& v, const Value& prop, const std::string& pointer, const std::string& key,
              Alloc& a);
  bool applies(const Value& obj, const std::string& build) const;
  bool excluded_post_processor(const Plugin& p) const;
  void mark_sensitive(Value& v, const std::string& pointer, Value& list, Alloc& a) const;
  std::string unknown_type(const std::string& kind, const std::string& type) const;

  const Value& definition(const std::string& kind, const std::string& type) const;
  std::vector<std::string> known_types(const std::string& kind) const;

  const Request& req_;
  Outcome& out_;
  json::Document doc_;
  json::SourceMap map_;
  std::string path_;  ///< absolute template path ("" for stdin)
  std::string dir_;   ///< absolute template folder
  std::string digest_;
  std::string run_uuid_;

  std::vector<Builder> builders_;
  std::vector<Plugin> provisioners_;
  std::vector<std::vector<Plugin>> chains_;
  std::optional<Plugin> cleanup_;

  /// Declared variables with their defaults; null default = required.
  std::map<std::string, std::optional<std::string>> declared_;
  std::map<std::string, std::string> given_;  ///< -var / -var-file values
  std::map<std::string, std::string> vars_;   ///< resolved
  std::set<std::string> sensitive_names_;
  mutable std::set<std::string> undeclared_used_;
  std::string pwd_;
};

const Value& Loader::definition(const std::string& kind, const std::string& type) const {
  static const Value kNull;
  const auto& defs = schema::document(kSchema)["definitions"];
  auto it = defs.FindMember((kind + "." + type).c_str());
  return it == defs.MemberEnd() ? kNull : it->value;
}

std::vector<std::string> Loader::known_types(const std::string& kind) const {
  std::vector<std::string> out;
  const auto& defs = schema::document(kSchema)["definitions"];
  std::string prefix = kind + ".";
  for (auto it = defs.MemberBegin(); it != defs.MemberEnd(); ++it) {
    std::string n = it->name.GetString();
    if (text::starts_with(n, prefix)) out.push_back(n.substr(prefix.size()));
  }
  return out;
}

bool Loader::read_template() {
  std::string text;
  std::string name;
  std::error_code ec;
  pwd_ = fs::current_path(ec).string();
  if (req_.template_text) {
    text = *req_.template_text;
    name = req_.path.empty() ? "template" : req_.path;
    path_ = fs::absolute(req_.path.empty() ? "template.json" : req_.path, ec)
                .lexically_normal()
                .string();
    dir_ = fs::path(path_).parent_path().string();
  } else if (req_.path == "-") {
    std::ostringstream ss;
    ss << std::cin.rdbuf();
    text = ss.str();
    name = "stdin";
    path_ = "";
    dir_ = pwd_;
  } else {
    auto r = read_file(req_.path);
    if (!r) {
      fail_input(r.error());
      return false;
    }
    text = std::move(r).value();
    name = req_.path;
    path_ = fs::absolute(req_.path, ec).lexically_normal().string();
    dir_ = fs::path(path_).parent_path().string();
  }
  digest_ = digest::sha256_hex(text);
  out_.sources.emplace_back(name, text);
  Errors dups;
  auto st = json::parse(text, name, doc_, map_, dups);
  if (!st) {
    out_.exit = Exit::dataerr;
    out_.errors.push_back(st.error());
    return false;
  }
  for (Error& d : dups) out_.errors.push_back(std::move(d));
  if (!doc_.IsObject()) {
    error("", std::string("a template must be a JSON object, not ") + json::type_name(doc_));
    return false;
  }
  return true;
}

void Loader::check_root() {
  const Value& root_schema = schema::document(kSchema);
  std::vector<std::string> known;
  for (auto it = root_schema["properties"].MemberBegin();
       it != root_schema["properties"].MemberEnd(); ++it)
    known.emplace_back(it->name.GetString());
  // Packer decodes the root with mapstructure, which matches key names
  // case-insensitively unless the exact name is present too. Rename such
  // keys to their canonical spelling so that everything after sees one name.
  std::vector<std::pair<std::string, std::string>> renames;
  for (auto it = doc_.MemberBegin(); it != doc_.MemberEnd(); ++it) {
    std::string key = it->name.GetString();
    if (text::starts_with(key, "_")) {
      if (!it->value.IsString())
        error(json::child("", key),
              "comment \"" + key + "\" must be a string (keys starting with _ are comments)");
      continue;
    }
    if (std::find(known.begin(), known.end(), key) != known.end()) continue;
    std::string canonical;
    for (const std::string& k : known)
      if (text::iequals(k, key) && !doc_.HasMember(k.c_str())) canonical = k;
    if (!canonical.empty() && std::none_of(renames.begin(), renames.end(),
                                           [&](const auto& r) { return r.second == canonical; })) {
      renames.emplace_back(key, canonical);
      continue;
    }
    std::string msg = "unknown root level key \"" + key + "\" in template";
    std::string hint = text::suggest(key, known);
    if (!hint.empty()) msg += "; did you mean \"" + hint + "\"?";
    error(json::child("", key), msg);
  }
  for (const auto& [from, to] : renames) {
    map_.record(json::child("", to), map_.offset_of(json::child("", from)));
    for (auto it = doc_.MemberBegin(); it != doc_.MemberEnd(); ++it)
      if (from == it->name.GetString()) it->name.SetString(to, doc_.GetAllocator());
  }
  auto check_string = [&](const char* key) {
    auto it = doc_.FindMember(key);
    if (it != doc_.MemberEnd() && !it->value.IsString())
      error(json::child("", key),
            std::string("\"") + key + "\" must be a string, not " + json::type_name(it->value));
  };
  check_string("description");
  check_string("min_packer_version");

  // Variables: an object of string or null defaults.
  if (auto it = doc_.FindMember("variables"); it != doc_.MemberEnd()) {
    if (!it->value.IsObject()) {
      error("/variables",
            std::string("\"variables\" must be an object, not ") + json::type_name(it->value));
    } else {
      for (auto v = it->value.MemberBegin(); v != it->value.MemberEnd(); ++v) {
        std::string name = v->name.GetString();
        std::string ptr = json::child("/variables", name);
        if (v->value.IsNull()) {
          declared_[name] = std::nullopt;
        } else if (v->value.IsString()) {
          declared_[name] = std::string(v->value.GetString(), v->value.GetStringLength());
        } else {
          error(ptr, "variable \"" + name + "\": default must be a string or null, not " +
                         json::type_name(v->value));
        }
      }
    }
  }
  if (auto it = doc_.FindMember("sensitive-variables"); it != doc_.MemberEnd()) {
    if (!it->value.IsArray()) {
      error("/sensitive-variables",
            std::string("\"sensitive-variables\" must be an array of names, not ") +
                json::type_name(it->value));
    } else {
      for (rapidjson::SizeType i = 0; i < it->value.Size(); ++i) {
        const Value& n = it->value[i];
        std::string ptr = json::child("/sensitive-variables", i);
        if (!n.IsString()) {
          error(ptr, "a sensitive variable must be named by a string");
          continue;
        }
        sensitive_names_.insert(n.GetString());
      }
    }
  }
}

std::string Loader::unknown_type(const std::string& kind, const std::string& type) const {
  auto known = known_types(kind);
  std::string msg =
      "unknown " + kind + " type \"" + type + "\"; known types: " + text::join(known, ", ");
  std::string hint = text::suggest(type, known);
  if (!hint.empty()) msg += "; did you mean \"" + hint + "\"?";
  return msg;
}

bool Loader::check_plugin_object(const Value& v, const std::string& pointer, const char* kind,
                                 Plugin& out) {
  out.pointer = pointer;
  out.raw = &v;
  if (!v.IsObject()) {
    error(pointer, std::string("a ") + kind + " must be an object, not " + json::type_name(v));
    return false;
  }
  auto t = v.FindMember("type");
  if (t == v.MemberEnd()) {
    error(pointer, std::string("a ") + kind + " needs a \"type\"");
    return false;
  }
  if (!t->value.IsString()) {
    error(json::child(pointer, "type"),
          std::string("\"type\" must be a string, not ") + json::type_name(t->value));
    return false;
  }
  out.type = t->value.GetString();
  std::string kind_key = kind;
  if (!req_.syntax_only && definition(kind_key, out.type).IsNull()) {
    error(json::child(pointer, "type"), unknown_type(kind_key, out.type));
    return false;
  }
  return true;
}

void Loader::collect_builders() {
  auto it = doc_.FindMember("builders");
  if (it == doc_.MemberEnd() || (it->value.IsArray() && it->value.Empty())) {
    if (req_.syntax_only) return;  // Packer checks this after parsing
    error(it == doc_.MemberEnd() ? "" : "/builders", "at least one builder must be defined");
    return;
  }
  if (!it->value.IsArray()) {
    error("/builders",
          std::string("\"builders\" must be an array, not ") + json::type_name(it->value));
    return;
  }
  std::set<std::string> names;
  for (rapidjson::SizeType i = 0; i < it->value.Size(); ++i) {
    Builder b;
    std::string ptr = json::child("/builders", i);
    if (!check_plugin_object(it->value[i], ptr, "builder", b.plugin)) continue;
    b.name = b.plugin.type;
    if (auto n = it->value[i].FindMember("name"); n != it->value[i].MemberEnd()) {
      if (n->value.IsString() && n->value.GetStringLength() > 0) {
        b.name = n->value.GetString();
      } else if (!n->value.IsString()) {
        error(json::child(ptr, "name"), "a builder's \"name\" must be a string");
      }
    }
    b.plugin.label = "builder '" + b.name + "'";
    if (!names.insert(b.name).second) {
      error(ptr, "builder " + std::to_string(i + 1) + ": a builder named '" + b.name +
                     "' already exists; give each a unique \"name\"");
      continue;
    }
    builders_.push_back(std::move(b));
  }
}

void Loader::check_run_list(Value& obj, const std::string& pointer, const std::string& label,
                            bool strict) {
  bool has_only = false, has_except = false;
  for (const char* key : {"only", "except"}) {
    auto it = obj.FindMember(key);
    if (it == obj.MemberEnd()) continue;
    std::string ptr = json::child(pointer, key);
    if (!strict && it->value.IsString()) {
      Value one(it->value, doc_.GetAllocator());
      it->value.SetArray().PushBack(one, doc_.GetAllocator());
    }
    if (!it->value.IsArray()) {
      error(ptr, label + ": \"" + key + "\" must be an array of build names");
      continue;
    }
    (std::string(key) == "only" ? has_only : has_except) = true;
    for (rapidjson::SizeType i = 0; i < it->value.Size(); ++i) {
      const Value& n = it->value[i];
      if (!n.IsString()) {
        error(json::child(ptr, i), label + ": build names must be strings");
        continue;
      }
      if (req_.syntax_only) continue;  // references are not syntax
      bool found = std::any_of(builders_.begin(), builders_.end(),
                               [&](const Builder& b) { return b.name == n.GetString(); });
      if (!found)
        error(json::child(ptr, i), label + ": \"" + key + "\" names build '" + n.GetString() +
                                       "', which does not exist");
    }
  }
  (void)has_only;
  (void)has_except;
}

void Loader::collect_provisioners() {
  auto it = doc_.FindMember("provisioners");
  if (it != doc_.MemberEnd()) {
    if (!it->value.IsArray()) {
      error("/provisioners",
            std::string("\"provisioners\" must be an array, not ") + json::type_name(it->value));
    } else {
      for (rapidjson::SizeType i = 0; i < it->value.Size(); ++i) {
        Plugin p;
        std::string ptr = json::child("/provisioners", i);
        if (!check_plugin_object(it->value[i], ptr, "provisioner", p)) continue;
        p.label = "provisioner " + std::to_string(i + 1) + " (" + p.type + ")";
        check_run_list(it->value[i], ptr, p.label, false);
        if (auto o = it->value[i].FindMember("override");
            o != it->value[i].MemberEnd() && !req_.syntax_only) {
          std::string optr = json::child(ptr, "override");
          if (!o->value.IsObject()) {
            error(optr, p.label + ": \"override\" must be an object keyed by build name");
          } else {
            for (auto m = o->value.MemberBegin(); m != o->value.MemberEnd(); ++m) {
              std::string bname = m->name.GetString();
              bool found = std::any_of(builders_.begin(), builders_.end(),
                                       [&](const Builder& b) { return b.name == bname; });
              if (!found)
                error(json::child(optr, bname),
                      p.label + ": \"override\" names build '" + bname + "', which does not exist");
              if (!m->value.IsObject())
                error(json::child(optr, bname),
                      p.label + ": an override must be an object of settings");
            }
          }
        }
        provisioners_.push_back(std::move(p));
      }
    }
  }
  auto c = doc_.FindMember("error-cleanup-provisioner");
  if (c != doc_.MemberEnd()) {
    Plugin p;
    if (check_plugin_object(c->value, "/error-cleanup-provisioner", "provisioner", p)) {
      p.label = "error-cleanup-provisioner (" + p.type + ")";
      cleanup_ = std::move(p);
    }
  }
}

void Loader::collect_post_processors() {
  auto it = doc_.FindMember("post-processors");
  if (it == doc_.MemberEnd()) return;
  if (!it->value.IsArray()) {
    error("/post-processors",
          std::string("\"post-processors\" must be an array, not ") + json::type_name(it->value));
    return;
  }
  auto step = [&](const Value& v, const std::string& ptr, const std::string& label,
                  std::vector<Plugin>& chain) {
    Plugin p;
    if (v.IsString()) {
      p.pointer = ptr;
      p.type = v.GetString();
      p.raw = nullptr;
      if (!req_.syntax_only && definition("post-processor", p.type).IsNull()) {
        error(ptr, unknown_type("post-processor", p.type));
        return;
      }
    } else if (v.IsArray()) {
      error(ptr, label + ": a post-processor chain cannot contain another chain");
      return;
    } else if (!check_plugin_object(v, ptr, "post-processor", p)) {
      return;
    }
    p.label = label + " (" + p.type + ")";
    if (p.raw) check_run_list(const_cast<Value&>(*p.raw), ptr, p.label, true);
    if (p.raw) {
      auto keep = p.raw->FindMember("keep_input_artifact");
      if (keep != p.raw->MemberEnd() && !keep->value.IsBool() && !keep->value.IsNull())
        error(json::child(ptr, "keep_input_artifact"),
              p.label + ": \"keep_input_artifact\" must be true or false, not " +
                  json::type_name(keep->value));
    }
    chain.push_back(std::move(p));
  };
  for (rapidjson::SizeType i = 0; i < it->value.Size(); ++i) {
    const Value& v = it->value[i];
    std::string ptr = json::child("/post-processors", i);
    std::vector<Plugin> chain;
    std::string label = "post-processor " + std::to_string(i + 1);
    if (v.IsArray()) {
      for (rapidjson::SizeType j = 0; j < v.Size(); ++j)
        step(v[j], json::child(ptr, j), label + "." + std::to_string(j + 1), chain);
    } else {
      step(v, ptr, label, chain);
    }
    if (!chain.empty()) chains_.push_back(std::move(chain));
  }
}

bool Loader::read_user_variables() {
  bool ok = true;
  // Packer applies every -var-file before any -var, whatever their order on
  // the command line; within each kind, later wins.
  std::vector<Request::VarSource> order;
  for (const auto& v : req_.vars)
    if (v.is_file) order.push_back(v);
  for (const auto& v : req_.vars)
    if (!v.is_file) order.push_back(v);
  for (const Request::VarSource& src : order) {
    if (!src.is_file) {
      auto eq = src.text.find('=');
      if (eq == std::string::npos || eq == 0) {
        fail_input(Error(Exit::usage, "-var must be NAME=VALUE, not '" + src.text + "'"));
        ok = false;
        continue;
      }
      given_[src.text.substr(0, eq)] = src.text.substr(eq + 1);
      continue;
    }
    auto text = read_file(src.text);
    if (!text) {
      fail_input(text.error());
      ok = false;
      continue;
    }
    out_.sources.emplace_back(src.text, *text);
    json::Document vd;
    json::SourceMap vmap;
    Errors dups;
    auto st = json::parse(*text, src.text, vd, vmap, dups);
    if (!st) {
      out_.errors.push_back(st.error());
      out_.exit = Exit::dataerr;
      ok = false;
      continue;
    }
    if (!vd.IsObject()) {
      Error e(Exit::dataerr, "a var file must hold a JSON object of NAME: \"value\"",
              vmap.locate(""));
      out_.errors.push_back(std::move(e));
      ok = false;
      continue;
    }
    for (auto m = vd.MemberBegin(); m != vd.MemberEnd(); ++m) {
      std::string name = m->name.GetString();
      if (!m->value.IsString()) {
        out_.errors.push_back(Error(Exit::dataerr,
                                    "variable \"" + name +
                                        "\" in a var file must be a string, not " +
                                        json::type_name(m->value),
                                    vmap.locate(json::child("", name))));
        ok = false;
        continue;
      }
      given_[name] = m->value.GetString();
    }
  }
  return ok;
}

void Loader::resolve_variables() {
  std::map<std::string, std::string> pending;
  for (const auto& [name, def] : declared_) pending[name] = def.value_or("");
  for (const auto& [name, value] : given_) {
    pending[name] = value;
    if (!declared_.count(name))
      warning("/variables",
              "variable \"" + name +
                  "\" was given on the command line but is not declared in the template");
  }
  for (const auto& [name, def] : declared_)
    if (!def && !given_.count(name))
      error(json::child("/variables", name), "required variable not set: " + name);

  // Variables may refer to each other; render until nothing changes, as
  // Packer does (it gives up after 100 rounds).
  tmpl::Context c = context(nullptr);
  c.env_allowed = true;
  c.packer_version.clear();  // not available in variables, as in Packer
  std::map<std::string, std::string> done;
  std::map<std::string, Error> failures;
  for (int round = 0; round < 100 && !pending.empty(); ++round) {
    bool progress = false;
    failures.clear();
    c.user = [&](const std::string& n) -> Result<std::string> {
      if (auto it = done.find(n); it != done.end()) return it->second;
      return Error(Exit::dataerr, "variable \"" + n + "\" is not set");
    };
    for (auto it = pending.begin(); it != pending.end();) {
      auto r = tmpl::render(it->second, c);
      if (r) {
        done[it->first] = *r;
        it = pending.erase(it);
        progress = true;
      } else {
        failures.emplace(it->first, r.error());
        ++it;
      }
    }
    if (!progress) break;
  }
  for (const auto& [name, e] : failures)
    error(json::child("/variables", name), "variable \"" + name + "\": " + e.message);
  vars_ = std::move(done);
  for (const std::string& s : sensitive_names_)
    if (auto it = vars_.find(s); it != vars_.end() && !it->second.empty())
      out_.secrets.push_back(it->second);
}

void Loader::check_min_version() {
  auto it = doc_.FindMember("min_packer_version");
  if (it == doc_.MemberEnd() || !it->value.IsString()) return;
  std::string v = it->value.GetString();
  if (v.empty()) return;
  if (!valid_version(v)) {
    error("/min_packer_version", "min_packer_version \"" + v + "\" is not a version");
    return;
  }
  if (compare_versions(kPackerVersion, v) < 0)
    error("/min_packer_version", "this template requires Packer version " + v +
                                     " or higher; kiln implements Packer " + kPackerVersion);
}

bool Loader::selected(const std::string& name) const {
  auto matches = [&](const std::vector<std::string>& pats) {
    return std::any_of(pats.begin(), pats.end(),
                       [&](const std::string& p) { return text::glob_match(p, name); });
  };
  if (!req_.only.empty() && !matches(req_.only)) return false;
  if (!req_.except.empty() && matches(req_.except)) return false;
  return true;
}

tmpl::Context Loader::context(const Builder* b) const {
  tmpl::Context c;
  c.user = [this](const std::string& n) -> Result<std::string> {
    auto it = vars_.find(n);
    if (it != vars_.end()) return it->second;
    // Outside "variables" Packer renders an unknown user variable as "".
    undeclared_used_.insert(n);
    return std::string();
  };
  c.template_dir = dir_;
  c.pwd = pwd_;
  c.packer_version = kPackerVersion;
  c.timestamp = req_.timestamp;
  c.defer_unknown_fields = true;
  if (b) {
    c.build_name = b->name;
    c.build_type = b->plugin.type;
  }
  return c;
}

void Loader::interpolate(Value& v, const std::string& pointer, const tmpl::Context& c, Alloc& a) {
  json::for_each_string(v, pointer, [&](Value& str, const std::string& ptr) {
    std::string_view s(str.GetString(), str.GetStringLength());
    if (!tmpl::has_actions(s)) return;
    auto r = tmpl::render(s, c);
    if (!r) {
      error(ptr, "cannot render " + shown(str) + ": " + r.error().message);
      return;
    }
    str.SetString(*r, a);
  });
}

void Loader::coerce(Value& v, const Value& prop, const std::string& pointer, const std::string& key,
                    Alloc& a) {
  auto tit = prop.FindMember("type");
  if (tit == prop.MemberEnd()) return;
  std::vector<std::string> types;
  if (tit->value.IsString()) {
    types.emplace_back(tit->value.GetString());
  } else if (tit->value.IsArray()) {
    for (const auto& t : tit->value.GetArray())
      if (t.IsString()) types.emplace_back(t.GetString());
  }
  auto allows = [&](const char* t) {
    return std::find(types.begin(), types.end(), t) != types.end();
  };
  std::string format;
  if (auto f = prop.FindMember("format"); f != prop.MemberEnd() && f->value.IsString())
    format = f->value.GetString();

  // A value already of an allowed JSON type needs no conversion.
  bool fits = (v.IsString() && allows("string")) || (v.IsBool() && allows("boolean")) ||
              ((v.IsInt64() || v.IsUint64()) && (allows("integer") || allows("number"))) ||
              (v.IsNumber() && allows("number")) || (v.IsArray() && allows("array")) ||
              (v.IsObject() && allows("object"));
  std::string type = types.empty() ? "" : types.front();
  if (!fits && types.size() == 1) {
    std::string bad = "\"" + key + "\": expected " +
                      (type == "array"    ? std::string("a list")
                       : type == "object" ? std::string("an object")
                                          : "a " + type) +
                      ", got " + json::type_name(v) + " " + shown(v);
    if (type == "string") {
      auto s = weak_string(v);
      if (!s) return error(pointer, bad);
      v.SetString(*s, a);
    } else if (type == "integer" || type == "number") {
      if (v.IsBool()) {
        v.SetInt(v.GetBool() ? 1 : 0);
      } else if (v.IsNumber() && type == "integer") {
        v.SetInt64(static_cast<int64_t>(v.GetDouble()));
      } else if (v.IsString()) {
        std::string s = v.GetString();
        if (s.empty()) {
          v.SetInt(0);
        } else if (type == "integer") {
          if (std::isspace(static_cast<unsigned char>(s[0])))
            return error(pointer, "\"" + key + "\": cannot parse " + shown(v) + " as an integer");
          char* end = nullptr;
          errno = 0;
          long long n = std::strtoll(s.c_str(), &end, 0);
          if (*end != '\0' || errno == ERANGE)
            return error(pointer, "\"" + key + "\": cannot parse " + shown(v) + " as an integer");
          v.SetInt64(n);
        } else {
          char* end = nullptr;
          double d = std::strtod(s.c_str(), &end);
          if (*end != '\0')
            return error(pointer, "\"" + key + "\": cannot parse " + shown(v) + " as a number");
          v.SetDouble(d);
        }
      } else {
        return error(pointer, bad);
      }
    } else if (type == "boolean") {
      if (v.IsNumber()) {
        v.SetBool(v.GetDouble() != 0);
      } else if (v.IsString()) {
        static const std::set<std::string> yes = {"1", "t", "T", "TRUE", "true", "True"};
        static const std::set<std::string> no = {"0", "f", "F", "FALSE", "false", "False", ""};
        std::string s = v.GetString();
        if (yes.count(s))
          v.SetBool(true);
        else if (no.count(s))
          v.SetBool(false);
        else
          return error(pointer, "\"" + key + "\": cannot parse " + shown(v) + " as a boolean");
      } else {
        return error(pointer, bad);
      }
    } else if (type == "array") {
      if (v.IsObject() && v.MemberCount() == 0) {
        v.SetArray();
      } else if (v.IsObject()) {
        return error(pointer, bad);
      } else {
        // mapstructure lifts a single value into a one-element list.
        Value one(v, a);
        v.SetArray();
        v.PushBack(one, a);
      }
    } else if (type == "object") {
      if (v.IsArray() && v.Empty()) {
        v.SetObject();
      } else {
        return error(pointer, bad);
      }
    }
  } else if (!fits) {
    std::string want = text::join(types, " or ");
    return error(pointer, "\"" + key + "\": expected " + want + ", got " + json::type_name(v) +
                              " " + shown(v));
  }

  // Elements and members.
  if (v.IsArray()) {
    if (auto items = prop.FindMember("items");
        items != prop.MemberEnd() && items->value.IsObject()) {
      for (rapidjson::SizeType i = 0; i < v.Size(); ++i)
        coerce(v[i], items->value, json::child(pointer, i), key, a);
    }
  } else if (v.IsObject()) {
    auto props = prop.FindMember("properties");
    auto extra = prop.FindMember("additionalProperties");
    for (auto m = v.MemberBegin(); m != v.MemberEnd(); ++m) {
      std::string k = m->name.GetString();
      if (props != prop.MemberEnd() && props->value.HasMember(k.c_str())) {
        coerce(m->value, props->value[k.c_str()], json::child(pointer, k), k, a);
      } else if (extra != prop.MemberEnd() && extra->value.IsObject()) {
        coerce(m->value, extra->value, json::child(pointer, k), key, a);
      }
    }
  }

  if (format == "duration" && v.IsString()) {
    double seconds = 0;
    std::string s = v.GetString();
    if (gotime::parse_duration(s, seconds)) {
      v.SetDouble(seconds);
    } else {
      return error(pointer, "\"" + key + "\": invalid duration " + shown(v) +
                                " (use a number and a unit: 300ms, 10s, 5m, 1h30m)");
    }
  } else if (format == "duration" && v.IsNumber()) {
    // A bare number is nanoseconds in Go's time.Duration.
    v.SetDouble(v.GetDouble() / 1e9);
  } else if (format == "path" && v.IsString()) {
    std::string s = v.GetString();
    if (!s.empty() && s.find("://") == std::string::npos && s[0] != '/' && !tmpl::has_actions(s)) {
      v.SetString((fs::path(dir_) / s).lexically_normal().string(), a);
    }
  }

  if (auto e = prop.FindMember("enum"); e != prop.MemberEnd() && e->value.IsArray()) {
    bool found = false;
    for (const auto& allowed : e->value.GetArray())
      if (allowed == v) found = true;
    if (!found) {
      std::vector<std::string> names;
      for (const auto& allowed : e->value.GetArray())
        names.push_back(allowed.IsString() ? allowed.GetString() : json::to_string(allowed));
      std::string msg =
          "\"" + key + "\": " + shown(v) + " is not one of " + text::join(names, ", ");
      if (v.IsString()) {
        std::string hint = text::suggest(v.GetString(), names);
        if (!hint.empty()) msg += "; did you mean \"" + hint + "\"?";
      }
      error(pointer, msg);
    }
  }
}

std::optional<Value> Loader::normalize(rules::Kind kind, const Plugin& p, const Builder& b,
                                       Alloc& a, const Value* override_obj,
                                       const std::string& override_ptr) {
  std::string kind_key = kind == rules::Kind::builder       ? "builder"
                         : kind == rules::Kind::provisioner ? "provisioner"
                                                            : "post-processor";
  const Value& def = definition(kind_key, p.type);
  Value config(rapidjson::kObjectType);
  std::map<std::string, std::string> origin;  // key -> pointer of its value
  if (p.raw) {
    config.CopyFrom(*p.raw, a);
    for (auto m = config.MemberBegin(); m != config.MemberEnd(); ++m)
      origin[m->name.GetString()] = json::child(p.pointer, m->name.GetString());
  } else {
    config.AddMember("type", Value(p.type, a), a);
    origin["type"] = p.pointer;
  }
  if (override_obj && override_obj->IsObject()) {
    for (auto m = override_obj->MemberBegin(); m != override_obj->MemberEnd(); ++m) {
      std::string k = m->name.GetString();
      config.RemoveMember(k.c_str());
      config.AddMember(Value(k, a), Value(m->value, a), a);
      origin[k] = json::child(override_ptr, k);
    }
  }
  // only/except/override are resolved by now; a build's record lists just
  // the steps that run for it, as they run.
  if (kind != rules::Kind::builder) {
    config.RemoveMember("only");
    config.RemoveMember("except");
    config.RemoveMember("override");
  }

  interpolate(config, p.pointer, context(&b), a);

  const Value& props = def["properties"];
  std::vector<std::string> known;
  for (auto m = props.MemberBegin(); m != props.MemberEnd(); ++m)
    known.emplace_back(m->name.GetString());
  size_t errors_before = out_.errors.size();
  // mapstructure matches keys case-insensitively when the exact name is
  // absent; builders' "name" and "type" are read exactly by Packer itself.
  for (auto m = config.MemberBegin(); m != config.MemberEnd(); ++m) {
    std::string k = m->name.GetString();
    if (props.HasMember(k.c_str())) continue;
    if (kind == rules::Kind::builder && (text::iequals(k, "name") || text::iequals(k, "type")))
      continue;
    for (const std::string& cand : known) {
      if (text::iequals(cand, k) && !config.HasMember(cand.c_str())) {
        std::string from = origin.count(k) ? origin[k] : json::child(p.pointer, k);
        m->name.SetString(cand, a);
        origin[cand] = from;
        break;
      }
    }
  }
  std::vector<std::string> unknown;
  for (auto m = config.MemberBegin(); m != config.MemberEnd(); ++m) {
    std::string k = m->name.GetString();
    std::string ptr = origin.count(k) ? origin[k] : json::child(p.pointer, k);
    if (!props.HasMember(k.c_str())) {
      std::string msg = p.label + ": unknown configuration key \"" + k + "\"";
      std::string hint = text::suggest(k, known);
      if (!hint.empty()) msg += "; did you mean \"" + hint + "\"?";
      error(ptr, msg);
      unknown.push_back(k);
      continue;
    }
    if (m->value.IsNull()) {
      unknown.push_back(k);  // null is "not set", as mapstructure leaves it
      continue;
    }
    coerce(m->value, props[k.c_str()], ptr, k, a);
  }
  for (const std::string& k : unknown) config.RemoveMember(k.c_str());
  for (auto m = props.MemberBegin(); m != props.MemberEnd(); ++m) {
    auto d = m->value.FindMember("default");
    if (d == m->value.MemberEnd() || config.HasMember(m->name)) continue;
    Value v(d->value, a);
    std::string k = m->name.GetString();
    coerce(v, m->value, json::child(p.pointer, k), k, a);
    config.AddMember(Value(k, a), v, a);
  }
  if (out_.errors.size() != errors_before) return std::nullopt;

  rules::BuildInfo info{b.name, b.plugin.type, dir_, req_.force};
  Errors errs, warns;
  rules::apply(kind, p.type, config, a, info, p.pointer, errs, warns);
  auto relocate = [&](Error& e) {
    // Rules name the key under the plugin's pointer; an overridden key
    // really lives in the override.
    std::string key = e.where.pointer.size() > p.pointer.size() + 1
                          ? e.where.pointer.substr(p.pointer.size() + 1)
                          : "";
    auto slash = key.find('/');
    if (slash != std::string::npos) key = key.substr(0, slash);
    std::string ptr = (!key.empty() && origin.count(key)) ? origin[key] : e.where.pointer;
    std::string msg = e.message;
    if (!text::starts_with(msg, p.label)) msg = p.label + ": " + msg;
    return std::make_pair(ptr, msg);
  };
  for (Error& e : errs) {
    auto [ptr, msg] = relocate(e);
    error(ptr, msg);
  }
  for (Error& w : warns) {
    auto [ptr, msg] = relocate(w);
    warning(ptr, msg);
  }
  if (!errs.empty()) return std::nullopt;
  return config;
}

bool Loader::excluded_post_processor(const Plugin& p) const {
  // packer build/validate -except names post-processors too, by name or type.
  std::string name = p.type;
  if (p.raw) {
    auto n = p.raw->FindMember("name");
    if (n != p.raw->MemberEnd() && n->value.IsString()) name = n->value.GetString();
  }
  for (const std::string& e : req_.except)
    if (text::glob_match(e, name) || text::glob_match(e, p.type)) return true;
  return false;
}

bool Loader::applies(const Value& obj, const std::string& build) const {
  if (!obj.IsObject()) return true;
  auto has = [&](const char* key) {
    auto it = obj.FindMember(key);
    if (it == obj.MemberEnd() || !it->value.IsArray()) return false;
    for (const auto& n : it->value.GetArray())
      if (n.IsString() && build == n.GetString()) return true;
    return false;
  };
  auto only = obj.FindMember("only");
  if (only != obj.MemberEnd() && only->value.IsArray() && !only->value.Empty() && !has("only"))
    return false;
  return !has("except");
}

void Loader::mark_sensitive(Value& v, const std::string& pointer, Value& list, Alloc& a) const {
  json::for_each_string(v, pointer, [&](Value& str, const std::string& ptr) {
    std::string_view s(str.GetString(), str.GetStringLength());
    for (const std::string& secret : out_.secrets) {
      if (!secret.empty() && s.find(secret) != std::string_view::npos) {
        list.PushBack(Value(ptr, a), a);
        return;
      }
    }
  });
}

void Loader::make_build(const Builder& b) {
  rapidjson::Document build(rapidjson::kObjectType);
  Alloc& a = build.GetAllocator();
  size_t errors_before = out_.errors.size();

  auto builder = normalize(rules::Kind::builder, b.plugin, b, a);

  Value provs(rapidjson::kArrayType);
  for (const Plugin& p : provisioners_) {
    if (!applies(*p.raw, b.name)) continue;
    const Value* ov = nullptr;
    std::string optr;
    if (auto o = p.raw->FindMember("override"); o != p.raw->MemberEnd() && o->value.IsObject()) {
      if (auto m = o->value.FindMember(b.name.c_str()); m != o->value.MemberEnd()) {
        ov = &m->value;
        optr = json::child(json::child(p.pointer, "override"), b.name);
      }
    }
    if (auto v = normalize(rules::Kind::provisioner, p, b, a, ov, optr)) provs.PushBack(*v, a);
  }
  Value cleanup(rapidjson::kNullType);
  if (cleanup_) {
    if (auto v = normalize(rules::Kind::provisioner, *cleanup_, b, a)) cleanup = *v;
  }
  Value chains(rapidjson::kArrayType);
  for (const auto& chain : chains_) {
    Value steps(rapidjson::kArrayType);
    for (const Plugin& p : chain) {
      if (p.raw && !applies(*p.raw, b.name)) continue;
      if (excluded_post_processor(p)) continue;
      if (auto v = normalize(rules::Kind::post_processor, p, b, a)) steps.PushBack(*v, a);
    }
    if (!steps.Empty()) chains.PushBack(steps, a);
  }
  if (out_.errors.size() != errors_before || !builder) return;

  build.AddMember("name", Value(b.name, a), a);
  build.AddMember("type", Value(b.plugin.type, a), a);
  Value captures(rapidjson::kArrayType);
  if (b.plugin.type == "qemu") {
    std::vector<std::string> formats;
    if (auto f = builder->FindMember("format"); f != builder->MemberEnd() && f->value.IsString())
      formats.emplace_back(f->value.GetString());
    if (auto f = builder->FindMember("formats"); f != builder->MemberEnd() && f->value.IsArray())
      for (const auto& x : f->value.GetArray())
        if (x.IsString() &&
            std::find(formats.begin(), formats.end(), x.GetString()) == formats.end())
          formats.emplace_back(x.GetString());
    for (const std::string& f : formats) captures.PushBack(Value(f, a), a);
  }
  build.AddMember("builder", *builder, a);
  build.AddMember("provisioners", provs, a);
  build.AddMember("error_cleanup_provisioner", cleanup, a);
  build.AddMember("post_processors", chains, a);
  build.AddMember("captures", captures, a);
  build.AddMember("on_error", Value(req_.on_error, a), a);
  build.AddMember("force", req_.force, a);
  Value tpl(rapidjson::kObjectType);
  tpl.AddMember("path", Value(path_, a), a);
  tpl.AddMember("dir", Value(dir_, a), a);
  tpl.AddMember("sha256", Value(digest_, a), a);
  build.AddMember("template", tpl, a);
  Value vars(rapidjson::kObjectType);
  for (const auto& [k, v] : vars_) vars.AddMember(Value(k, a), Value(v, a), a);
  build.AddMember("variables", vars, a);
  build.AddMember("run_uuid", Value(run_uuid_, a), a);
  build.AddMember("timestamp", static_cast<int64_t>(req_.timestamp), a);
  if (auto d = doc_.FindMember("description"); d != doc_.MemberEnd() && d->value.IsString())
    build.AddMember("description", Value(d->value.GetString(), a), a);

  // Passwords are secrets whether or not a variable says so.
  for (const char* key : {"ssh_password", "winrm_password", "vnc_password"}) {
    auto it = build["builder"].FindMember(key);
    if (it != build["builder"].MemberEnd() && it->value.IsString() &&
        it->value.GetStringLength() > 0 &&
        std::find(out_.secrets.begin(), out_.secrets.end(), it->value.GetString()) ==
            out_.secrets.end())
      out_.secrets.emplace_back(it->value.GetString());
  }
  Value marks(rapidjson::kArrayType);
  for (auto m = build.MemberBegin(); m != build.MemberEnd(); ++m) {
    std::string k = m->name.GetString();
    if (k == "template" || k == "run_uuid") continue;
    mark_sensitive(m->value, json::child("", k), marks, build.GetAllocator());
  }
  build.AddMember("sensitive", marks, a);

  if (auto st = schema::validate(build, "build.schema.json"); !st) {
    Error e(Exit::software,
            "internal error: the normalized build breaks build.schema.json: " + st.error().message);
    out_.errors.push_back(std::move(e));
    out_.exit = Exit::software;
    return;
  }
  out_.builds.push_back(std::move(build));
}

void Loader::run() {
  run_uuid_ = digest::random_uuid();
  if (!read_template()) {
    if (out_.exit == Exit::ok) out_.exit = Exit::dataerr;
    return;
  }
  check_root();
  collect_builders();
  collect_provisioners();
  collect_post_processors();
  if (req_.syntax_only) {
    if (!out_.errors.empty()) out_.exit = Exit::dataerr;
    return;
  }
  check_min_version();
  if (!read_user_variables()) {
    if (out_.exit == Exit::ok) out_.exit = Exit::dataerr;
    return;
  }
  size_t before_variables = out_.errors.size();
  resolve_variables();
  // Structural errors do not stop the check of each build (every error is
  // reported at once), but unresolved variables would only cause
  // misleading errors downstream of them.
  if (out_.errors.size() != before_variables) {
    out_.exit = Exit::dataerr;
    return;
  }
  bool any = false;
  for (const Builder& b : builders_) {
    if (!selected(b.name)) continue;
    any = true;
    make_build(b);
  }
  for (const std::string& n : undeclared_used_)
    warning("/variables", "user variable \"" + n + "\" is used but not declared; it is empty");
  if (!any && !builders_.empty()) {
    std::vector<std::string> names;
    for (const Builder& b : builders_) names.push_back(b.name);
    warning("/builders",
            "no build matches -only/-except; the builds are: " + text::join(names, ", "));
  }
  if (!out_.errors.empty()) {
    if (out_.exit == Exit::ok) out_.exit = Exit::dataerr;
    out_.builds.clear();
  }
}

}  // namespace

Outcome load(const Request& request) {
  Outcome out;
  Loader(request, out).run();
  auto by_place = [](const Error& x, const Error& y) {
    return std::tie(x.where.file, x.where.line, x.where.column) <
           std::tie(y.where.file, y.where.line, y.where.column);
  };
  std::stable_sort(out.errors.begin(), out.errors.end(), by_place);
  std::stable_sort(out.warnings.begin(), out.warnings.end(), by_place);
  return out;
}

}  // namespace kiln::templates

// SPDX-License-Identifier: MIT
#include "schema.hpp"

#include <rapidjson/pointer.h>
#include <rapidjson/schema.h>
#include <rapidjson/stringbuffer.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "embedded.hpp"
#include "json.hpp"

namespace kiln::schema {

namespace {

struct Compiled;

/// Resolves "$ref": "build.schema.json#" among the embedded schemas.
class Provider : public rapidjson::IRemoteSchemaDocumentProvider {
 public:
  const rapidjson::SchemaDocument* GetRemoteDocument(const char* uri,
                                                     rapidjson::SizeType length) override;
};

struct Compiled {
  std::unique_ptr<rapidjson::SchemaDocument> schema;
};

std::mutex g_mutex;
std::map<std::string, rapidjson::Document, std::less<>> g_docs;
std::map<std::string, Compiled, std::less<>> g_compiled;
Provider g_provider;

const rapidjson::Document& load(std::string_view name) {
  auto it = g_docs.find(name);
  if (it != g_docs.end()) return it->second;
  auto data = embedded::find(name);
  if (!data) std::abort();  // a schema missing from the build is a defect
  rapidjson::Document doc;
  if (!json::parse(*data, doc)) std::abort();
  return g_docs.emplace(std::string(name), std::move(doc)).first->second;
}

const rapidjson::SchemaDocument& compiled(std::string_view name) {
  auto it = g_compiled.find(name);
  if (it != g_compiled.end()) return *it->second.schema;
  const rapidjson::Document& doc = load(name);
  Compiled c;
  c.schema = std::make_unique<rapidjson::SchemaDocument>(doc, &g_provider);
  return *g_compiled.emplace(std::string(name), std::move(c)).first->second.schema;
}

const rapidjson::SchemaDocument* Provider::GetRemoteDocument(const char* uri,
                                                             rapidjson::SizeType length) {
  // RapidJSON 1.1.0 passes a length one short of the text before '#'
  // (uri still points into the whole NUL-terminated $ref string), so the
  // name is read up to the '#' here rather than trusted from `length`.
  (void)length;
  std::string_view name(uri);
  if (auto hash = name.find('#'); hash != std::string_view::npos) name = name.substr(0, hash);
  if (!embedded::find(name)) return nullptr;
  return &compiled(name);  // g_mutex is already held by validate()
}

std::string pointer_string(const rapidjson::Pointer& p) {
  rapidjson::StringBuffer sb;
  p.StringifyUriFragment(sb);
  std::string s(sb.GetString(), sb.GetSize());
  if (!s.empty() && s[0] == '#') s.erase(0, 1);
  // Undo URI percent-encoding of plain characters for readability.
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      out += static_cast<char>(std::strtol(s.substr(i + 1, 2).c_str(), nullptr, 16));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

bool text_ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

std::string explain(const rapidjson::Value* rule, std::string_view keyword) {
  std::string k(keyword);
  if (!rule) return "breaks the schema rule \"" + k + "\"";
  if (k == "type" && rule->HasMember("type")) {
    const auto& t = (*rule)["type"];
    if (t.IsString()) return std::string("must be of type ") + t.GetString();
    std::string s = "must be of type ";
    for (rapidjson::SizeType i = 0; i < t.Size(); ++i)
      s += std::string(i ? " or " : "") + t[i].GetString();
    return s;
  }
  if (k == "enum" && rule->HasMember("enum")) {
    std::string s = "must be one of ";
    const auto& e = (*rule)["enum"];
    for (rapidjson::SizeType i = 0; i < e.Size(); ++i)
      s += (i ? ", " : "") +
           (e[i].IsString() ? std::string(e[i].GetString()) : json::to_string(e[i]));
    return s;
  }
  if (k == "required" && rule->HasMember("required")) {
    std::string s = "needs the keys ";
    const auto& r = (*rule)["required"];
    for (rapidjson::SizeType i = 0; i < r.Size(); ++i)
      s += std::string(i ? ", " : "") + r[i].GetString();
    return s;
  }
  if (k == "additionalProperties") return "has a key the schema does not allow";
  if (k == "pattern" && rule->HasMember("pattern"))
    return std::string("must match ") + (*rule)["pattern"].GetString();
  if (k == "anyOf" || k == "oneOf") return "matches none of the allowed forms";
  return "breaks the schema rule \"" + k + "\"";
}

}  // namespace

const rapidjson::Document& document(std::string_view name) {
  std::lock_guard<std::mutex> lock(g_mutex);
  return load(name);
}

Status validate(const rapidjson::Value& value, std::string_view name) {
  std::lock_guard<std::mutex> lock(g_mutex);
  const rapidjson::SchemaDocument& schema = compiled(name);
  rapidjson::SchemaValidator validator(schema);
  if (value.Accept(validator)) return {};
  std::string where = pointer_string(validator.GetInvalidDocumentPointer());
  std::string keyword = validator.GetInvalidSchemaKeyword();
  rapidjson::Pointer rule_ptr = validator.GetInvalidSchemaPointer();
  // The schema pointer is relative to the document that holds the rule,
  // which for a $ref to another file is that file; try ours first.
  const rapidjson::Value* rule = nullptr;
  for (const embedded::File& f : embedded::files()) {
    if (!text_ends_with(f.name, ".schema.json")) continue;
    const rapidjson::Value* r = rule_ptr.Get(load(f.name));
    if (r && r->IsObject() && r->HasMember(keyword.c_str())) {
      rule = r;
      if (f.name == name) break;
    }
  }
  std::string msg = where + ": " + explain(rule, keyword);
  Error e(Exit::dataerr, msg);
  e.where.pointer = where;
  return e;
}

}  // namespace kiln::schema

// SPDX-License-Identifier: MIT
#include "record.hpp"

#include <rapidjson/pointer.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "digest.hpp"
#include "exit_code.hpp"
#include "json.hpp"
#include "log.hpp"
#include "schema.hpp"

namespace kiln::record {

Reader::Reader(std::istream& in, std::string name)
    : in_(in), name_(name == "-" ? "stdin" : std::move(name)) {}

Result<std::optional<rapidjson::Document>> Reader::next() {
  std::string text;
  while (std::getline(in_, text)) {
    ++line_;
    bool has_newline = !in_.eof();
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    rapidjson::Document doc;
    std::string where = name_ + ":" + std::to_string(line_) + ": ";
    if (!json::parse(text, doc)) {
      std::string why =
          has_newline ? "not a valid JSON record" : "truncated record (no end of line)";
      return Error(Exit::dataerr, where + why);
    }
    if (!doc.IsObject())
      return Error(Exit::dataerr,
                   where + "a record must be a JSON object, not " + json::type_name(doc));
    if (auto st = validate(doc); !st)
      return Error(Exit::dataerr, where + "bad record: " + st.error().message);
    return std::optional<rapidjson::Document>(std::move(doc));
  }
  if (in_.bad()) return Error(Exit::ioerr, "cannot read " + name_ + ": " + std::strerror(errno));
  return std::optional<rapidjson::Document>();
}

Status validate(const rapidjson::Value& record) {
  if (record.IsObject()) {
    auto it = record.FindMember("kiln");
    if (it != record.MemberEnd() && it->value.IsInt() && it->value.GetInt() > kVersion)
      return Error(Exit::dataerr, "record format " + std::to_string(it->value.GetInt()) +
                                      " is newer than this tool reads (" +
                                      std::to_string(kVersion) + "); update kiln");
  }
  // Sections with a schema file of their own are checked against it
  // directly first: RapidJSON cannot say which rule of a schema reached
  // through a $ref to another file was broken, and the message should.
  if (record.IsObject()) {
    for (const auto& [section, file] :
         {std::pair{"build", "build.schema.json"}, std::pair{"machine", "machine.schema.json"},
          std::pair{"provisioned", "provisioned.schema.json"},
          std::pair{"error", "error.schema.json"}}) {
      auto it = record.FindMember(section);
      if (it == record.MemberEnd()) continue;
      if (auto st = schema::validate(it->value, file); !st) {
        Error e = st.error();
        e.message = "/" + std::string(section) + e.message;
        e.where.pointer = "/" + std::string(section) + e.where.pointer;
        return e;
      }
    }
  }
  return schema::validate(record, "record.schema.json");
}

std::string serialize(const rapidjson::Value& record, bool pretty) {
  return json::to_string(record, pretty) + "\n";
}

Status write(std::FILE* out, const rapidjson::Value& record, bool pretty) {
  std::string line = serialize(record, pretty);
  if (std::fwrite(line.data(), 1, line.size(), out) != line.size() || std::fflush(out) != 0)
    return Error(Exit::ioerr, std::string("cannot write the record: ") + std::strerror(errno));
  return {};
}

bool failed(const rapidjson::Value& record) {
  return record.IsObject() && record.HasMember("error");
}

rapidjson::Document make() {
  rapidjson::Document doc(rapidjson::kObjectType);
  doc.AddMember("kiln", kVersion, doc.GetAllocator());
  return doc;
}

rapidjson::Document make_standalone(const std::string& name, const std::string& type) {
  rapidjson::Document rec = make();
  auto& a = rec.GetAllocator();
  using rapidjson::Value;
  Value builder(rapidjson::kObjectType);
  builder.AddMember("type", Value(type, a), a);
  Value template_info(rapidjson::kObjectType);
  template_info.AddMember("path", "", a);
  std::error_code ec;
  template_info.AddMember("dir", Value(std::filesystem::current_path(ec).string(), a), a);
  template_info.AddMember("sha256", Value(digest::sha256_hex(""), a), a);
  Value build(rapidjson::kObjectType);
  build.AddMember("name", Value(name, a), a);
  build.AddMember("type", Value(type, a), a);
  build.AddMember("builder", builder, a);
  build.AddMember("provisioners", Value(rapidjson::kArrayType), a);
  build.AddMember("post_processors", Value(rapidjson::kArrayType), a);
  build.AddMember("captures", Value(rapidjson::kArrayType), a);
  build.AddMember("on_error", "cleanup", a);
  build.AddMember("template", template_info, a);
  build.AddMember("run_uuid", Value(digest::random_uuid(), a), a);
  build.AddMember("timestamp", static_cast<int64_t>(std::time(nullptr)), a);
  build.AddMember("sensitive", Value(rapidjson::kArrayType), a);
  rec.AddMember("build", build, a);
  return rec;
}

namespace {

void put_location(rapidjson::Value& obj, const Location& where,
                  rapidjson::Document::AllocatorType& a) {
  if (!where.file.empty()) obj.AddMember("file", rapidjson::Value(where.file, a), a);
  if (where.line > 0) obj.AddMember("line", where.line, a);
  if (where.column > 0) obj.AddMember("column", where.column, a);
  if (!where.pointer.empty()) obj.AddMember("pointer", rapidjson::Value(where.pointer, a), a);
}

}  // namespace

void set_error(rapidjson::Document& record, std::string_view tool, const Error& e,
               std::string_view build, const Errors& extra,
               const std::vector<std::string>& secrets) {
  auto& a = record.GetAllocator();
  if (!record.IsObject()) record.SetObject();
  if (!record.HasMember("kiln")) record.AddMember("kiln", kVersion, a);
  record.RemoveMember("error");
  rapidjson::Value err(rapidjson::kObjectType);
  err.AddMember("tool", rapidjson::Value(std::string(tool), a), a);
  int code = to_int(e.code);
  if (code < 1 || code > 255) code = to_int(Exit::software);
  err.AddMember("exit", code, a);
  err.AddMember("code", rapidjson::Value(std::string(exit_name(e.code)), a), a);
  err.AddMember("message", rapidjson::Value(log::redact(e.message, secrets), a), a);
  if (!e.step.empty()) err.AddMember("step", rapidjson::Value(e.step, a), a);
  if (!build.empty()) err.AddMember("build", rapidjson::Value(std::string(build), a), a);
  put_location(err, e.where, a);
  if (!extra.empty()) {
    rapidjson::Value list(rapidjson::kArrayType);
    for (const Error& x : extra) {
      rapidjson::Value item(rapidjson::kObjectType);
      item.AddMember("message", rapidjson::Value(log::redact(x.message, secrets), a), a);
      put_location(item, x.where, a);
      list.PushBack(item, a);
    }
    err.AddMember("errors", list, a);
  }
  record.AddMember("error", err, a);
}

std::vector<std::string> secrets(const rapidjson::Value& record) {
  std::vector<std::string> out;
  if (!record.IsObject()) return out;
  auto b = record.FindMember("build");
  if (b == record.MemberEnd() || !b->value.IsObject()) return out;
  auto s = b->value.FindMember("sensitive");
  if (s == b->value.MemberEnd() || !s->value.IsArray()) return out;
  for (const auto& p : s->value.GetArray()) {
    if (!p.IsString()) continue;
    const rapidjson::Value* v = rapidjson::Pointer(p.GetString()).Get(b->value);
    if (v && v->IsString() && v->GetStringLength() > 0) out.emplace_back(v->GetString());
  }
  return out;
}

std::string build_name(const rapidjson::Value& record) {
  if (!record.IsObject()) return {};
  auto b = record.FindMember("build");
  if (b != record.MemberEnd() && b->value.IsObject()) {
    auto n = b->value.FindMember("name");
    if (n != b->value.MemberEnd() && n->value.IsString()) return n->value.GetString();
  }
  return {};
}

}  // namespace kiln::record

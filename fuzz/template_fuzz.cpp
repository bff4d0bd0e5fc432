// SPDX-License-Identifier: MIT
// libFuzzer target: any bytes as a Packer JSON template, through the whole
// of template loading (JSON with positions, variables, template functions,
// option coercion, per-type rules, build sections and their schema).

#include <cstddef>
#include <cstdint>
#include <string>

#include "template.hpp"
#include "template_text.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  kiln::templates::Request req;
  req.path = "fuzz.json";
  req.template_text = text;
  req.timestamp = 1136239445;
  auto out = kiln::templates::load(req);
  (void)out;

  // The same bytes as a single template string, to reach the Go-template
  // parser with inputs that are not JSON.
  kiln::tmpl::Context ctx;
  ctx.user = [](const std::string& n) -> kiln::Result<std::string> { return n; };
  ctx.timestamp = 1136239445;
  ctx.defer_unknown_fields = size % 2 == 0;
  auto r = kiln::tmpl::render(text, ctx);
  (void)r;
  return 0;
}

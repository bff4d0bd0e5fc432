// SPDX-License-Identifier: MIT
#define BOOST_TEST_MODULE template_text
#include "template_text.hpp"

#include <boost/test/unit_test.hpp>
#include <cstdlib>
#include <map>
#include <random>
#include <stdexcept>
#include <string>

namespace tmpl = kiln::tmpl;

namespace {

// Go's reference time, 2006-01-02T15:04:05-07:00, as a UTC instant.
constexpr std::int64_t kReference = 1136239445;

tmpl::Context context() {
  static const std::map<std::string, std::string> vars = {
      {"name", "Debian"}, {"x", "MiXeD"}, {"csv", "a,b,c"}, {"empty", ""}, {"ks", "preseed.cfg"},
  };
  tmpl::Context c;
  c.user = [](const std::string& n) -> kiln::Result<std::string> {
    auto it = vars.find(n);
    if (it == vars.end())
      return kiln::Error(kiln::Exit::dataerr, "variable \"" + n + "\" is not set");
    return it->second;
  };
  c.build_name = "qemu-debian";
  c.build_type = "qemu";
  c.template_dir = "/srv/templates";
  c.pwd = "/home/builder";
  c.packer_version = "1.6.6";
  c.timestamp = kReference;
  return c;
}

// Renders with the standard context; a failure becomes "ERROR: message" so
// that one BOOST_TEST shows both what was expected and what came out.
std::string r(std::string_view text, const tmpl::Context& c = context()) {
  auto out = tmpl::render(text, c);
  if (!out) return "ERROR: " + out.error().message;
  return *out;
}

std::string err(std::string_view text, const tmpl::Context& c = context()) {
  auto out = tmpl::render(text, c);
  if (out) return "rendered: " + *out;
  BOOST_TEST((out.error().code == kiln::Exit::dataerr));
  return out.error().message;
}

tmpl::Context deferring() {
  tmpl::Context c = context();
  c.defer_unknown_fields = true;
  return c;
}

// 8-4-4-4-12 lowercase hex, version 4, RFC 4122 variant.
bool is_uuid_v4(const std::string& s) {
  if (s.size() != 36) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return false;
    } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return false;
    }
  }
  return s[14] == '4' && std::string_view("89ab").find(s[19]) != std::string_view::npos;
}

bool contains(const std::string& s, std::string_view part) {
  return s.find(part) != std::string::npos;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(text_and_literals)

BOOST_AUTO_TEST_CASE(plain_text_is_unchanged) {
  BOOST_TEST(r("") == "");
  BOOST_TEST(r("no actions } here {") == "no actions } here {");
  BOOST_TEST(r("closing }} alone") == "closing }} alone");
  BOOST_TEST(r(std::string_view("nul\0byte", 8)) == std::string("nul\0byte", 8));
}

BOOST_AUTO_TEST_CASE(has_actions_looks_for_open_braces) {
  BOOST_TEST(tmpl::has_actions("a {{ user `x` }}"));
  BOOST_TEST(tmpl::has_actions("{{"));
  BOOST_TEST(!tmpl::has_actions("a { {b} }} c"));
  BOOST_TEST(!tmpl::has_actions(""));
}

BOOST_AUTO_TEST_CASE(string_literals_use_go_escapes) {
  BOOST_TEST(r(R"({{ "a\tb" }})") == "a\tb");
  BOOST_TEST(r(R"({{ "\x41\101\u00e9\U0001F600\\\"" }})") == "AA\xC3\xA9\xF0\x9F\x98\x80\\\"");
  BOOST_TEST(r("{{ `raw \\n {{ }} \"` }}") == "raw \\n {{ }} \"");
  BOOST_TEST(r("{{ `a\r\nb` }}") == "a\nb");  // Unquote drops \r
  BOOST_TEST(r(R"({{ "}}" }})") == "}}");
  BOOST_TEST(contains(err(R"({{ "\q" }})"), "invalid syntax"));
  BOOST_TEST(contains(err(R"({{ "\'" }})"), "invalid syntax"));
  BOOST_TEST(err(R"({{ "abc }})") == "unterminated quoted string at column 1");
  BOOST_TEST(err("{{ `abc }}") == "unterminated raw quoted string at column 1");
}

BOOST_AUTO_TEST_CASE(numbers_bools_and_characters) {
  BOOST_TEST(r("{{ 42 }}") == "42");
  BOOST_TEST(r("{{ -7 }}") == "-7");
  BOOST_TEST(r("{{-3}}") == "-3");  // no space after "-": a number, not a trim
  BOOST_TEST(r("{{ 0x1F }} {{ 0o17 }} {{ 017 }} {{ 0b101 }} {{ 1_000 }}") == "31 15 15 5 1000");
  BOOST_TEST(r("{{ 1e3 }} {{ 2.0 }}") == "1000 2");
  BOOST_TEST(r("{{ 'a' }} {{ '\\n' }}") == "97 10");
  BOOST_TEST(r("{{ true }} {{ false }}") == "true false");
  BOOST_TEST(contains(err("{{ 1.5 }}"), "floating-point number 1.5"));
  BOOST_TEST(contains(err("{{ 99999999999999999999 }}"), "out of range"));
  BOOST_TEST(contains(err("{{ 12abc }}"), "bad number syntax"));
  BOOST_TEST(contains(err("{{ 1__0 }}"), "illegal number syntax"));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(packer_functions)

BOOST_AUTO_TEST_CASE(user_variables) {
  BOOST_TEST(r("{{user `name`}}") == "Debian");
  BOOST_TEST(r("{{ user \"name\" }}-{{user `ks`}}") == "Debian-preseed.cfg");
  BOOST_TEST(err("x {{ user `nope` }}") ==
             "error calling user: variable \"nope\" is not set at column 3");
  tmpl::Context c = context();
  c.user = nullptr;
  BOOST_TEST(contains(err("{{ user `name` }}", c), "user variables are not available"));
}

BOOST_AUTO_TEST_CASE(time_functions_use_the_fixed_instant) {
  BOOST_TEST(r("{{timestamp}}") == "1136239445");
  BOOST_TEST(r("{{ isotime }}") == "2006-01-02T22:04:05Z");
  BOOST_TEST(r("{{ isotime \"2006-01-02\" }}") == "2006-01-02");
  BOOST_TEST(r("ami-{{isotime `20060102150405`}}") == "ami-20060102220405");
  BOOST_TEST(r("{{ isotime \"Mon Jan 2 15:04 MST\" }}") == "Mon Jan 2 22:04 UTC");
  BOOST_TEST(r("{{ strftime \"%Y-%m-%d %H:%M:%S\" }}") == "2006-01-02 22:04:05");
  BOOST_TEST(contains(err("{{ isotime \"a\" \"b\" }}"),
                      "error calling isotime: too many values, 1 needed: [a b]"));
  tmpl::Context c = context();
  c.timestamp = 0;
  BOOST_TEST(r("{{ timestamp }} {{ isotime }}", c) == "0 1970-01-01T00:00:00Z");
}

BOOST_AUTO_TEST_CASE(uuid_is_a_fresh_version_4_uuid) {
  const std::string a = r("{{ uuid }}");
  const std::string b = r("{{uuid}}");
  BOOST_TEST(is_uuid_v4(a), a);
  BOOST_TEST(is_uuid_v4(b), b);
  BOOST_TEST(!is_uuid_v4("not-a-uuid"));
  BOOST_TEST(a != b);
}

BOOST_AUTO_TEST_CASE(context_functions) {
  BOOST_TEST(r("{{ build_name }}/{{ build_type }}") == "qemu-debian/qemu");
  BOOST_TEST(r("{{ template_dir }}/http") == "/srv/templates/http");
  BOOST_TEST(r("{{ pwd }}") == "/home/builder");
  BOOST_TEST(r("{{ packer_version }}") == "1.6.6");
  tmpl::Context c = context();
  c.build_name.clear();
  c.build_type.clear();
  c.template_dir.clear();
  BOOST_TEST(err("{{ build_name }}", c) ==
             "error calling build_name: build_name not available at column 1");
  BOOST_TEST(contains(err("{{ build_type }}", c), "build_type not available"));
  BOOST_TEST(contains(err("{{ template_dir }}", c), "template path not available"));
}

BOOST_AUTO_TEST_CASE(env_only_where_allowed) {
  ::setenv("KILN_TEMPLATE_TEXT_TEST", "from-env", 1);
  BOOST_TEST(err("{{ env `KILN_TEMPLATE_TEXT_TEST` }}") ==
             "error calling env: env vars are not allowed here at column 1");
  tmpl::Context c = context();
  c.env_allowed = true;
  BOOST_TEST(r("{{ env `KILN_TEMPLATE_TEXT_TEST` }}", c) == "from-env");
  BOOST_TEST(r("[{{ env `KILN_TEMPLATE_TEXT_TEST_UNSET` }}]", c) == "[]");
}

BOOST_AUTO_TEST_CASE(split) {
  BOOST_TEST(r("{{ split \"a,b,c\" \",\" 1 }}") == "b");
  BOOST_TEST(r("{{ split (user `csv`) \",\" 2 }}") == "c");
  BOOST_TEST(r("{{ split \"abc\" \"\" 1 }}") == "b");
  BOOST_TEST(r("{{ split \"abc\" \"x\" 0 }}") == "abc");
  BOOST_TEST(r("[{{ split \"a,\" \",\" 1 }}]") == "[]");
  // The piped value is the last argument, so it can only be the index.
  BOOST_TEST(r("{{ 1 | split \"a,b,c\" \",\" }}") == "b");
  // "a,b" | split "," 0 calls split("," , 0, "a,b"): 0 is in the
  // separator's place, so Go rejects it before looking at the index.
  BOOST_TEST(err("{{ \"a,b\" | split \",\" 0 }}") ==
             "wrong type for argument 2 of split: expected string; got int at "
             "column 1");
  BOOST_TEST(err("{{ \"0\" | split \"a,b\" \",\" }}") ==
             "wrong type for argument 3 of split: expected int; got string at "
             "column 1");
  BOOST_TEST(err("{{ split \"a,b\" \",\" 5 }}") ==
             "error calling split: the substring 5 was unavailable using the "
             "separator value, ,, only 2 values were found at column 1");
  BOOST_TEST(contains(err("{{ split \"a,b\" \",\" -1 }}"), "index out of range [-1]"));
  BOOST_TEST(contains(err("{{ split \"a\" \",\" \"0\" }}"), "expected int; got string"));
}

BOOST_AUTO_TEST_CASE(replace_and_replace_all) {
  BOOST_TEST(r("{{ replace \"a\" \"b\" 1 \"aaa\" }}") == "baa");
  BOOST_TEST(r("{{ replace \"a\" \"b\" 2 \"aaa\" }}") == "bba");
  BOOST_TEST(r("{{ replace \"a\" \"b\" -1 \"aaa\" }}") == "bbb");
  BOOST_TEST(r("{{ replace \"a\" \"b\" 0 \"aaa\" }}") == "aaa");
  BOOST_TEST(r("{{ replace_all \" \" \"-\" \"a b c\" }}") == "a-b-c");
  BOOST_TEST(r("{{ \"aaa\" | replace_all \"a\" \"bc\" }}") == "bcbcbc");
  BOOST_TEST(r("{{ replace_all \"\" \"-\" \"ab\" }}") == "-a-b-");
  BOOST_TEST(r("{{ replace \"\" \"-\" 2 \"ab\" }}") == "-a-b");
  BOOST_TEST(r("{{ user `name` | replace_all \"e\" \"E\" }}") == "DEbian");
  BOOST_TEST(err("{{ replace \"a\" \"b\" \"aaa\" }}") ==
             "wrong number of args for replace: want 4 got 3 at column 1");
}

BOOST_AUTO_TEST_CASE(upper_and_lower) {
  BOOST_TEST(r("{{ upper \"abc\" }}{{ lower \"DEF\" }}") == "ABCdef");
  BOOST_TEST(r("{{ \"x\" | upper }}") == "X");
  BOOST_TEST(r("{{ user `x` | lower }}") == "mixed");
  BOOST_TEST(r("{{ upper \"\xC3\xA9t\xC3\xA9\" }}") == "\xC3\x89T\xC3\x89");
  BOOST_TEST(r("{{ lower \"\xC3\x89\" }}") == "\xC3\xA9");
  // strings.Map turns invalid UTF-8 into U+FFFD.
  BOOST_TEST(r("{{ upper \"a\xFF\" }}") == "A\xEF\xBF\xBD");
}

BOOST_AUTO_TEST_CASE(nested_calls_and_pipelines) {
  BOOST_TEST(r("{{ upper (user \"x\") }}") == "MIXED");
  BOOST_TEST(r("{{ lower (upper (user `name`)) }}") == "debian");
  BOOST_TEST(r("{{ (user `name`) }}") == "Debian");
  BOOST_TEST(r("{{ user `name` | upper | lower }}") == "debian");
  BOOST_TEST(r("{{ upper timestamp }}") == "1136239445");  // a bare function call
  BOOST_TEST(r("{{ ((((\"deep\")))) }}") == "deep");
}

BOOST_AUTO_TEST_CASE(sed_and_network_functions_are_errors) {
  BOOST_TEST(err("{{ sed \"s/a/b/\" \"a\" }}") ==
             "template function sed is deprecated, use replace or replace_all "
             "instead at column 1");
  BOOST_TEST(err("{{ vault \"/secret/x\" \"k\" }}") ==
             "function \"vault\" is not supported by kiln (it needs a network "
             "service) at column 1");
  BOOST_TEST(contains(err("{{ consul_key \"a/b\" }}"), "function \"consul_key\""));
  BOOST_TEST(contains(err("{{ aws_secretsmanager \"a\" }}"), "network service"));
  BOOST_TEST(contains(err("{{ call \"x\" }}"), "\"call\" is not supported"));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(go_builtins)

BOOST_AUTO_TEST_CASE(print_family) {
  BOOST_TEST(r("{{ print 1 2 }}") == "1 2");
  BOOST_TEST(r("{{ print \"a\" \"b\" }}") == "ab");
  BOOST_TEST(r("{{ print \"a\" 1 true }}") == "a1 true");
  BOOST_TEST(r("{{ println \"a\" 1 }}") == "a 1\n");
  BOOST_TEST(r("{{ print }}") == "");
}

BOOST_AUTO_TEST_CASE(printf_verbs) {
  BOOST_TEST(r("{{ printf \"%s-%d\" \"a\" 3 }}") == "a-3");
  BOOST_TEST(r("{{ printf \"%v %v %v\" \"s\" 7 true }}") == "s 7 true");
  BOOST_TEST(r("{{ printf \"%q\" \"a\\\"b\\n\" }}") == "\"a\\\"b\\n\"");
  BOOST_TEST(r("{{ printf \"%x %X %x\" \"hi\" 255 -255 }}") == "6869 FF -ff");
  BOOST_TEST(r("{{ printf \"100%%\" }}") == "100%");
  BOOST_TEST(r("{{ printf \"%05d|%-4s|%4s|%.2s\" 42 \"ab\" \"ab\" \"abc\" }}") ==
             "00042|ab  |  ab|ab");
  BOOST_TEST(r("{{ printf \"%d\" \"x\" }}") == "%!d(string=x)");
  BOOST_TEST(r("{{ printf \"%s %s\" \"x\" }}") == "x %!s(MISSING)");
  BOOST_TEST(r("{{ printf \"%s\" \"x\" 1 }}") == "x%!(EXTRA int=1)");
  BOOST_TEST(r("{{ printf \"%t %c\" true 65 }}") == "true A");
  BOOST_TEST(r("{{ \"x\" | printf \"%s-%s\" \"a\" }}") == "a-x");
  BOOST_TEST(r("{{ printf \"%\" }}") == "%!(NOVERB)");
  BOOST_TEST(contains(err("{{ printf 3 }}"), "expected string; got int"));
}

BOOST_AUTO_TEST_CASE(len_and_index) {
  BOOST_TEST(r("{{ len \"abc\" }}") == "3");
  BOOST_TEST(r("{{ user `name` | len }}") == "6");
  BOOST_TEST(r("{{ index \"abc\" 1 }}") == "98");  // a Go byte
  BOOST_TEST(contains(err("{{ index \"abc\" 3 }}"), "index out of range: 3"));
  BOOST_TEST(contains(err("{{ len 3 }}"), "error calling len: len of type int"));
}

BOOST_AUTO_TEST_CASE(comparisons_and_logic) {
  BOOST_TEST(r("{{ eq 1 1 }} {{ eq \"a\" \"b\" }} {{ eq 1 2 3 1 }}") == "true false true");
  BOOST_TEST(r("{{ ne \"a\" \"b\" }} {{ lt 1 2 }} {{ le 2 2 }} {{ gt \"b\" "
               "\"a\" }} {{ ge 1 2 }}") == "true true true true false");
  BOOST_TEST(r("{{ not \"\" }} {{ not 1 }}") == "true false");
  BOOST_TEST(r("{{ and 1 0 2 }} {{ and 1 2 }} {{ or \"\" \"x\" }} {{ or 0 \"\" }}") == "0 2 x ");
  BOOST_TEST(contains(err("{{ eq \"a\" 1 }}"), "error calling eq: incompatible types"));
  BOOST_TEST(contains(err("{{ lt true false }}"), "invalid type for comparison"));
  BOOST_TEST(contains(err("{{ eq 1 }}"), "missing argument for comparison"));
}

BOOST_AUTO_TEST_CASE(escapers) {
  BOOST_TEST(r("{{ html \"<a href='x'>&\" }}") == "&lt;a href=&#39;x&#39;&gt;&amp;");
  BOOST_TEST(r("{{ urlquery \"a b&c=d/é\" }}") == "a+b%26c%3Dd%2F%C3%A9");
  BOOST_TEST(r("{{ js \"it's <b>\" }}") == "it\\'s \\u003Cb\\u003E");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(syntax)

BOOST_AUTO_TEST_CASE(trim_markers) {
  BOOST_TEST(r("a  {{- \"b\" -}}  c") == "abc");
  BOOST_TEST(r("a \n\t{{- \"b\" }} c") == "ab c");
  BOOST_TEST(r("a {{ \"b\" -}} \n c") == "a bc");
  BOOST_TEST(r("x\n{{- /* note */ -}}\ny") == "xy");
  BOOST_TEST(r("{{- \"only\" -}}") == "only");
}

BOOST_AUTO_TEST_CASE(comments) {
  BOOST_TEST(r("a{{/* a comment with }} and {{ */}}b") == "ab");
  BOOST_TEST(r("a {{/* c */}} b") == "a  b");
  BOOST_TEST(err("a{{/* never closed }}") == "unclosed comment at column 2");
  BOOST_TEST(err("{{/* c */ }}") == "comment ends before closing delimiter at column 1");
}

BOOST_AUTO_TEST_CASE(unclosed_and_malformed_actions) {
  BOOST_TEST(err("abc {{ user `x`") == "unclosed action \"{{\" at column 5");
  BOOST_TEST(err("{{") == "unclosed action \"{{\" at column 1");
  BOOST_TEST(err("ok {{ }}") == "missing value for command at column 4");
  BOOST_TEST(contains(err("{{ upper (\"a\" }}"), "unclosed left paren"));
  BOOST_TEST(contains(err("{{ \"a\") }}"), "unexpected right paren"));
  BOOST_TEST(contains(err("{{ () }}"), "missing value for parenthesized pipeline"));
  BOOST_TEST(contains(err("{{ \"a\"\"b\" }}"), "in operand"));
  BOOST_TEST(contains(err("{{ upper\"a\" }}"), "bad character U+0022"));
  BOOST_TEST(contains(err("{{ \"a\" | }}"), "missing command after \"|\""));
  BOOST_TEST(contains(err("{{ \"a\" | \"b\" }}"), "non executable command in pipeline stage 2"));
  BOOST_TEST(contains(err("{{ # }}"), "unexpected \"#\" in operand"));
  BOOST_TEST(contains(err("{{ \x01 }}"), "unrecognized character in action: U+0001"));
  BOOST_TEST(contains(err("{{ nil }}"), "nil is not a command"));
}

BOOST_AUTO_TEST_CASE(errors_name_the_column_and_line) {
  BOOST_TEST(err("0123456789{{ foo }}") == "function \"foo\" not defined at column 11");
  BOOST_TEST(err("first\n  {{ foo }}") == "function \"foo\" not defined at line 2, column 3");
  BOOST_TEST(err("{{ user `name` }} {{ upper }}") ==
             "wrong number of args for upper: want 1 got 0 at column 19");
}

BOOST_AUTO_TEST_CASE(argument_counts_and_types) {
  BOOST_TEST(err("{{ upper \"a\" \"b\" }}") ==
             "wrong number of args for upper: want 1 got 2 at column 1");
  BOOST_TEST(err("{{ \"a\" | upper \"b\" }}") ==
             "wrong number of args for upper: want 1 got 2 at column 1");
  BOOST_TEST(err("{{ timestamp 1 }}") ==
             "wrong number of args for timestamp: want 0 got 1 at column 1");
  BOOST_TEST(err("{{ printf }}") ==
             "wrong number of args for printf: want at least 1 got 0 at column 1");
  BOOST_TEST(err("{{ upper 3 }}") ==
             "wrong type for argument 1 of upper: expected string; got int at "
             "column 1");
  BOOST_TEST(contains(err("{{ \"a\" \"b\" }}"), "can't give argument to non-function \"a\""));
  BOOST_TEST(contains(err("{{ \"a\" | .Name }}"), "can't give argument to non-function .Name"));
}

BOOST_AUTO_TEST_CASE(unsupported_constructs_are_named) {
  BOOST_TEST(err("{{ range .Items }}x{{ end }}") ==
             "{{range}} is not supported by kiln at column 1");
  BOOST_TEST(contains(err("{{ with 1 }}x{{ end }}"), "{{with}} is not supported"));
  BOOST_TEST(contains(err("{{ define \"a\" }}x{{ end }}"), "{{define}} is not supported"));
  BOOST_TEST(contains(err("{{ template \"a\" }}"), "{{template}} is not supported"));
  BOOST_TEST(contains(err("{{ $x := 1 }}"), "template variables (\"$x\") are not supported"));
  BOOST_TEST(contains(err("{{ upper $x }}"), "are not supported by kiln"));
}

BOOST_AUTO_TEST_CASE(if_else_end) {
  BOOST_TEST(r("{{ if eq (user `name`) \"Debian\" }}apt{{ else }}yum{{ end }}") == "apt");
  BOOST_TEST(r("{{ if user `empty` }}set{{ else }}unset{{ end }}") == "unset");
  BOOST_TEST(r("{{if 0}}a{{else if false}}b{{else if \"x\"}}c{{else}}d{{end}}") == "c");
  BOOST_TEST(r("{{if 0}}a{{else if false}}b{{end}}!") == "!");
  BOOST_TEST(r("{{ if 1 }}{{ if 0 }}x{{ else }}y{{ end }}{{ end }}") == "y");
  BOOST_TEST(r("a\n{{- if true }}\nb\n{{- end }}") == "a\nb");
  BOOST_TEST(err("{{ if 1 }}x") == "missing {{end}} for {{if}} at column 1");
  BOOST_TEST(err("x{{ end }}") == "unexpected {{end}} at column 2");
  BOOST_TEST(err("{{ else }}") == "unexpected {{else}} at column 1");
  BOOST_TEST(contains(err("{{ if }}x{{ end }}"), "missing value for if"));
  BOOST_TEST(
      contains(err("{{if 1}}a{{else}}b{{else}}c{{end}}"), "expected {{end}}; found {{else}}"));
  // Errors in the branch not taken are not reported, as in Go.
  BOOST_TEST(r("{{ if false }}{{ user `nope` }}{{ end }}ok") == "ok");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(fields)

BOOST_AUTO_TEST_CASE(known_fields_are_rendered) {
  tmpl::Context c = context();
  c.fields = {{"HTTPIP", "10.0.2.2"}, {"HTTPPort", "8080"}, {"A.B", "nested"}};
  BOOST_TEST(r("http://{{ .HTTPIP }}:{{ .HTTPPort }}/", c) == "http://10.0.2.2:8080/");
  BOOST_TEST(r("{{ .HTTPIP | replace_all \".\" \"-\" }}", c) == "10-0-2-2");
  BOOST_TEST(r("{{ .A.B }}", c) == "nested");
  BOOST_TEST(r("{{ if .HTTPIP }}y{{ end }}", c) == "y");
}

BOOST_AUTO_TEST_CASE(unknown_fields_are_errors_unless_deferred) {
  BOOST_TEST(err("x {{ .HTTPIP }}") ==
             "can't evaluate field HTTPIP: it is not available here at column 3");
  BOOST_TEST(r("[{{ . }}]") == "[]");
}

BOOST_AUTO_TEST_CASE(deferred_fields_are_kept_verbatim) {
  const tmpl::Context c = deferring();
  BOOST_TEST(r("{{ .HTTPIP }}:{{ .HTTPPort }}", c) == "{{ .HTTPIP }}:{{ .HTTPPort }}");
  BOOST_TEST(r("http://{{.HTTPIP}}:{{ .HTTPPort }}/{{ user `ks` }}<enter>", c) ==
             "http://{{.HTTPIP}}:{{ .HTTPPort }}/preseed.cfg<enter>");
  BOOST_TEST(r("{{ .Name | upper }}", c) == "{{ .Name | upper }}");
  BOOST_TEST(r("{{ upper (lower .Name) }}", c) == "{{ upper (lower .Name) }}");
  BOOST_TEST(r("a {{- .X -}} b", c) == "a{{- .X -}}b");
  BOOST_TEST(r("{{ . }}", c) == "{{ . }}");
  // A deferred condition keeps the if/else/end for the later renderer and
  // still renders what it can inside the branches.
  BOOST_TEST(r("{{ if .Debug }}{{ user `name` }}{{ else }}-{{ end }}", c) ==
             "{{ if .Debug }}Debian{{ else }}-{{ end }}");
  BOOST_TEST(r("{{if .A}}1{{else if .B}}2{{else}}3{{end}}", c) ==
             "{{if .A}}1{{else if .B}}2{{else}}3{{end}}");
  // A decided condition drops its branch; a deferred {{else if}} that is
  // left becomes a plain {{if}}.
  BOOST_TEST(r("{{if 0}}1{{else if .B}}2{{end}}", c) == "{{if .B}}2{{end}}");
  BOOST_TEST(r("{{if 0}}1{{- else  if .B -}} 2 {{end}}", c) == "{{- if .B -}}2 {{end}}");
  BOOST_TEST(r("{{if 1}}1{{else if .B}}2{{end}}", c) == "1");
  // Syntax and function errors are still errors.
  BOOST_TEST(contains(err("{{ .Name | foo }}", c), "function \"foo\" not defined"));
  BOOST_TEST(contains(err("{{ .Name \"arg\" }}", c), "can't give argument"));
  tmpl::Context known = c;
  known.fields = {{"HTTPIP", "10.0.2.2"}};
  BOOST_TEST(r("{{ .HTTPIP }}:{{ .HTTPPort }}", known) == "10.0.2.2:{{ .HTTPPort }}");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(check_syntax)

BOOST_AUTO_TEST_CASE(accepts_what_parses_and_evaluates_nothing) {
  BOOST_TEST(tmpl::check_syntax("plain").ok());
  BOOST_TEST(tmpl::check_syntax("{{ user `never_defined` }} {{ env `X` }}").ok());
  BOOST_TEST(tmpl::check_syntax("{{ .HTTPIP }} {{ build_name }} {{ vault `a` `b` }}").ok());
  BOOST_TEST(tmpl::check_syntax("{{ if 1 }}{{ upper (lower `A`) }}{{ end }}").ok());
  // Wrong argument counts are found when rendering, as in Go.
  BOOST_TEST(tmpl::check_syntax("{{ upper }}").ok());
}

BOOST_AUTO_TEST_CASE(rejects_unknown_functions_sed_and_bad_syntax) {
  auto unknown = tmpl::check_syntax("{{ foo `x` }}");
  BOOST_TEST(!unknown.ok());
  BOOST_TEST(unknown.error().message == "function \"foo\" not defined at column 1");
  BOOST_TEST((unknown.error().code == kiln::Exit::dataerr));
  auto sed = tmpl::check_syntax("{{ sed `s/a/b/` `a` }}");
  BOOST_TEST(!sed.ok());
  BOOST_TEST(contains(sed.error().message, "sed is deprecated"));
  BOOST_TEST(!tmpl::check_syntax("{{ user `x`").ok());
  BOOST_TEST(!tmpl::check_syntax("{{ if 1 }}").ok());
  BOOST_TEST(!tmpl::check_syntax("{{ upper (lower (foo)) }}").ok());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(robustness)

BOOST_AUTO_TEST_CASE(nesting_is_bounded) {
  const std::string ok = "{{ " + std::string(100, '(') + "`x`" + std::string(100, ')') + " }}";
  BOOST_TEST(r(ok) == "x");
  const std::string deep = "{{ " + std::string(101, '(') + "`x`" + std::string(101, ')') + " }}";
  BOOST_TEST(contains(err(deep), "nested more than 100 deep"));
  std::string ifs;
  for (int i = 0; i < 5000; ++i) ifs += "{{if 1}}";
  BOOST_TEST(contains(err(ifs), "nested more than 100 deep"));
  const std::string parens(100000, '(');
  BOOST_TEST(contains(err("{{" + parens), "nested more than 100 deep"));
}

BOOST_AUTO_TEST_CASE(values_cannot_grow_without_bound) {
  std::string t = "`xxxxxxxxxxxxxxxx`";
  for (int i = 0; i < 10; ++i) t = "(replace_all \"\" \"yyyyyyyy\" " + t + ")";
  BOOST_TEST(contains(err("{{ " + t + " }}"), "longer than 8 MiB"));
  BOOST_TEST(r("{{ printf \"%999999999d\" 1 }}") == "%!(BADWIDTH)1");
}

BOOST_AUTO_TEST_CASE(exceptions_from_callbacks_do_not_escape) {
  tmpl::Context c = context();
  c.user = [](const std::string&) -> kiln::Result<std::string> {
    throw std::runtime_error("boom");
  };
  auto out = tmpl::render("{{ user `x` }}", c);
  BOOST_TEST(!out.ok());
  BOOST_TEST((out.error().code == kiln::Exit::software));
  BOOST_TEST(contains(out.error().message, "boom"));
}

BOOST_AUTO_TEST_CASE(random_input_never_crashes) {
  // Pieces of template syntax glued at random: every outcome must be a
  // value or an Error (ASan/UBSan catch the rest).
  const std::vector<std::string> pieces = {
      "{{", "}}", "{{-",   " -}}",  "(",           ")",      "|",  " ",    "\"",   "`",
      "'",  "\\", "user",  "upper", "split",       "printf", "if", "else", "end",  ".X",
      ".",  "1",  "-",     "0x",    "/*",          "*/",     "\n", "\xFF", "\xC3", "%",
      "$x", ":=", "\"a\"", "`b`",   "replace_all", "index",  "eq", "and",  "sed",  "foo"};
  std::mt19937 rng(12345);
  tmpl::Context plain = context();
  tmpl::Context deferred = deferring();
  int rendered = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string text;
    const int n = static_cast<int>(rng() % 24);
    for (int k = 0; k < n; ++k) text += pieces[rng() % pieces.size()];
    auto a = tmpl::render(text, i % 2 ? plain : deferred);
    auto b = tmpl::check_syntax(text);
    if (a.ok()) ++rendered;
    // Whatever renders also passes the syntax check.
    if (a.ok()) BOOST_TEST_REQUIRE(b.ok(), text);
  }
  BOOST_TEST(rendered > 0);
}

BOOST_AUTO_TEST_SUITE_END()

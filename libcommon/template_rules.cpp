// SPDX-License-Identifier: MIT
// The per-type rules of Packer 1.6.6, in the order its Prepare() functions
// apply them, so a template gets the same verdict (and nearly the same
// words) as from `packer validate`. Paths in messages are the absolute ones
// kiln uses, since relative paths resolve against the template's folder.

#include "template_rules.hpp"

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace kiln::rules {
namespace {

namespace fs = std::filesystem;
using Value = rapidjson::Value;
using Alloc = rapidjson::Document::AllocatorType;

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

bool ends_with(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && s.substr(s.size() - p.size()) == p;
}

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) out += sep;
    out += v[i];
  }
  return out;
}

bool contains(const std::vector<std::string>& v, std::string_view s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// Go prints syscall errors with strerror's words in lower case.
std::string errno_text(int e) {
  std::string s = std::strerror(e);
  if (!s.empty()) s[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(s[0])));
  return s;
}

/// "" when `path` exists, else Go's error for `op` on it, as os.Stat's
/// "stat P: no such file or directory".
std::string stat_error(const std::string& path, const char* op = "stat") {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) return "";
  const int e = errno;
  return std::string(op) + " " + path + ": " + errno_text(e);
}

/// Go's error for opening an existing `path` that could not be read.
std::string open_error(const std::string& path) {
  const int e = ::access(path.c_str(), R_OK) == 0 ? EIO : errno;
  return "open " + path + ": " + errno_text(e);
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::optional<std::string> read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string home_dir() {
  if (const char* h = std::getenv("HOME"); h && *h) return h;
  if (const passwd* pw = ::getpwuid(::geteuid()); pw && pw->pw_dir) return pw->pw_dir;
  return "/";
}

/// Go's filepath.Glob fails only on a malformed pattern: an unclosed or
/// empty character class, or a trailing backslash. No match is no error.
bool bad_glob(std::string_view p) {
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == '\\') {
      if (++i >= p.size()) return true;
    } else if (p[i] == '[') {
      size_t j = i + 1;
      if (j < p.size() && p[j] == '^') ++j;
      if (j < p.size() && p[j] == ']') return true;
      while (j < p.size() && p[j] != ']') j += p[j] == '\\' ? 2 : 1;
      if (j >= p.size()) return true;
      i = j;
    }
  }
  return false;
}

bool is_url(std::string_view s) {
  auto sep = s.find("://");
  if (sep == std::string_view::npos || sep == 0) return false;
  for (char c : s.substr(0, sep))
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '+' && c != '-' && c != '.')
      return false;
  return true;
}

// ---- Go's encoding/hex, as go-getter uses it for checksums ----

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// fmt's %#U of one byte taken as a rune: U+0078 'x'.
std::string go_rune(unsigned char b) {
  char code[16];
  std::snprintf(code, sizeof code, "U+%04X", b);
  std::string out = code;
  if (b >= 0x20 && b < 0x7f) {
    out += " '";
    out += static_cast<char>(b);
    out += "'";
  } else if (b >= 0xa0) {
    out += " '";
    out += static_cast<char>(0xc0 | (b >> 6));
    out += static_cast<char>(0x80 | (b & 0x3f));
    out += "'";
  }
  return out;
}

/// hex.DecodeString's verdict: the first bad byte, or the odd length once
/// every byte is a digit. On success `bytes` is the decoded length.
bool hex_decode(std::string_view s, size_t& bytes, std::string& err) {
  auto bad = [&](char ch) {
    err = "encoding/hex: invalid byte: " + go_rune(static_cast<unsigned char>(ch));
    return false;
  };
  size_t j = 1;
  for (; j < s.size(); j += 2) {
    if (hex_value(s[j - 1]) < 0) return bad(s[j - 1]);
    if (hex_value(s[j]) < 0) return bad(s[j]);
  }
  if (s.size() % 2 == 1) {
    if (hex_value(s[j - 1]) < 0) return bad(s[j - 1]);
    err = "encoding/hex: odd length hex string";
    return false;
  }
  bytes = s.size() / 2;
  return true;
}

// go-getter guesses a bare checksum's type from its length.
std::string type_for_length(size_t bytes) {
  switch (bytes) {
    case 16:
      return "md5";
    case 20:
      return "sha1";
    case 32:
      return "sha256";
    case 64:
      return "sha512";
    default:
      return "";
  }
}

/// Finds the checksum of `file_name` in a checksum file the way go-getter
/// does: "HEX  NAME", "HEX *NAME", BSD "TYPE (NAME) = HEX", or a line with a
/// bare HEX. Returns "type:hex" or nothing.
std::optional<std::string> find_in_checksum_file(const std::string& text,
                                                 const std::string& file_name) {
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream words(line);
    std::vector<std::string> f;
    for (std::string w; words >> w;) f.push_back(w);
    if (f.empty() || f[0][0] == '#') continue;
    std::string type, value, name;
    if (f.size() >= 4 && f[2] == "=" && f[1].size() > 2 && f[1].front() == '(' &&
        f[1].back() == ')') {
      type = lower(f[0]);
      name = f[1].substr(1, f[1].size() - 2);
      value = f[3];
    } else if (f.size() == 1) {
      value = f[0];
      name = file_name;
    } else {
      value = f[0];
      name = f[1];
      if (!name.empty() && name[0] == '*') name.erase(0, 1);
    }
    if (fs::path(name).filename().string() != file_name) continue;
    size_t bytes = 0;
    std::string err;
    if (!hex_decode(value, bytes, err)) continue;
    if (type.empty()) type = type_for_length(bytes);
    if (type.empty()) continue;
    return type + ":" + lower(value);
  }
  return std::nullopt;
}

// ---- SSH key files, checked as far as golang.org/x/crypto/ssh would ----

std::string base64_decode(std::string_view in) {
  static const std::string digits =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  int val = 0, bits = -8;
  for (char c : in) {
    auto pos = digits.find(c);
    if (pos == std::string::npos) continue;
    val = ((val << 6) + static_cast<int>(pos)) & 0xffffff;
    bits += 6;
    if (bits >= 0) {
      out += static_cast<char>((val >> bits) & 0xff);
      bits -= 8;
    }
  }
  return out;
}

/// "" when `text` holds an unencrypted private key that ssh.ParsePrivateKey
/// would take, else why not, in its words.
std::string private_key_problem(const std::string& text, const std::string& path) {
  auto begin = text.find("-----BEGIN ");
  auto dashes = begin == std::string::npos ? begin : text.find("-----", begin + 11);
  if (dashes == std::string::npos) return "Failed to read key '" + path + "': no key found";
  std::string kind = text.substr(begin + 11, dashes - begin - 11);
  if (!ends_with(kind, "PRIVATE KEY")) return "ssh: no key found";
  if (kind == "ENCRYPTED PRIVATE KEY" || text.find("Proc-Type: 4,ENCRYPTED") != std::string::npos)
    return "ssh: this private key is passphrase protected";
  if (kind == "OPENSSH PRIVATE KEY") {
    auto body = text.find('\n', dashes);
    auto end = body == std::string::npos ? body : text.find("-----END", body);
    if (end == std::string::npos) return "ssh: no key found";
    std::string blob = base64_decode(text.substr(body, end - body));
    static const std::string magic("openssh-key-v1\0", 15);
    if (blob.size() < magic.size() + 4 || blob.compare(0, magic.size(), magic) != 0)
      return "ssh: invalid openssh private key format";
    const auto* p = reinterpret_cast<const unsigned char*>(blob.data()) + magic.size();
    uint32_t len = (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
    if (magic.size() + 4 + len > blob.size()) return "ssh: invalid openssh private key format";
    if (blob.compare(magic.size() + 4, len, "none") != 0)
      return "ssh: this private key is passphrase protected";
  }
  return "";
}

// ---- Go's net.SplitHostPort and Packer's ParseTunnelArgument ----

/// "" and the port, or net.SplitHostPort's error.
std::string split_host_port(const std::string& hostport, std::string& port) {
  auto err = [&](const char* why) { return "address " + hostport + ": " + why; };
  auto i = hostport.rfind(':');
  if (i == std::string::npos) return err("missing port in address");
  size_t j = 0, k = 0;
  if (hostport[0] == '[') {
    auto end = hostport.find(']');
    if (end == std::string::npos) return err("missing ']' in address");
    if (end + 1 == hostport.size()) return err("missing port in address");
    if (end + 1 != i)
      return err(hostport[end + 1] == ':' ? "too many colons in address"
                                          : "missing port in address");
    j = 1;
    k = end + 1;
  } else if (hostport.substr(0, i).find(':') != std::string::npos) {
    return err("too many colons in address");
  }
  if (hostport.find('[', j) != std::string::npos) return err("unexpected '[' in address");
  if (hostport.find(']', k) != std::string::npos) return err("unexpected ']' in address");
  port = hostport.substr(i + 1);
  return "";
}

/// strconv.Atoi's error for `s`, or "".
std::string atoi_error(const std::string& s) {
  const std::string pre = "strconv.Atoi: parsing \"" + s + "\": ";
  size_t i = (!s.empty() && (s[0] == '+' || s[0] == '-')) ? 1 : 0;
  if (i == s.size()) return pre + "invalid syntax";
  for (size_t n = i; n < s.size(); ++n)
    if (!std::isdigit(static_cast<unsigned char>(s[n]))) return pre + "invalid syntax";
  if (s.size() - i > 18) return pre + "value out of range";
  return "";
}

std::string tunnel_problem(const std::string& forward) {
  auto colon = forward.find(':');
  if (colon == std::string::npos)
    return "Error parsing tunnel '" + forward + "': [" + forward + "]";
  std::string listening = forward.substr(0, colon), port;
  if (std::string e = split_host_port(forward.substr(colon + 1), port); !e.empty())
    return "Error parsing forwarding, must be a tcp address: " + e;
  if (std::string e = atoi_error(port); !e.empty())
    return "Error parsing forwarding port, must be a valid port: " + e;
  if (std::string e = atoi_error(listening); !e.empty())
    return "Error parsing listening port, must be a valid port: " + e;
  return "";
}

/// One plugin configuration being checked: reads that treat a missing key
/// like Go's zero value, writes, and diagnostics pointing at their key.
class Config {
 public:
  Config(Value& obj, Alloc& alloc, const BuildInfo& build, const std::string& pointer,
         Errors& errors, Errors& warnings)
      : obj_(obj),
        alloc_(alloc),
        build_(build),
        pointer_(pointer),
        errors_(errors),
        warnings_(warnings) {}

  const BuildInfo& build() const { return build_; }

  /// The value of `key`; null counts as absent, as mapstructure leaves it.
  const Value* find(const char* key) const {
    auto it = obj_.FindMember(key);
    if (it == obj_.MemberEnd() || it->value.IsNull()) return nullptr;
    return &it->value;
  }
  bool has(const char* key) const { return find(key) != nullptr; }

  std::string str(const char* key) const {
    const Value* v = find(key);
    return v && v->IsString() ? std::string(v->GetString(), v->GetStringLength()) : "";
  }
  bool flag(const char* key) const {
    const Value* v = find(key);
    return v && v->IsBool() && v->GetBool();
  }
  int64_t integer(const char* key) const {
    const Value* v = find(key);
    if (!v || !v->IsNumber()) return 0;
    if (v->IsInt64()) return v->GetInt64();
    if (v->IsUint64()) return static_cast<int64_t>(v->GetUint64());
    return static_cast<int64_t>(v->GetDouble());
  }
  /// Durations arrive as seconds.
  double seconds(const char* key) const {
    const Value* v = find(key);
    return v && v->IsNumber() ? v->GetDouble() : 0;
  }
  std::vector<std::string> strings(const char* key) const {
    std::vector<std::string> out;
    const Value* v = find(key);
    if (v && v->IsArray())
      for (const auto& x : v->GetArray())
        if (x.IsString()) out.emplace_back(x.GetString(), x.GetStringLength());
    return out;
  }
  /// Given as a list, even an empty one: Packer tells a nil slice from an
  /// empty one in a few places.
  bool is_list(const char* key) const {
    const Value* v = find(key);
    return v && v->IsArray();
  }

  void set(const char* key, Value v) {
    auto it = obj_.FindMember(key);
    if (it != obj_.MemberEnd())
      it->value = v;
    else
      obj_.AddMember(Value(key, alloc_), v, alloc_);
  }
  void set(const char* key, const std::string& s) { set(key, text(s)); }
  void set(const char* key, const char* s) { set(key, std::string(s)); }
  void set(const char* key, int64_t n) { set(key, Value(n)); }
  void set(const char* key, int n) { set(key, Value(static_cast<int64_t>(n))); }
  void set(const char* key, double d) { set(key, Value(d)); }
  void set(const char* key, bool b) { set(key, Value(b)); }
  void set(const char* key, const std::vector<std::string>& list) {
    Value a(rapidjson::kArrayType);
    for (const auto& s : list) a.PushBack(text(s), alloc_);
    set(key, std::move(a));
  }
  void remove(const char* key) { obj_.RemoveMember(key); }

  /// Fills a string setting Packer treats as unset when empty.
  void default_str(const char* key, const std::string& value) {
    if (str(key).empty()) set(key, value);
  }
  /// Fills an integer setting Packer treats as unset when zero.
  void default_int(const char* key, int64_t value) {
    if (integer(key) == 0) set(key, value);
  }
  /// Fills a duration Packer treats as unset when zero.
  void default_seconds(const char* key, double value) {
    if (seconds(key) == 0) set(key, value);
  }

  static std::string item(const char* key, size_t i) {
    return std::string(key) + "/" + std::to_string(i);
  }
  /// `key` is a key of this object, or key/index of a list's element; ""
  /// is the object itself.
  void error(const std::string& key, std::string message, Exit code = Exit::dataerr) {
    errors_.emplace_back(code, std::move(message), Location{"", 0, 0, pointer(key)});
  }
  void warn(const std::string& key, std::string message) {
    warnings_.emplace_back(Exit::ok, std::move(message), Location{"", 0, 0, pointer(key)});
  }

  /// A local path as kiln reads it: relative to the template's folder.
  /// Keeps a trailing slash, which means "a directory" to some plugins.
  /// One starting with a template action is left alone: what it renders
  /// to later may be absolute.
  std::string local_path(const std::string& p) const {
    if (p.empty() || p[0] == '/' || is_url(p) || starts_with(p, "{{")) return p;
    std::string out = (fs::path(build_.template_dir) / p).lexically_normal().string();
    if (ends_with(p, "/") && !ends_with(out, "/")) out += '/';
    return out;
  }
  /// local_path, where a leading ~ is the user's home as Packer's
  /// ExpandUser has it for key files. A ~ that path resolution has already
  /// put under the template's folder is taken back out.
  std::string user_path(std::string p) const {
    std::string mangled = (fs::path(build_.template_dir) / "~").string();
    if (p == mangled || starts_with(p, mangled + "/")) p = p.substr(mangled.size() - 1);
    if (p == "~" || starts_with(p, "~/")) return home_dir() + p.substr(1);
    return local_path(p);
  }
  void resolve(const char* key) {
    if (const Value* v = find(key); v && v->IsString()) set(key, local_path(str(key)));
  }
  void resolve_user(const char* key) {
    if (const Value* v = find(key); v && v->IsString()) set(key, user_path(str(key)));
  }
  void resolve_list(const char* key) {
    if (!is_list(key)) return;
    std::vector<std::string> v = strings(key);
    for (auto& p : v) p = local_path(p);
    set(key, v);
  }

 private:
  Value text(const std::string& s) {
    return Value(s.c_str(), static_cast<rapidjson::SizeType>(s.size()), alloc_);
  }
  std::string pointer(const std::string& key) const {
    if (key.empty()) return pointer_;
    std::string out = pointer_ + "/";
    for (char c : key) {
      // Only the key's own name needs escaping; "/N" after it is an index.
      if (c == '~')
        out += "~0";
      else
        out += c;
    }
    return out;
  }

  Value& obj_;
  Alloc& alloc_;
  const BuildInfo& build_;
  std::string pointer_;
  Errors& errors_;
  Errors& warnings_;
};

// ---- shared pieces ----

void check_env_vars(Config& c, const char* key) {
  std::vector<std::string> vars = c.strings(key);
  for (size_t i = 0; i < vars.size(); ++i) {
    auto eq = vars[i].find('=');
    if (eq == std::string::npos || eq == 0)
      c.error(Config::item(key, i), "Environment variable not in format 'key=value': " + vars[i]);
  }
}

/// Each of `key`'s files must exist ("Bad WHAT 'P': stat P: ..."); a glob
/// need only be well formed, as with Packer's floppy and CD files.
void check_listed_files(Config& c, const char* key, const std::string& what) {
  std::vector<std::string> paths = c.strings(key);
  for (size_t i = 0; i < paths.size(); ++i) {
    const std::string& p = paths[i];
    std::string problem;
    if (p.find_first_of("*?[") != std::string::npos)
      problem = bad_glob(p) ? "syntax error in pattern" : "";
    else
      problem = stat_error(p);
    if (!problem.empty()) c.error(Config::item(key, i), "Bad " + what + " '" + p + "': " + problem);
  }
}

/// The private key checks of communicator.Config.prepareSSH.
void check_key_file(Config& c, const char* key, const char* cert_key) {
  std::string path = c.str(key);
  if (path.empty()) return;
  const std::string pre = std::string(key) + " is invalid: ";
  if (std::string e = stat_error(path); !e.empty()) return c.error(key, pre + e);
  if (is_directory(path))
    return c.error(key, pre + "Error setting up SSH config: read " + path + ": is a directory");
  auto text = read_text(path);
  if (!text) return c.error(key, pre + "Error setting up SSH config: " + open_error(path));
  if (std::string e = private_key_problem(*text, path); !e.empty())
    return c.error(key, pre + "Error setting up SSH config: " + e);
  if (std::string cert = c.str(cert_key); !cert.empty())
    if (std::string e = stat_error(cert, "open"); !e.empty())
      c.error(cert_key, pre + "unable to read certificate file: " + e);
}

const std::vector<std::string> kCommunicators = {"ssh", "winrm", "none", "docker",
                                                 "dockerWindowsContainer"};

/// communicator.Config.Prepare: defaults and checks of the settings of the
/// communicator in use.
void prepare_communicator(Config& c) {
  c.default_str("communicator", "ssh");
  const std::string type = c.str("communicator");
  if (!contains(kCommunicators, type))
    return c.error("communicator", "Communicator type " + type + " is invalid");
  if (type == "docker" || type == "dockerWindowsContainer")
    c.warn("communicator",
           "the " + type +
               " communicator only works with Docker builders; kiln cannot connect with it");

  if (type == "ssh") {
    c.default_int("ssh_port", 22);
    // The deprecated name wins, as in Packer; the record keeps one name.
    if (c.seconds("ssh_wait_timeout") != 0) c.set("ssh_timeout", c.seconds("ssh_wait_timeout"));
    c.remove("ssh_wait_timeout");
    c.default_seconds("ssh_timeout", 300);
    c.default_seconds("ssh_keep_alive_interval", 5);
    c.default_int("ssh_handshake_attempts", 10);
    for (const char* key : {"ssh_private_key_file", "ssh_certificate_file",
                            "ssh_bastion_private_key_file", "ssh_bastion_certificate_file"})
      c.resolve_user(key);
    if (!c.str("ssh_bastion_host").empty()) {
      c.default_int("ssh_bastion_port", 22);
      c.default_str("ssh_bastion_private_key_file", c.str("ssh_private_key_file"));
      c.default_str("ssh_bastion_certificate_file", c.str("ssh_certificate_file"));
    }
    if (!c.str("ssh_proxy_host").empty()) c.default_int("ssh_proxy_port", 1080);
    // The temporary key's size, as sshkey.GeneratePair picks it.
    c.default_str("temporary_key_pair_type", "rsa");
    const std::string key_type = c.str("temporary_key_pair_type");
    if (key_type == "rsa")
      c.default_int("temporary_key_pair_bits", 4096);
    else if (key_type == "ecdsa")
      c.default_int("temporary_key_pair_bits", 521);
    else if (key_type == "dsa")
      c.default_int("temporary_key_pair_bits", 1024);
    else if (key_type != "ed25519")
      c.warn("temporary_key_pair_type", "temporary_key_pair_type '" + key_type +
                                            "' is not one of rsa, ecdsa, ed25519, dsa: the "
                                            "temporary key cannot be generated");

    if (c.str("ssh_username").empty())
      c.error("ssh_username",
              "An ssh_username must be specified. Note: some builders used to default "
              "ssh_username to \"root\".");
    check_key_file(c, "ssh_private_key_file", "ssh_certificate_file");
    if (!c.str("ssh_bastion_host").empty() && !c.flag("ssh_bastion_agent_auth")) {
      if (c.str("ssh_bastion_password").empty() && c.str("ssh_bastion_private_key_file").empty())
        c.error("ssh_bastion_host",
                "ssh_bastion_password or ssh_bastion_private_key_file must be specified");
      else
        check_key_file(c, "ssh_bastion_private_key_file", "ssh_bastion_certificate_file");
    }
    const std::string method = c.str("ssh_file_transfer_method");
    if (c.has("ssh_file_transfer_method") && method != "scp" && method != "sftp")
      c.error("ssh_file_transfer_method",
              "ssh_file_transfer_method ('" + method + "') is invalid, valid methods: sftp, scp");
    if (!c.str("ssh_bastion_host").empty() && !c.str("ssh_proxy_host").empty())
      c.error("ssh_proxy_host",
              "please specify either ssh_bastion_host or ssh_proxy_host, not both");
    for (const char* key : {"ssh_local_tunnels", "ssh_remote_tunnels"}) {
      std::vector<std::string> tunnels = c.strings(key);
      for (size_t i = 0; i < tunnels.size(); ++i)
        if (std::string e = tunnel_problem(tunnels[i]); !e.empty())
          c.error(Config::item(key, i),
                  std::string(key) + " ('" + tunnels[i] + "') is invalid: " + e);
    }
  } else if (type == "winrm") {
    c.default_int("winrm_port", c.flag("winrm_use_ssl") ? 5986 : 5985);
    c.default_seconds("winrm_timeout", 1800);
    if (c.str("winrm_username").empty())
      c.error("winrm_username", "winrm_username must be specified.");
  }
}

// ---- builders ----

void null_builder(Config& c) {
  prepare_communicator(c);
  const std::string type = c.str("communicator");
  if (type == "none" || !contains(kCommunicators, type)) return;
  const bool ssh = type == "ssh", winrm = type == "winrm";
  const char* host_key = ssh ? "ssh_host" : winrm ? "winrm_host" : "communicator";
  const char* user_key = ssh ? "ssh_username" : winrm ? "winrm_username" : "communicator";
  const std::string password = ssh ? c.str("ssh_password") : winrm ? c.str("winrm_password") : "";
  if ((ssh || winrm) ? c.str(host_key).empty() : true)
    c.error(host_key, "a Host must be specified, please reference your communicator documentation");
  if ((ssh || winrm) ? c.str(user_key).empty() : true)
    c.error(user_key,
            "a Username must be specified, please reference your communicator documentation");
  const bool agent = c.flag("ssh_agent_auth");
  const bool key = !c.str("ssh_private_key_file").empty();
  const bool ssh_password = !c.str("ssh_password").empty();
  if (!agent && password.empty() && !key)
    c.error("",
            "one authentication method must be specified, please reference your "
            "communicator documentation");
  if ((agent && (ssh_password || key)) || (ssh_password && key))
    c.error("",
            "only one of ssh_agent_auth, ssh_password, and ssh_private_key_file must be specified");
}

/// disk_size as Packer reads it (digits and an optional b, k, m, g or t in
/// any case; no unit is megabytes), in MiB rounded up; nothing if invalid.
std::optional<int64_t> disk_size_mib(const std::string& text) {
  std::string s = lower(text);
  if (s.empty() || s == "0") return 40960;
  char unit = 'm';
  if (std::isalpha(static_cast<unsigned char>(s.back()))) {
    unit = s.back();
    s.pop_back();
  }
  if (s.empty() || std::string("bkmgt").find(unit) == std::string::npos) return std::nullopt;
  for (char ch : s)
    if (!std::isdigit(static_cast<unsigned char>(ch))) return std::nullopt;
  s.erase(0, std::min(s.find_first_not_of('0'), s.size() - 1));
  if (s.size() > 15) return std::nullopt;  // past any disk qemu-img makes
  const auto n = static_cast<int64_t>(std::stoll(s));
  switch (unit) {
    case 'b':
      return (n + (int64_t{1} << 20) - 1) >> 20;
    case 'k':
      return (n + 1023) >> 10;
    case 'm':
      return n;
    case 'g':
      return n << 10;
    default:
      return n << 20;
  }
}

/// ISOConfig.Prepare, with go-getter's reading of the checksum. A valid
/// checksum is normalized to "type:hex", as Packer does.
void prepare_iso(Config& c) {
  std::vector<std::string> urls = c.strings("iso_urls");
  const std::string url = c.str("iso_url");
  if (!urls.empty() && !url.empty())
    return c.error("iso_urls", "Only one of iso_url or iso_urls must be specified");
  // The record has only iso_urls, as Packer's config after Prepare.
  if (!url.empty()) urls.insert(urls.begin(), url);
  c.remove("iso_url");
  if (urls.empty()) {
    c.remove("iso_urls");
    return c.error("iso_url", "One of iso_url or iso_urls must be specified");
  }
  for (auto& u : urls) u = c.local_path(u);
  c.set("iso_urls", urls);
  c.default_str("iso_target_extension", "iso");
  c.set("iso_target_extension", lower(c.str("iso_target_extension")));

  const std::string sum = c.str("iso_checksum");
  if (sum == "none")
    return c.warn("iso_checksum",
                  "A checksum of 'none' was specified. Since ISO files are so big, a checksum "
                  "is highly recommended.");
  if (sum.empty()) return c.error("iso_checksum", "A checksum must be specified");

  std::string problem, normalized;
  const auto colon = sum.find(':');
  if (colon != std::string::npos && sum.compare(0, colon, "file") == 0) {
    const std::string where = sum.substr(colon + 1);
    if (is_url(where) && !starts_with(where, "file://")) {
      normalized = sum;  // remote: fetched and checked with the ISO itself
    } else {
      const std::string path =
          c.local_path(starts_with(where, "file://") ? where.substr(7) : where);
      std::optional<std::string> text;
      if (where.empty())
        problem = "Error downloading checksum file: error downloading ''";
      else if (std::string e = stat_error(path); !e.empty())
        problem = "Error downloading checksum file: source path error: " + e;
      else if (!(text = read_text(path)))
        problem = "Error downloading checksum file: " + open_error(path);
      if (text) {
        std::string first = urls.front().substr(0, urls.front().find_first_of("?#"));
        if (auto found = find_in_checksum_file(*text, fs::path(first).filename().string()))
          normalized = *found;
        else
          problem = "no checksum found in: " + where;
      }
    }
  } else {
    // go-getter decodes the hex first and only then looks at the type.
    const std::string type = colon == std::string::npos ? "" : sum.substr(0, colon);
    const std::string value = colon == std::string::npos ? sum : sum.substr(colon + 1);
    size_t bytes = 0;
    std::string err;
    static const std::vector<std::string> known = {"md5", "sha1", "sha256", "sha512"};
    if (!hex_decode(value, bytes, err))
      problem = "invalid checksum: " + err;
    else if (colon != std::string::npos && !contains(known, lower(type)))
      problem = "unsupported checksum type: " + type;
    else if (colon == std::string::npos && type_for_length(bytes).empty())
      problem = "Unknown type for checksum " + sum;
    else
      normalized =
          (colon == std::string::npos ? type_for_length(bytes) : lower(type)) + ":" + lower(value);
  }
  if (!problem.empty())
    c.error("iso_checksum", problem + " in \"" + sum + "\"");
  else
    c.set("iso_checksum", normalized);
  if (ends_with(lower(c.str("iso_checksum")), ".iso"))
    c.error("iso_checksum", "Error parsing checksum: .iso is not a valid checksum ending");
}

const std::vector<std::string> kSysprep = {
    "machine-id", "ssh-host-keys", "logs", "shell-history", "tmp", "dhcp-leases", "package-cache"};
const std::vector<std::string> kImageFormats = {"qcow2", "raw", "vmdk", "vhdx", "vdi"};

/// kiln's own keys: formats, cloud_init, sysprep.
void kiln_additions(Config& c) {
  if (c.is_list("formats")) {
    std::vector<std::string> formats = c.strings("formats"), unique;
    for (size_t i = 0; i < formats.size(); ++i) {
      if (!contains(kImageFormats, formats[i]))
        c.error(Config::item("formats", i), "unknown image format '" + formats[i] +
                                                "'; the formats are " + join(kImageFormats, ", "));
      else if (!contains(unique, formats[i]))
        unique.push_back(formats[i]);
    }
    c.set("formats", unique);
  }

  if (c.flag("cloud_init")) {
    if (c.str("communicator") != "ssh")
      c.warn("cloud_init", "cloud_init only offers an SSH key; it does nothing with the " +
                               c.str("communicator") + " communicator");
    else if (!c.str("ssh_password").empty() || !c.str("ssh_private_key_file").empty() ||
             c.flag("ssh_agent_auth"))
      c.warn("cloud_init",
             "cloud_init has nothing to offer: with ssh_password, ssh_private_key_file or "
             "ssh_agent_auth no key is generated");
    if (!c.flag("disk_image"))
      c.warn("cloud_init",
             "cloud_init seeds cloud images, but disk_image is false: an installer ISO does "
             "not read the seed");
  }

  // true means every operation and false none: the record always holds
  // the list, in the order the operations run.
  std::vector<std::string> ops;
  if (const Value* v = c.find("sysprep"); v && v->IsBool()) {
    if (v->GetBool()) ops = kSysprep;
  } else if (v && v->IsArray()) {
    const std::vector<std::string> asked = c.strings("sysprep");
    for (size_t i = 0; i < asked.size(); ++i)
      if (!contains(kSysprep, asked[i]))
        c.error(Config::item("sysprep", i), "unknown sysprep operation '" + asked[i] +
                                                "'; the operations are " + join(kSysprep, ", "));
    for (const auto& op : kSysprep)
      if (contains(asked, op)) ops.push_back(op);
  }
  c.set("sysprep", ops);
}

const std::vector<std::string> kAccelerators = {"none", "kvm", "tcg", "xen", "hax", "hvf", "whpx"};
const std::vector<std::string> kDiskInterfaces = {"ide", "scsi", "virtio", "virtio-scsi"};
const std::vector<std::string> kDiskCaches = {"writethrough", "writeback", "none", "unsafe",
                                              "directsync"};
const std::vector<std::string> kDiskDiscards = {"unmap", "ignore"};
const std::vector<std::string> kDetectZeroes = {"unmap", "on", "off"};

void qemu_builder(Config& c) {
  const std::string& name = c.build().name;
  c.default_seconds("shutdown_timeout", 300);

  // Normalized to MiB, so later tools need not parse qemu-img sizes.
  const Value* size = c.find("disk_size");
  const std::string size_text = !size              ? ""
                                : size->IsString() ? c.str("disk_size")
                                : size->IsNumber() ? std::to_string(c.integer("disk_size"))
                                                   : "?";
  if (auto mib = disk_size_mib(size_text))
    c.set("disk_size", *mib);
  else
    c.error("disk_size", "Invalid disk size.");
  c.default_str("disk_cache", "writeback");
  c.default_str("disk_discard", "ignore");
  c.default_str("disk_detect_zeroes", "off");
  // Packer treats an empty accelerator as unset.
  if (c.has("accelerator") && c.str("accelerator").empty()) c.remove("accelerator");
  // An unset accelerator stays unset: vm-launch picks kvm or tcg on the
  // host that runs the machine, as Packer does on the one that validates.
  c.default_str("machine_type", "pc");
  c.default_str("output_directory", "output-" + name);
  c.resolve("output_directory");
  c.default_str("qemu_binary", "qemu-system-x86_64");
  if (c.integer("memory") < 10) c.set("memory", 512);
  if (c.integer("cpus") < 1) c.set("cpus", 1);
  c.default_str("vnc_bind_address", "127.0.0.1");
  c.default_int("vnc_port_min", 5900);
  c.default_int("vnc_port_max", 6000);
  c.default_str("vm_name", "packer-" + name);
  c.default_str("format", "qcow2");

  check_listed_files(c, "floppy_files", "Floppy disk file");
  check_listed_files(c, "floppy_dirs", "Floppy disk directory");
  check_listed_files(c, "cd_files", "CD disk file");

  if (!c.strings("boot_command").empty() && c.flag("disable_vnc"))
    c.error("boot_command", "A boot command cannot be used when vnc is disabled.");
  if (c.seconds("boot_wait") < 0)
    c.set("boot_wait", 0.0);  // Packer's way of asking for no wait at all
  else
    c.default_seconds("boot_wait", 10);

  c.default_str("net_device", "virtio-net");
  c.default_str("disk_interface", "virtio");

  if (c.flag("iso_skip_cache")) c.set("iso_checksum", "none");
  prepare_iso(c);

  c.default_int("http_port_min", 8000);
  c.default_int("http_port_max", 9000);
  c.default_str("http_bind_address", "0.0.0.0");
  if (c.integer("http_port_min") > c.integer("http_port_max"))
    c.error("http_port_min", "http_port_min must be less than http_port_max");
  if (!c.str("http_interface").empty() && c.str("http_bind_address") == "0.0.0.0")
    c.error("http_interface", "either http_interface of http_bind_address can be specified");
  if (c.has("http_directory") && c.has("http_content"))
    c.error("http_content", "http_directory and http_content cannot both be set");

  // qemu's CommConfig: the deprecated names win, then leave the record.
  if (c.integer("ssh_host_port_min") != 0) c.set("host_port_min", c.integer("ssh_host_port_min"));
  if (c.integer("ssh_host_port_max") != 0) c.set("host_port_max", c.integer("ssh_host_port_max"));
  c.remove("ssh_host_port_min");
  c.remove("ssh_host_port_max");
  c.default_str("ssh_host", "127.0.0.1");
  c.default_int("host_port_min", 2222);
  c.default_int("host_port_max", 4444);
  prepare_communicator(c);
  if (c.integer("host_port_min") > c.integer("host_port_max"))
    c.error("host_port_min", "host_port_min must be less than host_port_max");
  if (c.integer("host_port_min") < 0) c.error("host_port_min", "host_port_min must be positive");

  const std::string format = c.str("format");
  if (format != "qcow2" && format != "raw")
    c.error("format", "invalid format, only 'qcow2' or 'raw' are allowed");
  if (format != "qcow2") {
    c.set("skip_compaction", true);
    c.set("disk_compression", false);
  }
  if (c.flag("use_backing_file")) {
    c.set("skip_compaction", true);  // converting would drop the backing file
    if (!(c.flag("disk_image") && format == "qcow2"))
      c.error("use_backing_file",
              "use_backing_file can only be enabled for QCOW2 images and when disk_image is true");
  }
  if (c.flag("skip_resize_disk") && !c.flag("disk_image"))
    c.error("skip_resize_disk", "skip_resize_disk can only be used when disk_image is true");
  if (c.has("accelerator") && !contains(kAccelerators, c.str("accelerator")))
    c.error("accelerator",
            "invalid accelerator, only 'kvm', 'tcg', 'xen', 'hax', 'hvf', "
            "'whpx', or 'none' are allowed");
  if (!contains(kDiskInterfaces, c.str("disk_interface")))
    c.error("disk_interface", "unrecognized disk interface type");
  if (!contains(kDiskCaches, c.str("disk_cache")))
    c.error("disk_cache", "unrecognized disk cache type");
  if (!contains(kDiskDiscards, c.str("disk_discard")))
    c.error("disk_discard", "unrecognized disk discard type");
  if (!contains(kDetectZeroes, c.str("disk_detect_zeroes")))
    c.error("disk_detect_zeroes", "unrecognized disk detect zeroes setting");
  // Packer will not build into an existing directory without -force.
  if (const std::string dir = c.str("output_directory");
      !c.build().force && stat_error(dir).empty())
    c.error("output_directory",
            "Output directory '" + dir + "' already exists. It must not exist.");
  if (c.integer("vnc_port_min") > c.integer("vnc_port_max"))
    c.error("vnc_port_min", "vnc_port_min must be less than vnc_port_max");
  if (!c.str("net_bridge").empty() || c.flag("vnc_use_password")) c.set("qmp_enable", true);
  if (c.flag("qmp_enable") && c.str("qmp_socket_path").empty())
    c.set("qmp_socket_path",
          (fs::path(c.str("output_directory")) / (c.str("vm_name") + ".monitor")).string());

  kiln_additions(c);
}

// ---- provisioners ----

/// The strings of the list `key`, and in `origin` the pointer of each.
std::vector<std::string> listed(const Config& c, const char* key,
                                std::vector<std::string>& origin) {
  std::vector<std::string> list = c.strings(key);
  for (size_t i = 0; i < list.size(); ++i) origin.push_back(Config::item(key, i));
  return list;
}

void check_scripts(Config& c, const std::vector<std::string>& scripts,
                   const std::vector<std::string>& origin) {
  for (size_t i = 0; i < scripts.size(); ++i)
    if (std::string e = stat_error(scripts[i]); !e.empty())
      c.error(origin[i], "Bad script '" + scripts[i] + "': " + e);
}

/// Stores a list, or removes the key when it is empty.
void set_or_remove(Config& c, const char* key, const std::vector<std::string>& list) {
  if (list.empty())
    c.remove(key);
  else
    c.set(key, list);
}

void shell_provisioner(Config& c) {
  const bool env_file = c.flag("use_env_var_file");
  c.default_str("env_var_format", std::string(shell_env_var_format(env_file)));
  c.default_str("execute_command", std::string(shell_execute_command(env_file)));
  if (c.is_list("inline") && c.strings("inline").empty()) c.remove("inline");  // no inline at all
  c.default_str("inline_shebang", "/bin/sh -e");
  c.default_seconds("start_retry_timeout", 300);
  c.default_str("remote_folder", "/tmp");
  // Packer draws remote_file at random (script_NNNN.sh); provision does,
  // so remote_path is only known here when remote_file is given.
  if (c.str("remote_path").empty() && !c.str("remote_file").empty())
    c.set("remote_path", c.str("remote_folder") + "/" + c.str("remote_file"));

  std::vector<std::string> origin;
  std::vector<std::string> scripts = listed(c, "scripts", origin);
  const std::string script = c.str("script");
  if (!script.empty() && !scripts.empty())
    c.error("script", "Only one of script or scripts can be specified.");
  if (!script.empty()) {
    scripts = {script};
    origin = {"script"};
  }
  c.remove("script");  // the record lists every script under scripts
  set_or_remove(c, "scripts", scripts);
  if (scripts.empty() && !c.has("inline"))
    c.error("", "Either a script file or inline script must be specified.");
  else if (!scripts.empty() && c.has("inline"))
    c.error("inline", "Only a script file or an inline script can be specified, not both.");
  check_scripts(c, scripts, origin);
  check_env_vars(c, "environment_vars");
}

void file_provisioner(Config& c) {
  c.default_str("direction", "upload");
  const std::string direction = c.str("direction");
  if (direction != "download" && direction != "upload")
    c.error("direction", "Direction must be one of: download, upload.");
  std::vector<std::string> origin;
  std::vector<std::string> sources = listed(c, "sources", origin);
  if (!c.str("source").empty()) {
    sources.push_back(c.str("source"));
    origin.emplace_back("source");
  }
  c.remove("source");
  // Which side is local depends on the direction, so these paths are made
  // absolute here rather than through the schema.
  if (direction == "upload")
    for (auto& s : sources) s = c.local_path(s);
  else if (direction == "download" && !c.str("destination").empty())
    c.set("destination", c.local_path(c.str("destination")));
  set_or_remove(c, "sources", sources);
  if (direction == "upload" && !c.flag("generated"))
    for (size_t i = 0; i < sources.size(); ++i)
      if (std::string e = stat_error(sources[i]); !e.empty())
        c.error(origin[i], "Bad source '" + sources[i] + "': " + e);
  const bool content = c.has("content");
  if (!sources.empty() && content) c.error("content", "source(s) conflicts with content.");
  if (sources.empty() && !content) c.error("source", "Source must be specified.");
  if (c.str("destination").empty()) c.error("destination", "Destination must be specified.");
}

const std::vector<std::string> kHostSystems = {"darwin",  "freebsd", "linux",
                                               "openbsd", "solaris", "windows"};

/// shell-local's Validate on a Unix host, shared by the provisioner and the
/// post-processor. command and script fold into inline and scripts.
void shell_local(Config& c) {
  c.default_str("inline_shebang", "/bin/sh -e");
  if (c.strings("execute_command").empty())
    c.set("execute_command", std::vector<std::string>{"/bin/sh", "-c", "{{.Vars}} {{.Script}}"});

  const std::string command = c.str("command"), script = c.str("script");
  std::vector<std::string> inl = c.strings("inline");
  bool inline_given = c.is_list("inline");  // an empty list still counts
  std::vector<std::string> origin;
  std::vector<std::string> scripts = listed(c, "scripts", origin);
  if (command.empty() && inl.empty() && scripts.empty() && script.empty())
    c.error("", "Command, Inline, Script and Scripts options cannot all be empty.");
  const std::string too_many =
      "You may only specify one of the following options: Command, Inline, Script or Scripts. "
      "Please consolidate these options in your config.";
  if (!command.empty()) {
    if (!inl.empty() || !scripts.empty() || !script.empty()) {
      c.error("command", too_many);
    } else {
      inl = {command};
      inline_given = true;
    }
  }
  if (!script.empty()) {
    if (!scripts.empty() || !inl.empty()) {
      c.error("script", too_many);
    } else {
      scripts = {script};
      origin = {"script"};
    }
  }
  if (!scripts.empty() && inline_given) c.error("inline", too_many);
  c.remove("command");
  c.remove("script");
  set_or_remove(c, "inline", inl);
  set_or_remove(c, "scripts", scripts);
  check_scripts(c, scripts, origin);

  const std::vector<std::string> only_on = c.strings("only_on");
  for (size_t i = 0; i < only_on.size(); ++i)
    if (!contains(kHostSystems, only_on[i]))
      // Packer stops here, and drops what it found before.
      return c.error(Config::item("only_on", i),
                     "Invalid OS specified in only_on: '" + only_on[i] +
                         "'. Supported OS names: " + join(kHostSystems, ", "));

  if (c.flag("use_linux_pathing")) {
    // Paths for the Windows Subsystem for Linux start with a drive
    // letter, which no path on a Unix host has: Packer fails there.
    if (!scripts.empty())
      return c.error(origin[0],
                     "There was an error splitting your absolute path; expected to find a drive "
                     "following the format ':/' but did not: absolute path: " +
                         scripts[0]);
    if (!inl.empty())
      c.error("use_linux_pathing",
              "Packer is unable to use the Command and Inline features with the Windows Linux "
              "Subsystem. Please use the Script or Scripts options instead");
  }
  c.default_str("env_var_format", "%s='%s' ");
  if (const std::string ext = c.str("tempfile_extension"); starts_with(ext, "."))
    c.set("tempfile_extension", ext.substr(1));
  check_env_vars(c, "environment_vars");
}

/// The ansible provisioner's validateFileConfig.
void check_ansible_file(Config& c, const char* key, bool required) {
  const std::string path = c.str(key);
  if (path.empty()) {
    if (required) c.error(key, std::string(key) + " must be specified.");
    return;
  }
  if (std::string e = stat_error(path); !e.empty())
    c.error(key, std::string(key) + ": " + path + " is invalid: " + e);
  else if (is_directory(path))
    c.error(key, std::string(key) + ": " + path + " must point to a file");
}

/// exec.LookPath's error for `program`, or "": a name is looked for in
/// $PATH, anything with a slash taken as it is.
std::string lookup_problem(const std::string& program) {
  const std::string pre = "exec: \"" + program + "\": ";
  auto runnable = [](const std::string& p) {
    return ::access(p.c_str(), X_OK) == 0 && !is_directory(p);
  };
  if (program.find('/') != std::string::npos) {
    if (std::string e = stat_error(program); !e.empty()) return pre + e;
    return runnable(program) ? "" : pre + "permission denied";
  }
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path ? path : "");
  for (std::string dir; std::getline(dirs, dir, ':');)
    if (runnable((dir.empty() ? std::string(".") : dir) + "/" + program)) return "";
  return pre + "executable file not found in $PATH";
}

void ansible_provisioner(Config& c) {
  c.default_str("command", "ansible-playbook");
  c.default_str("galaxy_command", "ansible-galaxy");
  // A program named by a path, not looked up in $PATH, is a local file.
  for (const char* key : {"command", "galaxy_command"})
    if (c.str(key).find('/') != std::string::npos) c.resolve(key);
  c.default_str("host_alias", "default");
  check_ansible_file(c, "playbook_file", true);
  check_ansible_file(c, "galaxy_file", false);
  check_ansible_file(c, "ssh_authorized_key_file", false);
  // The environment Packer adds for the proxy it sets up.
  std::vector<std::string> env = c.strings("ansible_env_vars");
  if (!c.str("ssh_host_key_file").empty())
    check_ansible_file(c, "ssh_host_key_file", false);
  else if (!contains(env, "ANSIBLE_HOST_KEY_CHECKING=False"))
    env.emplace_back("ANSIBLE_HOST_KEY_CHECKING=False");  // a one-time host key
  if (!c.flag("use_sftp") && !contains(env, "ANSIBLE_SCP_IF_SSH=True"))
    env.emplace_back("ANSIBLE_SCP_IF_SSH=True");
  c.set("ansible_env_vars", env);
  if (c.integer("local_port") > 65535)
    c.error("local_port",
            "local_port: " + std::to_string(c.integer("local_port")) + " must be a valid port");
  if (const std::string dir = c.str("inventory_directory"); !dir.empty()) {
    if (std::string e = stat_error(dir); !e.empty())
      c.error("inventory_directory", "inventory_directory: " + dir + " is invalid: " + e);
    else if (!is_directory(dir))
      c.error("inventory_directory", "inventory_directory: " + dir + " must point to a directory");
  }
  // Packer runs "ansible-playbook --version" here; finding the program is
  // what fails on a host without Ansible.
  if (!c.flag("skip_version_check")) {
    const std::string program = c.str("command");
    if (std::string e = lookup_problem(program); !e.empty())
      c.error("command", "Error running \"" + program + " --version\": " + e, Exit::unavailable);
  }
}

// ---- post-processors ----

const std::vector<std::string> kChecksumTypes = {"md5",    "sha1",   "sha224",
                                                 "sha256", "sha384", "sha512"};

void checksum_post_processor(Config& c) {
  if (!c.is_list("checksum_types")) c.set("checksum_types", std::vector<std::string>{"md5"});
  const std::vector<std::string> types = c.strings("checksum_types");
  for (size_t i = 0; i < types.size(); ++i)
    if (!contains(kChecksumTypes, types[i]))
      c.error(Config::item("checksum_types", i), "Unrecognized checksum type: " + types[i]);
  c.default_str("output", "packer_{{.BuildName}}_{{.BuilderType}}_{{.ChecksumType}}.checksum");
  c.resolve("output");
}

/// compress's detectFromFilename: the archive (tar, zip or none) and the
/// compression (pgzip, lz4, bgzf, xz or none) from the last two extensions.
void detect_compression(const std::string& name, std::string& archive, std::string& algorithm) {
  std::vector<std::string> ext;  // Packer's `\.([a-z0-9]+)`
  for (size_t i = 0; i < name.size(); ++i) {
    if (name[i] != '.') continue;
    size_t j = i + 1;
    while (j < name.size() && (std::islower(static_cast<unsigned char>(name[j])) ||
                               std::isdigit(static_cast<unsigned char>(name[j]))))
      ++j;
    if (j > i + 1) ext.push_back(name.substr(i + 1, j - i - 1));
    i = j - 1;
  }
  archive.clear();
  algorithm.clear();
  const std::string last = ext.empty() ? "" : ext.back();
  const std::string before = ext.size() > 1 ? ext[ext.size() - 2] : "";
  if (before == "tar") archive = "tar";
  if (last == "zip" || last == "tar") {
    archive = last;
  } else if (last == "gz") {
    algorithm = "pgzip";
  } else if (last == "lz4" || last == "bgzf" || last == "xz") {
    algorithm = last;
  } else {
    archive = "tar";  // no extension, or one Packer does not know
    algorithm = "pgzip";
  }
}

void compress_post_processor(Config& c) {
  c.default_str("output", "packer_{{.BuildName}}_{{.BuilderType}}");
  int64_t level = c.has("compression_level") ? c.integer("compression_level") : 6;
  if (level > 9) level = 9;
  if (level == -1 || level == 0) level = 6;  // pgzip's default
  if (level < -1)
    c.warn("compression_level", "Invalid compression level. Expected an integer from -1 to 9.");
  c.set("compression_level", level);
  std::string name = c.str("output");
  if (!c.str("format").empty()) name += "." + c.str("format");
  std::string archive, algorithm;
  detect_compression(name, archive, algorithm);
  c.set("archive", archive);
  c.set("algorithm", algorithm);
  c.resolve("output");
}

void manifest_post_processor(Config& c) {
  c.default_str("output", "packer-manifest.json");
  c.resolve("output");
}

const std::vector<std::string> kVagrantProviders = {
    "aws",     "azure", "digitalocean", "docker",   "google",     "hyperv",
    "libvirt", "lxc",   "parallels",    "scaleway", "virtualbox", "vmware"};

void vagrant_post_processor(Config& c) {
  c.default_str("output", "packer_{{ .BuildName }}_{{.Provider}}.box");
  c.resolve("output");
  c.resolve_list("include");
  if (!c.has("compression_level") || c.integer("compression_level") == -1)
    c.set("compression_level", 6);  // flate's default
  if (const int64_t level = c.integer("compression_level"); level < -1 || level > 9)
    c.warn("compression_level", "flate: invalid compression level " + std::to_string(level) +
                                    ": want value in range [-2, 9]");
  if (const std::string tpl = c.str("vagrantfile_template");
      !tpl.empty() && !c.flag("vagrantfile_template_generated") && !stat_error(tpl).empty())
    c.error("vagrantfile_template", "vagrantfile_template '" + tpl + "' does not exist");
  if (c.has("provider_override") && !contains(kVagrantProviders, c.str("provider_override")))
    c.error("provider_override", "The given provider_override " + c.str("provider_override") +
                                     " is not valid. Please choose from one of " +
                                     join(kVagrantProviders, ", "));
}

void artifice_post_processor(Config& c) {
  if (c.strings("files").empty()) c.error("files", "No files specified in artifice configuration");
}

}  // namespace

void apply(Kind kind, std::string_view type, rapidjson::Value& config,
           rapidjson::Document::AllocatorType& alloc, const BuildInfo& build,
           const std::string& pointer, Errors& errors, Errors& warnings) {
  if (!config.IsObject()) return;
  Config c(config, alloc, build, pointer, errors, warnings);
  switch (kind) {
    case Kind::builder:
      if (type == "qemu")
        qemu_builder(c);
      else if (type == "null")
        null_builder(c);
      break;
    case Kind::provisioner:
      if (type == "shell")
        shell_provisioner(c);
      else if (type == "file")
        file_provisioner(c);
      else if (type == "shell-local")
        shell_local(c);
      else if (type == "ansible")
        ansible_provisioner(c);
      break;  // breakpoint has no rules
    case Kind::post_processor:
      if (type == "checksum")
        checksum_post_processor(c);
      else if (type == "compress")
        compress_post_processor(c);
      else if (type == "manifest")
        manifest_post_processor(c);
      else if (type == "vagrant")
        vagrant_post_processor(c);
      else if (type == "artifice")
        artifice_post_processor(c);
      else if (type == "shell-local")
        shell_local(c);
      break;
  }
}

std::string_view shell_execute_command(bool use_env_var_file) {
  return use_env_var_file ? "chmod +x {{.Path}}; . {{.EnvVarFile}} && {{.Path}}"
                          : "chmod +x {{.Path}}; {{.Vars}} {{.Path}}";
}

std::string_view shell_env_var_format(bool use_env_var_file) {
  return use_env_var_file ? "export %s='%s'\n" : "%s='%s' ";
}

}  // namespace kiln::rules

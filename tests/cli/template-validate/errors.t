A JSON syntax error names the file, line and column and quotes the line; an
error record goes to stdout so that the rest of a pipe stops cleanly.

  $ printf '{\n  "builders": [\n    {"type": "null",}\n  ]\n}\n' > bad.json
  $ template-validate bad.json 2>err >out
  [65]
  $ cat err
  template-validate: error: bad.json:3:21: invalid JSON: Missing a name for object member
   3 |     {"type": "null",}
     |                     ^
  $ python3 -c 'import json; e = json.load(open("out"))["error"]; print(e["tool"], e["exit"], e["line"], e["column"], e["step"])'
  template-validate 65 3 21 validate

Every error of a template at once, with suggestions for misspellings.

  $ cat > t.json <<'EOF'
  > {
  >   "builders": [{"type": "null", "ssh_host": "h", "ssh_usernme": "u"}],
  >   "provisioners": [{"type": "shel", "inline": ["x"]}],
  >   "post-processors": [["checksum", ["manifest"]]],
  >   "bulders": []
  > }
  > EOF
  $ template-validate t.json 2>&1 >/dev/null | grep error:
  template-validate: error: t.json:2:50: builder 'null': unknown configuration key "ssh_usernme"; did you mean "ssh_username"?
  template-validate: error: t.json:3:21: unknown provisioner type "shel"; known types: shell, file, shell-local, breakpoint, ansible; did you mean "shell"?
  template-validate: error: t.json:4:36: post-processor 1.2: a post-processor chain cannot contain another chain
  template-validate: error: t.json:5:3: unknown root level key "bulders" in template; did you mean "builders"?
  $ template-validate t.json 2>/dev/null | python3 -c 'import json,sys; e = json.load(sys.stdin)["error"]; print(len(e["errors"]), e["message"][:30].strip())'
  4 4 errors in t.json; the first:

Duplicate keys are errors, as in Packer.

  $ echo '{"builders": [{"type": "null", "communicator": "none", "type": "null"}]}' > dup.json
  $ template-validate dup.json 2>&1 >/dev/null | head -1
  template-validate: error: dup.json:1:56: duplicate key "type"

Unknown functions, sed, and env outside variables.

  $ echo '{"builders": [{"type": "null", "communicator": "none", "name": "x"}], "provisioners": [{"type": "shell", "inline": ["{{nope}}", "{{sed}}", "{{env `HOME`}}"]}]}' > fn.json
  $ template-validate fn.json 2>&1 >/dev/null | grep -c error:
  3
  $ template-validate fn.json 2>&1 >/dev/null | grep -o 'function "nope" not defined'
  function "nope" not defined

A missing template is exit 66; a required variable not set is 65.

  $ template-validate nowhere.json 2>&1 >/dev/null
  template-validate: error: cannot read nowhere.json: No such file or directory
  [66]
  $ echo '{"variables": {"pw": null}, "builders": [{"type": "null", "communicator": "none"}]}' > req.json
  $ template-validate req.json 2>&1 >/dev/null | head -1
  template-validate: error: req.json:1:16: required variable not set: pw
  $ template-validate -var pw=x req.json | wc -l
  1

Sensitive values never appear in messages or error records.

  $ cat > s.json <<'EOF'
  > {"variables": {"pw": "hunter2"}, "sensitive-variables": ["pw"],
  >  "builders": [{"type": "null", "ssh_host": "h", "ssh_username": "u",
  >                "ssh_password": "{{user `pw`}}", "ssh_port": "{{user `pw`}}"}]}
  > EOF
  $ template-validate s.json > out 2> err
  [65]
  $ grep -c hunter2 out err
  out:0
  err:0
  [1]
  $ grep -o '<sensitive>' err | head -1
  <sensitive>

Bad options: one line on stderr, exit 64. --help goes to stdout.

  $ template-validate --frobnicate t.json
  template-validate: unrecognised option '--frobnicate' (see template-validate --help)
  [64]
  $ template-validate
  template-validate: no template given (see template-validate --help)
  [64]
  $ template-validate --on-error=explode t.json
  template-validate: --on-error must be cleanup, abort or ask, not 'explode' (see template-validate --help)
  [64]
  $ template-validate --help | head -1
  Usage: template-validate [OPTIONS] TEMPLATE

A closed stdout is an error, not success.

  $ echo '{"builders": [{"type": "null", "communicator": "none"}]}' > ok.json
  $ template-validate ok.json >&- 2>/dev/null
  [74]

JSON log events.

  $ template-validate --log-format=json req.json 2>&1 >/dev/null | python3 -c 'import json,sys; e = json.loads(sys.stdin.readline()); print(e["tool"], e["level"], e["fields"]["line"], e["fields"]["pointer"])'
  template-validate error 1 /variables/pw

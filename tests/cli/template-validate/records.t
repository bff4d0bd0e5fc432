A valid template gives one record per build on stdout and nothing else.

  $ cat > t.json <<'EOF'
  > {
  >   "variables": {"user": "kiln"},
  >   "builders": [
  >     {"type": "null", "name": "a", "ssh_host": "127.0.0.1",
  >      "ssh_username": "{{user `user`}}", "ssh_password": "p"},
  >     {"type": "null", "name": "b", "communicator": "none"}
  >   ],
  >   "provisioners": [{"type": "shell", "inline": ["echo {{build_name}}"], "only": ["a"]}]
  > }
  > EOF
  $ template-validate t.json > out.jsonl
  $ wc -l < out.jsonl
  2
  $ python3 - <<'PY'
  > import json
  > for line in open("out.jsonl"):
  >     r = json.loads(line)
  >     b = r["build"]
  >     print(r["kiln"], b["name"], b["type"], len(b["provisioners"]), b["on_error"],
  >           b["builder"].get("ssh_username"), b["builder"].get("ssh_port"))
  > PY
  1 a null 1 cleanup kiln 22
  1 b null 0 cleanup None 22

The provisioner is rendered for its build, and the template's digest is recorded.

  $ python3 -c 'import json; r = json.loads(open("out.jsonl").readline()); print(r["build"]["provisioners"][0]["inline"])'
  ['echo a']
  $ python3 -c 'import json,hashlib; r = json.loads(open("out.jsonl").readline()); print(r["build"]["template"]["sha256"] == hashlib.sha256(open("t.json","rb").read()).hexdigest())'
  True

-only and -except, Packer's single-dash spellings, and globs.

  $ template-validate -only=b t.json | python3 -c 'import json,sys; print([json.loads(l)["build"]["name"] for l in sys.stdin])'
  ['b']
  $ template-validate --except 'a*' t.json | python3 -c 'import json,sys; print([json.loads(l)["build"]["name"] for l in sys.stdin])'
  ['b']
  $ template-validate -only=nothing t.json
  template-validate: warning: t.json:3:3: no build matches -only/-except; the builds are: a, b
   3 |   "builders": [
     |   ^

Variables: files first, then -var, later wins.

  $ echo '{"user": "from-file"}' > v.json
  $ template-validate -var user=from-var -var-file=v.json -only=a t.json | python3 -c 'import json,sys; print(json.load(sys.stdin)["build"]["builder"]["ssh_username"])'
  from-var
  $ template-validate -var-file v.json -only=a t.json | python3 -c 'import json,sys; print(json.load(sys.stdin)["build"]["builder"]["ssh_username"])'
  from-file

The template may come on stdin.

  $ template-validate - < t.json | wc -l
  2

--syntax-only writes no records.

  $ template-validate --syntax-only t.json
  template-validate: syntax-only check passed
  $ template-validate -q --syntax-only t.json

Usage errors: one line on stderr naming the problem, exit 64, nothing on
stdout.

  $ artifact-post --bogus
  artifact-post: unrecognised option '--bogus' (see artifact-post --help)
  [64]
  $ artifact-post --post '{"type":'
  artifact-post: --post: not valid JSON: invalid JSON at byte 8: Invalid value. (see artifact-post --help)
  [64]
  $ artifact-post --post 'Check sum'
  artifact-post: --post: 'Check sum' is neither a post-processor type nor a JSON object or array (see artifact-post --help)
  [64]
  $ artifact-post --name web
  artifact-post: --name needs --artifact, --post or --post-file (see artifact-post --help)
  [64]
  $ artifact-post --artifact disk.qcow2 records.json
  artifact-post: give either RECORDS or --artifact/--post/--post-file, not both (see artifact-post --help)
  [64]
  $ artifact-post --name '' --post checksum
  artifact-post: --name must not be empty (see artifact-post --help)
  [64]
  $ artifact-post a.json b.json
  artifact-post: too many positional options have been specified on the command line (see artifact-post --help)
  [64]

A post-processor that template-validate would reject is rejected the same
way (exit 65), with an error record on stdout so that a pipe stops cleanly.

  $ echo data > f.txt
  $ artifact-post --artifact f.txt --post '{"type": "checksum", "checksum_types": ["md5"], "outptu": "x"}' 2>err >out
  [65]
  $ cat err
  artifact-post: error: build 'artifact-post': --post 1: post-processor 1 (checksum): unknown configuration key "outptu"; did you mean "output"?
  $ jq -r '.error | "\(.tool) \(.exit) \(.step)"' out
  artifact-post 65 validate
  $ artifact-post --artifact f.txt --post chksum 2>&1 >/dev/null
  artifact-post: error: build 'artifact-post': --post 'chksum': unknown post-processor type "chksum"; known types: checksum, compress, manifest, vagrant, artifice, shell-local; did you mean "checksum"?
  [65]
  $ artifact-post --artifact missing.bin --post checksum 2>&1 >/dev/null
  artifact-post: error: build 'artifact-post': cannot read missing.bin: No such file or directory
  [66]

Without a post-processor the files make the record's one artifact.

  $ artifact-post --name web --artifact f.txt | jq -c '.artifacts[0] | [.builder_id, .id, .files[0].format, .files[0].size]'
  ["kiln.files","","file",5]

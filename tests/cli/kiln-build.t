Usage errors: one line on stderr naming the problem, exit 64.

  $ kiln-build --bogus
  kiln-build: unrecognised option '--bogus' (see kiln-build --help)
  [64]
  $ kiln-build
  kiln-build: a TEMPLATE is needed (see kiln-build --help)
  [64]
  $ kiln-build -on-error=maybe t.json
  kiln-build: --on-error must be cleanup, abort or ask, not 'maybe' (see kiln-build --help)
  [64]
  $ kiln-build -parallel-builds=-1 t.json
  kiln-build: --parallel-builds must be 0 or more (see kiln-build --help)
  [64]

A template that is not valid: template-validate's verdict on stderr, its
exit status, nothing on stdout.

  $ echo '{"builders":[{"type":"nul"}]}' > bad.json
  $ kiln-build bad.json 2>err
  [65]
  $ head -1 err
  template-validate: error: bad.json:1:15: unknown builder type "nul"; known types: qemu, null; did you mean "null"?

A build without a machine (the null builder with no communicator) and an
artifice post-processor: Packer's lines and summary.

  $ echo hi > a.txt
  $ cat > n.json <<'JSON'
  > {"builders": [{"type": "null", "communicator": "none"}],
  >  "post-processors": [{"type": "artifice", "files": ["a.txt"]}]}
  > JSON
  $ kiln-build -color=false n.json | sed -E 's/after [0-9].*\./after D./'
  null: output will be in this color.
  
  ==> null: Running post-processor: artifice
  ==> null: post-processor 0.0 (artifice): Using these artifact files: */a.txt (glob)
  Build 'null' finished after D.
  
  ==> Builds finished. The artifacts of successful builds are:
  --> null: Did not export anything. This is the null builder
  --> null: Created artifact from files: a.txt
  $ ls output-null.log
  output-null.log

-timestamp-ui puts the time (RFC 3339, UTC) before every line.

  $ kiln-build -timestamp-ui -color=false n.json | head -1
  \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ: null: output will be in this color. (re)

-machine-readable: Packer's lines, commas escaped, artifacts as Packer 1.6.6
prints them.

  $ kiln-build -machine-readable n.json | sed -E 's/^[0-9]+,/TS,/; s/after [0-9][^,]*\./after D./'
  TS,,ui,say,==> null: Running post-processor: artifice
  TS,,ui,say,==> null: post-processor 0.0 (artifice): Using these artifact files: */a.txt (glob)
  TS,,ui,say,Build 'null' finished after D.
  TS,,ui,say,\n==> Builds finished. The artifacts of successful builds are:
  TS,null,artifact-count,2
  TS,null,artifact,0,builder-id,fnoeding.null
  TS,null,artifact,0,id,Null
  TS,null,artifact,0,string,Did not export anything. This is the null builder
  TS,null,artifact,0,files-count,0
  TS,null,artifact,0,end
  TS,,ui,say,--> null: Did not export anything. This is the null builder
  TS,null,artifact,1,builder-id,packer.post-processor.artifice
  TS,null,artifact,1,id,
  TS,null,artifact,1,string,Created artifact from files: a.txt
  TS,null,artifact,1,files-count,1
  TS,null,artifact,1,file,0,a.txt
  TS,null,artifact,1,end
  TS,,ui,say,--> null: Created artifact from files: a.txt

-only that selects no build: nothing to do.

  $ kiln-build -only=web n.json 2>&1 | tail -1
  ==> No builds to run

A failing build: exit 1, the summary names it.

  $ cat > f.json <<'JSON'
  > {"builders": [{"type": "null", "communicator": "none"}],
  >  "post-processors": [{"type": "shell-local", "inline": ["echo broken >&2", "exit 4"]}]}
  > JSON
  $ kiln-build -color=false f.json > out 2>&1
  [1]
  $ sed -n '/Some builds/,$p' out
  ==> Some builds didn't complete successfully and had errors:
  --> null: post-processor 0.0 (shell-local): * (glob)
  
  ==> Builds finished but no artifacts were created.

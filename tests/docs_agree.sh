#!/usr/bin/env bash
# For every tool named on the command line: --help goes to stdout, is not
# empty and fits 80 columns; a bad option fails with exactly one line on
# stderr and exit 64; and every long option of --help appears in the man
# page's SYNOPSIS or OPTIONS and in the bash, zsh and fish completions (and
# they name no option --help lacks).
set -u
root=${KILN_SOURCE_ROOT:?}
pass=0 fail=0
check() {  # check DESCRIPTION COMMAND...
  local what=$1; shift
  if "$@"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: $what"; fi
}
options_in() {  # long options mentioned in a file or stdin, sorted
  grep -oE -- '(^|[^a-zA-Z0-9-])--?-?[a-z][a-z0-9-]+' "$@" |
    sed -E 's/^[^-]*//; s/^-+/--/' | sort -u
}
for tool in "$@"; do
  help=$("$tool" --help 2>/tmp/kiln-docs-err.$$); rc=$?
  check "$tool --help exits 0" test "$rc" -eq 0
  check "$tool --help writes nothing on stderr" test ! -s /tmp/kiln-docs-err.$$
  check "$tool --help is not empty" test -n "$help"
  long=$(printf '%s\n' "$help" | awk 'length > 80' | head -1)
  check "$tool --help fits 80 columns (${long:0:40})" test -z "$long"
  err=$("$tool" --no-such-option 2>&1 >/dev/null); rc=$?
  check "$tool bad option exits 64 (got $rc)" test "$rc" -eq 64
  check "$tool bad option: one line on stderr" test "$(printf '%s\n' "$err" | wc -l)" -eq 1
  check "$tool bad option names it" grep -q -- '--no-such-option' <<<"$err"
  # Long options --help lists (in the option column only).
  want=$(printf '%s\n' "$help" | grep -E '^  +(-[a-zA-Z] \[ )?--' |
         grep -oE -- '--[a-z][a-z0-9-]+' | sort -u)
  man=$root/man/$tool.1
  check "$tool has a man page" test -f "$man"
  for sect in NAME SYNOPSIS DESCRIPTION OPTIONS "EXIT STATUS" EXAMPLES "SEE ALSO"; do
    check "$tool man page has $sect" grep -q "^\.SH \"\?$sect\"\?" "$man"
  done
  man_opts=$(sed 's/\\-/-/g; s/\\f[BIRP]//g' "$man" | options_in)
  bash_c=$root/completions/bash/$tool
  zsh_c=$root/completions/zsh/_$tool
  fish_c=$root/completions/fish/$tool.fish
  for f in "$bash_c" "$zsh_c" "$fish_c"; do check "$f exists" test -f "$f"; done
  bash_opts=$(options_in "$bash_c" 2>/dev/null)
  zsh_opts=$(options_in "$zsh_c" 2>/dev/null)
  fish_opts=$(grep -oE -- '-l [a-z][a-z0-9-]+' "$fish_c" 2>/dev/null | sed 's/-l /--/' | sort -u)
  for o in $want; do
    check "$tool: man page documents $o" grep -qx -- "$o" <<<"$man_opts"
    check "$tool: bash completion offers $o" grep -qx -- "$o" <<<"$bash_opts"
    check "$tool: zsh completion offers $o" grep -qx -- "$o" <<<"$zsh_opts"
    check "$tool: fish completion offers $o" grep -qx -- "$o" <<<"$fish_opts"
  done
  for o in $fish_opts; do
    check "$tool: fish completes $o, which --help has" grep -qx -- "$o" <<<"$want"
  done
  for o in $bash_opts; do
    check "$tool: bash completes $o, which --help has" grep -qx -- "$o" <<<"$want"
  done
done
rm -f /tmp/kiln-docs-err.$$
echo "docs: $pass passed, $fail failed"
[ "$fail" -eq 0 ]

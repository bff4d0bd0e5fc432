#!/usr/bin/env bash
# Regenerates VERDICTS from real runs of `packer validate` (Packer 1.6.6):
# one line per template, NAME<TAB>valid|invalid<TAB>packer's first error
# (see first_error_line in lib.sh; "-" when valid), with the absolute path of
# this folder removed from it. Run it after adding or changing a template:
#
#   tests/templates/record-verdicts.sh            # rewrites VERDICTS
#   tests/templates/record-verdicts.sh --check    # exits 1 if a verdict changed
#
# Like parity.sh it runs packer from this folder, with NAME.args before the
# template path, a private HOME and cache, and CHECKPOINT_DISABLE=1.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"
# shellcheck source=lib.sh
source ./lib.sh

check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

command -v packer >/dev/null || { echo "$0: packer not found in PATH" >&2; exit 2; }
version=$(CHECKPOINT_DISABLE=1 packer version 2>/dev/null | head -n1)
if [[ "$version" != "Packer v1.6.6" ]]; then
  echo "$0: warning: VERDICTS describes Packer v1.6.6, this is '$version'" >&2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
parity_env "$tmp"

record_one() {
  local name=$1 out rc=0 verdict line
  read_args "$name"
  out=$(packer validate "${ARGS[@]}" "$name.json" 2>&1) || rc=$?
  if [[ $rc -eq 0 ]]; then
    verdict=valid line=-
  else
    verdict=invalid line=$(first_error_line <<<"$out")
    # Keep VERDICTS free of this checkout's location.
    line=${line//"$here/"/}
  fi
  printf '%s\t%s\t%s\n' "$name" "$verdict" "$line" >"$tmp/out/$name"
}
export -f record_one read_args first_error_line
export tmp here

mkdir -p "$tmp/out"
jobs=$(nproc 2>/dev/null || echo 2)
for f in *.json; do printf '%s\0' "${f%.json}"; done |
  xargs -0 -r -P "$jobs" -I{} bash -c 'record_one "$1"' _ {}

LC_ALL=C sort -t $'\t' -k1,1 "$tmp"/out/* >"$tmp/VERDICTS.new"

# Some messages list things in Go's random map order (vagrant's providers):
# where the verdict is unchanged and the old text has the same words in
# another order, keep the old text so that VERDICTS does not churn.
touch VERDICTS
awk -F'\t' -v OFS='\t' '
  function key(s,   w, n, i, j, t) {
    n = split(s, w, /[ ,]+/)
    for (i = 2; i <= n; i++)
      for (j = i; j > 1 && w[j - 1] > w[j]; j--) { t = w[j]; w[j] = w[j - 1]; w[j - 1] = t }
    t = ""
    for (i = 1; i <= n; i++) t = t " " w[i]
    return t
  }
  FNR == NR { verdict[$1] = $2; text[$1] = $3; next }
  ($1 in verdict) && verdict[$1] == $2 && text[$1] != $3 && key(text[$1]) == key($3) { $3 = text[$1] }
  { print }
' VERDICTS "$tmp/VERDICTS.new" >"$tmp/VERDICTS"

if [[ $check -eq 1 ]]; then
  # Only the verdicts must match: packer's texts may vary from run to run
  # (e.g. vagrant's list of providers comes out in random order).
  if diff -u <(cut -f1,2 VERDICTS) <(cut -f1,2 "$tmp/VERDICTS"); then
    echo "VERDICTS is up to date"
  else
    echo "VERDICTS is stale: run $0" >&2
    exit 1
  fi
else
  cp "$tmp/VERDICTS" VERDICTS
  printf '%s templates: %s valid, %s invalid\n' \
    "$(wc -l <VERDICTS)" \
    "$(awk -F'\t' '$2 == "valid"' VERDICTS | wc -l)" \
    "$(awk -F'\t' '$2 == "invalid"' VERDICTS | wc -l)"
fi

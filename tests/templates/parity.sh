#!/usr/bin/env bash
# Parity test: template-validate must give the same verdict as
# `packer validate` (Packer 1.6.6) on every template of this folder.
#
#   tests/templates/parity.sh PATH/TO/template-validate
#
# For each NAME.json it runs, from this folder,
#   packer validate       ARGS NAME.json
#   template-validate     ARGS NAME.json   (stdout discarded)
# where ARGS are the lines of NAME.args, if present. Exit 0 means valid;
# template-validate must exit 65 for an invalid template, and any other exit
# status of it (64, 70, a signal, a hang past KILN_PARITY_TIMEOUT seconds)
# fails the test. EXCEPTIONS lists templates where kiln deliberately
# differs: there kiln must give the verdict written in EXCEPTIONS and packer
# must still give the opposite one (so a stale exception fails).
#
# Prints `ok NAME` or `FAIL NAME: ...` (with template-validate's stderr
# indented below) per template, then `N passed, N failed`; exits 1 if any
# failed, 2 on a usage or set-up error. KILN_PARITY_JOBS sets how many
# templates run at once (default: the number of CPUs).
set -uo pipefail

usage() { echo "usage: $0 PATH/TO/template-validate" >&2; exit 2; }
[[ $# -eq 1 ]] || usage

tv=$1
if [[ "$tv" != */* ]]; then
  tv=$(type -P -- "$tv") || { echo "$0: $1: not found in PATH" >&2; exit 2; }
fi
[[ -f "$tv" && -x "$tv" ]] || { echo "$0: $1: not an executable file" >&2; exit 2; }
tv=$(cd "$(dirname -- "$tv")" && pwd)/$(basename -- "$tv")

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here" || exit 2
# shellcheck source=lib.sh
source ./lib.sh

command -v packer >/dev/null || { echo "$0: packer not found in PATH" >&2; exit 2; }
command -v timeout >/dev/null || { echo "$0: timeout (coreutils) not found" >&2; exit 2; }
version=$(CHECKPOINT_DISABLE=1 packer version 2>/dev/null | head -n1)
if [[ "$version" != "Packer v1.6.6" ]]; then
  echo "warning: the reference is Packer v1.6.6, this is '$version'" >&2
fi

tmp=$(mktemp -d) || exit 2
trap 'rm -rf "$tmp"' EXIT
parity_env "$tmp"
mkdir -p "$tmp/res"

# ------------------------------------------------------------ run both tools
# Each run leaves in $tmp/res: NAME.packer (exit status), NAME.packer.out,
# NAME.kiln (exit status) and NAME.kiln.err.
run_one() {
  local name=$1 rc
  read_args "$name"
  packer validate "${ARGS[@]}" "$name.json" >"$tmp/res/$name.packer.out" 2>&1
  echo $? >"$tmp/res/$name.packer"
  # The braces' 2>/dev/null hides bash's own "Segmentation fault" report.
  { timeout -k 5 "$KILN_PARITY_TIMEOUT" "$tv" "${ARGS[@]}" "$name.json" \
      >/dev/null 2>"$tmp/res/$name.kiln.err" </dev/null; } 2>/dev/null
  rc=$?
  [[ $rc -eq 124 ]] && echo "(timed out after ${KILN_PARITY_TIMEOUT}s)" >>"$tmp/res/$name.kiln.err"
  echo $rc >"$tmp/res/$name.kiln"
}
export -f run_one read_args
export tmp tv
export KILN_PARITY_TIMEOUT=${KILN_PARITY_TIMEOUT:-60}

shopt -s nullglob
templates=(*.json)
[[ ${#templates[@]} -gt 0 ]] || { echo "$0: no templates in $here" >&2; exit 2; }
jobs=${KILN_PARITY_JOBS:-$(nproc 2>/dev/null || echo 2)}
for f in "${templates[@]}"; do printf '%s\0' "${f%.json}"; done |
  xargs -0 -r -P "$jobs" -I{} bash -c 'run_one "$1"' _ {}

# ----------------------------------------------------------------- compare
declare -A exception=()
if [[ -f EXCEPTIONS ]]; then
  while IFS=$'\t' read -r name verdict _ || [[ -n "$name" ]]; do
    [[ -z "$name" || "$name" == \#* ]] && continue
    exception[$name]=$verdict
  done <EXCEPTIONS
fi

passed=0 failed=0
# fail NAME MESSAGE [NOTE]: prints the FAIL line, NOTE (if any), then
# template-validate's stderr, both indented.
fail() {
  local name=$1 msg=$2 note=${3:-} err=$tmp/res/$1.kiln.err
  echo "FAIL $name: $msg"
  if [[ -n "$note" ]]; then echo "    $note"; fi
  if [[ -s "$err" ]]; then sed 's/^/    /' "$err"; fi
  failed=$((failed + 1))
}

verdict_of() { [[ $1 -eq 0 ]] && echo valid || echo invalid; }

for f in "${templates[@]}"; do
  name=${f%.json}
  prc=$(cat "$tmp/res/$name.packer" 2>/dev/null) || { fail "$name" "no result (runner failed)"; continue; }
  krc=$(cat "$tmp/res/$name.kiln" 2>/dev/null) || { fail "$name" "no result (runner failed)"; continue; }
  packer_v=$(verdict_of "$prc")
  want=${exception[$name]:-}
  unset "exception[$name]"
  case $krc in
    0) kiln_v=valid ;;
    65) kiln_v=invalid ;;
    124) kiln_v="timeout" ;;
    *) if [[ $krc -gt 128 ]]; then kiln_v="signal $((krc - 128))"; else kiln_v="exit $krc"; fi ;;
  esac
  if [[ $kiln_v != valid && $kiln_v != invalid ]]; then
    fail "$name" "packer=$packer_v kiln=$kiln_v (template-validate must exit 0 or 65)"
    continue
  fi
  if [[ -n "$want" ]]; then
    if [[ $want != valid && $want != invalid ]]; then
      fail "$name" "EXCEPTIONS gives '$want', not valid or invalid"
    elif [[ $packer_v == "$want" ]]; then
      fail "$name" "stale exception: packer=$packer_v now agrees with EXCEPTIONS ($want); remove the line"
    elif [[ $kiln_v != "$want" ]]; then
      fail "$name" "packer=$packer_v kiln=$kiln_v, EXCEPTIONS expects kiln=$want"
    else
      echo "ok $name"
      passed=$((passed + 1))
    fi
    continue
  fi
  if [[ $packer_v == "$kiln_v" ]]; then
    echo "ok $name"
    passed=$((passed + 1))
  else
    note=
    if [[ $packer_v == invalid ]]; then
      note="packer: $(first_error_line <"$tmp/res/$name.packer.out")"
    fi
    fail "$name" "packer=$packer_v kiln=$kiln_v" "$note"
  fi
done

for name in "${!exception[@]}"; do
  echo "FAIL $name: listed in EXCEPTIONS but there is no $name.json"
  failed=$((failed + 1))
done

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]

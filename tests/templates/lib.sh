# shellcheck shell=bash
# Helpers shared by parity.sh and record-verdicts.sh. Source it; it defines
# functions only and changes nothing by itself.

# Point packer at a private, throw-away HOME and cache under $1 and keep it
# off the network.
parity_env() {
  local tmp=$1
  mkdir -p "$tmp/home" "$tmp/cache"
  export CHECKPOINT_DISABLE=1
  export HOME="$tmp/home"
  export PACKER_CACHE_DIR="$tmp/cache"
  # fn-env-in-variables reads this one and expects it unset.
  unset KILN_PARITY_UNSET_VARIABLE
}

# read_args NAME: fills the array ARGS with the lines of NAME.args (if any),
# skipping blank lines and lines starting with '#'.
read_args() {
  ARGS=()
  local line
  [[ -f "$1.args" ]] || return 0
  while IFS= read -r line || [[ -n "$line" ]]; do
    [[ -z "$line" || "$line" == \#* ]] && continue
    ARGS+=("$line")
  done <"$1.args"
}

# Reads packer's combined output on stdin and prints its first error as one
# line: the first "* item" of an error list, or else the first line of text
# after packer's "Error:" / "Failed to parse template:" header, skipping the
# framing ("Failed to prepare build ...", "N error(s) occurred:", "... 1
# error(s) decoding:"). Packer wraps long messages at about 80 columns; the
# wrapped continuation lines (non-blank, not indented, not a new "* " item)
# are joined back with single spaces. Warnings printed before the error are
# skipped; output with neither header (a crash, a command-line error) gives
# its first non-blank line. Tabs become spaces.
first_error_line() {
  awk '
    function framing(s) {
      return s ~ /^Failed to (prepare|initialize) build/ ||
             s ~ /[0-9]+ error(s|\(s\))? (occurred|decoding):$/
    }
    function finish(s) { gsub(/\t/, " ", s); sub(/[ ]+$/, "", s); print s; done = 1; exit }
    collecting {
      if ($0 == "" || $0 ~ /^[ \t]/ || $0 ~ /^\* /) finish(text)
      text = text " " $0
      next
    }
    {
      line = $0
      if (fallback == "" && line ~ /[^ \t]/) fallback = line
      if (line ~ /^Warning/) { in_error = 0; next }
      if (line ~ /^(Error|Failed to parse template)/) {
        in_error = 1
        sub(/^Error:[ ]*/, "", line)
        sub(/^Failed to parse template:[ ]*/, "", line)
      } else if (!in_error) {
        next
      }
      sub(/^[ \t]*/, "", line)
      sub(/^\* /, "", line)
      if (line == "" || framing(line)) next
      text = line
      collecting = 1
    }
    END {
      if (done) exit
      if (collecting) finish(text)
      if (fallback == "") fallback = "-"
      finish(fallback)
    }
  '
}

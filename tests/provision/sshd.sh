# A real OpenSSH sshd on a free loopback port, for provision's tests (sourced).
# It has its own host key, logs in the user "kilnprov" (its own: the unit tests use another, locked at their end) (created when missing,
# given a fresh random password for the run, locked again by sshd_stop) with
# a key in its own authorized_keys. Needs root (sshd, useradd), as CI has.
#   sshd_start DIR [EXTRA-CONFIG]  sets SSHD_PORT SSHD_PID SSHD_KEY SSHD_PASSWORD
#   sshd_stop                      kills it and every session it serves
#   sshd_sessions                  the pids of the sessions it serves now
#   sshd_kill_sessions             cuts every connection it serves
SSHD_USER=kilnprov

sshd_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

sshd_start() {
  local dir=$1 extra=${2:-}
  mkdir -p "$dir" /run/sshd
  # sshd reads authorized_keys as the user: the folders must let it through.
  chmod 755 "$dir" "$(dirname "$dir")"
  [ -f "$dir/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$dir/host_ed25519"
  [ -f "$dir/user_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$dir/user_ed25519"
  cp "$dir/user_ed25519.pub" "$dir/authorized_keys"
  chmod 644 "$dir/authorized_keys"
  id "$SSHD_USER" >/dev/null 2>&1 || useradd --create-home --shell /bin/sh "$SSHD_USER"
  SSHD_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  echo "$SSHD_USER:$SSHD_PASSWORD" | chpasswd
  SSHD_KEY=$dir/user_ed25519
  local try
  for try in 1 2 3 4 5; do
    SSHD_PORT=$(sshd_free_port)
    # sshd keeps the first value it reads for a keyword: the extras go first.
    printf '%s\n' "$extra" "LogLevel VERBOSE" "ListenAddress 127.0.0.1" "Port $SSHD_PORT" \
      "HostKey $dir/host_ed25519" "PidFile $dir/sshd.pid" \
      "AuthorizedKeysFile $dir/authorized_keys" "StrictModes no" "UsePAM no" \
      "PasswordAuthentication yes" "KbdInteractiveAuthentication no" \
      "Subsystem sftp internal-sftp" > "$dir/sshd_config"
    /usr/sbin/sshd -D -e -f "$dir/sshd_config" 2>>"$dir/sshd.log" &
    SSHD_PID=$!
    local i
    for i in $(seq 100); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$SSHD_PORT") 2>/dev/null; then return 0; fi
      kill -0 "$SSHD_PID" 2>/dev/null || break
      sleep 0.05
    done
    kill "$SSHD_PID" 2>/dev/null
    wait "$SSHD_PID" 2>/dev/null
  done
  echo "sshd did not start: $(tail -5 "$dir/sshd.log")" >&2
  return 1
}

sshd_sessions() {
  [ -n "${SSHD_PID:-}" ] && pgrep -P "$SSHD_PID"
}

# Kills the sshd processes serving every connection now: the privileged
# monitor and the user's half that holds the socket (what a crash of the
# server would do); the commands they started are left orphaned.
sshd_kill_sessions() {
  local s
  for s in $(sshd_sessions); do
    kill -KILL $(pgrep -P "$s" -x sshd) "$s" 2>/dev/null
  done
}

sshd_stop() {
  [ -n "${SSHD_PID:-}" ] || return 0
  local s
  for s in $(sshd_sessions); do pkill -KILL -P "$s" 2>/dev/null; kill -KILL "$s" 2>/dev/null; done
  kill "$SSHD_PID" 2>/dev/null
  wait "$SSHD_PID" 2>/dev/null
  SSHD_PID=
  usermod -L "$SSHD_USER" 2>/dev/null
}

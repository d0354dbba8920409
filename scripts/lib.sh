# shellcheck shell=bash
# Helpers shared by the measurement scripts (hostile.sh, loadtest.sh, rss-burst.sh):
# installing missing tools, a scratch directory, starting processes and stopping every
# one of them by PID on exit. Sourced, not run:
#
#   . "$(dirname "$0")/lib.sh"
#   need_tools wrk:wrk nginx:nginx-light     # command:debian-package, installed if missing
#   work_dir keygate-load                    # $WORK, removed (and $PIDS stopped) on exit
#   spawn cmd args... > log 2>&1             # background; its PID in $! and in $PIDS
#   start_keygate CONFIG [PREFIX...] BIN     # $KGPID; waits for the bootstrap admin key
#
# Only 127.0.0.1 is used; nothing here is killed by name.

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# need_tools CMD:PACKAGE...: installs with apt-get the Debian packages whose command is
# missing (nginx also counts as present at /usr/sbin/nginx); exits if that fails.
need_tools() {
  local spec cmd pkg need=()
  for spec in "$@"; do
    cmd=${spec%%:*}; pkg=${spec#*:}
    command -v "$cmd" >/dev/null && continue
    [ "$cmd" = nginx ] && [ -x /usr/sbin/nginx ] && continue
    need+=("$pkg")
  done
  [ ${#need[@]} -gt 0 ] || return 0
  echo "installing ${need[*]} with apt-get..."
  { as_root apt-get update -qq >/dev/null &&
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; } ||
    { echo "cannot install ${need[*]}: install them by hand" >&2; exit 1; }
}

nginx_bin() { command -v nginx || echo /usr/sbin/nginx; }

# A free TCP port on 127.0.0.1 (bound and released; fine for a script on one machine).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PIDS=()
# Stops every process started with spawn (TERM, then KILL 0.3 s later) and removes $WORK.
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  [ -z "${WORK:-}" ] || rm -rf "$WORK"
}

# work_dir NAME: a fresh /tmp/NAME.XXXXXX in $WORK; cleanup runs on exit. Readable by
# all (mktemp makes it 0700): nginx started as root serves files as its worker user.
work_dir() {
  WORK=$(mktemp -d "/tmp/$1.XXXXXX")
  chmod 755 "$WORK"
  trap cleanup EXIT
}

# fixed_upstream_conf PORT ACCESS_LOG CONNECTIONS: writes $WORK/up/nginx.conf, one nginx
# worker answering 200 "ok" on 127.0.0.1:PORT (ACCESS_LOG: off, or a file to see what
# reached it). Start it with: spawn "$NGINX" -c "$WORK/up/nginx.conf" -p "$WORK/up".
fixed_upstream_conf() {
  mkdir -p "$WORK/up"
  cat > "$WORK/up/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/up/nginx.pid;
error_log $WORK/up/error.log warn;
events { worker_connections $3; }
http {
  access_log $2;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$1;
    location / { return 200 "ok\n"; }
  }
}
CONF
}

# spawn CMD ARGS...: runs CMD in the background (redirect the call to log it); its PID
# is in $! and is stopped by cleanup. Use `env VAR=x cmd` for an environment.
spawn() {
  "$@" &
  PIDS+=($!)
}

# wait_for_file FILE [TENTHS]: waits until FILE is non-empty (default 10 s); 1 if not.
wait_for_file() {
  local _
  for _ in $(seq "${2:-100}"); do [ -s "$1" ] && return 0; sleep 0.1; done
  return 1
}

# start_keygate CONFIG [PREFIX...] BIN: `BIN serve --config CONFIG` with KEYGATE_LOG=warn
# (PREFIX: e.g. taskset -c 0, or env LD_PRELOAD=…), log beside CONFIG (keygate.toml →
# keygate.log), PID in $KGPID; waits up to 10 s for the bootstrap admin key in
# $WORK/admin.key (at once when it is already there: then the caller waits for the port).
start_keygate() {
  local config=$1; shift
  spawn env KEYGATE_LOG=warn "$@" serve --config "$config" > "${config%.toml}.log" 2>&1
  KGPID=$!
  wait_for_file "$WORK/admin.key" || true
}

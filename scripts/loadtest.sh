#!/usr/bin/env bash
# Load test: keygate vs nginx doing the same job in front of the same upstream.
#
#   scripts/loadtest.sh [ROUNDS] [SECONDS]      (defaults: 3 rounds of 10 s each)
#   TOKENS=N (default 10000), PER_TOKEN=false (metrics.per_token = false)
#
# Starts, on 127.0.0.1 only: a small upstream (nginx answering 200 "ok"), keygate
# (release build, proxy.workers = 1, embedded store, 10,000 tokens) and nginx as an
# authenticating gateway (worker_processes 1; a `map` of the same 10,000 keys on the
# Authorization header, 401 for unknown keys, 403 for a module the keys lack). wrk
# (1 thread, 64 keep-alive connections, keys rotated by a Lua script) runs against each
# in alternating rounds; each round prints requests/s, p50 and p99 of both and the
# keygate/nginx ratio. Every process started here is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-10}
TOKENS=${TOKENS:-10000}
# PER_TOKEN=false runs keygate with `metrics.per_token = false` (issue 5's comparison).
PER_TOKEN=${PER_TOKEN:-true}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  as_root apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release --quiet
WORK=$(mktemp -d /tmp/keygate-load.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); KG=$(free_port); KGA=$(free_port); NG=$(free_port)

# --- upstream: nginx, one worker, fixed answer.
mkdir -p "$WORK/up"
cat > "$WORK/up/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/up/nginx.pid;
error_log $WORK/up/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UP;
    location / { return 200 "ok\n"; }
  }
}
CONF
"$NGINX" -c "$WORK/up/nginx.conf" -p "$WORK/up" & PIDS+=($!)

# --- keygate.
cat > "$WORK/keygate.toml" <<CONF
[proxy]
listen = "127.0.0.1:$KG"
workers = 1
[admin]
listen = "127.0.0.1:$KGA"
bootstrap_key_file = "$WORK/admin.key"
[store]
path = "$WORK/keygate.redb"
[metrics]
per_token = $PER_TOKEN
[[modules]]
name = "agreements"
prefixes = ["/public/v1/agreements"]
upstream = "http://127.0.0.1:$UP"
[[modules]]
name = "billing"
prefixes = ["/public/v1/billing"]
upstream = "http://127.0.0.1:$UP"
CONF
KEYGATE_LOG=warn ./target/release/keygate serve --config "$WORK/keygate.toml" > "$WORK/keygate.log" 2>&1 & KGPID=$!; PIDS+=($KGPID)
for _ in $(seq 100); do [ -s "$WORK/admin.key" ] && break; sleep 0.1; done
ADMIN=$(cat "$WORK/admin.key")

echo "creating $TOKENS tokens through the admin API..."
python3 - "$KGA" "$ADMIN" "$TOKENS" > "$WORK/keys" <<'PY'
import http.client, json, sys, threading
port, admin, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
keys, lock = [], threading.Lock()
def worker(count):
    c = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(count):
        c.request("POST", "/v1/tokens", json.dumps({"name": "load", "permissions": ["agreements"]}),
                  {"Authorization": "ApiKey " + admin, "Content-Type": "application/json"})
        r = c.getresponse(); body = r.read()
        if r.status != 201:
            sys.exit(f"create answered {r.status}: {body[:200]!r}")
        with lock:
            keys.append(json.loads(body)["api_key"])
threads = [threading.Thread(target=worker, args=(n // 8 + (1 if i < n % 8 else 0),)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print("\n".join(keys))
PY
[ "$(wc -l < "$WORK/keys")" -eq "$TOKENS" ] || { echo "token creation failed"; exit 1; }

# --- nginx as the authenticating gateway.
mkdir -p "$WORK/gw"
{
  echo "map \$http_authorization \$kg_token {"
  echo "  default \"\";"
  while read -r k; do echo "  \"ApiKey $k\" \"${k%%:*}\";"; done < "$WORK/keys"
  echo "}"
} > "$WORK/gw/keys.map"
cat > "$WORK/gw/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/gw/nginx.pid;
error_log $WORK/gw/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  map_hash_max_size 65536;
  map_hash_bucket_size 128;
  include $WORK/gw/keys.map;
  upstream backend { server 127.0.0.1:$UP; keepalive 256; }
  server {
    listen 127.0.0.1:$NG;
    default_type application/json;
    location /public/v1/agreements {
      if (\$kg_token = "") { return 401 '{"error_code":"AUTH_INVALID","errors":["the API key is not valid"]}'; }
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "";
      proxy_set_header X-Keygate-Token-Id \$kg_token;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_pass http://backend;
    }
    location /public/v1/billing {
      if (\$kg_token = "") { return 401 '{"error_code":"AUTH_INVALID","errors":["the API key is not valid"]}'; }
      return 403 '{"error_code":"PERM_DENIED","errors":["not permitted"]}';
    }
  }
}
CONF
"$NGINX" -c "$WORK/gw/nginx.conf" -p "$WORK/gw" & PIDS+=($!)
sleep 0.5

# --- wrk: rotate over the 100 real keys.
{
  echo "keys = {"
  head -100 "$WORK/keys" | sed 's/.*/  "&",/'
  echo "}"
  echo 'i = 0'
  echo 'request = function() i = (i % #keys) + 1; return wrk.format("GET", "/public/v1/agreements/AGR-1", {["Authorization"] = "ApiKey " .. keys[i]}) end'
} > "$WORK/keys.lua"

for port in "$KG" "$NG"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: ApiKey $(head -1 "$WORK/keys")" "http://127.0.0.1:$port/public/v1/agreements/x")
  [ "$code" = 200 ] || { echo "warm-up against port $port answered $code"; exit 1; }
done

run() { # port -> "rps p50 p99 non2xx"
  wrk -t1 -c64 -d"${SECS}s" --latency -s "$WORK/keys.lua" "http://127.0.0.1:$1" > "$WORK/wrk.out" 2>&1
  python3 - "$WORK/wrk.out" <<'PY' || { cat "$WORK/wrk.out" >&2; return 1; }
import re, sys
t = open(sys.argv[1]).read()
def ms(s):
    v, u = re.match(r"([\d.]+)(us|ms|s)", s).groups()
    return float(v) * {"us": 0.001, "ms": 1, "s": 1000}[u]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
p50 = ms(re.search(r"50%\s+(\S+)", t).group(1))
p99 = ms(re.search(r"99%\s+(\S+)", t).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
print(f"{rps:.0f} {p50:.3f} {p99:.3f} {bad.group(1) if bad else 0}")
PY
}

echo "round  keygate_rps  p50_ms  p99_ms | nginx_rps  p50_ms  p99_ms | ratio_rps  p99_keygate/nginx"
for r in $(seq "$ROUNDS"); do
  read -r krps kp50 kp99 kbad < <(run "$KG")
  read -r nrps np50 np99 nbad < <(run "$NG")
  [ "$kbad" = 0 ] && [ "$nbad" = 0 ] || echo "warning: non-2xx answers keygate=$kbad nginx=$nbad"
  python3 -c "print(f'{$r:>5}  {$krps:>11}  {$kp50:>6}  {$kp99:>6} | {$nrps:>9}  {$np50:>6}  {$np99:>6} | {$krps/$nrps:>9.2f}  {$kp99/$np99:>.2f}')"
done
echo "keygate RSS: $(awk '/VmRSS/{print $2" "$3}' /proc/$KGPID/status)"

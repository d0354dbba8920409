#!/usr/bin/env bash
# Load test: keygate vs a bare hyper proxy vs nginx doing the same job in front of the
# same upstream (issue 13).
#
#   scripts/loadtest.sh [ROUNDS] [SECONDS]      (defaults: 3 rounds of 10 s each)
#   TOKENS=N (default 10000), PER_TOKEN=false (metrics.per_token = false),
#   WORKERS=N (default 1): keygate `proxy.workers`, bare proxy threads and nginx
#   `worker_processes`. With WORKERS=1 on a machine with 2+ CPUs the three proxies run
#   pinned to CPU 0 and the upstream and wrk to CPU 1; with more workers nothing is
#   pinned (wrk and the upstream then compete with the proxy for the cores).
#   KEYGATE_BIN=PATH: a keygate binary to measure instead of building this tree's
#   (comparing builds); SKIP_BUILD=1 uses target/release as it is.
#   COMPARE=PATH: a second keygate build, measured as "keygate_b" in the same rounds
#   (right after keygate, on a copy of its store: the same tokens and keys), and the
#   median ratio keygate_b / keygate printed; the way to tell changes of a few per cent
#   apart on a noisy machine (not with CALLGRIND).
#   CALLGRIND=N: instead of wrk rounds, run each proxy under valgrind's callgrind for N
#   requests after a warm-up and print user-space instructions per request, all threads
#   and on the first thread (keygate's runtime with workers = 1; noise-free;
#   the profiles stay in $KEEP, default /tmp/keygate-callgrind, for callgrind_annotate;
#   ONLY_KEYGATE=1 skips the other two).
#   POLICY=1 (every token carries two rate limits that never trip, 10^9/1s and 10^9/1d,
#   and allowed_ips = 127.0.0.0/8: compare its keygate figures with a plain run)
#
# Starts, on 127.0.0.1 only: a small upstream (nginx answering 200 "ok"), keygate
# (release build, embedded store, 10,000 tokens), the bare hyper proxy
# (examples/bare_proxy.rs: the same key check with nothing else, the ceiling) and nginx
# as an authenticating gateway (a `map` of the same 10,000 keys on the Authorization
# header, 401 for unknown keys, 403 for a module the keys lack). wrk (1 thread, 64
# keep-alive connections, keys rotated by a Lua script) runs against each in interleaved
# rounds; each round prints req/s, p50, p99, the proxy's CPU use (user+system, from
# /proc) and req/s per core (req/s / CPU cores used) of all three, then the median
# ratios. Every process started here is stopped by PID on exit; missing tools (wrk,
# nginx, curl, valgrind for CALLGRIND) are installed with apt-get when possible.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ROUNDS=${1:-3}
SECS=${2:-10}
TOKENS=${TOKENS:-10000}
# PER_TOKEN=false runs keygate with `metrics.per_token = false` (issue 5's comparison).
PER_TOKEN=${PER_TOKEN:-true}
WORKERS=${WORKERS:-1}
CALLGRIND=${CALLGRIND:-}
COMPARE=${COMPARE:-}
[ -z "$COMPARE" ] || [ -z "$CALLGRIND" ] || { echo "COMPARE does not go with CALLGRIND" >&2; exit 2; }
[ -z "$COMPARE" ] || [ -x "$COMPARE" ] || { echo "COMPARE=$COMPARE is not an executable" >&2; exit 2; }
KEEP=${KEEP:-/tmp/keygate-callgrind}
POLICY=${POLICY:-0}

need_tools wrk:wrk nginx:nginx-light curl:curl ${CALLGRIND:+valgrind:valgrind}
NGINX=$(nginx_bin)

[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet --bin keygate --example bare_proxy
KEYGATE=${KEYGATE_BIN:-./target/release/keygate}
BARE=./target/release/examples/bare_proxy
# Pinning (WORKERS=1, 2+ CPUs): proxies on CPU 0, upstream and wrk on CPU 1.
PIN_PROXY=(); PIN_REST=()
if [ "$WORKERS" = 1 ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  PIN_PROXY=(taskset -c 0); PIN_REST=(taskset -c 1)
fi
work_dir keygate-load
UP=$(free_port); KG=$(free_port); KGA=$(free_port); NG=$(free_port); BP=$(free_port)

# --- upstream: nginx, one worker, fixed answer.
fixed_upstream_conf "$UP" off 4096
spawn "${PIN_REST[@]}" "$NGINX" -c "$WORK/up/nginx.conf" -p "$WORK/up"

# --- keygate.
cat > "$WORK/keygate.toml" <<CONF
[proxy]
listen = "127.0.0.1:$KG"
workers = $WORKERS
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
start_keygate "$WORK/keygate.toml" "${PIN_PROXY[@]}" "$KEYGATE"
ADMIN=$(cat "$WORK/admin.key")

echo "creating $TOKENS tokens through the admin API..."
python3 - "$KGA" "$ADMIN" "$TOKENS" "$POLICY" > "$WORK/keys" <<'PY'
import http.client, json, sys, threading
port, admin, n, policy = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
keys, lock = [], threading.Lock()
body = {"name": "load", "permissions": ["agreements"]}
if policy:
    body["rate_limits"] = [{"requests": 10**9, "per": "1s"}, {"requests": 10**9, "per": "1d"}]
    body["allowed_ips"] = ["127.0.0.0/8"]
def worker(count):
    c = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(count):
        c.request("POST", "/v1/tokens", json.dumps(body),
                  {"Authorization": "ApiKey " + admin, "Content-Type": "application/json"})
        r = c.getresponse(); answer = r.read()
        if r.status != 201:
            sys.exit(f"create answered {r.status}: {answer[:200]!r}")
        with lock:
            keys.append(json.loads(answer)["api_key"])
threads = [threading.Thread(target=worker, args=(n // 8 + (1 if i < n % 8 else 0),)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print("\n".join(keys))
PY
[ "$(wc -l < "$WORK/keys")" -eq "$TOKENS" ] || { echo "token creation failed"; exit 1; }

# --- COMPARE: the second build serves a copy of the first's store, taken while the
# first is stopped (a clean copy), then both run side by side.
TARGETS="keygate:$KG:KGPID"
if [ -n "$COMPARE" ]; then
  kill "$KGPID"; wait "$KGPID" 2>/dev/null || true
  cp "$WORK/keygate.redb" "$WORK/keygate-b.redb"
  KGB=$(free_port); KGBA=$(free_port)
  sed -e "s/127.0.0.1:$KG\"/127.0.0.1:$KGB\"/" -e "s/127.0.0.1:$KGA\"/127.0.0.1:$KGBA\"/" \
    -e "s|keygate.redb|keygate-b.redb|" "$WORK/keygate.toml" > "$WORK/keygate-b.toml"
  start_keygate "$WORK/keygate-b.toml" "${PIN_PROXY[@]}" "$COMPARE"
  KGBPID=$KGPID
  start_keygate "$WORK/keygate.toml" "${PIN_PROXY[@]}" "$KEYGATE"
  TARGETS="$TARGETS keygate_b:$KGB:KGBPID"
fi

# --- the bare hyper proxy: the same keys, the same job, nothing else.
spawn "${PIN_PROXY[@]}" "$BARE" "127.0.0.1:$BP" "127.0.0.1:$UP" "$WORK/keys" "$WORKERS" > "$WORK/bare.log" 2>&1; BPPID=$!

# --- nginx as the authenticating gateway.
mkdir -p "$WORK/gw"
{
  echo "map \$http_authorization \$kg_token {"
  echo "  default \"\";"
  while read -r k; do echo "  \"ApiKey $k\" \"${k%%:*}\";"; done < "$WORK/keys"
  echo "}"
} > "$WORK/gw/keys.map"
cat > "$WORK/gw/nginx.conf" <<CONF
worker_processes $WORKERS;
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
spawn "${PIN_PROXY[@]}" "$NGINX" -c "$WORK/gw/nginx.conf" -p "$WORK/gw"; NGPID=$!
sleep 0.5

# --- wrk: rotate over the 100 real keys.
{
  echo "keys = {"
  head -100 "$WORK/keys" | sed 's/.*/  "&",/'
  echo "}"
  echo 'i = 0'
  echo 'request = function() i = (i % #keys) + 1; return wrk.format("GET", "/public/v1/agreements/AGR-1", {["Authorization"] = "ApiKey " .. keys[i]}) end'
} > "$WORK/keys.lua"

for port in "$KG" ${KGB:+"$KGB"} "$BP" "$NG"; do
  # Up first: a keygate started on a store that already has its admin key (COMPARE)
  # does not wait in start_keygate.
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: ApiKey $(head -1 "$WORK/keys")" "http://127.0.0.1:$port/public/v1/agreements/x")
  [ "$code" = 200 ] || { echo "warm-up against port $port answered $code"; exit 1; }
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: ApiKey $(head -1 "$WORK/keys")" "http://127.0.0.1:$port/public/v1/billing/x")
  [ "$code" = 403 ] || { echo "port $port answered $code for a module the key lacks"; exit 1; }
done

# keygate settles the 10,000 creation events in the background after start-up (store
# clean-up on its blocking pool, pinned to the proxy's CPU): wait until it is idle so
# that work does not land in the first round.
wait_idle() { # pid
  local _ a b
  for _ in $(seq 60); do
    a=$(ticks "$1"); sleep 1; b=$(ticks "$1")
    [ $((b - a)) -le 2 ] && return 0
  done
}

# CPU ticks (user + system) of a process and its children (nginx's workers).
ticks() {
  local t=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}
HZ=$(getconf CLK_TCK)

if [ -n "$CALLGRIND" ]; then
  # Instructions per request, user space only, for each proxy: restart it under
  # callgrind, warm up, zero the counters, send $CALLGRIND requests, dump.
  command -v callgrind_control >/dev/null || { echo "callgrind_control missing (valgrind)"; exit 1; }
  mkdir -p "$KEEP"
  kill "$KGPID" "$BPPID" "$NGPID"; wait "$KGPID" "$BPPID" "$NGPID" 2>/dev/null || true
  sed -i 's/^worker_processes .*/worker_processes 1;\nmaster_process off;/' "$WORK/gw/nginx.conf"
  measure() { # name port command... -> Ir/request
    local name=$1 port=$2; shift 2
    rm -f "$KEEP/$name".*
    spawn valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes --callgrind-out-file="$KEEP/$name.%p" \
      --trace-children=no "$@" > "$WORK/$name.vg.log" 2>&1; local vp=$!
    for _ in $(seq 600); do
      [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: ApiKey $(head -1 "$WORK/keys")" "http://127.0.0.1:$port/public/v1/agreements/x")" = 200 ] && break
      sleep 0.2
    done
    wrk -t1 -c16 -d3s -s "$WORK/keys.lua" "http://127.0.0.1:$port" > /dev/null 2>&1 || true
    callgrind_control -i on "$vp" > /dev/null
    python3 - "$port" "$CALLGRIND" "$(head -100 "$WORK/keys" | tr '\n' ' ')" <<'PY'
import http.client, sys, threading
port, n, keys = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split()
def go(count, k):
    c = http.client.HTTPConnection("127.0.0.1", port)
    for i in range(count):
        c.request("GET", "/public/v1/agreements/AGR-1", headers={"Authorization": "ApiKey " + keys[(i + k) % len(keys)]})
        r = c.getresponse(); r.read()
        if r.status != 200: sys.exit(f"answered {r.status}")
ts = [threading.Thread(target=go, args=(n // 8, k)) for k in range(8)]
for t in ts: t.start()
for t in ts: t.join()
PY
    callgrind_control -i off "$vp" > /dev/null
    callgrind_control -d "$vp" > /dev/null
    kill "$vp"; wait "$vp" 2>/dev/null || true
    local ir main n=$((CALLGRIND / 8 * 8))
    ir=$(for f in "$KEEP/$name".*; do grep -m1 -E '^totals:' "$f"; done | awk '{s+=$2} END{print s}')
    # Thread 1 is keygate's runtime with workers = 1: the requests. tokio's blocking pool
    # (the once-a-second statistics flush, store clean-ups) runs on a clock, not per
    # request, and under valgrind's ~50x slow-down falls on ~50x fewer requests.
    main=$(for f in "$KEEP/$name".*-01; do grep -m1 -E '^totals:' "$f"; done 2>/dev/null | awk '{s+=$2} END{print s+0}')
    echo "$name: $((ir / n)) instructions per request (all threads), $((main / n)) on its first thread ($CALLGRIND requests; profile $KEEP/$name.*)"
  }
  KEYGATE_LOG=warn measure keygate "$KG" "$KEYGATE" serve --config "$WORK/keygate.toml"
  [ -n "${ONLY_KEYGATE:-}" ] && exit 0
  measure bare "$BP" "$BARE" "127.0.0.1:$BP" "127.0.0.1:$UP" "$WORK/keys" 1
  measure nginx "$NG" "$NGINX" -c "$WORK/gw/nginx.conf" -p "$WORK/gw"
  exit 0
fi

run() { # port pid -> "rps p50 p99 non2xx cpu%"
  local t0 t1
  t0=$(ticks "$2")
  "${PIN_REST[@]}" wrk -t1 -c64 -d"${SECS}s" --latency -s "$WORK/keys.lua" "http://127.0.0.1:$1" > "$WORK/wrk.out" 2>&1
  t1=$(ticks "$2")
  python3 - "$WORK/wrk.out" "$((t1 - t0))" "$HZ" "$SECS" <<'PY' || { cat "$WORK/wrk.out" >&2; return 1; }
import re, sys
t = open(sys.argv[1]).read()
def ms(s):
    v, u = re.match(r"([\d.]+)(us|ms|s)", s).groups()
    return float(v) * {"us": 0.001, "ms": 1, "s": 1000}[u]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
# Anchored: "90.50%" in the Latency line also contains "50%".
p50 = ms(re.search(r"^\s+50%\s+(\S+)", t, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", t, re.M).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
cpu = 100 * int(sys.argv[2]) / int(sys.argv[3]) / float(sys.argv[4])
print(f"{rps:.0f} {p50:.3f} {p99:.3f} {bad.group(1) if bad else 0} {cpu:.0f}")
PY
}

[ -n "$CALLGRIND" ] || wait_idle "$KGPID"
[ -z "$COMPARE" ] || wait_idle "$KGBPID"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); workers $WORKERS; pinned: ${PIN_PROXY[*]:-no}"
printf '%-5s %-9s %8s %7s %7s %5s %9s\n' round target "req/s" p50_ms p99_ms cpu% "req/s/core"
: > "$WORK/results"
for r in $(seq "$ROUNDS"); do
  for t in $TARGETS bare:$BP:BPPID nginx:$NG:NGPID; do
    IFS=: read -r name port pidvar <<< "$t"
    pid=${!pidvar}
    read -r rps p50 p99 bad cpu < <(run "$port" "$pid")
    [ "$bad" = 0 ] || echo "warning: $name answered $bad non-2xx"
    per=$(python3 -c "print(round($rps / max($cpu, 1) * 100))")
    printf '%-5s %-9s %8s %7s %7s %5s %9s\n' "$r" "$name" "$rps" "$p50" "$p99" "$cpu" "$per"
    echo "$name $rps $p50 $p99 $cpu $per" >> "$WORK/results"
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$WORK/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, *v = line.split()
    rows.setdefault(name, []).append([float(x) for x in v])
med = {n: [statistics.median(c) for c in zip(*r)] for n, r in rows.items()}
print("median   target    req/s  p50_ms  p99_ms  cpu%  req/s/core")
for n, (rps, p50, p99, cpu, per) in med.items():
    print(f"median   {n:<9} {rps:6.0f}  {p50:6.3f}  {p99:6.3f}  {cpu:4.0f}  {per:9.0f}")
k, b, g = med["keygate"], med["bare"], med["nginx"]
print(f"keygate/nginx per core {k[4]/g[4]:.2f}  keygate/bare per core {k[4]/b[4]:.2f}  "
      f"p50 keygate/nginx {k[1]/g[1]:.2f}  p99 keygate/nginx {k[2]/g[2]:.2f}")
if "keygate_b" in rows:
    # Round by round as well: the rounds of one run move by more than most changes.
    pairs = [kb[4] / ka[4] for ka, kb in zip(rows["keygate"], rows["keygate_b"])]
    kb = med["keygate_b"]
    print(f"keygate_b/keygate per core {kb[4]/k[4]:.3f} (rounds: "
          + " ".join(f"{x:.3f}" for x in pairs)
          + f")  p50 {kb[1]/k[1]:.2f}  p99 {kb[2]/k[2]:.2f}")
PY
echo "keygate RSS: $(awk '/VmRSS/{print $2" "$3}' /proc/$KGPID/status)"

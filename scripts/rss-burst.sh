#!/usr/bin/env bash
# Memory after a burst (issue 14 item 5): keygate's RSS idle, at the peak of a burst
# of h2 streams to a slow upstream, and after the burst.
#
#   scripts/rss-burst.sh [STREAMS_PER_CONN] [REQUESTS]     (defaults: 256, 60000)
#   ALLOC=/path/to/libX.so   run keygate with LD_PRELOAD=ALLOC: only changes a binary
#                            built with the system allocator (keygate links mimalloc
#                            as its global allocator; see docs/performance.md)
#   KEYGATE_BIN=PATH         a keygate binary to measure instead of building this tree's
#   MAX_UP=N                 the module's max_upstream_connections (default: 1024)
#
# On 127.0.0.1 only: an nginx upstream answering 64 KiB at 512 KiB/s per response (so
# requests pile up and the pool grows), keygate (release build, embedded store,
# proxy.workers = 2), h2load with 10 h2c connections of STREAMS_PER_CONN concurrent
# streams each (the shape of issue 14's report). Prints RSS idle, the peak during the
# burst, RSS 2 s, 15 s and 30 s after it, and the upstream connections keygate held at the
# peak and at those times.
# Every process started here is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
STREAMS=${1:-256}
REQUESTS=${2:-60000}
MAX_UP=${MAX_UP:-1024}

need_tools h2load:nghttp2-client nginx:nginx-light curl:curl
NGINX=$(nginx_bin)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

[ -n "${KEYGATE_BIN:-}" ] || cargo build --release --quiet --bin keygate
KEYGATE=${KEYGATE_BIN:-./target/release/keygate}
work_dir keygate-rss
# nginx's workers (another user) read the upstream's file below it.
chmod 755 "$WORK"
UP=$(free_port); KG=$(free_port); KGA=$(free_port)

mkdir -p "$WORK/up/html"
head -c 65536 /dev/zero | tr '\0' 'x' > "$WORK/up/html/big"
cat > "$WORK/up/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/up/nginx.pid;
error_log $WORK/up/error.log error;
worker_rlimit_nofile 20000;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UP backlog=4096;
    root $WORK/up/html;
    location / { limit_rate 512k; try_files /big =404; }
  }
}
CONF
spawn "$NGINX" -c "$WORK/up/nginx.conf" -p "$WORK/up"

cat > "$WORK/keygate.toml" <<CONF
[proxy]
listen = "127.0.0.1:$KG"
workers = 2
[admin]
listen = "127.0.0.1:$KGA"
bootstrap_key_file = "$WORK/admin.key"
[store]
path = "$WORK/keygate.redb"
[[modules]]
name = "agreements"
prefixes = ["/public/v1/agreements"]
upstream = "http://127.0.0.1:$UP"
max_upstream_connections = $MAX_UP
CONF
start_keygate "$WORK/keygate.toml" env ${ALLOC:+LD_PRELOAD=$ALLOC} "$KEYGATE"
KEY=$(cat "$WORK/admin.key")
URL="http://127.0.0.1:$KG/public/v1/agreements/big"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: ApiKey $KEY" "$URL")
[ "$code" = 200 ] || { echo "warm-up answered $code"; cat "$WORK/keygate.log"; exit 1; }

rss() { awk '/VmRSS/{print $2}' "/proc/$KGPID/status"; }
upconns() { ss -tn state established "( dport = :$UP )" 2>/dev/null | tail -n +2 | wc -l; }
sleep 1
IDLE=$(rss)
spawn h2load -c10 -m"$STREAMS" -n"$REQUESTS" -H "Authorization: ApiKey $KEY" "$URL" > "$WORK/h2load.out" 2>&1; H2=$!
PEAK=$IDLE; PEAKUP=0
while kill -0 "$H2" 2>/dev/null; do
  r=$(rss); [ "$r" -gt "$PEAK" ] && PEAK=$r
  u=$(upconns); [ "$u" -gt "$PEAKUP" ] && PEAKUP=$u
  sleep 0.5
done
grep -E "^requests:|^status codes:|finished in" "$WORK/h2load.out" || cat "$WORK/h2load.out"
sleep 2; AFTER2=$(rss); UP2=$(upconns)
sleep 13; AFTER15=$(rss); UP15=$(upconns)
sleep 15; AFTER30=$(rss); UP30=$(upconns)
echo "binary: $KEYGATE${ALLOC:+ with LD_PRELOAD=$ALLOC}; max_upstream_connections $MAX_UP; upstream connections at the peak: $PEAKUP, 2 s after: $UP2, 15 s after: $UP15, 30 s after: $UP30"
echo "RSS idle ${IDLE} kB, peak ${PEAK} kB, 2 s after ${AFTER2} kB, 15 s after ${AFTER15} kB, 30 s after ${AFTER30} kB ($(python3 -c "print(f'{$AFTER15/$IDLE:.1f}x / {$AFTER30/$IDLE:.1f}x')") idle)"

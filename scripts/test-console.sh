#!/usr/bin/env bash
# End-to-end test of the admin web console in real headless Chromium.
#
#   scripts/test-console.sh        (scripts/test.sh runs it with every scripts/test-*.sh)
#
# Installs what is missing (Debian's chromium; playwright-core from npm into
# tests/e2e/node_modules, as pinned by tests/e2e/package-lock.json), builds keygate,
# starts on free 127.0.0.1 ports a small upstream (tests/e2e/upstream.mjs) and keygate
# with a temporary config and store (stats.flush_interval = "200ms"), then runs
# tests/e2e/console.mjs: sign in, create a token through the wizard, use its key on
# the proxy, read the Statistics tab, disable/enable/rotate/renew/delete from the ⋮
# menu, 1280 and 390 px layouts. Screenshots go to target/e2e-artifacts/. Every
# process started here is stopped by PID on exit; every wait has a deadline.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ARTIFACTS=$ROOT/target/e2e-artifacts
E2E_TIMEOUT=${E2E_TIMEOUT:-300}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
if [ ! -d tests/e2e/node_modules/playwright-core ]; then
  (cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
fi

cargo build --quiet
BIN=$ROOT/target/debug/keygate

WORK=$(mktemp -d /tmp/keygate-console.XXXXXX)
PIDS=()
cleanup() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  if [ "$rc" -ne 0 ] && [ -f "$WORK/keygate.log" ]; then
    echo "--- keygate log (last 40 lines)"
    tail -n 40 "$WORK/keygate.log"
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); PROXY=$(free_port); ADMIN=$(free_port)

node tests/e2e/upstream.mjs "$UP" >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)

cat >"$WORK/keygate.toml" <<CONF
[proxy]
listen = "127.0.0.1:$PROXY"

[admin]
listen = "127.0.0.1:$ADMIN"
bootstrap_key_file = "$WORK/admin.key"

[store]
backend = "embedded"
path = "$WORK/keygate.redb"

[stats]
flush_interval = "200ms"

[[extensions]]
name = "custom"
code = "EXT-000"
description = "Custom integration"
[[extensions]]
name = "reports"
code = "EXT-569"
description = "Custom Reports creation"
[[extensions]]
name = "devops"
code = "EXT-005"
description = "Connect DevOps extensions"
permissions = ["catalog:read"]
[[extensions]]
name = "zapier"
code = "EXT-816"
description = "Zapier workflow automation platform"
[[extensions]]
name = "flowgear"
code = "EXT-248"
description = "Flowgear iPaaS platform"

[[modules]]
name = "agreements"
description = "Create and control the lifecycle of agreements"
prefixes = ["/public/v1/agreements"]
upstream = "http://127.0.0.1:$UP"

[[modules]]
name = "billing"
description = "Billing requests and recurring assets"
prefixes = ["/public/v1/billing"]
upstream = "http://127.0.0.1:$UP"

[[modules]]
name = "catalog"
description = "Products, items, parameters and media"
prefixes = ["/public/v1/catalog"]
upstream = "http://127.0.0.1:$UP"
CONF

KEYGATE_LOG=info "$BIN" serve --config "$WORK/keygate.toml" >"$WORK/keygate.log" 2>&1 &
PIDS+=($!)

# Both listeners up and the bootstrap key written (deadline 30 s).
deadline=$((SECONDS + 30))
until curl -fsS "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 &&
  curl -sS -o /dev/null "http://127.0.0.1:$PROXY/" 2>/dev/null &&
  curl -fsS -o /dev/null "http://127.0.0.1:$UP/" 2>/dev/null &&
  [ -s "$WORK/admin.key" ]; do
  if [ $SECONDS -ge $deadline ]; then
    echo "keygate or the upstream did not come up within 30 s"
    exit 1
  fi
  sleep 0.2
done

rm -rf "$ARTIFACTS"
mkdir -p "$ARTIFACTS"
ADMIN_URL="http://127.0.0.1:$ADMIN" PROXY_URL="http://127.0.0.1:$PROXY" \
  ADMIN_KEY_FILE="$WORK/admin.key" ARTIFACTS="$ARTIFACTS" \
  timeout --kill-after=10 "$E2E_TIMEOUT" node tests/e2e/console.mjs
echo "screenshots: $ARTIFACTS"

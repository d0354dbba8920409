#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine with Rust installed:
# installs what is missing (redis-server, redis-tools through apt-get), then checks
# formatting and lints, and runs every test (unit, integration, benches in test mode).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# Test threads are capped: several tests start servers and stream 200 MB.
cargo test --lib --bins --tests --no-fail-fast -- --test-threads 4
# Benches run once each in test mode (criterion takes no libtest flags).
cargo test --benches --no-fail-fast
for extra in scripts/test-*.sh; do
  [ -e "$extra" ] || continue
  echo "== $extra"
  bash "$extra"
done

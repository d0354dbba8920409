#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ for a bounded time each, on the stable toolchain:
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET…]     (default 60 s, every target)
#
# It builds the targets the way `cargo fuzz build --sanitizer none` does (libFuzzer with
# SanitizerCoverage, no nightly needed), runs each over its committed corpus in
# fuzz/corpus/<target> (new interesting inputs are added there; commit them if you
# like them), and stops at the first crash (the input is left in fuzz/artifacts/).
# With cargo-fuzz installed, `RUSTC_BOOTSTRAP=1 cargo fuzz run <target>` works too
# (ASan needs the -Z flags nightly would allow).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(normalize_path authorization duration config)

export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# --target: without it RUSTFLAGS would also instrument build scripts and proc macros,
# which then fail to link (no libFuzzer runtime there); cargo-fuzz does the same.
HOST=$(rustc -vV | sed -n 's/^host: //p')
# The same dependency versions as keygate's own build (fuzz/Cargo.lock is not kept).
[ -e Cargo.lock ] || cp ../Cargo.lock Cargo.lock
cargo build --release --quiet --target "$HOST" --target-dir target ${TARGETS[@]/#/--bin }
mkdir -p artifacts
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t"
  before=$(ls "corpus/$t" | wc -l)
  log=$(mktemp)
  if ! ./target/"$HOST"/release/"$t" "corpus/$t" -max_total_time="$SECS" -max_len=4096 \
      -artifact_prefix="artifacts/$t-" -print_final_stats=1 >"$log" 2>&1; then
    tail -30 "$log"; echo "fuzz $t: CRASH (see fuzz/artifacts/)"; exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo "?")
  echo -e "fuzz-$t\tok\t${SECS}s, $runs runs, coverage $cov, corpus $before -> $(ls "corpus/$t" | wc -l)"
  rm -f "$log"
done

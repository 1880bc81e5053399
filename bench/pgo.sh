#!/usr/bin/env bash
# bench/pgo.sh — regenerate the profile that release builds are optimised with (PGO).
#
# Builds routeid instrumented (-Cprofile-generate) into target/pgo-gen, runs it under the
# load of bench/run.sh (every scenario: plain, sticky, HTTPS keep-alive, handshakes, HTTP/2; with
# and without the access log), merges what it recorded (`--sparse`: code that never ran gets no
# profile rather than a cold one) and writes pgo/routeid.profdata.gz, which
# the Dockerfile, scripts/build-release.sh and so bench/run.sh build with (`-Cprofile-use`). Loopback only; needs what
# bench/run.sh needs plus rustup's llvm-tools component (installed when missing).
#
#   bash bench/pgo.sh            # ~3 min of load after the instrumented build
#
# Rerun it after changes to the request path: functions changed since the profile was made
# lose their profile (the build still works, they are optimised as without PGO). Rerun it too
# after any change to Cargo.lock or to the dependencies' features, even one the request path
# never calls: the change renames the symbols of every crate built on the changed one, routeid's
# own included, so all of them lose their profile, without a warning (2026-12-05: rustix's
# `thread` feature, 26,909 → 32,627 instructions per sticky request until the profile was remade).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TOOLS=$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | awk '/^host:/ {print $2}')/bin
[[ -x $TOOLS/llvm-profdata ]] || rustup component add llvm-tools
RAW=$(mktemp -d /tmp/routeid-pgo.XXXXXX)
trap 'rm -rf "$RAW"' EXIT
CARGO_TARGET_DIR=target/pgo-gen RUSTFLAGS="-Cprofile-generate=$RAW" cargo build --release --bin routeid
ROUTEID_BIN="$ROOT/target/pgo-gen/release/routeid" POOL_BENCH=0 DURATION=${DURATION:-4s} ROUNDS=1 WARMUP=0 \
    TARGETS="routeid routeid-log" bash bench/run.sh >/dev/null
ls "$RAW"/*.profraw >/dev/null 2>&1 || { echo "pgo: no profile was written" >&2; exit 1; }
"$TOOLS/llvm-profdata" merge --sparse -o "$RAW/routeid.profdata" "$RAW"/*.profraw
mkdir -p pgo
gzip -9 -c "$RAW/routeid.profdata" >pgo/routeid.profdata.gz
echo "pgo: wrote pgo/routeid.profdata.gz ($(du -h pgo/routeid.profdata.gz | cut -f1)) with $(rustc -V)"

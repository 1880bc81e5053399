#!/usr/bin/env bash
# scripts/build-release.sh — the release binary as the Docker image builds it: optimised with
# the profile in pgo/routeid.profdata.gz (profile-guided optimisation: LLVM lays out and inlines
# the request path by how often each branch ran under bench/run.sh's load; about a quarter
# fewer instructions and a third fewer instruction-cache misses per request).
#
#   bash scripts/build-release.sh        # prints the binary's path: target/pgo/release/routeid
#   PGO=0 bash scripts/build-release.sh  # plain `cargo build --release`: target/release/routeid
#   NO_BUILD=1 bash scripts/build-release.sh  # only the path (the benches' NO_BUILD)
#
# The PGO build has a target directory of its own (`$CARGO_TARGET_DIR/pgo`, default
# target/pgo), so it does not throw away the plain release build's artifacts (RUSTFLAGS differ).
# The profile is made by bench/pgo.sh with Rust 1.95 (LLVM 22), the Dockerfile's RUST_VERSION:
# an older compiler cannot read it (then build with PGO=0). Functions changed since it was made are simply
# optimised as without a profile.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-target}
[[ $TARGET = /* ]] || TARGET="$ROOT/$TARGET"
if [[ ${PGO:-1} == 0 || ! -f pgo/routeid.profdata.gz ]]; then
    [[ -n ${NO_BUILD:-} ]] || cargo build --release --bin routeid >&2
    echo "$TARGET/release/routeid"
    exit 0
fi
if [[ -n ${NO_BUILD:-} ]]; then
    echo "$TARGET/pgo/release/routeid"
    exit 0
fi
mkdir -p "$TARGET/pgo"
profile="$TARGET/pgo/routeid.profdata"
# Rewritten only when the checked-in profile changed, so cargo sees nothing new otherwise.
if ! gunzip -c pgo/routeid.profdata.gz | cmp -s - "$profile"; then
    gunzip -c pgo/routeid.profdata.gz >"$profile.tmp" && mv "$profile.tmp" "$profile"
fi
CARGO_TARGET_DIR="$TARGET/pgo" RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$profile" \
    cargo build --release --bin routeid >&2
echo "$TARGET/pgo/release/routeid"

#!/usr/bin/env bash
# Instructions per proxied request (valgrind callgrind: user space, deterministic, unaffected by
# other load on the machine) with metrics on and off (`--no-metrics`). Loopback only.
#
#   bash bench/metrics_instructions.sh        # DURATION=10s under callgrind (about 15k requests)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
for c in wrk nginx valgrind; do command -v "$c" >/dev/null || MISSING=1; done
if [[ -n ${MISSING:-} ]]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx valgrind >/dev/null
fi
[[ -n ${NO_BUILD:-} ]] || cargo build --release -q
BIN=$(realpath "${CARGO_TARGET_DIR:-target}/release/routeid")
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
TMP=$(mktemp -d /tmp/routeid-cg.XXXXXX); chmod 755 "$TMP"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
sed -e "s|@TMP@|$TMP|g" -e "s|@PORT1@|18381|g" -e "s|@PORT2@|18382|g" bench/nginx.conf.tmpl >"$TMP/nginx.conf"
"$NGINX" -p "$TMP" -e "$TMP/nginx-error.log" -c "$TMP/nginx.conf" >"$TMP/nginx.out" 2>&1 &
pids+=($!)
sed -e "s|@PORT1@|18381|g" -e "s|@PORT2@|18382|g" bench/pools.yaml.tmpl >"$TMP/pools.yaml"
declare -A per
for mode in on off; do
  extra=()
  [[ $mode == off ]] && extra=(--no-metrics)
  TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$TMP/cg-$mode.out" --instr-atstart=no \
    "$BIN" standalone -f "$TMP/pools.yaml" --listen 127.0.0.1:18390 --admin-listen 127.0.0.1:18391 \
    --no-access-log "${extra[@]}" >"$TMP/routeid-$mode.log" 2>&1 &
  vg=$!
  for _ in $(seq 200); do curl -fs http://127.0.0.1:18391/readyz >/dev/null 2>&1 && break; sleep 0.3; done
  callgrind_control -i on "$vg" >/dev/null
  wrk -t1 -c8 -d3s http://127.0.0.1:18390/ >/dev/null   # warm-up
  callgrind_control -z "$vg" >/dev/null
  out=$(wrk -t1 -c8 -d"$DURATION" http://127.0.0.1:18390/)
  callgrind_control -d "$vg" >/dev/null
  kill "$vg"; wait "$vg" 2>/dev/null || true
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  ir=$(grep -h '^summary:' "$TMP/cg-$mode.out.1" | awk '{print $2}')
  per[$mode]=$((ir / n))
  echo "metrics $mode: $n requests, $ir instructions, ${per[$mode]} per request"
done
awk -v a="${per[on]}" -v b="${per[off]}" 'BEGIN { printf "metrics add %+.2f%% instructions per request\n", 100 * (a - b) / b }'

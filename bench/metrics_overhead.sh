#!/usr/bin/env bash
# CPU per proxied request with metrics on vs off (`--no-metrics`), interleaved rounds, medians.
# Loopback only. Two routeid processes share CPU 0 (only one is loaded at a time); wrk and the
# nginx backends run on CPU 1.
#
#   bash bench/metrics_overhead.sh               # ROUNDS=5 DURATION=8s
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8s}
CONNS=${CONNS:-32}
source bench/common.sh
bench_init mo wrk nginx
start_backends 18281 18282 taskset -c 1
start() { # port admin extra...
  local port=$1 admin=$2; shift 2
  TOKIO_WORKER_THREADS=1 taskset -c 0 "$BIN" standalone -f "$TMP/pools.yaml" --listen "127.0.0.1:$port" \
    --admin-listen "127.0.0.1:$admin" --no-access-log "$@" >"$TMP/routeid-$port.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
}
start 18290 18291
ON=${pids[-1]}
start 18292 18293 --no-metrics
OFF=${pids[-1]}
hz=$(getconf CLK_TCK)
run() { # pid port -> cpu_us/req
  local pid=$1 port=$2 t0 t1 out n
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$port/")
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  awk -v t="$((t1 - t0))" -v hz="$hz" -v n="$n" 'BEGIN { printf "%.2f\n", 1e6 * t / hz / n }'
}
taskset -c 1 wrk -t1 -c"$CONNS" -d2s http://127.0.0.1:18290/ >/dev/null
taskset -c 1 wrk -t1 -c"$CONNS" -d2s http://127.0.0.1:18292/ >/dev/null
on=(); off=()
for r in $(seq "$ROUNDS"); do
  on+=("$(run "$ON" 18290)"); off+=("$(run "$OFF" 18292)")
  echo "round $r: metrics on ${on[-1]} us/req, off ${off[-1]} us/req"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
mon=$(median "${on[@]}"); moff=$(median "${off[@]}")
awk -v a="$mon" -v b="$moff" 'BEGIN { printf "median CPU per request: metrics on %.2f us, off %.2f us: metrics add %+.1f%%\n", a, b, 100 * (a - b) / b }'

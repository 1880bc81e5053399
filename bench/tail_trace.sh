#!/usr/bin/env bash
# bench/tail_trace.sh — what the latency tail is made of: every request's latency (h2load over
# HTTP/1.1, --log-file) beside a scheduler trace of both CPUs (perf, sched:sched_switch), so each
# request can be set against what ran on the proxy's CPU while it was in flight. For routeid with
# its access log it says how much of the p99 the log's threads (its writer, `routeid-log`, and a
# thread named `routeid-letgo` where a build has one, as an experimental one had) make by their
# runs on the core they share with requests: the p99 of each request's latency less the time
# those threads ran during it.
#
# Usage:  bash bench/tail_trace.sh
# Env:    ROUNDS=8 DURATION=4 (seconds of h2load per run) CONNS=32
#         TARGETS="routeid-log routeid haproxy" (as in bench/common.sh's start_targets)
#         ROUTEID_BIN  the binary to measure (default: scripts/build-release.sh's build)
# Output: a row per round and target (tail_trace.py's columns), then per target the medians over
#         rounds and the medians of paired ratios (routeid-log to routeid; each to HAProxy).
# Each round starts a fresh process of each target, in turn (every other round in reverse), on
# CPU 0, with wrk's 2-second warm-up; the load and the two nginx members run on CPU 1. A request
# carries the sticky cookie (bench/run.sh's sticky scenario). Needs root for the tracepoints.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
ROUNDS=${ROUNDS:-8}
DURATION=${DURATION:-4}
CONNS=${CONNS:-32}
read -r -a targets <<<"${TARGETS:-routeid-log routeid haproxy}"
bench_init tail wrk h2load perf
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
start_backends 19081 19082 taskset -c 1
rows="$TMP/rows.tsv"
echo "binary $BIN, commit $(git rev-parse --short HEAD), h2load --h1 -c$CONNS -D$DURATION, $ROUNDS rounds"
python3 bench/tail_trace.py header
for r in $(seq "$ROUNDS"); do
  order=("${targets[@]}")
  ((r % 2)) || mapfile -t order < <(printf '%s\n' "${targets[@]}" | tac)
  for k in "${!order[@]}"; do
    t=${order[$k]}
    # A port of its own for every process: none is rebound while the last one lets go of it.
    start_targets $((19100 + 3 * (r * ${#targets[@]} + k))) "$t"
    pid=${T_PID[$t]}
    load_run "$t" sticky 2 "$CONNS" >/dev/null # warm-up
    settle_logs
    log_tids=$(grep -lxE 'routeid-(log|letgo)' /proc/"$pid"/task/*/comm 2>/dev/null | cut -d/ -f5 | paste -sd, || true)
    offset=$(python3 -c 'import time; print(time.time() - time.clock_gettime(time.CLOCK_MONOTONIC))')
    taskset -c 1 perf record -q -k mono -e sched:sched_switch -a -o "$TMP/sched.data" \
      -- sleep $((DURATION + 1)) 2>/dev/null &
    perf_pid=$!
    sleep 0.3
    rm -f "$TMP/requests.tsv" # h2load appends to its log file
    summary=$(taskset -c 1 h2load --h1 -t1 -c"$CONNS" -D "$DURATION" -H "Cookie: ${T_COOKIE[$t]}" \
      --log-file="$TMP/requests.tsv" "${T_URL[$t]}")
    wait "$perf_pid"
    stop_pids "$pid"
    n=$(h2load_succeeded "$summary")
    ((n > 0)) || { echo "$t: failed requests: $summary" >&2; exit 1; }
    perf script -i "$TMP/sched.data" -F cpu,time,trace >"$TMP/sched.txt" 2>/dev/null
    python3 bench/tail_trace.py round "$r" "$t" "$offset" "${log_tids:-none}" "$TMP/requests.tsv" \
      "$TMP/sched.txt" | tee -a "$rows"
  done
done
python3 bench/tail_trace.py report "$rows"

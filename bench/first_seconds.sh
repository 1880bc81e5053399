#!/usr/bin/env bash
# bench/first_seconds.sh — a fresh proxy's first seconds under load, one second at a time: wrk's
# p99 per 1-second window (sticky, 32 connections), the process's page faults in that window, and
# the huge pages the kernel faulted in machine-wide (`thp_fault_alloc` in /proc/vmstat) while the
# process lived. Each start is a new process, as in every round of bench/run.sh and bench/ab.sh,
# whose measured runs begin a second after their proxy does. A window whose p99 is ten times its
# neighbours' is a stall of the whole worker: every connection waited (bench/README.md,
# 2026-12-05: huge pages cleared at their first touch). Loopback only.
#
#   bash bench/first_seconds.sh
#   TARGETS="routeid-log routeid haproxy" STARTS=6 WINDOWS=8 ROUTEID_BIN=<bin> NO_BUILD=1 bash bench/first_seconds.sh
#
# Targets as in bench/run.sh (routeid: without its access log; routeid-log: with it, to a file;
# haproxy). A `ROUTEID_BIN` may be a wrapper script that sets the environment and execs the binary
# (`exec`: the pid measured and stopped is the wrapper's).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
bench_init first wrk nginx haproxy
TARGETS=${TARGETS:-routeid-log routeid haproxy}
STARTS=${STARTS:-5}
WINDOWS=${WINDOWS:-8}
start_backends 18481 18482 taskset -c 1
thp() { awk '$1 == "thp_fault_alloc" {print $2}' /proc/vmstat; }
faults() { awk '{print $10}' "/proc/$1/stat"; }
echo "p99 / minor page faults of each 1-second window after a fresh start; huge pages faulted while it ran"
k=0
for s in $(seq "$STARTS"); do
  for t in $TARGETS; do
    h0=$(thp) k=$((k + 1))
    start_targets $((18500 + 3 * k)) "$t" # ports of their own: no wait for the last ones to close
    p=${T_PID[$t]} line=""
    # A wrapper must exec the binary: its pid is the one measured and stopped here.
    [[ $t == haproxy || $(cat "/proc/$p/comm") != *sh ]] || { echo "$t: ROUTEID_BIN must exec the binary" >&2; exit 1; }
    for _ in $(seq "$WINDOWS"); do
      a=$(faults "$p")
      out=$(taskset -c 1 wrk -t1 -c32 -d1s --latency -H "Cookie: ${T_COOKIE[$t]}" "${T_URL[$t]}")
      line+=" $(awk '$1 == "99%" {print $2}' <<<"$out")/$(($(faults "$p") - a))"
    done
    printf '%-12s start %d:%s  huge pages %d\n' "$t" "$s" "$line" $(($(thp) - h0))
    stop_pids "$p"
  done
done

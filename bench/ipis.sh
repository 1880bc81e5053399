#!/usr/bin/env bash
# bench/ipis.sh — the wake-ups a proxy's writes cost on the other core: inter-processor
# interrupts to the load's core (CPU 1: wrk and nginx) per 1,000 requests, from
# /proc/interrupts, beside CPU per request and the load core's idle time. On a VM an IPI is an
# exit to the hypervisor, and the sender's kernel time shows it (`_raw_spin_unlock_irqrestore`
# under `sock_def_readable` in bench/perf_diff.sh): a proxy that leaves the load's core waiting
# more often wakes a sleeping or busy peer more often per request.
#
#   bash bench/ipis.sh         # routeid without and with its access log, and HAProxy, sticky
#
# Env: TARGETS (routeid routeid-log haproxy), SCENARIO (sticky; plain, h2), ROUNDS (3),
# D (4 seconds per run), C (32), ROUTEID_BIN.
# Output: one line per target and round: req/s, CPU µs per request, rescheduling (RES) and
# function-call (CAL) IPIs per 1,000 requests to each core, the load core's idle share.
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a TARGETS <<<"${TARGETS:-routeid routeid-log haproxy}"
SCENARIO=${SCENARIO:-sticky} ROUNDS=${ROUNDS:-3} D=${D:-4} C=${C:-32}
source bench/common.sh
tools=(wrk nginx curl haproxy)
[[ $SCENARIO != h2 ]] || tools+=(h2load)
bench_init ipis "${tools[@]}"
start_backends 18781 18782 taskset -c 1
start_targets 18790 "${TARGETS[@]}"

# irqs: "RES0 RES1 CAL0 CAL1" so far, the first two CPUs' columns of /proc/interrupts.
irqs() { awk '$1 == "RES:" {r0 = $2; r1 = $3} $1 == "CAL:" {c0 = $2; c1 = $3} END {print r0, r1, c0, c1}' /proc/interrupts; }
# idle1: CPU 1's idle time so far, in clock ticks.
idle1() { awk '$1 == "cpu1" {print $5}' /proc/stat; }
# ticks PID: the process's user+system clock ticks so far.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

hz=$(getconf CLK_TCK)
echo "bench/ipis.sh $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'):" \
  "$SCENARIO, -c$C, $D s per run; proxy on CPU 0, load on CPU 1; IPIs per 1,000 requests"
for r in $(seq "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    read -r a0 a1 b0 b1 < <(irqs)
    i0=$(idle1) t0=$(ticks "${T_PID[$t]}")
    rate=$(load_run "$t" "$SCENARIO" "$D" "$C")
    read -r c0 c1 d0 d1 < <(irqs)
    i1=$(idle1) t1=$(ticks "${T_PID[$t]}")
    awk -v r="$r" -v t="$t" -v rate="$rate" -v d="$D" -v hz="$hz" -v cpu=$((t1 - t0)) -v idle=$((i1 - i0)) \
      -v r0=$((c0 - a0)) -v r1=$((c1 - a1)) -v k0=$((d0 - b0)) -v k1=$((d1 - b1)) 'BEGIN {
        n = rate * d
        printf "%d %-12s %7.0f req/s  cpu %6.2f us/req  RES to cpu0 %6.1f, cpu1 %6.1f  CAL to cpu0 %6.1f, cpu1 %6.1f  cpu1 idle %3.0f%%\n",
          r, t, rate, cpu / hz * 1e6 / n, r0 * 1000 / n, r1 * 1000 / n, k0 * 1000 / n, k1 * 1000 / n, 100 * idle / hz / d }'
  done
done

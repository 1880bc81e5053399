#!/usr/bin/env bash
# bench/perf_diff.sh — where two targets' CPU time goes, per request and by function: each runs
# alone on CPU 0 under the same load (on CPU 1), one after the other, and `perf record` samples
# it (cpu-clock, which works where the VM has no hardware counters) for the middle of the load.
# Prints each target's µs per request in all, in the kernel and in user space, then the
# functions whose cost per request differs most, both ways.
#
#   bash bench/perf_diff.sh                                  # routeid (no log) vs HAProxy, sticky
#   TARGETS="routeid routeid-log" bash bench/perf_diff.sh    # what the access log costs, where
#   SCENARIO=h2 bash bench/perf_diff.sh                      # HTTP/2 over TLS (h2load)
#
# Env: TARGETS (two of routeid, routeid-log, haproxy), SCENARIO (plain, sticky, h2), D (6: load
# seconds; perf records D-2 of them, from the second on), C (32 connections), M (10 h2 streams
# per connection), TOP (30 functions each way), ROUTEID_BIN, PERF_OPTS (more `perf record` options,
# e.g. `--call-graph dwarf` to see who calls a function: `perf report -i bench/out/perf-<t>.data
# --no-children -S <symbol> -G`).
#
# The proxy's core is saturated under this load, so a target's total is about 1 / req/s, perf's
# own cost included (about 30 % above bench/run.sh's figures): read the split between kernel and
# user space and between functions, and compare totals only with run.sh's paired rounds. One
# pair, not interleaved rounds: the machine's drift is in it. Samples are kept in
# bench/out/perf-<target>.data (`perf report -i` them).
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a TARGETS <<<"${TARGETS:-routeid haproxy}"
SCENARIO=${SCENARIO:-sticky} D=${D:-6} C=${C:-32} M=${M:-10} TOP=${TOP:-30}
((${#TARGETS[@]} == 2)) || { echo "TARGETS: two targets, not '${TARGETS[*]}'" >&2; exit 2; }
((D >= 3)) || { echo "D: at least 3 seconds" >&2; exit 2; }
source bench/common.sh
tools=(wrk nginx curl python3 haproxy perf)
[[ $SCENARIO != h2 ]] || tools+=(h2load)
bench_init perfdiff "${tools[@]}"
mkdir -p bench/out
start_backends 18681 18682 taskset -c 1
start_targets 18690 "${TARGETS[@]}"

rates=()
for t in "${TARGETS[@]}"; do
  load_run "$t" "$SCENARIO" 2 "$C" "$M" >/dev/null # warm-up
  load_run "$t" "$SCENARIO" "$D" "$C" "$M" >"$TMP/rate" &
  load=$!
  sleep 1
  perf record -q -e cpu-clock -F 4999 ${PERF_OPTS:-} -p "${T_PID[$t]}" -o "bench/out/perf-$t.data" -- sleep $((D - 2)) 2>/dev/null
  wait "$load"
  rates+=("$(cat "$TMP/rate")")
  perf report -i "bench/out/perf-$t.data" --no-children --sort sym -q -g none -F sample,sym 2>/dev/null >"$TMP/syms-$t"
done

echo "bench/perf_diff.sh $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'):" \
  "$SCENARIO, ${TARGETS[0]} vs ${TARGETS[1]}, $((D - 2)) s of samples each; proxy on CPU 0, load on CPU 1"
python3 - "$((D - 2))" "$TOP" "${TARGETS[0]}" "${rates[0]}" "$TMP/syms-${TARGETS[0]}" \
  "${TARGETS[1]}" "${rates[1]}" "$TMP/syms-${TARGETS[1]}" <<'EOF'
import collections, sys
secs, top = float(sys.argv[1]), int(sys.argv[2])
runs = [(sys.argv[3], float(sys.argv[4]), sys.argv[5]), (sys.argv[6], float(sys.argv[7]), sys.argv[8])]
cost = collections.defaultdict(lambda: [0.0, 0.0])
for i, (name, rate, path) in enumerate(runs):
    for line in open(path):
        fields = line.split(None, 1)
        if len(fields) < 2 or not fields[0].isdigit():
            continue
        # samples at 4999 Hz over `secs` seconds of `rate` requests a second: µs per request
        cost[fields[1].strip()][i] += int(fields[0]) / 4999 / (rate * secs) * 1e6
a, b = runs[0][0], runs[1][0]
for i, (name, rate, _) in enumerate(runs):
    total = sum(v[i] for v in cost.values())
    kernel = sum(v[i] for k, v in cost.items() if k.startswith("[k]"))
    print(f"{name:12s} {rate:9.0f} req/s  {total:6.2f} us/req: kernel {kernel:5.2f}, user {total - kernel:5.2f}")
rows = sorted(cost.items(), key=lambda kv: kv[1][1] - kv[1][0])
print(f"\n{a:>9s} {b:>9s}     diff  function (us per request; diff: {b} minus {a}; most costly in {a} first)")
for sym, (x, y) in rows[:top]:
    print(f"{x:9.3f} {y:9.3f} {y - x:+8.3f}  {sym[:110]}")
print(f"\n{a:>9s} {b:>9s}     diff  function (most costly in {b} first)")
for sym, (x, y) in reversed(rows[-top:]):
    print(f"{x:9.3f} {y:9.3f} {y - x:+8.3f}  {sym[:110]}")
EOF

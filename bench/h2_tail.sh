#!/usr/bin/env bash
# HTTP/2 with many streams in flight: latency percentiles and CPU per request of routeid builds
# and HAProxy, in interleaved rounds (every target in turn each round, starting one further on
# each round, so the machine's drift hits all alike; ratios are taken within a round, then their
# median). Loopback only; each proxy on CPU 0 (routeid with one tokio worker), h2load and the
# nginx members on CPU 1.
#
#   bash bench/h2_tail.sh                      # the release build, 64 connections x 10 streams
#   BUILDS="old=/tmp/routeid-old new=target/pgo/release/routeid" C=32 ROUNDS=10 bash bench/h2_tail.sh
#
#   BUILDS  label=binary pairs (default: new=<the release build, built first>; given, nothing
#           is built); the first is the base of the ratios
#   C, M    h2load connections and streams per connection (64, 10); ROUNDS (8); D seconds per
#           measurement (2, after a 1 s warm-up)
#   FLAGS   more routeid flags; by default it runs as users run it, its access log on (to a
#           file); HAProxy logs nothing (bench/haproxy.cfg.tmpl), as in bench/run.sh
#
# Prints one line per target and round (requests, CPU per request from /proc/PID/stat, p50 p90
# p99 p99.9 max in µs from h2load's per-request log), then per target the medians of its CPU,
# p99 and req/s over the base's, and of its own p99/p50. The rows stay in bench/out/h2_tail.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
C=${C:-64} M=${M:-10} ROUNDS=${ROUNDS:-8} D=${D:-2}
# With BUILDS given, nothing is built (bench_init builds the release binary unless ROUTEID_BIN).
if [[ -n ${BUILDS:-} ]]; then
    first=${BUILDS#"${BUILDS%%[![:space:]]*}"}
    first=${first%%[[:space:]]*}
    ROUTEID_BIN=${first#*=}
fi
bench_init h2tail curl nginx haproxy python3 h2load
BUILDS=${BUILDS:-new=$BIN}
start_backends 18581 18582 taskset -c 1
# HAProxy on 18590 (HTTPS with h2 on 18592), with the certificate routeid serves too.
start_targets 18590 haproxy || exit 1
targets=("haproxy:18592:${T_PID[haproxy]}:s1")
port=18600 base=
for b in $BUILDS; do
    label=${b%%=*}
    [[ $label =~ ^[A-Za-z0-9_.-]+$ && $label != haproxy ]] || { echo "bad build label: $label" >&2; exit 1; }
    base=${base:-$label}
    # shellcheck disable=SC2086 # FLAGS: words
    start_routeid "${b#*=}" "$port" $((port + 1)) "$TMP/$label.log" ${FLAGS:-} \
        --tls-listen 127.0.0.1:$((port + 2)) --default-tls-secret default/bench-tls
    targets+=("$label:$((port + 2)):$RID:.s1")
    port=$((port + 3))
done

# measure LABEL PORT PID COOKIE ROUND: one warm-up and one measured h2load run; prints a row.
measure() {
    local label=$1 port=$2 pid=$3 cookie=$4 round=$5 u0 s0 u1 s1 raw n pct
    local load=(taskset -c 1 h2load -t1 -c"$C" -m"$M" -H "Cookie: ROUTEID=$cookie" "https://127.0.0.1:$port/")
    "${load[@]}" -D1 >/dev/null
    read -r u0 s0 < <(cut -d' ' -f14,15 "/proc/$pid/stat")
    rm -f "$TMP/lat"
    raw=$("${load[@]}" -D"$D" --log-file="$TMP/lat")
    read -r u1 s1 < <(cut -d' ' -f14,15 "/proc/$pid/stat")
    settle_logs
    grep -qi 'application protocol: h2' <<<"$raw" || { echo "$label: no h2: $raw" >&2; return 1; }
    n=$(h2load_succeeded "$raw")
    ((n > 0)) || { echo "$label: failed requests: $raw" >&2; return 1; }
    # Nearest-rank percentiles over the requests answered 200, in µs.
    pct=$(awk '$2 == 200 {print $3}' "$TMP/lat" | sort -n | awk '{a[NR] = $1}
        function at(q,  i) { i = int(NR * q); if (i < NR * q) i++; return a[i < 1 ? 1 : i] }
        END {printf "p50 %6d p90 %6d p99 %6d p99.9 %6d max %6d", at(.5), at(.9), at(.99), at(.999), a[NR]}')
    awk -v n="$n" -v l="$label" -v c=$((u1 - u0 + s1 - s0)) -v t="$(getconf CLK_TCK)" -v p="$pct" -v r="$round" \
        'BEGIN {printf "%-3d %-10s %7d req  cpu %6.2f us  %s\n", r, l, n, c * 1e6 / t / n, p}'
}

mkdir -p bench/out
out=bench/out/h2_tail.txt
: >"$out"
for round in $(seq "$ROUNDS"); do
    # Each round starts one target further on, so no target always follows the same one.
    for ((i = 0; i < ${#targets[@]}; i++)); do
        IFS=: read -r label port pid cookie <<<"${targets[(i + round) % ${#targets[@]}]}"
        measure "$label" "$port" "$pid" "$cookie" "$round" | tee -a "$out"
    done
done
python3 - "$out" "$base" <<'EOF'
import statistics as st, sys
by = {}
for line in open(sys.argv[1]):
    f = line.split()
    by.setdefault(f[1], {})[f[0]] = dict(req=int(f[2]), cpu=float(f[5]), p50=int(f[8]), p99=int(f[12]))
base = by[sys.argv[2]]
print(f"\nmedians over {len(base)} rounds, ratios to {sys.argv[2]} in the same round:")
for label, rounds in by.items():
    med = lambda key: st.median(rounds[r][key] / base[r][key] for r in rounds)
    own = st.median(v["p99"] / v["p50"] for v in rounds.values())
    print(f"{label:10s} cpu {med('cpu'):.3f}  p99 {med('p99'):.3f}  req/s {med('req'):.3f}   own p99/p50 {own:.2f}")
EOF

#!/usr/bin/env bash
# bench/ab.sh — paired A/B of routeid configurations: CPU per proxied request, measured in
# short interleaved rounds so the machine's drift cancels out of the differences. By default:
# the access log's cost (off vs on, written to a file as users run it).
#
# bench/run.sh compares routeid with HAProxy; a small difference between two routeid runs (a
# microsecond in twenty) drowns there in the VM's drift between runs. Here every round runs each
# configuration once, back to back (every other round in reverse order), and the figure is the
# median over rounds of the difference to the first configuration in the same round. Each round
# starts a fresh process of each configuration: on this VM one process of a binary can run a few
# per cent faster or slower than the next of the same binary for its whole life (two processes
# of the same configuration differed by 0.7 µs per request over 16 paired rounds), so a process
# kept for every round would put its own luck into every difference.
#
# Usage:  bash bench/ab.sh
# Env:    ROUNDS=9 DURATION=4s CONNS=32 WARMUP=1s (each fresh process's first run)
#         SCENARIO=plain  or sticky (every request carries the route cookie of member s1)
#         CONFIGS         one configuration per line, "name|binary|flags[|scenario]" (binary
#                         empty: the release build; scenario: plain or sticky, default
#                         SCENARIO); default:
#                           off||--no-access-log
#                           on||
#         ROUTEID_BIN     the release build to use (default: scripts/build-release.sh's)
#         RESTART=0       one process per configuration for all rounds (faster, less fair)
# Output: per round each configuration's CPU per request (and its log writer thread's share);
#         per configuration the medians of CPU, user and system µs per request, the log writer
#         thread's share of that CPU (log_thread), context switches per 1,000 requests (all the
#         process's threads) and wrk's p99 latency, then
#         each configuration's median paired difference to the first (CPU, with a 95 %
#         confidence interval of that median and the smallest and largest; user and log_thread,
#         each with its interval) and median paired ratio of p99s (with its interval); a warning for any
#         configuration whose log dropped lines (routeid_log_lines_dropped_total) during a
#         measured run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-9}
DURATION=${DURATION:-4s}
CONNS=${CONNS:-32}
SCENARIO=${SCENARIO:-plain}
CONFIGS=${CONFIGS:-$'off||--no-access-log\non||'}
RESTART=${RESTART:-1}
WARMUP=${WARMUP:-1s}
source bench/common.sh
bench_init ab wrk nginx
start_backends 18381 18382 taskset -c 1
# cookie SCENARIO: the request's Cookie header for wrk (none for plain).
cookie() {
  case $1 in
    plain) echo "" ;;
    sticky) echo "ROUTEID=.s1" ;;
    *) echo "scenario must be plain or sticky, not '$1'" >&2; exit 2 ;;
  esac
}

names=() bins=() flagss=() cookies=()
while IFS='|' read -r name bin flags scenario; do
  [[ -n $name ]] || continue
  cookies+=("$(cookie "${scenario:-$SCENARIO}")") || exit 2
  names+=("$name") bins+=("${bin:-$BIN}") flagss+=("$flags")
done <<<"$CONFIGS"

# start_configs ROUND: a fresh process of every configuration (RESTART=0: the first round's
# processes serve every round), each warmed up by one run; the two port ranges alternate so a
# port is never rebound while the last round's process lets go of it. Fills ports and rpids.
ports=() rpids=()
start_configs() {
  local round=$1 i port
  [[ ${#rpids[@]} -eq 0 || $RESTART != 0 ]] || return 0
  stop_pids "${rpids[@]}"
  ports=() rpids=()
  port=$((18390 + 40 * (round % 2)))
  for i in "${!names[@]}"; do
    # shellcheck disable=SC2086 # flags are words
    start_routeid "${bins[$i]}" "$port" $((port + 1)) "$TMP/routeid-${names[$i]}.log" ${flagss[$i]}
    ports+=("$port") rpids+=("$RID")
    port=$((port + 2))
  done
  for i in "${!names[@]}"; do
    DURATION=$WARMUP run "${rpids[$i]}" "${ports[$i]}" "${cookies[$i]}" >/dev/null
  done
}

hz=$(getconf CLK_TCK)
# ticks PID: "user system" clock ticks of the process.
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
# writer_ticks PID: user + system clock ticks of its log writer thread (named routeid-log), 0
# without one.
writer_ticks() {
  local t
  for t in /proc/"$1"/task/*; do
    [[ $(cat "$t/comm" 2>/dev/null) == routeid-log ]] && { awk '{print $14 + $15}' "$t/stat"; return; }
  done
  echo 0
}
# switches PID: context switches of all its threads so far.
switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}'; }
# dropped PORT: log lines the process on PORT (its admin port PORT+1) dropped so far.
dropped() {
  curl -fsS "http://127.0.0.1:$(($1 + 1))/metrics" |
    awk '$1 == "routeid_log_lines_dropped_total" { d = $2 } END { print d + 0 }' ||
    { echo "cannot read the metrics of routeid on port $1 (admin $(($1 + 1)))" >&2; return 1; }
}
# run PID PORT COOKIE: "cpu user sys writer cs p99 dropped" per request (µs; writer: the log
# writer thread's share of cpu), per 1,000 requests, wrk's p99 latency in ms, and the log lines
# dropped during the run.
run() {
  local pid=$1 port=$2 u0 s0 u1 s1 w0 w1 c0 c1 d0 d1 out n p99 header=()
  [[ -z $3 ]] || header=(-H "Cookie: $3")
  d0=$(dropped "$port")
  read -r u0 s0 < <(ticks "$pid")
  w0=$(writer_ticks "$pid")
  c0=$(switches "$pid")
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" --latency "${header[@]}" "http://127.0.0.1:$port/")
  read -r u1 s1 < <(ticks "$pid")
  w1=$(writer_ticks "$pid")
  c1=$(switches "$pid")
  d1=$(dropped "$port")
  settle_logs
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  p99=$(awk '/^ +99%/ { v = $2; f = 1; if (v ~ /us$/) f = 0.001; else if (v ~ /ms$/) f = 1; else if (v ~ /s$/) f = 1000
    sub(/[a-z]+$/, "", v); print v * f }' <<<"$out")
  [[ -n $n && -n $p99 ]] || { echo "cannot parse wrk output: $out" >&2; return 1; }
  awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v w=$((w1 - w0)) -v c=$((c1 - c0)) -v hz="$hz" -v n="$n" -v p99="$p99" -v d=$((d1 - d0)) \
    'BEGIN { printf "%.3f %.3f %.3f %.3f %.2f %.3f %d\n", 1e6 * (u + s) / hz / n, 1e6 * u / hz / n, 1e6 * s / hz / n, 1e6 * w / hz / n, 1000 * c / n, p99, d }'
}

results="$TMP/results"
: >"$results"
for r in $(seq "$ROUNDS"); do
  start_configs "$r"
  # Every other round in reverse order: what runs first or last in a round is no one's share.
  order=("${!names[@]}")
  ((r % 2)) || order=($(printf '%s\n' "${order[@]}" | sort -rn))
  line="round $r:"
  for i in "${order[@]}"; do
    read -r cpu user sys writer cs p99 dropped < <(run "${rpids[$i]}" "${ports[$i]}" "${cookies[$i]}")
    echo "$r ${names[$i]} $cpu $user $sys $writer $cs $p99 $dropped" >>"$results"
    line+=" ${names[$i]} $cpu"
    # The log writer's share, per round: a spell in which the VM makes its pages dear shows.
    [[ $writer == 0.000 ]] || line+=" (writer $writer)"
  done
  echo "$line µs/req" >&2
done

echo "bench/ab.sh $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')," \
  "$SCENARIO, wrk -c$CONNS -d$DURATION, $ROUNDS rounds; routeid on CPU 0 (1 worker), wrk+nginx on CPU 1"
awk -v first="${names[0]}" '
  function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  # ci95(list): a 95 % confidence interval of the median, from order statistics alone (the k-th
  # smallest and largest, k the largest with P(Binomial(n, 1/2) < k) <= 2.5 %: no assumption on
  # the spread); "n/a" under 6 rounds, where no such interval exists.
  function ci95(list) { return ci95f(list, "%+.2f..%+.2f") }
  function ci95f(list, fmt,   n, a, i, j, t, k, pk, cdf) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
    pk = 0.5 ^ n; cdf = pk; k = 0
    for (i = 0; cdf <= 0.025 && i < n; i++) { k = i + 1; pk = pk * (n - i) / (i + 1); cdf += pk }
    return k ? sprintf(fmt, a[k], a[n + 1 - k]) : "n/a"
  }
  # paired(a, n): per round, a[round, n] minus a[round, first], as a list.
  function paired(a, n,   r, out) {
    for (r = 1; r <= NR; r++) if (name[r] == n) out = out " " (a[round[r], n] - a[round[r], first])
    return out
  }
  function minmax(list,   n, a, i, lo, hi) {
    n = split(list, a, " "); lo = hi = a[1]
    for (i = 2; i <= n; i++) { if (a[i] + 0 < lo + 0) lo = a[i]; if (a[i] + 0 > hi + 0) hi = a[i] }
    return sprintf("%+.2f..%+.2f", lo, hi)
  }
  { round[NR] = $1; name[NR] = $2; order[$2] = order[$2] ? order[$2] : ++k; names[order[$2]] = $2
    cpu[$2] = cpu[$2] " " $3; user[$2] = user[$2] " " $4; sys[$2] = sys[$2] " " $5; wr[$2] = wr[$2] " " $6
    cs[$2] = cs[$2] " " $7; p99[$2] = p99[$2] " " $8; c[$1, $2] = $3; u[$1, $2] = $4; w[$1, $2] = $6; p[$1, $2] = $8; drop[$2] += $9 }
  END {
    printf "%-12s %10s %10s %10s %10s %12s %8s\n", "config", "cpu_us/req", "user", "sys", "log_thread", "cswitch/kreq", "p99ms"
    for (i = 1; i <= k; i++) { n = names[i]
      printf "%-12s %10.2f %10.2f %10.2f %10.2f %12.1f %8.3f\n", n, median(cpu[n]), median(user[n]), median(sys[n]), median(wr[n]), median(cs[n]), median(p99[n]) }
    # A log that dropped lines did less work than a log that keeps up: its figures would flatter.
    for (i = 1; i <= k; i++) if (drop[names[i]]) printf "WARNING %s dropped %d log lines: its figures are not valid\n", names[i], drop[names[i]]
    for (i = 2; i <= k; i++) { n = names[i]; d = paired(c, n); du = paired(u, n); dw = paired(w, n); dp = ""
      for (r = 1; r <= NR; r++) if (name[r] == n && p[round[r], first] > 0) dp = dp " " (p[round[r], n] / p[round[r], first])
      printf "%s minus %s, median of paired rounds: cpu %+.2f us/req (95%% CI %s, range %s), user %+.2f (95%% CI %s), log_thread %+.3f (95%% CI %s), p99 x%.2f (95%% CI %s)\n", n, first, median(d), ci95(d), minmax(d), median(du), ci95(du), median(dw), ci95(dw), median(dp), ci95f(dp, "%.2f..%.2f") }
  }' "$results"

#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind: deterministic for
# a given binary and input, whatever else loads the machine — the figure to compare code paths
# with on a shared 2-core box, where CPU-time measurements swing by 20 %. Loopback only.
#
#   bash bench/instructions.sh          # routeid plain / sticky / --no-metrics / with its access log,
#                                       # HAProxy plain / sticky
#   ONLY="routeid-plain routeid-plain-log" ROUTEID_BIN=/tmp/routeid-old NO_BUILD=1 bash bench/instructions.sh
#   ONLY="routeid-h2 haproxy-h2" bash bench/instructions.sh  # HTTP/2 over TLS (h2load; only when named;
#                                       # also routeid-h2-log)
#   TOP=20 bash bench/instructions.sh   # and each run's 20 costliest functions (self), per request;
#                                       # the raw profile stays in bench/out/callgrind-<run>.out
#
# "plain": no cookie, every request balanced and answered with a Set-Cookie; "sticky": every
# request carries the route cookie. Kernel work (the same four socket calls per request for both
# proxies) is not counted: see bench/run.sh for CPU time including it.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-8s}
source bench/common.sh
bench_init ir wrk nginx valgrind haproxy
BIN=${ROUTEID_BIN:-$BIN}
TOP=${TOP:-0}
mkdir -p bench/out
start_backends 18381 18382
sed -e "s|@PORT1@|18381|g" -e "s|@PORT2@|18382|g" -e "s|@LISTEN@|127.0.0.1:18390|g" bench/haproxy.cfg.tmpl >"$TMP/haproxy.cfg"

measure() { # label cookie-header command...
  local label=$1 cookie=$2; shift 2
  [[ -z ${ONLY:-} || " $ONLY " == *" $label "* ]] || return 0
  TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind ${VG_OPTS:-} --callgrind-out-file="$TMP/cg-$label.out" --instr-atstart=no \
    "$@" >"$TMP/$label.log" 2>&1 &
  local vg=$!
  for _ in $(seq 200); do curl -fs -o /dev/null http://127.0.0.1:18390/ 2>/dev/null && break; sleep 0.3; done
  callgrind_control -i on "$vg" >/dev/null 2>&1
  local h=() out n ir
  [[ -n $cookie ]] && h=(-H "Cookie: $cookie")
  if [[ $label == *-h2 || $label == *-h2-* ]]; then
    # HTTP/2 over TLS: 8 connections x 10 concurrent streams, as bench/run.sh's h2 scenario.
    h2load -t1 -c8 -m10 -D2 "${h[@]}" https://127.0.0.1:18392/ >/dev/null
    callgrind_control -z "$vg" >/dev/null 2>&1
    out=$(h2load -t1 -c8 -m10 -D"${DURATION%s}" "${h[@]}" https://127.0.0.1:18392/)
    grep -qi 'application protocol: h2' <<<"$out" || { echo "$label: no h2: $out" >&2; exit 1; }
    n=$(awk '/^requests:/ {print $8}' <<<"$out")
  else
    wrk -t1 -c8 -d2s "${h[@]}" http://127.0.0.1:18390/ >/dev/null
    callgrind_control -z "$vg" >/dev/null 2>&1
    out=$(wrk -t1 -c8 -d"$DURATION" "${h[@]}" http://127.0.0.1:18390/)
    n=$(awk '/requests in/ {print $1}' <<<"$out")
  fi
  callgrind_control -d "$vg" >/dev/null 2>&1
  kill "$vg"; wait "$vg" 2>/dev/null || true
  ir=$(grep -h '^summary:' "$TMP/cg-$label.out.1" | awk '{print $2}')
  printf '%-22s %8d requests  %9d instructions/request\n' "$label" "$n" "$((ir / n))"
  if ((TOP > 0)); then
    # Self cost by function, per request; the whole annotation in bench/out/.
    callgrind_annotate --inclusive=no "$TMP/cg-$label.out.1" >"bench/out/instructions-$label.txt" 2>/dev/null || true
    cp "$TMP/cg-$label.out.1" "bench/out/callgrind-$label.out" # for callgrind_annotate --tree=caller
    awk -v n="$n" -v top="$TOP" '
      /^-+$/ { dashes++; next }
      dashes >= 3 && $1 ~ /^[0-9,]+$/ && shown < top {
        if ($0 ~ /PROGRAM TOTALS/) next
        v = $1; gsub(/,/, "", v); line = $0; sub(/^.*%\) +/, "", line)
        printf "    %8.0f  %s\n", v / n, substr(line, 1, 110); shown++
      }' "bench/out/instructions-$label.txt"
  fi
}
R=("$BIN" standalone -f "$TMP/pools.yaml" --listen 127.0.0.1:18390 --admin-listen 127.0.0.1:18391 --no-access-log)
measure routeid-plain "" "${R[@]}"
measure routeid-sticky "ROUTEID=.s1" "${R[@]}"
measure routeid-plain-nometrics "" "${R[@]}" --no-metrics
L=("$BIN" standalone -f "$TMP/pools.yaml" --listen 127.0.0.1:18390 --admin-listen 127.0.0.1:18391)
measure routeid-plain-log "" "${L[@]}"
measure routeid-sticky-log "ROUTEID=.s1" "${L[@]}"
if [[ " ${ONLY:-} " == *-h2\ * || " ${ONLY:-} " == *-h2-* ]]; then
  # HTTP/2 over TLS (h2load, from nghttp2-client): routeid's and HAProxy's h2 front ends with
  # one ECDSA P-256 certificate, as bench/run.sh's h2 scenario. Only when ONLY names an h2 run.
  need_tools h2load
  source bench/tls.sh
  bench_certificate "$TMP" >>"$TMP/pools.yaml"
  sed -e "s|@TLSLISTEN@|127.0.0.1:18392|g" -e "s|@TMP@|$TMP|g" bench/haproxy-tls.cfg.tmpl >>"$TMP/haproxy.cfg"
  T=(--tls-listen 127.0.0.1:18392 --default-tls-secret default/bench-tls)
  measure routeid-h2 "ROUTEID=.s1" "${R[@]}" "${T[@]}"
  measure routeid-h2-log "ROUTEID=.s1" "${L[@]}" "${T[@]}"
  measure haproxy-h2 "ROUTEID=s1" haproxy -f "$TMP/haproxy.cfg" -db
fi
measure haproxy-plain "" haproxy -f "$TMP/haproxy.cfg" -db
measure haproxy-sticky "ROUTEID=s1" haproxy -f "$TMP/haproxy.cfg" -db

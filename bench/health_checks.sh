#!/usr/bin/env bash
# Measures the CPU routeid spends health-checking N members every second (issue: under 5 % of
# one core for 1,000 members). Loopback only.
#
#   bash bench/health_checks.sh            # N=1000 members, 1s interval, 20 s window
#   MEMBERS=2000 WINDOW=30 bash bench/health_checks.sh
#
# One nginx (pinned to CPU 1) answers /health for every member: members differ by route, so
# routeid runs N independent checkers, each with its own keep-alive connection. routeid runs
# with one tokio worker pinned to CPU 0 and no traffic; its utime+stime over the window, divided
# by the window, is the share of one core the checks cost. nginx's access log counts the checks.
set -euo pipefail
cd "$(dirname "$0")/.."

MEMBERS=${MEMBERS:-1000}
WINDOW=${WINDOW:-20}
WARMUP=${WARMUP:-3}
PORT=${PORT:-18181}
ADMIN=${ADMIN:-18182}
LISTEN=${LISTEN:-18183}

source bench/common.sh
bench_init hc nginx

cat >"$TMP/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
master_process on;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 8192; }
http {
  access_log $TMP/access.log;
  client_body_temp_path $TMP/body; proxy_temp_path $TMP/proxy; fastcgi_temp_path $TMP/fcgi;
  uwsgi_temp_path $TMP/uwsgi; scgi_temp_path $TMP/scgi;
  keepalive_timeout 75s;
  keepalive_requests 100000000;
  server { listen 127.0.0.1:$PORT backlog=4096; location / { return 200 "ok\n"; } }
}
NGINX
taskset -c 1 "$NGINX" -p "$TMP" -c "$TMP/nginx.conf" >"$TMP/nginx.out" 2>&1 &
pids+=($!)

{
  echo "apiVersion: routeid.io/v1alpha1"
  echo "kind: BalancerPool"
  echo "metadata: {name: checked}"
  echo "spec:"
  echo "  health:"
  echo "    active: {path: /health, interval: 1s, timeout: 1s, fails: 3, passes: 2}"
  echo "  backend:"
  echo "    members:"
  for i in $(seq 0 $((MEMBERS - 1))); do echo "      - {address: \"127.0.0.1:$PORT\", route: m$i}"; done
} >"$TMP/pools.yaml"

for _ in $(seq 50); do curl -fs "http://127.0.0.1:$PORT/" >/dev/null 2>&1 && break; sleep 0.1; done
start_routeid "$BIN" "$LISTEN" "$ADMIN" "$TMP/routeid.log" --no-access-log
sleep "$WARMUP"

ticks() { awk '{print $14 + $15}' "/proc/$RID/stat"; }
t0=$(ticks); c0=$(grep -c 'GET /health' "$TMP/access.log" || true)
sleep "$WINDOW"
t1=$(ticks); c1=$(grep -c 'GET /health' "$TMP/access.log" || true)
hz=$(getconf CLK_TCK)
checks=$((c1 - c0))
awk -v t="$((t1 - t0))" -v hz="$hz" -v w="$WINDOW" -v n="$MEMBERS" -v c="$checks" 'BEGIN {
  cpu = t / hz; pct = 100 * cpu / w;
  printf "members %d, interval 1s, window %ds: %d checks (%.0f/s), routeid CPU %.2fs = %.2f%% of one core, %.1f us per check\n",
    n, w, c, c / w, cpu, pct, (c > 0 ? 1e6 * cpu / c : 0)
}'
grep -E 'WARN|ERROR' "$TMP/routeid.log" | head -5 || true

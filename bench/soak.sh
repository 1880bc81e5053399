#!/usr/bin/env bash
# bench/soak.sh — a 10-minute soak of `routeid standalone` (not run in CI). Loopback only.
#
#   bash bench/soak.sh                       # 600 s
#   SOAK_SECONDS=60 bash bench/soak.sh       # a quick check of the script itself
#
# routeid runs as users run it (release build, access log on, JSON logs) in front of five nginx
# members: m1–m4 in the sticky pool `shop` at /, s1 alone in the pool `slow` at /slow. For
# SOAK_SECONDS it gets, all at once:
#   - wrk: sticky sessions (cookies naming m1–m4), new sessions (no cookie), 64 KiB POST uploads;
#   - slow clients (bench/soak.py): slow readers of a 1 MiB file, slow senders of 64 KiB uploads,
#     slowloris heads that the header timeout must close;
#   - member restarts: every RESTART_EVERY s one of m1–m3 is killed (SIGTERM: nginx's fast
#     shutdown, cutting the requests it holds) and started again 2 s later;
#   - reloads: every RELOAD_EVERY s a SIGHUP, the pools file alternating between m1–m3 and m1–m4.
# Every SAMPLE_EVERY s it records routeid's VmRSS and open fds, prints them as a table, and at
# the end checks:
#   - RSS flat: the average of the last window within RSS_TOLERANCE % of the average of the first
#     window after warm-up (a window is 60 s, or a third of a short run);
#   - fds flat: the same averages within FD_SLACK descriptors (the averages use a sample every
#     2 s: the count moves with connections to restarted members), and, 6 s after the load has
#     stopped, back within IDLE_FD_SLACK of the count before it started;
#   - zero unexpected errors. Expected: a 5xx answered for a member within 1 s before its kill
#     and until 3 s after its restart (requests it held when it died: a cut POST body cannot be
#     retried), and a slowloris connection closed by the proxy. Anything else — another 5xx or
#     4xx in the access log, an ERROR log line, a wrk socket error, a slow client that failed,
#     routeid dying — is unexpected.
# Exit status 0 when every check passes. Figures and logs: bench/out/soak-latest.txt.
#
# Env: SOAK_SECONDS=600 SAMPLE_EVERY=10 RESTART_EVERY=15 RELOAD_EVERY=20 RSS_TOLERANCE=10
#      FD_SLACK=12 IDLE_FD_SLACK=2 NO_BUILD=1 (use the binary already built) SOAK_PORT=18300 (18300–18306 used)
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_SECONDS=${SOAK_SECONDS:-600}
SAMPLE_EVERY=${SAMPLE_EVERY:-10}
RESTART_EVERY=${RESTART_EVERY:-15}
RELOAD_EVERY=${RELOAD_EVERY:-20}
RSS_TOLERANCE=${RSS_TOLERANCE:-10}
FD_SLACK=${FD_SLACK:-12}
IDLE_FD_SLACK=${IDLE_FD_SLACK:-2}
SOAK_PORT=${SOAK_PORT:-18300}
PROXY=$SOAK_PORT ADMIN=$((SOAK_PORT + 1))
declare -A PORT=([m1]=$((SOAK_PORT + 2)) [m2]=$((SOAK_PORT + 3)) [m3]=$((SOAK_PORT + 4)) [m4]=$((SOAK_PORT + 5)) [s1]=$((SOAK_PORT + 6)))

source bench/common.sh
bench_init soak wrk nginx curl python3
declare -A MEMBER_PID=()
soak_cleanup() {
  for p in "${MEMBER_PID[@]}"; do kill "$p" 2>/dev/null || true; done
  bench_cleanup
}
trap soak_cleanup EXIT
log() { printf '[soak] %s\n' "$*" >&2; }
now() { date +%s.%N; }
event() { printf '%s\t%s\t%s\n' "$(now)" "$1" "$2" >>"$TMP/events.tsv"; }

for p in "$PROXY" "$ADMIN" "${PORT[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then log "port $p is in use; set SOAK_PORT"; exit 1; fi
done

# ---------------------------------------------------------------- members: one nginx each
head -c $((1 << 20)) /dev/urandom >"$TMP/big.bin"
member_conf() { # member_conf NAME PORT
  mkdir -p "$TMP/$1"
  cat >"$TMP/$1/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
master_process off;
pid $TMP/$1/nginx.pid;
error_log $TMP/$1/error.log error;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $TMP/$1/body; proxy_temp_path $TMP/$1/proxy; fastcgi_temp_path $TMP/$1/fcgi;
  uwsgi_temp_path $TMP/$1/uwsgi; scgi_temp_path $TMP/$1/scgi;
  # Short, so that once the load stops the proxy's pooled connections are closed by the members
  # and its fd count can return to the idle baseline.
  keepalive_timeout 3s;
  keepalive_requests 10000;
  client_max_body_size 8m;
  default_type text/plain;
  sendfile on;
  server {
    listen 127.0.0.1:$2;
    location / { add_header X-Backend $1; return 200 "ok $1\n"; }
    # nginx reads the whole upload before proxying it to itself: a member that consumes bodies.
    location = /upload { proxy_pass http://127.0.0.1:$2/uploaded; }
    location = /uploaded { return 200 "uploaded to $1\n"; }
    location = /big { alias $TMP/big.bin; }
  }
}
NGINX
}
start_member() {
  "$NGINX" -p "$TMP/$1" -c "$TMP/$1/nginx.conf" >>"$TMP/$1/out.log" 2>&1 &
  MEMBER_PID[$1]=$!
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:${PORT[$1]}/" && return 0; sleep 0.05; done
  log "member $1 did not start: $(cat "$TMP/$1/out.log" "$TMP/$1/error.log" 2>/dev/null)"
  exit 1
}
for m in m1 m2 m3 m4 s1; do member_conf "$m" "${PORT[$m]}" && start_member "$m"; done

# ---------------------------------------------------------------- pools: A (m1–m3) and B (m1–m4)
pools_file() { # pools_file MEMBERS...
  printf 'apiVersion: routeid.io/v1alpha1\nkind: BalancerPool\nmetadata: {name: shop}\nspec:\n'
  printf '  sticky:\n    names: [JSESSIONID]\n    cookie: {name: ROUTEID, mode: Insert}\n'
  printf '  health: {passive: {retryAfter: 2s}}\n  backend:\n    members:\n'
  for m in "$@"; do printf '      - {address: "127.0.0.1:%s", route: %s}\n' "${PORT[$m]}" "$m"; done
  printf -- '---\napiVersion: routeid.io/v1alpha1\nkind: BalancerPool\nmetadata: {name: slow}\nspec:\n'
  printf '  frontend: {pathPrefix: /slow, rewritePrefix: /}\n'
  printf '  backend:\n    members: [{address: "127.0.0.1:%s", route: s1}]\n' "${PORT[s1]}"
}
pools_file m1 m2 m3 >"$TMP/pools-a.yaml"
pools_file m1 m2 m3 m4 >"$TMP/pools-b.yaml"
cp "$TMP/pools-b.yaml" "$TMP/pools.yaml"

# ---------------------------------------------------------------- routeid, as users run it
# The access log is on; only lines that are not a plain 200 are kept (the rest would be GBs).
"$BIN" --log-format json standalone -f "$TMP/pools.yaml" --listen "127.0.0.1:$PROXY" \
  --admin-listen "127.0.0.1:$ADMIN" --client-header-timeout 5s \
  2> >(grep --line-buffered -v '"status":200,' >"$TMP/routeid.log") &
RID=$!
pids+=("$RID")
for _ in $(seq 200); do curl -fs -o /dev/null "http://127.0.0.1:$ADMIN/readyz" && break; sleep 0.05; done
curl -fs -o /dev/null "http://127.0.0.1:$ADMIN/readyz" || { log "routeid not ready: $(cat "$TMP/routeid.log")"; exit 1; }
log "routeid pid $RID on 127.0.0.1:$PROXY; $SOAK_SECONDS s of traffic"

measure() { # measure FILE T: appends "T rss_kib fds"
  local rss fds
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$RID/status")
  fds=$(find "/proc/$RID/fd" -mindepth 1 -maxdepth 1 | wc -l)
  printf '%s\t%s\t%s\n' "$2" "$rss" "$fds" >>"$1"
}
sample() { # the table's row every SAMPLE_EVERY s; the averages also use a silent sample every 2 s
  measure "$TMP/samples.tsv" "$1"
  tail -1 "$TMP/samples.tsv" | awk '{printf "[soak] t=%4ss  rss %6s KiB  fds %4s\n", $1, $2, $3}' >&2
}
# The idle baseline: nothing connected but the admin probe, which has gone.
measure "$TMP/idle.tsv" before

# ---------------------------------------------------------------- traffic
cat >"$TMP/sticky.lua" <<'LUA'
-- A different session per request, each pinned to one of m1–m4 by its route cookie.
local routes = {"m1", "m2", "m3", "m4"}
request = function()
  local c = "JSESSIONID=s" .. math.random(1, 1000000) .. "; ROUTEID=." .. routes[math.random(1, 4)]
  return wrk.format("GET", "/", {["Cookie"] = c})
end
LUA
cat >"$TMP/upload.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("u", 65536)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA
d="${SOAK_SECONDS}s"
WRK=()
wrk -t1 -c8 -d"$d" --timeout 10s -s "$TMP/sticky.lua" "http://127.0.0.1:$PROXY/" >"$TMP/wrk-sticky.txt" 2>&1 &
WRK+=($!)
wrk -t1 -c4 -d"$d" --timeout 10s "http://127.0.0.1:$PROXY/new" >"$TMP/wrk-new.txt" 2>&1 &
WRK+=($!)
wrk -t1 -c2 -d"$d" --timeout 10s -s "$TMP/upload.lua" "http://127.0.0.1:$PROXY/upload" >"$TMP/wrk-upload.txt" 2>&1 &
WRK+=($!)
pids+=("${WRK[@]}")
python3 bench/soak.py clients --proxy "127.0.0.1:$PROXY" --seconds "$SOAK_SECONDS" --header-timeout 5 \
  >"$TMP/clients.json" 2>"$TMP/clients.err" &
CLIENTS=$!
pids+=("$CLIENTS")

# ---------------------------------------------------------------- restarts, reloads, samples
start=$(date +%s)
victims=(m1 m2 m3)
n_restart=0 n_reload=0 down="" down_since=0
next_sample=0 next_fine=0 next_restart=$RESTART_EVERY next_reload=$RELOAD_EVERY
while :; do
  t=$(($(date +%s) - start))
  ((t >= SOAK_SECONDS)) && break
  if [[ -n $down ]] && ((t - down_since >= 2)); then
    start_member "$down" && event start "$down"
    down=""
  fi
  if [[ -z $down ]] && ((t >= next_restart)); then
    down=${victims[$((n_restart % 3))]} down_since=$t
    event kill "$down"
    kill -TERM "${MEMBER_PID[$down]}" && wait "${MEMBER_PID[$down]}" 2>/dev/null || true
    n_restart=$((n_restart + 1)) next_restart=$((next_restart + RESTART_EVERY))
  fi
  if ((t >= next_reload)); then
    n_reload=$((n_reload + 1)) next_reload=$((next_reload + RELOAD_EVERY))
    # Odd reloads drop m4, even ones bring it back; the file is replaced atomically.
    cp "$TMP/pools-$( ((n_reload % 2)) && echo a || echo b).yaml" "$TMP/pools.next"
    mv "$TMP/pools.next" "$TMP/pools.yaml"
    event reload "$n_reload"
    kill -HUP "$RID"
  fi
  if ((t >= next_fine)); then
    measure "$TMP/fine.tsv" "$t"
    next_fine=$((next_fine + 2))
  fi
  if ((t >= next_sample)); then
    sample "$t"
    next_sample=$((next_sample + SAMPLE_EVERY))
  fi
  sleep 0.5
done
if [[ -n $down ]]; then start_member "$down" && event start "$down"; fi
sample "$SOAK_SECONDS"
for p in "${WRK[@]}" "$CLIENTS"; do wait "$p" || true; done
# Idle again: once the members have closed the pooled connections (their keep-alive is 3 s), the
# fds must be back to the idle baseline.
sleep 6
measure "$TMP/idle.tsv" after
alive=1
kill -0 "$RID" 2>/dev/null || alive=0
curl -fs -o /dev/null "http://127.0.0.1:$ADMIN/readyz" || alive=0
log "$n_restart member restarts, $n_reload reloads"

mkdir -p bench/out
python3 bench/soak.py verdict --tmp "$TMP" --seconds "$SOAK_SECONDS" --alive "$alive" \
  --rss-tolerance "$RSS_TOLERANCE" --fd-slack "$FD_SLACK" --idle-fd-slack "$IDLE_FD_SLACK" | tee bench/out/soak-latest.txt

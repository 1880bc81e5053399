# bench/common.sh — sourced by instructions.sh, ab.sh, h2_tail.sh, health_checks.sh,
# perf_diff.sh, ipis.sh and first_seconds.sh: the tools a script needs (installed when missing), the release build,
# a temporary directory that goes away with every process the script started, the two nginx
# backends behind the standalone pools file, and the proxies to compare in front of them.

# need_tools TOOL...: installs the Debian packages of the commands that are missing (h2load
# comes with nghttp2-client, perf with linux-perf, the others with their own names).
need_tools() {
  local c missing=()
  for c in "$@"; do
    command -v "$c" >/dev/null && continue
    case $c in
      h2load) missing+=(nghttp2-client) ;;
      perf) missing+=(linux-perf) ;;
      *) missing+=("$c") ;;
    esac
  done
  if ((${#missing[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# bench_init TAG TOOL...: installs missing tools, builds, sets BIN, NGINX, TMP and pids.
bench_init() {
  local tag=$1
  shift
  need_tools "$@"
  # The release binary as the Docker image builds it (with the PGO profile; PGO=0: without).
  if [[ -n ${ROUTEID_BIN:-} ]]; then
    BIN=$ROUTEID_BIN
  else
    BIN=$(realpath "$(bash scripts/build-release.sh)")
  fi
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  TMP=$(mktemp -d "/tmp/routeid-$tag.XXXXXX")
  chmod 755 "$TMP"
  pids=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}

# h2load_succeeded SUMMARY: the requests h2load's SUMMARY (its stdout) counts as succeeded, or 0
# when any failed, errored or timed out ("requests: N total, N started, N done, N succeeded, N
# failed, N errored, N timeout"): such requests are not in its log file, so the run is not measured.
h2load_succeeded() {
  awk '/^requests:/ {if ($10 + $12 + $14 > 0) print 0; else print $8}' <<<"$1"
}

# stop_pids PID...: stops these processes started here and forgets them, so the exit trap
# signals only what still runs (a pid gone may be reused by another process).
stop_pids() {
  local p q live=()
  for p in "$@"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  for q in "${pids[@]}"; do [[ " $* " == *" $q "* ]] || live+=("$q"); done
  pids=("${live[@]}")
}

# settle_logs: has the logs in $TMP written to disk now, between measured runs. An access log
# under load leaves hundreds of MB for the kernel to write back up to 30 s later
# (vm.dirty_expire_centisecs), all at once, in whatever measured run is going on then; bench/run.sh
# does the same (bench/README.md, 2026-12-04 morning).
settle_logs() {
  sync -d "$TMP"/*.log 2>/dev/null || sync
}

# start_backends PORT1 PORT2 [PREFIX...]: nginx on both ports (run under PREFIX, e.g.
# `taskset -c 1`), and $TMP/pools.yaml balancing over them.
start_backends() {
  local p1=$1 p2=$2
  shift 2
  sed -e "s|@TMP@|$TMP|g" -e "s|@PORT1@|$p1|g" -e "s|@PORT2@|$p2|g" bench/nginx.conf.tmpl >"$TMP/nginx.conf"
  "$@" "$NGINX" -p "$TMP" -e "$TMP/nginx-error.log" -c "$TMP/nginx.conf" >"$TMP/nginx.out" 2>&1 &
  pids+=($!)
  sed -e "s|@PORT1@|$p1|g" -e "s|@PORT2@|$p2|g" bench/pools.yaml.tmpl >"$TMP/pools.yaml"
  BACKEND_PORTS=("$p1" "$p2")
}

# start_routeid BIN PORT ADMIN LOG [FLAGS...]: `BIN standalone` on CPU 0 with one tokio worker,
# serving $TMP/pools.yaml on 127.0.0.1:PORT (admin on ADMIN), output to LOG; sets RID to its pid
# and returns once /readyz answers; fails if it has not within 10 s.
start_routeid() {
  local bin=$1 port=$2 admin=$3 log=$4
  shift 4
  TOKIO_WORKER_THREADS=1 taskset -c 0 "$bin" standalone -f "$TMP/pools.yaml" --listen "127.0.0.1:$port" \
    --admin-listen "127.0.0.1:$admin" "$@" >"$log" 2>&1 &
  RID=$!
  pids+=("$RID")
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "routeid ($bin) did not become ready: $(tail -5 "$log")" >&2
  return 1
}

# start_targets BASE TARGET...: each TARGET (`routeid`: without its access log; `routeid-log`:
# with it, to a file; `haproxy`: no log) alone on CPU 0 in front of start_backends' two nginx
# servers (run it first), plain HTTP on port BASE+3i and HTTPS (h2 and HTTP/1.1, bench/tls.sh's
# certificate) on BASE+3i+2. Fills T_PID, T_URL, T_TLS_URL and T_COOKIE (the sticky cookie that
# routes to member s1), keyed by target; returns once each answers.
start_targets() {
  local base=$1 i=0 t port ok
  shift
  source bench/tls.sh
  declare -gA T_PID T_URL T_TLS_URL T_COOKIE
  grep -q bench-tls "$TMP/pools.yaml" || bench_certificate "$TMP" >>"$TMP/pools.yaml"
  for t in "$@"; do
    port=$((base + 3 * i))
    i=$((i + 1))
    T_URL[$t]="http://127.0.0.1:$port/" T_TLS_URL[$t]="https://127.0.0.1:$((port + 2))/"
    case $t in
      routeid | routeid-log)
        local flags=()
        [[ $t == routeid ]] && flags=(--no-access-log)
        start_routeid "$BIN" "$port" $((port + 1)) "$TMP/$t.log" "${flags[@]}" \
          --tls-listen "127.0.0.1:$((port + 2))" --default-tls-secret default/bench-tls || return 1
        T_PID[$t]=$RID T_COOKIE[$t]="ROUTEID=.s1"
        ;;
      haproxy)
        sed -e "s|@PORT1@|${BACKEND_PORTS[0]}|g" -e "s|@PORT2@|${BACKEND_PORTS[1]}|g" \
          -e "s|@LISTEN@|127.0.0.1:$port|g" bench/haproxy.cfg.tmpl >"$TMP/haproxy.cfg"
        sed -e "s|@TLSLISTEN@|127.0.0.1:$((port + 2))|g" -e "s|@TMP@|$TMP|g" bench/haproxy-tls.cfg.tmpl >>"$TMP/haproxy.cfg"
        taskset -c 0 haproxy -f "$TMP/haproxy.cfg" -db >"$TMP/haproxy.log" 2>&1 &
        T_PID[$t]=$! T_COOKIE[$t]="ROUTEID=s1"
        pids+=($!)
        ok=
        for _ in $(seq 50); do curl -fs -o /dev/null "${T_URL[$t]}" && ok=1 && break; sleep 0.1; done
        [[ -n $ok ]] || { echo "haproxy did not start: $(cat "$TMP/haproxy.log")" >&2; return 1; }
        ;;
      *) echo "unknown target '$t' (routeid, routeid-log or haproxy)" >&2; return 1 ;;
    esac
  done
}

# load_run TARGET SCENARIO SECONDS [CONNS] [STREAMS]: wrk (plain, sticky) or h2load (h2, over
# TLS) against TARGET on CPU 1; prints the requests per second.
load_run() {
  local t=$1 scenario=$2 secs=$3 conns=${4:-32} streams=${5:-10} header=() out
  [[ $scenario == plain ]] || header=(-H "Cookie: ${T_COOKIE[$t]}")
  case $scenario in
    plain | sticky)
      out=$(taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" "${header[@]}" "${T_URL[$t]}")
      awk '/^Requests\/sec:/ {print $2}' <<<"$out"
      ;;
    h2)
      out=$(taskset -c 1 h2load -t1 -c"$conns" -m"$streams" -D"$secs" "${header[@]}" "${T_TLS_URL[$t]}")
      grep -qi 'application protocol: h2' <<<"$out" || { echo "$t: no h2: $out" >&2; return 1; }
      awk '/^finished in/ {print $4}' <<<"$out"
      ;;
    *) echo "scenario must be plain, sticky or h2, not '$scenario'" >&2; return 1 ;;
  esac
}

# bench/common.sh — sourced by instructions.sh, ab.sh, h2_tail.sh and health_checks.sh: the
# tools a script needs (installed when missing), the release build, a temporary directory that
# goes away with every process the script started, and the two nginx backends behind the
# standalone pools file.

# bench_init TAG TOOL...: installs missing tools, builds, sets BIN, NGINX, TMP and pids.
bench_init() {
  local tag=$1 missing=()
  shift
  for c in "$@"; do command -v "$c" >/dev/null || missing+=("$c"); done
  if ((${#missing[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
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

# start_backends PORT1 PORT2 [PREFIX...]: nginx on both ports (run under PREFIX, e.g.
# `taskset -c 1`), and $TMP/pools.yaml balancing over them.
start_backends() {
  local p1=$1 p2=$2
  shift 2
  sed -e "s|@TMP@|$TMP|g" -e "s|@PORT1@|$p1|g" -e "s|@PORT2@|$p2|g" bench/nginx.conf.tmpl >"$TMP/nginx.conf"
  "$@" "$NGINX" -p "$TMP" -e "$TMP/nginx-error.log" -c "$TMP/nginx.conf" >"$TMP/nginx.out" 2>&1 &
  pids+=($!)
  sed -e "s|@PORT1@|$p1|g" -e "s|@PORT2@|$p2|g" bench/pools.yaml.tmpl >"$TMP/pools.yaml"
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

#!/usr/bin/env bash
# bench/run.sh — compare direct (wrk -> nginx), routeid (without and with its access log) and
# HAProxy on loopback, then the cost of a balanced pick and a scrape by pool size.
#
# Usage:  bash bench/run.sh
# Env:    DURATION=10s  wrk duration per run
#         CONNS=32      wrk connections
#         THREADS=1     wrk threads
#         ROUNDS=3      rounds; each round runs direct, routeid, routeid-log, haproxy per scenario
#                       (every other round in reverse order)
#         WARMUP=2s     one warm-up wrk run per target before round 1, and per proxy after
#                       each restart ("0" to skip)
#         RESTART=1     every round after the first starts fresh proxy processes: on this VM
#                       one process can run a few per cent faster or slower than the next of
#                       the same binary for its whole life (two routeid processes with the same
#                       flags differed by 0.7 µs per request over 16 paired rounds), so one
#                       process per target for all rounds puts its luck into every round;
#                       RESTART=0 keeps the first processes
#         PROXY_CPU=0   CPU for the proxy under test
#         LOAD_CPU=1    CPU for wrk and nginx
#         NO_BUILD=1    skip the build (use the binary already built)
#         PGO=0         measure the plain `cargo build --release` binary instead of the one
#                       optimised with pgo/routeid.profdata.gz, as the Docker image is
#                       (scripts/build-release.sh; target/pgo/release/routeid)
#         ROUTEID_BIN   measure this binary (no build)
#         TARGETS="direct routeid routeid-log haproxy"  routeid-log: routeid with its access log
#                       on (the default, as users run it), written to a file; haproxy-log (not
#                       in the default): HAProxy with `option httplog` to stdout (`log stdout`),
#                       written to a file, for the two proxies' logs side by side
#         LOG_FORMAT=text  routeid-log's --log-format (text or json)
#         H2_STREAMS=10 concurrent streams per connection in the h2 scenario (h2load -m)
#         POOL_BENCH=1  also run `cargo bench --bench pool_size` (pick and scrape cost by pool size)
#         CARGO_TARGET_DIR  honoured when locating the binary
#         REPORT_FROM="a.tsv b.tsv"  measure nothing: report the rounds of earlier runs pooled
#                       (each run's rows, kept as bench/out/runs-<time>.tsv beside its table,
#                       runs-<time>.txt, which names its commit and binary; a round is paired
#                       only within its own run), for intervals narrower than one run's
# Ports (all 127.0.0.1): BACKEND1_PORT=18081 BACKEND2_PORT=18082 ROUTEID_PORT=18090
#         ROUTEID_ADMIN_PORT=18091 HAPROXY_PORT=18092 ROUTEID_TLS_PORT=18093 HAPROXY_TLS_PORT=18094
#         ROUTEID_LOG_PORT=18095 ROUTEID_LOG_ADMIN_PORT=18096 ROUTEID_LOG_TLS_PORT=18097
#         HAPROXY_LOG_PORT=18098 HAPROXY_LOG_TLS_PORT=18099
# Scenarios: plain, sticky (HTTP keep-alive); tls (HTTPS keep-alive) and handshake (HTTPS,
#         `Connection: close`: one TLS handshake per request), both proxies with the same
#         ECDSA P-256 certificate made by openssl for the run; h2 (HTTP/2 over TLS by ALPN, with
#         h2load: CONNS connections × H2_STREAMS streams).
# Output: a table on stdout and in bench/out/latest.txt; per-run rows in bench/out/latest-runs.tsv
#         and copies of both that the next run keeps, bench/out/runs-<UTC time>.{txt,tsv}
#         (routeid-log's rows also carry its log writer thread's CPU per request, and the table
#         its median and range over the rounds: a round far above the others is this VM's, see
#         bench/README.md).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
# shellcheck source=bench/tls.sh
source "$BENCH_DIR/tls.sh"
OUT_DIR="$BENCH_DIR/out"

DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2s}
RESTART=${RESTART:-1}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BACKEND1_PORT=${BACKEND1_PORT:-18081}
BACKEND2_PORT=${BACKEND2_PORT:-18082}
ROUTEID_PORT=${ROUTEID_PORT:-18090}
ROUTEID_ADMIN_PORT=${ROUTEID_ADMIN_PORT:-18091}
HAPROXY_PORT=${HAPROXY_PORT:-18092}
ROUTEID_TLS_PORT=${ROUTEID_TLS_PORT:-18093}
HAPROXY_TLS_PORT=${HAPROXY_TLS_PORT:-18094}
ROUTEID_LOG_PORT=${ROUTEID_LOG_PORT:-18095}
ROUTEID_LOG_ADMIN_PORT=${ROUTEID_LOG_ADMIN_PORT:-18096}
ROUTEID_LOG_TLS_PORT=${ROUTEID_LOG_TLS_PORT:-18097}
HAPROXY_LOG_PORT=${HAPROXY_LOG_PORT:-18098}
HAPROXY_LOG_TLS_PORT=${HAPROXY_LOG_TLS_PORT:-18099}
# HAProxy with its access log runs only when asked for.
HAPROXY_LOG=0
for t in ${TARGETS:-}; do [[ $t != haproxy-log ]] || HAPROXY_LOG=1; done
LOG_FORMAT=${LOG_FORMAT:-text}
H2_STREAMS=${H2_STREAMS:-10}
POOL_BENCH=${POOL_BENCH:-1}

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] FAIL: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- install what is missing
ensure_tools() {
    local -a missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    command -v curl >/dev/null || missing+=(curl)
    command -v h2load >/dev/null || missing+=(nghttp2-client)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v pgrep >/dev/null || missing+=(procps)
    if ((${#missing[@]})); then
        log "installing: ${missing[*]}"
        [[ $(id -u) -eq 0 ]] || die "need root to apt-get install ${missing[*]}"
        command -v apt-get >/dev/null || die "no apt-get; install ${missing[*]} by hand"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    export PATH="$PATH:/usr/sbin:/sbin"
    command -v cargo >/dev/null || die "cargo not found"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------- processes and cleanup
TMP=""
declare -a PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    [[ -n $TMP && -d $TMP ]] && rm -rf "$TMP"
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# utime+stime in clock ticks of one process (all its threads, dead or alive).
cpu_ticks() {
    local stat rest
    read -r stat <"/proc/$1/stat" || return 1
    rest=${stat##*) } # drop "pid (comm) "; rest starts at field 3
    local -a f
    read -ra f <<<"$rest"
    echo $((f[11] + f[12])) # fields 14 and 15
}

# utime alone: the proxy's own code, without the kernel's work for its syscalls.
user_ticks() {
    local stat rest
    read -r stat <"/proc/$1/stat" || return 1
    rest=${stat##*) }
    local -a f
    read -ra f <<<"$rest"
    echo "${f[11]}"
}

# utime+stime in clock ticks of routeid's log writer thread (named routeid-log) in process $1; 0
# without one. Its share of routeid-log's CPU, round by round, shows the spells in which this VM
# makes the log's new pages dear (bench/README.md, 2026-12-04 late evening).
writer_ticks() {
    local t
    for t in /proc/"$1"/task/*; do
        [[ $(cat "$t/comm" 2>/dev/null) == routeid-log ]] || continue
        cpu_ticks "$1/task/${t##*/}"
        return
    done
    echo 0
}

# per_req TICKS: TICKS of CPU over the run's $reqs requests, in µs per request.
per_req() {
    awk -v d="$1" -v clk="$clk" -v n="$reqs" 'BEGIN { printf "%.2f", n ? d / clk * 1e6 / n : 0 }'
}

# Log lines routeid-log dropped so far (routeid_log_lines_dropped_total): a log that drops
# lines does less work than one that keeps up, and its figures would flatter it.
LOG_DROPPED=0
log_dropped() {
    curl -fsS "http://127.0.0.1:$ROUTEID_LOG_ADMIN_PORT/metrics" |
        awk '$1 == "routeid_log_lines_dropped_total" { d = $2 } END { print d + 0 }' ||
        die "cannot read routeid-log's metrics on port $ROUTEID_LOG_ADMIN_PORT"
}

# settle_log TARGET: has TARGET's access log ($TMP/TARGET.log) written to disk now, between
# measured runs. Left to the kernel, it is written back up to 30 s later
# (vm.dirty_expire_centisecs), hundreds of MB at once, in whichever target's measured run is going
# on then (a routeid run's p99 at 202 ms, and HAProxy's at 0.66-0.94 ms against 0.45-0.54, in the
# runs such a write-back overlapped).
settle_log() {
    sync -d "$TMP/$1.log" 2>/dev/null || sync
}

# CPU ticks of nginx: master plus its workers.
nginx_ticks() {
    local total=0 pid t
    for pid in "$NGINX_PID" $(pgrep -P "$NGINX_PID" || true); do
        t=$(cpu_ticks "$pid" 2>/dev/null) || continue
        total=$((total + t))
    done
    echo "$total"
}

alive() { kill -0 "$1" 2>/dev/null; }

wait_until() { # wait_until <what> <pid> <cmd...>: poll cmd for up to 15 s while pid lives
    local what=$1 pid=$2 i
    shift 2
    for ((i = 0; i < 150; i++)); do
        "$@" && return 0
        alive "$pid" || return 1
        sleep 0.1
    done
    log "$what: not ready after 15 s"
    return 1
}

render() { # render <template> <output>: fill @VARS@
    sed -e "s|@TMP@|$TMP|g" -e "s|@PORT1@|$BACKEND1_PORT|g" -e "s|@PORT2@|$BACKEND2_PORT|g" \
        -e "s|@LISTEN@|127.0.0.1:$HAPROXY_PORT|g" -e "s|@TLSLISTEN@|127.0.0.1:$HAPROXY_TLS_PORT|g" "$1" >"$2"
}

# ---------------------------------------------------------------- wrk
# run_wrk <label> <url> [header] [duration]: prints "rps p50ms p99ms requests non2xx sockerr" and
# keeps the raw output.
run_wrk() {
    local label=$1 url=$2 header=${3:-} dur=${4:-$DURATION}
    local raw="$TMP/wrk-$label.txt"
    local -a args=(-t"$THREADS" -c"$CONNS" -d"$dur" --latency)
    [[ -n $header ]] && args+=(-H "$header")
    taskset -c "$LOAD_CPU" wrk "${args[@]}" "$url" >"$raw" 2>&1 || die "wrk failed: $(cat "$raw")"
    cat "$raw" >>"$OUT_DIR/latest-wrk.txt"
    awk '
        function ms(v) {
            if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
            if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
            if (v ~ /m$/)  { sub(/m$/, "", v);  return v * 60000 }
            if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000 }
            return v + 0
        }
        /^ +50%/ { p50 = ms($2) }
        /^ +99%/ { p99 = ms($2) }
        / requests in / { reqs = $1 }
        /^Requests\/sec:/ { rps = $2 }
        /Non-2xx or 3xx responses:/ { non2xx = $NF }
        /Socket errors:/ { gsub(/,/, ""); sockerr = $4 + $6 + $8 + $10 }
        END {
            if (rps == "" || reqs == "") exit 1
            printf "%s %.3f %.3f %d %d %d\n", rps, p50, p99, reqs, non2xx + 0, sockerr + 0
        }' "$raw" || die "cannot parse wrk output: $(cat "$raw")"
}

# run_h2load <label> <url> [duration]: HTTP/2 over TLS; prints the same fields as run_wrk, the
# percentiles from h2load's per-request log.
run_h2load() {
    local label=$1 url=$2 dur=${3:-$DURATION}
    local raw="$TMP/h2load-$label.txt" lat="$TMP/h2load-$label.lat"
    taskset -c "$LOAD_CPU" h2load -t1 -c"$CONNS" -m"$H2_STREAMS" -D"$dur" --log-file="$lat" "$url" >"$raw" 2>&1 ||
        die "h2load failed: $(cat "$raw")"
    cat "$raw" >>"$OUT_DIR/latest-wrk.txt"
    grep -qi 'application protocol: h2' "$raw" || die "h2load did not negotiate h2 with $url: $(cat "$raw")"
    local p50 p99
    read -r p50 p99 < <(awk '{ print $3 }' "$lat" | sort -n | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "0 0"; exit }
        i50 = int(NR * 0.50); i99 = int(NR * 0.99); if (i50 < 1) i50 = 1; if (i99 < 1) i99 = 1
        printf "%.3f %.3f\n", v[i50] / 1000, v[i99] / 1000 }')
    awk -v p50="$p50" -v p99="$p99" '
        /^finished in/ { rps = $4 }
        /^requests:/ { reqs = $8; failed = $10 + $12 + $14 }
        /^status codes:/ { gsub(/,/, ""); non2xx = $7 + $9 }
        END {
            if (rps == "" || reqs == "") exit 1
            printf "%s %.3f %.3f %d %d %d\n", rps, p50, p99, reqs, non2xx + 0, failed + 0
        }' "$raw" || die "cannot parse h2load output: $(cat "$raw")"
}

# start_routeid <name> <port> <admin port> <tls port> [flags...]: routeid on the proxy CPU, one
# tokio worker; its stderr (the access log, if on) is appended to $TMP/<name>.log.
start_routeid() {
    local name=$1 port=$2 admin=$3 tls=$4 pid
    shift 4
    TOKIO_WORKER_THREADS=1 taskset -c "$PROXY_CPU" "$ROUTEID_BIN" standalone -f "$TMP/pools.yaml" \
        --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
        --tls-listen "127.0.0.1:$tls" --default-tls-secret default/bench-tls "$@" \
        >>"$TMP/$name.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_until "$name" "$pid" curl -fs -o /dev/null "http://127.0.0.1:$admin/readyz" ||
        die "$name not ready: $(tail -n 20 "$TMP/$name.log")"
    PID_OF[$name]=$pid
}

# start_haproxy <name> <port>: HAProxy (nbthread 1, foreground) with $TMP/<name>.cfg on the proxy
# CPU, its output appended to $TMP/<name>.log; returns once it answers on <port>.
start_haproxy() {
    local name=$1 port=$2
    taskset -c "$PROXY_CPU" haproxy -f "$TMP/$name.cfg" -db >>"$TMP/$name.log" 2>&1 &
    PID_OF[$name]=$!
    PIDS+=("${PID_OF[$name]}")
    wait_until "$name" "${PID_OF[$name]}" curl -fs -o /dev/null "http://127.0.0.1:$port/" ||
        die "$name not ready: $(tail -n 20 "$TMP/$name.log")"
}

# start_proxies: routeid (without and with its access log) and HAProxy (and, when asked for,
# HAProxy with its access log) on the proxy CPU, each a fresh process.
start_proxies() {
    start_routeid routeid "$ROUTEID_PORT" "$ROUTEID_ADMIN_PORT" "$ROUTEID_TLS_PORT" --no-access-log
    start_routeid routeid-log "$ROUTEID_LOG_PORT" "$ROUTEID_LOG_ADMIN_PORT" "$ROUTEID_LOG_TLS_PORT" \
        --log-format "$LOG_FORMAT"
    start_haproxy haproxy "$HAPROXY_PORT"
    ((HAPROXY_LOG == 0)) || start_haproxy haproxy-log "$HAPROXY_LOG_PORT"
}

# stop_proxies: ends start_proxies' processes and waits until they are gone (their ports free).
stop_proxies() {
    local t p live=()
    for t in "${!PID_OF[@]}"; do
        [[ -n ${PID_OF[$t]} ]] || continue # direct: no proxy
        kill "${PID_OF[$t]}" 2>/dev/null || true
        wait "${PID_OF[$t]}" 2>/dev/null || true
    done
    # The exit trap signals only what still runs (a pid gone may be reused).
    for p in "${PIDS[@]}"; do
        [[ " ${PID_OF[*]} " == *" $p "* ]] || live+=("$p")
    done
    PIDS=("${live[@]}")
}

# ---------------------------------------------------------------- main
declare -A PID_OF=([direct]="")
# pooled_report: the report of REPORT_FROM's runs together (files separated by spaces or
# newlines). Each file's rounds are numbered apart (file n's round r becomes n * 10000 + r), so a
# paired ratio still compares the targets of one round of one run. Files must have the same
# columns: the report reads them by position.
pooled_report() {
    local -a files=()
    read -r -d '' -a files <<<"$REPORT_FROM" || true
    ((${#files[@]} > 0)) || die "REPORT_FROM names no file"
    local f header=""
    for f in "${files[@]}"; do
        [[ -r $f ]] || die "REPORT_FROM: cannot read $f"
        [[ -n $header ]] || header=$(head -n 1 "$f")
        [[ $(head -n 1 "$f") == "$header" ]] || die "REPORT_FROM: $f has other columns than ${files[0]}"
    done
    TMP=$(mktemp -d /tmp/routeid-pooled.XXXXXX) # removed by the exit trap
    awk -F'\t' -v OFS='\t' 'FNR == 1 { file++; if (file == 1) print; next } NF { $1 = file * 10000 + $1; print }' \
        "${files[@]}" >"$TMP/pooled.tsv"
    ROUNDS=$(awk -F'\t' 'NR > 1 { r[$1] } END { print length(r) }' "$TMP/pooled.tsv")
    REPORT_FROM="${files[*]}"
    report "$TMP/pooled.tsv"
}

main() {
    if [[ -n ${REPORT_FROM:-} ]]; then
        pooled_report
        return
    fi
    ensure_tools
    mkdir -p "$OUT_DIR"
    : >"$OUT_DIR/latest-wrk.txt"

    local p
    local -a ports=("$BACKEND1_PORT" "$BACKEND2_PORT" "$ROUTEID_PORT" "$ROUTEID_ADMIN_PORT" "$HAPROXY_PORT"
        "$ROUTEID_TLS_PORT" "$HAPROXY_TLS_PORT" "$ROUTEID_LOG_PORT" "$ROUTEID_LOG_ADMIN_PORT" "$ROUTEID_LOG_TLS_PORT")
    ((HAPROXY_LOG == 0)) || ports+=("$HAPROXY_LOG_PORT" "$HAPROXY_LOG_TLS_PORT")
    for p in "${ports[@]}"; do
        port_in_use "$p" && die "port 127.0.0.1:$p is in use; set the *_PORT variables to free ports"
    done
    local ncpu
    ncpu=$(nproc)
    ((ncpu >= 2)) || log "warning: $ncpu CPU(s); proxy and load share a core"

    # Build routeid.
    # As the Docker image builds it: with the PGO profile (scripts/build-release.sh).
    if [[ -z ${ROUTEID_BIN:-} ]]; then
        [[ -n ${NO_BUILD:-} ]] || log "scripts/build-release.sh (PGO=${PGO:-1})"
        ROUTEID_BIN=$(bash "$ROOT/scripts/build-release.sh") || die "the release build failed"
    fi
    [[ -x $ROUTEID_BIN ]] || die "no binary at $ROUTEID_BIN"

    TMP=$(mktemp -d /tmp/routeid-bench.XXXXXX)
    chmod 755 "$TMP" # nginx workers drop to nobody

    # Backends: nginx, two server blocks, on the load CPU.
    render "$BENCH_DIR/nginx.conf.tmpl" "$TMP/nginx.conf"
    local nginx_bin
    nginx_bin=$(command -v nginx)
    taskset -c "$LOAD_CPU" "$nginx_bin" -p "$TMP" -e "$TMP/nginx-error.log" -c "$TMP/nginx.conf" \
        >"$TMP/nginx.out" 2>&1 &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    wait_until nginx "$NGINX_PID" curl -fs -o /dev/null "http://127.0.0.1:$BACKEND1_PORT/" ||
        die "nginx did not start: $(cat "$TMP/nginx.out" "$TMP/nginx-error.log" 2>/dev/null)"
    wait_until nginx "$NGINX_PID" curl -fs -o /dev/null "http://127.0.0.1:$BACKEND2_PORT/" ||
        die "nginx (2nd server) did not start"

    # One ECDSA P-256 certificate for both proxies: a Secret document for routeid (the default
    # certificate, whatever name wrk sends), one PEM bundle for HAProxy.
    local secret
    secret=$(bench_certificate "$TMP") || die "openssl could not make the bench certificate"

    render "$BENCH_DIR/pools.yaml.tmpl" "$TMP/pools.yaml"
    printf '%s\n' "$secret" >>"$TMP/pools.yaml"
    render "$BENCH_DIR/haproxy.cfg.tmpl" "$TMP/haproxy.cfg"
    render "$BENCH_DIR/haproxy-tls.cfg.tmpl" "$TMP/haproxy-tls.cfg"
    cat "$TMP/haproxy-tls.cfg" >>"$TMP/haproxy.cfg"
    haproxy -c -q -f "$TMP/haproxy.cfg" || die "haproxy config check failed"
    # The same with HAProxy's access log (its usual HTTP format) to stdout, on ports of its own;
    # stdout is a regular file, which a write never finds full, so no line is dropped.
    if ((HAPROXY_LOG)); then
        sed -e "s|127.0.0.1:$HAPROXY_PORT\$|127.0.0.1:$HAPROXY_LOG_PORT|" \
            -e "s|127.0.0.1:$HAPROXY_TLS_PORT |127.0.0.1:$HAPROXY_LOG_TLS_PORT |" \
            -e '/No logging at all/d' \
            -e 's|^global$|global\n    log stdout format raw local0|' \
            -e 's|^defaults$|defaults\n    log global\n    option httplog|' "$TMP/haproxy.cfg" >"$TMP/haproxy-log.cfg"
        haproxy -c -q -f "$TMP/haproxy-log.cfg" || die "haproxy-log config check failed"
    fi
    start_proxies

    check_correctness

    local -A URL=(
        [direct]="http://127.0.0.1:$BACKEND1_PORT/"
        [routeid]="http://127.0.0.1:$ROUTEID_PORT/"
        [routeid-log]="http://127.0.0.1:$ROUTEID_LOG_PORT/"
        [haproxy]="http://127.0.0.1:$HAPROXY_PORT/"
        [haproxy-log]="http://127.0.0.1:$HAPROXY_LOG_PORT/"
    )
    local -A TLS_URL=([routeid]="https://127.0.0.1:$ROUTEID_TLS_PORT/"
        [routeid-log]="https://127.0.0.1:$ROUTEID_LOG_TLS_PORT/" [haproxy]="https://127.0.0.1:$HAPROXY_TLS_PORT/"
        [haproxy-log]="https://127.0.0.1:$HAPROXY_LOG_TLS_PORT/")
    local -A STICKY_COOKIE=([direct]="ROUTEID=s1" [routeid]="ROUTEID=.s1" [routeid-log]="ROUTEID=.s1" [haproxy]="ROUTEID=s1"
        [haproxy-log]="ROUTEID=s1")
    local -a TARGETS=(${TARGETS:-direct routeid routeid-log haproxy}) SCENARIOS=(${SCENARIOS:-plain sticky tls handshake h2})
    local clk
    clk=$(getconf CLK_TCK)

    local t s

    local runs="$OUT_DIR/latest-runs.tsv"
    printf 'round\tscenario\ttarget\treq_s\tp50_ms\tp99_ms\tcpu_us_req\tnginx_us_req\trequests\tnon2xx\tsocket_errors\tuser_us_req\tlog_thread_us_req\n' >"$runs"
    local r header url pid c0 c1 u0 u1 w0 w1 n0 n1 line rps p50 p99 reqs non2xx sockerr cpu ucpu wcpu ncpu_req
    local -a order
    local i fresh
    for ((r = 1; r <= ROUNDS; r++)); do
        fresh=$((r == 1))
        if ((r > 1)) && [[ $RESTART != 0 ]]; then
            stop_proxies
            start_proxies
            fresh=1
        fi
        # One warm-up run per fresh process (nginx, behind "direct", runs throughout).
        if ((fresh)) && [[ $WARMUP != 0 ]]; then
            log "warm-up ($WARMUP per target)"
            for t in "${TARGETS[@]}"; do
                [[ $t == direct ]] && ((r > 1)) && continue
                run_wrk "warmup-$r-$t" "${URL[$t]}" "" "$WARMUP" >/dev/null
                [[ $t != *-log ]] || settle_log "$t"
            done
        fi
        # Every other round runs the targets in reverse, so a drift of the machine within a
        # round does not always favour the target that runs first.
        order=("${TARGETS[@]}")
        if ((r % 2 == 0)); then
            order=()
            for ((i = ${#TARGETS[@]} - 1; i >= 0; i--)); do order+=("${TARGETS[$i]}"); done
        fi
        for s in "${SCENARIOS[@]}"; do
            for t in "${order[@]}"; do
                header="" url=${URL[$t]}
                [[ $s = sticky ]] && header="Cookie: ${STICKY_COOKIE[$t]}"
                if [[ $s = tls || $s = handshake || $s = h2 ]]; then
                    [[ $t = direct ]] && continue # the nginx backends speak plain HTTP only
                    url=${TLS_URL[$t]}
                    [[ $s = handshake ]] && header="Connection: close"
                fi
                pid=${PID_OF[$t]}
                [[ $t != routeid-log ]] || d0=$(log_dropped)
                if [[ -n $pid ]]; then
                    alive "$pid" || die "$t (pid $pid) died: $(tail -n 20 "$TMP/$t.log")"
                    c0=$(cpu_ticks "$pid")
                    u0=$(user_ticks "$pid")
                    [[ $t != routeid-log ]] || w0=$(writer_ticks "$pid")
                fi
                n0=$(nginx_ticks)
                if [[ $s = h2 ]]; then
                    line=$(run_h2load "$r-$s-$t" "$url")
                else
                    line=$(run_wrk "$r-$s-$t" "$url" "$header")
                fi
                n1=$(nginx_ticks)
                [[ $t != routeid-log ]] || LOG_DROPPED=$((LOG_DROPPED + $(log_dropped) - d0))
                [[ $t != *-log ]] || settle_log "$t"
                read -r rps p50 p99 reqs non2xx sockerr <<<"$line"
                cpu="-" ucpu="-" wcpu="-"
                if [[ -n $pid ]]; then
                    c1=$(cpu_ticks "$pid") || die "$t (pid $pid) died during the run"
                    u1=$(user_ticks "$pid")
                    cpu=$(per_req $((c1 - c0)))
                    ucpu=$(per_req $((u1 - u0)))
                    if [[ $t == routeid-log ]]; then
                        w1=$(writer_ticks "$pid")
                        wcpu=$(per_req $((w1 - w0)))
                    fi
                fi
                ncpu_req=$(per_req $((n1 - n0)))
                printf '%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$s" "$t" "$rps" "$p50" "$p99" "$cpu" \
                    "$ncpu_req" "$reqs" "$non2xx" "$sockerr" "$ucpu" "$wcpu" >>"$runs"
                log "round $r/$ROUNDS $s $t: $rps req/s, p50 ${p50}ms, p99 ${p99}ms, cpu/req ${cpu}us (user ${ucpu}us$([[ $wcpu == - ]] || echo ", log thread ${wcpu}us")), nginx ${ncpu_req}us/req"
                if ((non2xx + sockerr)); then
                    log "WARNING $t ($s, round $r): $non2xx non-2xx/3xx responses, $sockerr socket errors (see bench/out/latest-wrk.txt)"
                fi
            done
        done
    done

    {
        report "$runs"
        local n
        # A log that dropped lines did less work than users' logs do: its figures would flatter.
        ((LOG_DROPPED == 0)) ||
            printf 'WARNING routeid-log dropped %d log lines in measured runs (routeid_log_lines_dropped_total): its figures are not valid\n' "$LOG_DROPPED"
        for t in routeid routeid-log; do
            n=$(grep -cE '\b(WARN|ERROR)\b' "$TMP/$t.log" || true)
            ((n == 0)) || printf 'WARNING %s logged %d WARN/ERROR lines (bench/out/latest-%s.log)\n' "$t" "$n" "$t"
        done
        for t in haproxy haproxy-log; do
            [[ -n ${PID_OF[$t]:-} ]] || continue
            n=$(grep -cE '\[(WARNING|ALERT)\]' "$TMP/$t.log" || true)
            ((n == 0)) || printf 'WARNING %s logged %d WARNING/ALERT lines (bench/out/latest-%s.log)\n' "$t" "$n" "$t"
        done
    } | tee "$OUT_DIR/latest.txt"
    local stamp
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    cp "$runs" "$OUT_DIR/runs-$stamp.tsv"
    for t in "${!PID_OF[@]}"; do
        [[ -z ${PID_OF[$t]} ]] || alive "${PID_OF[$t]}" || log "warning: $t exited"
    done
    cp "$TMP/routeid.log" "$OUT_DIR/latest-routeid.log"
    tail -n 1000 "$TMP/routeid-log.log" >"$OUT_DIR/latest-routeid-log.log"
    cp "$TMP/haproxy.log" "$OUT_DIR/latest-haproxy.log"
    if [[ $POOL_BENCH = 1 ]]; then
        log "cargo bench --bench pool_size"
        (cd "$ROOT" && taskset -c "$PROXY_CPU" cargo bench -q --bench pool_size 2>/dev/null) | tee -a "$OUT_DIR/latest.txt" ||
            die "cargo bench --bench pool_size failed"
    fi
    cp "$OUT_DIR/latest.txt" "$OUT_DIR/runs-$stamp.txt"
}

# ---------------------------------------------------------------- correctness
header_of() { # header_of <name> <headers file>: values of a header, one a line
    tr -d '\r' <"$2" | awk -v n="$(tr '[:upper:]' '[:lower:]' <<<"$1")" -F': ' 'tolower($1) == n { print $2 }'
}

check_one() { # check_one <proxy> <url> <set-cookie regex> <cookie to send> <route expected for it>
    local name=$1 url=$2 re=$3 cookie=$4 route=$5 h="$TMP/h.txt" sc i b
    curl -fsS -D "$h" -o /dev/null "$url" || die "$name: request failed"
    sc=$(header_of set-cookie "$h")
    [[ $sc =~ $re ]] || die "$name: no cookie-less Set-Cookie matching /$re/; got: '${sc:-none}'"
    # nocache: routeid adds `Cache-Control: private` whenever it inserts the cookie; HAProxy only
    # when it deems the response cacheable, which nginx's bare `return 200` is not.
    if [[ $name == routeid && $(header_of cache-control "$h") != *private* ]]; then
        die "$name: no 'Cache-Control: private' with the inserted cookie (nocache: true)"
    fi
    log "$name: Set-Cookie: $sc"
    # Balancing without a cookie reaches both members. (Checked before the sticky requests:
    # routeid's ByRequests also counts sticky requests, and would make up for them first.)
    local seen=""
    for ((i = 0; i < 4; i++)); do
        curl -fsS -D "$h" -o /dev/null "$url" || die "$name: request failed"
        seen+=" $(header_of x-backend "$h")"
    done
    [[ $seen == *s1* && $seen == *s2* ]] || die "$name: cookie-less requests did not reach both members:$seen"
    for ((i = 0; i < 4; i++)); do
        curl -fsS -D "$h" -o /dev/null -H "Cookie: $cookie" "$url" || die "$name: sticky request failed"
        b=$(header_of x-backend "$h")
        [[ $b == "$route" ]] || die "$name: Cookie '$cookie' went to '$b', expected '$route'"
        [[ -z $(header_of set-cookie "$h") ]] ||
            die "$name: Set-Cookie on a request that already had the right cookie: $(header_of set-cookie "$h")"
    done
}

check_correctness() {
    check_one routeid "http://127.0.0.1:$ROUTEID_PORT/" '^ROUTEID=\.s[12](;|$)' "ROUTEID=.s2" s2
    check_one routeid-log "http://127.0.0.1:$ROUTEID_LOG_PORT/" '^ROUTEID=\.s[12](;|$)' "ROUTEID=.s2" s2
    check_one haproxy "http://127.0.0.1:$HAPROXY_PORT/" '^ROUTEID=s[12](;|$)' "ROUTEID=s2" s2
    ((HAPROXY_LOG == 0)) || check_one haproxy-log "http://127.0.0.1:$HAPROXY_LOG_PORT/" '^ROUTEID=s[12](;|$)' "ROUTEID=s2" s2
    log "correctness checks passed"
}

# ---------------------------------------------------------------- report
report() {
    local runs=$1 rev
    if [[ -n ${REPORT_FROM:-} ]]; then
        echo "routeid bench report $(date -u +%Y-%m-%dT%H:%M:%SZ): $ROUNDS round(s), medians, pooled from"
        echo "  $REPORT_FROM (each run's commit and binary: the .txt beside its .tsv)"
    else
        rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
        echo "routeid bench $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $rev$(git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || echo ' (+ uncommitted src changes)'), binary $ROUTEID_BIN"
        echo "wrk -t$THREADS -c$CONNS -d$DURATION --latency, $ROUNDS round(s), medians; proxy on CPU $PROXY_CPU (1 thread), wrk+nginx on CPU $LOAD_CPU; $(nproc) CPUs"
    fi
    echo "$(haproxy -v 2>/dev/null | head -n 1 | cut -d' ' -f1-3); $(nginx -v 2>&1 | head -n 1)"
    echo
    awk -F'\t' '
        function median(key,   n, i, j, tmp, a) {
            n = split(vals[key], a, " ")
            if (n == 0 || a[1] == "-") return "-"
            for (i = 2; i <= n; i++) { tmp = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > tmp + 0; j--) a[j + 1] = a[j]; a[j + 1] = tmp }
            return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        # ci95(key): a 95 % confidence interval of vals[key]'"'"'s median from order statistics alone
        # (the k-th smallest and largest, k the largest with P(Binomial(n, 1/2) < k) <= 2.5 %);
        # "n/a" under 6 values, where no such interval exists.
        function ci95(key, fmt,   n, i, j, tmp, a, k, pk, cdf) {
            n = split(vals[key], a, " ")
            for (i = 2; i <= n; i++) { tmp = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > tmp + 0; j--) a[j + 1] = a[j]; a[j + 1] = tmp }
            pk = 0.5 ^ n; cdf = pk; k = 0
            for (i = 0; cdf <= 0.025 && i < n; i++) { k = i + 1; pk = pk * (n - i) / (i + 1); cdf += pk }
            return k ? sprintf(fmt, a[k], a[n + 1 - k]) : "n/a"
        }
        function add(k, v) { vals[k] = (k in vals) ? vals[k] " " v : v }
        function ratio(a, b) { return (a == "" || b == "" || a == "-" || b == "-" || b + 0 == 0) ? "n/a" : sprintf("%.2f", a / b) }
        # paired(a, b, f, op): the median over rounds of a/b (op "/") or a - b (op "-") for
        # field f within each round, with the smallest and largest: the machine'"'"'s drift
        # between rounds cancels out of it. Says how many rounds when not all could be paired.
        function paired(a, b, f, op,   x, lo, hi, n, q, fmt) {
            n = 0; lo = ""; hi = ""; vals["paired"] = ""
            for (x in rnd) {
                if (!((x, a, f) in per) || !((x, b, f) in per) || per[x, a, f] == "-" || per[x, b, f] == "-") continue
                if (op == "/" && per[x, b, f] + 0 == 0) continue
                q = op == "/" ? per[x, a, f] / per[x, b, f] : per[x, a, f] - per[x, b, f]
                add("paired", q); n++
                if (lo == "" || q < lo) lo = q; if (hi == "" || q > hi) hi = q
            }
            if (!n) return "n/a"
            fmt = op == "/" ? "%.2f (%.2f-%.2f" : "%+.2f (%+.2f..%+.2f"
            return sprintf(fmt, median("paired"), lo, hi) "; 95% CI " ci95("paired", op == "/" ? "%.2f-%.2f" : "%+.2f..%+.2f") ")" \
                (n < nrounds ? sprintf(" %d of %d rounds", n, nrounds) : "")
        }
        NR == 1 { next }
        {
            k = $2 SUBSEP $3
            add(k SUBSEP "rps", $4); add(k SUBSEP "p50", $5); add(k SUBSEP "p99", $6)
            add(k SUBSEP "cpu", $7); add(k SUBSEP "ncpu", $8); add(k SUBSEP "ucpu", $12)
            if ($13 != "" && $13 != "-") { add(k SUBSEP "wcpu", $13); if (!((k, "wlo") in w) || $13 + 0 < w[k, "wlo"]) w[k, "wlo"] = $13; if (!((k, "whi") in w) || $13 + 0 > w[k, "whi"]) w[k, "whi"] = $13 }
            if (!($1 in rnd)) nrounds++
            rnd[$1] = 1; per[$1, k, "rps"] = $4; per[$1, k, "p99"] = $6; per[$1, k, "cpu"] = $7; per[$1, k, "ucpu"] = $12
            non2xx[$3] += $10; sockerr[$3] += $11
        }
        END {
            ns = split("plain sticky tls handshake h2", S, " "); nt = split("direct routeid routeid-log haproxy haproxy-log", T, " ")
            printf "%-9s %-11s %10s %7s %7s %11s %12s %13s\n", "scenario", "target", "req/s", "p50ms", "p99ms", "cpu_us/req", "user_us/req", "nginx_us/req"
            for (i = 1; i <= ns; i++) for (j = 1; j <= nt; j++) {
                k = S[i] SUBSEP T[j]
                if (!((k SUBSEP "rps") in vals)) continue
                m[k, "rps"] = median(k SUBSEP "rps"); m[k, "p50"] = median(k SUBSEP "p50")
                m[k, "p99"] = median(k SUBSEP "p99"); m[k, "cpu"] = median(k SUBSEP "cpu")
                m[k, "ncpu"] = median(k SUBSEP "ncpu"); m[k, "ucpu"] = median(k SUBSEP "ucpu")
                cpu = m[k, "cpu"] == "-" ? "-" : sprintf("%.2f", m[k, "cpu"])
                ucpu = m[k, "ucpu"] == "-" ? "-" : sprintf("%.2f", m[k, "ucpu"])
                printf "%-9s %-11s %10.0f %7.3f %7.3f %11s %12s %13.2f\n", S[i], T[j], m[k, "rps"], m[k, "p50"], m[k, "p99"], cpu, ucpu, m[k, "ncpu"]
            }
            printf "\n(cpu_us/req: proxy process utime+stime per request; \"-\" for direct: no proxy.\n"
            printf " tls: HTTPS keep-alive; handshake: HTTPS with Connection: close, so cpu_us/req is the cost of a\n"
            printf " handshake plus one request. h2: HTTP/2 over TLS (h2load). user_us/req: utime alone, the proxy'"'"'s\n"
            printf " own code. routeid-log: routeid with its access log on, to a file; haproxy-log: HAProxy with\n"
            printf " option httplog to stdout, to a file. nginx_us/req: both backends together, for reference.)\n\n"
            print "ratios to haproxy (req/s: above 1 is better; p99 and cpu: below 1 is better):"
            # The rows compared with haproxy.
            nr = split("routeid routeid-log haproxy-log", R, " ")
            for (v = 1; v <= nr; v++) for (i = 1; i <= ns; i++) {
                rt = R[v]
                r = S[i] SUBSEP rt; h = S[i] SUBSEP "haproxy"
                if (!((r, "rps") in m) || !((h, "rps") in m)) continue
                printf "  %-11s %-9s req/s %s, p99 %s, cpu/req %s, user/req %s\n", rt, S[i], ratio(m[r, "rps"], m[h, "rps"]),
                    ratio(m[r, "p99"], m[h, "p99"]), ratio(m[r, "cpu"], m[h, "cpu"]), ratio(m[r, "ucpu"], m[h, "ucpu"])
            }
            print "the same, paired: the median over rounds of each round'"'"'s ratio (smallest-largest; 95% confidence interval of the median):"
            for (v = 1; v <= nr; v++) for (i = 1; i <= ns; i++) {
                rt = R[v]
                r = S[i] SUBSEP rt; h = S[i] SUBSEP "haproxy"
                if (!((r, "rps") in m) || !((h, "rps") in m)) continue
                printf "  %-11s %-9s req/s %s, p99 %s, cpu/req %s, user/req %s\n", rt, S[i], paired(r, h, "rps", "/"),
                    paired(r, h, "p99", "/"), paired(r, h, "cpu", "/"), paired(r, h, "ucpu", "/")
            }
            split("routeid haproxy", P, " ")
            for (v = 1; v <= 2; v++) {
                px = P[v]; head = 0
                for (i = 1; i <= ns; i++) {
                    r = S[i] SUBSEP px; l = S[i] SUBSEP px "-log"
                    if (!((r, "cpu") in m) || !((l, "cpu") in m)) continue
                    if (!head++) printf "access log cost (%s-log minus %s, cpu us/req):\n", px, px
                    printf "  %-9s %+.2f (user %+.2f); paired: %s\n", S[i], m[l, "cpu"] - m[r, "cpu"], m[l, "ucpu"] - m[r, "ucpu"],
                        paired(l, r, "cpu", "-")
                    printf "  %-9s p99 with the log over without it, paired: %s\n", "", paired(l, r, "p99", "/")
                    if ((l SUBSEP "wcpu") in vals)
                        printf "  %-9s the log writer thread: %.2f us/req (rounds %.2f-%.2f)\n", "", median(l SUBSEP "wcpu"), w[l, "wlo"], w[l, "whi"]
                }
            }
            head = 0
            for (i = 1; i <= ns; i++) {
                r = S[i] SUBSEP "routeid-log"; h = S[i] SUBSEP "haproxy-log"
                if (!((r, "rps") in m) || !((h, "rps") in m)) continue
                if (!head++) print "both with their access logs, paired ratios of routeid-log to haproxy-log:"
                printf "  %-9s req/s %s, p99 %s, cpu/req %s, user/req %s\n", S[i], paired(r, h, "rps", "/"),
                    paired(r, h, "p99", "/"), paired(r, h, "cpu", "/"), paired(r, h, "ucpu", "/")
            }
            printf "sticky/plain cpu/req: routeid %s, haproxy %s\n",
                ratio(m["sticky", "routeid", "cpu"], m["plain", "routeid", "cpu"]),
                ratio(m["sticky", "haproxy", "cpu"], m["plain", "haproxy", "cpu"])
            for (j = 1; j <= nt; j++)
                if (non2xx[T[j]] + sockerr[T[j]] > 0)
                    printf "WARNING %s: %d non-2xx/3xx responses, %d socket errors over all runs\n", T[j], non2xx[T[j]], sockerr[T[j]]
        }' "$runs"
}

main "$@"

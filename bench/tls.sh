# bench/tls.sh — sourced by run.sh, instructions.sh and common.sh's start_targets: the one
# certificate both proxies serve in the HTTPS and HTTP/2 scenarios, so no script makes it its
# own way.

# bench_certificate DIR: an ECDSA P-256 certificate for bench.test, made by openssl, in
# DIR/tls.crt and DIR/tls.key, and both in DIR/bench.pem (HAProxy's `crt`); prints the Secret
# document routeid's pools file takes (served with `--default-tls-secret default/bench-tls`).
# Fails when openssl does.
bench_certificate() {
    local dir=$1
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=bench.test \
        -addext subjectAltName=DNS:bench.test -keyout "$dir/tls.key" -out "$dir/tls.crt" 2>/dev/null || return 1
    cat "$dir/tls.crt" "$dir/tls.key" >"$dir/bench.pem"
    printf -- '---\napiVersion: v1\nkind: Secret\nmetadata: {name: bench-tls}\ntype: kubernetes.io/tls\nstringData:\n'
    printf '  tls.crt: |\n'
    sed 's/^/    /' "$dir/tls.crt"
    printf '  tls.key: |\n'
    sed 's/^/    /' "$dir/tls.key"
}

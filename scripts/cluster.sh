#!/usr/bin/env bash
# Runs the Limpet stack on loopback with the configs in config/examples/cluster/,
# with a random broker password and cluster secret made at each start.
# Each process's log lines are prefixed with its name; Ctrl-C stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."

examples=config/examples/cluster
bin=${LIMPET_BIN:-target/release}   # LIMPET_BIN=target/debug to try a debug build
lock=${TMPDIR:-/tmp}/limpet-cluster.lock

exec 9>"$lock"
if ! flock -n 9; then
    echo "make cluster: another cluster is already running (lock $lock held); stop it first" >&2
    exit 1
fi

# The configs actually run: copies of the examples with a fresh broker
# password and cluster secret, so no two runs (and no checkout) share them.
dir=target/cluster
mkdir -p "$dir"
chmod 700 "$dir"
password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
secret=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
for f in "$examples"/*.toml; do
    sed -e "s/cluster-dev-password/$password/g" -e "s/cluster-dev-secret-change-me/$secret/g" \
        "$f" > "$dir/$(basename "$f")"
    chmod 600 "$dir/$(basename "$f")"
done

pids=()
stop() {
    trap - INT TERM EXIT
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "cluster: stopped" >&2
}
trap stop INT TERM EXIT

# name, command...: runs a process with its log prefixed by its name;
# $! is the process itself, so the trap can signal it directly.
start() {
    local name=$1; shift
    "$@" > >(sed -u "s/^/[$name] /") 2>&1 &
    pids+=($!)
}

proxy_conf=proxy
if [ "${TLS:-0}" = 1 ]; then
    # A self-signed certificate for localhost, made once and reused.
    tls_dir=target/cluster-tls
    mkdir -p "$tls_dir"
    if [ ! -s "$tls_dir/localhost.pem" ] || ! openssl x509 -checkend 86400 -noout -in "$tls_dir/localhost.pem" >/dev/null 2>&1; then
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
            -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
            -keyout "$tls_dir/localhost.key" -out "$tls_dir/localhost.pem" 2>/dev/null
        echo "cluster: made a self-signed certificate in $tls_dir/localhost.pem"
    fi
    proxy_conf=proxy-tls
fi

for conf in broker node-a node-b node-c "$proxy_conf"; do
    case $conf in
        broker) "$bin/limpet-broker" --check --config "$dir/$conf.toml" >/dev/null ;;
        node-*) "$bin/limpet-node" --check --config "$dir/$conf.toml" >/dev/null ;;
        proxy*) "$bin/limpet-proxy" --check --config "$dir/$conf.toml" >/dev/null ;;
    esac
done
# Ports in use by something else: say so instead of half-starting.
for port in 6379 9121 9001 9002 9003 8080 8443 9180; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "make cluster: 127.0.0.1:$port is already in use; stop whatever listens there first" >&2
        exit 1
    fi
done

log=${RUST_LOG:-info}
start broker env RUST_LOG="$log" "$bin/limpet-broker" --config "$dir/broker.toml"
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && break; sleep 0.05; done
for n in a b c; do
    start "node-$n" env RUST_LOG="$log" "$bin/limpet-node" --config "$dir/node-$n.toml"
done
start proxy env RUST_LOG="$log" "$bin/limpet-proxy" --config "$dir/$proxy_conf.toml"

if [ "$proxy_conf" = proxy-tls ]; then
    cat <<MSG
cluster: open https://localhost:8443/ (http://localhost:8080 redirects there)
cluster:   the certificate is self-signed: accept the browser warning, or trust
cluster:   target/cluster-tls/localhost.pem; curl --cacert target/cluster-tls/localhost.pem https://localhost:8443/
MSG
else
    echo "cluster: open http://127.0.0.1:8080/ (two browser profiles land on different nodes)"
fi
cat <<MSG
cluster:   limpet-proxy   :8080 (:8443 with TLS)  metrics http://127.0.0.1:9180/metrics
cluster:   limpet-node a  http://127.0.0.1:9001   (ws /ws, /health, /metrics)
cluster:   limpet-node b  http://127.0.0.1:9002
cluster:   limpet-node c  http://127.0.0.1:9003
cluster:   limpet-broker  redis://127.0.0.1:6379  metrics http://127.0.0.1:9121/metrics
cluster:     password: redis-cli -a "\$(sed -n 's/^requirepass = "\\(.*\\)"/\\1/p' $dir/broker.toml)"
cluster: Ctrl-C stops everything
MSG
wait

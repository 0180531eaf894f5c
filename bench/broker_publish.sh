#!/usr/bin/env bash
# PUBLISH throughput of limpet-broker and redis-server on this machine,
# run back to back and alternated so that machine noise hits both alike.
#   usage: bench/broker_publish.sh [requests] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${1:-1000000}
rounds=${2:-3}
broker=target/release/limpet-broker
[ -x "$broker" ] || cargo build --release -p limpet-broker
for tool in redis-server redis-benchmark; do
    command -v $tool >/dev/null || { echo "$tool missing: run make test-deps" >&2; exit 1; }
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
lport=$(free_port); rport=$(free_port)
tmp=$(mktemp -d)
trap 'kill $lpid $rpid 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT

printf 'bind = ["127.0.0.1:%s"]\n[metrics]\nenabled = false\n' "$lport" > "$tmp/broker.toml"
RUST_LOG=warn TOKIO_WORKER_THREADS=${THREADS:-} "$broker" --config "$tmp/broker.toml" & lpid=$!
redis-server --port "$rport" --bind 127.0.0.1 --logfile /dev/null --save '' --appendonly no --loglevel warning & rpid=$!
for p in $lport $rport; do
    for _ in $(seq 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.05; done
done

run() { # port -> requests per second
    redis-benchmark -p "$1" -q -n "$requests" -P 16 PUBLISH ch hello 2>/dev/null \
        | tr '\r' '\n' | grep -o 'PUBLISH ch hello: [0-9.]* requests per second' | awk '{print $4}' | tail -1
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

: > "$tmp/l"; : > "$tmp/r"
for i in $(seq "$rounds"); do
    run "$rport" >> "$tmp/r"
    run "$lport" >> "$tmp/l"
done
l=$(median < "$tmp/l"); r=$(median < "$tmp/r")
echo "redis-benchmark -q -n $requests -P 16 PUBLISH ch hello, $rounds rounds each, medians:"
echo "  redis-server $(redis-server --version | grep -o 'v=[0-9.]*' | cut -c3-): $r requests/s   (runs: $(paste -sd' ' "$tmp/r"))"
echo "  limpet-broker:        $l requests/s   (runs: $(paste -sd' ' "$tmp/l"))"
awk -v l="$l" -v r="$r" 'BEGIN {printf "  ratio limpet/redis:   %.2f\n", l / r}'
echo "  machine: $(nproc) cores, $(uname -r), $(date -u +%F)"

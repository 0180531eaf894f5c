#!/usr/bin/env bash
# Runs the Limpet stack on loopback with the configs in config/examples/cluster/.
# Each process's log lines are prefixed with its name; Ctrl-C stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=config/examples/cluster
bin=target/release
lock=${TMPDIR:-/tmp}/limpet-cluster.lock

exec 9>"$lock"
if ! flock -n 9; then
    echo "make cluster: another cluster is already running (lock $lock held); stop it first" >&2
    exit 1
fi

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

"$bin/limpet-broker" --check --config "$dir/broker.toml" >/dev/null
start broker env RUST_LOG="${RUST_LOG:-info}" "$bin/limpet-broker" --config "$dir/broker.toml"

echo "cluster: limpet-broker on redis://127.0.0.1:6379 (metrics http://127.0.0.1:9121/metrics)"
echo "cluster: Ctrl-C stops everything"
wait

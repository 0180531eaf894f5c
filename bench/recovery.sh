#!/usr/bin/env bash
# History figures of limpet-node (issue 16), over limpet-broker and over
# redis-server, each behind one release limpet-node with `[history]` on:
#  * broker memory per stored room message: INFO used_memory_dataset and
#    VmRSS growth over <messages> messages emitted into one room;
#  * recovery time: a rejoin with `since` that has 100 missed messages to
#    replay, from the join request to its ack (all 100 events before it),
#    median of <rounds> fresh sockets.
#   usage: bench/recovery.sh [messages] [rounds]      (defaults 20000, 20)
set -euo pipefail
cd "$(dirname "$0")/.."

messages=${1:-20000}
rounds=${2:-20}
broker=target/release/limpet-broker
node=target/release/limpet-node
[ -x "$broker" ] && [ -x "$node" ] || cargo build --release -p limpet-broker -p limpet-node
for tool in redis-server redis-cli node python3; do
    command -v $tool >/dev/null || { echo "$tool missing" >&2; exit 1; }
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 1' INT TERM

# Starts a node on broker port $1; sets $addr to its WebSocket address.
start_node() {
    local n=${#pids[@]}
    cat > "$tmp/node$n.toml" <<TOML
id = "bench-$n"
bind = "127.0.0.1:0"
broker = ["redis://127.0.0.1:$1/"]
[limits]
rate_per_second = 1000000
rate_burst = 1000000
address_rate_per_second = 1000000
address_rate_burst = 1000000
outbound_queue = 100000
outbound_queue_bytes = "256mb"
[history]
size = $((messages + 1000))
ttl = "0s"
TOML
    RUST_LOG=info "$node" --config "$tmp/node$n.toml" > /dev/null 2> "$tmp/node$n.log" & pids+=($!)
    for _ in $(seq 200); do
        grep -q 'listening for WebSocket clients' "$tmp/node$n.log" && break
        sleep 0.05
    done
    addr=$(grep 'listening for WebSocket clients' "$tmp/node$n.log" | grep -o 'addr=[0-9.:]*' | head -1 | cut -d= -f2)
}

run() { # label broker-port broker-pid
    start_node "$2"
    for _ in $(seq 100); do curl -s "http://$addr/health" 2>/dev/null | grep -q '"broker":"connected"' && break; sleep 0.05; done
    printf '  %-22s ' "$1:"
    node --experimental-websocket --no-warnings bench/history.mjs "$addr" "$2" "$3" "$messages" "$rounds"
}

lport=$(free_port); rport=$(free_port)
printf 'bind = ["127.0.0.1:%s"]\n[metrics]\nenabled = false\n' "$lport" > "$tmp/broker.toml"
RUST_LOG=warn "$broker" --config "$tmp/broker.toml" > /dev/null & lpid=$!; pids+=($lpid)
redis-server --port "$rport" --bind 127.0.0.1 --logfile /dev/null --save '' --appendonly no --loglevel warning > /dev/null & rpid=$!; pids+=($rpid)
for p in $lport $rport; do
    for _ in $(seq 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.05; done
done

echo "history: $messages messages in one room (memory), rejoin with 100 missed (median of $rounds), release limpet-node:"
run "limpet-broker" "$lport" "$lpid"
run "redis-server $(redis-server --version | grep -o 'v=[0-9.]*' | cut -c3-)" "$rport" "$rpid"
echo "  machine: $(nproc) cores, $(uname -r), $(date -u +%F)"

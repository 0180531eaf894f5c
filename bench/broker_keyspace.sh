#!/usr/bin/env bash
# Keyspace commands of limpet-broker against redis-server on this machine,
# in one run: redis-benchmark -P 16 for SET, GET, XADD and HSET (rounds
# alternated so machine noise hits both alike; medians), then resident
# memory per key for 1M small string keys and per entry for 1M stream
# entries (each on a freshly started server, loaded with redis-cli --pipe).
#   usage: bench/broker_keyspace.sh [requests] [rounds] [keys]
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${1:-1000000}
rounds=${2:-3}
keys=${3:-1000000}
broker=target/release/limpet-broker
cargo build --release -p limpet-broker >&2
for tool in redis-server redis-benchmark redis-cli python3; do
    command -v $tool >/dev/null || { echo "$tool missing: run make test-deps" >&2; exit 1; }
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tmp=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$tmp"' EXIT

# start_limpet / start_redis: start one server on a free port; sets $port and $pid.
start_limpet() {
    port=$(free_port)
    printf 'bind = ["127.0.0.1:%s"]\n[metrics]\nenabled = false\n' "$port" > "$tmp/broker-$port.toml"
    RUST_LOG=warn "$broker" --config "$tmp/broker-$port.toml" & pid=$!
    pids+=("$pid"); wait_up
}
start_redis() {
    port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --logfile /dev/null --save '' --appendonly no --loglevel warning & pid=$!
    pids+=("$pid"); wait_up
}
wait_up() { for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && return; sleep 0.05; done; echo "server on $port did not start" >&2; exit 1; }
stop() { kill "$1"; wait "$1" 2>/dev/null || true; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# --- throughput -------------------------------------------------------------
start_limpet; lport=$port; lpid=$pid
start_redis; rport=$port; rpid=$pid
run() { # port test -> requests per second
    local what=(-t "$2")
    # redis-benchmark 7.0 has no built-in XADD test: give the command.
    [ "$2" = xadd ] && what=(XADD bench:stream '*' field value)
    redis-benchmark -p "$1" -q -n "$requests" -P 16 -r 100000 "${what[@]}" 2>/dev/null \
        | tr '\r' '\n' | grep -o '[0-9.]* requests per second' | awk '{print $1}' | tail -1
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A L R
for t in set get xadd hset; do
    : > "$tmp/l"; : > "$tmp/r"
    for _ in $(seq "$rounds"); do
        run "$rport" "$t" >> "$tmp/r"
        run "$lport" "$t" >> "$tmp/l"
    done
    L[$t]=$(median < "$tmp/l"); R[$t]=$(median < "$tmp/r")
done
stop "$lpid"; stop "$rpid"

# --- memory -----------------------------------------------------------------
python3 - "$keys" "$tmp" <<'EOF'
import sys
n, tmp = int(sys.argv[1]), sys.argv[2]
def cmd(*a):
    return "*%d\r\n" % len(a) + "".join("$%d\r\n%s\r\n" % (len(x), x) for x in a)
with open(tmp + "/keys.resp", "w") as f:
    for i in range(n):
        f.write(cmd("SET", "key:%d" % i, "v%d" % i))
with open(tmp + "/stream.resp", "w") as f:
    for i in range(n):
        f.write(cmd("XADD", "s", "%d-1" % (i + 1), "f", "v%d" % i))
EOF
per_item() { # start-fn file -> bytes per item
    "$1"
    local before after
    before=$(rss_kib "$pid")
    redis-cli -p "$port" --pipe < "$2" >/dev/null
    after=$(rss_kib "$pid")
    stop "$pid"
    awk -v a="$after" -v b="$before" -v n="$keys" 'BEGIN {printf "%.0f", (a - b) * 1024 / n}'
}
lkey=$(per_item start_limpet "$tmp/keys.resp"); rkey=$(per_item start_redis "$tmp/keys.resp")
lent=$(per_item start_limpet "$tmp/stream.resp"); rent=$(per_item start_redis "$tmp/stream.resp")

# --- table ------------------------------------------------------------------
rv=$(redis-server --version | grep -o 'v=[0-9.]*' | cut -c3-)
echo "limpet-broker vs redis-server $rv, $(nproc) cores, $(uname -r), $(date -u +%F)"
echo "throughput: redis-benchmark -q -n $requests -P 16 -r 100000, median of $rounds alternated rounds"
echo
echo "| test | redis-server | limpet-broker | limpet/redis |"
echo "|---|---:|---:|---:|"
for t in set get xadd hset; do
    awk -v t="$t" -v l="${L[$t]}" -v r="${R[$t]}" \
        'BEGIN {printf "| %s req/s | %.0f | %.0f | %.2f |\n", toupper(t), r, l, l / r}'
done
awk -v l="$lkey" -v r="$rkey" -v n="$keys" \
    'BEGIN {printf "| RSS per key, %d SET key:N vN | %d B | %d B | %.2f |\n", n, r, l, l / r}'
awk -v l="$lent" -v r="$rent" -v n="$keys" \
    'BEGIN {printf "| RSS per stream entry, %d XADD s N-1 f vN | %d B | %d B | %.2f |\n", n, r, l, l / r}'

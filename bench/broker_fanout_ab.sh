#!/usr/bin/env bash
# Fan-out through redis-server and one or more limpet-broker builds in the
# same run, rounds alternated so machine noise hits all alike: one line per
# run with delivered/s, publish→receive p50 and p99 (µs), and the server's
# CPU µs per delivered message (user + sys of the server process alone,
# from /proc/<pid>/stat, read around the fan-out only).
#   usage: bench/broker_fanout_ab.sh ROUNDS CHANNELS SUBSCRIBERS MESSAGES BINDIR...
#   e.g.   bench/broker_fanout_ab.sh 5 1000 2 200000 /tmp/before target/release
# Each BINDIR holds a limpet-broker; the load generator is the first
# BINDIR's limpet-bench, or $BENCH.
set -euo pipefail
rounds=$1; ch=$2; subs=$3; msgs=$4; shift 4
bench=${BENCH:-$1/limpet-bench}
command -v redis-server >/dev/null || { echo "redis-server missing: run make test-deps" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tmp=$(mktemp -d)
declare -A port pid
names=(redis)
port[redis]=$(free_port)
# Protected mode off: the load generator connects from 127.0.0.1-8.
redis-server --port "${port[redis]}" --bind 127.0.0.1 --protected-mode no --save '' --appendonly no --logfile /dev/null & pid[redis]=$!
trap 'kill ${pid[@]} 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
i=0
for dir in "$@"; do
    i=$((i + 1)); n="limpet$i"; names+=("$n"); port[$n]=$(free_port)
    printf 'bind = ["127.0.0.1:%s"]\n[metrics]\nenabled = false\n' "${port[$n]}" > "$tmp/$n.toml"
    RUST_LOG=warn "$dir/limpet-broker" --config "$tmp/$n.toml" & pid[$n]=$!
    echo "$n = $dir/limpet-broker"
done
for n in "${names[@]}"; do
    for _ in $(seq 100); do redis-cli -p "${port[$n]}" ping >/dev/null 2>&1 && break; sleep 0.05; done
done
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
for _ in $(seq "$rounds"); do
    for n in "${names[@]}"; do
        read -r u0 s0 < <(ticks "${pid[$n]}")
        out=$("$bench" fanout --broker "127.0.0.1:${port[$n]}" --channels "$ch" --subscribers "$subs" --messages "$msgs")
        read -r u1 s1 < <(ticks "${pid[$n]}")
        python3 - "$n" "$u0" "$s0" "$u1" "$s1" "$hz" "$out" <<'PY'
import re, sys
n, u0, s0, u1, s1, hz, out = sys.argv[1], *map(int, sys.argv[2:7]), sys.argv[7]
g = lambda k: float(re.search(k + r': ([0-9.]+)', out).group(1))
c = max(g('count'), 1); u = (u1 - u0) * 1e6 / hz / c; s = (s1 - s0) * 1e6 / hz / c
print(f"{n}\t{g('per_sec'):9.0f}/s\tp50 {g('p50_us'):6.0f}\tp99 {g('p99_us'):6.0f}\tcpu {u + s:5.2f} ({u:.2f} + {s:.2f})\tlost {g('errors'):.0f}\tload {open('/proc/loadavg').read().split()[0]}")
PY
    done
done

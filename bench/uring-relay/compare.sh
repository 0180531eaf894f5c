#!/usr/bin/env bash
# CPU per echoed round trip (user and sys from /proc, the relay's process
# alone) through: the io_uring relay, the epoll relay, and limpet-proxy
# on one thread; alternated ROUNDS times, 5 s of `limpet-bench echo`
# (100-byte WebSocket messages) each, after a 2 s warm-up.
#
#   cargo build --release -p limpet-proxy -p limpet-bench        # repo root
#   (cd bench/uring-relay && cargo build --release)
#   bench/uring-relay/compare.sh [CONNS=200] [ROUNDS=3]
#
# LIMPET_BIN (default target/release) and RELAY (default
# bench/uring-relay/target/release/uring-relay) say where the binaries are.
set -euo pipefail
cd "$(dirname "$0")/../.."
CONNS=${1:-200}
ROUNDS=${2:-3}
BIN=${LIMPET_BIN:-target/release}
RELAY=${RELAY:-bench/uring-relay/target/release/uring-relay}
for b in "$BIN/limpet-bench" "$BIN/limpet-proxy" "$RELAY"; do
  [ -x "$b" ] || { echo "missing $b (see the build lines at the top of $0)" >&2; exit 1; }
done
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
backend=127.0.0.1:19451
"$BIN/limpet-bench" echo-server --addr $backend >/dev/null 2>&1 &
pids+=($!)
cat > "$dir/proxy.toml" <<TOML
[[listen]]
bind = "127.0.0.1:19452"
[admin]
enabled = false
[limits]
max_connections = 100000
[[pool]]
name = "b"
affinity = "none"
[[pool.backend]]
id = "b0"
address = "$backend"
[[route]]
pool = "b"
TOML
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
measure() { # name port command...
  local name=$1 port=$2
  shift 2
  "$@" >/dev/null 2>&1 &
  local p=$!
  pids+=("$p")
  sleep 0.7
  "$BIN/limpet-bench" echo --target 127.0.0.1:"$port" --conns "$CONNS" --seconds 2 >/dev/null 2>&1
  read -r u0 s0 < <(ticks "$p")
  local out
  out=$("$BIN/limpet-bench" echo --target 127.0.0.1:"$port" --conns "$CONNS" --seconds 5 2>&1 | tail -1)
  read -r u1 s1 < <(ticks "$p")
  kill "$p"
  wait "$p" 2>/dev/null || true
  local n
  n=$(sed 's/.*count: \([0-9]*\),.*/\1/' <<<"$out")
  local hz
  hz=$(getconf CLK_TCK)
  awk -v name="$name" -v c="$CONNS" -v n="$n" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$hz" 'BEGIN {
    k = 1e6 / hz / n
    printf "%-13s %5d conns %8d round trips  user %5.2f  sys %5.2f  user+sys %5.2f us per round trip\n", name, c, n, u * k, s * k, (u + s) * k }'
}
for _ in $(seq 1 "$ROUNDS"); do
  measure io_uring 19453 "$RELAY" uring 127.0.0.1:19453 $backend
  measure epoll 19454 "$RELAY" epoll 127.0.0.1:19454 $backend
  TOKIO_WORKER_THREADS=1 RUST_LOG=warn measure limpet-proxy 19452 "$BIN/limpet-proxy" --config "$dir/proxy.toml"
done

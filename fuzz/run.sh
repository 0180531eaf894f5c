#!/bin/sh
# Runs every fuzz target, one after another, for FUZZ_SECONDS each (one job,
# one worker, niced: the fuzzers share the machine with builds and tests).
# Installs cargo-fuzz when it is missing. Extra arguments go to libFuzzer.
# A crash or hang stops the run; its input is under fuzz/artifacts/<target>/.
set -eu
cd "$(dirname "$0")"
CARGO="${CARGO:-cargo}"
FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
TOOLCHAIN="${FUZZ_TOOLCHAIN:-+nightly}"
if ! "$CARGO" fuzz --version >/dev/null 2>&1; then
    "$CARGO" install cargo-fuzz --locked
fi

# Largest input per target: a request head, a PROXY header, a cookie value,
# a WebSocket message, client WebSocket frames, broker replies, a config file.
max_len() {
    case "$1" in
        broker_resp) echo 4096 ;;
        proxy_head) echo 4096 ;;
        proxy_protocol) echo 1024 ;;
        proxy_cookie) echo 512 ;;
        node_protocol) echo 4096 ;;
        node_ws) echo 4096 ;;
        node_resp) echo 4096 ;;
        config_toml) echo 65536 ;;
        *) echo 4096 ;;
    esac
}

"$CARGO" $TOOLCHAIN fuzz build
for target in $("$CARGO" $TOOLCHAIN fuzz list); do
    echo "== $target: $FUZZ_SECONDS s"
    nice -n 15 "$CARGO" $TOOLCHAIN fuzz run "$target" -- \
        -max_total_time="$FUZZ_SECONDS" -max_len="$(max_len "$target")" \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "$@"
done

#!/usr/bin/env bash
# Installs the third-party programs the test suite talks to, on Debian:
# redis-server (differential tests), Node.js with socket.io from npm
# (socket.io behind limpet-proxy), Chromium with playwright-core from npm
# (the demo page test), and ip and iptables (the network-fault tests build
# namespaces and drop packets). Idempotent and quiet when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."

# The test build takes about 1.3 GB under target/, plus node_modules and
# temporary files while the tests run. Say so plainly rather than let the linker die
# halfway with "No space left on device".
avail_kb=$(df -Pk . | awk 'NR == 2 { print $4 }')
if [ -n "$avail_kb" ] && [ "$avail_kb" -lt 3000000 ]; then
    echo "install-test-deps: warning: only $((avail_kb / 1024)) MiB free here; the test build needs about 2 GiB" >&2
fi

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || missing+=(redis-tools)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)

if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo="sudo"
        else
            echo "install-test-deps: need root (or sudo) to install: ${missing[*]}" >&2
            exit 1
        fi
    fi
    echo "install-test-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts a system redis on 6379 after install; the tests run their own.
    if command -v systemctl >/dev/null 2>&1; then
        $sudo systemctl stop redis-server >/dev/null 2>&1 || true
    fi
fi

# npm packages for the fixtures, into ignored node_modules folders.
for fixtures in tests/socketio tests/browser; do
    if [ ! -d "$fixtures/node_modules" ] || [ "$fixtures/package-lock.json" -nt "$fixtures/node_modules" ]; then
        echo "install-test-deps: npm ci in $fixtures" >&2
        (cd "$fixtures" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
        touch "$fixtures/node_modules"
    fi
done

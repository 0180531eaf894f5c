#!/usr/bin/env bash
# Installs the programs limpet is benchmarked against (Debian packages):
# nginx, HAProxy and wrk. redis-server comes with the test dependencies.
set -euo pipefail
missing=()
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "install-bench-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts the packaged services; the benchmark runs its own.
if command -v systemctl >/dev/null 2>&1; then
    $sudo systemctl stop nginx haproxy >/dev/null 2>&1 || true
fi
pkill -x nginx 2>/dev/null || true
pkill -x haproxy 2>/dev/null || true

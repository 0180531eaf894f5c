#!/usr/bin/env bash
# Installs what `make deb` and the deploy checks need, on Debian, when
# missing: systemd-analyze (package systemd) to verify the units, promtool
# (package prometheus) to check the alert rules, and cargo-deb from
# crates.io to build the packages. Idempotent and quiet when all is there.
# Usage: deploy/install-deps.sh [deb] [rules]   (default: both)
set -euo pipefail
want=("$@")
[ ${#want[@]} -gt 0 ] || want=(deb rules)
missing=()
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
for w in "${want[@]}"; do
    [ "$w" = rules ] && { command -v promtool >/dev/null 2>&1 || missing+=(prometheus); }
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
        sudo="sudo"
    fi
    echo "install-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts the prometheus service after install; the checks only need promtool.
    if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
        $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
fi
for w in "${want[@]}"; do
    if [ "$w" = deb ] && ! cargo deb --version >/dev/null 2>&1; then
        echo "install-deps: cargo install cargo-deb --locked (a few minutes)" >&2
        cargo install cargo-deb --locked --quiet
    fi
done

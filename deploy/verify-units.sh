#!/usr/bin/env bash
# Checks what deploy/ ships for systemd:
#   * each default config in deploy/etc/limpet/ passes its binary's --check;
#   * each unit in deploy/systemd/ passes `systemd-analyze verify` with no
#     message at all (verify exits 0 on an unknown key, so any output fails).
# systemd-analyze needs the ExecStart binaries to exist, so the units are
# verified as temporary copies whose /usr/bin/limpet-* point at BIN_DIR.
# Usage: deploy/verify-units.sh [BIN_DIR]   (default target/debug)
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir=$(realpath "${1:-target/debug}")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
for name in proxy broker node; do
    exe="$bin_dir/limpet-$name"
    [ -x "$exe" ] || { echo "verify-units: $exe missing (cargo build first)" >&2; exit 1; }
    if ! "$exe" --check --config "deploy/etc/limpet/$name.toml"; then
        status=1
    fi
    sed "s#/usr/bin/limpet-#$bin_dir/limpet-#g" "deploy/systemd/limpet-$name.service" \
        > "$tmp/limpet-$name.service"
done
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "verify-units: systemd-analyze not found (apt-get install systemd)" >&2
    exit 1
fi
out=$(systemd-analyze verify "$tmp"/limpet-*.service 2>&1) || status=1
if [ -n "$out" ]; then
    echo "$out" >&2
    status=1
fi
[ "$status" -eq 0 ] && echo "verify-units: 3 configs pass --check, 3 units pass systemd-analyze verify"
exit "$status"

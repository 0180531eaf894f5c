#!/usr/bin/env bash
# Writes target/deb-doc/limpet-<name>/README.md for the Debian packages:
# the README's "## limpet-<name>" section (up to the next "## " heading),
# then its "## Deploying" section when there is one, so the packaged doc
# follows the README instead of a copy that drifts.
set -euo pipefail
cd "$(dirname "$0")/.."
section() { # $1 = heading text after "## "
    awk -v h="## $1" '
        $0 == h { on = 1; print; next }
        on && /^## / { exit }
        on { print }' README.md
}
for name in proxy broker node; do
    out="target/deb-doc/limpet-$name"
    mkdir -p "$out"
    {
        echo "<!-- From Limpet's README.md; the whole file is in the source repository. -->"
        section "limpet-$name"
        section "Deploying"
    } > "$out/README.md"
    [ "$(wc -l < "$out/README.md")" -gt 5 ] || { echo "deb-docs: no '## limpet-$name' section in README.md" >&2; exit 1; }
done

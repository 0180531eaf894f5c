#!/usr/bin/env bash
# Checks the three packages in target/debian/ the way a server would use
# them, without touching this machine's own dpkg database: each .deb is
# installed with `dpkg -i` into a scratch root (its own admin dir; the
# maintainer scripts run outside a chroot with DPKG_ROOT set, and work on
# that root only), then
#   * the files are where the issue wants them (/usr/bin, /etc/limpet as a
#     conffile, /lib/systemd/system, /usr/share/doc);
#   * postinst made the "limpet" group (in the scratch root) and a
#     root:limpet 0640 dpkg-statoverride on the config, which holds secrets;
#   * the installed binary passes --check on the installed config;
#   * the installed unit passes `systemd-analyze verify` with no message
#     (pointed at the installed binary: verify needs ExecStart to exist);
#   * `dpkg --purge` removes every file, the conffile included.
# Usage: deploy/check-debs.sh   (after `make deb`; needs root for dpkg)
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
dpkg_root() {
    dpkg --root="$root" --log="$root/dpkg.log" --force-script-chrootless \
        --force-depends --force-not-root "$@"
}
fail() { echo "check-debs: $*" >&2; exit 1; }
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/lib/dpkg/triggers"
touch "$root/var/lib/dpkg/status"
# postinst adds the "limpet" group with groupadd --prefix, into the scratch root.
mkdir -p "$root/etc"
printf 'root:x:0:\n' > "$root/etc/group"
printf 'root:*::\n' > "$root/etc/gshadow"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
printf 'root:*:1::::::\n' > "$root/etc/shadow"
for name in proxy broker node; do
    pkg="limpet-$name"
    deb="target/debian/${pkg}_${version}-1_${arch}.deb"
    [ -f "$deb" ] || fail "$deb missing (run make deb)"
    contents=$(dpkg-deb -c "$deb" | awk '{print $6}')
    for f in "./usr/bin/$pkg" "./etc/limpet/$name.toml" "./lib/systemd/system/$pkg.service" \
             "./usr/share/doc/$pkg/README.md"; do
        grep -qx -- "$f" <<<"$contents" || fail "$deb lacks $f"
    done
    [ "$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)" = "/etc/limpet/$name.toml" ] \
        || fail "$deb: /etc/limpet/$name.toml is not its conffile"

    log=$(dpkg_root -i "$deb" 2>&1) || fail "dpkg -i $deb failed: $log"
    grep -q '^limpet:' "$root/etc/group" || fail "$pkg: postinst made no limpet group"
    gid=$(awk -F: '$1 == "limpet" { print $3 }' "$root/etc/group")
    # (--list prints the group's name as the running system knows that number.)
    [ "$(dpkg-statoverride --root "$root" --list "/etc/limpet/$name.toml" | awk '{ print $1, $3, $4 }')" \
        = "root 640 /etc/limpet/$name.toml" ] \
        || fail "$pkg: no root:limpet 0640 stat override on /etc/limpet/$name.toml"
    [ "$(stat -c %a:%g "$root/etc/limpet/$name.toml")" = "640:$gid" ] || fail "$pkg: /etc/limpet/$name.toml is not 0640 group limpet"
    "$root/usr/bin/$pkg" --check --config "$root/etc/limpet/$name.toml" \
        || fail "$pkg: installed config fails --check"
    sed "s#/usr/bin/$pkg#$root/usr/bin/$pkg#g" "$root/lib/systemd/system/$pkg.service" \
        > "$root/$pkg.service"
    out=$(systemd-analyze verify "$root/$pkg.service" 2>&1) || fail "$pkg.service: $out"
    [ -z "$out" ] || fail "$pkg.service: $out"
    log=$(dpkg_root --purge "$pkg" 2>&1) || fail "dpkg --purge $pkg failed: $log"
    [ -z "$(dpkg-statoverride --root "$root" --list "/etc/limpet/$name.toml")" ] \
        || fail "$pkg: stat override left after purge"
    for f in usr/bin/$pkg etc/limpet/$name.toml lib/systemd/system/$pkg.service; do
        [ ! -e "$root/$f" ] || fail "$pkg: /$f left after purge"
    done
    echo "check-debs: $deb: installs, --check ok, unit verifies, purges clean"
done

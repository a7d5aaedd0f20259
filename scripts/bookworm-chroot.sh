#!/usr/bin/env bash
# Builds (once) the Debian bookworm chroot the package install test installs the .deb into, and
# caches it as a tarball so later runs (and CI, which caches the directory) pay only the unpack.
#
#   scripts/bookworm-chroot.sh [TARBALL]     default: /var/cache/lancache-test/chroot.tar
#
# minbase plus `systemd`: the package depends on systemd (its units, systemd-sysusers for the
# `lancache` user, deb-systemd-helper for the enable symlinks), and installing it here lets the
# test run dpkg offline. Needs root and a reachable Debian mirror (MIRROR to override).
set -euo pipefail
tarball=${1:-/var/cache/lancache-test/chroot.tar}
mirror=${MIRROR:-http://deb.debian.org/debian}
if [ -s "$tarball" ]; then
  exit 0
fi
command -v debootstrap >/dev/null || { echo "bookworm-chroot: debootstrap is not installed (scripts/test-deps.sh)" >&2; exit 1; }
mkdir -p "$(dirname "$tarball")"
work=$(mktemp -d /var/tmp/lancache-chroot.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "bookworm-chroot: debootstrap --variant=minbase bookworm (once; cached in $tarball)" >&2
debootstrap --variant=minbase --include=systemd bookworm "$work/root" "$mirror" >"$work/log" 2>&1 \
  || { tail -30 "$work/log" >&2; exit 1; }
# apt's package lists and .debs are not needed by the test: keep the cache small.
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
tar -C "$work/root" -cf "$tarball.tmp" .
mv "$tarball.tmp" "$tarball"
echo "bookworm-chroot: $(du -h "$tarball" | cut -f1) cached in $tarball" >&2

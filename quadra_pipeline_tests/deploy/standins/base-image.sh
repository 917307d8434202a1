#!/usr/bin/env bash
# Stand-in for the public `debian:bookworm-slim` where no registry is reachable: the same thing
# Debian's own image is, a minbase debootstrap of bookworm with apt lists, docs, man pages and
# locales removed, imported and tagged with the public name. Skipped when the image exists.
# Usage: base-image.sh [NAME:TAG]   (needs root, debootstrap and docker; DEBIAN_MIRROR and
# DEBIAN_SECURITY_MIRROR name mirrors of Debian's archive and of its security archive)
set -euo pipefail
name="${1:-debian:bookworm-slim}"
if docker image inspect "$name" >/dev/null 2>&1; then
  echo "standins: $name exists"
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v debootstrap >/dev/null 2>&1; then
  echo "standins: the stand-in for $name is made with debootstrap, as root: run as root with Debian's" \
    "debootstrap installed (apt-get install debootstrap; .ci/docker-up installs it)" >&2
  exit 1
fi
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security_mirror="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
rootfs="$(mktemp -d /tmp/quadra-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
echo "standins: debootstrap bookworm from $mirror (stand-in for $name)"
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security_mirror bookworm-security main
SOURCES
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
tar -C "$rootfs" --numeric-owner -c . | docker import -c 'CMD ["bash"]' - "$name" >/dev/null
echo "standins: $name imported ($(docker image inspect -f '{{.Size}}' "$name" | awk '{printf "%.0f MB", $1/1e6}'))"

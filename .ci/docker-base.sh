#!/usr/bin/env bash
# Makes the base image the Dockerfile's runtime stage starts FROM (`debian:bookworm-slim`) without
# an image registry: a minimal Debian bookworm root filesystem built by debootstrap from Debian's
# packages, then `docker import`ed under that name. Cached: does nothing when the image exists
# (whether imported here earlier or pulled from a registry on a machine that has one).
# The runtime stage needs ca-certificates; it is included here, so the Dockerfile skips its
# `apt-get install` (no network to Debian is needed inside `docker build`).
#   .ci/docker-base.sh            # make it if missing
#   .ci/docker-base.sh --force    # make it again
set -euo pipefail

IMAGE="${MESHTRUST_BASE_IMAGE:-debian:bookworm-slim}"
# debootstrap's own default mirror unless DEBIAN_MIRROR names another.
MIRROR=(${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"})
INCLUDE=ca-certificates

if [ "${1:-}" != "--force" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "docker-base: $IMAGE present, kept"
  exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq debootstrap >/dev/null
fi

root="$(mktemp -d /var/tmp/meshtrust-rootfs.XXXXXX)"
trap 'rm -rf "$root"' EXIT

echo "docker-base: debootstrap --variant=minbase bookworm (+ $INCLUDE) ${MIRROR[*]}"
debootstrap --variant=minbase --include="$INCLUDE" bookworm "$root" "${MIRROR[@]}" >"$root.log" 2>&1 || {
  tail -n 30 "$root.log"; rm -f "$root.log"; exit 1
}
rm -f "$root.log"

# Slim it the way debian:*-slim is: no package caches, lists, docs, man pages or locales.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin \
  "$root"/var/lib/apt/lists/* "$root"/var/log/* \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
  "$root"/usr/share/locale/*
# No host identity leaks into the image.
: >"$root/etc/hostname"
rm -f "$root/etc/resolv.conf"

tar --numeric-owner --xattrs -C "$root" -c . \
  | docker import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["bash"]' \
      --change 'LABEL org.meshtrust.base="debootstrap --variant=minbase bookworm"' \
      - "$IMAGE" >/dev/null
echo "docker-base: imported $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE") bytes)"

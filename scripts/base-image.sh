#!/usr/bin/env bash
# Builds the local Debian base image (no container registry can be reached here): debootstrap a
# minbase bookworm into a folder, import it. Cached: skipped when the image already exists, and the
# root filesystem tarball is kept in $CACHE_DIR so a rebuilt engine imports it again in seconds.
set -euo pipefail

IMAGE=${BASE_IMAGE:-letta-opencode-base:bookworm}
CACHE_DIR=${CACHE_DIR:-/var/cache/letta-opencode-plugin}
TARBALL="$CACHE_DIR/bookworm-minbase.tar"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "base image: $IMAGE present"
  exit 0
fi

mkdir -p "$CACHE_DIR"
if [ ! -s "$TARBALL" ]; then
  if ! command -v debootstrap >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq debootstrap >/dev/null
  fi
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  echo "base image: debootstrap bookworm (minbase) into $root"
  debootstrap --variant=minbase bookworm "$root" >/dev/null
  tar -C "$root" -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
fi
echo "base image: importing $TARBALL as $IMAGE"
docker import "$TARBALL" "$IMAGE" >/dev/null
echo "base image: $IMAGE ready"

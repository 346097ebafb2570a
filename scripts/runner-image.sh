#!/usr/bin/env bash
# Builds the OpenCode runner image (runner/Dockerfile) from the locally made base image: no registry
# can be reached here, and the base has no npm, so the OpenCode binary's npm package is fetched on
# the host with npm (its default registry) and given to the build through runner/vendor/.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${RUNNER_IMAGE:-letta-opencode-runner:latest}
BASE=${BASE_IMAGE:-letta-opencode-base:bookworm}
VERSION=$(sed -nE 's/^ARG OPENCODE_VERSION=(.+)$/\1/p' runner/Dockerfile)
CACHE_DIR=${CACHE_DIR:-/var/cache/letta-opencode-plugin}
TGZ="opencode-linux-x64-$VERSION.tgz"

mkdir -p "$CACHE_DIR"
if [ ! -s "$CACHE_DIR/$TGZ" ]; then
  echo "runner image: fetching opencode-linux-x64@$VERSION"
  (cd "$CACHE_DIR" && npm pack --silent "opencode-linux-x64@$VERSION" >/dev/null)
fi
# kept in runner/vendor (git-ignored): `docker compose build` with RUNNER_BASE_IMAGE set to the same
# base then finds every layer in the build cache
cp "$CACHE_DIR/$TGZ" runner/vendor/
docker build -q --build-arg BASE_IMAGE="$BASE" -t "$IMAGE" runner >/dev/null
echo "runner image: $IMAGE ready (OpenCode $VERSION)"

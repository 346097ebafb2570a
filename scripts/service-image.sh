#!/usr/bin/env bash
# Builds the service image (Dockerfile) on the local Node stand-in (scripts/node-image.sh). CI runs it
# before the tests, so the stack test's `compose up --build` finds every layer in the build cache
# instead of compiling while other tests run.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${SERVICE_IMAGE:-letta-opencode-plugin:latest}
NODE=${NODE_IMAGE:-letta-opencode-node:22}
docker build -q --build-arg NODE_IMAGE="$NODE" -t "$IMAGE" . >/dev/null
echo "service image: $IMAGE ready (on $NODE)"

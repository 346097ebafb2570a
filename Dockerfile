# syntax=docker/dockerfile:1
# letta-opencode-plugin: multi-stage build, small non-root runtime.
ARG NODE_IMAGE=node:22-bookworm-slim

FROM ${NODE_IMAGE} AS build
# toolchain for better-sqlite3 when no prebuilt binary can be fetched
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY app.ts server.ts ./
COPY plugins ./plugins
COPY routes ./routes
COPY services ./services
COPY ui ./ui
COPY scripts/build-ui.mjs ./scripts/
RUN npm run build && npm prune --omit=dev

FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production \
    MCP_HOST=0.0.0.0 \
    MCP_PORT=3500 \
    DATA_DIR=/data
RUN groupadd --system letta && useradd --system --gid letta --home-dir /app --shell /usr/sbin/nologin letta \
 && mkdir -p /data && chown letta:letta /data
WORKDIR /app
COPY --from=build --chown=root:root /app/package.json ./
COPY --from=build --chown=root:root /app/node_modules ./node_modules
COPY --from=build --chown=root:root /app/dist ./dist
USER letta
VOLUME ["/data"]
EXPOSE 3500
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.MCP_PORT||3500)+'/health').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
# exec form: node is PID 1 and handles SIGTERM/SIGINT itself (close-with-grace)
ENTRYPOINT ["node", "dist/server.js"]

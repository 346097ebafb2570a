#!/usr/bin/env bash
# Makes sure a Docker engine answers on the local socket: installs Debian's docker.io when dockerd
# is missing, starts dockerd in the background when the socket does not answer, and waits for it.
set -euo pipefail

SOCK=${DOCKER_SOCK:-/var/run/docker.sock}

ping_engine() {
  [ -S "$SOCK" ] && curl -fsS --max-time 2 --unix-socket "$SOCK" http://localhost/_ping >/dev/null 2>&1
}

if ping_engine; then
  echo "docker engine: already running on $SOCK"
  exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
  echo "docker engine: installing Debian's docker.io"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
fi

echo "docker engine: starting dockerd"
mkdir -p /var/log
# setsid: the engine outlives this script (and the shell that ran it)
setsid dockerd >/var/log/dockerd.log 2>&1 < /dev/null &

for _ in $(seq 1 120); do
  if ping_engine; then
    echo "docker engine: ready ($(curl -fsS --unix-socket "$SOCK" http://localhost/version | sed -E 's/.*"Version":"([^"]+)".*"ApiVersion":"([^"]+)".*/\1, API \2/'))"
    exit 0
  fi
  sleep 0.5
done
echo "docker engine: dockerd did not answer on $SOCK within 60 s; last lines of /var/log/dockerd.log:" >&2
tail -n 20 /var/log/dockerd.log >&2 || true
exit 1

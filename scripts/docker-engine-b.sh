#!/usr/bin/env bash
# A second Docker engine beside the first (engine B, for test/stack.test.ts and the cluster tests),
# as ../DESIGN §5 found works on these machines: its own Linux bridge with its own subnet, its own
# data root, exec root, pid file, socket and cgroup parent, and iptables / IP masquerading off, so it
# never touches the first engine's bridge, rules or state. Never `--bridge=none` here: in the same
# network namespace that deletes the first engine's docker0. Then the images the tests need are copied
# into it (`docker save | docker load`; images are per engine). Safe to run again: what runs is skipped.
set -euo pipefail

SOCK=${ENGINE_B_SOCK:-/run/docker-b.sock}
BRIDGE=${ENGINE_B_BRIDGE:-br-lopb}
SUBNET=${ENGINE_B_SUBNET:-10.213.0} # /24 of the bridge (.1 is the bridge's address)
POOL=${ENGINE_B_POOL:-10.214.0.0/16} # networks engine B makes itself (e.g. a swarm's docker_gwbridge)
DATA=${ENGINE_B_DATA_ROOT:-/var/lib/docker-b}
EXEC=${ENGINE_B_EXEC_ROOT:-/run/docker-b}
PIDFILE=${ENGINE_B_PIDFILE:-/run/docker-b.pid}
LOG=${ENGINE_B_LOG:-/var/log/dockerd-b.log}
IMAGES=${ENGINE_B_IMAGES:-letta-opencode-plugin:latest letta-opencode-test-agent:latest}

ping_b() {
  [ -S "$SOCK" ] && curl -fsS --max-time 2 --unix-socket "$SOCK" http://localhost/_ping >/dev/null 2>&1
}

if ping_b; then
  echo "engine B: already running on $SOCK"
else
  command -v dockerd >/dev/null 2>&1 || { echo "engine B: dockerd is missing (run scripts/docker-engine.sh first)" >&2; exit 1; }
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  case "$(ip -4 addr show dev "$BRIDGE")" in
    *"inet $SUBNET.1/24"*) ;;
    *) ip addr add "$SUBNET.1/24" dev "$BRIDGE" ;;
  esac
  ip link set "$BRIDGE" up
  # a stale pid file of a dead engine B would stop dockerd from starting
  if [ -f "$PIDFILE" ] && ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then rm -f "$PIDFILE"; fi
  # Always start from an empty network store: an engine B restarted on the store of an earlier run
  # (one that had been a swarm) deleted the FIRST engine's docker0 at start-up (seen here). Engine B
  # keeps no network worth keeping: its default bridge is made again from the flags below.
  rm -f "$DATA/network/files/local-kv.db"
  mkdir -p "$DATA" "$EXEC" "$(dirname "$LOG")"
  echo "engine B: starting dockerd on $SOCK (bridge $BRIDGE, $SUBNET.0/24)"
  # setsid: the engine outlives this script (and the shell that ran it). DOCKER_SERVICE_PREFER_OFFLINE_IMAGE:
  # a swarm task whose image is here starts from it without asking a registry first (none is reachable)
  DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 setsid dockerd \
    --host "unix://$SOCK" \
    --data-root "$DATA" \
    --exec-root "$EXEC" \
    --pidfile "$PIDFILE" \
    --bridge "$BRIDGE" \
    --iptables=false \
    --ip-masq=false \
    --default-address-pool "base=$POOL,size=24" \
    --cgroup-parent docker-b \
    >>"$LOG" 2>&1 </dev/null &
  ready=
  for _ in $(seq 1 120); do
    if ping_b; then ready=1; break; fi
    sleep 0.5
  done
  if [ -z "$ready" ]; then
    echo "engine B: dockerd did not answer on $SOCK within 60 s; last lines of $LOG:" >&2
    tail -n 20 "$LOG" >&2 || true
    exit 1
  fi
  echo "engine B: ready"
fi

for image in $IMAGES; do
  id_a=$(docker image inspect --format '{{.Id}}' "$image")
  id_b=$(DOCKER_HOST="unix://$SOCK" docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
  if [ "$id_a" = "$id_b" ]; then
    echo "engine B: $image already loaded"
  else
    docker save "$image" | DOCKER_HOST="unix://$SOCK" docker load -q >/dev/null
    echo "engine B: $image loaded"
  fi
done

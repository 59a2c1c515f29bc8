#!/usr/bin/env bash
# node-agent: duration of one attachment scan with N allocations on the node
# (each a real netns whose eth0 holds the address), and the agent's RSS while
# it scans every second and serves /metrics.
# Targets (issue 5): one scan with 500 attachments < 1 s; RSS < 30 MB.
#
# usage: hack/bench/node-agent.sh [N=500] [SECONDS=20]   (root; etcd-server, openvswitch-switch, iproute2, curl)
set -euo pipefail
N=${1:-500}
SECS=${2:-20}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
D=$(mktemp -d /tmp/leengine-node-agent-bench.XXXXXX)
PFX="nab$$-"
NODE=bench-node
source "$ROOT/hack/lib.sh"
MP=$(free_port)
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$D/ovsdb.pid" ] && kill "$(cat "$D/ovsdb.pid")" 2>/dev/null || true
  for ns in $(ip netns list | awk '{print $1}' | grep "^$PFX" || true); do ip netns del "$ns"; done
  rm -rf "$D"
}
trap cleanup EXIT

echo "== building (release)"
(cd "$ROOT" && cargo build -q --release -p leengine-node-agent --bin leengine-node-agent --example bench-setup)
AGENT="$ROOT/target/release/leengine-node-agent"
SETUP="$ROOT/target/release/examples/bench-setup"

start_etcd "$D/etcd" bench
PIDS+=("$ETCD_PID")
ETCD=$ETCD_URL
echo "== etcd on $ETCD, ovsdb-server"
ovsdb-tool create "$D/conf.db" /usr/share/openvswitch/vswitch.ovsschema
ovsdb-server "$D/conf.db" --remote="punix:$D/db.sock" --unixctl="$D/ovsdb.ctl" \
  --pidfile="$D/ovsdb.pid" --detach --log-file="$D/ovsdb.log"
ovs-vsctl --db="unix:$D/db.sock" --no-wait init

echo "== $N allocations in etcd + $N netns holding them"
"$SETUP" "$ETCD" "$NODE" "$N" "$PFX" >"$D/allocs"
while read -r ns cidr; do
  ip netns add "$ns"
  ip -n "$ns" link add eth0 type veth peer name peer0
  ip -n "$ns" addr add "$cidr" dev eth0
  ip -n "$ns" link set eth0 up
done <"$D/allocs"

ARGS=(--node "$NODE" --etcd-endpoints "$ETCD" --ovsdb "unix:$D/db.sock" --bridge brbench
      --datapath-type netdev --reclaim-grace 1h)

echo "== one scan (--once), 5 runs"
for i in 1 2 3 4 5; do
  "$AGENT" "${ARGS[@]}" --once --metrics-listen off 2>/dev/null |
    python3 -c 'import json,sys; s=json.load(sys.stdin); print("scan %d: allocations=%d alive=%d dead=%d unknown=%d duration=%.1f ms" % ('"$i"', s["allocations"], s["alive"], s["dead"], s["unknown"], s["durationMs"]))'
done

echo "== daemon: scan every 1s + /metrics every 1s for ${SECS}s"
"$AGENT" "${ARGS[@]}" --scan-interval 1s --metrics-listen "127.0.0.1:$MP" 2>"$D/agent.log" &
APID=$!; PIDS+=($APID)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$MP/healthz" >/dev/null && break; sleep 0.1; done
for _ in $(seq "$SECS"); do curl -sf -o /dev/null "http://127.0.0.1:$MP/metrics"; sleep 1; done
M=$(curl -sf "http://127.0.0.1:$MP/metrics")
echo "$M" | grep -E '^leengine_node_(scans_total|scan_duration_seconds|attachments)'
T0=$(date +%s%N); curl -sf -o /dev/null "http://127.0.0.1:$MP/metrics"; T1=$(date +%s%N)
echo "one /metrics scrape with $N pods: $(( (T1 - T0) / 1000000 )) ms"
grep -E '^(VmRSS|VmHWM)' "/proc/$APID/status"

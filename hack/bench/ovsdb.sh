#!/usr/bin/env bash
# OVSDB client latency: the port add/del a CNI ADD/DEL does, through leengine-ovsdb
# (fresh connection per call, as a plugin process) versus `ovs-vsctl add-port/del-port`
# (which also waits for ovs-vswitchd), same OVS, same veths, same run.
#
# usage: hack/bench/ovsdb.sh [N=100]     (root; needs openvswitch-switch, iproute2)
set -euo pipefail
N=${1:-100}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
D=$(mktemp -d /tmp/leengine-ovsdb-bench.XXXXXX)
NS=ovsbench$$
BR=brbench
DB="unix:$D/db.sock"

cleanup() {
  for p in "$D/vs.pid" "$D/ovsdb.pid"; do
    [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null || true
  done
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$D"
}
trap cleanup EXIT

echo "== building the benchmark example"
(cd "$ROOT" && cargo build -q -p leengine-ovsdb --release --example ovsdb_bench)
BIN="$ROOT/target/release/examples/ovsdb_bench"

echo "== starting ovsdb-server + ovs-vswitchd (userspace datapath) in netns $NS"
ip netns add "$NS"
ovsdb-tool create "$D/conf.db" /usr/share/openvswitch/vswitch.ovsschema
ovsdb-server "$D/conf.db" --remote="punix:$D/db.sock" --unixctl="$D/ovsdb.ctl" \
  --pidfile="$D/ovsdb.pid" --detach --log-file="$D/ovsdb.log"
ovs-vsctl --db="$DB" --no-wait init
ip netns exec "$NS" ovs-vswitchd "$DB" --disable-system --unixctl="$D/vs.ctl" \
  --pidfile="$D/vs.pid" --detach --log-file="$D/vs.log"
ovs-vsctl --db="$DB" add-br "$BR" -- set bridge "$BR" datapath_type=netdev

echo "== creating $N veth pairs"
VETHS=()
for i in $(seq 1 "$N"); do
  ip netns exec "$NS" ip link add "bv$i" type veth peer name "bp$i"
  ip netns exec "$NS" ip link set "bv$i" up
  ip netns exec "$NS" ip link set "bp$i" up
  VETHS+=("bv$i")
done

echo "== leengine-ovsdb"
"$BIN" "$DB" "$BR" "${VETHS[@]}"

pct() { # label file: p50/p90/p99 of nanosecond samples
  sort -n "$2" | awk -v l="$1" '{a[NR]=$1} END {
    i50=int((NR-1)*0.5+0.5)+1; i90=int((NR-1)*0.9+0.5)+1; i99=int((NR-1)*0.99+0.5)+1;
    printf "%-28s n=%-4d p50=%.2fms p90=%.2fms p99=%.2fms\n", l, NR, a[i50]/1e6, a[i90]/1e6, a[i99]/1e6 }'
}

echo "== reference: ovs-vsctl"
ADD="$D/vsctl-add"; DEL="$D/vsctl-del"
for v in "${VETHS[@]}"; do
  t0=$(date +%s%N)
  ovs-vsctl --db="$DB" add-port "$BR" "$v" tag=100 -- set port "$v" external_ids:bench="$v"
  t1=$(date +%s%N)
  ovs-vsctl --db="$DB" del-port "$BR" "$v"
  t2=$(date +%s%N)
  echo $((t1 - t0)) >>"$ADD"
  echo $((t2 - t1)) >>"$DEL"
done
pct "ovs-vsctl add-port (waits)" "$ADD"
pct "ovs-vsctl del-port" "$DEL"

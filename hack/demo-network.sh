#!/usr/bin/env bash
# The network half of LeEngine-rs on its own (hack/demo.sh is the whole
# platform), on one machine:
#   etcd + Open vSwitch, a 2-node virtual data centre (each node an OVS bridge
#   bonded to a top-of-rack bridge), an external "database" host in the pool's
#   VLAN, an IP pool created with cnictl, pods attached by the CNI plugin on
#   both nodes exactly as kubelet would call it, traffic across nodes and to the
#   database, then teardown with every IP back in the pool.
# Needs root. Installs its own dependencies. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

say()  { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run()  { printf '$ %s\n' "$*"; "$@"; }

[ "$(id -u)" -eq 0 ] || { echo "hack/demo.sh: run as root (network namespaces, Open vSwitch)" >&2; exit 1; }

say "Installing dependencies and building"
bash hack/deps.sh
cargo build -q -p leengine-cni -p cnictl -p leengine-node-agent
BIN="$ROOT/target/debug"

WORK=$(mktemp -d /tmp/leengine-demo.XXXXXX)
HOSTNS="ledemo-host-$$"
PODS=()
cleanup() {
  set +e
  for ns in "${PODS[@]}" "ledemo-db-$$"; do ip netns del "$ns" 2>/dev/null; done
  for p in "$WORK"/*.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done
  ip netns del "$HOSTNS" 2>/dev/null
  sleep 0.2
  rm -rf "$WORK"
}
trap cleanup EXIT

source hack/lib.sh

say "Starting etcd (the Cell's etcd)"
start_etcd "$WORK/etcd" demo
echo "$ETCD_PID" >"$WORK/etcd.pid"
EP=$ETCD_PORT
echo "etcd at $ETCD_URL"
export LEENGINE_ETCD_ENDPOINTS="http://127.0.0.1:$EP" LEENGINE_ETCD_PREFIX=/leengine

say "Starting Open vSwitch (userspace datapath) in the data centre's host namespace"
ip netns add "$HOSTNS"
ip netns exec "$HOSTNS" ip link set lo up
ovsdb-tool create "$WORK/conf.db" /usr/share/openvswitch/vswitch.ovsschema
ovsdb-server "$WORK/conf.db" --remote="punix:$WORK/db.sock" --unixctl="$WORK/ovsdb.ctl" \
  --pidfile="$WORK/ovsdb.pid" --log-file="$WORK/ovsdb.log" --detach 2>/dev/null
VSCTL="ovs-vsctl --db=unix:$WORK/db.sock --timeout=20"
$VSCTL --no-wait init
ip netns exec "$HOSTNS" ovs-vswitchd "unix:$WORK/db.sock" --disable-system \
  --unixctl="$WORK/vswitchd.ctl" --pidfile="$WORK/vswitchd.pid" --log-file="$WORK/vswitchd.log" --detach 2>/dev/null
H() { ip netns exec "$HOSTNS" "$@"; }

say "Cabling 2 compute nodes to a top-of-rack switch (2 x 10G links each, VLAN 100 trunked on the ToR)"
$VSCTL add-br tor -- set bridge tor datapath_type=netdev
for n in 1 2; do
  for m in a b; do
    H ip link add "n${n}eth$m" type veth peer name "tor${n}$m"
    H ip link set "n${n}eth$m" up; H ip link set "tor${n}$m" up
    $VSCTL add-port tor "tor${n}$m" trunks=100
  done
done

say "Network ops: add the Cell's IP range (a /22 planned with the network team, VLAN 100)"
run "$BIN/cnictl" pool add demo-pool --cidr 10.20.0.0/22 --gateway 10.20.0.1 --vlan 100 --exclude 10.20.3.250
run "$BIN/cnictl" pool list

say "Node delivery: the node-agent starts on each node, builds its OVS bridge and bonds the uplinks, trunking every pool's VLAN"
# One OVS database hosts both "nodes" here, so the bonds need distinct names.
# Short scan period and reclaim grace so the demo can show a reclaim; the
# defaults are 10 s and 15 min.
for n in 1 2; do
  "$BIN/leengine-node-agent" --node "node$n" --etcd-endpoints "http://127.0.0.1:$EP" \
    --ovsdb "unix:$WORK/db.sock" --bridge "node$n" --datapath-type netdev \
    --bond "bond1-n$n" --uplinks "n${n}etha,n${n}ethb" --bond-mode active-backup \
    --scan-interval 1s --reclaim on --reclaim-grace 3s \
    --metrics-listen off --swap-guard off --log-format text >"$WORK/agent-node$n.log" 2>&1 &
  echo $! >"$WORK/agent-node$n.pid"
done
for n in 1 2; do
  for _ in $(seq 100); do grep -q "bond converged" "$WORK/agent-node$n.log" && break; sleep 0.1; done
  echo "node$n: $(grep -m1 'bond converged' "$WORK/agent-node$n.log" | sed 's/.*bootstrap: //')"
done
run $VSCTL show | sed -n '1,40p'

say "An external database host at 10.20.3.250 in VLAN 100 (outside the cluster, same L2)"
DB="ledemo-db-$$"
ip netns add "$DB"; ip netns exec "$DB" ip link set lo up
H ip link add dbport type veth peer name eth0 netns "$DB"
H ip link set dbport up
$VSCTL add-port tor dbport tag=100
ip netns exec "$DB" ip addr add 10.20.3.250/22 dev eth0
ip netns exec "$DB" ip link set eth0 up

# ovs-vswitchd runs in $HOSTNS (the nodes' host side); the plugin runs here,
# where etcd is reachable, and puts the host veth ends there (hostNetns).
CONF=$(cat <<JSON
{"cniVersion":"1.0.0","name":"leengine","type":"leengine","bridge":"BRIDGE",
 "ovsdb":"unix:$WORK/db.sock","hostNetns":"/run/netns/$HOSTNS",
 "etcd":{"endpoints":["http://127.0.0.1:$EP"],"prefix":"/leengine"},
 "node":"NODE","pools":["demo-pool"],"mtu":1500,"garp":{"count":3,"intervalMs":50}}
JSON
)

cni() { # cni ADD|DEL node container-id netns pod-name
  local cmd=$1 node=$2 cid=$3 ns=$4 pod=$5
  printf '%s' "$CONF" | sed "s/BRIDGE/node$node/; s/NODE/node$node/" | \
    env CNI_COMMAND="$cmd" CNI_CONTAINERID="$cid" CNI_NETNS="/run/netns/$ns" CNI_IFNAME=eth0 \
      CNI_PATH="$BIN" CNI_ARGS="K8S_POD_NAMESPACE=demo;K8S_POD_NAME=$pod" "$BIN/leengine-cni"
}

say "kubelet creates 2 pods on node1 and 2 on node2 (CNI ADD, as kubelet execs it)"
declare -A IPS
for spec in 1:web-1 1:web-2 2:web-3 2:web-4; do
  node=${spec%%:*}; pod=${spec##*:}; ns="ledemo-$pod-$$"
  ip netns add "$ns"; ip netns exec "$ns" ip link set lo up; PODS+=("$ns")
  out=$(cni ADD "$node" "cid-$pod" "$ns" "$pod")
  ip=$(printf '%s' "$out" | jq -r '.ips[0].address')
  IPS[$pod]=${ip%/*}
  printf 'node%s  %-6s eth0 %s  (ovs port %s)\n' "$node" "$pod" "$ip" "$(printf '%s' "$out" | jq -r '.interfaces[0].name')"
done
run "$BIN/cnictl" ip list
run "$BIN/cnictl" pool list
run $VSCTL --columns=name,tag,external_ids list port | grep -B1 -A1 'tag *: 100' | head -20

say "Traffic: pod -> pod on the same node, across nodes (bond + ToR), and to the database host"
p() { ip netns exec "ledemo-$1-$$" ping -c 2 -W 2 "$2" >/dev/null && echo "ok   $1 -> $2" || { echo "FAIL $1 -> $2"; exit 1; }; }
p web-1 "${IPS[web-2]}"
p web-1 "${IPS[web-3]}"
p web-4 "${IPS[web-2]}"
p web-3 10.20.3.250
ip netns exec "$DB" ping -c 2 -W 2 "${IPS[web-1]}" >/dev/null && echo "ok   db -> ${IPS[web-1]}"

say "node1 loses the active link of its bond; traffic keeps flowing over the other one"
active=$(ovs-appctl --target="$WORK/vswitchd.ctl" bond/show bond1-n1 | sed -n 's/^active member mac:.*(\(.*\))$/\1/p')
echo "active member of bond1-n1: $active -> pulling its cable"
H ip link set "$active" down
for _ in $(seq 50); do
  now=$(ovs-appctl --target="$WORK/vswitchd.ctl" bond/show bond1-n1 | sed -n 's/^active member mac:.*(\(.*\))$/\1/p')
  [ -n "$now" ] && [ "$now" != "$active" ] && break; sleep 0.1
done
echo "active member of bond1-n1 now: $now"
p web-1 "${IPS[web-4]}"
H ip link set "$active" up

say "A container runtime crashes on node2: web-4's sandbox is gone, CNI DEL never ran"
ip netns del "ledemo-web-4-$$"
sleep 2 # a scan or two of node2's agent
echo "network ops look for leaks (allocated in etcd, alive nowhere; grace 0s for the demo):"
printf '$ cnictl check --no-apiserver --grace 0s\n'
"$BIN/cnictl" check --no-apiserver --grace 0s || echo "(exit $?: leaks found, as an alert would see it; 'cnictl release --from-report' would free them)"
leaked=${IPS[web-4]}
echo "node2's agent reclaims $leaked on its own once it has been dead for the grace period on two consecutive scans:"
for _ in $(seq 150); do "$BIN/cnictl" ip show "$leaked" >/dev/null 2>&1 || break; sleep 0.2; done
grep -m1 'reclaimed leaked IP' "$WORK/agent-node2.log" | sed 's/^/    /'
run "$BIN/cnictl" ip list

say "kubelet deletes the remaining pods (CNI DEL); the IPs go back to the pool"
for spec in 1:web-1 1:web-2 2:web-3 2:web-4; do
  node=${spec%%:*}; pod=${spec##*:}
  cni DEL "$node" "cid-$pod" "ledemo-$pod-$$" "$pod" && echo "CNI DEL $pod: ok"
done
run "$BIN/cnictl" ip list
run "$BIN/cnictl" pool list
left=$($VSCTL --columns=name --bare find port tag=100 | grep -v '^dbport$' | grep -c . || true)
echo "OVS access ports left in VLAN 100 besides the database host: $left"
[ "$left" -eq 0 ]

say "Done: every pod got a pool address in VLAN 100, reached its peers and the database, and left nothing behind"

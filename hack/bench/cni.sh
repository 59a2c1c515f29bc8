#!/usr/bin/env bash
# CNI plugin latency: leengine (real etcd + OVS userspace datapath) against the
# reference bridge + host-local plugins from /usr/lib/cni, same harness, same
# run, every call exec'd like libcni (env + config on stdin, one process each).
#   1. sequential: ADD of PODS pods, then DEL of each; p50/p90/p99 and ratios
#   2. CONCURRENT simultaneous ADDs on one node: wall time, p50, p99, ratios
# A third plugin, ovs-cni + host-local on the same OVS bridge, joins when the
# Go module proxy serves github.com/k8snetworkplumbingwg/ovs-cni (built once
# into $OVS_CNI_CACHE); otherwise the go command's answer is printed.
# Targets (issue 19): ADD p50 <= 0.7x and p99 <= 1.0x bridge + host-local,
# sequential and concurrent; DEL p50 <= 0.7x; ADD p50 <= 0.5x ovs-cni's.
#
# usage: hack/bench/cni.sh [PODS=100] [CONCURRENT=30]   (root; hack/deps.sh installed)
set -euo pipefail
PODS=${1:-100}
CONCURRENT=${2:-30}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OVS_CNI_CACHE=${OVS_CNI_CACHE:-/var/cache/leengine/ovs-cni}
cd "$ROOT"
if [ ! -x "$OVS_CNI_CACHE/plugin" ]; then
  echo "== ovs-cni: go install github.com/k8snetworkplumbingwg/ovs-cni/cmd/plugin@latest"
  mkdir -p "$OVS_CNI_CACHE"
  if ! GOBIN="$OVS_CNI_CACHE" go install github.com/k8snetworkplumbingwg/ovs-cni/cmd/plugin@latest 2>&1; then
    echo "== ovs-cni: not available from the Go module proxy (above); benchmarking without it"
  fi
fi
if [ -x "$OVS_CNI_CACHE/plugin" ]; then export OVS_CNI="$OVS_CNI_CACHE/plugin"; fi
echo "== building (release)"
cargo build -q --release -p leengine-cni --bin leengine-cni --example cni_bench -p leengine-node-agent --bin leengine-node-agent
echo "== running: $PODS pods sequential, $CONCURRENT concurrent"
exec "$ROOT/target/release/examples/cni_bench" "$PODS" "$CONCURRENT"

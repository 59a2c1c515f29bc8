#!/usr/bin/env bash
# CNI plugin latency: leengine (real etcd + OVS userspace datapath) against the
# reference bridge + host-local plugins from /usr/lib/cni, same harness, same
# run, every call exec'd like libcni (env + config on stdin, one process each).
#   1. sequential: ADD of PODS pods, then DEL of each; p50/p90/p99 and ratios
#   2. CONCURRENT simultaneous ADDs on one node: wall time and p99
# Targets (issue 4): ADD and DEL p50 <= 0.7x the reference, p99 <= 1.0x.
#
# usage: hack/bench/cni.sh [PODS=100] [CONCURRENT=30]   (root; hack/deps.sh installed)
set -euo pipefail
PODS=${1:-100}
CONCURRENT=${2:-30}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
echo "== building (release)"
cargo build -q --release -p leengine-cni --bin leengine-cni --example cni_bench
echo "== running: $PODS pods sequential, $CONCURRENT concurrent"
exec "$ROOT/target/release/examples/cni_bench" "$PODS" "$CONCURRENT"

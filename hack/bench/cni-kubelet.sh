#!/usr/bin/env bash
# Pod start through the real kubelet (issue 19, benchmark 3): a Deployment of
# PODS pods on a one-node Cell (leengine-testenv: etcd, kube-apiserver,
# controller-manager, scheduler, containerd, kubelet), once per pod network,
# same run: leengine through the node-agent's CNI service, leengine as a
# plain plugin process, and bridge + host-local. Reports time to all Ready
# and kubelet's own histograms (sandbox creation, pod start SLI), with the
# ratios to bridge + host-local. Goal: ours <= theirs. Needs root and the
# Kubernetes binaries (hack/k8s.sh, which hack/test.sh runs).
#
# usage: hack/bench/cni-kubelet.sh [PODS=30]
set -euo pipefail
PODS=${1:-30}
cd "$(dirname "$0")/../.."
echo "== building (release)"
cargo build -q --release -p leengine-cni --bin leengine-cni --example kubelet_bench \
  -p leengine-node-agent --bin leengine-node-agent
echo "== running: $PODS pods; $(nproc) CPUs; $(date -u +%FT%TZ)"
exec target/release/examples/kubelet_bench "$PODS"

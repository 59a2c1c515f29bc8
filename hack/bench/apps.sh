#!/usr/bin/env bash
# Apps benchmark (issue 14): time from the deploy call (POST …/versions) to
# all pods Ready, through the core's API, etcd and reconciler into a real
# Cell (leengine-testenv, one node), for 1, 10 and 50 replicas, against
# `kubectl apply` of the same Deployment in the same Cell, same run; prints
# the ratio core/kubectl. Needs root and the Kubernetes binaries (hack/k8s.sh).
# Not measured here: "and in the upstream" (needs leengine-discovery).
#   hack/bench/apps.sh            (PROFILE=release for an optimised build)
set -euo pipefail
cd "$(dirname "$0")/../.."
profile_flag=()
dir=debug
if [ "${PROFILE:-debug}" = release ]; then profile_flag=(--release); dir=release; fi
cargo build -q "${profile_flag[@]}" -p leengine-cni -p cnictl --bins
cargo build -q "${profile_flag[@]}" -p leengine-core --example bench_apps
echo "profile: $dir; $(nproc) CPUs; $(date -u +%FT%TZ)"
"target/$dir/examples/bench_apps"

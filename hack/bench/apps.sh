#!/usr/bin/env bash
# Apps benchmark (issue 14): time from the deploy call (POST …/versions) to
# all pods Ready and to all of them in the nginx upstream of the app's
# domain (leengine-discovery + a real nginx agent + nginx), through the
# core's API, etcd and reconciler into a real Cell (leengine-testenv, one
# node), for 1, 10 and 50 replicas, against `kubectl apply` of the same
# Deployment in the same Cell, same run (Ready only: nothing puts a plain
# Deployment in an upstream); prints the ratios core/kubectl. Needs root and
# the Kubernetes binaries (hack/k8s.sh).
#   hack/bench/apps.sh                 REPLICAS="1 10" for fewer sizes
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
cargo build -q -p leengine-nginx-agent -p leengine-discovery -p leengine-cni -p cnictl
echo "dev profile; $(nproc) CPUs; $(date -u +%FT%TZ)"
exec cargo bench --profile dev -p leengine-core --bench apps

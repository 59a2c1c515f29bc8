#!/usr/bin/env bash
# Autoscaling benchmark (issue 20): an app of one pod behind nginx gets a
# step of its load to 5×; the time until the scaler decides 5 pods and until
# 5 pods serve through nginx, and the failed requests during that ramp and
# during the scale-down once the load falls. Same Cell, image and load, one
# after the other: the core's autoscaler on CPU % of the request, a plain
# HorizontalPodAutoscaler on CPU fed by metrics-server (built from its Go
# module), and the core's autoscaler on nginx's requests/s. Prints a row
# each and the ratios ours / HPA. Needs root and the Kubernetes binaries.
#   AUTOSCALE_WORKERS=2 AUTOSCALE_PAUSE_MS=1000 hack/bench/autoscale.sh   (the base load)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
bash hack/k8s.sh --metrics-server
cargo build -q -p leengine-nginx-agent -p leengine-discovery -p leengine-cni -p cnictl -p leengine-node-agent
echo "dev profile; $(nproc) CPUs; $(date -u +%FT%TZ)"
exec cargo bench --profile dev -p leengine-core --bench autoscale

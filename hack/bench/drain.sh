#!/usr/bin/env bash
# Drain benchmark (issue 15 (b)): under wrk load (POST, so nginx never
# retries a request it already sent), a grey upgrade of 6 pods (v2 beside
# v1, then v1 removed) and a scale-down 6 -> 2 in a real Cell (1 node),
# served by leengine-discovery and a real nginx agent + nginx:
#   once through the core (drain with acknowledgement before any pod goes),
#   once with the same Deployments changed by kubectl directly (pods deleted
#   at once; they leave the upstream when their endpoints turn terminating).
# Same run, same discovery/agent/nginx. Prints failed / total requests of
# each. Needs root and the Kubernetes binaries (hack/k8s.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
cargo build -q -p leengine-nginx-agent -p leengine-discovery -p leengine-cni -p cnictl
echo "dev profile; $(nproc) CPUs; $(date -u +%FT%TZ)"
exec cargo bench --profile dev -p leengine-core --bench drain

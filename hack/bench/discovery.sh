#!/usr/bin/env bash
# Discovery benchmark (issue 15 (a)): a real Cell (1 node), a Deployment
# with an HTTP readiness probe, leengine-discovery, a real nginx agent and
# nginx. DISCOVERY_BENCH_N scale-ups 0 -> 1 (default 50); for each:
#   Pod Ready (seen on a pod watch) -> first request answered by it through nginx,
#   and its parts: EndpointSlice ready -> upstream in etcd (discovery's part),
#   upstream in etcd -> first answer (the nginx agent's part).
# Prints p50/p99/max of each. Needs root; builds the sibling binaries first.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
cargo build -q -p leengine-nginx-agent -p leengine-cni -p cnictl
# The dev profile: the sibling binaries and the one under test come from target/debug
# (unoptimised, so the figures are an upper bound for a release build).
exec cargo bench --profile dev -p leengine-discovery --bench discovery

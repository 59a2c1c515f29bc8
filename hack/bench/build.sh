#!/usr/bin/env bash
# Build farm benchmark (issue 7), real etcd/dockerd/registry from testenv:
#  1. cold vs warm per-config Maven cache: one project whose compile step
#     fetches BENCH_ARTIFACTS (200) x BENCH_ARTIFACT_KIB (256) artifacts from a
#     loopback HTTP mirror; per-stage timings from the run record;
#  2. 1,000 dispatches over 10 builders: spread and latency.
#   hack/bench/build.sh            (PROFILE=release for an optimised build)
set -euo pipefail
cd "$(dirname "$0")/../.."
profile_flag=()
dir=debug
if [ "${PROFILE:-debug}" = release ]; then profile_flag=(--release); dir=release; fi
cargo build -q "${profile_flag[@]}" -p leengine-build-agent --bin leengine-build-agent --example bench_build
export LEENGINE_BUILD_AGENT_BIN="$PWD/target/$dir/leengine-build-agent"
echo "profile: $dir; $(nproc) CPUs; $(date -u +%FT%TZ)"
"target/$dir/examples/bench_build" cache
"target/$dir/examples/bench_build" dispatch

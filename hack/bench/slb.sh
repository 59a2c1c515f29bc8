#!/usr/bin/env bash
# SLB benchmark (issue 6): nginx+lua driven by leengine-nginx-agent vs the
# confd way (render + nginx -s reload), wrk on loopback, 4 local backends.
# Loopback traffic only; etcd, nginx (+lua) and wrk come from hack/deps.sh.
# Prints a markdown table: throughput ratio, errors, put->new backend p50/p99.
#   SLB_BENCH_SECS=30 hack/bench/slb.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
exec cargo bench -p leengine-nginx-agent --bench slb

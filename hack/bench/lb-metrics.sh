#!/usr/bin/env bash
# Lua request counters (issue 18): nginx throughput with `--lb-metrics true`
# vs `false`, two agent-driven nginx hosts in the same run, wrk alternating.
# Target: on/off >= 97 %.
#   LB_METRICS_BENCH_SECS=60 hack/bench/lb-metrics.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
exec cargo bench -p leengine-nginx-agent --bench lb_metrics

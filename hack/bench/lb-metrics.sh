#!/usr/bin/env bash
# Lua request counters (issue 18): nginx throughput with `--lb-metrics true`
# vs `false`, two agent-driven nginx hosts in the same run, wrk alternating.
# Target: on/off >= 97 %.
#   [PROFILE=debug] LB_METRICS_BENCH_SECS=60 LB_METRICS_BENCH_ROUNDS=6 hack/bench/lb-metrics.sh
# (nginx does the measured work; PROFILE=debug only builds the harness
# and the agent without optimisation.)
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "${PROFILE:-release}" = debug ]; then
    exec cargo bench -p leengine-nginx-agent --bench lb_metrics --profile dev
fi
exec cargo bench -p leengine-nginx-agent --bench lb_metrics

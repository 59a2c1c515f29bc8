#!/usr/bin/env bash
# Thousands of domains in one nginx group (issue 22): generated server
# blocks vs lua routing, same run. Loopback only; etcd, nginx (+lua) and
# wrk come from hack/deps.sh. Prints a markdown table.
#   SLB_DOMAINS=2000,10000 SLB_CHANGES=100 SLB_GENERATED_CHANGES=10 SLB_WRK_SECS=20 hack/bench/slb-domains.sh
# SLB_WAYS=lua (default lua,generated) runs one side only.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec cargo bench -p leengine-nginx-agent --bench slb_domains

#!/usr/bin/env bash
# End-to-end benchmark (issue 16), from the one flow core/tests/e2e.rs runs:
#   * cold vs warm build of examples/hello-shop per stage (clone, compile,
#     build, push) with Maven's downloads counted (cold: from Maven Central
#     through the mirror; warm: the config's cache on the same build host);
#   * push -> image in the registry, and deploy -> first request answered by
#     the new version through nginx (their sum: push -> new version served).
# Prints the test's summary. Not a test: nothing here has a threshold.
#   hack/bench/e2e.sh [RUNS]   (default 1)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
cargo build -q -p leengine-core -p leengine-build-agent -p leengine-discovery \
  -p leengine-nginx-agent -p leengine-cni -p cnictl --bins
bash hack/java-images.sh >/dev/null
echo "$(nproc) CPUs; load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%FT%TZ)"
for i in $(seq "${1:-1}"); do
  echo "run $i"
  cargo test -q -p leengine-core --test e2e -- --nocapture --test-threads=1 \
    git_push_to_traffic_through_nginx_with_a_grey_upgrade 2>&1 |
    sed -n '/^== SUMMARY/,/^== END SUMMARY/p' | sed '1d;$d'
done

#!/usr/bin/env bash
# IPAM benchmark: NODES simulated nodes x PODS pods allocated at CONCURRENCY
# against one local etcd, then `cnictl check` over all of them.
#   hack/bench/ipam.sh [NODES=600] [PODS=20] [CONCURRENCY=64]
# Prints allocations/s, latency percentiles, duplicate/consistency checks and
# the wall time of `cnictl check` (table and JSON).
set -euo pipefail
NODES=${1:-600}
PODS=${2:-20}
CONC=${3:-64}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DIR=$(mktemp -d /tmp/leengine-bench-ipam.XXXXXX)
PREFIX=/bench
source "$ROOT/hack/lib.sh"
ETCD_PID=
cleanup() {
  if [ -n "$ETCD_PID" ]; then kill "$ETCD_PID" 2>/dev/null || true; wait "$ETCD_PID" 2>/dev/null || true; fi
  rm -rf "$DIR"
}
trap cleanup EXIT
start_etcd "$DIR/data" bench
URL=$ETCD_URL

cd "$ROOT"
cargo build --release -q -p leengine-ipam --example alloc_bench
cargo build --release -q -p cnictl
BIN=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release

echo "== machine: $(nproc) CPUs, $(etcd --version | head -1), etcd data in $DIR"
etcd_cpu() { awk '{printf "%.1f", ($14 + $15) / 100}' "/proc/$ETCD_PID/stat"; }
echo "== allocation (load average before: $(cut -d' ' -f1-3 /proc/loadavg))"
before=$(etcd_cpu)
/usr/bin/time -f "bench client CPU: %U s user + %S s system, wall %e s" \
  "$BIN/examples/alloc_bench" "$URL" "$PREFIX" "$NODES" "$PODS" "$CONC"
echo "etcd CPU during the run: $(python3 -c "print(round($(etcd_cpu) - $before, 1))") s; db size: $(du -sh "$DIR/data" | cut -f1)"

echo "== cnictl check (node-agent reports, no apiserver, grace 0s)"
export LEENGINE_ETCD_ENDPOINTS=$URL LEENGINE_ETCD_PREFIX=$PREFIX
set +e
start=$(date +%s.%N)
"$BIN/cnictl" check --no-apiserver --grace 0s -o json >"$DIR/report.json"
rc=$?
end=$(date +%s.%N)
set -e
python3 - "$DIR/report.json" "$rc" "$start" "$end" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"cnictl check -o json: {float(sys.argv[4]) - float(sys.argv[3]):.2f}s, exit {sys.argv[2]}, "
      f"allocated {r['allocated']}, alive {r['alive']}, leaked {len(r['leaked'])}, unknown {len(r['unknown'])}")
PY
start=$(date +%s.%N)
"$BIN/cnictl" check --no-apiserver --grace 0s >/dev/null || true
end=$(date +%s.%N)
echo "cnictl check (table): $(python3 -c "print(f'{$end - $start:.2f}s')")"
start=$(date +%s.%N)
"$BIN/cnictl" pool list >/dev/null
end=$(date +%s.%N)
echo "cnictl pool list: $(python3 -c "print(f'{$end - $start:.2f}s')")"

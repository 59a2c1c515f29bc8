#!/usr/bin/env bash
# node-agent scrape cost (issue 18): N container cgroups (v1 memory, cpuacct,
# blkio; one sleeping task each) under a private root; one agent scraped every
# INTERVAL s (Prometheus' 5 s) for SECONDS s, and, same run, the same agent
# setup not scraped at all (the reference). Prints CPU % (utime+stime over the
# wall time), RSS, and the duration of one scrape.
#
# usage: [PROFILE=debug] hack/bench/node-agent-scrape.sh [N=100] [SECONDS=60] [INTERVAL=5]   (root; etcd-server, curl)
set -euo pipefail
N=${1:-100}
SECS=${2:-60}
EVERY=${3:-5}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
D=$(mktemp -d /tmp/leengine-scrape-bench.XXXXXX)
CG="lebench$$"
source "$ROOT/hack/lib.sh"
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.2
  for c in memory cpuacct blkio; do
    for d in /sys/fs/cgroup/$c/$CG/*/; do rmdir "$d" 2>/dev/null || true; done
    rmdir "/sys/fs/cgroup/$c/$CG" 2>/dev/null || true
  done
  rm -rf "$D"
}
trap cleanup EXIT

PROFILE=${PROFILE:-release}
echo "== building ($PROFILE)"
if [ "$PROFILE" = release ]; then
  (cd "$ROOT" && cargo build -q --release -p leengine-node-agent --bin leengine-node-agent)
else
  (cd "$ROOT" && cargo build -q -p leengine-node-agent --bin leengine-node-agent)
fi
AGENT="$ROOT/target/$([ "$PROFILE" = release ] && echo release || echo debug)/leengine-node-agent"

start_etcd "$D/etcd" scrape
PIDS+=("$ETCD_PID")

echo "== $N container cgroups with a task each"
for i in $(seq "$N"); do
  for c in memory cpuacct blkio; do mkdir -p "/sys/fs/cgroup/$c/$CG/c$i"; done
  sh -c "for c in memory cpuacct blkio; do echo \$\$ > /sys/fs/cgroup/\$c/$CG/c$i/cgroup.procs; done; exec sleep 3600" &
  PIDS+=($!)
done
sleep 1

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
HZ=$(getconf CLK_TCK)

run() { # name scrape(yes/no)
  local port; port=$(free_port)
  "$AGENT" --node "bench-$1" --etcd-endpoints "$ETCD_URL" --ovsdb unix:/nonexistent/ovs.sock \
    --container-roots "$CG" --reclaim off --metrics-listen "127.0.0.1:$port" 2>"$D/$1.log" &
  local pid=$!; PIDS+=($pid)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  local samples
  samples=$(curl -sf "http://127.0.0.1:$port/metrics" | grep -c '^leengine_container_cpu_seconds_total{' || true)
  local t0 w0; t0=$(ticks $pid); w0=$(date +%s%N)
  local end=$(( $(date +%s) + SECS ))
  local ms=""
  while [ "$(date +%s)" -lt "$end" ]; do
    if [ "$2" = yes ]; then
      local a b; a=$(date +%s%N); curl -sf -o /dev/null "http://127.0.0.1:$port/metrics"; b=$(date +%s%N)
      ms="$ms $(( (b - a) / 1000000 ))"
    fi
    sleep "$EVERY"
  done
  local t1 w1; t1=$(ticks $pid); w1=$(date +%s%N)
  local cpu; cpu=$(awk -v t=$(( t1 - t0 )) -v hz="$HZ" -v w=$(( (w1 - w0) / 1000000 )) 'BEGIN {printf "%.2f", 100 * t / hz / (w / 1000)}')
  echo "| $1 | $samples | $cpu % | $(( $(rss $pid) / 1024 )) MiB | ${ms:- -} |"
  kill "$pid"
}

echo
echo "| agent | containers seen | CPU | RSS | scrape ms |"
echo "|---|---|---|---|---|"
run scraped yes
run idle no
echo
echo "($N cgroups, ${SECS}s per side, scrape every ${EVERY}s; $(nproc) CPUs; load $(cut -d' ' -f1-3 /proc/loadavg))"

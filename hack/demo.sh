#!/usr/bin/env bash
# LeEngine-rs doing its job, end to end, on one machine with real parts only:
#   a developer pushes a real Maven project (examples/hello-shop) -> a GitLab
#   push webhook reaches the core -> a build host (of 2, by rendezvous
#   placement) clones, compiles in the JDK + Maven image with the config's
#   Maven cache (Maven Central through the site's mirror the first time,
#   nothing the second), builds the image on the JRE base, pushes it with the
#   core's token -> the core deploys it to 2 Kubernetes Cells (real apiserver,
#   kubelet, containerd, the LeEngine CNI plugin on OVS, pool IPs from etcd)
#   -> discovery puts the Ready pods behind nginx group `public` of 2 nginx
#   hosts (127.0.0.2 and 127.0.0.3, each agent with its --listen-address) ->
#   v2 replaces v1 under load through both, 0 failed -> v2 scaled 2 -> 3 -> 2
#   per Cell under load -> containers, events, activity and the admin's daily
#   counts through core's API -> everything is torn down.
# It is the end-to-end test core/tests/e2e.rs run with its narration shown
# (one flow, one implementation). Needs root. Installs its own dependencies.
#   hack/demo.sh            the whole flow
#   hack/demo-network.sh    the network half on its own (bonds, VLANs, leak reclaim)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "hack/demo.sh: run as root (network namespaces, Open vSwitch, Kubernetes)" >&2; exit 1; }
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2} CARGO_TERM_COLOR=never

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# Runs a long step, printing a heartbeat every 30 s.
long() {
  local what=$1 start=$(date +%s) pid rc; shift
  "$@" & pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 5
    if kill -0 "$pid" 2>/dev/null && [ $(( ($(date +%s) - start) % 30 )) -lt 5 ]; then
      echo "   ... still $what ($(( $(date +%s) - start )) s)"
    fi
  done
  wait "$pid" && rc=0 || rc=$?
  [ "$rc" = 0 ] || { echo "hack/demo.sh: $what failed (exit $rc)" >&2; exit "$rc"; }
  echo "   $what: $(( $(date +%s) - start )) s"
}

say "Dependencies (Debian packages; Kubernetes and etcd 3.6 built once from their Go modules)"
long "installing dependencies" bash hack/deps.sh
say "Building the LeEngine binaries and the end-to-end flow"
long "building" cargo build -q -p leengine-core -p leengine-build-agent -p leengine-discovery \
  -p leengine-nginx-agent -p leengine-cni -p cnictl --bins
long "building the test binary" cargo test -q -p leengine-core --test e2e --no-run
say "The Java images (JDK + Maven compile image, JRE base), made once from this machine's JDK"
long "building the Java images" bash hack/java-images.sh

say "The flow (narrated; the same assertions as the test)"
log=$(mktemp /tmp/leengine-demo.XXXXXX.log)
set +e
cargo test -q -p leengine-core --test e2e -- --nocapture --test-threads=1 \
  git_push_to_traffic_through_nginx_with_a_grey_upgrade 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
say "Summary"
sed -n '/^== SUMMARY/,/^== END SUMMARY/p' "$log" | sed '1d;$d'
# What the test process left once it exited: processes naming its harness
# run dir, and the network namespaces it recorded there (each Cell node's,
# each pod's, and the one ovs-vswitchd and its ports lived in).
run=$(sed -n 's/^   harness run dir //p' "$log" | head -1)
procs=0 netns=0 made=0
if [ -n "$run" ]; then
  for f in /proc/[0-9]*/cmdline; do
    c=$(tr '\0' ' ' <"$f" 2>/dev/null) || continue
    [[ $c == *"$run"* ]] && procs=$((procs + 1))
  done
  live=$(ip netns list 2>/dev/null | cut -d' ' -f1)
  while read -r ns; do
    [ -n "$ns" ] || continue
    made=$((made + 1))
    grep -qxF "$ns" <<<"$live" && netns=$((netns + 1))
  done <"$run/netns"
fi
echo "left behind: $procs processes naming $run, $netns of its $made network namespaces (pod IPs released: asserted by the test)"
if [ "$rc" = 0 ] && [ -n "$run" ] && [ "$procs" = 0 ] && [ "$netns" = 0 ]; then
  echo "every step checked; nothing left behind"
elif [ "$rc" = 0 ]; then
  echo "hack/demo.sh: the flow passed but left things behind (see above); full output in $log"; rc=1
else
  echo "hack/demo.sh: the flow failed (exit $rc); full output in $log"
fi
exit "$rc"

#!/usr/bin/env bash
# Builds, once per machine, the real Kubernetes control plane and kubelet (from
# the k8s.io/kubernetes Go module, pinned in hack/k8s/go.mod) and an etcd 3.6
# server (hack/etcd) into a versioned cache outside the repo. Idempotent: when
# the binaries for this pin are present it returns at once.
#
#   hack/k8s.sh                   build what is missing, print the bin directories
#   hack/k8s.sh --print           only print the env lines (LEENGINE_K8S_BIN=..., LEENGINE_ETCD36=...,
#                                 LEENGINE_METRICS_SERVER=...)
#   hack/k8s.sh --metrics-server  also build metrics-server (hack/metrics-server/go.mod), the
#                                 peer of the autoscale benchmark; tests do not need it
#
# Why a go.mod of our own: k8s.io/kubernetes requires its ~30 staging modules at
# v0.0.0 and replaces them with ./staging/... — replace lines of a dependency are
# ignored by Go, so hack/k8s/go.mod replaces each one with its published v0.34.N.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD

K8S_VERSION=$(awk '$1=="require" && $2=="k8s.io/kubernetes" {print $3}' hack/k8s/go.mod)
ETCD_VERSION=$(grep -oE 'go\.etcd\.io/etcd/server/v3 v[0-9.]+' hack/etcd/go.mod | head -1 | cut -d' ' -f2)
CACHE=${LEENGINE_CACHE:-/var/cache/leengine}
K8S_DIR="$CACHE/k8s-$K8S_VERSION"
ETCD_DIR="$CACHE/etcd-$ETCD_VERSION"
MS_VERSION=$(grep -oE 'sigs\.k8s\.io/metrics-server v[0-9.]+' hack/metrics-server/go.mod | head -1 | cut -d' ' -f2)
MS_DIR="$CACHE/metrics-server-$MS_VERSION"
K8S_TOOLS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)

print_env() {
  echo "LEENGINE_K8S_BIN=$K8S_DIR/bin"
  echo "LEENGINE_ETCD36=$ETCD_DIR/bin/etcd"
  echo "LEENGINE_METRICS_SERVER=$MS_DIR/bin/metrics-server"
}
if [ "${1:-}" = "--print" ]; then print_env; exit 0; fi

die() { echo "hack/k8s.sh: $*" >&2; exit 1; }
command -v go >/dev/null 2>&1 || die "step 'toolchain': no 'go' on PATH (Go >= 1.24 is needed to build Kubernetes)"
mkdir -p "$CACHE"

# build NAME DIR MODULE_DIR PKG... : go build each package into DIR/bin, with a
# heartbeat every 30 s, the whole Go output in DIR/build.log, and peak memory
# and wall time recorded in DIR/build.stats.
build() {
  local name=$1 dir=$2 moddir=$3; shift 3
  local log="$dir/build.log" start rc
  mkdir -p "$dir/bin.tmp"
  : >"$log"
  start=$(date +%s)
  echo "hack/k8s.sh: building $name ($*) into $dir — takes many minutes on a cold machine; log: $log"
  (cd "$top/$moddir" && go mod download >>"$log" 2>&1) || die "step 'download $name modules' failed; see $log"
  (
    cd "$top/$moddir"
    export GOFLAGS="-buildvcs=false -trimpath" CGO_ENABLED=0
    /usr/bin/time -f '%e s wall, %M KiB peak RSS' -o "$dir/build.stats" \
      go build -ldflags='-s -w' -o "$dir/bin.tmp/" "$@" >>"$log" 2>&1
  ) &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 30
    kill -0 "$pid" 2>/dev/null && echo "hack/k8s.sh: … still building $name ($(( $(date +%s) - start )) s)"
  done
  wait "$pid" && rc=0 || rc=$?
  [ "$rc" = 0 ] || { tail -5 "$log" >&2; die "step 'build $name' failed (exit $rc); see $log"; }
  rm -rf "$dir/bin"
  mv "$dir/bin.tmp" "$dir/bin"
  echo "hack/k8s.sh: built $name in $(( $(date +%s) - start )) s ($(cat "$dir/build.stats"))"
}

have_all() { local d=$1; shift; for t in "$@"; do [ -x "$d/bin/$t" ] || return 1; done; }

command -v /usr/bin/time >/dev/null 2>&1 || die "step 'toolchain': /usr/bin/time missing (apt-get install time)"
have_all "$ETCD_DIR" etcd || build "etcd $ETCD_VERSION" "$ETCD_DIR" hack/etcd .
have_all "$K8S_DIR" "${K8S_TOOLS[@]}" ||
  build "kubernetes $K8S_VERSION" "$K8S_DIR" hack/k8s "${K8S_TOOLS[@]/#/k8s.io/kubernetes/cmd/}"
if [ "${1:-}" = "--metrics-server" ]; then
  have_all "$MS_DIR" metrics-server ||
    build "metrics-server $MS_VERSION" "$MS_DIR" hack/metrics-server sigs.k8s.io/metrics-server/cmd/metrics-server
fi
print_env

#!/usr/bin/env bash
# Installs, idempotently, every Debian package LeEngine-rs and its tests need.
# Near-instant when everything is present. Package daemons are kept from
# starting (policy-rc.d) and stopped if already running: the tests start their
# own instances on free ports and must not meet the system ones.
set -euo pipefail

PKGS=(
  etcd-server etcd-client openvswitch-switch nginx libnginx-mod-http-lua lua-resty-core
  docker.io docker-registry podman containernetworking-plugins protobuf-compiler libprotobuf-dev
  iproute2 iputils-ping tcpdump busybox-static git wrk jq procps psmisc curl ca-certificates
  prometheus prometheus-alertmanager python3-aiosmtpd hyperfine containerd runc openssl time ethtool
  debootstrap systemd man-db openjdk-17-jdk-headless maven
  chromium fonts-dejavu-core
)
# Node.js and npm build console/ and run its browser tests. The machine image
# ships Node 20; Debian's packages are the fallback where node is missing.
if ! command -v npm >/dev/null 2>&1; then
  PKGS+=(nodejs npm)
fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "hack/deps.sh: missing packages (${missing[*]}) and not root; run as root" >&2
    exit 1
  fi
  echo "hack/deps.sh: installing ${missing[*]}"
  # Keep package maintainer scripts from starting system daemons.
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/leengine-apt.log 2>&1 || {
    echo "hack/deps.sh: apt-get install failed; see /tmp/leengine-apt.log" >&2
    tail -20 /tmp/leengine-apt.log >&2
    exit 1
  }
  [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

# System instances on default ports would collide with nothing of ours (we use
# free ports), but a system dockerd/etcd eats memory and confuses observers.
for svc in etcd nginx docker containerd openvswitch-switch prometheus prometheus-alertmanager docker-registry; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" >/dev/null 2>&1 || true
  fi
done

# Rust toolchain components used by hack/test.sh.
if command -v rustup >/dev/null 2>&1; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c" >/dev/null 2>&1 || true
  done
fi

# cargo-deb for hack/package.sh, pinned; built once from crates.io (~2 min).
CARGO_DEB_VERSION=3.8.0
if command -v cargo >/dev/null 2>&1 &&
   ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION"; then
  echo "hack/deps.sh: installing cargo-deb $CARGO_DEB_VERSION"
  cargo install --locked "cargo-deb@$CARGO_DEB_VERSION" >/tmp/leengine-cargo-deb.log 2>&1 || {
    echo "hack/deps.sh: cargo install cargo-deb failed; see /tmp/leengine-cargo-deb.log" >&2
    tail -20 /tmp/leengine-cargo-deb.log >&2
    exit 1
  }
fi

# Real Kubernetes (apiserver, controller-manager, scheduler, kubelet, kubectl)
# and etcd 3.6 from their Go modules, built once per machine into
# /var/cache/leengine (many minutes cold, instant when cached).
bash "$(dirname "$0")/k8s.sh"

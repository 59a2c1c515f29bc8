#!/usr/bin/env bash
# Runs every check and test of the workspace against real services.
# Installs its own dependencies (hack/deps.sh). Needs root (network
# namespaces, Open vSwitch, dockerd): root-only tests are never skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step prints how long the one before it took.
t0=$(date +%s); tstep=$t0; last=""
step() {
  local now; now=$(date +%s)
  [ -n "$last" ] && printf '<== %s: %d s\n' "$last" $((now - tstep))
  tstep=$now; last=$*
  printf '\n==> %s\n' "$*"
}

step "dependencies"
bash hack/deps.sh

if [ "$(id -u)" -ne 0 ]; then
  echo "hack/test.sh: the integration tests need root (netns, OVS, dockerd)" >&2
  exit 1
fi

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step "web console: npm ci && npm run build (console/dist, served by leengine-core; tests in core/tests/console.rs)"
(cd console && npm ci --no-audit --no-fund && npm run build)

step "Java build images for the end-to-end test (hack/java-images.sh, cached per machine)"
bash hack/java-images.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (whole workspace, real etcd / OVS / nginx / dockerd / registry / podman)"
cargo test --workspace --locked --no-fail-fast

step "Debian packages: build, install into a fresh root, verify (hack/package-test.sh)"
bash hack/package-test.sh

for extra in hack/schemathesis.sh; do
  if [ -f "$extra" ]; then
    step "$extra"
    bash "$extra"
  fi
done

step "all checks passed"
printf "total: %d s\n" $(( $(date +%s) - t0 ))

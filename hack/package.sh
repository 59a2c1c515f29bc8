#!/usr/bin/env bash
# Builds one Debian package per deliverable with cargo-deb (docs/install.md).
#
#   hack/package.sh [--profile release|dev] [--out DIR] [CRATE...]
#
# Default: every crate of DELIVERABLES, release profile, into target/debian/.
# Each package's contents (binary, unit, conffile, system user, docs) are in
# its crate's Cargo.toml under [package.metadata.deb] and its debian/ dir;
# this script only builds. cargo-deb itself comes from hack/deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

# Cargo package names. A new binary joins with a [package.metadata.deb]
# table in its Cargo.toml (plus debian/ files for a daemon) and one line here.
DELIVERABLES=(
  leengine-cni
  cnictl
  leengine-node-agent
  leengine-nginx-agent
  leengine-build-agent
  leengine-core
  leengine-discovery
)

profile=release
out=target/debian
crates=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "hack/package.sh: unknown option $1" >&2; exit 2 ;;
    *) crates+=("$1"); shift ;;
  esac
done
[ ${#crates[@]} -gt 0 ] || crates=("${DELIVERABLES[@]}")

die() { echo "hack/package.sh: $*" >&2; exit 1; }
command -v cargo-deb >/dev/null || die "cargo-deb is missing; run hack/deps.sh"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
maintainer="${LEENGINE_DEB_MAINTAINER:-LeEngine-rs maintainers <leengine@localhost>}"

target_dir=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
# cargo-deb reads binaries from target/release/ and maps that to the profile's
# directory; generated assets go to the same place.
case "$profile" in
  dev) profile_dir="$target_dir/debug" ;;
  *) profile_dir="$target_dir/$profile" ;;
esac

# leengine-core ships the web console (docs/console.md): console/dist, built
# here when missing; without node and npm the package cannot be made.
build_console() {
  [ -f console/dist/index.html ] && return
  command -v npm >/dev/null || die "console/dist is missing and npm is not installed (hack/deps.sh installs nodejs npm)"
  echo "hack/package.sh: building console/dist (npm ci && npm run build)"
  (cd console && npm ci --no-audit --no-fund && npm run build) >&2 || die "building the console (npm ci && npm run build in console/) failed"
  [ -f console/dist/index.html ] || die "npm run build made no console/dist/index.html"
}
for c in "${crates[@]}"; do
  [ "$c" != leengine-core ] || build_console
done

# One build for every binary: the shared dependencies compile once.
pkg_args=()
for c in "${crates[@]}"; do pkg_args+=(-p "$c"); done
cargo build --locked --profile "$profile" --bins "${pkg_args[@]}"

for c in "${crates[@]}"; do
  if [ "$c" = cnictl ]; then
    # Completions and man pages, from cnictl's own clap definition.
    gen="$profile_dir/cnictl-assets"
    rm -rf "$gen"
    cargo run --locked --quiet --profile "$profile" -p cnictl --features gen --bin cnictl-gen -- "$gen"
    gzip -9nf "$gen"/man/*.1
  fi
done

# xz at its default level takes minutes for unoptimised binaries; test
# builds (dev) do not ship.
fast=()
[ "$profile" = release ] || fast=(--fast)
mkdir -p "$out"
for c in "${crates[@]}"; do
  cargo deb --no-build --profile "$profile" -p "$c" --output "$out" --maintainer "$maintainer" --quiet "${fast[@]}" \
    || die "cargo deb -p $c failed"
done

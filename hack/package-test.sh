#!/usr/bin/env bash
# Builds every Debian package (hack/package.sh) and installs them with
# `dpkg --root` into a fresh Debian 12 root (docs/testenv.md, "Packages"):
# checks files, system users, conffiles, every unit with
# `systemd-analyze verify`, and runs each installed binary's --version and
# --help from its installed path. Run by hack/test.sh; needs root.
#
#   hack/package-test.sh            dev-profile binaries (already built by cargo test)
#   LEENGINE_PKG_PROFILE=release hack/package-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" -eq 0 ] || { echo "hack/package-test.sh: needs root (dpkg --root, chroot)" >&2; exit 1; }

profile="${LEENGINE_PKG_PROFILE:-dev}"
cache=/var/cache/leengine-pkgtest
# The packages the root holds besides minbase: what our packages depend on
# and the units theirs name (docker.service, nginx.service, ...), so that
# dpkg checks real dependencies and systemd-analyze verify real references.
BASE_PKGS=(systemd man-db git nginx libnginx-mod-http-lua lua-resty-core docker.io openvswitch-switch)
base_tar="$cache/bookworm-$(echo "${BASE_PKGS[*]}" | sha256sum | cut -c1-12).tar"

# package | installed binary | conffile | system user | unit | reloads on
# SIGHUP | highest exposure `systemd-analyze security` may rate the unit (x10;
# today's ratings are 6.5, 4.6, 4.1, 1.8: a lost hardening line fails)
EXPECT='
leengine-cni         /opt/cni/bin/leengine          /etc/leengine/cni/10-leengine.conflist  -               -                             -    -
leengine-cnictl      /usr/bin/cnictl                -                                       -               -                             -    -
leengine-node-agent  /usr/bin/leengine-node-agent   /etc/leengine/node-agent.toml           -               leengine-node-agent.service   yes  66
leengine-nginx-agent /usr/bin/leengine-nginx-agent  /etc/leengine/nginx-agent.env           -               leengine-nginx-agent.service  no   47
leengine-build-agent /usr/bin/leengine-build-agent  /etc/leengine/build-agent.env           leengine-build  leengine-build-agent.service  no   42
leengine-core        /usr/bin/leengine-core         /etc/leengine/core.env                  leengine-core   leengine-core.service         no   19
leengine-discovery   /usr/bin/leengine-discovery    /etc/leengine/discovery.env             leengine-discovery leengine-discovery.service no 19
'

work=$(mktemp -d /tmp/leengine-pkgtest.XXXXXX)
# Daemons this script starts (the console check), stopped by their pid.
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
root="$work/root"
failures=0
checks=0
fail() { failures=$((failures + 1)); printf 'FAIL: %s\n' "$*"; }
ok() { checks=$((checks + 1)); }
# check DESCRIPTION CMD...: runs CMD, counts a failure (with its output) if it fails.
check() {
  local what=$1; shift
  local outf="$work/check.out"
  if "$@" </dev/null >"$outf" 2>&1; then ok; else fail "$what"; sed 's/^/    /' "$outf" | head -20; fi
}
in_root() { chroot "$root" "$@"; }

# A pristine Debian 12 root, made once per machine with debootstrap from
# Debian's mirror (~2 min) and kept as a tar; each run unpacks a fresh copy.
make_base() {
  mkdir -p "$cache"
  exec 9>"$cache/lock"
  flock 9
  [ -f "$base_tar" ] && return
  rm -f "$cache"/bookworm-*.tar  # made for another package list
  local b="$cache/build.$$"
  rm -rf "$b"
  echo "hack/package-test.sh: building the Debian root $base_tar (debootstrap)"
  debootstrap --variant=minbase --include=systemd bookworm "$b" http://deb.debian.org/debian \
    >"$cache/debootstrap.log" 2>&1 || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
  # Package scripts in the root must not start daemons on this host.
  printf '#!/bin/sh\nexit 101\n' >"$b/usr/sbin/policy-rc.d"
  chmod +x "$b/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$b/etc/resolv.conf"
  { chroot "$b" apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive chroot "$b" apt-get install -y -qq --no-install-recommends "${BASE_PKGS[@]}" &&
    chroot "$b" apt-get clean; } >"$cache/apt.log" 2>&1 || { tail -20 "$cache/apt.log" >&2; exit 1; }
  rm -rf "$b"/var/lib/apt/lists/*
  tar --numeric-owner -C "$b" -cf "$base_tar.tmp" .
  mv "$base_tar.tmp" "$base_tar"
  rm -rf "$b"
}

echo "==> packages ($profile profile)"
bash hack/package.sh --profile "$profile" --out "$work/debs" >"$work/package.log" 2>&1 ||
  { tail -30 "$work/package.log"; echo "hack/package-test.sh: hack/package.sh failed" >&2; exit 1; }
version=$(cargo metadata --format-version 1 --no-deps | jq -r '.packages[] | select(.name == "leengine-core") | .version')
# What --version must name: the commit the packages were built from.
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
debs=("$work"/debs/*.deb)
echo "    ${#debs[@]} packages, version $version, commit $commit"

echo "==> fresh Debian root"
make_base
mkdir "$root"
tar --numeric-owner -C "$root" -xpf "$base_tar"

echo "==> dpkg --root $root -i"
if ! dpkg --root="$root" -i "${debs[@]}" >"$work/dpkg.log" 2>&1; then
  cat "$work/dpkg.log"
  echo "hack/package-test.sh: dpkg -i failed" >&2
  exit 1
fi
q() { dpkg-query --admindir="$root/var/lib/dpkg" "$@"; }

# Each line of EXPECT that is one package's.
while read -r pkg bin conffile user unit reload exposure; do
  [ -n "$pkg" ] || continue
  echo "==> $pkg"
  check "$pkg is installed at version $version-1" \
    test "$(q -W -f='${Status} ${Version}' "$pkg")" = "install ok installed $version-1"
  check "$pkg lists $bin" grep -qx "$bin" <(q -L "$pkg")
  check "$bin is executable in the root" test -x "$root$bin"
  check "$bin --version exits 0 and prints $version (git $commit)" \
    bash -c 'out=$(chroot "$1" "$2" --version) && echo "$out" && grep -qF -- "$3" <<<"$out"' _ "$root" "$bin" "$version (git $commit)"
  check "$bin --help exits 0 and prints usage" \
    bash -c 'out=$(chroot "$1" "$2" --help) && grep -qi usage <<<"$out"' _ "$root" "$bin"

  if [ "$conffile" != - ]; then
    check "$conffile is a conffile of $pkg" grep -q "^ $conffile [0-9a-f]\{32\}$" <(q -W -f='${Conffiles}\n' "$pkg")
    check "$conffile is installed" test -s "$root$conffile"
  fi
  # Every variable an env file sets is one the binary reads, every flag in
  # its *_ARGS one it has (clap lists both in --help).
  if [[ "$conffile" == *.env ]]; then
    chroot "$root" "$bin" --help </dev/null >"$work/help" 2>&1 || true
    while IFS='=' read -r name value; do
      case "$name" in
        ''|'#'*) continue ;;
        *_ARGS)
          for flag in $value; do
            [[ "$flag" == --* ]] || continue
            check "$conffile: $bin has $flag" grep -qF -- "$flag" "$work/help"
          done ;;
        *) check "$conffile: $bin reads $name" grep -qF "[env: $name=" "$work/help" ;;
      esac
    done < <(grep -v '^[[:space:]]*#' "$root$conffile")
  fi

  if [ "$user" != - ]; then
    check "system user $user exists (sysusers ran in the root)" \
      bash -c 'IFS=: read -r n _ uid _ _ home shell < <(chroot "$1" getent passwd "$2") &&
               [ "$n" = "$2" ] && [ "$uid" -gt 0 ] && [ "$uid" -lt 1000 ] &&
               [ "$home" = "/var/lib/$2" ] && [[ "$shell" == */nologin ]]' _ "$root" "$user"
    check "group $user exists" in_root getent group "$user"
    check "$user is not on the host (the scripts acted on the root)" \
      bash -c '! getent passwd "$1" >/dev/null' _ "$user"
  fi

  if [ "$unit" != - ]; then
    path="/usr/lib/systemd/system/$unit"
    check "$pkg lists $path" grep -qx "$path" <(q -L "$pkg")
    check "systemd-analyze verify $unit is clean" \
      bash -c 'out=$(chroot "$1" systemd-analyze verify "$2" 2>&1); rc=$?; echo "$out"; [ $rc -eq 0 ] && [ -z "$out" ]' _ "$root" "$path"
    check "systemd-analyze security rates $unit at most $exposure/10" \
      chroot "$root" systemd-analyze security --offline=yes --threshold="$exposure" "$path"
    for directive in NoNewPrivileges=yes ProtectSystem= CapabilityBoundingSet= StateDirectory= After=network-online.target; do
      check "$unit sets $directive" grep -q "^$directive" "$root$path"
    done
    if [ "$user" != - ]; then
      check "$unit runs as $user" grep -qx "User=$user" "$root$path"
    fi
    if [ "$reload" = yes ]; then
      check "$unit reloads with SIGHUP" grep -qx 'ExecReload=/bin/kill -HUP $MAINPID' "$root$path"
    else
      check "$unit has no ExecReload (no SIGHUP handler)" bash -c '! grep -q "^ExecReload" "$1"' _ "$root$path"
    fi
    check "$unit is not enabled at install (needs its config first)" \
      bash -c '! ls "$1"/etc/systemd/system/*.wants/"$2" 2>/dev/null' _ "$root" "$unit"
  fi
done <<<"$EXPECT"

echo "==> units' dependencies"
check "build-agent starts after docker" grep -qx 'After=network-online.target docker.service' "$root/usr/lib/systemd/system/leengine-build-agent.service"
check "node-agent starts after OVS" grep -qx 'After=network-online.target openvswitch-switch.service' "$root/usr/lib/systemd/system/leengine-node-agent.service"
check "nginx-agent starts before nginx (it writes nginx.conf)" grep -qx 'Before=nginx.service' "$root/usr/lib/systemd/system/leengine-nginx-agent.service"
check "nginx.service drop-in from leengine-nginx-agent" grep -qx /usr/lib/systemd/system/nginx.service.d/leengine.conf <(q -L leengine-nginx-agent)
check "systemd-analyze verify nginx.service (Debian's unit + our drop-in) is clean" \
  bash -c 'out=$(chroot "$1" systemd-analyze verify nginx.service 2>&1); rc=$?; echo "$out"; [ $rc -eq 0 ] && [ -z "$out" ]' _ "$root"
check "nginx.service runs the agent's nginx.conf" \
  grep -q "^ExecStart=/usr/sbin/nginx -p /etc/nginx/ -c /etc/nginx/leengine/nginx.conf" "$root/usr/lib/systemd/system/nginx.service.d/leengine.conf"

echo "==> cnictl completions and man pages"
check "bash completion registers cnictl" \
  bash -c 'chroot "$1" bash -c ". /usr/share/bash-completion/completions/cnictl && complete -p cnictl"' _ "$root"
check "zsh completion" grep -q '^#compdef cnictl' "$root/usr/share/zsh/vendor-completions/_cnictl"
check "fish completion" grep -q 'complete -c cnictl' "$root/usr/share/fish/vendor_completions.d/cnictl.fish"
for page in cnictl cnictl-pool cnictl-pool-add cnictl-check cnictl-release; do
  check "man page $page(1) renders" \
    bash -c 'MANWIDTH=100 man -l "$1" 2>/dev/null | grep -q "$2"' _ "$root/usr/share/man/man1/$page.1.gz" "${page##*-}"
done
check "cnictl-pool-add(1) documents --cidr" \
  bash -c 'MANWIDTH=100 man -l "$1" 2>/dev/null | grep -q -- "--cidr"' _ "$root/usr/share/man/man1/cnictl-pool-add.1.gz"

echo "==> the installed core serves the installed console"
console=/usr/share/leengine-core/console
check "leengine-core ships $console/index.html" grep -qx "$console/index.html" <(q -L leengine-core)
check "core.env points LEENGINE_CONSOLE_DIR at it" grep -qx "LEENGINE_CONSOLE_DIR=$console" "$root/etc/leengine/core.env"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
etcd_port=$(free_port) peer_port=$(free_port) core_port=$(free_port)
etcd --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" --initial-cluster "default=http://127.0.0.1:$peer_port" \
  >"$work/etcd.log" 2>&1 &
pids+=($!)
# The installed binary in the root, with the console directory of the
# installed core.env (the unit's EnvironmentFile).
chroot "$root" env "$(grep '^LEENGINE_CONSOLE_DIR=' "$root/etc/leengine/core.env")" /usr/bin/leengine-core \
  --listen "127.0.0.1:$core_port" --etcd "http://127.0.0.1:$etcd_port" --prefix /pkgtest --no-reconciler \
  >"$work/core.log" 2>&1 &
pids+=($!)
for page in / /boss; do
  check "the installed core serves $page from $console/index.html" \
    bash -c 'cmp <(curl -fsS --retry 60 --retry-delay 1 --retry-all-errors "$1") "$2"' _ "http://127.0.0.1:$core_port$page" "$root$console/index.html"
done
asset=$(grep -o '/assets/[^"]*\.js' "$root$console/index.html" | head -1)
check "the installed core serves the script index.html names ($asset)" \
  bash -c 'cmp <(curl -fsS "$1") "$2"' _ "http://127.0.0.1:$core_port$asset" "$root$console$asset"
[ "$failures" -eq 0 ] || { echo "    core's log:"; tail -5 "$work/core.log" | sed 's/^/    /'; }
kill "${pids[@]}" 2>/dev/null || true
wait "${pids[@]}" 2>/dev/null || true
pids=()

echo "==> conffiles survive an upgrade, go with purge"
echo "# edited by the operator" >>"$root/etc/leengine/core.env"
core_deb=$(ls "$work"/debs/leengine-core_*.deb)
check "reinstall leengine-core keeping the edited conffile" dpkg --root="$root" --force-confold -i "$core_deb"
check "the operator's edit is still there" grep -q "edited by the operator" "$root/etc/leengine/core.env"
check "purge leengine-core" dpkg --root="$root" --purge leengine-core
check "purge removed /etc/leengine/core.env" test ! -e "$root/etc/leengine/core.env"
check "purge removed the unit" test ! -e "$root/usr/lib/systemd/system/leengine-core.service"

echo
if [ "$failures" -gt 0 ]; then
  echo "hack/package-test.sh: $failures of $((checks + failures)) checks failed"
  exit 1
fi
echo "hack/package-test.sh: all $checks checks passed"

#!/usr/bin/env bash
# Builds, once per machine, the two Java images the example app needs, as
# root filesystem tarballs (nothing can be pulled here, so they are made from
# this machine's Debian JDK and Maven):
#   jdk-maven.tar  the compile image: OpenJDK 17 (bin, lib, conf) + Maven, busybox for /bin/sh
#   jre.tar        the app base image: a jlink'ed runtime of the modules a small
#                  HTTP service needs, busybox for /bin/sh
# Each tree carries exactly the shared libraries `ldd` names for its ELF files.
# Cached under ${LEENGINE_CACHE:-/var/cache/leengine}/java-images-KEY, KEY from the
# JDK's release file and Maven's version; idempotent.
#
#   hack/java-images.sh          build what is missing, print the env lines
#   hack/java-images.sh --print  only print them (LEENGINE_JDK_MAVEN_TAR=..., LEENGINE_JRE_TAR=...)
#
# A real site does not build these: it mirrors eclipse-temurin:17-jdk + maven
# (or maven:3-eclipse-temurin-17) and eclipse-temurin:17-jre into its own
# registry, adds a settings.xml naming its Maven mirror (Nexus / Artifactory)
# to the compile image, and names both in the build config and the Dockerfile.
set -euo pipefail
cd "$(dirname "$0")/.."

JDK=${LEENGINE_JDK:-/usr/lib/jvm/java-17-openjdk-amd64}
MAVEN=${LEENGINE_MAVEN:-/usr/share/maven}
CACHE=${LEENGINE_CACHE:-/var/cache/leengine}
# The runtime modules of the JRE: what hello-shop (JDK HTTP server, Jackson,
# SLF4J) uses, plus the usual small ones a service reaches for.
JRE_MODULES=java.base,java.logging,java.xml,java.sql,java.naming,java.management,jdk.httpserver,jdk.crypto.ec,jdk.unsupported

die() { echo "hack/java-images.sh: $*" >&2; exit 1; }
[ -x "$JDK/bin/javac" ] && [ -d "$JDK/jmods" ] || die "no JDK with jmods at $JDK (apt-get install openjdk-17-jdk-headless; hack/deps.sh installs it)"
[ -x "$MAVEN/bin/mvn" ] || die "no Maven at $MAVEN (apt-get install maven)"
BUSYBOX=$(command -v busybox) || die "no busybox (apt-get install busybox-static)"

KEY=$( { cat "$JDK/release"; ls -l "$MAVEN/lib"; echo "$JRE_MODULES"; sha256sum <"$0"; } | sha256sum | cut -c1-12)
DIR="$CACHE/java-images-$KEY"
print_env() {
  echo "LEENGINE_JDK_MAVEN_TAR=$DIR/jdk-maven.tar"
  echo "LEENGINE_JRE_TAR=$DIR/jre.tar"
}
if [ "${1:-}" = "--print" ]; then print_env; exit 0; fi
if [ -f "$DIR/jdk-maven.tar" ] && [ -f "$DIR/jre.tar" ]; then print_env; exit 0; fi

mkdir -p "$CACHE"
WORK=$(mktemp -d "$CACHE/java-images.tmp.XXXXXX")
trap '[ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT

# busybox ROOT: /bin/sh and every applet, the dirs a runtime mounts over.
busybox_root() {
  local root=$1
  mkdir -p "$root"/{bin,etc,proc,sys,dev,tmp,run,var,root}
  chmod 1777 "$root/tmp"
  cp "$BUSYBOX" "$root/bin/busybox"
  for a in $("$BUSYBOX" --list); do [ -e "$root/bin/$a" ] || ln -s busybox "$root/bin/$a"; done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
  echo 'root:x:0:' >"$root/etc/group"
}

# libs ROOT DIR: copies every shared library that ldd names for an ELF file
# under ROOT/DIR (and the loader) to the same path under ROOT.
libs() {
  local root=$1 dir=$2
  find "$root$dir" -type f \( -name '*.so*' -o -perm -u+x \) -print0 |
    xargs -0 ldd 2>/dev/null |
    awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}' | sort -u |
    while read -r lib; do
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    done
  # glibc loads libgcc_s when a thread is cancelled; the JVM's threads exit that way.
  for extra in /lib/x86_64-linux-gnu/libgcc_s.so.1; do
    [ -e "$extra" ] && cp -L "$extra" "$root$extra"
  done
}

# copy_tree SRC DST: SRC's files with every symlink replaced by what it points
# to (Debian's JDK and Maven link into /etc and /usr/share/java); dangling
# links (the JDK's src.zip without openjdk-17-source) are left out.
copy_tree() {
  local src=$1 dst=$2 l t
  cp -a "$src" "$dst"
  find "$dst" -type l | while read -r l; do
    t=$(readlink -f "$src${l#"$dst"}" || true)
    rm "$l"
    if [ -n "$t" ] && [ -e "$t" ]; then cp -rL "$t" "$l"; fi
  done
}

# runs ROOT JAVA: JAVA starts inside ROOT (its own /proc, which the loader
# needs to resolve the JDK's $ORIGIN rpath, in a throw-away mount namespace).
runs() {
  unshare --mount --pid --fork chroot "$1" /bin/sh -c "mount -t proc proc /proc && $2 -version" >/dev/null 2>&1
}

start=$(date +%s)
echo "hack/java-images.sh: building the JDK + Maven compile image and the JRE base image from $JDK into $DIR"

B="$WORK/jdk-maven"
busybox_root "$B"
mkdir -p "$B/opt/jdk"
for d in bin conf lib release; do copy_tree "$JDK/$d" "$B/opt/jdk/$d"; done
copy_tree "$MAVEN" "$B/opt/maven"
libs "$B" /opt/jdk
tar -C "$B" -cf "$WORK/jdk-maven.tar" .
runs "$B" /opt/jdk/bin/java && runs "$B" "JAVA_HOME=/opt/jdk /opt/maven/bin/mvn" || die "the compile image's java or mvn does not start (chroot $B)"

R="$WORK/jre"
busybox_root "$R"
mkdir -p "$R/opt"
"$JDK/bin/jlink" --add-modules "$JRE_MODULES" --strip-debug --no-header-files --no-man-pages \
  --compress=2 --output "$R/opt/jre" >/dev/null
libs "$R" /opt/jre
runs "$R" /opt/jre/bin/java || die "the JRE image's java does not start (chroot $R)"
tar -C "$R" -cf "$WORK/jre.tar" .

mkdir -p "$DIR"
mv "$WORK/jdk-maven.tar" "$WORK/jre.tar" "$DIR/"
echo "hack/java-images.sh: built in $(( $(date +%s) - start )) s: compile image $(du -m "$DIR/jdk-maven.tar" | cut -f1) MB, JRE $(du -m "$DIR/jre.tar" | cut -f1) MB"
print_env

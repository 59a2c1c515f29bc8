#!/bin/sh
# The build config's compile script: runs in the JDK + Maven build image with
# the checkout at /workspace and the config's Maven cache at $LEENGINE_CACHE.
# The image's Maven settings name the site's Maven mirror; the first build
# downloads every plugin and library through it, later ones find them in the
# cache. -B: batch mode (plain log, one line per download).
set -eu
mvn -B -Dstyle.color=never -Dmaven.repo.local="$LEENGINE_CACHE" -DskipTests package

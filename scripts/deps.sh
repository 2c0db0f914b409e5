#!/bin/sh
# Installs the Debian packages rbuild's demo and tests need, when missing.
set -eu
need=""
for p in busybox-static skopeo umoci; do
  dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
done
if [ -n "$need" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq $need >/dev/null
fi

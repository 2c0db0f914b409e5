#!/bin/sh
# Installs the Debian packages rbuild's demo and tests need, when missing.
set -eu
need=""
# Networks (issue 14): podman's network stack (netavark, aardvark-dns) and iptables for its NAT rules;
# podman itself is the reference the network tests and bench compare against.
for p in busybox-static skopeo umoci docker-registry buildah runc netavark aardvark-dns iptables podman curl; do
  dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
done
# Dockerfile e2e tests (cli/tests/dockerfile.rs): archives for ADD, git for ADD of a repository.
command -v bzip2 >/dev/null 2>&1 || need="$need bzip2"
command -v xz >/dev/null 2>&1 || need="$need xz-utils"
command -v git >/dev/null 2>&1 || need="$need git"
if [ -n "$need" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq $need >/dev/null
fi

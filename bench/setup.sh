#!/bin/sh
# Prepares the benchmark peers and base root filesystems (benchmarks are not tests: CI does not
# run them, so scripts/deps.sh stays as it is and the peers are installed here).
#  - installs from Debian what is missing: busybox-static, buildah + runc, docker.io (dockerd with
#    BuildKit 0.8 built in), debootstrap;
#  - starts a private dockerd (own socket, data root and exec root) unless it already answers;
#  - writes $BENCH_WORK/busybox-rootfs.tar and $BENCH_WORK/debian-rootfs.tar (debootstrap minbase
#    bookworm from the mirror in /etc/apt/sources.list.d/), kept between runs.
# Environment: BENCH_WORK (default /var/tmp/rbuild-bench), BENCH_NO_DEBIAN=1 skips debootstrap,
# BENCH_NO_INSTALL=1 installs nothing (peers missing are then left out of the table).
set -eu
cd "$(dirname "$0")/.."
W=${BENCH_WORK:-/var/tmp/rbuild-bench}
mkdir -p "$W"
[ "$(id -u)" = 0 ] || { echo "bench/setup.sh: needs root (namespaces, overlayfs, dockerd)" >&2; exit 1; }

need=""
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || need="$need busybox-static"
command -v buildah >/dev/null || need="$need buildah"
command -v runc >/dev/null || need="$need runc"
[ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ] || need="$need docker.io"
command -v debootstrap >/dev/null || need="$need debootstrap"
if [ -n "$need" ] && [ "${BENCH_NO_INSTALL:-0}" != 1 ]; then
  echo "bench/setup.sh: apt-get install$need"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $need >"$W/apt.log" 2>&1 ||
    { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $need >"$W/apt.log" 2>&1; } ||
    echo "bench/setup.sh: apt-get install$need failed (see $W/apt.log); those peers are left out" >&2
fi

# A private dockerd: BuildKit 0.8 is its builder. Its own paths keep it apart from any other daemon.
sock=/run/rbuild-bench-docker.sock
if [ -x /usr/sbin/dockerd ] && ! DOCKER_HOST=unix://$sock /usr/bin/docker version >/dev/null 2>&1; then
  echo "bench/setup.sh: starting dockerd on $sock (log $W/dockerd.log)"
  nohup /usr/sbin/dockerd --iptables=false --bridge=none --ip-masq=false \
    --data-root /var/lib/rbuild-bench-docker --exec-root /run/rbuild-bench-docker \
    --pidfile /run/rbuild-bench-docker.pid -H unix://$sock >"$W/dockerd.log" 2>&1 &
  i=0
  until DOCKER_HOST=unix://$sock /usr/bin/docker version >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 60 ] || { echo "bench/setup.sh: dockerd did not answer in 30 s, see $W/dockerd.log" >&2; break; }
    sleep 0.5
  done
fi

[ -s "$W/busybox-rootfs.tar" ] || scripts/busybox-rootfs.sh "$W/busybox-rootfs.tar"

if [ "${BENCH_NO_DEBIAN:-0}" != 1 ] && [ ! -s "$W/debian-rootfs.tar" ] && command -v debootstrap >/dev/null; then
  mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\)\/*$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
  [ -n "$mirror" ] || mirror=$(sed -n 's/^deb \(http[^ ]*debian\)\/* .*/\1/p' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n1)
  mirror=${mirror:-http://deb.debian.org/debian}
  echo "bench/setup.sh: debootstrap --variant=minbase bookworm from $mirror (log $W/debootstrap.log)"
  rm -rf "$W/debian-root"
  if debootstrap --variant=minbase bookworm "$W/debian-root" "$mirror" >"$W/debootstrap.log" 2>&1; then
    rm -rf "$W/debian-root/var/cache/apt/archives/"*.deb "$W/debian-root/var/lib/apt/lists/"*_Packages 2>/dev/null || true
    # apt inside RUN steps needs a resolver and the same mirror.
    cp /etc/resolv.conf "$W/debian-root/etc/resolv.conf" 2>/dev/null || true
    tar --numeric-owner -C "$W/debian-root" -cf "$W/debian-rootfs.tar.part" . &&
      mv "$W/debian-rootfs.tar.part" "$W/debian-rootfs.tar"
    rm -rf "$W/debian-root"
  else
    echo "bench/setup.sh: debootstrap failed (see $W/debootstrap.log); the debian scenario is left out" >&2
  fi
fi
# Optional: current BuildKit built from source (see ../shared/peers.md or bench/README): when
# $BUILDKIT_BIN (default $BENCH_WORK/buildkit-bin) holds buildkitd and buildctl, start a local
# registry (docker-registry on 127.0.0.1:5077) with the base images in it and buildkitd with
# docker.io mirrored to that registry, so `FROM busybox:local` resolves there.
bk=${BUILDKIT_BIN:-$W/buildkit-bin}
bksock=/run/rbuild-bench-buildkitd.sock
if [ -x "$bk/buildkitd" ] && [ -x "$bk/buildctl" ]; then
  command -v docker-registry >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-registry >>"$W/apt.log" 2>&1 || true
  command -v skopeo >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q skopeo >>"$W/apt.log" 2>&1 || true
  if ! curl -fs http://127.0.0.1:5077/v2/ >/dev/null 2>&1; then
    mkdir -p "$W/registry"
    cat >"$W/registry.yml" <<EOC
version: 0.1
storage:
  filesystem:
    rootdirectory: $W/registry
http:
  addr: 127.0.0.1:5077
EOC
    nohup docker-registry serve "$W/registry.yml" >"$W/registry.log" 2>&1 &
    i=0; until curl -fs http://127.0.0.1:5077/v2/ >/dev/null 2>&1; do i=$((i + 1)); [ $i -lt 40 ] || break; sleep 0.25; done
  fi
  for img in busybox debian; do
    [ -s "$W/$img-rootfs.tar" ] || continue
    if ! skopeo inspect --tls-verify=false "docker://127.0.0.1:5077/library/$img:local" >/dev/null 2>&1; then
      DOCKER_HOST=unix://$sock /usr/bin/docker import "$W/$img-rootfs.tar" "$img:local" >/dev/null &&
        DOCKER_HOST=unix://$sock /usr/bin/docker save -o "$W/$img-docker.tar" "$img:local" &&
        skopeo copy -q --dest-tls-verify=false "docker-archive:$W/$img-docker.tar" \
          "docker://127.0.0.1:5077/library/$img:local" && rm -f "$W/$img-docker.tar" ||
        echo "bench/setup.sh: could not put $img:local into the registry (needs the dockerd above)" >&2
    fi
  done
  if ! "$bk/buildctl" --addr unix://$bksock debug workers >/dev/null 2>&1; then
    cat >"$W/buildkitd.toml" <<EOC
[worker.oci]
  snapshotter = "overlayfs"
  networkMode = "host"
[worker.containerd]
  enabled = false
[registry."docker.io"]
  mirrors = ["127.0.0.1:5077"]
[registry."127.0.0.1:5077"]
  http = true
EOC
    echo "bench/setup.sh: starting buildkitd on $bksock (log $W/buildkitd.log)"
    PATH=$bk:$PATH nohup "$bk/buildkitd" --root /var/lib/rbuild-bench-buildkitd --addr unix://$bksock \
      --config "$W/buildkitd.toml" >"$W/buildkitd.log" 2>&1 &
    echo $! >/run/rbuild-bench-buildkitd.pid
    i=0
    until "$bk/buildctl" --addr unix://$bksock debug workers >/dev/null 2>&1; do
      i=$((i + 1)); [ $i -lt 60 ] || { echo "bench/setup.sh: buildkitd did not answer, see $W/buildkitd.log" >&2; break; }
      sleep 0.5
    done
  fi
fi
echo "bench/setup.sh: ready in $W"

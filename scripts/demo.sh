#!/bin/sh
# Builds rbuild and runs the main job end to end in a private store: a busybox base image from
# Debian's busybox-static, the two-stage testdata/web image, `images`, `run`, and an OCI archive.
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release --locked
export RBUILD_ROOT="${RBUILD_ROOT:-$(mktemp -d /tmp/rbuild-demo-XXXXXX)}"
rb=target/release/rbuild
scripts/busybox-rootfs.sh /tmp/busybox-rootfs.tar
$rb import /tmp/busybox-rootfs.tar busybox:local
$rb -t web:v1 testdata/web
$rb images
$rb run --rm web:v1
$rb build -t web:v1 --output type=oci,dest=/tmp/web.tar testdata/web
skopeo inspect oci-archive:/tmp/web.tar | head -20
echo "store: $RBUILD_ROOT"

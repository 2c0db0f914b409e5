#!/bin/sh
# Runs every test: unit tests of each crate and the end-to-end tests of the real binary.
# Needs root (namespaces, overlayfs, mounts), as CI has.
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo test --workspace --locked "$@"

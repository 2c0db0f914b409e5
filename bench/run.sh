#!/bin/sh
# rbuild side by side with BuildKit (in dockerd) and buildah: one command.
#   bench/run.sh [--runs N] [--save] [--scenarios a,b] [--engines rbuild,buildkit,buildah]
#                [--rev GITREV] [--rbuild BINARY] [--rbuild-before BINARY (a second rbuild in the same run)]
# Builds rbuild in release mode (from the working tree, or with --rev from that commit, exported
# into $BENCH_WORK/src), runs bench/setup.sh (installs and starts the peers, makes the busybox and
# Debian base roots) and then bench/bench.py, which prints the table; --save writes
# bench/results/<date>.md. Needs root. BENCH_WORK (default /var/tmp/rbuild-bench) holds the stores,
# contexts and logs of every build ($BENCH_WORK/logs).
set -eu
cd "$(dirname "$0")/.."
W=${BENCH_WORK:-/var/tmp/rbuild-bench}
export BENCH_WORK=$W
rev="" bin=""
pass=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rev) rev=${2:?--rev needs a git revision}; shift 2 ;;
    --rbuild) bin=${2:?--rbuild needs a path}; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) pass="$pass $1"; shift ;;
  esac
done
mkdir -p "$W"
if [ -n "$bin" ]; then
  desc="the given binary $bin"
elif [ -n "$rev" ]; then
  commit=$(git rev-parse --short "$rev^{commit}")
  echo "bench/run.sh: building rbuild $commit in release mode ($W/src)" >&2
  rm -rf "$W/src" && mkdir -p "$W/src"
  git archive "$commit" | tar -x -C "$W/src"
  (cd "$W/src" && CARGO_TARGET_DIR="$W/target" cargo build --release -q -p rbuild)
  bin="$W/target/release/rbuild"
  desc="commit $commit"
else
  echo "bench/run.sh: building rbuild in release mode" >&2
  cargo build --release --locked -q -p rbuild
  bin="$PWD/target/release/rbuild"
  desc="the working tree at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo ' with local changes')"
fi
bench/setup.sh >&2
# shellcheck disable=SC2086
exec python3 bench/bench.py --rbuild "$bin" --rev "$desc" $pass

#!/bin/sh
# Time from starting a published web container to its first successful HTTP response, rbuild
# against podman 4.3 (the issue's anchor), engines taking turns. Needs root, podman, curl.
#   bench/network.sh [--runs N] [--rbuild BINARY]
# Both engines start the container detached (`run -d`) and remove it with `rm -f`.
set -eu
RUNS=5
RBUILD="$(dirname "$0")/../target/release/rbuild"
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --rbuild) RBUILD=$2; shift 2 ;;
    *) echo "usage: $0 [--runs N] [--rbuild BINARY]" >&2; exit 2 ;;
  esac
done
[ -x "$RBUILD" ] || { echo "no rbuild binary at $RBUILD (cargo build --release)" >&2; exit 1; }
WORK=${BENCH_WORK:-/var/tmp/rbuild-bench}/network
mkdir -p "$WORK"
export RBUILD_ROOT="$WORK/store"
PORT=18290
if [ ! -f "$WORK/bb.tar" ]; then
  "$(dirname "$0")/../scripts/busybox-rootfs.sh" "$WORK/bb.tar" >/dev/null
fi
"$RBUILD" import "$WORK/bb.tar" bench-net:bb >/dev/null
podman image exists localhost/bench-net:bb 2>/dev/null || podman import "$WORK/bb.tar" localhost/bench-net:bb >/dev/null 2>&1
PODMAN="podman run --runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024"

now() { date +%s%N; }
wait_http() { # port -> ms until a 200 since $1 start
  while ! curl -sf -o /dev/null -m 1 "http://127.0.0.1:$PORT/passwd"; do sleep 0.005; done
}

run_rbuild() {
  t0=$(now)
  "$RBUILD" run -d --rm --name bench-net -p $PORT:80 bench-net:bb httpd -f -p 80 -h /etc >/dev/null
  wait_http
  t1=$(now)
  "$RBUILD" rm -f bench-net >/dev/null 2>&1 || true
  echo $(( (t1 - t0) / 1000000 ))
}

run_podman() {
  t0=$(now)
  $PODMAN -d --rm --name bench-net -p $PORT:80 localhost/bench-net:bb httpd -f -p 80 -h /etc >/dev/null
  wait_http
  t1=$(now)
  podman rm -f -t 0 bench-net >/dev/null 2>&1 || true
  echo $(( (t1 - t0) / 1000000 ))
}

R=""; P=""
i=0
while [ $i -lt "$RUNS" ]; do
  R="$R $(run_rbuild)"
  P="$P $(run_podman)"
  i=$((i + 1))
done
median() { echo "$@" | tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mr=$(median $R); mp=$(median $P)
echo "run -d -p to first HTTP 200 (ms), $RUNS runs each"
echo "rbuild: $R  (median $mr)"
echo "podman: $P  (median $mp)"
echo "ratio rbuild/podman: $(echo "scale=2; $mr / $mp" | bc)  (target <= 0.5)"

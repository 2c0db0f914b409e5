#!/bin/sh
# `compose up -d --build` of a three-service project (two services built from Dockerfiles, one from
# an image, a named volume, a healthcheck dependency, a published port), cold (no image, no cache)
# and unchanged (the same command again), rbuild against podman-compose (PyPI) on podman 4.3,
# engines taking turns. Each timed run ends when the command returns; `down -v` between runs.
# Needs root, podman, podman-compose (`pip install podman-compose`), curl.
#   bench/compose.sh [--runs N] [--rbuild BINARY]
set -eu
RUNS=3
RBUILD="$(cd "$(dirname "$0")/.." && pwd)/target/release/rbuild"
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --rbuild) RBUILD=$2; shift 2 ;;
    *) echo "usage: $0 [--runs N] [--rbuild BINARY]" >&2; exit 2 ;;
  esac
done
[ -x "$RBUILD" ] || { echo "no rbuild binary at $RBUILD (cargo build --release)" >&2; exit 1; }
command -v podman-compose >/dev/null || { echo "podman-compose missing: pip install podman-compose" >&2; exit 1; }
WORK=${BENCH_WORK:-/var/tmp/rbuild-bench}/compose
rm -rf "$WORK/app"
mkdir -p "$WORK/app/web" "$WORK/app/api"
if [ ! -f "$WORK/bb.tar" ]; then
  "$(dirname "$0")/../scripts/busybox-rootfs.sh" "$WORK/bb.tar" >/dev/null
fi
podman image exists localhost/bench-cmp:bb 2>/dev/null || podman import "$WORK/bb.tar" localhost/bench-cmp:bb >/dev/null
cd "$WORK/app"
for s in web api; do
  cat > $s/Dockerfile <<DF
FROM localhost/bench-cmp:bb
RUN mkdir -p /www && echo $s > /www/index.html
RUN for i in 1 2 3 4 5 6 7 8; do echo \$i >> /www/steps; done
CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
DF
done
cat > compose.yaml <<'YML'
name: cmpbench
services:
  web:
    build: ./web
    ports: ["18390:80"]
    depends_on:
      db: {condition: service_healthy}
      api: {condition: service_started}
  api:
    build: ./api
  db:
    image: localhost/bench-cmp:bb
    command: ["httpd", "-f", "-p", "80", "-h", "/data"]
    volumes: ["data:/data"]
    healthcheck:
      test: ["CMD", "true"]
      interval: 1s
volumes:
  data:
YML
PC="podman-compose --podman-run-args=--runtime=runc --podman-run-args=--ulimit=nofile=1024:1024 --podman-run-args=--ulimit=nproc=1024:1024 --podman-build-args=--runtime=runc --podman-build-args=--isolation=oci"
now() { date +%s%N; }
ms() { echo $(( ($2 - $1) / 1000000 )); }

export RBUILD_ROOT="$WORK/store"
rb_cold() {
  "$RBUILD" compose down -v -t 1 >/dev/null 2>&1 || true
  rm -rf "$WORK/store"
  "$RBUILD" import "$WORK/bb.tar" localhost/bench-cmp:bb >/dev/null
  t0=$(now); "$RBUILD" compose up -d --build >/dev/null 2>&1; t1=$(now)
  curl -sf -m 5 -o /dev/null http://127.0.0.1:18390/ || echo "rbuild: web not answering" >&2
  ms "$t0" "$t1"
}
rb_again() {
  t0=$(now); "$RBUILD" compose up -d --build >/dev/null 2>&1; t1=$(now)
  "$RBUILD" compose down -v -t 1 >/dev/null 2>&1
  ms "$t0" "$t1"
}
pc_cold() {
  podman rmi -f cmpbench_web cmpbench_api >/dev/null 2>&1 || true
  podman image prune -f >/dev/null 2>&1 || true
  t0=$(now); $PC up -d --build >/dev/null 2>&1; t1=$(now)
  curl -sf -m 5 -o /dev/null http://127.0.0.1:18390/ || echo "podman-compose: web not answering" >&2
  ms "$t0" "$t1"
}
pc_again() {
  t0=$(now); $PC up -d --build >/dev/null 2>&1; t1=$(now)
  $PC down -v -t 1 >/dev/null 2>&1
  ms "$t0" "$t1"
}

RC=""; RA=""; PCC=""; PA=""
i=0
while [ $i -lt "$RUNS" ]; do
  RC="$RC $(rb_cold)"; RA="$RA $(rb_again)"
  PCC="$PCC $(pc_cold)"; PA="$PA $(pc_again)"
  i=$((i + 1))
done
median() { echo "$@" | tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '%-28s %10s %10s\n' "compose up -d --build (ms)" cold unchanged
printf '%-28s %10s %10s   runs: %s /%s\n' rbuild "$(median $RC)" "$(median $RA)" "$RC" "$RA"
printf '%-28s %10s %10s   runs: %s /%s\n' podman-compose "$(median $PCC)" "$(median $PA)" "$PCC" "$PA"

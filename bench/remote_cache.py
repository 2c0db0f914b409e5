#!/usr/bin/env python3
"""Remote cache benchmark (issue 16): a CI runner with an empty store builds a multi-stage project,
without a cache and with a warm remote cache in a registry, rbuild against BuildKit
(`--export-cache/--import-cache type=registry`) on the same registry, in one run.

    bench/remote_cache.py --rbuild target/release/rbuild --buildkit-bin DIR [--runs 3] [--save]
                          [--rbuild-before OLD_BINARY]

DIR holds `buildkitd` and `buildctl` (built from source, see ../shared/peers.md). Needs root, runc,
docker-registry and busybox-static. Starts its own registry (127.0.0.1:15016) and buildkitd
(/run/remote-cache-bench-buildkitd.sock) and stops them at the end. Every measured build starts
cold: a fresh rbuild store (the base image is pulled from the registry as part of the build), or
BuildKit after `buildctl prune --all`. Both engines write the image as an OCI tar, so the final
image's layers must really be there. `--rbuild-before` times a second rbuild binary (a previous
release) in the same run, with a cache it exported itself. Standard library only.
"""

import argparse
import datetime
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORT = 15016
REG = f"127.0.0.1:{PORT}"
BASE = f"{REG}/library/busybox:latest"
SOCK = "unix:///run/remote-cache-bench-buildkitd.sock"
EPOCH = "1700000000"

DOCKERFILE = f"""\
FROM {BASE} AS build
COPY src/ /src/
RUN i=0; while [ $i -lt 60 ]; do cat /src/* | sha256sum >> /hashes; i=$((i+1)); done
RUN dd if=/dev/urandom of=/toolchain.bin bs=1M count=48 2>/dev/null
RUN cat /src/* /hashes > /app.bin
FROM {BASE}
RUN mkdir -p /srv && dd if=/dev/urandom of=/srv/assets.bin bs=1M count=8 2>/dev/null
COPY --from=build /app.bin /srv/app.bin
COPY late.txt /srv/
RUN sha256sum /srv/* > /srv/SUMS
"""


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def run(cmd, env=None, check=True, quiet=True):
    e = dict(os.environ)
    if env:
        e.update(env)
    r = subprocess.run(cmd, env=e, stdout=subprocess.PIPE if quiet else None,
                       stderr=subprocess.STDOUT if quiet else None, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout or ''}")
    return r


def timed(cmd, env=None):
    t = time.monotonic()
    run(cmd, env=env)
    return time.monotonic() - t


def wait_port(port, what):
    t = time.monotonic()
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() - t > 30:
                raise SystemExit(f"{what} did not start")
            time.sleep(0.1)


class Bench:
    def __init__(self, args):
        self.a = args
        self.w = args.work
        self.procs = []

    def start_registry(self):
        os.makedirs(self.w, exist_ok=True)
        data = os.path.join(self.w, "registry")
        shutil.rmtree(data, ignore_errors=True)
        cfg = os.path.join(self.w, "registry.yml")
        with open(cfg, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                    f"    rootdirectory: {data}\nhttp:\n  addr: {REG}\n")
        p = subprocess.Popen(["docker-registry", "serve", cfg], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        self.procs.append(p)
        wait_port(PORT, "docker-registry")

    def start_buildkitd(self):
        root = os.path.join(self.w, "buildkitd")
        cfg = os.path.join(self.w, "buildkitd.toml")
        with open(cfg, "w") as f:
            f.write('[worker.oci]\n  snapshotter = "overlayfs"\n  networkMode = "host"\n'
                    '[worker.containerd]\n  enabled = false\n'
                    f'[registry."{REG}"]\n  http = true\n')
        logf = open(os.path.join(self.w, "buildkitd.log"), "w")
        p = subprocess.Popen([os.path.join(self.a.buildkit_bin, "buildkitd"), "--root", root,
                              "--addr", SOCK, "--config", cfg], stdout=logf, stderr=logf)
        self.procs.append(p)
        t = time.monotonic()
        while run(self.buildctl("debug", "workers"), check=False).returncode != 0:
            if time.monotonic() - t > 60 or p.poll() is not None:
                raise SystemExit("buildkitd did not start; see " + logf.name)
            time.sleep(0.3)

    def stop(self):
        for p in reversed(self.procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def buildctl(self, *args):
        return [os.path.join(self.a.buildkit_bin, "buildctl"), "--addr", SOCK, *args]

    def prepare(self):
        os.makedirs(self.w, exist_ok=True)
        tar = os.path.join(self.w, "busybox-rootfs.tar")
        if not os.path.exists(tar):
            run([os.path.join(REPO, "scripts/busybox-rootfs.sh"), tar])
        seed = self.store("seed")
        env = {"RBUILD_ROOT": seed, "SOURCE_DATE_EPOCH": EPOCH}
        run([self.a.rbuild, "import", tar, "busybox:local"], env=env)
        run([self.a.rbuild, "push", "busybox:local", BASE], env=env)
        ctx = os.path.join(self.w, "ctx")
        shutil.rmtree(ctx, ignore_errors=True)
        os.makedirs(os.path.join(ctx, "src"))
        with open(os.path.join(ctx, "Dockerfile"), "w") as f:
            f.write(DOCKERFILE)
        for i in range(40):
            with open(os.path.join(ctx, "src", f"f{i}.txt"), "w") as f:
                f.write(f"file {i}\n" * 20000)
        with open(os.path.join(ctx, "late.txt"), "w") as f:
            f.write("v1\n")
        self.ctx = ctx

    def store(self, name):
        p = os.path.join(self.w, "stores", name)
        shutil.rmtree(p, ignore_errors=True)
        os.makedirs(p)
        return p

    def rbuild(self, name, extra, binary=None):
        env = {"RBUILD_ROOT": self.store(name), "SOURCE_DATE_EPOCH": EPOCH}
        out = os.path.join(self.w, f"{name}.oci.tar")
        cmd = [binary or self.a.rbuild, "build", "--progress", "plain", "-t", "bench/app:ci",
               "-o", f"type=oci,dest={out}", *extra, self.ctx]
        return timed(cmd, env)

    def buildkit(self, extra):
        run(self.buildctl("prune", "--all"))
        out = os.path.join(self.w, "bk.oci.tar")
        cmd = self.buildctl("build", "--frontend", "dockerfile.v0", "--local", f"context={self.ctx}",
                            "--local", f"dockerfile={self.ctx}",
                            "--output", f"type=oci,dest={out}", *extra)
        return timed(cmd, {"SOURCE_DATE_EPOCH": EPOCH})

    def main(self):
        self.prepare()
        rb_ref = f"{REG}/bench/app:rbuild-cache"
        bk_ref = f"{REG}/bench/app:buildkit-cache"
        log("exporting the warm caches (one build each)")
        self.rbuild("export", ["--cache-to", f"type=registry,ref={rb_ref},mode=max"])
        self.buildkit(["--export-cache", f"type=registry,ref={bk_ref},mode=max"])
        old = self.a.rbuild_before
        old_ref = f"{REG}/bench/app:rbuild-before-cache"
        if old:
            self.rbuild("export-before", ["--cache-to", f"type=registry,ref={old_ref},mode=max"],
                        old)
        names = ["rbuild cold", "rbuild cold + remote cache"]
        if old:
            names += ["rbuild-before cold", "rbuild-before cold + remote cache"]
        res = {k: [] for k in names + ["buildkit cold", "buildkit cold + remote cache"]}
        for i in range(self.a.runs):
            log(f"run {i + 1}/{self.a.runs}")
            res["rbuild cold"].append(self.rbuild("cold", []))
            res["buildkit cold"].append(self.buildkit([]))
            res["rbuild cold + remote cache"].append(
                self.rbuild("warm", ["--cache-from", f"type=registry,ref={rb_ref}"]))
            if old:
                res["rbuild-before cold"].append(self.rbuild("cold-before", [], old))
                res["rbuild-before cold + remote cache"].append(self.rbuild(
                    "warm-before", ["--cache-from", f"type=registry,ref={old_ref}"], old))
            res["buildkit cold + remote cache"].append(
                self.buildkit(["--import-cache", f"type=registry,ref={bk_ref}"]))
        return res


def report(res, args):
    med = {k: statistics.median(v) for k, v in res.items()}
    lines = [f"# Remote cache benchmark ({datetime.date.today()})", "",
             f"Empty store / pruned BuildKit, multi-stage project, {args.runs} runs, median seconds"
             " (all runs in brackets); output an OCI tar; registry on 127.0.0.1.", "",
             "| build | median s | runs |", "|---|---|---|"]
    for k, v in res.items():
        lines.append(f"| {k} | {med[k]:.2f} | {', '.join(f'{x:.2f}' for x in v)} |")
    ratio = med["rbuild cold + remote cache"] / med["buildkit cold + remote cache"]
    lines += ["", f"rbuild/BuildKit with the remote cache: {ratio:.2f}x (target <= 0.5x: "
              f"{'met' if ratio <= 0.5 else 'missed'}); rbuild with/without the cache: "
              f"{med['rbuild cold + remote cache'] / med['rbuild cold']:.2f}x"]
    if "rbuild-before cold + remote cache" in med:
        b = med["rbuild-before cold + remote cache"]
        lines += ["", f"rbuild-before/BuildKit with the remote cache: "
                  f"{b / med['buildkit cold + remote cache']:.2f}x; rbuild/rbuild-before: "
                  f"{med['rbuild cold + remote cache'] / b:.2f}x"]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rbuild", required=True)
    p.add_argument("--buildkit-bin", required=True)
    p.add_argument("--rbuild-before", help="a second rbuild binary timed in the same run")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--work", default="/var/tmp/remote-cache-bench")
    p.add_argument("--save", action="store_true")
    args = p.parse_args()
    args.rbuild = os.path.abspath(args.rbuild)
    if args.rbuild_before:
        args.rbuild_before = os.path.abspath(args.rbuild_before)
    b = Bench(args)
    try:
        b.start_registry()
        b.start_buildkitd()
        res = b.main()
    finally:
        b.stop()
    text = report(res, args)
    print(text)
    if args.save:
        path = os.path.join(REPO, "bench/results", f"{datetime.date.today()}-remote-cache.md")
        with open(path, "w") as f:
            f.write(text)
        log("saved", path)


if __name__ == "__main__":
    main()

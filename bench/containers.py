#!/usr/bin/env python3
"""rbuild's container commands side by side with podman (daemonless, conmon + runc).

    bench/containers.py --rbuild target/release/rbuild [--runs N] [--save]

Times, per engine, taking turns each run so machine noise hits both alike:
  run --rm IMG true        a whole container life
  run -d IMG ... (ready)   until the detached command returns (the container is running)
  exec C true              a process in a running container
  stop C                   a PID 1 that exits on SIGTERM
  logs C (100k lines)      printing a finished container's 100,000 log lines

Podman runs with its own storage (--root/--runroot under BENCH_WORK) and the flags this machine
needs (../shared/peers.md): --runtime runc and explicit nofile/nproc ulimits. The busybox image
is made by scripts/busybox-rootfs.sh, imported into rbuild and copied into podman's storage with
skopeo. Standard library only. Needs root.
"""

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORK = os.environ.get("BENCH_WORK", "/var/tmp/rbuild-bench") + "/containers"
STOP_CMD = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.05; done"]
LOG_CMD = ["sh", "-c", "seq 1 100000"]


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


class Engine:
    def __init__(self, name, base):
        self.name = name
        self.base = base


def rbuild_engine(binary):
    root = os.path.join(WORK, "rbuild-store")
    return Engine("rbuild", [binary, "--root", root]), root


def podman_engine():
    return Engine(
        "podman",
        [
            "podman",
            "--root", os.path.join(WORK, "podman-root"),
            "--runroot", "/run/rbuild-bench-podman",
            "--runtime", "runc",
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "file",
        ],
    )


PODMAN_RUN = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--network", "host"]


def setup(binary):
    os.makedirs(WORK, exist_ok=True)
    tar = os.path.join(WORK, "busybox-rootfs.tar")
    if not os.path.exists(tar):
        sh([os.path.join(REPO, "scripts/busybox-rootfs.sh"), tar])
    rb, _ = rbuild_engine(binary)
    subprocess.run([binary, "import", tar, "busybox:bench"], check=True, stdout=subprocess.DEVNULL)
    archive = os.path.join(WORK, "busybox-docker.tar")
    subprocess.run([binary, "save", "busybox:bench", "-o", archive], check=True,
                   stdout=subprocess.DEVNULL)
    pm = podman_engine()
    store = "containers-storage:[overlay@%s+/run/rbuild-bench-podman]localhost/busybox:bench" % (
        os.path.join(WORK, "podman-root"))
    sh(["skopeo", "copy", "docker-archive:" + archive, store])
    return rb, pm


def rb_args(engine, sub, *rest):
    """rbuild takes its store from RBUILD_ROOT; podman takes its globals first."""
    if engine.name == "rbuild":
        return [engine.base[0], sub, *rest]
    extra = PODMAN_RUN if sub in ("run", "create") else []
    return engine.base + [sub, *extra, *rest]


def t(cmd, out=subprocess.DEVNULL):
    s = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.PIPE)
    return time.perf_counter() - s


def one_round(e, img, n):
    r = {}
    r["run --rm true"] = t(rb_args(e, "run", "--rm", img, "true"))
    name = "bench-%s-%d" % (e.name, n)
    r["run -d (ready)"] = t(rb_args(e, "run", "-d", "--name", name, img, *STOP_CMD))
    r["exec true"] = t(rb_args(e, "exec", name, "true"))
    r["stop"] = t(rb_args(e, "stop", name))
    subprocess.run(rb_args(e, "rm", "-f", name), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    logs = "benchlogs-%s-%d" % (e.name, n)
    subprocess.run(rb_args(e, "run", "-d", "--name", logs, img, *LOG_CMD), check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(rb_args(e, "wait", logs), check=True, stdout=subprocess.DEVNULL)
    out = subprocess.run(rb_args(e, "logs", logs), check=True, stdout=subprocess.PIPE)
    if out.stdout.count(b"\n") != 100000:
        sys.exit("%s logs printed %d lines, not 100000" % (e.name, out.stdout.count(b"\n")))
    r["logs 100k lines"] = t(rb_args(e, "logs", logs))
    subprocess.run(rb_args(e, "rm", "-f", logs), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return r


def main():
    os.environ["RBUILD_ROOT"] = os.path.join(WORK, "rbuild-store")
    ap = argparse.ArgumentParser()
    ap.add_argument("--rbuild", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--save", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/containers.py: needs root")
    if not shutil.which("podman"):
        sys.exit("bench/containers.py: podman is not installed (apt-get install podman)")
    rb, pm = setup(os.path.abspath(a.rbuild))
    imgs = {"rbuild": "busybox:bench", "podman": "localhost/busybox:bench"}
    results = {"rbuild": {}, "podman": {}}
    for n in range(a.runs):
        for e in ([rb, pm] if n % 2 == 0 else [pm, rb]):
            for k, v in one_round(e, imgs[e.name], n).items():
                results[e.name].setdefault(k, []).append(v)
    keys = list(results["rbuild"].keys())
    lines = [
        "| operation (median of %d) | rbuild | podman 4.3 | rbuild / podman |" % a.runs,
        "|---|---|---|---|",
    ]
    for k in keys:
        r = statistics.median(results["rbuild"][k])
        p = statistics.median(results["podman"][k])
        lines.append("| %s | %.1f ms | %.1f ms | %.2fx |" % (k, r * 1000, p * 1000, r / p))
    table = "\n".join(lines)
    print(table)
    if a.save:
        day = datetime.date.today().isoformat()
        path = os.path.join(HERE, "results", "%s-containers.md" % day)
        with open(path, "w") as f:
            f.write("# Containers: rbuild vs podman (%s)\n\n" % day)
            f.write("`bench/containers.py --runs %d`, podman with `--runtime runc`, cgroupfs, "
                    "its own storage, host network.\n\n" % a.runs)
            f.write(table + "\n")
        print("saved", path)


if __name__ == "__main__":
    main()

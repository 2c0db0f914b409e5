#!/usr/bin/env python3
"""rbuild side by side with BuildKit (in dockerd) and buildah.

Run through bench/run.sh, which builds rbuild and prepares the peers. Every scenario is built
cold (--no-cache), again with nothing changed (no-op) and after changing one file a late COPY
uses, by each engine, `--runs` times. Engines take turns within each run (the first one rotates)
so that noise from other work on the machine hits all of them alike. Prints a table of medians,
ratios rbuild/peer and peak memory; `--save` also writes bench/results/<date>.md.

Only the Python standard library is used.
"""

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DOCKER_SOCK = "/run/rbuild-bench-docker.sock"
DOCKER_PIDFILE = "/run/rbuild-bench-docker.pid"
PHASES = ["cold", "noop", "change"]
SCENARIOS = ["many-runs", "multistage", "big-context", "layer-heavy", "parse", "debian"]
BUILD_TIMEOUT = 1800


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def sh(cmd, env=None, check=True, capture=True):
    """Runs a helper command (not a measured build)."""
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE if capture else None,
                       stderr=subprocess.STDOUT if capture else None, text=True)
    if check and r.returncode != 0:
        raise RuntimeError("%s failed (exit %d):\n%s" % (" ".join(cmd), r.returncode,
                                                          (r.stdout or "")[-2000:]))
    return r


# ---------------------------------------------------------------------------------------------
# Memory: resident set of a process tree, sampled.


def children(pid):
    out = []
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                out.extend(int(c) for c in f.read().split())
    except OSError:
        pass
    return out


def tree_rss(root):
    """Sum of VmRSS (bytes) over root and all its descendants."""
    total, stack, seen = 0, [root], set()
    page = os.sysconf("SC_PAGE_SIZE")
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open("/proc/%d/statm" % pid) as f:
                total += int(f.read().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
        stack.extend(children(pid))
    return total


class Sampler:
    """Samples tree_rss(pid()) every `interval` seconds until stopped; keeps the maximum."""

    def __init__(self, pid_fn, interval=0.02):
        self.pid_fn, self.interval, self.peak = pid_fn, interval, 0
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop_ev.is_set():
            pid = self.pid_fn()
            if pid:
                self.peak = max(self.peak, tree_rss(pid))
            self.stop_ev.wait(self.interval)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.stop_ev.set()
        self.thread.join()


# ---------------------------------------------------------------------------------------------
# Engines.


class Engine:
    name = "?"
    daemon_memory = False  # True: peak memory is the daemon's, not the client's

    def available(self):
        raise NotImplementedError

    def version(self):
        return ""

    def import_base(self, tar, ref):
        raise NotImplementedError

    def build_cmd(self, ctx, tag, no_cache):
        raise NotImplementedError

    def env(self):
        return dict(os.environ)

    def build(self, ctx, tag, no_cache, logfile):
        """Runs one build; returns (seconds, peak bytes, ok)."""
        cmd = self.build_cmd(ctx, tag, no_cache)
        with open(logfile, "w") as out:
            out.write("$ %s\n" % " ".join(cmd))
            out.flush()
            # The previous build's dirty pages (another engine's 200 MB layer) are written back
            # before the clock starts, not during this build: no engine pays for another's
            # writeback because of the turn order.
            os.sync()
            t0 = time.monotonic()
            p = subprocess.Popen(cmd, env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
            mem_root = self.daemon_pid if self.daemon_memory else (lambda: p.pid)
            with Sampler(mem_root) as s:
                try:
                    _, status, ru = os.wait4(p.pid, 0)
                except ChildProcessError:
                    status, ru = 1, None
                dt = time.monotonic() - t0
            p.returncode = os.waitstatus_to_exitcode(status)
        peak = s.peak
        if ru is not None and not self.daemon_memory:
            peak = max(peak, ru.ru_maxrss * 1024)
        return dt, peak, p.returncode == 0


class Rbuild(Engine):
    name = "rbuild"

    def __init__(self, binary, store, name="rbuild"):
        self.binary, self.store, self.name = binary, store, name

    def env(self):
        e = dict(os.environ)
        e["RBUILD_ROOT"] = self.store
        return e

    def available(self):
        return os.access(self.binary, os.X_OK)

    def version(self):
        return sh([self.binary, "--version"], check=False).stdout.strip()

    def import_base(self, tar, ref):
        sh([self.binary, "import", tar, ref], env=self.env())

    def build_cmd(self, ctx, tag, no_cache):
        return [self.binary, "build", "--progress", "plain", "-t", tag] + \
            (["--no-cache"] if no_cache else []) + [ctx]


class BuildKitDockerd(Engine):
    """BuildKit as built into Debian's dockerd (docker.io 20.10: BuildKit 0.8)."""
    name = "buildkit"
    daemon_memory = True

    def env(self):
        e = dict(os.environ)
        e["DOCKER_HOST"] = "unix://" + DOCKER_SOCK
        e["DOCKER_BUILDKIT"] = "1"
        return e

    def daemon_pid(self):
        try:
            with open(DOCKER_PIDFILE) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def available(self):
        return os.access("/usr/bin/docker", os.X_OK) and \
            sh(["/usr/bin/docker", "version"], env=self.env(), check=False).returncode == 0

    def version(self):
        v = sh(["/usr/bin/docker", "version", "--format", "{{.Server.Version}}"], env=self.env(),
               check=False).stdout.strip()
        return "dockerd %s (its built-in BuildKit)" % v

    def import_base(self, tar, ref):
        sh(["/usr/bin/docker", "import", tar, ref], env=self.env())

    def build_cmd(self, ctx, tag, no_cache):
        return ["/usr/bin/docker", "build", "--network=host", "--progress=plain", "-t", tag] + \
            (["--no-cache"] if no_cache else []) + [ctx]


class BuildKitSource(Engine):
    """Current BuildKit (buildkitd + buildctl built from source), started by bench/setup.sh."""
    name = "buildkit-src"
    daemon_memory = True
    SOCK = "/run/rbuild-bench-buildkitd.sock"
    PIDFILE = "/run/rbuild-bench-buildkitd.pid"

    def __init__(self, bindir):
        self.buildctl = os.path.join(bindir, "buildctl")
        self.buildkitd = os.path.join(bindir, "buildkitd")

    def daemon_pid(self):
        try:
            with open(self.PIDFILE) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def available(self):
        return os.access(self.buildctl, os.X_OK) and sh(
            [self.buildctl, "--addr", "unix://" + self.SOCK, "debug", "workers"], check=False).returncode == 0

    def version(self):
        return sh([self.buildkitd, "--version"], check=False).stdout.strip()

    def import_base(self, tar, ref):
        pass  # bench/setup.sh puts the bases into the registry buildkitd pulls from

    def build_cmd(self, ctx, tag, no_cache):
        return [self.buildctl, "--addr", "unix://" + self.SOCK, "build", "--progress", "plain",
                "--frontend", "dockerfile.v0", "--local", "context=" + ctx, "--local", "dockerfile=" + ctx,
                "--output", "type=image,name=docker.io/library/%s" % tag] + (["--no-cache"] if no_cache else [])


class Buildah(Engine):
    name = "buildah"

    def __init__(self, root, runroot):
        self.root, self.runroot = root, runroot

    def base(self):
        return ["buildah", "--root", self.root, "--runroot", self.runroot]

    def available(self):
        return shutil.which("buildah") is not None and shutil.which("runc") is not None

    def version(self):
        return sh(["buildah", "--version"], check=False).stdout.strip()

    def import_base(self, tar, ref):
        ctr = sh(self.base() + ["from", "scratch"]).stdout.strip().splitlines()[-1]
        try:
            sh(self.base() + ["add", ctr, tar, "/"])
            sh(self.base() + ["commit", "--quiet", ctr, ref])
        finally:
            sh(self.base() + ["rm", ctr], check=False)

    def build_cmd(self, ctx, tag, no_cache):
        return self.base() + ["build", "--isolation", "oci", "--runtime", "runc", "--layers",
                              "--network", "host", "-t", tag] + \
            (["--no-cache"] if no_cache else []) + [ctx]


# ---------------------------------------------------------------------------------------------
# Scenarios: each is a context directory with a Dockerfile and a `change` action.


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def calibrate_burn(target_s=0.5):
    """Iterations of a busybox sh counting loop that take about target_s of CPU here."""
    bb = "/bin/busybox" if os.path.exists("/bin/busybox") else "/usr/bin/busybox"
    n = 20000
    while True:
        t0 = time.monotonic()
        sh([bb, "sh", "-c", "i=0; while [ $i -lt %d ]; do i=$((i+1)); done" % n])
        dt = time.monotonic() - t0
        if dt > 0.1:
            return max(1000, int(n * target_s / dt)), bb
        n *= 4


def burn_cmd(n):
    return "i=0; while [ $i -lt %d ]; do i=$((i+1)); done" % n


class Scenario:
    def __init__(self, name, root, base="busybox:local"):
        self.name, self.dir, self.base = name, os.path.join(root, name), base
        self.counter = 0
        self.notes = ""
        self.change_file = "app.txt"

    def change(self):
        self.counter += 1
        text = "changed %d %f" % (self.counter, time.time())
        if self.change_file.endswith(".py"):
            text = "print(%r)" % text
        write(os.path.join(self.dir, self.change_file), text + "\n")


def make_scenarios(root, which, burn_n):
    out = []
    for name in which:
        s = Scenario(name, root, "debian:local" if name == "debian" else "busybox:local")
        if os.path.exists(s.dir):
            shutil.rmtree(s.dir)
        os.makedirs(s.dir)
        df = ["FROM %s" % s.base]
        if name == "many-runs":
            df += ["RUN echo %d > /f%d" % (i, i) for i in range(1, 31)]
            df += ["COPY app.txt /app.txt"]
            s.notes = "30 `RUN echo N > /fN`, then `COPY app.txt`; change: app.txt"
        elif name == "multistage":
            df = ["FROM %s AS a" % s.base, "RUN %s; echo a > /a" % burn_cmd(burn_n),
                  "FROM %s AS b" % s.base, "RUN %s; echo b > /b" % burn_cmd(burn_n),
                  "FROM %s" % s.base, "COPY --from=a /a /a", "COPY --from=b /b /b",
                  "COPY app.txt /app.txt"]
            s.notes = "stages a and b each count to %d in busybox sh (~0.5 s CPU), then COPY --from both" % burn_n
        elif name == "big-context":
            for d in range(200):
                for f in range(100):
                    write(os.path.join(s.dir, "files/d%03d/f%03d.txt" % (d, f)),
                          "file %d/%d\n" % (d, f) * 3)
            df += ["COPY files /files"]
            s.change_file = "files/d123/f045.txt"
            s.notes = "`COPY files /files` of 20,000 small files in 200 dirs; change: one of them"
        elif name == "layer-heavy":
            df += ["RUN dd if=/dev/urandom of=/big bs=1M count=200 2>/dev/null",
                   "COPY app.txt /app.txt"]
            s.notes = "one RUN writing 200 MB from /dev/urandom, then `COPY app.txt`"
        elif name == "parse":
            lines = []
            for i in range(1000):
                lines.append("# comment line %d: the parser must skip these quickly" % i)
            for i in range(20):
                lines.append("ARG A%d=%d" % (i, i))
                lines.append("ENV E%d=${A%d}-value" % (i, i))
                lines.append('LABEL bench.label%d="value %d"' % (i, i))
            n_run = 5000 - 1 - len(lines) - 1  # FROM, these, the RUN, COPY
            lines.append("RUN echo start > /log \\")
            for i in range(n_run - 2):
                lines.append("  && echo line %d >> /log \\" % i)
            lines.append("  && echo end >> /log")
            lines.append("COPY app.txt /app.txt")
            df += lines
            s.notes = "5,000-line Dockerfile: 1,000 comments, 20 ARG/ENV/LABEL each, one RUN of ~3,900 continuation lines, `COPY app.txt`"
        elif name == "debian":
            df += ["ENV DEBIAN_FRONTEND=noninteractive",
                   "RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends "
                   "python3-minimal >/dev/null && rm -rf /var/lib/apt/lists/*",
                   "WORKDIR /app", "COPY app.py /app/app.py",
                   "RUN python3 /app/app.py > /app/out.txt"]
            s.change_file = "app.py"
            s.notes = "debootstrap minbase bookworm root; `apt-get install python3-minimal`, COPY app.py, RUN it; change: app.py"
        else:
            raise SystemExit("unknown scenario %r (known: %s)" % (name, ", ".join(SCENARIOS)))
        write(os.path.join(s.dir, "Dockerfile"), "\n".join(df) + "\n")
        if name == "debian":
            write(os.path.join(s.dir, "app.py"), "print(sum(range(1000)))\n")
        else:
            write(os.path.join(s.dir, "app.txt"), "initial\n")
        out.append(s)
    return out


# ---------------------------------------------------------------------------------------------
# Reference timings (what the targets are measured against).


def time_cmd(cmd, runs=3, shell=False):
    ts = []
    for _ in range(runs):
        t0 = time.monotonic()
        subprocess.run(cmd, shell=shell, check=True, stdout=subprocess.DEVNULL)
        ts.append(time.monotonic() - t0)
    return statistics.median(ts)


def git_copy(s, work):
    """A git repository holding a copy of the scenario's context: `git status` over it is the
    physical limit of a no-op (every file's stat compared against one index file)."""
    d = os.path.join(work, "git-" + s.name)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(s.dir, d, symlinks=True)
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b",
               GIT_COMMITTER_EMAIL="b@b")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench"],
                ["git", "status", "--porcelain"]):
        subprocess.run(cmd, cwd=d, env=env, check=True, stdout=subprocess.DEVNULL)
    return d


def reference(s, work, bb, burn_n, refs):
    """Times, on the host and between the engines' builds, what a scenario's target is set against."""
    if s.name == "layer-heavy":
        # The physical limit of the scenario: write the data once (the RUN step) and hash it once
        # (a layer's diff_id), with the fastest SHA-256 of this machine (openssl).
        f = os.path.join(work, "ref-big")
        os.sync()
        dd = time_cmd("dd if=/dev/urandom of=%s bs=1M count=200 2>/dev/null" % f, runs=1, shell=True)
        sha = time_cmd(["openssl", "dgst", "-sha256", f], runs=1)
        refs.setdefault("dd", []).append(dd)
        refs.setdefault("sha256", []).append(sha)
        refs.setdefault("layer-limit", []).append(dd + sha)
        os.unlink(f)
    elif s.name == "big-context":
        if not getattr(s, "git_dir", None):
            s.git_dir = git_copy(s, work)
        refs.setdefault("git-status", []).append(
            time_cmd(["git", "-C", s.git_dir, "status", "--porcelain"], runs=3))
    elif s.name == "multistage":
        refs.setdefault("burn", []).append(time_cmd([bb, "sh", "-c", burn_cmd(burn_n)], runs=1))


# ---------------------------------------------------------------------------------------------
# Reporting.


def fmt_s(v):
    if v is None:
        return "-"
    return "%.2f s" % v if v >= 0.995 else "%.0f ms" % (v * 1000)


def fmt_mb(v):
    return "-" if not v else "%.0f MB" % (v / 1e6)


def median(xs):
    return statistics.median(xs) if xs else None


def report(results, engines, scenarios, refs, meta, runs):
    names = [e.name for e in engines]
    peers = [n for n in names if n != "rbuild"]
    L = []
    L.append("| scenario | phase | " + " | ".join(names) + "".join(" | rbuild/%s" % p for p in peers) + " |")
    L.append("|---|---|" + "---|" * (len(names) + len(peers)))
    for s in scenarios:
        for ph in PHASES:
            row = ["%s | %s" % (s.name, ph)]
            med = {}
            for n in names:
                r = results.get((s.name, ph, n))
                if r is None:
                    row.append("-")
                    continue
                m = median(r["times"])
                med[n] = m
                cell = fmt_s(m)
                if r["failed"]:
                    cell += " (%d/%d failed)" % (r["failed"], r["failed"] + len(r["times"]))
                row.append(cell)
            for p in peers:
                if med.get("rbuild") and med.get(p):
                    row.append("%.2fx" % (med["rbuild"] / med[p]))
                else:
                    row.append("-")
            L.append("| " + " | ".join(row) + " |")
    L.append("")
    L.append("Peak memory (the largest over all phases and runs; rbuild and buildah: RSS summed over the")
    L.append("client's process tree, RUN processes included; buildkit: the dockerd process tree, which")
    L.append("holds BuildKit, its runc children and containerd; buildkit-src: the buildkitd process tree):")
    L.append("")
    L.append("| scenario | " + " | ".join(names) + "".join(" | rbuild/%s" % p for p in peers) + " |")
    L.append("|---|" + "---|" * (len(names) + len(peers)))
    for s in scenarios:
        peaks = {}
        for n in names:
            ps = [v for ph in PHASES for v in results.get((s.name, ph, n), {}).get("peaks", [])]
            peaks[n] = max(ps) if ps else None
        row = [s.name] + [fmt_mb(peaks[n]) for n in names]
        for p in peers:
            row.append("%.2fx" % (peaks["rbuild"] / peaks[p]) if peaks.get("rbuild") and peaks.get(p) else "-")
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    L.append("Targets (BuildKit peers: `buildkit` = BuildKit 0.8 in dockerd, `buildkit-src` = current BuildKit):")
    L.append("")
    L.extend(targets(results, scenarios, refs))
    return "\n".join(L)


def targets(results, scenarios, refs):
    def med(s, ph, n):
        r = results.get((s, ph, n))
        return median(r["times"]) if r and r["times"] else None

    out = []
    names = {s.name for s in scenarios}

    def verdict(ok):
        return "**met**" if ok else "**missed**"

    for bk in ("buildkit", "buildkit-src"):
        if not any(k[2] == bk for k in results):
            continue
        for s in scenarios:
            a, b = med(s.name, "noop", "rbuild"), med(s.name, "noop", bk)
            if a and b:
                out.append("- no-op rebuild ≤ 0.5x %s, %s: %s vs %s = %.2fx: %s" %
                           (bk, s.name, fmt_s(a), fmt_s(b), a / b, verdict(a <= 0.5 * b)))
        for s, ph, what in (("many-runs", "cold", "cold many-runs"),
                            ("big-context", "change", "big-context after one change")):
            a, b = med(s, ph, "rbuild"), med(s, ph, bk)
            if s in names and a and b:
                out.append("- %s ≤ 0.5x %s: %s vs %s = %.2fx: %s" %
                           (what, bk, fmt_s(a), fmt_s(b), a / b, verdict(a <= 0.5 * b)))
        for s in scenarios:
            ra = [v for ph in PHASES for v in results.get((s.name, ph, "rbuild"), {}).get("peaks", [])]
            rb = [v for ph in PHASES for v in results.get((s.name, ph, bk), {}).get("peaks", [])]
            if ra and rb:
                out.append("- peak memory below the %s daemon's, %s: %s vs %s: %s" %
                           (bk, s.name, fmt_mb(max(ra)), fmt_mb(max(rb)), verdict(max(ra) < max(rb))))
    a = med("layer-heavy", "cold", "rbuild")
    if a and "layer-limit" in refs:
        ref = refs["layer-limit"]
        out.append("- layer-heavy cold ≤ 1.2x the limit (`dd` of the 200 MB %s + one `openssl dgst "
                   "-sha256` pass %s = %s, same run): %s = **%.2fx the limit**: %s" %
                   (fmt_s(refs["dd"]), fmt_s(refs["sha256"]), fmt_s(ref), fmt_s(a), a / ref,
                    verdict(a <= 1.2 * ref)))
    a = med("big-context", "noop", "rbuild")
    if a and "git-status" in refs:
        ref = refs["git-status"]
        out.append("- big-context no-op ≤ 2x `git status` over a copy of the context (%s, same run): "
                   "%s = **%.2fx git status**: %s" % (fmt_s(ref), fmt_s(a), a / ref, verdict(a <= 2 * ref)))
    a = med("big-context", "change", "rbuild")
    if a and "git-status" in refs:
        ref = refs["git-status"]
        out.append("- big-context after one change (the no-op plus one file; `git status` %s): %s = "
                   "%.2fx git status" % (fmt_s(ref), fmt_s(a), a / ref))
    a = med("multistage", "cold", "rbuild")
    if a and "burn" in refs:
        t = refs["burn"]
        out.append("- multistage cold close to the longest stage (one stage alone %s, both in sequence "
                   "%s; met when under 1.5x one stage): %s = %.2fx one stage: %s" %
                   (fmt_s(t), fmt_s(2 * t), fmt_s(a), a / t, verdict(a <= 1.5 * t)))
    return out


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--save", action="store_true", help="write bench/results/<date>.md")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--engines", default="rbuild,buildkit,buildkit-src,buildah")
    ap.add_argument("--rbuild", required=True, help="the rbuild binary")
    ap.add_argument("--work", default=os.environ.get("BENCH_WORK", "/var/tmp/rbuild-bench"))
    ap.add_argument("--rev", default="", help="what the rbuild binary was built from (for the report)")
    ap.add_argument("--rbuild-before", default="",
                    help="a second rbuild binary (e.g. the previous release) measured in the same run "
                         "as the engine `rbuild-before`")
    a = ap.parse_args()
    if a.runs < 1:
        raise SystemExit("--runs must be at least 1")

    work = a.work
    all_engines = {
        "rbuild": Rbuild(a.rbuild, os.path.join(work, "rbuild-store")),
        "rbuild-before": Rbuild(a.rbuild_before, os.path.join(work, "rbuild-before-store"), "rbuild-before"),
        "buildkit": BuildKitDockerd(),
        "buildah": Buildah(os.path.join(work, "buildah-root"), "/run/rbuild-bench-buildah"),
        "buildkit-src": BuildKitSource(os.environ.get("BUILDKIT_BIN", os.path.join(work, "buildkit-bin"))),
    }
    engines = []
    names = a.engines.split(",")
    if a.rbuild_before and "rbuild-before" not in names:
        names.insert(1, "rbuild-before")
    for n in names:
        if n not in all_engines:
            raise SystemExit("unknown engine %r (known: %s)" % (n, ", ".join(all_engines)))
        if all_engines[n].available():
            engines.append(all_engines[n])
        else:
            log("%s is not available here; left out (bench/setup.sh installs and starts the peers)" % n)
    if not engines or engines[0].name != "rbuild":
        raise SystemExit("rbuild must be available and listed first in --engines")

    which = [s for s in a.scenarios.split(",") if s]
    bases = {"busybox:local": os.path.join(work, "busybox-rootfs.tar"),
             "debian:local": os.path.join(work, "debian-rootfs.tar")}
    if "debian" in which and not os.path.exists(bases["debian:local"]):
        log("no %s (debootstrap failed or BENCH_NO_DEBIAN=1): the debian scenario is left out" % bases["debian:local"])
        which.remove("debian")

    # Fresh rbuild store each time; peers keep their stores (their base images are re-imported).
    shutil.rmtree(all_engines["rbuild"].store, ignore_errors=True)
    shutil.rmtree(all_engines["rbuild-before"].store, ignore_errors=True)
    for e in engines:
        for ref, tar in bases.items():
            if ref == "debian:local" and "debian" not in which:
                continue
            log("importing %s into %s" % (ref, e.name))
            e.import_base(tar, ref)

    burn_n, bb = calibrate_burn()
    scen_root = os.path.join(work, "scenarios")
    scenarios = make_scenarios(scen_root, which, burn_n)
    refs = {}
    logs = os.path.join(work, "logs")
    shutil.rmtree(logs, ignore_errors=True)
    os.makedirs(logs)

    results = {}
    t_start = time.monotonic()
    for s in scenarios:
        for run in range(a.runs):
            order = engines[run % len(engines):] + engines[:run % len(engines)]
            reference(s, work, bb, burn_n, refs)
            for e in order:
                tag = "bench-%s:latest" % s.name
                for ph in PHASES:
                    if ph == "change":
                        s.change()
                    lf = os.path.join(logs, "%s-%s-%s-%d.log" % (s.name, e.name, ph, run))
                    dt, peak, ok = e.build(s.dir, tag, ph == "cold", lf)
                    r = results.setdefault((s.name, ph, e.name), {"times": [], "peaks": [], "failed": 0})
                    if ok:
                        r["times"].append(dt)
                        r["peaks"].append(peak)
                    else:
                        r["failed"] += 1
                        log("FAILED: %s %s %s run %d (%.1f s), log %s:" % (s.name, e.name, ph, run, dt, lf))
                        with open(lf) as f:
                            log("".join(f.readlines()[-15:]))
                    log("%-12s %-8s %-6s run %d: %7.3f s  %6.0f MB%s" %
                        (s.name, e.name, ph, run, dt, peak / 1e6, "" if ok else "  FAILED"))
    elapsed = time.monotonic() - t_start

    meta = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "host": "%s, %d cores, Linux %s, %.0f GB RAM" % (
            platform.machine(), os.cpu_count(), platform.release(),
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9),
        "versions": ["%s: %s" % (e.name, e.version()) for e in engines],
    }
    refs = {k: statistics.median(v) for k, v in refs.items()}
    table = report(results, engines, scenarios, refs, meta, a.runs)
    print(table)

    if a.save:
        os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
        day = datetime.date.today().isoformat()
        path = os.path.join(HERE, "results", "%s.md" % day)
        i = 2
        while os.path.exists(path):
            path = os.path.join(HERE, "results", "%s-%d.md" % (day, i))
            i += 1
        doc = ["# Benchmark results, %s" % meta["date"], "",
               "Made by `bench/run.sh --runs %d --save`%s. Medians of %d runs per cell; engines took "
               "turns within each run (the first one rotating), so noise from other work on the "
               "machine hit all of them alike." % (a.runs, " (rbuild from %s)" % a.rev if a.rev else "", a.runs),
               "", "- machine: " + meta["host"]]
        doc += ["- " + v for v in meta["versions"]]
        doc += ["- wall time of the measured builds: %.0f s" % elapsed, "", "Scenarios:", ""]
        doc += ["- `%s`: %s" % (s.name, s.notes) for s in scenarios]
        doc += ["", "Phases: `cold` = `--no-cache`; `noop` = the same build again; `change` = after "
                "rewriting one file a late COPY uses.", "", table, ""]
        with open(path, "w") as f:
            f.write("\n".join(doc))
        log("wrote %s" % os.path.relpath(path, REPO))


if __name__ == "__main__":
    main()

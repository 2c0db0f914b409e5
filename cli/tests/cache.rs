//! End-to-end tests of the cache: one test per invalidation rule, RUN --mount kinds, secrets,
//! concurrency, SIGKILL at random points, full and read-only stores, the stat cache, and the
//! inspection commands.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Names of the vertices that ran (not CACHED) in a plain log, e.g. `RUN make`.
fn ran(log: &str) -> Vec<String> {
    steps(log)
        .into_iter()
        .filter(|(id, _)| !cached(log, id))
        .map(|(_, name)| {
            name.split_once("] ")
                .map(|(_, n)| n.to_string())
                .unwrap_or(name)
        })
        .collect()
}

fn misses(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split_once(" cache miss: ").map(|(_, r)| r.to_string()))
        .collect()
}

const APP: &str = "FROM busybox:local\nCOPY app/ /src/\nRUN cat /src/main.go > /built\n";

fn app_env() -> (Env, std::path::PathBuf) {
    let env = Env::new();
    let dir = env.context(
        "app",
        APP,
        &[
            ("app/main.go", "package main\n"),
            ("app/util.go", "package util\n"),
            ("other.txt", "x"),
        ],
    );
    env.build_ok("app:1", &dir, &[]);
    (env, dir)
}

#[test]
fn rule_touching_a_file_without_changing_it_keeps_the_cache() {
    let (env, dir) = app_env();
    let f = dir.join("app/main.go");
    let t = std::time::SystemTime::now() + Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(t)
        .unwrap();
    std::fs::write(&f, "package main\n").unwrap(); // same bytes, new mtime/ctime
    let log = env.build_ok("app:1", &dir, &[]);
    assert!(ran(&log).is_empty(), "nothing may run:\n{log}");
}

/// The image id a plain build log reports (`writing image sha256:... done`).
fn image_id(log: &str) -> String {
    log.lines()
        .find_map(|l| l.strip_prefix("writing image "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no image id in:\n{log}"))
        .to_string()
}

/// Names and sizes of everything under `dir` (files only).
fn files_under(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        if m.is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push((e.path().display().to_string(), m.len()));
        }
    }
    out.sort();
    out
}

#[test]
fn noop_rebuild_gives_the_same_image_and_writes_no_blob_or_index() {
    let (env, dir) = app_env();
    let first = env.build_ok("app:1", &dir, &[]);
    let blobs = files_under(&env.root.path().join("blobs"));
    let index = files_under(&env.root.path().join("ctxindex"));
    let second = env.build_ok("app:1", &dir, &[]);
    assert!(ran(&second).is_empty(), "{second}");
    // As BuildKit: a build whose steps all come from the cache makes the same config (its
    // `created` is when the newest layer was made), so the same image id, and writes nothing.
    assert_eq!(image_id(&first), image_id(&second));
    assert_eq!(files_under(&env.root.path().join("blobs")), blobs);
    assert_eq!(files_under(&env.root.path().join("ctxindex")), index);
    // A step that runs again makes a new image.
    std::fs::write(dir.join("app/main.go"), "package main // v3\n").unwrap();
    let third = env.build_ok("app:1", &dir, &[]);
    assert_ne!(image_id(&third), image_id(&second));
}

#[test]
fn rule_changing_an_unselected_file_keeps_the_cache() {
    let (env, dir) = app_env();
    std::fs::write(dir.join("other.txt"), "changed").unwrap();
    let log = env.build_ok("app:1", &dir, &[]);
    assert!(ran(&log).is_empty(), "{log}");
}

#[test]
fn rule_changing_a_copied_file_invalidates_and_is_explained() {
    let (env, dir) = app_env();
    std::fs::write(dir.join("app/main.go"), "package main // v2\n").unwrap();
    let log = env.build_ok("app:1", &dir, &[]);
    assert_eq!(
        ran(&log),
        vec!["COPY app/ /src/", "RUN cat /src/main.go > /built"],
        "{log}"
    );
    assert_eq!(
        misses(&log),
        vec!["COPY app/ /src/: app/main.go changed"],
        "{log}"
    );
}

#[test]
fn rule_renaming_a_copied_file_invalidates() {
    let (env, dir) = app_env();
    std::fs::rename(dir.join("app/util.go"), dir.join("app/util2.go")).unwrap();
    let log = env.build_ok("app:1", &dir, &[]);
    assert!(ran(&log).contains(&"COPY app/ /src/".to_string()), "{log}");
    assert_eq!(
        misses(&log),
        vec!["COPY app/ /src/: app/util2.go added, app/util.go removed"],
        "{log}"
    );
}

#[test]
fn rule_changing_a_copied_files_mode_invalidates() {
    let (env, dir) = app_env();
    std::fs::set_permissions(
        dir.join("app/main.go"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let log = env.build_ok("app:1", &dir, &[]);
    assert_eq!(
        misses(&log),
        vec!["COPY app/ /src/: app/main.go mode changed"],
        "{log}"
    );
}

#[test]
fn rule_instruction_change_invalidates_from_that_step() {
    let (env, dir) = app_env();
    std::fs::write(dir.join("Dockerfile"), APP.replace("> /built", "> /built2")).unwrap();
    let log = env.build_ok("app:1", &dir, &[]);
    assert_eq!(ran(&log), vec!["RUN cat /src/main.go > /built2"], "{log}");
    assert!(
        misses(&log)[0].contains("instruction changed (was: RUN cat /src/main.go > /built)"),
        "{log}"
    );
}

#[test]
fn rule_build_arg_change_invalidates_and_is_explained() {
    let env = Env::new();
    let dir = env.context(
        "args",
        "FROM busybox:local\nARG VERSION=1.2\nRUN echo $VERSION > /v\nRUN echo after\n",
        &[],
    );
    env.build_ok("a:1", &dir, &[]);
    let log = env.build_ok("a:1", &dir, &["--build-arg", "VERSION=1.3"]);
    assert_eq!(
        ran(&log),
        // Step names are expanded as BuildKit shows them.
        vec!["RUN echo 1.3 > /v", "RUN echo after"],
        "{log}"
    );
    assert_eq!(
        misses(&log),
        vec!["RUN echo 1.3 > /v: build arg VERSION changed (1.2 -> 1.3)"],
        "{log}"
    );
    let log = env.build_ok("a:1", &dir, &["--build-arg", "VERSION=1.3"]);
    assert!(ran(&log).is_empty(), "{log}");
}

#[test]
fn rule_env_change_invalidates() {
    let env = Env::new();
    let df = |v: &str| format!("FROM busybox:local\nENV MODE={v}\nRUN echo $MODE > /m\n");
    let dir = env.context("envs", &df("a"), &[]);
    env.build_ok("e:1", &dir, &[]);
    std::fs::write(dir.join("Dockerfile"), df("b")).unwrap();
    let log = env.build_ok("e:1", &dir, &[]);
    assert_eq!(
        misses(&log),
        vec!["RUN echo b > /m: ENV MODE changed (a -> b)"],
        "{log}"
    );
}

#[test]
fn rule_base_image_resolving_elsewhere_invalidates_and_is_explained() {
    let env = Env::new();
    let dir = env.context("base", "FROM busybox:local\nRUN echo hi > /x\n", &[]);
    env.build_ok("b:1", &dir, &[]);
    // A different rootfs under the same name: a new manifest digest.
    let ctx2 = env.context(
        "base2",
        "FROM busybox:local\nRUN echo other > /marker\n",
        &[],
    );
    env.build_ok("busybox:local", &ctx2, &[]);
    let log = env.build_ok("b:1", &dir, &[]);
    assert_eq!(ran(&log), vec!["RUN echo hi > /x"], "{log}");
    let m = misses(&log);
    assert!(
        m.len() == 1 && m[0].starts_with("FROM: base image busybox:local now resolves to sha256:"),
        "{log}"
    );
}

#[test]
fn rule_dockerignore_syntax_decides_what_counts() {
    let env = Env::new();
    let dir = env.context(
        "ign",
        "FROM busybox:local\nCOPY . /ctx/\n",
        &[
            (
                ".dockerignore",
                "# comment\n**/*.log\n/build\n!build/keep.txt\nDockerfile\n.dockerignore\n",
            ),
            ("a/b/debug.log", "1"),
            ("build/out.o", "1"),
            ("build/keep.txt", "1"),
            ("src.txt", "1"),
        ],
    );
    env.build_ok("i:1", &dir, &[]);
    // Ignored files (by `**`, leading `/`, the Dockerfile itself) change: still cached.
    std::fs::write(dir.join("a/b/debug.log"), "2").unwrap();
    std::fs::write(dir.join("build/out.o"), "2").unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox:local\nCOPY . /ctx/\n\n",
    )
    .unwrap();
    let log = env.build_ok("i:1", &dir, &[]);
    assert!(ran(&log).is_empty(), "{log}");
    // An `!` exception is copied, so its change counts.
    std::fs::write(dir.join("build/keep.txt"), "2").unwrap();
    let log = env.build_ok("i:1", &dir, &[]);
    assert_eq!(
        misses(&log),
        vec!["COPY . /ctx/: build/keep.txt changed"],
        "{log}"
    );
    let out = env.rbuild(&[
        "run",
        "--rm",
        "i:1",
        "sh",
        "-c",
        "ls -R /ctx | tr '\\n' ' '",
    ]);
    assert_ok(&out);
    let s = stdout(&out);
    assert!(
        !s.contains("out.o") && !s.contains("debug.log") && !s.contains("Dockerfile"),
        "{s}"
    );
}

#[test]
fn rule_named_dockerfile_dockerignore_wins() {
    let env = Env::new();
    let dir = env.context(
        "named",
        "",
        &[
            ("web.Dockerfile", "FROM busybox:local\nCOPY . /ctx/\n"),
            ("web.Dockerfile.dockerignore", "secret.txt\n"),
            (".dockerignore", "public.txt\n"),
            ("secret.txt", "s"),
            ("public.txt", "p"),
        ],
    );
    let df = dir.join("web.Dockerfile");
    env.build_ok("n:1", &dir, &["-f", df.to_str().unwrap()]);
    let out = env.rbuild(&["run", "--rm", "n:1", "ls", "/ctx"]);
    let s = stdout(&out);
    assert!(s.contains("public.txt") && !s.contains("secret.txt"), "{s}");
}

#[test]
fn rule_no_cache_filter_reruns_only_that_stage() {
    let env = Env::new();
    let dir = env.context(
        "ncf",
        "FROM busybox:local AS deps\nRUN echo deps > /d\nFROM busybox:local AS app\nCOPY --from=deps /d /d\nRUN echo app\n",
        &[],
    );
    env.build_ok("n:1", &dir, &[]);
    let log = env.build_ok("n:1", &dir, &["--no-cache-filter", "app"]);
    assert_eq!(
        ran(&log),
        vec!["COPY --from=deps /d /d", "RUN echo app"],
        "{log}"
    );
    let log = env.build_ok("n:1", &dir, &["--no-cache"]);
    assert_eq!(ran(&log).len(), 3, "{log}");
}

#[test]
fn rule_copy_exclude_keeps_excluded_files_out_of_the_key() {
    let env = Env::new();
    let dir = env.context(
        "excl",
        "# syntax=docker/dockerfile:1.7-labs\nFROM busybox:local\nCOPY --exclude=**/*.md app/ /src/\n",
        &[("app/a.go", "1"), ("app/README.md", "1")],
    );
    env.build_ok("x:1", &dir, &[]);
    std::fs::write(dir.join("app/README.md"), "2").unwrap();
    let log = env.build_ok("x:1", &dir, &[]);
    assert!(ran(&log).is_empty(), "{log}");
    std::fs::write(dir.join("app/a.go"), "2").unwrap();
    assert_eq!(
        ran(&env.build_ok("x:1", &dir, &[])),
        vec!["COPY --exclude=**/*.md app/ /src/"]
    );
}

#[test]
fn cache_mounts_persist_and_never_enter_a_layer() {
    let env = Env::new();
    let dir = env.context(
        "cm",
        "FROM busybox:local\nARG N\nRUN --mount=type=cache,target=/cache,id=c,uid=1000,mode=0700 echo $N >> /cache/log && wc -l < /cache/log > /count && stat -c %u:%a /cache > /owner\n",
        &[],
    );
    env.build_ok("c:1", &dir, &["--build-arg", "N=1"]);
    env.build_ok("c:1", &dir, &["--build-arg", "N=2"]);
    let out = env.rbuild(&[
        "run",
        "--rm",
        "c:1",
        "sh",
        "-c",
        "cat /count /owner; ls -a /cache 2>&1 | wc -l",
    ]);
    assert_ok(&out);
    let lines: Vec<String> = stdout(&out).lines().map(|l| l.trim().to_string()).collect();
    assert_eq!(lines[0], "2", "the cache mount kept the first build's line");
    assert_eq!(lines[1], "1000:700");
    assert!(
        lines[2].parse::<u32>().unwrap() <= 2,
        "/cache in the image is empty or absent: {lines:?}"
    );
    let du = env.rbuild(&["du", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&du.stdout).unwrap();
    assert!(v["records"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["type"] == "exec.cachemount" && r["mount_id"] == "c"));
}

#[test]
fn locked_cache_mounts_serialize_users() {
    let env = Env::new();
    let df = |s: &str| {
        format!("FROM busybox:local AS {s}\nRUN --mount=type=cache,target=/c,id=l,sharing=locked sh -c 'test ! -e /c/busy && touch /c/busy && sleep 1 && rm /c/busy'\n")
    };
    let dir = env.context(
        "lk",
        &format!(
            "{}{}FROM busybox:local\nCOPY --from=a /bin/sh /a\nCOPY --from=b /bin/sh /b\n",
            df("a"),
            df("b").replace("sleep 1", "sleep 1 && true")
        ),
        &[],
    );
    env.build_ok("l:1", &dir, &[]);
}

#[test]
fn bind_tmpfs_secret_and_ssh_mounts() {
    let env = Env::new();
    let dir = env.context(
        "mnt",
        concat!(
            "FROM busybox:local AS tools\nRUN echo tool > /tool\n",
            "FROM busybox:local\n",
            "RUN --mount=type=bind,source=app,target=/b cat /b/main.go > /from-ctx && (touch /b/x 2>/dev/null && echo rw || echo ro) > /bind-mode\n",
            "RUN --mount=type=bind,from=tools,source=/tool,target=/t cat /t > /from-stage\n",
            "RUN --mount=type=bind,source=app,target=/w,rw touch /w/new && ls /w | tr '\\n' ' ' > /rw-view\n",
            "RUN --mount=type=tmpfs,target=/scratch touch /scratch/f && grep -q ' /scratch tmpfs' /proc/mounts && echo tmpfs > /tmpfs\n",
            "RUN --mount=type=secret,id=tok cp /run/secrets/tok /dev/null && wc -c < /run/secrets/tok > /secret-len\n",
            "RUN --mount=type=secret,id=envtok,required wc -c < /run/secrets/envtok > /env-len\n",
            "RUN --mount=type=ssh test -S $SSH_AUTH_SOCK && echo ssh > /ssh\n",
        ),
        &[("app/main.go", "hello\n")],
    );
    std::fs::write(env.work.path().join("tok"), "TOPSECRET-42").unwrap();
    let sock_path = env.work.path().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let secret = format!("id=tok,src={}", env.work.path().join("tok").display());
    let ssh = format!("default={}", sock_path.display());
    let build = |dir: &Path| {
        let out = Command::new(bin())
            .args([
                "build",
                "--progress",
                "plain",
                "-t",
                "m:1",
                "--secret",
                &secret,
                "--secret",
                "id=envtok,env=RBUILD_TEST_TOKEN",
                "--ssh",
                &ssh,
                dir.to_str().unwrap(),
            ])
            .env("RBUILD_ROOT", env.root.path())
            .env("RBUILD_TEST_TOKEN", "abc")
            .output()
            .unwrap();
        assert_ok(&out);
        stderr(&out)
    };
    let log = build(&dir);
    let out = env.rbuild(&[
        "run",
        "--rm",
        "m:1",
        "sh",
        "-c",
        "cat /from-ctx /bind-mode /from-stage /rw-view /tmpfs /secret-len /env-len /ssh",
    ]);
    assert_ok(&out);
    let s = stdout(&out);
    assert!(s.contains("hello\nro\ntool\nmain.go new"), "{s}");
    assert!(s.contains("tmpfs\n12\n3\nssh"), "{s}");
    assert!(
        !dir.join("app/new").exists(),
        "rw bind writes are discarded"
    );
    // The secret is in no layer, config or history; its mount point left no stub.
    let oci = env.work.path().join("m.tar");
    let out = env.rbuild(&["save", "m:1", "-o", oci.to_str().unwrap()]);
    if out.status.success() {
        let bytes = std::fs::read(&oci).unwrap();
        assert!(
            !bytes.windows(12).any(|w| w == b"TOPSECRET-42"),
            "secret leaked into the saved image"
        );
    }
    let hits = Command::new("grep")
        .args(["-r", "-l", "TOPSECRET-42"])
        .arg(env.root.path().join("blobs"))
        .arg(env.root.path().join("snapshots"))
        .output()
        .unwrap();
    assert!(
        stdout(&hits).is_empty(),
        "secret in the store: {}",
        stdout(&hits)
    );
    assert!(
        !stdout(&env.rbuild(&["run", "--rm", "m:1", "ls", "/run"])).contains("secrets"),
        "secret mount stub in the image"
    );
    // Changing the secret does not invalidate (as BuildKit); changing the bound context file does.
    std::fs::write(env.work.path().join("tok"), "OTHER").unwrap();
    std::fs::write(dir.join("app/main.go"), "hello2\n").unwrap();
    let log2 = build(&dir);
    assert!(
        misses(&log2)
            .iter()
            .any(|m| m.contains("bind mount /b: app/main.go changed")),
        "{log2}"
    );
    drop(log);
    // Without --secret a non-required secret is simply absent: the step fails on its own.
    let out = env.rbuild(&[
        "build",
        "--progress",
        "plain",
        "--no-cache",
        dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("cp /run/secrets/tok /dev/null") && err.contains("exit code: 1"),
        "{err}"
    );
}

#[test]
fn two_builds_started_together_run_each_step_once() {
    let env = Env::new();
    let dir = env.context(
        "conc",
        "FROM busybox:local\nCOPY f /f\nRUN sleep 1 && echo once > /o\nRUN echo second\n",
        &[("f", "1")],
    );
    let spawn = || {
        Command::new(bin())
            .args([
                "build",
                "--progress",
                "plain",
                "-t",
                "c:1",
                dir.to_str().unwrap(),
            ])
            .env("RBUILD_ROOT", env.root.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_ok(&a);
    assert_ok(&b);
    let (la, lb) = (stderr(&a), stderr(&b));
    for step in [
        "COPY f /f",
        "RUN sleep 1 && echo once > /o",
        "RUN echo second",
    ] {
        let runs = [&la, &lb]
            .iter()
            .filter(|l| ran(l).contains(&step.to_string()))
            .count();
        assert_eq!(runs, 1, "{step} must run exactly once:\n{la}\n----\n{lb}");
    }
}

fn assert_store_clean(root: &Path) {
    for d in ["ingest", "tmp"] {
        let p = root.join(d);
        let n = std::fs::read_dir(&p).map(|r| r.count()).unwrap_or(0);
        assert_eq!(n, 0, "{} has leftovers", p.display());
    }
    for e in std::fs::read_dir(root.join("snapshots")).unwrap() {
        assert!(
            !e.unwrap().file_name().to_string_lossy().starts_with("tmp"),
            "unfinished snapshot left"
        );
    }
    // Every blob's content matches its name.
    for e in std::fs::read_dir(root.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let out = Command::new("sha256sum").arg(e.path()).output().unwrap();
        let sum = stdout(&out);
        assert!(
            sum.starts_with(&*e.file_name().to_string_lossy()),
            "corrupt blob {sum}"
        );
    }
}

#[test]
fn sigkill_at_random_points_leaves_a_consistent_store() {
    let df = "FROM busybox:local\nCOPY big /big\nRUN sleep 0.2 && md5sum /big > /sum\nRUN seq 1 20000 > /seq\nRUN sleep 0.2 && wc -l /seq > /n\n";
    let big: String = "0123456789abcdef\n".repeat(200_000);
    let clean = Env::new();
    let cdir = clean.context("k", df, &[("big", &big)]);
    clean.build_ok("k:1", &cdir, &[]);
    let expect =
        stdout(&clean.rbuild(&["run", "--rm", "k:1", "sh", "-c", "cat /sum /n; md5sum /seq"]));

    let env = Env::new();
    let dir = env.context("k", df, &[("big", &big)]);
    let mut seed = std::process::id() as u64;
    let start = Instant::now();
    for _ in 0..15 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = Duration::from_millis(50 + (seed >> 33) % 1500);
        let mut child = Command::new(bin())
            .args([
                "build",
                "--progress",
                "plain",
                "--no-cache-filter",
                if seed.is_multiple_of(3) { "0" } else { "none" },
                "-t",
                "k:1",
                dir.to_str().unwrap(),
            ])
            .env("RBUILD_ROOT", env.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        if start.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    let log = env.build_ok("k:1", &dir, &[]);
    let got = stdout(&env.rbuild(&["run", "--rm", "k:1", "sh", "-c", "cat /sum /n; md5sum /seq"]));
    assert_eq!(got, expect, "{log}");
    let log = env.build_ok("k:1", &dir, &[]);
    assert!(
        ran(&log).is_empty(),
        "after recovery everything is cached:\n{log}"
    );
    assert_store_clean(env.root.path());
}

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .unwrap()
        .success()
}

#[test]
fn full_disk_gives_a_clear_error_and_the_store_stays_usable() {
    let env = Env::empty();
    let root = env.root.path().join("small");
    std::fs::create_dir_all(&root).unwrap();
    assert!(sh(&format!(
        "mount -t tmpfs -o size=8m tmpfs {}",
        root.display()
    )));
    let run = |args: &[&str]| {
        Command::new(bin())
            .args(args)
            .env("RBUILD_ROOT", &root)
            .output()
            .unwrap()
    };
    assert_ok(&run(&[
        "import",
        busybox_tar().to_str().unwrap(),
        "busybox:local",
    ]));
    let dir = env.context(
        "full",
        "FROM busybox:local\nRUN dd if=/dev/zero of=/big bs=1M count=20\n",
        &[],
    );
    let out = run(&[
        "build",
        "--progress",
        "plain",
        "-t",
        "f:1",
        dir.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("No space left on device"), "{err}");
    assert!(
        err.contains("rbuild prune"),
        "the error says how to fix it: {err}"
    );
    let ok = env.context("ok", "FROM busybox:local\nRUN echo fine > /f\n", &[]);
    let out = run(&[
        "build",
        "--progress",
        "plain",
        "-t",
        "ok:1",
        ok.to_str().unwrap(),
    ]);
    let _ = sh(&format!("umount -l {}", root.display()));
    assert_ok(&out);
}

#[test]
fn read_only_store_gives_a_clear_error() {
    let env = Env::new();
    let dir = env.context("ro", "FROM busybox:local\nRUN echo x > /x\n", &[]);
    let root = env.root.path();
    assert!(sh(&format!(
        "mount --bind {0} {0} && mount -o remount,bind,ro {0}",
        root.display()
    )));
    let out = env.rbuild(&["build", "--progress", "plain", dir.to_str().unwrap()]);
    let _ = sh(&format!("umount -l {}", root.display()));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("Read-only file system") && err.contains(&*root.to_string_lossy()),
        "{err}"
    );
    env.build_ok("ro:1", &dir, &[]);
}

#[test]
fn stat_cache_verifies_an_unchanged_20000_file_context_without_reading_it() {
    let env = Env::new();
    let dir = env.context("many", "FROM busybox:local\nCOPY files /files\n", &[]);
    for i in 0..200 {
        let d = dir.join(format!("files/d{i}"));
        std::fs::create_dir_all(&d).unwrap();
        for j in 0..100 {
            std::fs::write(d.join(format!("f{j}")), format!("{i}-{j}")).unwrap();
        }
    }
    let build = || {
        let out = Command::new(bin())
            .args([
                "build",
                "--progress",
                "plain",
                "-t",
                "m:1",
                dir.to_str().unwrap(),
            ])
            .env("RBUILD_ROOT", env.root.path())
            .env("RBUILD_DEBUG", "1")
            .output()
            .unwrap();
        assert_ok(&out);
        stderr(&out)
    };
    // Files changed within 100 ms of being read are read again by the next build (racily
    // clean entries, as git's): let them age first.
    std::thread::sleep(std::time::Duration::from_millis(150));
    let first = build();
    assert!(
        first.contains("DEBUG: context: 0 files verified by the stat cache, 20000 files read"),
        "{first}"
    );
    let second = build();
    assert!(
        second.contains("DEBUG: context: 20000 files verified by the stat cache, 0 files read"),
        "{second}"
    );
    assert!(ran(&second).is_empty());
    // A change of the same size is still seen (mtime/ctime differ).
    std::fs::write(dir.join("files/d7/f7"), "7-8").unwrap();
    let third = build();
    assert!(
        third.contains("19999 files verified by the stat cache, 1 files read"),
        "{third}"
    );
    assert_eq!(
        misses(&third),
        vec!["COPY files /files: files/d7/f7 changed"]
    );
}

#[test]
fn du_prune_and_cache_inspection() {
    let (env, dir) = app_env();
    let out = env.rbuild(&["du"]);
    assert_ok(&out);
    let s = stdout(&out);
    assert!(
        s.starts_with("ID")
            && s.contains("RECLAIMABLE")
            && s.contains("COPY app/ /src/")
            && s.contains("Total:"),
        "{s}"
    );
    let out = env.rbuild(&["du", "-v"]);
    assert!(stdout(&out).contains("Usage count:\t") && stdout(&out).contains("Type:\t\tregular"));
    let v: serde_json::Value =
        serde_json::from_slice(&env.rbuild(&["du", "--format", "json"]).stdout).unwrap();
    let recs = v["records"].as_array().unwrap();
    assert_eq!(recs.len(), 2);
    assert!(
        recs.iter().all(|r| r["reclaimable"] == false),
        "a tagged image needs them: {v}"
    );
    // cache ls / inspect
    let ls = stdout(&env.rbuild(&["cache", "ls"]));
    let copy_id = ls
        .lines()
        .find(|l| l.contains("COPY app/"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let out = env.rbuild(&["cache", "inspect", &copy_id[..12]]);
    assert_ok(&out);
    let s = stdout(&out);
    for want in [
        "Step:        [2/3] COPY app/ /src/",
        "Layer:       sha256:",
        "Parent:      sha256:",
        "app/main.go",
        "Last used:",
    ] {
        assert!(s.contains(want), "missing {want:?} in\n{s}");
    }
    let v: serde_json::Value = serde_json::from_slice(
        &env.rbuild(&["cache", "inspect", &copy_id, "--format", "json"])
            .stdout,
    )
    .unwrap();
    assert_eq!(v["inputs"]["op"], "copy");
    assert!(v["inputs"]["content"]["files"]["app/:app/main.go"]
        .as_str()
        .unwrap()
        .starts_with("f 644 sha256:"));
    assert!(!env.rbuild(&["cache", "inspect", "zzzz"]).status.success());
    // Prune keeps what the tagged image needs; after untagging (a new build replaces the tag)
    // the old records go, least recently used first.
    let v: serde_json::Value =
        serde_json::from_slice(&env.rbuild(&["prune", "-f", "--format", "json"]).stdout).unwrap();
    assert_eq!(v["removed"].as_array().unwrap().len(), 0, "{v}");
    std::fs::write(dir.join("app/main.go"), "package main // 2\n").unwrap();
    env.build_ok("app:1", &dir, &[]);
    let out = env.rbuild(&["prune", "-f"]);
    assert_ok(&out);
    let s = stdout(&out);
    assert_eq!(
        s.lines().filter(|l| l.contains("regular")).count(),
        2,
        "{s}"
    );
    assert!(s.contains("Total:"), "{s}");
    let log = env.build_ok("app:1", &dir, &[]);
    assert!(
        ran(&log).is_empty(),
        "the current image's records survived prune:\n{log}"
    );
    assert!(!env
        .rbuild(&["prune", "--keep-storage", "12XB"])
        .status
        .success());
}

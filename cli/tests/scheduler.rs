//! The build scheduler end to end (issue 12): a panicking step fails the build at once, the first
//! failing step kills its running siblings, `--jobs` bounds concurrency, a stage the target does
//! not need does not break a rebuild; and the command line (`--root` before a subcommand,
//! `rbuild run IMAGE CMD -flags`) and `prune --all`.

mod common;

use common::{assert_ok, cached, stdout, steps, Env};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `rbuild build --progress plain ARGS... DIR` with optional extra environment; a build still
/// running after two minutes is killed and fails the test (a hang must not hang the suite).
fn build(env: &Env, dir: &std::path::Path, args: &[&str], vars: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(common::bin());
    cmd.args(["build", "--progress", "plain"])
        .args(args)
        .arg(dir)
        .env("RBUILD_ROOT", env.root.path())
        .env("RUST_BACKTRACE", "0")
        .current_dir(env.work.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the build hung: killed after 2 minutes");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.success(), reader.join().unwrap())
}

/// Processes whose command line contains `needle` (the marker of one test's sleeps).
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                found.push(format!("{}: {c}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

/// Issue 12's Dockerfile: a stage the target does not need, then a change to a COPY source.
/// The rebuild used to panic (stage index not remapped) and hang; now it explains the miss.
#[test]
fn unneeded_stage_then_changed_copy_source_rebuilds() {
    let env = Env::new();
    let df = "FROM busybox:local AS a\nRUN echo a\nFROM busybox:local AS unused\n\
              FROM busybox:local\nCOPY f /f\nRUN cat /f\n";
    let dir = env.context("ctx", df, &[("f", "one\n")]);
    let (ok, first) = build(&env, &dir, &["-t", "issue12:v1"], &[]);
    assert!(ok && first.contains("one"), "{first}");
    std::fs::write(dir.join("f"), "two\n").unwrap();
    let t = Instant::now();
    let (ok, log) = build(&env, &dir, &["-t", "issue12:v2"], &[]);
    assert!(ok, "{log}");
    assert!(t.elapsed() < Duration::from_secs(60));
    assert!(log.contains("cache miss: COPY f /f: f changed"), "{log}");
    assert!(log.contains("two"), "{log}");
    let out = env.rbuild(&["run", "--rm", "issue12:v2", "cat", "/f"]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "two\n");
}

/// A step that panics (through the debug-build test hook) fails the build within seconds with
/// an error naming the step and asking for a bug report; in a release build the hook does not
/// exist and the same build succeeds.
#[test]
fn a_panicking_step_fails_the_build_at_once() {
    let env = Env::new();
    let df = "FROM busybox:local AS slow\nRUN sleep 2 && echo slept > /s\n\
              FROM busybox:local\nCOPY --from=slow /s /s\nRUN echo boom-marker\n";
    let dir = env.context("ctx", df, &[]);
    let t = Instant::now();
    let (ok, log) = build(
        &env,
        &dir,
        &[],
        &[("RBUILD_TEST_PANIC_STEP", "RUN echo boom-marker")],
    );
    if cfg!(debug_assertions) {
        assert!(!ok, "{log}");
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "took {:?}",
            t.elapsed()
        );
        assert!(
            log.contains(
                "Dockerfile:5: RUN echo boom-marker: internal error: RBUILD_TEST_PANIC_STEP"
            ),
            "{log}"
        );
        assert!(
            log.contains("this is a bug in rbuild, please report it"),
            "{log}"
        );
    } else {
        assert!(ok, "the hook must not exist in a release build:\n{log}");
    }
}

/// The first failing step kills the running `sleep 30` of the other stage: the build fails in
/// a few seconds with that step's error and no sleep is left.
#[test]
fn the_first_failure_kills_running_siblings() {
    let env = Env::new();
    let marker = format!("3{}", std::process::id() % 1000 + 1000); // a unique sleep length
    let df = format!(
        "FROM busybox:local AS slow\nRUN sleep {marker} && echo done > /x\n\
         FROM busybox:local AS bad\nRUN sleep 1; echo failing; exit 3\n\
         FROM busybox:local\nCOPY --from=slow /x /x\nCOPY --from=bad /etc/passwd /p\n"
    );
    let dir = env.context("ctx", &df, &[]);
    let t = Instant::now();
    let (ok, log) = build(&env, &dir, &["--jobs", "2"], &[]);
    let took = t.elapsed();
    assert!(!ok, "{log}");
    assert!(took < Duration::from_secs(20), "took {took:?}:\n{log}");
    let last = log
        .lines()
        .rev()
        .find(|l| l.starts_with("ERROR"))
        .unwrap_or_default();
    assert!(
        last.contains("RUN sleep 1; echo failing; exit 3") && last.contains("exit code: 3"),
        "the build's error is the failing step's:\n{log}"
    );
    assert!(log.contains(" CANCELED"), "{log}");
    let left = processes_with(&format!("sleep {marker}"));
    assert!(left.is_empty(), "processes left: {left:?}");
}

/// `--jobs 1` runs two independent one-second stages one after the other; `--jobs 2` overlaps
/// them.
#[test]
fn jobs_bounds_concurrent_steps() {
    let env = Env::new();
    let df = "FROM busybox:local AS a\nRUN sleep 1 && echo a > /a\n\
              FROM busybox:local AS b\nRUN sleep 1 && echo b > /b\n\
              FROM busybox:local\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n";
    let dir = env.context("ctx", df, &[]);
    let t = Instant::now();
    let (ok, log) = build(&env, &dir, &["--no-cache", "--jobs", "1"], &[]);
    assert!(ok, "{log}");
    let serial = t.elapsed();
    assert!(serial >= Duration::from_secs(2), "--jobs 1 took {serial:?}");
    // With one job, a step starts only after the previous one ended.
    let lines: Vec<&str> = log.lines().collect();
    let start_b = lines
        .iter()
        .position(|l| l.contains("RUN sleep 1 && echo b"))
        .unwrap();
    let start_a = lines
        .iter()
        .position(|l| l.contains("RUN sleep 1 && echo a"))
        .unwrap();
    let (first, second) = (start_a.min(start_b), start_a.max(start_b));
    let first_id = lines[first].split(' ').next().unwrap();
    assert!(
        lines[first..second]
            .iter()
            .any(|l| l.starts_with(&format!("{first_id} DONE"))),
        "second step started before the first was done:\n{log}"
    );
    let t = Instant::now();
    let (ok, log) = build(&env, &dir, &["--no-cache", "--jobs", "2"], &[]);
    assert!(ok, "{log}");
    let parallel = t.elapsed();
    assert!(
        parallel < serial,
        "--jobs 2 ({parallel:?}) should beat --jobs 1 ({serial:?})"
    );
    let out = env.rbuild(&["build", "--jobs", "0", dir.to_str().unwrap()]);
    assert!(!out.status.success());
}

/// Global flags before the subcommand apply to it; `rbuild -t x .` still builds.
#[test]
fn global_root_flag_before_a_subcommand() {
    let env = Env::new();
    let root = env.root.path().to_str().unwrap();
    let out = Command::new(common::bin())
        .args(["--root", root, "images"])
        .env_remove("RBUILD_ROOT")
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(stdout(&out).contains("busybox"), "{}", stdout(&out));
    let dir = env.context("ctx", "FROM busybox:local\nRUN echo hi > /hi\n", &[]);
    let out = Command::new(common::bin())
        .args(["--root", root, "-t", "viaroot:1"])
        .arg(&dir)
        .env_remove("RBUILD_ROOT")
        .output()
        .unwrap();
    assert_ok(&out);
    let out = env.rbuild(&["images"]);
    assert!(stdout(&out).contains("viaroot"), "{}", stdout(&out));
}

/// Everything after the image is the container's command, flags included.
#[test]
fn run_passes_flags_after_the_image_to_the_command() {
    let env = Env::new();
    let out = env.rbuild(&["run", "--rm", "-u", "1000", "busybox:local", "id", "-u"]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "1000\n");
    let out = env.rbuild(&[
        "run",
        "--rm",
        "busybox:local",
        "echo",
        "-u",
        "--rm",
        "--",
        "-t",
    ]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "-u --rm -- -t\n");
}

/// `rmi` + `prune --all -f`, then a rebuild runs `RUN echo hello` again.
#[test]
fn prune_all_leaves_no_cache() {
    let env = Env::new();
    let dir = env.context("ctx", "FROM busybox:local\nRUN echo hello\n", &[]);
    env.build_ok("hello:v1", &dir, &[]);
    let again = env.build_ok("hello:v1", &dir, &[]);
    let run_id = |log: &str| {
        steps(log)
            .into_iter()
            .find(|(_, n)| n.ends_with("RUN echo hello"))
            .unwrap()
            .0
    };
    assert!(cached(&again, &run_id(&again)), "{again}");
    assert_ok(&env.rbuild(&["rmi", "hello:v1"]));
    assert_ok(&env.rbuild(&["prune", "--all", "-f"]));
    let fresh = env.build_ok("hello:v1", &dir, &[]);
    let id = run_id(&fresh);
    assert!(!cached(&fresh, &id), "{fresh}");
    assert!(fresh.contains(&format!("#{id} DONE")), "{fresh}");
    // The base image stays usable: its layers were kept.
    let out = env.rbuild(&["run", "--rm", "busybox:local", "true"]);
    assert_ok(&out);
}

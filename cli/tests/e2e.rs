//! End-to-end tests of the walking skeleton: the real binary, a private store, testdata/web.

mod common;

use std::fs;
use std::process::Command;
use std::time::Instant;

use common::*;

#[test]
fn demo_builds_lists_runs_and_exports() {
    let env = Env::new();
    let web = repo().join("testdata/web");
    let log = env.build_ok("web:v1", &web, &[]);
    assert!(
        log.contains("[build 3/4] RUN echo \"built by rbuild\" > message.txt")
            || log.contains("RUN echo"),
        "{log}"
    );

    let images = stdout(&env.rbuild(&["images"]));
    assert!(images.contains("web ") && images.contains("v1"), "{images}");
    assert!(
        images.contains("busybox ") && images.contains("local"),
        "{images}"
    );

    let out = env.rbuild(&["run", "--rm", "web:v1"]);
    assert_ok(&out);
    let s = stdout(&out);
    assert!(s.contains("hello from /app"), "{s}");
    assert!(s.contains("built by rbuild"), "{s}");
    assert!(s.contains("<h1>hello from rbuild</h1>"), "{s}");

    // The default command is `build`.
    let out = env.rbuild(&["-t", "web:v2", "--progress", "plain", web.to_str().unwrap()]);
    assert_ok(&out);

    // Config of the image: env, workdir, cmd, labels, ports, history.
    let oci = env.work.path().join("web.tar");
    env.build_ok(
        "web:v1",
        &web,
        &["--output", &format!("type=oci,dest={}", oci.display())],
    );
    assert!(oci.is_file());
    if have("skopeo") {
        let out = Command::new("skopeo")
            .args([
                "inspect",
                "--config",
                &format!("oci-archive:{}", oci.display()),
            ])
            .output()
            .unwrap();
        assert_ok(&out);
        let cfg: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let c = &cfg["config"];
        assert_eq!(c["WorkingDir"], "/app");
        assert!(
            c["Env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e == "GREETING=hello"),
            "{c}"
        );
        assert_eq!(c["Cmd"][0], "sh");
        assert_eq!(c["Labels"]["org.opencontainers.image.title"], "web demo");
        assert!(c["ExposedPorts"].get("8080/tcp").is_some(), "{c}");
        let hist = cfg["history"].as_array().unwrap();
        let layers = cfg["rootfs"]["diff_ids"].as_array().unwrap();
        assert_eq!(
            hist.iter().filter(|h| h["empty_layer"] != true).count(),
            layers.len(),
            "{cfg}"
        );
        assert!(
            hist.iter().any(|h| h["created_by"]
                .as_str()
                .unwrap_or("")
                .starts_with("ENV GREETING=hello")),
            "{cfg}"
        );
        assert!(hist.iter().any(|h| h["empty_layer"] == true));
    }
    if have("umoci") {
        let layout = env.work.path().join("layout");
        fs::create_dir_all(&layout).unwrap();
        let st = Command::new("tar")
            .args(["-xf", oci.to_str().unwrap(), "-C", layout.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success());
        let bundle = env.work.path().join("bundle");
        let out = Command::new("umoci")
            .args([
                "unpack",
                "--image",
                &format!("{}:v1", layout.display()),
                bundle.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert_ok(&out);
        let msg = fs::read_to_string(bundle.join("rootfs/app/message.txt")).unwrap();
        assert_eq!(msg, "built by rbuild\n");
        assert!(bundle.join("rootfs/bin/busybox").is_file());
    }
}

#[test]
fn rebuild_with_nothing_changed_is_all_cached() {
    let env = Env::new();
    let web = repo().join("testdata/web");
    env.build_ok("web:v1", &web, &[]);
    let log = env.build_ok("web:v1", &web, &[]);
    let steps = steps(&log);
    assert_eq!(steps.len(), 7, "FROM, 2 WORKDIR, 2 RUN, 2 COPY:\n{log}");
    for (id, name) in &steps {
        assert!(cached(&log, id), "step #{id} {name} was not CACHED:\n{log}");
    }
}

#[test]
fn changing_a_late_copied_file_reruns_only_the_suffix() {
    let env = Env::new();
    let df = "FROM busybox:local\nRUN echo one > /one\nCOPY early.txt /early.txt\nRUN echo two > /two\nCOPY late.txt /late.txt\nRUN cat /late.txt > /copy\n";
    let dir = env.context(
        "ctx",
        df,
        &[("early.txt", "e"), ("late.txt", "v1"), ("unused.txt", "u")],
    );
    env.build_ok("t:1", &dir, &[]);
    // Touching without change and changing an unused file invalidate nothing.
    fs::write(dir.join("late.txt"), "v1").unwrap();
    fs::write(dir.join("unused.txt"), "changed").unwrap();
    let log = env.build_ok("t:1", &dir, &[]);
    for (id, name) in steps(&log) {
        assert!(cached(&log, &id), "#{id} {name} should be CACHED:\n{log}");
    }
    fs::write(dir.join("late.txt"), "v2").unwrap();
    let log = env.build_ok("t:1", &dir, &[]);
    let steps = steps(&log);
    let state: Vec<(String, bool)> = steps
        .iter()
        .map(|(id, n)| (n.clone(), cached(&log, id)))
        .collect();
    let find = |needle: &str| {
        state
            .iter()
            .find(|(n, _)| n.contains(needle))
            .unwrap_or_else(|| panic!("{needle} in {log}"))
            .1
    };
    assert!(find("RUN echo one"));
    assert!(find("COPY early.txt"));
    assert!(find("RUN echo two"));
    assert!(!find("COPY late.txt"), "{log}");
    assert!(!find("RUN cat /late.txt"), "{log}");
    let out = env.rbuild(&["run", "--rm", "t:1", "cat", "/copy"]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "v2");
}

#[test]
fn run_steps_are_isolated() {
    let env = Env::new();
    let marker = format!("/tmp/rbuild-host-marker-{}", std::process::id());
    fs::write(&marker, "host").unwrap();
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let df = format!(
        "FROM busybox:local\nRUN echo $$ > /pid && hostname > /hostname && (test -e {marker} && echo visible || echo invisible) > /marker && ls / > /ls\n"
    );
    let dir = env.context("iso", &df, &[]);
    env.build_ok("iso:1", &dir, &[]);
    let cat = |f: &str| {
        let out = env.rbuild(&["run", "--rm", "iso:1", "cat", f]);
        assert_ok(&out);
        stdout(&out).trim().to_string()
    };
    assert_eq!(cat("/pid"), "1");
    assert_ne!(cat("/hostname"), host);
    assert_eq!(cat("/marker"), "invisible");
    let ls = cat("/ls");
    assert!(ls.contains("bin") && !ls.contains("work"), "{ls}");
    fs::remove_file(&marker).ok();
}

#[test]
fn failing_run_reports_exit_code_and_output() {
    let env = Env::new();
    let dir = env.context(
        "fail",
        "FROM busybox:local\nRUN echo first-line && echo boom-output >&2 && exit 3\n",
        &[],
    );
    let out = env.rbuild(&["build", "--progress", "plain", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("exit code: 3"), "{e}");
    assert!(e.contains("boom-output"), "{e}");
    assert!(e.contains("Dockerfile:2"), "{e}");
}

#[test]
fn run_passes_env_output_and_exit_code() {
    let env = Env::new();
    let out = env.rbuild(&[
        "run",
        "--rm",
        "-e",
        "X=42",
        "busybox:local",
        "sh",
        "-c",
        "echo x=$X; echo err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(stdout(&out), "x=42\n");
    assert_eq!(stderr(&out), "err\n");
}

#[test]
fn independent_stages_run_concurrently() {
    let env = Env::new();
    let df = "FROM busybox:local AS a\nRUN sleep 2 && echo a > /a\nFROM busybox:local AS b\nRUN sleep 2 && echo b > /b\nFROM busybox:local\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n";
    let dir = env.context("par", df, &[]);
    let t = Instant::now();
    env.build_ok("par:1", &dir, &[]);
    let took = t.elapsed().as_secs_f64();
    assert!(
        took < 3.8,
        "two 2 s stages took {took:.1} s: not concurrent"
    );
    let out = env.rbuild(&["run", "--rm", "par:1", "cat", "/a", "/b"]);
    assert_eq!(stdout(&out), "a\nb\n");
}

#[test]
fn unneeded_stages_are_not_built() {
    let env = Env::new();
    let df = "FROM busybox:local AS unused\nRUN exit 1\nFROM busybox:local\nRUN echo ok > /ok\n";
    let dir = env.context("skip", df, &[]);
    let log = env.build_ok("skip:1", &dir, &[]);
    assert!(!log.contains("exit 1"), "{log}");
}

#[test]
fn clear_errors() {
    let env = Env::new();
    // Missing Dockerfile.
    let empty = env.work.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    let out = env.rbuild(&["build", empty.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("Dockerfile"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"));
    // Unknown base image.
    let dir = env.context("nobase", "FROM nope:missing\nRUN true\n", &[]);
    let out = env.rbuild(&["build", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nope:missing"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"));
    // COPY of a missing file.
    let dir = env.context("nofile", "FROM busybox:local\nCOPY missing.txt /x\n", &[]);
    let out = env.rbuild(&["build", "--progress", "plain", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("missing.txt") && e.contains("Dockerfile:2"),
        "{e}"
    );
    assert!(!e.contains("panicked"));
    // Syntax error: file, line and instruction.
    let dir = env.context(
        "syntax",
        "FROM busybox:local\nRUN true\nFROBNICATE now\n",
        &[],
    );
    let out = env.rbuild(&["build", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("Dockerfile:3") && e.to_lowercase().contains("frobnicate"),
        "{e}"
    );
    assert!(!e.contains("panicked"));
}

#[test]
fn source_date_epoch_layers_are_not_reused_from_unclamped_builds() {
    let df = "FROM busybox:local\nRUN echo hi > /hi && mkdir -p /d && touch /d/f\nCOPY a /a\n";
    // The layers (not the config: each store imported busybox at its own time) must be equal.
    let id_of = |env: &Env, dir: &std::path::Path, epoch: Option<&str>| {
        let mut args = vec!["build", "--progress", "plain", "-t", "ep:1"];
        if let Some(e) = epoch {
            args.extend(["--source-date-epoch", e]);
        }
        args.push(dir.to_str().unwrap());
        assert_ok(&env.rbuild(&args));
        let out = env.rbuild(&["image", "inspect", "ep:1"]);
        assert_ok(&out);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["RootFS"]["Layers"].clone()
    };
    // Store A builds without the epoch first, then with it; store B only with it.
    let a = Env::new();
    let dir_a = a.context("ctx", df, &[("a", "x")]);
    id_of(&a, &dir_a, None);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let with_a = id_of(&a, &dir_a, Some("1700000000"));
    let b = Env::new();
    let dir_b = b.context("ctx", df, &[("a", "x")]);
    let with_b = id_of(&b, &dir_b, Some("1700000000"));
    assert_eq!(
        with_a, with_b,
        "an epoch build must not reuse layers with unclamped times"
    );
}

#[test]
fn copy_into_new_and_deleted_paths_matches_overlay_semantics() {
    let env = Env::new();
    let df = "FROM busybox:local\n\
RUN mkdir -p /opt/keep /opt/other && echo old > /opt/keep/a && chmod 750 /opt\n\
RUN rm -rf /opt/keep\n\
COPY dir /opt/keep\n\
COPY dir /srv/new/\n\
COPY one.txt /opt/other/one.txt\n";
    let dir = env.context(
        "fast",
        df,
        &[("dir/b", "new-b"), ("dir/sub/c", "new-c"), ("one.txt", "1")],
    );
    env.build_ok("fast:1", &dir, &[]);
    let out = env.rbuild(&[
        "run", "--rm", "fast:1", "sh", "-c",
        "find /opt /srv | sort; stat -c '%n %a %u' /opt /opt/keep/b /srv/new/sub/c; cat /opt/keep/b /opt/other/one.txt",
    ]);
    assert_ok(&out);
    assert_eq!(
        stdout(&out),
        "/opt\n/opt/keep\n/opt/keep/b\n/opt/keep/sub\n/opt/keep/sub/c\n/opt/other\n/opt/other/one.txt\n\
/srv\n/srv/new\n/srv/new/b\n/srv/new/sub\n/srv/new/sub/c\n\
/opt 750 0\n/opt/keep/b 644 0\n/srv/new/sub/c 644 0\nnew-b1"
    );
}

#[test]
fn a_copy_rerun_shares_unchanged_files_with_its_previous_result() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let env = Env::new();
    let df = "FROM busybox:local\nCOPY files /files\n";
    let files = [
        ("files/keep.txt", "same"),
        ("files/sub/change.txt", "v1"),
        ("files/mode.sh", "echo"),
    ];
    let dir = env.context("reuse", df, &files);
    env.build_ok("reuse:1", &dir, &[]);
    fs::write(dir.join("files/sub/change.txt"), "v2").unwrap();
    fs::set_permissions(dir.join("files/mode.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    // Same content, new mtime: must be copied (the layer keeps the new mtime), not shared.
    let touched = dir.join("files/touched.txt");
    fs::write(&touched, "t").unwrap();
    env.build_ok("reuse:1", &dir, &[]);
    fs::write(&touched, "t").unwrap();
    fs::write(dir.join("files/sub/change.txt"), "v3").unwrap();
    env.build_ok("reuse:1", &dir, &[]);
    let out = env.rbuild(&[
        "run",
        "--rm",
        "reuse:1",
        "sh",
        "-c",
        "cat /files/keep.txt /files/sub/change.txt; stat -c ' %a' /files/mode.sh",
    ]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "samev3 755\n");
    // The stored snapshots: keep.txt is one inode shared by all three results; change.txt three.
    let mut inodes = std::collections::BTreeMap::<String, std::collections::BTreeSet<u64>>::new();
    for snap in fs::read_dir(env.root.path().join("snapshots")).unwrap() {
        let fsdir = snap.unwrap().path().join("fs/files");
        for name in ["keep.txt", "sub/change.txt", "touched.txt"] {
            if let Ok(md) = fs::metadata(fsdir.join(name)) {
                inodes.entry(name.into()).or_default().insert(md.ino());
            }
        }
    }
    assert_eq!(inodes["keep.txt"].len(), 1, "{inodes:?}");
    assert_eq!(inodes["sub/change.txt"].len(), 3, "{inodes:?}");
    assert_eq!(inodes["touched.txt"].len(), 2, "{inodes:?}");
    let touched_mtime = fs::metadata(&touched).unwrap().mtime();
    let out = env.rbuild(&[
        "run",
        "--rm",
        "reuse:1",
        "stat",
        "-c",
        "%Y",
        "/files/touched.txt",
    ]);
    assert_eq!(stdout(&out).trim(), touched_mtime.to_string());
}

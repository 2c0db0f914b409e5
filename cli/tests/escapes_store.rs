//! Hostile cases of issue 11 on the store, exporter and registry side: the store is private, a
//! local output drops set-id bits and device nodes, layers cannot plant overlay metadata, the
//! registry client caps what it reads, and `prune` leaves snapshots in use alone.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::*;

/// Runs `script` with `sh -c` as the unprivileged user nobody (uid/gid 65534, no groups).
fn as_nobody(script: &str) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// What another local user tries against the store at `root`; every line must fail.
fn assert_nobody_locked_out(root: &Path) {
    let r = root.display();
    for probe in [
        format!("ls {r}/snapshots"),
        format!("ls {r}/blobs/sha256"),
        format!("cat {r}/meta.db > /dev/null"),
        format!("flock -n {r}/locks/.writable true"),
        format!(": < {r}/locks/.writable"),
    ] {
        let out = as_nobody(&probe);
        assert!(
            !out.status.success(),
            "another user could run `{probe}` against the store: {}",
            stdout(&out)
        );
    }
}

#[test]
fn the_store_is_private_and_a_loose_one_is_tightened() {
    let env = Env::empty();
    // The temporary directory holding the store is reachable by everyone, as /var/lib is.
    std::fs::set_permissions(env.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = env.root.path().join("store");
    let run = |args: &[&str]| {
        Command::new(bin())
            .args(args)
            .env("RBUILD_ROOT", &root)
            .current_dir(env.work.path())
            .output()
            .unwrap()
    };
    assert_ok(&run(&[
        "import",
        busybox_tar().to_str().unwrap(),
        "busybox:local",
    ]));
    // The probe itself works: nobody can list a directory it may read.
    assert!(as_nobody(&format!("ls {}", env.root.path().display()))
        .status
        .success());
    assert_eq!(mode(&root), 0o700, "a new store is created 0700");
    assert_eq!(mode(&root.join("meta.db")) & 0o077, 0);
    assert_nobody_locked_out(&root);

    // A store left readable by everyone (an older rbuild, a careless chmod) is tightened on open.
    assert!(Command::new("chmod")
        .args(["-R", "go+rwX", root.to_str().unwrap()])
        .status()
        .unwrap()
        .success());
    assert!(as_nobody(&format!("ls {}/snapshots", root.display()))
        .status
        .success());
    // A non-root USER in a RUN step still reads the image and writes its own files.
    let dir = env.context(
        "user",
        "FROM busybox:local\nUSER nobody\nRUN ls /bin/sh && cat /etc/passwd > /dev/null && echo ok > /tmp/mine && cat /tmp/mine\n",
        &[],
    );
    let out = run(&[
        "build",
        "--progress",
        "plain",
        "-t",
        "user:1",
        dir.to_str().unwrap(),
    ]);
    assert_ok(&out);
    assert!(stderr(&out).contains("ok"), "{}", stderr(&out));
    for d in ["", "snapshots", "blobs", "locks", "tmp", "ingest"] {
        assert_eq!(mode(&root.join(d)) & 0o077, 0, "{d} was tightened");
    }
    assert_nobody_locked_out(&root);
    let out = run(&[
        "run",
        "--rm",
        "-u",
        "nobody",
        "busybox:local",
        "cat",
        "/etc/passwd",
    ]);
    assert_ok(&out);
}

#[test]
fn local_output_drops_setid_bits_and_devices_unless_asked() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let env = Env::new();
    let dir = env.context(
        "special",
        "FROM busybox:local\nRUN cp /bin/busybox /suid && chmod 4755 /suid && cp /bin/busybox /sgid && chmod 2755 /sgid && mknod /sda b 8 0 && mkfifo /fifo\n",
        &[],
    );
    let plain = env.work.path().join("plain");
    let special = env.work.path().join("special-out");
    env.build_ok(
        "special:1",
        &dir,
        &[
            "--output",
            &format!("type=local,dest={}", plain.display()),
            "--output",
            &format!(
                "type=local,dest={},preserve-special=true",
                special.display()
            ),
        ],
    );
    assert_eq!(mode(&plain.join("suid")), 0o755, "setuid bit dropped");
    assert_eq!(mode(&plain.join("sgid")), 0o755, "setgid bit dropped");
    assert!(
        std::fs::symlink_metadata(plain.join("sda")).is_err(),
        "no block device on the host"
    );
    assert!(std::fs::symlink_metadata(plain.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(plain.join("bin/busybox").is_file());

    assert_eq!(mode(&special.join("suid")), 0o4755);
    assert_eq!(mode(&special.join("sgid")), 0o2755);
    let sda = std::fs::symlink_metadata(special.join("sda")).unwrap();
    assert!(sda.file_type().is_block_device() && sda.rdev() == nix::sys::stat::makedev(8, 0));
}

/// Waits until `file` contains `needle` (a step or container announcing it is running).
fn wait_for(file: &Path, needle: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_to_string(file)
        .unwrap_or_default()
        .contains(needle)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{needle:?} never appeared in {}: {}",
            file.display(),
            std::fs::read_to_string(file).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn spawn_logged(env: &Env, args: &[&str], log: &Path) -> std::process::Child {
    let f = std::fs::File::create(log).unwrap();
    Command::new(bin())
        .args(args)
        .env("RBUILD_ROOT", env.root.path())
        .current_dir(env.work.path())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap()
}

#[test]
fn prune_leaves_the_snapshots_of_a_running_build_alone() {
    let env = Env::new();
    let dir = env.context(
        "busy",
        "FROM busybox:local\nRUN echo from-step-one > /a\nRUN echo step-two-started && sleep 3 && cat /a\n",
        &[],
    );
    let log = env.work.path().join("build.log");
    let mut build = spawn_logged(
        &env,
        &[
            "build",
            "--progress",
            "plain",
            "-t",
            "busy:1",
            dir.to_str().unwrap(),
        ],
        &log,
    );
    wait_for(&log, "step-two-started");
    let prune = env.rbuild(&["prune", "--all", "-f"]);
    assert_ok(&prune);
    let st = build.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(st.success(), "the build failed after a prune:\n{text}");
    assert!(text.contains("from-step-one"), "{text}");
    // The image's layers are all there: it runs and exports.
    let out = env.rbuild(&["run", "--rm", "busy:1", "cat", "/a"]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "from-step-one\n");
    let oci = env.work.path().join("busy.tar");
    assert_ok(&env.rbuild(&["save", "busy:1", "-o", oci.to_str().unwrap()]));
}

#[test]
fn prune_leaves_the_snapshots_of_a_running_container_alone() {
    let env = Env::new();
    let dir = env.context(
        "ctr",
        "FROM busybox:local\nRUN echo layer-content > /b\n",
        &[],
    );
    env.build_ok("ctr:1", &dir, &[]);
    let log = env.work.path().join("run.log");
    let mut run = spawn_logged(
        &env,
        &[
            "run",
            "--rm",
            "ctr:1",
            "sh",
            "-c",
            "echo container-up; sleep 3; cat /b",
        ],
        &log,
    );
    wait_for(&log, "container-up");
    // Nothing names the image any more: only the running container uses its layers.
    assert_ok(&env.rbuild(&["rmi", "ctr:1"]));
    assert_ok(&env.rbuild(&["prune", "--all", "-f"]));
    let st = run.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(st.success(), "the container failed after a prune:\n{text}");
    assert!(text.contains("layer-content"), "{text}");
    // Once it has exited, the same prune removes what nothing uses.
    let snaps = || {
        std::fs::read_dir(env.root.path().join("snapshots"))
            .unwrap()
            .count()
    };
    let before = snaps();
    assert_ok(&env.rbuild(&["prune", "--all", "-f"]));
    assert!(
        snaps() < before,
        "the unused snapshot was pruned afterwards"
    );
}

/// A tar entry with PAX `SCHILY.xattr.*` records.
fn append_entry(
    b: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    data: &[u8],
    xattrs: &[(&str, &[u8])],
) {
    if !xattrs.is_empty() {
        let records: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        b.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
            .unwrap();
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(data.len() as u64);
    h.set_path(path).unwrap();
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn sha256_hex(data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("blob");
    std::fs::write(&f, data).unwrap();
    let out = Command::new("sha256sum").arg(&f).output().unwrap();
    stdout(&out).split(' ').next().unwrap().to_string()
}

#[test]
fn a_loaded_layer_cannot_plant_overlay_metadata() {
    let env = Env::new();
    // Layer 1: busybox. Layer 2: /etc marked opaque through a PAX xattr (which would hide the
    // lower /etc in the overlay) and a redirect on /bin pointing at /etc.
    let base = std::fs::read(busybox_tar()).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    append_entry(
        &mut b,
        "etc",
        tar::EntryType::Directory,
        b"",
        &[("trusted.overlay.opaque", b"y")],
    );
    append_entry(&mut b, "etc/planted", tar::EntryType::Regular, b"x\n", &[]);
    append_entry(
        &mut b,
        "bin",
        tar::EntryType::Directory,
        b"",
        &[("trusted.overlay.redirect", b"/etc")],
    );
    let top = b.into_inner().unwrap();
    let (d1, d2) = (sha256_hex(&base), sha256_hex(&top));
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{d1}"), format!("sha256:{d2}")]},
    })
    .to_string();
    let manifest = serde_json::json!([{
        "Config": "config.json", "RepoTags": ["planted:1"], "Layers": ["l1.tar", "l2.tar"],
    }])
    .to_string();
    let mut a = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("manifest.json", manifest.as_bytes()),
        ("config.json", config.as_bytes()),
        ("l1.tar", &base[..]),
        ("l2.tar", &top[..]),
    ] {
        append_entry(&mut a, name, tar::EntryType::Regular, data, &[]);
    }
    let archive = env.work.path().join("planted.tar");
    std::fs::write(&archive, a.into_inner().unwrap()).unwrap();
    assert_ok(&env.rbuild(&["load", "-i", archive.to_str().unwrap()]));
    let out = env.rbuild(&[
        "run",
        "--rm",
        "planted:1",
        "sh",
        "-c",
        "cat /etc/planted && test -s /etc/passwd && test -x /bin/sh && echo lower-etc-visible",
    ]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "x\nlower-etc-visible\n");
}

//! Images in and out: outputs read by skopeo/umoci, a real registry on 127.0.0.1 (docker-registry),
//! archives from skopeo, tampered blobs, reproducible digests and the image commands.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::registry::Registry;
use common::*;

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert_ok(&out);
    out
}

fn line_value(text: &str, prefix: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{text}"))
        .trim()
        .to_string()
}

fn inspect(env: &Env, image: &str) -> serde_json::Value {
    let out = env.rbuild(&["image", "inspect", image]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0].clone()
}

fn files_of(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = walk(dir)
        .into_iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        }
    }
    out
}

const APP: &str = "FROM busybox:local\nRUN mkdir /app && echo built > /app/built.txt && date > /app/when\nCOPY hello.txt /app/\nCMD [\"cat\", \"/app/hello.txt\"]\n";

#[test]
fn registry_push_pull_and_tampered_blob() {
    if !have("docker-registry") || !have("skopeo") {
        return;
    }
    let reg = Registry::start();
    let env = Env::new();
    let ctx = env.context("app", APP, &[("hello.txt", "hello from the registry\n")]);
    let name = format!("{}/app:v1", reg.host);
    env.build_ok(&name, &ctx, &[]);
    let built = inspect(&env, &name);
    let push = env.rbuild(&["push", &name]);
    assert_ok(&push);
    let pushed = line_value(&stdout(&push), "v1: digest:");

    // skopeo reads what was pushed.
    let sk = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        &format!("docker://{name}"),
    ]));
    let sk: serde_json::Value = serde_json::from_slice(&sk.stdout).unwrap();
    assert_eq!(sk["Digest"], pushed.as_str());

    // A second push uploads nothing new and gives the same digest.
    let again = env.rbuild(&["push", &name]);
    assert_ok(&again);
    assert_eq!(line_value(&stdout(&again), "v1: digest:"), pushed);

    // Pull into another store: same registry digest, same image id, runs.
    let other = Env::empty();
    let pull = other.rbuild(&["pull", &name]);
    assert_ok(&pull);
    assert_eq!(line_value(&stdout(&pull), "Digest:"), pushed);
    assert_eq!(
        line_value(&stdout(&pull), "Image ID:"),
        built["Id"].as_str().unwrap()
    );
    let out = other.rbuild(&["run", "--rm", &name]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "hello from the registry\n");
    // Pushing the pulled image back gives the same manifest digest again.
    let re = other.rbuild(&["push", &name]);
    assert_ok(&re);
    assert_eq!(line_value(&stdout(&re), "v1: digest:"), pushed);

    // FROM an image only the registry has: pulled during the build.
    let third = Env::empty();
    let ctx = third.context(
        "child",
        &format!("FROM {name}\nRUN cat /app/built.txt\n"),
        &[],
    );
    third.build_ok("child:v1", &ctx, &[]);
    assert!(stdout(&third.rbuild(&["images"])).contains(&format!("{}/app", reg.host)));

    // A tampered layer in the registry: the pull fails and leaves nothing in the store.
    let manifest: serde_json::Value = serde_json::from_slice(
        &run(Command::new("skopeo").args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{name}"),
        ]))
        .stdout,
    )
    .unwrap();
    let layer = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let file = reg.blob_file(&layer);
    let mut data = std::fs::read(&file).unwrap();
    let last = data.len() - 10;
    data[last] ^= 0xff;
    std::fs::write(&file, &data).unwrap();
    let victim = Env::empty();
    let out = victim.rbuild(&["pull", &name]);
    assert!(!out.status.success(), "a tampered pull succeeded");
    let err = stderr(&out);
    assert!(
        err.contains("tampered") || err.contains("digest"),
        "unclear error: {err}"
    );
    let imgs = stdout(&victim.rbuild(&["images", "--format", "json"]));
    assert!(
        imgs.trim().is_empty(),
        "store has images after a failed pull: {imgs}"
    );
    let blobs = victim.root.path().join("blobs/sha256");
    assert_eq!(
        std::fs::read_dir(&blobs).unwrap().count(),
        0,
        "blobs left after a failed pull"
    );
}

#[test]
fn buildah_pulls_and_runs_a_pushed_image() {
    if !have("docker-registry") || !have("buildah") || !have("runc") {
        return;
    }
    let reg = Registry::start();
    let env = Env::new();
    let ctx = env.context("app", APP, &[("hello.txt", "hello buildah\n")]);
    let name = format!("{}/app:v1", reg.host);
    // --push on the build itself.
    env.build_ok(&name, &ctx, &["--push"]);
    let broot = tempfile::tempdir().unwrap();
    let b = |args: &[&str]| -> Output {
        Command::new("buildah")
            .arg("--root")
            .arg(broot.path().join("root"))
            .arg("--runroot")
            .arg(broot.path().join("run"))
            .arg("--storage-driver")
            .arg("vfs")
            .args(args)
            .env("BUILDAH_ISOLATION", "chroot")
            .output()
            .unwrap()
    };
    let out = b(&["pull", "--tls-verify=false", &format!("docker://{name}")]);
    assert_ok(&out);
    let out = b(&["from", "--tls-verify=false", &format!("docker://{name}")]);
    assert_ok(&out);
    let ctr = stdout(&out).trim().to_string();
    let out = b(&[
        "run",
        "--runtime",
        "runc",
        &ctr,
        "--",
        "cat",
        "/app/hello.txt",
    ]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "hello buildah\n");
    let _ = b(&["rm", "--all"]);
}

#[test]
fn every_output_type_is_read_by_skopeo_and_umoci() {
    if !have("skopeo") || !have("umoci") {
        return;
    }
    let env = Env::new();
    let ctx = env.context("app", APP, &[("hello.txt", "hi\n")]);
    let w = env.work.path();
    let meta = w.join("meta.json");
    env.build_ok(
        "app:v1",
        &ctx,
        &[
            "--output",
            "type=oci,dest=app-oci.tar",
            "--output",
            "type=oci,dest=app-layout,tar=false",
            "--output",
            "type=docker,dest=app-docker.tar",
            "--output",
            "type=local,dest=app-local",
            "--output",
            "type=tar,dest=app-fs.tar",
            "--metadata-file",
            meta.to_str().unwrap(),
            "--label",
            "org.example.team=images",
        ],
    );
    let img = inspect(&env, "app:v1");
    assert_eq!(img["Config"]["Labels"]["org.example.team"], "images");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(m["containerimage.config.digest"], img["Id"]);
    assert_eq!(m["containerimage.digest"], img["ManifestDigest"]);
    assert_eq!(m["image.name"], "app:v1");

    for src in [
        format!("oci-archive:{}", w.join("app-oci.tar").display()),
        format!("oci:{}:v1", w.join("app-layout").display()),
        format!("docker-archive:{}", w.join("app-docker.tar").display()),
    ] {
        let out = run(Command::new("skopeo").args(["inspect", "--config", &src]));
        let cfg: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(cfg["config"]["Cmd"][1], "/app/hello.txt", "{src}");
        let dest = w.join(format!("copy-{}", src.split(':').next().unwrap()));
        run(Command::new("skopeo").args(["copy", &src, &format!("oci:{}:x", dest.display())]));
    }

    // umoci unpack of the OCI layout == the type=local output.
    let bundle = w.join("bundle");
    run(Command::new("umoci").args([
        "unpack",
        "--image",
        &format!("{}:v1", w.join("app-layout").display()),
        bundle.to_str().unwrap(),
    ]));
    let local = w.join("app-local");
    assert_eq!(files_of(&bundle.join("rootfs")), files_of(&local));
    let diff = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(bundle.join("rootfs"))
        .arg(&local)
        .output()
        .unwrap();
    assert_ok(&diff);
    assert_eq!(
        std::fs::read_to_string(local.join("app/hello.txt")).unwrap(),
        "hi\n"
    );

    // type=tar holds the same files.
    let list = run(Command::new("tar").arg("-tf").arg(w.join("app-fs.tar")));
    let mut names: Vec<String> = stdout(&list)
        .lines()
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    names.sort();
    assert_eq!(names, files_of(&local));
}

#[test]
fn skopeo_docker_archive_loads_and_builds_from() {
    if !have("skopeo") {
        return;
    }
    let env = Env::new();
    let w = env.work.path();
    let oci = w.join("bb.tar");
    let out = env.rbuild(&[
        "save",
        "--format",
        "oci",
        "busybox:local",
        "-o",
        oci.to_str().unwrap(),
    ]);
    assert_ok(&out);
    let dar = w.join("bb-docker.tar");
    run(Command::new("skopeo").args([
        "copy",
        &format!("oci-archive:{}", oci.display()),
        &format!("docker-archive:{}:other/base:v2", dar.display()),
    ]));
    let fresh = Env::empty();
    let out = fresh.rbuild(&["load", "-i", dar.to_str().unwrap()]);
    assert_ok(&out);
    assert!(stdout(&out).contains("other/base:v2"), "{}", stdout(&out));
    let ctx = fresh.context(
        "c",
        "FROM other/base:v2\nRUN echo from-skopeo > /x\nCMD [\"cat\", \"/x\"]\n",
        &[],
    );
    fresh.build_ok("c:v1", &ctx, &[]);
    let out = fresh.rbuild(&["run", "--rm", "c:v1"]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "from-skopeo\n");
}

/// A store with busybox imported under SOURCE_DATE_EPOCH.
fn epoch_env(epoch: &str) -> Env {
    let env = Env::empty();
    let out = Command::new(bin())
        .args(["import", busybox_tar().to_str().unwrap(), "busybox:local"])
        .env("RBUILD_ROOT", env.root.path())
        .env("SOURCE_DATE_EPOCH", epoch)
        .output()
        .unwrap();
    assert_ok(&out);
    env
}

#[test]
fn reproducible_digests_across_stores() {
    let mut digests = Vec::new();
    for _ in 0..2 {
        let env = epoch_env("1700000000");
        let ctx = env.context(
            "app",
            "FROM busybox:local\nRUN mkdir -p /out && echo x > /out/a && touch /out/b && sleep 1\nCOPY hello.txt /out/\nENV A=1\n",
            &[("hello.txt", "same\n")],
        );
        let out = Command::new(bin())
            .args([
                "build",
                "--progress",
                "plain",
                "-t",
                "r:v1",
                "--source-date-epoch",
                "1700000000",
            ])
            .arg(&ctx)
            .env("RBUILD_ROOT", env.root.path())
            .output()
            .unwrap();
        assert_ok(&out);
        let img = inspect(&env, "r:v1");
        let created = img["Created"].as_str().unwrap();
        assert!(created.starts_with("2023-11-14T22:13:20"), "{created}");
        digests.push((img["ManifestDigest"].clone(), img["Id"].clone()));
        std::thread::sleep(Duration::from_millis(1100));
    }
    assert_eq!(digests[0], digests[1]);
}

#[test]
fn image_commands() {
    let env = Env::new();
    let ctx = env.context("app", APP, &[("hello.txt", "hi\n")]);
    env.build_ok("app:v1", &ctx, &[]);
    let img = inspect(&env, "app:v1");
    let id = img["Id"].as_str().unwrap().to_string();

    // tag, images --format json
    assert_ok(&env.rbuild(&["tag", "app:v1", "app:v2"]));
    assert_ok(&env.rbuild(&["tag", &id[7..19], "other/app:latest"]));
    let list = stdout(&env.rbuild(&["images", "--format", "json"]));
    let rows: Vec<serde_json::Value> = list
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{}:{}",
                r["Repository"].as_str().unwrap(),
                r["Tag"].as_str().unwrap()
            )
        })
        .collect();
    for n in ["app:v1", "app:v2", "other/app:latest", "busybox:local"] {
        assert!(names.contains(&n.to_string()), "{n} missing in {names:?}");
    }
    assert!(rows.iter().filter(|r| r["ID"] == id.as_str()).count() == 3);

    // inspect
    assert_eq!(img["Config"]["Cmd"][0], "cat");
    assert_eq!(img["RootFS"]["Layers"].as_array().unwrap().len(), 3);
    assert!(img["RepoTags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t == "app:v1"));
    let missing = env.rbuild(&["image", "inspect", "nope:v1"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("no such image"),
        "{}",
        stderr(&missing)
    );

    // history: newest first, RUN with its size, CMD empty
    let h = env.rbuild(&["history", "--no-trunc", "app:v1"]);
    assert_ok(&h);
    let h = stdout(&h);
    let lines: Vec<&str> = h.lines().collect();
    assert!(lines[0].starts_with("IMAGE"));
    assert!(lines[1].contains("CMD"), "{h}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("RUN /bin/sh -c mkdir /app")),
        "{h}"
    );
    assert_eq!(lines.len(), 1 + img["History"].as_array().unwrap().len());

    // save / load, both formats, into a fresh store
    for fmt in ["docker", "oci"] {
        let f = env.work.path().join(format!("save-{fmt}.tar"));
        assert_ok(&env.rbuild(&["save", "--format", fmt, "app:v1", "-o", f.to_str().unwrap()]));
        let fresh = Env::empty();
        let out = fresh.rbuild(&["load", "-i", f.to_str().unwrap()]);
        assert_ok(&out);
        assert!(stdout(&out).contains("app:v1"), "{fmt}: {}", stdout(&out));
        assert_eq!(inspect(&fresh, "app:v1")["Id"], id.as_str(), "{fmt}");
        let out = fresh.rbuild(&["run", "--rm", "app:v1"]);
        assert_ok(&out);
        assert_eq!(stdout(&out), "hi\n");
    }

    // rmi: a name untags; an id with several names needs -f
    let out = env.rbuild(&["rmi", "app:v2"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("Untagged: app:v2"));
    assert!(!env.rbuild(&["image", "inspect", "app:v2"]).status.success());
    let out = env.rbuild(&["rmi", &id]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("-f"), "{}", stderr(&out));
    assert_ok(&env.rbuild(&["rmi", "-f", &id]));
    assert!(!env.rbuild(&["image", "inspect", "app:v1"]).status.success());
    assert!(env
        .rbuild(&["image", "inspect", "busybox:local"])
        .status
        .success());
}

#[test]
fn login_and_logout() {
    if !have("docker-registry") {
        return;
    }
    let reg = Registry::start();
    let env = Env::empty();
    let cfg = tempfile::tempdir().unwrap();
    let rb = |args: &[&str]| {
        Command::new(bin())
            .args(args)
            .env("RBUILD_ROOT", env.root.path())
            .env("DOCKER_CONFIG", cfg.path())
            .output()
            .unwrap()
    };
    let out = rb(&["login", &reg.host, "-u", "me", "-p", "secret"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("Login Succeeded"));
    let saved = std::fs::read_to_string(cfg.path().join("config.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&saved).unwrap();
    assert_eq!(doc["auths"][&reg.host]["auth"], "bWU6c2VjcmV0"); // base64("me:secret")
    let out = rb(&["logout", &reg.host]);
    assert_ok(&out);
    assert!(stdout(&out).contains("Removing login credentials"));
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cfg.path().join("config.json")).unwrap())
            .unwrap();
    assert!(doc["auths"].get(&reg.host).is_none());
    // A registry that is not there: a clear error, nothing saved.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = rb(&["login", &format!("127.0.0.1:{port}"), "-u", "me", "-p", "x"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("login 127.0.0.1"), "{}", stderr(&out));
}

/// The snapshot file of a build step holding `name` (a file the step wrote).
fn snapshot_file(env: &Env, name: &str) -> PathBuf {
    std::fs::read_dir(env.root.path().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path().join("fs").join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no snapshot holds {name}"))
}

/// A built layer keeps no tar blob; `save`, `--output` and `push` make it from the snapshot
/// and check it against the recorded diff_id. A snapshot damaged after the build makes each of
/// them fail with an error naming the image and the repair, and leaves no output and no blob.
#[test]
fn damaged_snapshot_fails_exports_clearly() {
    let env = Env::new();
    let dir = env.context(
        "dmg",
        "FROM busybox:local\nRUN echo precious > /data.txt && seq 1 5000 > /seq\n",
        &[],
    );
    env.build_ok("dmg:1", &dir, &[]);
    let diff_ids = inspect(&env, "dmg:1")["RootFS"]["Layers"].clone();
    let top: String = diff_ids
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap()
        .into();
    let blob = env.root.path().join("blobs/sha256").join(&top[7..]);
    assert!(!blob.exists(), "a build step wrote its layer blob");

    // Damage: same length, other bytes.
    std::fs::write(snapshot_file(&env, "data.txt"), "PRECIOUS\n").unwrap();
    let check = |out: &Output, what: &str| {
        assert!(!out.status.success(), "{what} exported a damaged layer");
        let err = stderr(out);
        assert!(
            err.contains("dmg:1") && err.contains(&top) && err.contains("damaged"),
            "{what}: unclear error: {err}"
        );
        assert!(
            err.contains("--no-cache") && err.contains("prune"),
            "{what}: {err}"
        );
    };
    let saved = env.work.path().join("dmg.tar");
    check(
        &env.rbuild(&["save", "-o", saved.to_str().unwrap(), "dmg:1"]),
        "save",
    );
    assert!(!saved.exists());
    let oci = env.work.path().join("dmg-oci.tar");
    let out = env.rbuild(&[
        "build",
        "-t",
        "dmg:1",
        "--output",
        &format!("type=oci,dest={}", oci.display()),
        dir.to_str().unwrap(),
    ]);
    check(&out, "--output type=oci");
    assert!(!oci.exists());
    let reg = have("docker-registry").then(Registry::start);
    if let Some(reg) = &reg {
        let target = format!("{}/dmg:1", reg.host);
        assert_ok(&env.rbuild(&["tag", "dmg:1", &target]));
        let out = env.rbuild(&["push", &target]);
        assert!(!out.status.success(), "push of a damaged layer succeeded");
        let err = stderr(&out);
        assert!(err.contains(&top) && err.contains("damaged"), "push: {err}");
    }
    assert!(!blob.exists(), "a wrong blob was kept");
    let ingest = std::fs::read_dir(env.root.path().join("ingest"))
        .unwrap()
        .count();
    assert_eq!(ingest, 0, "partial blobs left");

    // The repair the message gives: the layer gets a fresh snapshot, exports work again and
    // every layer of the archive has its diff_id.
    env.build_ok("dmg:1", &dir, &["--no-cache"]);
    assert_ok(&env.rbuild(&["save", "-o", saved.to_str().unwrap(), "dmg:1"]));
    let x = env.work.path().join("x");
    std::fs::create_dir_all(&x).unwrap();
    run(Command::new("tar").arg("-xf").arg(&saved).arg("-C").arg(&x));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(x.join("manifest.json")).unwrap()).unwrap();
    let layers: Vec<String> = manifest[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let out = run(Command::new("sha256sum").arg(x.join(l.as_str().unwrap())));
            format!("sha256:{}", &stdout(&out)[..64])
        })
        .collect();
    let now = inspect(&env, "dmg:1")["RootFS"]["Layers"].clone();
    assert_eq!(serde_json::json!(layers), now);
    if let Some(reg) = &reg {
        let target = format!("{}/dmg:1", reg.host);
        assert_ok(&env.rbuild(&["tag", "dmg:1", &target]));
        assert_ok(&env.rbuild(&["push", &target]));
    }
}

/// The layer hash of a rebuilt COPY resumes from the previous result's midstate; the recorded
/// diff_id must still be the digest of the tar `save` writes, wherever the change is.
#[test]
fn resumed_layer_hash_matches_the_saved_tar() {
    let env = Env::new();
    let mut files = Vec::new();
    for d in 0..6 {
        for f in 0..50 {
            files.push((format!("files/d{d}/f{f:02}.txt"), format!("file {d}/{f}\n")));
        }
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let dir = env.context(
        "many",
        "FROM busybox:local\nCOPY files /files\nRUN ls -R /files | wc -l > /count\n",
        &refs,
    );
    env.build_ok("many:1", &dir, &[]);
    let saved = env.work.path().join("many.tar");
    for (i, change) in ["files/d3/f20.txt", "files/d0/f00.txt", "files/d5/f49.txt"]
        .iter()
        .enumerate()
    {
        std::fs::write(dir.join(change), format!("changed {i}\n")).unwrap();
        env.build_ok("many:1", &dir, &[]);
        assert_ok(&env.rbuild(&["save", "-o", saved.to_str().unwrap(), "many:1"]));
        let x = env.work.path().join(format!("x{i}"));
        std::fs::create_dir_all(&x).unwrap();
        run(Command::new("tar").arg("-xf").arg(&saved).arg("-C").arg(&x));
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(x.join("manifest.json")).unwrap()).unwrap();
        let config: serde_json::Value = serde_json::from_slice(
            &std::fs::read(x.join(manifest[0]["Config"].as_str().unwrap())).unwrap(),
        )
        .unwrap();
        for (l, d) in manifest[0]["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .zip(config["rootfs"]["diff_ids"].as_array().unwrap())
        {
            let out = run(Command::new("sha256sum").arg(x.join(l.as_str().unwrap())));
            assert_eq!(
                format!("sha256:{}", &stdout(&out)[..64]),
                d.as_str().unwrap(),
                "after changing {change}"
            );
        }
    }
}

/// The inode, mode and mtime of `rel` in every snapshot of the store that has it.
fn in_snapshots(env: &Env, rel: &str) -> Vec<(u64, u32, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for s in std::fs::read_dir(env.root.path().join("snapshots")).unwrap() {
        if let Ok(m) = std::fs::symlink_metadata(s.unwrap().path().join("fs").join(rel)) {
            out.push((m.ino(), m.mode() & 0o7777, m.mtime()));
        }
    }
    out.sort();
    out
}

/// The one-change rebuild of a COPY shares every unchanged file with the previous result
/// (hard links: the same inode, so its mode and mtime too), writes the changed one anew, and
/// the layer's resumed hash equals the digest of the tar `save` makes from the snapshot.
#[test]
fn one_change_rebuild_links_unchanged_files_and_hashes_right() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let mut files = Vec::new();
    for d in 0..4 {
        for f in 0..20 {
            files.push((format!("files/d{d}/f{f:02}.txt"), format!("file {d}/{f}\n")));
        }
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let dir = env.context("one", "FROM busybox:local\nCOPY files /files\n", &refs);
    let exec = dir.join("files/d0/f03.txt");
    std::fs::set_permissions(&exec, std::fs::Permissions::from_mode(0o751)).unwrap();
    env.build_ok("one:1", &dir, &[]);
    std::fs::write(dir.join("files/d2/f07.txt"), "changed\n").unwrap();
    env.build_ok("one:1", &dir, &[]);
    // Two COPY results; unchanged files: one inode in both, mode and mtime kept.
    for rel in ["files/d0/f00.txt", "files/d3/f19.txt", "files/d0/f03.txt"] {
        let s = in_snapshots(&env, rel);
        assert_eq!(s.len(), 2, "{rel}: {s:?}");
        assert_eq!(s[0], s[1], "{rel} is not shared");
    }
    assert_eq!(in_snapshots(&env, "files/d0/f03.txt")[0].1, 0o751);
    let changed = in_snapshots(&env, "files/d2/f07.txt");
    assert_eq!(changed.len(), 2);
    assert_ne!(changed[0].0, changed[1].0, "the changed file is shared");
    // The recorded diff_id (computed by the resumed hash) is the saved tar's digest.
    let saved = env.work.path().join("one.tar");
    assert_ok(&env.rbuild(&["save", "-o", saved.to_str().unwrap(), "one:1"]));
    let x = env.work.path().join("one-x");
    std::fs::create_dir_all(&x).unwrap();
    run(Command::new("tar").arg("-xf").arg(&saved).arg("-C").arg(&x));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(x.join("manifest.json")).unwrap()).unwrap();
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(x.join(manifest[0]["Config"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let layers = manifest[0]["Layers"].as_array().unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    let last = layers.last().unwrap().as_str().unwrap();
    let out = run(Command::new("sha256sum").arg(x.join(last)));
    assert_eq!(
        format!("sha256:{}", &stdout(&out)[..64]),
        diff_ids.last().unwrap().as_str().unwrap()
    );
    // The layer holds the new content.
    let t = run(Command::new("tar")
        .arg("-xOf")
        .arg(x.join(last))
        .arg("files/d2/f07.txt"));
    assert_eq!(stdout(&t), "changed\n");
}

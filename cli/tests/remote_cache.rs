//! Remote cache: runners with fresh stores share steps through a registry (docker-registry on a
//! free loopback port), an OCI layout directory, or an image's inline cache; keys are portable
//! between stores; a tampered cache is a miss with a warning.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::registry::Registry;
use common::*;

const EPOCH: &str = "1700000000";

/// rbuild with this store and SOURCE_DATE_EPOCH set (reproducible digests).
fn rb(env: &Env, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("RBUILD_ROOT", env.root.path())
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .current_dir(env.work.path())
        .output()
        .unwrap()
}

/// A fresh store (a new CI runner) with the busybox base imported reproducibly.
fn runner() -> Env {
    let env = Env::empty();
    let tar = busybox_tar().to_str().unwrap();
    assert_ok(&rb(&env, &["import", tar, "busybox:local"]));
    env
}

/// Builds `dir` with `extra` flags; returns (stderr, image id).
fn build(env: &Env, dir: &Path, extra: &[&str]) -> (String, String) {
    let iid = env.work.path().join("iid");
    let mut args = vec!["build", "--progress", "plain", "-t", "app:ci", "--iidfile"];
    args.push(iid.to_str().unwrap());
    args.extend_from_slice(extra);
    args.push(dir.to_str().unwrap());
    let out = rb(env, &args);
    assert_ok(&out);
    (stderr(&out), std::fs::read_to_string(&iid).unwrap())
}

/// Instructions of the vertices that ran (not CACHED).
fn ran(log: &str) -> Vec<String> {
    steps(log)
        .into_iter()
        .filter(|(id, _)| !cached(log, id))
        .map(|(_, n)| n.split_once("] ").map(|(_, i)| i.to_string()).unwrap_or(n))
        .collect()
}

/// A multi-stage project whose RUN steps append to a cache mount: the file is in the store
/// (`cachemounts/`), so a runner can tell whether any RUN executed.
const PROJECT: &str = "\
FROM busybox:local AS build
COPY src/ /src/
RUN --mount=type=cache,target=/runs echo build >> /runs/log; cat /src/main.c > /out && echo compiled >> /out
FROM busybox:local
RUN --mount=type=cache,target=/runs echo base >> /runs/log; echo base > /base.txt
COPY --from=build /out /app/out
COPY late.txt /app/late.txt
RUN --mount=type=cache,target=/runs echo late >> /runs/log; cat /app/late.txt > /app/final.txt
";

fn project(env: &Env, name: &str) -> PathBuf {
    env.context(
        name,
        PROJECT,
        &[("src/main.c", "int main(){}\n"), ("late.txt", "v1\n")],
    )
}

/// (description, diff_id) of every cache record of a store.
fn records(env: &Env) -> Vec<(String, String)> {
    let out = env.rbuild(&["cache", "ls", "--format", "json"]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["description"].as_str().unwrap().to_string(),
                r["diff_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The snapshot directories of a store.
fn snapshot_dirs(env: &Env) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(env.root.path().join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("tmp-"))
        .collect();
    v.sort();
    v
}

/// What RUN steps wrote to their cache mount in this store ("" when none ran).
fn runs(env: &Env) -> String {
    let mut all = String::new();
    if let Ok(rd) = std::fs::read_dir(env.root.path().join("cachemounts")) {
        for e in rd.flatten() {
            if let Ok(s) = std::fs::read_to_string(e.path().join("log")) {
                all.push_str(&s);
            }
        }
    }
    all
}

#[test]
fn fleet_registry_cache_every_step_cached_same_digest_then_only_the_suffix() {
    if !have("docker-registry") {
        return;
    }
    let reg = Registry::start();
    let cache = format!("{}/app:buildcache", reg.host);
    let a = runner();
    let (log_a, id_a) = build(
        &a,
        &project(&a, "p"),
        &["--cache-to", &format!("type=registry,ref={cache},mode=max")],
    );
    assert!(log_a.contains("exporting cache to"), "{log_a}");
    if have("curl") {
        // The preferred form: rbuild's config media type, the step layers compressed.
        let out = Command::new("curl")
            .args([
                "-sf",
                "-H",
                "Accept: application/vnd.oci.image.manifest.v1+json",
            ])
            .arg(format!("http://{}/v2/app/manifests/buildcache", reg.host))
            .output()
            .unwrap();
        assert_ok(&out);
        let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            m["config"]["mediaType"],
            "application/vnd.rbuild.cache.config.v1+json"
        );
        assert_eq!(m["layers"].as_array().unwrap().len(), 6);
        assert_eq!(
            m["layers"][0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
    }
    assert_eq!(runs(&a).lines().count(), 3, "A runs its 3 RUN steps");

    let b = runner();
    let snaps_b0 = snapshot_dirs(&b);
    let dir_b = project(&b, "elsewhere/p");
    let missing = format!("type=registry,ref={}/nothing:here", reg.host);
    let from = format!("type=registry,ref={cache}");
    let (log_b, id_b) = build(
        &b,
        &dir_b,
        &["--cache-from", &missing, "--cache-from", &from],
    );
    assert!(ran(&log_b).is_empty(), "every step CACHED on B:\n{log_b}");
    assert_eq!(runs(&b), "", "no RUN executed on B");
    assert_eq!(id_a, id_b, "B's image equals A's");
    // Lazy: the build stage's layers were never needed (its consumer, COPY --from, hit too),
    // so B did not download them (and has no record of them); the final image's layers are
    // kept as their compressed blobs only: no tar, no snapshot unpacked.
    let recs_b = records(&b);
    for (desc, diff_id) in records(&a) {
        let tar = b
            .root
            .path()
            .join("blobs/sha256")
            .join(&diff_id[7..])
            .is_file();
        assert!(!tar, "{desc}: no layer tar in B's store");
        assert_eq!(
            recs_b.iter().any(|(d, _)| *d == desc),
            !desc.starts_with("[build "),
            "{desc}: B has a record of the final image's steps only"
        );
    }
    assert_eq!(
        snapshot_dirs(&b),
        snaps_b0,
        "nothing unpacked in B (only the imported base's snapshot)"
    );
    assert!(
        log_b.contains("WARNING: --cache-from") && log_b.contains("no cache found"),
        "a missing ref is a warning:\n{log_b}"
    );
    // B's image runs: its snapshots are made from the compressed blobs on demand.
    let out = rb(
        &b,
        &["run", "--rm", "app:ci", "cat", "/app/out", "/app/final.txt"],
    );
    assert_ok(&out);
    assert_eq!(stdout(&out), "int main(){}\ncompiled\nv1\n");
    assert_eq!(
        snapshot_dirs(&b).len(),
        snaps_b0.len() + 4,
        "the 4 layers of the final stage unpacked for run"
    );
    // And the next build hits the final stage locally (its records are local now; the build
    // stage, whose hits stayed remote, runs again without --cache-from).
    let (log_b2, id_b2) = build(&b, &dir_b, &[]);
    assert!(
        !ran(&log_b2)
            .iter()
            .any(|r| r.contains("late") || r.contains("base")),
        "{log_b2}"
    );
    assert_eq!(id_b2, id_a);

    // A late change: a third runner with the same remote cache runs only the suffix, and says
    // why the remote record differed.
    let c = runner();
    let dir_c = project(&c, "p");
    std::fs::write(dir_c.join("late.txt"), "v2\n").unwrap();
    let (log_c, _) = build(&c, &dir_c, &["--cache-from", &from]);
    assert_eq!(
        ran(&log_c),
        vec![
            "COPY late.txt /app/late.txt".to_string(),
            "RUN --mount=type=cache,target=/runs echo late >> /runs/log; cat /app/late.txt > /app/final.txt".to_string()
        ],
        "{log_c}"
    );
    assert_eq!(runs(&c), "late\n");
    assert!(
        log_c.contains(
            "cache miss: COPY late.txt /app/late.txt: late.txt changed (against remote cache"
        ),
        "{log_c}"
    );
}

#[test]
fn mode_min_exports_only_the_final_image_steps() {
    if !have("docker-registry") {
        return;
    }
    let reg = Registry::start();
    let a = runner();
    let dir = project(&a, "p");
    let min = format!("{}/app:min", reg.host);
    let max = format!("{}/app:max", reg.host);
    let (log, _) = build(
        &a,
        &dir,
        &[
            "--cache-to",
            &format!("type=registry,ref={min}"),
            "--cache-to",
            &format!("type=registry,ref={max},mode=max,compression=zstd"),
        ],
    );
    assert!(
        log.contains("(4 records, 4 layers)"),
        "min: 4 steps of the final image:\n{log}"
    );
    assert!(
        log.contains("(6 records, 6 layers)"),
        "max: every step:\n{log}"
    );

    // With the min cache the build stage runs again (its steps are not exported); the final
    // stage's steps, whose keys depend on the same inputs, come from the cache.
    let b = runner();
    let (log_b, _) = build(&b, &project(&b, "p"), &["--cache-from", &min]);
    assert_eq!(
        ran(&log_b),
        vec![
            "COPY src/ /src/".to_string(),
            "RUN --mount=type=cache,target=/runs echo build >> /runs/log; cat /src/main.c > /out && echo compiled >> /out".to_string()
        ],
        "{log_b}"
    );
    assert_eq!(runs(&b), "build\n");

    let c = runner();
    let (log_c, _) = build(&c, &project(&c, "p"), &["--cache-from", &max]);
    assert!(ran(&log_c).is_empty(), "{log_c}");
}

#[test]
fn local_directory_cache_and_a_missing_layer_in_it() {
    let a = runner();
    let cache = a.work.path().join("ci-cache");
    let dest = format!("type=local,dest={},mode=max", cache.display());
    let (_, id_a) = build(&a, &project(&a, "p"), &["--cache-to", &dest]);
    assert!(cache.join("oci-layout").is_file());
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);

    let src = format!("type=local,src={}", cache.display());
    let b = runner();
    let (log_b, id_b) = build(&b, &project(&b, "p"), &["--cache-from", &src]);
    assert!(ran(&log_b).is_empty(), "{log_b}");
    assert_eq!(id_a, id_b);

    // A directory that does not exist is a warning.
    let c = runner();
    let nowhere = format!("type=local,src={}", c.work.path().join("none").display());
    let (log_c, _) = build(&c, &project(&c, "p"), &["--cache-from", &nowhere]);
    assert!(
        log_c.contains("WARNING: --cache-from") && log_c.contains("no cache found"),
        "{log_c}"
    );

    // The config names a layer whose blob is gone: that step (and what follows it) runs, with
    // a warning, and the result is still right.
    let late = last_layer_of(&cache);
    std::fs::remove_file(
        cache
            .join("blobs/sha256")
            .join(late.strip_prefix("sha256:").unwrap()),
    )
    .unwrap();
    let d = runner();
    let (log_d, id_d) = build(&d, &project(&d, "p"), &["--cache-from", &src]);
    assert!(log_d.contains("WARNING: remote cache"), "{log_d}");
    assert_eq!(
        ran(&log_d).len(),
        1,
        "only the step whose layer is missing runs:\n{log_d}"
    );
    assert_eq!(id_d, id_a);

    // A missing layer of a step outside the final image (checked, not downloaded, at the hit):
    // the same, that step runs.
    let build_layer = layer_of(&cache, "echo build");
    let hex = build_layer.strip_prefix("sha256:").unwrap();
    std::fs::remove_file(cache.join("blobs/sha256").join(hex)).unwrap();
    let e = runner();
    let (log_e, id_e) = build(&e, &project(&e, "p"), &["--cache-from", &src]);
    assert!(
        log_e.contains("WARNING: remote cache") && log_e.contains("echo build"),
        "{log_e}"
    );
    assert!(
        ran(&log_e).iter().any(|r| r.contains("echo build")),
        "{log_e}"
    );
    assert_eq!(runs(&e), "build\nlate\n");
    assert_eq!(id_e, id_a);
}

/// The layer of the last RUN step of the project in a cache layout (via its config).
fn last_layer_of(layout: &Path) -> String {
    layer_of(layout, "echo late")
}

/// The layer blob of the step whose description contains `what`, in a cache layout.
fn layer_of(layout: &Path, what: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.strip_prefix("sha256:").unwrap())
    };
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let c: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob(m["config"]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let rec = c["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["description"].as_str().unwrap().contains(what))
        .unwrap();
    let l = c["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["diff_id"] == rec["diff_id"])
        .unwrap();
    l["digest"].as_str().unwrap().to_string()
}

#[test]
fn inline_cache_travels_in_the_pushed_image() {
    if !have("docker-registry") {
        return;
    }
    let reg = Registry::start();
    let image = format!("{}/app:inline", reg.host);
    let a = runner();
    let out = rb(
        &a,
        &[
            "build",
            "--progress",
            "plain",
            "-t",
            &image,
            "--push",
            "--cache-to",
            "type=inline",
            project(&a, "p").to_str().unwrap(),
        ],
    );
    assert_ok(&out);
    let b = runner();
    let (log_b, _) = build(&b, &project(&b, "p"), &["--cache-from", &image]);
    // Inline is mode=min: the final stage's steps hit, the build stage runs.
    assert_eq!(runs(&b), "build\n", "{log_b}");
    assert_eq!(ran(&log_b).len(), 2, "{log_b}");
    // A plain image (no inline cache) is a warning.
    let plain = format!("{}/app:plain", reg.host);
    let out = rb(
        &a,
        &[
            "build",
            "-t",
            &plain,
            "--push",
            project(&a, "p").to_str().unwrap(),
        ],
    );
    assert_ok(&out);
    let (log_c, _) = build(&b, &project(&b, "p"), &["--cache-from", &plain]);
    assert!(log_c.contains("carries no rbuild cache"), "{log_c}");
}

#[test]
fn tampered_registry_layer_is_a_miss_with_a_warning_and_the_artifact_form_works() {
    if !have("docker-registry") {
        return;
    }
    let reg = Registry::start();
    let a = runner();
    let layout = a.work.path().join("copy");
    let cache = format!("{}/app:art", reg.host);
    let (_, id_a) = build(
        &a,
        &project(&a, "p"),
        &[
            "--cache-to",
            &format!("type=registry,ref={cache},mode=max,oci-artifact=true"),
            // The same records in a directory, to find the layer digest.
            "--cache-to",
            &format!("type=local,dest={},mode=max", layout.display()),
        ],
    );
    // The artifact form: empty config and artifactType.
    if have("curl") {
        let out = Command::new("curl")
            .args([
                "-sf",
                "-H",
                "Accept: application/vnd.oci.image.manifest.v1+json",
            ])
            .arg(format!("http://{}/v2/app/manifests/art", reg.host))
            .output()
            .unwrap();
        assert_ok(&out);
        let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(m["artifactType"], "application/vnd.rbuild.cache.v1");
        assert_eq!(
            m["config"]["mediaType"],
            "application/vnd.oci.empty.v1+json"
        );
        assert_eq!(
            m["layers"][0]["mediaType"],
            "application/vnd.rbuild.cache.config.v1+json"
        );
    }
    // Flip bytes of the last RUN step's layer in the registry's storage.
    let late = last_layer_of(&layout);
    let f = reg.blob_file(&late);
    let mut bytes = std::fs::read(&f).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&f, bytes).unwrap();

    let b = runner();
    let (log_b, id_b) = build(&b, &project(&b, "p"), &["--cache-from", &cache]);
    assert!(log_b.contains("WARNING: remote cache"), "{log_b}");
    assert_eq!(
        ran(&log_b),
        vec!["RUN --mount=type=cache,target=/runs echo late >> /runs/log; cat /app/late.txt > /app/final.txt".to_string()],
        "{log_b}"
    );
    assert_eq!(runs(&b), "late\n");
    assert_eq!(id_a, id_b, "the rebuilt step gives the right (same) result");
}

#[test]
fn two_stores_compute_the_same_keys_for_the_same_inputs() {
    // Two runners, contexts at different paths written at different times, no epoch for the
    // build (so layers differ in mtimes, keys must not).
    let run_in = |env: &Env, name: &str| -> Vec<(String, String)> {
        let dir = project(env, name);
        let mut args = vec!["build", "--progress", "plain", "-t", "app:k"];
        args.push(dir.to_str().unwrap());
        let out = env.rbuild(&args);
        assert_ok(&out);
        let ls = env.rbuild(&["cache", "ls", "--format", "json"]);
        assert_ok(&ls);
        let v: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
        let mut keys: Vec<(String, String)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["key"].as_str().unwrap().to_string(),
                    r["description"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        keys.sort();
        keys
    };
    let a = runner();
    let keys_a = run_in(&a, "one");
    std::thread::sleep(Duration::from_millis(1100));
    let b = runner();
    let keys_b = run_in(&b, "deeper/two");
    assert_eq!(keys_a.len(), 6, "{keys_a:?}");
    assert_eq!(keys_a, keys_b);
    // And each record's inputs (what the key hashes) are equal too.
    for (k, _) in &keys_a {
        let ia = a.rbuild(&["cache", "inspect", "--format", "json", &k[7..19]]);
        let ib = b.rbuild(&["cache", "inspect", "--format", "json", &k[7..19]]);
        assert_ok(&ia);
        assert_ok(&ib);
        let va: serde_json::Value = serde_json::from_slice(&ia.stdout).unwrap();
        let vb: serde_json::Value = serde_json::from_slice(&ib.stdout).unwrap();
        assert_eq!(va["inputs"], vb["inputs"]);
    }
}

#[test]
fn a_layer_left_remote_is_fetched_when_a_later_step_misses() {
    let a = runner();
    let cache = a.work.path().join("ci-cache");
    let dest = format!("type=local,dest={},mode=max", cache.display());
    build(&a, &project(&a, "p"), &["--cache-to", &dest]);

    // The final stage's first RUN changes: COPY --from=build misses and needs the build stage's
    // result, which the hit had left in the cache.
    let b = runner();
    let dir = b.context(
        "p",
        &PROJECT.replace("echo base > /base.txt", "echo base2 > /base.txt"),
        &[("src/main.c", "int main(){}\n"), ("late.txt", "v1\n")],
    );
    let src = format!("type=local,src={}", cache.display());
    let (log, _) = build(&b, &dir, &["--cache-from", &src]);
    assert_eq!(
        runs(&b),
        "base\nlate\n",
        "the build stage did not run:\n{log}"
    );
    assert!(
        ran(&log).iter().any(|r| r.starts_with("COPY --from=build")),
        "{log}"
    );
    let out = rb(
        &b,
        &["run", "--rm", "app:ci", "cat", "/app/out", "/base.txt"],
    );
    assert_ok(&out);
    assert_eq!(stdout(&out), "int main(){}\ncompiled\nbase2\n");
    // What was fetched is now an ordinary local record: the next build hits locally.
    let (log2, _) = build(&b, &dir, &[]);
    assert!(ran(&log2).is_empty(), "{log2}");
}

/// sha256 of a file, as `sha256:<hex>` (coreutils' sha256sum).
fn sha256_of(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    assert_ok(&out);
    format!("sha256:{}", stdout(&out).split_whitespace().next().unwrap())
}

/// Writes `doc` as a blob of `layout`; returns its digest and size.
fn put_layout_blob(layout: &Path, doc: &serde_json::Value) -> (String, usize) {
    let bytes = serde_json::to_vec(doc).unwrap();
    let tmp = layout.join("tmp-blob");
    std::fs::write(&tmp, &bytes).unwrap();
    let d = sha256_of(&tmp);
    std::fs::rename(&tmp, layout.join("blobs/sha256").join(&d[7..])).unwrap();
    (d, bytes.len())
}

#[test]
fn a_cache_layer_whose_blob_matches_its_digest_but_not_its_diff_id_is_a_miss() {
    let a = runner();
    let cache = a.work.path().join("ci-cache");
    let dest = format!("type=local,dest={},mode=max", cache.display());
    let (_, id_a) = build(&a, &project(&a, "p"), &["--cache-to", &dest]);

    // A hostile cache: the last step's layer entry keeps its diff_id but names another step's
    // genuine blob (digest and size match that blob, so only the diff_id check can tell).
    let blob = |d: &str| cache.join("blobs/sha256").join(&d[7..]);
    let read = |d: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(blob(d)).unwrap()).unwrap()
    };
    let mut index = read_json(&cache.join("index.json"));
    let mut m = read(index["manifests"][0]["digest"].as_str().unwrap());
    let mut c = read(m["config"]["digest"].as_str().unwrap());
    let diff_of = |c: &serde_json::Value, what: &str| {
        c["records"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["description"].as_str().unwrap().contains(what))
            .unwrap()["diff_id"]
            .clone()
    };
    let (late, base) = (diff_of(&c, "echo late"), diff_of(&c, "echo base"));
    let layers = c["layers"].as_array_mut().unwrap();
    let other = layers
        .iter()
        .find(|l| l["diff_id"] == base)
        .unwrap()
        .clone();
    let l = layers.iter_mut().find(|l| l["diff_id"] == late).unwrap();
    l["digest"] = other["digest"].clone();
    l["size"] = other["size"].clone();
    let (cd, cs) = put_layout_blob(&cache, &c);
    m["config"]["digest"] = cd.into();
    m["config"]["size"] = cs.into();
    let (md, ms) = put_layout_blob(&cache, &m);
    index["manifests"][0]["digest"] = md.into();
    index["manifests"][0]["size"] = ms.into();
    std::fs::write(cache.join("index.json"), index.to_string()).unwrap();

    let b = runner();
    let src = format!("type=local,src={}", cache.display());
    let (log_b, id_b) = build(&b, &project(&b, "p"), &["--cache-from", &src]);
    assert!(
        log_b.contains("WARNING: remote cache") && log_b.contains("not the cache's diff_id"),
        "{log_b}"
    );
    assert_eq!(
        ran(&log_b),
        vec!["RUN --mount=type=cache,target=/runs echo late >> /runs/log; cat /app/late.txt > /app/final.txt".to_string()],
        "only the step with the lying layer runs:\n{log_b}"
    );
    assert_eq!(id_b, id_a, "the right image all the same");
    let out = rb(
        &b,
        &[
            "run",
            "--rm",
            "app:ci",
            "cat",
            "/app/final.txt",
            "/base.txt",
        ],
    );
    assert_ok(&out);
    assert_eq!(stdout(&out), "v1\nbase\n");
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// Prune and layers kept compressed: a tagged image built from remote hits keeps its compressed
/// layers through `prune --all` (and still runs, its snapshots made from them); once the image
/// is removed, prune removes those layers (rows and blobs) and nothing left points at them.
#[test]
fn prune_keeps_a_lazy_image_and_removes_its_layers_once_unused() {
    let a = runner();
    let cache = a.work.path().join("ci-cache");
    let dest = format!("type=local,dest={},mode=max", cache.display());
    let (_, id_a) = build(&a, &project(&a, "p"), &["--cache-to", &dest]);
    let late = last_layer_of(&cache);
    let blob_of = |env: &Env, d: &str| env.root.path().join("blobs/sha256").join(&d[7..]);

    let b = runner();
    let snaps_b0 = snapshot_dirs(&b);
    let src = format!("type=local,src={}", cache.display());
    let (_, id_b) = build(&b, &project(&b, "p"), &["--cache-from", &src]);
    assert_eq!(id_b, id_a);
    assert!(
        blob_of(&b, &late).is_file(),
        "the hit's compressed blob is kept"
    );
    assert_eq!(snapshot_dirs(&b), snaps_b0, "nothing unpacked");

    assert_ok(&rb(&b, &["prune", "--all", "-f"]));
    assert!(
        blob_of(&b, &late).is_file(),
        "the tagged image keeps its layers"
    );
    let out = rb(&b, &["run", "--rm", "app:ci", "cat", "/app/final.txt"]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "v1\n");

    assert_ok(&rb(&b, &["rmi", "app:ci"]));
    assert_ok(&rb(&b, &["prune", "--all", "-f"]));
    assert!(
        !blob_of(&b, &late).exists(),
        "an unused compressed layer is pruned"
    );
    // The store is consistent: the same build from the cache gives the same image again.
    let (log, id_again) = build(&b, &project(&b, "p"), &["--cache-from", &src]);
    assert!(!log.contains("WARNING"), "{log}");
    assert_eq!(id_again, id_a);
}

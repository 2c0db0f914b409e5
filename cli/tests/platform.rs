//! `FROM --platform=` through resolve, pull and tag: a two-platform image index in a local
//! registry, one stage per platform.

mod common;

use common::registry::Registry;
use common::{assert_ok, have, stdout, Env};
use std::process::Command;

/// digest, size and media type of `name:tag`'s manifest in the registry.
fn manifest_of(reg: &Registry, name: &str, tag: &str) -> (String, u64, String) {
    let out = Command::new("curl")
        .args(["-sfI", "-H"])
        .arg("Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
        .arg(format!("http://{}/v2/{name}/manifests/{tag}", reg.host))
        .output()
        .unwrap();
    assert_ok(&out);
    let head = stdout(&out);
    let field = |k: &str| {
        head.lines()
            .find_map(|l| {
                let (a, b) = l.split_once(':')?;
                a.eq_ignore_ascii_case(k).then(|| b.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {k} in {head}"))
    };
    (
        field("Docker-Content-Digest"),
        field("Content-Length").parse().unwrap(),
        field("Content-Type"),
    )
}

#[test]
fn from_platform_pulls_that_platform_from_an_index() {
    if !have("docker-registry") || !have("curl") {
        return;
    }
    let reg = Registry::start();
    let env = Env::new();
    let repo = format!("{}/multi", reg.host);
    // The host's image: busybox with /which = amd64 (or whatever the host is).
    let host_dir = env.context("host", "FROM busybox:local\nRUN uname -m > /which\n", &[]);
    env.build_ok(&format!("{repo}:host"), &host_dir, &[]);
    // A foreign-platform image made without running anything in it.
    let foreign = if cfg!(target_arch = "x86_64") {
        "linux/arm64"
    } else {
        "linux/amd64"
    };
    let foreign_dir = env.context(
        "foreign",
        &format!("FROM --platform={foreign} scratch\nCOPY which /which\n"),
        &[("which", "foreign\n")],
    );
    env.build_ok(&format!("{repo}:foreign"), &foreign_dir, &[]);
    for t in ["host", "foreign"] {
        assert_ok(&env.rbuild(&["push", &format!("{repo}:{t}")]));
    }
    let (hd, hs, ht) = manifest_of(&reg, "multi", "host");
    let (fd, fs, ft) = manifest_of(&reg, "multi", "foreign");
    let (fos, farch) = foreign.split_once('/').unwrap();
    let host_arch = if cfg!(target_arch = "x86_64") {
        "amd64"
    } else {
        "arm64"
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": ft, "digest": fd, "size": fs, "platform": {"os": fos, "architecture": farch}},
            {"mediaType": ht, "digest": hd, "size": hs, "platform": {"os": "linux", "architecture": host_arch}},
        ],
    });
    let out = Command::new("curl")
        .args([
            "-sf",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/vnd.oci.image.index.v1+json",
        ])
        .arg("--data-binary")
        .arg(index.to_string())
        .arg(format!("http://{}/v2/multi/manifests/latest", reg.host))
        .output()
        .unwrap();
    assert_ok(&out);

    // A fresh store: the foreign stage pulls the foreign manifest, and its file is copied.
    let env2 = Env::new();
    let df = format!(
        "FROM --platform={foreign} {repo}:latest AS f\nFROM busybox:local\nCOPY --from=f /which /which\nRUN cat /which\n"
    );
    let dir = env2.context("use", &df, &[]);
    let log = env2.build_ok("uses-foreign", &dir, &[]);
    assert!(log.contains(" foreign"), "{log}");
    let out = env2.rbuild(&["image", "inspect", &format!("{repo}:latest")]);
    assert_ok(&out);
    assert!(stdout(&out).contains(farch), "{}", stdout(&out));
    // Without --platform the host's manifest is wanted: the stored foreign one is replaced.
    let dir = env2.context(
        "use-host",
        &format!("FROM {repo}:latest\nRUN cat /which\n"),
        &[],
    );
    let log = env2.build_ok("uses-host", &dir, &[]);
    let m = std::env::consts::ARCH;
    assert!(log.contains(&format!(" {m}")), "{log}");
    let out = env2.rbuild(&["image", "inspect", &format!("{repo}:latest")]);
    assert!(stdout(&out).contains(host_arch), "{}", stdout(&out));
}

/// `--platform` of another architecture: the image is labelled with it (a COPY-only build needs
/// no emulator); a failing RUN in such a stage says that RUN executes natively; a stored base of
/// the host's platform is not silently used for it.
#[test]
fn build_platform_flag_labels_the_image() {
    let env = Env::new();
    let foreign = if cfg!(target_arch = "x86_64") {
        "linux/arm64"
    } else {
        "linux/amd64"
    };
    let dir = env.context("scratch", "FROM scratch\nCOPY f /f\n", &[("f", "x\n")]);
    env.build_ok("cross:v1", &dir, &["--platform", foreign]);
    let out = env.rbuild(&["image", "inspect", "cross:v1"]);
    assert_ok(&out);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let doc = if doc.is_array() { doc[0].clone() } else { doc };
    let (os, arch) = foreign.split_once('/').unwrap();
    assert_eq!(doc["Architecture"], arch, "{doc}");
    assert_eq!(doc["Os"], os, "{doc}");

    let df = format!(
        "FROM busybox:local AS host\nFROM --platform={foreign} scratch\n\
         COPY --from=host /bin/busybox /bin/busybox\nRUN [\"/bin/busybox\", \"false\"]\n"
    );
    let dir = env.context("foreign-run", &df, &[]);
    let out = env.rbuild(&["build", "--progress", "plain", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(
        err.contains(&format!(
            "note: this stage is for {foreign} and RUN executes natively"
        )),
        "{err}"
    );

    // busybox:local is the host's: a foreign stage does not use it (it would pull the foreign
    // platform; `busybox` is not on any reachable registry here, so the build fails and says so).
    let dir = env.context("foreign-base", "FROM busybox:local\nRUN true\n", &[]);
    let out = env.rbuild(&["build", "--platform", foreign, dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(
        err.contains(&format!(
            "the store has it for another platform than {foreign}"
        )),
        "{err}"
    );
}

//! Shared helpers of the end-to-end tests: a private store per test, the busybox base image, and
//! running the real `rbuild` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub mod registry;

/// Path of the rbuild binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_rbuild")
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A busybox rootfs tar made once per test binary by scripts/busybox-rootfs.sh.
pub fn busybox_tar() -> &'static Path {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("rbuild-bb-")
            .tempdir()
            .unwrap()
            .keep();
        let tar = dir.join("busybox-rootfs.tar");
        let st = Command::new(repo().join("scripts/busybox-rootfs.sh"))
            .arg(&tar)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "scripts/busybox-rootfs.sh failed: is busybox-static installed?"
        );
        tar
    })
}

/// A private store with busybox:local imported.
pub struct Env {
    pub root: tempfile::TempDir,
    pub work: tempfile::TempDir,
}

impl Env {
    /// A new store with busybox:local in it.
    pub fn new() -> Env {
        let e = Env::empty();
        let out = e.rbuild(&["import", busybox_tar().to_str().unwrap(), "busybox:local"]);
        assert_ok(&out);
        e
    }

    /// A new, empty store.
    pub fn empty() -> Env {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the end-to-end tests run builds and containers, which need root: run them as root \
             (RBUILD_SKIP_ROOT_TESTS=1 skips only the sandbox isolation suite; leave this package \
             out with `cargo test --workspace --exclude rbuild`)"
        );
        Env {
            root: tempfile::Builder::new()
                .prefix("rbuild-store-")
                .tempdir()
                .unwrap(),
            work: tempfile::Builder::new()
                .prefix("rbuild-work-")
                .tempdir()
                .unwrap(),
        }
    }

    /// Runs rbuild with this store.
    pub fn rbuild(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .env("RBUILD_ROOT", self.root.path())
            .current_dir(self.work.path())
            .output()
            .unwrap()
    }

    /// Writes a context directory with a Dockerfile and files; returns its path.
    pub fn context(&self, name: &str, dockerfile: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.work.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
        for (p, c) in files {
            let f = dir.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, c).unwrap();
        }
        dir
    }

    /// `rbuild build --progress plain -t TAG DIR`, asserting success; returns stderr.
    pub fn build_ok(&self, tag: &str, dir: &Path, extra: &[&str]) -> String {
        let mut args = vec!["build", "--progress", "plain", "-t", tag];
        args.extend_from_slice(extra);
        args.push(dir.to_str().unwrap());
        let out = self.rbuild(&args);
        assert_ok(&out);
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// Asserts the command succeeded, showing its output otherwise.
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "command failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Vertex lines of a plain progress log: (id, name) for each `#N [..] ...` line.
pub fn steps(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix('#')?;
            let (id, name) = rest.split_once(' ')?;
            (name.starts_with('[') && !name.starts_with("[internal]"))
                .then(|| (id.to_string(), name.to_string()))
        })
        .collect()
}

/// True when vertex `id` was reported CACHED in the log.
pub fn cached(log: &str, id: &str) -> bool {
    log.lines().any(|l| l == format!("#{id} CACHED"))
}

/// True when a peer tool is installed; in CI a missing peer fails the test instead of skipping.
pub fn have(tool: &str) -> bool {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is required in CI (.ci/run installs it)"
        );
        eprintln!("SKIP: {tool} is not installed (apt-get install -y {tool})");
    }
    ok
}

//! `rbuild run` and the container commands: a container from an image in the store, through the
//! same sandbox as RUN steps (`rbuild_sandbox::default_spec` + `spawn`), kept in the store after it
//! exits unless `--rm` (`ps`, `rm`, `diff`, `commit`), with named volumes.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rbuild_cache::{ContainerRecord, KeyLock, Store};
use rbuild_sandbox::{Container, Outcome, Rootfs, RunOptions};
use rbuild_types::{Digest, ImageRef};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::{image, load_config, Error};

/// A host directory or file bind-mounted into the container (`-v /src:/dst[:ro]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    /// Absolute host path.
    pub source: PathBuf,
    /// Absolute container path.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// A named volume (`-v NAME:/dst[:ro]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// Volume name.
    pub name: String,
    /// Absolute container path.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// A `--tmpfs DST[:OPTIONS]` mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tmpfs {
    /// Absolute container path.
    pub target: String,
    /// Mount options given after the colon (`size=64m,mode=1777`...).
    pub options: Vec<String>,
}

/// What to run.
#[derive(Clone, Debug, Default)]
pub struct RunRequest {
    /// Command replacing the image's Cmd (empty: keep it).
    pub cmd: Vec<String>,
    /// `--entrypoint`: replaces the image's Entrypoint (and drops its Cmd unless `cmd` is given).
    pub entrypoint: Option<String>,
    /// `--env-file` lines then `-e K=V` (or `K` to pass the host's value), applied over the image's Env.
    pub env: Vec<String>,
    /// `-w DIR`.
    pub workdir: Option<String>,
    /// `-u USER`.
    pub user: Option<String>,
    /// `--hostname`.
    pub hostname: Option<String>,
    /// `--network`, `-p`, `-P`, `--dns`, `--add-host`, `--link`, `--network-alias`.
    pub network: rbuild_network::NetworkConfig,
    /// `-t`: a pseudo terminal is the container's stdio.
    pub tty: bool,
    /// `--read-only`: the root filesystem is mounted read-only.
    pub read_only: bool,
    /// `--name`.
    pub name: Option<String>,
    /// `--rm`: remove the container (and its writable layer) when it exits.
    pub remove: bool,
    /// `-v /host:/dst[:ro]`.
    pub binds: Vec<Bind>,
    /// `-v NAME:/dst[:ro]`.
    pub volumes: Vec<Volume>,
    /// `--tmpfs`.
    pub tmpfs: Vec<Tmpfs>,
    /// `--memory` in bytes.
    pub memory: Option<i64>,
    /// `--cpus`.
    pub cpus: Option<f64>,
    /// `--pids-limit`.
    pub pids_limit: Option<i64>,
    /// `--init`: a minimal init is PID 1 (reaps orphans, forwards signals), the command its child.
    pub init: bool,
}

/// Combines Entrypoint and Cmd as Docker does.
pub fn command_line(
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    req: &RunRequest,
) -> Vec<String> {
    let entrypoint = match &req.entrypoint {
        Some(e) if e.is_empty() => vec![],
        Some(e) => vec![e.clone()],
        None => entrypoint.unwrap_or_default(),
    };
    let cmd = if !req.cmd.is_empty() {
        req.cmd.clone()
    } else if req.entrypoint.is_some() {
        vec![]
    } else {
        cmd.unwrap_or_default()
    };
    entrypoint.into_iter().chain(cmd).collect()
}

/// Overrides `env` (`K=V` list) with `-e` values.
pub fn merge_env(mut env: Vec<String>, overrides: &[String]) -> Vec<String> {
    for o in overrides {
        let (k, v) = match o.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => match std::env::var(o) {
                Ok(v) => (o.clone(), v),
                Err(_) => continue,
            },
        };
        let prefix = format!("{k}=");
        match env.iter_mut().find(|e| e.starts_with(&prefix)) {
            Some(e) => *e = format!("{k}={v}"),
            None => env.push(format!("{k}={v}")),
        }
    }
    env
}

/// Parses a size as Docker does: a number with an optional `b`, `k`, `m` or `g` suffix (binary
/// units, case-insensitive).
pub fn parse_size(s: &str) -> Option<i64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').filter(|r| !r.is_empty()).unwrap_or(&t);
    let (num, mul) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 1i64 << 10),
        'm' => (&t[..t.len() - 1], 1 << 20),
        'g' => (&t[..t.len() - 1], 1 << 30),
        't' => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let v: f64 = num.parse().ok()?;
    (v.is_finite() && v > 0.0).then_some((v * mul as f64) as i64)
}

fn cerr(msg: impl Into<String>) -> Error {
    Error::Container(msg.into())
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The image's layers as overlay lower dirs, TOP FIRST (unpacked on demand), and their usage
/// locks (hold them while the lower dirs are used: `prune` leaves those snapshots alone).
fn lowers_of(
    store: &Store,
    doc: &Value,
    image: &str,
) -> Result<(Vec<PathBuf>, Vec<rbuild_cache::SnapshotUse>), Error> {
    let mut lowers = Vec::new();
    let mut guards = Vec::new();
    for d in doc["rootfs"]["diff_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let diff_id: Digest = d
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(|_| cerr(format!("image {image}: config has an invalid diff_id {d}")))?;
        let (s, guard) = rbuild_exporter::ensure_snapshot_in_use(store, &diff_id)?;
        lowers.push(store.snapshot_dir(&s));
        guards.push(guard);
    }
    lowers.reverse();
    Ok((lowers, guards))
}

fn new_id(name_hint: &str) -> String {
    let mut h = Sha256::new();
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(t.as_nanos().to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(name_hint.as_bytes());
    let mut r = [0u8; 16];
    if fs::File::open("/dev/urandom")
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut r))
        .is_ok()
    {
        h.update(r);
    }
    hex::encode(h.finalize())
}

const ADJECTIVES: [&str; 12] = [
    "brave", "calm", "eager", "fond", "gentle", "happy", "jolly", "keen", "lucid", "merry",
    "quirky", "wise",
];
const NOUNS: [&str; 12] = [
    "curie", "darwin", "euler", "gauss", "hopper", "lovelace", "noether", "pascal", "ritchie",
    "shannon", "turing", "wozniak",
];

/// A Docker-style generated name (`adjective_scientist`), from the id's bytes.
fn generated_name(id: &str, attempt: usize) -> String {
    let b = hex::decode(&id[..8]).unwrap_or_default();
    let (a, n) = (
        b.first().copied().unwrap_or(0) as usize,
        b.get(1).copied().unwrap_or(0) as usize,
    );
    let base = format!(
        "{}_{}",
        ADJECTIVES[a % ADJECTIVES.len()],
        NOUNS[n % NOUNS.len()]
    );
    if attempt == 0 {
        base
    } else {
        format!("{base}{attempt}")
    }
}

/// Copies the directory tree `src` into `dst` (an existing directory) keeping owners, modes,
/// symlinks and special files, as Docker seeds a new volume from the image.
fn seed_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let md = fs::symlink_metadata(src)?;
    std::os::unix::fs::lchown(dst, Some(md.uid()), Some(md.gid()))?;
    fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))?;
    for e in fs::read_dir(src)? {
        let e = e?;
        let (s, d) = (e.path(), dst.join(e.file_name()));
        let m = fs::symlink_metadata(&s)?;
        let ft = m.file_type();
        if ft.is_dir() {
            fs::create_dir(&d)?;
            seed_tree(&s, &d)?;
            continue;
        }
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&s)?, &d)?;
        } else if ft.is_file() {
            fs::copy(&s, &d)?;
        } else if ft.is_char_device() && m.rdev() == 0 {
            continue; // an overlay whiteout cannot appear through a mounted overlay; be safe
        } else {
            let kind = nix::sys::stat::SFlag::from_bits_truncate(m.mode() & libc::S_IFMT);
            let perm = nix::sys::stat::Mode::from_bits_truncate(m.mode() & 0o7777);
            nix::sys::stat::mknod(&d, kind, perm, m.rdev()).map_err(io::Error::from)?;
        }
        std::os::unix::fs::lchown(&d, Some(m.uid()), Some(m.gid()))?;
        if !ft.is_symlink() {
            fs::set_permissions(&d, fs::Permissions::from_mode(m.mode() & 0o7777))?;
        }
    }
    Ok(())
}

/// Seeds a new volume with the image's content at `target`, when the image has a directory there.
fn seed_volume(store: &Store, lowers: &[PathBuf], target: &str, data: &Path) -> Result<(), Error> {
    if lowers.is_empty() {
        return Ok(());
    }
    let base = store.root().join("tmp");
    fs::create_dir_all(&base).map_err(io_err(format!("creating {}", base.display())))?;
    let mnt = base.join(format!(
        "volseed-{}-{}",
        std::process::id(),
        &new_id(target)[..12]
    ));
    fs::create_dir(&mnt).map_err(io_err(format!("creating {}", mnt.display())))?;
    let result = (|| {
        let m = rbuild_sandbox::OverlayMount::mount(lowers, None, &mnt)?;
        // Resolved inside the image (a link there never names a host path).
        let src = rbuild_fsroot::Root::open(m.path())
            .and_then(|r| r.resolve(target))
            .ok()
            .and_then(|r| r.host_path().ok());
        if let Some(src) = src.filter(|s| s.is_dir()) {
            seed_tree(&src, data).map_err(io_err(format!(
                "copying the image's {target} into volume {}",
                data.display()
            )))?;
        }
        drop(m);
        Ok(())
    })();
    let _ = fs::remove_dir(&mnt);
    result
}

fn check_target(t: &str, flag: &str) -> Result<(), Error> {
    if !t.starts_with('/') {
        return Err(cerr(format!(
            "{flag} {t}: the container path must be absolute (e.g. /data)"
        )));
    }
    Ok(())
}

/// A started container: talk to it through [`RunHandle::container`], then [`RunHandle::wait`].
pub struct RunHandle {
    store: Store,
    record: ContainerRecord,
    container: Option<Container>,
    remove: bool,
    /// Torn down when the container has exited (or when the handle is dropped).
    network: Option<rbuild_network::Attachment>,
    _lock: KeyLock,
    /// Usage locks of the image's snapshots (the container's lower dirs).
    _in_use: Vec<rbuild_cache::SnapshotUse>,
}

impl RunHandle {
    /// The running sandbox (pty master, pid, signals).
    pub fn container(&mut self) -> &mut Container {
        self.container
            .as_mut()
            .expect("container is present until wait() consumes the handle")
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// Waits for the container's PID 1, then records how it ended (or removes the container with
    /// `--rm`).
    pub fn wait(mut self) -> Result<Outcome, Error> {
        let c = self
            .container
            .take()
            .ok_or_else(|| cerr("container already waited for"))?;
        let outcome = c.wait_outcome();
        let net = self.network.take().map(|a| a.detach());
        self.record.finished = Some(chrono::Utc::now().timestamp());
        if let Ok(o) = &outcome {
            self.record.exit_code = Some(o.code());
            self.record.oom_killed = o.oom_killed;
        }
        if self.remove {
            remove_dir(&self.store.container_dir(&self.record.name))?;
        } else {
            self.store.save_container(&self.record)?;
        }
        let outcome = outcome?;
        if let Some(Err(e)) = net {
            return Err(cerr(format!(
                "container {} exited, but its network teardown failed: {e}",
                self.record.name
            )));
        }
        Ok(outcome)
    }
}

fn remove_dir(dir: &Path) -> Result<(), Error> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("removing {}", dir.display()))(e)),
    }
}

/// Sets up the container's networking (None: plain host networking, the sandbox binds the host's
/// `/etc/hosts` and `/etc/resolv.conf`).
fn attach_network(
    store: &Store,
    req: &RunRequest,
    name: &str,
    id: &str,
    hostname: &str,
    exposed: &[String],
) -> Result<Option<rbuild_network::Attachment>, Error> {
    if req.network.is_plain_host() {
        return Ok(None);
    }
    let nets = rbuild_network::Networks::open(store.root());
    let a = nets
        .attach(&rbuild_network::AttachRequest {
            container_id: id,
            container_name: name,
            hostname,
            config: &req.network,
            exposed,
        })
        .map_err(|e| cerr(format!("container {name}: network: {e}")))?;
    Ok(Some(a))
}

/// Creates the container for `image` and starts it; `stdin`/`stdout`/`stderr` are ignored with
/// `req.tty` (the pty is used: take it with `handle.container().pty_master()`).
pub fn start(
    store: &Store,
    image: &ImageRef,
    req: &RunRequest,
    stdio: (
        std::process::Stdio,
        std::process::Stdio,
        std::process::Stdio,
    ),
) -> Result<RunHandle, Error> {
    let (manifest, doc) = load_config(store, image)?;
    let cfg = image::runtime_config(&doc);
    let args = command_line(cfg.entrypoint.clone(), cfg.cmd.clone(), req);
    if args.is_empty() {
        return Err(cerr(format!(
            "run {image}: no command specified: the image has no Cmd or Entrypoint; give one after the image name"
        )));
    }
    for b in &req.binds {
        check_target(&b.target, "-v")?;
        if !b.source.exists() {
            return Err(cerr(format!(
                "-v {}:{}: the host path does not exist; create it first",
                b.source.display(),
                b.target
            )));
        }
    }
    for v in &req.volumes {
        check_target(&v.target, "-v")?;
        if !rbuild_cache::valid_name(&v.name) {
            return Err(cerr(format!(
                "-v {}:{}: invalid volume name; use [a-zA-Z0-9][a-zA-Z0-9_.-]* or an absolute host path",
                v.name, v.target
            )));
        }
    }
    for t in &req.tmpfs {
        check_target(&t.target, "--tmpfs")?;
    }
    let (mut lowers, in_use) = lowers_of(store, &doc, &image.to_string())?;
    let user = req.user.clone().unwrap_or(cfg.user.clone());
    let (uid, gid, groups, home) = crate::exec::resolve_user_pub(store, &lowers, &user)?;
    let mut env = merge_env(cfg.env.clone(), &req.env);
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={}", crate::exec::DEFAULT_PATH));
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={home}"));
    }
    if req.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let cwd = req.workdir.clone().unwrap_or_else(|| {
        if cfg.working_dir.is_empty() {
            "/".into()
        } else {
            cfg.working_dir.clone()
        }
    });
    if !cwd.starts_with('/') {
        return Err(cerr(format!(
            "-w {cwd}: the working directory must be an absolute path"
        )));
    }
    let network_none = req.network.mode == rbuild_network::NetworkMode::None;
    let mut spec = rbuild_sandbox::default_spec(args.clone(), env, &cwd, network_none);
    rbuild_sandbox::set_init(&mut spec, req.init);

    // The container's record and writable layer.
    let id = new_id(req.name.as_deref().unwrap_or(""));
    let mut record = ContainerRecord {
        id: id.clone(),
        name: String::new(),
        image: image.to_string(),
        manifest: manifest.to_string(),
        image_id: String::new(),
        command: args,
        created: chrono::Utc::now().timestamp(),
        volumes: req.volumes.iter().map(|v| v.name.clone()).collect(),
        ..Default::default()
    };
    if let Ok(img) = rbuild_exporter::load_image(store, &manifest) {
        record.image_id = img.config_digest.to_string();
    }
    let dir = match &req.name {
        Some(n) => {
            record.name = n.clone();
            store.create_container(&record)?
        }
        None => {
            let mut attempt = 0;
            loop {
                record.name = generated_name(&id, attempt);
                match store.create_container(&record) {
                    Ok(d) => break d,
                    Err(rbuild_cache::Error::Conflict(_)) if attempt < 1000 => attempt += 1,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    };
    let lock = store.lock_container(&record.name)?;
    let cleanup_on_error = |e: Error| {
        let _ = remove_dir(&dir);
        e
    };
    // Networking: the namespace is configured (netavark) before the program starts.
    // Docker's hostname: the id's first 12 characters, the host's own with --network host.
    let hostname = match &req.hostname {
        Some(h) => h.clone(),
        None if req.network.mode == rbuild_network::NetworkMode::Host => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| id[..12].to_string()),
        None => id[..12].to_string(),
    };
    let attachment = attach_network(store, req, &record.name, &id, &hostname, &cfg.exposed_ports)
        .map_err(cleanup_on_error)?;

    // Mounts: binds, named volumes (created and seeded on first use), tmpfs.
    let mut mounts: Vec<Value> = Vec::new();
    for b in &req.binds {
        let mut opts = vec!["rbind"];
        if b.read_only {
            opts.push("ro");
        }
        mounts.push(
            json!({"destination": b.target, "type": "bind", "source": b.source, "options": opts}),
        );
    }
    for v in &req.volumes {
        let (data, created) = store
            .create_volume(&v.name)
            .map_err(|e| cleanup_on_error(e.into()))?;
        if created {
            seed_volume(store, &lowers, &v.target, &data).map_err(cleanup_on_error)?;
        }
        let mut opts = vec!["rbind"];
        if v.read_only {
            opts.push("ro");
        }
        mounts.push(
            json!({"destination": v.target, "type": "bind", "source": data, "options": opts}),
        );
    }
    for t in &req.tmpfs {
        let mut opts: Vec<String> = ["noexec", "nosuid", "nodev"].map(String::from).to_vec();
        opts.extend(t.options.iter().cloned());
        mounts.push(
            json!({"destination": t.target, "type": "tmpfs", "source": "tmpfs", "options": opts}),
        );
    }

    if let Some(a) = &attachment {
        for (host, target) in a.etc_files() {
            if !mounts.iter().any(|m| m["destination"] == target) {
                mounts.push(json!({"destination": target, "type": "bind", "source": host, "options": ["rbind"]}));
            }
        }
        if let Some(ns) = a.netns() {
            rbuild_sandbox::join_network_namespace(&mut spec, ns);
        }
    }
    let mut v = serde_json::to_value(&spec).map_err(|e| cerr(format!("spec: {e}")))?;
    v["hostname"] = json!(hostname);
    v["process"]["user"] = json!({"uid": uid, "gid": gid});
    if !groups.is_empty() {
        v["process"]["user"]["additionalGids"] = json!(groups);
    }
    v["process"]["terminal"] = json!(req.tty);
    v["root"]["readonly"] = json!(req.read_only);
    if let Some(a) = v["mounts"].as_array_mut() {
        a.extend(mounts);
    }
    let mut resources = serde_json::Map::new();
    if let Some(m) = req.memory {
        // memory+swap = the limit: no swap on top (Docker allows as much swap again).
        resources.insert("memory".into(), json!({"limit": m, "swap": m}));
    }
    if let Some(c) = req.cpus {
        resources.insert(
            "cpu".into(),
            json!({"quota": (c * 100_000.0) as i64, "period": 100_000}),
        );
    }
    if let Some(p) = req.pids_limit {
        resources.insert("pids".into(), json!({"limit": p}));
    }
    if !resources.is_empty() {
        v["linux"]["resources"] = Value::Object(resources);
    }
    let spec: oci_spec::runtime::Spec = serde_json::from_value(v)
        .map_err(|e| cleanup_on_error(cerr(format!("building the container spec: {e}"))))?;

    if lowers.is_empty() {
        let empty = store.root().join("empty");
        fs::create_dir_all(&empty).map_err(io_err("creating empty layer"))?;
        lowers.push(empty);
    }
    let rootfs = Rootfs::Overlay {
        lower: lowers,
        upper: dir.join("upper"),
        work: dir.join("work"),
    };
    let c = rbuild_sandbox::spawn(
        &spec,
        RunOptions {
            rootfs,
            stdin: stdio.0,
            stdout: stdio.1,
            stderr: stdio.2,
        },
    )
    .map_err(|e| cleanup_on_error(e.into()))?;
    Ok(RunHandle {
        store: store.clone(),
        record,
        container: Some(c),
        remove: req.remove,
        network: attachment,
        _lock: lock,
        _in_use: in_use,
    })
}

/// Runs `image` and waits for it with stdio inherited (stdin only when `interactive`).
pub fn run_image(
    store: &Store,
    image: &ImageRef,
    req: &RunRequest,
    interactive: bool,
) -> Result<Outcome, Error> {
    use std::process::Stdio;
    let stdin = if interactive {
        Stdio::inherit()
    } else {
        Stdio::null()
    };
    start(
        store,
        image,
        req,
        (stdin, Stdio::inherit(), Stdio::inherit()),
    )?
    .wait()
}

/// A kept container and whether it is running.
pub struct ContainerInfo {
    /// The stored record.
    pub record: ContainerRecord,
    /// Whether an rbuild process is running it now.
    pub running: bool,
}

/// Every kept container (and those running now).
pub fn list(store: &Store) -> Result<Vec<ContainerInfo>, Error> {
    Ok(store
        .list_containers()?
        .into_iter()
        .map(|r| {
            let running = store.container_running(&r.name);
            ContainerInfo { record: r, running }
        })
        .collect())
}

fn find(store: &Store, name: &str) -> Result<ContainerRecord, Error> {
    store
        .find_container(name)?
        .ok_or_else(|| cerr(format!("no such container: {name} (see `rbuild ps -a`)")))
}

/// Removes a kept container and its writable layer; refuses a running one.
pub fn remove(store: &Store, name: &str) -> Result<ContainerRecord, Error> {
    let r = find(store, name)?;
    store.remove_container(&r.name)?;
    Ok(r)
}

/// One line of `rbuild diff`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// `A` added, `C` changed, `D` deleted.
    pub kind: char,
    /// Absolute path in the container.
    pub path: String,
}

fn is_whiteout(m: &fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn is_opaque(p: &Path) -> bool {
    xattr_present(p, "trusted.overlay.opaque")
}

fn xattr_present(path: &Path, name: &str) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(p), Ok(n)) = (
        std::ffi::CString::new(path.as_os_str().as_bytes()),
        std::ffi::CString::new(name),
    ) else {
        return false;
    };
    // SAFETY: size query with a null buffer on valid NUL-terminated strings.
    unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

/// The changes an overlay `upper` dir holds relative to `lowers` (top first), sorted by path:
/// whiteouts are `D`, entries that exist below are `C`, new ones `A`; the lower content hidden by
/// an opaque directory is `D` too.
pub fn upper_changes(upper: &Path, lowers: &[PathBuf]) -> io::Result<Vec<Change>> {
    fn in_lower(lowers: &[PathBuf], rel: &Path) -> bool {
        // The topmost lower holding the entry (or a whiteout of it) decides.
        for l in lowers {
            if let Ok(m) = fs::symlink_metadata(l.join(rel)) {
                return !is_whiteout(&m);
            }
        }
        false
    }
    fn walk(upper: &Path, lowers: &[PathBuf], rel: &Path, out: &mut Vec<Change>) -> io::Result<()> {
        let abs = upper.join(rel);
        let mut present = std::collections::BTreeSet::new();
        for e in fs::read_dir(&abs)? {
            let e = e?;
            present.insert(e.file_name());
            let r = rel.join(e.file_name());
            let m = fs::symlink_metadata(e.path())?;
            let path = format!("/{}", r.display());
            if is_whiteout(&m) {
                if in_lower(lowers, &r) {
                    out.push(Change { kind: 'D', path });
                }
                continue;
            }
            let kind = if in_lower(lowers, &r) { 'C' } else { 'A' };
            out.push(Change { kind, path });
            if m.is_dir() {
                walk(upper, lowers, &r, out)?;
            }
        }
        if !rel.as_os_str().is_empty() && is_opaque(&abs) {
            let mut hidden = std::collections::BTreeSet::new();
            for l in lowers {
                if let Ok(rd) = fs::read_dir(l.join(rel)) {
                    for e in rd.flatten() {
                        if !present.contains(&e.file_name())
                            && in_lower(lowers, &rel.join(e.file_name()))
                        {
                            hidden.insert(e.file_name());
                        }
                    }
                }
            }
            for h in hidden {
                out.push(Change {
                    kind: 'D',
                    path: format!("/{}", rel.join(h).display()),
                });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(upper, lowers, Path::new(""), &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn config_of(store: &Store, r: &ContainerRecord) -> Result<Value, Error> {
    let manifest: Digest = r
        .manifest
        .parse()
        .map_err(|_| cerr(format!("container {}: corrupt record (manifest)", r.name)))?;
    let img = rbuild_exporter::load_image(store, &manifest).map_err(|e| {
        cerr(format!(
            "container {}: its image {} is no longer in the store: {e}",
            r.name, r.image
        ))
    })?;
    let raw = store.read_blob(&img.config_digest)?;
    serde_json::from_slice(&raw)
        .map_err(|e| cerr(format!("image {}: config is not JSON: {e}", r.image)))
}

/// `rbuild diff NAME`: what the container changed in its filesystem.
pub fn diff(store: &Store, name: &str) -> Result<Vec<Change>, Error> {
    let r = find(store, name)?;
    let doc = config_of(store, &r)?;
    let (lowers, _in_use) = lowers_of(store, &doc, &r.image)?;
    let upper = store.container_dir(&r.name).join("upper");
    upper_changes(&upper, &lowers).map_err(io_err(format!("reading {}", upper.display())))
}

/// `rbuild commit NAME IMAGE`: a new image made of the container's image and its writable layer
/// as one more layer. The image's config (Cmd, Env, ...) is kept; history gets one entry.
/// Returns the new image's config digest (its id).
pub fn commit(store: &Store, name: &str, target: &ImageRef) -> Result<Digest, Error> {
    let r = find(store, name)?;
    if store.container_running(&r.name) {
        return Err(cerr(format!(
            "container {} is running; commit it once it has exited",
            r.name
        )));
    }
    let mut doc = config_of(store, &r)?;
    let upper = store.container_dir(&r.name).join("upper");
    let (diff_id, _) = rbuild_exporter::write_layer_dir(store, &upper)?;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let diff_ids = doc["rootfs"]["diff_ids"]
        .as_array_mut()
        .ok_or_else(|| cerr(format!("image {}: config has no rootfs.diff_ids", r.image)))?;
    diff_ids.push(json!(diff_id.to_string()));
    if !doc["history"].is_array() {
        doc["history"] = json!([]);
    }
    if let Some(h) = doc["history"].as_array_mut() {
        h.push(json!({
            "created": now,
            "created_by": r.command.join(" "),
            "comment": format!("rbuild commit {}", r.name),
        }));
    }
    doc["created"] = json!(now);
    let (manifest, config) = rbuild_exporter::write_image_json(store, &doc)?;
    store.set_tag(target, &manifest)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn entrypoint_and_cmd_combine_like_docker() {
        let req = RunRequest::default();
        assert_eq!(
            command_line(Some(v(&["/e"])), Some(v(&["a"])), &req),
            v(&["/e", "a"])
        );
        let req = RunRequest {
            cmd: v(&["b"]),
            ..Default::default()
        };
        assert_eq!(
            command_line(Some(v(&["/e"])), Some(v(&["a"])), &req),
            v(&["/e", "b"])
        );
        let req = RunRequest {
            entrypoint: Some("/x".into()),
            ..Default::default()
        };
        assert_eq!(
            command_line(Some(v(&["/e"])), Some(v(&["a"])), &req),
            v(&["/x"])
        );
        assert_eq!(
            command_line(None, Some(v(&["sh"])), &RunRequest::default()),
            v(&["sh"])
        );
    }

    #[test]
    fn env_overrides() {
        let e = merge_env(v(&["A=1", "B=2"]), &v(&["B=3", "C=4"]));
        assert_eq!(e, v(&["A=1", "B=3", "C=4"]));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16m"), Some(16 << 20));
        assert_eq!(parse_size("16MB"), Some(16 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("1.5k"), Some(1536));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("-1m"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn names_are_docker_like() {
        let id = new_id("x");
        assert_eq!(id.len(), 64);
        let n = generated_name(&id, 0);
        assert!(n.contains('_') && rbuild_cache::valid_name(&n));
        assert_eq!(generated_name(&id, 2), format!("{n}2"));
    }

    #[test]
    fn changes_from_upper() {
        let d = tempfile::tempdir().unwrap();
        let (lower, upper) = (d.path().join("l"), d.path().join("u"));
        fs::create_dir_all(lower.join("etc")).unwrap();
        fs::write(lower.join("etc/passwd"), "x").unwrap();
        fs::write(lower.join("etc/group"), "x").unwrap();
        fs::create_dir_all(upper.join("etc")).unwrap();
        fs::write(upper.join("etc/passwd"), "y").unwrap();
        fs::write(upper.join("new"), "n").unwrap();
        nix::sys::stat::mknod(
            &upper.join("etc/group"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        let c = upper_changes(&upper, std::slice::from_ref(&lower)).unwrap();
        let lines: Vec<String> = c.iter().map(|c| format!("{} {}", c.kind, c.path)).collect();
        assert_eq!(
            lines,
            v(&["C /etc", "D /etc/group", "C /etc/passwd", "A /new"])
        );
    }
}

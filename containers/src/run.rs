//! A container from an image in the store, through the same sandbox as RUN steps
//! (`rbuild_sandbox::default_spec` + `spawn`): [`create`] makes its record, writable layer,
//! volumes and [`ContainerConfig`]; [`start`] runs it in the foreground (`rbuild run`); the
//! monitor runs it detached. Kept in the store after it exits unless `--rm` (`ps`, `rm`, `diff`,
//! `commit`).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rbuild_cache::{ContainerRecord, KeyLock, Store};
use rbuild_sandbox::{Container, Outcome, Rootfs, RunOptions};
use rbuild_solver::{load_config, runtime_config as image_runtime_config};
use rbuild_types::{Digest, ImageRef};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::{cerr, io_err, Error};

/// A host directory or file bind-mounted into the container (`-v /src:/dst[:ro]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// Absolute host path.
    pub source: PathBuf,
    /// Absolute container path.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// A named volume (`-v NAME:/dst[:ro]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Volume name.
    pub name: String,
    /// Absolute container path.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// A `--tmpfs DST[:OPTIONS]` mount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// `-i`: stdin stays open (foreground runs only).
    pub interactive: bool,
    /// `--label K=V`.
    pub labels: BTreeMap<String, String>,
    /// `--restart`.
    pub restart: RestartPolicy,
    /// `--stop-signal` (default: the image's STOPSIGNAL, else SIGTERM).
    pub stop_signal: Option<String>,
    /// `--stop-timeout` in seconds (default 10).
    pub stop_timeout: Option<u32>,
    /// `--health-cmd`, `--health-interval`, ... and `--no-healthcheck`.
    pub health: HealthOverride,
    /// `--log-opt max-size=,max-file=`.
    pub log: LogOptions,
}

/// `--restart`: what the monitor does when the container's PID 1 exits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Never restart (Docker's default).
    #[default]
    No,
    /// Restart after a non-zero exit, at most N times when given.
    OnFailure(Option<u32>),
    /// Always restart, unless stopped by `stop`/`kill`.
    Always,
    /// As `Always` (the monitor does not outlive a reboot, so the two differ only in name).
    UnlessStopped,
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("--restart {s}: expected no, on-failure[:N], always or unless-stopped");
        Ok(match s.split_once(':') {
            None => match s {
                "no" | "" => RestartPolicy::No,
                "on-failure" => RestartPolicy::OnFailure(None),
                "always" => RestartPolicy::Always,
                "unless-stopped" => RestartPolicy::UnlessStopped,
                _ => return Err(bad()),
            },
            Some(("on-failure", n)) => {
                RestartPolicy::OnFailure(Some(n.parse().map_err(|_| bad())?))
            }
            Some(_) => return Err(bad()),
        })
    }
}

impl RestartPolicy {
    /// Docker's `HostConfig.RestartPolicy` name.
    pub fn name(&self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::OnFailure(_) => "on-failure",
            RestartPolicy::Always => "always",
            RestartPolicy::UnlessStopped => "unless-stopped",
        }
    }

    /// Whether to restart after an exit with `code`, having restarted `count` times already.
    pub fn should_restart(&self, code: i32, count: u32) -> bool {
        match self {
            RestartPolicy::No => false,
            RestartPolicy::OnFailure(max) => code != 0 && max.is_none_or(|m| count < m),
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
        }
    }
}

/// HEALTHCHECK overrides from `run` flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthOverride {
    /// A whole test in Docker's form (`["CMD", ...]`, `["CMD-SHELL", "..."]`, `["NONE"]`), as a
    /// compose file gives it; takes precedence over `cmd`.
    pub test: Option<Vec<String>>,
    /// `--no-healthcheck`.
    pub disable: bool,
    /// `--health-cmd` (run with `/bin/sh -c`).
    pub cmd: Option<String>,
    /// `--health-interval`.
    pub interval: Option<std::time::Duration>,
    /// `--health-timeout`.
    pub timeout: Option<std::time::Duration>,
    /// `--health-retries`.
    pub retries: Option<u32>,
    /// `--health-start-period`.
    pub start_period: Option<std::time::Duration>,
}

/// The HEALTHCHECK a container runs (durations in nanoseconds, as Docker stores them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// `["CMD", arg...]` or `["CMD-SHELL", script]`.
    pub test: Vec<String>,
    /// Between probes (default 30 s).
    pub interval_ns: u64,
    /// A probe running longer fails (default 30 s).
    pub timeout_ns: u64,
    /// Failures during this time after start do not count (default 0).
    pub start_period_ns: u64,
    /// Consecutive failures that make it unhealthy (default 3).
    pub retries: u32,
}

impl Healthcheck {
    /// The probe's argv.
    pub fn argv(&self) -> Vec<String> {
        match self.test.first().map(String::as_str) {
            Some("CMD-SHELL") => vec!["/bin/sh".into(), "-c".into(), self.test[1..].join(" ")],
            Some("CMD") => self.test[1..].to_vec(),
            _ => vec![],
        }
    }

    /// Docker's `Config.Healthcheck` object.
    pub fn to_docker(&self) -> Value {
        json!({"Test": self.test, "Interval": self.interval_ns, "Timeout": self.timeout_ns,
               "StartPeriod": self.start_period_ns, "Retries": self.retries})
    }
}

/// The image's HEALTHCHECK with the flags applied; `None` without one (or `NONE`).
pub fn healthcheck(image: Option<&Value>, o: &HealthOverride) -> Option<Healthcheck> {
    if o.disable {
        return None;
    }
    let ns = |k: &str, d: u64| {
        image
            .and_then(|h| h.get(k))
            .and_then(Value::as_u64)
            .filter(|v| *v > 0)
            .unwrap_or(d)
    };
    let test = match (&o.test, &o.cmd) {
        (Some(t), _) => t.clone(),
        (None, Some(c)) => vec!["CMD-SHELL".to_string(), c.clone()],
        (None, None) => image?
            .get("Test")?
            .as_array()?
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
    };
    if test.first().is_none_or(|t| t == "NONE") || test.len() < 2 {
        return None;
    }
    const S: u64 = 1_000_000_000;
    let dur = |d: Option<std::time::Duration>, k: &str, def: u64| {
        d.map(|d| d.as_nanos() as u64).unwrap_or_else(|| ns(k, def))
    };
    Some(Healthcheck {
        test,
        interval_ns: dur(o.interval, "Interval", 30 * S),
        timeout_ns: dur(o.timeout, "Timeout", 30 * S),
        start_period_ns: dur(o.start_period, "StartPeriod", 0),
        retries: o
            .retries
            .unwrap_or_else(|| ns("Retries", 3).min(u32::MAX as u64) as u32),
    })
}

/// `--log-opt` of the json-file driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogOptions {
    /// `max-size`: rotate when the file would grow past this many bytes (None: never).
    pub max_size: Option<u64>,
    /// `max-file`: files kept, current one included (default 1).
    pub max_file: u32,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            max_size: None,
            max_file: 1,
        }
    }
}

/// Everything needed to (re)start a container, written once at create as `config.json` beside
/// its record. Docker's `Config` and `HostConfig` in `inspect` come from it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// The OCI runtime spec the sandbox runs (process, mounts, resources, seccomp...).
    pub spec: oci_spec::runtime::Spec,
    /// `-t`.
    pub tty: bool,
    /// `-i`.
    pub interactive: bool,
    /// `--rm`.
    pub remove: bool,
    /// `--restart`.
    pub restart: RestartPolicy,
    /// Signal `stop` sends first (e.g. `SIGTERM`).
    pub stop_signal: String,
    /// Seconds `stop` waits before SIGKILL.
    pub stop_timeout: u32,
    /// The HEALTHCHECK run by the monitor.
    pub healthcheck: Option<Healthcheck>,
    /// Log rotation.
    pub log: LogOptions,
    /// `--label`s over the image's labels.
    pub labels: BTreeMap<String, String>,
    /// `-v /host:/dst`.
    pub binds: Vec<Bind>,
    /// `-v NAME:/dst`.
    pub volumes: Vec<Volume>,
    /// `--tmpfs`.
    pub tmpfs: Vec<Tmpfs>,
    /// `host`, `none`, `container:NAME` or the first network's name.
    pub network_mode: String,
    /// The networking flags, applied by each start (netavark through `rbuild-network`).
    #[serde(default = "host_network")]
    pub network: rbuild_network::NetworkConfig,
    /// The image's `ExposedPorts` keys (for `-P`).
    #[serde(default)]
    pub exposed: Vec<String>,
    /// `-u` or the image's User.
    pub user: String,
    /// Image Entrypoint/Cmd split as run (for `inspect`).
    pub entrypoint: Vec<String>,
    /// The Cmd part.
    pub cmd: Vec<String>,
    /// `--memory` in bytes.
    pub memory: Option<i64>,
    /// `--cpus`.
    pub cpus: Option<f64>,
    /// `--pids-limit`.
    pub pids_limit: Option<i64>,
    /// `--read-only`.
    pub read_only: bool,
}

fn host_network() -> rbuild_network::NetworkConfig {
    rbuild_network::NetworkConfig {
        mode: rbuild_network::NetworkMode::Host,
        ..Default::default()
    }
}

/// `NetworkMode` as Docker's `HostConfig.NetworkMode` shows it.
fn mode_name(mode: &rbuild_network::NetworkMode) -> String {
    use rbuild_network::NetworkMode as M;
    match mode {
        M::None => "none".into(),
        M::Host => "host".into(),
        M::Container(c) => format!("container:{c}"),
        M::Networks(n) => n
            .first()
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| rbuild_network::DEFAULT_NETWORK.into()),
    }
}

/// Sets up the container's networking before its PID 1 starts (None: plain host networking, the
/// sandbox binds the host's `/etc/hosts` and `/etc/resolv.conf`). The attachment is owned by the
/// calling process (the monitor, or `run` in the foreground) and torn down by it.
pub(crate) fn attach_network(
    store: &Store,
    rec: &ContainerRecord,
    conf: &ContainerConfig,
) -> Result<Option<rbuild_network::Attachment>, Error> {
    if conf.network.is_plain_host() {
        return Ok(None);
    }
    let hostname = conf
        .spec
        .hostname()
        .clone()
        .unwrap_or_else(|| rec.id.chars().take(12).collect());
    let nets = rbuild_network::Networks::open(store.root());
    let a = nets
        .attach(&rbuild_network::AttachRequest {
            container_id: &rec.id,
            container_name: &rec.name,
            hostname: &hostname,
            config: &conf.network,
            exposed: &conf.exposed,
        })
        .map_err(|e| cerr(format!("container {}: network: {e}", rec.name)))?;
    Ok(Some(a))
}

/// What the record shows of an attachment (`NetworkSettings` of `inspect`, `port`).
pub(crate) fn attachment_record(
    conf: &ContainerConfig,
    a: Option<&rbuild_network::Attachment>,
) -> rbuild_cache::NetworkAttachment {
    let mut out = rbuild_cache::NetworkAttachment {
        mode: conf.network_mode.clone(),
        ..Default::default()
    };
    if let Some(a) = a {
        out.namespace = a.netns().map(Path::to_path_buf);
        out.ports = a
            .record()
            .ports()
            .iter()
            .map(|p| {
                format!(
                    "{}:{}->{}/{}",
                    p.host_ip, p.host_port, p.container_port, p.protocol
                )
            })
            .collect();
        if let Ok(Value::Object(m)) = serde_json::to_value(&a.record().status) {
            out.settings = m;
        }
    }
    out
}

impl ContainerConfig {
    /// Reads `containers/<name>/config.json`.
    pub fn load(store: &Store, name: &str) -> Result<ContainerConfig, Error> {
        let p = store.container_dir(name).join("config.json");
        let data = fs::read(&p).map_err(io_err(format!(
            "reading {} (a container made by an older rbuild cannot be started again; run a new one)",
            p.display()
        )))?;
        serde_json::from_slice(&data).map_err(|e| cerr(format!("{}: {e}", p.display())))
    }

    fn save(&self, dir: &Path) -> Result<(), Error> {
        let p = dir.join("config.json");
        let tmp = dir.join("config.json.tmp");
        let data = serde_json::to_vec_pretty(self).map_err(|e| cerr(format!("config: {e}")))?;
        fs::write(&tmp, data).map_err(io_err(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, &p).map_err(io_err(format!("renaming {}", p.display())))
    }
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

/// The image's layers as overlay lower dirs, TOP FIRST (unpacked on demand), and their usage
/// locks (hold them while the lower dirs are used: `prune` leaves those snapshots alone).
pub(crate) fn lowers_of(
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
    // `metadata`, not `symlink_metadata`: the top is a `/proc/self/fd/N` link to the resolved
    // directory; below it only real directories are recursed into.
    let md = fs::metadata(src)?;
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
        // `target` is resolved by the kernel inside the image's root: a symlink in the image
        // (even `/data -> /etc`) leads to the image's own files, never to the host's.
        let root = rbuild_fsroot::Root::open(m.path())?;
        let src = match root.resolve(target) {
            Ok(r) => r,
            Err(rbuild_fsroot::Error::NotFound { .. })
            | Err(rbuild_fsroot::Error::NotADirectory { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if src.metadata().is_ok_and(|md| md.is_dir()) {
            seed_tree(&src.proc_path(), data).map_err(io_err(format!(
                "copying the image's {target} into volume {}",
                data.display()
            )))?;
        }
        drop(src);
        drop(root);
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

    /// The container's full id.
    pub fn id(&self) -> &str {
        &self.record.id
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
        record_exit(&mut self.record, outcome.as_ref().ok());
        crate::state::event(&self.store, "container", "die", &self.record);
        if self.remove {
            remove_dir(&self.store.container_dir(&self.record.name))?;
            crate::state::event(&self.store, "container", "destroy", &self.record);
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

/// Now as RFC 3339 with nanoseconds (Docker's time format).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Records that PID 1 started as host pid `pid`.
pub(crate) fn record_start(rec: &mut ContainerRecord, pid: u32) {
    rec.pid = Some(pid as i32);
    rec.pid_start = crate::proc::start_time(pid as i32);
    rec.started_at = Some(now_rfc3339());
    rec.finished_at = None;
    rec.finished = None;
    rec.exit_code = None;
    rec.oom_killed = false;
    rec.paused = false;
    rec.restarting = false;
}

/// Records how PID 1 ended (`None`: unknown, e.g. the helper failed).
pub(crate) fn record_exit(rec: &mut ContainerRecord, outcome: Option<&Outcome>) {
    rec.finished = Some(chrono::Utc::now().timestamp());
    rec.finished_at = Some(now_rfc3339());
    rec.exit_code = Some(outcome.map_or(255, |o| o.code()));
    rec.oom_killed = outcome.is_some_and(|o| o.oom_killed);
}

pub(crate) fn remove_dir(dir: &Path) -> Result<(), Error> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("removing {}", dir.display()))(e)),
    }
}

/// Checks the request's paths and names before anything is created.
fn check_request(req: &RunRequest) -> Result<(), Error> {
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
    Ok(())
}

/// Makes the record and directory, with a generated name unless `--name`.
fn create_record(
    store: &Store,
    record: &mut ContainerRecord,
    name: Option<&str>,
) -> Result<PathBuf, Error> {
    if let Some(n) = name {
        record.name = n.to_string();
        return Ok(store.create_container(record)?);
    }
    let mut attempt = 0;
    loop {
        record.name = generated_name(&record.id, attempt);
        match store.create_container(record) {
            Ok(d) => return Ok(d),
            Err(rbuild_cache::Error::Conflict(_)) if attempt < 1000 => attempt += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The spec's mounts for binds, named volumes (created and seeded on first use) and tmpfs.
fn mounts_of(store: &Store, req: &RunRequest, lowers: &[PathBuf]) -> Result<Vec<Value>, Error> {
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
        let (data, created) = store.create_volume(&v.name)?;
        if created {
            seed_volume(store, lowers, &v.target, &data)?;
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
    Ok(mounts)
}

/// Applies user, terminal, hostname, mounts, read-only root and resources to the spec.
fn finish_spec(
    spec: oci_spec::runtime::Spec,
    req: &RunRequest,
    id: &str,
    user: (u32, u32, &[u32]),
    mounts: Vec<Value>,
) -> Result<oci_spec::runtime::Spec, Error> {
    let mut v = serde_json::to_value(&spec).map_err(|e| cerr(format!("spec: {e}")))?;
    // Docker's default hostname: the short container id.
    v["hostname"] = json!(req.hostname.clone().unwrap_or_else(|| id[..12].to_string()));
    v["process"]["user"] = json!({"uid": user.0, "gid": user.1});
    if !user.2.is_empty() {
        v["process"]["user"]["additionalGids"] = json!(user.2);
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
    serde_json::from_value(v).map_err(|e| cerr(format!("building the container spec: {e}")))
}

/// Creates the container for `image` (`rbuild create`, and the first half of `run`): record,
/// writable layer, volumes (seeded from the image on first use) and `config.json`. Nothing runs.
pub fn create(store: &Store, image: &ImageRef, req: &RunRequest) -> Result<ContainerRecord, Error> {
    let (manifest, doc) = load_config(store, image)?;
    let cfg = image_runtime_config(&doc);
    let args = command_line(cfg.entrypoint.clone(), cfg.cmd.clone(), req);
    if args.is_empty() {
        return Err(cerr(format!(
            "run {image}: no command specified: the image has no Cmd or Entrypoint; give one after the image name"
        )));
    }
    check_request(req)?;
    let (lowers, _in_use) = lowers_of(store, &doc, &image.to_string())?;
    let user = req.user.clone().unwrap_or(cfg.user.clone());
    let (uid, gid, groups, home) = rbuild_solver::resolve_image_user(store, &lowers, &user)?;
    let mut env = merge_env(cfg.env.clone(), &req.env);
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={}", rbuild_solver::DEFAULT_PATH));
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
    let stop_signal = req
        .stop_signal
        .clone()
        .or(cfg.stop_signal.clone())
        .unwrap_or_else(|| "SIGTERM".into());
    crate::lifecycle::parse_signal(&stop_signal)?;
    let network_none = req.network.mode == rbuild_network::NetworkMode::None;
    let mut spec = rbuild_sandbox::default_spec(args.clone(), env, &cwd, network_none);
    rbuild_sandbox::set_init(&mut spec, req.init);

    let id = new_id(req.name.as_deref().unwrap_or(""));
    let mut labels: BTreeMap<String, String> = cfg.labels.clone().into_iter().collect();
    labels.extend(req.labels.clone());
    let mut record = ContainerRecord {
        id: id.clone(),
        image: image.to_string(),
        manifest: manifest.to_string(),
        command: args.clone(),
        created: chrono::Utc::now().timestamp(),
        volumes: req.volumes.iter().map(|v| v.name.clone()).collect(),
        ..Default::default()
    };
    record.network.mode = mode_name(&req.network.mode);
    if let Ok(img) = rbuild_exporter::load_image(store, &manifest) {
        record.image_id = img.config_digest.to_string();
    }
    let dir = create_record(store, &mut record, req.name.as_deref())?;
    let result = (|| {
        let mounts = mounts_of(store, req, &lowers)?;
        let spec = finish_spec(spec, req, &id, (uid, gid, &groups), mounts)?;
        let entrypoint = match &req.entrypoint {
            Some(e) if e.is_empty() => vec![],
            Some(e) => vec![e.clone()],
            None => cfg.entrypoint.clone().unwrap_or_default(),
        };
        let cmd = args[entrypoint.len().min(args.len())..].to_vec();
        let conf = ContainerConfig {
            spec,
            tty: req.tty,
            interactive: req.interactive,
            remove: req.remove,
            restart: req.restart,
            stop_signal,
            stop_timeout: req.stop_timeout.unwrap_or(10),
            healthcheck: healthcheck(cfg.healthcheck.as_ref(), &req.health),
            log: req.log,
            labels,
            binds: req.binds.clone(),
            volumes: req.volumes.clone(),
            tmpfs: req.tmpfs.clone(),
            network_mode: record.network.mode.clone(),
            network: req.network.clone(),
            exposed: cfg.exposed_ports.clone(),
            user,
            entrypoint,
            cmd,
            memory: req.memory,
            cpus: req.cpus,
            pids_limit: req.pids_limit,
            read_only: req.read_only,
        };
        conf.save(&dir)
    })();
    if let Err(e) = result {
        let _ = remove_dir(&dir);
        return Err(e);
    }
    crate::state::event(store, "container", "create", &record);
    Ok(record)
}

/// Starts the sandbox of an existing container (its layers are looked up again, so an image
/// pruned since is unpacked anew). Hold the returned usage locks while the container runs.
pub(crate) fn spawn_container(
    store: &Store,
    rec: &ContainerRecord,
    conf: &ContainerConfig,
    net: Option<&rbuild_network::Attachment>,
    stdio: (
        std::process::Stdio,
        std::process::Stdio,
        std::process::Stdio,
    ),
) -> Result<(Container, Vec<rbuild_cache::SnapshotUse>), Error> {
    let mut spec = conf.spec.clone();
    if let Some(a) = net {
        let mut v = serde_json::to_value(&spec).map_err(|e| cerr(format!("spec: {e}")))?;
        if let Some(mounts) = v["mounts"].as_array_mut() {
            for (host, target) in a.etc_files() {
                if !mounts.iter().any(|m| m["destination"] == target) {
                    mounts.push(json!({"destination": target, "type": "bind", "source": host, "options": ["rbind"]}));
                }
            }
        }
        spec = serde_json::from_value(v).map_err(|e| cerr(format!("spec: {e}")))?;
        if let Some(ns) = a.netns() {
            rbuild_sandbox::join_network_namespace(&mut spec, ns);
        }
    }
    let doc = config_of(store, rec)?;
    let (mut lowers, in_use) = lowers_of(store, &doc, &rec.image)?;
    if lowers.is_empty() {
        let empty = store.root().join("empty");
        fs::create_dir_all(&empty).map_err(io_err("creating empty layer"))?;
        lowers.push(empty);
    }
    let dir = store.container_dir(&rec.name);
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
    )?;
    Ok((c, in_use))
}

/// Creates the container for `image` and starts it in the foreground (`rbuild run` without
/// `-d`); `stdin`/`stdout`/`stderr` are ignored with `req.tty` (the pty is used: take it with
/// `handle.container().pty_master()`). The calling process supervises it.
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
    let mut record = create(store, image, req)?;
    let dir = store.container_dir(&record.name);
    let fail = |e: Error| {
        let _ = remove_dir(&dir);
        e
    };
    let lock = store
        .lock_container(&record.name)
        .map_err(|e| fail(e.into()))?;
    let conf = ContainerConfig::load(store, &record.name).map_err(fail)?;
    let network = attach_network(store, &record, &conf).map_err(fail)?;
    record.network = attachment_record(&conf, network.as_ref());
    let (c, in_use) = match spawn_container(store, &record, &conf, network.as_ref(), stdio) {
        Ok(c) => c,
        Err(e) => {
            if let Some(n) = network {
                let _ = n.detach();
            }
            return Err(fail(e));
        }
    };
    record_start(&mut record, c.pid());
    record.monitor_pid = Some(std::process::id() as i32);
    record.monitor_start = crate::proc::start_time(std::process::id() as i32);
    store.save_container(&record)?;
    crate::state::event(store, "container", "start", &record);
    Ok(RunHandle {
        store: store.clone(),
        record,
        container: Some(c),
        remove: req.remove,
        network,
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

/// The container named `name` (or whose id starts with it); an error naming it otherwise.
pub fn find_pub(store: &Store, name: &str) -> Result<ContainerRecord, Error> {
    find(store, name)
}

pub(crate) fn find(store: &Store, name: &str) -> Result<ContainerRecord, Error> {
    store
        .find_container(name)?
        .ok_or_else(|| cerr(format!("no such container: {name} (see `rbuild ps -a`)")))
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

pub(crate) fn config_of(store: &Store, r: &ContainerRecord) -> Result<Value, Error> {
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
    if crate::state::inspect_state(store, &r).status.is_running() {
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

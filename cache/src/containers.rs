//! Containers kept after `rbuild run` (without `--rm`) and named volumes.
//!
//! ```text
//! containers/<name>/container.json   ContainerRecord (JSON, replaced by rename)
//! containers/<name>/upper/           the container's writable layer (overlay upperdir)
//! containers/<name>/work/            overlay workdir
//! containers/<name>/lock             flocked by the rbuild process while the container runs
//! volumes/<name>/_data/              a named volume's content
//! ```
//!
//! Like Docker, these are plain files rather than meta.db rows: a container's directory is created
//! with `mkdir` (which makes names unique across processes) and removed as a whole.

use std::fs::{self, File};
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::locks::{flock_exclusive, KeyLock};
use crate::snapshots::remove_tree;
use crate::Store;

/// What the store remembers of a container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// 64 hex characters (shown shortened to 12, as Docker).
    pub id: String,
    /// Unique name (`--name` or generated).
    pub name: String,
    /// The image as the user named it.
    pub image: String,
    /// Manifest digest of the image.
    pub manifest: String,
    /// Config digest of the image (its id).
    pub image_id: String,
    /// The command line that runs.
    pub command: Vec<String>,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds when it exited.
    pub finished: Option<i64>,
    /// Exit code once exited (128+N for signal N).
    pub exit_code: Option<i32>,
    /// Whether the OOM killer struck.
    pub oom_killed: bool,
    /// Named volumes it uses.
    pub volumes: Vec<String>,
    /// Host pid of the container's PID 1 while it runs (or last ran).
    #[serde(default)]
    pub pid: Option<i32>,
    /// Start time of `pid` (field 22 of `/proc/PID/stat`, clock ticks since boot): a pid is only
    /// this container's if both match, so a record left by a reboot or a SIGKILL reads as exited.
    #[serde(default)]
    pub pid_start: Option<u64>,
    /// Pid of the process that supervises the container (the monitor, or the foreground `rbuild run`).
    #[serde(default)]
    pub monitor_pid: Option<i32>,
    /// Start time of `monitor_pid`, as `pid_start`.
    #[serde(default)]
    pub monitor_start: Option<u64>,
    /// When PID 1 last started (RFC 3339 with nanoseconds).
    #[serde(default)]
    pub started_at: Option<String>,
    /// When PID 1 last ended (RFC 3339 with nanoseconds).
    #[serde(default)]
    pub finished_at: Option<String>,
    /// How many times the restart policy restarted it.
    #[serde(default)]
    pub restart_count: u32,
    /// Whether the container is paused (cgroup freezer).
    #[serde(default)]
    pub paused: bool,
    /// Set by the monitor while it waits to restart PID 1 (restart policy back-off).
    #[serde(default)]
    pub restarting: bool,
    /// HEALTHCHECK state, when the container has one.
    #[serde(default)]
    pub health: Option<Health>,
    /// The container's network: filled in by the network setup (empty: host or none).
    #[serde(default)]
    pub network: NetworkAttachment,
}

/// HEALTHCHECK state (Docker's `State.Health`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `starting`, `healthy` or `unhealthy`.
    pub status: String,
    /// Consecutive failed probes.
    pub failing_streak: u32,
    /// The last probes (at most 5), oldest first.
    pub log: Vec<HealthProbe>,
}

/// One HEALTHCHECK probe.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthProbe {
    /// RFC 3339 start time.
    pub start: String,
    /// RFC 3339 end time.
    pub end: String,
    /// Exit code of the probe (0 healthy, else unhealthy; -1 timed out or failed to start).
    pub exit_code: i32,
    /// The probe's output (truncated to 4 KiB).
    pub output: String,
}

/// How a container is attached to networks: the seam the network setup fills in (mode `host` or
/// `none` needs nothing).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    /// `host`, `none`, or a network name.
    #[serde(default)]
    pub mode: String,
    /// Bind-mounted network namespace the container joins, when one was made for it.
    #[serde(default)]
    pub namespace: Option<PathBuf>,
    /// Published ports (`-p`), as given.
    #[serde(default)]
    pub ports: Vec<String>,
    /// Per-network settings (addresses, gateway...), as the network setup reports them.
    #[serde(default)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

/// Docker's rule for container and volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn valid_name(name: &str) -> bool {
    let mut b = name.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
        && name.len() <= 128
}

fn invalid_name(what: &'static str, name: &str) -> Error {
    Error::Conflict(format!(
        "invalid {what} name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
    ))
}

impl Store {
    fn containers_root(&self) -> PathBuf {
        self.root().join("containers")
    }

    /// The directory of container `name` (see the module docs for its content).
    pub fn container_dir(&self, name: &str) -> PathBuf {
        self.containers_root().join(name)
    }

    /// Creates the container's directory (with `upper/` and `work/`) and record. Fails with
    /// [`Error::Conflict`] when the name is taken.
    pub fn create_container(&self, rec: &ContainerRecord) -> Result<PathBuf> {
        if !valid_name(&rec.name) {
            return Err(invalid_name("container", &rec.name));
        }
        let root = self.containers_root();
        fs::create_dir_all(&root).map_err(Error::io("create", &root))?;
        let dir = root.join(&rec.name);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::Conflict(format!(
                    "the container name {:?} is already in use; remove it with `rbuild rm {}` or pick another --name",
                    rec.name, rec.name
                )))
            }
            Err(e) => return Err(Error::io("create", &dir)(e)),
        }
        for d in ["upper", "work"] {
            let p = dir.join(d);
            fs::create_dir(&p).map_err(Error::io("create", &p))?;
        }
        self.save_container(rec)?;
        Ok(dir)
    }

    /// Rewrites the container's record (atomically, by rename).
    pub fn save_container(&self, rec: &ContainerRecord) -> Result<()> {
        let dir = self.container_dir(&rec.name);
        let tmp = dir.join("container.json.tmp");
        let data = serde_json::to_vec_pretty(rec)
            .map_err(|e| Error::Corrupt(format!("container record: {e}")))?;
        fs::write(&tmp, data).map_err(Error::io("write", &tmp))?;
        let dest = dir.join("container.json");
        fs::rename(&tmp, &dest).map_err(Error::io("rename", &dest))
    }

    /// Every container with a readable record, oldest first.
    pub fn list_containers(&self) -> Result<Vec<ContainerRecord>> {
        let root = self.containers_root();
        let rd = match fs::read_dir(&root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(Error::io("read", &root)(e)),
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let p = e.path().join("container.json");
            if let Ok(data) = fs::read(&p) {
                if let Ok(r) = serde_json::from_slice::<ContainerRecord>(&data) {
                    out.push(r);
                }
            }
        }
        out.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
        Ok(out)
    }

    /// The container named `name_or_id`, or whose id starts with it (unambiguously).
    pub fn find_container(&self, name_or_id: &str) -> Result<Option<ContainerRecord>> {
        let all = self.list_containers()?;
        if let Some(r) = all.iter().find(|r| r.name == name_or_id) {
            return Ok(Some(r.clone()));
        }
        let hits: Vec<_> = all
            .into_iter()
            .filter(|r| !name_or_id.is_empty() && r.id.starts_with(name_or_id))
            .collect();
        match hits.len() {
            0 => Ok(None),
            1 => Ok(hits.into_iter().next()),
            _ => Err(Error::Conflict(format!(
                "container id prefix {name_or_id:?} is ambiguous; give more characters or the name"
            ))),
        }
    }

    /// Marks the container as running for as long as the returned lock lives.
    pub fn lock_container(&self, name: &str) -> Result<KeyLock> {
        let p = self.container_dir(name).join("lock");
        KeyLock::acquire(&p, false)?
            .ok_or_else(|| Error::Conflict(format!("container {name:?} is already running")))
    }

    /// The path of the container's running lock file (held by its monitor).
    pub fn container_lock_path(&self, name: &str) -> PathBuf {
        self.container_dir(name).join("lock")
    }

    /// Renames a container (refused when `new` is taken or invalid).
    pub fn rename_container(&self, old: &str, new: &str) -> Result<()> {
        if !valid_name(new) {
            return Err(invalid_name("container", new));
        }
        let (from, to) = (self.container_dir(old), self.container_dir(new));
        // mkdir reserves the new name against a concurrent create; rename replaces the empty dir.
        match fs::create_dir(&to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::Conflict(format!(
                    "the container name {new:?} is already in use; pick another name"
                )))
            }
            Err(e) => return Err(Error::io("create", &to)(e)),
        }
        if let Err(e) = fs::rename(&from, &to) {
            let _ = fs::remove_dir(&to);
            return Err(Error::io("rename", &from)(e));
        }
        Ok(())
    }

    /// Whether a process holds the container's running lock.
    pub fn container_running(&self, name: &str) -> bool {
        let p = self.container_dir(name).join("lock");
        match File::open(&p) {
            Ok(f) => matches!(flock_exclusive(&f, true), Ok(false)),
            Err(_) => false,
        }
    }

    /// Removes the container's directory (writable layer included). Refuses a running container.
    pub fn remove_container(&self, name: &str) -> Result<()> {
        if self.container_running(name) {
            return Err(Error::Conflict(format!(
                "container {name:?} is running; stop it first (or use `rbuild rm -f {name}`)"
            )));
        }
        let dir = self.container_dir(name);
        remove_tree(&dir).map_err(Error::io("remove", &dir))
    }

    fn volumes_root(&self) -> PathBuf {
        self.root().join("volumes")
    }

    /// Where the content of volume `name` lives (`volumes/<name>/_data`).
    pub fn volume_dir(&self, name: &str) -> PathBuf {
        self.volumes_root().join(name).join("_data")
    }

    /// Creates volume `name` unless it exists. Returns its data directory and whether it was
    /// created now (a new volume is seeded from the image by the caller).
    pub fn create_volume(&self, name: &str) -> Result<(PathBuf, bool)> {
        if !valid_name(name) {
            return Err(invalid_name("volume", name));
        }
        let root = self.volumes_root();
        fs::create_dir_all(&root).map_err(Error::io("create", &root))?;
        let dir = root.join(name);
        let created = match fs::create_dir(&dir) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(Error::io("create", &dir)(e)),
        };
        let data = dir.join("_data");
        if created {
            fs::create_dir(&data).map_err(Error::io("create", &data))?;
        }
        Ok((data, created))
    }

    /// Names of every volume, sorted.
    pub fn list_volumes(&self) -> Result<Vec<String>> {
        let root = self.volumes_root();
        let rd = match fs::read_dir(&root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(Error::io("read", &root)(e)),
        };
        let mut v: Vec<String> = rd
            .flatten()
            .filter(|e| e.path().join("_data").is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        Ok(v)
    }

    /// Containers (names) that use volume `name`.
    pub fn volume_users(&self, name: &str) -> Result<Vec<String>> {
        Ok(self
            .list_containers()?
            .into_iter()
            .filter(|c| c.volumes.iter().any(|v| v == name))
            .map(|c| c.name)
            .collect())
    }

    /// Removes volume `name`; refuses while a container (running or not) uses it, as Docker.
    pub fn remove_volume(&self, name: &str) -> Result<()> {
        let dir = self.volumes_root().join(name);
        if !valid_name(name) || !dir.join("_data").is_dir() {
            return Err(Error::Conflict(format!(
                "no such volume: {name} (see `rbuild volume ls`)"
            )));
        }
        let users = self.volume_users(name)?;
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "volume {name} is in use by container(s) {}; remove them first with `rbuild rm`",
                users.join(", ")
            )));
        }
        remove_tree(&dir).map_err(Error::io("remove", &dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("web_1.a-b"));
        assert!(!valid_name("_x"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(""));
        assert!(!valid_name(".."));
    }

    #[test]
    fn containers_and_volumes() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let rec = ContainerRecord {
            id: "ab".repeat(32),
            name: "c1".into(),
            volumes: vec!["v1".into()],
            ..Default::default()
        };
        let dir = s.create_container(&rec).unwrap();
        assert!(dir.join("upper").is_dir() && dir.join("work").is_dir());
        assert!(matches!(s.create_container(&rec), Err(Error::Conflict(_))));
        assert_eq!(s.find_container("c1").unwrap().unwrap(), rec);
        assert_eq!(s.find_container("abab").unwrap().unwrap().name, "c1");
        assert!(s.find_container("zz").unwrap().is_none());
        {
            let _l = s.lock_container("c1").unwrap();
            assert!(s.container_running("c1"));
            assert!(s.remove_container("c1").is_err());
        }
        assert!(!s.container_running("c1"));

        let (v, new) = s.create_volume("v1").unwrap();
        assert!(new && v.is_dir());
        assert!(!s.create_volume("v1").unwrap().1);
        assert_eq!(s.list_volumes().unwrap(), vec!["v1".to_string()]);
        assert!(s.remove_volume("v1").is_err(), "in use by c1");
        s.remove_container("c1").unwrap();
        assert!(s.list_containers().unwrap().is_empty());
        s.remove_volume("v1").unwrap();
        assert!(s.list_volumes().unwrap().is_empty());
        assert!(s.remove_volume("v1").is_err());
    }
}

//! cgroup limits (memory, cpu, pids) on cgroup v1 controllers or the v2 unified hierarchy, chosen per
//! controller from `/proc/self/mounts`, with OOM-kill detection; and the device rules (Docker's
//! default set, see [`crate::devices`]) as a BPF device program on the container's v2 cgroup
//! wherever a cgroup2 hierarchy is mounted, else (or with `RBUILD_CGROUP=v1`) on the v1 `devices`
//! controller. Every container gets a cgroup for its devices, limits or not.

use crate::error::{Error, Result};
use oci_spec::runtime::LinuxResources;
use std::path::{Path, PathBuf};

/// One controller's directory for a container.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct CgroupDir {
    pub path: PathBuf,
    pub v2: bool,
    pub controllers: Vec<String>,
}

/// The cgroup directories created for one container.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Cgroup {
    pub dirs: Vec<CgroupDir>,
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|e| Error::Cgroup {
        path: path.to_path_buf(),
        msg: format!("write {value:?}: {e}"),
    })
}

/// The environment variable choosing the cgroup version: `v1`, `v2` or `auto` (the default: per
/// controller the v1 hierarchy when one is mounted, else the v2 one).
pub const CGROUP_ENV: &str = "RBUILD_CGROUP";

/// Which cgroup hierarchies the sandbox may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Auto,
    V1,
    V2,
}

impl Mode {
    pub(crate) fn from_env() -> Result<Mode> {
        match std::env::var(CGROUP_ENV).as_deref() {
            Err(_) | Ok("") | Ok("auto") => Ok(Mode::Auto),
            Ok("v1") | Ok("1") => Ok(Mode::V1),
            Ok("v2") | Ok("2") => Ok(Mode::V2),
            Ok(other) => Err(Error::Cgroup {
                path: PathBuf::from("/sys/fs/cgroup"),
                msg: format!("{CGROUP_ENV}={other:?}: expected v1, v2 or auto"),
            }),
        }
    }
}

/// The mounted hierarchies: v1 controllers among memory/cpu/pids with their mount points, and the
/// v2 mount point with the controllers its root offers.
#[derive(Debug, Default, Clone)]
pub(crate) struct Hierarchies {
    pub v1: Vec<(String, PathBuf)>,
    pub v2: Option<(PathBuf, Vec<String>)>,
}

impl Hierarchies {
    /// Reads `/proc/self/mounts` and the v2 root's `cgroup.controllers`.
    pub(crate) fn probe() -> Hierarchies {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut h = Hierarchies::default();
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 {
                continue;
            }
            match f[2] {
                "cgroup" => {
                    for c in ["memory", "cpu", "pids", "devices"] {
                        if f[3].split(',').any(|o| o == c) && !h.v1.iter().any(|(n, _)| n == c) {
                            h.v1.push((c.to_string(), PathBuf::from(f[1])));
                        }
                    }
                }
                "cgroup2" if h.v2.is_none() => {
                    let m = PathBuf::from(f[1]);
                    let avail =
                        std::fs::read_to_string(m.join("cgroup.controllers")).unwrap_or_default();
                    h.v2 = Some((m, avail.split_whitespace().map(String::from).collect()));
                }
                _ => {}
            }
        }
        h
    }

    /// Where `controller` lives under `mode`: (mount point, v2); an error that says why not.
    fn place(&self, controller: &str, mode: Mode) -> Result<(PathBuf, bool)> {
        let v1 = self.v1.iter().find(|(n, _)| n == controller);
        let v2 = self
            .v2
            .as_ref()
            .filter(|(_, avail)| avail.iter().any(|a| a == controller));
        let found = match mode {
            Mode::Auto => v1
                .map(|(_, m)| (m.clone(), false))
                .or_else(|| v2.map(|(m, _)| (m.clone(), true))),
            Mode::V1 => v1.map(|(_, m)| (m.clone(), false)),
            Mode::V2 => v2.map(|(m, _)| (m.clone(), true)),
        };
        found.ok_or_else(|| {
            let msg = match (mode, &self.v2) {
                (Mode::V2, None) => format!(
                    "{CGROUP_ENV}=v2 but no cgroup2 hierarchy is mounted (unset {CGROUP_ENV} to use v1)"
                ),
                (Mode::V2, Some((m, avail))) => format!(
                    "{CGROUP_ENV}=v2 but the v2 hierarchy at {} offers no {controller} controller \
                     (it offers: {}){}; unset {CGROUP_ENV} to use v1",
                    m.display(),
                    if avail.is_empty() { "none".to_string() } else { avail.join(" ") },
                    if v1.is_some() { format!(", {controller} is bound to a v1 hierarchy") } else { String::new() },
                ),
                _ => format!("no {controller} controller mounted (v1 or v2)"),
            };
            Error::Cgroup {
                path: PathBuf::from("/sys/fs/cgroup"),
                msg,
            }
        })
    }
}

/// This process's cgroup path (relative to the hierarchy root) for a v1 controller.
fn own_v1_path(controller: &str) -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or("/"),
        );
        if ctrls.split(',').any(|c| c == controller) {
            return PathBuf::from(path.trim_start_matches('/'));
        }
    }
    PathBuf::new()
}

/// What the resources ask for, per controller, as (file, value) writes for v1 and v2.
/// Writes to one controller's files: (file, value).
type Writes = Vec<(&'static str, String)>;

fn wanted(res: &LinuxResources) -> Vec<(&'static str, Writes, Writes)> {
    let mut out = Vec::new();
    if let Some(m) = res.memory() {
        let mut v1 = Vec::new();
        let mut v2 = Vec::new();
        if let Some(l) = m.limit().filter(|l| *l > 0) {
            v1.push(("memory.limit_in_bytes", l.to_string()));
            v2.push(("memory.max", l.to_string()));
            if let Some(s) = m.swap() {
                let total = if s < 0 {
                    "-1".to_string()
                } else {
                    s.to_string()
                };
                v1.push(("memory.memsw.limit_in_bytes", total));
                let swap_only = if s < 0 {
                    "max".to_string()
                } else {
                    (s - l).max(0).to_string()
                };
                v2.push(("memory.swap.max", swap_only));
            }
        }
        if !v1.is_empty() {
            out.push(("memory", v1, v2));
        }
    }
    if let Some(c) = res.cpu() {
        let mut v1 = Vec::new();
        let mut v2 = Vec::new();
        let period = c.period().unwrap_or(100_000);
        if let Some(q) = c.quota().filter(|q| *q > 0) {
            v1.push(("cpu.cfs_period_us", period.to_string()));
            v1.push(("cpu.cfs_quota_us", q.to_string()));
            v2.push(("cpu.max", format!("{q} {period}")));
        }
        if let Some(s) = c.shares().filter(|s| *s > 0) {
            v1.push(("cpu.shares", s.to_string()));
            // The conversion runc uses from shares (2..262144) to weight (1..10000).
            let w = 1 + ((s.clamp(2, 262_144) - 2) * 9999) / 262_142;
            v2.push(("cpu.weight", w.to_string()));
        }
        if !v1.is_empty() {
            out.push(("cpu", v1, v2));
        }
    }
    if let Some(p) = res.pids() {
        let v = if p.limit() > 0 {
            p.limit().to_string()
        } else {
            "max".to_string()
        };
        if p.limit() > 0 {
            out.push(("pids", vec![("pids.max", v.clone())], vec![("pids.max", v)]));
        }
    }
    out
}

impl Cgroup {
    /// Creates the cgroups for container `id`, writes the limits and restricts its devices to
    /// Docker's default set. With `RBUILD_CGROUP=v2` every container gets a v2 cgroup, as on a
    /// unified-hierarchy host.
    pub(crate) fn create(id: &str, res: Option<&LinuxResources>) -> Result<Cgroup> {
        let mode = Mode::from_env()?;
        let wanted = res.map(wanted).unwrap_or_default();
        let hier = Hierarchies::probe();
        let mut cg = Cgroup::create_in(id, &wanted, &hier, mode)?;
        if let Err(e) = cg.restrict_devices(id, &hier, mode, &crate::devices::DEFAULT_RULES) {
            cg.destroy();
            return Err(e);
        }
        Ok(cg)
    }

    /// Puts the device `rules` in force: the v1 `devices` controller where it is mounted (and the
    /// mode allows v1), else a BPF device program on the container's v2 cgroup.
    fn restrict_devices(
        &mut self,
        id: &str,
        hier: &Hierarchies,
        mode: Mode,
        rules: &[crate::devices::Rule],
    ) -> Result<()> {
        let v1 = hier.v1.iter().find(|(n, _)| n == "devices");
        // v2 first where it is mounted, even beside a v1 devices controller: the container's PID 1
        // is then born in its v2 cgroup (clone3 CLONE_INTO_CGROUP) instead of migrating into a v1
        // one, which costs an RCU grace period per container.
        let v1 = match (mode, &hier.v2) {
            (Mode::V1, _) | (Mode::Auto, None) => v1,
            _ => None,
        };
        match (mode, v1, &hier.v2) {
            (Mode::Auto | Mode::V1, Some((_, mnt)), _) => {
                let dir = mnt
                    .join(own_v1_path("devices"))
                    .join(format!("rbuild-{id}"));
                let existing = self.dirs.iter().position(|d| d.path == dir);
                if existing.is_none() {
                    std::fs::create_dir_all(&dir).map_err(|e| Error::Cgroup {
                        path: dir.clone(),
                        msg: format!("mkdir: {e}"),
                    })?;
                    self.dirs.push(CgroupDir {
                        path: dir.clone(),
                        v2: false,
                        controllers: Vec::new(),
                    });
                }
                crate::devices::write_v1(&dir, rules)?;
                let i = existing.unwrap_or(self.dirs.len() - 1);
                self.dirs[i].controllers.push("devices".into());
                Ok(())
            }
            (Mode::Auto | Mode::V2, _, Some((mnt, _))) => {
                let dir = mnt.join("rbuild").join(id);
                if !self.dirs.iter().any(|d| d.path == dir) {
                    std::fs::create_dir_all(&dir).map_err(|e| Error::Cgroup {
                        path: dir.clone(),
                        msg: format!("mkdir: {e}"),
                    })?;
                    self.dirs.push(CgroupDir {
                        path: dir.clone(),
                        v2: true,
                        controllers: Vec::new(),
                    });
                }
                crate::devices::attach_v2(&dir, rules)
            }
            _ => Err(Error::Cgroup {
                path: PathBuf::from("/sys/fs/cgroup"),
                msg: format!(
                    "cannot restrict the container's devices: {} (mount the v1 devices controller \
                     or a cgroup2 hierarchy, or set {CGROUP_ENV} to the version this host has)",
                    match mode {
                        Mode::V1 =>
                            format!("{CGROUP_ENV}=v1 but no v1 devices controller is mounted"),
                        Mode::V2 => format!("{CGROUP_ENV}=v2 but no cgroup2 hierarchy is mounted"),
                        Mode::Auto =>
                            "neither a v1 devices controller nor cgroup2 is mounted".into(),
                    }
                ),
            }),
        }
    }

    pub(crate) fn create_in(
        id: &str,
        wanted: &[(&'static str, Writes, Writes)],
        hier: &Hierarchies,
        mode: Mode,
    ) -> Result<Cgroup> {
        let mut cg = Cgroup::default();
        let v2_dir = |mnt: &Path| mnt.join("rbuild").join(id);
        if mode == Mode::V2 {
            // The container's v2 cgroup even without limits: it is joined and removed as usual.
            let Some((mnt, _)) = &hier.v2 else {
                return Err(Error::Cgroup {
                    path: PathBuf::from("/sys/fs/cgroup"),
                    msg: format!("{CGROUP_ENV}=v2 but no cgroup2 hierarchy is mounted"),
                });
            };
            let dir = v2_dir(mnt);
            std::fs::create_dir_all(&dir).map_err(|e| Error::Cgroup {
                path: dir.clone(),
                msg: format!("mkdir: {e}"),
            })?;
            cg.dirs.push(CgroupDir {
                path: dir,
                v2: true,
                controllers: Vec::new(),
            });
        }
        for (ctrl, v1_writes, v2_writes) in wanted {
            let (mnt, v2) = match hier.place(ctrl, mode) {
                Ok(p) => p,
                Err(e) => {
                    cg.destroy();
                    return Err(e);
                }
            };
            let dir = if v2 {
                let parent = mnt.join("rbuild");
                if let Err(e) = std::fs::create_dir_all(&parent) {
                    cg.destroy();
                    return Err(Error::Cgroup {
                        path: parent,
                        msg: format!("mkdir: {e}"),
                    });
                }
                let enable = format!("+{ctrl}");
                // Enabling may already be done; errors surface when writing the limit below.
                let _ = std::fs::write(mnt.join("cgroup.subtree_control"), &enable);
                let _ = std::fs::write(parent.join("cgroup.subtree_control"), &enable);
                v2_dir(&mnt)
            } else {
                mnt.join(own_v1_path(ctrl)).join(format!("rbuild-{id}"))
            };
            let existing = cg.dirs.iter().position(|d| d.path == dir);
            if existing.is_none() {
                if let Err(e) = std::fs::create_dir_all(&dir) {
                    cg.destroy();
                    return Err(Error::Cgroup {
                        path: dir,
                        msg: format!("mkdir: {e}"),
                    });
                }
            }
            let writes = if v2 { v2_writes } else { v1_writes };
            for (file, value) in writes {
                if let Err(e) = write(&dir.join(file), value) {
                    // memsw is absent when swap accounting is off: not fatal.
                    if *file == "memory.memsw.limit_in_bytes" || *file == "memory.swap.max" {
                        continue;
                    }
                    if existing.is_none() {
                        let _ = std::fs::remove_dir(&dir);
                    }
                    cg.destroy();
                    return Err(e);
                }
            }
            match existing {
                Some(i) => cg.dirs[i].controllers.push(ctrl.to_string()),
                None => cg.dirs.push(CgroupDir {
                    path: dir,
                    v2,
                    controllers: vec![ctrl.to_string()],
                }),
            }
        }
        Ok(cg)
    }

    /// The `cgroup.procs` files a process writes its pid (or 0) to, to join; without the v2 one
    /// when the process was born in it.
    pub(crate) fn procs_files(&self, in_v2: bool) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .filter(|d| !(in_v2 && d.v2))
            .map(|d| d.path.join("cgroup.procs"))
            .collect()
    }

    /// The container's v2 cgroup directory, if it has one.
    pub(crate) fn v2_dir(&self) -> Option<&Path> {
        self.dirs.iter().find(|d| d.v2).map(|d| d.path.as_path())
    }

    /// Whether the kernel OOM-killed a process of this container.
    pub(crate) fn oom_killed(&self) -> bool {
        for d in self
            .dirs
            .iter()
            .filter(|d| d.controllers.iter().any(|c| c == "memory"))
        {
            let file = if d.v2 {
                "memory.events"
            } else {
                "memory.oom_control"
            };
            let text = std::fs::read_to_string(d.path.join(file)).unwrap_or_default();
            for line in text.lines() {
                if let Some(n) = line.strip_prefix("oom_kill ") {
                    if n.trim().parse::<u64>().unwrap_or(0) > 0 {
                        return true;
                    }
                }
            }
        }
        false
    }

    /// Removes the directories (retrying briefly while the last processes exit).
    pub(crate) fn destroy(&self) {
        for d in &self.dirs {
            for _ in 0..50 {
                match std::fs::remove_dir(&d.path) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(2)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_values() {
        let r: LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": {"limit": 1048576},
            "cpu": {"quota": 50000, "period": 100000},
            "pids": {"limit": 20}
        }))
        .unwrap();
        let w = wanted(&r);
        assert_eq!(w.len(), 3);
        assert_eq!(
            w[0].1,
            vec![("memory.limit_in_bytes", "1048576".to_string())]
        );
        assert_eq!(w[1].2, vec![("cpu.max", "50000 100000".to_string())]);
        assert_eq!(w[2].1, vec![("pids.max", "20".to_string())]);
        let empty = LinuxResources::default();
        assert!(wanted(&empty).is_empty());
    }

    #[test]
    fn v2_writes_in_a_fake_hierarchy() {
        // A directory standing in for a cgroup2 mount that offers the three controllers: the v2
        // file names and values are what the kernel's v2 interface expects.
        let tmp = std::env::temp_dir().join(format!("rbuild-cg-test-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let hier = Hierarchies {
            v1: vec![("memory".into(), PathBuf::from("/nonexistent-v1"))],
            v2: Some((
                tmp.clone(),
                vec!["cpu".into(), "memory".into(), "pids".into()],
            )),
        };
        let r: LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": {"limit": 16777216, "swap": 16777216},
            "cpu": {"quota": 50000, "period": 100000},
            "pids": {"limit": 20}
        }))
        .unwrap();
        let cg = Cgroup::create_in("c1", &wanted(&r), &hier, Mode::V2).unwrap();
        let dir = tmp.join("rbuild/c1");
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), "16777216");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("pids.max"), "20");
        assert_eq!(cg.dirs.len(), 1);
        assert!(cg.dirs[0].v2);
        assert_eq!(cg.dirs[0].controllers, vec!["memory", "cpu", "pids"]);
        assert_eq!(cg.procs_files(false), vec![dir.join("cgroup.procs")]);
        assert!(cg.procs_files(true).is_empty());
        assert_eq!(cg.v2_dir(), Some(dir.as_path()));
        // Controllers are enabled for the children of the root and of rbuild/.
        assert!(
            std::fs::read_to_string(tmp.join("rbuild/cgroup.subtree_control"))
                .unwrap()
                .starts_with('+')
        );
        // auto prefers v1 where a controller has one; v2 refuses a controller it lacks.
        assert!(!hier.place("memory", Mode::Auto).unwrap().1);
        assert!(hier.place("pids", Mode::Auto).unwrap().1);
        let bare = Hierarchies {
            v1: vec![("memory".into(), PathBuf::from("/sys/fs/cgroup/memory"))],
            v2: Some((
                PathBuf::from("/sys/fs/cgroup/unified"),
                vec!["hugetlb".into()],
            )),
        };
        let e = bare.place("memory", Mode::V2).unwrap_err().to_string();
        assert!(
            e.contains("offers no memory controller (it offers: hugetlb)")
                && e.contains("bound to a v1 hierarchy"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&tmp);
    }
}

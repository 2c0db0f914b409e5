//! cgroup limits (memory, cpu, pids) on cgroup v1 controllers or the v2 unified hierarchy, chosen per
//! controller from `/proc/self/mounts`, with OOM-kill detection.

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

/// Where each controller lives: (controller, mount point, v2).
fn hierarchies() -> Vec<(String, PathBuf, bool)> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut out = Vec::new();
    let mut v2_mount = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        match f[2] {
            "cgroup" => {
                for c in ["memory", "cpu", "pids"] {
                    if f[3].split(',').any(|o| o == c)
                        && !out.iter().any(|(n, _, _): &(String, PathBuf, bool)| n == c)
                    {
                        out.push((c.to_string(), PathBuf::from(f[1]), false));
                    }
                }
            }
            "cgroup2" if v2_mount.is_none() => v2_mount = Some(PathBuf::from(f[1])),
            _ => {}
        }
    }
    if let Some(m) = v2_mount {
        let avail = std::fs::read_to_string(m.join("cgroup.controllers")).unwrap_or_default();
        for c in ["memory", "cpu", "pids"] {
            if avail.split_whitespace().any(|a| a == c) && !out.iter().any(|(n, _, _)| n == c) {
                out.push((c.to_string(), m.clone(), true));
            }
        }
    }
    out
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
    /// Creates the cgroups for container `id` and writes the limits; `None` when nothing is limited.
    pub(crate) fn create(id: &str, res: Option<&LinuxResources>) -> Result<Option<Cgroup>> {
        let Some(res) = res else { return Ok(None) };
        let wanted = wanted(res);
        if wanted.is_empty() {
            return Ok(None);
        }
        let hier = hierarchies();
        let mut cg = Cgroup::default();
        for (ctrl, v1_writes, v2_writes) in wanted {
            let Some((_, mnt, v2)) = hier.iter().find(|(n, _, _)| n == ctrl) else {
                cg.destroy();
                return Err(Error::Cgroup {
                    path: PathBuf::from("/sys/fs/cgroup"),
                    msg: format!("no {ctrl} controller mounted (v1 or v2)"),
                });
            };
            let dir = if *v2 {
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
                parent.join(id)
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
            let writes = if *v2 { &v2_writes } else { &v1_writes };
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
                    v2: *v2,
                    controllers: vec![ctrl.to_string()],
                }),
            }
        }
        Ok(Some(cg))
    }

    /// The `cgroup.procs` files a process writes its pid (or 0) to, to join.
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.path.join("cgroup.procs"))
            .collect()
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
}

//! `pause`/`unpause`: every process of a container frozen through a cgroup freezer.
//!
//! Containers have their own cgroups only when they have limits, so pausing makes a freezer
//! cgroup for the container (`freezer/rbuild-pause-<id>` on v1, or uses `cgroup.freeze` of a v2
//! cgroup) and moves every process of the container's pid namespace into it, repeating until a
//! pass moves nothing (a process forked meanwhile by one already moved is born inside). The
//! monitor removes the cgroup when the container ends.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::{cerr, io_err, Error};

/// The processes whose pid namespace is `pid`'s (host pids).
pub fn processes_of(pid: i32) -> Vec<i32> {
    let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/pid")) else {
        return vec![];
    };
    let mut out: Vec<i32> = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|d| d.file_name().to_str()?.parse().ok())
                .filter(|p: &i32| {
                    std::fs::read_link(format!("/proc/{p}/ns/pid"))
                        .ok()
                        .as_ref()
                        == Some(&ns)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn v1_dir(id: &str) -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 3 && f[2] == "cgroup" && f[3].split(',').any(|o| o == "freezer"))
            .then(|| PathBuf::from(f[1]).join(format!("rbuild-pause-{}", &id[..id.len().min(12)])))
    })
}

/// Freezes the container whose PID 1 is `pid`.
pub fn freeze(id: &str, pid: i32) -> Result<(), Error> {
    let dir = v1_dir(id).ok_or_else(|| {
        cerr("pause needs the cgroup v1 freezer controller, which is not mounted here")
    })?;
    std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let procs = dir.join("cgroup.procs");
    for _ in 0..100 {
        let inside: Vec<i32> = std::fs::read_to_string(&procs)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        let outside: Vec<i32> = processes_of(pid)
            .into_iter()
            .filter(|p| !inside.contains(p))
            .collect();
        if outside.is_empty() {
            break;
        }
        for p in outside {
            // A process that exited meanwhile cannot be moved: fine.
            let _ = std::fs::write(&procs, p.to_string());
        }
    }
    let state = dir.join("freezer.state");
    std::fs::write(&state, "FROZEN").map_err(io_err(format!("writing {}", state.display())))?;
    let end = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&state).unwrap_or_default().trim() != "FROZEN" {
        if Instant::now() > end {
            let _ = std::fs::write(&state, "THAWED");
            return Err(cerr("the container's processes did not freeze within 5 s"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Thaws a paused container.
pub fn thaw(id: &str) -> Result<(), Error> {
    let Some(dir) = v1_dir(id) else {
        return Ok(());
    };
    let state = dir.join("freezer.state");
    if state.exists() {
        std::fs::write(&state, "THAWED").map_err(io_err(format!("writing {}", state.display())))?;
    }
    Ok(())
}

/// Removes the pause cgroup once the container's processes are gone.
pub fn cleanup(id: &str) {
    if let Some(dir) = v1_dir(id) {
        let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
        for _ in 0..50 {
            match std::fs::remove_dir(&dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

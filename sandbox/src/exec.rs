//! `exec`: a new process in a running container's namespaces and cgroups, with the privileges the
//! spec gives (the container's capabilities, seccomp filter, no_new_privs and user).
//!
//! As for [`crate::spawn`], the work happens in a re-executed single-threaded helper (`setns` of a
//! mount namespace is refused to a multi-threaded process). The helper joins the target's cgroups,
//! then its cgroup, ipc, uts, net, pid and mount namespaces (those that differ from its own), and
//! forks: the child is born in the container's pid namespace, finishes like PID 1 does
//! ([`crate::init::finish_and_exec`]) and execs. The helper stays outside, forwards signals, reaps
//! and reports the exit status over the same report pipe as `spawn`.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::ForkResult;
use oci_spec::runtime::Spec;

use crate::error::{Error, Result};
use crate::init::{send, Report, SetupMsg, FORWARDED, PARENT_DEATH_SIGNAL};

/// argv[1] of a re-executed exec helper.
pub(crate) const EXEC_MARKER: &str = "__rbuild-sandbox-exec__";

/// What the caller sends the exec helper.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct ExecConfig {
    /// Host pid of a process of the container (its PID 1).
    pub pid: i32,
    /// `process` is what runs; `linux.seccomp` its filter.
    pub spec: Spec,
}

/// The namespaces joined, in order (mount last: after it `/proc` paths are the container's).
const NAMESPACES: [(&str, nix::sched::CloneFlags); 6] = [
    ("cgroup", nix::sched::CloneFlags::CLONE_NEWCGROUP),
    ("ipc", nix::sched::CloneFlags::CLONE_NEWIPC),
    ("uts", nix::sched::CloneFlags::CLONE_NEWUTS),
    ("net", nix::sched::CloneFlags::CLONE_NEWNET),
    ("pid", nix::sched::CloneFlags::CLONE_NEWPID),
    ("mnt", nix::sched::CloneFlags::CLONE_NEWNS),
];

/// Opens the namespaces of `pid` that differ from this process's.
fn open_namespaces(pid: i32) -> Result<Vec<(OwnedFd, nix::sched::CloneFlags)>> {
    let mut out = Vec::new();
    for (name, flag) in NAMESPACES {
        let theirs = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
        let ours = PathBuf::from(format!("/proc/self/ns/{name}"));
        let (Ok(t), Ok(o)) = (std::fs::metadata(&theirs), std::fs::metadata(&ours)) else {
            return Err(Error::io(
                "open namespace",
                &theirs,
                std::io::Error::from_raw_os_error(libc::ESRCH),
            ));
        };
        if t.ino() == o.ino() && t.dev() == o.dev() {
            continue;
        }
        let f = File::open(&theirs).map_err(|e| Error::io("open namespace", &theirs, e))?;
        out.push((OwnedFd::from(f), flag));
    }
    Ok(out)
}

/// Where each mounted cgroup hierarchy is: (controllers option list or "" for v2, mount point).
fn cgroup_mounts() -> Vec<(String, PathBuf)> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut out = Vec::new();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        match f[2] {
            "cgroup" => out.push((f[3].to_string(), PathBuf::from(f[1]))),
            "cgroup2" => out.push((String::new(), PathBuf::from(f[1]))),
            _ => {}
        }
    }
    out
}

/// The mount point of the hierarchy whose `/proc/PID/cgroup` controller field is `ctrls`.
fn hierarchy_of(ctrls: &str, mounts: &[(String, PathBuf)]) -> Option<PathBuf> {
    mounts.iter().find_map(|(opts, m)| {
        let hit = if ctrls.is_empty() {
            opts.is_empty()
        } else {
            let opts: Vec<&str> = opts.split(',').collect();
            ctrls.split(',').all(|c| opts.contains(&c))
        };
        hit.then(|| m.clone())
    })
}

/// Moves this process into every cgroup of `pid` that differs from its own.
fn join_cgroups(pid: i32) -> Result<()> {
    let parse = |text: &str| -> Vec<(String, String)> {
        text.lines()
            .filter_map(|l| {
                let mut p = l.splitn(3, ':');
                let (_, c, path) = (p.next()?, p.next()?, p.next()?);
                Some((c.to_string(), path.to_string()))
            })
            .collect()
    };
    let theirs_file = format!("/proc/{pid}/cgroup");
    let theirs = std::fs::read_to_string(&theirs_file)
        .map_err(|e| Error::io("read", Path::new(&theirs_file), e))?;
    let ours = parse(&std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default());
    let mounts = cgroup_mounts();
    for (ctrls, path) in parse(&theirs) {
        if ours.iter().any(|(c, p)| *c == ctrls && *p == path) {
            continue;
        }
        let Some(mnt) = hierarchy_of(&ctrls, &mounts) else {
            continue; // a hierarchy not mounted here: nothing to join through
        };
        let procs = mnt.join(path.trim_start_matches('/')).join("cgroup.procs");
        std::fs::write(&procs, "0").map_err(|e| Error::io("join cgroup", &procs, e))?;
    }
    Ok(())
}

/// The exec helper's life (called from `init_if_requested`).
pub(crate) fn exec_helper(cfg: &ExecConfig, rep: &mut File) -> Result<()> {
    join_cgroups(cfg.pid)?;
    let namespaces = open_namespaces(cfg.pid)?;
    for (fd, flag) in &namespaces {
        nix::sched::setns(fd, *flag)
            .map_err(|e| Error::nix(format!("setns {flag:?} of pid {}", cfg.pid), "", e))?;
    }
    drop(namespaces);

    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.add(PARENT_DEATH_SIGNAL);
    for s in FORWARDED {
        mask.add(s);
    }
    mask.thread_block()
        .map_err(|e| Error::nix("block signals", "", e))?;
    let (setup_r, setup_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::nix("pipe2", "", e))?;
    // SAFETY: the helper is single-threaded.
    let child = match unsafe { nix::unistd::fork() } {
        Err(e) => return Err(Error::nix("fork exec process", "", e)),
        Ok(ForkResult::Child) => {
            drop(setup_r);
            let mut w = File::from(setup_w);
            let err = match exec_child(&cfg.spec) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            send(&mut w, &SetupMsg::Error(err.to_string()));
            // SAFETY: leaving the forked child without running destructors.
            unsafe { libc::_exit(126) };
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    drop(setup_w);
    let mut setup_error = None;
    for line in BufReader::new(File::from(setup_r)).lines() {
        let Ok(line) = line else { break };
        if let Ok(SetupMsg::Error(e)) = serde_json::from_str::<SetupMsg>(&line) {
            setup_error = Some(e);
        }
    }
    if let Some(e) = setup_error {
        let _ = waitpid(child, None);
        return Err(Error::Setup(e));
    }
    send(
        rep,
        &Report::Started {
            pid: child.as_raw(),
        },
    );
    let (code, signal) = loop {
        let Ok(sig) = mask.wait() else { continue };
        if sig == PARENT_DEATH_SIGNAL {
            let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            continue;
        }
        if sig != Signal::SIGCHLD {
            let _ = nix::sys::signal::kill(child, sig);
            continue;
        }
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, c)) => break (c, None),
            Ok(WaitStatus::Signaled(_, s, _)) => break (128 + s as i32, Some(s as i32)),
            _ => {}
        }
    };
    send(
        rep,
        &Report::Exited {
            code,
            signal,
            oom: false,
        },
    );
    Ok(())
}

/// The exec'd process, inside the namespaces: session, terminal, then as PID 1 finishes.
fn exec_child(spec: &Spec) -> Result<std::convert::Infallible> {
    SigSet::empty()
        .thread_set_mask()
        .map_err(|e| Error::nix("unblock signals", "", e))?;
    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::InvalidSpec("no process".into()))?;
    nix::unistd::setsid().map_err(|e| Error::nix("setsid", "", e))?;
    if process.terminal().unwrap_or(false) {
        // SAFETY: stdin is the pty slave given by the caller.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
            return Err(Error::sys(
                "make the pty the controlling terminal (TIOCSCTTY)",
            ));
        }
    }
    // The mount namespace's root is the container's root; start from it.
    std::env::set_current_dir("/").map_err(|e| Error::io("chdir", Path::new("/"), e))?;
    let linux = spec.linux().clone().unwrap_or_default();
    crate::init::finish_and_exec(spec, process, &linux, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hierarchies_match_by_controllers() {
        let mounts = vec![
            (
                "rw,cpu,cpuacct".to_string(),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"),
            ),
            (
                "rw,memory".to_string(),
                PathBuf::from("/sys/fs/cgroup/memory"),
            ),
            (
                "rw,name=systemd".to_string(),
                PathBuf::from("/sys/fs/cgroup/systemd"),
            ),
            (String::new(), PathBuf::from("/sys/fs/cgroup/unified")),
        ];
        assert_eq!(
            hierarchy_of("cpu,cpuacct", &mounts),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(
            hierarchy_of("memory", &mounts),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            hierarchy_of("name=systemd", &mounts),
            Some(PathBuf::from("/sys/fs/cgroup/systemd"))
        );
        assert_eq!(
            hierarchy_of("", &mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(hierarchy_of("pids", &mounts), None);
    }
}

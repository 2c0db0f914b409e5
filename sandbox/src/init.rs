//! The re-executed helper and the container's PID 1 (everything after `fork`, before `execve`).

use crate::caps::{self, CapSets};
use crate::cgroup::Cgroup;
use crate::error::{Error, Result};
use crate::rootfs::{setup_rootfs, RootPlan};
use crate::sys::Linux;
use crate::Rootfs;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::ffi::CString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// argv[1] of a re-executed helper.
pub(crate) const INIT_MARKER: &str = "__rbuild-sandbox-init__";

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the caller sends the helper.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct InitConfig {
    pub spec: Spec,
    pub rootfs: Rootfs,
    pub state_dir: PathBuf,
    pub id: String,
}

/// What the helper tells the caller, one JSON line each.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) enum Report {
    Started {
        pid: i32,
    },
    Failed {
        error: String,
    },
    Exited {
        code: i32,
        signal: Option<i32>,
        oom: bool,
    },
}

/// What PID 1 tells the helper before exec, one JSON line each (the pipe closes on exec).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) enum SetupMsg {
    Stubs(Vec<PathBuf>),
    Error(String),
}

/// Must be the first call in `main()` of any binary that uses [`crate::spawn`] (rbuild itself and
/// test binaries): when this process was started as the sandbox's helper (`argv[1]` is the helper
/// marker) it runs the helper and never returns; otherwise it returns immediately.
pub fn init_if_requested() {
    let mut args = std::env::args_os().skip(1);
    let exec = match args.next() {
        Some(m) if m == INIT_MARKER => false,
        Some(m) if m == crate::exec::EXEC_MARKER => true,
        _ => return,
    };
    let fd = |a: Option<std::ffi::OsString>| {
        a.and_then(|s| s.to_str().and_then(|s| s.parse::<i32>().ok()))
    };
    let (Some(cfg_fd), Some(rep_fd)) = (fd(args.next()), fd(args.next())) else {
        eprintln!("rbuild-sandbox-init: bad arguments");
        std::process::exit(125);
    };
    // SAFETY: the parent passed us these two fds, open and ours alone.
    let (cfg, rep) = unsafe { (File::from_raw_fd(cfg_fd), File::from_raw_fd(rep_fd)) };
    for fd in [cfg_fd, rep_fd] {
        // SAFETY: plain fcntl on our fd.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // When the process that started the helper dies (a killed `rbuild run` or container monitor),
    // the kernel sends the helper PARENT_DEATH_SIGNAL; it stays blocked until the helper's wait
    // loop takes it and SIGKILLs PID 1 (the whole pid namespace goes with it). PID 1's own
    // PR_SET_PDEATHSIG is not enough: the kernel clears it when credentials change at exec.
    let mut pdeath = SigSet::empty();
    pdeath.add(PARENT_DEATH_SIGNAL);
    let _ = pdeath.thread_block();
    // SAFETY: plain prctl and getppid.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            PARENT_DEATH_SIGNAL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::getppid() == 1 {
            libc::_exit(125);
        }
    }
    let code = if exec {
        exec_helper_main(cfg, rep)
    } else {
        helper_main(cfg, rep)
    };
    std::process::exit(code);
}

pub(crate) fn send<T: serde::Serialize>(w: &mut File, msg: &T) {
    if let Ok(mut s) = serde_json::to_string(msg) {
        s.push('\n');
        let _ = w.write_all(s.as_bytes());
    }
}

fn exec_helper_main(mut cfg_in: File, mut rep: File) -> i32 {
    let mut buf = Vec::new();
    let cfg = cfg_in
        .read_to_end(&mut buf)
        .map_err(|e| format!("read config: {e}"))
        .and_then(|_| {
            serde_json::from_slice::<crate::exec::ExecConfig>(&buf)
                .map_err(|e| format!("parse config: {e}"))
        });
    drop(cfg_in);
    let result = match cfg {
        Ok(cfg) => crate::exec::exec_helper(&cfg, &mut rep).map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => 0,
        Err(error) => {
            send(&mut rep, &Report::Failed { error });
            1
        }
    }
}

fn helper_main(mut cfg_in: File, mut rep: File) -> i32 {
    let mut buf = Vec::new();
    if let Err(e) = cfg_in.read_to_end(&mut buf) {
        send(
            &mut rep,
            &Report::Failed {
                error: format!("read config: {e}"),
            },
        );
        return 1;
    }
    drop(cfg_in);
    let cfg: InitConfig = match serde_json::from_slice(&buf) {
        Ok(c) => c,
        Err(e) => {
            send(
                &mut rep,
                &Report::Failed {
                    error: format!("parse config: {e}"),
                },
            );
            return 1;
        }
    };
    match run_helper(&cfg, &mut rep) {
        Ok(()) => 0,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&cfg.state_dir);
            send(
                &mut rep,
                &Report::Failed {
                    error: e.to_string(),
                },
            );
            1
        }
    }
}

fn has_ns(spec: &Spec, t: LinuxNamespaceType) -> Result<bool> {
    let Some(ns) = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref()) else {
        return Ok(false);
    };
    match ns.iter().find(|n| n.typ() == t) {
        None => Ok(false),
        // A network namespace given by path is joined (see `network_ns_path`), not created.
        Some(n) if n.path().is_some() && t == LinuxNamespaceType::Network => Ok(false),
        Some(n) if n.path().is_some() => Err(Error::InvalidSpec(format!(
            "joining an existing {t:?} namespace (path) is not supported"
        ))),
        Some(_) => Ok(true),
    }
}

/// The helper's parent-death signal (one nobody forwards; see `init_if_requested`).
pub(crate) const PARENT_DEATH_SIGNAL: Signal = Signal::SIGPWR;

/// The network namespace to join (`linux.namespaces[type=network].path`), as podman hands runc
/// the namespace netavark configured.
fn network_ns_path(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|ns| ns.iter().find(|n| n.typ() == LinuxNamespaceType::Network))
        .and_then(|n| n.path().clone())
}

/// Joins the network namespace pinned at `path`.
fn join_network_ns(path: &Path) -> Result<()> {
    let f = File::open(path).map_err(|e| Error::io("open network namespace", path, e))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| Error::nix("join network namespace", path, e))
}

pub(crate) const FORWARDED: [Signal; 9] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGTERM,
    Signal::SIGWINCH,
    Signal::SIGALRM,
    Signal::SIGCONT,
];

fn run_helper(cfg: &InitConfig, rep: &mut File) -> Result<()> {
    let spec = &cfg.spec;
    std::fs::create_dir_all(cfg.state_dir.join("root"))
        .map_err(|e| Error::io("mkdir", &cfg.state_dir, e))?;
    let hostname = spec
        .hostname()
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| cfg.id.clone());
    let hostname_file = cfg.state_dir.join("hostname");
    std::fs::write(&hostname_file, format!("{hostname}\n"))
        .map_err(|e| Error::io("write", &hostname_file, e))?;
    for t in [
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Cgroup,
    ] {
        has_ns(spec, t)?;
    }
    let new_pid_ns = has_ns(spec, LinuxNamespaceType::Pid)?;
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let cgroup = Cgroup::create(&cfg.id, resources)?;

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
    if new_pid_ns {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)
            .map_err(|e| Error::nix("unshare pid namespace", "", e))?;
    }
    let child = match fork_into(cgroup.v2_dir()) {
        Err(e) => {
            cgroup.destroy();
            return Err(e);
        }
        Ok((ForkResult::Child, born_in_v2)) => {
            drop(setup_r);
            let mut w = File::from(setup_w);
            let err = container_main(cfg, &hostname, &hostname_file, &cgroup, born_in_v2, &mut w);
            send(&mut w, &SetupMsg::Error(err.to_string()));
            // SAFETY: leaving the forked child without running the helper's destructors.
            unsafe { libc::_exit(125) };
        }
        Ok((ForkResult::Parent { child }, _)) => child,
    };
    drop(setup_w);
    let mut stubs = Vec::new();
    let mut setup_error = None;
    for line in BufReader::new(File::from(setup_r)).lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<SetupMsg>(&line) {
            Ok(SetupMsg::Stubs(s)) => stubs = s,
            Ok(SetupMsg::Error(e)) => setup_error = Some(e),
            Err(_) => setup_error = Some(format!("garbled setup message {line:?}")),
        }
    }
    if let Some(e) = setup_error {
        let _ = waitpid(child, None);
        cgroup.destroy();
        crate::stubs::remove_stubs(&cfg.rootfs, &stubs);
        return Err(Error::Setup(e));
    }
    send(
        rep,
        &Report::Started {
            pid: child.as_raw(),
        },
    );

    let status = loop {
        let sig = match mask.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        if sig == Signal::SIGCHLD {
            let mut done = None;
            loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(p, c)) if p == child => done = Some((c, None)),
                    Ok(WaitStatus::Signaled(p, s, _)) if p == child => {
                        done = Some((128 + s as i32, Some(s as i32)))
                    }
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            if let Some(d) = done {
                break d;
            }
        } else if sig == PARENT_DEATH_SIGNAL {
            let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
        } else {
            let _ = nix::sys::signal::kill(child, sig);
        }
    };
    let oom = cgroup.oom_killed();
    cgroup.destroy();
    crate::stubs::remove_stubs(&cfg.rootfs, &stubs);
    let _ = std::fs::remove_dir_all(&cfg.state_dir);
    send(
        rep,
        &Report::Exited {
            code: status.0,
            signal: status.1,
            oom,
        },
    );
    Ok(())
}

/// `struct clone_args` of clone3(2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// fork(2) for the container's PID 1, born directly in the v2 cgroup `dir` when there is one
/// (clone3 `CLONE_INTO_CGROUP`): writing a pid to `cgroup.procs` migrates it, and a migration waits
/// for an RCU grace period (5-12 ms per container on this machine). Returns whether the child was
/// born in that cgroup. Falls back to fork(2) where clone3 lacks the flag (Linux < 5.7).
fn fork_into(dir: Option<&Path>) -> Result<(ForkResult, bool)> {
    if let Some(dir) = dir {
        let cg = File::open(dir).map_err(|e| Error::io("open cgroup", dir, e))?;
        let mut args = CloneArgs {
            flags: CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: cg.as_raw_fd() as u64,
            ..Default::default()
        };
        // SAFETY: like fork(2) (no CLONE_VM, no new stack): the helper is single-threaded (a fresh
        // exec that started no threads), and the child only makes system calls until it execs.
        let r = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &mut args as *mut CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        match r {
            0 => return Ok((ForkResult::Child, true)),
            p if p > 0 => {
                return Ok((
                    ForkResult::Parent {
                        child: Pid::from_raw(p as i32),
                    },
                    true,
                ))
            }
            _ => {
                let e = std::io::Error::last_os_error();
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::E2BIG)
                ) {
                    return Err(Error::io("clone3 the container init into", dir, e));
                }
            }
        }
    }
    // SAFETY: the helper is single-threaded (a fresh exec that started no threads).
    match unsafe { nix::unistd::fork() } {
        Ok(r) => Ok((r, false)),
        Err(e) => Err(Error::nix("fork container init", "", e)),
    }
}

fn cstring(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::InvalidSpec(format!("{what} contains a NUL byte: {s:?}")))
}

/// PID 1: finish the isolation and exec. Returns only on failure.
fn container_main(
    cfg: &InitConfig,
    hostname: &str,
    hostname_file: &Path,
    cgroup: &Cgroup,
    born_in_v2: bool,
    setup: &mut File,
) -> Error {
    match setup_and_exec(cfg, hostname, hostname_file, cgroup, born_in_v2, setup) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// Reads a small regular file of the container (after `pivot_root`): a FIFO or device an image
/// put there is never opened for reading, and at most 1 MiB is read.
fn read_image_file(path: &str) -> String {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    else {
        return String::new();
    };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(1 << 20).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn setup_and_exec(
    cfg: &InitConfig,
    hostname: &str,
    hostname_file: &Path,
    cgroup: &Cgroup,
    born_in_v2: bool,
    setup: &mut File,
) -> Result<std::convert::Infallible> {
    let spec = &cfg.spec;
    SigSet::empty()
        .thread_set_mask()
        .map_err(|e| Error::nix("unblock signals", "", e))?;
    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };

    for f in cgroup.procs_files(born_in_v2) {
        std::fs::write(&f, "0").map_err(|e| Error::io("join cgroup", &f, e))?;
    }
    use nix::sched::CloneFlags;
    let mut flags = CloneFlags::empty();
    for (t, f) in [
        (LinuxNamespaceType::Mount, CloneFlags::CLONE_NEWNS),
        (LinuxNamespaceType::Uts, CloneFlags::CLONE_NEWUTS),
        (LinuxNamespaceType::Ipc, CloneFlags::CLONE_NEWIPC),
        (LinuxNamespaceType::Network, CloneFlags::CLONE_NEWNET),
        (LinuxNamespaceType::Cgroup, CloneFlags::CLONE_NEWCGROUP),
    ] {
        if has_ns(spec, t)? {
            flags |= f;
        }
    }
    if !flags.contains(CloneFlags::CLONE_NEWNS) {
        return Err(Error::InvalidSpec("a mount namespace is required".into()));
    }
    if let Some(p) = network_ns_path(spec) {
        join_network_ns(&p)?;
    }
    nix::sched::unshare(flags).map_err(|e| Error::nix(format!("unshare {flags:?}"), "", e))?;

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

    let linux = spec.linux().clone().unwrap_or_default();
    let mut etc_binds = Vec::new();
    for f in ["/etc/resolv.conf", "/etc/hosts"] {
        if Path::new(f).is_file() {
            etc_binds.push((PathBuf::from(f), PathBuf::from(f)));
        }
    }
    let no_hostname_file = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(crate::spec::NO_HOSTNAME_FILE_ANNOTATION))
        .is_some_and(|v| v == "true");
    if !no_hostname_file {
        etc_binds.push((hostname_file.to_path_buf(), PathBuf::from("/etc/hostname")));
    }
    let plan = RootPlan {
        root: &cfg.state_dir.join("root"),
        rootfs: &cfg.rootfs,
        mounts: spec.mounts().as_deref().unwrap_or(&[]),
        masked: linux.masked_paths().as_deref().unwrap_or(&[]),
        readonly: linux.readonly_paths().as_deref().unwrap_or(&[]),
        root_readonly: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        etc_binds,
        console: if process.terminal().unwrap_or(false) {
            std::fs::read_link("/proc/self/fd/0").ok()
        } else {
            None
        },
    };
    let stubs = setup_rootfs(&mut Linux, &plan)?;
    send(setup, &SetupMsg::Stubs(stubs));

    if flags.contains(CloneFlags::CLONE_NEWUTS) {
        nix::unistd::sethostname(hostname).map_err(|e| Error::nix("sethostname", hostname, e))?;
    }
    if flags.contains(CloneFlags::CLONE_NEWNET) {
        loopback_up()?;
    }
    if let Some(sysctl) = linux.sysctl() {
        for (k, v) in sysctl {
            let p = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
            std::fs::write(&p, v).map_err(|e| Error::io("sysctl", &p, e))?;
        }
    }
    finish_and_exec(spec, process, &linux, true)
}

/// The last part of starting a process in the container, shared by PID 1 and `exec`: environment,
/// working directory, rlimits, then privileges (bounding set, user, capability sets,
/// no_new_privs, seccomp) and `execve` (or the init with `--init`). Returns only on failure.
pub(crate) fn finish_and_exec(
    spec: &Spec,
    process: &oci_spec::runtime::Process,
    linux: &oci_spec::runtime::Linux,
    create_cwd: bool,
) -> Result<std::convert::Infallible> {
    apply_rlimits(process.rlimits().as_deref().unwrap_or(&[]))?;

    // Environment: the spec's, plus HOME from the image's passwd as Docker does.
    let user = process.user();
    let (uid, gid) = (user.uid(), user.gid());
    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        env.push(format!("HOME={}", crate::user::home_of(&passwd, uid)));
    }
    let path_var = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string();

    let cwd = process.cwd();
    let cwd = if cwd.as_os_str().is_empty() {
        Path::new("/")
    } else {
        cwd.as_path()
    };
    if create_cwd {
        enter_cwd(cwd, uid, gid)?;
    } else {
        // `exec`: the directory must exist (inside the container's mount namespace and root).
        std::env::set_current_dir(cwd)
            .map_err(|e| Error::io("chdir to working directory", cwd, e))?;
    }

    // Privileges: bounding set, then user, then capability sets, no_new_privs, seccomp.
    let capsets = CapSets::from_spec(process.capabilities().as_ref())?;
    let nnp = process.no_new_privileges().unwrap_or(false);
    let filters = match linux.seccomp() {
        Some(p) => crate::seccomp::compile(p)?,
        None => Vec::new(),
    };
    caps::drop_bounding(capsets.bounding)?;
    if !nnp {
        // Without no_new_privs, installing needs CAP_SYS_ADMIN: do it while we still have it.
        crate::seccomp::install(&filters)?;
    }
    caps::set_keepcaps(true)?;
    let mut groups: Vec<nix::unistd::Gid> = Vec::new();
    for g in user.additional_gids().iter().flatten() {
        groups.push((*g).into());
    }
    if let Some(name) = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(crate::spec::GROUPS_OF_ANNOTATION))
    {
        for g in crate::user::parse_group(&read_image_file("/etc/group")) {
            let id = nix::unistd::Gid::from_raw(g.gid);
            if g.members.iter().any(|m| m == name) && g.gid != gid && !groups.contains(&id) {
                groups.push(id);
            }
        }
    }
    nix::unistd::setgroups(&groups).map_err(|e| Error::nix("setgroups", "", e))?;
    nix::unistd::setresgid(gid.into(), gid.into(), gid.into())
        .map_err(|e| Error::nix(format!("setgid {gid}"), "", e))?;
    nix::unistd::setresuid(uid.into(), uid.into(), uid.into())
        .map_err(|e| Error::nix(format!("setuid {uid}"), "", e))?;
    caps::set_keepcaps(false)?;
    caps::apply(&capsets)?;
    // Credential changes clear the parent-death signal: set it again.
    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    if nnp {
        // SAFETY: plain prctl.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(Error::sys("prctl(PR_SET_NO_NEW_PRIVS)"));
        }
        crate::seccomp::install(&filters)?;
    }

    let args = process.args().clone().unwrap_or_default();
    let argv: Vec<CString> = args
        .iter()
        .map(|a| cstring(a, "argument"))
        .collect::<Result<_>>()?;
    let envp: Vec<CString> = env
        .iter()
        .map(|e| cstring(e, "environment entry"))
        .collect::<Result<_>>()?;
    let Some(arg0) = args.first() else {
        return Err(Error::InvalidSpec("process.args is empty".into()));
    };

    // Every fd above 2 is closed by the exec (CVE-2024-21626 class); the setup pipe too, which tells
    // the helper the exec happened.
    // SAFETY: close_range with CLOEXEC flag only marks fds.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r != 0 {
        return Err(Error::sys("close_range(3.., CLOEXEC)"));
    }

    if crate::spec::wants_init(spec) {
        return run_init(
            process.terminal().unwrap_or(false),
            arg0,
            &path_var,
            &argv,
            &envp,
        );
    }
    exec_program(arg0, &path_var, &argv, &envp)
}

/// Changes to the working directory, creating it (0755, then owned by the user) when missing. It is
/// resolved inside the container's root (already `/` here) by the kernel, so a magic link such as
/// `/proc/self/fd/N` (a descriptor of the host, CVE-2024-21626) is refused, not followed.
fn enter_cwd(cwd: &Path, uid: u32, gid: u32) -> Result<()> {
    let resolve = |e| Error::Resolve {
        what: format!("working directory {}", cwd.display()),
        source: e,
    };
    let root = rbuild_fsroot::Root::open("/").map_err(resolve)?;
    let dir = match root.resolve(cwd) {
        Ok(d) => d,
        Err(rbuild_fsroot::Error::NotFound { .. }) => {
            let d = root.mkdir_all(cwd, 0o755, None).map_err(resolve)?;
            let _ = d.chown(uid, gid);
            d
        }
        Err(e) => return Err(resolve(e)),
    };
    nix::unistd::fchdir(&dir).map_err(|e| Error::nix("chdir to working directory", cwd, e))
}

/// Looks `arg0` up in PATH and execs it; on failure prints Docker's message and exits 127/126.
fn exec_program(arg0: &str, path_var: &str, argv: &[CString], envp: &[CString]) -> ! {
    let path = match lookup(arg0, path_var) {
        Ok(p) => p,
        Err((code, msg)) => {
            let _ = writeln!(std::io::stderr(), "{msg}");
            // SAFETY: exiting without running destructors (PID 1 or the init's child).
            unsafe { libc::_exit(code) };
        }
    };
    let e = match CString::new(path.as_os_str().as_bytes()) {
        Ok(cpath) => nix::unistd::execve(&cpath, argv, envp).unwrap_err(),
        Err(_) => nix::errno::Errno::EINVAL,
    };
    let (code, why) = match e {
        nix::errno::Errno::ENOENT => (127, "no such file or directory".to_string()),
        nix::errno::Errno::EACCES => (126, "permission denied".to_string()),
        other => (126, other.desc().to_lowercase()),
    };
    let _ = writeln!(std::io::stderr(), "exec {}: {why}", path.display());
    // SAFETY: exiting without running destructors.
    unsafe { libc::_exit(code) };
}

/// The signals the init blocks and waits for: all but the uncatchable and the synchronous ones
/// (as tini).
fn init_signals() -> SigSet {
    let mut set = SigSet::all();
    for s in [
        Signal::SIGKILL,
        Signal::SIGSTOP,
        Signal::SIGILL,
        Signal::SIGTRAP,
        Signal::SIGABRT,
        Signal::SIGBUS,
        Signal::SIGFPE,
        Signal::SIGSEGV,
        Signal::SIGSYS,
    ] {
        set.remove(s);
    }
    set
}

/// `--init`: PID 1 stays in this (already loaded) code as the init, with the same user,
/// capabilities and seccomp filter as the program, and forks the program into its own process
/// group (the terminal's foreground group with `-t`, so Ctrl-C reaches it directly). Nothing has to
/// exist in the image for it, and no file is executed from outside the container's root.
fn run_init(
    terminal: bool,
    arg0: &str,
    path_var: &str,
    argv: &[CString],
    envp: &[CString],
) -> Result<std::convert::Infallible> {
    let set = init_signals();
    // Blocked before the fork so no signal slips between fork and the wait loop; SIGTTOU blocked
    // also lets the child take the terminal's foreground.
    set.thread_block()
        .map_err(|e| Error::nix("block signals in the init", "", e))?;
    // SAFETY: PID 1 is single-threaded.
    match unsafe { libc::fork() } {
        -1 => Err(Error::sys("fork the program under the init")),
        0 => {
            // SAFETY: plain calls on our own process and stdin.
            unsafe {
                libc::setpgid(0, 0);
                if terminal {
                    libc::tcsetpgrp(0, libc::getpid());
                }
            }
            let _ = SigSet::empty().thread_set_mask();
            exec_program(arg0, path_var, argv, envp)
        }
        child => init_loop(Pid::from_raw(child), &set),
    }
}

/// The init's life: forward signals to the program, reap every child (orphans of the namespace
/// are re-parented to PID 1), exit with the program's status once it is gone. The kernel then kills
/// whatever is left in the pid namespace.
fn init_loop(child: Pid, set: &SigSet) -> ! {
    // SAFETY: plain prctl; the name shows in /proc/1/comm and ps.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"rbuild-init".as_ptr(), 0, 0, 0) };
    // Keep only stdio: this closes the setup pipe's write end, which tells the helper the program
    // is started (the program's copy closes when it execs).
    // SAFETY: close_range on our own fds.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    loop {
        let Ok(sig) = set.wait() else { continue };
        match sig {
            Signal::SIGCHLD => loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(p, code)) if p == child => {
                        // SAFETY: the init ends here.
                        unsafe { libc::_exit(code) }
                    }
                    Ok(WaitStatus::Signaled(p, s, _)) if p == child => {
                        // SAFETY: the init ends here.
                        unsafe { libc::_exit(128 + s as i32) }
                    }
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => {}
                }
            },
            // Job-control noise from the terminal, meant for the init itself.
            Signal::SIGTTIN | Signal::SIGTTOU => {}
            s => {
                let _ = nix::sys::signal::kill(child, s);
            }
        }
    }
}

/// PATH lookup like Go's exec.LookPath with Docker's messages. Err is (exit code, message).
fn lookup(arg0: &str, path_var: &str) -> std::result::Result<PathBuf, (i32, String)> {
    let executable = |p: &Path| {
        let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: valid NUL-terminated path.
        p.is_file() && unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0
    };
    if arg0.contains('/') {
        let p = PathBuf::from(arg0);
        if !p.exists() {
            return Err((
                127,
                format!("exec: \"{arg0}\": stat {arg0}: no such file or directory"),
            ));
        }
        if !executable(&p) {
            return Err((126, format!("exec: \"{arg0}\": permission denied")));
        }
        return Ok(p);
    }
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let p = Path::new(dir).join(arg0);
        if executable(&p) {
            return Ok(p);
        }
    }
    Err((
        127,
        format!("exec: \"{arg0}\": executable file not found in $PATH"),
    ))
}

fn loopback_up() -> Result<()> {
    // SAFETY: a socket just for the ioctl; closed below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(Error::sys("socket for loopback setup"));
    }
    // SAFETY: s is a new fd we own.
    let sock = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: zeroed ifreq is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        ifr.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: valid socket and ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } != 0 {
        return Err(Error::sys("get flags of lo"));
    }
    // SAFETY: union field written by SIOCGIFFLAGS.
    unsafe { ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: valid socket and ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } != 0 {
        return Err(Error::sys("bring lo up"));
    }
    Ok(())
}

fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        _ => return None,
    })
}

/// Applies the spec's rlimits, never above the current hard limit (root here may lack
/// CAP_SYS_RESOURCE).
fn apply_rlimits(limits: &[oci_spec::runtime::PosixRlimit]) -> Result<()> {
    for l in limits {
        let name = serde_json::to_value(l.typ())
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let res = rlimit_resource(&name)
            .ok_or_else(|| Error::InvalidSpec(format!("unknown rlimit {name}")))?;
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: valid out pointer.
        if unsafe { libc::getrlimit(res, &mut cur) } != 0 {
            return Err(Error::sys(format!("getrlimit {name}")));
        }
        let hard = l.hard().min(cur.rlim_max);
        let soft = l.soft().min(hard);
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: valid pointer.
        if unsafe { libc::setrlimit(res, &new) } != 0 {
            return Err(Error::sys(format!("setrlimit {name} {soft}:{hard}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_messages() {
        let e = lookup("definitely-not-here", "/nonexistent:/also-not").unwrap_err();
        assert_eq!(
            e,
            (
                127,
                "exec: \"definitely-not-here\": executable file not found in $PATH".to_string()
            )
        );
        let e = lookup("/nope/x", "").unwrap_err();
        assert_eq!(e.0, 127);
        assert!(lookup("sh", "/bin:/usr/bin").is_ok());
    }

    #[test]
    fn report_roundtrip() {
        let s = serde_json::to_string(&Report::Exited {
            code: 137,
            signal: Some(9),
            oom: true,
        })
        .unwrap();
        assert!(matches!(
            serde_json::from_str::<Report>(&s).unwrap(),
            Report::Exited {
                code: 137,
                signal: Some(9),
                oom: true
            }
        ));
    }
}

//! The caller's side: [`spawn`] starts the helper, [`Container`] talks to it.

use crate::error::{Error, Result};
use crate::init::{InitConfig, Report, INIT_MARKER};
use crate::Rootfs;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Options of one container beyond the OCI spec.
pub struct RunOptions {
    /// How the root filesystem is made (`spec.root.path` is ignored; `spec.root.readonly` is honoured).
    pub rootfs: Rootfs,
    /// The container's stdin (ignored when `process.terminal` is set: the pty is used).
    pub stdin: Stdio,
    /// The container's stdout (ignored with a terminal).
    pub stdout: Stdio,
    /// The container's stderr (ignored with a terminal).
    pub stderr: Stdio,
}

impl RunOptions {
    /// Options with the given root and stdio inherited from the caller.
    pub fn new(rootfs: Rootfs) -> Self {
        RunOptions {
            rootfs,
            stdin: Stdio::inherit(),
            stdout: Stdio::inherit(),
            stderr: Stdio::inherit(),
        }
    }
}

/// How the container's PID 1 ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

impl ExitStatus {
    /// The shell-style code: the exit code, or 128+N for signal N.
    pub fn code(&self) -> i32 {
        match self {
            ExitStatus::Exited(c) => *c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }

    /// Whether the code is 0.
    pub fn success(&self) -> bool {
        self.code() == 0
    }
}

/// The full result of [`Container::wait_outcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// How PID 1 ended.
    pub status: ExitStatus,
    /// Whether the kernel's OOM killer killed a process of the container (memory cgroup limit).
    pub oom_killed: bool,
}

impl Outcome {
    /// Same as [`ExitStatus::code`].
    pub fn code(&self) -> i32 {
        self.status.code()
    }
}

/// A running container (its helper process and PID 1).
pub struct Container {
    helper: Child,
    report: BufReader<File>,
    pid: u32,
    pidfd: Option<OwnedFd>,
    pty_master: Option<OwnedFd>,
    state_dir: PathBuf,
    done: bool,
    /// Membership in the spawning thread's kill switch, until the container is waited for.
    _cancel: Option<crate::cancel::Registration>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::Sys {
        op: "pipe2".into(),
        source: std::io::Error::from_raw_os_error(e as i32),
    })
}

pub(crate) fn random_id() -> String {
    let mut b = [0u8; 6];
    // SAFETY: filling a valid buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let v = t.as_nanos() as u64 ^ (std::process::id() as u64) << 32;
        b.copy_from_slice(&v.to_le_bytes()[..6]);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn read_report(r: &mut BufReader<File>) -> Result<Option<Report>> {
    let mut line = String::new();
    let n = r
        .read_line(&mut line)
        .map_err(|e| Error::Helper(format!("read report: {e}")))?;
    if n == 0 {
        return Ok(None);
    }
    serde_json::from_str(&line)
        .map(Some)
        .map_err(|e| Error::Helper(format!("bad report {line:?}: {e}")))
}

/// A sealed in-memory copy of this binary (created once per process), as `/proc/self/fd/N`.
///
/// With `--init` the container's PID 1 keeps running rbuild's code, so `/proc/1/exe` inside the
/// container names the executable the helper was started from. Were that the host's rbuild
/// binary, the container could reach it (runc's CVE-2019-5736: open it, wait for the last host
/// process running it to exit, write it). The helper is therefore started from a `memfd` copy
/// sealed against writes, growth, shrinking and further seal changes (`F_SEAL_SEAL | SHRINK |
/// GROW | WRITE`): `/proc/1/exe` is that copy, which nothing can modify, and it is not the host
/// file. Without the init PID 1 execs the program before any other process exists in the pid
/// namespace, so the plain `/proc/self/exe` re-exec is kept (no copy, no memory).
fn sealed_self() -> Result<PathBuf> {
    static SEALED: std::sync::Mutex<Option<OwnedFd>> = std::sync::Mutex::new(None);
    let mut g = SEALED.lock().unwrap_or_else(|p| p.into_inner());
    if g.is_none() {
        *g = Some(seal_copy_of_self()?);
    }
    let fd = g.as_ref().map_or(-1, |f| f.as_raw_fd());
    Ok(PathBuf::from(format!("/proc/self/fd/{fd}")))
}

fn seal_copy_of_self() -> Result<OwnedFd> {
    const MFD_EXEC: libc::c_uint = 0x10; // executable even where vm.memfd_noexec says otherwise
    let sys = |op: &str| Error::Sys {
        op: op.to_string(),
        source: std::io::Error::last_os_error(),
    };
    let name = c"rbuild-init";
    let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: valid name and flags; MFD_EXEC is unknown before Linux 6.3 (EINVAL): retried without.
    let mut fd = unsafe { libc::memfd_create(name.as_ptr(), base | MFD_EXEC) };
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(name.as_ptr(), base) };
    }
    if fd < 0 {
        return Err(sys("memfd_create for the init's copy of rbuild"));
    }
    // SAFETY: memfd_create returned a new descriptor we own.
    let mut copy = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut exe =
        File::open("/proc/self/exe").map_err(|e| Error::io("open", "/proc/self/exe", e))?;
    std::io::copy(&mut exe, &mut copy)
        .map_err(|e| Error::io("copy into a memfd", "/proc/self/exe", e))?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: plain fcntl on our descriptor.
    if unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(sys("seal the init's copy of rbuild"));
    }
    Ok(OwnedFd::from(copy))
}

/// Starts the process tree described by `spec` (process args/env/cwd/user/terminal/capabilities/
/// rlimits/no_new_privileges, hostname, linux namespaces — a network namespace means isolated
/// networking with only `lo` up, none means host networking —, mounts, resources memory/cpu/pids,
/// masked and read-only paths, seccomp). `spec.root.path` is ignored: the root comes from
/// `opts.rootfs`. Returns once PID 1 has been set up and is exec'ing the program; a failure of the
/// setup is returned as [`Error::Setup`]. A program that is not found is not an error here: it exits
/// 127 with Docker's message on its stderr.
///
/// The current binary must call [`crate::init_if_requested`] at the start of `main`.
pub fn spawn(spec: &oci_spec::runtime::Spec, opts: RunOptions) -> Result<Container> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::InvalidSpec("no process".into()))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(Error::InvalidSpec("process.args is empty".into()));
    }
    crate::cancel::check_current()?;
    let id = random_id();
    let state_dir = std::env::temp_dir().join(format!("rbuild-sandbox-{id}"));
    let terminal = process.terminal().unwrap_or(false);
    let cfg = InitConfig {
        spec: spec.clone(),
        rootfs: opts.rootfs,
        state_dir: state_dir.clone(),
        id,
    };
    let cfg_json =
        serde_json::to_vec(&cfg).map_err(|e| Error::InvalidSpec(format!("serialize spec: {e}")))?;

    let (cfg_r, cfg_w) = pipe()?;
    let (rep_r, rep_w) = pipe()?;
    let (cfg_fd, rep_fd) = (cfg_r.as_raw_fd(), rep_w.as_raw_fd());

    // With the init, PID 1 stays in this binary's code for the container's life: it must not be
    // the host's file (see `sealed_self`).
    let exe = if crate::spec::wants_init(spec) {
        sealed_self()?
    } else {
        PathBuf::from("/proc/self/exe")
    };
    let mut cmd = Command::new(&exe);
    cmd.arg0("rbuild-sandbox-init")
        .arg(INIT_MARKER)
        .arg(cfg_fd.to_string())
        .arg(rep_fd.to_string());
    let mut pty_master = None;
    if terminal {
        // The pty starts with the caller's terminal size (stdout's, else stdin's), so the program
        // sees the right size from its first instruction; later resizes use TIOCSWINSZ.
        // SAFETY: zeroed winsize is valid; TIOCGWINSZ only writes it.
        let size = unsafe {
            let mut ws: libc::winsize = std::mem::zeroed();
            (libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) == 0
                || libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0)
                .then_some(ws)
        };
        let pty = nix::pty::openpty(size.as_ref(), None).map_err(|e| Error::Sys {
            op: "openpty".into(),
            source: std::io::Error::from_raw_os_error(e as i32),
        })?;
        let dup = |fd: &OwnedFd| {
            fd.try_clone().map(Stdio::from).map_err(|e| Error::Sys {
                op: "dup pty".into(),
                source: e,
            })
        };
        cmd.stdin(dup(&pty.slave)?)
            .stdout(dup(&pty.slave)?)
            .stderr(Stdio::from(pty.slave));
        pty_master = Some(pty.master);
    } else {
        cmd.stdin(opts.stdin)
            .stdout(opts.stdout)
            .stderr(opts.stderr);
    }
    // SAFETY: only async-signal-safe fcntl calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for fd in [cfg_fd, rep_fd] {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut helper = cmd
        .spawn()
        .map_err(|e| Error::io("start sandbox helper", &exe, e))?;
    drop(cfg_r);
    drop(rep_w);
    // Stdio handed to the helper is owned by `cmd`; drop it now so pipes see EOF properly.
    drop(cmd);
    let mut report = BufReader::new(File::from(rep_r));
    {
        let mut w = File::from(cfg_w);
        if let Err(e) = w.write_all(&cfg_json) {
            let _ = helper.kill();
            let _ = helper.wait();
            return Err(Error::Helper(format!(
                "send spec to helper: {e} (does main() call init_if_requested()?)"
            )));
        }
    }
    match read_report(&mut report) {
        Ok(Some(Report::Started { pid })) => {
            // SAFETY: pidfd_open on a pid that is our helper's unreaped child.
            let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            // SAFETY: a new fd we own.
            let pidfd = (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw as i32) });
            let cancel = crate::cancel::register(pid as u32, pidfd.as_ref());
            Ok(Container {
                helper,
                report,
                pid: pid as u32,
                pidfd,
                pty_master,
                state_dir,
                done: false,
                _cancel: cancel,
            })
        }
        Ok(Some(Report::Failed { error })) => {
            let _ = helper.wait();
            Err(Error::Setup(error))
        }
        Ok(Some(other)) => {
            let _ = helper.kill();
            let _ = helper.wait();
            Err(Error::Helper(format!("unexpected report {other:?}")))
        }
        Ok(None) | Err(_) => {
            let st = helper.wait();
            let _ = std::fs::remove_dir_all(&state_dir);
            Err(Error::Helper(format!(
                "helper exited ({st:?}) before starting the container (does main() call rbuild_sandbox::init_if_requested()?)"
            )))
        }
    }
}

impl Container {
    /// The container's stdout pipe, when `RunOptions::stdout` was `Stdio::piped()` (taken once).
    pub fn stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.helper.stdout.take()
    }

    /// The container's stderr pipe, when piped (taken once).
    pub fn stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.helper.stderr.take()
    }

    /// The container's stdin pipe, when piped (taken once).
    pub fn stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.helper.stdin.take()
    }

    /// The pty master when `process.terminal` was set (taken once): read/write it for the
    /// container's terminal; resize it with `TIOCSWINSZ`.
    pub fn pty_master(&mut self) -> Option<OwnedFd> {
        self.pty_master.take()
    }

    /// The host pid of the container's PID 1.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` to the container's PID 1. As for any PID 1, signals other than SIGKILL and
    /// SIGSTOP only act if the program handles them.
    pub fn kill(&mut self, signal: i32) -> Result<()> {
        let r = match &self.pidfd {
            // SAFETY: valid pidfd, no siginfo.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    signal,
                    std::ptr::null::<u8>(),
                    0,
                )
            },
            // SAFETY: plain kill.
            None => (unsafe { libc::kill(self.pid as i32, signal) }) as libc::c_long,
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                return Ok(()); // already gone
            }
            return Err(Error::Sys {
                op: format!("send signal {signal} to container pid {}", self.pid),
                source: e,
            });
        }
        Ok(())
    }

    /// Waits for PID 1 to exit (the kernel then kills the rest of the pid namespace), tears down
    /// cgroups and the mount namespace, and returns how it ended.
    pub fn wait(self) -> Result<ExitStatus> {
        self.wait_outcome().map(|o| o.status)
    }

    /// Like [`Container::wait`], also telling whether the OOM killer struck.
    pub fn wait_outcome(mut self) -> Result<Outcome> {
        self.done = true;
        drop(self.helper.stdin.take());
        let rep = read_report(&mut self.report);
        let st = self.helper.wait();
        let _ = std::fs::remove_dir_all(&self.state_dir);
        match rep? {
            Some(Report::Exited { code, signal, oom }) => {
                let status = match signal {
                    Some(s) => ExitStatus::Signaled(s),
                    None => ExitStatus::Exited(code),
                };
                Ok(Outcome {
                    status,
                    oom_killed: oom,
                })
            }
            Some(Report::Failed { error }) => Err(Error::Helper(error)),
            other => Err(Error::Helper(format!(
                "helper ended ({st:?}) without an exit report: {other:?}"
            ))),
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.kill(libc::SIGKILL);
            let _ = read_report(&mut self.report);
            let _ = self.helper.wait();
            let _ = std::fs::remove_dir_all(&self.state_dir);
        }
    }
}

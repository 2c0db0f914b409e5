//! Start, stop, kill, wait, restart, remove and rename of kept containers.

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rbuild_cache::{ContainerRecord, Store};

use crate::monitor::{MONITOR_MARKER, STOP_MARKER};
use crate::proc::signal_checked;
use crate::state::{get, inspect_state, Status};
use crate::{cerr, io_err, Error};

/// Parses a signal as Docker does: `SIGTERM`, `TERM` or a number.
pub fn parse_signal(s: &str) -> Result<i32, Error> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| {
            cerr(format!(
                "invalid signal: {s} (use a name such as SIGTERM or a number)"
            ))
        })
}

/// What `start` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Started {
    /// The monitor started PID 1 (its host pid).
    Now(u32),
    /// It was already running (or another `start` is starting it): nothing done.
    AlreadyRunning,
}

/// Starts a created or exited container under a new monitor (`rbuild start`, `run -d`) and
/// returns once PID 1 runs. Two concurrent starts start it once: the monitor holds the
/// container's lock, taken here before it is spawned.
pub fn start(store: &Store, name: &str) -> Result<Started, Error> {
    let rec = crate::run::find(store, name)?;
    let lock = match store.lock_container(&rec.name) {
        Ok(l) => l,
        Err(rbuild_cache::Error::Conflict(_)) => return Ok(Started::AlreadyRunning),
        Err(e) => return Err(e.into()),
    };
    let dir = store.container_dir(&rec.name);
    let _ = std::fs::remove_file(dir.join(STOP_MARKER));
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| cerr(format!("pipe: {e}")))?;
    let lock_fd = lock.file().as_raw_fd();
    let ready_fd = ready_w.as_raw_fd();
    let mut cmd = Command::new("/proc/self/exe");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("monitor.log"))
        .map_err(io_err(format!(
            "opening {}",
            dir.join("monitor.log").display()
        )))?;
    cmd.arg0("rbuild-monitor")
        .arg(MONITOR_MARKER)
        .arg(store.root())
        .arg(&rec.name)
        .arg(lock_fd.to_string())
        .arg(ready_fd.to_string())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Its own session: no terminal signals, survives the command that started it.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for fd in [lock_fd, ready_fd] {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(io_err("starting the container monitor (/proc/self/exe)"))?;
    drop(cmd);
    drop(ready_w);
    drop(lock);
    let mut line = String::new();
    let _ = BufReader::new(std::fs::File::from(ready_r)).read_line(&mut line);
    let line = line.trim();
    if let Some(pid) = line.strip_prefix("ok ") {
        // The monitor is not waited for: it outlives this process (re-parented on exit).
        std::mem::forget(child);
        return Ok(Started::Now(pid.parse().unwrap_or(0)));
    }
    let mut child = child;
    let _ = child.wait();
    Err(cerr(match line.strip_prefix("error: ") {
        Some(e) => format!("starting container {}: {e}", rec.name),
        None => format!(
            "the monitor of container {} ended before starting it (see {})",
            rec.name,
            dir.join("monitor.log").display()
        ),
    }))
}

/// Sends `signal` to the container's PID 1 (`rbuild kill`). With `stopping`, the restart policy
/// will not restart it.
pub fn kill(
    store: &Store,
    name: &str,
    signal: i32,
    stopping: bool,
) -> Result<ContainerRecord, Error> {
    let st = get(store, name)?;
    let r = &st.record;
    if !st.status.is_running() {
        return Err(cerr(format!(
            "cannot kill container {}: container is not running",
            r.name
        )));
    }
    if stopping {
        mark_stopping(store, r)?;
    }
    let (Some(pid), Some(start)) = (r.pid, r.pid_start) else {
        return Err(cerr(format!("container {}: no pid recorded", r.name)));
    };
    signal_checked(pid, start, signal);
    crate::state::event(store, "container", "kill", r);
    Ok(r.clone())
}

fn mark_stopping(store: &Store, r: &ContainerRecord) -> Result<(), Error> {
    let p = store.container_dir(&r.name).join(STOP_MARKER);
    std::fs::write(&p, b"").map_err(io_err(format!("writing {}", p.display())))
}

/// `rbuild stop`: the stop signal, then SIGKILL after `timeout` (default: the container's
/// `--stop-timeout`, else 10 s); waits until its monitor has recorded the exit. A container
/// that is not running is left as is.
pub fn stop(store: &Store, name: &str, timeout: Option<u32>) -> Result<ContainerRecord, Error> {
    let st = get(store, name)?;
    let r = st.record.clone();
    if !st.status.is_running() && st.status != Status::Restarting {
        return Ok(r);
    }
    mark_stopping(store, &r)?;
    let conf = crate::run::ContainerConfig::load(store, &r.name).ok();
    let sig = conf
        .as_ref()
        .map(|c| parse_signal(&c.stop_signal))
        .transpose()?
        .unwrap_or(libc::SIGTERM);
    let timeout = timeout
        .or(conf.as_ref().map(|c| c.stop_timeout))
        .unwrap_or(10);
    if r.paused {
        crate::freezer::thaw(&r.id)?;
    }
    if let (Some(pid), Some(start)) = (r.pid, r.pid_start) {
        signal_checked(pid, start, sig);
        let deadline = Instant::now() + Duration::from_secs(timeout.into());
        while crate::proc::alive(pid, start) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        signal_checked(pid, start, libc::SIGKILL);
    }
    wait_unsupervised(store, &r, Duration::from_secs(10))?;
    crate::state::event(store, "container", "stop", &r);
    Ok(crate::run::find(store, &r.id).unwrap_or(r))
}

/// Waits until no monitor holds the container's lock.
fn wait_unsupervised(store: &Store, r: &ContainerRecord, limit: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + limit;
    while store.container_running(&r.name) {
        if Instant::now() > deadline {
            return Err(cerr(format!(
                "container {}: its monitor did not finish within {}s",
                r.name,
                limit.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `rbuild wait`: blocks until the container is no longer running, then returns its exit code.
pub fn wait(store: &Store, name: &str) -> Result<i32, Error> {
    let r = crate::run::find(store, name)?;
    loop {
        let st = inspect_state(store, &crate::run::find(store, &r.id)?);
        if !st.status.is_running()
            && st.status != Status::Restarting
            && !store.container_running(&r.name)
        {
            return Ok(st.record.exit_code.unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `rbuild restart`: stop (if running), then start.
pub fn restart(store: &Store, name: &str, timeout: Option<u32>) -> Result<Started, Error> {
    let r = stop(store, name, timeout)?;
    start(store, &r.id)
}

/// `rbuild rm [-f]`: removes the container and its writable layer. A running one is refused
/// unless `force`, which kills it: its monitor and PID 1, each identified by pid AND process
/// start time (never a process that merely reuses the pid or holds a file with the same inode).
pub fn remove(store: &Store, name: &str, force: bool) -> Result<ContainerRecord, Error> {
    let st = get(store, name)?;
    let r = st.record.clone();
    let busy = st.status.is_running() || st.supervised || store.container_running(&r.name);
    if busy {
        if !force {
            return Err(cerr(format!(
                "cannot remove container {}: container is running; stop it first (or use `rbuild rm -f {}`)",
                r.name, r.name
            )));
        }
        let _ = mark_stopping(store, &r);
        if r.paused {
            let _ = crate::freezer::thaw(&r.id);
        }
        // PID 1 first: its supervisor (a monitor, or a foreground `rbuild run` that must restore
        // the terminal) then records the exit and ends by itself. Only a supervisor that does not
        // is killed.
        if let (Some(p), Some(s)) = (r.pid, r.pid_start) {
            signal_checked(p, s, libc::SIGKILL);
        }
        if wait_unsupervised(store, &r, Duration::from_secs(3)).is_err() {
            if let (Some(p), Some(s)) = (r.monitor_pid, r.monitor_start) {
                signal_checked(p, s, libc::SIGKILL);
            }
            wait_unsupervised(store, &r, Duration::from_secs(5))?;
        }
    }
    store.remove_container(&r.name)?;
    crate::state::event(store, "container", "destroy", &r);
    Ok(r)
}

/// `rbuild rename OLD NEW` (refused while it runs: the monitor keeps using the old path).
pub fn rename(store: &Store, old: &str, new: &str) -> Result<(), Error> {
    let st = get(store, old)?;
    if st.status.is_running() || st.supervised {
        return Err(cerr(format!(
            "cannot rename container {}: it is running; stop it first",
            st.record.name
        )));
    }
    store.rename_container(&st.record.name, new)?;
    let mut r = st.record;
    r.name = new.to_string();
    store.save_container(&r)?;
    crate::state::event(store, "container", "rename", &r);
    Ok(())
}

/// `rbuild pause`/`unpause`: freezes or thaws every process of the container.
pub fn set_paused(store: &Store, name: &str, paused: bool) -> Result<ContainerRecord, Error> {
    let st = get(store, name)?;
    let r = st.record.clone();
    let Some(pid) = st.pid() else {
        return Err(cerr(format!("container {} is not running", r.name)));
    };
    if r.paused == paused {
        return Err(cerr(format!(
            "container {} is {}",
            r.name,
            if paused {
                "already paused"
            } else {
                "not paused"
            }
        )));
    }
    if paused {
        crate::freezer::freeze(&r.id, pid)?;
    } else {
        crate::freezer::thaw(&r.id)?;
    }
    // The monitor may rewrite the record too: re-read, change the one field, write.
    let mut r = crate::run::find(store, &r.id)?;
    r.paused = paused;
    store.save_container(&r)?;
    crate::state::event(
        store,
        "container",
        if paused { "pause" } else { "unpause" },
        &r,
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("usr1").unwrap(), libc::SIGUSR1);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("0").is_err());
    }
}

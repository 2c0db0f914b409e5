//! [`KillSwitch`]: kills every container that a group of threads started, at once.
//!
//! A build runs its steps on worker threads; when one step fails, the others must stop now, not
//! when their commands finish (BuildKit cancels the solve's context, which kills the running
//! processes). A worker [`KillSwitch::enter`]s the build's switch before running a step; every
//! [`crate::spawn`] on that thread then registers the container's PID 1 with the switch until the
//! container has been waited for. [`KillSwitch::cancel`] sends SIGKILL to each registered PID 1:
//! PID 1 of a pid namespace dying makes the kernel kill every other process in it, so the whole
//! process tree goes, and the helper reports the container as killed by signal 9. A spawn on a
//! thread whose switch is already cancelled fails with [`crate::Error::Cancelled`] before anything
//! starts, and one that races with `cancel` is killed as soon as it registers.
//!
//! The switch travels with the thread (a thread-local) rather than through every call, so code
//! between the scheduler and the sandbox (RUN preparation, mounts) needs no change to be
//! cancellable.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

thread_local! {
    static CURRENT: RefCell<Option<KillSwitch>> = const { RefCell::new(None) };
}

/// A set of running containers that can be killed together; cheap to clone (clones share it).
#[derive(Clone, Default)]
pub struct KillSwitch {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for KillSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.lock();
        f.debug_struct("KillSwitch")
            .field("cancelled", &g.cancelled)
            .field("live", &g.live.len())
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    cancelled: bool,
    next: u64,
    live: HashMap<u64, Target>,
}

/// How to reach one container's PID 1.
struct Target {
    pid: u32,
    pidfd: Option<OwnedFd>,
}

impl Target {
    fn kill(&self) {
        match &self.pidfd {
            // SAFETY: a valid pidfd we own; no siginfo. A pidfd cannot name a recycled pid.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<u8>(),
                    0,
                );
            },
            // SAFETY: plain kill. Only without pidfd support (kernels before 5.3): the pid could
            // then be recycled between the container's exit and the end of its registration.
            None => unsafe {
                libc::kill(self.pid as i32, libc::SIGKILL);
            },
        }
    }
}

/// Restores the thread's previous switch when dropped (see [`KillSwitch::enter`]).
pub struct Entered {
    previous: Option<KillSwitch>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        let prev = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = prev);
    }
}

/// A container's membership in a switch; leaving ends it.
pub(crate) struct Registration {
    switch: KillSwitch,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.switch.lock().live.remove(&self.id);
    }
}

impl KillSwitch {
    /// A new switch with no containers, not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the map consistent (single inserts/removes).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes this the current thread's switch until the returned guard is dropped.
    pub fn enter(&self) -> Entered {
        let previous = CURRENT.with(|c| c.borrow_mut().replace(self.clone()));
        Entered { previous }
    }

    /// Kills every registered container (SIGKILL to its PID 1) and every container registered
    /// later; further spawns under this switch fail with [`crate::Error::Cancelled`].
    pub fn cancel(&self) {
        let mut g = self.lock();
        g.cancelled = true;
        for t in g.live.values() {
            t.kill();
        }
    }

    /// Whether [`KillSwitch::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.lock().cancelled
    }

    /// How many containers are registered now.
    pub fn live(&self) -> usize {
        self.lock().live.len()
    }
}

/// Fails when the current thread's switch is cancelled (checked before a container starts).
pub(crate) fn check_current() -> crate::Result<()> {
    let cancelled = CURRENT.with(|c| c.borrow().as_ref().is_some_and(|s| s.is_cancelled()));
    if cancelled {
        return Err(crate::Error::Cancelled);
    }
    Ok(())
}

/// Registers a started container with the current thread's switch, if any; kills it at once when
/// the switch is already cancelled.
pub(crate) fn register(pid: u32, pidfd: Option<&OwnedFd>) -> Option<Registration> {
    let switch = CURRENT.with(|c| c.borrow().clone())?;
    let target = Target {
        pid,
        pidfd: pidfd.and_then(|f| f.try_clone().ok()),
    };
    let id = {
        let mut g = switch.lock();
        if g.cancelled {
            target.kill();
        }
        g.next += 1;
        let id = g.next;
        g.live.insert(id, target);
        id
    };
    Some(Registration { switch, id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enter_sets_and_restores_the_current_switch() {
        let a = KillSwitch::new();
        let b = KillSwitch::new();
        assert!(check_current().is_ok());
        {
            let _ga = a.enter();
            {
                let _gb = b.enter();
                b.cancel();
                assert!(matches!(check_current(), Err(crate::Error::Cancelled)));
            }
            // Back to `a`, which is not cancelled.
            assert!(check_current().is_ok());
        }
        assert!(CURRENT.with(|c| c.borrow().is_none()));
    }

    #[test]
    fn cancel_kills_registered_processes_and_late_ones() {
        let s = KillSwitch::new();
        let _g = s.enter();
        let mut first = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let r1 = register(first.id(), None).unwrap();
        assert_eq!(s.live(), 1);
        s.cancel();
        let st = first.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9));
        drop(r1);
        assert_eq!(s.live(), 0);
        // Registered after the cancel: killed on registration.
        let mut late = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let _r2 = register(late.id(), None).unwrap();
        let st = late.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9));
    }

    #[test]
    fn no_switch_means_no_registration() {
        assert!(register(std::process::id(), None).is_none());
    }
}

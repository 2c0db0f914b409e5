//! # rbuild-sandbox: the isolation core of rbuild
//!
//! Runs one process tree described by an [`oci_spec::runtime::Spec`] in fresh Linux namespaces, with
//! Docker's default isolation, the way runc/youki do, but as a library.
//!
//! ## How a container starts
//! [`spawn`] re-executes the current binary (`/proc/self/exe`, or with an init a sealed `memfd`
//! copy of it, so `/proc/1/exe` is never the host's file) as a small single-threaded **helper**,
//! passing the spec over a pipe. The rbuild binary (and every test binary using [`spawn`]) must call
//! [`init_if_requested`] first thing in `main`, which runs the helper when the process was started as
//! one. Re-exec avoids doing setup after `fork()` in the multithreaded solver (malloc locks).
//!
//! The helper (outside the namespaces) creates the cgroups (limits, and the device rules every
//! container gets: Docker's default device set, on the v1 `devices` controller or as a cgroup v2
//! BPF device program), `unshare`s the pid namespace and forks
//! the container's **PID 1**. That child joins the cgroups, unshares mount/uts/ipc/cgroup (and net,
//! or joins the network namespace the spec names by path)
//! namespaces, makes every mount private, mounts the root (overlayfs through the new mount API, one
//! `lowerdir+` per layer, so hundreds of layers work), `/proc`, a minimal `/dev`, read-only `/sys`,
//! binds `/etc/resolv.conf`, `/etc/hosts`, `/etc/hostname` — every mount point resolved inside the
//! root by `rbuild-fsroot` and every mount built detached, given its attributes recursively
//! (`mount_setattr`) and attached to the resolved descriptor —, `pivot_root`s and detaches the old root,
//! masks Docker's masked paths and makes its read-only paths read-only, sets the hostname, brings up
//! `lo`, applies rlimits, switches user (setgroups/setgid/setuid), reduces capabilities (bounding set
//! too), sets no_new_privs, installs the seccomp filter, marks every fd above 2 close-on-exec and
//! `execve`s the user's program, which therefore is PID 1 itself (as with runc: `echo $$` prints 1).
//! The helper forwards signals, reaps, reads the OOM counter, removes cgroups, mount-point stubs and
//! its state directory, and reports the exit status back over a pipe.
//!
//! A [`KillSwitch`] entered on a thread collects the containers spawned there, so a build can kill
//! every running step at once (SIGKILL to each PID 1 ends its whole pid namespace).
//!
//! Mounts live only in the container's mount namespace: they vanish with its last process, so there
//! is nothing to unmount on the host. [`OverlayMount`] is the exception: it mounts in the caller's
//! namespace (for COPY) and lazily unmounts on drop.

mod cancel;
mod caps;
mod cgroup;
mod container;
mod devices;
mod error;
mod exec;
mod init;
mod mountapi;
mod rootfs;
mod seccomp;
mod spec;
mod stubs;
mod sys;
mod user;

pub use cancel::{Entered, KillSwitch};
pub use cgroup::CGROUP_ENV;
pub use container::{exec, spawn, Container, ExitStatus, Outcome, RunOptions};
pub use error::{Error, Result};
pub use init::init_if_requested;
pub use spec::{
    default_seccomp, default_spec, docker_seccomp, join_network_namespace, set_groups_of, set_init,
    set_no_hostname_file, wants_init, DEFAULT_CAPABILITIES, GROUPS_OF_ANNOTATION, INIT_ANNOTATION,
    MASKED_PATHS, NO_HOSTNAME_FILE_ANNOTATION, PERSONALITY_ALLOWED, READONLY_PATHS,
    SECCOMP_ALLOWED, SECCOMP_ALLOWED_ARCH, SECCOMP_CAP_SYSCALLS,
};
pub use user::resolve_user;

use std::path::{Path, PathBuf};

/// How the container root is made.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Rootfs {
    /// overlayfs: `lower` ordered TOP FIRST (index 0 is the uppermost lower layer), a writable `upper`
    /// and its `work` dir (same filesystem).
    Overlay {
        /// Lower layers, top first.
        lower: Vec<PathBuf>,
        /// The writable layer.
        upper: PathBuf,
        /// overlayfs' work directory, on the upper's filesystem.
        work: PathBuf,
    },
    /// Read-only overlay of lowers only (no upper); an empty read-only root if `lower` is empty.
    OverlayReadOnly {
        /// Lower layers, top first.
        lower: Vec<PathBuf>,
    },
    /// An existing directory used as is (bind-mounted).
    Dir(PathBuf),
}

pub(crate) type RootfsConfig = Rootfs;

/// An overlay mounted in the CALLER's mount namespace (used by COPY to write into a fresh upper
/// directory). Unmounted (lazy detach) on drop.
#[derive(Debug)]
pub struct OverlayMount {
    target: PathBuf,
}

impl OverlayMount {
    /// Mounts an overlay of `lower` (TOP FIRST) with an optional `(upper, work)` at `target`, which
    /// must be an existing directory. Without upper the mount is read-only. With no lower at all an
    /// empty read-only tmpfs is mounted (nothing to show).
    pub fn mount(
        lower: &[PathBuf],
        upper_work: Option<(&Path, &Path)>,
        target: &Path,
    ) -> Result<Self> {
        if lower.is_empty() {
            match upper_work {
                // A lone upper: bind it (writes land in it directly).
                Some((upper, _)) => {
                    nix::mount::mount(
                        Some(upper),
                        target,
                        None::<&str>,
                        nix::mount::MsFlags::MS_BIND,
                        None::<&str>,
                    )
                    .map_err(|e| Error::nix(format!("bind {} on", upper.display()), target, e))?;
                }
                None => {
                    nix::mount::mount(
                        Some("tmpfs"),
                        target,
                        Some("tmpfs"),
                        nix::mount::MsFlags::MS_RDONLY,
                        Some("mode=755"),
                    )
                    .map_err(|e| Error::nix("mount empty tmpfs on", target, e))?;
                }
            }
        } else {
            sys::mount_overlay_new_api(lower, upper_work, target)?;
        }
        Ok(OverlayMount {
            target: target.to_path_buf(),
        })
    }

    /// Where the overlay is mounted.
    pub fn path(&self) -> &Path {
        &self.target
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.target, nix::mount::MntFlags::MNT_DETACH);
    }
}

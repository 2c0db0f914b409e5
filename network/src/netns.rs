//! Persistent network namespaces: a fresh namespace bind-mounted on a file (as `ip netns add`),
//! so netavark can configure it before the container's first process joins it with `setns`.

use crate::error::{io, nix_io, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::path::{Path, PathBuf};

/// Creates an empty network namespace (only a down `lo`) and pins it at `path` (a new file).
pub fn create(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io(format!("create {}", path.display())))?;
    let target: PathBuf = path.to_path_buf();
    // unshare(CLONE_NEWNET) changes only the calling thread's namespace: do it in a thread of its
    // own that ends right after pinning the namespace, so no other thread of this process moves.
    let r = std::thread::spawn(move || -> Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(nix_io("unshare a network namespace"))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(nix_io(format!(
            "bind the network namespace on {}",
            target.display()
        )))
    })
    .join()
    .unwrap_or_else(|_| {
        Err(crate::Error::Invalid(
            "the thread creating the network namespace panicked".into(),
        ))
    });
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r
}

/// Unpins and removes a namespace made by [`create`] (missing: nothing to do). The namespace
/// itself goes when its last process has left.
pub fn remove(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(nix_io(format!("unmount {}", path.display()))(e)),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("remove {}", path.display()))(e)),
    }
}

/// Whether `path` is a pinned network namespace.
pub fn is_pinned(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    // A bind-mounted nsfs file has the nsfs device, unlike the empty file under it.
    match (
        std::fs::metadata(path),
        std::fs::metadata("/proc/self/ns/net"),
    ) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    }
}

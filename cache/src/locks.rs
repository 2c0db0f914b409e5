//! File locks (flock) used for per-key locks and for marking in-progress writes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Takes an exclusive flock on `file`, blocking or not. Returns false when `nonblocking` and busy.
pub(crate) fn flock_exclusive(file: &File, nonblocking: bool) -> io::Result<bool> {
    flock(file, false, nonblocking)
}

/// Takes a shared or exclusive flock on `file`, blocking or not. Returns false when `nonblocking`
/// and busy.
pub(crate) fn flock(file: &File, shared: bool, nonblocking: bool) -> io::Result<bool> {
    let mut op = if shared { libc::LOCK_SH } else { libc::LOCK_EX };
    if nonblocking {
        op |= libc::LOCK_NB;
    }
    loop {
        // SAFETY: flock on a valid open file descriptor owned by `file`.
        let r = unsafe { libc::flock(file.as_raw_fd(), op) };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if nonblocking => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// An exclusive lock on a file under `locks/`, released when dropped (or when the process dies).
#[derive(Debug)]
pub struct KeyLock {
    _file: File,
    path: PathBuf,
}

impl KeyLock {
    pub(crate) fn acquire(path: &Path, wait: bool) -> Result<Option<KeyLock>> {
        let file = open_lock_file(path)?;
        if flock_exclusive(&file, !wait).map_err(Error::io("lock", path))? {
            Ok(Some(KeyLock {
                _file: file,
                path: path.to_path_buf(),
            }))
        } else {
            Ok(None)
        }
    }

    /// The open lock file: a child process that inherits its descriptor holds the lock too (the
    /// lock belongs to the open file description), which is how a container's monitor keeps it.
    pub fn file(&self) -> &File {
        &self._file
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Opens (creating, mode 0600) a lock file.
pub(crate) fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io("open lock", path))
}

/// A shared lock on `locks/snap-<id>`, held by a build or a container for as long as it uses
/// that snapshot (as an overlay lower dir, a COPY source, a cache hit's result). `prune` takes
/// the lock exclusively without waiting before it removes a snapshot (and its layer blob), and
/// leaves alone any snapshot it cannot lock. Released when dropped (or when the process dies).
#[derive(Debug)]
pub struct SnapshotUse {
    _file: File,
}

impl crate::Store {
    fn snapshot_lock_path(&self, id: &crate::SnapshotId) -> PathBuf {
        self.root()
            .join("locks")
            .join(format!("snap-{}", id.as_str()))
    }

    /// Marks snapshot `id` as in use until the guard is dropped. Returns None when the
    /// snapshot is gone (a `prune` removed it just before): the caller treats it as missing.
    pub fn use_snapshot(&self, id: &crate::SnapshotId) -> Result<Option<SnapshotUse>> {
        let path = self.snapshot_lock_path(id);
        let file = open_lock_file(&path)?;
        // Waits only while a prune is deciding about this very snapshot.
        flock(&file, true, false).map_err(Error::io("lock", &path))?;
        // Checked after locking: prune removes a snapshot only while holding the lock
        // exclusively, so a snapshot present now stays until the guard is dropped.
        Ok(self.has_snapshot(id).then_some(SnapshotUse { _file: file }))
    }

    /// Marks snapshot `id` as in use whether or not it is made yet: for a layer recorded with
    /// a reserved snapshot id (kept compressed, see [`crate::Store::put_lazy_layer`]), the lock
    /// keeps `prune` from removing the layer's row and blobs while the build or container that
    /// may make the snapshot lives. The caller checks, after this, that the layer is still there.
    pub fn use_snapshot_id(&self, id: &crate::SnapshotId) -> Result<SnapshotUse> {
        let path = self.snapshot_lock_path(id);
        let file = open_lock_file(&path)?;
        flock(&file, true, false).map_err(Error::io("lock", &path))?;
        Ok(SnapshotUse { _file: file })
    }

    /// Takes the usage lock of `id` exclusively if nobody uses the snapshot (for removing it).
    pub(crate) fn lock_unused_snapshot(&self, id: &crate::SnapshotId) -> Result<Option<KeyLock>> {
        KeyLock::acquire(&self.snapshot_lock_path(id), false)
    }
}

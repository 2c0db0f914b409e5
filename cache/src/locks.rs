//! File locks (flock) used for per-key locks and for marking in-progress writes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
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
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(Error::io("open lock", path))?;
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

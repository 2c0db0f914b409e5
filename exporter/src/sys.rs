//! Thin wrappers over the system calls tar handling needs (xattrs, mknod, timestamps).

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Names of the extended attributes of `p` (not following symlinks).
pub(crate) fn list_xattrs(p: &Path) -> io::Result<Vec<Vec<u8>>> {
    let c = cpath(p)?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: buf is valid for buf.len() bytes; c is a NUL-terminated path.
        let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(xattr_names(&buf[..n as usize]));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => buf.resize(buf.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(vec![]),
            _ => return Err(e),
        }
    }
}

/// `listxattrat(2)` (Linux 6.13), the same number on every architecture since the syscall
/// table was unified; older kernels answer ENOSYS and [`list_xattrs_at`] falls back.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SYS_LISTXATTRAT: libc::c_long = 465;

/// Set once `listxattrat` answered ENOSYS.
static NO_LISTXATTRAT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Names of the extended attributes of entry `name` of the open directory `dir` (not following
/// symlinks), without walking a path: `listxattrat(2)` where the kernel has it, else
/// [`list_xattrs`] of `path` (the same entry's full path). No allocation when there are none.
pub(crate) fn list_xattrs_at(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::CStr,
    path: &Path,
) -> io::Result<Vec<Vec<u8>>> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    if !NO_LISTXATTRAT.load(std::sync::atomic::Ordering::Relaxed) {
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 512];
        // SAFETY: buf is valid for buf.len() bytes; name is NUL-terminated; dir is open.
        let n = unsafe {
            libc::syscall(
                SYS_LISTXATTRAT,
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n >= 0 {
            return Ok(xattr_names(&buf[..n as usize]));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOSYS) => NO_LISTXATTRAT.store(true, std::sync::atomic::Ordering::Relaxed),
            Some(libc::ENOTSUP) => return Ok(vec![]),
            // A longer list: the path-based call sizes its buffer.
            Some(libc::ERANGE) => {}
            _ => return Err(e),
        }
    }
    let _ = (dir, name);
    list_xattrs(path)
}

/// The value of one extended attribute of `p` (not following symlinks); None when absent.
pub(crate) fn get_xattr(p: &Path, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let c = cpath(p)?;
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: buf is valid for buf.len() bytes; c and n are NUL-terminated.
        let r =
            unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if r >= 0 {
            buf.truncate(r as usize);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => buf.resize(buf.len() * 4, 0),
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// Sets an extended attribute on `p` (not following symlinks).
pub(crate) fn set_xattr(p: &Path, name: &OsStr, value: &[u8]) -> io::Result<()> {
    let c = cpath(p)?;
    let n =
        CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: pointers are valid for the given lengths; c and n are NUL-terminated.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Creates a device node or fifo.
pub(crate) fn mknod(
    p: &Path,
    kind: libc::mode_t,
    perm: u32,
    major: u32,
    minor: u32,
) -> io::Result<()> {
    let c = cpath(p)?;
    let dev = libc::makedev(major, minor);
    // SAFETY: c is a NUL-terminated path.
    let r = unsafe { libc::mknod(c.as_ptr(), kind | (perm as libc::mode_t & 0o7777), dev) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets atime and mtime of `p` (seconds), not following symlinks.
pub(crate) fn set_mtime(p: &Path, mtime: i64) -> io::Result<()> {
    let c = cpath(p)?;
    let t = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: c is NUL-terminated; times points to two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Major and minor numbers of a device id.
pub(crate) fn dev_major_minor(rdev: u64) -> (u32, u32) {
    (libc::major(rdev), libc::minor(rdev))
}

/// The names of an xattr list as the kernel returns it (NUL-terminated, one after another).
fn xattr_names(list: &[u8]) -> Vec<Vec<u8>> {
    list.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| s.to_vec())
        .collect()
}

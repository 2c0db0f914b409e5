//! The new mount API (`open_tree`, `fsopen`/`fsconfig`/`fsmount`, `mount_setattr`, `move_mount`).
//!
//! Every mount of the container's tree is built DETACHED, given its attributes (read-only,
//! nosuid, nodev, noexec, atime, propagation) recursively with `mount_setattr(AT_RECURSIVE)`, and
//! only then attached with `move_mount` — onto the descriptor of a target resolved inside the root
//! (`MOVE_MOUNT_T_EMPTY_PATH`), so the target is not looked up again between the check and the
//! mount, and a read-only bind is read-only in every submount it carries (a legacy
//! `MS_BIND|MS_REMOUNT|MS_RDONLY` only changes the top one).

use crate::error::{Error, Result};
use nix::mount::MsFlags;
use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const MOUNT_ATTR_ATIME_MASK: u64 = 0x70;
const MOUNT_ATTR_NOATIME: u64 = 0x10;
const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
const MOUNT_ATTR_NODIRATIME: u64 = 0x80;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// `struct mount_attr` (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Per-mount attributes to set on a detached tree (every mount in it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MountAttrs {
    /// `MOUNT_ATTR_*` bits to set.
    pub set: u64,
    /// `MOUNT_ATTR_*` bits to clear (the atime mask when an atime mode is chosen).
    pub clear: u64,
    /// `MS_PRIVATE`, `MS_SHARED`, `MS_SLAVE` or `MS_UNBINDABLE`; 0 to leave it.
    pub propagation: u64,
}

impl MountAttrs {
    /// The per-mount part of mount(2) `flags` and one propagation type of `propagation`.
    pub(crate) fn from_flags(flags: MsFlags, propagation: MsFlags) -> MountAttrs {
        let mut a = MountAttrs::default();
        for (ms, attr) in [
            (MsFlags::MS_RDONLY, MOUNT_ATTR_RDONLY),
            (MsFlags::MS_NOSUID, MOUNT_ATTR_NOSUID),
            (MsFlags::MS_NODEV, MOUNT_ATTR_NODEV),
            (MsFlags::MS_NOEXEC, MOUNT_ATTR_NOEXEC),
            (MsFlags::MS_NODIRATIME, MOUNT_ATTR_NODIRATIME),
        ] {
            if flags.contains(ms) {
                a.set |= attr;
            }
        }
        if flags.contains(MsFlags::MS_NOATIME) {
            a.set |= MOUNT_ATTR_NOATIME;
            a.clear |= MOUNT_ATTR_ATIME_MASK;
        } else if flags.contains(MsFlags::MS_STRICTATIME) {
            a.set |= MOUNT_ATTR_STRICTATIME;
            a.clear |= MOUNT_ATTR_ATIME_MASK;
        } else if flags.contains(MsFlags::MS_RELATIME) {
            a.clear |= MOUNT_ATTR_ATIME_MASK; // relatime is the mask's value 0
        }
        for p in [
            MsFlags::MS_PRIVATE,
            MsFlags::MS_SLAVE,
            MsFlags::MS_SHARED,
            MsFlags::MS_UNBINDABLE,
        ] {
            if propagation.contains(p) {
                a.propagation = p.bits();
                break;
            }
        }
        a
    }

    /// Read-only with the given extra mount(2) flags (nosuid, nodev, noexec).
    pub(crate) fn read_only(extra: MsFlags) -> MountAttrs {
        MountAttrs::from_flags(MsFlags::MS_RDONLY | extra, MsFlags::empty())
    }

    /// Whether the attributes make the mount read-only.
    #[cfg(test)]
    pub(crate) fn is_read_only(&self) -> bool {
        self.set & MOUNT_ATTR_RDONLY != 0
    }

    fn is_empty(&self) -> bool {
        *self == MountAttrs::default()
    }
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidSpec(format!("path contains a NUL byte: {}", p.display())))
}

fn owned(r: libc::c_long, op: &str, path: &Path) -> Result<OwnedFd> {
    if r < 0 {
        return Err(Error::last_os(op.to_string(), path));
    }
    // SAFETY: the syscall returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// A mount (or tree of mounts) not attached anywhere yet.
#[derive(Debug)]
pub(crate) struct Detached {
    fd: OwnedFd,
}

/// A copy of the mount tree at host `source` (only its top mount unless `recursive`), detached.
pub(crate) fn clone_tree(source: &Path, recursive: bool) -> Result<Detached> {
    let s = cstr(source)?;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: valid NUL-terminated path; flags as documented for open_tree(2).
    let r = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, s.as_ptr(), flags) };
    Ok(Detached {
        fd: owned(r, "open_tree (bind source)", source)?,
    })
}

/// A filesystem context being configured (`fsopen`); [`FsContext::mount`] creates the detached
/// mount.
pub(crate) struct FsContext {
    fd: OwnedFd,
    fstype: String,
}

impl FsContext {
    /// `fsopen(fstype)`.
    pub(crate) fn open(fstype: &str, target: &Path) -> Result<FsContext> {
        let name = CString::new(fstype)
            .map_err(|_| Error::InvalidSpec(format!("filesystem type {fstype:?}")))?;
        // SAFETY: valid NUL-terminated string and flags.
        let r = unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) };
        Ok(FsContext {
            fd: owned(r, &format!("fsopen {fstype} for"), target)?,
            fstype: fstype.to_string(),
        })
    }

    /// Reads the kernel's messages for the context (what `fsconfig` complained about).
    fn log(&self) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        for _ in 0..16 {
            // SAFETY: reading into a valid buffer.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            out.push(String::from_utf8_lossy(&buf[..n as usize]).into_owned());
        }
        if out.is_empty() {
            String::new()
        } else {
            format!(" ({})", out.join("; "))
        }
    }

    fn config(
        &self,
        cmd: libc::c_uint,
        key: Option<&str>,
        value: Option<&[u8]>,
        target: &Path,
    ) -> Result<()> {
        let k = key
            .map(|k| CString::new(k).map_err(|_| Error::InvalidSpec(format!("option {k:?}"))))
            .transpose()?;
        let v = value
            .map(|v| {
                CString::new(v).map_err(|_| {
                    Error::InvalidSpec(format!("option value {}", String::from_utf8_lossy(v)))
                })
            })
            .transpose()?;
        let kp = k.as_ref().map_or(std::ptr::null(), |k| k.as_ptr());
        let vp = v.as_ref().map_or(std::ptr::null(), |v| v.as_ptr());
        // SAFETY: valid fd; key/value NUL-terminated or null as the command requires.
        let r = unsafe { libc::syscall(libc::SYS_fsconfig, self.fd.as_raw_fd(), cmd, kp, vp, 0) };
        if r != 0 {
            let err = std::io::Error::last_os_error();
            let what = match (key, value) {
                (Some(k), Some(v)) => {
                    format!("{} option {k}={}", self.fstype, String::from_utf8_lossy(v))
                }
                (Some(k), None) => format!("{} option {k}", self.fstype),
                _ => format!("create {}", self.fstype),
            };
            return Err(Error::Path {
                op: format!("{what}{} for", self.log()),
                path: target.to_path_buf(),
                source: err,
            });
        }
        Ok(())
    }

    /// `fsconfig(FSCONFIG_SET_STRING, key, value)`.
    pub(crate) fn set_string(&self, key: &str, value: &[u8], target: &Path) -> Result<()> {
        self.config(FSCONFIG_SET_STRING, Some(key), Some(value), target)
    }

    /// Applies mount(2)-style `data` (`k=v,flag,...`) and the superblock part of `flags`.
    pub(crate) fn set_data(&self, data: Option<&str>, flags: MsFlags, target: &Path) -> Result<()> {
        for opt in data.unwrap_or("").split(',').filter(|o| !o.is_empty()) {
            match opt.split_once('=') {
                Some((k, v)) => self.set_string(k, v.as_bytes(), target)?,
                None => self.config(FSCONFIG_SET_FLAG, Some(opt), None, target)?,
            }
        }
        for (ms, name) in [
            (MsFlags::MS_SYNCHRONOUS, "sync"),
            (MsFlags::MS_DIRSYNC, "dirsync"),
            (MsFlags::MS_LAZYTIME, "lazytime"),
        ] {
            if flags.contains(ms) {
                self.config(FSCONFIG_SET_FLAG, Some(name), None, target)?;
            }
        }
        Ok(())
    }

    /// Creates the superblock and a detached mount of it.
    pub(crate) fn mount(self, target: &Path) -> Result<Detached> {
        self.config(FSCONFIG_CMD_CREATE, None, None, target)?;
        // SAFETY: valid fd; no attributes (they are set with mount_setattr afterwards).
        let r =
            unsafe { libc::syscall(libc::SYS_fsmount, self.fd.as_raw_fd(), FSMOUNT_CLOEXEC, 0) };
        Ok(Detached {
            fd: owned(r, &format!("fsmount {} for", self.fstype), target)?,
        })
    }
}

impl Detached {
    /// Sets `attrs` on every mount of the detached tree.
    pub(crate) fn set_attrs(&self, attrs: MountAttrs, shown: &Path) -> Result<()> {
        if attrs.is_empty() {
            return Ok(());
        }
        let a = MountAttr {
            attr_set: attrs.set,
            attr_clr: attrs.clear,
            propagation: attrs.propagation,
            userns_fd: 0,
        };
        // SAFETY: valid fd, empty path with AT_EMPTY_PATH, a valid mount_attr of the given size.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                self.fd.as_raw_fd(),
                c"".as_ptr(),
                (libc::AT_EMPTY_PATH as libc::c_uint) | AT_RECURSIVE,
                &a as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if r != 0 {
            return Err(Error::last_os(
                format!("mount_setattr {attrs:?} (recursive) for"),
                shown,
            ));
        }
        Ok(())
    }

    /// Attaches the tree on `target` (an fd from in-root resolution: no lookup happens) or, without
    /// one, on the path `shown`.
    pub(crate) fn attach(self, target: Option<BorrowedFd<'_>>, shown: &Path) -> Result<()> {
        let path;
        let (dfd, p, flags) = match target {
            Some(fd) => (
                fd.as_raw_fd(),
                c"".as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
            ),
            None => {
                path = cstr(shown)?;
                (libc::AT_FDCWD, path.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH)
            }
        };
        // SAFETY: valid fds and NUL-terminated strings.
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                self.fd.as_raw_fd(),
                c"".as_ptr(),
                dfd,
                p,
                flags,
            )
        };
        if r != 0 {
            return Err(Error::last_os("move_mount to", shown));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_from_flags() {
        let a = MountAttrs::from_flags(
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_BIND | MsFlags::MS_REC,
            MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        );
        assert_eq!(a.set, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID);
        assert_eq!(a.clear, 0);
        assert_eq!(a.propagation, MsFlags::MS_PRIVATE.bits());
        assert!(a.is_read_only());
        let s = MountAttrs::from_flags(MsFlags::MS_STRICTATIME, MsFlags::empty());
        assert_eq!(
            (s.set, s.clear),
            (MOUNT_ATTR_STRICTATIME, MOUNT_ATTR_ATIME_MASK)
        );
        assert!(MountAttrs::from_flags(MsFlags::MS_BIND, MsFlags::empty()).is_empty());
        let ro = MountAttrs::read_only(MsFlags::MS_NODEV);
        assert_eq!(ro.set, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV);
    }
}

//! The raw system calls of the rootfs setup behind a small trait (as youki does), so the mount logic
//! can be unit-tested without root with [`Recorder`], and run for real with [`Linux`].

use crate::error::{Error, Result};
use nix::mount::MsFlags;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The system calls the rootfs setup needs.
pub(crate) trait Sys {
    /// mount(2).
    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()>;
    /// Mounts an overlay (new mount API) or, for a single read-only lower, a read-only bind.
    fn mount_overlay(
        &mut self,
        lower: &[PathBuf],
        upper_work: Option<(&Path, &Path)>,
        target: &Path,
    ) -> Result<()>;
    /// umount2(2).
    fn umount2(&mut self, target: &Path, flags: i32) -> Result<()>;
    /// pivot_root(2).
    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> Result<()>;
    /// chdir(2).
    fn chdir(&mut self, path: &Path) -> Result<()>;
    /// `mkdir -p`; returns the directories it created.
    fn mkdir_all(&mut self, path: &Path) -> Result<Vec<PathBuf>>;
    /// Creates an empty file if nothing exists at `path` (a bind-mount target); true if created.
    fn touch(&mut self, path: &Path) -> Result<bool>;
    /// symlink(2); an existing entry at `link` is left alone.
    fn symlink(&mut self, target: &Path, link: &Path) -> Result<()>;
    /// Whether `path` is a directory (following symlinks).
    fn is_dir(&mut self, path: &Path) -> bool;
    /// Whether anything exists at `path` (following symlinks).
    fn exists(&mut self, path: &Path) -> bool;
    /// `path` (absolute, container view) resolved inside `root`, symlinks followed without escaping.
    fn resolve(&mut self, root: &Path, path: &Path) -> PathBuf;
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidSpec(format!("path contains a NUL byte: {}", p.display())))
}

/// The real system calls.
pub(crate) struct Linux;

impl Sys for Linux {
    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        nix::mount::mount(source, target, fstype, flags, data).map_err(|e| {
            let what = fstype.unwrap_or(if flags.contains(MsFlags::MS_BIND) {
                "bind"
            } else {
                ""
            });
            let src = source
                .map(|s| format!(" {}", s.display()))
                .unwrap_or_default();
            Error::nix(
                format!("mount {what}{src} (flags {:#x}) on", flags.bits()),
                target,
                e,
            )
        })
    }

    fn mount_overlay(
        &mut self,
        lower: &[PathBuf],
        upper_work: Option<(&Path, &Path)>,
        target: &Path,
    ) -> Result<()> {
        mount_overlay_new_api(lower, upper_work, target)
    }

    fn umount2(&mut self, target: &Path, flags: i32) -> Result<()> {
        let c = cstr(target)?;
        // SAFETY: valid NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), flags) } != 0 {
            return Err(Error::last_os("umount", target));
        }
        Ok(())
    }

    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> Result<()> {
        let a = cstr(new_root)?;
        let b = cstr(put_old)?;
        // SAFETY: valid NUL-terminated paths.
        if unsafe { libc::syscall(libc::SYS_pivot_root, a.as_ptr(), b.as_ptr()) } != 0 {
            return Err(Error::last_os("pivot_root", new_root));
        }
        Ok(())
    }

    fn chdir(&mut self, path: &Path) -> Result<()> {
        std::env::set_current_dir(path).map_err(|e| Error::io("chdir", path, e))
    }

    fn mkdir_all(&mut self, path: &Path) -> Result<Vec<PathBuf>> {
        let mut missing = Vec::new();
        let mut p = Some(path);
        while let Some(d) = p {
            if d.as_os_str().is_empty() || std::fs::symlink_metadata(d).is_ok() {
                break;
            }
            missing.push(d.to_path_buf());
            p = d.parent();
        }
        std::fs::create_dir_all(path).map_err(|e| Error::io("mkdir", path, e))?;
        missing.reverse();
        Ok(missing)
    }

    fn touch(&mut self, path: &Path) -> Result<bool> {
        if std::fs::symlink_metadata(path).is_ok() {
            return Ok(false);
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io("create", path, e))?;
        Ok(true)
    }

    fn symlink(&mut self, target: &Path, link: &Path) -> Result<()> {
        match std::os::unix::fs::symlink(target, link) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(Error::io("symlink", link, e)),
        }
    }

    fn is_dir(&mut self, path: &Path) -> bool {
        path.is_dir()
    }

    fn exists(&mut self, path: &Path) -> bool {
        path.exists()
    }

    fn resolve(&mut self, root: &Path, path: &Path) -> PathBuf {
        crate::rootfs::secure_join(root, path)
    }
}

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// Reads the kernel's messages for a filesystem context (what `fsconfig` complained about).
fn fs_context_log(fd: &OwnedFd) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    for _ in 0..16 {
        // SAFETY: reading into a valid buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
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

fn fsconfig_string(fd: &OwnedFd, key: &str, value: &Path, target: &Path) -> Result<()> {
    let k = CString::new(key).map_err(|_| Error::InvalidSpec(key.to_string()))?;
    let v = cstr(value)?;
    // SAFETY: valid fd and NUL-terminated strings.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fd.as_raw_fd(),
            FSCONFIG_SET_STRING,
            k.as_ptr(),
            v.as_ptr(),
            0,
        )
    };
    if r != 0 {
        let err = std::io::Error::last_os_error();
        return Err(Error::Path {
            op: format!(
                "overlay option {key}={}{} for",
                value.display(),
                fs_context_log(fd)
            ),
            path: target.to_path_buf(),
            source: err,
        });
    }
    Ok(())
}

/// Mounts an overlay at `target` with the new mount API: one `lowerdir+` per layer (TOP FIRST), so the
/// number of layers is not limited by the one-page limit of mount(2)'s option string. Without an
/// upper the mount is read-only; a single read-only lower is bind-mounted read-only instead (overlayfs
/// wants two lowers without an upper); no lower at all is an error for the caller to avoid.
pub(crate) fn mount_overlay_new_api(
    lower: &[PathBuf],
    upper_work: Option<(&Path, &Path)>,
    target: &Path,
) -> Result<()> {
    if lower.is_empty() {
        return Err(Error::InvalidSpec(format!(
            "overlay at {} needs at least one lower directory",
            target.display()
        )));
    }
    if upper_work.is_none() && lower.len() == 1 {
        let mut l = Linux;
        l.mount(
            Some(&lower[0]),
            target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        return l.mount(
            None,
            target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        );
    }
    let name = CString::new("overlay").expect("static");
    // SAFETY: valid string, flags.
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) };
    if fd < 0 {
        return Err(Error::last_os("fsopen overlay for", target));
    }
    // SAFETY: fsopen returned a new fd we own.
    let fs = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    for l in lower {
        fsconfig_string(&fs, "lowerdir+", l, target)?;
    }
    if let Some((upper, work)) = upper_work {
        fsconfig_string(&fs, "upperdir", upper, target)?;
        fsconfig_string(&fs, "workdir", work, target)?;
    }
    // SAFETY: valid fd; null key/value for CMD_CREATE.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_char>(),
            0,
        )
    };
    if r != 0 {
        let err = std::io::Error::last_os_error();
        return Err(Error::Path {
            op: format!(
                "create overlay ({} lowers){} for",
                lower.len(),
                fs_context_log(&fs)
            ),
            path: target.to_path_buf(),
            source: err,
        });
    }
    let attrs = if upper_work.is_none() {
        MOUNT_ATTR_RDONLY
    } else {
        0
    };
    // SAFETY: valid fd.
    let m = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) };
    if m < 0 {
        return Err(Error::last_os("fsmount overlay for", target));
    }
    // SAFETY: fsmount returned a new fd we own.
    let mnt = unsafe { OwnedFd::from_raw_fd(m as i32) };
    let t = cstr(target)?;
    let empty = CString::new("").expect("static");
    // SAFETY: valid fds and strings.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(Error::last_os("move_mount overlay to", target));
    }
    Ok(())
}

/// One recorded call of [`Recorder`].
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Call {
    Mount {
        source: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Overlay {
        lower: Vec<PathBuf>,
        upper: Option<PathBuf>,
        target: PathBuf,
    },
    Umount(PathBuf, i32),
    PivotRoot(PathBuf, PathBuf),
    Chdir(PathBuf),
    Mkdir(PathBuf),
    Touch(PathBuf),
    Symlink(PathBuf, PathBuf),
}

/// A test double that records every call and touches nothing.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Recorder {
    pub calls: Vec<Call>,
    /// Paths that `is_dir` reports as directories.
    pub dirs: Vec<PathBuf>,
    /// Paths that `exists` reports as present.
    pub existing: Vec<PathBuf>,
}

#[cfg(test)]
impl Sys for Recorder {
    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        self.calls.push(Call::Mount {
            source: source.map(Path::to_path_buf),
            target: target.to_path_buf(),
            fstype: fstype.map(String::from),
            flags,
            data: data.map(String::from),
        });
        Ok(())
    }
    fn mount_overlay(
        &mut self,
        lower: &[PathBuf],
        upper_work: Option<(&Path, &Path)>,
        target: &Path,
    ) -> Result<()> {
        self.calls.push(Call::Overlay {
            lower: lower.to_vec(),
            upper: upper_work.map(|(u, _)| u.to_path_buf()),
            target: target.to_path_buf(),
        });
        Ok(())
    }
    fn umount2(&mut self, target: &Path, flags: i32) -> Result<()> {
        self.calls.push(Call::Umount(target.to_path_buf(), flags));
        Ok(())
    }
    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> Result<()> {
        self.calls.push(Call::PivotRoot(
            new_root.to_path_buf(),
            put_old.to_path_buf(),
        ));
        Ok(())
    }
    fn chdir(&mut self, path: &Path) -> Result<()> {
        self.calls.push(Call::Chdir(path.to_path_buf()));
        Ok(())
    }
    fn mkdir_all(&mut self, path: &Path) -> Result<Vec<PathBuf>> {
        self.calls.push(Call::Mkdir(path.to_path_buf()));
        Ok(vec![])
    }
    fn touch(&mut self, path: &Path) -> Result<bool> {
        self.calls.push(Call::Touch(path.to_path_buf()));
        Ok(true)
    }
    fn symlink(&mut self, target: &Path, link: &Path) -> Result<()> {
        self.calls
            .push(Call::Symlink(target.to_path_buf(), link.to_path_buf()));
        Ok(())
    }
    fn is_dir(&mut self, path: &Path) -> bool {
        self.dirs.iter().any(|d| d == path)
    }
    fn exists(&mut self, path: &Path) -> bool {
        self.existing.iter().any(|d| d == path)
    }
    fn resolve(&mut self, root: &Path, path: &Path) -> PathBuf {
        root.join(path.strip_prefix("/").unwrap_or(path))
    }
}

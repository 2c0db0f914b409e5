//! The raw system calls of the rootfs setup behind a small trait (as youki does), so the mount logic
//! can be unit-tested without root with [`Recorder`], and run for real with [`Linux`].
//!
//! Paths inside the container's root are never joined onto the root and handed to the host: the
//! real implementation resolves them with `rbuild-fsroot` (openat2 `RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS`, `ELOOP` after too many links) into a [`Target`] holding the descriptor,
//! creates what is missing relative to it, and mounts onto that descriptor with `move_mount`.

use crate::error::{Error, Result};
use crate::mountapi::{self, FsContext, MountAttrs};
use nix::mount::MsFlags;
use rbuild_fsroot::{Resolved, Root};
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Where a mount goes: a descriptor found by in-root resolution (the mount goes through it, so
/// nothing is looked up again between the check and the mount), or a plain path (the container's
/// own tree after `pivot_root`, and the recorder's).
#[derive(Debug)]
pub(crate) struct Target {
    /// The path shown in messages and recorded by [`Recorder`] (root joined with the container
    /// path for in-root targets).
    pub shown: PathBuf,
    fd: Option<Resolved>,
}

impl Target {
    /// A target named by a plain path.
    pub(crate) fn path(p: impl Into<PathBuf>) -> Target {
        Target {
            shown: p.into(),
            fd: None,
        }
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd())
    }
}

/// The system calls the rootfs setup needs.
pub(crate) trait Sys {
    /// mount(2) on a trusted path (the root directory itself, `/`, masked paths after pivot_root).
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
    /// `path` (container view) resolved inside `root` as a directory, created (0755, parents too)
    /// when missing. Returns it and the container paths of the directories it created.
    fn dir_target(&mut self, root: &Path, path: &Path) -> Result<(Target, Vec<PathBuf>)>;
    /// `path` resolved inside `root` as a file mount point: an empty file is created (and its
    /// parents) when nothing is there. Returns it and the container paths it created.
    fn file_target(&mut self, root: &Path, path: &Path) -> Result<(Target, Vec<PathBuf>)>;
    /// Bind-mounts the host path `source` (its submounts too when `recursive`) on `target`,
    /// `attrs` set on every mount of the copy before it is attached.
    fn bind(
        &mut self,
        source: &Path,
        target: &Target,
        recursive: bool,
        attrs: MountAttrs,
    ) -> Result<()>;
    /// Mounts a new `fstype` filesystem on `target`: `flags` as mount(2)'s (per-mount ones become
    /// mount attributes), `data` as mount(2)'s option string, then `propagation`.
    fn mount_fs(
        &mut self,
        fstype: &str,
        source: &Path,
        target: &Target,
        flags: MsFlags,
        data: Option<&str>,
        propagation: MsFlags,
    ) -> Result<()>;
    /// symlink(2) named `name` in the directory `dir`; an existing entry is left alone.
    fn symlink_in(&mut self, dir: &Target, name: &str, link_target: &Path) -> Result<()>;
    /// Whether `path` is a directory (following symlinks).
    fn is_dir(&mut self, path: &Path) -> bool;
    /// Whether anything exists at `path` (following symlinks).
    fn exists(&mut self, path: &Path) -> bool;
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidSpec(format!("path contains a NUL byte: {}", p.display())))
}

/// `root` joined with the container path `path` (for messages only).
pub(crate) fn shown(root: &Path, path: &Path) -> PathBuf {
    let rel: PathBuf = path
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::Prefix(_)))
        .collect();
    root.join(rel)
}

fn resolve_err(what: &str, path: &Path, e: rbuild_fsroot::Error) -> Error {
    Error::Resolve {
        what: format!("{what} {}", path.display()),
        source: e,
    }
}

/// The directory prefixes of `path`: `/a`, `/a/b`, ... (`..` kept as written).
fn prefixes(path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut p = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => p.push(n),
            Component::ParentDir => p.push(".."),
            _ => continue,
        }
        out.push(p.clone());
    }
    out
}

/// In-root resolution with the bookkeeping of what was created, for [`Linux`].
struct InRoot {
    root: Root,
}

impl InRoot {
    fn open(root: &Path) -> Result<InRoot> {
        let root = Root::open(root).map_err(|e| resolve_err("open the container root", root, e))?;
        Ok(InRoot { root })
    }

    /// The container path of `r`: where it really is, every link followed.
    fn container_path(&self, r: &Resolved) -> Option<PathBuf> {
        self.root.inner_path(r).ok()
    }

    fn mkdir(&self, path: &Path) -> Result<(Resolved, Vec<PathBuf>)> {
        let missing: Vec<PathBuf> = prefixes(path)
            .into_iter()
            .filter(|p| {
                matches!(
                    self.root.resolve(p),
                    Err(rbuild_fsroot::Error::NotFound { .. })
                )
            })
            .collect();
        let dir = self
            .root
            .mkdir_all(path, 0o755, None)
            .map_err(|e| resolve_err("create the mount point", path, e))?;
        let mut created = Vec::new();
        for p in missing {
            if let Some(c) = self
                .root
                .resolve(&p)
                .ok()
                .and_then(|r| self.container_path(&r))
            {
                if !created.contains(&c) {
                    created.push(c);
                }
            }
        }
        Ok((dir, created))
    }

    fn touch(&self, path: &Path) -> Result<(Resolved, Vec<PathBuf>)> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        let (_, mut created) = self.mkdir(parent)?;
        match self.root.resolve(path) {
            Ok(r) => return Ok((r, created)),
            Err(rbuild_fsroot::Error::NotFound { .. }) => {}
            Err(e) => return Err(resolve_err("resolve the mount point", path, e)),
        }
        let flags =
            nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_NOCTTY;
        drop(
            self.root
                .open_file(path, flags, 0o644)
                .map_err(|e| resolve_err("create the mount point", path, e))?,
        );
        let r = self
            .root
            .resolve(path)
            .map_err(|e| resolve_err("resolve the mount point", path, e))?;
        if let Some(c) = self.container_path(&r) {
            created.push(c);
        }
        Ok((r, created))
    }
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

    fn dir_target(&mut self, root: &Path, path: &Path) -> Result<(Target, Vec<PathBuf>)> {
        let (fd, created) = InRoot::open(root)?.mkdir(path)?;
        Ok((
            Target {
                shown: shown(root, path),
                fd: Some(fd),
            },
            created,
        ))
    }

    fn file_target(&mut self, root: &Path, path: &Path) -> Result<(Target, Vec<PathBuf>)> {
        let (fd, created) = InRoot::open(root)?.touch(path)?;
        Ok((
            Target {
                shown: shown(root, path),
                fd: Some(fd),
            },
            created,
        ))
    }

    fn bind(
        &mut self,
        source: &Path,
        target: &Target,
        recursive: bool,
        attrs: MountAttrs,
    ) -> Result<()> {
        let tree = mountapi::clone_tree(source, recursive)?;
        tree.set_attrs(attrs, &target.shown)?;
        tree.attach(target.fd(), &target.shown)
    }

    fn mount_fs(
        &mut self,
        fstype: &str,
        source: &Path,
        target: &Target,
        flags: MsFlags,
        data: Option<&str>,
        propagation: MsFlags,
    ) -> Result<()> {
        let fs = FsContext::open(fstype, &target.shown)?;
        fs.set_string("source", source.as_os_str().as_bytes(), &target.shown)?;
        fs.set_data(data, flags, &target.shown)?;
        let m = fs.mount(&target.shown)?;
        m.set_attrs(MountAttrs::from_flags(flags, propagation), &target.shown)?;
        m.attach(target.fd(), &target.shown)
    }

    fn symlink_in(&mut self, dir: &Target, name: &str, link_target: &Path) -> Result<()> {
        let r = match dir.fd() {
            Some(fd) => nix::unistd::symlinkat(link_target, fd, name),
            None => {
                nix::unistd::symlinkat(link_target, nix::fcntl::AT_FDCWD, &dir.shown.join(name))
            }
        };
        match r {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
            Err(e) => Err(Error::nix("symlink", dir.shown.join(name), e)),
        }
    }

    fn is_dir(&mut self, path: &Path) -> bool {
        path.is_dir()
    }

    fn exists(&mut self, path: &Path) -> bool {
        path.exists()
    }
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
        let tree = mountapi::clone_tree(&lower[0], true)?;
        tree.set_attrs(MountAttrs::read_only(MsFlags::empty()), target)?;
        return tree.attach(None, target);
    }
    let fs = FsContext::open("overlay", target)?;
    for l in lower {
        fs.set_string("lowerdir+", l.as_os_str().as_bytes(), target)?;
    }
    if let Some((upper, work)) = upper_work {
        fs.set_string("upperdir", upper.as_os_str().as_bytes(), target)?;
        fs.set_string("workdir", work.as_os_str().as_bytes(), target)?;
    }
    let m = fs.mount(target)?;
    if upper_work.is_none() {
        m.set_attrs(MountAttrs::read_only(MsFlags::empty()), target)?;
    }
    m.attach(None, target)
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
    DirTarget(PathBuf),
    FileTarget(PathBuf),
    Bind {
        source: PathBuf,
        target: PathBuf,
        recursive: bool,
        attrs: MountAttrs,
    },
    Fs {
        fstype: String,
        source: PathBuf,
        target: PathBuf,
        flags: MsFlags,
        data: Option<String>,
        propagation: MsFlags,
    },
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
    fn dir_target(&mut self, root: &Path, path: &Path) -> Result<(Target, Vec<PathBuf>)> {
        let t = Target::path(shown(root, path));
        self.calls.push(Call::DirTarget(t.shown.clone()));
        Ok((t, vec![]))
    }
    fn file_target(&mut self, root: &Path, path: &Path) -> Result<(Target, Vec<PathBuf>)> {
        let t = Target::path(shown(root, path));
        self.calls.push(Call::FileTarget(t.shown.clone()));
        Ok((t, vec![path.to_path_buf()]))
    }
    fn bind(
        &mut self,
        source: &Path,
        target: &Target,
        recursive: bool,
        attrs: MountAttrs,
    ) -> Result<()> {
        self.calls.push(Call::Bind {
            source: source.to_path_buf(),
            target: target.shown.clone(),
            recursive,
            attrs,
        });
        Ok(())
    }
    fn mount_fs(
        &mut self,
        fstype: &str,
        source: &Path,
        target: &Target,
        flags: MsFlags,
        data: Option<&str>,
        propagation: MsFlags,
    ) -> Result<()> {
        self.calls.push(Call::Fs {
            fstype: fstype.to_string(),
            source: source.to_path_buf(),
            target: target.shown.clone(),
            flags,
            data: data.map(String::from),
            propagation,
        });
        Ok(())
    }
    fn symlink_in(&mut self, dir: &Target, name: &str, link_target: &Path) -> Result<()> {
        self.calls.push(Call::Symlink(
            link_target.to_path_buf(),
            dir.shown.join(name),
        ));
        Ok(())
    }
    fn is_dir(&mut self, path: &Path) -> bool {
        self.dirs.iter().any(|d| d == path)
    }
    fn exists(&mut self, path: &Path) -> bool {
        self.existing.iter().any(|d| d == path)
    }
}

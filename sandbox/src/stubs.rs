//! Removal of the mount-point stubs a container's setup created in its upper layer.

use crate::Rootfs;
use std::path::{Path, PathBuf};

/// Removes the mount-point stubs setup created in the upper layer if they are still empty, so a
/// RUN step's layer does not record `/etc/hosts`, `/dev/null`, `/proc`... it never made.
///
/// The step ran arbitrary code on that upper directory: it may have replaced a stub's parent with
/// a symlink (to `/`, to a host path). So nothing here is a joined host path: each stub's parent is
/// resolved inside the upper directory by the kernel (`rbuild-fsroot`) and used only if reached
/// without any symlink, and the stub is examined and removed relative to that descriptor
/// (`fstatat`/`unlinkat` with no-follow semantics).
pub(crate) fn remove_stubs(rootfs: &Rootfs, stubs: &[PathBuf]) {
    let Rootfs::Overlay { upper, lower, .. } = rootfs else {
        return;
    };
    let Some(up) = Upper::open(upper) else {
        return;
    };
    let mut parents: Vec<PathBuf> = Vec::new();
    for s in stubs.iter().rev() {
        if up.remove_if_stub(s) {
            parents.extend(
                s.ancestors()
                    .skip(1)
                    .filter(|a| *a != Path::new("/") && !a.as_os_str().is_empty())
                    .map(Path::to_path_buf),
            );
        }
    }
    // Directories copied up only to hold a stub: drop them when empty and identical (mode, owner)
    // to the lower directory they came from.
    parents.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    parents.dedup();
    let lowers: Vec<rbuild_fsroot::Root> = lower
        .iter()
        .filter_map(|l| rbuild_fsroot::Root::open(l).ok())
        .collect();
    for p in parents {
        let Some(lm) = lowers
            .iter()
            .find_map(|l| l.resolve_nofollow(&p).ok()?.metadata().ok())
        else {
            continue;
        };
        up.remove_if_copied_up(&p, &lm);
    }
}

/// The upper directory of a finished container, looked at without following anything the step
/// may have planted.
struct Upper {
    root: rbuild_fsroot::Root,
}

impl Upper {
    fn open(upper: &Path) -> Option<Upper> {
        let root = rbuild_fsroot::Root::open(upper).ok()?;
        Some(Upper { root })
    }

    /// The directory holding the container path `p` and `p`'s name, when that directory is
    /// reached without following a symlink (it really is at `p`'s parent inside the upper dir).
    fn parent_of(&self, p: &Path) -> Option<(rbuild_fsroot::Resolved, std::ffi::OsString)> {
        let name = p.file_name()?.to_os_string();
        let parent = p.parent()?;
        let dir = self.root.resolve(parent).ok()?;
        (self.root.inner_path(&dir).ok()? == parent).then_some((dir, name))
    }

    /// Removes `p` when it is an empty directory or an empty regular file; true if removed.
    fn remove_if_stub(&self, p: &Path) -> bool {
        use nix::sys::stat::{fstatat, SFlag};
        use nix::unistd::{unlinkat, UnlinkatFlags};
        let Some((dir, name)) = self.parent_of(p) else {
            return false;
        };
        let Ok(st) = fstatat(
            &dir,
            name.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) else {
            return false;
        };
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        let how = if kind == SFlag::S_IFDIR {
            UnlinkatFlags::RemoveDir // fails (fine) unless empty
        } else if kind == SFlag::S_IFREG && st.st_size == 0 {
            UnlinkatFlags::NoRemoveDir
        } else {
            return false;
        };
        unlinkat(&dir, name.as_os_str(), how).is_ok()
    }

    /// Removes the directory `p` if it is empty, not opaque, and has the mode and owner of the
    /// lower directory `lower` (it was copied up only to hold a stub).
    fn remove_if_copied_up(&self, p: &Path, lower: &std::fs::Metadata) {
        use nix::fcntl::{AtFlags, OFlag};
        use nix::sys::stat::{fstatat, Mode, SFlag};
        use std::os::unix::fs::MetadataExt;
        let Some((dir, name)) = self.parent_of(p) else {
            return;
        };
        let Ok(st) = fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
            return;
        };
        let is_dir = st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits();
        let same = is_dir
            && lower.is_dir()
            && st.st_mode == lower.mode()
            && st.st_uid == lower.uid()
            && st.st_gid == lower.gid();
        if !same {
            return;
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let Ok(fd) = nix::fcntl::openat(&dir, name.as_os_str(), flags, Mode::empty()) else {
            return;
        };
        // SAFETY: size query with a null buffer on our own descriptor.
        let opaque = unsafe {
            libc::fgetxattr(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                c"trusted.overlay.opaque".as_ptr(),
                std::ptr::null_mut(),
                0,
            )
        } >= 0;
        if !opaque {
            let _ = nix::unistd::unlinkat(
                &dir,
                name.as_os_str(),
                nix::unistd::UnlinkatFlags::RemoveDir,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stubs_removed_only_inside_the_upper_dir() {
        let t = tempfile::tempdir().unwrap();
        let (upper, lower, victim) = (t.path().join("u"), t.path().join("l"), t.path().join("v"));
        for d in [
            upper.join("a/old/c"),
            upper.join("etc"),
            upper.join("keep"),
            lower.join("etc"),
            victim.join("c"),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(victim.join("hosts"), "").unwrap();
        std::fs::write(upper.join("etc/hosts"), "").unwrap();
        // The step moved /a/b away and linked it, and /f, to the host directory; /v -> /.
        std::os::unix::fs::symlink(&victim, upper.join("a/b")).unwrap();
        std::os::unix::fs::symlink(&victim, upper.join("f")).unwrap();
        std::os::unix::fs::symlink("/", upper.join("v")).unwrap();
        let rootfs = Rootfs::Overlay {
            lower: vec![lower.clone()],
            upper: upper.clone(),
            work: t.path().join("w"),
        };
        let stubs: Vec<PathBuf> = ["/a", "/a/b", "/a/b/c", "/f/hosts", "/v/keep", "/etc/hosts"]
            .iter()
            .map(PathBuf::from)
            .collect();
        remove_stubs(&rootfs, &stubs);
        assert!(victim.join("c").is_dir(), "host directory removed");
        assert!(victim.join("hosts").is_file(), "host file removed");
        assert!(
            upper.join("keep").is_dir(),
            "the step's /keep removed through /v -> /"
        );
        assert!(upper.join("a/old/c").is_dir());
        // A real stub goes, and its parent copied up only to hold it (same mode as the lower).
        assert!(!upper.join("etc/hosts").exists());
        assert!(!upper.join("etc").exists());
    }
}

//! Putting a finished output file (`--output type=oci|docker|tar,dest=F`, `save -o F`) in
//! place: renamed over `F`, so `F` is either the old file or the whole new one, never a part.
//!
//! Renaming over an existing `F` frees the old file's blocks in the `rename` call itself when
//! nothing else holds it; on a filesystem mounted with `discard` (this CI machine's ext4) that
//! waits for the disk's discards: 15-30 ms for a 10 MB archive, a sixth of a warm-cache build.
//! So the old file is held open across the rename and its last reference is handed to a child
//! process that does nothing but wait for this process to end (a pipe whose write end only we
//! hold) and exit; the blocks are freed in the child, after us. The child keeps no other
//! descriptor (standard output and error included, so whoever reads ours sees them close when
//! we exit). If anything of that fails the file is freed here, as a plain rename would.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Renames `tmp` over `dest` (see the module).
pub(crate) fn replace(tmp: &Path, dest: &Path) -> io::Result<()> {
    // O_PATH | O_NOFOLLOW holds whatever `dest` is (a symlink is replaced, not followed).
    let old = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(dest)
        .ok();
    std::fs::rename(tmp, dest)?;
    if let Some(old) = old {
        let last = old.metadata().is_ok_and(|m| m.is_file() && m.nlink() == 0);
        if last {
            release_after_exit(old.into());
        }
    }
    Ok(())
}

/// Hands `fd`'s reference to a child that closes it once this process has ended.
fn release_after_exit(fd: OwnedFd) {
    let mut p = [-1; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return;
    }
    let (r, w) = (p[0], p[1]);
    // SAFETY: the child runs only async-signal-safe system calls (close_range, read, _exit)
    // before it exits: nothing that could need a lock another thread held at the fork.
    match unsafe { libc::fork() } {
        0 => unsafe { child(fd.as_raw_fd(), r) },
        -1 => {
            // SAFETY: both are ours; `fd` is then closed here, which frees the file now.
            unsafe {
                libc::close(r);
                libc::close(w);
            }
        }
        _ => {
            // The read end is the child's; the write end stays open (close-on-exec) until we
            // exit, which is what the child waits for. Our `fd` is closed on return: the
            // child's copy keeps the file.
            // SAFETY: `r` is ours and used no further here.
            unsafe { libc::close(r) };
        }
    }
}

/// The child of [`release_after_exit`]: keeps only `keep` and `wait`, blocks until `wait`'s
/// write end is closed everywhere (our exit) and exits, closing `keep` last.
unsafe fn child(keep: i32, wait: i32) -> ! {
    let (lo, hi) = (keep.min(wait), keep.max(wait));
    // SAFETY (whole function): raw system calls on our own descriptor table.
    unsafe {
        libc::setsid();
        if lo > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, (lo - 1) as u32, 0u32);
        }
        if hi > lo + 1 {
            libc::syscall(
                libc::SYS_close_range,
                (lo + 1) as u32,
                (hi - 1) as u32,
                0u32,
            );
        }
        libc::syscall(libc::SYS_close_range, (hi + 1) as u32, u32::MAX, 0u32);
        // Nothing is ever written: the read ends at end of file (our exit) or on an error
        // other than an interruption.
        let mut b = 0u8;
        while libc::read(wait, (&mut b as *mut u8).cast(), 1) < 0
            && *libc::__errno_location() == libc::EINTR
        {}
        libc::_exit(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    #[test]
    fn replaces_a_file_a_symlink_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.tar");
        let tmp = dir.path().join(".out.tar.tmp");
        // Nothing there yet.
        std::fs::write(&tmp, b"one").unwrap();
        replace(&tmp, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"one");
        // An old file, kept by nobody else: replaced; the child frees it after we exit.
        let keep = File::open(&dest).unwrap();
        drop(keep);
        std::fs::write(&tmp, b"two").unwrap();
        replace(&tmp, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"two");
        assert!(!tmp.exists());
        // A symlink at dest is replaced, its target left alone.
        let target = dir.path().join("target");
        std::fs::write(&target, b"target").unwrap();
        std::fs::remove_file(&dest).unwrap();
        std::os::unix::fs::symlink(&target, &dest).unwrap();
        std::fs::write(&tmp, b"three").unwrap();
        replace(&tmp, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"three");
        assert!(!std::fs::symlink_metadata(&dest).unwrap().is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"target");
    }
}

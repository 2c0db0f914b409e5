//! Paths resolved inside their own root, by the kernel.
//!
//! Every path rbuild takes from an image, a stage, the build context, a tar, a volume or a cache
//! mount is untrusted: a symlink in it may point anywhere. This crate is the one place such a path
//! becomes a file. [`Root`] holds an `O_PATH` descriptor of a directory that acts as `/`;
//! [`Root::resolve`] asks the kernel to walk the path with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)`, so an absolute symlink or a `..` restarts or stops at that root, the
//! way BuildKit follows links inside a stage (`/h -> /` means the stage's own root), and a
//! `/proc/self/fd/N`-style magic link is refused. Too many links fail with `ELOOP`; nothing falls
//! back to an unresolved path.
//!
//! The result is a [`Resolved`] descriptor, not a string: callers read, write or mount through it
//! ([`Resolved::proc_path`] gives `/proc/self/fd/N`, which the kernel maps to the opened object
//! without walking the path again), so nothing is re-resolved between the check and the use.
//!
//! ```no_run
//! let root = rbuild_fsroot::Root::open("/var/lib/rbuild/snapshots/abcd/fs").unwrap();
//! let f = root.resolve("/h/etc/hostname").unwrap(); // `/h -> /` stays in the snapshot
//! let text = std::fs::read_to_string(f.proc_path()).unwrap();
//! # let _ = text;
//! ```
//!
//! Needs Linux 5.6 or later (openat2).

use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// Errors of in-root resolution. Each names the path as the user wrote it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The path (or a link it goes through) names nothing inside the root.
    #[error("{path}: not found inside {root}")]
    NotFound { path: String, root: String },
    /// More than the kernel's 40 symbolic links while resolving.
    #[error("{path}: too many levels of symbolic links inside {root}")]
    TooManyLinks { path: String, root: String },
    /// A component that must be a directory is not one.
    #[error("{path}: a component is not a directory inside {root}")]
    NotADirectory { path: String, root: String },
    /// The kernel lacks openat2 (Linux < 5.6) or a filter denies it.
    #[error("resolving paths inside a root needs openat2 (Linux 5.6 or later): {0}")]
    Unsupported(Errno),
    /// Any other failure.
    #[error("{path} inside {root}: {source}")]
    Io {
        path: String,
        root: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The `errno` this error stands for, for callers that speak `io::Error`.
    pub fn errno(&self) -> Errno {
        match self {
            Error::NotFound { .. } => Errno::ENOENT,
            Error::TooManyLinks { .. } => Errno::ELOOP,
            Error::NotADirectory { .. } => Errno::ENOTDIR,
            Error::Unsupported(e) => *e,
            Error::Io { source, .. } => Errno::from_raw(source.raw_os_error().unwrap_or(libc::EIO)),
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        io::Error::new(io::Error::from(e.errno()).kind(), e.to_string())
    }
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// A directory that acts as `/` for every path resolved through it.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// An object found inside a [`Root`]: an `O_PATH` descriptor (or a real one from
/// [`Root::open_file`]), valid for as long as this value lives.
#[derive(Debug)]
pub struct Resolved {
    fd: OwnedFd,
}

const RESOLVE: ResolveFlag = ResolveFlag::RESOLVE_IN_ROOT.union(ResolveFlag::RESOLVE_NO_MAGICLINKS);

impl Root {
    /// Opens `dir` (a trusted host path: the store's snapshot, the context directory) as a root.
    pub fn open(dir: impl AsRef<Path>) -> Result<Root> {
        let dir = dir.as_ref();
        let fd = nix::fcntl::open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| err(e, Path::new("/"), dir))?;
        Ok(Root {
            fd,
            path: dir.to_path_buf(),
        })
    }

    /// The host path this root was opened from (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root directory's host path as the kernel sees it now (no symlink in it): what
    /// [`Resolved::host_path`] of objects inside starts with.
    pub fn host_path(&self) -> io::Result<PathBuf> {
        std::fs::read_link(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Where `r` (resolved through this root) is inside it: `/`-rooted, every symlink and `..`
    /// already followed by the kernel (`/h/etc/hostname` with `/h -> /` gives `/etc/hostname`).
    /// Use it to apply rules written for in-root paths (`.dockerignore`) to what a path really
    /// reached. An error if the object is not below the root (it was moved out since).
    pub fn inner_path(&self, r: &Resolved) -> Result<PathBuf> {
        let io = |source: io::Error| Error::Io {
            path: "(resolved object)".into(),
            root: display(&self.path),
            source,
        };
        let (root, obj) = (self.host_path().map_err(io)?, r.host_path().map_err(io)?);
        match obj.strip_prefix(&root) {
            Ok(rel) => Ok(Path::new("/").join(rel)),
            Err(_) => Err(Error::Io {
                path: display(&obj),
                root: display(&self.path),
                source: io::Error::other("not inside the root any more"),
            }),
        }
    }

    /// Resolves `path` inside the root, following every symlink, the last one too.
    pub fn resolve(&self, path: impl AsRef<Path>) -> Result<Resolved> {
        self.open_how(path.as_ref(), OFlag::O_PATH, Mode::empty())
    }

    /// Resolves `path` inside the root without following its last component (a symlink there is
    /// returned as the link itself); every earlier component is followed inside the root.
    pub fn resolve_nofollow(&self, path: impl AsRef<Path>) -> Result<Resolved> {
        self.open_how(
            path.as_ref(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
    }

    /// Opens `path` inside the root with `flags` (`O_RDONLY`, `O_WRONLY|O_CREAT`, ...), creating
    /// it with `mode` when asked. Add `O_NOFOLLOW` to refuse a symlink as the last component.
    pub fn open_file(&self, path: impl AsRef<Path>, flags: OFlag, mode: u32) -> Result<File> {
        let r = self.open_how(path.as_ref(), flags, Mode::from_bits_truncate(mode))?;
        Ok(File::from(r.fd))
    }

    /// Creates `path` and its missing parents as directories (`mode`, then owned by `owner` when
    /// given; existing directories are left as they are), following symlinks inside the root, a
    /// dangling one by creating its target. Returns the final directory.
    pub fn mkdir_all(
        &self,
        path: impl AsRef<Path>,
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<Resolved> {
        let mut pending: Vec<OsString> = components(path.as_ref());
        pending.reverse();
        let mut done = PathBuf::from("/");
        let mut links = 0;
        while let Some(name) = pending.pop() {
            if name == ".." {
                done.pop();
                continue;
            }
            let next = done.join(&name);
            match self.open_how(&next, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()) {
                Ok(_) => {
                    done = next;
                    continue;
                }
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            let parent = self.open_how(&done, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())?;
            match nix::fcntl::readlinkat(parent.fd.as_fd(), name.as_os_str()) {
                Ok(target) => {
                    // A dangling link: create what it points at, inside the root.
                    links += 1;
                    if links > 40 {
                        return Err(Error::TooManyLinks {
                            path: display(path.as_ref()),
                            root: display(&self.path),
                        });
                    }
                    let target = PathBuf::from(target);
                    if target.is_absolute() {
                        done = PathBuf::from("/");
                    }
                    for c in components(&target).into_iter().rev() {
                        pending.push(c);
                    }
                    continue;
                }
                Err(Errno::EINVAL) => {
                    return Err(Error::NotADirectory {
                        path: display(&next),
                        root: display(&self.path),
                    })
                }
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(err(e, &next, &self.path)),
            }
            // The parent must be reopened as a real directory fd for mkdirat.
            let dir = self.open_how(&done, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())?;
            match nix::sys::stat::mkdirat(
                dir.fd.as_fd(),
                name.as_os_str(),
                Mode::from_bits_truncate(mode),
            ) {
                Ok(()) => {
                    let created = self.open_how(
                        &next,
                        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
                        Mode::empty(),
                    )?;
                    // mkdir's mode is masked by the umask: set it exactly.
                    nix::sys::stat::fchmodat(
                        dir.fd.as_fd(),
                        name.as_os_str(),
                        Mode::from_bits_truncate(mode),
                        nix::sys::stat::FchmodatFlags::FollowSymlink,
                    )
                    .map_err(|e| err(e, &next, &self.path))?;
                    if let Some((uid, gid)) = owner {
                        created
                            .chown(uid, gid)
                            .map_err(|e| err(e, &next, &self.path))?;
                    }
                }
                Err(Errno::EEXIST) => {} // raced with another creator: re-resolve below
                Err(e) => return Err(err(e, &next, &self.path)),
            }
            done = next;
        }
        self.open_how(&done, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())
    }

    fn open_how(&self, path: &Path, flags: OFlag, mode: Mode) -> Result<Resolved> {
        let rel = relative(path);
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .mode(mode)
            .resolve(RESOLVE);
        loop {
            match openat2(self.fd.as_fd(), rel.as_path(), how) {
                Ok(fd) => return Ok(Resolved { fd }),
                Err(Errno::EINTR) | Err(Errno::EAGAIN) => continue,
                Err(e) => return Err(err(e, path, &self.path)),
            }
        }
    }
}

impl AsFd for Root {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Resolved {
    /// `/proc/self/fd/N` for this object: the kernel maps it to the opened object without walking
    /// any path again. Valid while `self` lives. Use it as a mount source or target, or to read
    /// and list what was resolved.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// The object's host path as the kernel sees it now (for messages and for walks that then use
    /// no-follow operations only).
    pub fn host_path(&self) -> io::Result<PathBuf> {
        std::fs::read_link(self.proc_path())
    }

    /// `lstat` of the object itself (a symlink from [`Root::resolve_nofollow`] is described as a
    /// symlink).
    pub fn metadata(&self) -> io::Result<Metadata> {
        // fstatat(fd, "", AT_EMPTY_PATH) through std: symlink_metadata of the magic link would
        // describe the link; metadata() of it follows the fd to the object, which is what we want
        // for everything but an O_PATH symlink, where the kernel returns the link itself.
        std::fs::metadata(self.proc_path()).or_else(|_| std::fs::symlink_metadata(self.proc_path()))
    }

    /// Changes the owner of the object (not following a symlink it may be).
    pub fn chown(&self, uid: u32, gid: u32) -> nix::Result<()> {
        nix::unistd::fchownat(
            self.fd.as_fd(),
            "",
            Some(uid.into()),
            Some(gid.into()),
            nix::fcntl::AtFlags::AT_EMPTY_PATH | nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
    }

    /// Opens the object again for real I/O (`O_RDONLY`, `O_RDONLY|O_DIRECTORY`, ...).
    pub fn reopen(&self, flags: OFlag) -> io::Result<File> {
        let fd = nix::fcntl::open(&self.proc_path(), flags | OFlag::O_CLOEXEC, Mode::empty())?;
        Ok(File::from(fd))
    }
}

impl AsFd for Resolved {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<Resolved> for OwnedFd {
    fn from(r: Resolved) -> OwnedFd {
        r.fd
    }
}

/// The normal and `..` components of `p` (root and `.` dropped).
fn components(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// `p` relative to the root: `"."` for the root itself. The kernel treats a leading `/` as the
/// root under RESOLVE_IN_ROOT anyway; stripping it keeps the call obviously relative.
fn relative(p: &Path) -> PathBuf {
    let s = p.as_os_str().as_bytes();
    let trimmed = s
        .iter()
        .position(|&b| b != b'/')
        .map_or(&[][..], |i| &s[i..]);
    if trimmed.is_empty() {
        PathBuf::from(".")
    } else {
        PathBuf::from(std::ffi::OsStr::from_bytes(trimmed))
    }
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

fn err(e: Errno, path: &Path, root: &Path) -> Error {
    let (path, root) = (display(path), display(root));
    match e {
        Errno::ENOENT => Error::NotFound { path, root },
        Errno::ELOOP => Error::TooManyLinks { path, root },
        Errno::ENOTDIR => Error::NotADirectory { path, root },
        Errno::ENOSYS => Error::Unsupported(e),
        _ => Error::Io {
            path,
            root,
            source: io::Error::from(e),
        },
    }
}

#[cfg(test)]
mod tests;

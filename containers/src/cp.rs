//! `rbuild cp`: files between the host and a container, running or stopped, as tar streams
//! (Docker's format for `cp ... -`). Every container path is resolved inside the container's
//! root by the kernel (`rbuild-fsroot`): a symlink in the container, even `/x -> /`, leads to the
//! container's own files, never the host's.
//!
//! The root is `/proc/PID/root` while PID 1 runs (its mount namespace: volumes included); a
//! stopped container's layers are mounted (overlay of the image and its writable layer) while the
//! container's lock is held, so it cannot start meanwhile.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use rbuild_cache::{KeyLock, Store};
use rbuild_fsroot::Root;

use crate::{cerr, io_err, Error};

/// A container's root opened for copying, with what keeps it valid.
pub struct ContainerRoot {
    root: Root,
    _mount: Option<rbuild_sandbox::OverlayMount>,
    _mnt_dir: Option<TmpDir>,
    _lock: Option<KeyLock>,
    _in_use: Vec<rbuild_cache::SnapshotUse>,
}

struct TmpDir(PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

impl ContainerRoot {
    /// The root of container `name`.
    pub fn open(store: &Store, name: &str) -> Result<ContainerRoot, Error> {
        let rec = crate::run::find(store, name)?;
        match store.lock_container(&rec.name) {
            Ok(lock) => {
                // Not running, and it cannot start while we hold the lock.
                let doc = crate::run::config_of(store, &rec)?;
                let (lowers, in_use) = crate::run::lowers_of(store, &doc, &rec.image)?;
                let dir = store.container_dir(&rec.name);
                let tmp = store.root().join("tmp");
                std::fs::create_dir_all(&tmp)
                    .map_err(io_err(format!("creating {}", tmp.display())))?;
                let mnt = tmp.join(format!("cp-{}-{}", std::process::id(), &rec.id[..12]));
                std::fs::create_dir_all(&mnt)
                    .map_err(io_err(format!("creating {}", mnt.display())))?;
                let mnt_dir = TmpDir(mnt.clone());
                let (upper, work) = (dir.join("upper"), dir.join("work"));
                let mount =
                    rbuild_sandbox::OverlayMount::mount(&lowers, Some((&upper, &work)), &mnt)?;
                Ok(ContainerRoot {
                    root: Root::open(&mnt)?,
                    _mount: Some(mount),
                    _mnt_dir: Some(mnt_dir),
                    _lock: Some(lock),
                    _in_use: in_use,
                })
            }
            Err(rbuild_cache::Error::Conflict(_)) => {
                let st = crate::state::inspect_state(store, &rec);
                let pid = st.pid().ok_or_else(|| {
                    cerr(format!(
                        "container {} is starting or stopping; try again",
                        rec.name
                    ))
                })?;
                Ok(ContainerRoot {
                    root: Root::open(format!("/proc/{pid}/root"))?,
                    _mount: None,
                    _mnt_dir: None,
                    _lock: None,
                    _in_use: Vec::new(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The root.
    pub fn root(&self) -> &Root {
        &self.root
    }
}

/// The last component of a container path (`/` for the root itself), and whether the path
/// names a directory's content (`dir/.`).
fn base_of(path: &str) -> (OsString, bool) {
    let content = path.ends_with("/.") || path == ".";
    let p = Path::new(path);
    let name = p
        .components()
        .rev()
        .find_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            _ => None,
        })
        .unwrap_or_else(|| OsString::from("/"));
    (name, content)
}

fn fs_err(e: rbuild_fsroot::Error) -> io::Error {
    e.into()
}

/// Writes a tar of `src` (resolved inside `root`, its last component not followed) to `out`:
/// entries are named `<basename>/...`, or the directory's entries themselves for `dir/.`.
pub fn tar_out(root: &Root, src: &str, out: impl Write) -> Result<(), Error> {
    tar_out_named(root, src, None, out)
}

/// As [`tar_out`], the top entry named `top` instead of the source's name.
fn tar_out_named(
    root: &Root,
    src: &str,
    top_name: Option<&OsStr>,
    out: impl Write,
) -> Result<(), Error> {
    let top = root.resolve_nofollow(src)?;
    let (base, content) = base_of(src);
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let md = top.metadata().map_err(io_err(format!("{src}: stat")))?;
    if content && !md.is_dir() {
        return Err(cerr(format!("{src}: not a directory")));
    }
    let name = match top_name {
        Some(n) => PathBuf::from(n),
        None if content || base == "/" => PathBuf::new(),
        None => PathBuf::from(&base),
    };
    append(root, &mut b, Path::new(src), &name, 0).map_err(io_err(format!("copying {src}")))?;
    b.finish().map_err(io_err("writing the tar stream"))?;
    Ok(())
}

fn append<W: Write>(
    root: &Root,
    b: &mut tar::Builder<W>,
    cpath: &Path,
    name: &Path,
    depth: usize,
) -> io::Result<()> {
    if depth > 4096 {
        return Err(io::Error::other("directory tree too deep"));
    }
    let r = root.resolve_nofollow(cpath).map_err(fs_err)?;
    let md = r.metadata()?;
    let mut h = tar::Header::new_gnu();
    h.set_metadata_in_mode(&md, tar::HeaderMode::Complete);
    let ft = md.file_type();
    if ft.is_dir() {
        if !name.as_os_str().is_empty() {
            b.append_data(&mut h, name, io::empty())?;
        }
        let dir = r.reopen(OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let mut names: Vec<OsString> = nix::dir::Dir::from_fd(dir.into())
            .map_err(io::Error::from)?
            .iter()
            .filter_map(|e| e.ok())
            .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_os_string())
            .filter(|n| n != "." && n != "..")
            .collect();
        names.sort();
        for n in names {
            append(root, b, &cpath.join(&n), &name.join(&n), depth + 1)?;
        }
    } else if ft.is_file() {
        // The O_PATH fd is the regular file itself (resolved without following): reopening
        // through its /proc/self/fd link cannot land elsewhere.
        let f = r.reopen(OFlag::O_RDONLY)?;
        h.set_size(md.len());
        b.append_data(&mut h, name, f.take(md.len()))?;
    } else if ft.is_symlink() {
        let target = nix::fcntl::readlinkat(r.as_fd(), "").map_err(io::Error::from)?;
        h.set_size(0);
        h.set_entry_type(tar::EntryType::Symlink);
        // The target byte for byte (`append_link` would normalise `/` into `//`); a target too
        // long for the header goes through `append_link`'s GNU long-name entry.
        if h.set_link_name_literal(target.as_bytes()).is_ok() {
            b.append_data(&mut h, name, io::empty())?;
        } else {
            b.append_link(&mut h, name, target)?;
        }
    } else {
        h.set_size(0);
        b.append_data(&mut h, name, io::empty())?;
    }
    Ok(())
}

/// How entries are written into a container.
pub struct Extract {
    /// Keep the archive's owners (`cp -a`); otherwise files belong to root.
    pub keep_owner: bool,
    /// Rename the archive's top entry (copying `file` to a new name).
    pub rename_top: Option<(OsString, OsString)>,
}

fn clean_rel(p: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            _ => {
                return Err(io::Error::other(format!(
                    "{}: an archive entry may not go up with ..",
                    p.display()
                )))
            }
        }
    }
    Ok(out)
}

/// Unpacks the tar `input` into the directory `dst` inside `root`.
pub fn untar_in(root: &Root, dst: &str, input: impl Read, opts: &Extract) -> Result<(), Error> {
    let mut ar = tar::Archive::new(input);
    for entry in ar.entries().map_err(io_err("reading the tar stream"))? {
        let mut entry = entry.map_err(io_err("reading the tar stream"))?;
        let raw = entry
            .path()
            .map_err(io_err("reading the tar stream"))?
            .into_owned();
        let mut rel = clean_rel(&raw).map_err(io_err("reading the tar stream"))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        if let Some((from, to)) = &opts.rename_top {
            if let Ok(rest) = rel.strip_prefix(from) {
                rel = Path::new(to).join(rest);
            }
        }
        let cpath = Path::new(dst).join(&rel);
        write_entry(root, &cpath, &mut entry, opts).map_err(io_err(format!(
            "writing {} in the container",
            cpath.display()
        )))?;
    }
    Ok(())
}

fn write_entry<R: Read>(
    root: &Root,
    cpath: &Path,
    entry: &mut tar::Entry<R>,
    opts: &Extract,
) -> io::Result<()> {
    let h = entry.header().clone();
    let mode = h.mode().unwrap_or(0o644) & 0o7777;
    let (uid, gid) = if opts.keep_owner {
        (h.uid().unwrap_or(0) as u32, h.gid().unwrap_or(0) as u32)
    } else {
        (0, 0)
    };
    let parent = cpath.parent().unwrap_or(Path::new("/"));
    let name = cpath
        .file_name()
        .ok_or_else(|| io::Error::other("an entry without a name"))?;
    let kind = h.entry_type();
    if kind.is_dir() {
        let d = root
            .mkdir_all(cpath, mode, Some((uid, gid)))
            .map_err(fs_err)?;
        nix::sys::stat::fchmodat(
            d.as_fd(),
            "",
            Mode::from_bits_truncate(mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .or_else(|_| {
            nix::sys::stat::fchmod(
                d.reopen(OFlag::O_RDONLY | OFlag::O_DIRECTORY)?.as_fd(),
                Mode::from_bits_truncate(mode),
            )
            .map_err(io::Error::from)
        })
        .map_err(io::Error::other)?;
        return Ok(());
    }
    let pdir = root.mkdir_all(parent, 0o755, None).map_err(fs_err)?;
    let pdir = pdir.reopen(OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
    // Replace what is there (never following a symlink); a directory stays an error.
    match nix::unistd::unlinkat(&pdir, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(Errno::EISDIR) => {
            return Err(io::Error::other(
                "a directory is in the way of a file; remove it first",
            ))
        }
        Err(e) => return Err(e.into()),
    }
    if kind.is_symlink() {
        let target = entry
            .link_name()?
            .ok_or_else(|| io::Error::other("a symlink without a target"))?;
        nix::unistd::symlinkat(target.as_ref(), &pdir, name)?;
    } else if kind.is_hard_link() {
        let target = entry
            .link_name()?
            .ok_or_else(|| io::Error::other("a hard link without a target"))?;
        let t = root.resolve_nofollow(&*target).map_err(fs_err)?;
        nix::unistd::linkat(&t, "", &pdir, name, AtFlags::AT_EMPTY_PATH)?;
        return Ok(());
    } else if kind.is_file() || kind == tar::EntryType::Continuous {
        let fd = nix::fcntl::openat(
            &pdir,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )?;
        let mut f = File::from(fd);
        io::copy(entry, &mut f)?;
        nix::unistd::fchown(&f, Some(uid.into()), Some(gid.into()))?;
        nix::sys::stat::fchmod(&f, Mode::from_bits_truncate(mode))?;
        return Ok(());
    } else {
        let sflag = match kind {
            tar::EntryType::Char => nix::sys::stat::SFlag::S_IFCHR,
            tar::EntryType::Block => nix::sys::stat::SFlag::S_IFBLK,
            tar::EntryType::Fifo => nix::sys::stat::SFlag::S_IFIFO,
            _ => return Ok(()), // PAX/GNU metadata entries are consumed by the reader
        };
        let dev = nix::sys::stat::makedev(
            h.device_major()?.unwrap_or(0).into(),
            h.device_minor()?.unwrap_or(0).into(),
        );
        nix::sys::stat::mknodat(&pdir, name, sflag, Mode::from_bits_truncate(mode), dev)?;
    }
    nix::unistd::fchownat(
        &pdir,
        name,
        Some(uid.into()),
        Some(gid.into()),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

/// What is at a container path: `None` when nothing, else whether it is a directory.
pub fn probe(root: &Root, path: &str) -> Result<Option<bool>, Error> {
    match root.resolve(path) {
        Ok(r) => Ok(Some(r.metadata().map(|m| m.is_dir()).unwrap_or(false))),
        Err(rbuild_fsroot::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Copies host path `src` (or, with `src == "-"`, a tar read from `stdin`) to `dst` in the
/// container, with Docker's rules: into `dst` when it is a directory (or ends with `/`), else as
/// `dst` (its parent must exist).
pub fn copy_in(
    store: &Store,
    name: &str,
    src: &str,
    dst: &str,
    keep_owner: bool,
    stdin: impl Read,
) -> Result<(), Error> {
    let cr = ContainerRoot::open(store, name)?;
    let root = cr.root();
    let dst_kind = probe(root, dst)?;
    if src == "-" {
        if dst_kind != Some(true) {
            return Err(cerr(format!(
                "{dst}: the destination of a tar stream must be an existing directory in the container"
            )));
        }
        return untar_in(
            root,
            dst,
            stdin,
            &Extract {
                keep_owner,
                rename_top: None,
            },
        );
    }
    let host = Path::new(src);
    let md = std::fs::symlink_metadata(host).map_err(io_err(format!(
        "{src}: no such file or directory on the host"
    )))?;
    let (host_base, content) = (
        host.file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| OsString::from(".")),
        src.ends_with("/.") || src == ".",
    );
    let (target_dir, rename_top) = match dst_kind {
        Some(true) => (dst.to_string(), None),
        Some(false) if md.is_dir() => {
            return Err(cerr(format!(
                "cannot copy a directory to {dst}: it is a file in the container"
            )))
        }
        _ if dst.ends_with('/') => {
            return Err(cerr(format!("{dst}: no such directory in the container")))
        }
        _ => {
            let (parent, new) = split_parent(dst);
            if probe(root, &parent)? != Some(true) {
                return Err(cerr(format!(
                    "{parent}: no such directory in the container (the parent of {dst} must exist)"
                )));
            }
            (parent, Some((host_base.clone(), new)))
        }
    };
    // A tar of the host path, streamed through a pipe into the extractor.
    let (mut reader, writer) = io::pipe().map_err(io_err("pipe"))?;
    let host = host.to_path_buf();
    let top_name = if content {
        PathBuf::new()
    } else {
        PathBuf::from(&host_base)
    };
    let producer = std::thread::spawn(move || -> io::Result<()> {
        let mut b = tar::Builder::new(writer);
        b.follow_symlinks(false);
        if md.is_dir() {
            if top_name.as_os_str().is_empty() {
                b.append_dir_all(".", &host)?;
            } else {
                b.append_dir_all(&top_name, &host)?;
            }
        } else {
            b.append_path_with_name(&host, &top_name)?;
        }
        b.finish()
    });
    let r = untar_in(
        root,
        &target_dir,
        &mut reader,
        &Extract {
            keep_owner,
            rename_top,
        },
    );
    // Drain what is left so the producer never writes into a closed pipe (SIGPIPE).
    let _ = io::copy(&mut reader, &mut io::sink());
    let p = producer
        .join()
        .map_err(|_| cerr("the tar producer panicked"))?;
    r?;
    p.map_err(io_err(format!("reading {src}")))
}

fn split_parent(p: &str) -> (String, OsString) {
    let path = Path::new(p);
    let parent = path
        .parent()
        .map(|x| x.to_string_lossy().into_owned())
        .filter(|x| !x.is_empty())
        .unwrap_or_else(|| "/".into());
    let name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    (parent, name)
}

/// Copies `src` from the container to host path `dst` (or, with `dst == "-"`, a tar to
/// `stdout`), with Docker's rules: into `dst` when it is an existing directory, else as `dst`.
pub fn copy_out(
    store: &Store,
    name: &str,
    src: &str,
    dst: &str,
    keep_owner: bool,
    stdout: impl Write,
) -> Result<(), Error> {
    let cr = ContainerRoot::open(store, name)?;
    let root = cr.root();
    if dst == "-" {
        return tar_out(root, src, stdout);
    }
    let dstp = Path::new(dst);
    let (dir, rename) = if dstp.is_dir() {
        (dstp.to_path_buf(), None)
    } else {
        let parent = dstp
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !parent.is_dir() {
            return Err(cerr(format!(
                "{}: no such directory on the host (the parent of {dst} must exist)",
                parent.display()
            )));
        }
        let new = dstp
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        (parent.to_path_buf(), Some(new))
    };
    // The tar names its top entry as the destination wants it; `unpack` refuses any entry that
    // would leave `dir`.
    // Streamed through a pipe: the tree is never held in memory.
    let (reader, writer) = io::pipe().map_err(io_err("pipe"))?;
    std::thread::scope(|s| {
        let producer = s.spawn(move || tar_out_named(root, src, rename.as_deref(), writer));
        let mut ar = tar::Archive::new(reader);
        ar.set_preserve_ownerships(keep_owner);
        ar.set_preserve_permissions(true);
        ar.set_preserve_mtime(true);
        ar.set_overwrite(true);
        let r = ar
            .unpack(&dir)
            .map_err(io_err(format!("writing into {}", dir.display())));
        // Drain what is left so the producer never writes into a closed pipe (SIGPIPE).
        let _ = io::copy(&mut ar.into_inner(), &mut io::sink());
        let p = producer
            .join()
            .unwrap_or_else(|_| Err(cerr("the tar producer panicked")));
        p.and(r)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases() {
        assert_eq!(base_of("/etc/hosts"), (OsString::from("hosts"), false));
        assert_eq!(base_of("/etc/"), (OsString::from("etc"), false));
        assert_eq!(base_of("/etc/."), (OsString::from("etc"), true));
        assert_eq!(base_of("/"), (OsString::from("/"), false));
        assert_eq!(split_parent("/a/b"), ("/a".into(), OsString::from("b")));
        assert_eq!(split_parent("/b"), ("/".into(), OsString::from("b")));
    }

    #[test]
    fn tar_round_trip_stays_in_root() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir_all(a.join("dir/sub")).unwrap();
        std::fs::write(a.join("dir/sub/f"), "hello").unwrap();
        std::os::unix::fs::symlink("/", a.join("dir/up")).unwrap();
        // A hostile link in the destination: writing "through" it must stay inside b.
        std::fs::create_dir_all(&b).unwrap();
        std::os::unix::fs::symlink("/", b.join("dst")).unwrap();
        let ra = Root::open(&a).unwrap();
        let mut t = Vec::new();
        tar_out(&ra, "/dir", &mut t).unwrap();
        let rb = Root::open(&b).unwrap();
        untar_in(
            &rb,
            "/dst/tmpx",
            &t[..],
            &Extract {
                keep_owner: false,
                rename_top: None,
            },
        )
        .unwrap();
        // `/dst -> /` resolved inside b: b/tmpx, never the host's /tmpx.
        assert_eq!(
            std::fs::read_to_string(b.join("tmpx/dir/sub/f")).unwrap(),
            "hello"
        );
        assert!(!Path::new("/tmpx").exists());
        assert_eq!(
            std::fs::read_link(b.join("tmpx/dir/up")).unwrap(),
            PathBuf::from("/")
        );
    }
}

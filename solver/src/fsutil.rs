//! File operations of COPY inside a mounted rootfs: recursive copies that keep modes, times and
//! links, and ownership/permission rewriting. Paths are resolved inside their root by
//! `rbuild-fsroot` before they get here; these functions only walk below a resolved object with
//! no-follow operations.

use std::ffi::CString;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags, FileStat,
    Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

/// Sharing a previous copy's files: a file whose source `unchanged` accepts (same content as
/// when the previous result was made) and whose previous copy has the same size, mtime, owner
/// and mode becomes a hard link to that copy instead of a new file.
pub struct Share<'a> {
    /// The previous result's root directory (rbuild's own snapshot, never the context).
    pub root: &'a Path,
    /// Where the copy's destination is, relative to that root (and to the new snapshot's).
    pub rel: &'a Path,
    /// Whether the source file at this host path is unchanged since the previous result.
    pub unchanged: &'a dyn Fn(&Path) -> bool,
}

/// Copies `src` (host path, not following a symlink at `src` itself) to host path `dst`,
/// recursively for directories (merging into an existing directory), keeping modes, times and
/// symlinks; `owner` replaces the source ownership and `chmod` (octal or symbolic, applied to each
/// entry's own mode) its permissions. `filter` sees every path below `src` and drops what it
/// rejects. `fresh` says `dst` is known not to exist, which saves a lookup per file (entries
/// inside a directory this copy created are always fresh). `share` (only with `fresh`) names a
/// previous copy whose unchanged files are hard-linked.
///
/// Below `src`, every operation is relative to an open directory (`openat`, `fstatat`,
/// `linkat`, ... with `O_NOFOLLOW`), one descriptor per directory of the source, of the
/// destination and of the previous copy: no path is walked again per file, and a directory
/// replaced by a symlink while the copy runs fails the copy instead of being followed.
pub fn copy_entry(
    src: &Path,
    dst: &Path,
    owner: Option<(u32, u32)>,
    chmod: Option<&str>,
    filter: &mut dyn FnMut(&Path) -> bool,
    fresh: bool,
    share: Option<Share<'_>>,
) -> io::Result<()> {
    let md = fs::symlink_metadata(src)?;
    let ft = md.file_type();
    let share = share.filter(|_| fresh);
    let existing = if fresh {
        None
    } else {
        fs::symlink_metadata(dst).ok()
    };
    if ft.is_dir() {
        let created = match existing {
            Some(d) if d.is_dir() => false,
            Some(_) => {
                fs::remove_file(dst)?;
                fs::create_dir(dst)?;
                true
            }
            None => {
                fs::create_dir(dst)?;
                true
            }
        };
        let sfd = open_dir(AT_FDCWD_FD, src)?;
        let dfd = open_dir(AT_FDCWD_FD, dst)?;
        let prev = share.as_ref().and_then(|s| open_below(s.root, s.rel));
        let mut cx = Cx {
            owner,
            chmod,
            filter,
            unchanged: share.as_ref().map(|s| s.unchanged),
            path: src.to_path_buf(),
        };
        copy_dir_at(&mut cx, &sfd, &dfd, prev.as_ref(), created)?;
        return apply_attrs(dst, &md, owner, chmod);
    }
    if let Some(d) = existing {
        if d.is_dir() {
            fs::remove_dir_all(dst)?;
        } else {
            fs::remove_file(dst)?;
        }
    }
    let (Some(parent), Some(name)) = (dst.parent(), dst.file_name()) else {
        return Err(io::Error::other(format!(
            "no file name in {}",
            dst.display()
        )));
    };
    let (sdir, sname) = match (src.parent(), src.file_name()) {
        (Some(p), Some(n)) => (open_dir(AT_FDCWD_FD, p)?, n),
        _ => {
            return Err(io::Error::other(format!(
                "no file name in {}",
                src.display()
            )))
        }
    };
    let dfd = open_dir(AT_FDCWD_FD, parent)?;
    let prev = share.as_ref().and_then(|s| {
        let unchanged = (s.unchanged)(src);
        unchanged
            .then(|| open_below(s.root, s.rel.parent()?))
            .flatten()
    });
    let st = stat_at(&sdir, sname)?;
    let mut cx = Cx {
        owner,
        chmod,
        filter: &mut |_| true,
        unchanged: None,
        path: src.to_path_buf(),
    };
    // The single file's sharing was decided above: `prev` is only open when it is unchanged.
    copy_one_at(
        &mut cx,
        (&sdir, sname),
        (&dfd, name),
        prev.as_ref(),
        &st,
        true,
    )
}

/// `AT_FDCWD` as a descriptor: [`open_dir`] of an absolute path ignores it.
const AT_FDCWD_FD: BorrowedFd<'static> = nix::fcntl::AT_FDCWD;

/// Opens a directory (not following a symlink as the last component) relative to `at`.
fn open_dir<P: ?Sized + nix::NixPath>(at: impl AsFd, name: &P) -> io::Result<OwnedFd> {
    openat(
        at,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// Opens `root/rel` as a directory one component at a time, never following a symlink:
/// `None` when any component is missing or not a directory.
fn open_below(root: &Path, rel: &Path) -> Option<OwnedFd> {
    let mut fd = open_dir(AT_FDCWD_FD, root).ok()?;
    for c in rel.components() {
        match c {
            std::path::Component::Normal(n) => fd = open_dir(&fd, n).ok()?,
            std::path::Component::CurDir | std::path::Component::RootDir => {}
            _ => return None,
        }
    }
    Some(fd)
}

fn stat_at<P: ?Sized + nix::NixPath>(at: impl AsFd, name: &P) -> io::Result<FileStat> {
    fstatat(at, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(io::Error::from)
}

/// What every entry of one copy shares.
struct Cx<'a, 'f> {
    owner: Option<(u32, u32)>,
    chmod: Option<&'a str>,
    filter: &'f mut dyn FnMut(&Path) -> bool,
    unchanged: Option<&'a dyn Fn(&Path) -> bool>,
    /// The host path of the source entry being copied (for `filter` and `unchanged`), kept
    /// as one buffer pushed and popped along the walk.
    path: PathBuf,
}

/// Copies the entries of the open source directory `sfd` into the open destination directory
/// `dfd`; `prev` is the previous copy's matching directory when files may be shared.
fn copy_dir_at(
    cx: &mut Cx<'_, '_>,
    sfd: &OwnedFd,
    dfd: &OwnedFd,
    prev: Option<&OwnedFd>,
    fresh: bool,
) -> io::Result<()> {
    let mut names: Vec<CString> = Vec::new();
    let mut dir = nix::dir::Dir::from_fd(sfd.try_clone()?).map_err(io::Error::from)?;
    for e in dir.iter() {
        let e = e.map_err(io::Error::from)?;
        let n = e.file_name();
        if n != c"." && n != c".." {
            names.push(n.to_owned());
        }
    }
    drop(dir);
    names.sort_unstable();
    for n in &names {
        cx.path.push(OsStr::from_bytes(n.as_bytes()));
        let r = if (cx.filter)(&cx.path) {
            stat_at(sfd, n.as_c_str()).and_then(|st| {
                copy_one_at(
                    cx,
                    (sfd, n.as_c_str()),
                    (dfd, n.as_c_str()),
                    prev,
                    &st,
                    fresh,
                )
            })
        } else {
            Ok(())
        };
        let r = r.map_err(|e| at_path(e, &cx.path));
        cx.path.pop();
        r?;
    }
    Ok(())
}

/// Copies the source entry `sname` of directory `sfd` (stat'ed as `st`) to `dname` in `dfd`;
/// `prev` is the previous copy's directory matching `dfd` (its entry is `dname` too).
fn copy_one_at<S: ?Sized + nix::NixPath, D: ?Sized + nix::NixPath>(
    cx: &mut Cx<'_, '_>,
    (sfd, sname): (&OwnedFd, &S),
    (dfd, name): (&OwnedFd, &D),
    prev: Option<&OwnedFd>,
    st: &FileStat,
    fresh: bool,
) -> io::Result<()> {
    let kind = st.st_mode & libc::S_IFMT;
    let existing = if fresh {
        None
    } else {
        stat_at(dfd, name).ok().map(|d| d.st_mode & libc::S_IFMT)
    };
    let (uid, gid) = cx.owner.unwrap_or((st.st_uid, st.st_gid));
    let mode = target_mode_of(st.st_mode, kind == libc::S_IFDIR, cx.chmod)?;
    let at = TimeSpec::new(st.st_atime, st.st_atime_nsec);
    let mt = TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
    if kind == libc::S_IFDIR {
        let created = match existing {
            Some(libc::S_IFDIR) => false,
            Some(_) => {
                unlinkat(dfd, name, UnlinkatFlags::NoRemoveDir)?;
                mkdirat(dfd, name, Mode::from_bits_truncate(0o700))?;
                true
            }
            None => {
                mkdirat(dfd, name, Mode::from_bits_truncate(0o700))?;
                true
            }
        };
        let s = open_dir(sfd, sname)?;
        let d = open_dir(dfd, name)?;
        let p = prev.and_then(|p| open_dir(p, name).ok());
        copy_dir_at(cx, &s, &d, p.as_ref(), created)?;
        fchown(&d, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
        fchmod(&d, Mode::from_bits_truncate(mode))?;
        futimens(&d, &at, &mt)?;
        return Ok(());
    }
    match existing {
        Some(libc::S_IFDIR) => {
            let d = open_dir(dfd, name)?;
            remove_contents(&d)?;
            unlinkat(dfd, name, UnlinkatFlags::RemoveDir)?;
        }
        Some(_) => unlinkat(dfd, name, UnlinkatFlags::NoRemoveDir)?,
        None => {}
    }
    if kind == libc::S_IFREG {
        // An unchanged file (same content, checked by the caller; same size, mtime, owner and
        // mode, checked here) is a hard link to the previous copy: layers are immutable.
        if let Some(p) = prev.filter(|_| cx.unchanged.is_none_or(|u| u(&cx.path))) {
            let same = stat_at(p, name).is_ok_and(|o| {
                o.st_mode & libc::S_IFMT == libc::S_IFREG
                    && o.st_size == st.st_size
                    && (o.st_mtime, o.st_mtime_nsec) == (st.st_mtime, st.st_mtime_nsec)
                    && (o.st_uid, o.st_gid) == (uid, gid)
                    && o.st_mode & 0o7777 == mode
            });
            if same && linkat(p, name, dfd, name, AtFlags::empty()).is_ok() {
                return Ok(());
            }
        }
        let from = openat(
            sfd,
            sname,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let to = openat(
            dfd,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )?;
        let (mut from, mut to) = (fs::File::from(from), fs::File::from(to));
        io::copy(&mut from, &mut to)?;
        fchown(&to, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
        fchmod(&to, Mode::from_bits_truncate(mode))?;
        futimens(&to, &at, &mt)?;
        return Ok(());
    }
    if kind == libc::S_IFLNK {
        let target = readlinkat(sfd, sname)?;
        symlinkat(target.as_os_str(), dfd, name)?;
    } else {
        // Device nodes, fifos, sockets: recreate them.
        let k = SFlag::from_bits_truncate(kind);
        let perm = Mode::from_bits_truncate(st.st_mode & 0o7777);
        mknodat(dfd, name, k, perm, st.st_rdev)?;
    }
    fchownat(
        dfd,
        name,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    if kind != libc::S_IFLNK {
        fchmodat(
            dfd,
            name,
            Mode::from_bits_truncate(mode),
            FchmodatFlags::FollowSymlink,
        )?;
    }
    utimensat(dfd, name, &at, &mt, UtimensatFlags::NoFollowSymlink)?;
    Ok(())
}

/// An error of the copy that names the entry it happened at (once: the innermost entry).
#[derive(Debug)]
struct AtPath(String);

impl std::fmt::Display for AtPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AtPath {}

/// `e` with the entry `path` named, unless an inner entry is named already.
fn at_path(e: io::Error, path: &Path) -> io::Error {
    if e.get_ref().is_some_and(|r| r.is::<AtPath>()) {
        return e;
    }
    io::Error::new(e.kind(), AtPath(format!("{}: {e}", path.display())))
}

/// Removes everything inside the open directory `d` (not following symlinks).
fn remove_contents(d: &OwnedFd) -> io::Result<()> {
    let mut names = Vec::new();
    let mut dir = nix::dir::Dir::from_fd(d.try_clone()?).map_err(io::Error::from)?;
    for e in dir.iter() {
        let e = e.map_err(io::Error::from)?;
        if e.file_name() != c"." && e.file_name() != c".." {
            names.push((e.file_name().to_owned(), e.file_type()));
        }
    }
    drop(dir);
    for (n, t) in names {
        let is_dir = match t {
            Some(t) => t == nix::dir::Type::Directory,
            None => stat_at(d, n.as_c_str())?.st_mode & libc::S_IFMT == libc::S_IFDIR,
        };
        if is_dir {
            let sub = open_dir(d, n.as_c_str())?;
            remove_contents(&sub)?;
            unlinkat(d, n.as_c_str(), UnlinkatFlags::RemoveDir)?;
        } else {
            unlinkat(d, n.as_c_str(), UnlinkatFlags::NoRemoveDir)?;
        }
    }
    Ok(())
}

/// The permission bits a copied entry gets.
fn target_mode(src_md: &fs::Metadata, chmod: Option<&str>) -> io::Result<u32> {
    target_mode_of(src_md.mode(), src_md.is_dir(), chmod)
}

/// [`target_mode`] from a raw `st_mode`.
fn target_mode_of(st_mode: u32, is_dir: bool, chmod: Option<&str>) -> io::Result<u32> {
    let own = st_mode & 0o7777;
    match chmod {
        Some(c) => parse_chmod(c, own, is_dir)
            .ok_or_else(|| io::Error::other(format!("invalid --chmod={c}"))),
        None => Ok(own),
    }
}

fn apply_attrs(
    dst: &Path,
    src_md: &fs::Metadata,
    owner: Option<(u32, u32)>,
    chmod: Option<&str>,
) -> io::Result<()> {
    let (uid, gid) = owner.unwrap_or((src_md.uid(), src_md.gid()));
    std::os::unix::fs::lchown(dst, Some(uid), Some(gid))?;
    if !src_md.file_type().is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(target_mode(src_md, chmod)?))?;
    }
    let at = TimeSpec::new(src_md.atime(), src_md.atime_nsec());
    let mt = TimeSpec::new(src_md.mtime(), src_md.mtime_nsec());
    utimensat(
        nix::fcntl::AT_FDCWD,
        dst,
        &at,
        &mt,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

/// The last component of a `/`-separated path (the whole string when it has no `/`).
pub fn base_name(p: &str) -> &OsStr {
    let t = p.trim_end_matches('/');
    OsStr::from_bytes(t.rsplit('/').next().unwrap_or(t).as_bytes())
}

/// Parses `--chmod`: octal (`755`, `0644`) or symbolic (`u+x,g-w,o=r`, `+x`) applied to `base`.
pub fn parse_chmod(spec: &str, base: u32, is_dir: bool) -> Option<u32> {
    if !spec.is_empty() && spec.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return u32::from_str_radix(spec, 8).ok().filter(|m| *m <= 0o7777);
    }
    let mut mode = base & 0o7777;
    for clause in spec.split(',') {
        let who_end = clause.find(|c| "+-=".contains(c))?;
        let (who, rest) = clause.split_at(who_end);
        let mut mask = 0u32;
        for c in who.chars() {
            mask |= match c {
                'u' => 0o4700,
                'g' => 0o2070,
                'o' => 0o1007,
                'a' => 0o7777,
                _ => return None,
            };
        }
        if who.is_empty() {
            mask = 0o7777;
        }
        let op = rest.chars().next()?;
        let mut bits = 0u32;
        for c in rest[1..].chars() {
            bits |= match c {
                'r' => 0o444,
                'w' => 0o222,
                'x' => 0o111,
                'X' => {
                    if is_dir || base & 0o111 != 0 {
                        0o111
                    } else {
                        0
                    }
                }
                's' => 0o6000,
                't' => 0o1000,
                _ => return None,
            };
        }
        let bits = bits & mask;
        match op {
            '+' => mode |= bits,
            '-' => mode &= !bits,
            '=' => mode = (mode & !(mask & 0o777)) | bits,
            _ => return None,
        }
    }
    Some(mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn chmod_forms() {
        assert_eq!(parse_chmod("755", 0, false), Some(0o755));
        assert_eq!(parse_chmod("u+x", 0o644, false), Some(0o744));
        assert_eq!(parse_chmod("a=r", 0o755, false), Some(0o444));
        assert_eq!(parse_chmod("go-w,+x", 0o666, false), Some(0o755));
        assert_eq!(parse_chmod("bogus", 0o644, false), None);
        assert_eq!(parse_chmod("9", 0o644, false), None);
    }

    #[test]
    fn copies_tree_with_links_and_modes() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("sub/f"), "x").unwrap();
        fs::set_permissions(src.join("sub/f"), fs::Permissions::from_mode(0o751)).unwrap();
        symlink("sub/f", src.join("l")).unwrap();
        let dst = d.path().join("dst");
        copy_entry(&src, &dst, None, None, &mut |_| true, false, None).unwrap();
        assert_eq!(fs::read_to_string(dst.join("sub/f")).unwrap(), "x");
        assert_eq!(
            fs::metadata(dst.join("sub/f")).unwrap().mode() & 0o7777,
            0o751
        );
        assert_eq!(fs::read_link(dst.join("l")).unwrap(), Path::new("sub/f"));
        copy_entry(
            &src,
            &dst,
            Some((12, 34)),
            Some("600"),
            &mut |_| true,
            false,
            None,
        )
        .unwrap();
        let md = fs::metadata(dst.join("sub/f")).unwrap();
        assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (12, 34, 0o600));
        assert_eq!(
            fs::metadata(dst.join("sub")).unwrap().mode() & 0o7777,
            0o600
        );
        copy_entry(
            &src,
            &dst,
            None,
            Some("u+x,g+w"),
            &mut |_| true,
            false,
            None,
        )
        .unwrap();
        // Symbolic modes apply to each entry's own mode.
        let md = fs::metadata(dst.join("sub/f")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o771);
    }

    #[test]
    fn an_error_names_the_innermost_entry_once() {
        let e = at_path(io::Error::other("boom"), Path::new("/c/a/b"));
        let e = at_path(e, Path::new("/c/a"));
        assert_eq!(e.to_string(), "/c/a/b: boom");
    }

    #[test]
    fn shares_unchanged_files_of_a_previous_copy_by_descriptor() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(src.join("a/b")).unwrap();
        fs::write(src.join("a/b/same"), "s").unwrap();
        fs::write(src.join("a/new"), "n").unwrap();
        let prev = d.path().join("prev");
        fs::create_dir(&prev).unwrap();
        copy_entry(&src, &prev.join("t"), None, None, &mut |_| true, true, None).unwrap();
        // The previous copy's `a/new` differs in size: not shared even if called unchanged;
        // a link planted in the previous result is never followed.
        fs::write(prev.join("t/a/new"), "old!").unwrap();
        let next = d.path().join("next");
        fs::create_dir(&next).unwrap();
        let unchanged = |_: &Path| true;
        let share = Share {
            root: &prev,
            rel: Path::new("t"),
            unchanged: &unchanged,
        };
        copy_entry(
            &src,
            &next.join("t"),
            None,
            None,
            &mut |_| true,
            true,
            Some(share),
        )
        .unwrap();
        let ino = |p: &Path| fs::symlink_metadata(p).unwrap().ino();
        assert_eq!(ino(&prev.join("t/a/b/same")), ino(&next.join("t/a/b/same")));
        assert_ne!(ino(&prev.join("t/a/new")), ino(&next.join("t/a/new")));
        assert_eq!(fs::read_to_string(next.join("t/a/new")).unwrap(), "n");
        // The previous result's `t/a` replaced by a link to a copy of it: nothing is shared.
        fs::rename(prev.join("t/a"), d.path().join("elsewhere")).unwrap();
        symlink(d.path().join("elsewhere"), prev.join("t/a")).unwrap();
        let again = d.path().join("again");
        fs::create_dir(&again).unwrap();
        let share = Share {
            root: &prev,
            rel: Path::new("t"),
            unchanged: &unchanged,
        };
        copy_entry(
            &src,
            &again.join("t"),
            None,
            None,
            &mut |_| true,
            true,
            Some(share),
        )
        .unwrap();
        assert_ne!(
            ino(&d.path().join("elsewhere/b/same")),
            ino(&again.join("t/a/b/same"))
        );
    }
}

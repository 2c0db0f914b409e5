//! File operations of COPY inside a mounted rootfs: symlink-safe path resolution (a path never
//! leaves the root, whatever the links inside say), recursive copies that keep modes, times and
//! links, and ownership/permission rewriting.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

/// Resolves `path` (absolute inside the container) to a host path under `root`, following symlinks
/// of every component but the last as the container would see them (absolute link targets are
/// re-rooted, `..` never climbs above the root).
pub fn resolve_in_root(root: &Path, path: &str) -> io::Result<PathBuf> {
    let mut parts: Vec<PathBuf> = Vec::new(); // resolved components, relative to root
    let mut pending: Vec<std::ffi::OsString> = Path::new(path)
        .components()
        .rev()
        .filter_map(comp_name)
        .collect();
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            parts.pop();
            continue;
        }
        let mut cur: PathBuf = root.to_path_buf();
        for p in &parts {
            cur.push(p);
        }
        cur.push(&name);
        let is_last = pending.is_empty();
        if !is_last {
            if let Ok(md) = fs::symlink_metadata(&cur) {
                if md.file_type().is_symlink() {
                    links += 1;
                    if links > 40 {
                        return Err(io::Error::other(format!(
                            "too many levels of symbolic links in {path}"
                        )));
                    }
                    let target = fs::read_link(&cur)?;
                    if target.is_absolute() {
                        parts.clear();
                    }
                    for c in target.components().rev().filter_map(comp_name) {
                        pending.push(c);
                    }
                    continue;
                }
            }
        }
        parts.push(PathBuf::from(name));
    }
    let mut out = root.to_path_buf();
    for p in parts {
        out.push(p);
    }
    Ok(out)
}

fn comp_name(c: Component<'_>) -> Option<std::ffi::OsString> {
    match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some("..".into()),
        _ => None,
    }
}

/// Creates `path` (absolute in the container) and its missing parents under `root` as directories
/// (0755, owned by `owner` or root). Returns the host path.
pub fn mkdir_all_in_root(
    root: &Path,
    path: &str,
    owner: Option<(u32, u32)>,
) -> io::Result<PathBuf> {
    let mut cur = String::new();
    let mut host = root.to_path_buf();
    for c in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        cur.push('/');
        cur.push_str(c);
        host = resolve_in_root(root, &cur)?;
        match fs::symlink_metadata(&host) {
            Ok(md) if md.is_dir() => {}
            Ok(md) if md.file_type().is_symlink() => {
                // A link as the last component: follow it inside the root.
                let target = resolve_link(root, &cur)?;
                if !target.is_dir() {
                    fs::create_dir_all(&target)?;
                }
                host = target;
            }
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "cannot create directory {cur}: a file is in the way"
                )));
            }
            Err(_) => {
                fs::create_dir(&host)?;
                fs::set_permissions(&host, fs::Permissions::from_mode(0o755))?;
                let (u, g) = owner.unwrap_or((0, 0));
                std::os::unix::fs::lchown(&host, Some(u), Some(g))?;
            }
        }
    }
    Ok(host)
}

/// Follows a symlink at container path `path` to its final host path under `root`.
pub fn resolve_link(root: &Path, path: &str) -> io::Result<PathBuf> {
    let mut p = path.to_string();
    for _ in 0..40 {
        let host = resolve_in_root(root, &p)?;
        match fs::symlink_metadata(&host) {
            Ok(md) if md.file_type().is_symlink() => {
                let t = fs::read_link(&host)?;
                p = if t.is_absolute() {
                    t.to_string_lossy().into_owned()
                } else {
                    let parent = Path::new(&p).parent().unwrap_or(Path::new("/"));
                    parent.join(t).to_string_lossy().into_owned()
                };
            }
            _ => return Ok(host),
        }
    }
    Err(io::Error::other(format!(
        "too many levels of symbolic links in {path}"
    )))
}

/// Copies `src` (host path, not following a symlink at `src` itself) to host path `dst`,
/// recursively for directories (merging into an existing directory), keeping modes, times and
/// symlinks; `owner` replaces the source ownership and `chmod` (octal or symbolic, applied to each
/// entry's own mode) its permissions. `filter` sees every path below `src` and drops what it
/// rejects. `fresh` says `dst` is known not to exist, which saves a lookup per file (entries
/// inside a directory this copy created are always fresh).
pub fn copy_entry(
    src: &Path,
    dst: &Path,
    owner: Option<(u32, u32)>,
    chmod: Option<&str>,
    filter: &mut dyn FnMut(&Path) -> bool,
    fresh: bool,
    link: &dyn Fn(&Path, &Path) -> Option<PathBuf>,
) -> io::Result<()> {
    let md = fs::symlink_metadata(src)?;
    let ft = md.file_type();
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
        let mut names: Vec<_> = fs::read_dir(src)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for n in names {
            let s = src.join(&n);
            if !filter(&s) {
                continue;
            }
            copy_entry(&s, &dst.join(&n), owner, chmod, filter, created, link)?;
        }
        return apply_attrs(dst, &md, owner, chmod);
    }
    if let Some(d) = existing {
        if d.is_dir() {
            fs::remove_dir_all(dst)?;
        } else {
            fs::remove_file(dst)?;
        }
    }
    if ft.is_file() {
        // `link` may name an identical earlier copy (same content, checked by the caller; same
        // size, mtime, owner and mode, checked here) to share instead of writing a new file.
        if let Some(prev) = link(src, dst) {
            let (uid, gid) = owner.unwrap_or((md.uid(), md.gid()));
            let same = fs::symlink_metadata(&prev).is_ok_and(|p| {
                p.is_file()
                    && p.len() == md.len()
                    && p.mtime() == md.mtime()
                    && p.mtime_nsec() == md.mtime_nsec()
                    && (p.uid(), p.gid()) == (uid, gid)
                    && Some(p.mode() & 0o7777) == target_mode(&md, chmod).ok()
            });
            if same && fs::hard_link(&prev, dst).is_ok() {
                return Ok(());
            }
        }
        // Copy through file descriptors and set owner, mode and times on the open file: one path
        // lookup per file instead of four.
        let mut from = fs::File::open(src)?;
        let mut to = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dst)?;
        io::copy(&mut from, &mut to)?;
        let (uid, gid) = owner.unwrap_or((md.uid(), md.gid()));
        std::os::unix::fs::fchown(&to, Some(uid), Some(gid))?;
        to.set_permissions(fs::Permissions::from_mode(target_mode(&md, chmod)?))?;
        let times = fs::FileTimes::new()
            .set_accessed(md.accessed()?)
            .set_modified(md.modified()?);
        return to.set_times(times);
    }
    if ft.is_symlink() {
        symlink(fs::read_link(src)?, dst)?;
    } else {
        // Device nodes, fifos, sockets: recreate them.
        let kind = nix::sys::stat::SFlag::from_bits_truncate(md.mode() & libc::S_IFMT);
        let perm = nix::sys::stat::Mode::from_bits_truncate(md.mode() & 0o7777);
        nix::sys::stat::mknod(dst, kind, perm, md.rdev()).map_err(io::Error::from)?;
    }
    apply_attrs(dst, &md, owner, chmod)
}

/// The permission bits a copied entry gets.
fn target_mode(src_md: &fs::Metadata, chmod: Option<&str>) -> io::Result<u32> {
    let own = src_md.mode() & 0o7777;
    match chmod {
        Some(c) => parse_chmod(c, own, src_md.is_dir())
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

/// A path made relative and lexically clean (no root, `.` or `..` components), for joining
/// under a directory without leaving it.
pub fn clean_rel(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
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

    #[test]
    fn resolution_stays_in_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("opt/real")).unwrap();
        symlink("/opt/real", root.join("link")).unwrap();
        symlink("../../../../etc", root.join("escape")).unwrap();
        assert_eq!(
            resolve_in_root(root, "/link/x").unwrap(),
            root.join("opt/real/x")
        );
        assert_eq!(
            resolve_in_root(root, "/escape/passwd").unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(resolve_in_root(root, "/../../a").unwrap(), root.join("a"));
        // The last component is not followed.
        assert_eq!(resolve_in_root(root, "/link").unwrap(), root.join("link"));
    }

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
        copy_entry(&src, &dst, None, None, &mut |_| true, false, &|_, _| None).unwrap();
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
            &|_, _| None,
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
            &|_, _| None,
        )
        .unwrap();
        // Symbolic modes apply to each entry's own mode.
        let md = fs::metadata(dst.join("sub/f")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o771);
    }
}

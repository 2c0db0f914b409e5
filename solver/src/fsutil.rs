//! File operations of COPY inside a mounted rootfs: recursive copies that keep modes, times and
//! links, and ownership/permission rewriting. Paths are resolved inside their root by
//! `rbuild-fsroot` before they get here; these functions only walk below a resolved object with
//! no-follow operations.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

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

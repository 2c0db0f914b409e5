//! Layer tar -> directory, with `.wh.` entries turned into overlay whiteouts and opaque markers.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use crate::layer::{OPAQUE_MARKER, OVERLAY_OPAQUE, WHITEOUT_PREFIX};
use crate::sys;
use crate::{Error, Result};

/// A reader of a tar stream, gzip- or zstd-compressed or plain, chosen by the stream's magic bytes.
pub fn decompressed<'a>(reader: impl Read + 'a) -> Result<Box<dyn Read + 'a>> {
    let mut br = BufReader::with_capacity(1 << 16, reader);
    let magic = br.fill_buf().map_err(Error::io("read layer", "<stream>"))?;
    if magic.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(br)))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(
            zstd::Decoder::with_buffer(br).map_err(Error::io("read zstd layer", "<stream>"))?,
        ))
    } else {
        Ok(Box::new(br))
    }
}

/// Whether an extended attribute named `name` may be carried between a layer tar and a
/// directory, in either direction. `trusted.*` never is: those names are the kernel's and
/// overlayfs's own metadata (`trusted.overlay.opaque`, `.redirect`, `.metacopy`, `.origin`...),
/// and a pulled or loaded layer that could plant them in a lowerdir would steer what the overlay
/// shows (redirect a directory elsewhere, hide lower content). The unpacker writes the opaque
/// marker itself for `.wh..wh..opq` entries. Everything else, `security.capability` (file
/// capabilities are image content) and `user.*` included, is kept.
pub fn layer_xattr_allowed(name: &[u8]) -> bool {
    !name.starts_with(b"trusted.")
}

/// File capabilities: kept in layers, dropped with set-id bits from local outputs.
const FILE_CAPS: &[u8] = b"security.capability";

/// Unpacks a layer tar (plain, gzip or zstd, detected by magic) into `dest`, converting `.wh.<name>`
/// entries to overlay whiteouts (char device 0/0) and `.wh..wh..opq` to the opaque xattr
/// (`trusted.overlay.opaque=y`). Ownership, modes, mtimes and the `SCHILY.xattr.*` that
/// [`layer_xattr_allowed`] accepts are applied (never `trusted.*`).
/// Refuses path traversal: absolute names, `..` components, and writing through a symlink
/// (an entry whose parent directory is a symlink), with an error naming the entry.
pub fn unpack_layer(reader: impl Read, dest: &Path) -> Result<()> {
    unpack(reader, dest, Mode::Layer)
}

/// What [`unpack`] makes of a tar.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Mode {
    /// A snapshot (overlay lower layer): whiteouts become overlay whiteouts, everything kept.
    Layer,
    /// On top of a merged filesystem: whiteouts remove lower content. With `preserve_special`
    /// false, as a tar extraction by an unprivileged user: device nodes are skipped, set-user-id
    /// and set-group-id bits cleared and file capabilities dropped.
    Merge { preserve_special: bool },
}

/// Applies a layer on top of `dest` (a merged filesystem, not an overlay layer): whiteouts
/// remove what lower layers put there, opaque markers empty the directory of lower content.
pub(crate) fn apply_layer(reader: impl Read, dest: &Path, preserve_special: bool) -> Result<()> {
    unpack(reader, dest, Mode::Merge { preserve_special })
}

fn unpack(reader: impl Read, dest: &Path, how: Mode) -> Result<()> {
    let merge = how != Mode::Layer;
    let plain = how
        == Mode::Merge {
            preserve_special: false,
        };
    let mut written: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    fs::create_dir_all(dest).map_err(Error::io("create", dest))?;
    let mut ar = tar::Archive::new(decompressed(reader)?);
    let mut dirs: Vec<(PathBuf, u32, i64)> = Vec::new();
    let entries = ar
        .entries()
        .map_err(Error::io("read layer tar into", dest))?;
    for entry in entries {
        let mut entry = entry.map_err(Error::io("read layer tar into", dest))?;
        let raw = entry
            .path()
            .map_err(Error::io("read layer tar into", dest))?
            .into_owned();
        let Some(rel) = safe_relative(&raw)? else {
            continue; // "." itself
        };
        let header = entry.header().clone();
        let kind = header.entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            continue;
        }
        let (parent_rel, name) = match (rel.parent(), rel.file_name()) {
            (Some(p), Some(n)) => (p.to_path_buf(), n.to_os_string()),
            _ => continue,
        };
        let parent = prepare_parent(dest, &parent_rel, &raw)?;
        let name_bytes = name.as_bytes();
        if name_bytes == OPAQUE_MARKER.as_bytes() {
            if merge {
                let children = fs::read_dir(&parent).map_err(Error::io("read dir", &parent))?;
                for c in children {
                    let c = c.map_err(Error::io("read dir", &parent))?.path();
                    if !written.contains(&c) {
                        remove_existing(&c)?;
                    }
                }
                continue;
            }
            sys::set_xattr(&parent, OsStr::from_bytes(OVERLAY_OPAQUE), b"y")
                .map_err(Error::io("set opaque xattr on", &parent))?;
            continue;
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                continue; // other AUFS metadata (.wh..wh.plnk etc.)
            }
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(Error::UnsafePath {
                    path: raw,
                    reason: "invalid whiteout name",
                });
            }
            let target = parent.join(OsStr::from_bytes(hidden));
            if merge {
                if !written.contains(&target) {
                    remove_existing(&target)?;
                }
                continue;
            }
            remove_existing(&target)?;
            sys::mknod(&target, libc::S_IFCHR, 0, 0, 0)
                .map_err(Error::io("create whiteout", &target))?;
            // The entry's mtime, so writing the snapshot again gives the same layer.
            sys::set_mtime(&target, header.mtime().unwrap_or(0) as i64)
                .map_err(Error::io("set mtime of", &target))?;
            continue;
        }
        let target = parent.join(&name);
        let mut mode = header.mode().unwrap_or(0o644) & 0o7777;
        if plain {
            if matches!(kind, EntryType::Char | EntryType::Block) {
                continue;
            }
            if kind != EntryType::Directory {
                mode &= !(libc::S_ISUID | libc::S_ISGID);
            }
        }
        let uid = header.uid().unwrap_or(0) as u32;
        let gid = header.gid().unwrap_or(0) as u32;
        let mtime = header.mtime().unwrap_or(0) as i64;
        let mut xattrs = pax_xattrs(&mut entry)?;
        if plain {
            xattrs.retain(|(k, _)| k.as_bytes() != FILE_CAPS);
        }
        written.insert(target.clone());
        match kind {
            EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_existing(&target)?;
                        fs::create_dir(&target).map_err(Error::io("create", &target))?;
                    }
                    Err(_) => fs::create_dir(&target).map_err(Error::io("create", &target))?,
                }
                dirs.push((target.clone(), mode, mtime));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                remove_existing(&target)?;
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&target)
                    .map_err(Error::io("create", &target))?;
                io::copy(&mut entry, &mut f).map_err(Error::io("write", &target))?;
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(Error::io("read link name of", &target))?
                    .ok_or_else(|| Error::UnsafePath {
                        path: raw.clone(),
                        reason: "symlink without target",
                    })?
                    .into_owned();
                remove_existing(&target)?;
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(Error::io("create symlink", &target))?;
            }
            EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(Error::io("read link name of", &target))?
                    .ok_or_else(|| Error::UnsafePath {
                        path: raw.clone(),
                        reason: "hard link without target",
                    })?
                    .into_owned();
                let src_rel = safe_relative(&link)?.ok_or_else(|| Error::UnsafePath {
                    path: link.clone(),
                    reason: "hard link to the root",
                })?;
                let src_parent =
                    prepare_parent(dest, src_rel.parent().unwrap_or(Path::new("")), &link)?;
                let src = src_parent.join(src_rel.file_name().unwrap_or_default());
                remove_existing(&target)?;
                fs::hard_link(&src, &target).map_err(Error::io("create hard link", &target))?;
                continue; // shares the metadata of its source
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let k = match kind {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                remove_existing(&target)?;
                sys::mknod(&target, k, mode, major, minor)
                    .map_err(Error::io("create device node", &target))?;
            }
            _ => continue, // unknown entry types are skipped
        }
        lchown(&target, Some(uid), Some(gid)).map_err(Error::io("chown", &target))?;
        for (k, v) in &xattrs {
            sys::set_xattr(&target, k, v).map_err(Error::io("set xattr on", &target))?;
        }
        if kind != EntryType::Symlink && kind != EntryType::Directory {
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                .map_err(Error::io("chmod", &target))?;
        }
        if kind != EntryType::Directory {
            sys::set_mtime(&target, mtime).map_err(Error::io("set mtime of", &target))?;
        }
    }
    // Directories last, deepest first: adding children changed their mtimes.
    for (d, mode, mtime) in dirs.iter().rev() {
        fs::set_permissions(d, fs::Permissions::from_mode(*mode)).map_err(Error::io("chmod", d))?;
        sys::set_mtime(d, *mtime).map_err(Error::io("set mtime of", d))?;
    }
    Ok(())
}

/// The normal components of an archive path; None for the root itself. Errors on absolute
/// paths and `..`.
fn safe_relative(raw: &Path) -> Result<Option<PathBuf>> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(Error::UnsafePath {
                    path: raw.to_path_buf(),
                    reason: "path contains '..'",
                })
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(Error::UnsafePath {
                    path: raw.to_path_buf(),
                    reason: "absolute path",
                })
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Makes sure every directory on `rel` exists under `dest` and none is a symlink; returns the
/// absolute parent.
fn prepare_parent(dest: &Path, rel: &Path, raw: &Path) -> Result<PathBuf> {
    let mut cur = dest.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::UnsafePath {
                    path: raw.to_path_buf(),
                    reason: "a parent directory is a symlink (refusing to write through it)",
                })
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::UnsafePath {
                    path: raw.to_path_buf(),
                    reason: "a parent is not a directory",
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&cur).map_err(Error::io("create", &cur))?;
            }
            Err(e) => return Err(Error::io("stat", &cur)(e)),
        }
    }
    Ok(cur)
}

/// Removes whatever is at `p` (file, symlink, node, or directory tree).
fn remove_existing(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).map_err(Error::io("remove", p)),
        Ok(_) => fs::remove_file(p).map_err(Error::io("remove", p)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("stat", p)(e)),
    }
}

fn pax_xattrs<R: Read>(
    entry: &mut tar::Entry<'_, R>,
) -> Result<Vec<(std::ffi::OsString, Vec<u8>)>> {
    let mut out = Vec::new();
    let path = entry.path_bytes().into_owned();
    let Some(exts) = entry.pax_extensions().map_err(Error::io(
        "read pax header of",
        PathBuf::from(String::from_utf8_lossy(&path).into_owned()),
    ))?
    else {
        return Ok(out);
    };
    for ext in exts.flatten() {
        let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
            continue;
        };
        if layer_xattr_allowed(name) {
            out.push((
                OsStr::from_bytes(name).to_os_string(),
                ext.value_bytes().to_vec(),
            ));
        }
    }
    Ok(out)
}

/// Applies to `path` (not following a symlink) the `SCHILY.xattr.*` records of a tar entry that
/// [`layer_xattr_allowed`] accepts: the one xattr rule for extractors other than the layer
/// unpacker (ADD of a local archive). A file system that refuses an attribute (EPERM, ENOTSUP) is
/// not an error, as with Docker's archive extraction. Call it after any chown: the kernel drops
/// `security.capability` when a file changes owner.
pub fn apply_tar_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>, path: &Path) -> Result<()> {
    for (k, v) in pax_xattrs(entry)? {
        match sys::set_xattr(path, &k, &v) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOTSUP)) => {}
            Err(e) => return Err(Error::io("set xattr on", path)(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(
            safe_relative(Path::new("./a/./b")).unwrap(),
            Some(PathBuf::from("a/b"))
        );
        assert_eq!(safe_relative(Path::new("./")).unwrap(), None);
        assert!(safe_relative(Path::new("/etc/passwd")).is_err());
        assert!(safe_relative(Path::new("a/../../x")).is_err());
    }
}

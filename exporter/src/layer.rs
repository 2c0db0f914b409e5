//! Snapshot directory -> uncompressed layer tar (hashed for the diff_id; written as a blob only
//! for directories that are not kept, or on demand through `source`).

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

use rbuild_cache::{SnapshotId, Store};
use rbuild_types::Digest;
use tar::{EntryType, Header};

use crate::sys;
use crate::tarhash::{Index, ResumeSink};
use crate::{Error, Result};

/// Prefix of whiteout entries in layer tars.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the opaque-directory marker entry in layer tars.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The overlayfs xattr marking an opaque directory.
pub(crate) const OVERLAY_OPAQUE: &[u8] = b"trusted.overlay.opaque";

/// Hashes the snapshot dir as an uncompressed layer tar and records it (`put_snapshot_layer`):
/// returns (diff_id, tar size). No blob is written: a build step's tar is made again from the
/// snapshot, verified against this diff_id, when an output, a push or a cache export needs it
/// ([`crate::layer_blob`]). Overlay whiteouts (char device 0/0) become `.wh.<name>` entries,
/// opaque dirs (xattr `trusted.overlay.opaque=y`) get a `.wh..wh..opq` entry; entries are sorted
/// by name within each directory (depth first, stable); uid/gid/mode/mtime, hard links,
/// symlinks, device nodes, fifos and xattrs (except `trusted.*`, see
/// [`crate::layer_xattr_allowed`]) are kept. Sockets are skipped. The same snapshot always
/// gives the same bytes.
pub fn write_layer(store: &Store, snapshot: &SnapshotId) -> Result<(Digest, u64)> {
    write_layer_clamped(store, snapshot, None)
}

/// [`write_layer`] with every entry's mtime clamped to `epoch` (seconds) when given, as
/// BuildKit's `rewrite-timestamp` does for `SOURCE_DATE_EPOCH`: files a RUN step wrote get the
/// epoch instead of the build's wall clock, so two builds of the same inputs give the same layer.
/// The clamp is recorded with the layer, so the tar made later is the same.
pub fn write_layer_clamped(
    store: &Store,
    snapshot: &SnapshotId,
    epoch: Option<i64>,
) -> Result<(Digest, u64)> {
    write_layer_after(store, snapshot, epoch, None)
}

/// [`write_layer_clamped`] for a step whose previous result was `previous` (held in use by the
/// caller): the hash resumes from the previous layer's SHA-256 midstate after the longest run
/// of leading tar entries the two share (unchanged files hard-linked from it), so only the
/// entries from the first change on are read (see `tarhash`). The digest is that of a full pass.
pub fn write_layer_after(
    store: &Store,
    snapshot: &SnapshotId,
    epoch: Option<i64>,
    previous: Option<&SnapshotId>,
) -> Result<(Digest, u64)> {
    let root = store.snapshot_dir(snapshot);
    if !root.is_dir() {
        return Err(Error::io("open snapshot", &root)(io::Error::from(
            io::ErrorKind::NotFound,
        )));
    }
    let old = previous.map(|p| store.snapshot_dir(p));
    let (d, size, _) = hash_layer(&root, epoch, old.as_deref())?;
    store.put_snapshot_layer(&d, snapshot, size, epoch.map(|e| e.max(0)))?;
    Ok((d, size))
}

/// Hashes the snapshot whose files are in `root` as a layer tar (resuming from the index of
/// the snapshot whose files are in `previous` when it fits) and writes its index beside
/// `root`; returns the digest, the tar size and how many files' data came from the previous
/// hash state instead of being read.
pub(crate) fn hash_layer(
    root: &Path,
    epoch: Option<i64>,
    previous: Option<&Path>,
) -> Result<(Digest, u64, u64)> {
    let clamp = epoch.map(|e| e.max(0));
    let old = previous.and_then(|p| Index::read(&Index::path_for(p)));
    let mut sink = ResumeSink::new(old, clamp);
    walk_tar(root, epoch, &mut sink)?;
    let skipped = sink.skipped;
    let (d, size, index) = sink.finish(clamp);
    // A cache: a failed write only costs the next build its resume.
    let _ = index.write(&Index::path_for(root));
    Ok((d, size, skipped))
}

/// Writes any overlay upper directory (e.g. a kept container's writable layer) as an uncompressed
/// layer tar blob, with the same translation as [`write_layer`]; returns (diff_id, size). No
/// snapshot is recorded: [`crate::ensure_snapshot`] unpacks the blob when the layer is used.
pub fn write_layer_dir(store: &Store, dir: &Path) -> Result<(Digest, u64)> {
    let mut w = store.blob_writer()?;
    write_tar_clamped(dir, &mut w, None)?;
    Ok(w.commit(None)?)
}

/// Writes `root` as a layer tar into `out`, mtimes clamped to `epoch` when given.
pub(crate) fn write_tar_clamped(
    root: &Path,
    out: &mut dyn Write,
    epoch: Option<i64>,
) -> Result<()> {
    let mut sink = WriteSink {
        out,
        buf: Vec::new(),
    };
    walk_tar(root, epoch, &mut sink)
}

/// A regular file whose data follows an entry's header: `size` bytes (as stat'ed when the
/// header was made), padded to the next 512-byte block.
pub(crate) struct FileData<'a> {
    /// The file in the snapshot (for messages, and to open it later).
    pub path: &'a Path,
    /// Its directory, open, and its name there: opened now with no path walk.
    pub dir: BorrowedFd<'a>,
    pub name: &'a CStr,
    /// Its metadata (the header's source).
    pub meta: &'a Stat,
}

impl FileData<'_> {
    /// Opens the file for reading (relative to its directory, not following a symlink).
    pub(crate) fn open(&self) -> io::Result<File> {
        open_at(self.dir, self.name, OFlag::O_RDONLY).map(File::from)
    }
}

/// Opens `name` in `dir` with `flags` (plus `O_NOFOLLOW | O_CLOEXEC`).
fn open_at<P: ?Sized + nix::NixPath>(
    dir: impl AsFd,
    name: &P,
    flags: OFlag,
) -> io::Result<OwnedFd> {
    nix::fcntl::openat(
        dir,
        name,
        flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// A snapshot entry's `fstatat` result, read as `std::fs::Metadata` is (no path walk to get it).
#[derive(Clone, Copy)]
pub(crate) struct Stat(libc::stat);

impl Stat {
    /// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
    fn at<P: ?Sized + nix::NixPath>(dir: impl AsFd, name: &P) -> io::Result<Stat> {
        nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .map(Stat)
            .map_err(io::Error::from)
    }
    fn kind(&self) -> u32 {
        self.0.st_mode & libc::S_IFMT
    }
    pub(crate) fn mode(&self) -> u32 {
        self.0.st_mode
    }
    pub(crate) fn uid(&self) -> u32 {
        self.0.st_uid
    }
    pub(crate) fn gid(&self) -> u32 {
        self.0.st_gid
    }
    pub(crate) fn mtime(&self) -> i64 {
        self.0.st_mtime
    }
    pub(crate) fn mtime_nsec(&self) -> i64 {
        self.0.st_mtime_nsec
    }
    pub(crate) fn len(&self) -> u64 {
        self.0.st_size as u64
    }
    pub(crate) fn dev(&self) -> u64 {
        self.0.st_dev
    }
    pub(crate) fn ino(&self) -> u64 {
        self.0.st_ino
    }
    fn nlink(&self) -> u64 {
        self.0.st_nlink
    }
    fn rdev(&self) -> u64 {
        self.0.st_rdev
    }
}

/// Where [`walk_tar`] sends the tar stream, one entry at a time.
pub(crate) trait EntrySink {
    /// One entry: `head` is every tar byte before its data (a PAX xattr header, a long-name
    /// entry, the header itself; for a directory with an opaque marker, the marker too);
    /// `data` the regular file whose bytes follow.
    fn entry(&mut self, head: &[u8], data: Option<FileData<'_>>) -> io::Result<()>;
    /// The end of the archive (the two zero blocks).
    fn end(&mut self, tail: &[u8]) -> io::Result<()>;
}

/// The plain sink: everything into a writer, file data in 1 MiB blocks.
struct WriteSink<'a> {
    out: &'a mut dyn Write,
    buf: Vec<u8>,
}

impl EntrySink for WriteSink<'_> {
    fn entry(&mut self, head: &[u8], data: Option<FileData<'_>>) -> io::Result<()> {
        self.out.write_all(head)?;
        if let Some(d) = data {
            copy_data(d.open()?, d.meta.len(), self.out, &mut self.buf)?;
        }
        Ok(())
    }
    fn end(&mut self, tail: &[u8]) -> io::Result<()> {
        self.out.write_all(tail)
    }
}

/// Walks `root` (depth first, names sorted bytewise in each directory) and sends each entry of
/// its layer tar to `sink`: the one definition of a layer's bytes, used for the build-time hash
/// and for every blob made later, so both are the same byte for byte.
pub(crate) fn walk_tar(root: &Path, epoch: Option<i64>, sink: &mut dyn EntrySink) -> Result<()> {
    // Headers are built by the tar crate into this buffer and handed over entry by entry.
    let mut b = tar::Builder::new(Vec::new());
    let mut links = HashMap::new();
    let clamp = epoch.map(|e| e.max(0) as u64);
    let dir = open_at(
        nix::fcntl::AT_FDCWD,
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
    )
    .map_err(Error::io("read dir", root))?;
    let mut w = Walk {
        b: &mut b,
        sink,
        links: &mut links,
        clamp,
        abs: root.to_path_buf(),
        rel: PathBuf::new(),
    };
    w.dir(&dir)?;
    let tail = b
        .into_inner()
        .map_err(Error::io("write layer tar for", root))?;
    sink.end(&tail)
        .map_err(Error::io("write layer tar for", root))?;
    Ok(())
}

type Links = HashMap<(u64, u64), PathBuf>;

/// One walk over a snapshot: every directory is read through an open descriptor and each
/// entry stat'ed, its xattrs listed and its data opened relative to it (no path walked per
/// entry); `abs` and `rel` are the current entry's paths, one buffer each, pushed and popped.
struct Walk<'a> {
    b: &'a mut tar::Builder<Vec<u8>>,
    sink: &'a mut dyn EntrySink,
    links: &'a mut Links,
    clamp: Option<u64>,
    abs: PathBuf,
    rel: PathBuf,
}

impl Walk<'_> {
    /// Hands the header bytes gathered in `b` (and the file data, if any) to the sink.
    fn emit(&mut self, data: Option<(BorrowedFd<'_>, &CStr, &Stat)>) -> Result<()> {
        let head = std::mem::take(self.b.get_mut());
        let path = self.abs.as_path();
        let r = self.sink.entry(
            &head,
            data.map(|(dir, name, meta)| FileData {
                path,
                dir,
                name,
                meta,
            }),
        );
        // The buffer is reused (its capacity kept) for the next entry.
        *self.b.get_mut() = head;
        self.b.get_mut().clear();
        r.map_err(Error::io("write tar entry for", &self.abs))
    }

    fn dir(&mut self, dir: &OwnedFd) -> Result<()> {
        let mut names: Vec<CString> = Vec::new();
        let dup = dir.try_clone().map_err(Error::io("read dir", &self.abs))?;
        let mut d =
            nix::dir::Dir::from_fd(dup).map_err(|e| Error::io("read dir", &self.abs)(e.into()))?;
        for e in d.iter() {
            let e = e.map_err(|e| Error::io("read dir", &self.abs)(e.into()))?;
            let n = e.file_name();
            if n != c"." && n != c".." {
                names.push(n.to_owned());
            }
        }
        drop(d);
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in &names {
            let os = std::ffi::OsStr::from_bytes(name.as_bytes());
            self.abs.push(os);
            self.rel.push(os);
            let r = self.entry(dir, name);
            self.abs.pop();
            self.rel.pop();
            r?;
        }
        Ok(())
    }

    fn entry(&mut self, dir: &OwnedFd, name: &CStr) -> Result<()> {
        let m = Stat::at(dir, name).map_err(Error::io("stat", &self.abs))?;
        let os = std::ffi::OsStr::from_bytes(name.to_bytes());
        let at = At {
            dir: dir.as_fd(),
            name,
            path: &self.abs,
        };
        match append_entry(self.b, &at, &self.rel, os, &m, self.links, self.clamp)? {
            Kind::Data => self.emit(Some((dir.as_fd(), name, &m)))?,
            Kind::Dir => {
                self.emit(None)?;
                let sub = open_at(dir, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                    .map_err(Error::io("read dir", &self.abs))?;
                self.dir(&sub)?;
            }
            Kind::NoData => self.emit(None)?,
        }
        Ok(())
    }
}

/// A snapshot entry as the walk has it: its open directory, its name there, its full path.
struct At<'a> {
    dir: BorrowedFd<'a>,
    name: &'a CStr,
    path: &'a Path,
}

/// What follows an entry's header.
enum Kind {
    /// The regular file's data.
    Data,
    /// The directory's entries.
    Dir,
    /// Nothing (links, devices, fifos, whiteouts, skipped sockets).
    NoData,
}

/// Appends the header(s) of one snapshot entry to `b` (no file data).
fn append_entry(
    b: &mut tar::Builder<Vec<u8>>,
    at: &At<'_>,
    relp: &Path,
    name: &std::ffi::OsStr,
    m: &Stat,
    links: &mut Links,
    clamp: Option<u64>,
) -> Result<Kind> {
    let path = at.path;
    let kind = m.kind();
    let mut h = Header::new_gnu();
    h.set_mode(m.mode() & 0o7777);
    h.set_uid(m.uid() as u64);
    h.set_gid(m.gid() as u64);
    let mtime = clamp_mtime(m.mtime(), clamp);
    h.set_mtime(mtime);
    h.set_size(0);
    let werr = Error::io("write tar entry for", path);
    if kind == libc::S_IFCHR && m.rdev() == 0 {
        // Overlay whiteout -> .wh.<name>
        let mut wh = std::ffi::OsString::from(WHITEOUT_PREFIX);
        wh.push(name);
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0);
        let parent = relp.parent().unwrap_or(Path::new(""));
        b.append_data(&mut h, parent.join(wh), io::empty())
            .map_err(werr)?;
        return Ok(Kind::NoData);
    }
    if kind == libc::S_IFSOCK {
        // Sockets cannot be represented in a tar: skipped, with their xattrs.
        return Ok(Kind::NoData);
    }
    let xattrs =
        sys::list_xattrs_at(at.dir, at.name, path).map_err(Error::io("list xattrs of", path))?;
    append_xattrs(b, path, &xattrs)?;
    if kind == libc::S_IFDIR {
        h.set_entry_type(EntryType::Directory);
        b.append_data(&mut h, relp, io::empty()).map_err(werr)?;
        if xattrs.iter().any(|n| n == OVERLAY_OPAQUE)
            && sys::get_xattr(path, OVERLAY_OPAQUE)
                .map_err(Error::io("read xattr of", path))?
                .as_deref()
                == Some(b"y")
        {
            let mut oh = Header::new_gnu();
            oh.set_entry_type(EntryType::Regular);
            oh.set_mode(0);
            oh.set_size(0);
            oh.set_mtime(mtime);
            b.append_data(&mut oh, relp.join(OPAQUE_MARKER), io::empty())
                .map_err(Error::io("write tar entry for", path))?;
        }
        return Ok(Kind::Dir);
    }
    if kind == libc::S_IFREG {
        if m.nlink() > 1 {
            if let Some(first) = links.get(&(m.dev(), m.ino())) {
                h.set_entry_type(EntryType::Link);
                b.append_link(&mut h, relp, first).map_err(werr)?;
                return Ok(Kind::NoData);
            }
            links.insert((m.dev(), m.ino()), relp.to_path_buf());
        }
        h.set_entry_type(EntryType::Regular);
        h.set_size(m.len());
        // The header (and a long-name entry when needed) through the tar crate, with no data;
        // the data in big blocks straight to the sink (see `copy_data`).
        b.append_data(&mut h, relp, io::empty()).map_err(werr)?;
        return Ok(Kind::Data);
    }
    if kind == libc::S_IFLNK {
        let target = nix::fcntl::readlinkat(at.dir, at.name)
            .map_err(|e| Error::io("read link", path)(e.into()))?;
        h.set_entry_type(EntryType::Symlink);
        b.append_link(&mut h, relp, &target).map_err(werr)?;
    } else if kind == libc::S_IFCHR || kind == libc::S_IFBLK {
        let (maj, min) = sys::dev_major_minor(m.rdev());
        h.set_entry_type(if kind == libc::S_IFCHR {
            EntryType::Char
        } else {
            EntryType::Block
        });
        h.set_device_major(maj)
            .map_err(Error::io("write tar entry for", path))?;
        h.set_device_minor(min)
            .map_err(Error::io("write tar entry for", path))?;
        b.append_data(&mut h, relp, io::empty()).map_err(werr)?;
    } else if kind == libc::S_IFIFO {
        h.set_entry_type(EntryType::Fifo);
        b.append_data(&mut h, relp, io::empty()).map_err(werr)?;
    }
    Ok(Kind::NoData)
}

/// Block size of layer data copies: big enough that one `read` and one `write` move a MiB (the
/// blob writer passes writes of its buffer's size straight to the file, hashing them on the way).
const COPY_BLOCK: usize = 1 << 20;

/// Writes exactly `size` bytes of `f` and the padding to the next 512-byte block: the data of a
/// tar entry whose header is written. Read once, in 1 MiB blocks into `buf`, each block written
/// (and hashed by the blob writer) from there: no other copy. A file that shrank since its stat
/// is padded with zeros, one that grew is cut at `size`, so the tar stays well formed.
fn copy_data(mut f: File, size: u64, out: &mut dyn Write, buf: &mut Vec<u8>) -> io::Result<()> {
    use io::Read;
    buf.resize(COPY_BLOCK, 0);
    let mut left = size;
    while left > 0 {
        let want = left.min(COPY_BLOCK as u64) as usize;
        let n = match f.read(&mut buf[..want]) {
            Ok(0) => {
                // Shrunk: zeros for the rest.
                buf[..want].fill(0);
                want
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    let pad = (512 - (size % 512) as usize) % 512;
    out.write_all(&[0u8; 512][..pad])
}

/// An entry's mtime: its own, but never later than the clamp.
fn clamp_mtime(mtime: i64, clamp: Option<u64>) -> u64 {
    let t = mtime.max(0) as u64;
    match clamp {
        Some(c) => t.min(c),
        None => t,
    }
}

/// Writes a PAX extended header carrying the xattrs `names` of `path` (if any) as
/// `SCHILY.xattr.*`.
fn append_xattrs<W: Write>(b: &mut tar::Builder<W>, path: &Path, names: &[Vec<u8>]) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let mut records = Vec::new();
    for n in names {
        if !crate::unpack::layer_xattr_allowed(n) {
            continue;
        }
        if let Some(v) = sys::get_xattr(path, n).map_err(Error::io("read xattr of", path))? {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(n);
            records.push((key, v));
        }
    }
    if records.is_empty() {
        return Ok(());
    }
    let data = pax_data(&records);
    let mut h = Header::new_ustar();
    h.set_entry_type(EntryType::XHeader);
    h.set_path("PaxHeader")
        .map_err(Error::io("write tar entry for", path))?;
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, &data[..])
        .map_err(Error::io("write tar entry for", path))?;
    Ok(())
}

/// Encodes PAX records: `<len> <key>=<value>\n`, where len counts the whole record.
pub(crate) fn pax_data(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let rest = k.len() + v.len() + 3; // ' ', '=', '\n'
        let mut len = rest + 1;
        loop {
            let l = rest + len.to_string().len();
            if l == len {
                break;
            }
            len = l;
        }
        out.extend_from_slice(len.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn mtimes_clamp_to_the_epoch() {
        assert_eq!(clamp_mtime(2_000_000_000, Some(1_000)), 1_000);
        assert_eq!(clamp_mtime(500, Some(1_000)), 500);
        assert_eq!(clamp_mtime(-5, None), 0);
        assert_eq!(clamp_mtime(2_000_000_000, None), 2_000_000_000);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("new"), b"x").unwrap();
        let mut a = Vec::new();
        write_tar_clamped(dir.path(), &mut a, Some(1_000)).unwrap();
        let mut ar = tar::Archive::new(&a[..]);
        for e in ar.entries().unwrap() {
            assert_eq!(e.unwrap().header().mtime().unwrap(), 1_000);
        }
    }

    #[test]
    fn data_is_padded_and_exact() {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..(COPY_BLOCK + 1000)).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("big"), &big).unwrap();
        std::fs::write(dir.path().join("small"), b"abc").unwrap();
        let mut a = Vec::new();
        write_tar_clamped(dir.path(), &mut a, None).unwrap();
        assert_eq!(a.len() % 512, 0);
        let mut ar = tar::Archive::new(&a[..]);
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            io::Read::read_to_end(&mut e, &mut data).unwrap();
            seen.push((name, data));
        }
        assert_eq!(
            seen,
            vec![
                ("big".to_string(), big),
                ("small".to_string(), b"abc".to_vec())
            ]
        );
        // A file that shrank after its stat: the entry keeps its declared size, zero-filled.
        let f = File::open(dir.path().join("small")).unwrap();
        let mut out = Vec::new();
        copy_data(f, 5, &mut out, &mut Vec::new()).unwrap();
        assert_eq!(out.len(), 512);
        assert_eq!(&out[..5], b"abc\0\0");
    }

    /// A tree of `dirs` x `files` small files (and one big one), directory mtimes fixed.
    fn tree(root: &Path, dirs: usize, files: usize, from: Option<&Path>, change: &[&str]) {
        for d in 0..dirs {
            let dir = root.join(format!("files/d{d:02}"));
            fs::create_dir_all(&dir).unwrap();
            for f in 0..files {
                let rel = format!("files/d{d:02}/f{f:03}.txt");
                let p = root.join(&rel);
                match from {
                    Some(old) if !change.contains(&rel.as_str()) => {
                        fs::hard_link(old.join(&rel), &p).unwrap()
                    }
                    _ => {
                        let text = if change.contains(&rel.as_str()) {
                            format!("changed {rel}\n")
                        } else {
                            format!("file {rel}\n").repeat(3)
                        };
                        fs::write(&p, text).unwrap();
                        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
                        File::options()
                            .write(true)
                            .open(&p)
                            .unwrap()
                            .set_modified(t)
                            .unwrap();
                    }
                }
            }
        }
        let big = root.join("files/zbig");
        match from {
            Some(old) => fs::hard_link(old.join("files/zbig"), &big).unwrap(),
            None => fs::write(&big, vec![7u8; (COPY_BLOCK * 2) + 5]).unwrap(),
        }
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(2_000_000);
        for d in 0..dirs {
            File::open(root.join(format!("files/d{d:02}")))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        File::open(root.join("files"))
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    fn full_digest(root: &Path, epoch: Option<i64>) -> (Digest, u64) {
        let mut w = rbuild_types::Sha256Writer::new(io::sink());
        write_tar_clamped(root, &mut w, epoch).unwrap();
        let (_, d, n) = w.finish();
        (d, n)
    }

    /// The resumed hash is the hash of the whole tar, whatever changed and where; only the
    /// entries from the first change on are read.
    #[test]
    fn resumed_hash_equals_a_full_pass() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a/fs");
        tree(&a, 8, 40, None, &[]);
        let (d, n, skipped) = hash_layer(&a, None, None).unwrap();
        assert_eq!((d.clone(), n), full_digest(&a, None));
        assert_eq!(skipped, 0);
        let cases: &[(&str, &[&str], bool)] = &[
            ("nothing changed", &[], true),
            ("one file in the middle", &["files/d05/f017.txt"], true),
            ("the first file", &["files/d00/f000.txt"], false),
            ("the last small file", &["files/d07/f039.txt"], true),
        ];
        for (i, (what, change, expect_skip)) in cases.iter().enumerate() {
            let b = t.path().join(format!("b{i}/fs"));
            tree(&b, 8, 40, Some(&a), change);
            let (db, nb, skipped) = hash_layer(&b, None, Some(&a)).unwrap();
            assert_eq!((db.clone(), nb), full_digest(&b, None), "{what}");
            assert_eq!(db == d, change.is_empty(), "{what}");
            assert_eq!(skipped > 0, *expect_skip, "{what}: skipped {skipped}");
            // The new index resumes the next build just as well (a chain of changes).
            let c = t.path().join(format!("c{i}/fs"));
            tree(&c, 8, 40, Some(&b), &["files/d06/f001.txt"]);
            let (dc, nc, sc) = hash_layer(&c, None, Some(&b)).unwrap();
            assert_eq!(
                (dc, nc),
                full_digest(&c, None),
                "{what}, then another change"
            );
            assert!(sc > 0, "{what}, then another change");
        }
        // An added and a removed file, a renamed directory, another clamp, a damaged index.
        let b = t.path().join("added/fs");
        tree(&b, 8, 40, Some(&a), &[]);
        fs::write(b.join("files/d03/f017b.txt"), b"new").unwrap();
        fs::remove_file(b.join("files/d06/f000.txt")).unwrap();
        let (db, nb, _) = hash_layer(&b, None, Some(&a)).unwrap();
        assert_eq!((db, nb), full_digest(&b, None));
        let (db, nb, skipped) = hash_layer(&b, Some(1_500_000), Some(&a)).unwrap();
        assert_eq!((db, nb), full_digest(&b, Some(1_500_000)));
        assert_eq!(
            skipped, 0,
            "another clamp: nothing is taken from the old index"
        );
        let idx = Index::path_for(&a);
        let mut bytes = fs::read(&idx).unwrap();
        bytes[40] ^= 1;
        fs::write(&idx, bytes).unwrap();
        let b = t.path().join("damaged-index/fs");
        tree(&b, 8, 40, Some(&a), &["files/d05/f017.txt"]);
        let (db, nb, skipped) = hash_layer(&b, None, Some(&a)).unwrap();
        assert_eq!((db, nb), full_digest(&b, None));
        assert_eq!(skipped, 0);
    }

    #[test]
    fn pax_lengths_count_themselves() {
        let d = pax_data(&[(b"k".to_vec(), b"v".to_vec())]);
        assert_eq!(d, b"6 k=v\n");
        let long = vec![b'x'; 95];
        let d = pax_data(&[(b"k".to_vec(), long)]);
        let (len, _) = std::str::from_utf8(&d[..4])
            .unwrap()
            .split_once(' ')
            .unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), d.len());
    }
}

//! Snapshot directory -> uncompressed layer tar (hashed for the diff_id; written as a blob only
//! for directories that are not kept, or on demand through `source`).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

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
    /// The file in the snapshot.
    pub path: &'a Path,
    /// Its metadata (the header's source).
    pub meta: &'a fs::Metadata,
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
            let f = File::open(d.path)?;
            copy_data(f, d.meta.len(), self.out, &mut self.buf)?;
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
    walk(&mut b, sink, root, Path::new(""), &mut links, clamp)?;
    let tail = b
        .into_inner()
        .map_err(Error::io("write layer tar for", root))?;
    sink.end(&tail)
        .map_err(Error::io("write layer tar for", root))?;
    Ok(())
}

type Links = HashMap<(u64, u64), PathBuf>;

/// Hands the header bytes gathered in `b` (and the file data, if any) to the sink.
fn emit(
    b: &mut tar::Builder<Vec<u8>>,
    sink: &mut dyn EntrySink,
    path: &Path,
    data: Option<&fs::Metadata>,
) -> Result<()> {
    let head = std::mem::take(b.get_mut());
    let r = sink.entry(&head, data.map(|meta| FileData { path, meta }));
    // The buffer is reused (its capacity kept) for the next entry.
    *b.get_mut() = head;
    b.get_mut().clear();
    r.map_err(Error::io("write tar entry for", path))
}

fn walk(
    b: &mut tar::Builder<Vec<u8>>,
    sink: &mut dyn EntrySink,
    abs: &Path,
    rel: &Path,
    links: &mut Links,
    clamp: Option<u64>,
) -> Result<()> {
    let mut names: Vec<_> = fs::read_dir(abs)
        .map_err(Error::io("read dir", abs))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .map_err(Error::io("read dir", abs))?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let path = abs.join(&name);
        let relp = rel.join(&name);
        let m = fs::symlink_metadata(&path).map_err(Error::io("stat", &path))?;
        match append_entry(b, &path, &relp, &name, &m, links, clamp)? {
            Kind::Data => emit(b, sink, &path, Some(&m))?,
            Kind::Dir => {
                emit(b, sink, &path, None)?;
                walk(b, sink, &path, &relp, links, clamp)?;
            }
            Kind::NoData => emit(b, sink, &path, None)?,
        }
    }
    Ok(())
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
    path: &Path,
    relp: &Path,
    name: &std::ffi::OsStr,
    m: &fs::Metadata,
    links: &mut Links,
    clamp: Option<u64>,
) -> Result<Kind> {
    let ft = m.file_type();
    let mut h = Header::new_gnu();
    h.set_mode(m.mode() & 0o7777);
    h.set_uid(m.uid() as u64);
    h.set_gid(m.gid() as u64);
    let mtime = clamp_mtime(m.mtime(), clamp);
    h.set_mtime(mtime);
    h.set_size(0);
    let werr = Error::io("write tar entry for", path);
    if ft.is_char_device() && m.rdev() == 0 {
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
    if ft.is_socket() {
        // Sockets cannot be represented in a tar: skipped, with their xattrs.
        return Ok(Kind::NoData);
    }
    append_xattrs(b, path)?;
    if ft.is_dir() {
        h.set_entry_type(EntryType::Directory);
        b.append_data(&mut h, relp, io::empty()).map_err(werr)?;
        if sys::get_xattr(path, OVERLAY_OPAQUE)
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
    if ft.is_file() {
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
    if ft.is_symlink() {
        let target = fs::read_link(path).map_err(Error::io("read link", path))?;
        h.set_entry_type(EntryType::Symlink);
        b.append_link(&mut h, relp, &target).map_err(werr)?;
    } else if ft.is_char_device() || ft.is_block_device() {
        let (maj, min) = sys::dev_major_minor(m.rdev());
        h.set_entry_type(if ft.is_char_device() {
            EntryType::Char
        } else {
            EntryType::Block
        });
        h.set_device_major(maj)
            .map_err(Error::io("write tar entry for", path))?;
        h.set_device_minor(min)
            .map_err(Error::io("write tar entry for", path))?;
        b.append_data(&mut h, relp, io::empty()).map_err(werr)?;
    } else if ft.is_fifo() {
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

/// Writes a PAX extended header carrying the xattrs of `path` (if any) as `SCHILY.xattr.*`.
fn append_xattrs<W: Write>(b: &mut tar::Builder<W>, path: &Path) -> Result<()> {
    let names = sys::list_xattrs(path).map_err(Error::io("list xattrs of", path))?;
    let mut records = Vec::new();
    for n in names {
        if !crate::unpack::layer_xattr_allowed(&n) {
            continue;
        }
        if let Some(v) = sys::get_xattr(path, &n).map_err(Error::io("read xattr of", path))? {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(&n);
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

//! The context index: per COPY selection of a build context, one compact file listing every file
//! the selection hashed last time, in walk order, with the stat that proves it unchanged and its
//! content digest (git's index, for the build context).
//!
//! A no-op rebuild walks the context in the same order, so each lookup is the entry under a cursor
//! that moves forward one step (one sequential pass, no database query per file); a file added or
//! renamed since falls back to a hash map built on first need. Only when a file had to be read is
//! the file written again (to a temporary name, then renamed: readers see the old or the new file,
//! never a torn one; a checksum trailer catches a file cut short by a crash, which then reads as
//! empty and costs one re-hash of the selection).
//!
//! A file changed within [`RACY_NS`] of the moment it was read is recorded "racily clean" (git's
//! term): on kernels and filesystems whose timestamps are coarse (a clock tick, before Linux
//! 6.13's multigrain timestamps), a second change of the same size in the same tick would leave
//! size, mtime, ctime and inode as recorded, and the stale digest would be trusted. Such an
//! entry is kept with a size no file has, so the next build reads the file again (once: by
//! then its times are old).
//!
//! Format (`ctxindex/<sha256 of the selection's identity>`, integers little-endian):
//! ```text
//! "rbuild-ctxidx-1\n"                      16-byte magic
//! u32 count
//! count x { u32 path_len, path (UTF-8), u64 size, i64 mtime_ns, i64 ctime_ns, u64 inode,
//!           [u8; 32] sha256 of the content }
//! [u8; 32] sha256 of everything before
//! ```

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rbuild_types::Digest;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::records::FileStat;
use crate::{random_name, Store};

const MAGIC: &[u8; 16] = b"rbuild-ctxidx-1\n";
const FIXED: usize = 8 * 4 + 32;

/// How recent (before the file was read) a change time makes an entry racily clean: ten times
/// the coarsest kernel clock tick (10 ms at `HZ=100`), which is what file times come from.
pub const RACY_NS: i64 = 100_000_000;

/// Whether a file with `stat`, read now, could change again without its stat showing it.
fn racy(stat: &FileStat) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(i64::MAX);
    stat.mtime_ns > now - RACY_NS || stat.ctime_ns > now - RACY_NS
}

/// One file of a context index read now.
#[derive(Clone, Debug, PartialEq, Eq)]
struct IndexEntry {
    path: String,
    stat: FileStat,
    digest: [u8; 32],
}

/// One file of the loaded index: its path is `paths[path.0..path.1]` of [`Loaded`] (one buffer
/// for all paths, not one allocation per file).
#[derive(Clone, Debug, PartialEq, Eq)]
struct OldEntry {
    path: (usize, usize),
    stat: FileStat,
    digest: [u8; 32],
}

/// A decoded index file.
#[derive(Debug, Default)]
struct Loaded {
    paths: String,
    entries: Vec<OldEntry>,
}

impl Loaded {
    fn path(&self, i: usize) -> &str {
        let (a, b) = self.entries[i].path;
        &self.paths[a..b]
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// An entry of this build's index: an unchanged one of the old index, or one read now.
#[derive(Debug)]
enum Slot {
    Old(usize),
    Learned(IndexEntry),
}

/// The index of one COPY selection, loaded: look files up in walk order with [`ContextIndex::lookup`],
/// report hashed files with [`ContextIndex::learn`], then [`Store::save_context_index`].
#[derive(Debug, Default)]
pub struct ContextIndex {
    file: Option<PathBuf>,
    old: Loaded,
    cursor: usize,
    by_path: Option<HashMap<String, usize>>,
    /// This build's entries, in walk order.
    new: Vec<Slot>,
    learned: usize,
}

impl ContextIndex {
    /// An index that knows nothing and is never saved (builds without a store).
    pub fn empty() -> ContextIndex {
        ContextIndex::default()
    }

    /// The digest recorded for `path` when its stat is still `stat`. Call in walk order: the
    /// expected entry is the one after the previous lookup.
    pub fn lookup(&mut self, path: &str, stat: &FileStat) -> Option<Digest> {
        self.lookup_raw(path, stat)
            .map(|raw| Digest::from_raw(&raw))
    }

    /// [`ContextIndex::lookup`], giving the digest's 32 bytes (no hex string made).
    pub fn lookup_raw(&mut self, path: &str, stat: &FileStat) -> Option<[u8; 32]> {
        let i = if self.cursor < self.old.len() && self.old.path(self.cursor) == path {
            self.cursor
        } else {
            let old = &self.old;
            let map = self.by_path.get_or_insert_with(|| {
                let mut m = HashMap::with_capacity(old.len());
                for i in 0..old.len() {
                    m.entry(old.path(i).to_string()).or_insert(i);
                }
                m
            });
            *map.get(path)?
        };
        self.cursor = i + 1;
        let e = &self.old.entries[i];
        if e.stat != *stat {
            return None;
        }
        let d = e.digest;
        self.new.push(Slot::Old(i));
        Some(d)
    }

    /// Records that `path` with `stat` was read and has `digest`.
    pub fn learn(&mut self, path: &str, stat: FileStat, digest: &Digest) {
        let mut raw = [0u8; 32];
        if hex::decode_to_slice(digest.hex(), &mut raw).is_err() {
            return;
        }
        self.learn_raw(path, stat, raw);
    }

    /// [`ContextIndex::learn`] with the digest's 32 bytes. A racily clean file (see the module)
    /// is kept with a size no file has: the next build reads it again.
    pub fn learn_raw(&mut self, path: &str, mut stat: FileStat, raw: [u8; 32]) {
        self.learned += 1;
        if racy(&stat) {
            stat.size = u64::MAX;
        }
        self.new.push(Slot::Learned(IndexEntry {
            path: path.to_string(),
            stat,
            digest: raw,
        }));
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.new.len() * (FIXED + 4 + 32) + 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.new.len() as u32).to_le_bytes());
        for slot in &self.new {
            let (path, stat, digest) = match slot {
                Slot::Old(i) => {
                    let e = &self.old.entries[*i];
                    (self.old.path(*i), &e.stat, &e.digest)
                }
                Slot::Learned(e) => (e.path.as_str(), &e.stat, &e.digest),
            };
            out.extend_from_slice(&(path.len() as u32).to_le_bytes());
            out.extend_from_slice(path.as_bytes());
            out.extend_from_slice(&stat.size.to_le_bytes());
            out.extend_from_slice(&stat.mtime_ns.to_le_bytes());
            out.extend_from_slice(&stat.ctime_ns.to_le_bytes());
            out.extend_from_slice(&stat.inode.to_le_bytes());
            out.extend_from_slice(digest);
        }
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    /// Parses an index file; `None` when it is not one (wrong magic, cut short, bad checksum).
    fn decode(data: &[u8]) -> Option<Loaded> {
        let body_len = data.len().checked_sub(32)?;
        let (body, sum) = data.split_at(body_len);
        if body.len() < 20 || &body[..16] != MAGIC || Sha256::digest(body)[..] != *sum {
            return None;
        }
        let count = u32::from_le_bytes(body[16..20].try_into().ok()?) as usize;
        let mut at: usize = 20;
        let mut take = |n: usize| -> Option<&[u8]> {
            let s = body.get(at..at.checked_add(n)?)?;
            at += n;
            Some(s)
        };
        let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let mut out = Loaded {
            paths: String::with_capacity(body.len().saturating_sub(count * (FIXED + 4))),
            entries: Vec::with_capacity(count.min(body.len() / (FIXED + 4))),
        };
        for _ in 0..count {
            let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
            let start = out.paths.len();
            out.paths.push_str(std::str::from_utf8(take(len)?).ok()?);
            let f = take(FIXED)?;
            let mut digest = [0u8; 32];
            digest.copy_from_slice(&f[32..64]);
            out.entries.push(OldEntry {
                path: (start, start + len),
                stat: FileStat {
                    size: u64_at(f, 0),
                    mtime_ns: u64_at(f, 8) as i64,
                    ctime_ns: u64_at(f, 16) as i64,
                    inode: u64_at(f, 24),
                },
                digest,
            });
        }
        (at == body.len()).then_some(out)
    }
}

impl Store {
    fn context_index_path(&self, identity: &str) -> PathBuf {
        self.root()
            .join("ctxindex")
            .join(Digest::of(identity.as_bytes()).hex())
    }

    /// Loads the index of the selection named by `identity` (the context's host path and what
    /// the COPY selects). A missing or damaged file gives an empty index.
    pub fn context_index(&self, identity: &str) -> Result<ContextIndex> {
        let file = self.context_index_path(identity);
        let old = match fs::read(&file) {
            Ok(data) => ContextIndex::decode(&data).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Loaded::default(),
            Err(e) => return Err(Error::io("read context index", &file)(e)),
        };
        Ok(ContextIndex {
            file: Some(file),
            old,
            ..ContextIndex::default()
        })
    }

    /// Writes the index back when this build read any file or the selection changed (added or
    /// removed files); a no-op rebuild writes nothing.
    pub fn save_context_index(&self, index: &ContextIndex) -> Result<()> {
        let Some(file) = &index.file else {
            return Ok(());
        };
        if index.learned == 0 && index.new.len() == index.old.len() {
            return Ok(());
        }
        let dir = file.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".tmp-{}", random_name(16)));
        let data = index.encode();
        let write = || -> io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&data)?;
            fs::rename(&tmp, file)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io("write context index", file)(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(n: u64) -> FileStat {
        FileStat {
            size: n,
            mtime_ns: n as i64 * 10,
            ctime_ns: n as i64 * 20,
            inode: n + 1000,
        }
    }

    #[test]
    fn a_file_changed_just_before_it_was_read_is_read_again() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        let fresh = FileStat {
            size: 5,
            mtime_ns: now,
            ctime_ns: now,
            inode: 7,
        };
        let old = FileStat {
            size: 5,
            mtime_ns: now - 10 * RACY_NS,
            ctime_ns: now - 10 * RACY_NS,
            inode: 8,
        };
        let mut ix = s.context_index("racy").unwrap();
        ix.learn("fresh", fresh, &Digest::of(b"fresh"));
        ix.learn("old", old, &Digest::of(b"old"));
        s.save_context_index(&ix).unwrap();
        let mut ix = s.context_index("racy").unwrap();
        assert_eq!(ix.lookup("fresh", &fresh), None, "racily clean: read again");
        assert_eq!(ix.lookup("old", &old), Some(Digest::of(b"old")));
    }

    #[test]
    fn round_trip_sequential_and_out_of_order() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let id = "/ctx\0files";
        let mut ix = s.context_index(id).unwrap();
        assert!(ix.lookup("a", &st(1)).is_none());
        for (i, p) in ["a", "b/c", "b/d"].iter().enumerate() {
            ix.learn(p, st(i as u64), &Digest::of(p.as_bytes()));
        }
        s.save_context_index(&ix).unwrap();

        let mut ix = s.context_index(id).unwrap();
        assert_eq!(ix.lookup("a", &st(0)), Some(Digest::of(b"a")));
        // A new file between known ones, then the next known one out of the cursor's way.
        assert_eq!(ix.lookup("b/bb", &st(9)), None);
        assert_eq!(ix.lookup("b/d", &st(2)), Some(Digest::of(b"b/d")));
        // Changed stat: no digest.
        assert_eq!(ix.lookup("b/c", &st(7)), None);
        assert_eq!(s.context_index("other").unwrap().old.len(), 0);

        // A no-op pass writes nothing; a damaged file reads as empty.
        let mut ix = s.context_index(id).unwrap();
        for (i, p) in ["a", "b/c", "b/d"].iter().enumerate() {
            assert!(ix.lookup(p, &st(i as u64)).is_some());
        }
        let file = s.context_index_path(id);
        let before = fs::metadata(&file).unwrap().modified().unwrap();
        s.save_context_index(&ix).unwrap();
        assert_eq!(fs::metadata(&file).unwrap().modified().unwrap(), before);
        let mut data = fs::read(&file).unwrap();
        let n = data.len();
        data[n - 40] ^= 1;
        fs::write(&file, &data).unwrap();
        assert!(s.context_index(id).unwrap().old.is_empty());
        fs::write(&file, &data[..30]).unwrap();
        assert!(s.context_index(id).unwrap().old.is_empty());
    }
}

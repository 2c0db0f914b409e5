//! The build-time hash of a layer tar, resumable: SHA-256 midstates kept at entry boundaries
//! so that a layer whose first entries are those of the step's previous result hashes only
//! the entries from the first change on.
//!
//! Every tar entry starts and ends on a 512-byte boundary, a multiple of SHA-256's 64-byte
//! block, so at each boundary the hash state is exactly the 8 words of the compression state
//! plus the byte count (no partial block). [`Mid`] is SHA-256 over `sha2::compress256` (the
//! `sha2` crate's `compress` feature: the same SHA-NI/assembly backends as `Sha256`) with that
//! state visible.
//!
//! Each built snapshot gets an index file beside its `fs/` (`snapshots/<id>/tarindex`, removed
//! with the snapshot) of checkpoints: after every 16 entries (or 1 MiB) and after the last one,
//! the entry count, the byte offset, the midstate, and a fingerprint of everything so far: the
//! SHA-256 of every entry's header bytes and, for a file's data, the file's identity
//! (device, inode, size, mtime; the data is not read). When the next build of the step walks
//! its new snapshot, unchanged files are hard links to the previous result: the same inode,
//! whose content cannot have changed, because committed snapshots are never written (the
//! previous result is held in use by the build, so its inodes cannot be freed and reused
//! either; the ctime is not compared: making the hard link moves it). So while the fingerprint
//! at a checkpoint equals the old one, the tar bytes up to it are the old ones and the old
//! midstate is taken without reading any data (a snapshot damaged behind rbuild's back is
//! caught when a blob is made from it, in `source`). At the first checkpoint that differs,
//! the entries since the last equal one are read and hashed from that state, and every entry
//! after them as usual. The result is exactly the SHA-256 of the whole tar (tested against a
//! full pass); the export-time check in `source` re-reads everything anyway.
//!
//! Index format (integers little-endian; a torn or damaged file reads as empty: no resume):
//! ```text
//! "rbuild-taridx-1\n"  magic (16 bytes)
//! i64 mtime clamp      (i64::MIN: none)
//! u32 count
//! count x { u64 entries, u64 bytes, [u32; 8] state, [u8; 32] fingerprint }
//! [u8; 32]             sha256 of everything before
//! ```

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rbuild_types::Digest;
use sha2::digest::generic_array::{typenum::U64, GenericArray};
use sha2::{Digest as _, Sha256};

use crate::layer::{EntrySink, FileData};

const MAGIC: &[u8; 16] = b"rbuild-taridx-1\n";
/// Entries between two checkpoints (at most: also one per [`CHECKPOINT_BYTES`]).
const CHECKPOINT_ENTRIES: u64 = 16;
/// Bytes between two checkpoints (at most).
const CHECKPOINT_BYTES: u64 = 1 << 20;
/// Size of one checkpoint record.
const RECORD: usize = 8 + 8 + 32 + 32;

const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// SHA-256 whose state is visible at block boundaries.
#[derive(Clone)]
pub(crate) struct Mid {
    state: [u32; 8],
    /// Bytes hashed (including those in `buf`).
    len: u64,
    buf: [u8; 64],
    buf_len: usize,
}

impl Mid {
    pub(crate) fn new() -> Mid {
        Mid::at(H0, 0)
    }

    /// The hash resumed at a block boundary: `state` after `len` bytes (`len % 64 == 0`).
    fn at(state: [u32; 8], len: u64) -> Mid {
        Mid {
            state,
            len,
            buf: [0; 64],
            buf_len: 0,
        }
    }

    fn compress(state: &mut [u32; 8], blocks: &[[u8; 64]]) {
        // SAFETY: GenericArray<u8, U64> has the layout of [u8; 64] (sha2 casts it back the
        // same way inside compress256).
        let blocks: &[GenericArray<u8, U64>] =
            unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast(), blocks.len()) };
        sha2::compress256(state, blocks);
    }

    pub(crate) fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.buf_len > 0 {
            let take = (64 - self.buf_len).min(data.len());
            self.buf[self.buf_len..self.buf_len + take].copy_from_slice(&data[..take]);
            self.buf_len += take;
            data = &data[take..];
            if self.buf_len < 64 {
                return;
            }
            let block = [self.buf];
            Mid::compress(&mut self.state, &block);
            self.buf_len = 0;
        }
        let (blocks, rest) = data.as_chunks::<64>();
        if !blocks.is_empty() {
            Mid::compress(&mut self.state, blocks);
        }
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buf_len = rest.len();
    }

    /// The state at a block boundary, `None` inside a block.
    fn checkpoint(&self) -> Option<([u32; 8], u64)> {
        (self.buf_len == 0).then_some((self.state, self.len))
    }

    pub(crate) fn finish(mut self) -> Digest {
        let bits = self.len.wrapping_mul(8);
        let mut pad = [0u8; 72];
        pad[0] = 0x80;
        let zeros = (55usize.wrapping_sub(self.buf_len)) % 64;
        let n = 1 + zeros;
        pad[n..n + 8].copy_from_slice(&bits.to_be_bytes());
        let len = self.len;
        self.update(&pad[..n + 8]);
        debug_assert_eq!(self.buf_len, 0);
        self.len = len;
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        Digest::from_raw(&out)
    }
}

/// One checkpoint: after `entries` entries and `bytes` bytes of tar, the hash state and the
/// fingerprint of everything before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    entries: u64,
    bytes: u64,
    state: [u32; 8],
    fingerprint: [u8; 32],
}

/// The checkpoints of a layer tar, made with one mtime clamp.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Index {
    clamp: Option<i64>,
    checkpoints: Vec<Checkpoint>,
}

impl Index {
    /// Where the index of a snapshot whose files are in `fs_dir` lives: beside it.
    pub(crate) fn path_for(fs_dir: &Path) -> PathBuf {
        fs_dir.with_file_name("tarindex")
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.checkpoints.len() * RECORD);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.clamp.unwrap_or(i64::MIN).to_le_bytes());
        out.extend_from_slice(&(self.checkpoints.len() as u32).to_le_bytes());
        for c in &self.checkpoints {
            out.extend_from_slice(&c.entries.to_le_bytes());
            out.extend_from_slice(&c.bytes.to_le_bytes());
            for w in c.state {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&c.fingerprint);
        }
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    fn decode(data: &[u8]) -> Option<Index> {
        let body_len = data.len().checked_sub(32)?;
        let (body, sum) = data.split_at(body_len);
        if Sha256::digest(body).as_slice() != sum || !body.starts_with(MAGIC) {
            return None;
        }
        let mut r = &body[MAGIC.len()..];
        let mut take = |n: usize| -> Option<&[u8]> {
            let (a, b) = r.split_at_checked(n)?;
            r = b;
            Some(a)
        };
        let clamp = i64::from_le_bytes(take(8)?.try_into().ok()?);
        let count = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let mut checkpoints = Vec::with_capacity(count.min(1 << 20));
        for _ in 0..count {
            let rec = take(RECORD)?;
            let u64_at = |i: usize| u64::from_le_bytes(rec[i..i + 8].try_into().unwrap_or([0; 8]));
            let mut state = [0u32; 8];
            for (k, w) in state.iter_mut().enumerate() {
                let i = 16 + 4 * k;
                *w = u32::from_le_bytes(rec[i..i + 4].try_into().unwrap_or([0; 4]));
            }
            let mut fingerprint = [0u8; 32];
            fingerprint.copy_from_slice(&rec[48..80]);
            checkpoints.push(Checkpoint {
                entries: u64_at(0),
                bytes: u64_at(8),
                state,
                fingerprint,
            });
        }
        take(1).is_none().then_some(Index {
            clamp: (clamp != i64::MIN).then_some(clamp),
            checkpoints,
        })
    }

    /// Reads the index at `path`; an absent, torn or damaged one is `None`.
    pub(crate) fn read(path: &Path) -> Option<Index> {
        Index::decode(&fs::read(path).ok()?)
    }

    /// Writes the index at `path` (temporary name + rename; no fsync: it is a cache, checked
    /// by its checksum when read).
    pub(crate) fn write(&self, path: &Path) -> io::Result<()> {
        let tmp = path.with_file_name(format!("tarindex.tmp-{}", std::process::id()));
        fs::write(&tmp, self.encode())?;
        fs::rename(&tmp, path)
    }
}

/// A file whose data was not read yet (its entry is inside a group being compared).
struct Pending {
    head: Vec<u8>,
    data: Option<(PathBuf, u64)>,
}

/// The sink of a resumable hash (see the module docs).
pub(crate) struct ResumeSink {
    hash: Mid,
    fingerprint: Sha256,
    entries: u64,
    bytes: u64,
    /// The previous index's checkpoints still to compare, in order; `None` once a difference
    /// was found (then every entry is hashed as it comes).
    old: Option<std::vec::IntoIter<Checkpoint>>,
    /// Entries since the last checkpoint taken from the old index (not hashed yet).
    pending: Vec<Pending>,
    /// Entries whose data came from an old midstate (for tests and `RBUILD_DEBUG`).
    pub(crate) skipped: u64,
    made: Vec<Checkpoint>,
    buf: Vec<u8>,
}

impl ResumeSink {
    /// A sink resuming from `old` (the step's previous result's index, made with the same
    /// clamp), or hashing everything when there is none.
    pub(crate) fn new(old: Option<Index>, clamp: Option<i64>) -> ResumeSink {
        let old = old
            .filter(|i| i.clamp == clamp && !i.checkpoints.is_empty())
            .map(|i| i.checkpoints.into_iter());
        ResumeSink {
            hash: Mid::new(),
            fingerprint: Sha256::new(),
            entries: 0,
            bytes: 0,
            old,
            pending: Vec::new(),
            skipped: 0,
            made: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// The digest of the tar, its size and the index of the new snapshot.
    pub(crate) fn finish(self, clamp: Option<i64>) -> (Digest, u64, Index) {
        (
            self.hash.finish(),
            self.bytes,
            Index {
                clamp,
                checkpoints: self.made,
            },
        )
    }

    fn fingerprint_now(&self) -> [u8; 32] {
        self.fingerprint.clone().finalize().into()
    }

    /// Hashes one entry's bytes: the head, then the file's data read in 1 MiB blocks and padded
    /// (a file that shrank since its stat is padded with zeros, one that grew is cut: the same
    /// rule as the tar writer's `copy_data`).
    fn hash_entry(&mut self, head: &[u8], data: Option<(File, u64)>) -> io::Result<()> {
        self.hash.update(head);
        if let Some((mut f, size)) = data {
            self.buf.resize(1 << 20, 0);
            let mut left = size;
            while left > 0 {
                let want = left.min(self.buf.len() as u64) as usize;
                let n = match f.read(&mut self.buf[..want]) {
                    Ok(0) => {
                        self.buf[..want].fill(0);
                        want
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                self.hash.update(&self.buf[..n]);
                left -= n as u64;
            }
            let pad = (512 - (size % 512) as usize) % 512;
            self.hash.update(&[0u8; 512][..pad]);
        }
        Ok(())
    }

    /// Takes a checkpoint here when the policy says so (or `force`).
    fn maybe_checkpoint(&mut self, force: bool) {
        let last = self.made.last().map_or((0, 0), |c| (c.entries, c.bytes));
        if !force
            && self.entries - last.0 < CHECKPOINT_ENTRIES
            && self.bytes - last.1 < CHECKPOINT_BYTES
        {
            return;
        }
        if self.entries == last.0 {
            return;
        }
        if let Some((state, bytes)) = self.hash.checkpoint() {
            debug_assert_eq!(bytes, self.bytes);
            self.made.push(Checkpoint {
                entries: self.entries,
                bytes,
                state,
                fingerprint: self.fingerprint_now(),
            });
        }
    }

    /// A difference from the old index: the pending entries are hashed from the last equal
    /// checkpoint's state, and from now on every entry is hashed as it comes.
    fn diverge(&mut self) -> io::Result<()> {
        self.old = None;
        for p in std::mem::take(&mut self.pending) {
            let data = match p.data {
                Some((path, size)) => {
                    use std::os::unix::fs::OpenOptionsExt;
                    let f = fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&path)?;
                    Some((f, size))
                }
                None => None,
            };
            self.hash_entry(&p.head, data)?;
        }
        Ok(())
    }

    /// Compares with the old checkpoint at this entry, if there is one.
    fn compare(&mut self) -> io::Result<()> {
        let Some(old) = self.old.as_mut() else {
            return Ok(());
        };
        let next = old.as_slice().first().copied();
        match next {
            Some(c) if c.entries == self.entries => {
                old.next();
                if c.bytes == self.bytes && c.fingerprint == self.fingerprint_now() {
                    // The tar up to here is the old one: take its state.
                    self.hash = Mid::at(c.state, c.bytes);
                    self.skipped += self.pending.iter().filter(|p| p.data.is_some()).count() as u64;
                    self.pending.clear();
                    self.made.push(c);
                    Ok(())
                } else {
                    self.diverge()
                }
            }
            Some(c) if c.entries > self.entries => Ok(()),
            _ => self.diverge(),
        }
    }
}

impl EntrySink for ResumeSink {
    fn entry(&mut self, head: &[u8], data: Option<FileData<'_>>) -> io::Result<()> {
        self.fingerprint.update(head);
        let size = data.as_ref().map(|d| d.meta.len());
        if let Some(d) = &data {
            let m = d.meta;
            for v in [
                m.dev(),
                m.ino(),
                m.len(),
                m.mtime() as u64,
                m.mtime_nsec() as u64,
            ] {
                self.fingerprint.update(v.to_le_bytes());
            }
        }
        self.entries += 1;
        self.bytes += head.len() as u64 + size.map_or(0, |s| s.div_ceil(512) * 512);
        if self.old.is_some() {
            self.pending.push(Pending {
                head: head.to_vec(),
                data: data.map(|d| (d.path.to_path_buf(), d.meta.len())),
            });
            self.compare()?;
            if self.old.is_some() {
                return Ok(());
            }
        } else {
            let data = match data {
                Some(d) => Some((d.open()?, d.meta.len())),
                None => None,
            };
            self.hash_entry(head, data)?;
        }
        self.maybe_checkpoint(false);
        Ok(())
    }

    fn end(&mut self, tail: &[u8]) -> io::Result<()> {
        if self.old.is_some() && !self.pending.is_empty() {
            self.diverge()?;
        }
        self.old = None;
        self.maybe_checkpoint(true);
        self.hash.update(tail);
        self.bytes += tail.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mid_is_sha256() {
        for n in [
            0usize,
            1,
            55,
            56,
            63,
            64,
            65,
            119,
            120,
            511,
            512,
            1000,
            4096 + 7,
        ] {
            let data: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            let mut m = Mid::new();
            // Odd pieces, to cross block boundaries inside updates.
            for piece in data.chunks(13) {
                m.update(piece);
            }
            assert_eq!(m.finish(), Digest::of(&data), "length {n}");
        }
        // Resumed at a boundary.
        let data = vec![9u8; 1024 + 100];
        let mut a = Mid::new();
        a.update(&data[..1024]);
        let (state, len) = a.checkpoint().unwrap();
        let mut b = Mid::at(state, len);
        b.update(&data[1024..]);
        assert_eq!(b.finish(), Digest::of(&data));
    }

    #[test]
    fn index_round_trip_and_damage() {
        let i = Index {
            clamp: Some(5),
            checkpoints: vec![Checkpoint {
                entries: 3,
                bytes: 1536,
                state: [1, 2, 3, 4, 5, 6, 7, 8],
                fingerprint: [7; 32],
            }],
        };
        let mut e = i.encode();
        assert_eq!(Index::decode(&e), Some(i.clone()));
        let n = e.len();
        e[n - 40] ^= 1;
        assert_eq!(Index::decode(&e), None);
        assert_eq!(Index::decode(&e[..10]), None);
        let none = Index {
            clamp: None,
            checkpoints: vec![],
        };
        assert_eq!(Index::decode(&none.encode()), Some(none));
    }
}

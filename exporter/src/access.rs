//! Layer access: the one place that, given a layer's diff_id and the form a consumer needs
//! (its uncompressed tar, its size, its snapshot), finds or makes that form from whatever the
//! store holds, verifying digests on the way.
//!
//! A layer is in the store in one of these states:
//! - uncompressed blob `blobs/<diff_id>` (and maybe a snapshot and compressed variants);
//! - compressed only (a remote cache hit, see `Store::put_lazy_layer`): a `compressed_layers`
//!   blob, verified against its digest when it came in and, decompressed, against the diff_id,
//!   and a `layers` row with the tar size and a *reserved* snapshot id that is made on demand.
//!
//! Every stream made from a compressed blob is hashed again while it is read and fails at its
//! end when it is not the diff_id (the blob could have been replaced on disk): a snapshot made
//! from it is committed only after that check.

use std::fs::File;
use std::io::{self, Read};

use rbuild_cache::{SnapshotId, SnapshotUse, Store};
use rbuild_types::Digest;
use sha2::{Digest as _, Sha256};

use crate::{unpack, Error, Result};

/// Whether the store can give layer `diff_id` in any form (its tar or a compressed blob).
pub fn layer_available(store: &Store, diff_id: &Digest) -> Result<bool> {
    Ok(store.has_blob(diff_id) || !store.compressed_layers_of(diff_id)?.is_empty())
}

/// The size of layer `diff_id`'s uncompressed tar (what an image manifest records), whether the
/// tar is stored or not.
pub fn layer_size(store: &Store, diff_id: &Digest) -> Result<u64> {
    match store.blob_size(diff_id) {
        Ok(n) => return Ok(n),
        Err(rbuild_cache::Error::BlobNotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    match store.layer_row(diff_id)? {
        Some((_, n)) if layer_available(store, diff_id)? => Ok(n),
        _ => Err(Error::MissingLayer(diff_id.clone())),
    }
}

/// The uncompressed tar of layer `diff_id`: the stored blob, else a compressed blob decompressed
/// while read and checked against the diff_id at its end (an error then, never silently other
/// bytes).
pub fn layer_tar(store: &Store, diff_id: &Digest) -> Result<Box<dyn Read + Send>> {
    let p = store.blob_path(diff_id);
    match File::open(&p) {
        Ok(f) => return Ok(Box::new(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("open", &p)(e)),
    }
    let Some((_, d)) = store.compressed_layers_of(diff_id)?.into_iter().next() else {
        return Err(Error::MissingLayer(diff_id.clone()));
    };
    let p = store.blob_path(&d);
    let f = File::open(&p).map_err(Error::io("open", &p))?;
    Ok(Box::new(Verified::new(
        decompressed_send(f)?,
        diff_id.clone(),
    )))
}

fn decompressed_send(f: File) -> Result<Box<dyn Read + Send>> {
    let mut br = io::BufReader::with_capacity(1 << 16, f);
    let magic = io::BufRead::fill_buf(&mut br).map_err(Error::io("read layer", "<blob>"))?;
    if magic.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(br)))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(
            zstd::Decoder::with_buffer(br).map_err(Error::io("read zstd layer", "<blob>"))?,
        ))
    } else {
        Ok(Box::new(br))
    }
}

/// A reader that hashes what passes and fails at EOF unless it was `want`.
pub struct Verified<R> {
    inner: R,
    hash: Sha256,
    want: Digest,
    done: bool,
}

impl<R: Read> Verified<R> {
    /// Wraps `inner`, which must give exactly the bytes whose SHA-256 is `want`.
    pub fn new(inner: R, want: Digest) -> Verified<R> {
        Verified {
            inner,
            hash: Sha256::new(),
            want,
            done: false,
        }
    }
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.hash.update(&buf[..n]);
        } else if !buf.is_empty() && !self.done {
            self.done = true;
            let got = Digest::from_hasher(std::mem::take(&mut self.hash));
            if got != self.want {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "layer content has digest {got}, not its diff_id {}; the store was \
                         modified (remove the layer with `rbuild prune`)",
                        self.want
                    ),
                ));
            }
        }
        Ok(n)
    }
}

/// What a [`DiffIdWriter`] saw: the digest and length of the decompressed stream.
struct HashCount {
    hash: Sha256,
    len: u64,
}

impl io::Write for HashCount {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hash.update(buf);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Decoder {
    Gzip(flate2::write::MultiGzDecoder<HashCount>),
    Zstd(Box<zstd::stream::write::Decoder<'static, HashCount>>),
    Plain(HashCount),
}

/// A sink for a compressed layer's bytes as they arrive (a download): decompresses them and
/// hashes the result, so the diff_id and tar size are known when the last byte is in, without
/// writing the tar anywhere.
pub struct DiffIdWriter(Decoder);

impl DiffIdWriter {
    /// For a blob compressed with `c`.
    pub fn new(c: crate::Compression) -> Result<DiffIdWriter> {
        let sink = HashCount {
            hash: Sha256::new(),
            len: 0,
        };
        Ok(DiffIdWriter(match c {
            crate::Compression::Gzip => Decoder::Gzip(flate2::write::MultiGzDecoder::new(sink)),
            crate::Compression::Zstd => Decoder::Zstd(Box::new(
                zstd::stream::write::Decoder::new(sink)
                    .map_err(Error::io("start zstd decoder", "<layer>"))?,
            )),
            crate::Compression::None => Decoder::Plain(sink),
        }))
    }

    /// The diff_id and size of the decompressed stream (an error if it was not a complete
    /// stream of that compression).
    pub fn finish(self) -> io::Result<(Digest, u64)> {
        let sink = match self.0 {
            Decoder::Gzip(d) => d.finish()?,
            Decoder::Zstd(mut d) => {
                io::Write::flush(&mut *d)?;
                d.into_inner()
            }
            Decoder::Plain(s) => s,
        };
        Ok((Digest::from_hasher(sink.hash), sink.len))
    }
}

impl io::Write for DiffIdWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.0 {
            Decoder::Gzip(d) => d.write(buf),
            Decoder::Zstd(d) => d.write(buf),
            Decoder::Plain(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Unpacks layer `diff_id` into a new snapshot committed as `id`, unless `id` exists. The
/// caller holds the layer's lock. The whole tar is read (and so verified) before the commit.
fn make_snapshot(store: &Store, diff_id: &Digest, id: &SnapshotId) -> Result<()> {
    if store.has_snapshot(id) {
        return Ok(());
    }
    let mut tar = layer_tar(store, diff_id)?;
    let b = store.new_snapshot()?;
    unpack::unpack_layer(&mut tar, &b.fs_dir())?;
    // The end of the archive is not the end of the stream: padding, and the check at EOF.
    io::copy(&mut tar, &mut io::sink()).map_err(Error::io("read layer", diff_id.to_string()))?;
    b.commit_as(id)?;
    Ok(())
}

/// Makes the snapshot `id` of layer `diff_id` if it is not there (for a layer recorded with a
/// reserved id, see the module docs). Concurrent callers unpack once (per-layer lock).
pub fn ensure_snapshot_at(store: &Store, diff_id: &Digest, id: &SnapshotId) -> Result<()> {
    if store.has_snapshot(id) {
        return Ok(());
    }
    let _lock = store.lock_layer(diff_id)?;
    make_snapshot(store, diff_id, id)
}

/// Ensures the layer with this diff_id has a snapshot (unpacking it from its tar or compressed
/// blob if needed) and returns it. Concurrent callers (threads or processes) unpack a layer
/// once (per-layer lock). A layer recorded with a reserved snapshot id gets that id.
pub fn ensure_snapshot(store: &Store, diff_id: &Digest) -> Result<SnapshotId> {
    if let Some(id) = store.layer_snapshot(diff_id)? {
        if store.has_snapshot(&id) {
            return Ok(id);
        }
    }
    let _lock = store.lock_layer(diff_id)?;
    if let Some((id, _)) = store.layer_row(diff_id)? {
        if !store.has_snapshot(&id) {
            make_snapshot(store, diff_id, &id)?;
        }
        return Ok(id);
    }
    if !layer_available(store, diff_id)? {
        return Err(Error::MissingLayer(diff_id.clone()));
    }
    let size = layer_size(store, diff_id)?;
    let id = SnapshotId::reserve();
    make_snapshot(store, diff_id, &id)?;
    store.put_layer(diff_id, &id, size)?;
    Ok(id)
}

/// [`ensure_snapshot`], then marks the snapshot in use ([`Store::use_snapshot`]) so that a
/// concurrent `prune` leaves it (and its layer blob) alone while the guard lives. A snapshot
/// pruned between the two is made again from the layer.
pub fn ensure_snapshot_in_use(
    store: &Store,
    diff_id: &Digest,
) -> Result<(SnapshotId, SnapshotUse)> {
    for _ in 0..8 {
        let id = ensure_snapshot(store, diff_id)?;
        if let Some(guard) = store.use_snapshot(&id)? {
            return Ok((id, guard));
        }
    }
    Err(Error::MissingLayer(diff_id.clone()))
}

/// The snapshot id of layer `diff_id`, held in use, *without* making the snapshot: for a build
/// whose steps may never need the layer's files (a fully cached chain written to an image
/// output). A layer without a `layers` row gets one with a reserved id. The snapshot is made
/// later, if needed, by [`ensure_snapshot_at`] (or [`ensure_snapshot`]).
pub fn ensure_layer_in_use(store: &Store, diff_id: &Digest) -> Result<(SnapshotId, SnapshotUse)> {
    for _ in 0..8 {
        let id = match store.layer_row(diff_id)? {
            Some((id, _)) => id,
            None => {
                let _lock = store.lock_layer(diff_id)?;
                match store.layer_row(diff_id)? {
                    Some((id, _)) => id,
                    None => {
                        let size = layer_size(store, diff_id)?;
                        let id = SnapshotId::reserve();
                        store.put_layer(diff_id, &id, size)?;
                        id
                    }
                }
            }
        };
        let guard = store.use_snapshot_id(&id)?;
        // After locking: prune removes a layer (row, blobs, snapshot) only while holding this
        // lock exclusively, so what is there now stays while the guard lives.
        let still = store.layer_row(diff_id)?.is_some_and(|(s, _)| s == id);
        if still && (store.has_snapshot(&id) || layer_available(store, diff_id)?) {
            return Ok((id, guard));
        }
    }
    Err(Error::MissingLayer(diff_id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_reader_fails_at_the_end_on_other_content() {
        let mut ok = Verified::new(&b"abc"[..], Digest::of(b"abc"));
        let mut v = Vec::new();
        ok.read_to_end(&mut v).unwrap();
        assert_eq!(v, b"abc");
        let mut bad = Verified::new(&b"abd"[..], Digest::of(b"abc"));
        let e = bad.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("not its diff_id"), "{e}");
    }

    #[test]
    fn diff_id_writer_hashes_the_decompressed_stream() {
        use std::io::Write as _;
        let data = b"some layer bytes".repeat(1000);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&data[..], 3).unwrap();
        for (c, blob) in [
            (crate::Compression::Gzip, &gz),
            (crate::Compression::Zstd, &zs),
            (crate::Compression::None, &data),
        ] {
            let mut w = DiffIdWriter::new(c).unwrap();
            for chunk in blob.chunks(7) {
                w.write_all(chunk).unwrap();
            }
            assert_eq!(
                w.finish().unwrap(),
                (Digest::of(&data), data.len() as u64),
                "{c}"
            );
        }
        // A truncated gzip stream is an error, not a short layer.
        let mut w = DiffIdWriter::new(crate::Compression::Gzip).unwrap();
        w.write_all(&gz[..gz.len() - 4]).unwrap();
        assert!(w.finish().is_err());
    }
}

//! Every consumer of a layer's bytes goes through here: given a diff_id and the form it needs
//! (the unpacked snapshot, the uncompressed tar blob, a compressed blob of one algorithm), the
//! functions below find it in the store or make it from what the store has, checking every
//! digest on the way.
//!
//! What the store can hold for a layer (any combination):
//! - a **snapshot** recorded in the `layers` table. When the row says `from_snapshot`, the layer
//!   was hashed from that snapshot by rbuild's own tar writer ([`crate::write_layer`], a build
//!   step): that writer is deterministic (sorted walk, the same metadata, the recorded mtime
//!   clamp), so the tar can be written again from the snapshot, byte for byte. Build steps keep
//!   no tar blob: the blob is made only when an output, a push, `save` or `--cache-to` needs it;
//! - the **uncompressed tar blob** `blobs/sha256/<diff_id>` (pulled, loaded or fetched layers,
//!   committed containers, and built layers once a consumer asked for them);
//! - **compressed blobs**, linked to the diff_id in `compressed_layers`;
//! - **only a compressed blob** (a pulled base layer, a remote cache hit): checked against its
//!   digest when it came in and, decompressed as it arrived into a SHA-256, against the diff_id
//!   (the tar was never written), with a `layers` row holding the tar size and a *reserved*
//!   snapshot id whose directory is made on demand ([`ensure_snapshot_at`]). Every stream made
//!   from such a blob is hashed again while read ([`Verified`]) and fails at its end unless it is
//!   the diff_id: a snapshot or blob made from it is committed only after that check.
//!
//! A blob made from a snapshot is streamed into `ingest/` while hashing and committed (fsync,
//! rename) only when the uncompressed stream's digest equals the recorded diff_id; otherwise
//! nothing is kept and [`Error::LayerDamaged`] says the snapshot changed since it was recorded
//! and how to repair it. Never a wrong or half-written blob.
//!
//! API: [`has_layer`], [`layer_size`] (metadata); [`ensure_snapshot`] /
//! [`ensure_snapshot_in_use`] / [`ensure_snapshot_at`] (the snapshot form) and
//! [`ensure_layer_in_use`] (the snapshot id held in use without unpacking); [`layer_blob`] (a
//! blob of any [`Compression`], uncompressed included); [`layer_tar`] (the tar as a stream);
//! [`DiffIdWriter`] (the diff_id of a compressed stream as it arrives);
//! [`crate::compressed_layer`] is [`layer_blob`] as a tuple.

use std::fs::File;
use std::io::{self, Read, Write};

use rbuild_cache::{SnapshotId, SnapshotUse, Store};
use rbuild_types::{Digest, Sha256Writer};
use sha2::{Digest as _, Sha256};

use crate::gzip::GzipWriter;
use crate::oci::Compression;
use crate::{layer, unpack, Error, Result};

/// A layer blob in the store, as [`layer_blob`] returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerBlob {
    /// The blob's digest (the diff_id when uncompressed).
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Its OCI media type (`application/vnd.oci.image.layer.v1.tar[+gzip|+zstd]`).
    pub media_type: String,
}

/// Whether the store has the layer in some form: its tar blob, a snapshot it can be made from,
/// or a compressed blob.
pub fn has_layer(store: &Store, diff_id: &Digest) -> Result<bool> {
    if store.has_blob(diff_id) {
        return Ok(true);
    }
    if store
        .layer_info(diff_id)?
        .is_some_and(|i| i.from_snapshot && store.has_snapshot(&i.snapshot))
    {
        return Ok(true);
    }
    Ok(!store.compressed_layers_of(diff_id)?.is_empty())
}

/// Size in bytes of the layer's uncompressed tar (from its blob, else from its `layers` row).
pub fn layer_size(store: &Store, diff_id: &Digest) -> Result<u64> {
    match store.blob_size(diff_id) {
        Ok(s) => return Ok(s),
        Err(rbuild_cache::Error::BlobNotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    match store.layer_info(diff_id)? {
        Some(i) if i.from_snapshot && store.has_snapshot(&i.snapshot) => Ok(i.size),
        Some(i) if !store.compressed_layers_of(diff_id)?.is_empty() => Ok(i.size),
        _ => Err(Error::MissingLayer(diff_id.clone())),
    }
}

/// The uncompressed tar of layer `diff_id` as a stream: its blob; else a compressed blob
/// decompressed while read and checked against the diff_id at its end (read it to the end);
/// else a blob made (and verified) from the snapshot.
pub fn layer_tar(store: &Store, diff_id: &Digest) -> Result<Box<dyn Read + Send>> {
    let p = store.blob_path(diff_id);
    match File::open(&p) {
        Ok(f) => return Ok(Box::new(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("open", &p)(e)),
    }
    if let Some((_, d)) = store.compressed_layers_of(diff_id)?.into_iter().next() {
        let p = store.blob_path(&d);
        let f = File::open(&p).map_err(Error::io("open", &p))?;
        return Ok(Box::new(Verified::new(
            decompressed_send(f)?,
            diff_id.clone(),
        )));
    }
    layer_blob(store, diff_id, Compression::None)?;
    let f = File::open(&p).map_err(Error::io("open", &p))?;
    Ok(Box::new(f))
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
    Gzip(Box<flate2::write::MultiGzDecoder<HashCount>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, HashCount>>),
    Plain(HashCount),
}

/// A sink for a compressed layer's bytes as they arrive (a download): decompresses them and
/// hashes the result, so the diff_id and tar size are known when the last byte is in, without
/// writing the tar anywhere.
pub struct DiffIdWriter(Decoder);

impl DiffIdWriter {
    /// For a blob compressed with `c`.
    pub fn new(c: Compression) -> Result<DiffIdWriter> {
        let sink = HashCount {
            hash: Sha256::new(),
            len: 0,
        };
        Ok(DiffIdWriter(match c {
            Compression::Gzip => Decoder::Gzip(Box::new(flate2::write::MultiGzDecoder::new(sink))),
            Compression::Zstd => Decoder::Zstd(Box::new(
                zstd::stream::write::Decoder::new(sink)
                    .map_err(Error::io("start zstd decoder", "<layer>"))?,
            )),
            Compression::None => Decoder::Plain(sink),
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
    if let Some(id) = store.layer_info(diff_id)?.map(|i| i.snapshot) {
        if !store.has_snapshot(&id) {
            make_snapshot(store, diff_id, &id)?;
        }
        return Ok(id);
    }
    if !has_layer(store, diff_id)? {
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
        let id = match store.layer_info(diff_id)? {
            Some(i) => i.snapshot,
            None => {
                let _lock = store.lock_layer(diff_id)?;
                match store.layer_info(diff_id)? {
                    Some(i) => i.snapshot,
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
        let still = store.layer_info(diff_id)?.is_some_and(|i| i.snapshot == id);
        if still && (store.has_snapshot(&id) || has_layer(store, diff_id)?) {
            return Ok((id, guard));
        }
    }
    Err(Error::MissingLayer(diff_id.clone()))
}

/// The blob of layer `diff_id` in form `c`, found or made once and kept in the store:
/// - `Compression::None`: the uncompressed tar `blobs/sha256/<diff_id>`; made from the snapshot
///   when only that exists (verified against the diff_id before it is committed);
/// - gzip/zstd: the compressed blob recorded in `compressed_layers`; else compressed from the
///   uncompressed blob, or, when there is none, streamed from the snapshot through the hash
///   (checked against the diff_id) and the compressor at once, without writing the
///   uncompressed tar anywhere.
pub fn layer_blob(store: &Store, diff_id: &Digest, c: Compression) -> Result<LayerBlob> {
    let blob = |digest: Digest, size: u64| LayerBlob {
        digest,
        size,
        media_type: c.media_type().to_string(),
    };
    if c != Compression::None {
        if let Some((d, size)) = store.compressed_layer(diff_id, c.name())? {
            return Ok(blob(d, size));
        }
    }
    if store.has_blob(diff_id) {
        if c == Compression::None {
            return Ok(blob(diff_id.clone(), store.blob_size(diff_id)?));
        }
        let src = store.blob_path(diff_id);
        match File::open(&src) {
            Ok(mut input) => {
                let w = store.blob_writer()?;
                let w = compress(&mut input, w, c).map_err(Error::io("compress", &src))?;
                let (d, size) = w.commit(None)?;
                store.put_compressed_layer(diff_id, c.name(), &d, size)?;
                return Ok(blob(d, size));
            }
            // Removed meanwhile (prune): made from the snapshot below, when there is one.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("open", &src)(e)),
        }
    }
    if let Some((_, src)) = store.compressed_layers_of(diff_id)?.into_iter().next() {
        // Kept compressed with another algorithm (or wanted uncompressed): decompressed,
        // checked against the diff_id, and compressed again at once.
        let (d, size) = from_compressed(store, diff_id, &src, c)?;
        return Ok(blob(d, size));
    }
    let (d, size) = from_snapshot(store, diff_id, c)?;
    Ok(blob(d, size))
}

/// Makes blob `c` of layer `diff_id` from its compressed blob `src`; committed only when the
/// decompressed stream is the diff_id.
fn from_compressed(
    store: &Store,
    diff_id: &Digest,
    src: &Digest,
    c: Compression,
) -> Result<(Digest, u64)> {
    let p = store.blob_path(src);
    let f = File::open(&p).map_err(Error::io("open", &p))?;
    let mut tar = Verified::new(decompressed_send(f)?, diff_id.clone());
    let w = store.blob_writer()?;
    let w = compress(&mut tar, w, c).map_err(Error::io("decompress", &p))?;
    let expected = (c == Compression::None).then_some(diff_id);
    let (d, written) = w.commit(expected)?;
    if c != Compression::None {
        store.put_compressed_layer(diff_id, c.name(), &d, written)?;
    }
    Ok((d, written))
}

/// Compresses `input` into `out` with `c` (gzip level 1 storing what does not compress, see
/// [`GzipWriter`]; zstd level 3); returns `out`.
fn compress<W: Write>(input: &mut dyn io::Read, out: W, c: Compression) -> io::Result<W> {
    match c {
        Compression::Gzip => {
            let mut enc = GzipWriter::new(out);
            io::copy(input, &mut enc)?;
            enc.finish()
        }
        Compression::Zstd => {
            let mut enc = zstd::Encoder::new(out, 3)?;
            io::copy(input, &mut enc)?;
            enc.finish()
        }
        Compression::None => {
            let mut out = out;
            io::copy(input, &mut out)?;
            Ok(out)
        }
    }
}

/// A compressor over `W` whose input is hashed first (the uncompressed stream's digest is the
/// diff_id to check).
enum Encoder<W: Write> {
    Gzip(GzipWriter<W>),
    Zstd(zstd::Encoder<'static, W>),
    Plain(W),
}

impl<W: Write> Encoder<W> {
    fn new(out: W, c: Compression) -> io::Result<Self> {
        Ok(match c {
            Compression::Gzip => Encoder::Gzip(GzipWriter::new(out)),
            Compression::Zstd => Encoder::Zstd(zstd::Encoder::new(out, 3)?),
            Compression::None => Encoder::Plain(out),
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
            Encoder::Plain(mut w) => {
                w.flush()?;
                Ok(w)
            }
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Plain(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::Plain(w) => w.flush(),
        }
    }
}

/// Writes the layer's tar again from its recorded snapshot, through the hash and the
/// compressor `c` into a new blob; commits it only when the tar's digest is `diff_id`.
fn from_snapshot(store: &Store, diff_id: &Digest, c: Compression) -> Result<(Digest, u64)> {
    let info = match store.layer_info(diff_id)? {
        Some(i) if i.from_snapshot => i,
        _ => return Err(Error::MissingLayer(diff_id.clone())),
    };
    // Held while reading, so a concurrent prune does not remove the snapshot under the walk.
    let Some(_in_use) = store.use_snapshot(&info.snapshot)? else {
        return Err(Error::MissingLayer(diff_id.clone()));
    };
    let root = store.snapshot_dir(&info.snapshot);
    let w = store.blob_writer()?;
    let enc = Encoder::new(w, c).map_err(Error::io("compress", &root))?;
    let mut hashed = Sha256Writer::new(enc);
    layer::write_tar_clamped(&root, &mut hashed, info.mtime_clamp)?;
    let (enc, actual, size) = hashed.finish();
    if actual != *diff_id || size != info.size {
        // Dropping the writer removes the partial blob.
        return Err(Error::LayerDamaged {
            diff_id: diff_id.clone(),
            snapshot: root,
            actual,
            context: None,
        });
    }
    let w = enc.finish().map_err(Error::io("compress", &root))?;
    let expected = (c == Compression::None).then_some(diff_id);
    let (d, written) = w.commit(expected)?;
    if c != Compression::None {
        store.put_compressed_layer(diff_id, c.name(), &d, written)?;
    }
    Ok((d, written))
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
            (Compression::Gzip, &gz),
            (Compression::Zstd, &zs),
            (Compression::None, &data),
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
        let mut w = DiffIdWriter::new(Compression::Gzip).unwrap();
        w.write_all(&gz[..gz.len() - 4]).unwrap();
        assert!(w.finish().is_err());
    }
}

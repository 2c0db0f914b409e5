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
//! - **compressed blobs**, linked to the diff_id in `compressed_layers`.
//!
//! A blob made from a snapshot is streamed into `ingest/` while hashing and committed (fsync,
//! rename) only when the uncompressed stream's digest equals the recorded diff_id; otherwise
//! nothing is kept and [`Error::LayerDamaged`] says the snapshot changed since it was recorded
//! and how to repair it. Never a wrong or half-written blob.
//!
//! API: [`has_layer`], [`layer_size`] (metadata); [`ensure_snapshot`] /
//! [`ensure_snapshot_in_use`] (the snapshot form); [`layer_blob`] (a blob of any
//! [`Compression`], uncompressed included); [`crate::compressed_layer`] is [`layer_blob`] as a
//! tuple.

use std::fs::File;
use std::io::{self, Write};

use rbuild_cache::{SnapshotId, Store};
use rbuild_types::{Digest, Sha256Writer};

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

/// Whether the store has the layer in some form: its tar blob, or a snapshot it can be made from.
pub fn has_layer(store: &Store, diff_id: &Digest) -> Result<bool> {
    if store.has_blob(diff_id) {
        return Ok(true);
    }
    Ok(store
        .layer_info(diff_id)?
        .is_some_and(|i| i.from_snapshot && store.has_snapshot(&i.snapshot)))
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
        _ => Err(Error::MissingLayer(diff_id.clone())),
    }
}

/// Ensures the layer with this diff_id has a snapshot (unpacking its blob if needed) and returns it.
/// Concurrent callers (threads or processes) unpack a layer once (per-layer lock).
pub fn ensure_snapshot(store: &Store, diff_id: &Digest) -> Result<SnapshotId> {
    if let Some(id) = store.layer_snapshot(diff_id)? {
        if store.has_snapshot(&id) {
            return Ok(id);
        }
    }
    let _lock = store.lock_layer(diff_id)?;
    if let Some(id) = store.layer_snapshot(diff_id)? {
        if store.has_snapshot(&id) {
            return Ok(id);
        }
    }
    if !store.has_blob(diff_id) {
        return Err(Error::MissingLayer(diff_id.clone()));
    }
    let size = store.blob_size(diff_id)?;
    let b = store.new_snapshot()?;
    unpack::unpack_file(&store.blob_path(diff_id), &b.fs_dir())?;
    let id = b.commit()?;
    store.put_layer(diff_id, &id, size)?;
    Ok(id)
}

/// [`ensure_snapshot`], then marks the snapshot in use ([`Store::use_snapshot`]) so that a
/// concurrent `prune` leaves it (and its layer blob) alone while the guard lives. A snapshot
/// pruned between the two is made again from the layer blob.
pub fn ensure_snapshot_in_use(
    store: &Store,
    diff_id: &Digest,
) -> Result<(SnapshotId, rbuild_cache::SnapshotUse)> {
    for _ in 0..8 {
        let id = ensure_snapshot(store, diff_id)?;
        if let Some(guard) = store.use_snapshot(&id)? {
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
    let (d, size) = from_snapshot(store, diff_id, c)?;
    Ok(blob(d, size))
}

/// Compresses `input` into `out` with `c` (gzip level 1, zstd level 3); returns `out`.
fn compress<W: Write>(input: &mut dyn io::Read, out: W, c: Compression) -> io::Result<W> {
    match c {
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
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
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::Encoder<'static, W>),
    Plain(W),
}

impl<W: Write> Encoder<W> {
    fn new(out: W, c: Compression) -> io::Result<Self> {
        Ok(match c {
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::fast(),
            )),
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

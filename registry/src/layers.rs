//! Layers coming in from a registry (an image pull or a remote cache hit): downloaded straight
//! into the store's ingest area, the compressed bytes hashed as they arrive (the blob's digest)
//! and decompressed on a second thread into another hash (the diff_id). The blob is committed
//! and the layer recorded, kept compressed, only when size, digest and diff_id all match;
//! nothing is unpacked (its tar and snapshot are made when a consumer needs them,
//! `rbuild_exporter::source`).

use std::fs::File;
use std::io::{self, Write};

use rbuild_cache::artifact::LayerDesc;
use rbuild_cache::Store;
use rbuild_exporter::Compression;
use rbuild_types::Digest;

use crate::http::status_error;
use crate::{blob_error, compression_of, io_err, Client, Error, Result, Session};

/// Where a layer's descriptor comes from, for the messages of a verification failure.
#[derive(Clone, Copy)]
pub(crate) enum Listed {
    /// An image's manifest and config.
    InImage,
    /// A remote cache's config.
    InCache,
}

impl Listed {
    fn size_from(self) -> &'static str {
        match self {
            Listed::InImage => "the manifest",
            Listed::InCache => "the cache",
        }
    }
    fn diff_id_from(self) -> &'static str {
        match self {
            Listed::InImage => "the config",
            Listed::InCache => "the cache",
        }
    }
}

impl Client {
    /// Fetches `layer` of the session's repository into the store (see the module), unless the
    /// store has it: its tar, or this very compressed blob recorded for it.
    pub(crate) fn fetch_layer(
        &self,
        store: &Store,
        s: &Session,
        layer: &LayerDesc,
        listed: Listed,
    ) -> Result<()> {
        match self.fetch_layer_checked(store, s, layer, listed)? {
            Some(c) => c.commit(store),
            None => Ok(()),
        }
    }

    /// [`Client::fetch_layer`] up to the commit: the layer downloaded and checked, its blob
    /// fsynced in `ingest/` (`None`: the store has the layer, or has now recorded it from a
    /// blob it had).
    pub(crate) fn fetch_layer_checked(
        &self,
        store: &Store,
        s: &Session,
        layer: &LayerDesc,
        listed: Listed,
    ) -> Result<Option<Checked>> {
        if has_layer(store, layer)? {
            return Ok(None);
        }
        check_media_type(layer, &s.name)?;
        if store.has_blob(&layer.digest) {
            return store_layer(store, layer, &s.name, listed).map(|()| None);
        }
        let path = format!("blobs/{}", layer.digest);
        let w = self
            .retry(|| async {
                let mut w = Ingest::new(store)?;
                let mut res = self.get(s, &path, None).await?;
                let status = res.status();
                if !status.is_success() {
                    let body = res.chunk().await?.unwrap_or_default();
                    return Err(status_error(status, res.url().as_str(), &body));
                }
                while let Some(chunk) = res.chunk().await? {
                    w.write_all(&chunk)?;
                    if w.blob.written() > layer.size {
                        break;
                    }
                }
                Ok(w)
            })
            .map_err(|e| blob_error(e, &s.name, &s.registry, "layer", &layer.digest))?;
        w.check(layer, &s.name, listed).map(Some)
    }
}

/// Stores `layer` from the file at `path` (a blob of an OCI layout) as a download is stored:
/// copied while hashed and decompressed into the diff_id's hash, so a file changed under us
/// cannot pass the check.
pub(crate) fn store_file(
    store: &Store,
    layer: &LayerDesc,
    name: &str,
    path: &std::path::Path,
) -> Result<()> {
    if has_layer(store, layer)? {
        return Ok(());
    }
    check_media_type(layer, name)?;
    let mut src = File::open(path).map_err(io_err("open", path))?;
    let mut w = Ingest::new(store).map_err(io_err("store", path))?;
    io::copy(&mut io::Read::take(&mut src, layer.size + 1), &mut w)
        .map_err(io_err("read", path))?;
    w.check(layer, name, Listed::InCache)?.commit(store)
}

/// Whether the store has layer `layer.diff_id` already: its tar, or this very compressed blob
/// recorded for it.
fn has_layer(store: &Store, layer: &LayerDesc) -> Result<bool> {
    Ok(store.has_blob(&layer.diff_id)
        || (store.has_blob(&layer.digest)
            && store
                .compressed_layers_of(&layer.diff_id)?
                .iter()
                .any(|(_, d)| *d == layer.digest)))
}

/// Refuses a layer whose media type is not a layer tar (its compression is read from its
/// bytes, [`sniff`]).
fn check_media_type(layer: &LayerDesc, name: &str) -> Result<()> {
    compression_of(&layer.media_type)
        .map(|_| ())
        .ok_or_else(|| Error::BadManifest {
            image: name.into(),
            reason: format!(
                "layer {} has media type {:?}, which is not a layer tar",
                layer.digest, layer.media_type
            ),
        })
}

/// A cache layer coming in: the compressed bytes go to a blob writer (digest) and through a
/// decompressor into a second hash (diff_id).
struct Ingest {
    blob: rbuild_cache::BlobWriter,
    tar: TarHasher,
}

/// The compression a layer blob starting with `head` (its first 4 bytes, or all of a shorter
/// one) has, by its magic number, as containerd decides it: registries label some layers
/// wrongly.
fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// The diff_id side of an [`Ingest`], on its own thread: the downloading thread hashes and
/// writes the compressed bytes while this one decompresses and hashes the tar (the two passes
/// take about as long; on two cores the layer is in about half the time). The compression
/// is read from the first bytes ([`sniff`]). A decompression error is kept and reported by
/// `finish` as a verification failure (not an I/O error the download would retry). Dropped
/// without `finish` (a failed download), the thread ends when its channel closes.
struct TarHasher {
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    done: Option<std::thread::JoinHandle<io::Result<Hashed>>>,
}

/// What a [`TarHasher`] found: the diff_id, the tar's size and the compression.
type Hashed = (Digest, u64, Compression);

/// A [`rbuild_exporter::DiffIdWriter`] made once the compression is known from the first
/// bytes (kept in `head` until there are 4 of them).
#[derive(Default)]
struct Sniffing {
    head: Vec<u8>,
    w: Option<(Compression, rbuild_exporter::DiffIdWriter)>,
}

impl Sniffing {
    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        if let Some((_, w)) = &mut self.w {
            return w.write_all(buf);
        }
        self.head.extend_from_slice(buf);
        if self.head.len() >= 4 {
            self.start()?;
        }
        Ok(())
    }

    fn start(&mut self) -> io::Result<()> {
        let alg = sniff(&self.head);
        let mut w = rbuild_exporter::DiffIdWriter::new(alg).map_err(io::Error::other)?;
        w.write_all(&std::mem::take(&mut self.head))?;
        self.w = Some((alg, w));
        Ok(())
    }

    fn finish(mut self) -> io::Result<Hashed> {
        if self.w.is_none() {
            self.start()?;
        }
        let (alg, w) = self
            .w
            .take()
            .ok_or_else(|| io::Error::other("no decoder"))?;
        let (diff_id, size) = w.finish()?;
        Ok((diff_id, size, alg))
    }
}

impl TarHasher {
    fn new() -> io::Result<TarHasher> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(16);
        let done = std::thread::Builder::new()
            .name("layer-diff-id".into())
            .spawn(move || {
                let mut w = Sniffing::default();
                let mut err = None;
                for chunk in rx {
                    if err.is_none() {
                        if let Err(e) = w.write(&chunk) {
                            err = Some(e);
                        }
                    }
                }
                match err {
                    Some(e) => Err(e),
                    None => w.finish(),
                }
            })?;
        Ok(TarHasher {
            tx: Some(tx),
            done: Some(done),
        })
    }

    fn write(&mut self, buf: &[u8]) {
        if let Some(tx) = &self.tx {
            // A closed channel means the thread ended (a panic): `finish` reports it.
            let _ = tx.send(buf.to_vec());
        }
    }

    /// The diff_id, size and compression of the stream.
    fn finish(mut self) -> io::Result<Hashed> {
        drop(self.tx.take());
        match self.done.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            _ => Err(io::Error::other("the decompressing thread failed")),
        }
    }
}

impl Ingest {
    fn new(store: &Store) -> io::Result<Ingest> {
        Ok(Ingest {
            blob: store.blob_writer().map_err(io::Error::other)?,
            tar: TarHasher::new()?,
        })
    }

    /// Checks size, diff_id and digest; the blob is then fsynced, ready to commit.
    fn check(self, layer: &LayerDesc, name: &str, listed: Listed) -> Result<Checked> {
        let bad = |expected: &Digest, problem: String| Error::Verification {
            image: name.into(),
            what: "layer",
            expected: expected.to_string(),
            problem,
        };
        if self.blob.written() != layer.size {
            return Err(bad(
                &layer.digest,
                format!(
                    "size {} bytes (or more), {} says {}",
                    self.blob.written(),
                    listed.size_from(),
                    layer.size
                ),
            ));
        }
        let (diff_id, tar_size, alg) = self
            .tar
            .finish()
            .map_err(|e| bad(&layer.diff_id, format!("cannot be decompressed: {e}")))?;
        if diff_id != layer.diff_id {
            return Err(bad(
                &layer.diff_id,
                format!(
                    "uncompressed content has digest {diff_id}, not {}'s diff_id",
                    listed.diff_id_from()
                ),
            ));
        }
        let blob = match self.blob.seal(Some(&layer.digest)) {
            Ok(b) => b,
            Err(rbuild_cache::Error::DigestMismatch { actual, .. }) => {
                return Err(bad(&layer.digest, format!("content has digest {actual}")))
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Checked {
            blob,
            layer: layer.clone(),
            alg,
            tar_size,
        })
    }
}

/// A layer downloaded and checked, its blob fsynced but not yet in the store
/// ([`Client::fetch_layer_checked`]); dropped, it leaves nothing.
pub(crate) struct Checked {
    blob: rbuild_cache::SealedBlob,
    layer: LayerDesc,
    alg: Compression,
    tar_size: u64,
}

impl Checked {
    /// Commits the blob and records the layer (kept compressed).
    pub(crate) fn commit(self, store: &Store) -> Result<()> {
        self.blob.commit()?;
        record_layer(store, &self.layer, self.alg, self.tar_size)
    }
}

impl Write for Ingest {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.blob.write_all(buf)?;
        self.tar.write(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.blob.flush()
    }
}

/// Records a verified layer blob: compressed, as a layer kept compressed; uncompressed, it is
/// the layer's tar itself.
fn record_layer(store: &Store, layer: &LayerDesc, alg: Compression, tar_size: u64) -> Result<()> {
    if alg != Compression::None {
        store.put_lazy_layer(
            &layer.diff_id,
            tar_size,
            alg.name(),
            &layer.digest,
            layer.size,
        )?;
    }
    Ok(())
}

/// Records a compressed blob already in the store (digest-checked) as layer `layer.diff_id`
/// after checking, by decompressing it into a hash, that it is that layer.
fn store_layer(store: &Store, layer: &LayerDesc, name: &str, listed: Listed) -> Result<()> {
    check_media_type(layer, name)?;
    if layer.digest == layer.diff_id {
        return Ok(());
    }
    let src = store.blob_path(&layer.digest);
    let mut f = File::open(&src).map_err(io_err("open", &src))?;
    let mut tar = Sniffing::default();
    let mut buf = vec![0u8; 1 << 20];
    let hashed = loop {
        let n = io::Read::read(&mut f, &mut buf).map_err(io_err("read", &src))?;
        if n == 0 {
            break tar.finish();
        }
        if let Err(e) = tar.write(&buf[..n]) {
            break Err(e);
        }
    };
    let (diff_id, tar_size, alg) = hashed.map_err(|e| Error::Verification {
        image: name.into(),
        what: "layer",
        expected: layer.diff_id.to_string(),
        problem: format!("cannot be decompressed: {e}"),
    })?;
    if diff_id != layer.diff_id {
        return Err(Error::Verification {
            image: name.into(),
            what: "layer",
            expected: layer.diff_id.to_string(),
            problem: format!(
                "uncompressed content has digest {diff_id}, not {}'s diff_id",
                listed.diff_id_from()
            ),
        });
    }
    record_layer(store, layer, alg, tar_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::flate2_free_gzip;

    fn desc(blob: &[u8], tar: &[u8], media_type: &str) -> LayerDesc {
        LayerDesc {
            digest: Digest::of(blob),
            size: blob.len() as u64,
            media_type: media_type.into(),
            diff_id: Digest::of(tar),
        }
    }

    #[test]
    fn layers_are_checked_against_digest_and_diff_id_and_kept_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let gz = flate2_free_gzip(b"layer bytes");
        let path = dir.path().join("blob");
        std::fs::write(&path, &gz).unwrap();
        let gzip = "application/vnd.oci.image.layer.v1.tar+gzip";
        // A diff_id the content does not have: refused, nothing stored.
        let e = store_file(&store, &desc(&gz, b"other", gzip), "x", &path).unwrap_err();
        assert!(e.to_string().contains("not the cache's diff_id"), "{e}");
        assert!(!store.has_blob(&Digest::of(&gz)));
        // A size the blob does not have: refused.
        let mut short = desc(&gz, b"layer bytes", gzip);
        short.size -= 1;
        let e = store_file(&store, &short, "x", &path).unwrap_err();
        assert!(e.to_string().contains("size"), "{e}");
        assert!(!store.has_blob(&Digest::of(&gz)));
        // The right layer: the compressed blob is stored and recorded, no tar.
        let l = desc(&gz, b"layer bytes", gzip);
        store_file(&store, &l, "x", &path).unwrap();
        assert!(store.has_blob(&l.digest));
        assert!(!store.has_blob(&l.diff_id));
        assert_eq!(
            store.compressed_layers_of(&l.diff_id).unwrap(),
            vec![("gzip".to_string(), l.digest.clone())]
        );
        assert!(has_layer(&store, &l).unwrap());
    }

    #[test]
    fn compression_is_read_from_the_bytes_not_the_label() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        // A plain tar labelled gzip (some registries do): its blob is the tar itself.
        let tar = vec![b'a'; 1000];
        let path = dir.path().join("blob");
        std::fs::write(&path, &tar).unwrap();
        let l = desc(
            &tar,
            &tar,
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        );
        store_file(&store, &l, "x", &path).unwrap();
        assert!(store.has_blob(&l.diff_id));
        assert!(store.compressed_layers_of(&l.diff_id).unwrap().is_empty());
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(sniff(b""), Compression::None);
        // Written a byte at a time, the magic is still found.
        let gz = flate2_free_gzip(b"layer bytes");
        let mut w = Sniffing::default();
        for b in &gz {
            w.write(std::slice::from_ref(b)).unwrap();
        }
        let (d, n, alg) = w.finish().unwrap();
        assert_eq!(
            (d, n, alg),
            (Digest::of(b"layer bytes"), 11, Compression::Gzip)
        );
    }
}

//! OCI image layout archives and layer compression.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use oci_spec::image::{Descriptor, ImageManifest, MediaType};
use rbuild_cache::Store;
use rbuild_types::{Digest, ImageRef};

use crate::image::{load_image, oci_digest, our_digest};
use crate::{Error, Result};

/// Layer compression for outputs and pushes. The local store always keeps layers uncompressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    /// gzip (level 1: fast; the default for outputs, as every consumer reads it).
    #[default]
    Gzip,
    /// zstd (level 3).
    Zstd,
    /// Uncompressed tar.
    None,
}

impl Compression {
    /// Name as used on the command line and in the store (`gzip`, `zstd`, `uncompressed`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "uncompressed",
        }
    }

    pub(crate) fn media_type(self) -> MediaType {
        match self {
            Compression::Gzip => MediaType::ImageLayerGzip,
            Compression::Zstd => MediaType::ImageLayerZstd,
            Compression::None => MediaType::ImageLayer,
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Compression {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            "uncompressed" | "none" => Ok(Compression::None),
            _ => Err(Error::Unsupported(format!(
                "compression {s:?} (expected gzip, zstd or uncompressed)"
            ))),
        }
    }
}

/// Compresses one stored (uncompressed) layer, reusing an earlier result (see
/// [`crate::layer_blob`]: made from the snapshot when the store has no tar blob of it).
fn compress_layer(store: &Store, layer: &Descriptor, c: Compression) -> Result<Descriptor> {
    if *layer.media_type() != MediaType::ImageLayer {
        return Ok(layer.clone());
    }
    let diff_id = our_digest(layer.digest(), "layer")?;
    let b = crate::source::layer_blob(store, &diff_id, c)?;
    let mut out = Descriptor::new(c.media_type(), b.size, oci_digest(&b.digest)?);
    out.set_annotations(layer.annotations().clone());
    Ok(out)
}

/// The blob of stored layer `diff_id` compressed with `c` (made once, then reused): its
/// digest, size and OCI media type. `Compression::None` gives the uncompressed tar blob. This
/// is [`crate::layer_blob`] as a tuple.
pub fn compressed_layer(
    store: &Store,
    diff_id: &Digest,
    c: Compression,
) -> Result<(Digest, u64, String)> {
    let b = crate::source::layer_blob(store, diff_id, c)?;
    Ok((b.digest, b.size, b.media_type))
}

/// Compresses the layers of a manifest in parallel (one thread per core at most) and returns
/// the manifest rewritten with the compressed descriptors.
pub(crate) fn compressed_manifest(
    store: &Store,
    m: &ImageManifest,
    c: Compression,
) -> Result<ImageManifest> {
    let layers = m.layers();
    let results: Vec<Mutex<Option<Result<Descriptor>>>> =
        layers.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(layers.len())
        .max(1);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= layers.len() {
                    break;
                }
                let r = compress_layer(store, &layers[i], c);
                if let Ok(mut slot) = results[i].lock() {
                    *slot = Some(r);
                }
            });
        }
    });
    let mut out = Vec::with_capacity(layers.len());
    for (i, r) in results.into_iter().enumerate() {
        match r.into_inner().ok().flatten() {
            Some(r) => out.push(r?),
            None => {
                return Err(Error::Unsupported(format!(
                    "compressing layer {} failed unexpectedly",
                    layers[i].digest()
                )))
            }
        }
    }
    let mut m = m.clone();
    m.set_layers(out);
    Ok(m)
}

/// How an error names the image being exported: its first name, else its manifest digest.
fn image_name(names: &[ImageRef], manifest: &Digest) -> String {
    match names.first() {
        Some(n) => format!("image {n}"),
        None => format!("image {manifest}"),
    }
}

/// The registry-qualified name containerd expects (`docker.io/library/busybox:latest`).
pub(crate) fn full_name(r: &ImageRef) -> String {
    let name = match &r.registry {
        Some(reg) => format!("{reg}/{}", r.repository),
        None if r.repository.contains('/') => format!("docker.io/{}", r.repository),
        None => format!("docker.io/library/{}", r.repository),
    };
    match (&r.tag, &r.digest) {
        (Some(t), _) => format!("{name}:{t}"),
        (None, Some(d)) => format!("{name}@{d}"),
        (None, None) => format!("{name}:latest"),
    }
}

/// Where an image layout (or docker archive) is written: a tar file, renamed into place when
/// complete, or a directory (`--output type=oci,tar=false`).
pub(crate) struct TarOut {
    target: Target,
    dest: PathBuf,
    done: bool,
}

enum Target {
    Tar {
        builder: tar::Builder<io::BufWriter<File>>,
        tmp: PathBuf,
    },
    Dir,
}

impl TarOut {
    pub(crate) fn create(dest: &Path) -> Result<TarOut> {
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        let tmp = dest.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let f = File::create(&tmp).map_err(Error::io("create", &tmp))?;
        Ok(TarOut {
            target: Target::Tar {
                builder: tar::Builder::new(io::BufWriter::with_capacity(1 << 20, f)),
                tmp,
            },
            dest: dest.to_path_buf(),
            done: false,
        })
    }

    /// Writes into the directory `dest` (created if missing) instead of a tar.
    pub(crate) fn create_dir(dest: &Path) -> Result<TarOut> {
        fs::create_dir_all(dest).map_err(Error::io("create", dest))?;
        Ok(TarOut {
            target: Target::Dir,
            dest: dest.to_path_buf(),
            done: false,
        })
    }

    fn header(size: u64, kind: tar::EntryType, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    pub(crate) fn dir(&mut self, name: &str) -> Result<()> {
        match &mut self.target {
            Target::Tar { builder, tmp } => {
                let mut h = Self::header(0, tar::EntryType::Directory, 0o755);
                builder
                    .append_data(&mut h, name, io::empty())
                    .map_err(Error::io("write", &*tmp))
            }
            Target::Dir => {
                let p = self.dest.join(name);
                fs::create_dir_all(&p).map_err(Error::io("create", &p))
            }
        }
    }

    pub(crate) fn bytes(&mut self, name: &str, data: &[u8]) -> Result<()> {
        match &mut self.target {
            Target::Tar { builder, tmp } => {
                let mut h = Self::header(data.len() as u64, tar::EntryType::Regular, 0o644);
                builder
                    .append_data(&mut h, name, data)
                    .map_err(Error::io("write", &*tmp))
            }
            Target::Dir => {
                let p = self.dest.join(name);
                write_atomic(&p, |f| f.write_all(data))
            }
        }
    }

    pub(crate) fn file(&mut self, name: &str, path: &Path) -> Result<()> {
        match &mut self.target {
            Target::Tar { builder, tmp } => {
                let mut f = File::open(path).map_err(Error::io("open", path))?;
                let len = f.metadata().map_err(Error::io("stat", path))?.len();
                let mut h = Self::header(len, tar::EntryType::Regular, 0o644);
                if name.len() > 100 {
                    return builder
                        .append_data(&mut h, name, io::Read::take(f, len))
                        .map_err(Error::io("write", &*tmp));
                }
                // The header through the buffer, the data file to file: `io::copy` between
                // two files is `copy_file_range`, no pass through user space (the tar crate
                // would copy a layer in 8 KiB reads); then the padding to 512 bytes.
                h.set_path(name).map_err(Error::io("write", &*tmp))?;
                h.set_cksum();
                let w = builder.get_mut();
                let wrote = (|| {
                    w.write_all(h.as_bytes())?;
                    w.flush()?;
                    let n = io::copy(&mut io::Read::take(&mut f, len), w.get_mut())?;
                    if n != len {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("{} is {n} bytes, not {len}", path.display()),
                        ));
                    }
                    let pad = ((512 - len % 512) % 512) as usize;
                    w.write_all(&[0u8; 512][..pad])
                })();
                wrote.map_err(Error::io("write", &*tmp))
            }
            Target::Dir => {
                let p = self.dest.join(name);
                if p.is_file() && name.starts_with("blobs/") {
                    // Content-addressed: a blob already in the layout is the same blob.
                    return Ok(());
                }
                let mut src = File::open(path).map_err(Error::io("open", path))?;
                write_atomic(&p, |f| io::copy(&mut src, f).map(|_| ()))
            }
        }
    }

    pub(crate) fn blob(&mut self, store: &Store, d: &Digest) -> Result<()> {
        if !store.has_blob(d) {
            return Err(Error::MissingLayer(d.clone()));
        }
        self.file(&format!("blobs/sha256/{}", d.hex()), &store.blob_path(d))
    }

    pub(crate) fn finish(mut self) -> Result<()> {
        if let Target::Tar { builder, tmp } = &mut self.target {
            builder.finish().map_err(Error::io("write", &*tmp))?;
            let w = builder.get_mut();
            w.flush().map_err(Error::io("write", &*tmp))?;
            // Not fsynced, as `docker save` and buildctl's outputs: the file is outside the
            // store, whose crash-safety argument does not depend on it; it appears at `dest`
            // by rename only when complete, so a killed build never leaves a partial archive.
            crate::replace::replace(tmp, &self.dest).map_err(Error::io("rename to", &self.dest))?;
        }
        self.done = true;
        Ok(())
    }
}

impl Drop for TarOut {
    fn drop(&mut self) {
        if let Target::Tar { tmp, .. } = &self.target {
            if !self.done {
                let _ = fs::remove_file(tmp);
            }
        }
    }
}

/// Writes `path` through a temporary sibling renamed into place.
fn write_atomic(path: &Path, fill: impl FnOnce(&mut File) -> io::Result<()>) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(Error::io("create", parent))?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let r = File::create(&tmp).and_then(|mut f| {
        fill(&mut f)?;
        f.sync_all()
    });
    if let Err(e) = r {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("write", path)(e));
    }
    fs::rename(&tmp, path).map_err(Error::io("rename to", path))
}

/// Writes the layout files (`oci-layout`, `index.json`, blobs) of one image into `out`;
/// returns the manifest digest and bytes written into the layout.
pub(crate) fn write_layout(
    store: &Store,
    manifest: &Digest,
    names: &[ImageRef],
    compression: Compression,
    out: &mut TarOut,
) -> Result<(Digest, ImageManifest)> {
    let img = load_image(store, manifest)?;
    // Every layer blob is found or made (and verified) here, before anything is written.
    let layers = compressed_manifest(store, &img.manifest, compression)
        .map_err(|e| e.for_layer_of(image_name(names, manifest)))?;
    let (m, mdigest, mbytes) = if compression == Compression::None {
        (
            img.manifest.clone(),
            manifest.clone(),
            store.read_blob(manifest)?,
        )
    } else {
        let m = layers;
        let bytes = serde_json::to_vec(&m).map_err(|e| Error::InvalidImage {
            what: "manifest",
            digest: manifest.to_string(),
            reason: e.to_string(),
        })?;
        let d = store.put_blob(&bytes)?;
        (m, d, bytes)
    };
    let platform = serde_json::json!({
        "architecture": img.config.architecture().to_string(),
        "os": img.config.os().to_string(),
    });
    let entry = |annotations: Option<serde_json::Value>| {
        let mut e = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": mdigest.to_string(),
            "size": mbytes.len(),
            "platform": platform,
        });
        if let Some(a) = annotations {
            e["annotations"] = a;
        }
        e
    };
    let manifests: Vec<serde_json::Value> = if names.is_empty() {
        vec![entry(None)]
    } else {
        names
            .iter()
            .map(|n| {
                entry(Some(serde_json::json!({
                    "io.containerd.image.name": full_name(n),
                    "org.opencontainers.image.ref.name": n.tag.clone().unwrap_or_else(|| "latest".into()),
                })))
            })
            .collect()
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    out.bytes("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    out.bytes("index.json", index.to_string().as_bytes())?;
    out.dir("blobs/")?;
    out.dir("blobs/sha256/")?;
    out.bytes(&format!("blobs/sha256/{}", mdigest.hex()), &mbytes)?;
    out.blob(store, &img.config_digest)?;
    let mut seen = std::collections::HashSet::new();
    for l in m.layers() {
        let d = our_digest(l.digest(), "layer")?;
        if seen.insert(d.clone()) {
            out.blob(store, &d)?;
        }
    }
    Ok((mdigest, m))
}

/// Writes an OCI image layout as a tar archive (`--output type=oci,dest=F`): `oci-layout`,
/// `index.json` (one entry per name, annotated with `org.opencontainers.image.ref.name` = tag
/// and `io.containerd.image.name` = full name), and the blobs. Layers are compressed with
/// `compression` in parallel across layers (each once: the result is kept in the store), and
/// the manifest is rewritten with the compressed digests and media types. The archive appears
/// at `dest` by rename when complete. Returns the exported manifest digest.
pub fn export_oci_archive(
    store: &Store,
    manifest: &Digest,
    names: &[ImageRef],
    dest: &Path,
    compression: Compression,
) -> Result<Digest> {
    let mut out = TarOut::create(dest)?;
    let (d, _) = write_layout(store, manifest, names, compression, &mut out)?;
    out.finish()?;
    Ok(d)
}

/// Writes an OCI image layout into the directory `dest` (`--output type=oci,dest=DIR,tar=false`),
/// with the same content as [`export_oci_archive`]. Blobs already in the directory are kept.
pub fn export_oci_dir(
    store: &Store,
    manifest: &Digest,
    names: &[ImageRef],
    dest: &Path,
    compression: Compression,
) -> Result<Digest> {
    let mut out = TarOut::create_dir(dest)?;
    let (d, _) = write_layout(store, manifest, names, compression, &mut out)?;
    out.finish()?;
    Ok(d)
}

/// An image as a registry receives it: manifest bytes (layers compressed), its digest, and the
/// blobs it references (config first, then the layers), all in the store.
#[derive(Clone, Debug)]
pub struct DistributionManifest {
    /// The manifest document, as pushed.
    pub bytes: Vec<u8>,
    /// Its digest (what the registry names it by).
    pub digest: Digest,
    /// Media type of the manifest.
    pub media_type: String,
    /// Config blob digest.
    pub config: Digest,
    /// Layer blob digests (compressed), in order.
    pub layers: Vec<Digest>,
}

/// Prepares an image of the store for a push: layers compressed with `compression` (in
/// parallel, once: kept for the next push), the manifest rewritten with the compressed
/// descriptors and stored as a blob.
pub fn distribution_manifest(
    store: &Store,
    manifest: &Digest,
    compression: Compression,
) -> Result<DistributionManifest> {
    let img = load_image(store, manifest)?;
    let m = compressed_manifest(store, &img.manifest, compression)
        .map_err(|e| e.for_layer_of(format!("image {manifest}")))?;
    let bytes = serde_json::to_vec(&m).map_err(|e| Error::InvalidImage {
        what: "manifest",
        digest: manifest.to_string(),
        reason: e.to_string(),
    })?;
    let digest = store.put_blob(&bytes)?;
    let layers = m
        .layers()
        .iter()
        .map(|l| our_digest(l.digest(), "layer"))
        .collect::<Result<Vec<_>>>()?;
    Ok(DistributionManifest {
        bytes,
        digest,
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        config: img.config_digest,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            full_name(&"busybox".parse().unwrap()),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            full_name(&"me/web:v1".parse().unwrap()),
            "docker.io/me/web:v1"
        );
        assert_eq!(
            full_name(&"localhost:5000/web:v1".parse().unwrap()),
            "localhost:5000/web:v1"
        );
        assert_eq!("zstd".parse::<Compression>().unwrap(), Compression::Zstd);
        assert!("lz4".parse::<Compression>().is_err());
    }
}

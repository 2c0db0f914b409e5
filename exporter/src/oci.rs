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

    fn media_type(self) -> MediaType {
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

/// Compresses one stored (uncompressed) layer, reusing an earlier result.
fn compress_layer(store: &Store, layer: &Descriptor, c: Compression) -> Result<Descriptor> {
    if c == Compression::None || *layer.media_type() != MediaType::ImageLayer {
        return Ok(layer.clone());
    }
    let diff_id = our_digest(layer.digest(), "layer")?;
    let (digest, size) = match store.compressed_layer(&diff_id, c.name())? {
        Some(found) => found,
        None => {
            let src = store.blob_path(&diff_id);
            let mut input = File::open(&src).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    Error::MissingLayer(diff_id.clone())
                } else {
                    Error::io("open", &src)(e)
                }
            })?;
            let w = store.blob_writer()?;
            let w = match c {
                Compression::Gzip => {
                    let mut enc = flate2::write::GzEncoder::new(w, flate2::Compression::fast());
                    io::copy(&mut input, &mut enc).map_err(Error::io("compress", &src))?;
                    enc.finish().map_err(Error::io("compress", &src))?
                }
                _ => {
                    let mut enc = zstd::Encoder::new(w, 3).map_err(Error::io("compress", &src))?;
                    io::copy(&mut input, &mut enc).map_err(Error::io("compress", &src))?;
                    enc.finish().map_err(Error::io("compress", &src))?
                }
            };
            let (d, size) = w.commit(None)?;
            store.put_compressed_layer(&diff_id, c.name(), &d, size)?;
            (d, size)
        }
    };
    let mut out = Descriptor::new(c.media_type(), size, oci_digest(&digest)?);
    out.set_annotations(layer.annotations().clone());
    Ok(out)
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

/// A tar being written to `dest` through a temporary file renamed into place when complete.
pub(crate) struct TarOut {
    builder: tar::Builder<io::BufWriter<File>>,
    tmp: PathBuf,
    dest: PathBuf,
    done: bool,
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
            builder: tar::Builder::new(io::BufWriter::with_capacity(1 << 20, f)),
            tmp,
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
        let mut h = Self::header(0, tar::EntryType::Directory, 0o755);
        self.builder
            .append_data(&mut h, name, io::empty())
            .map_err(Error::io("write", &self.tmp))
    }

    pub(crate) fn bytes(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let mut h = Self::header(data.len() as u64, tar::EntryType::Regular, 0o644);
        self.builder
            .append_data(&mut h, name, data)
            .map_err(Error::io("write", &self.tmp))
    }

    pub(crate) fn file(&mut self, name: &str, path: &Path) -> Result<()> {
        let f = File::open(path).map_err(Error::io("open", path))?;
        let len = f.metadata().map_err(Error::io("stat", path))?.len();
        let mut h = Self::header(len, tar::EntryType::Regular, 0o644);
        self.builder
            .append_data(&mut h, name, io::Read::take(f, len))
            .map_err(Error::io("write", &self.tmp))
    }

    pub(crate) fn blob(&mut self, store: &Store, d: &Digest) -> Result<()> {
        if !store.has_blob(d) {
            return Err(Error::MissingLayer(d.clone()));
        }
        self.file(&format!("blobs/sha256/{}", d.hex()), &store.blob_path(d))
    }

    pub(crate) fn finish(mut self) -> Result<()> {
        self.builder
            .finish()
            .map_err(Error::io("write", &self.tmp))?;
        let w = self.builder.get_mut();
        w.flush().map_err(Error::io("write", &self.tmp))?;
        w.get_ref()
            .sync_all()
            .map_err(Error::io("fsync", &self.tmp))?;
        fs::rename(&self.tmp, &self.dest).map_err(Error::io("rename to", &self.dest))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for TarOut {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
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
    let (m, mdigest, mbytes) = if compression == Compression::None {
        (
            img.manifest.clone(),
            manifest.clone(),
            store.read_blob(manifest)?,
        )
    } else {
        let m = compressed_manifest(store, &img.manifest, compression)?;
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

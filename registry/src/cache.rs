//! Transport of remote cache artifacts (`rbuild_cache::artifact`): push and pull through a
//! registry, or write and read an OCI image layout directory (for CI caches that are
//! directories). Every blob that comes in is checked against its digest and size, and every
//! layer also against its diff_id, before it enters the store.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use oci_client::errors::{OciDistributionError, OciErrorCode};
use rbuild_cache::artifact::LayerDesc;
use rbuild_cache::Store;
use rbuild_types::{Digest, ImageRef};
use serde_json::{json, Value};

use crate::layers::Listed;
use crate::{check, io_err, registry_err, Client, Error, Result, Session};

const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// Whether a registry error means "there is no such manifest" (a missing cache is a warning).
fn not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown
            )
        }),
        _ => false,
    }
}

/// Whether the registry refused a manifest for its content (so another form may be accepted),
/// as opposed to auth or transport failures.
fn refused(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ServerError { code, .. } => {
            (400..500).contains(code) && *code != 401 && *code != 403
        }
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestInvalid
                    | OciErrorCode::Unsupported
                    | OciErrorCode::SizeInvalid
                    | OciErrorCode::ManifestBlobUnknown
            )
        }),
        _ => false,
    }
}

impl Client {
    /// Pushes `blobs` (from the store, skipping those the registry has) and then the first of
    /// `forms` (manifest documents) that the registry accepts. Returns the manifest's digest.
    pub fn push_artifact(
        &self,
        store: &Store,
        target: &ImageRef,
        blobs: &[Digest],
        forms: &[Vec<u8>],
    ) -> Result<Digest> {
        let (
            Session {
                registry,
                name,
                reference,
                ..
            },
            client,
        ) = self.push_blobs(store, target, blobs, "push cache")?;
        let perr = registry_err("push cache", &name, &registry);
        let ct = ::http::HeaderValue::from_static(MANIFEST_MEDIA_TYPE);
        let mut last = None;
        for form in forms {
            let body = bytes::Bytes::from(form.clone());
            match self.retry(|| client.push_manifest_raw(&reference, body.clone(), ct.clone())) {
                Ok(_) => return Ok(Digest::of(form)),
                Err(e) if refused(&e) => last = Some(e),
                Err(e) => return Err(perr(e)),
            }
        }
        Err(match last {
            Some(e) => perr(e),
            None => Error::Registry {
                op: "push cache",
                image: name,
                message: "no manifest to push".into(),
            },
        })
    }

    /// The manifest `target` names, checked against the digest the registry gives for it;
    /// `None` when the registry has no such tag or repository.
    pub fn pull_artifact_manifest(&self, target: &ImageRef) -> Result<Option<Vec<u8>>> {
        let s = self.session(target)?;
        let types = [
            MANIFEST_MEDIA_TYPE,
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        ];
        let reference = match &target.digest {
            Some(d) => d.to_string(),
            None => target.tag.clone().unwrap_or_else(|| "latest".into()),
        };
        let (bytes, digest) = match self.fetch_manifest(&s, &reference, &types) {
            Ok(fetched) => fetched?,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(registry_err("pull cache", &s.name, &s.registry)(e)),
        };
        let actual = Digest::of(&bytes);
        let want = target
            .digest
            .as_ref()
            .map(|d| d.to_string())
            .or(digest)
            .unwrap_or_default();
        if !want.is_empty() && actual.to_string() != want {
            return Err(Error::Verification {
                image: s.name,
                what: "manifest",
                expected: want,
                problem: format!("content has digest {actual}"),
            });
        }
        Ok(Some(bytes))
    }

    /// A small blob (a config) of `target`'s repository, checked against digest and size.
    pub fn pull_artifact_blob(&self, target: &ImageRef, d: &Digest, size: u64) -> Result<Vec<u8>> {
        if size > 64 << 20 {
            return Err(Error::BadManifest {
                image: target.to_string(),
                reason: format!("config blob {d} is {size} bytes, more than the 64 MiB allowed"),
            });
        }
        let s = self.session(target)?;
        let data = self
            .fetch_small_blob(&s, d, size)
            .map_err(|e| crate::blob_error(e, &s.name, &s.registry, "config", d))?;
        check(&s.name, "config", d, Some(size), &data)?;
        Ok(data)
    }

    /// Whether `target`'s repository has blob `d` (a `HEAD` request; nothing is downloaded).
    pub fn cache_blob_exists(&self, target: &ImageRef, d: &Digest) -> Result<bool> {
        let s = self.session(target)?;
        self.blob_exists(&s, d)
            .map_err(registry_err("pull cache", &s.name, &s.registry))
    }

    /// Downloads one cache layer of `target`, checks it (digest and size; diff_id and tar size
    /// by decompressing the bytes as they arrive into a hash) and stores only the compressed
    /// blob, recorded as a layer kept compressed (`Store::put_lazy_layer`): its tar and its
    /// snapshot are made later, if a consumer needs them (`rbuild_exporter::layer_tar`,
    /// `ensure_snapshot`).
    pub fn fetch_cache_layer(
        &self,
        store: &Store,
        target: &ImageRef,
        layer: &LayerDesc,
    ) -> Result<()> {
        self.fetch_layer(store, &self.session(target)?, layer, Listed::InCache)
    }
}

/// An OCI image layout directory holding cache manifests, one per tag
/// (`org.opencontainers.image.ref.name` in `index.json`), as `docker buildx --cache-to
/// type=local` writes it.
#[derive(Clone, Debug)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// The layout at `dir` (which need not exist yet).
    pub fn new(dir: &Path) -> Layout {
        Layout {
            dir: dir.to_path_buf(),
        }
    }

    fn blob(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(d.hex())
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.json")
    }

    /// Writes `blobs` (from the store; existing ones kept: they are content-addressed) and the
    /// manifest, and points `tag` at it in `index.json` (replacing the tag's previous entry).
    /// Files appear by rename, so a reader never sees a partial one.
    pub fn write(
        &self,
        store: &Store,
        tag: &str,
        blobs: &[Digest],
        manifest: &[u8],
    ) -> Result<Digest> {
        let bdir = self.dir.join("blobs/sha256");
        fs::create_dir_all(&bdir).map_err(io_err("create", &bdir))?;
        for d in blobs {
            let dest = self.blob(d);
            if dest.is_file() {
                continue;
            }
            let src = store.blob_path(d);
            let tmp = bdir.join(format!(".tmp-{}-{}", std::process::id(), d.hex()));
            fs::copy(&src, &tmp).map_err(io_err("copy blob to", &tmp))?;
            fs::rename(&tmp, &dest).map_err(io_err("rename", &dest))?;
        }
        let md = Digest::of(manifest);
        write_atomic(&self.blob(&md), manifest)?;
        write_atomic(
            &self.dir.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        let mut index: Value = match fs::read(self.index_path()) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        if !index["manifests"].is_array() {
            index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []});
        }
        let entries = index["manifests"].as_array_mut().expect("checked above");
        entries.retain(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"].as_str() != Some(tag)
        });
        entries.push(json!({
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": md.to_string(),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
        write_atomic(&self.index_path(), index.to_string().as_bytes())?;
        Ok(md)
    }

    /// The manifest tagged `tag` (checked against its digest), `None` when the directory, its
    /// index or the tag is missing.
    pub fn read_manifest(&self, tag: &str) -> Result<Option<Vec<u8>>> {
        let data = match fs::read(self.index_path()) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", self.index_path())(e)),
        };
        let name = self.dir.display().to_string();
        let index: Value = crate::parse_json(&data, &name)?;
        let Some(entry) = index["manifests"].as_array().and_then(|a| {
            a.iter().rev().find(|m| {
                m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(tag)
            })
        }) else {
            return Ok(None);
        };
        let d: Digest = entry["digest"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::BadManifest {
                image: name.clone(),
                reason: format!("index.json entry without a sha256 digest: {entry}"),
            })?;
        self.read_blob(&d, entry["size"].as_u64().unwrap_or(0))
            .map(Some)
    }

    /// A small blob, checked against digest and size.
    pub fn read_blob(&self, d: &Digest, size: u64) -> Result<Vec<u8>> {
        let name = self.dir.display().to_string();
        if size > 64 << 20 {
            return Err(Error::BadManifest {
                image: name,
                reason: format!("blob {d} is {size} bytes, more than the 64 MiB allowed"),
            });
        }
        let p = self.blob(d);
        let data = fs::read(&p).map_err(io_err("read", &p))?;
        check(&name, "blob", d, Some(size), &data)?;
        Ok(data)
    }

    /// Whether the layout has blob `d` of `size` bytes.
    pub fn has_blob(&self, d: &Digest, size: u64) -> bool {
        fs::metadata(self.blob(d)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Checks one cache layer of the layout (digest, size, diff_id) and stores it.
    pub fn fetch_cache_layer(&self, store: &Store, layer: &LayerDesc) -> Result<()> {
        let name = self.dir.display().to_string();
        crate::layers::store_file(store, layer, &name, &self.blob(&layer.digest))
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    fs::write(&tmp, data).map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_refused_manifests_are_told_apart() {
        let server = |code| OciDistributionError::ServerError {
            code,
            url: "u".into(),
            message: "m".into(),
        };
        assert!(not_found(&server(404)));
        assert!(!not_found(&server(500)));
        assert!(not_found(
            &OciDistributionError::ImageManifestNotFoundError("x".into())
        ));
        assert!(refused(&server(400)));
        assert!(refused(&server(415)));
        assert!(
            !refused(&server(401)),
            "auth failures are not a form problem"
        );
        assert!(!refused(&server(403)));
        assert!(!refused(&server(502)));
    }

    #[test]
    fn layout_round_trip_and_tamper_check() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(&root.path().join("store")).unwrap();
        let blob = store.put_blob(b"config").unwrap();
        let layout = Layout::new(&root.path().join("cache"));
        assert!(layout.read_manifest("latest").unwrap().is_none());
        let m = br#"{"schemaVersion":2}"#;
        layout
            .write(&store, "latest", std::slice::from_ref(&blob), m)
            .unwrap();
        layout
            .write(&store, "latest", std::slice::from_ref(&blob), m)
            .unwrap();
        assert_eq!(layout.read_manifest("latest").unwrap().unwrap(), m);
        assert!(layout.read_manifest("other").unwrap().is_none());
        assert_eq!(layout.read_blob(&blob, 6).unwrap(), b"config");
        fs::write(layout.blob(&blob), b"conf1g").unwrap();
        let e = layout.read_blob(&blob, 6).unwrap_err();
        assert!(e.to_string().contains("tampered"), "{e}");
        let idx: Value = serde_json::from_slice(&fs::read(layout.index_path()).unwrap()).unwrap();
        assert_eq!(idx["manifests"].as_array().unwrap().len(), 1);
    }
}

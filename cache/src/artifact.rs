//! The remote cache artifact: cache records exported as an ordinary OCI artifact, so any OCI
//! registry (or an OCI layout directory) can carry a build cache between machines.
//!
//! Two manifest forms carry the same [`CacheConfig`]:
//! - [`Form::Config`] (preferred): an image manifest whose config blob has the media type
//!   [`CONFIG_MEDIA_TYPE`] and whose layers are the step results (compressed layer tars);
//! - [`Form::Artifact`] (fallback for registries that refuse unknown config types): an image
//!   manifest with `artifactType` [`ARTIFACT_TYPE`], the empty config
//!   `application/vnd.oci.empty.v1+json`, the cache config as its first layer and then the step
//!   results.
//!
//! A third, inline, form keeps the records in an image's own config under [`INLINE_FIELD`]; the
//! layers are then the image's layers.
//!
//! Records refer to layers by diff_id (the uncompressed digest, which the solver's results use);
//! the config's `layers` map each diff_id to the compressed blob to download. Nothing here is
//! trusted: [`parse_manifest`] and [`CacheConfig::parse`] check shapes, the consumer checks
//! digests.

use std::collections::BTreeMap;

use rbuild_types::Digest;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::records::CacheKey;

/// Media type of the cache config blob.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.rbuild.cache.config.v1+json";
/// `artifactType` of the fallback form.
pub const ARTIFACT_TYPE: &str = "application/vnd.rbuild.cache.v1";
/// The OCI empty descriptor's media type (content `{}`).
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// Top-level field of an image config holding inline cache records.
pub const INLINE_FIELD: &str = "rbuild.cache.v1";
/// Version of the cache config document.
pub const CONFIG_VERSION: u32 = 1;
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// A layer blob of the artifact: compressed digest, size, media type and the uncompressed
/// digest (diff_id) it must decompress to.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct LayerDesc {
    /// Digest of the blob as stored remotely (compressed).
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type (`application/vnd.oci.image.layer.v1.tar+gzip` or `+zstd`).
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// The uncompressed tar's digest.
    pub diff_id: Digest,
}

/// Where a step is in its Dockerfile: lets `--explain-cache` compare a local miss with the
/// remote record of the same step. Portable: the Dockerfile's file name, not its path.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Position {
    /// File name of the Dockerfile.
    pub dockerfile: String,
    /// Stage index.
    pub stage: usize,
    /// Position in the stage's chain (1 = first step after FROM).
    pub depth: usize,
}

/// One exported cache record.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct RemoteRecord {
    /// The step's cache key (`sha256` of `inputs`).
    pub key: CacheKey,
    /// The layer the step produced.
    pub diff_id: Digest,
    /// The step, e.g. `[build 2/3] RUN make`.
    pub description: String,
    /// The key's document (instruction, parent key, file digests...).
    pub inputs: Value,
    /// Where the step is.
    pub position: Position,
}

/// The cache config document: records and the layers they name.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
pub struct CacheConfig {
    /// [`CONFIG_VERSION`].
    pub version: u32,
    /// Layer blobs, one per distinct diff_id (empty in the inline form: the image's layers).
    #[serde(default)]
    pub layers: Vec<LayerDesc>,
    /// Records, sorted by key.
    pub records: Vec<RemoteRecord>,
}

/// A problem with a cache artifact (shape, version).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub String);

impl CacheConfig {
    /// The canonical bytes (records sorted by key, layers by diff_id; object keys sorted), so
    /// the same records always give the same digest.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut c = self.clone();
        c.version = CONFIG_VERSION;
        c.records.sort_by(|a, b| a.key.cmp(&b.key));
        c.records.dedup_by(|a, b| a.key == b.key);
        c.layers.sort_by(|a, b| a.diff_id.cmp(&b.diff_id));
        c.layers.dedup_by(|a, b| a.diff_id == b.diff_id);
        // Through Value: its maps are sorted, so the bytes are canonical.
        serde_json::to_value(&c)
            .expect("cache config serializes")
            .to_string()
            .into_bytes()
    }

    /// Parses a config document, refusing other versions.
    pub fn parse(bytes: &[u8]) -> Result<CacheConfig, FormatError> {
        let c: CacheConfig = serde_json::from_slice(bytes)
            .map_err(|e| FormatError(format!("cache config is not valid: {e}")))?;
        if c.version != CONFIG_VERSION {
            return Err(FormatError(format!(
                "cache config version {} is not supported (this rbuild reads version {CONFIG_VERSION})",
                c.version
            )));
        }
        Ok(c)
    }

    /// The layer of each diff_id.
    pub fn layer_map(&self) -> BTreeMap<&Digest, &LayerDesc> {
        self.layers.iter().map(|l| (&l.diff_id, l)).collect()
    }
}

/// Which manifest form to write.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Form {
    /// Config blob with rbuild's media type.
    Config,
    /// `artifactType` + empty config; the cache config is the first layer.
    Artifact,
}

/// A blob of a manifest to write: digest, size, media type.
pub type Blob = (Digest, u64, String);

/// The manifest of the artifact in `form`. `config` is the cache config blob (digest, size).
/// In the artifact form the empty config `{}` (see [`empty_config`]) must be stored too.
pub fn manifest(form: Form, config: (&Digest, u64), layers: &[LayerDesc]) -> Vec<u8> {
    let desc = |d: &Digest, size: u64, mt: &str| json!({"mediaType": mt, "digest": d.to_string(), "size": size});
    let mut ls: Vec<Value> = Vec::new();
    let cfg = match form {
        Form::Config => desc(config.0, config.1, CONFIG_MEDIA_TYPE),
        Form::Artifact => {
            ls.push(desc(config.0, config.1, CONFIG_MEDIA_TYPE));
            let e = empty_config();
            desc(&Digest::of(&e), e.len() as u64, EMPTY_MEDIA_TYPE)
        }
    };
    ls.extend(
        layers
            .iter()
            .map(|l| desc(&l.digest, l.size, &l.media_type)),
    );
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": cfg,
        "layers": ls,
    });
    if form == Form::Artifact {
        m["artifactType"] = json!(ARTIFACT_TYPE);
    }
    m.to_string().into_bytes()
}

/// The content of the OCI empty descriptor.
pub fn empty_config() -> Vec<u8> {
    b"{}".to_vec()
}

/// Where a manifest keeps its cache records.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Found {
    /// A cache config blob (digest, size), either form.
    CacheConfig(Digest, u64),
    /// An image whose config (digest, size) may hold inline records; the image's layers
    /// (digest, size, media type) in order, to be matched with the config's diff_ids.
    Image(Digest, u64, Vec<Blob>),
}

/// Finds the cache config (or the image config of the inline form) in a manifest.
pub fn parse_manifest(bytes: &[u8]) -> Result<Found, FormatError> {
    let m: Value = serde_json::from_slice(bytes)
        .map_err(|e| FormatError(format!("manifest is not valid JSON: {e}")))?;
    if m.get("manifests").is_some() && m.get("layers").is_none() {
        return Err(FormatError(
            "the reference names an image index; name a cache manifest or a single-platform image"
                .into(),
        ));
    }
    let desc = |v: &Value| -> Result<Blob, FormatError> {
        let d = v["digest"]
            .as_str()
            .and_then(|s| s.parse::<Digest>().ok())
            .ok_or_else(|| FormatError(format!("descriptor without a sha256 digest: {v}")))?;
        let size = v["size"]
            .as_u64()
            .ok_or_else(|| FormatError(format!("descriptor without a size: {v}")))?;
        Ok((
            d,
            size,
            v["mediaType"].as_str().unwrap_or_default().to_string(),
        ))
    };
    let config = desc(&m["config"])?;
    let layers = m["layers"]
        .as_array()
        .map(|a| a.iter().map(desc).collect::<Result<Vec<_>, _>>())
        .transpose()?
        .unwrap_or_default();
    if config.2 == CONFIG_MEDIA_TYPE {
        return Ok(Found::CacheConfig(config.0, config.1));
    }
    if m["artifactType"].as_str() == Some(ARTIFACT_TYPE) {
        return match layers.iter().find(|l| l.2 == CONFIG_MEDIA_TYPE) {
            Some(l) => Ok(Found::CacheConfig(l.0.clone(), l.1)),
            None => Err(FormatError(
                "cache artifact without a cache config layer".into(),
            )),
        };
    }
    match config.2.as_str() {
        "application/vnd.oci.image.config.v1+json"
        | "application/vnd.docker.container.image.v1+json" => {
            Ok(Found::Image(config.0, config.1, layers))
        }
        other => Err(FormatError(format!(
            "not an rbuild cache: config media type {other:?}"
        ))),
    }
}

/// The inline records of an image config, with layers taken from the image's manifest layers
/// matched to the config's diff_ids. `Ok(None)` when the image carries no cache.
pub fn parse_inline(config: &[u8], layers: &[Blob]) -> Result<Option<CacheConfig>, FormatError> {
    let doc: Value = serde_json::from_slice(config)
        .map_err(|e| FormatError(format!("image config is not valid JSON: {e}")))?;
    let Some(inline) = doc.get(INLINE_FIELD) else {
        return Ok(None);
    };
    let mut c = CacheConfig::parse(inline.to_string().as_bytes())?;
    let diff_ids: Vec<Digest> = doc["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d.as_str()?.parse().ok()).collect())
        .unwrap_or_default();
    if diff_ids.len() != layers.len() {
        return Err(FormatError(format!(
            "image config lists {} diff_ids for {} layers",
            diff_ids.len(),
            layers.len()
        )));
    }
    c.layers = layers
        .iter()
        .zip(diff_ids)
        .map(|((digest, size, media_type), diff_id)| LayerDesc {
            digest: digest.clone(),
            size: *size,
            media_type: media_type.clone(),
            diff_id,
        })
        .collect();
    Ok(Some(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CacheConfig {
        let l = LayerDesc {
            digest: Digest::of(b"gz"),
            size: 2,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            diff_id: Digest::of(b"tar"),
        };
        let r = |k: &[u8]| RemoteRecord {
            key: CacheKey::of(k),
            diff_id: Digest::of(b"tar"),
            description: "RUN x".into(),
            inputs: json!({"b": 1, "a": [1, 2]}),
            position: Position {
                dockerfile: "Dockerfile".into(),
                stage: 0,
                depth: 1,
            },
        };
        CacheConfig {
            version: CONFIG_VERSION,
            layers: vec![l.clone(), l],
            records: vec![r(b"2"), r(b"1"), r(b"2")],
        }
    }

    #[test]
    fn config_bytes_are_canonical_and_round_trip() {
        let c = sample();
        let b = c.to_bytes();
        let mut shuffled = c.clone();
        shuffled.records.reverse();
        assert_eq!(b, shuffled.to_bytes());
        let back = CacheConfig::parse(&b).unwrap();
        assert_eq!(back.records.len(), 2);
        assert_eq!(back.layers.len(), 1);
        assert!(back.records[0].key < back.records[1].key);
        let mut v: Value = serde_json::from_slice(&b).unwrap();
        v["version"] = json!(9);
        assert!(CacheConfig::parse(v.to_string().as_bytes()).is_err());
    }

    #[test]
    fn both_manifest_forms_lead_to_the_config() {
        let c = sample();
        let b = c.to_bytes();
        let d = Digest::of(&b);
        for form in [Form::Config, Form::Artifact] {
            let m = manifest(form, (&d, b.len() as u64), &c.layers);
            assert_eq!(
                parse_manifest(&m).unwrap(),
                Found::CacheConfig(d.clone(), b.len() as u64)
            );
            let v: Value = serde_json::from_slice(&m).unwrap();
            assert_eq!(v["artifactType"].is_string(), form == Form::Artifact);
        }
        let img = json!({"schemaVersion": 2, "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d.to_string(), "size": 3}, "layers": []});
        assert!(matches!(
            parse_manifest(img.to_string().as_bytes()),
            Ok(Found::Image(..))
        ));
        let other = json!({"schemaVersion": 2, "config": {"mediaType": "text/plain", "digest": d.to_string(), "size": 3}, "layers": []});
        assert!(parse_manifest(other.to_string().as_bytes()).is_err());
    }

    #[test]
    fn inline_records_take_the_image_layers() {
        let mut c = sample();
        c.layers.clear();
        let cfg = json!({"rootfs": {"type": "layers", "diff_ids": [Digest::of(b"tar").to_string()]},
            INLINE_FIELD: serde_json::from_slice::<Value>(&c.to_bytes()).unwrap()});
        let layers = vec![(
            Digest::of(b"gz"),
            2,
            "application/vnd.oci.image.layer.v1.tar+gzip".to_string(),
        )];
        let got = parse_inline(cfg.to_string().as_bytes(), &layers)
            .unwrap()
            .unwrap();
        assert_eq!(got.layers[0].diff_id, Digest::of(b"tar"));
        assert_eq!(got.layers[0].digest, Digest::of(b"gz"));
        let plain = json!({"rootfs": {"type": "layers", "diff_ids": []}});
        assert!(parse_inline(plain.to_string().as_bytes(), &[])
            .unwrap()
            .is_none());
    }
}

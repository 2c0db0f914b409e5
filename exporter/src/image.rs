//! Image config + manifest blobs in the store, layer snapshots, and rootfs import.

use std::fs::File;
use std::path::Path;

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, HistoryBuilder, ImageConfiguration, ImageManifest,
    ImageManifestBuilder, MediaType, Os, RootFs,
};
use rbuild_cache::Store;
use rbuild_types::{Digest, ImageRef, Platform};

use crate::{layer, unpack, Error, Result};

/// An image read back from the store.
#[derive(Clone, Debug)]
pub struct Image {
    /// The manifest (in the store: layers uncompressed, digest == diff_id).
    pub manifest: ImageManifest,
    /// The image configuration.
    pub config: ImageConfiguration,
    /// Digest of the manifest blob (the image id shown by `rbuild images`).
    pub manifest_digest: Digest,
    /// Digest of the config blob.
    pub config_digest: Digest,
    /// Total size in bytes: config plus layers (uncompressed).
    pub size: u64,
}

pub(crate) fn oci_digest(d: &Digest) -> Result<oci_spec::image::Digest> {
    d.to_string().parse().map_err(|e| Error::InvalidImage {
        what: "digest",
        digest: d.to_string(),
        reason: format!("{e}"),
    })
}

pub(crate) fn our_digest(d: &oci_spec::image::Digest, what: &'static str) -> Result<Digest> {
    d.to_string().parse().map_err(|_| Error::InvalidImage {
        what,
        digest: d.to_string(),
        reason: "only sha256 digests are supported".into(),
    })
}

/// Writes config + manifest blobs (OCI media types; layers referenced by their uncompressed
/// digest with media type `application/vnd.oci.image.layer.v1.tar`) and returns the manifest
/// digest. `config.rootfs.diff_ids` gives the layers, which must be in the store (a blob, or a
/// snapshot a built layer's tar is made from: see [`crate::has_layer`]).
pub fn write_image(store: &Store, config: &ImageConfiguration) -> Result<Digest> {
    let config_json = serde_json::to_vec(config).map_err(|e| Error::InvalidImage {
        what: "config",
        digest: "(new)".into(),
        reason: e.to_string(),
    })?;
    let (manifest, _) = write_manifest(store, config_json, config.rootfs().diff_ids())?;
    Ok(manifest)
}

/// Writes an image whose config is given as a JSON document, stored byte for byte as
/// `serde_json` serializes it (so Docker's extension fields such as `Healthcheck`, `OnBuild` and
/// `Shell` survive, and key order is stable). Returns the manifest and config digests.
pub fn write_image_json(store: &Store, config: &serde_json::Value) -> Result<(Digest, Digest)> {
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| d.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    // Validate against the OCI schema before storing.
    serde_json::from_value::<ImageConfiguration>(config.clone()).map_err(|e| {
        Error::InvalidImage {
            what: "config",
            digest: "(new)".into(),
            reason: e.to_string(),
        }
    })?;
    let bytes = serde_json::to_vec(config).map_err(|e| Error::InvalidImage {
        what: "config",
        digest: "(new)".into(),
        reason: e.to_string(),
    })?;
    write_manifest(store, bytes, &diff_ids)
}

/// Writes an image whose config is given as raw bytes (as pulled from a registry or read from an
/// archive), stored unchanged so its digest (the image id) is preserved. The bytes must parse as
/// an OCI image config; its `rootfs.diff_ids` must be blobs in the store. Returns the manifest
/// and config digests.
pub fn write_image_raw(store: &Store, config_json: &[u8]) -> Result<(Digest, Digest)> {
    let config: ImageConfiguration =
        serde_json::from_slice(config_json).map_err(|e| Error::InvalidImage {
            what: "config",
            digest: Digest::of(config_json).to_string(),
            reason: e.to_string(),
        })?;
    write_manifest(store, config_json.to_vec(), config.rootfs().diff_ids())
}

/// Stores `config_json` and a manifest referencing it and the uncompressed layers `diff_ids`.
fn write_manifest(
    store: &Store,
    config_json: Vec<u8>,
    diff_ids: &[String],
) -> Result<(Digest, Digest)> {
    let config_digest = store.put_blob(&config_json)?;
    let mut layers = Vec::new();
    for d in diff_ids {
        let d: Digest = d.parse().map_err(|_| Error::InvalidImage {
            what: "config",
            digest: config_digest.to_string(),
            reason: format!("rootfs.diff_ids has invalid digest {d:?}"),
        })?;
        let size = crate::source::layer_size(store, &d)?;
        layers.push(Descriptor::new(
            MediaType::ImageLayer,
            size,
            oci_digest(&d)?,
        ));
    }
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(Descriptor::new(
            MediaType::ImageConfig,
            config_json.len() as u64,
            oci_digest(&config_digest)?,
        ))
        .layers(layers)
        .build()
        .map_err(|e| Error::InvalidImage {
            what: "manifest",
            digest: "(new)".into(),
            reason: e.to_string(),
        })?;
    let bytes = serde_json::to_vec(&manifest).map_err(|e| Error::InvalidImage {
        what: "manifest",
        digest: "(new)".into(),
        reason: e.to_string(),
    })?;
    Ok((store.put_blob(&bytes)?, config_digest))
}

/// Reads an image (manifest and config) back from the store.
pub fn load_image(store: &Store, manifest: &Digest) -> Result<Image> {
    let bytes = store.read_blob(manifest)?;
    let m: ImageManifest = serde_json::from_slice(&bytes).map_err(|e| Error::InvalidImage {
        what: "manifest",
        digest: manifest.to_string(),
        reason: e.to_string(),
    })?;
    let config_digest = our_digest(m.config().digest(), "config")?;
    let cbytes = store.read_blob(&config_digest)?;
    let config: ImageConfiguration =
        serde_json::from_slice(&cbytes).map_err(|e| Error::InvalidImage {
            what: "config",
            digest: config_digest.to_string(),
            reason: e.to_string(),
        })?;
    let size = cbytes.len() as u64 + m.layers().iter().map(|l| l.size()).sum::<u64>();
    Ok(Image {
        manifest: m,
        config,
        manifest_digest: manifest.clone(),
        config_digest,
        size,
    })
}

/// RFC 3339 timestamp: `SOURCE_DATE_EPOCH` when set (reproducible builds), else now.
pub(crate) fn created_timestamp() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok());
    let t = match secs.and_then(|s| chrono::DateTime::from_timestamp(s, 0)) {
        Some(t) => t,
        None => chrono::Utc::now(),
    };
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `rbuild import TAR NAME`: a rootfs tar (plain, gzip or zstd) becomes a one-layer image tagged
/// `name`; returns the manifest digest. The tar is unpacked into a snapshot (refusing unsafe
/// paths) and written back as a normalised layer, so the layer is sorted and reproducible.
/// The config sets the platform, a default `PATH` and one history entry.
pub fn import_rootfs(
    store: &Store,
    tar: &Path,
    name: &ImageRef,
    platform: &Platform,
) -> Result<Digest> {
    let f = File::open(tar).map_err(Error::io("open", tar))?;
    let b = store.new_snapshot()?;
    unpack::unpack_layer(f, &b.fs_dir())?;
    let snap = b.commit()?;
    let (diff_id, _) = layer::write_layer(store, &snap)?;
    let created = created_timestamp();
    let mut rootfs = RootFs::default();
    rootfs.set_diff_ids(vec![diff_id.to_string()]);
    let history = HistoryBuilder::default()
        .created(created.clone())
        .created_by(format!(
            "rbuild import {}",
            tar.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ))
        .comment("imported from a rootfs tar")
        .build()
        .map_err(|e| Error::InvalidImage {
            what: "config",
            digest: "(new)".into(),
            reason: e.to_string(),
        })?;
    let runtime = ConfigBuilder::default()
        .env(vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        ])
        .build()
        .map_err(|e| Error::InvalidImage {
            what: "config",
            digest: "(new)".into(),
            reason: e.to_string(),
        })?;
    let mut config = ImageConfiguration::default();
    config.set_created(Some(created));
    config.set_architecture(Arch::from(platform.architecture.as_str()));
    config.set_os(Os::from(platform.os.as_str()));
    config.set_variant(platform.variant.clone());
    config.set_rootfs(rootfs);
    config.set_history(Some(vec![history]));
    config.set_config(Some(runtime));
    let manifest = write_image(store, &config)?;
    store.set_tag(name, &manifest)?;
    Ok(manifest)
}

//! Snapshots -> layers -> OCI config and manifest -> store and image outputs.
//!
//! - [`write_layer`]: a build step's snapshot is hashed as an uncompressed layer tar (its digest is
//!   the diff_id), with overlay whiteouts translated to `.wh.` entries; no blob is written.
//! - `source` ([`layer_blob`], [`ensure_snapshot`], [`has_layer`], [`layer_size`]): the one place
//!   every consumer of a layer's bytes gets them in the form it needs (snapshot, uncompressed tar
//!   blob, compressed blob), made on demand from what the store has and verified against the
//!   diff_id.
//! - [`unpack_layer`]: a layer tar into a snapshot usable as an overlay lowerdir.
//! - [`write_image`] / [`load_image`]: OCI config + manifest blobs in the store. In the store,
//!   layers are referenced uncompressed (`application/vnd.oci.image.layer.v1.tar`, digest == diff_id).
//! - [`import_rootfs`]: a rootfs tar becomes a one-layer tagged image.
//! - [`export_oci_archive`]: an OCI image layout tar, layers compressed (in parallel, once: the
//!   compressed blobs are kept in the store for the next export or push).
//! - [`export_docker_archive`], [`export_local_dir`], [`load_archive`]: docker-save tars, the
//!   merged final filesystem, and reading OCI/docker archives back into the store.
//! - [`GzipWriter`]: the gzip encoder of every layer blob; chunks that do not compress are stored.

mod archive;
mod gzip;
mod image;
mod layer;
mod oci;
mod replace;
mod source;
mod sys;
mod tarhash;
mod unpack;

use std::path::PathBuf;

use rbuild_types::Digest;

pub use archive::{export_docker_archive, export_local_dir, export_rootfs_tar, load_archive};
pub use gzip::GzipWriter;
pub use image::{import_rootfs, load_image, write_image, write_image_json, write_image_raw, Image};
pub use layer::{
    write_layer, write_layer_after, write_layer_clamped, write_layer_dir, OPAQUE_MARKER,
    WHITEOUT_PREFIX,
};
pub use oci::{
    compressed_layer, distribution_manifest, export_oci_archive, export_oci_dir, Compression,
    DistributionManifest,
};
pub use source::{
    ensure_layer_in_use, ensure_snapshot, ensure_snapshot_at, ensure_snapshot_in_use, has_layer,
    layer_blob, layer_size, layer_tar, DiffIdWriter, LayerBlob, Verified,
};
pub use unpack::{apply_tar_xattrs, decompressed, layer_xattr_allowed, unpack_layer};

/// Errors of the exporter. Each names the path, digest or entry involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] rbuild_cache::Error),
    /// A file system operation failed on `path`.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An archive entry would be written outside the destination.
    #[error("unsafe path {path:?} in archive: {reason}")]
    UnsafePath {
        /// The entry's name as found in the archive.
        path: PathBuf,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A manifest, config or index is not valid JSON of the expected shape.
    #[error("invalid {what} {digest}: {reason}")]
    InvalidImage {
        /// "manifest", "config", "index".
        what: &'static str,
        /// Its digest or path.
        digest: String,
        /// What is wrong.
        reason: String,
    },
    /// A layer of an image has no blob in the store.
    #[error("layer {0} is not in the store")]
    MissingLayer(Digest),
    /// An archive's content does not match the digest it claims.
    #[error("{path}: content has digest {actual}, expected {expected}")]
    DigestMismatch {
        /// Name of the blob in the archive.
        path: String,
        /// Digest claimed.
        expected: Digest,
        /// Digest found.
        actual: Digest,
    },
    /// A built layer's tar, written again from its snapshot, does not have the recorded diff_id:
    /// a file of the snapshot changed after the build (disk damage, a crash before the
    /// snapshot's data reached the disk, or someone editing the store). No blob was kept.
    #[error(
        "{}layer {diff_id} cannot be exported: its tar, made again from snapshot {} for this \
         export, has digest {actual}: the store entry was damaged (a file of the snapshot changed \
         after the build); rebuild with --no-cache (the layer then gets a fresh snapshot), or \
         remove the image (rbuild rmi) and run `rbuild prune --all` before building again",
        context.as_ref().map(|c| format!("{c}: ")).unwrap_or_default(),
        snapshot.display()
    )]
    LayerDamaged {
        /// The layer's recorded diff_id.
        diff_id: Digest,
        /// The snapshot directory it was made from.
        snapshot: PathBuf,
        /// The digest found.
        actual: Digest,
        /// The image or step that needed the layer, when known.
        context: Option<String>,
    },
    /// Something this exporter does not handle.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl Error {
    /// Names the image or step that needed a layer in a [`Error::LayerDamaged`] (other errors
    /// are returned unchanged).
    pub fn for_layer_of(self, what: impl std::fmt::Display) -> Error {
        match self {
            Error::LayerDamaged {
                diff_id,
                snapshot,
                actual,
                context: None,
            } => Error::LayerDamaged {
                diff_id,
                snapshot,
                actual,
                context: Some(what.to_string()),
            },
            e => e,
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! Snapshots -> layers -> OCI config and manifest -> store and image outputs.
//!
//! - [`write_layer`]: a snapshot directory becomes an uncompressed layer tar blob (its digest is
//!   the diff_id, computed while writing), with overlay whiteouts translated to `.wh.` entries.
//! - [`unpack_layer`] / [`ensure_snapshot`]: the reverse, into a snapshot usable as an overlay lowerdir.
//! - [`layer_tar`], [`layer_size`], [`ensure_snapshot_at`], [`ensure_layer_in_use`]: layer access
//!   whatever form the store keeps a layer in (its tar, or only a compressed blob).
//! - [`write_image`] / [`load_image`]: OCI config + manifest blobs in the store. In the store,
//!   layers are referenced uncompressed (`application/vnd.oci.image.layer.v1.tar`, digest == diff_id).
//! - [`import_rootfs`]: a rootfs tar becomes a one-layer tagged image.
//! - [`export_oci_archive`]: an OCI image layout tar, layers compressed (in parallel, once: the
//!   compressed blobs are kept in the store for the next export or push).
//! - [`export_docker_archive`], [`export_local_dir`], [`load_archive`]: docker-save tars, the
//!   merged final filesystem, and reading OCI/docker archives back into the store.

mod access;
mod archive;
mod image;
mod layer;
mod oci;
mod sys;
mod unpack;

use std::path::PathBuf;

use rbuild_types::Digest;

pub use access::{
    ensure_layer_in_use, ensure_snapshot, ensure_snapshot_at, ensure_snapshot_in_use,
    layer_available, layer_size, layer_tar, DiffIdWriter, Verified,
};
pub use archive::{export_docker_archive, export_local_dir, export_rootfs_tar, load_archive};
pub use image::{import_rootfs, load_image, write_image, write_image_json, write_image_raw, Image};
pub use layer::{
    write_layer, write_layer_clamped, write_layer_dir, OPAQUE_MARKER, WHITEOUT_PREFIX,
};
pub use oci::{
    compressed_layer, distribution_manifest, export_oci_archive, export_oci_dir, Compression,
    DistributionManifest,
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
    /// Something this exporter does not handle.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl Error {
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

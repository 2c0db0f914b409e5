use std::path::PathBuf;

use rbuild_types::Digest;

/// Errors of the store. Each names the path, digest or key involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system operation failed on `path`.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (e.g. "create", "rename").
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A metadata database operation failed.
    #[error("store database {path}: {context}: {source}")]
    Db {
        /// Path of meta.db.
        path: PathBuf,
        /// What was being done.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: rusqlite::Error,
    },
    /// The store was written by a newer rbuild.
    #[error(
        "store database {path} has schema version {found}, this rbuild supports up to {supported}"
    )]
    SchemaTooNew {
        /// Path of meta.db.
        path: PathBuf,
        /// Version found.
        found: i64,
        /// Highest version this build knows.
        supported: i64,
    },
    /// Written content does not match the digest it was expected to have.
    #[error(
        "digest mismatch: expected {expected}, got {actual} ({size} bytes); nothing was stored"
    )]
    DigestMismatch {
        /// The expected digest.
        expected: Digest,
        /// The digest of what was written.
        actual: Digest,
        /// Bytes written.
        size: u64,
    },
    /// A blob is not in the store.
    #[error("blob {0} not found in the store")]
    BlobNotFound(Digest),
    /// A value stored in meta.db could not be parsed.
    #[error("corrupt store record: {0}")]
    Corrupt(String),
    /// A string is not a valid snapshot id or cache key.
    #[error("invalid {what} {value:?}")]
    Invalid {
        /// Kind of value ("snapshot id", "cache key").
        what: &'static str,
        /// The offending text.
        value: String,
    },
    /// A container or volume name is taken, unknown, in use or invalid (the message says which).
    #[error("{0}")]
    Conflict(String),
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

//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while preparing, running or tearing down a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call on a path failed.
    #[error("{op} {path}: {source}")]
    Path {
        /// What was attempted (e.g. "mount overlay on").
        op: String,
        /// The path it was attempted on.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A system call not tied to one path failed.
    #[error("{op}: {source}")]
    Sys {
        /// What was attempted.
        op: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The spec asks for something this sandbox cannot do, or is malformed.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// A user or group could not be resolved in the image.
    #[error("{0}")]
    User(String),
    /// The container setup (inside the new namespaces, before exec) failed.
    #[error("container setup failed: {0}")]
    Setup(String),
    /// The helper process broke its protocol or died unexpectedly.
    #[error("sandbox helper: {0}")]
    Helper(String),
    /// Building or installing the seccomp filter failed.
    #[error("seccomp: {0}")]
    Seccomp(String),
    /// A path of the container (a mount point, a file of the image) could not be resolved inside
    /// its root: missing, too many links, a component that is not a directory.
    #[error("{what}: {source}")]
    Resolve {
        /// What was being done.
        what: String,
        /// The in-root resolution error (names the path and the root).
        #[source]
        source: rbuild_fsroot::Error,
    },
    /// The thread's [`crate::KillSwitch`] was cancelled, so no container was started.
    #[error("cancelled: another step of the build failed")]
    Cancelled,
    /// A cgroup operation failed.
    #[error("cgroup {path}: {msg}")]
    Cgroup {
        /// The cgroup file or directory.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
}

impl Error {
    /// An error for `op` on `path` from the last OS error.
    pub(crate) fn last_os(op: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Error::Path {
            op: op.into(),
            path: path.into(),
            source: std::io::Error::last_os_error(),
        }
    }

    /// An error for `op` on `path` from an `io::Error`.
    pub(crate) fn io(
        op: impl Into<String>,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Path {
            op: op.into(),
            path: path.into(),
            source,
        }
    }

    /// An error for `op` (no path) from the last OS error.
    pub(crate) fn sys(op: impl Into<String>) -> Self {
        Error::Sys {
            op: op.into(),
            source: std::io::Error::last_os_error(),
        }
    }

    /// An error from a nix errno.
    pub(crate) fn nix(
        op: impl Into<String>,
        path: impl Into<PathBuf>,
        e: nix::errno::Errno,
    ) -> Self {
        Error::Path {
            op: op.into(),
            path: path.into(),
            source: std::io::Error::from_raw_os_error(e as i32),
        }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

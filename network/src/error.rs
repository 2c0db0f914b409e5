//! The crate's error type.

/// Errors of network operations; each message names what failed and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A bad flag value or name.
    #[error("{0}")]
    Invalid(String),
    /// No such network or container.
    #[error("{0}")]
    NotFound(String),
    /// A name or resource is already taken, or in use.
    #[error("{0}")]
    Conflict(String),
    /// netavark failed.
    #[error("netavark {command} failed: {message}")]
    Netavark {
        /// `setup` or `teardown`.
        command: String,
        /// Its error message.
        message: String,
    },
    /// A stored file does not parse.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

pub(crate) fn nix_io(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> Error {
    let what = what.into();
    move |e| Error::Io {
        what,
        source: std::io::Error::from_raw_os_error(e as i32),
    }
}

//! # rbuild-containers: containers that outlive the command
//!
//! The solver builds images; this crate runs them, through the same sandbox (`rbuild-sandbox`).
//!
//! - [`run`]: a container from an image in the store (spec, writable layer, volumes), run in the
//!   foreground ([`run::start`]) or created for the monitor ([`run::create`]).
//! - [`monitor`]: the per-container supervisor (the role conmon plays for podman): rbuild
//!   re-executed in its own session, parent of the sandbox helper (hence of the container's PID
//!   1), owner of the container's stdio. It writes the logs, records the exit status, applies the
//!   restart policy, runs the HEALTHCHECK and tears down when the container ends. The sandbox
//!   helper has `PR_SET_PDEATHSIG(SIGKILL)`, so killing the monitor kills the container.
//! - [`state`]: the state of a container as read from its record: a recorded pid counts only if
//!   the process with that pid has the recorded start time (`/proc/PID/stat` field 22), so a
//!   record left by a reboot or a SIGKILL reads as exited, never as running.
//! - [`lifecycle`]: start, stop, kill, wait, restart, remove, rename.
//! - [`logs`]: Docker's json-file log format with size-based rotation.
//! - [`exec`] and [`cp`]: a process in a running container; files in and out of any container,
//!   every container path resolved inside its root (`rbuild-fsroot`).
//! - [`freezer`]: `pause`/`unpause`; [`stats`]: `stats --no-stream`.
//! - [`NetworkHook`]: the seam where the network setup attaches a container (empty: host or none).

pub mod attach;
pub mod cp;
pub mod exec;
pub mod freezer;
pub mod lifecycle;
pub mod logs;
pub mod monitor;
pub mod proc;
pub mod run;
pub mod state;
pub mod stats;

pub use monitor::{monitor_if_requested, NetworkHook};
pub use run::{Bind, RunRequest, Tmpfs, Volume};
pub use state::{ContainerState, Status};

/// Errors of container operations; each says what went wrong and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] rbuild_cache::Error),
    /// Reading an image failed.
    #[error(transparent)]
    Export(#[from] rbuild_exporter::Error),
    /// Loading an image or resolving its user failed.
    #[error(transparent)]
    Solver(#[from] rbuild_solver::Error),
    /// The sandbox failed to start a process.
    #[error(transparent)]
    Sandbox(#[from] rbuild_sandbox::Error),
    /// A path inside a container could not be resolved.
    #[error(transparent)]
    Path(#[from] rbuild_fsroot::Error),
    /// A user error or a state that forbids the operation (message says what to do).
    #[error("{0}")]
    Container(String),
    /// I/O outside the store.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

pub(crate) fn cerr(msg: impl Into<String>) -> Error {
    Error::Container(msg.into())
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

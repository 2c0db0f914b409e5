//! The Compose Specification's common subset, as typed values.
//!
//! [`load`] finds the compose files as docker compose does (`compose.yaml`, `compose.yml`,
//! `docker-compose.yaml|yml` and the matching `*.override.*`, or several `-f` merged in order),
//! reads `.env`, interpolates `${VAR}` forms, merges, decodes every service key rbuild supports
//! into a [`Project`], and validates it (undefined networks, volumes and services, `depends_on`
//! cycles). Every error names the file, the line and the key. The [`Project`] gives the names and
//! labels docker compose would use (`PROJECT-SERVICE-1`, `PROJECT_NET`, `com.docker.compose.*`),
//! the per-service config hash that decides recreation, a dependency order, and the resolved file
//! as YAML (`compose config`). This crate runs nothing: the CLI's engine does.

mod decode;
mod emit;
mod interp;
mod load;
mod model;
mod names;
mod yaml;

use std::path::PathBuf;

pub use decode::{parse_bytes, parse_duration, parse_port, shell_split};
pub use interp::{interpolate, parse_env_file, Vars};
pub use load::{check_project_name, find_files, load, load_texts, normalize_project_name, Options};
pub use model::*;
pub use names::*;

/// What can go wrong reading a project.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file that is not YAML.
    #[error("{file}:{line}: invalid YAML: {msg}")]
    Yaml {
        /// File as named by the user.
        file: String,
        /// 1-based line.
        line: usize,
        /// What the parser said.
        msg: String,
    },
    /// A key with a bad value, an unknown key, an undefined reference or a cycle.
    #[error("{file}:{line}: {}{msg}", if key.is_empty() { String::new() } else { format!("{key}: ") })]
    Invalid {
        /// File as named by the user.
        file: String,
        /// 1-based line.
        line: usize,
        /// Dotted key path (`services.web.ports[0]`).
        key: String,
        /// What is wrong, and how to fix it.
        msg: String,
    },
    /// No compose file in the directory or its parents.
    #[error("no compose file in {} or its parents (looked for compose.yaml, compose.yml, docker-compose.yaml, docker-compose.yml; or pass -f FILE)", dir.display())]
    NotFound {
        /// Where the search started.
        dir: PathBuf,
    },
    /// A file that cannot be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A project name docker compose would refuse.
    #[error("invalid project name {0:?}: use lowercase letters, digits, '-' and '_', starting with a letter or digit")]
    ProjectName(String),
}

#[cfg(test)]
mod tests;

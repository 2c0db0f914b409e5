//! The resolved project: typed values, every default applied, every name final.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// A loaded, validated project.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Project {
    /// Normalised project name.
    pub name: String,
    /// The project directory (the first file's directory, or `--project-directory`).
    pub working_dir: PathBuf,
    /// The compose files, in merge order.
    pub config_files: Vec<PathBuf>,
    /// Enabled services by name, in a dependency-respecting order is [`Project::start_order`].
    pub services: BTreeMap<String, Service>,
    /// Services disabled by a profile that is not active.
    #[serde(skip)]
    pub disabled: BTreeMap<String, Service>,
    /// Networks by their key in the file.
    pub networks: BTreeMap<String, Network>,
    /// Volumes by their key in the file.
    pub volumes: BTreeMap<String, Volume>,
}

/// One service.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Service {
    /// Its key in `services:`.
    pub name: String,
    /// `image:`; for a built service without one, the image is `PROJECT-SERVICE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `build:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// `container_name:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// `command:` (a string is split as a shell would, without running one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// `entrypoint:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `environment:` with `env_file:` under it; `None` values are unset-if-absent.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, Option<String>>,
    /// `ports:`, one entry per port (ranges expanded).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// `expose:`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<String>,
    /// `volumes:`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Mount>,
    /// `networks:` by key (the project's `default` when the service names none).
    pub networks: BTreeMap<String, ServiceNetwork>,
    /// `depends_on:`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub depends_on: BTreeMap<String, Dependency>,
    /// `healthcheck:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// `restart:`.
    pub restart: Restart,
    /// `user:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `working_dir:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `hostname:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `labels:` (the user's; compose's own are [`crate::service_labels`]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `tmpfs:` mount points.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<String>,
    /// `read_only:`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// `init:`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub init: bool,
    /// `stop_signal:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// `stop_grace_period:`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_duration"
    )]
    pub stop_grace_period: Option<Duration>,
    /// `deploy.resources.limits`.
    #[serde(skip_serializing_if = "Limits::is_empty")]
    pub limits: Limits,
    /// `profiles:`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
}

/// `build:`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Build {
    /// The context directory, absolute.
    pub context: PathBuf,
    /// The Dockerfile, relative to the context (default `Dockerfile`).
    pub dockerfile: String,
    /// `args:` (`None`: take it from the environment if set).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, Option<String>>,
    /// `target:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `cache_from:`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cache_from: Vec<String>,
}

/// Transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// One published or container port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Port {
    /// Port inside the container.
    pub target: u16,
    /// Port on the host (`None`: not published... or any free port when `host_ip`/range asks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<u16>,
    /// Host address to bind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    /// Protocol.
    pub protocol: Protocol,
}

/// What a mount mounts.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MountSource {
    /// A named volume (the key in top-level `volumes:`), or an anonymous one (`None`).
    Volume {
        /// Key in top-level `volumes:`.
        #[serde(skip_serializing_if = "Option::is_none")]
        source: Option<String>,
    },
    /// A host path, absolute.
    Bind {
        /// Host path.
        source: PathBuf,
    },
    /// A tmpfs.
    Tmpfs {
        /// Size in bytes.
        #[serde(skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
    },
}

/// One entry of a service's `volumes:`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mount {
    /// What is mounted.
    #[serde(flatten)]
    pub source: MountSource,
    /// Path in the container.
    pub target: String,
    /// Read-only.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// A service's attachment to a network.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ServiceNetwork {
    /// Extra DNS names on that network.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// When a dependency counts as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Its container has started.
    ServiceStarted,
    /// Its healthcheck passed.
    ServiceHealthy,
    /// It exited with status 0.
    ServiceCompletedSuccessfully,
}

/// One `depends_on:` entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dependency {
    /// Readiness condition.
    pub condition: Condition,
    /// `required:` (a missing optional dependency is skipped).
    pub required: bool,
}

/// `healthcheck:`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Healthcheck {
    /// `test:` as docker stores it (`["CMD", ...]`, `["CMD-SHELL", "..."]`, `["NONE"]`);
    /// empty: inherit the image's test with these timings.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    /// `interval:`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_duration"
    )]
    pub interval: Option<Duration>,
    /// `timeout:`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_duration"
    )]
    pub timeout: Option<Duration>,
    /// `start_period:`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_duration"
    )]
    pub start_period: Option<Duration>,
    /// `retries:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// `disable: true` (same as `test: ["NONE"]`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub disable: bool,
}

/// `restart:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// `no`.
    #[default]
    No,
    /// `always`.
    Always,
    /// `on-failure[:N]`.
    OnFailure(Option<u32>),
    /// `unless-stopped`.
    UnlessStopped,
}

/// `deploy.resources.limits`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Limits {
    /// Memory in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// CPUs (fractional).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Most processes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
}

impl Limits {
    /// No limit set.
    pub fn is_empty(&self) -> bool {
        self.memory.is_none() && self.cpus.is_none() && self.pids.is_none()
    }
}

/// A top-level network.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Network {
    /// The real network name (`PROJECT_KEY`, or `name:`, or the key when external).
    pub name: String,
    /// `external:` — created elsewhere, never created or removed by compose.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    /// `driver:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// `internal:`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
    /// `ipam.config[].subnet`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<String>,
    /// `labels:`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A top-level volume.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Volume {
    /// The real volume name (`PROJECT_KEY`, or `name:`, or the key when external).
    pub name: String,
    /// `external:`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    /// `driver:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// `labels:`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn ser_opt_duration<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format_duration(*d)),
        None => s.serialize_none(),
    }
}

/// `1m30s`, `500ms`, `0s`: the way docker compose prints a duration.
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, len) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1000), ("ms", 1)] {
        if ms >= len {
            out.push_str(&format!("{}{unit}", ms / len));
            ms %= len;
        }
    }
    out
}

//! The build graph: what the solver sees. No Dockerfile text beyond display strings.
//!
//! Nodes are filesystem ops (a base image, scratch, RUN, COPY/ADD); every field the op needs to run
//! is resolved here (env, cwd, user, absolute destination paths), so the solver never expands a
//! variable or reads an instruction. Edges run from an input to the op that consumes it, labelled
//! with the role of the input ([`Input`]). Config-only instructions (ENV, LABEL, CMD, ...) are not
//! nodes: their effect is folded into the exec ops that follow and into the [`Stage`]'s final
//! image config and history.

use petgraph::graph::{DiGraph, NodeIndex};
use rbuild_types::{ImageRef, Platform};
use serde::{Deserialize, Serialize};

/// What an edge means to the node it points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Input {
    /// The rootfs the op works on (its parent layer chain). Every op but a source has exactly one.
    Rootfs,
    /// The source tree of a `COPY --from=<stage|image>` or a `RUN --mount=from=`.
    CopySource,
}

/// The image-level runtime config, as in the OCI image config's `config` object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `User`.
    #[serde(rename = "User", default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// `ExposedPorts` keys, e.g. `80/tcp`, sorted.
    #[serde(
        rename = "ExposedPorts",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub exposed_ports: Vec<String>,
    /// `Env` as `K=V`, in order of definition.
    #[serde(rename = "Env", default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// `Entrypoint`; `None` when unset.
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`; `None` when unset.
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `Volumes` keys, sorted.
    #[serde(rename = "Volumes", default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// `WorkingDir`.
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub working_dir: String,
    /// `Labels`, sorted by key.
    #[serde(
        rename = "Labels",
        default,
        skip_serializing_if = "std::collections::BTreeMap::is_empty"
    )]
    pub labels: std::collections::BTreeMap<String, String>,
    /// `StopSignal`.
    #[serde(
        rename = "StopSignal",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_signal: Option<String>,
    /// `OnBuild` triggers (raw instruction text).
    #[serde(rename = "OnBuild", default, skip_serializing_if = "Vec::is_empty")]
    pub on_build: Vec<String>,
    /// `Shell` (set by SHELL).
    #[serde(rename = "Shell", default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    /// `Healthcheck`, as the JSON object Docker writes (Test, Interval, Timeout, ...).
    #[serde(
        rename = "Healthcheck",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub healthcheck: Option<serde_json::Value>,
}

/// One entry of the image history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// `created_by`, in BuildKit's spelling (e.g. `RUN /bin/sh -c make # buildkit`, `ENV A=b`).
    pub created_by: String,
    /// True for config-only steps.
    pub empty_layer: bool,
    /// `comment` (BuildKit writes `buildkit.dockerfile.v0`).
    pub comment: Option<String>,
}

/// Lets the frontend learn a base image's config while converting (BuildKit's `ResolveImageConfig`):
/// ENV expansion, WORKDIR and USER inheritance and ONBUILD triggers need it. The frontend itself does
/// no I/O; the solver implements this over the store (and registry).
pub trait ImageResolver {
    /// The runtime config of `image` for `platform`, or an error message naming what is wrong
    /// (e.g. "image busybox:nope not found; import it with `rbuild import`").
    fn resolve_config(&self, image: &ImageRef, platform: &Platform) -> Result<ImageConfig, String>;
}

/// A file-system op.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// A base image's rootfs. No inputs.
    Image {
        /// The reference as written after ARG expansion, parsed.
        reference: ImageRef,
        /// Platform to pick from an index.
        platform: Platform,
    },
    /// The empty rootfs (`FROM scratch`). No inputs.
    Scratch,
    /// A RUN step. Input: [`Input::Rootfs`] (and [`Input::CopySource`] per `--mount=from=`).
    Exec(ExecOp),
    /// A COPY or ADD step. Inputs: [`Input::Rootfs`], and [`Input::CopySource`] when `from` is a
    /// stage or image (absent when copying from the build context).
    Copy(CopyOp),
    /// WORKDIR: creates a directory and its parents (0755) if missing, as BuildKit's `Mkdir`
    /// file op. Input: [`Input::Rootfs`].
    Mkdir {
        /// Absolute path.
        path: String,
        /// Owner: the stage's USER at that point (empty means root).
        user: String,
    },
}

/// Network mode of a RUN step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NetworkMode {
    /// The builder's default (host networking in rbuild, as BuildKit with `networkMode=host`).
    #[default]
    Default,
    /// A fresh network namespace with only `lo`.
    None,
    /// The host's network namespace.
    Host,
}

/// A RUN `--mount`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// `bind`, `cache`, `tmpfs`, `secret`, `ssh`.
    pub kind: String,
    /// Absolute target in the container.
    pub target: String,
    /// All other options as written (`id`, `sharing`, `source`, `from`, `rw`, `mode`, `uid`, ...), sorted by key.
    pub options: Vec<(String, String)>,
}

/// A fully resolved RUN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOp {
    /// argv: shell form is already wrapped in the stage's shell (`["/bin/sh", "-c", "..."]`).
    pub args: Vec<String>,
    /// Environment `K=V`: image env, then build args the step can see (not persisted in the image).
    pub env: Vec<String>,
    /// Absolute working directory.
    pub cwd: String,
    /// User as written (`name`, `uid`, `uid:gid`, `name:group`); empty means root.
    pub user: String,
    /// Network mode.
    pub network: NetworkMode,
    /// `--security=insecure|sandbox`; false is the sandbox default.
    pub insecure: bool,
    /// `--mount` options.
    pub mounts: Vec<Mount>,
    /// The step's hostname (`BUILDKIT_SANDBOX_HOSTNAME`); empty means BuildKit's `buildkitsandbox`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// `--add-host` entries (host, ip) appended to the step's `/etc/hosts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<(String, String)>,
}

/// Where a COPY/ADD reads from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyFrom {
    /// The build context (the only source of a plain COPY).
    Context,
    /// The rootfs on the [`Input::CopySource`] edge (a stage or an image).
    Input,
    /// Inline content of a heredoc (`COPY <<EOF /dest`): file name and bytes.
    Inline {
        /// File name the heredoc creates.
        name: String,
        /// Its content.
        content: String,
    },
}

/// A fully resolved COPY or ADD.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyOp {
    /// True for ADD (archive extraction, URLs).
    pub add: bool,
    /// Where the sources are read from.
    pub from: CopyFrom,
    /// Source paths/patterns, expanded, relative to the source root (context or `from` rootfs).
    pub srcs: Vec<String>,
    /// Absolute destination, resolved against WORKDIR; ends with `/` when written so.
    pub dest: String,
    /// `--chown` as written after expansion (user[:group]).
    pub chown: Option<String>,
    /// `--chmod` as written (octal or symbolic).
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--parents`.
    pub parents: bool,
    /// `--exclude` patterns.
    pub excludes: Vec<String>,
    /// `--keep-git-dir`.
    pub keep_git_dir: bool,
    /// `--checksum`.
    pub checksum: Option<String>,
    /// ADD `--unpack`: `Some(false)` copies a local archive as a file instead of extracting it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpack: Option<bool>,
}

/// One node of the graph.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The op.
    pub op: Op,
    /// Index of the stage this node belongs to (position in the Dockerfile, from 0).
    pub stage: usize,
    /// Progress name in BuildKit's style: `[build 2/3] RUN make`, `[internal] load ...`,
    /// `[stage-1 1/4] FROM busybox:local`.
    pub display: String,
    /// Dockerfile line (1-based start line) the node comes from, for error messages.
    pub line: usize,
}

/// A stage as built: its last node and the image it produces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// Position of the stage in the Dockerfile, from 0: the value of [`Node::stage`] for its
    /// nodes. Unneeded stages are dropped from [`BuildGraph::stages`], so this is not the
    /// stage's position in that list; use [`BuildGraph::stage`] to find a node's stage.
    pub index: usize,
    /// Stage name (`AS name`), lowercased; `None` when unnamed.
    pub name: Option<String>,
    /// The stage's last fs node (its rootfs).
    pub node: NodeIndex,
    /// The final image config of the stage (base config + every config instruction).
    pub config: ImageConfig,
    /// History added by this stage, in order (the base image's own history is not included):
    /// one entry per instruction; entries with `empty_layer == false` match, in order, the
    /// layer-producing nodes of the stage's chain after its base node.
    pub history: Vec<HistoryEntry>,
    /// Platform of the stage.
    pub platform: Platform,
}

/// The whole graph for one build.
#[derive(Clone, Debug)]
pub struct BuildGraph {
    /// Nodes and input edges. Only nodes the target needs are present.
    pub graph: DiGraph<Node, Input>,
    /// Stages the target needs, in Dockerfile order (with their original indices in `Node::stage`).
    pub stages: Vec<Stage>,
    /// Index into `stages` of the target stage (the last one unless `--target`).
    pub target: usize,
    /// Warnings for the user (e.g. a `--build-arg` nothing consumed, skipped stages).
    pub warnings: Vec<String>,
    /// `SOURCE_DATE_EPOCH` set by `--build-arg` or a global `ARG` (seconds since the epoch).
    pub source_date_epoch: Option<i64>,
}

impl BuildGraph {
    /// The stage whose Dockerfile position is `index` (a [`Node::stage`] value), if the target
    /// needs it.
    pub fn stage(&self, index: usize) -> Option<&Stage> {
        self.stages.iter().find(|s| s.index == index)
    }
}

/// Options of one conversion.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// `--build-arg K=V`.
    pub build_args: Vec<(String, String)>,
    /// `--target`.
    pub target: Option<String>,
    /// `--platform`, the host's when `None`.
    pub platform: Option<Platform>,
    /// Name of the Dockerfile for error messages (e.g. `testdata/web/Dockerfile`).
    pub dockerfile_name: String,
    /// `--add-host HOST:IP` entries every RUN step's `/etc/hosts` lists.
    pub add_hosts: Vec<(String, String)>,
}

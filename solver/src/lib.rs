//! The solver: walks a [`BuildGraph`], computes a content-addressed cache key for every node,
//! reuses cached results and executes the misses (RUN in the sandbox, COPY into a fresh overlay
//! upper directory), independent nodes concurrently (at most [`SolveOptions::jobs`] at once; the
//! first failure kills the running steps, and a panicking step fails the build with
//! [`Error::Bug`] instead of hanging it), and exports the target stage as an image.
//!
//! A node's key is `sha256` of a versioned JSON document holding the op (every resolved field),
//! the keys of its inputs and, for COPY from the build context, the content digest of exactly the
//! files it selects. A changed instruction therefore changes its key and every key below it, which
//! gives "reuse up to the first changed instruction" and lets an unchanged independent stage stay
//! cached. Progress is reported as [`Event`]s; the solver never prints.

mod add;
mod context;
mod exec;
mod explain;
mod fsutil;
mod image;
mod mounts;
mod platform;
pub mod remote;
mod sched;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use petgraph::graph::NodeIndex;
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use rbuild_cache::{CacheKey, CacheRecord, SnapshotId, Store};
use rbuild_frontend::{BuildGraph, ImageConfig, ImageResolver, Input, Op};
use rbuild_types::{Digest, ImageRef, Platform};
use serde_json::{json, Value};

pub use context::{HashStats, IgnoreRules};
pub use exec::{resolve_user_pub as resolve_image_user, DEFAULT_PATH};
pub use image::runtime_config;
pub use mounts::{Forwarded, SecretSource};
pub use platform::{check_platform, config_platform, platform_matches};
pub use remote::{prefetch_stage, LayerSource, RemoteCache, StepRecord};

/// Version of the cache key encoding; bump to invalidate every record when the encoding changes
/// or when an op's result changes for the same inputs. 3: RUN steps get BuildKit's hostname,
/// /etc/hosts and root's groups; COPY creates directories and --parents paths as BuildKit.
const KEY_VERSION: u32 = 3;

/// Errors of a solve.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] rbuild_cache::Error),
    /// Writing or reading an image failed.
    #[error(transparent)]
    Export(#[from] rbuild_exporter::Error),
    /// The sandbox failed to start a process.
    #[error(transparent)]
    Sandbox(#[from] rbuild_sandbox::Error),
    /// A base image is not in the store.
    #[error("image {0} not found in the store; add it with `rbuild import ROOTFS.tar {0}`, `rbuild load` or `rbuild pull`")]
    ImageNotFound(ImageRef),
    /// A RUN step exited non-zero.
    #[error("{step}: process \"{command}\" did not complete successfully: exit code: {code}{}{}", tail(.output), .note.as_ref().map(|n| format!("\nnote: {n}")).unwrap_or_default())]
    StepFailed {
        /// Where: `Dockerfile:12: RUN make` style.
        step: String,
        /// The command line.
        command: String,
        /// Exit code (128+N for signal N).
        code: i32,
        /// Last output lines.
        output: Vec<String>,
        /// A likely cause rbuild knows of (a stage of a foreign platform).
        note: Option<String>,
    },
    /// A COPY/ADD step failed.
    #[error("{step}: {message}")]
    CopyFailed {
        /// Where.
        step: String,
        /// What went wrong and how to fix it.
        message: String,
    },
    /// The store's image under a name is for another platform than the stage asks for.
    #[error("image {image} in the store is for {have}, not {want}: pull it with `rbuild pull --platform {want} {image}` (a name holds one platform at a time)")]
    WrongPlatform {
        /// The name.
        image: Box<ImageRef>,
        /// The platform of the stored image.
        have: Box<Platform>,
        /// The platform wanted.
        want: Box<Platform>,
    },
    /// A step panicked: a bug in rbuild, not in the Dockerfile.
    #[error("{step}: internal error: {message}\nthis is a bug in rbuild, please report it (with the Dockerfile and this message)")]
    Bug {
        /// Where: `Dockerfile:12: RUN make` style.
        step: String,
        /// The panic message.
        message: String,
    },
    /// I/O outside the store.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

fn tail(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let mut s = String::from("\n------\n");
    for l in lines {
        s.push_str(" > ");
        s.push_str(l);
        s.push('\n');
    }
    s.push_str("------");
    s
}

/// Progress of a build, in BuildKit's vocabulary of vertices.
#[derive(Clone, Debug)]
pub enum Event {
    /// A vertex started (or was found cached).
    Vertex {
        /// Vertex number (`#N`).
        id: usize,
        /// Display name, e.g. `[build 2/3] RUN make`.
        name: String,
    },
    /// The vertex was served from the cache.
    Cached {
        /// Vertex number.
        id: usize,
    },
    /// One line of output of a running vertex.
    Log {
        /// Vertex number.
        id: usize,
        /// Time since the vertex started.
        elapsed: Duration,
        /// The line, without its newline.
        line: String,
    },
    /// The vertex finished.
    Done {
        /// Vertex number.
        id: usize,
        /// Its duration.
        elapsed: Duration,
    },
    /// The vertex failed.
    Failed {
        /// Vertex number.
        id: usize,
        /// Its duration.
        elapsed: Duration,
        /// Why.
        error: String,
    },
    /// The vertex was stopped because another step failed (its processes were killed).
    Canceled {
        /// Vertex number.
        id: usize,
        /// Time it ran.
        elapsed: Duration,
    },
    /// Something the user should know (an unused build arg).
    Warning(String),
    /// Why the first missed step of a chain was not cached, against the nearest previous record
    /// of the same step, e.g. `COPY app/ /src: app/main.go changed`.
    CacheMiss {
        /// Vertex number.
        id: usize,
        /// The instruction and what changed.
        reason: String,
    },
    /// A trace line for `RBUILD_DEBUG=1` (e.g. stat cache figures).
    Debug(String),
}

/// Options of a solve.
#[derive(Clone, Debug)]
pub struct SolveOptions {
    /// The build context directory.
    pub context: PathBuf,
    /// The Dockerfile path (for `.dockerignore` lookup and messages).
    pub dockerfile: PathBuf,
    /// Name of the Dockerfile as shown in messages.
    pub dockerfile_name: String,
    /// `--no-cache`: run every step again.
    pub no_cache: bool,
    /// `--no-cache-filter STAGE`: run every step of these stages (names or indexes) again.
    pub no_cache_filter: Vec<String>,
    /// `--secret` and `--ssh`: what `RUN --mount=type=secret|ssh` may use.
    pub forwarded: Forwarded,
    /// First vertex number to use (the CLI numbers its own internal steps before).
    pub first_vertex: usize,
    /// `SOURCE_DATE_EPOCH`: timestamps of config and history.
    pub source_date_epoch: Option<i64>,
    /// Records imported by `--cache-from`, consulted after a local miss.
    pub remote: Option<Arc<RemoteCache>>,
    /// `--jobs`: at most this many steps run at once; 0 means the number of CPUs.
    pub jobs: usize,
}

impl SolveOptions {
    /// The bound on concurrent steps: `jobs`, or the number of CPUs when it is 0.
    pub fn jobs(&self) -> usize {
        match self.jobs {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            j => j,
        }
    }
}

/// What a build produced.
#[derive(Clone, Debug)]
pub struct BuildResult {
    /// Manifest digest of the image in the store.
    pub manifest: Digest,
    /// Config digest (the image id).
    pub config: Digest,
    /// The steps that made a layer (for `--cache-to`).
    pub steps: Vec<StepRecord>,
    /// Usage locks of every snapshot the build used: a concurrent `prune` leaves them (and their
    /// layer blobs) alone until the result is dropped, i.e. after the caller has tagged the image.
    _in_use: Arc<Vec<rbuild_cache::SnapshotUse>>,
}

impl BuildResult {
    /// The same build with its image rewritten (e.g. the config given an inline cache); the
    /// snapshots stay held.
    pub fn with_image(self, manifest: Digest, config: Digest) -> BuildResult {
        BuildResult {
            manifest,
            config,
            ..self
        }
    }
}

/// One layer of a rootfs chain.
#[derive(Clone, Debug)]
struct Layer {
    diff_id: Digest,
    snapshot: SnapshotId,
}

/// The result of one node.
#[derive(Clone, Debug)]
struct NodeOut {
    key: CacheKey,
    /// Served from the cache (or a base image): a miss below it is the first of its chain.
    cached: bool,
    /// For a base image whose reference resolves to another manifest than last time: the
    /// explanation for its first missed step.
    from_change: Option<String>,
    /// Position in its stage's chain (0 for FROM), part of a step's identity.
    depth: usize,
    layers: Vec<Layer>,
    /// History of the base image at the bottom of this chain.
    base_history: Vec<Value>,
    /// Unix seconds when the newest layer of this stage's chain was made (its cache record's
    /// `created`), 0 when the chain has no layer of its own: the image's `created`, so a no-op
    /// rebuild makes the same config and manifest (the same image id, as BuildKit) and writes
    /// nothing.
    created: i64,
}

/// Reads base image configs from the store for the frontend.
pub struct StoreResolver<'a> {
    store: &'a Store,
}

impl<'a> StoreResolver<'a> {
    /// A resolver over `store`.
    pub fn new(store: &'a Store) -> Self {
        StoreResolver { store }
    }
}

impl ImageResolver for StoreResolver<'_> {
    fn resolve_config(&self, image: &ImageRef, platform: &Platform) -> Result<ImageConfig, String> {
        let (_, doc) = load_config(self.store, image).map_err(|e| e.to_string())?;
        check_platform(image, &doc, platform).map_err(|e| e.to_string())?;
        Ok(image::runtime_config(&doc))
    }
}

/// Finds an image in the store and returns its manifest digest and config document.
pub fn load_config(store: &Store, image: &ImageRef) -> Result<(Digest, Value), Error> {
    let manifest = store
        .get_tag(image)?
        .ok_or_else(|| Error::ImageNotFound(image.clone()))?;
    // The raw document, not the typed config: it keeps Docker's extension fields (OnBuild,
    // Healthcheck, Shell). load_image has already checked that it parses.
    let img = rbuild_exporter::load_image(store, &manifest)?;
    let raw = store.read_blob(&img.config_digest)?;
    let doc = serde_json::from_slice(&raw).map_err(|e| Error::CopyFailed {
        step: format!("FROM {image}"),
        message: format!("image config {} is not JSON: {e}", img.config_digest),
    })?;
    Ok((manifest, doc))
}

fn key_of(doc: &Value) -> CacheKey {
    CacheKey::from(Digest::of(doc.to_string().as_bytes()))
}

fn now_rfc3339(epoch: Option<i64>) -> String {
    let t = match epoch {
        Some(s) => chrono::DateTime::from_timestamp(s, 0).unwrap_or_default(),
        None => chrono::Utc::now(),
    };
    go_rfc3339_nano(&t)
}

/// Go's `time.RFC3339Nano` as BuildKit writes `created`: trailing zeros of the fraction dropped,
/// and the fraction with them when it is zero (`2015-10-21T07:28:00Z`).
fn go_rfc3339_nano(t: &chrono::DateTime<chrono::Utc>) -> String {
    let s = t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    match s.strip_suffix('Z').and_then(|b| b.split_once('.')) {
        Some((secs, frac)) => {
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() {
                format!("{secs}Z")
            } else {
                format!("{secs}.{frac}Z")
            }
        }
        None => s,
    }
}

/// The solver for one build.
struct Solver<'a> {
    /// The build context directory, opened once as an in-root resolution root.
    context: rbuild_fsroot::Root,
    store: &'a Store,
    graph: &'a BuildGraph,
    opts: &'a SolveOptions,
    ignore: IgnoreRules,
    progress: &'a (dyn Fn(Event) + Sync),
    vertex_ids: HashMap<NodeIndex, usize>,
    stats: HashStats,
    /// The Dockerfile's absolute path: steps are identified by it, their stage and position.
    dockerfile_id: String,
    /// Kills the running steps' containers at the first failure.
    kill: rbuild_sandbox::KillSwitch,
    /// Usage locks of the snapshots this build has used so far (see [`Solver::hold`]).
    in_use: std::sync::Mutex<Vec<rbuild_cache::SnapshotUse>>,
}

/// Test hook, compiled only into debug builds (`cargo build`/`cargo test`, never `--release`):
/// a step whose display name contains `RBUILD_TEST_PANIC_STEP` panics, so tests can check that a
/// panicking worker fails the build at once instead of hanging it.
#[cfg(debug_assertions)]
fn test_panic_hook(display: &str) {
    if let Some(pat) = std::env::var_os("RBUILD_TEST_PANIC_STEP") {
        let pat = pat.to_string_lossy();
        if !pat.is_empty() && display.contains(pat.as_ref()) {
            panic!("RBUILD_TEST_PANIC_STEP: injected panic in {display}");
        }
    }
}

/// Builds the target of `graph` and writes its image into the store (untagged; the caller tags it).
pub fn solve(
    store: &Store,
    graph: &BuildGraph,
    opts: &SolveOptions,
    progress: &(dyn Fn(Event) + Sync),
) -> Result<BuildResult, Error> {
    let ignore = IgnoreRules::load(&opts.context, &opts.dockerfile).map_err(|e| Error::Io {
        what: format!("reading .dockerignore in {}", opts.context.display()),
        source: e,
    })?;
    let order = petgraph::algo::toposort(&graph.graph, None).map_err(|_| Error::CopyFailed {
        step: opts.dockerfile_name.clone(),
        message: "the build graph has a cycle".into(),
    })?;
    let mut vertex_ids = HashMap::new();
    let mut next = opts.first_vertex;
    for n in &order {
        if !matches!(graph.graph[*n].op, Op::Scratch) {
            vertex_ids.insert(*n, next);
            next += 1;
        }
    }
    // The context as a root: every path a COPY or a bind mount names is resolved inside it.
    let context = rbuild_fsroot::Root::open(&opts.context).map_err(|e| Error::Io {
        what: format!("opening the build context {}", opts.context.display()),
        source: e.into(),
    })?;
    let solver = Solver {
        context,
        store,
        graph,
        opts,
        ignore,
        progress,
        vertex_ids,
        stats: HashStats::default(),
        dockerfile_id: std::fs::canonicalize(&opts.dockerfile)
            .unwrap_or_else(|_| opts.dockerfile.clone())
            .display()
            .to_string(),
        kill: rbuild_sandbox::KillSwitch::new(),
        in_use: Default::default(),
    };
    for w in &graph.warnings {
        progress(Event::Warning(w.clone()));
    }
    // The target stage's remote layers come in beside the build (see `remote::prefetch`).
    let stop = std::sync::atomic::AtomicBool::new(false);
    let results = std::thread::scope(|sc| {
        sc.spawn(|| remote::prefetch(&solver, &stop));
        let r = solver.run_all(&order);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        r
    });
    progress(Event::Debug(format!(
        "context: {} files verified by the stat cache, {} files read",
        solver
            .stats
            .stat_hits
            .load(std::sync::atomic::Ordering::Relaxed),
        solver
            .stats
            .files_read
            .load(std::sync::atomic::Ordering::Relaxed)
    )));
    solver.export(&results?)
}

impl Solver<'_> {
    /// Marks snapshot `s` as used by this build until the build's result is dropped, so a
    /// concurrent `prune` cannot remove it; false when it is already gone.
    fn hold(&self, s: &SnapshotId) -> Result<bool, Error> {
        match self.store.use_snapshot(s)? {
            Some(g) => {
                self.lock_in_use().push(g);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// [`Self::hold`] for a cache hit's layer, which may be kept compressed with its snapshot
    /// not made yet (a remote hit): then the layer's row must name that snapshot and the layer
    /// must be there, checked after locking. False when neither is the case (a miss).
    fn hold_layer(&self, l: &Layer) -> Result<bool, Error> {
        if self.hold(&l.snapshot)? {
            return Ok(true);
        }
        let guard = self.store.use_snapshot_id(&l.snapshot)?;
        let named = self
            .store
            .layer_info(&l.diff_id)?
            .is_some_and(|i| i.snapshot == l.snapshot);
        if named
            && (self.store.has_snapshot(&l.snapshot)
                || rbuild_exporter::has_layer(self.store, &l.diff_id)?)
        {
            self.lock_in_use().push(guard);
            return Ok(true);
        }
        Ok(false)
    }

    fn lock_in_use(&self) -> std::sync::MutexGuard<'_, Vec<rbuild_cache::SnapshotUse>> {
        self.in_use.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The inputs of `n` with their roles, in the order the frontend added them (`from=` mounts
    /// map to sources by it).
    fn inputs_of(&self, n: NodeIndex) -> Vec<(Input, NodeIndex)> {
        let mut edges: Vec<_> = self
            .graph
            .graph
            .edges_directed(n, Direction::Incoming)
            .collect();
        edges.sort_by_key(|e| e.id());
        edges.iter().map(|e| (*e.weight(), e.source())).collect()
    }

    /// Runs every node once its inputs are done, at most `jobs` at once (see [`sched`]). The
    /// first failure (an error, or a panic reported as [`Error::Bug`]) stops new work and kills
    /// the containers of the steps still running; it is returned once they have ended.
    fn run_all(&self, order: &[NodeIndex]) -> Result<HashMap<NodeIndex, Arc<NodeOut>>, Error> {
        let deps = |n: NodeIndex| self.inputs_of(n).into_iter().map(|(_, d)| d).collect();
        let plan = sched::Plan::new(order, deps, self.opts.jobs());
        let kill = &self.kill;
        let work = |n: NodeIndex, outs: Vec<Arc<NodeOut>>| {
            let _entered = kill.enter();
            let inputs: Vec<(Input, Arc<NodeOut>)> = self
                .inputs_of(n)
                .into_iter()
                .map(|(i, _)| i)
                .zip(outs)
                .collect();
            self.run_node(n, &inputs)
        };
        let panicked = |n: NodeIndex, message: String| {
            let e = Error::Bug {
                step: self.step_name(n),
                message,
            };
            if let Some(&id) = self.vertex_ids.get(&n) {
                (self.progress)(Event::Failed {
                    id,
                    elapsed: Duration::ZERO,
                    error: e.to_string(),
                });
            }
            e
        };
        sched::run(plan, deps, &work, panicked, || kill.cancel())
    }

    fn step_name(&self, n: NodeIndex) -> String {
        let node = &self.graph.graph[n];
        let display = node
            .display
            .split_once("] ")
            .map(|(_, d)| d)
            .unwrap_or(&node.display);
        format!("{}:{}: {}", self.opts.dockerfile_name, node.line, display)
    }

    fn run_node(&self, n: NodeIndex, inputs: &[(Input, Arc<NodeOut>)]) -> Result<NodeOut, Error> {
        let node = &self.graph.graph[n];
        let id = self.vertex_ids.get(&n).copied();
        let start = Instant::now();
        if let Some(id) = id {
            (self.progress)(Event::Vertex {
                id,
                name: node.display.clone(),
            });
        }
        #[cfg(debug_assertions)]
        test_panic_hook(&node.display);
        let r = self.run_op(n, inputs, id.unwrap_or(0), start);
        if let Some(id) = id {
            match &r {
                Err(_) if self.kill.is_cancelled() => (self.progress)(Event::Canceled {
                    id,
                    elapsed: start.elapsed(),
                }),
                Ok((_, true)) => (self.progress)(Event::Cached { id }),
                Ok((_, false)) => (self.progress)(Event::Done {
                    id,
                    elapsed: start.elapsed(),
                }),
                Err(e) => (self.progress)(Event::Failed {
                    id,
                    elapsed: start.elapsed(),
                    error: e.to_string(),
                }),
            }
        }
        r.map(|(out, _)| out)
    }

    /// Runs one op; the flag is true when the result came from the cache.
    fn run_op(
        &self,
        n: NodeIndex,
        inputs: &[(Input, Arc<NodeOut>)],
        id: usize,
        start: Instant,
    ) -> Result<(NodeOut, bool), Error> {
        let node = &self.graph.graph[n];
        let parent = inputs
            .iter()
            .find(|(r, _)| *r == Input::Rootfs)
            .map(|(_, o)| o.clone());
        let sources: Vec<&Arc<NodeOut>> = inputs
            .iter()
            .filter(|(r, _)| *r == Input::CopySource)
            .map(|(_, o)| o)
            .collect();
        match &node.op {
            Op::Scratch => Ok((
                NodeOut {
                    key: key_of(&json!({"v": KEY_VERSION, "op": "scratch"})),
                    cached: true,
                    from_change: None,
                    depth: 0,
                    layers: vec![],
                    base_history: vec![],
                    created: 0,
                },
                true,
            )),
            Op::Image {
                reference,
                platform,
            } => self.pull_image(reference, platform),
            Op::Exec(exec) => {
                let parent = parent.expect("exec has a rootfs input");
                let bind_content =
                    mounts::key_content(exec, &self.context, &self.ignore, self.store, &self.stats)
                        .map_err(|e| Error::CopyFailed {
                            step: self.step_name(n),
                            message: format!(
                        "failed to compute cache key of a bind mount: {e} in the build context {}",
                        self.opts.context.display()
                    ),
                        })?;
                let doc = json!({
                    "v": KEY_VERSION, "op": "exec", "exec": exec, "parent": parent.key.to_string(),
                    "sources": sources.iter().map(|s| s.key.to_string()).collect::<Vec<_>>(),
                    "bind_content": bind_content,
                });
                self.cached_or(n, &parent, inputs, doc, &|_| {}, |sb, _| {
                    let prepared = mounts::prepare(
                        self.store,
                        exec,
                        &sources,
                        &self.opts.context,
                        &self.ignore,
                        &self.opts.forwarded,
                        &self.step_name(n),
                    )?;
                    exec::run(
                        self.store,
                        exec,
                        &parent_dirs(self.store, &parent),
                        &prepared,
                        sb,
                        &mut |line| {
                            (self.progress)(Event::Log {
                                id,
                                elapsed: start.elapsed(),
                                line,
                            })
                        },
                    )
                    .map_err(|e| match e {
                        exec::ExecError::Failed { code, output } => Error::StepFailed {
                            step: self.step_name(n),
                            command: exec.args.join(" "),
                            code,
                            output,
                            note: self.foreign_platform_note(n),
                        },
                        exec::ExecError::Other(e) => e,
                    })
                })
            }
            Op::Copy(copy) => {
                let parent = parent.expect("copy has a rootfs input");
                // ADD's URLs and git repositories are fetched first: their content is in the key.
                let git = add::GitAccess {
                    context: &self.context,
                    ssh_agent: self.opts.forwarded.ssh.get("default").map(PathBuf::as_path),
                };
                let remote = exec::fetch_remote(self.store, copy, &git).map_err(|e| match e {
                    exec::ExecError::Failed { output, .. } => Error::CopyFailed {
                        step: self.step_name(n),
                        message: output.join("\n"),
                    },
                    exec::ExecError::Other(e) => e,
                })?;
                let local: Vec<String> = copy
                    .srcs
                    .iter()
                    .filter(|s| !(copy.add && add::is_remote(s)))
                    .cloned()
                    .collect();
                let fetched: Vec<&str> = remote.files.iter().map(|f| f.digest.as_str()).collect();
                // The per-file digests of a context selection are kept with the step (explanations,
                // sharing unchanged files) but are not part of the key: the context digest covers them.
                let mut files = None;
                let content = match &copy.from {
                    rbuild_frontend::CopyFrom::Context => {
                        let (d, f) = context::selection_digest(&self.context, &local, copy.parents, &copy.excludes, &self.ignore, Some(self.store), &self.stats)
                            .map_err(|e| Error::CopyFailed {
                                step: self.step_name(n),
                                message: format!(
                                    "failed to compute cache key: {e} in the build context {}; check the path and .dockerignore",
                                    self.opts.context.display()
                                ),
                            })?;
                        files = Some(f);
                        json!({"context": d.to_string(), "remote": fetched})
                    }
                    rbuild_frontend::CopyFrom::Input => {
                        json!({"source": sources.first().map(|s| s.key.to_string())})
                    }
                    rbuild_frontend::CopyFrom::Inline { .. } => json!("inline"),
                };
                let doc = json!({
                    "v": KEY_VERSION, "op": "copy", "copy": copy, "parent": parent.key.to_string(), "content": content,
                });
                let details = |d: &mut Value| {
                    if let Some(f) = &files {
                        let map: serde_json::Map<String, Value> =
                            f.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
                        d["content"]["files"] = Value::Object(map);
                    }
                };
                self.cached_or(n, &parent, inputs, doc, &details, |sb, previous| {
                    let src = sources.first().map(|s| parent_dirs(self.store, s));
                    let reuse = previous.and_then(|(dir, prev_doc)| {
                        let now = files.as_ref()?.iter();
                        exec::Reuse::unchanged_files(dir, &prev_doc["doc"]["content"], now)
                    });
                    exec::copy(
                        self.store,
                        copy,
                        &parent_dirs(self.store, &parent),
                        src.as_deref(),
                        &self.opts.context,
                        &self.ignore,
                        &remote.files,
                        sb,
                        reuse.as_ref(),
                    )
                    .map_err(|e| match e {
                        exec::ExecError::Failed { output, .. } => Error::CopyFailed {
                            step: self.step_name(n),
                            message: output.join("\n"),
                        },
                        exec::ExecError::Other(e) => e,
                    })
                })
            }
            Op::Mkdir { path, user } => {
                let parent = parent.expect("mkdir has a rootfs input");
                let doc = json!({
                    "v": KEY_VERSION, "op": "mkdir", "path": path, "user": user, "parent": parent.key.to_string(),
                });
                self.cached_or(n, &parent, inputs, doc, &|_| {}, |sb, _| {
                    exec::mkdir(
                        self.store,
                        path,
                        user,
                        &parent_dirs(self.store, &parent),
                        sb,
                    )
                    .map_err(|e| match e {
                        exec::ExecError::Failed { output, .. } => Error::CopyFailed {
                            step: self.step_name(n),
                            message: output.join("\n"),
                        },
                        exec::ExecError::Other(e) => e,
                    })
                })
            }
        }
    }

    /// Looks the key of `doc` up (locally, then in the remote caches); on a miss runs `work` into
    /// a fresh snapshot under the per-key lock, writes its layer and records it.
    /// `details` adds to the document what is not needed for the key but is kept with the step
    /// (a COPY's per-file digests, for explanations and sharing): it runs only when the step's
    /// key is new to the step index or the step runs, so a no-op rebuild never builds it.
    fn cached_or(
        &self,
        n: NodeIndex,
        parent: &NodeOut,
        inputs: &[(Input, Arc<NodeOut>)],
        doc: Value,
        details: &dyn Fn(&mut Value),
        work: impl FnOnce(
            &rbuild_cache::SnapshotBuilder,
            Option<(PathBuf, &Value)>,
        ) -> Result<(), Error>,
    ) -> Result<(NodeOut, bool), Error> {
        let mut doc = doc;
        if let Some(epoch) = self.opts.source_date_epoch {
            // Layer mtimes are clamped to the epoch, so the layer differs from one made without it.
            doc["source_date_epoch"] = json!(epoch);
        }
        let key = key_of(&doc);
        let out = |layer: Layer, cached: bool, created: i64| NodeOut {
            key: key.clone(),
            cached,
            from_change: None,
            depth: parent.depth + 1,
            layers: parent.layers.iter().cloned().chain([layer]).collect(),
            base_history: parent.base_history.clone(),
            created: created.max(parent.created),
        };
        let no_cache = self.no_cache_for(n);
        let lookup = |store: &Store| -> Result<Option<(Layer, i64)>, Error> {
            if no_cache {
                return Ok(None);
            }
            let hit = store
                .cache_hit(&key)?
                .and_then(|rec| match (rec.snapshot, rec.diff_id) {
                    (Some(s), Some(d)) => Some((
                        Layer {
                            diff_id: d,
                            snapshot: s,
                        },
                        rec.created,
                    )),
                    _ => None,
                });
            match hit {
                Some((l, t)) if self.hold_layer(&l)? => Ok(Some((l, t))),
                _ => Ok(None),
            }
        };
        let identity = format!(
            "{}\0{}\0{}",
            self.dockerfile_id,
            self.graph.graph[n].stage,
            parent.depth + 1
        );
        let full = || {
            let mut d = doc.clone();
            details(&mut d);
            json!({"display": self.instruction(n), "doc": d})
        };
        let previous = match remote::previous(self, n, parent.depth + 1, &key) {
            Some(p) => Some(p),
            None => self.store.step_index_latest_unless(&identity, Some(&key))?,
        };
        if !self.store.step_index_touch(&identity, &key)? {
            self.store.step_index_put(&identity, &key, &full())?;
        }
        if let Some((l, t)) = lookup(self.store)? {
            return Ok((out(l, true, t), true));
        }
        let _lock = self.store.lock_key(&key)?;
        if let Some((l, t)) = lookup(self.store)? {
            return Ok((out(l, true, t), true));
        }
        if let Some(l) = (!no_cache)
            .then(|| remote::lookup(self, n, &key))
            .transpose()?
            .flatten()
        {
            let now = chrono::Utc::now().timestamp();
            return Ok((out(l, true, now), true));
        }
        let indexed = full();
        if let Some(id) = self.vertex_ids.get(&n) {
            let reason = if no_cache {
                None
            } else if let Some(change) = &parent.from_change {
                Some(change.clone())
            } else if parent.cached {
                let env = self
                    .graph
                    .stage(self.graph.graph[n].stage)
                    .map_or(&[][..], |s| &s.config.env[..]);
                previous.as_ref().and_then(|(_, prev)| {
                    explain::explain(&self.instruction(n), prev, &indexed, env)
                })
            } else {
                None
            };
            if let Some(reason) = reason {
                (self.progress)(Event::CacheMiss { id: *id, reason });
            }
        }
        // The previous result of this step, whose unchanged files a COPY may share (not with
        // --no-cache, which must not trust anything made before).
        let previous_snapshot = match (&previous, no_cache) {
            (Some((k, _)), false) => match self.store.cache_peek(k)?.and_then(|rec| rec.snapshot) {
                Some(s) if self.hold(&s)? => Some(s),
                _ => None,
            },
            _ => None,
        };
        let previous_result = previous_snapshot
            .as_ref()
            .zip(previous.as_ref())
            .map(|(s, (_, prev_doc))| (self.store.snapshot_dir(s), prev_doc));
        remote::materialize(self, inputs)?;
        let sb = self.store.new_snapshot()?;
        work(&sb, previous_result)?;
        let snapshot = sb.commit()?;
        self.hold(&snapshot)?;
        // The hash resumes after the entries the layer shares with the previous result (held
        // above, so its files stay what its index describes).
        let (diff_id, size) = rbuild_exporter::write_layer_after(
            self.store,
            &snapshot,
            self.opts.source_date_epoch,
            previous_snapshot.as_ref(),
        )?;
        let now = chrono::Utc::now().timestamp();
        self.store.cache_put(&CacheRecord {
            key: key.clone(),
            snapshot: Some(snapshot.clone()),
            diff_id: Some(diff_id.clone()),
            size,
            description: self.graph.graph[n].display.clone(),
            // The key document: small, since every hit updates the row (the step index keeps
            // the details; `cache inspect` takes them from there).
            inputs: doc,
            created: now,
            last_used: now,
            usage_count: 1,
        })?;
        Ok((out(Layer { diff_id, snapshot }, false, now), false))
    }

    /// For a failed RUN in a stage of another platform than the host's: RUN executes natively,
    /// so foreign binaries need an emulator registered in binfmt_misc.
    fn foreign_platform_note(&self, n: NodeIndex) -> Option<String> {
        let host = Platform::host();
        let stage = self.graph.stage(self.graph.graph[n].stage)?;
        (!platform_matches(&host, &stage.platform)).then(|| {
            format!(
                "this stage is for {} and RUN executes natively on {host}; register an emulator \
                 for it (binfmt_misc, e.g. qemu-user-static) or build for {host}",
                stage.platform
            )
        })
    }

    /// The instruction of a node as written (its display without the `[stage n/m]` prefix).
    fn instruction(&self, n: NodeIndex) -> String {
        let d = &self.graph.graph[n].display;
        d.split_once("] ").map(|(_, i)| i).unwrap_or(d).to_string()
    }

    /// `--no-cache`, or `--no-cache-filter` naming the node's stage (by name or index).
    fn no_cache_for(&self, n: NodeIndex) -> bool {
        if self.opts.no_cache {
            return true;
        }
        let stage = self.graph.graph[n].stage;
        let name = self.graph.stage(stage).and_then(|s| s.name.clone());
        self.opts.no_cache_filter.iter().any(|f| {
            name.as_deref().is_some_and(|nm| nm.eq_ignore_ascii_case(f)) || *f == stage.to_string()
        })
    }

    fn pull_image(
        &self,
        reference: &ImageRef,
        platform: &Platform,
    ) -> Result<(NodeOut, bool), Error> {
        let (manifest, doc) = load_config(self.store, reference)?;
        check_platform(reference, &doc, platform)?;
        let mut layers = Vec::new();
        let mut all_present = true;
        let diff_ids = doc["rootfs"]["diff_ids"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for d in diff_ids {
            let diff_id: Digest =
                d.as_str()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|_| Error::CopyFailed {
                        step: format!("FROM {reference}"),
                        message: format!("image config has an invalid diff_id {d}"),
                    })?;
            all_present &= self.store.layer_snapshot(&diff_id)?.is_some();
            // Not unpacked here: a step that needs the files makes the snapshot
            // (`remote::materialize`); an image output of a fully cached chain never does.
            let (snapshot, guard) = rbuild_exporter::ensure_layer_in_use(self.store, &diff_id)?;
            self.lock_in_use().push(guard);
            layers.push(Layer { diff_id, snapshot });
        }
        let base_history = doc["history"].as_array().cloned().unwrap_or_default();
        let doc = json!({"v": KEY_VERSION, "op": "image", "manifest": manifest.to_string()});
        let key = key_of(&doc);
        // Base images are indexed by reference, so a changed resolution is explained once for
        // every Dockerfile using it.
        let identity = format!("image\0{reference}");
        let from_change = match self.store.step_index_latest(&identity)? {
            Some((k, prev)) if k != key => {
                let was = prev["manifest"].as_str().unwrap_or_default().to_string();
                Some(format!(
                    "FROM: base image {reference} now resolves to {manifest} (was {was})"
                ))
            }
            _ => None,
        };
        // Nothing written when this resolution is already the latest (a no-op rebuild).
        if !self.store.step_index_touch(&identity, &key)? {
            self.store.step_index_put(&identity, &key, &doc)?;
        }
        Ok((
            NodeOut {
                key,
                cached: true,
                from_change,
                depth: 0,
                layers,
                base_history,
                created: 0,
            },
            all_present,
        ))
    }

    /// Writes the target stage's image (config + manifest) into the store.
    fn export(&self, results: &HashMap<NodeIndex, Arc<NodeOut>>) -> Result<BuildResult, Error> {
        let stage = &self.graph.stages[self.graph.target];
        let out = &results[&stage.node];
        // SOURCE_DATE_EPOCH, else when the chain's newest layer was made (a no-op rebuild gives
        // the same image), else (no layer of its own) now.
        let created = match (self.opts.source_date_epoch, out.created) {
            (Some(epoch), _) => now_rfc3339(Some(epoch)),
            (None, 0) => now_rfc3339(None),
            (None, t) => now_rfc3339(Some(t)),
        };
        // History: the base image's, then the stage's (which starts with its parent stage's when
        // it is built FROM another stage).
        let mut history: Vec<Value> = out.base_history.clone();
        let base_layers = history
            .iter()
            .filter(|h| h["empty_layer"] != json!(true))
            .count();
        history.extend(
            stage
                .history
                .iter()
                .map(|h| image::history_json(h, &created)),
        );
        // Imported images may lack history for their layers: pad so counts match.
        let own_layers = history
            .iter()
            .filter(|h| h["empty_layer"] != json!(true))
            .count()
            - base_layers;
        let missing = out.layers.len().saturating_sub(base_layers + own_layers);
        for _ in 0..missing {
            history.insert(0, json!({"created": created, "created_by": "rbuild import", "comment": "imported rootfs"}));
        }
        let diff_ids: Vec<Digest> = out.layers.iter().map(|l| l.diff_id.clone()).collect();
        let doc =
            image::config_document(&stage.platform, &stage.config, &diff_ids, history, &created);
        let (manifest, config) = rbuild_exporter::write_image_json(self.store, &doc)?;
        let steps = remote::steps(self, results);
        Ok(BuildResult {
            manifest,
            config,
            steps,
            _in_use: Arc::new(std::mem::take(&mut *self.lock_in_use())),
        })
    }
}

/// Snapshot directories of a chain, top first (overlay lowerdir order).
fn parent_dirs(store: &Store, out: &NodeOut) -> Vec<PathBuf> {
    out.layers
        .iter()
        .rev()
        .map(|l| store.snapshot_dir(&l.snapshot))
        .collect()
}

#[cfg(test)]
mod time_format_tests {
    #[test]
    fn created_is_formatted_as_go_rfc3339_nano() {
        let t = |s, n| chrono::DateTime::from_timestamp(s, n).unwrap();
        assert_eq!(
            super::go_rfc3339_nano(&t(1445412480, 0)),
            "2015-10-21T07:28:00Z"
        );
        assert_eq!(
            super::go_rfc3339_nano(&t(1445412480, 226_038_500)),
            "2015-10-21T07:28:00.2260385Z"
        );
    }
}

//! The remote cache seam: cache records imported from elsewhere (a registry, an OCI layout
//! directory, an image's inline cache) that a local miss consults before running a step, and
//! the list of this build's steps that `--cache-to` exports.
//!
//! The solver knows nothing of transports: the caller adds each imported
//! [`CacheConfig`](rbuild_cache::artifact::CacheConfig) with a [`LayerSource`] that can bring
//! one of its layers into the store. A remote hit downloads only that step's layer (checked
//! against its digest and diff_id by the source), keeps it compressed and records it locally,
//! so the next build hits locally; its snapshot is made only when a step that runs (or a
//! container) needs its files ([`materialize`]). Anything wrong with a remote record (a key that is not the hash of its
//! inputs, a layer that is not listed, missing or does not match its digest) is a warning and a
//! miss: the step runs, never a wrong result.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use petgraph::graph::NodeIndex;
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use rbuild_cache::artifact::{CacheConfig, LayerDesc, Position, RemoteRecord};
use rbuild_cache::{CacheKey, CacheRecord, SnapshotId, Store};
use rbuild_exporter::Compression;
use rbuild_frontend::{Input, Op};
use rbuild_types::Digest;
use serde_json::{json, Value};

use crate::{key_of, Error, Event, Layer, NodeOut, Solver};

/// Brings layers of one imported cache into the store.
pub trait LayerSource: Send + Sync {
    /// Stores `layer` after checking it against its digest, size and diff_id: its compressed
    /// blob, recorded as a layer kept compressed (`Store::put_lazy_layer`), or its tar when
    /// the cache has it uncompressed. The error says what was wrong.
    fn fetch(&self, store: &Store, layer: &LayerDesc) -> Result<(), String>;
    /// Checks that `layer` is there (size included where the transport tells it) without
    /// downloading it: for a hit whose layer may never be needed.
    fn check(&self, layer: &LayerDesc) -> Result<(), String>;
    /// The cache's name for messages, e.g. `127.0.0.1:5000/app:cache`.
    fn name(&self) -> String;
}

struct Entry {
    source: usize,
    record: RemoteRecord,
    layer: LayerDesc,
}

/// Records imported from remote caches, by key.
#[derive(Default)]
pub struct RemoteCache {
    sources: Vec<Box<dyn LayerSource>>,
    entries: HashMap<CacheKey, Entry>,
    /// Layers that failed once: not tried again in this build.
    bad: Mutex<HashSet<Digest>>,
    /// Hits outside the target image whose layer is fetched only when a step that misses needs
    /// it: reserved snapshot id -> (key, step).
    pending: Mutex<HashMap<SnapshotId, (CacheKey, String)>>,
    /// Serializes materializations (a pending layer is brought in once).
    materializing: Mutex<()>,
    /// Layers [`prefetch`] took on, by blob digest: `None` while in flight, then the outcome.
    prefetched: Mutex<HashMap<Digest, Option<Result<(), String>>>>,
    /// Signalled each time a prefetch ends.
    prefetch_done: Condvar,
}

/// How many layers [`prefetch`] downloads at once.
const PREFETCH_JOBS: usize = 4;

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl std::fmt::Debug for RemoteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCache")
            .field(
                "sources",
                &self.sources.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .field("records", &self.entries.len())
            .finish()
    }
}

impl RemoteCache {
    /// An empty set of remote records.
    pub fn new() -> RemoteCache {
        RemoteCache::default()
    }

    /// Adds the records of one imported cache (earlier caches win for a key). Returns warnings
    /// for records that are dropped because they cannot be trusted.
    pub fn add(&mut self, config: CacheConfig, source: Box<dyn LayerSource>) -> Vec<String> {
        let idx = self.sources.len();
        let name = source.name();
        let mut warnings = Vec::new();
        let layers = config.layer_map();
        for r in &config.records {
            // Records of rbuild before the per-file map left the key hash it too.
            if key_of(&key_document(&r.inputs)) != r.key && key_of(&r.inputs) != r.key {
                warnings.push(format!(
                    "cache {name}: record {} ({}) does not match its inputs; ignored",
                    r.key,
                    clean(&r.description)
                ));
                continue;
            }
            let Some(layer) = layers.get(&r.diff_id) else {
                warnings.push(format!(
                    "cache {name}: record {} ({}) names layer {} which the cache does not list; ignored",
                    r.key,
                    clean(&r.description),
                    r.diff_id
                ));
                continue;
            };
            self.entries.entry(r.key.clone()).or_insert_with(|| Entry {
                source: idx,
                record: r.clone(),
                layer: (*layer).clone(),
            });
        }
        self.sources.push(source);
        warnings
    }

    /// Brings `e`'s layer into the store: waits for [`prefetch`] if it has that layer in
    /// flight (and returns its failure), else fetches it from its source now.
    fn fetch(&self, store: &Store, e: &Entry) -> Result<(), String> {
        let mut m = locked(&self.prefetched);
        while let Some(state) = m.get(&e.layer.digest) {
            match state {
                None => {
                    m = self
                        .prefetch_done
                        .wait(m)
                        .unwrap_or_else(|p| p.into_inner())
                }
                Some(Err(why)) => return Err(why.clone()),
                Some(Ok(())) => break,
            }
        }
        drop(m);
        // After a successful prefetch this only finds the layer in the store.
        self.sources[e.source].fetch(store, &e.layer)
    }

    /// How many usable records were imported.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no record was imported.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// One step of a finished build, for `--cache-to`.
#[derive(Clone, Debug)]
pub struct StepRecord {
    /// Its cache key.
    pub key: CacheKey,
    /// The layer it produced.
    pub diff_id: Digest,
    /// Where it is in the Dockerfile.
    pub position: Position,
    /// Whether the step is part of the target image (what `mode=min` exports).
    pub in_target: bool,
}

/// Looks `key` up in the remote records after a local miss. A hit of a step of the target
/// image brings its layer into the store now (the image needs it); any other hit only checks
/// that its layer is there and reserves a snapshot id, filled by [`materialize`] if a step that
/// misses needs it. A failure is a warning and a miss.
pub(crate) fn lookup(s: &Solver, n: NodeIndex, key: &CacheKey) -> Result<Option<Layer>, Error> {
    let Some(remote) = s.opts.remote.as_deref() else {
        return Ok(None);
    };
    let Some(e) = remote.entries.get(key) else {
        return Ok(None);
    };
    let source = &remote.sources[e.source];
    if locked(&remote.bad).contains(&e.layer.digest) {
        return Ok(None);
    }
    let display = &s.graph.graph[n].display;
    let lazy = !in_target(s, n);
    let r = if lazy {
        source.check(&e.layer).map(|()| SnapshotId::reserve())
    } else {
        // The layer stays compressed: its snapshot is made only if a later step needs the
        // files (`materialize`); an image output copies the compressed blob.
        remote.fetch(s.store, e).and_then(|()| {
            let (snap, guard) = rbuild_exporter::ensure_layer_in_use(s.store, &e.layer.diff_id)
                .map_err(|e| e.to_string())?;
            s.lock_in_use().push(guard);
            Ok(snap)
        })
    };
    let snapshot = match r {
        Ok(snap) => snap,
        Err(why) => {
            locked(&remote.bad).insert(e.layer.digest.clone());
            (s.progress)(Event::Warning(format!(
                "remote cache {}: {display}: {why}; the step runs instead",
                source.name(),
            )));
            return Ok(None);
        }
    };
    if lazy {
        locked(&remote.pending).insert(snapshot.clone(), (key.clone(), display.clone()));
    } else {
        record(s.store, key, e, &snapshot, display)?;
    }
    Ok(Some(Layer {
        diff_id: e.layer.diff_id.clone(),
        snapshot,
    }))
}

/// Records a remote hit whose layer is in the store as a local cache record.
fn record(
    store: &Store,
    key: &CacheKey,
    e: &Entry,
    snapshot: &SnapshotId,
    display: &str,
) -> Result<(), Error> {
    let size = rbuild_exporter::layer_size(store, &e.layer.diff_id)?;
    store.cache_put(&CacheRecord {
        key: key.clone(),
        snapshot: Some(snapshot.clone()),
        diff_id: Some(e.layer.diff_id.clone()),
        size,
        description: display.to_string(),
        inputs: e.record.inputs.clone(),
        created: 0,
        last_used: 0,
        usage_count: 1,
    })?;
    Ok(())
}

/// Makes the snapshots of the layers of `inputs` that are not made yet, before a step that
/// misses uses their files: layers kept compressed (remote hits, base images: their snapshot
/// id is reserved) are unpacked into that id, and layers of remote hits outside the target
/// image that were only checked are fetched first. A layer that cannot be fetched now (it
/// changed in the registry since it was checked) fails the build: its step is already done.
pub(crate) fn materialize(s: &Solver, inputs: &[(Input, Arc<NodeOut>)]) -> Result<(), Error> {
    for l in inputs.iter().flat_map(|(_, o)| o.layers.iter()) {
        if s.store.has_snapshot(&l.snapshot) {
            continue;
        }
        let pending = s
            .opts
            .remote
            .as_deref()
            .is_some_and(|r| locked(&r.pending).contains_key(&l.snapshot));
        if pending {
            fill_pending(s, l)?;
            continue;
        }
        rbuild_exporter::ensure_snapshot_at(s.store, &l.diff_id, &l.snapshot)?;
    }
    Ok(())
}

/// Fetches and unpacks the layer of a remote hit left pending (see [`lookup`]) into its
/// reserved snapshot id, and records the hit.
fn fill_pending(s: &Solver, l: &Layer) -> Result<(), Error> {
    let Some(remote) = s.opts.remote.as_deref() else {
        return Ok(());
    };
    let _one = locked(&remote.materializing);
    let Some((key, display)) = locked(&remote.pending).get(&l.snapshot).cloned() else {
        return Ok(());
    };
    let e = &remote.entries[&key];
    let source = &remote.sources[e.source];
    let fill = || -> Result<(), String> {
        remote.fetch(s.store, e)?;
        rbuild_exporter::ensure_snapshot_at(s.store, &e.layer.diff_id, &l.snapshot)
            .map_err(|e| e.to_string())?;
        // Held like every snapshot of the build (a concurrent prune leaves it alone).
        if let Some(g) = s
            .store
            .use_snapshot(&l.snapshot)
            .map_err(|e| e.to_string())?
        {
            s.lock_in_use().push(g);
        }
        Ok(())
    };
    fill().map_err(|why| Error::CopyFailed {
        step: display.clone(),
        message: format!(
            "the layer of this step from remote cache {} is needed now but cannot be used: \
             {why}; the cache changed during the build: build again without that --cache-from \
             (or export the cache again)",
            source.name()
        ),
    })?;
    record(s.store, &key, e, &l.snapshot, &display)?;
    locked(&remote.pending).remove(&l.snapshot);
    Ok(())
}

/// Downloads and unpacks, while the build runs, the layers of the remote records of the target
/// stage, [`PREFETCH_JOBS`] at a time, so that the hits of the
/// target image's chain, which need their layers at once, find them in the store instead of
/// fetching them one after another along the chain. A prefetched layer is checked exactly as a
/// fetch in [`lookup`] (digest, size, diff_id, by the source) and is only used by a hit whose key
/// matches; a failure is kept and reported (warning and miss) by the hit that wants the layer.
/// Stops taking new layers once `stop` is set (the build ended).
pub(crate) fn prefetch(s: &Solver, stop: &AtomicBool) {
    let Some(remote) = s.opts.remote.as_deref() else {
        return;
    };
    let target = s.graph.graph[s.graph.stages[s.graph.target].node].stage;
    let here = position(s, s.graph.stages[s.graph.target].node, 0).dockerfile;
    prefetch_stage(remote, s.store, &here, target, stop);
}

/// [`prefetch`] for the records of stage `stage` (its position in the Dockerfile) of the
/// Dockerfile named `dockerfile`, for a caller that knows the target stage before the build
/// graph exists (the CLI starts it while the frontend pulls the base images). Layers already
/// taken on (in flight or done) are skipped, so the solve's own [`prefetch`] after it only
/// adds what this one did not take.
pub fn prefetch_stage(
    remote: &RemoteCache,
    store: &Store,
    dockerfile: &str,
    stage: usize,
    stop: &AtomicBool,
) {
    let mut todo: Vec<&Entry> = remote
        .entries
        .values()
        .filter(|e| e.record.position.stage == stage && e.record.position.dockerfile == dockerfile)
        .filter(|e| !rbuild_exporter::has_layer(store, &e.layer.diff_id).unwrap_or(false))
        .collect();
    todo.sort_by_key(|e| (e.record.position.depth, e.layer.digest.clone()));
    {
        let mut m = locked(&remote.prefetched);
        todo.retain(|e| {
            let fresh = !m.contains_key(&e.layer.digest);
            if fresh {
                m.insert(e.layer.digest.clone(), None);
            }
            fresh
        });
    }
    let next = AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::SeqCst);
        let Some(e) = todo.get(i) else { break };
        let outcome = if stop.load(Ordering::SeqCst) {
            None
        } else {
            // A panic is a failed fetch, never a waiter left waiting.
            let source = &remote.sources[e.source];
            Some(
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    // Kept compressed (a `layers` row with a reserved snapshot id, which
                    // prune handles like any layer's): the hit takes it into use.
                    source.fetch(store, &e.layer)
                }))
                .unwrap_or_else(|_| Err("internal error while fetching the layer".into())),
            )
        };
        let mut m = locked(&remote.prefetched);
        match outcome {
            Some(r) => m.insert(e.layer.digest.clone(), Some(r)),
            None => m.remove(&e.layer.digest),
        };
        drop(m);
        remote.prefetch_done.notify_all();
    };
    std::thread::scope(|sc| {
        for _ in 1..PREFETCH_JOBS.min(todo.len()) {
            sc.spawn(work);
        }
        work();
    });
}

/// Whether node `n` is on the target image's chain (its layer is in the image).
fn in_target(s: &Solver, n: NodeIndex) -> bool {
    target_chain(s).contains(&n)
}

fn target_chain(s: &Solver) -> HashSet<NodeIndex> {
    let g = &s.graph.graph;
    let mut chain = HashSet::new();
    let mut at = Some(s.graph.stages[s.graph.target].node);
    while let Some(n) = at {
        chain.insert(n);
        at = g
            .edges_directed(n, Direction::Incoming)
            .find(|e| *e.weight() == Input::Rootfs)
            .map(|e| e.source());
    }
    chain
}

/// The remote record of the step at the same place (Dockerfile name, stage, depth) under
/// another key, as a step index entry (`{"display", "doc"}`), for miss explanations.
pub(crate) fn previous(
    s: &Solver,
    n: NodeIndex,
    depth: usize,
    key: &CacheKey,
) -> Option<(CacheKey, Value)> {
    let remote = s.opts.remote.as_deref()?;
    let here = position(s, n, depth);
    let e = remote
        .entries
        .values()
        .filter(|e| e.record.position == here && e.record.key != *key)
        .min_by_key(|e| (e.source, e.record.key.clone()))?;
    let d = &e.record.description;
    let instruction = d.split_once("] ").map(|(_, i)| i).unwrap_or(d);
    // Remote text reaches the terminal: no control characters (escape sequences).
    Some((
        e.record.key.clone(),
        printable(
            &json!({"display": instruction, "doc": e.record.inputs, "remote": remote.sources[e.source].name()}),
        ),
    ))
}

/// The document a record's key was computed from: its inputs without a COPY's per-file map
/// (`content.files`), which rides along for miss explanations but is not part of the key (the
/// context digest covers the files).
fn key_document(inputs: &Value) -> std::borrow::Cow<'_, Value> {
    if inputs["content"].get("files").is_none() {
        return std::borrow::Cow::Borrowed(inputs);
    }
    let mut d = inputs.clone();
    if let Some(c) = d["content"].as_object_mut() {
        c.remove("files");
    }
    std::borrow::Cow::Owned(d)
}

/// A local record's inputs with the COPY's per-file map from the step index added (so an
/// importer can name the files that changed).
fn with_files(store: &Store, key: &CacheKey, mut inputs: Value) -> Result<Value, Error> {
    if inputs["content"].is_object() && inputs["content"].get("files").is_none() {
        if let Some(full) = store.step_index_inputs_of(key)? {
            let files = full["doc"]["content"]["files"].clone();
            if files.is_object() {
                inputs["content"]["files"] = files;
            }
        }
    }
    Ok(inputs)
}

/// `v` with control characters in every string replaced by `?`.
fn printable(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(clean(s)),
        Value::Array(a) => Value::Array(a.iter().map(printable).collect()),
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, v)| (clean(k), printable(v))).collect())
        }
        other => other.clone(),
    }
}

fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn position(s: &Solver, n: NodeIndex, depth: usize) -> Position {
    Position {
        dockerfile: std::path::Path::new(&s.opts.dockerfile)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        stage: s.graph.graph[n].stage,
        depth,
    }
}

/// The steps of this build that made a layer, with whether the target image contains them.
pub(crate) fn steps(s: &Solver, results: &HashMap<NodeIndex, Arc<NodeOut>>) -> Vec<StepRecord> {
    let g = &s.graph.graph;
    let in_target = target_chain(s);
    let mut out: Vec<StepRecord> = results
        .iter()
        .filter(|(n, _)| matches!(g[**n].op, Op::Exec(_) | Op::Copy(_) | Op::Mkdir { .. }))
        .filter_map(|(n, o)| {
            Some(StepRecord {
                key: o.key.clone(),
                diff_id: o.layers.last()?.diff_id.clone(),
                position: position(s, *n, o.depth),
                in_target: in_target.contains(n),
            })
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// The cache config exporting `steps` (all of them with `max`, else those of the target
/// image), with their layers compressed by `compression` (`None`: no layers listed, for the
/// inline form whose layers are the image's). Returns the config and the layer blobs to upload.
pub fn export_config(
    store: &Store,
    steps: &[StepRecord],
    max: bool,
    compression: Option<Compression>,
    remote: Option<&RemoteCache>,
) -> Result<(CacheConfig, Vec<Digest>), Error> {
    let mut config = CacheConfig {
        version: rbuild_cache::artifact::CONFIG_VERSION,
        ..Default::default()
    };
    let mut blobs = Vec::new();
    let mut seen = HashSet::new();
    for st in steps.iter().filter(|st| max || st.in_target) {
        // The local record has the inputs (and proves the layer was made for this key); a
        // remote hit never needed in this build has only its remote record, and its layer is
        // fetched now.
        let (description, inputs) = match store.cache_peek(&st.key)? {
            Some(rec) if rec.diff_id.as_ref() == Some(&st.diff_id) => {
                (rec.description, with_files(store, &st.key, rec.inputs)?)
            }
            Some(_) => continue,
            None => match remote.and_then(|r| Some((r, r.entries.get(&st.key)?))) {
                Some((r, e)) if e.layer.diff_id == st.diff_id => {
                    if r.sources[e.source].fetch(store, &e.layer).is_err() {
                        continue;
                    }
                    (e.record.description.clone(), e.record.inputs.clone())
                }
                _ => continue,
            },
        };
        if !rbuild_exporter::has_layer(store, &st.diff_id)? {
            continue;
        }
        if let Some(c) = compression {
            if seen.insert(st.diff_id.clone()) {
                let (digest, size, media_type) =
                    rbuild_exporter::compressed_layer(store, &st.diff_id, c)
                        .map_err(|e| e.for_layer_of(format!("cache export of {description}")))?;
                blobs.push(digest.clone());
                config.layers.push(LayerDesc {
                    digest,
                    size,
                    media_type,
                    diff_id: st.diff_id.clone(),
                });
            }
        }
        config.records.push(RemoteRecord {
            key: st.key.clone(),
            diff_id: st.diff_id.clone(),
            description,
            inputs,
            position: st.position.clone(),
        });
    }
    Ok((config, blobs))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nowhere;
    impl LayerSource for Nowhere {
        fn fetch(&self, _: &Store, _: &LayerDesc) -> Result<(), String> {
            Err("unreachable".into())
        }
        fn check(&self, _: &LayerDesc) -> Result<(), String> {
            Err("unreachable".into())
        }
        fn name(&self) -> String {
            "test".into()
        }
    }

    #[test]
    fn untrustworthy_records_are_dropped() {
        let inputs = json!({"v": 2, "op": "exec"});
        let layer = LayerDesc {
            digest: Digest::of(b"z"),
            size: 1,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            diff_id: Digest::of(b"t"),
        };
        let rec = |key: CacheKey, diff_id: Digest| RemoteRecord {
            key,
            diff_id,
            description: "RUN x".into(),
            inputs: inputs.clone(),
            position: Position {
                dockerfile: "Dockerfile".into(),
                stage: 0,
                depth: 1,
            },
        };
        let config = CacheConfig {
            version: 1,
            layers: vec![layer],
            records: vec![
                rec(key_of(&inputs), Digest::of(b"t")),
                rec(CacheKey::of(b"forged"), Digest::of(b"t")),
                rec(key_of(&inputs), Digest::of(b"unlisted")),
            ],
        };
        let mut rc = RemoteCache::new();
        let warnings = rc.add(config, Box::new(Nowhere));
        assert_eq!(rc.len(), 1);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("does not match its inputs"));
        assert!(warnings[1].contains("does not list"));
    }

    /// Counts its fetches; each succeeds.
    struct Counting(std::sync::atomic::AtomicUsize);
    impl LayerSource for Counting {
        fn fetch(&self, _: &Store, _: &LayerDesc) -> Result<(), String> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn check(&self, _: &LayerDesc) -> Result<(), String> {
            Ok(())
        }
        fn name(&self) -> String {
            "counting".into()
        }
    }

    #[test]
    fn a_hit_waits_for_the_prefetch_of_its_layer_and_gets_its_failure() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(&root.path().join("store")).unwrap();
        let inputs = json!({"v": 2, "op": "exec"});
        let layer = |n: &[u8]| LayerDesc {
            digest: Digest::of(n),
            size: 1,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            diff_id: Digest::of(n),
        };
        let mut rc = RemoteCache::new();
        rc.add(
            CacheConfig {
                version: 1,
                layers: vec![layer(b"a")],
                records: vec![RemoteRecord {
                    key: key_of(&inputs),
                    diff_id: Digest::of(b"a"),
                    description: "RUN x".into(),
                    inputs: inputs.clone(),
                    position: Position {
                        dockerfile: "Dockerfile".into(),
                        stage: 0,
                        depth: 1,
                    },
                }],
            },
            Box::new(Counting(AtomicUsize::new(0))),
        );
        let e = &rc.entries[&key_of(&inputs)];
        let digest = e.layer.digest.clone();
        // In flight: the hit waits until the prefetch ends, then finds the layer.
        locked(&rc.prefetched).insert(digest.clone(), None);
        std::thread::scope(|sc| {
            let waiter = sc.spawn(|| rc.fetch(&store, e));
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!waiter.is_finished(), "the hit must wait for the prefetch");
            locked(&rc.prefetched).insert(digest.clone(), Some(Ok(())));
            rc.prefetch_done.notify_all();
            assert_eq!(waiter.join().unwrap(), Ok(()));
        });
        // A failed prefetch is the hit's failure (a warning and a miss), not fetched again.
        locked(&rc.prefetched).insert(digest.clone(), Some(Err("tampered".into())));
        assert_eq!(rc.fetch(&store, e), Err("tampered".to_string()));
    }

    #[test]
    fn remote_text_is_made_printable() {
        let v = json!({"display": "RUN \u{1b}[2Jx", "doc": {"a\u{7}": ["ok", "\n"]}});
        let p = printable(&v);
        assert_eq!(p["display"], "RUN ?[2Jx");
        assert_eq!(p["doc"]["a?"][1], "?");
        assert_eq!(p["doc"]["a?"][0], "ok");
    }
}

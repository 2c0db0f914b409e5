//! Metadata records in meta.db: tags, layers, cache records, stat cache, pruning.

use std::collections::HashSet;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::str::FromStr;

use rbuild_types::{Digest, ImageRef};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::snapshots::SnapshotId;
use crate::{now, Store};

/// A cache key: the digest of a step's canonical encoding (op, inputs' keys, content digests).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CacheKey(Digest);

impl CacheKey {
    /// Wraps a digest computed by the caller.
    pub fn new(d: Digest) -> CacheKey {
        CacheKey(d)
    }

    /// The key of a canonical encoding: `sha256(bytes)`.
    pub fn of(bytes: &[u8]) -> CacheKey {
        CacheKey(Digest::of(bytes))
    }

    /// The underlying digest.
    pub fn digest(&self) -> &Digest {
        &self.0
    }
}

impl From<Digest> for CacheKey {
    fn from(d: Digest) -> Self {
        CacheKey(d)
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for CacheKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        s.parse::<Digest>()
            .map(CacheKey)
            .map_err(|_| Error::Invalid {
                what: "cache key",
                value: s.to_string(),
            })
    }
}

/// One cache record: the result of a step, found again by its key.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct CacheRecord {
    /// The step's cache key.
    pub key: CacheKey,
    /// The snapshot the step produced (None for config-only steps).
    pub snapshot: Option<SnapshotId>,
    /// The layer blob (uncompressed tar digest) made from the snapshot, once exported.
    pub diff_id: Option<Digest>,
    /// Size in bytes the record accounts for (for `du` and `prune --keep-storage`).
    pub size: u64,
    /// Human description: the step that made it, e.g. `[build 2/3] RUN make`.
    pub description: String,
    /// What made the key (instruction, parent key, file digests, args), for `cache inspect` and
    /// cache-miss explanations.
    pub inputs: serde_json::Value,
    /// Unix seconds; 0 in [`Store::cache_put`] means now.
    pub created: i64,
    /// Unix seconds; 0 in [`Store::cache_put`] means `created`.
    pub last_used: i64,
    /// How often [`Store::cache_get`] returned the record.
    pub usage_count: u64,
}

/// A row of the `layers` table (see [`Store::layer_info`]).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LayerInfo {
    /// The snapshot holding the layer's unpacked diff.
    pub snapshot: SnapshotId,
    /// Size of the uncompressed layer tar in bytes.
    pub size: u64,
    /// The layer was hashed from `snapshot` by rbuild's tar writer, which is deterministic: the
    /// same tar (same diff_id) can be written from it again. False for layers unpacked from a
    /// blob (a pulled layer's tar was written by another tool), whose blob is always kept.
    pub from_snapshot: bool,
    /// The mtime clamp (`SOURCE_DATE_EPOCH`) the tar was written with.
    pub mtime_clamp: Option<i64>,
}

/// An image tag.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TagRecord {
    /// The reference as given to [`Store::set_tag`] (normalised text, e.g. `web:v1`).
    pub name: String,
    /// Manifest digest.
    pub manifest: Digest,
    /// Unix seconds when the tag was last set.
    pub created: i64,
}

/// What the stat cache compares to decide a context file is unchanged.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FileStat {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub inode: u64,
}

impl FileStat {
    /// The stat of a file's metadata (from `symlink_metadata` or `metadata`).
    pub fn from_metadata(m: &std::fs::Metadata) -> FileStat {
        FileStat {
            size: m.size(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            inode: m.ino(),
        }
    }
}

/// A cache record as `rbuild du` shows it.
#[derive(Clone, PartialEq, Debug, Serialize)]
pub struct UsageRecord {
    /// The record.
    #[serde(flatten)]
    pub record: CacheRecord,
    /// False when a tagged image needs the record's layer (prune keeps it).
    pub reclaimable: bool,
}

/// Options of [`Store::prune`].
#[derive(Clone, Debug, Default)]
pub struct PruneOptions {
    /// Remove only records last used before this unix time.
    pub last_used_before: Option<i64>,
    /// Stop once the reclaimable records left total at most this many bytes.
    pub keep_storage: Option<u64>,
    /// Also remove the records whose layers tagged images use (`prune --all`): the layers and
    /// snapshots stay for the images, but no step is served from the cache any more.
    pub all: bool,
}

/// What [`Store::prune`] removed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PruneReport {
    /// Keys of removed records, least recently used first.
    pub removed: Vec<CacheKey>,
    /// Bytes the removed records accounted for.
    pub reclaimed: u64,
}

fn parse<T: FromStr>(what: &str, s: String) -> Result<T> {
    s.parse()
        .map_err(|_| Error::Corrupt(format!("{what} {s:?} in meta.db")))
}

type RawRecord = (
    String,
    Option<String>,
    Option<String>,
    i64,
    String,
    Option<String>,
    i64,
    i64,
    i64,
);

fn raw_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRecord> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
    ))
}

fn cook_record(raw: RawRecord) -> Result<CacheRecord> {
    let (key, snapshot, diff_id, size, description, inputs, created, last_used, usage) = raw;
    Ok(CacheRecord {
        key: parse("cache key", key)?,
        snapshot: snapshot.map(|s| parse("snapshot id", s)).transpose()?,
        diff_id: diff_id.map(|s| parse("diff_id", s)).transpose()?,
        size: size.max(0) as u64,
        description,
        inputs: match inputs.as_deref() {
            None => serde_json::Value::Null,
            Some(text) => serde_json::from_str(text)
                .map_err(|e| Error::Corrupt(format!("cache record inputs: {e}")))?,
        },
        created,
        last_used,
        usage_count: usage.max(0) as u64,
    })
}

const RECORD_COLUMNS: &str =
    "key, snapshot, diff_id, size, description, inputs, created, last_used, usage_count";
/// [`RECORD_COLUMNS`] with NULL for `inputs`.
const LIGHT_RECORD_COLUMNS: &str =
    "key, snapshot, diff_id, size, description, NULL, created, last_used, usage_count";

impl Store {
    pub(crate) fn record_snapshot(&self, id: &SnapshotId) -> Result<()> {
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO snapshots (id, created) VALUES (?1, ?2)",
                params![id.as_str(), now()],
            )
            .map_err(self.db_err("record snapshot"))?;
        Ok(())
    }

    // ---- layers ----

    /// Links a layer (its uncompressed tar digest) to the snapshot holding its unpacked diff,
    /// made from a tar blob that is in the store (a pulled, loaded or fetched layer).
    pub fn put_layer(&self, diff_id: &Digest, snapshot: &SnapshotId, size: u64) -> Result<()> {
        self.put_layer_row(diff_id, snapshot, size, false, None)
    }

    /// Links a layer to the snapshot it was hashed from by rbuild's tar writer (a built layer:
    /// no tar blob is written at build time). The tar is made again from that snapshot, its
    /// mtimes clamped to `mtime_clamp`, when a blob is needed; see [`LayerInfo`].
    pub fn put_snapshot_layer(
        &self,
        diff_id: &Digest,
        snapshot: &SnapshotId,
        size: u64,
        mtime_clamp: Option<i64>,
    ) -> Result<()> {
        self.put_layer_row(diff_id, snapshot, size, true, mtime_clamp)
    }

    fn put_layer_row(
        &self,
        diff_id: &Digest,
        snapshot: &SnapshotId,
        size: u64,
        from_snapshot: bool,
        mtime_clamp: Option<i64>,
    ) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO layers (diff_id, snapshot, size, created, from_snapshot, mtime_clamp)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(diff_id) DO UPDATE SET snapshot = excluded.snapshot,
                   size = excluded.size, from_snapshot = excluded.from_snapshot,
                   mtime_clamp = excluded.mtime_clamp",
                params![
                    diff_id.to_string(),
                    snapshot.as_str(),
                    size as i64,
                    now(),
                    from_snapshot as i64,
                    mtime_clamp
                ],
            )
            .map_err(self.db_err("put layer"))?;
        Ok(())
    }

    /// What the store records about a layer: its snapshot, tar size and whether the tar can be
    /// made again from the snapshot. `None` when no row exists (a layer known only as a blob).
    pub fn layer_info(&self, diff_id: &Digest) -> Result<Option<LayerInfo>> {
        let row: Option<(String, i64, i64, Option<i64>)> = self
            .conn()
            .query_row(
                "SELECT snapshot, size, from_snapshot, mtime_clamp FROM layers WHERE diff_id = ?1",
                [diff_id.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(self.db_err("get layer"))?;
        row.map(|(s, size, from, clamp)| {
            Ok(LayerInfo {
                snapshot: parse("snapshot id", s)?,
                size: size.max(0) as u64,
                from_snapshot: from != 0,
                mtime_clamp: clamp,
            })
        })
        .transpose()
    }

    /// The snapshot of a layer, if one is recorded.
    pub fn layer_snapshot(&self, diff_id: &Digest) -> Result<Option<SnapshotId>> {
        let s: Option<String> = self
            .conn()
            .query_row(
                "SELECT snapshot FROM layers WHERE diff_id = ?1",
                [diff_id.to_string()],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.db_err("get layer"))?;
        s.map(|s| parse("snapshot id", s)).transpose()
    }

    /// Records a layer kept only as its compressed blob (a remote cache hit or a pulled layer
    /// not unpacked yet): `compressed_layers` gets `digest` (already a verified blob) and, when
    /// the layer has no `layers` row, one is added whose snapshot id is reserved but not made
    /// (see `rbuild_exporter::ensure_snapshot`, which makes it on demand from the blob). One
    /// transaction: a crash leaves either both rows or neither. Returns the layer's snapshot id
    /// (the existing one when the layer had a row).
    pub fn put_lazy_layer(
        &self,
        diff_id: &Digest,
        size: u64,
        algorithm: &str,
        digest: &Digest,
        compressed_size: u64,
    ) -> Result<SnapshotId> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.db_err("put lazy layer"))?;
        tx.execute(
            "INSERT OR REPLACE INTO compressed_layers (diff_id, algorithm, digest, size)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                diff_id.to_string(),
                algorithm,
                digest.to_string(),
                compressed_size as i64
            ],
        )
        .map_err(self.db_err("put lazy layer"))?;
        tx.execute(
            "INSERT OR IGNORE INTO layers (diff_id, snapshot, size, created) VALUES (?1, ?2, ?3, ?4)",
            params![
                diff_id.to_string(),
                SnapshotId::reserve().as_str(),
                size as i64,
                now()
            ],
        )
        .map_err(self.db_err("put lazy layer"))?;
        let s: String = tx
            .query_row(
                "SELECT snapshot FROM layers WHERE diff_id = ?1",
                [diff_id.to_string()],
                |r| r.get(0),
            )
            .map_err(self.db_err("put lazy layer"))?;
        tx.commit().map_err(self.db_err("put lazy layer"))?;
        parse("snapshot id", s)
    }

    /// Every present compressed blob of a layer (algorithm, digest).
    pub fn compressed_layers_of(&self, diff_id: &Digest) -> Result<Vec<(String, Digest)>> {
        let rows: Vec<(String, String)> = {
            let conn = self.conn();
            let mut st = conn
                .prepare("SELECT algorithm, digest FROM compressed_layers WHERE diff_id = ?1 ORDER BY algorithm")
                .map_err(self.db_err("list compressed layers"))?;
            let rows = st
                .query_map([diff_id.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(self.db_err("list compressed layers"))?
                .collect::<rusqlite::Result<_>>()
                .map_err(self.db_err("list compressed layers"))?;
            rows
        };
        let mut out = Vec::new();
        for (a, d) in rows {
            let d: Digest = parse("digest", d)?;
            if self.has_blob(&d) {
                out.push((a, d));
            }
        }
        Ok(out)
    }

    /// Records that `digest` is the blob of layer `diff_id` compressed with `algorithm`
    /// (`gzip`, `zstd`), so outputs and pushes compress each layer once.
    pub fn put_compressed_layer(
        &self,
        diff_id: &Digest,
        algorithm: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<()> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO compressed_layers (diff_id, algorithm, digest, size)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    diff_id.to_string(),
                    algorithm,
                    digest.to_string(),
                    size as i64
                ],
            )
            .map_err(self.db_err("put compressed layer"))?;
        Ok(())
    }

    /// The compressed blob of a layer, when one was made before and is still present.
    pub fn compressed_layer(
        &self,
        diff_id: &Digest,
        algorithm: &str,
    ) -> Result<Option<(Digest, u64)>> {
        let row: Option<(String, i64)> = self
            .conn()
            .query_row(
                "SELECT digest, size FROM compressed_layers WHERE diff_id = ?1 AND algorithm = ?2",
                params![diff_id.to_string(), algorithm],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.db_err("get compressed layer"))?;
        match row {
            Some((d, size)) => {
                let d: Digest = parse("digest", d)?;
                Ok(self.has_blob(&d).then_some((d, size.max(0) as u64)))
            }
            None => Ok(None),
        }
    }

    // ---- tags ----

    /// Points the tag `name` at a manifest (replacing what it pointed at).
    pub fn set_tag(&self, name: &ImageRef, manifest: &Digest) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO images (name, manifest, created) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET manifest = excluded.manifest, created = excluded.created
                 WHERE images.manifest <> excluded.manifest",
                params![name.to_string(), manifest.to_string(), now()],
            )
            .map_err(self.db_err("set tag"))?;
        Ok(())
    }

    /// The manifest a tag points at.
    pub fn get_tag(&self, name: &ImageRef) -> Result<Option<Digest>> {
        let s: Option<String> = self
            .conn()
            .query_row(
                "SELECT manifest FROM images WHERE name = ?1",
                [name.to_string()],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.db_err("get tag"))?;
        s.map(|s| parse("manifest digest", s)).transpose()
    }

    /// Removes a tag; returns whether it existed. Blobs stay until pruned.
    pub fn remove_tag(&self, name: &ImageRef) -> Result<bool> {
        let n = self
            .conn()
            .execute("DELETE FROM images WHERE name = ?1", [name.to_string()])
            .map_err(self.db_err("remove tag"))?;
        Ok(n > 0)
    }

    /// All tags, sorted by name.
    pub fn list_tags(&self) -> Result<Vec<TagRecord>> {
        let rows: Vec<(String, String, i64)> = {
            let conn = self.conn();
            let mut st = conn
                .prepare("SELECT name, manifest, created FROM images ORDER BY name")
                .map_err(self.db_err("list tags"))?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(self.db_err("list tags"))?
                .collect::<rusqlite::Result<_>>()
                .map_err(self.db_err("list tags"))?;
            rows
        };
        rows.into_iter()
            .map(|(name, m, created)| {
                Ok(TagRecord {
                    name,
                    manifest: parse("manifest digest", m)?,
                    created,
                })
            })
            .collect()
    }

    // ---- cache records ----

    /// Looks a key up; on a hit updates `last_used` and `usage_count` and returns the updated record.
    pub fn cache_get(&self, key: &CacheKey) -> Result<Option<CacheRecord>> {
        self.cache_get_columns(key, RECORD_COLUMNS)
    }

    /// [`Store::cache_get`] without the record's input document (`inputs` is `null`): what a
    /// build's cache lookup needs. The document of a COPY from a big context holds every file's
    /// digest; reading and parsing it on every hit would cost more than the rest of a no-op.
    pub fn cache_hit(&self, key: &CacheKey) -> Result<Option<CacheRecord>> {
        self.cache_get_columns(key, LIGHT_RECORD_COLUMNS)
    }

    fn cache_get_columns(&self, key: &CacheKey, columns: &str) -> Result<Option<CacheRecord>> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.db_err("begin cache get"))?;
        let n = tx
            .execute(
                "UPDATE cache_records SET last_used = ?2, usage_count = usage_count + 1 WHERE key = ?1",
                params![key.to_string(), now()],
            )
            .map_err(self.db_err("update cache record"))?;
        if n == 0 {
            return Ok(None);
        }
        let raw = tx
            .query_row(
                &format!("SELECT {columns} FROM cache_records WHERE key = ?1"),
                [key.to_string()],
                raw_record,
            )
            .map_err(self.db_err("get cache record"))?;
        tx.commit().map_err(self.db_err("commit cache get"))?;
        cook_record(raw).map(Some)
    }

    /// Reads a record without counting a use (for `cache inspect`).
    pub fn cache_peek(&self, key: &CacheKey) -> Result<Option<CacheRecord>> {
        let raw = self
            .conn()
            .query_row(
                &format!("SELECT {RECORD_COLUMNS} FROM cache_records WHERE key = ?1"),
                [key.to_string()],
                raw_record,
            )
            .optional()
            .map_err(self.db_err("get cache record"))?;
        raw.map(cook_record).transpose()
    }

    /// Inserts or replaces a record. `created == 0` means now, `last_used == 0` means `created`.
    pub fn cache_put(&self, rec: &CacheRecord) -> Result<()> {
        let created = if rec.created == 0 { now() } else { rec.created };
        let last_used = if rec.last_used == 0 {
            created
        } else {
            rec.last_used
        };
        self.conn()
            .execute(
                &format!(
                    "INSERT OR REPLACE INTO cache_records ({RECORD_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
                ),
                params![
                    rec.key.to_string(),
                    rec.snapshot.as_ref().map(|s| s.as_str().to_string()),
                    rec.diff_id.as_ref().map(|d| d.to_string()),
                    rec.size as i64,
                    rec.description,
                    rec.inputs.to_string(),
                    created,
                    last_used,
                    rec.usage_count as i64,
                ],
            )
            .map_err(self.db_err("put cache record"))?;
        Ok(())
    }

    /// All cache records, most recently used first.
    pub fn cache_records(&self) -> Result<Vec<CacheRecord>> {
        let raws: Vec<RawRecord> = {
            let conn = self.conn();
            let mut st = conn
                .prepare(&format!(
                    "SELECT {RECORD_COLUMNS} FROM cache_records ORDER BY last_used DESC, key"
                ))
                .map_err(self.db_err("list cache records"))?;
            let rows = st
                .query_map([], raw_record)
                .map_err(self.db_err("list cache records"))?
                .collect::<rusqlite::Result<_>>()
                .map_err(self.db_err("list cache records"))?;
            rows
        };
        raws.into_iter().map(cook_record).collect()
    }

    // ---- usage and pruning ----

    /// Layer diff_ids and blobs a tagged image needs (manifest, config, layers, and the
    /// compressed variants of those layers).
    fn protected(&self) -> Result<(HashSet<Digest>, HashSet<SnapshotId>)> {
        let mut blobs = HashSet::new();
        for tag in self.list_tags()? {
            blobs.insert(tag.manifest.clone());
            let Ok(data) = self.read_blob(&tag.manifest) else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&data) else {
                continue;
            };
            let mut push = |d: &serde_json::Value| {
                if let Some(d) = d.get("digest").and_then(|d| d.as_str()) {
                    if let Ok(d) = d.parse::<Digest>() {
                        blobs.insert(d);
                    }
                }
            };
            if let Some(c) = v.get("config") {
                push(c);
            }
            for l in v
                .get("layers")
                .and_then(|l| l.as_array())
                .into_iter()
                .flatten()
            {
                push(l);
            }
        }
        let mut snaps = HashSet::new();
        for d in blobs.iter() {
            if let Some(s) = self.layer_snapshot(d)? {
                snaps.insert(s);
            }
        }
        Ok((blobs, snaps))
    }

    /// Cache records with whether pruning may remove them (for `rbuild du`).
    pub fn disk_usage(&self) -> Result<Vec<UsageRecord>> {
        let (blobs, snaps) = self.protected()?;
        Ok(self
            .cache_records()?
            .into_iter()
            .map(|record| {
                let needed = record.diff_id.as_ref().is_some_and(|d| blobs.contains(d))
                    || record.snapshot.as_ref().is_some_and(|s| snaps.contains(s));
                UsageRecord {
                    record,
                    reclaimable: !needed,
                }
            })
            .collect())
    }

    /// Removes reclaimable cache records (with [`PruneOptions::all`], every selected record),
    /// least recently used first, with their snapshots and layer blobs when nothing else
    /// (another record, a tagged image) uses them. Records whose key is locked by a running build
    /// are skipped. Never removes a layer or snapshot a tagged image needs.
    pub fn prune(&self, opts: &PruneOptions) -> Result<PruneReport> {
        let mut usage: Vec<UsageRecord> = self
            .disk_usage()?
            .into_iter()
            .filter(|u| opts.all || u.reclaimable)
            .collect();
        usage.sort_by_key(|u| u.record.last_used);
        let mut remaining: u64 = usage.iter().map(|u| u.record.size).sum();
        let mut report = PruneReport::default();
        for u in usage {
            if let Some(keep) = opts.keep_storage {
                if remaining <= keep {
                    break;
                }
            }
            if let Some(before) = opts.last_used_before {
                if u.record.last_used >= before {
                    continue;
                }
            }
            let lock_path = self
                .root()
                .join("locks")
                .join(format!("key-{}", u.record.key.digest().hex()));
            let Some(_lock) = crate::KeyLock::acquire(&lock_path, false)? else {
                continue;
            };
            // A record whose snapshot a running build or container uses stays (its space
            // could not be reclaimed now anyway).
            let _in_use = match &u.record.snapshot {
                Some(s) => match self.lock_unused_snapshot(s)? {
                    Some(l) => Some(l),
                    None => continue,
                },
                None => None,
            };
            self.conn()
                .execute(
                    "DELETE FROM cache_records WHERE key = ?1",
                    [u.record.key.to_string()],
                )
                .map_err(self.db_err("delete cache record"))?;
            let _ = std::fs::remove_file(&lock_path);
            remaining -= u.record.size;
            if u.reclaimable {
                // A needed record's layer stays for its image: nothing is freed.
                report.reclaimed += u.record.size;
            }
            report.removed.push(u.record.key.clone());
        }
        self.collect_garbage()?;
        Ok(report)
    }

    /// Removes snapshots and layer blobs recorded in meta.db that no cache record and no tagged
    /// image uses any more.
    fn collect_garbage(&self) -> Result<()> {
        let (blobs, mut keep_snaps) = self.protected()?;
        let mut keep_layers: HashSet<Digest> = blobs;
        for r in self.cache_records()? {
            if let Some(s) = r.snapshot {
                keep_snaps.insert(s);
            }
            if let Some(d) = r.diff_id {
                keep_layers.insert(d);
            }
        }
        // Layers: a layer stays if kept by digest; its snapshot then stays too.
        let layers: Vec<(String, String)> = {
            let conn = self.conn();
            let mut st = conn
                .prepare("SELECT diff_id, snapshot FROM layers")
                .map_err(self.db_err("list layers"))?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(self.db_err("list layers"))?
                .collect::<rusqlite::Result<_>>()
                .map_err(self.db_err("list layers"))?;
            rows
        };
        for (d, s) in &layers {
            let d: Digest = parse("diff_id", d.clone())?;
            let s: SnapshotId = parse("snapshot id", s.clone())?;
            if keep_layers.contains(&d) || keep_snaps.contains(&s) {
                keep_layers.insert(d);
                keep_snaps.insert(s);
            }
        }
        for (d, s) in layers {
            let d: Digest = parse("diff_id", d)?;
            if keep_layers.contains(&d) {
                continue;
            }
            let s: SnapshotId = parse("snapshot id", s)?;
            if keep_snaps.contains(&s) {
                self.remove_layer(&d)?;
                continue;
            }
            // A snapshot in use keeps its layer blob too: the build using it needs the blob for
            // its image.
            let Some(_unused) = self.lock_unused_snapshot(&s)? else {
                continue;
            };
            self.remove_layer(&d)?;
            self.remove_snapshot(&s)?;
        }
        // Snapshots recorded but referenced by nothing (e.g. records replaced).
        let snaps: Vec<String> = {
            let conn = self.conn();
            let mut st = conn
                .prepare("SELECT id FROM snapshots")
                .map_err(self.db_err("list snapshots"))?;
            let rows = st
                .query_map([], |r| r.get(0))
                .map_err(self.db_err("list snapshots"))?
                .collect::<rusqlite::Result<_>>()
                .map_err(self.db_err("list snapshots"))?;
            rows
        };
        let cutoff = now() - 3600;
        for s in snaps {
            let s: SnapshotId = parse("snapshot id", s)?;
            if keep_snaps.contains(&s) {
                continue;
            }
            let created: i64 = self
                .conn()
                .query_row(
                    "SELECT created FROM snapshots WHERE id = ?1",
                    [s.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(self.db_err("get snapshot"))?
                .unwrap_or(0);
            // A young unreferenced snapshot may belong to a build that has not recorded it yet.
            if created < cutoff {
                if let Some(_unused) = self.lock_unused_snapshot(&s)? {
                    self.remove_snapshot(&s)?;
                }
            }
        }
        Ok(())
    }

    fn remove_layer(&self, diff_id: &Digest) -> Result<()> {
        let compressed: Vec<String> = {
            let conn = self.conn();
            let mut st = conn
                .prepare("SELECT digest FROM compressed_layers WHERE diff_id = ?1")
                .map_err(self.db_err("list compressed layers"))?;
            let rows = st
                .query_map([diff_id.to_string()], |r| r.get(0))
                .map_err(self.db_err("list compressed layers"))?
                .collect::<rusqlite::Result<_>>()
                .map_err(self.db_err("list compressed layers"))?;
            rows
        };
        {
            let conn = self.conn();
            conn.execute(
                "DELETE FROM layers WHERE diff_id = ?1",
                [diff_id.to_string()],
            )
            .map_err(self.db_err("delete layer"))?;
            conn.execute(
                "DELETE FROM compressed_layers WHERE diff_id = ?1",
                [diff_id.to_string()],
            )
            .map_err(self.db_err("delete compressed layers"))?;
        }
        for d in compressed
            .into_iter()
            .chain(std::iter::once(diff_id.to_string()))
        {
            if let Ok(d) = d.parse::<Digest>() {
                let p = self.blob_path(&d);
                match std::fs::remove_file(&p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(Error::io("remove", &p)(e))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Removes a snapshot; the caller holds its usage lock exclusively (see
    /// [`Store::use_snapshot`]). The lock file goes too: a user that opened it before sees the
    /// snapshot missing once it gets the lock.
    fn remove_snapshot(&self, id: &SnapshotId) -> Result<()> {
        let dir = self.root().join("snapshots").join(id.as_str());
        crate::snapshots::remove_tree(&dir).map_err(Error::io("remove", &dir))?;
        let _ = std::fs::remove_file(
            self.root()
                .join("locks")
                .join(format!("snap-{}", id.as_str())),
        );
        let conn = self.conn();
        conn.execute("DELETE FROM snapshots WHERE id = ?1", [id.as_str()])
            .map_err(self.db_err("delete snapshot"))?;
        conn.execute("DELETE FROM layers WHERE snapshot = ?1", [id.as_str()])
            .map_err(self.db_err("delete layers of snapshot"))?;
        Ok(())
    }
}

/// The SQL schema of meta.db (current version), for documentation.
pub fn schema_sql() -> &'static str {
    crate::db::schema()
}

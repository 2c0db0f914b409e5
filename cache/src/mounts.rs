//! Cache mounts (`RUN --mount=type=cache`) and the step index used to explain cache misses.
//!
//! A cache mount is a directory `cachemounts/<sha256(id)>` that persists across builds and never
//! becomes part of a layer. It is created complete (initialised in `ingest/`, then renamed), so a
//! crash during initialisation leaves nothing. Users hold `locks/cm-<hex>`: shared users a shared
//! flock, `locked` users an exclusive one (waiting), `private` users an exclusive one if free and a
//! fresh throw-away directory otherwise. Pruning takes the exclusive lock without waiting, so a
//! mount in use is never removed.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rusqlite::{params, OptionalExtension};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::locks::flock;
use crate::records::CacheKey;
use crate::{now, random_name, Store};

/// How many previous keys the step index keeps per step.
const INDEX_KEEP: i64 = 8;

/// `sharing=` of a cache mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sharing {
    /// Any number of concurrent users (the default).
    Shared,
    /// One user at a time; others wait.
    Locked,
    /// One user at a time; others get a fresh, empty directory discarded after use.
    Private,
}

/// A cache mount in use; its lock is released (and a throw-away directory removed) on drop.
#[derive(Debug)]
pub struct CacheMountGuard {
    dir: PathBuf,
    _lock: File,
    throwaway: bool,
}

impl CacheMountGuard {
    /// The directory to mount.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for CacheMountGuard {
    fn drop(&mut self) {
        if self.throwaway {
            let _ = crate::snapshots::remove_tree(&self.dir);
        }
    }
}

/// A cache mount as `rbuild du` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CacheMountRecord {
    /// The mount's id.
    pub id: String,
    /// Directory name under `cachemounts/`.
    pub dir: String,
    /// Bytes used (sum of file sizes).
    pub size: u64,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds.
    pub last_used: i64,
    /// How many RUN steps used it.
    pub usage_count: u64,
}

fn dir_name(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

fn tree_size(p: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else {
                total += md.blocks() * 512;
            }
        }
    }
    total
}

impl Store {
    fn open_lock(&self, name: &str) -> Result<File> {
        let p = self.root().join("locks").join(name);
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(Error::io("open lock", &p))
    }

    /// Takes the cache mount `id` for one RUN step. On first use the directory is created by
    /// `init` (which sets ownership/mode or copies seed content) in `ingest/` and renamed into
    /// place, so a crash never leaves a half-initialised mount.
    pub fn cache_mount(
        &self,
        id: &str,
        sharing: Sharing,
        init: impl FnOnce(&Path) -> io::Result<()>,
    ) -> Result<CacheMountGuard> {
        let name = dir_name(id);
        let base = self.root().join("cachemounts");
        fs::create_dir_all(&base).map_err(Error::io("create", &base))?;
        let dir = base.join(&name);
        let lock = self.open_lock(&format!("cm-{name}"))?;
        let lock_path = self.root().join("locks").join(format!("cm-{name}"));
        let lock_err = Error::io("lock", &lock_path);
        let (lock, throwaway) = match sharing {
            Sharing::Shared => {
                flock(&lock, true, false).map_err(lock_err)?;
                (lock, false)
            }
            Sharing::Locked => {
                flock(&lock, false, false).map_err(lock_err)?;
                (lock, false)
            }
            Sharing::Private => {
                if flock(&lock, false, true).map_err(lock_err)? {
                    (lock, false)
                } else {
                    (lock, true)
                }
            }
        };
        if throwaway {
            let tmp = base.join(format!("private-{}", random_name(12)));
            fs::create_dir(&tmp).map_err(Error::io("create", &tmp))?;
            init(&tmp).map_err(Error::io("initialise cache mount", &tmp))?;
            return Ok(CacheMountGuard {
                dir: tmp,
                _lock: lock,
                throwaway: true,
            });
        }
        if !dir.is_dir() {
            // Initialise once, under an exclusive creation lock.
            let init_lock = self.open_lock(&format!("cminit-{name}"))?;
            flock(&init_lock, false, false)
                .map_err(Error::io("lock", self.root().join("locks")))?;
            if !dir.is_dir() {
                let tmp = self
                    .root()
                    .join("ingest")
                    .join(format!("cm-{}", random_name(12)));
                fs::create_dir(&tmp).map_err(Error::io("create", &tmp))?;
                let guard = File::open(&tmp).map_err(Error::io("open", &tmp))?;
                flock(&guard, false, false).map_err(Error::io("lock", &tmp))?;
                if let Err(e) = init(&tmp) {
                    let _ = crate::snapshots::remove_tree(&tmp);
                    return Err(Error::io("initialise cache mount", &tmp)(e));
                }
                fs::rename(&tmp, &dir).map_err(Error::io("rename cache mount to", &dir))?;
                crate::fsync_dir(&base)?;
                let t = now();
                self.conn()
                    .execute(
                        "INSERT OR REPLACE INTO cache_mounts (id, dir, created, last_used, usage_count)
                         VALUES (?1, ?2, ?3, ?3, 0)",
                        params![id, name, t],
                    )
                    .map_err(self.db_err("record cache mount"))?;
            }
        }
        self.conn()
            .execute(
                "INSERT INTO cache_mounts (id, dir, created, last_used, usage_count)
                 VALUES (?1, ?2, ?3, ?3, 1)
                 ON CONFLICT(id) DO UPDATE SET last_used = ?3, usage_count = usage_count + 1",
                params![id, name, now()],
            )
            .map_err(self.db_err("update cache mount"))?;
        Ok(CacheMountGuard {
            dir,
            _lock: lock,
            throwaway: false,
        })
    }

    /// Every cache mount with its size, most recently used first.
    pub fn cache_mounts(&self) -> Result<Vec<CacheMountRecord>> {
        let rows: Vec<(String, String, i64, i64, i64)> = {
            let conn = self.conn();
            let mut st = conn
                .prepare("SELECT id, dir, created, last_used, usage_count FROM cache_mounts ORDER BY last_used DESC, id")
                .map_err(self.db_err("list cache mounts"))?;
            let rows = st
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .map_err(self.db_err("list cache mounts"))?
                .collect::<rusqlite::Result<_>>()
                .map_err(self.db_err("list cache mounts"))?;
            rows
        };
        Ok(rows
            .into_iter()
            .map(|(id, dir, created, last_used, usage)| CacheMountRecord {
                size: tree_size(&self.root().join("cachemounts").join(&dir)),
                id,
                dir,
                created,
                last_used,
                usage_count: usage.max(0) as u64,
            })
            .collect())
    }

    /// Removes a cache mount unless a build is using it; returns whether it was removed.
    pub fn remove_cache_mount(&self, id: &str) -> Result<bool> {
        let name = dir_name(id);
        let lock = self.open_lock(&format!("cm-{name}"))?;
        if !flock(&lock, false, true).map_err(Error::io("lock", self.root().join("locks")))? {
            return Ok(false);
        }
        let dir = self.root().join("cachemounts").join(&name);
        // Rename first so a crash mid-removal never leaves a half-empty mount in place.
        let doomed = self
            .root()
            .join("ingest")
            .join(format!("rm-{}", random_name(12)));
        match fs::rename(&dir, &doomed) {
            Ok(()) => {
                crate::snapshots::remove_tree(&doomed).map_err(Error::io("remove", &doomed))?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &dir)(e)),
        }
        self.conn()
            .execute("DELETE FROM cache_mounts WHERE id = ?1", [id])
            .map_err(self.db_err("delete cache mount"))?;
        Ok(true)
    }

    // ---- step index ----

    /// Remembers that the step `identity` (a Dockerfile step, independent of its content) had
    /// `key`, computed from `inputs`. Keeps the most recent few keys per step. When the step
    /// already had `key`, only its use time changes: the inputs (which can be megabytes for a
    /// COPY of a big context) are neither serialised nor rewritten.
    pub fn step_index_put(
        &self,
        identity: &str,
        key: &CacheKey,
        inputs: &serde_json::Value,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn
            .transaction()
            .map_err(self.db_err("begin step index put"))?;
        // Nanoseconds: two builds in the same second still order correctly.
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
        let key_text = key.to_string();
        let touched = tx
            .execute(
                "UPDATE step_index SET used = ?3 WHERE identity = ?1 AND key = ?2",
                params![identity, key_text, now],
            )
            .map_err(self.db_err("touch step index"))?;
        if touched == 0 {
            tx.execute(
                "INSERT INTO step_index (identity, key, inputs, used) VALUES (?1, ?2, ?3, ?4)",
                params![identity, key_text, inputs.to_string(), now],
            )
            .map_err(self.db_err("put step index"))?;
            tx.execute(
                "DELETE FROM step_index WHERE identity = ?1 AND key NOT IN
                 (SELECT key FROM step_index WHERE identity = ?1 ORDER BY used DESC, rowid DESC LIMIT ?2)",
                params![identity, INDEX_KEEP],
            )
            .map_err(self.db_err("trim step index"))?;
        }
        tx.commit().map_err(self.db_err("commit step index put"))?;
        Ok(())
    }

    /// Marks `key` as the step's most recent key when the step index has it already (the
    /// inputs are left as they are); false when it does not (then call
    /// [`Store::step_index_put`]).
    /// Nothing is written when `key` is the step's most recent key already (a no-op rebuild):
    /// an update rewrites the whole row, whose inputs can be megabytes.
    pub fn step_index_touch(&self, identity: &str, key: &CacheKey) -> Result<bool> {
        let conn = self.conn();
        let latest: Option<String> = conn
            .query_row(
                "SELECT key FROM step_index WHERE identity = ?1 ORDER BY used DESC, rowid DESC LIMIT 1",
                params![identity],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.db_err("get step index"))?;
        let key_text = key.to_string();
        if latest.as_deref() == Some(key_text.as_str()) {
            return Ok(true);
        }
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
        let n = conn
            .execute(
                "UPDATE step_index SET used = ?3 WHERE identity = ?1 AND key = ?2",
                params![identity, key_text, now],
            )
            .map_err(self.db_err("touch step index"))?;
        Ok(n > 0)
    }

    /// The most recent document the step index holds for `key` (any step), if any: the full
    /// inputs of a step (a COPY's per-file digests), which its cache record leaves out.
    pub fn step_index_inputs_of(&self, key: &CacheKey) -> Result<Option<serde_json::Value>> {
        let text: Option<String> = self
            .conn()
            .query_row(
                "SELECT inputs FROM step_index WHERE key = ?1 ORDER BY used DESC LIMIT 1",
                params![key.to_string()],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.db_err("get step index"))?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|e| Error::Corrupt(format!("step index inputs: {e}")))
        })
        .transpose()
    }

    /// The key step `identity` had most recently, with its inputs.
    pub fn step_index_latest(
        &self,
        identity: &str,
    ) -> Result<Option<(CacheKey, serde_json::Value)>> {
        self.step_index_latest_unless(identity, None)
    }

    /// [`Store::step_index_latest`], but `None` without reading the inputs when the most recent
    /// key is `unless` (a no-op rebuild does not parse the previous document).
    pub fn step_index_latest_unless(
        &self,
        identity: &str,
        unless: Option<&CacheKey>,
    ) -> Result<Option<(CacheKey, serde_json::Value)>> {
        let conn = self.conn();
        let row: Option<(i64, String)> = conn
            .query_row(
                "SELECT rowid, key FROM step_index WHERE identity = ?1
                 ORDER BY used DESC, rowid DESC LIMIT 1",
                params![identity],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.db_err("get step index"))?;
        let Some((rowid, k)) = row else {
            return Ok(None);
        };
        let k: CacheKey = k
            .parse()
            .map_err(|_| Error::Corrupt(format!("step index key {k:?}")))?;
        if unless == Some(&k) {
            return Ok(None);
        }
        let inputs: String = conn
            .query_row(
                "SELECT inputs FROM step_index WHERE rowid = ?1",
                params![rowid],
                |r| r.get(0),
            )
            .map_err(self.db_err("get step index"))?;
        let v = serde_json::from_str(&inputs)
            .map_err(|e| Error::Corrupt(format!("step index inputs: {e}")))?;
        Ok(Some((k, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbuild_types::Digest;

    #[test]
    fn cache_mount_persists_and_private_gets_fresh_when_busy() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let m = s
            .cache_mount("go", Sharing::Private, |p| fs::write(p.join("seed"), "1"))
            .unwrap();
        fs::write(m.dir().join("x"), "y").unwrap();
        let busy = s.cache_mount("go", Sharing::Private, |_| Ok(())).unwrap();
        assert_ne!(busy.dir(), m.dir());
        assert!(!busy.dir().join("x").exists());
        let busy_dir = busy.dir().to_path_buf();
        drop(busy);
        assert!(
            !busy_dir.exists(),
            "throw-away private mount must be removed"
        );
        assert!(!s.remove_cache_mount("go").unwrap(), "in use: not removed");
        drop(m);
        let again = s.cache_mount("go", Sharing::Locked, |_| Ok(())).unwrap();
        assert_eq!(fs::read_to_string(again.dir().join("x")).unwrap(), "y");
        assert_eq!(fs::read_to_string(again.dir().join("seed")).unwrap(), "1");
        drop(again);
        let list = s.cache_mounts().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].usage_count, 2);
        assert!(list[0].size > 0);
        assert!(s.remove_cache_mount("go").unwrap());
        assert!(s.cache_mounts().unwrap().is_empty());
    }

    #[test]
    fn step_index_returns_the_latest_key() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let k1 = CacheKey::new(Digest::of(b"1"));
        let k2 = CacheKey::new(Digest::of(b"2"));
        assert!(s.step_index_latest("a").unwrap().is_none());
        s.step_index_put("a", &k1, &serde_json::json!({"n": 1}))
            .unwrap();
        s.step_index_put("a", &k2, &serde_json::json!({"n": 2}))
            .unwrap();
        let (k, v) = s.step_index_latest("a").unwrap().unwrap();
        assert_eq!((k, v["n"].as_i64()), (k2.clone(), Some(2)));
        s.step_index_put("a", &k1, &serde_json::json!({"n": 1}))
            .unwrap();
        let (k, _) = s.step_index_latest("a").unwrap().unwrap();
        assert_eq!(k, k1);
        assert!(s
            .step_index_latest_unless("a", Some(&k1))
            .unwrap()
            .is_none());
        assert!(s.step_index_touch("a", &k2).unwrap());
        assert!(!s
            .step_index_touch("a", &CacheKey::new(Digest::of(b"new")))
            .unwrap());
        assert_eq!(s.step_index_latest("a").unwrap().unwrap().0, k2);
        assert!(s.step_index_touch("a", &k2).unwrap(), "already the latest");
        assert_eq!(
            s.step_index_inputs_of(&k2).unwrap().unwrap()["n"].as_i64(),
            Some(2)
        );
        assert!(s
            .step_index_inputs_of(&CacheKey::new(Digest::of(b"none")))
            .unwrap()
            .is_none());
        s.step_index_put("a", &k1, &serde_json::json!({"n": 1}))
            .unwrap();
        let (k, v) = s.step_index_latest_unless("a", Some(&k2)).unwrap().unwrap();
        assert_eq!((k, v["n"].as_i64()), (k1.clone(), Some(1)));
        assert!(s.step_index_latest("b").unwrap().is_none());
        for i in 0..20u8 {
            s.step_index_put("a", &CacheKey::new(Digest::of(&[i])), &serde_json::json!(i))
                .unwrap();
        }
        let n: i64 = s
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM step_index WHERE identity = 'a'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, INDEX_KEEP, "the index keeps a bounded history per step");
    }
}

//! The rbuild store: one directory shared by every rbuild process on the machine.
//!
//! ```text
//! blobs/sha256/<hex>     immutable content (layer tars, configs, manifests), verified before rename;
//!                        a built layer has none until an export makes it from its snapshot
//! ingest/<rand>          partial blob writes (flocked while in progress)
//! snapshots/<id>/fs      committed snapshots: one layer's diff each (overlay lowerdirs)
//! snapshots/tmp-<rand>/  snapshots being written (fs/ + work/; flocked while in progress)
//! locks/<name>           per-key and per-snapshot lock files (flock)
//! cachemounts/<hex>/     `RUN --mount=type=cache` directories (never part of a layer)
//! ctxindex/<hex>         context indexes: per COPY selection, the stat and digest of each file
//! meta.db                SQLite (WAL): tags, layers, snapshots, cache records, stat cache
//! ```
//!
//! Crash safety: blobs and snapshots appear only by `rename` after their content is complete
//! (and, for blobs, verified and fsynced); every metadata change is one SQLite transaction.
//! [`Store::open`] removes leftovers of crashed writers: entries of `ingest/` and
//! `snapshots/tmp-*` whose flock nobody holds. Concurrent processes are safe: in-progress
//! entries are flocked by their writer, and SQLite serializes metadata writes (busy timeout 30 s).
//!
//! The store is private: its root and top-level directories are 0700 and `meta.db` 0600, created
//! so or tightened by [`Store::open`], so no other local user can run a setuid binary out of a
//! snapshot, read build-arg values from the database or hold a lock file to stall builds.
//!
//! The store knows nothing of Dockerfiles; it stores what the solver and exporter give it.
//! [`artifact`] defines the remote cache format (records exported as an OCI artifact).

pub mod artifact;
mod blobs;
mod containers;
mod ctxindex;
mod db;
mod error;
mod locks;
mod mounts;
mod records;
mod snapshots;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::Rng;
use rbuild_types::Digest;
use rusqlite::Connection;

pub use blobs::{BlobWriter, SealedBlob};
pub use containers::{valid_name, ContainerRecord, Health, HealthProbe, NetworkAttachment};
pub use ctxindex::{ContextIndex, RACY_NS};
pub use error::{Error, Result};
pub use locks::{KeyLock, SnapshotUse};
pub use mounts::{CacheMountGuard, CacheMountRecord, Sharing};
pub use records::{
    schema_sql, CacheKey, CacheRecord, FileStat, LayerInfo, PruneOptions, PruneReport, TagRecord,
    UsageRecord,
};
pub use snapshots::{SnapshotBuilder, SnapshotId};

use locks::flock_exclusive;

/// A handle on the store. Cheap to clone; `Send + Sync` (the SQLite connection is behind a mutex).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    db_path: PathBuf,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.inner.root)
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store at `root`: creates `blobs/sha256`, `ingest/`,
    /// `snapshots/`, `locks/` and `meta.db` (WAL, busy timeout, versioned schema), and removes
    /// leftovers of crashed writes.
    pub fn open(root: &Path) -> Result<Store> {
        make_private_dir(root, true)?;
        let root = fs::canonicalize(root).map_err(Error::io("resolve", root))?;
        for d in PRIVATE_DIRS {
            make_private_dir(&root.join(d), false)?;
        }
        // Fail early and clearly on a read-only store (SQLite would only say "unable to open").
        let probe = root.join("locks").join(".writable");
        fs::write(&probe, b"").map_err(Error::io("write to the store", &probe))?;
        let db_path = root.join("meta.db");
        let conn = db::open(&db_path)?;
        // SQLite gives its -wal and -shm files the database file's mode.
        for f in ["meta.db", "meta.db-wal", "meta.db-shm"] {
            tighten(&root.join(f), 0o600)?;
        }
        let store = Store {
            inner: Arc::new(Inner {
                root,
                db_path,
                conn: Mutex::new(conn),
            }),
        };
        store.clean_leftovers()?;
        Ok(store)
    }

    /// The store's root directory (absolute).
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    fn clean_leftovers(&self) -> Result<()> {
        let ingest = self.root().join("ingest");
        for e in fs::read_dir(&ingest).map_err(Error::io("read", &ingest))? {
            let e = e.map_err(Error::io("read", &ingest))?;
            remove_if_unlocked(&e.path())?;
        }
        let snaps = self.root().join("snapshots");
        for e in fs::read_dir(&snaps).map_err(Error::io("read", &snaps))? {
            let e = e.map_err(Error::io("read", &snaps))?;
            if e.file_name()
                .to_string_lossy()
                .starts_with(snapshots::TMP_PREFIX)
            {
                remove_if_unlocked(&e.path())?;
            }
        }
        self.clean_tmp()
    }

    /// Removes `tmp/<prefix>-<pid>-<n>` scratch directories of processes that no longer run,
    /// detaching any mount a killed build left on them first (so nothing is deleted through a
    /// still-mounted overlay).
    fn clean_tmp(&self) -> Result<()> {
        let tmp = self.root().join("tmp");
        let rd = match fs::read_dir(&tmp) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("read", &tmp)(e)),
        };
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid: Option<u32> = name.split('-').nth(1).and_then(|p| p.parse().ok());
            let Some(pid) = pid else { continue };
            if Path::new("/proc").join(pid.to_string()).exists() {
                continue;
            }
            let dir = e.path();
            let prefix = format!("{}/", dir.display());
            let mut mounted: Vec<&str> = mountinfo
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|m| *m == dir.to_string_lossy() || m.starts_with(&prefix))
                .collect();
            mounted.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in mounted {
                if let Ok(c) = std::ffi::CString::new(m) {
                    // SAFETY: umount2 with a valid NUL-terminated path.
                    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                }
            }
            snapshots::remove_tree(&dir).map_err(Error::io("remove leftover", &dir))?;
        }
        Ok(())
    }

    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll back).
        self.inner
            .conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn db_err(
        &self,
        context: &'static str,
    ) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
        move |source| Error::Db {
            path: self.inner.db_path.clone(),
            context,
            source,
        }
    }

    // ---- blobs ----

    /// Starts writing a blob (see [`BlobWriter`]).
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        BlobWriter::create(
            &self.root().join("ingest"),
            &self.root().join("blobs/sha256"),
        )
    }

    /// Stores `data` as a blob and returns its digest.
    pub fn put_blob(&self, data: &[u8]) -> Result<Digest> {
        // Already stored (an image config or manifest a no-op rebuild makes again): nothing to
        // write. Blobs are complete and verified when they appear, so presence is enough.
        let d = Digest::of(data);
        if self.has_blob(&d) {
            return Ok(d);
        }
        let mut w = self.blob_writer()?;
        io::Write::write_all(&mut w, data)
            .map_err(Error::io("write", self.root().join("ingest")))?;
        Ok(w.commit(None)?.0)
    }

    /// Whether the blob is present.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Where the blob is (or would be) stored.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root().join("blobs/sha256").join(d.hex())
    }

    /// Reads a whole blob into memory (for manifests and configs; stream layers from [`Store::blob_path`]).
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        fs::read(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::BlobNotFound(d.clone())
            } else {
                Error::io("read", &p)(e)
            }
        })
    }

    /// Size in bytes of a stored blob.
    pub fn blob_size(&self, d: &Digest) -> Result<u64> {
        let p = self.blob_path(d);
        fs::metadata(&p).map(|m| m.len()).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::BlobNotFound(d.clone())
            } else {
                Error::io("stat", &p)(e)
            }
        })
    }

    // ---- snapshots ----

    /// Starts a new snapshot (see [`SnapshotBuilder`]).
    pub fn new_snapshot(&self) -> Result<SnapshotBuilder> {
        SnapshotBuilder::create(self)
    }

    /// The fs dir of a committed snapshot: `snapshots/<id>/fs`.
    pub fn snapshot_dir(&self, id: &SnapshotId) -> PathBuf {
        self.root().join("snapshots").join(id.as_str()).join("fs")
    }

    /// Whether a committed snapshot's directory exists.
    pub fn has_snapshot(&self, id: &SnapshotId) -> bool {
        self.snapshot_dir(id).is_dir()
    }

    // ---- locks ----

    /// Takes the per-key lock `locks/<hex>`, waiting while another thread or process holds it.
    /// Released when the returned guard is dropped (or the process dies).
    pub fn lock_key(&self, key: &CacheKey) -> Result<KeyLock> {
        self.lock_named(&format!("key-{}", key.digest().hex()))
    }

    /// Takes the per-layer lock `locks/layer-<hex>` (used while unpacking a layer into a snapshot).
    pub fn lock_layer(&self, diff_id: &Digest) -> Result<KeyLock> {
        self.lock_named(&format!("layer-{}", diff_id.hex()))
    }

    fn lock_named(&self, name: &str) -> Result<KeyLock> {
        let p = self.root().join("locks").join(name);
        KeyLock::acquire(&p, true)?
            .ok_or_else(|| Error::io("lock", &p)(io::Error::from(io::ErrorKind::WouldBlock)))
    }
}

/// Top-level directories of the store, each created (or tightened to) 0700.
const PRIVATE_DIRS: &[&str] = &[
    "blobs",
    "blobs/sha256",
    "ingest",
    "snapshots",
    "locks",
    "tmp",
    "cachemounts",
    "containers",
    "volumes",
    "ctxindex",
];

/// Creates `dir` with mode 0700 (its missing parents get the usual 0755) or tightens an existing
/// one: the store holds setuid binaries of images, build-arg values and lock files, none of which
/// another local user may reach. Root refuses a store root owned by another user, who could
/// loosen it again or swap its content.
fn make_private_dir(dir: &Path, is_root: bool) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if is_root {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(Error::io("create", parent))?;
        }
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io("create", dir)(e)),
    }
    let md = fs::metadata(dir).map_err(Error::io("stat", dir))?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if is_root && euid == 0 && md.uid() != 0 {
        return Err(Error::Conflict(format!(
            "the store {} is owned by uid {}, not by root: that user could change what root \
             builds and runs; `chown -R root: {}` or use another --root",
            dir.display(),
            md.uid(),
            dir.display()
        )));
    }
    tighten(dir, 0o700)
}

/// Removes the group and other permission bits of `path` (when it exists), keeping at most `max`.
fn tighten(path: &Path, max: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let md = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("stat", path)(e)),
    };
    if md.file_type().is_symlink() {
        return Err(Error::Conflict(format!(
            "{} is a symlink: the store's own entries must be real files and directories",
            path.display()
        )));
    }
    let mode = md.permissions().mode() & 0o7777;
    if mode & !max != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & max))
            .map_err(Error::io("restrict the permissions of", path))?;
    }
    Ok(())
}

/// Removes a leftover file or directory unless a live writer holds its flock.
fn remove_if_unlocked(path: &Path) -> Result<()> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("open", path)(e)),
    };
    if flock_exclusive(&f, true).map_err(Error::io("lock", path))? {
        let r = if f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            snapshots::remove_tree(path)
        } else {
            match fs::remove_file(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                r => r,
            }
        };
        r.map_err(Error::io("remove leftover", path))?;
    }
    Ok(())
}

/// fsyncs a directory so a rename in it is durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(Error::io("fsync", dir))
}

/// A random name of lowercase letters and digits.
pub(crate) fn random_name(len: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

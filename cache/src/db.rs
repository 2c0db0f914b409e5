//! meta.db: opening, pragmas and the versioned schema.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use crate::error::{Error, Result};

/// Current schema version (`PRAGMA user_version`).
pub(crate) const SCHEMA_VERSION: i64 = 3;

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS images (
    name     TEXT PRIMARY KEY,            -- image reference, e.g. web:v1
    manifest TEXT NOT NULL,               -- manifest digest (a blob)
    created  INTEGER NOT NULL             -- unix seconds
);
CREATE TABLE IF NOT EXISTS snapshots (
    id      TEXT PRIMARY KEY,             -- directory name under snapshots/
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS layers (
    diff_id  TEXT PRIMARY KEY,            -- digest of the uncompressed layer tar (a blob)
    snapshot TEXT NOT NULL,               -- snapshot holding the unpacked diff
    size     INTEGER NOT NULL,            -- tar size in bytes
    created  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS compressed_layers (
    diff_id   TEXT NOT NULL,
    algorithm TEXT NOT NULL,              -- gzip | zstd
    digest    TEXT NOT NULL,              -- blob digest of the compressed tar
    size      INTEGER NOT NULL,
    PRIMARY KEY (diff_id, algorithm)
);
CREATE TABLE IF NOT EXISTS cache_records (
    key         TEXT PRIMARY KEY,         -- cache key digest
    snapshot    TEXT,
    diff_id     TEXT,
    size        INTEGER NOT NULL,
    description TEXT NOT NULL,
    inputs      TEXT NOT NULL,            -- JSON: what made the key
    created     INTEGER NOT NULL,
    last_used   INTEGER NOT NULL,
    usage_count INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS cache_records_last_used ON cache_records(last_used);
CREATE TABLE IF NOT EXISTS stat_cache (
    path     TEXT PRIMARY KEY,            -- unused since the context index (ctxindex/); kept for schema 2
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    inode    INTEGER NOT NULL,
    digest   TEXT NOT NULL
);
";

/// Version 2: the step index (miss explanations) and cache mounts.
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS step_index (
    identity TEXT NOT NULL,               -- which step of which Dockerfile (not its content)
    key      TEXT NOT NULL,               -- a cache key that step had
    inputs   TEXT NOT NULL,               -- JSON document the key was computed from
    used     INTEGER NOT NULL,            -- unix nanoseconds of the last build that had this key
    PRIMARY KEY (identity, key)
);
CREATE INDEX IF NOT EXISTS step_index_used ON step_index(identity, used);
CREATE TABLE IF NOT EXISTS cache_mounts (
    id          TEXT PRIMARY KEY,         -- the mount's id (default: its target)
    dir         TEXT NOT NULL,            -- directory name under cachemounts/
    created     INTEGER NOT NULL,
    last_used   INTEGER NOT NULL,
    usage_count INTEGER NOT NULL
);
";

/// Version 3: a layer built here keeps no tar blob at build time; its row says that the tar is
/// made again from the snapshot (rbuild's own writer, byte for byte) and with which mtime clamp.
const SCHEMA_V3: &str = "
ALTER TABLE layers ADD COLUMN from_snapshot INTEGER NOT NULL DEFAULT 0; -- 1: tar = rbuild's tar of the snapshot
ALTER TABLE layers ADD COLUMN mtime_clamp INTEGER;   -- SOURCE_DATE_EPOCH the tar's mtimes were clamped to
";

/// The schema, for documentation and tests.
pub(crate) fn schema() -> &'static str {
    concat_schema()
}

fn concat_schema() -> &'static str {
    static S: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    S.get_or_init(|| format!("{SCHEMA_V1}{SCHEMA_V2}{SCHEMA_V3}"))
}

pub(crate) fn open(path: &Path) -> Result<Connection> {
    if !path.exists() {
        create(path)?;
    }
    let err = |context: &'static str| {
        move |source| Error::Db {
            path: path.to_path_buf(),
            context,
            source,
        }
    };
    let mut conn = Connection::open(path).map_err(err("open"))?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(err("set busy timeout"))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err("enable WAL"))?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err("set synchronous"))?;
    // The last connection to close would checkpoint the WAL into meta.db and delete it (two
    // fsyncs and an unlink), and the next process would create the WAL again (one more fsync of
    // its header and of the directory): four durable writes per command, even a no-op build.
    // Left alone, the WAL is checkpointed by SQLite's automatic checkpoint (every 256 pages)
    // in whichever process commits past it; crash safety is that of WAL mode either way.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .map_err(err("keep the WAL on close"))?;
    // Each process that opens the store reads the WAL once (SQLite rebuilds its index of it):
    // checkpoint every 256 pages (1 MiB) instead of 1000 so that read stays short.
    conn.pragma_update(None, "wal_autocheckpoint", 256)
        .map_err(err("set the WAL checkpoint interval"))?;
    // Read the schema version without the write lock: a store at the current version (every
    // command but the first) needs no migration transaction.
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err("read schema version"))?;
    if version == SCHEMA_VERSION {
        return Ok(conn);
    }
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(err("begin migration"))?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err("read schema version"))?;
    if version > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version < 1 {
        tx.execute_batch(SCHEMA_V1).map_err(err("create schema"))?;
    }
    if version < 2 {
        tx.execute_batch(SCHEMA_V2)
            .map_err(err("migrate schema to version 2"))?;
    }
    if version < 3 {
        tx.execute_batch(SCHEMA_V3)
            .map_err(err("migrate schema to version 3"))?;
    }
    if version < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(err("set schema version"))?;
    }
    tx.commit().map_err(err("commit migration"))?;
    Ok(conn)
}

/// Makes a new store's database aside and renames it into place: the schema is written without
/// any journal or sync (nothing else can see the file yet), then the file is fsynced once, renamed
/// to `path` without replacing one that another process made meanwhile, and the directory is
/// fsynced. Created in place, SQLite's switch to WAL and the first transaction cost six fsyncs
/// and an unlink (~50 ms here), paid by every CI runner that starts with an empty store. The
/// temporary file lives in `ingest/`, flocked while it is written, so `Store::open` removes what a
/// killed creator leaves.
fn create(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir
        .join("ingest")
        .join(format!("meta-{}.db", crate::random_name(16)));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(Error::io("create", &tmp))?;
    crate::locks::flock_exclusive(&file, false).map_err(Error::io("lock", &tmp))?;
    let made = write_schema(&tmp).and_then(|()| file.sync_all().map_err(Error::io("fsync", &tmp)));
    let placed = made.and_then(|()| match rename_noreplace(&tmp, path) {
        Ok(()) => crate::fsync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io("rename into place", path)(e)),
    });
    for f in [
        tmp.clone(),
        tmp.with_extension("db-wal"),
        tmp.with_extension("db-shm"),
    ] {
        let _ = std::fs::remove_file(f);
    }
    placed
}

fn write_schema(tmp: &Path) -> Result<()> {
    let err = |context: &'static str| {
        move |source| Error::Db {
            path: tmp.to_path_buf(),
            context,
            source,
        }
    };
    let conn = Connection::open(tmp).map_err(err("open"))?;
    conn.pragma_update(None, "synchronous", "OFF")
        .map_err(err("set synchronous"))?;
    conn.pragma_update(None, "journal_mode", "OFF")
        .map_err(err("disable the journal"))?;
    conn.execute_batch(&format!(
        "BEGIN; {} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;",
        concat_schema()
    ))
    .map_err(err("create schema"))?;
    // Persisted in the header, so every later connection starts in WAL mode without a write.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err("enable WAL"))?;
    conn.close().map_err(|(_, e)| err("close")(e))
}

fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated paths; renameat2 reads them only.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

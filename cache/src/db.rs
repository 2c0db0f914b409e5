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

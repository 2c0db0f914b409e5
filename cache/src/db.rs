//! meta.db: opening, pragmas and the versioned schema.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use crate::error::{Error, Result};

/// Current schema version (`PRAGMA user_version`).
pub(crate) const SCHEMA_VERSION: i64 = 1;

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
    path     TEXT PRIMARY KEY,            -- absolute path of a context file
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    inode    INTEGER NOT NULL,
    digest   TEXT NOT NULL
);
";

/// The schema, for documentation and tests.
pub(crate) fn schema() -> &'static str {
    SCHEMA_V1
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
    if version < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(err("set schema version"))?;
    }
    tx.commit().map_err(err("commit migration"))?;
    Ok(conn)
}

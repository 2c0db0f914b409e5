//! Store behaviour: blobs, snapshots, crash leftovers, tags, cache records, locks, pruning.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Barrier};

use rbuild_cache::{CacheKey, CacheRecord, PruneOptions, SnapshotId, Store};
use rbuild_types::{Digest, ImageRef};

fn count(dir: &Path) -> usize {
    fs::read_dir(dir).unwrap().count()
}

#[test]
fn blob_roundtrip_and_dedup() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let d = s.put_blob(b"hello").unwrap();
    assert_eq!(d, Digest::of(b"hello"));
    assert!(s.has_blob(&d));
    assert_eq!(s.read_blob(&d).unwrap(), b"hello");
    assert_eq!(s.put_blob(b"hello").unwrap(), d);
    assert_eq!(count(&t.path().join("blobs/sha256")), 1);
    assert_eq!(count(&t.path().join("ingest")), 0);
    let mut w = s.blob_writer().unwrap();
    w.write_all(b"hel").unwrap();
    w.write_all(b"lo").unwrap();
    assert_eq!(w.commit(Some(&d)).unwrap(), (d.clone(), 5));
    let missing = Digest::of(b"nope");
    assert!(matches!(
        s.read_blob(&missing),
        Err(rbuild_cache::Error::BlobNotFound(_))
    ));
}

#[test]
fn wrong_digest_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let mut w = s.blob_writer().unwrap();
    w.write_all(b"tampered").unwrap();
    let err = w.commit(Some(&Digest::of(b"original"))).unwrap_err();
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    assert!(err
        .to_string()
        .contains(&Digest::of(b"original").to_string()));
    assert_eq!(count(&t.path().join("blobs/sha256")), 0);
    assert_eq!(count(&t.path().join("ingest")), 0);
    // Dropping an uncommitted writer cleans up as well.
    let mut w = s.blob_writer().unwrap();
    w.write_all(b"partial").unwrap();
    drop(w);
    assert_eq!(count(&t.path().join("ingest")), 0);
}

#[test]
fn reopen_after_crash_is_clean() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let kept = s.put_blob(b"kept").unwrap();
    let b = s.new_snapshot().unwrap();
    fs::write(b.fs_dir().join("f"), b"x").unwrap();
    let committed = b.commit().unwrap();
    // An in-progress write of this (live) process must survive another open.
    let mut live = s.blob_writer().unwrap();
    live.write_all(b"live").unwrap();
    let live_snap = s.new_snapshot().unwrap();
    drop(s);
    // Simulated crash leftovers: unlocked partial files and tmp snapshot dirs.
    fs::write(t.path().join("ingest/abandoned"), b"half").unwrap();
    fs::create_dir_all(t.path().join("snapshots/tmp-crashed/fs/sub")).unwrap();
    fs::create_dir_all(t.path().join("snapshots/tmp-crashed/work/work")).unwrap();
    let s = Store::open(t.path()).unwrap();
    assert!(!t.path().join("ingest/abandoned").exists());
    assert!(!t.path().join("snapshots/tmp-crashed").exists());
    assert!(s.has_blob(&kept));
    assert!(s.snapshot_dir(&committed).join("f").exists());
    assert!(
        live_snap.fs_dir().exists(),
        "a live snapshot builder was removed"
    );
    assert_eq!(live.commit(None).unwrap().0, Digest::of(b"live"));
    drop(live_snap);
    let names: Vec<String> = fs::read_dir(t.path().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec![committed.to_string()]);
}

#[test]
fn snapshots_commit_and_drop() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let b = s.new_snapshot().unwrap();
    assert!(b.work_dir().is_dir());
    fs::write(b.fs_dir().join("a"), b"1").unwrap();
    let id = b.commit().unwrap();
    assert!(id.as_str().len() <= 8);
    assert_eq!(fs::read(s.snapshot_dir(&id).join("a")).unwrap(), b"1");
    assert!(!s.snapshot_dir(&id).parent().unwrap().join("work").exists());
    let b = s.new_snapshot().unwrap();
    let dir = b.fs_dir();
    drop(b);
    assert!(!dir.exists());
    assert!("tmp-1".parse::<SnapshotId>().is_err());
    assert!("../x".parse::<SnapshotId>().is_err());
    let d = Digest::of(b"layer");
    s.put_layer(&d, &id, 10).unwrap();
    assert_eq!(s.layer_snapshot(&d).unwrap(), Some(id));
    assert_eq!(s.layer_snapshot(&Digest::of(b"other")).unwrap(), None);
}

#[test]
fn tags() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let r: ImageRef = "web:v1".parse().unwrap();
    assert_eq!(s.get_tag(&r).unwrap(), None);
    s.set_tag(&r, &Digest::of(b"m1")).unwrap();
    s.set_tag(&r, &Digest::of(b"m2")).unwrap();
    s.set_tag(&"busybox:local".parse().unwrap(), &Digest::of(b"b"))
        .unwrap();
    assert_eq!(s.get_tag(&r).unwrap(), Some(Digest::of(b"m2")));
    let tags = s.list_tags().unwrap();
    assert_eq!(tags.len(), 2);
    assert_eq!(tags[0].name, "busybox:local");
    assert!(tags[1].created > 0);
    assert!(s.remove_tag(&r).unwrap());
    assert_eq!(s.get_tag(&r).unwrap(), None);
}

fn record(
    key: &CacheKey,
    snapshot: Option<SnapshotId>,
    diff: Option<Digest>,
    last_used: i64,
) -> CacheRecord {
    CacheRecord {
        key: key.clone(),
        snapshot,
        diff_id: diff,
        size: 100,
        description: "RUN make".into(),
        inputs: serde_json::json!({"instruction": "RUN make"}),
        created: last_used,
        last_used,
        usage_count: 0,
    }
}

#[test]
fn cache_records_and_usage() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let k = CacheKey::of(b"step");
    assert_eq!(s.cache_get(&k).unwrap(), None);
    s.cache_put(&record(&k, None, None, 0)).unwrap();
    let r1 = s.cache_get(&k).unwrap().unwrap();
    assert_eq!(r1.usage_count, 1);
    assert_eq!(r1.inputs["instruction"], "RUN make");
    assert!(r1.created > 0 && r1.last_used >= r1.created);
    assert_eq!(s.cache_get(&k).unwrap().unwrap().usage_count, 2);
    assert_eq!(s.cache_peek(&k).unwrap().unwrap().usage_count, 2);
    // The light lookup counts a use too, and leaves the input document out.
    let h = s.cache_hit(&k).unwrap().unwrap();
    assert_eq!((h.usage_count, h.inputs.is_null()), (3, true));
    assert_eq!(
        (h.snapshot, h.diff_id),
        (r1.snapshot.clone(), r1.diff_id.clone())
    );
    assert_eq!(s.cache_hit(&CacheKey::of(b"other")).unwrap(), None);
    assert_eq!(k.to_string().parse::<CacheKey>().unwrap(), k);
    assert_eq!(s.cache_records().unwrap().len(), 1);
}

#[test]
fn key_lock_serializes_processes_and_threads() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let k = CacheKey::of(b"same step");
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            // Separate Store handles behave like separate processes (separate lock fds).
            let s = Store::open(t.path()).unwrap();
            let k = k.clone();
            let runs = runs.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let _l = s.lock_key(&k).unwrap();
                if s.cache_get(&k).unwrap().is_none() {
                    runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    s.cache_put(&record(&k, None, None, 0)).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    drop(s);
}

#[test]
fn prune_is_lru_and_keeps_tagged_layers() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path()).unwrap();
    let mut keys = vec![];
    let mut snaps = vec![];
    let mut diffs = vec![];
    for i in 0..3 {
        let b = s.new_snapshot().unwrap();
        fs::write(b.fs_dir().join("f"), format!("{i}")).unwrap();
        let id = b.commit().unwrap();
        let diff = s.put_blob(format!("layer {i}").as_bytes()).unwrap();
        s.put_layer(&diff, &id, 10).unwrap();
        let k = CacheKey::of(format!("k{i}").as_bytes());
        s.cache_put(&record(&k, Some(id.clone()), Some(diff.clone()), 1000 + i))
            .unwrap();
        keys.push(k);
        snaps.push(id);
        diffs.push(diff);
    }
    // A tagged image uses layer 0 (the oldest).
    let config = s.put_blob(b"{}").unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "config": {"digest": config.to_string(), "size": 2},
        "layers": [{"digest": diffs[0].to_string(), "size": 7}],
    });
    let m = s.put_blob(manifest.to_string().as_bytes()).unwrap();
    s.set_tag(&"web:v1".parse().unwrap(), &m).unwrap();
    let du = s.disk_usage().unwrap();
    assert_eq!(du.iter().filter(|u| u.reclaimable).count(), 2);
    let rep = s
        .prune(&PruneOptions {
            keep_storage: Some(100),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        rep.removed,
        vec![keys[1].clone()],
        "LRU first, tagged skipped"
    );
    assert!(!s.has_blob(&diffs[1]));
    assert!(!s.has_snapshot(&snaps[1]));
    let rep = s.prune(&PruneOptions::default()).unwrap();
    assert_eq!(rep.removed, vec![keys[2].clone()]);
    assert!(s.has_blob(&diffs[0]) && s.has_snapshot(&snaps[0]) && s.has_blob(&config));
    assert!(s.cache_peek(&keys[0]).unwrap().is_some());
    // `prune --all`: the record goes too (the next build runs the step again), the image's
    // layer and snapshot stay.
    let rep = s
        .prune(&PruneOptions {
            all: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rep.removed, vec![keys[0].clone()]);
    assert_eq!(rep.reclaimed, 0, "the layer stays for web:v1");
    assert!(s.cache_peek(&keys[0]).unwrap().is_none());
    assert!(s.has_blob(&diffs[0]) && s.has_snapshot(&snaps[0]) && s.has_blob(&config));
}

#[test]
fn schema_is_versioned() {
    let t = tempfile::tempdir().unwrap();
    drop(Store::open(t.path()).unwrap());
    let conn = rusqlite::Connection::open(t.path().join("meta.db")).unwrap();
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 3);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = Store::open(t.path()).unwrap_err();
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

/// Processes racing to create one store all open it: the database made aside is renamed in
/// without replacing another's (tables and data of the first stay), and no temporary file or
/// leftover of a killed creator stays in `ingest/`.
#[test]
fn new_store_database_is_made_once_under_a_race() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let go = Arc::new(Barrier::new(6));
    let stores: Vec<Store> = (0..6)
        .map(|_| {
            let (root, go) = (root.clone(), go.clone());
            std::thread::spawn(move || {
                go.wait();
                Store::open(&root).unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let d = stores[0].put_blob(b"x").unwrap();
    stores[5]
        .set_tag(&"a:b".parse::<ImageRef>().unwrap(), &d)
        .unwrap();
    assert_eq!(
        stores[2]
            .get_tag(&"a:b".parse::<ImageRef>().unwrap())
            .unwrap(),
        Some(d)
    );
    drop(stores);
    // A creator killed half-way leaves its temporary database, unlocked: the next open removes it.
    fs::write(root.join("ingest").join("meta-leftover.db"), b"partial").unwrap();
    drop(Store::open(&root).unwrap());
    assert_eq!(count(&root.join("ingest")), 0);
}

/// A version 2 store (layers rows without `from_snapshot`) is migrated: its layers are blob
/// layers (their blob is kept), new ones can be recorded as built from a snapshot.
#[test]
fn schema_2_store_migrates_to_3() {
    let t = tempfile::tempdir().unwrap();
    let d = Digest::of(b"old layer");
    {
        let conn = rusqlite::Connection::open(t.path().join("meta.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE layers (diff_id TEXT PRIMARY KEY, snapshot TEXT NOT NULL,
               size INTEGER NOT NULL, created INTEGER NOT NULL);",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO layers VALUES (?1, 'abcdefgh', 10, 0)",
            [d.to_string()],
        )
        .unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
    }
    let s = Store::open(t.path()).unwrap();
    let info = s.layer_info(&d).unwrap().unwrap();
    assert_eq!(info.snapshot.as_str(), "abcdefgh");
    assert_eq!(
        (info.size, info.from_snapshot, info.mtime_clamp),
        (10, false, None)
    );
    let built = Digest::of(b"built");
    let id: SnapshotId = "ijklmnop".parse().unwrap();
    s.put_snapshot_layer(&built, &id, 7, Some(5)).unwrap();
    let info = s.layer_info(&built).unwrap().unwrap();
    assert_eq!(
        (info.size, info.from_snapshot, info.mtime_clamp),
        (7, true, Some(5))
    );
    // A pulled copy of the same layer later: its blob is what counts.
    s.put_layer(&built, &id, 7).unwrap();
    assert!(!s.layer_info(&built).unwrap().unwrap().from_snapshot);
}

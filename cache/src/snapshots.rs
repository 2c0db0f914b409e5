//! Snapshots: directories holding one layer's diff, usable as overlay lower directories.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::locks::flock_exclusive;
use crate::random_name;

/// Prefix of snapshot directories still being written.
pub(crate) const TMP_PREFIX: &str = "tmp-";

/// The id of a committed snapshot: a short name of lowercase letters and digits, the name of its
/// directory under `snapshots/` (kept short so many overlay lowerdirs fit in one page).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct SnapshotId(String);

impl SnapshotId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A fresh random id, for a snapshot that will be committed later with
    /// [`SnapshotBuilder::commit_as`] (e.g. a remote layer fetched only when needed).
    pub fn reserve() -> SnapshotId {
        loop {
            let id = random_name(8);
            if !id.starts_with("tmp") {
                return SnapshotId(id);
            }
        }
    }
}

impl FromStr for SnapshotId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.is_empty()
            || s.len() > 32
            || s.starts_with("tmp")
            || !s
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(Error::Invalid {
                what: "snapshot id",
                value: s.to_string(),
            });
        }
        Ok(SnapshotId(s.to_string()))
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for SnapshotId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SnapshotId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A snapshot being written under `snapshots/tmp-<rand>/`. Write the layer's files into
/// [`SnapshotBuilder::fs_dir`] (directly, or as an overlay upperdir with
/// [`SnapshotBuilder::work_dir`] as workdir), then [`SnapshotBuilder::commit`]. Dropping it
/// uncommitted removes the directory.
pub struct SnapshotBuilder {
    dir: PathBuf,
    snapshots: PathBuf,
    /// Open, flocked handle on `dir`: marks the snapshot as in progress.
    lock: Option<File>,
    store: Option<crate::Store>,
}

impl SnapshotBuilder {
    pub(crate) fn create(store: &crate::Store) -> Result<SnapshotBuilder> {
        let snapshots = store.root().join("snapshots");
        loop {
            let dir = snapshots.join(format!("{TMP_PREFIX}{}", random_name(10)));
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io("create", &dir)(e)),
            }
            let lock = File::open(&dir).map_err(Error::io("open", &dir))?;
            flock_exclusive(&lock, false).map_err(Error::io("lock", &dir))?;
            let same = match (fs::metadata(&dir), lock.metadata()) {
                (Ok(a), Ok(b)) => a.ino() == b.ino(),
                _ => false,
            };
            if !same {
                continue;
            }
            let b = SnapshotBuilder {
                dir,
                snapshots: snapshots.clone(),
                lock: Some(lock),
                store: Some(store.clone()),
            };
            for d in [b.fs_dir(), b.work_dir()] {
                fs::create_dir(&d).map_err(Error::io("create", &d))?;
            }
            return Ok(b);
        }
    }

    /// The directory that receives the layer's files (the overlay upperdir).
    pub fn fs_dir(&self) -> PathBuf {
        self.dir.join("fs")
    }

    /// An empty directory on the same file system, for the overlay workdir.
    pub fn work_dir(&self) -> PathBuf {
        self.dir.join("work")
    }

    /// Removes the work dir, renames the snapshot to `snapshots/<id>` and records it.
    pub fn commit(mut self) -> Result<SnapshotId> {
        loop {
            match self.commit_named(&SnapshotId::reserve())? {
                Some(id) => return Ok(id),
                None => continue,
            }
        }
    }

    /// Commits the snapshot under a reserved id (see [`SnapshotId::reserve`]); fails when a
    /// snapshot of that id exists.
    pub fn commit_as(mut self, id: &SnapshotId) -> Result<()> {
        match self.commit_named(id)? {
            Some(_) => Ok(()),
            None => Err(Error::io(
                "commit snapshot",
                self.snapshots.join(id.as_str()),
            )(io::Error::from(io::ErrorKind::AlreadyExists))),
        }
    }

    /// Renames the snapshot to `id`; `None` when that name is taken.
    fn commit_named(&mut self, id: &SnapshotId) -> Result<Option<SnapshotId>> {
        let work = self.work_dir();
        match fs::remove_dir_all(&work) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &work)(e)),
        }
        let fs_dir = self.fs_dir();
        if !fs_dir.is_dir() {
            return Err(Error::io("stat", &fs_dir)(io::Error::from(
                io::ErrorKind::NotFound,
            )));
        }
        let dest = self.snapshots.join(id.as_str());
        match fs::rename(&self.dir, &dest) {
            Ok(()) => {
                self.lock = None;
                crate::fsync_dir(&self.snapshots)?;
                if let Some(store) = self.store.take() {
                    store.record_snapshot(id)?;
                }
                Ok(Some(id.clone()))
            }
            Err(e)
                if e.kind() == io::ErrorKind::AlreadyExists
                    || e.raw_os_error() == Some(libc::ENOTEMPTY) =>
            {
                Ok(None)
            }
            Err(e) => Err(Error::io("rename snapshot to", &dest)(e)),
        }
    }
}

impl Drop for SnapshotBuilder {
    fn drop(&mut self) {
        if self.lock.is_some() {
            let _ = remove_tree(&self.dir);
        }
    }
}

/// Removes a directory tree, making directories writable first where needed.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

//! Content-addressed blobs: written to `ingest/`, verified, fsynced, renamed into `blobs/sha256/`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rbuild_types::{Digest, Sha256Writer};

use crate::error::{Error, Result};
use crate::locks::flock_exclusive;
use crate::{fsync_dir, random_name};

/// A blob being written. Implements [`Write`] and hashes while writing; nothing is visible in
/// `blobs/` until [`BlobWriter::commit`] verified the digest. Dropping it uncommitted removes
/// the partial file.
pub struct BlobWriter {
    inner: Option<Sha256Writer<BufWriter<File>>>,
    /// How far the file has been handed to writeback (`sync_file_range`).
    kicked: u64,
    tmp: PathBuf,
    blobs_dir: PathBuf,
}

impl BlobWriter {
    pub(crate) fn create(ingest: &Path, blobs_dir: &Path) -> Result<BlobWriter> {
        loop {
            let tmp = ingest.join(random_name(16));
            let file = match OpenOptions::new().write(true).create_new(true).open(&tmp) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io("create", &tmp)(e)),
            };
            // The lock marks the file as in progress: Store::open of another process leaves it alone.
            flock_exclusive(&file, false).map_err(Error::io("lock", &tmp))?;
            // A cleaner may have removed the file between create and lock: then start again.
            let still_ours = match fs::metadata(&tmp) {
                Ok(m) => file
                    .metadata()
                    .map(|fm| fm.ino() == m.ino())
                    .unwrap_or(false),
                Err(_) => false,
            };
            if !still_ours {
                continue;
            }
            return Ok(BlobWriter {
                inner: Some(Sha256Writer::new(BufWriter::with_capacity(1 << 20, file))),
                kicked: 0,
                tmp,
                blobs_dir: blobs_dir.to_path_buf(),
            });
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.inner.as_ref().map(|w| w.written()).unwrap_or(0)
    }

    /// Verifies the content (against `expected` when given), fsyncs it and renames it into
    /// `blobs/sha256/<hex>`. On a mismatch the partial file is removed and nothing is kept.
    pub fn commit(self, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        self.seal(expected)?.commit()
    }

    /// The first half of [`BlobWriter::commit`]: verifies the content (against `expected`
    /// when given) and fsyncs it, leaving it in `ingest/` until [`SealedBlob::commit`]. On a
    /// mismatch the partial file is removed and nothing is kept.
    pub fn seal(mut self, expected: Option<&Digest>) -> Result<SealedBlob> {
        let Some(w) = self.inner.take() else {
            return Err(Error::Corrupt(format!(
                "blob writer {} already finished",
                self.tmp.display()
            )));
        };
        let tmp = std::mem::take(&mut self.tmp);
        let blobs_dir = std::mem::take(&mut self.blobs_dir);
        let checked = (|| {
            let (buf, digest, size) = w.finish();
            let file = buf
                .into_inner()
                .map_err(|e| Error::io("write", &tmp)(e.into_error()))?;
            if let Some(exp) = expected {
                if *exp != digest {
                    return Err(Error::DigestMismatch {
                        expected: exp.clone(),
                        actual: digest,
                        size,
                    });
                }
            }
            if !blobs_dir.join(digest.hex()).exists() {
                file.sync_all().map_err(Error::io("fsync", &tmp))?;
            }
            Ok((file, digest, size))
        })();
        match checked {
            Ok((file, digest, size)) => Ok(SealedBlob {
                file: Some(file),
                done: false,
                tmp,
                blobs_dir,
                digest,
                size,
            }),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }
}

/// A blob whose content is complete, verified and fsynced in `ingest/` but not yet in `blobs/`
/// ([`BlobWriter::seal`]): a caller checks several blobs before it commits any (a pull is all
/// or nothing). Dropped uncommitted, the file is removed.
pub struct SealedBlob {
    /// Open (and locked, see [`BlobWriter`]) until committed or dropped.
    file: Option<File>,
    /// Renamed into `blobs/` (or found there): nothing to remove.
    done: bool,
    tmp: PathBuf,
    blobs_dir: PathBuf,
    digest: Digest,
    size: u64,
}

impl SealedBlob {
    /// The blob's digest.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Renames the blob into `blobs/sha256/<hex>` (a blob already there is the same content:
    /// this copy is removed) and fsyncs the directory. Returns its digest and size.
    pub fn commit(mut self) -> Result<(Digest, u64)> {
        let Some(file) = self.file.take() else {
            return Err(Error::Corrupt(format!(
                "blob {} already committed",
                self.tmp.display()
            )));
        };
        let dest = self.blobs_dir.join(self.digest.hex());
        if dest.exists() {
            // Dropped: the copy in `ingest/` is removed.
            drop(file);
            return Ok((self.digest.clone(), self.size));
        }
        fs::rename(&self.tmp, &dest).map_err(Error::io("rename blob into", &dest))?;
        self.done = true;
        drop(file);
        fsync_dir(&self.blobs_dir)?;
        Ok((self.digest.clone(), self.size))
    }
}

impl Drop for SealedBlob {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Every this many bytes written, the blob's new pages are handed to the disk
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait): the writeback of a big
/// layer runs while the rest is still read and hashed, and the `fsync` of [`BlobWriter::commit`]
/// waits for the last few MiB only instead of the whole blob.
const WRITEBACK_STEP: u64 = 1 << 20;

impl BlobWriter {
    fn start_writeback(&mut self) {
        let Some(w) = &self.inner else { return };
        let in_file = w.written() - w.get_ref().buffer().len() as u64;
        if in_file - self.kicked < WRITEBACK_STEP {
            return;
        }
        let fd = w.get_ref().get_ref().as_raw_fd();
        // SAFETY: a plain syscall on a descriptor we own; failure only loses the head start.
        unsafe {
            libc::sync_file_range(
                fd,
                self.kicked as libc::off64_t,
                (in_file - self.kicked) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.kicked = in_file;
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.inner {
            Some(w) => w.write(buf)?,
            None => return Err(io::Error::other("blob writer already committed")),
        };
        self.start_writeback();
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.inner.is_some() {
            self.inner = None;
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

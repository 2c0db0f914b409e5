//! Container logs in Docker's json-file format: one JSON object per line,
//! `{"log":"text\n","stream":"stdout","time":"2026-11-30T12:00:00.123456789Z"}`, in
//! `containers/<name>/container.log`, rotated by size (`container.log.1` is the previous file,
//! `.2` the one before...), as Docker's `--log-opt max-size=10m,max-file=3`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::run::LogOptions;

/// The log file's name in the container's directory.
pub const LOG_FILE: &str = "container.log";

/// Longest line kept whole; longer output is split into several entries (as Docker, 16 KiB).
const MAX_LINE: usize = 16 * 1024;

/// One log line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The text, with its newline when it had one.
    pub log: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// RFC 3339 with nanoseconds, UTC.
    pub time: String,
}

impl Entry {
    /// The entry's time as nanoseconds since the epoch (0 if unparsable).
    pub fn time_ns(&self) -> i64 {
        chrono::DateTime::parse_from_rfc3339(&self.time)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt())
            .unwrap_or(0)
    }
}

struct Inner {
    dir: PathBuf,
    file: File,
    size: u64,
    opts: LogOptions,
}

/// Appends entries to a container's log, rotating by size. Cheap to clone (shared by the
/// stdout and stderr copiers).
#[derive(Clone)]
pub struct LogWriter(Arc<Mutex<Inner>>);

fn open_append(p: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode_0640()
        .open(p)
}

trait Mode0640 {
    fn mode_0640(&mut self) -> &mut Self;
}

impl Mode0640 for OpenOptions {
    fn mode_0640(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o640)
    }
}

impl LogWriter {
    /// Opens (appending to) the log in `dir`.
    pub fn open(dir: &Path, opts: LogOptions) -> io::Result<LogWriter> {
        let file = open_append(&dir.join(LOG_FILE))?;
        let size = file.metadata()?.len();
        Ok(LogWriter(Arc::new(Mutex::new(Inner {
            dir: dir.to_path_buf(),
            file,
            size,
            opts,
        }))))
    }

    /// Writes one entry now.
    pub fn write(&self, stream: &str, text: &[u8]) -> io::Result<()> {
        let e = Entry {
            log: String::from_utf8_lossy(text).into_owned(),
            stream: stream.to_string(),
            time: crate::run::now_rfc3339(),
        };
        let mut line = serde_json::to_vec(&e).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(max) = g.opts.max_size {
            if g.size > 0 && g.size + line.len() as u64 > max {
                g.rotate()?;
            }
        }
        g.file.write_all(&line)?;
        g.size += line.len() as u64;
        Ok(())
    }

    /// Copies `from` into the log as `stream` until end of file (or a read error such as the
    /// EIO of a closed pty), one entry per line.
    pub fn copy_from(&self, from: impl Read, stream: &str) {
        self.copy_from_tee(from, stream, |_| {});
    }

    /// As [`LogWriter::copy_from`], also handing every chunk read to `tee` (attached clients).
    pub fn copy_from_tee(&self, mut from: impl Read, stream: &str, tee: impl Fn(&[u8])) {
        let mut buf = vec![0u8; 32 * 1024];
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            tee(&buf[..n]);
            pending.extend_from_slice(&buf[..n]);
            while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                let _ = self.write(stream, &line);
            }
            while pending.len() >= MAX_LINE {
                let part: Vec<u8> = pending.drain(..MAX_LINE).collect();
                let _ = self.write(stream, &part);
            }
        }
        if !pending.is_empty() {
            let _ = self.write(stream, &pending);
        }
    }
}

impl Inner {
    fn rotate(&mut self) -> io::Result<()> {
        let base = self.dir.join(LOG_FILE);
        let keep = self.opts.max_file.max(1);
        if keep == 1 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        for i in (1..keep - 1).rev() {
            let from = rotated(&base, i);
            if from.exists() {
                fs::rename(&from, rotated(&base, i + 1))?;
            }
        }
        fs::rename(&base, rotated(&base, 1))?;
        self.file = open_append(&base)?;
        self.size = 0;
        Ok(())
    }
}

fn rotated(base: &Path, i: u32) -> PathBuf {
    let mut s = base.as_os_str().to_os_string();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

fn parse_lines(text: &[u8], out: &mut Vec<Entry>) {
    for line in text.split(|b| *b == b'\n') {
        if let Ok(e) = serde_json::from_slice::<Entry>(line) {
            out.push(e);
        }
    }
}

/// Reads a container's log: everything so far, then (to follow) what is appended, across
/// rotations.
pub struct LogReader {
    base: PathBuf,
    file: Option<File>,
    ino: u64,
    pending: Vec<u8>,
}

impl LogReader {
    /// A reader of the log in `dir`.
    pub fn new(dir: &Path) -> LogReader {
        LogReader {
            base: dir.join(LOG_FILE),
            file: None,
            ino: 0,
            pending: Vec::new(),
        }
    }

    /// Every entry so far, oldest first (rotated files first); the reader then stands at the
    /// end of the current file.
    pub fn read_existing(&mut self) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        let mut olds = Vec::new();
        let mut i = 1;
        while rotated(&self.base, i).exists() {
            olds.push(rotated(&self.base, i));
            i += 1;
        }
        for p in olds.iter().rev() {
            if let Ok(data) = fs::read(p) {
                parse_lines(&data, &mut out);
            }
        }
        out.extend(self.poll()?);
        Ok(out)
    }

    /// The complete entries appended since the last call (follows a rotation: the rest of the
    /// old file first, then the new one from its start).
    pub fn poll(&mut self) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        if self.file.is_none() {
            match File::open(&self.base) {
                Ok(f) => {
                    self.ino = f.metadata()?.ino();
                    self.file = Some(f);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(e),
            }
        }
        self.drain(&mut out)?;
        let now = fs::metadata(&self.base).map(|m| m.ino()).ok();
        if now.is_some_and(|i| i != self.ino) {
            // Rotated: finish the old file (already drained), start the new one.
            self.file = None;
            self.pending.clear();
            out.extend(self.poll()?);
        } else if let Some(f) = self.file.as_mut() {
            // Truncated in place (max-file=1): start over.
            let pos = f.stream_position()?;
            if f.metadata()?.len() < pos {
                f.seek(SeekFrom::Start(0))?;
                self.pending.clear();
            }
        }
        Ok(out)
    }

    fn drain(&mut self, out: &mut Vec<Entry>) -> io::Result<()> {
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        let mut data = Vec::new();
        f.read_to_end(&mut data)?;
        self.pending.extend_from_slice(&data);
        if let Some(last) = self.pending.iter().rposition(|b| *b == b'\n') {
            let complete: Vec<u8> = self.pending.drain(..=last).collect();
            parse_lines(&complete, out);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_streams_and_rotation() {
        let d = tempfile::tempdir().unwrap();
        let w = LogWriter::open(
            d.path(),
            LogOptions {
                max_size: Some(300),
                max_file: 3,
            },
        )
        .unwrap();
        let mut r = LogReader::new(d.path());
        assert!(r.read_existing().unwrap().is_empty());
        w.copy_from(&b"one\ntwo\npartial"[..], "stdout");
        w.copy_from(&b"err\n"[..], "stderr");
        let got = r.poll().unwrap();
        let texts: Vec<(&str, &str)> = got
            .iter()
            .map(|e| (e.log.as_str(), e.stream.as_str()))
            .collect();
        assert_eq!(
            texts,
            vec![
                ("one\n", "stdout"),
                ("two\n", "stdout"),
                ("partial", "stdout"),
                ("err\n", "stderr")
            ]
        );
        assert!(got[0].time.ends_with('Z') && got[0].time_ns() > 0);
        // Many lines: rotation keeps at most 3 files, each at most ~300 bytes, and a follower
        // sees every line written after it started.
        for i in 0..20 {
            w.write("stdout", format!("line {i}\n").as_bytes()).unwrap();
        }
        let followed = r.poll().unwrap();
        assert!(d.path().join("container.log.1").exists());
        assert!(d.path().join("container.log.2").exists());
        assert!(!d.path().join("container.log.3").exists());
        for f in ["container.log", "container.log.1", "container.log.2"] {
            assert!(fs::metadata(d.path().join(f)).unwrap().len() <= 300);
        }
        let all = LogReader::new(d.path()).read_existing().unwrap();
        assert_eq!(all.last().unwrap().log, "line 19\n");
        assert!(all.len() < 24, "old files were dropped");
        assert_eq!(followed.last().unwrap().log, "line 19\n");
    }
}

//! The build context: `.dockerignore` matching, selection of the files a COPY names, and content
//! digests of that selection (bytes, mode, type; never mtime).

use std::ffi::CStr;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use nix::dir::Dir;
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode};
use rbuild_cache::{ContextIndex, FileStat, Store};
use rbuild_fsroot::{Resolved, Root};
use rbuild_types::Digest;
use sha2::{Digest as _, Sha256};

/// One `.dockerignore` rule.
#[derive(Clone, Debug)]
struct Rule {
    /// Path components of the pattern, cleaned (no leading `/`, no `.`).
    parts: Vec<String>,
    /// `!pattern`: re-include.
    exception: bool,
}

/// Parsed `.dockerignore` rules with Docker's semantics: the last matching rule wins, `**` matches
/// any number of directories, a leading `/` is ignored, a pattern matching a directory excludes
/// everything below it.
#[derive(Clone, Debug, Default)]
pub struct IgnoreRules {
    rules: Vec<Rule>,
}

impl IgnoreRules {
    /// Parses the text of a `.dockerignore` file.
    pub fn parse(text: &str) -> IgnoreRules {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, pat) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            let parts: Vec<String> = clean_path(pat)
                .split('/')
                .filter(|s| !s.is_empty() && *s != ".")
                .map(str::to_string)
                .collect();
            if parts.is_empty() {
                continue;
            }
            rules.push(Rule { parts, exception });
        }
        IgnoreRules { rules }
    }

    /// Reads `<dockerfile>.dockerignore` beside the Dockerfile if present, else `.dockerignore` at the
    /// root of the context.
    pub fn load(context: &Path, dockerfile: &Path) -> io::Result<IgnoreRules> {
        let named = PathBuf::from(format!("{}.dockerignore", dockerfile.display()));
        for p in [named, context.join(".dockerignore")] {
            match fs::read_to_string(&p) {
                Ok(t) => {
                    validate_ignore(&t).map_err(|m| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("{}: {m}", p.display()))
                    })?;
                    return Ok(IgnoreRules::parse(&t));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(IgnoreRules::default())
    }

    /// True when `rel` (a `/`-separated path relative to the context root) is excluded.
    pub fn is_excluded(&self, rel: &str) -> bool {
        let comps: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
        let mut excluded = false;
        for rule in &self.rules {
            // A rule matches the path itself or any of its parent directories.
            let hit = (1..=comps.len()).any(|n| match_parts(&rule.parts, &comps[..n]));
            if hit {
                excluded = !rule.exception;
            }
        }
        excluded
    }

    /// True when some exception rule could re-include something under directory `rel`; then an
    /// excluded directory must still be walked.
    fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|r| r.exception)
    }

    /// True when there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// Checks `.dockerignore` text as moby's patternmatcher does: a lone `!` and a malformed glob
/// (`[` without `]`, a trailing `\`) are errors naming the line.
pub fn validate_ignore(text: &str) -> Result<(), String> {
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let pat = match line.strip_prefix('!') {
            Some(p) if p.trim().is_empty() => {
                return Err(format!(
                "line {}: illegal exclusion pattern: \"!\" (write the path to re-include after it)",
                n + 1
            ))
            }
            Some(p) => p.trim(),
            None => line,
        };
        for comp in pat.split('/') {
            let b = comp.as_bytes();
            let mut i = 0;
            while i < b.len() {
                match b[i] {
                    b'\\' if i + 1 == b.len() => {
                        return Err(format!(
                            "line {}: syntax error in pattern {pat:?}: trailing backslash",
                            n + 1
                        ))
                    }
                    b'\\' => i += 2,
                    b'[' => match class_match(&b[i..], b'a') {
                        Some((_, len)) => i += len,
                        None => {
                            return Err(format!(
                            "line {}: syntax error in pattern {pat:?}: '[' without a closing ']'",
                            n + 1
                        ))
                        }
                    },
                    _ => i += 1,
                }
            }
        }
    }
    Ok(())
}

/// Lexically cleans a path: drops `.` components, resolves `..` without going above the root,
/// strips leading `/`.
pub fn clean_path(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

fn match_parts(pat: &[String], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=path.len()).any(|skip| match_parts(rest, &path[skip..]))
        }
        Some((first, rest)) => match path.split_first() {
            Some((p, prest)) => {
                glob_match(first.as_bytes(), p.as_bytes()) && match_parts(rest, prest)
            }
            None => false,
        },
    }
}

/// Shell-style glob of one path component: `*`, `?`, `[...]` (with `^`/`!` negation and ranges), `\` escapes.
pub fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    let (mut star_p, mut star_i) = (usize::MAX, 0usize);
    while i < s.len() {
        if p < pat.len() {
            match pat[p] {
                b'*' => {
                    star_p = p;
                    star_i = i;
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(&pat[p..], s[i]) {
                        if matched {
                            p += next;
                            i += 1;
                            continue;
                        }
                    } else if s[i] == b'[' {
                        p += 1;
                        i += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pat.len() => {
                    if pat[p + 1] == s[i] {
                        p += 2;
                        i += 1;
                        continue;
                    }
                }
                c => {
                    if c == s[i] {
                        p += 1;
                        i += 1;
                        continue;
                    }
                }
            }
        }
        if star_p != usize::MAX {
            p = star_p + 1;
            star_i += 1;
            i = star_i;
            continue;
        }
        return false;
    }
    while p < pat.len() && pat[p] == b'*' {
        p += 1;
    }
    p == pat.len()
}

/// Matches a `[...]` class at the start of `pat`; returns (matched, length of the class).
fn class_match(pat: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut j = 1;
    let negate = j < pat.len() && (pat[j] == b'^' || pat[j] == b'!');
    if negate {
        j += 1;
    }
    let mut matched = false;
    let mut first = true;
    while j < pat.len() && (first || pat[j] != b']') {
        first = false;
        let lo = pat[j];
        if j + 2 < pat.len() && pat[j + 1] == b'-' && pat[j + 2] != b']' {
            if lo <= c && c <= pat[j + 2] {
                matched = true;
            }
            j += 3;
        } else {
            if lo == c {
                matched = true;
            }
            j += 1;
        }
    }
    if j >= pat.len() {
        return None;
    }
    Some((matched != negate, j + 1))
}

/// True when the string has glob metacharacters.
pub fn has_glob(s: &str) -> bool {
    s.bytes().any(|b| matches!(b, b'*' | b'?' | b'['))
}

/// A file selected from a source tree.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Path relative to the source root as the user named it, `/`-separated (glob matches
    /// filled in).
    pub rel: String,
    /// Where it really is inside the root, relative and `/`-separated: `rel` with every symlink
    /// followed inside the root by the kernel. `.dockerignore` rules apply to this path too.
    pub real: String,
    /// The object's host path (no symlink in it: the kernel's path of the resolved object).
    /// Walk below it with no-follow operations only.
    pub abs: PathBuf,
    /// The resolved object (an `O_PATH` descriptor): what [`walk`] starts from.
    pub obj: Arc<Resolved>,
}

/// Expands one COPY source (possibly a glob) to the matching top-level entries of `root`, honoring
/// `ignore`. Every path is resolved inside `root` by the kernel (`rbuild-fsroot`): a symlink named
/// as a source, or on the way to it, is followed as if `root` were `/`, and a link that leads to an
/// ignored path selects nothing. An error when nothing matches and the source has no wildcard.
/// With `parents` (`COPY --parents`), a `**` component matches any number of directories (none
/// included), as in BuildKit; otherwise it is one component like `*` (BuildKit's plain COPY).
pub fn expand_source(
    root: &Root,
    src: &str,
    ignore: &IgnoreRules,
    parents: bool,
) -> io::Result<Vec<Entry>> {
    let cleaned = clean_path(src);
    let comps: Vec<&str> = cleaned.split('/').filter(|c| !c.is_empty()).collect();
    // Candidates as (user path) strings; the kernel resolves each when it is used.
    let mut found = vec![String::new()];
    for comp in &comps {
        let mut next = Vec::new();
        for rel in found {
            let join = |name: &str| {
                if rel.is_empty() {
                    name.to_string()
                } else {
                    format!("{rel}/{name}")
                }
            };
            if parents && *comp == "**" {
                next.push(rel.clone());
                descendant_dirs(root, &rel, &mut next);
                continue;
            }
            if has_glob(comp) {
                let Ok(dir) = root.resolve(&rel) else {
                    continue;
                };
                let Ok(rd) = fs::read_dir(dir.proc_path()) else {
                    continue;
                };
                let mut names: Vec<String> = rd
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                next.extend(
                    names
                        .iter()
                        .filter(|n| glob_match(comp.as_bytes(), n.as_bytes()))
                        .map(|n| join(n)),
                );
            } else {
                next.push(join(comp));
            }
        }
        found = next;
    }
    let mut out = Vec::new();
    for rel in found {
        let r = match root.resolve(&rel) {
            Ok(r) => r,
            Err(rbuild_fsroot::Error::NotFound { .. })
            | Err(rbuild_fsroot::Error::NotADirectory { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let real = root.inner_path(&r).map_err(io::Error::from)?;
        let real = real.to_string_lossy().trim_start_matches('/').to_string();
        if ignore.is_excluded(&rel) || (!real.is_empty() && ignore.is_excluded(&real)) {
            continue;
        }
        let abs = r.host_path()?;
        out.push(Entry {
            rel,
            real,
            abs,
            obj: Arc::new(r),
        });
    }
    if out.is_empty() && !has_glob(&cleaned) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("\"{src}\": not found"),
        ));
    }
    Ok(out)
}

/// Appends every directory below `rel` (depth first, names sorted, symlinks not followed).
fn descendant_dirs(root: &Root, rel: &str, out: &mut Vec<String>) {
    let Ok(dir) = root.resolve(rel) else {
        return;
    };
    let base = dir.proc_path();
    let Ok(rd) = fs::read_dir(&base) else {
        return;
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in names {
        let child = if rel.is_empty() {
            n
        } else {
            format!("{rel}/{n}")
        };
        out.push(child.clone());
        descendant_dirs(root, &child, out);
    }
}

/// Where a walked object is: a name in an open directory, or (the top of a walk) the object an
/// entry resolved to. Every access goes through it, relative to a descriptor, never following a
/// symlink: nothing below a context entry can lead out of the context.
pub enum At<'a> {
    /// `name` inside the directory `dir`.
    Name {
        /// The parent directory, opened inside the root.
        dir: BorrowedFd<'a>,
        /// The entry's name (no `/`).
        name: &'a CStr,
    },
    /// The resolved object itself.
    Object(&'a Resolved),
}

impl At<'_> {
    /// Opens the (regular) file for reading; a symlink swapped in since the stat is refused.
    pub fn open_read(&self) -> io::Result<fs::File> {
        match self {
            At::Name { dir, name } => {
                let fd = openat(
                    *dir,
                    *name,
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
                    Mode::empty(),
                )?;
                Ok(fs::File::from(fd))
            }
            At::Object(r) => r.reopen(OFlag::O_RDONLY | OFlag::O_NOCTTY),
        }
    }

    /// The target of the symlink.
    pub fn read_link(&self) -> io::Result<PathBuf> {
        let target = match self {
            At::Name { dir, name } => readlinkat(*dir, *name)?,
            At::Object(r) => readlinkat(r.as_fd(), c"")?,
        };
        Ok(PathBuf::from(target))
    }
}

/// What the walk reports of one object.
pub struct Visit<'a> {
    /// The user's path: `entry.rel` and the names below it.
    pub rel: &'a str,
    /// `lstat` of the object.
    pub stat: &'a libc::stat,
    /// Where it is.
    pub at: At<'a>,
}

/// Walks `entry` recursively, calling `f` for it and everything below it that `ignore` keeps
/// (matched against the entry's real path), names sorted bytewise in each directory, depth
/// first. Directories are read with `getdents` through descriptors opened relative to their
/// parent (`O_NOFOLLOW`), every object is stat'ed with one `fstatat(AT_SYMLINK_NOFOLLOW)`
/// relative to its directory: no path is walked again from the root, no symlink is followed.
///
/// The first directory with several subdirectories has them listed and stat'ed by two threads
/// (as git's preload-index): a helper takes them from the last one backwards while this thread
/// walks them in order, until they meet; `f` is only ever called here, in walk order.
pub fn walk(
    entry: &Entry,
    ignore: &IgnoreRules,
    f: &mut dyn FnMut(&Visit<'_>) -> io::Result<()>,
) -> io::Result<()> {
    let st = fstatat(entry.obj.as_fd(), c"", AtFlags::AT_EMPTY_PATH)?;
    let mut rel = entry.rel.clone();
    let mut real = entry.real.clone();
    let at = At::Object(&entry.obj);
    let mut helper = true;
    walk_inner(&mut rel, &mut real, at, &st, ignore, f, None, &mut helper)
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// A directory listed and its entries stat'ed: names (each with its NUL) in one buffer, sorted
/// bytewise through their spans; no allocation per entry.
struct Scan {
    dir: Dir,
    buf: Vec<u8>,
    spans: Vec<(usize, usize)>,
    stats: Vec<libc::stat>,
}

impl Scan {
    fn name(&self, i: usize) -> &CStr {
        name_at(&self.buf, self.spans[i])
    }
}

fn name_at(buf: &[u8], (a, b): (usize, usize)) -> &CStr {
    // Each span holds one name from getdents and its NUL.
    CStr::from_bytes_with_nul(&buf[a..b]).unwrap_or_default()
}

fn scan_dir(dir_fd: OwnedFd) -> io::Result<Scan> {
    let mut dir = Dir::from_fd(dir_fd)?;
    let mut buf: Vec<u8> = Vec::new();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for e in dir.iter() {
        let e = e?;
        let n = e.file_name();
        if n != c"." && n != c".." {
            let start = buf.len();
            buf.extend_from_slice(n.to_bytes_with_nul());
            spans.push((start, buf.len()));
        }
    }
    spans.sort_unstable_by(|a, b| buf[a.0..a.1].cmp(&buf[b.0..b.1]));
    let mut scan = Scan {
        dir,
        buf,
        spans,
        stats: Vec::new(),
    };
    scan.stats.reserve(scan.spans.len());
    for i in 0..scan.spans.len() {
        let st = fstatat(scan.dir.as_fd(), scan.name(i), AtFlags::AT_SYMLINK_NOFOLLOW)?;
        scan.stats.push(st);
    }
    Ok(scan)
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Fills a claimed [`Ahead`] slot; dropped unfilled (a panic), it records an error so the walk
/// scans that directory itself instead of waiting forever.
struct Fill<'a> {
    slot: &'a Ahead,
    ready: &'a Condvar,
}

impl Fill<'_> {
    fn set(self, r: io::Result<Scan>) {
        *self.slot.done.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        self.ready.notify_all();
        std::mem::forget(self);
    }
}

impl Drop for Fill<'_> {
    fn drop(&mut self) {
        let mut done = self.slot.done.lock().unwrap_or_else(|p| p.into_inner());
        if done.is_none() {
            *done = Some(Err(io::Error::other("context scan helper failed")));
        }
        self.ready.notify_all();
    }
}

/// A subdirectory the helper thread may scan ahead: taken by whichever thread claims it first.
#[derive(Default)]
struct Ahead {
    claimed: AtomicBool,
    done: Mutex<Option<io::Result<Scan>>>,
}

#[allow(clippy::too_many_arguments)]
fn walk_inner(
    rel: &mut String,
    real: &mut String,
    at: At<'_>,
    st: &libc::stat,
    ignore: &IgnoreRules,
    f: &mut dyn FnMut(&Visit<'_>) -> io::Result<()>,
    scanned: Option<Scan>,
    helper: &mut bool,
) -> io::Result<()> {
    let excluded = !ignore.is_empty() && !real.is_empty() && ignore.is_excluded(real);
    if !is_dir(st) {
        if !excluded {
            f(&Visit {
                rel: rel.as_str(),
                stat: st,
                at,
            })?;
        }
        return Ok(());
    }
    let dir_fd: Option<OwnedFd> = match (&scanned, &at) {
        (Some(_), _) => None,
        (None, At::Name { dir, name }) => Some(openat(*dir, *name, DIR_FLAGS, Mode::empty())?),
        (None, At::Object(r)) => Some(openat(r.as_fd(), c".", DIR_FLAGS, Mode::empty())?),
    };
    if !excluded {
        f(&Visit {
            rel: rel.as_str(),
            stat: st,
            at,
        })?;
    }
    if excluded && !ignore.has_exceptions() {
        return Ok(());
    }
    let scan = match (scanned, dir_fd) {
        (Some(s), _) => s,
        (None, Some(fd)) => scan_dir(fd)?,
        (None, None) => unreachable!("a directory is either scanned or opened"),
    };
    let subdirs = scan.stats.iter().filter(|st| is_dir(st)).count();
    if *helper && subdirs >= 4 {
        *helper = false;
        return walk_children_with_helper(rel, real, &scan, ignore, f, subdirs);
    }
    let (rel_len, real_len) = (rel.len(), real.len());
    for i in 0..scan.spans.len() {
        let n = scan.name(i);
        push_name(rel, real, n);
        let at = At::Name {
            dir: scan.dir.as_fd(),
            name: n,
        };
        walk_inner(rel, real, at, &scan.stats[i], ignore, f, None, helper)?;
        rel.truncate(rel_len);
        real.truncate(real_len);
    }
    Ok(())
}

fn push_name(rel: &mut String, real: &mut String, n: &CStr) {
    let name = String::from_utf8_lossy(n.to_bytes());
    for p in [rel, real] {
        if !p.is_empty() {
            p.push('/');
        }
        p.push_str(&name);
    }
}

/// The children of `scan`, its subdirectories listed and stat'ed ahead by a helper thread from
/// the last one backwards. What the helper could not scan (an error, an excluded directory) is
/// done here again, so errors surface exactly as in a walk on one thread.
fn walk_children_with_helper(
    rel: &mut String,
    real: &mut String,
    scan: &Scan,
    ignore: &IgnoreRules,
    f: &mut dyn FnMut(&Visit<'_>) -> io::Result<()>,
    subdirs: usize,
) -> io::Result<()> {
    let ahead: Vec<Ahead> = (0..subdirs).map(|_| Ahead::default()).collect();
    let ready = Condvar::new();
    let stop = AtomicBool::new(false);
    let dirs: Vec<usize> = (0..scan.spans.len())
        .filter(|&i| is_dir(&scan.stats[i]))
        .collect();
    let real_base = real.clone();
    // The helper gets the descriptor and the names, not the `Dir` (not `Sync`).
    let (dfd, buf, spans) = (scan.dir.as_fd(), &scan.buf[..], &scan.spans[..]);
    std::thread::scope(|s| -> io::Result<()> {
        s.spawn(|| {
            let mut child_real = String::new();
            for (k, &i) in dirs.iter().enumerate().rev() {
                if stop.load(Ordering::Relaxed) || ahead[k].claimed.swap(true, Ordering::AcqRel) {
                    break;
                }
                // A slot claimed here is always filled, even if this thread panics: the walk
                // waits for it.
                let fill = Fill {
                    slot: &ahead[k],
                    ready: &ready,
                };
                let n = name_at(buf, spans[i]);
                child_real.clear();
                child_real.push_str(&real_base);
                push_name(&mut String::new(), &mut child_real, n);
                // An excluded directory may not be listed at all: left to the walk.
                let r = if !ignore.is_empty() && ignore.is_excluded(&child_real) {
                    Err(io::Error::other("excluded: walked in order"))
                } else {
                    openat(dfd, n, DIR_FLAGS, Mode::empty())
                        .map_err(io::Error::from)
                        .and_then(scan_dir)
                };
                fill.set(r);
            }
        });
        // Whatever happens here, the helper stops at its next directory.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = Stop(&stop);
        let (rel_len, real_len) = (rel.len(), real.len());
        let mut k = 0;
        for i in 0..scan.spans.len() {
            let n = scan.name(i);
            push_name(rel, real, n);
            let mut pre = None;
            if is_dir(&scan.stats[i]) {
                if ahead[k].claimed.swap(true, Ordering::AcqRel) {
                    let mut done = ahead[k].done.lock().unwrap_or_else(|p| p.into_inner());
                    while done.is_none() {
                        done = ready.wait(done).unwrap_or_else(|p| p.into_inner());
                    }
                    pre = done.take().and_then(Result::ok);
                }
                k += 1;
            }
            let at = At::Name {
                dir: scan.dir.as_fd(),
                name: n,
            };
            let mut no_helper = false;
            walk_inner(
                rel,
                real,
                at,
                &scan.stats[i],
                ignore,
                f,
                pre,
                &mut no_helper,
            )?;
            rel.truncate(rel_len);
            real.truncate(real_len);
        }
        Ok(())
    })
}

/// Counters of one build's context hashing, for `RBUILD_DEBUG` traces and tests.
#[derive(Debug, Default)]
pub struct HashStats {
    /// Files whose digest came from the stat cache (not read).
    pub stat_hits: AtomicU64,
    /// Files read and hashed.
    pub files_read: AtomicU64,
}

fn stat_of(st: &libc::stat) -> FileStat {
    FileStat {
        size: st.st_size as u64,
        mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
        ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec,
        inode: st.st_ino,
    }
}

/// Content digest of the files a COPY selects: for every entry (sorted by path) its relative path,
/// type, permission bits, and the sha256 of its bytes (or its link target). Ownership and mtime are
/// not part of it: COPY from the context resets ownership, and touching a file changes nothing.
/// `excludes` are the COPY's `--exclude` patterns. With a store, file digests come from the
/// selection's context index (`rbuild_cache::ContextIndex`) when (size, mtime, ctime, inode) are
/// unchanged, and the index is written back when a file had to be read.
/// Returns the digest and, in walk order, each entry's `src:path` and description (for
/// explaining cache misses and sharing unchanged files; callers make a map of it when needed).
pub fn selection_digest(
    root: &Root,
    srcs: &[String],
    parents: bool,
    excludes: &[String],
    ignore: &IgnoreRules,
    store: Option<&Store>,
    stats: &HashStats,
) -> io::Result<(Digest, FileDescs)> {
    // The selection's identity: where the context is and what is selected from it (the
    // .dockerignore rules are not part of it: they only drop entries).
    let mut index = match store {
        Some(s) => {
            let mut id = root.host_path()?.to_string_lossy().into_owned();
            id.push_str(if parents { "\0--parents" } else { "\0" });
            for x in srcs.iter().chain([&String::new()]).chain(excludes) {
                id.push('\0');
                id.push_str(x);
            }
            s.context_index(&id).map_err(io::Error::other)?
        }
        None => ContextIndex::empty(),
    };
    let excludes: Vec<IgnoreRules> = excludes.iter().map(|p| IgnoreRules::parse(p)).collect();
    let excluded = |rel: &str| excludes.iter().any(|x| x.is_excluded(rel));
    let mut files = FileDescs::default();
    let mut h = Sha256::new();
    let mut buf = Vec::new();
    // One description buffer for every entry (no allocation per file).
    let mut desc = String::new();
    for src in srcs {
        for entry in expand_source(root, src, ignore, parents)? {
            if excluded(&entry.rel) {
                continue;
            }
            walk(&entry, ignore, &mut |v| {
                if !excludes.is_empty() && excluded(v.rel) {
                    return Ok(());
                }
                let perm = v.stat.st_mode & 0o7777;
                desc.clear();
                match v.stat.st_mode & libc::S_IFMT {
                    libc::S_IFLNK => write!(desc, "l {}", v.at.read_link()?.display()),
                    libc::S_IFDIR => write!(desc, "d {perm:o}"),
                    libc::S_IFREG => {
                        let st = stat_of(v.stat);
                        let raw = match index.lookup_raw(v.rel, &st) {
                            Some(raw) => {
                                stats.stat_hits.fetch_add(1, Ordering::Relaxed);
                                raw
                            }
                            None => {
                                stats.files_read.fetch_add(1, Ordering::Relaxed);
                                let raw = file_digest(v.at.open_read()?, &mut buf)?;
                                index.learn_raw(v.rel, st, raw);
                                raw
                            }
                        };
                        write!(desc, "f {perm:o} sha256:").and_then(|()| {
                            let mut hex = [0u8; 64];
                            let _ = hex::encode_to_slice(raw, &mut hex);
                            desc.write_str(std::str::from_utf8(&hex).unwrap_or_default())
                        })
                    }
                    _ => write!(desc, "o {:o} {}", v.stat.st_mode, v.stat.st_rdev),
                }
                .map_err(io::Error::other)?;
                // The digest covers the selection in walk order (sorted names, depth first):
                // the same tree always gives the same digest, with no sort of all paths.
                for part in [
                    src.as_bytes(),
                    b"\0",
                    v.rel.as_bytes(),
                    b"\0",
                    desc.as_bytes(),
                    b"\n",
                ] {
                    h.update(part);
                }
                files.push(src, v.rel, &desc);
                Ok(())
            })?;
        }
    }
    if let Some(s) = store {
        s.save_context_index(&index).map_err(io::Error::other)?;
    }
    Ok((Digest::from_hasher(h), files))
}

/// Each entry of a selection, in walk order: its `src:path` and description (`f <mode> <digest>`,
/// `d <mode>`, `l <target>`, `o <mode> <rdev>`), kept in one text buffer.
#[derive(Debug, Default)]
pub struct FileDescs {
    text: String,
    /// Per entry: where its key ends and where its description ends in `text`.
    ends: Vec<(usize, usize)>,
}

impl FileDescs {
    fn push(&mut self, src: &str, rel: &str, desc: &str) {
        self.text.push_str(src);
        self.text.push(':');
        self.text.push_str(rel);
        let key_end = self.text.len();
        self.text.push_str(desc);
        self.ends.push((key_end, self.text.len()));
    }

    /// `(src:path, description)` of each entry, in walk order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(k, d)| {
            let item = (&self.text[start..k], &self.text[k..d]);
            start = d;
            item
        })
    }
}

/// sha256 of a file's bytes, read in 1 MiB blocks into `buf` (reused between files).
fn file_digest(mut f: fs::File, buf: &mut Vec<u8>) -> io::Result<[u8; 32]> {
    buf.resize(1 << 20, 0);
    let mut h = Sha256::new();
    loop {
        let n = match f.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob() {
        assert!(glob_match(b"*.go", b"main.go"));
        assert!(!glob_match(b"*.go", b"main.rs"));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(glob_match(b"[a-c]x", b"bx"));
        assert!(!glob_match(b"[^a-c]x", b"bx"));
        assert!(glob_match(b"*", b""));
    }

    #[test]
    fn dockerignore_rules() {
        let r = IgnoreRules::parse("# c\n*.log\n!keep.log\n/build\n**/tmp\nsecret/*\n");
        assert!(r.is_excluded("a.log"));
        assert!(!r.is_excluded("keep.log"));
        assert!(r.is_excluded("build/x/y"));
        assert!(r.is_excluded("x/y/tmp/z"));
        assert!(r.is_excluded("tmp"));
        assert!(r.is_excluded("secret/k"));
        assert!(!r.is_excluded("secret"));
        assert!(!r.is_excluded("src/a.log.txt"));
    }

    /// Every path below `dir`, depth first, names sorted bytewise (what `walk` must produce).
    fn expected_order(dir: &Path, rel: &str, out: &mut Vec<String>) {
        out.push(rel.to_string());
        if fs::symlink_metadata(dir).unwrap().is_dir() {
            let mut names: Vec<_> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            for n in names {
                expected_order(&dir.join(&n), &format!("{rel}/{n}"), out);
            }
        }
    }

    #[test]
    fn walk_with_the_helper_thread_keeps_order_and_dockerignore() {
        let d = tempfile::tempdir().unwrap();
        // Enough subdirectories for the helper, nested ones, files between them, and one
        // excluded directory with an exception inside.
        for i in 0..12 {
            let sub = d.path().join(format!("t/d{i:02}"));
            fs::create_dir_all(sub.join("deep/er")).unwrap();
            for j in 0..5 {
                fs::write(sub.join(format!("f{j}")), format!("{i} {j}")).unwrap();
            }
            fs::write(sub.join("deep/er/x"), "x").unwrap();
            fs::write(d.path().join(format!("t/file{i:02}")), "f").unwrap();
        }
        std::os::unix::fs::symlink("d00", d.path().join("t/link")).unwrap();
        let root = Root::open(d.path()).unwrap();
        let st = HashStats::default();
        let mut want = Vec::new();
        expected_order(&d.path().join("t"), "t", &mut want);
        let none = IgnoreRules::default();
        let (d1, files) =
            selection_digest(&root, &["t".into()], false, &[], &none, None, &st).unwrap();
        let got: Vec<&str> = files.iter().map(|(k, _)| &k[2..]).collect();
        assert_eq!(got, want);
        // The same tree gives the same digest every time (whichever thread scanned what).
        for _ in 0..5 {
            let (again, _) =
                selection_digest(&root, &["t".into()], false, &[], &none, None, &st).unwrap();
            assert_eq!(again, d1);
        }
        let ig = IgnoreRules::parse("t/d03\n!t/d03/f1\nt/d07/deep\n");
        let (_, files) =
            selection_digest(&root, &["t".into()], false, &[], &ig, None, &st).unwrap();
        let got: Vec<&str> = files.iter().map(|(k, _)| &k[2..]).collect();
        let kept: Vec<&str> = want
            .iter()
            .map(String::as_str)
            .filter(|p| {
                (!p.starts_with("t/d03") || *p == "t/d03/f1") && !p.starts_with("t/d07/deep")
            })
            .collect();
        assert_eq!(got, kept);
    }

    #[test]
    fn same_size_change_in_place_is_seen_even_with_mtime_put_back() {
        let d = tempfile::tempdir().unwrap();
        let store_dir = tempfile::tempdir().unwrap();
        let store = Store::open(store_dir.path()).unwrap();
        for i in 0..6 {
            fs::create_dir_all(d.path().join(format!("src/d{i}"))).unwrap();
            fs::write(d.path().join(format!("src/d{i}/a.txt")), "hello").unwrap();
        }
        let f = d.path().join("src/d4/a.txt");
        let root = Root::open(d.path()).unwrap();
        let ig = IgnoreRules::default();
        let digest = |st: &HashStats| {
            selection_digest(&root, &["src".into()], false, &[], &ig, Some(&store), st)
                .unwrap()
                .0
        };
        // Files changed just before they are read are read again next time (racily clean,
        // see `rbuild_cache::ctxindex`): let these age first.
        std::thread::sleep(std::time::Duration::from_nanos(
            rbuild_cache::RACY_NS as u64 * 3 / 2,
        ));
        let first = digest(&HashStats::default());
        let st = HashStats::default();
        assert_eq!(digest(&st), first, "a no-op");
        assert_eq!(st.files_read.load(Ordering::Relaxed), 0);
        assert_eq!(st.stat_hits.load(Ordering::Relaxed), 6);
        // Same size, same mtime (put back), in place (same inode): only ctime tells. File times
        // come from the kernel's coarse clock: wait past one tick so the ctime can differ.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let before = fs::metadata(&f).unwrap();
        let mut w = fs::OpenOptions::new().write(true).open(&f).unwrap();
        std::io::Write::write_all(&mut w, b"HELLO").unwrap();
        drop(w);
        let mtime = before.modified().unwrap();
        fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let after = fs::metadata(&f).unwrap();
        assert_eq!(
            (after.len(), after.modified().unwrap()),
            (before.len(), mtime)
        );
        let st = HashStats::default();
        let changed = digest(&st);
        assert_ne!(
            changed, first,
            "an in-place change of the same size is seen"
        );
        assert_eq!(st.files_read.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn walk_never_follows_a_symlink_out_of_the_context() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "1").unwrap();
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("files/sub")).unwrap();
        fs::write(d.path().join("files/sub/a"), "a").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("files/out")).unwrap();
        let ig = IgnoreRules::default();
        let st = HashStats::default();
        let root = Root::open(d.path()).unwrap();
        let (d1, files) =
            selection_digest(&root, &["files".into()], false, &[], &ig, None, &st).unwrap();
        let files: Vec<(&str, &str)> = files.iter().collect();
        let names: Vec<&str> = files.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            [
                "files:files",
                "files:files/out",
                "files:files/sub",
                "files:files/sub/a"
            ]
        );
        let link = &files[1].1;
        assert_eq!(*link, format!("l {}", outside.path().display()));
        fs::write(outside.path().join("secret"), "2").unwrap();
        let (d2, _) =
            selection_digest(&root, &["files".into()], false, &[], &ig, None, &st).unwrap();
        assert_eq!(
            d1, d2,
            "what a symlink points at is not part of the selection"
        );
        assert_eq!(st.files_read.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn digest_ignores_mtime_but_sees_content() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a"), "1").unwrap();
        fs::write(d.path().join("b"), "2").unwrap();
        let ig = IgnoreRules::default();
        let st = HashStats::default();
        let root = Root::open(d.path()).unwrap();
        let (d1, _) = selection_digest(&root, &["a".into()], false, &[], &ig, None, &st).unwrap();
        fs::write(d.path().join("b"), "3").unwrap();
        let (d2, _) = selection_digest(&root, &["a".into()], false, &[], &ig, None, &st).unwrap();
        assert_eq!(
            d1, d2,
            "changing an unselected file must not change the digest"
        );
        fs::write(d.path().join("a"), "1").unwrap();
        let (d3, _) = selection_digest(&root, &["a".into()], false, &[], &ig, None, &st).unwrap();
        assert_eq!(
            d1, d3,
            "rewriting the same bytes must not change the digest"
        );
        fs::write(d.path().join("a"), "x").unwrap();
        let (d4, _) = selection_digest(&root, &["a".into()], false, &[], &ig, None, &st).unwrap();
        assert_ne!(d1, d4);
        assert!(selection_digest(&root, &["missing".into()], false, &[], &ig, None, &st).is_err());
        let (g, files) =
            selection_digest(&root, &["*".into()], false, &[], &ig, None, &st).unwrap();
        assert_eq!(files.iter().count(), 2);
        assert_ne!(g, d4);
    }

    #[test]
    fn invalid_dockerignore_patterns() {
        // BuildKit v0.32: `illegal exclusion pattern: "!"`; Go's filepath.Match: ErrBadPattern.
        assert!(validate_ignore("# ok\n*.log\n!keep.log\n[a-c]x\n").is_ok());
        let e = validate_ignore("a\n!\n").unwrap_err();
        assert!(
            e.contains("line 2") && e.contains("illegal exclusion pattern: \"!\""),
            "{e}"
        );
        assert!(validate_ignore("src/[abc\n").is_err());
        assert!(validate_ignore("x\\\n").is_err());
    }

    #[test]
    fn double_star_spans_directories_only_with_parents() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "top.txt",
            "a/one.txt",
            "a/b/two.txt",
            "a/b/c/three.txt",
            "a/b/x.md",
        ] {
            let p = d.path().join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, "x").unwrap();
        }
        let root = Root::open(d.path()).unwrap();
        let ig = IgnoreRules::default();
        let rels = |parents| -> Vec<String> {
            let mut v: Vec<String> = expand_source(&root, "**/*.txt", &ig, parents)
                .unwrap()
                .into_iter()
                .map(|e| e.rel)
                .collect();
            v.sort();
            v
        };
        // BuildKit v0.32: a plain COPY treats `**` as one component, --parents as any depth.
        assert_eq!(rels(false), vec!["a/one.txt"]);
        assert_eq!(
            rels(true),
            vec!["a/b/c/three.txt", "a/b/two.txt", "a/one.txt", "top.txt"]
        );
    }
}

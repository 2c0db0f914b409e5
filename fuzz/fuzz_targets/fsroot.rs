//! The in-root resolver (`rbuild-fsroot`) on random trees of directories, files and symlinks
//! (absolute, relative, `..`-laden, magic `/proc` links, links to the sibling "outside" tree),
//! queried with random paths. Whatever the tree says, every object resolved, opened or created
//! must be inside the root: its kernel path starts with the root's, its device and inode are
//! those of that path, `inner_path` agrees, and nothing appears in the outside tree.
//!
//! Input: a list of operations, each one byte of kind followed by byte-coded paths.
#![no_main]

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nix::fcntl::OFlag;
use rbuild_fsroot::{Resolved, Root};

/// Path components the tree and the queries are made of.
const NAMES: &[&str] = &[
    "a", "b", "c", "..", ".", "", "outside", "etc", "proc", "self", "root", "fd", "0", "l", "x",
];

/// `base/root` (the root, rebuilt per input) beside `base/outside` (must never change).
fn base() -> &'static PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let b = std::env::temp_dir().join(format!("fsroot-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&b);
        std::fs::create_dir_all(b.join("outside/a/b")).unwrap();
        std::fs::create_dir_all(b.join("outside/etc")).unwrap();
        std::fs::write(b.join("outside/etc/secret"), "x").unwrap();
        std::os::unix::fs::symlink("/", b.join("outside/l")).unwrap();
        b
    })
}

/// Every path below `dir` (not following links), sorted.
fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Decodes a path: a length byte, then one byte per component (a name from NAMES); a high bit on
/// the length makes it absolute. The outside tree's absolute path is reachable too.
fn path(data: &mut &[u8], outside: &Path) -> Option<String> {
    let (&len, rest) = data.split_first()?;
    *data = rest;
    let n = (len & 0x07) as usize;
    let mut s = match len >> 5 {
        0 | 1 | 2 => String::new(),
        3 | 4 | 5 => "/".to_string(),
        6 => format!("{}/", outside.display()),
        _ => "/proc/self/".to_string(),
    };
    for i in 0..n {
        let (&c, rest) = data.split_first()?;
        *data = rest;
        if i > 0 {
            s.push('/');
        }
        s.push_str(NAMES[c as usize % NAMES.len()]);
    }
    Some(s)
}

/// The checks for one resolved object.
fn check(root: &Root, root_host: &Path, r: &Resolved, query: &str) {
    let host = r.host_path().expect("host path of a resolved object");
    assert!(
        host.starts_with(root_host),
        "{query:?} resolved to {} outside {}",
        host.display(),
        root_host.display()
    );
    let by_fd = r.metadata().expect("metadata of a resolved object");
    let by_path = std::fs::symlink_metadata(&host).expect("lstat of the kernel path");
    assert_eq!(
        (by_fd.dev(), by_fd.ino()),
        (by_path.dev(), by_path.ino()),
        "{query:?}: {} is not the resolved object",
        host.display()
    );
    let inner = root.inner_path(r).expect("inner path");
    assert_eq!(
        Path::new("/").join(host.strip_prefix(root_host).unwrap()),
        inner
    );
}

fuzz_target!(|data: &[u8]| {
    let base = base();
    let root_dir = base.join("root");
    let outside = base.join("outside");
    let _ = std::fs::remove_dir_all(&root_dir);
    std::fs::create_dir(&root_dir).unwrap();
    let before = listing(&outside);
    let mut data = data;
    // Build the tree: plain host calls on paths joined lexically *without* following anything
    // the tree already holds would be as unsafe as the code under test; the tree is built with
    // the resolver itself (mkdir_all, open_file) and symlinkat in a resolved parent.
    let root = Root::open(&root_dir).unwrap();
    let root_host = root.host_path().unwrap();
    let mut queries = Vec::new();
    while let Some((&op, rest)) = data.split_first() {
        data = rest;
        let Some(p) = path(&mut data, &outside) else {
            break;
        };
        match op % 6 {
            0 => {
                if let Ok(r) = root.mkdir_all(&p, 0o755, None) {
                    check(&root, &root_host, &r, &p);
                }
            }
            1 => {
                let flags = OFlag::O_WRONLY | OFlag::O_CREAT;
                if let Ok(f) = root.open_file(&p, flags, 0o644) {
                    let host = std::fs::read_link(format!(
                        "/proc/self/fd/{}",
                        std::os::fd::AsRawFd::as_raw_fd(&f)
                    ))
                    .unwrap();
                    assert!(
                        host.starts_with(&root_host),
                        "{p:?} created {}",
                        host.display()
                    );
                }
            }
            2 | 3 => {
                // A symlink named by `p`'s last component in its (resolved) parent.
                let Some(target) = path(&mut data, &outside) else {
                    break;
                };
                let pp = Path::new(&p);
                let (Some(parent), Some(name)) = (pp.parent(), pp.file_name()) else {
                    continue;
                };
                if let Ok(dir) = root.resolve(parent) {
                    let _ = nix::unistd::symlinkat(target.as_str(), dir.as_fd(), name);
                }
            }
            _ => queries.push(p),
        }
    }
    for q in &queries {
        if let Ok(r) = root.resolve(q) {
            check(&root, &root_host, &r, q);
        }
        if let Ok(r) = root.resolve_nofollow(q) {
            check(&root, &root_host, &r, q);
        }
    }
    assert_eq!(
        before,
        listing(&outside),
        "something changed outside the root"
    );
});

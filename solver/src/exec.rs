//! Execution of the two layer-producing ops: RUN through the sandbox, COPY into an overlay of the
//! parent chain whose fresh upper directory becomes the layer.

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rbuild_cache::{SnapshotBuilder, Store};
use rbuild_frontend::{CopyFrom, CopyOp, ExecOp, NetworkMode};
use rbuild_sandbox::{OverlayMount, Rootfs, RunOptions};

use crate::context::{self, IgnoreRules};
use crate::fsutil::{self, Attrs};
use crate::{Error, NodeOut};

/// How many output lines a failure report keeps.
const TAIL_LINES: usize = 10;

/// Default PATH, as BuildKit sets it when the image has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(crate) enum ExecError {
    /// The step ran and failed: exit code and last lines of output (or the message, for COPY).
    Failed {
        code: i32,
        output: Vec<String>,
    },
    Other(Error),
}

impl<E: Into<Error>> From<E> for ExecError {
    fn from(e: E) -> Self {
        ExecError::Other(e.into())
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ExecError {
    let what = what.into();
    move |source| ExecError::Other(Error::Io { what, source })
}

/// A scratch directory in the store for mount points, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(store: &Store, prefix: &str) -> Result<TempDir, ExecError> {
        let base = store.root().join("tmp");
        fs::create_dir_all(&base).map_err(io_err(format!("creating {}", base.display())))?;
        let nonce: u64 = rand_u64();
        let p = base.join(format!("{prefix}-{}-{nonce:x}", std::process::id()));
        fs::create_dir(&p).map_err(io_err(format!("creating {}", p.display())))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// Lower dirs for an overlay: an empty directory stands in for an empty chain (`FROM scratch`).
fn lowers_or_empty(store: &Store, lowers: &[PathBuf]) -> Result<Vec<PathBuf>, ExecError> {
    if !lowers.is_empty() {
        return Ok(lowers.to_vec());
    }
    let empty = store.root().join("empty");
    fs::create_dir_all(&empty).map_err(io_err(format!("creating {}", empty.display())))?;
    Ok(vec![empty])
}

/// Resolves `user` (`name`, `uid`, `uid:gid`, `name:group`) in the chain `lowers`; root when empty.
fn resolve_user(
    store: &Store,
    lowers: &[PathBuf],
    user: &str,
) -> Result<(u32, u32, Vec<u32>, String), ExecError> {
    if user.is_empty() || user == "root" || user == "0" {
        return Ok((0, 0, vec![], "/root".into()));
    }
    let mnt = TempDir::new(store, "user")?;
    let m = OverlayMount::mount(&lowers_or_empty(store, lowers)?, None, &mnt.0)?;
    let r = rbuild_sandbox::resolve_user(m.path(), user)?;
    drop(m);
    Ok(r)
}

/// [`resolve_user`] for the container runner.
pub(crate) fn resolve_user_pub(
    store: &Store,
    lowers: &[PathBuf],
    user: &str,
) -> Result<(u32, u32, Vec<u32>, String), Error> {
    resolve_user(store, lowers, user).map_err(|e| match e {
        ExecError::Other(e) => e,
        ExecError::Failed { output, .. } => Error::CopyFailed {
            step: format!("user {user}"),
            message: output.join("\n"),
        },
    })
}

/// Runs a RUN step with `lowers` (top first) below the snapshot's fresh upper directory.
pub(crate) fn run(
    store: &Store,
    exec: &ExecOp,
    lowers: &[PathBuf],
    _sources: &[&Arc<NodeOut>],
    sb: &SnapshotBuilder,
    log: &mut (dyn FnMut(String) + Send),
) -> Result<(), ExecError> {
    let (uid, gid, groups, home) = resolve_user(store, lowers, &exec.user)?;
    let mut env = exec.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={home}"));
    }
    let mut spec = rbuild_sandbox::default_spec(
        exec.args.clone(),
        env,
        &exec.cwd,
        exec.network == NetworkMode::None,
    );
    if let Some(p) = spec.process_mut() {
        let mut u = p.user().clone();
        u.set_uid(uid);
        u.set_gid(gid);
        u.set_additional_gids(if groups.is_empty() {
            None
        } else {
            Some(groups)
        });
        p.set_user(u);
    }
    let rootfs = Rootfs::Overlay {
        lower: lowers_or_empty(store, lowers)?,
        upper: sb.fs_dir(),
        work: sb.work_dir(),
    };
    let mut c = rbuild_sandbox::spawn(
        &spec,
        RunOptions {
            rootfs,
            stdin: std::process::Stdio::null(),
            stdout: std::process::Stdio::piped(),
            stderr: std::process::Stdio::piped(),
        },
    )?;
    let out = c.stdout();
    let err = c.stderr();
    let tail = Mutex::new(VecDeque::with_capacity(TAIL_LINES));
    let log = Mutex::new(log);
    std::thread::scope(|s| {
        let pump = |r: Box<dyn Read + Send>| {
            let tail = &tail;
            let log = &log;
            move || {
                for line in BufReader::new(r).split(b'\n') {
                    let Ok(line) = line else { break };
                    let line = String::from_utf8_lossy(&line)
                        .trim_end_matches('\r')
                        .to_string();
                    {
                        let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                        if t.len() == TAIL_LINES {
                            t.pop_front();
                        }
                        t.push_back(line.clone());
                    }
                    (log.lock().unwrap_or_else(|e| e.into_inner()))(line);
                }
            }
        };
        if let Some(o) = out {
            s.spawn(pump(Box::new(o)));
        }
        if let Some(e) = err {
            s.spawn(pump(Box::new(e)));
        }
    });
    let status = c.wait()?;
    if status.code() != 0 {
        let output = tail
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .into_iter()
            .collect();
        return Err(ExecError::Failed {
            code: status.code(),
            output,
        });
    }
    Ok(())
}

fn copy_failed(msg: impl Into<String>) -> ExecError {
    ExecError::Failed {
        code: 1,
        output: vec![msg.into()],
    }
}

/// Looks a name up in the image's `/etc/passwd` or `/etc/group` (field 3 is the id).
fn lookup_id(root: &Path, file: &str, name: &str) -> Option<u32> {
    let text = fs::read_to_string(fsutil::resolve_link(root, file).ok()?).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[0] == name)
            .then(|| f[2].parse().ok())
            .flatten()
    })
}

/// `--chown=user[:group]` to ids; a user without group uses the uid as gid (Docker's rule).
fn parse_chown(root: &Path, spec: &str) -> Result<(u32, u32), ExecError> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let id = |name: &str, file: &str| -> Result<u32, ExecError> {
        name.parse::<u32>().ok().or_else(|| lookup_id(root, file, name)).ok_or_else(|| {
            copy_failed(format!(
                "--chown={spec}: no {} named \"{name}\" in the image's {file}; use a numeric id or create it first",
                if file.ends_with("passwd") { "user" } else { "group" }
            ))
        })
    };
    let uid = id(u, "/etc/passwd")?;
    let gid = match g {
        Some(g) => id(g, "/etc/group")?,
        None => uid,
    };
    Ok((uid, gid))
}

/// Runs a COPY/ADD: mounts the parent chain with the snapshot as upper at a scratch mount point and
/// copies the selected sources into it with Docker's destination rules.
pub(crate) fn copy(
    store: &Store,
    op: &CopyOp,
    lowers: &[PathBuf],
    source_lowers: Option<&[PathBuf]>,
    context_dir: &Path,
    ignore: &IgnoreRules,
    sb: &SnapshotBuilder,
) -> Result<(), ExecError> {
    let mnt = TempDir::new(store, "copy")?;
    let (upper, work) = (sb.fs_dir(), sb.work_dir());
    let target = OverlayMount::mount(
        &lowers_or_empty(store, lowers)?,
        Some((&upper, &work)),
        &mnt.0,
    )?;
    let root = target.path().to_path_buf();
    // Where sources come from.
    let src_mnt;
    let _src_mount;
    let inline_dir;
    let no_ignore = IgnoreRules::default();
    let (src_root, ignore, default_owner): (PathBuf, &IgnoreRules, Option<(u32, u32)>) =
        match &op.from {
            CopyFrom::Context => (context_dir.to_path_buf(), ignore, Some((0, 0))),
            CopyFrom::Input => {
                let l = source_lowers.ok_or_else(|| copy_failed("COPY --from has no source"))?;
                src_mnt = TempDir::new(store, "src")?;
                let m = OverlayMount::mount(&lowers_or_empty(store, l)?, None, &src_mnt.0)?;
                let p = m.path().to_path_buf();
                _src_mount = m;
                (p, &no_ignore, None)
            }
            CopyFrom::Inline { name, content } => {
                inline_dir = TempDir::new(store, "inline")?;
                let f = inline_dir.0.join(context::clean_path(name));
                if let Some(parent) = f.parent() {
                    fs::create_dir_all(parent).map_err(io_err("writing heredoc"))?;
                }
                fs::write(&f, content).map_err(io_err("writing heredoc"))?;
                let perm = std::os::unix::fs::PermissionsExt::from_mode(0o644);
                fs::set_permissions(&f, perm).map_err(io_err("writing heredoc"))?;
                (inline_dir.0.clone(), &no_ignore, Some((0, 0)))
            }
        };
    let owner = match &op.chown {
        Some(c) => Some(parse_chown(&root, c)?),
        None => default_owner,
    };
    let mut entries = Vec::new();
    for src in &op.srcs {
        if op.add
            && (src.starts_with("http://")
                || src.starts_with("https://")
                || src.starts_with("git@"))
        {
            return Err(copy_failed(format!("ADD {src}: remote sources are not supported yet; download the file into the context and ADD it from there")));
        }
        let found = context::expand_source(&src_root, src, ignore).map_err(|e| {
            copy_failed(format!(
                "failed to compute cache key: \"{src}\" not found ({e}); check the path (relative to the {} {})",
                if matches!(op.from, CopyFrom::Context) { "build context" } else { "source stage root" },
                src_root.display()
            ))
        })?;
        let excluded = |rel: &str| {
            op.excludes
                .iter()
                .any(|p| IgnoreRules::parse(p).is_excluded(rel))
        };
        entries.extend(found.into_iter().filter(|e| !excluded(&e.rel)));
    }
    let dest = &op.dest;
    let dest_host =
        fsutil::resolve_in_root(&root, dest).map_err(io_err(format!("resolving {dest}")))?;
    let dest_is_dir = dest.ends_with('/')
        || entries.len() > 1
        || op.parents
        || fs::metadata(fsutil::resolve_link(&root, dest).unwrap_or(dest_host.clone()))
            .is_ok_and(|m| m.is_dir());
    let ignore_rel = |p: &Path| -> bool {
        match p.strip_prefix(&src_root) {
            Ok(rel) => {
                let rel = rel.to_string_lossy();
                !ignore.is_excluded(&rel)
                    && !op
                        .excludes
                        .iter()
                        .any(|x| IgnoreRules::parse(x).is_excluded(&rel))
            }
            Err(_) => true,
        }
    };
    for e in &entries {
        let md =
            fs::symlink_metadata(&e.abs).map_err(io_err(format!("reading {}", e.abs.display())))?;
        let target_path = if op.parents {
            format!("{}/{}", dest.trim_end_matches('/'), e.rel)
        } else if md.is_dir() {
            dest.clone()
        } else if dest_is_dir {
            format!(
                "{}/{}",
                dest.trim_end_matches('/'),
                fsutil::base_name(&e.rel).to_string_lossy()
            )
        } else {
            dest.clone()
        };
        let parent = Path::new(&target_path)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or("/".into());
        let parent_host = fsutil::mkdir_all_in_root(&root, &parent, owner)
            .map_err(|err| copy_failed(format!("cannot create {parent}: {err}")))?;
        let name = fsutil::base_name(&target_path);
        let dst = if name.is_empty() {
            parent_host
        } else {
            parent_host.join(name)
        };
        let mode = match &op.chmod {
            Some(c) => Some(fsutil::parse_chmod(c, 0o644, md.is_dir()).ok_or_else(|| {
                copy_failed(format!(
                    "--chmod={c}: not an octal mode or symbolic mode like u+x"
                ))
            })?),
            None => None,
        };
        let attrs = Attrs { owner, mode };
        let mut filter = |p: &Path| ignore_rel(p);
        fsutil::copy_tree(&e.abs, &dst, attrs, &mut filter)
            .map_err(|err| copy_failed(format!("copying {} to {target_path}: {err}", e.rel)))?;
    }
    drop(target);
    Ok(())
}

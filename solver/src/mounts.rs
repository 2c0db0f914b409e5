//! `RUN --mount`: cache, bind, tmpfs, secret and ssh mounts, turned into OCI spec mounts for the
//! sandbox. Nothing mounted here ends up in the step's layer: the sandbox mounts them in the
//! container's own mount namespace and removes the mount-point stubs it had to create.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rbuild_cache::{CacheMountGuard, Sharing, Store};
use rbuild_frontend::{ExecOp, Mount};
use rbuild_sandbox::OverlayMount;
use serde_json::json;

use rbuild_fsroot::Root;

use crate::context::IgnoreRules;
use crate::{Error, NodeOut};

/// Where a `--secret` comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// `src=PATH`: a file.
    File(PathBuf),
    /// `env=VAR`: an environment variable of the rbuild process.
    Env(String),
}

/// Secrets and ssh agents the build may mount (`--secret`, `--ssh`).
#[derive(Clone, Debug, Default)]
pub struct Forwarded {
    /// `--secret id=ID,...` by id.
    pub secrets: BTreeMap<String, SecretSource>,
    /// `--ssh ID[=SOCKET]` by id: the agent socket.
    pub ssh: BTreeMap<String, PathBuf>,
}

/// Mounts prepared for one RUN; everything is released when dropped.
#[derive(Default)]
pub(crate) struct Prepared {
    /// OCI mounts to add to the spec.
    pub mounts: Vec<oci_spec::runtime::Mount>,
    /// Extra environment (`SSH_AUTH_SOCK`).
    pub env: Vec<String>,
    // Held for the duration of the RUN (order: mounts before the dirs they live in).
    overlays: Vec<OverlayMount>,
    caches: Vec<CacheMountGuard>,
    secrets: Vec<SecretTmpfs>,
    dirs: Vec<ScratchDir>,
}

/// A private tmpfs holding one secret, detached on drop.
struct SecretTmpfs(PathBuf);

impl SecretTmpfs {
    /// Mounts a tmpfs (0700, no exec/suid/dev) on `dir`, sized for `len` bytes of secret.
    fn mount(dir: &Path, len: usize) -> Result<SecretTmpfs, Error> {
        use nix::mount::{mount, MsFlags};
        // Room for the file and its inode, rounded up to whole pages by the kernel.
        let size = len + 64 * 1024;
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(format!("mode=0700,size={size},nr_inodes=16").as_str()),
        )
        .map_err(|e| io_err(dir)(e.into()))?;
        Ok(SecretTmpfs(dir.to_path_buf()))
    }
}

impl Drop for SecretTmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A directory under `<store>/tmp`, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(store: &Store, prefix: &str) -> Result<ScratchDir, Error> {
        let base = store.root().join("tmp");
        fs::create_dir_all(&base).map_err(io_err(&base))?;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = base.join(format!("{prefix}-{}-m{n}", std::process::id()));
        fs::create_dir(&p).map_err(io_err(&p))?;
        Ok(ScratchDir(p))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // Unmount before removing the directories they are mounted on.
        self.overlays.clear();
        self.caches.clear();
        self.secrets.clear();
        self.dirs.clear();
    }
}

fn io_err(p: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        what: format!("preparing RUN --mount at {}", p.display()),
        source,
    }
}

fn opt<'a>(m: &'a Mount, k: &str) -> Option<&'a str> {
    m.options
        .iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
}

fn flag(m: &Mount, k: &str) -> bool {
    matches!(opt(m, k), Some("" | "true" | "1"))
}

fn oci_mount(dest: &str, typ: &str, source: &Path, options: &[&str]) -> oci_spec::runtime::Mount {
    let v = json!({"destination": dest, "type": typ, "source": source, "options": options});
    serde_json::from_value(v).unwrap_or_default()
}

fn parse_id(m: &Mount, k: &str, step: &str) -> Result<Option<u32>, Error> {
    opt(m, k)
        .map(|v| {
            v.parse::<u32>().map_err(|_| Error::CopyFailed {
                step: step.to_string(),
                message: format!("--mount {k}={v}: not a number"),
            })
        })
        .transpose()
}

fn parse_mode(m: &Mount, default: u32, step: &str) -> Result<u32, Error> {
    match opt(m, "mode") {
        None => Ok(default),
        Some(v) => u32::from_str_radix(v, 8).map_err(|_| Error::CopyFailed {
            step: step.to_string(),
            message: format!("--mount mode={v}: not an octal mode like 0755"),
        }),
    }
}

/// Which `from=` source (in mount order) each mount uses.
fn source_of<'a>(
    exec: &ExecOp,
    idx: usize,
    sources: &'a [&'a Arc<NodeOut>],
) -> Option<&'a Arc<NodeOut>> {
    let n = exec.mounts[..idx]
        .iter()
        .filter(|m| opt(m, "from").is_some())
        .count();
    opt(&exec.mounts[idx], "from").and(sources.get(n).copied())
}

/// Prepares every `--mount` of `exec`. `sources` are the `from=` inputs in mount order.
#[allow(clippy::too_many_arguments)]
pub(crate) fn prepare(
    store: &Store,
    exec: &ExecOp,
    sources: &[&Arc<NodeOut>],
    context: &Path,
    ignore: &IgnoreRules,
    fwd: &Forwarded,
    step: &str,
) -> Result<Prepared, Error> {
    let mut p = Prepared::default();
    for (i, m) in exec.mounts.iter().enumerate() {
        let from = source_of(exec, i, sources);
        let fail = |message: String| Error::CopyFailed {
            step: step.to_string(),
            message,
        };
        match m.kind.as_str() {
            "bind" => {
                let src_root = match from {
                    Some(src) => mount_chain(store, src, &mut p)?,
                    None => filtered_context(store, context, ignore, &mut p)?,
                };
                let source = opt(m, "source").or(opt(m, "src")).unwrap_or("/");
                // Resolved inside the source's own root (a link to `/` there means that root);
                // the sandbox gets the kernel's path of what was found, which has no link in it.
                let Some(host) = resolve_source(&src_root, source)? else {
                    return Err(fail(format!(
                        "--mount=type=bind,source={source}: not found in the {}",
                        if from.is_some() {
                            "source stage"
                        } else {
                            "build context"
                        }
                    )));
                };
                if opt(m, "readonly") == Some("false") {
                    // Writes go to a throw-away upper directory.
                    let lower = if host.is_dir() {
                        host
                    } else {
                        return Err(fail(format!(
                            "--mount=type=bind,source={source},rw: only directories can be mounted read-write"
                        )));
                    };
                    let scratch = ScratchDir::new(store, "bindrw")?;
                    let (upper, work, mnt) = (
                        scratch.0.join("u"),
                        scratch.0.join("w"),
                        scratch.0.join("m"),
                    );
                    for d in [&upper, &work, &mnt] {
                        fs::create_dir(d).map_err(io_err(d))?;
                    }
                    let ov = OverlayMount::mount(&[lower], Some((&upper, &work)), &mnt)?;
                    p.mounts
                        .push(oci_mount(&m.target, "bind", &mnt, &["rbind", "rw"]));
                    p.overlays.push(ov);
                    p.dirs.push(scratch);
                } else {
                    p.mounts
                        .push(oci_mount(&m.target, "bind", &host, &["rbind", "ro"]));
                }
            }
            "cache" => {
                let id = opt(m, "id").unwrap_or(&m.target).to_string();
                let sharing = match opt(m, "sharing").unwrap_or("shared") {
                    "shared" => Sharing::Shared,
                    "locked" => Sharing::Locked,
                    "private" => Sharing::Private,
                    other => {
                        return Err(fail(format!(
                            "--mount=type=cache,sharing={other}: must be shared, private or locked"
                        )))
                    }
                };
                let mode = parse_mode(m, 0o755, step)?;
                let uid = parse_id(m, "uid", step)?.unwrap_or(0);
                let gid = parse_id(m, "gid", step)?.unwrap_or(0);
                let seed = match from {
                    Some(src) => {
                        let root = mount_chain(store, src, &mut p)?;
                        let source = opt(m, "source").or(opt(m, "src")).unwrap_or("/");
                        resolve_source(&root, source)?
                    }
                    None => None,
                };
                let guard = store.cache_mount(&id, sharing, |dir| {
                    if let Some(seed) = &seed {
                        if seed.is_dir() {
                            copy_into(seed, dir, &mut |_| true)?;
                        }
                    }
                    std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
                    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
                })?;
                let access = if opt(m, "readonly") == Some("true") {
                    "ro"
                } else {
                    "rw"
                };
                p.mounts.push(oci_mount(
                    &m.target,
                    "bind",
                    guard.dir(),
                    &["rbind", access],
                ));
                p.caches.push(guard);
            }
            "tmpfs" => {
                // BuildKit's options: `mount` shows `rw,nosuid,relatime[,size=...]`.
                let mut options = vec!["nosuid".to_string()];
                if let Some(size) = opt(m, "size") {
                    options.push(format!("size={size}"));
                }
                let v = json!({"destination": m.target, "type": "tmpfs", "source": "tmpfs", "options": options});
                p.mounts.push(serde_json::from_value(v).unwrap_or_default());
            }
            "secret" => {
                let id = opt(m, "id")
                    .map(str::to_string)
                    .unwrap_or_else(|| m.target.rsplit('/').next().unwrap_or_default().to_string());
                let required = flag(m, "required");
                let content = match fwd.secrets.get(&id) {
                    Some(SecretSource::File(path)) => fs::read(path).map_err(|e| {
                        fail(format!("secret {id}: reading {}: {e}; check --secret id={id},src=PATH", path.display()))
                    })?,
                    Some(SecretSource::Env(var)) => std::env::var(var)
                        .map_err(|_| fail(format!("secret {id}: environment variable {var} is not set; check --secret id={id},env={var}")))?
                        .into_bytes(),
                    None if required => {
                        return Err(fail(format!(
                            "secret {id} is required but was not given; pass --secret id={id},src=PATH or --secret id={id},env=VAR"
                        )))
                    }
                    None => continue,
                };
                // On a tmpfs of its own, never on the store's disk: the bytes vanish with the
                // mount, even if rbuild is killed (the next Store::open detaches leftovers).
                let dir = ScratchDir::new(store, "secret")?;
                let tmpfs = SecretTmpfs::mount(&dir.0, content.len())?;
                let f = dir.0.join("secret");
                fs::write(&f, content).map_err(io_err(&f))?;
                let uid = parse_id(m, "uid", step)?.unwrap_or(0);
                let gid = parse_id(m, "gid", step)?.unwrap_or(0);
                std::os::unix::fs::chown(&f, Some(uid), Some(gid)).map_err(io_err(&f))?;
                fs::set_permissions(&f, fs::Permissions::from_mode(parse_mode(m, 0o400, step)?))
                    .map_err(io_err(&f))?;
                p.mounts.push(oci_mount(
                    &m.target,
                    "bind",
                    &f,
                    &["bind", "ro", "nosuid", "nodev", "noexec"],
                ));
                p.secrets.push(tmpfs);
                p.dirs.push(dir);
            }
            "ssh" => {
                let id = opt(m, "id").unwrap_or("default");
                let required = opt(m, "required").is_none_or(|v| matches!(v, "" | "true" | "1"));
                match fwd.ssh.get(id) {
                    Some(sock) => {
                        p.mounts.push(oci_mount(&m.target, "bind", sock, &["bind"]));
                        p.env.push(format!("SSH_AUTH_SOCK={}", m.target));
                    }
                    None if required => {
                        return Err(fail(format!(
                            "--mount=type=ssh,id={id}: no ssh agent forwarded; pass --ssh {id} (uses $SSH_AUTH_SOCK) or --ssh {id}=/path/to/agent.sock"
                        )))
                    }
                    None => {}
                }
            }
            other => {
                return Err(fail(format!(
                    "--mount=type={other} is not supported (bind, cache, tmpfs, secret, ssh)"
                )))
            }
        }
    }
    if !exec.mounts.iter().any(|m| m.target == "/etc/hosts") {
        let dir = ScratchDir::new(store, "hosts")?;
        let f = dir.0.join("hosts");
        fs::write(&f, hosts_file(exec)).map_err(io_err(&f))?;
        p.mounts.push(oci_mount(
            "/etc/hosts",
            "bind",
            &f,
            &["bind", "ro", "nosuid", "nodev"],
        ));
        p.dirs.push(dir);
    }
    Ok(p)
}

/// The hostname of a RUN step: `BUILDKIT_SANDBOX_HOSTNAME` or BuildKit's default.
pub(crate) fn hostname(exec: &ExecOp) -> &str {
    if exec.hostname.is_empty() {
        "buildkitsandbox"
    } else {
        &exec.hostname
    }
}

/// A RUN step's `/etc/hosts`, byte for byte as BuildKit's executor writes it (`initHostsFile`
/// plus one `IP<TAB>HOST` line per `--add-host`).
pub(crate) fn hosts_file(exec: &ExecOp) -> String {
    let mut s = format!(
        "127.0.0.1\tlocalhost {}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        hostname(exec)
    );
    for (host, ip) in &exec.extra_hosts {
        s.push_str(&format!("{ip}\t{host}\n"));
    }
    s
}

/// Resolves a mount's `source` inside `root` (following links as if `root` were `/`); the host
/// path of what it names, or `None` when it names nothing there.
fn resolve_source(root: &Path, source: &str) -> Result<Option<PathBuf>, Error> {
    let r = Root::open(root).map_err(|e| io_err(root)(e.into()))?;
    match r.resolve(source) {
        Ok(found) => found.host_path().map(Some).map_err(io_err(root)),
        Err(rbuild_fsroot::Error::NotFound { .. } | rbuild_fsroot::Error::NotADirectory { .. }) => {
            Ok(None)
        }
        Err(e) => Err(io_err(root)(e.into())),
    }
}

/// Mounts a stage's layer chain read-only at a scratch directory and returns its path.
fn mount_chain(store: &Store, src: &NodeOut, p: &mut Prepared) -> Result<PathBuf, Error> {
    let dir = ScratchDir::new(store, "from")?;
    let lowers = crate::parent_dirs(store, src);
    let ov = OverlayMount::mount(&lowers, None, &dir.0)?;
    let path = dir.0.clone();
    p.overlays.push(ov);
    p.dirs.push(dir);
    Ok(path)
}

/// The build context as a bind source: the directory itself when nothing is ignored, else a copy
/// of the files `.dockerignore` keeps (so an ignored file is never visible to a RUN).
fn filtered_context(
    store: &Store,
    context: &Path,
    ignore: &IgnoreRules,
    p: &mut Prepared,
) -> Result<PathBuf, Error> {
    if ignore.is_empty() {
        return Ok(context.to_path_buf());
    }
    let dir = ScratchDir::new(store, "ctx")?;
    let mut keep = |path: &Path| match path.strip_prefix(context) {
        Ok(rel) => !ignore.is_excluded(&rel.to_string_lossy()),
        Err(_) => true,
    };
    copy_into(context, &dir.0, &mut keep).map_err(io_err(context))?;
    let path = dir.0.clone();
    p.dirs.push(dir);
    Ok(path)
}

/// What of a RUN's mounts belongs in its cache key beyond the mount specs themselves: the content
/// digest of every bind mount from the build context (stage sources are covered by their keys;
/// cache, tmpfs, secret and ssh contents never are).
pub(crate) fn key_content(
    exec: &ExecOp,
    context: &Root,
    ignore: &IgnoreRules,
    store: &Store,
    stats: &crate::context::HashStats,
) -> std::io::Result<serde_json::Value> {
    let mut out = serde_json::Map::new();
    for m in &exec.mounts {
        if m.kind == "bind" && opt(m, "from").is_none() {
            let source = opt(m, "source")
                .or(opt(m, "src"))
                .unwrap_or("/")
                .to_string();
            let (d, files) = crate::context::selection_digest(
                context,
                &[source],
                false,
                &[],
                ignore,
                Some(store),
                stats,
            )?;
            out.insert(
                m.target.clone(),
                json!({"context": d.to_string(), "files": files.iter().collect::<BTreeMap<_, _>>()}),
            );
        }
    }
    Ok(serde_json::Value::Object(out))
}

/// Copies the contents of directory `src` into existing directory `dst` (modes, ownership and
/// symlinks kept; entries `keep` rejects skipped, with everything below them).
fn copy_into(src: &Path, dst: &Path, keep: &mut dyn FnMut(&Path) -> bool) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    for e in fs::read_dir(src)? {
        let e = e?;
        let from = e.path();
        if !keep(&from) {
            continue;
        }
        let to = dst.join(e.file_name());
        let md = fs::symlink_metadata(&from)?;
        if md.is_dir() {
            fs::create_dir(&to)?;
            copy_into(&from, &to, keep)?;
        } else if md.file_type().is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
        } else if md.is_file() {
            fs::copy(&from, &to)?;
        } else {
            continue;
        }
        std::os::unix::fs::lchown(&to, Some(md.uid()), Some(md.gid()))?;
        if !md.file_type().is_symlink() {
            fs::set_permissions(&to, fs::Permissions::from_mode(md.mode() & 0o7777))?;
        }
    }
    Ok(())
}

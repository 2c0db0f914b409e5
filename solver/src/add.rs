//! What ADD adds to COPY: local tar archives extracted into the destination, files downloaded from
//! HTTP(S) URLs and git repositories cloned, as BuildKit does.
//!
//! Remote sources are fetched *before* the cache key is computed (their content digest, or the
//! commit of a git ref, is part of the key), into a scratch directory that lives until the copy ran.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::{AtFlags, OFlag, AT_FDCWD};
use nix::sys::stat::{
    fchmodat, fstatat, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{linkat, symlinkat, unlinkat, UnlinkatFlags};
use rbuild_fsroot::Root;
use sha2::{Digest as _, Sha256};

/// True for an ADD source BuildKit downloads over HTTP(S) (git URLs excluded).
pub fn is_url(src: &str) -> bool {
    (src.starts_with("http://") || src.starts_with("https://")) && !is_git(src)
}

/// True for an ADD source BuildKit treats as a git repository: `git://`, `git@host:`, `ssh://`,
/// or an http(s)/file URL whose path ends in `.git` (a `#ref:subdir` fragment may follow).
pub fn is_git(src: &str) -> bool {
    let base = src.split('#').next().unwrap_or(src);
    src.starts_with("git://")
        || src.starts_with("git@")
        || src.starts_with("ssh://")
        || ((base.starts_with("http://")
            || base.starts_with("https://")
            || base.starts_with("file://"))
            && base.trim_end_matches('/').ends_with(".git"))
}

/// True for any source that is not a path (URL or git).
pub fn is_remote(src: &str) -> bool {
    is_url(src) || is_git(src)
}

/// A source fetched ahead of the copy.
#[derive(Debug)]
pub struct Fetched {
    /// The source as written.
    pub src: String,
    /// Host path of the file (URL) or checked-out tree (git).
    pub path: PathBuf,
    /// What goes into the cache key: `sha256:...` of the body, or `git:<commit>`.
    pub digest: String,
}

/// Downloads `url` into `dir`, naming the file after the last path component of the URL (or the
/// `Content-Disposition` filename), with mode 0600 and the `Last-Modified` time, as BuildKit's http
/// source. `checksum` (`sha256:<hex>`) is verified.
pub fn download(url: &str, dir: &Path, checksum: Option<&str>) -> Result<Fetched, String> {
    let resp = ureq::get(url)
        .call()
        .map_err(|e| format!("ADD {url}: download failed: {e}"))?;
    let headers = resp.headers();
    let disposition = headers
        .get("content-disposition")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(';')
                .filter_map(|p| p.trim().strip_prefix("filename="))
                .next()
                .map(|f| f.trim_matches('"').to_string())
        });
    let last_modified = headers
        .get("last-modified")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok())
        .map(|t| t.timestamp());
    let name = disposition
        .filter(|n| !n.is_empty() && !n.contains('/'))
        .unwrap_or_else(|| url_file_name(url));
    let path = dir.join(&name);
    let mut file = fs::File::create(&path).map_err(|e| format!("ADD {url}: {e}"))?;
    let mut body = resp.into_body();
    let mut reader = body.with_config().limit(u64::MAX).reader();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| format!("ADD {url}: reading the body: {e}"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(|e| format!("ADD {url}: {e}"))?;
    }
    drop(file);
    let digest = format!("sha256:{}", hex::encode(h.finalize()));
    if let Some(want) = checksum {
        if !want.starts_with("sha256:") {
            return Err(format!(
                "--checksum={want}: only sha256:<64 hex digits> is supported"
            ));
        }
        if want != digest {
            return Err(format!(
                "ADD {url}: digest mismatch: --checksum={want} but the download is {digest}"
            ));
        }
    }
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| format!("ADD {url}: {e}"))?;
    if let Some(t) = last_modified {
        let ts = TimeSpec::new(t, 0);
        utimensat(
            nix::fcntl::AT_FDCWD,
            &path,
            &ts,
            &ts,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| format!("ADD {url}: setting mtime: {e}"))?;
    }
    Ok(Fetched {
        src: url.to_string(),
        path,
        digest,
    })
}

/// BuildKit's file name for a URL: the last non-empty path component, `__unnamed__` without one.
pub fn url_file_name(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let path = rest
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .split_once('/')
        .map(|(_, p)| p)
        .unwrap_or("");
    path.rsplit('/')
        .find(|c| !c.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| "__unnamed__".into())
}

/// Where and how git may fetch from for an ADD.
pub struct GitAccess<'a> {
    /// The build context: the only place a `file://` repository may be.
    pub context: &'a rbuild_fsroot::Root,
    /// The agent socket of `--ssh default`, handed to git only for ssh URLs (`git@`, `ssh://`),
    /// as BuildKit mounts the default ssh socket for them.
    pub ssh_agent: Option<&'a Path>,
}

/// Transports git may use (never `ext::`, which runs commands, nor other remote helpers).
const GIT_PROTOCOLS: &str = "https:http:git:ssh:file";

/// A `file://` URL's repository, looked up inside the build context (links in the context are
/// followed inside it): the URL to clone from, or an error naming the fix.
fn file_url_in_context(url: &str, context: &rbuild_fsroot::Root) -> Result<String, String> {
    let refuse = || {
        format!(
            "ADD {url}: a file:// repository must be inside the build context {}; move it into the context or serve it over https",
            context.path().display()
        )
    };
    let path = url.strip_prefix("file://").unwrap_or(url);
    let path = path.strip_prefix("localhost").unwrap_or(path);
    let path = Path::new(path);
    let ctx_given = std::path::absolute(context.path()).map_err(|_| refuse())?;
    let ctx_host = context.host_path().map_err(|_| refuse())?;
    let rel = path
        .strip_prefix(&ctx_given)
        .or_else(|_| path.strip_prefix(&ctx_host))
        .map_err(|_| refuse())?;
    if rel
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(refuse());
    }
    let found = context.resolve(rel).map_err(|_| refuse())?;
    let host = found.host_path().map_err(|_| refuse())?;
    Ok(format!("file://{}", host.display()))
}

/// `git` with nothing of the host user's: no system or global config (so no credential helper,
/// `url.insteadOf`, `core.hooksPath` or `core.sshCommand`), an empty HOME, no terminal prompt,
/// hooks off, only the usual transports, ssh without the user's keys or config, and the ssh
/// agent only when `agent` is given. Proxy and CA settings of the environment are kept.
fn git_command(home: &Path, agent: Option<&Path>) -> Command {
    let mut c = Command::new("git");
    c.env_clear();
    for (k, v) in std::env::vars_os() {
        let keep = k.to_str().is_some_and(|k| {
            matches!(
                k.to_ascii_lowercase().as_str(),
                "path" | "http_proxy" | "https_proxy" | "no_proxy" | "all_proxy"
            ) || matches!(k, "SSL_CERT_FILE" | "SSL_CERT_DIR" | "TZ")
        });
        if keep {
            c.env(k, v);
        }
    }
    c.env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ALLOW_PROTOCOL", GIT_PROTOCOLS)
        .env(
            "GIT_SSH_COMMAND",
            "ssh -F /dev/null -o BatchMode=yes -o IdentityFile=/dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        )
        .args(["-c", "core.hooksPath=/dev/null"]);
    if let Some(sock) = agent {
        c.env("SSH_AUTH_SOCK", sock);
    }
    c
}

/// Clones the git repository `src` (`URL[#ref[:subdir]]`) into `dir/checkout`, checks out the ref
/// (default branch when none) and returns the tree (the subdirectory when given). `.git` is kept
/// only with `keep_git_dir`. `checksum`, when given, must be a prefix of the full commit id.
/// git runs without the host user's config, credentials or hooks (see [`GitAccess`]).
pub fn git_clone(
    src: &str,
    dir: &Path,
    keep_git_dir: bool,
    checksum: Option<&str>,
    access: &GitAccess<'_>,
) -> Result<Fetched, String> {
    let (url, fragment) = match src.split_once('#') {
        Some((u, f)) => (u, f),
        None => (src, ""),
    };
    let in_context;
    let url = if url.starts_with("file://") {
        in_context = file_url_in_context(url, access.context)?;
        in_context.as_str()
    } else {
        url
    };
    let ssh = src.starts_with("git@") || src.starts_with("ssh://");
    let agent = access.ssh_agent.filter(|_| ssh);
    let home = dir.join("home");
    fs::create_dir(&home).map_err(|e| format!("ADD {src}: {e}"))?;
    let (reference, subdir) = match fragment.split_once(':') {
        Some((r, s)) => (r, s),
        None => (fragment, ""),
    };
    let checkout = dir.join("checkout");
    let git = |args: &[&str], cwd: Option<&Path>| -> Result<String, String> {
        let mut c = git_command(&home, agent);
        c.args(args);
        if let Some(d) = cwd {
            c.current_dir(d);
        }
        let out = c.output().map_err(|e| {
            format!("ADD {src}: cannot run git ({e}); install git to ADD git repositories")
        })?;
        if !out.status.success() {
            return Err(format!(
                "ADD {src}: git {} failed: {}",
                args.first().copied().unwrap_or(""),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let co = checkout.to_string_lossy().into_owned();
    git(&["clone", "--quiet", "--no-checkout", url, &co], None)?;
    let rev = if reference.is_empty() {
        "HEAD".to_string()
    } else {
        // A branch or tag of the remote, or a commit id.
        let remote = format!("origin/{reference}");
        if git(
            &["rev-parse", "--verify", "--quiet", &remote],
            Some(&checkout),
        )
        .is_ok()
        {
            remote
        } else {
            reference.to_string()
        }
    };
    let commit = git(
        &["rev-parse", "--verify", &format!("{rev}^{{commit}}")],
        Some(&checkout),
    )
    .map_err(|_| format!("ADD {src}: no branch, tag or commit named {reference:?}"))?;
    if let Some(want) = checksum {
        if !commit.starts_with(want) {
            return Err(format!(
                "ADD {src}: --checksum={want} does not match commit {commit}"
            ));
        }
    }
    git(
        &["checkout", "--quiet", "--detach", &commit],
        Some(&checkout),
    )?;
    if !keep_git_dir {
        fs::remove_dir_all(checkout.join(".git")).map_err(|e| format!("ADD {src}: {e}"))?;
    }
    // The subdirectory is looked up inside the checkout: a link in the repository never leads
    // out of it.
    let path = rbuild_fsroot::Root::open(&checkout)
        .and_then(|r| r.resolve(subdir))
        .ok()
        .and_then(|r| r.host_path().ok())
        .ok_or_else(|| {
            format!("ADD {src}: the repository has no directory {subdir:?} at {commit}")
        })?;
    Ok(Fetched {
        src: src.to_string(),
        path,
        digest: format!("git:{commit}:{keep_git_dir}"),
    })
}

/// Compression of a file, sniffed from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(b"BZh") {
        Compression::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Xz
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

fn open_decompressed(path: &Path) -> io::Result<Box<dyn Read>> {
    let mut f = BufReader::new(fs::File::open(path)?);
    let kind = sniff(f.fill_buf()?);
    Ok(match kind {
        Compression::None => Box::new(f),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(f)),
        Compression::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(f)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(f)?),
    })
}

/// True when `path` is a tar archive, plain or compressed with gzip, bzip2, xz or zstd (by content,
/// as Docker's `archive.DetectCompression`, never by file name).
pub fn is_archive(path: &Path) -> bool {
    let Ok(mut r) = open_decompressed(path) else {
        return false;
    };
    let mut block = [0u8; 512];
    let mut got = 0;
    while got < block.len() {
        match r.read(&mut block[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(_) => return false,
        }
    }
    if got < block.len() {
        return false;
    }
    // A tar header: its checksum field matches the sum of the header bytes (with the field as spaces).
    let field = &block[148..156];
    let text: String = field
        .iter()
        .take_while(|b| **b != 0 && **b != b' ')
        .map(|b| *b as char)
        .collect();
    let Ok(want) = u32::from_str_radix(text.trim(), 8) else {
        return false;
    };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                *b as u32
            }
        })
        .sum();
    sum == want
}

/// An archive entry's name as a relative path: leading `/` and `.` dropped; `None` for an entry
/// with a `..` component (skipped, as the tar crate and Docker refuse to climb out) or no name.
fn entry_rel(name: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => return None,
            _ => {}
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Extracts the archive at `path` into directory `dest` (absolute, inside `root`: the new
/// layer's root). Entries keep their modes, times and owners unless `owner` is given. Every entry
/// is created through `rbuild-fsroot`: its parent is resolved (or created) inside the root, so a
/// link in the image or one the archive planted earlier is followed inside the root and never
/// reaches the host; entries naming `..` are skipped. Extended attributes follow the layer rule
/// (`rbuild_exporter::layer_xattr_allowed`: file capabilities kept, `trusted.*` never applied);
/// block and character devices are skipped, as Docker does when it cannot create them (the
/// context is not trusted to add raw devices).
pub fn extract(path: &Path, root: &Root, dest: &str, owner: Option<(u32, u32)>) -> io::Result<()> {
    let mut ar = tar::Archive::new(open_decompressed(path)?);
    // Directory times are set last: entries written into them change them.
    let mut dirs: Vec<(PathBuf, i64)> = Vec::new();
    let dest = Path::new(dest);
    for entry in ar.entries()? {
        let mut entry = entry?;
        let Some(rel) = entry_rel(&entry.path()?) else {
            continue;
        };
        let full = dest.join(&rel);
        let (Some(parent), Some(name)) = (full.parent(), full.file_name()) else {
            continue;
        };
        let name = name.to_os_string();
        let dir = root
            .mkdir_all(parent, 0o755, None)?
            .reopen(OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let h = entry.header();
        let kind = h.entry_type();
        if matches!(kind, tar::EntryType::Block | tar::EntryType::Char) {
            continue;
        }
        let mode = Mode::from_bits_truncate(h.mode()? & 0o7777);
        let (uid, gid) = match owner {
            Some(o) => o,
            // An empty id field (some writers leave it blank) means root, as GNU tar reads it.
            None => (h.uid().unwrap_or(0) as u32, h.gid().unwrap_or(0) as u32),
        };
        let mtime = h.mtime()? as i64;
        let link = entry.link_name()?.map(|l| l.into_owned());
        let existing = fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW).ok();
        let existing_dir = existing.is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
        if kind.is_dir() {
            if !existing_dir {
                if existing.is_some() {
                    unlinkat(&dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir)?;
                }
                mkdirat(&dir, name.as_os_str(), Mode::from_bits_truncate(0o700))?;
            }
            set_owner_mode(&dir, &name, uid, gid, Some(mode))?;
            apply_xattrs(&mut entry, root, &full)?;
            dirs.push((full, mtime));
            continue;
        }
        if existing_dir {
            // Replaced by a non-directory: remove the tree (no-follow walk below a resolved dir).
            let old = root.resolve_nofollow(&full)?;
            fs::remove_dir_all(old.host_path()?)?;
        } else if existing.is_some() {
            unlinkat(&dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir)?;
        }
        let times = TimeSpec::new(mtime, 0);
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let fd = nix::fcntl::openat(
                    &dir,
                    name.as_os_str(),
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )?;
                let mut f = fs::File::from(fd);
                io::copy(&mut entry, &mut f)?;
                std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
                // After chown, which clears set-id bits.
                f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode.bits()))?;
                nix::sys::stat::futimens(&f, &times, &times)?;
                drop(f);
                apply_xattrs(&mut entry, root, &full)?;
                continue;
            }
            tar::EntryType::Symlink => {
                let target =
                    link.ok_or_else(|| io::Error::other("symlink entry without a target"))?;
                symlinkat(target.as_path(), &dir, name.as_os_str())?;
                set_owner_mode(&dir, &name, uid, gid, None)?;
            }
            tar::EntryType::Link => {
                // The link target is another entry of the archive, looked up inside the root.
                let target = link
                    .as_deref()
                    .and_then(entry_rel)
                    .ok_or_else(|| io::Error::other("hard link entry without a valid target"))?;
                let t = root.resolve_nofollow(dest.join(target))?;
                linkat(
                    AT_FDCWD,
                    t.proc_path().as_path(),
                    &dir,
                    name.as_os_str(),
                    AtFlags::AT_SYMLINK_FOLLOW,
                )?;
                continue;
            }
            tar::EntryType::Fifo => {
                mknodat(&dir, name.as_os_str(), SFlag::S_IFIFO, mode, 0)?;
                set_owner_mode(&dir, &name, uid, gid, Some(mode))?;
            }
            _ => continue,
        }
        utimensat(
            &dir,
            name.as_os_str(),
            &times,
            &times,
            UtimensatFlags::NoFollowSymlink,
        )?;
        apply_xattrs(&mut entry, root, &full)?;
    }
    for (d, mtime) in dirs.iter().rev() {
        if let Ok(r) = root.resolve_nofollow(d) {
            let t = TimeSpec::new(*mtime, 0);
            utimensat(
                AT_FDCWD,
                r.proc_path().as_path(),
                &t,
                &t,
                UtimensatFlags::FollowSymlink,
            )?;
        }
    }
    Ok(())
}

/// The entry's allowed xattrs on what was just created at `full` (looked up without following a
/// final link; the kernel path of it has no link on the way).
fn apply_xattrs<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    root: &Root,
    full: &Path,
) -> io::Result<()> {
    let host = root.resolve_nofollow(full)?.host_path()?;
    rbuild_exporter::apply_tar_xattrs(entry, &host).map_err(io::Error::other)
}

/// Owner (not following a link) and, for non-links, mode of `name` in `dir`.
fn set_owner_mode(
    dir: &fs::File,
    name: &std::ffi::OsStr,
    uid: u32,
    gid: u32,
    mode: Option<Mode>,
) -> io::Result<()> {
    nix::unistd::fchownat(
        dir,
        name,
        Some(uid.into()),
        Some(gid.into()),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    if let Some(m) = mode {
        // The entry was just created by this extraction and is no link.
        fchmodat(dir, name, m, FchmodatFlags::FollowSymlink)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_sources() {
        assert!(is_url("https://example.com/a.tar.gz"));
        assert!(!is_url("https://example.com/repo.git"));
        assert!(is_git("https://example.com/repo.git#v1:sub"));
        assert!(is_git("git@github.com:moby/buildkit.git"));
        assert!(is_git("file:///srv/repo.git"));
        assert!(!is_remote("dir/file"));
        assert_eq!(url_file_name("http://h:1/x/y.txt?q=1"), "y.txt");
        assert_eq!(url_file_name("http://h:1/x/dir/"), "dir");
        assert_eq!(url_file_name("http://h:1"), "__unnamed__");
    }

    #[test]
    fn extract_skips_devices_and_follows_the_xattr_rule() {
        let d = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let caps: &[u8] = &[
            0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        b.append_pax_extensions([
            ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..]),
            ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..]),
            ("SCHILY.xattr.security.capability", caps),
            ("SCHILY.xattr.user.note", &b"kept"[..]),
        ])
        .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, "dir", io::empty()).unwrap();
        for (name, kind, major) in [
            ("sda", tar::EntryType::Block, 8),
            ("mem", tar::EntryType::Char, 1),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(kind);
            h.set_mode(0o666);
            h.set_size(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_device_major(major).unwrap();
            h.set_device_minor(1).unwrap();
            h.set_cksum();
            b.append_data(&mut h, name, io::empty()).unwrap();
        }
        let tar_path = d.path().join("hostile.tar");
        fs::write(&tar_path, b.into_inner().unwrap()).unwrap();
        let out = d.path().join("out");
        fs::create_dir(&out).unwrap();
        extract(&tar_path, &Root::open(&out).unwrap(), "/", None).unwrap();
        assert!(
            fs::symlink_metadata(out.join("sda")).is_err(),
            "block device skipped"
        );
        assert!(
            fs::symlink_metadata(out.join("mem")).is_err(),
            "char device skipped"
        );
        let get = |name: &str| {
            let p = std::ffi::CString::new(out.join("dir").as_os_str().as_encoded_bytes()).unwrap();
            let n = std::ffi::CString::new(name).unwrap();
            let mut buf = [0u8; 64];
            // SAFETY: valid NUL-terminated strings and a buffer of the given length.
            let r = unsafe {
                libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            };
            (r >= 0).then(|| buf[..r as usize].to_vec())
        };
        assert_eq!(get("trusted.overlay.opaque"), None);
        assert_eq!(get("trusted.overlay.redirect"), None);
        assert_eq!(get("security.capability").as_deref(), Some(caps));
        assert_eq!(get("user.note").as_deref(), Some(&b"kept"[..]));
    }

    #[test]
    fn detects_and_extracts_compressed_tars() {
        let d = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o640);
        h.set_uid(7);
        h.set_gid(8);
        h.set_cksum();
        b.append_data(&mut h, "sub/f", &b"hi"[..]).unwrap();
        let tar_bytes = b.into_inner().unwrap();
        let plain = d.path().join("a.tar");
        fs::write(&plain, &tar_bytes).unwrap();
        let gz = d.path().join("a.bin");
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&tar_bytes).unwrap();
        fs::write(&gz, e.finish().unwrap()).unwrap();
        let xz = d.path().join("a.xz");
        let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(&tar_bytes).unwrap();
        fs::write(&xz, e.finish().unwrap()).unwrap();
        let text = d.path().join("t.gz");
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&[b'x'; 600]).unwrap();
        fs::write(&text, e.finish().unwrap()).unwrap();
        assert!(is_archive(&plain) && is_archive(&gz) && is_archive(&xz));
        assert!(!is_archive(&text), "gzip of a non-tar is not an archive");
        let out = d.path().join("out");
        fs::create_dir(&out).unwrap();
        let root = Root::open(&out).unwrap();
        extract(&xz, &root, "/", Some((3, 4))).unwrap();
        use std::os::unix::fs::MetadataExt;
        let md = fs::metadata(out.join("sub/f")).unwrap();
        assert_eq!((md.uid(), md.gid(), md.mode() & 0o777), (3, 4, 0o640));
        assert_eq!(fs::read_to_string(out.join("sub/f")).unwrap(), "hi");
    }

    #[test]
    fn extraction_follows_links_inside_the_root_only() {
        let d = tempfile::tempdir().unwrap();
        let host_target = d.path().join("host-only");
        fs::create_dir(&host_target).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        // An absolute link to a path that exists on the host: it must mean <root>/<that path>.
        b.append_link(&mut h, "l", &host_target).unwrap();
        let mut f = tar::Header::new_gnu();
        f.set_size(2);
        f.set_mode(0o644);
        f.set_uid(0);
        f.set_gid(0);
        f.set_mtime(0);
        f.set_cksum();
        b.append_data(&mut f, "l/f", &b"hi"[..]).unwrap();
        let t = d.path().join("a.tar");
        fs::write(&t, b.into_inner().unwrap()).unwrap();
        let out = d.path().join("root");
        fs::create_dir(&out).unwrap();
        let root = rbuild_fsroot::Root::open(&out).unwrap();
        extract(&t, &root, "/sub", None).unwrap();
        assert!(
            !host_target.join("f").exists(),
            "wrote through the link on the host"
        );
        let inside = out.join(host_target.strip_prefix("/").unwrap()).join("f");
        assert_eq!(fs::read_to_string(inside).unwrap(), "hi");
    }

    #[test]
    fn extraction_stays_inside_the_root() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("host");
        fs::create_dir(&host).unwrap();
        let root_dir = d.path().join("root");
        fs::create_dir_all(root_dir.join("dst")).unwrap();
        // The image has a link naming a host directory; the archive plants `l -> /` itself.
        symlink(&host, root_dir.join("dst/etc")).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1000);
            {
                let gnu = h.as_gnu_mut().unwrap();
                gnu.name[..name.len()].copy_from_slice(name.as_bytes());
                if let Some(l) = link {
                    gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
                }
            }
            h.set_cksum();
            b.append(&h, data).unwrap();
        };
        add(
            "etc/through-image-link",
            tar::EntryType::Regular,
            None,
            b"a",
        );
        add("../../climb", tar::EntryType::Regular, None, b"b");
        add("l", tar::EntryType::Symlink, Some("/"), b"");
        add("l/through-own-link", tar::EntryType::Regular, None, b"c");
        add(
            "hard",
            tar::EntryType::Link,
            Some("l/through-own-link"),
            b"",
        );
        add("sub/", tar::EntryType::Directory, None, b"");
        add("sub/f", tar::EntryType::Regular, None, b"d");
        let tar_path = d.path().join("t.tar");
        fs::write(&tar_path, b.into_inner().unwrap()).unwrap();
        let root = Root::open(&root_dir).unwrap();
        extract(&tar_path, &root, "/dst", None).unwrap();
        assert_eq!(fs::read_dir(&host).unwrap().count(), 0, "wrote on the host");
        assert!(!d.path().join("climb").exists());
        let inside = root_dir.join(host.strip_prefix("/").unwrap());
        assert_eq!(
            fs::read_to_string(inside.join("through-image-link")).unwrap(),
            "a"
        );
        assert_eq!(
            fs::read_to_string(root_dir.join("through-own-link")).unwrap(),
            "c"
        );
        assert_eq!(fs::read_to_string(root_dir.join("dst/hard")).unwrap(), "c");
        assert_eq!(fs::read_to_string(root_dir.join("dst/sub/f")).unwrap(), "d");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            fs::metadata(root_dir.join("dst/sub")).unwrap().mtime(),
            1000
        );
    }
}

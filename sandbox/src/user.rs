//! `USER name[:group]` resolution through an image's `/etc/passwd` and `/etc/group`,
//! the way Docker (moby/sys/user) does it.

use crate::error::{Error, Result};
use std::path::Path;

/// One `/etc/passwd` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// One `/etc/group` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

pub(crate) fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f.get(5).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

pub(crate) fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolves `user` (`name`, `uid`, `name:group`, `uid:gid`, ...) against parsed passwd/group
/// contents. Returns (uid, gid, supplementary gids, home).
pub(crate) fn resolve(
    passwd: &[PasswdEntry],
    groups: &[GroupEntry],
    user: &str,
) -> Result<(u32, u32, Vec<u32>, String)> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    let numeric_uid = u.parse::<u32>().ok();
    let entry = match numeric_uid {
        Some(uid) => passwd.iter().find(|e| e.uid == uid),
        None => passwd.iter().find(|e| e.name == u),
    };
    let (uid, mut gid, home, name) = match (entry, numeric_uid) {
        (Some(e), _) => (e.uid, e.gid, e.home.clone(), Some(e.name.clone())),
        (None, Some(uid)) => (uid, 0, "/".to_string(), None),
        (None, None) => {
            return Err(Error::User(format!(
                "unable to find user {u}: no matching entries in passwd file"
            )))
        }
    };
    if let Some(g) = g.filter(|g| !g.is_empty()) {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| {
                    Error::User(format!(
                        "unable to find group {g}: no matching entries in group file"
                    ))
                })?,
        };
    }
    let mut additional = Vec::new();
    // As runc's GetExecUser (BuildKit, Docker): supplementary groups only in the implicit form
    // (`USER name` or `USER uid`); `USER a:b` runs with group b alone.
    let explicit_group = g.is_some_and(|g| !g.is_empty());
    if let Some(name) = name.as_ref().filter(|_| !explicit_group) {
        for grp in groups {
            if grp.members.iter().any(|m| m == name)
                && grp.gid != gid
                && !additional.contains(&grp.gid)
            {
                additional.push(grp.gid);
            }
        }
    }
    let home = if home.is_empty() {
        "/".to_string()
    } else {
        home
    };
    Ok((uid, gid, additional, home))
}

fn read_in_root(rootfs_dir: &Path, file: &str) -> Result<String> {
    let resolve = |e| Error::Resolve {
        what: format!("read {file} of the image"),
        source: e,
    };
    let root = rbuild_fsroot::Root::open(rootfs_dir).map_err(resolve)?;
    let mut f = match root.open_file(file, nix::fcntl::OFlag::O_RDONLY, 0) {
        Ok(f) => f,
        Err(rbuild_fsroot::Error::NotFound { .. }) => return Ok(String::new()),
        Err(e) => return Err(resolve(e)),
    };
    let mut b = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut b)
        .map_err(|e| Error::io(format!("read {file} in"), rootfs_dir, e))?;
    Ok(String::from_utf8_lossy(&b).into_owned())
}

/// Resolves `user` (`name`, `uid`, `name:group`, `uid:gid`, `name:gid`, `uid:group`) through the
/// image's `/etc/passwd` and `/etc/group` under `rootfs_dir` (symlinks are resolved inside the root).
///
/// Returns `(uid, gid, supplementary gids, home)`. As Docker does: a numeric uid missing from passwd is
/// accepted with gid 0 and home `/`; a name missing from passwd is an error; supplementary groups are the
/// groups of `/etc/group` that list the user's name.
pub fn resolve_user(rootfs_dir: &Path, user: &str) -> Result<(u32, u32, Vec<u32>, String)> {
    let passwd = parse_passwd(&read_in_root(rootfs_dir, "/etc/passwd")?);
    let groups = parse_group(&read_in_root(rootfs_dir, "/etc/group")?);
    resolve(&passwd, &groups, user)
}

/// Home directory of `uid` from `/etc/passwd` text, `/` when not found (Docker's default HOME).
pub(crate) fn home_of(passwd_text: &str, uid: u32) -> String {
    parse_passwd(passwd_text)
        .into_iter()
        .find(|e| e.uid == uid)
        .map(|e| e.home)
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\nwheel:x:10:app,root\nstaff:x:50:app\napp:x:1000:\nnogroup:x:65534:\n";

    fn r(u: &str) -> Result<(u32, u32, Vec<u32>, String)> {
        resolve(&parse_passwd(PASSWD), &parse_group(GROUP), u)
    }

    #[test]
    fn names_and_numbers() {
        assert_eq!(r("root").unwrap(), (0, 0, vec![10], "/root".into()));
        assert_eq!(
            r("app").unwrap(),
            (1000, 1000, vec![10, 50], "/home/app".into())
        );
        assert_eq!(
            r("1000").unwrap(),
            (1000, 1000, vec![10, 50], "/home/app".into())
        );
        assert_eq!(r("4242").unwrap(), (4242, 0, vec![], "/".into()));
        assert_eq!(r("4242:7").unwrap(), (4242, 7, vec![], "/".into()));
        // An explicit group drops the supplementary ones (BuildKit's testUser: `dockerio:1001`
        // gives `id -G` = `1001`).
        assert_eq!(
            r("app:staff").unwrap(),
            (1000, 50, vec![], "/home/app".into())
        );
        assert_eq!(r("app:app").unwrap().2, Vec::<u32>::new());
        assert_eq!(r("nobody:nogroup").unwrap().1, 65534);
    }

    #[test]
    fn errors() {
        assert!(r("ghost")
            .unwrap_err()
            .to_string()
            .contains("unable to find user ghost"));
        assert!(r("app:ghosts")
            .unwrap_err()
            .to_string()
            .contains("unable to find group ghosts"));
    }

    #[test]
    fn home() {
        assert_eq!(home_of(PASSWD, 1000), "/home/app");
        assert_eq!(home_of(PASSWD, 5), "/");
    }

    #[test]
    fn from_dir() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(d.path().join("etc/group"), GROUP).unwrap();
        assert_eq!(resolve_user(d.path(), "app").unwrap().0, 1000);
        // A passwd that is a symlink out of the root is read inside it.
        let linked = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(linked.path().join("etc")).unwrap();
        std::fs::create_dir_all(linked.path().join("img")).unwrap();
        std::fs::write(linked.path().join("img/passwd"), PASSWD).unwrap();
        std::os::unix::fs::symlink("/img/passwd", linked.path().join("etc/passwd")).unwrap();
        assert_eq!(resolve_user(linked.path(), "app").unwrap().0, 1000);
        std::os::unix::fs::symlink("/../../../../etc", linked.path().join("up")).unwrap();
        std::fs::remove_file(linked.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/up/passwd", linked.path().join("etc/passwd")).unwrap();
        assert!(
            resolve_user(linked.path(), "root").is_err(),
            "host passwd read"
        );
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve_user(empty.path(), "0").unwrap(),
            (0, 0, vec![], "/".into())
        );
    }
}

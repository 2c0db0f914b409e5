//! The container's filesystem: overlay root, spec mounts, `/dev`, `/etc` binds, `pivot_root`,
//! masked and read-only paths. Everything goes through [`Sys`] so the order of operations is unit
//! tested with a recording double.

use crate::error::{Error, Result};
use crate::sys::Sys;
use crate::RootfsConfig;
use nix::mount::MsFlags;
use oci_spec::runtime::Mount;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// Joins `unsafe_path` (a path as seen inside the container) onto `root`, following symlinks as the
/// container would see them: an absolute link target restarts at `root`, `..` never climbs above it.
pub(crate) fn secure_join(root: &Path, unsafe_path: &Path) -> PathBuf {
    fn comps(p: &Path) -> Vec<OsString> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect()
    }
    let mut resolved = PathBuf::new();
    let mut pending: VecDeque<OsString> = comps(unsafe_path).into();
    let mut links = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let candidate = root.join(&resolved).join(&c);
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() && links < 255 => {
                links += 1;
                let Ok(target) = std::fs::read_link(&candidate) else {
                    resolved.push(c);
                    continue;
                };
                if target.is_absolute() {
                    resolved.clear();
                }
                for t in comps(&target).into_iter().rev() {
                    pending.push_front(t);
                }
            }
            _ => resolved.push(c),
        }
    }
    root.join(resolved)
}

/// mount(2) flags and the remaining filesystem data of an OCI mount's options.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct MountOptions {
    pub flags: MsFlags,
    pub propagation: MsFlags,
    pub data: Vec<String>,
}

pub(crate) fn parse_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: Vec::new(),
    };
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "private" => {
                o.propagation |= MsFlags::MS_PRIVATE;
                continue;
            }
            "rprivate" => {
                o.propagation |= MsFlags::MS_PRIVATE | MsFlags::MS_REC;
                continue;
            }
            "shared" => {
                o.propagation |= MsFlags::MS_SHARED;
                continue;
            }
            "rshared" => {
                o.propagation |= MsFlags::MS_SHARED | MsFlags::MS_REC;
                continue;
            }
            "slave" => {
                o.propagation |= MsFlags::MS_SLAVE;
                continue;
            }
            "rslave" => {
                o.propagation |= MsFlags::MS_SLAVE | MsFlags::MS_REC;
                continue;
            }
            "unbindable" => {
                o.propagation |= MsFlags::MS_UNBINDABLE;
                continue;
            }
            "runbindable" => {
                o.propagation |= MsFlags::MS_UNBINDABLE | MsFlags::MS_REC;
                continue;
            }
            _ => {
                o.data.push(opt.clone());
                continue;
            }
        };
        o.flags |= set;
        o.flags &= !clear;
    }
    o
}

/// Everything [`setup_rootfs`] needs.
pub(crate) struct RootPlan<'a> {
    /// The empty directory the root is mounted on (host view).
    pub root: &'a Path,
    pub rootfs: &'a RootfsConfig,
    pub mounts: &'a [Mount],
    pub masked: &'a [String],
    pub readonly: &'a [String],
    pub root_readonly: bool,
    /// Host files bind-mounted read-only at container paths (resolv.conf, hosts, hostname).
    pub etc_binds: Vec<(PathBuf, PathBuf)>,
    /// The terminal's pty slave (host path), bound on `/dev/console` so `tty` finds it.
    pub console: Option<PathBuf>,
}

const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Builds the container's root and pivots into it. Must run in a fresh mount namespace. Returns
/// the mount-point stubs it created inside the root (container paths, parents first) so they can be
/// removed from the upper layer afterwards.
pub(crate) fn setup_rootfs(sys: &mut dyn Sys, plan: &RootPlan) -> Result<Vec<PathBuf>> {
    let root = plan.root;
    let mut stubs: Vec<PathBuf> = Vec::new();
    let note = |created: Vec<PathBuf>, stubs: &mut Vec<PathBuf>| {
        for c in created {
            if let Ok(rel) = c.strip_prefix(root) {
                stubs.push(Path::new("/").join(rel));
            }
        }
    };
    // Nothing we mount may propagate back to the host.
    sys.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;

    match plan.rootfs {
        RootfsConfig::Overlay { lower, upper, work } => {
            sys.mount_overlay(lower, Some((upper, work)), root)?;
        }
        RootfsConfig::OverlayReadOnly { lower } => {
            // A throwaway tmpfs holds the upper layer, so mount points can be created; the root is
            // made read-only once everything is mounted.
            sys.mount(
                Some(Path::new("tmpfs")),
                root,
                Some("tmpfs"),
                MsFlags::MS_NOSUID,
                Some("mode=755"),
            )?;
            if !lower.is_empty() {
                let (u, w) = (root.join(".upper"), root.join(".work"));
                sys.mkdir_all(&u)?;
                sys.mkdir_all(&w)?;
                sys.mount_overlay(lower, Some((&u, &w)), root)?;
            }
        }
        RootfsConfig::Dir(dir) => {
            sys.mount(
                Some(dir),
                root,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
        }
    }

    for m in plan.mounts {
        let dest = sys.resolve(root, m.destination());
        let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
        let typ = m.typ().as_deref().unwrap_or("");
        let is_bind = typ == "bind" || opts.flags.contains(MsFlags::MS_BIND);
        let data = (!opts.data.is_empty()).then(|| opts.data.join(","));
        if is_bind {
            let src = m.source().as_ref().ok_or_else(|| {
                Error::InvalidSpec(format!(
                    "bind mount at {} has no source",
                    m.destination().display()
                ))
            })?;
            if sys.is_dir(src) {
                let c = sys.mkdir_all(&dest)?;
                note(c, &mut stubs);
            } else {
                if let Some(parent) = dest.parent() {
                    let c = sys.mkdir_all(parent)?;
                    note(c, &mut stubs);
                }
                if sys.touch(&dest)? {
                    note(vec![dest.clone()], &mut stubs);
                }
            }
            let bind = opts.flags & (MsFlags::MS_BIND | MsFlags::MS_REC);
            sys.mount(Some(src), &dest, None, bind | MsFlags::MS_BIND, None)?;
            let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
            if !extra.is_empty() {
                sys.mount(
                    None,
                    &dest,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
                    None,
                )?;
            }
        } else {
            let c = sys.mkdir_all(&dest)?;
            note(c, &mut stubs);
            if typ == "cgroup" || typ == "cgroup2" {
                // The cgroup ns makes the container's own cgroup the root of this view. On a
                // v1/v2 hybrid host, mounting v1 controllers is not needed by builds; best effort.
                let _ = sys.mount(
                    Some(Path::new("cgroup2")),
                    &dest,
                    Some("cgroup2"),
                    opts.flags,
                    None,
                );
                continue;
            }
            let src = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
            sys.mount(Some(&src), &dest, Some(typ), opts.flags, data.as_deref())?;
        }
        if !opts.propagation.is_empty() {
            sys.mount(None, &dest, None, opts.propagation, None)?;
        }
    }

    // Minimal /dev: host device nodes bind-mounted (works without CAP_MKNOD semantics issues).
    let dev = sys.resolve(root, Path::new("/dev"));
    let c = sys.mkdir_all(&dev)?;
    note(c, &mut stubs);
    for d in DEVICES {
        let target = dev.join(d);
        if sys.touch(&target)? {
            note(vec![target.clone()], &mut stubs);
        }
        let host = Path::new("/dev").join(d);
        sys.mount(Some(&host), &target, None, MsFlags::MS_BIND, None)?;
    }
    if let Some(console) = &plan.console {
        let target = dev.join("console");
        if sys.touch(&target)? {
            note(vec![target.clone()], &mut stubs);
        }
        sys.mount(Some(console), &target, None, MsFlags::MS_BIND, None)?;
    }
    for (target, link) in [
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("pts/ptmx", "ptmx"),
    ] {
        sys.symlink(Path::new(target), &dev.join(link))?;
    }

    for (host, cpath) in &plan.etc_binds {
        if plan.mounts.iter().any(|m| m.destination() == cpath) {
            continue; // the user mounted their own
        }
        let dest = sys.resolve(root, cpath);
        if let Some(parent) = dest.parent() {
            let c = sys.mkdir_all(parent)?;
            note(c, &mut stubs);
        }
        if sys.touch(&dest)? {
            note(vec![dest.clone()], &mut stubs);
        }
        sys.mount(Some(host), &dest, None, MsFlags::MS_BIND, None)?;
        sys.mount(
            None,
            &dest,
            None,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            None,
        )?;
    }

    // pivot_root(".", ".") then detach the old root stacked on top (as runc does).
    sys.chdir(root)?;
    sys.pivot_root(Path::new("."), Path::new("."))?;
    sys.umount2(Path::new("."), libc::MNT_DETACH)?;
    sys.chdir(Path::new("/"))?;

    for p in plan.masked {
        let p = Path::new(p);
        if !sys.exists(p) {
            continue;
        }
        if sys.is_dir(p) {
            sys.mount(
                Some(Path::new("tmpfs")),
                p,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None,
            )?;
        } else {
            sys.mount(
                Some(Path::new("/dev/null")),
                p,
                None,
                MsFlags::MS_BIND,
                None,
            )?;
        }
    }
    for p in plan.readonly {
        let p = Path::new(p);
        if !sys.exists(p) {
            continue;
        }
        sys.mount(Some(p), p, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
        sys.mount(
            None,
            p,
            None,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None,
        )?;
    }
    if plan.root_readonly || matches!(plan.rootfs, RootfsConfig::OverlayReadOnly { .. }) {
        sys.mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )?;
    }
    Ok(stubs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, Recorder};

    #[test]
    fn secure_join_stays_inside() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::os::unix::fs::symlink("/etc", r.join("a/abs")).unwrap();
        std::os::unix::fs::symlink("../../../../..", r.join("a/b/up")).unwrap();
        assert_eq!(secure_join(r, Path::new("/a/b/c")), r.join("a/b/c"));
        assert_eq!(
            secure_join(r, Path::new("/a/abs/hosts")),
            r.join("etc/hosts")
        );
        assert_eq!(secure_join(r, Path::new("/a/b/up/x")), r.join("x"));
        assert_eq!(secure_join(r, Path::new("../../etc")), r.join("etc"));
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        assert!(secure_join(r, Path::new("/loop/x")).starts_with(r));
    }

    #[test]
    fn options() {
        let o = parse_options(&[
            "nosuid".into(),
            "ro".into(),
            "mode=755".into(),
            "rprivate".into(),
            "rbind".into(),
        ]);
        assert_eq!(
            o.flags,
            MsFlags::MS_NOSUID | MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC
        );
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(o.data, vec!["mode=755".to_string()]);
    }

    #[test]
    fn order_private_first_then_root_then_pivot_then_masks() {
        let spec = crate::default_spec(vec!["true".into()], vec![], "/", true);
        let rootfs = RootfsConfig::Overlay {
            lower: vec!["/l1".into(), "/l0".into()],
            upper: "/u".into(),
            work: "/w".into(),
        };
        let linux = spec.linux().clone().unwrap();
        let mut rec = Recorder {
            existing: vec![
                "/proc/kcore".into(),
                "/proc/sys".into(),
                "/proc/acpi".into(),
            ],
            dirs: vec!["/proc/sys".into(), "/proc/acpi".into()],
            ..Default::default()
        };
        let plan = RootPlan {
            root: Path::new("/state/root"),
            rootfs: &rootfs,
            mounts: spec.mounts().as_deref().unwrap(),
            masked: linux.masked_paths().as_deref().unwrap(),
            readonly: linux.readonly_paths().as_deref().unwrap(),
            root_readonly: false,
            etc_binds: vec![("/etc/hosts".into(), "/etc/hosts".into())],
            console: None,
        };
        setup_rootfs(&mut rec, &plan).unwrap();
        let calls = &rec.calls;
        assert!(matches!(&calls[0], Call::Mount { target, flags, .. }
            if target == Path::new("/") && *flags == MsFlags::MS_REC | MsFlags::MS_PRIVATE));
        assert!(
            matches!(&calls[1], Call::Overlay { lower, upper: Some(_), .. } if lower[0] == Path::new("/l1"))
        );
        let pos = |f: &dyn Fn(&Call) -> bool| calls.iter().position(f).unwrap();
        let proc_mount = pos(&|c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "proc"));
        let pivot = pos(&|c| matches!(c, Call::PivotRoot(..)));
        let detach = pos(&|c| matches!(c, Call::Umount(_, f) if *f == libc::MNT_DETACH));
        let kcore = pos(&|c| {
            matches!(c, Call::Mount { target, source: Some(s), .. }
            if target == Path::new("/proc/kcore") && s == Path::new("/dev/null"))
        });
        let acpi = pos(&|c| {
            matches!(c, Call::Mount { target, fstype: Some(t), .. }
            if target == Path::new("/proc/acpi") && t == "tmpfs")
        });
        let sys_ro = pos(&|c| {
            matches!(c, Call::Mount { target, flags, .. }
            if target == Path::new("/proc/sys") && flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT))
        });
        let hosts = pos(&|c| {
            matches!(c, Call::Mount { target, source: Some(s), .. }
            if target == Path::new("/state/root/etc/hosts") && s == Path::new("/etc/hosts"))
        });
        assert!(
            proc_mount < pivot
                && hosts < pivot
                && pivot < detach
                && detach < kcore
                && kcore < sys_ro
        );
        assert!(acpi > detach);
        assert!(calls.iter().any(|c| matches!(c, Call::Mount { target, .. } if target == Path::new("/state/root/dev/null"))));
        assert!(calls.iter().any(|c| matches!(c, Call::Symlink(t, l) if t == Path::new("/proc/self/fd") && l == Path::new("/state/root/dev/fd"))));
        // The sysfs mount is read-only.
        assert!(calls.iter().any(|c| matches!(c, Call::Mount { fstype: Some(t), flags, .. } if t == "sysfs" && flags.contains(MsFlags::MS_RDONLY))));
    }

    #[test]
    fn bind_mount_read_only_is_remounted() {
        let m: Mount = serde_json::from_value(serde_json::json!({
            "destination": "/data", "type": "bind", "source": "/host/data", "options": ["rbind", "ro"]
        }))
        .unwrap();
        let rootfs = RootfsConfig::Dir("/img".into());
        let mut rec = Recorder {
            dirs: vec!["/host/data".into()],
            ..Default::default()
        };
        let plan = RootPlan {
            root: Path::new("/r"),
            rootfs: &rootfs,
            mounts: std::slice::from_ref(&m),
            masked: &[],
            readonly: &[],
            root_readonly: true,
            etc_binds: vec![],
            console: Some("/dev/pts/7".into()),
        };
        setup_rootfs(&mut rec, &plan).unwrap();
        assert!(rec.calls.contains(&Call::Mount {
            source: Some("/host/data".into()),
            target: "/r/data".into(),
            fstype: None,
            flags: MsFlags::MS_BIND | MsFlags::MS_REC,
            data: None
        }));
        assert!(rec.calls.contains(&Call::Mount {
            source: None,
            target: "/r/data".into(),
            fstype: None,
            flags: MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            data: None
        }));
        assert!(
            matches!(rec.calls.last(), Some(Call::Mount { target, flags, .. })
            if target == Path::new("/") && flags.contains(MsFlags::MS_RDONLY))
        );
    }
}

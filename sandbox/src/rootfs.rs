//! The container's filesystem: overlay root, spec mounts, `/dev`, `/etc` binds, `pivot_root`,
//! masked and read-only paths. Everything goes through [`Sys`] so the order of operations is unit
//! tested with a recording double. Every container path (mount destinations, the `/dev` entries,
//! the `/etc` bind targets) is resolved inside the root by [`Sys::dir_target`] /
//! [`Sys::file_target`] (the `rbuild-fsroot` crate) and mounted through the descriptor found.

use crate::error::{Error, Result};
use crate::mountapi::MountAttrs;
use crate::sys::Sys;
use crate::RootfsConfig;
use nix::mount::MsFlags;
use oci_spec::runtime::Mount;
use std::path::{Path, PathBuf};

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
    // Nothing we mount may propagate back to the host.
    sys.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    mount_root(sys, plan)?;
    for m in plan.mounts {
        spec_mount(sys, root, m, &mut stubs)?;
    }
    dev_entries(sys, plan, &mut stubs)?;
    for (host, cpath) in &plan.etc_binds {
        if plan.mounts.iter().any(|m| m.destination() == cpath) {
            continue; // the user mounted their own
        }
        let (dest, created) = sys.file_target(root, cpath)?;
        stubs.extend(created);
        let attrs = MountAttrs::read_only(MsFlags::MS_NOSUID | MsFlags::MS_NODEV);
        sys.bind(host, &dest, false, attrs)?;
    }

    // pivot_root(".", ".") then detach the old root stacked on top (as runc does).
    sys.chdir(root)?;
    sys.pivot_root(Path::new("."), Path::new("."))?;
    sys.umount2(Path::new("."), libc::MNT_DETACH)?;
    sys.chdir(Path::new("/"))?;

    mask_and_protect(sys, plan)?;
    if plan.root_readonly || matches!(plan.rootfs, RootfsConfig::OverlayReadOnly { .. }) {
        // Only `/` itself: volumes and tmpfs mounts stay writable, as with `docker run --read-only`.
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

/// Mounts the root filesystem on `plan.root` (a directory of the helper's state, trusted).
fn mount_root(sys: &mut dyn Sys, plan: &RootPlan) -> Result<()> {
    let root = plan.root;
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
                sys.dir_target(root, Path::new("/.upper"))?;
                sys.dir_target(root, Path::new("/.work"))?;
                let (u, w) = (root.join(".upper"), root.join(".work"));
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
    Ok(())
}

/// One mount of the spec: a bind (read-only recursively when asked) or a new filesystem, on its
/// destination resolved inside the root.
fn spec_mount(sys: &mut dyn Sys, root: &Path, m: &Mount, stubs: &mut Vec<PathBuf>) -> Result<()> {
    let dest = m.destination();
    let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
    let typ = m.typ().as_deref().unwrap_or("");
    let is_bind = typ == "bind" || opts.flags.contains(MsFlags::MS_BIND);
    if is_bind {
        let src = m.source().as_ref().ok_or_else(|| {
            Error::InvalidSpec(format!("bind mount at {} has no source", dest.display()))
        })?;
        let (target, created) = if sys.is_dir(src) {
            sys.dir_target(root, dest)?
        } else {
            sys.file_target(root, dest)?
        };
        stubs.extend(created);
        let recursive = opts.flags.contains(MsFlags::MS_REC);
        let attrs = MountAttrs::from_flags(opts.flags, opts.propagation);
        return sys.bind(src, &target, recursive, attrs);
    }
    let (target, created) = sys.dir_target(root, dest)?;
    stubs.extend(created);
    if typ == "cgroup" || typ == "cgroup2" {
        // The cgroup ns makes the container's own cgroup the root of this view. On a v1/v2 hybrid
        // host, mounting v1 controllers is not needed by builds; best effort.
        let _ = sys.mount_fs(
            "cgroup2",
            Path::new("cgroup2"),
            &target,
            opts.flags,
            None,
            opts.propagation,
        );
        return Ok(());
    }
    let src = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
    let data = (!opts.data.is_empty()).then(|| opts.data.join(","));
    sys.mount_fs(
        typ,
        &src,
        &target,
        opts.flags,
        data.as_deref(),
        opts.propagation,
    )
}

/// Minimal `/dev`: host device nodes bind-mounted (the devices cgroup decides what may be opened),
/// the console, and the usual symlinks.
fn dev_entries(sys: &mut dyn Sys, plan: &RootPlan, stubs: &mut Vec<PathBuf>) -> Result<()> {
    let root = plan.root;
    let (dev, created) = sys.dir_target(root, Path::new("/dev"))?;
    stubs.extend(created);
    for d in DEVICES {
        let (target, created) = sys.file_target(root, &Path::new("/dev").join(d))?;
        stubs.extend(created);
        let host = Path::new("/dev").join(d);
        sys.bind(&host, &target, false, MountAttrs::default())?;
    }
    if let Some(console) = &plan.console {
        let (target, created) = sys.file_target(root, Path::new("/dev/console"))?;
        stubs.extend(created);
        sys.bind(console, &target, false, MountAttrs::default())?;
    }
    for (target, link) in [
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("pts/ptmx", "ptmx"),
    ] {
        sys.symlink_in(&dev, link, Path::new(target))?;
    }
    Ok(())
}

/// After `pivot_root`: Docker's masked paths hidden, its read-only paths made read-only with every
/// submount.
fn mask_and_protect(sys: &mut dyn Sys, plan: &RootPlan) -> Result<()> {
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
        let attrs =
            MountAttrs::read_only(MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
        sys.bind(p, &crate::sys::Target::path(p), true, attrs)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, Recorder};

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
        let proc_mount = pos(&|c| matches!(c, Call::Fs { fstype, .. } if fstype == "proc"));
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
            matches!(c, Call::Bind { target, source, recursive: true, attrs }
            if target == Path::new("/proc/sys") && source == Path::new("/proc/sys") && attrs.is_read_only())
        });
        let hosts = pos(&|c| {
            matches!(c, Call::Bind { target, source, attrs, .. }
            if target == Path::new("/state/root/etc/hosts") && source == Path::new("/etc/hosts") && attrs.is_read_only())
        });
        assert!(
            proc_mount < pivot
                && hosts < pivot
                && pivot < detach
                && detach < kcore
                && kcore < sys_ro
        );
        assert!(acpi > detach);
        assert!(calls.iter().any(|c| matches!(c, Call::Bind { target, source, .. } if target == Path::new("/state/root/dev/null") && source == Path::new("/dev/null"))));
        assert!(calls.iter().any(|c| matches!(c, Call::Symlink(t, l) if t == Path::new("/proc/self/fd") && l == Path::new("/state/root/dev/fd"))));
        // The sysfs mount is read-only.
        assert!(calls.iter().any(|c| matches!(c, Call::Fs { fstype, flags, .. } if fstype == "sysfs" && flags.contains(MsFlags::MS_RDONLY))));
        // Every mount point is resolved inside the root before it is used.
        let proc_target =
            pos(&|c| matches!(c, Call::DirTarget(t) if t == Path::new("/state/root/proc")));
        assert!(proc_target < proc_mount);
    }

    #[test]
    fn bind_mount_read_only_is_recursive() {
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
        // One detached recursive copy, read-only in every mount before it is attached: no
        // non-recursive remount afterwards.
        assert!(rec.calls.contains(&Call::Bind {
            source: "/host/data".into(),
            target: "/r/data".into(),
            recursive: true,
            attrs: MountAttrs::read_only(MsFlags::empty()),
        }));
        assert!(rec.calls.contains(&Call::DirTarget("/r/data".into())));
        assert!(!rec
            .calls
            .iter()
            .any(|c| matches!(c, Call::Mount { target, flags, .. }
            if target == Path::new("/r/data") && flags.contains(MsFlags::MS_REMOUNT))));
        assert!(rec.calls.contains(&Call::Bind {
            source: "/dev/pts/7".into(),
            target: "/r/dev/console".into(),
            recursive: false,
            attrs: MountAttrs::default(),
        }));
        assert!(
            matches!(rec.calls.last(), Some(Call::Mount { target, flags, .. })
            if target == Path::new("/") && flags.contains(MsFlags::MS_RDONLY))
        );
    }
}

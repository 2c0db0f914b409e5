use super::*;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

fn tree() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let host = t.path().join("host");
    std::fs::create_dir_all(host.join("etc")).unwrap();
    std::fs::write(host.join("etc/hostname"), "HOST").unwrap();
    let root = t.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/hostname"), "INSIDE").unwrap();
    (t, root)
}

fn read(r: &Resolved) -> String {
    std::fs::read_to_string(r.proc_path()).unwrap()
}

#[test]
fn absolute_link_to_slash_means_the_roots_own_slash() {
    let (t, root) = tree();
    symlink("/", root.join("h")).unwrap();
    symlink(t.path().join("host"), root.join("abs")).unwrap();
    let r = Root::open(&root).unwrap();
    assert_eq!(read(&r.resolve("/h/etc/hostname").unwrap()), "INSIDE");
    // A link naming a host path is read as a path inside the root: not found there.
    assert!(matches!(
        r.resolve("/abs/etc/hostname"),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn dotdot_and_relative_links_stop_at_the_root() {
    let (_t, root) = tree();
    symlink("../../../../host", root.join("up")).unwrap();
    let r = Root::open(&root).unwrap();
    assert_eq!(read(&r.resolve("../../../etc/hostname").unwrap()), "INSIDE");
    assert!(r.resolve("/up/etc/hostname").is_err());
    symlink("../../..", root.join("etc/back")).unwrap();
    assert_eq!(read(&r.resolve("etc/back/etc/hostname").unwrap()), "INSIDE");
}

#[test]
fn final_link_is_followed_inside_or_kept_with_nofollow() {
    let (_t, root) = tree();
    symlink("/etc/hostname", root.join("name")).unwrap();
    let r = Root::open(&root).unwrap();
    assert_eq!(read(&r.resolve("name").unwrap()), "INSIDE");
    let l = r.resolve_nofollow("name").unwrap();
    assert!(std::fs::symlink_metadata(l.proc_path()).is_ok());
    assert!(l.metadata().unwrap().file_type().is_symlink() || l.metadata().unwrap().is_file());
}

#[test]
fn link_loops_fail_with_eloop_never_an_unresolved_path() {
    let (_t, root) = tree();
    symlink("/a", root.join("b")).unwrap();
    symlink("/b", root.join("a")).unwrap();
    let r = Root::open(&root).unwrap();
    let e = r.resolve("/a/etc").unwrap_err();
    assert!(matches!(e, Error::TooManyLinks { .. }), "{e}");
    assert_eq!(e.errno(), Errno::ELOOP);
    assert!(r.mkdir_all("/a/x", 0o755, None).is_err());
}

#[test]
fn magic_links_are_refused() {
    let (_t, root) = tree();
    symlink("/proc/self/root", root.join("p")).unwrap();
    std::fs::create_dir_all(root.join("proc/self")).unwrap();
    let r = Root::open(&root).unwrap();
    // Inside the root /proc/self/root is a plain missing path, never the host's magic link.
    assert!(r.resolve("/p/etc/hostname").is_err());
}

#[test]
fn mkdir_all_creates_inside_through_links() {
    let (t, root) = tree();
    symlink("/", root.join("h")).unwrap();
    symlink(t.path().join("host"), root.join("abs")).unwrap();
    symlink("/made/by/link", root.join("dangling")).unwrap();
    let r = Root::open(&root).unwrap();
    let d = r.mkdir_all("/h/new/dir", 0o750, Some((12, 34))).unwrap();
    assert!(root.join("new/dir").is_dir());
    let md = std::fs::metadata(root.join("new/dir")).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o750);
    assert_eq!((md.uid(), md.gid()), (12, 34));
    assert_eq!(
        d.host_path().unwrap(),
        root.join("new/dir").canonicalize().unwrap()
    );
    r.mkdir_all("/abs/etc/evil", 0o755, None).unwrap();
    assert!(!t.path().join("host/etc/evil").exists());
    assert!(root
        .join(t.path().strip_prefix("/").unwrap())
        .join("host/etc/evil")
        .is_dir());
    r.mkdir_all("/dangling/x", 0o755, None).unwrap();
    assert!(root.join("made/by/link/x").is_dir());
    // Existing directories keep their mode.
    std::fs::set_permissions(root.join("etc"), std::fs::Permissions::from_mode(0o700)).unwrap();
    r.mkdir_all("/etc/sub", 0o755, None).unwrap();
    assert_eq!(
        std::fs::metadata(root.join("etc"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o700
    );
    assert!(matches!(
        r.mkdir_all("/etc/hostname/x", 0o755, None),
        Err(Error::NotADirectory { .. })
    ));
}

#[test]
fn open_file_creates_inside_and_nofollow_refuses_a_final_link() {
    let (t, root) = tree();
    symlink(t.path().join("host/etc/hostname"), root.join("victim")).unwrap();
    let r = Root::open(&root).unwrap();
    // Writing through a link whose host-side target exists creates the in-root target instead.
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC;
    let _ = r.open_file("victim", flags, 0o644);
    assert_eq!(
        std::fs::read_to_string(t.path().join("host/etc/hostname")).unwrap(),
        "HOST"
    );
    assert!(r
        .open_file("victim", flags | OFlag::O_NOFOLLOW, 0o644)
        .is_err());
    let mut f = r.open_file("/etc/new", flags, 0o600).unwrap();
    std::io::Write::write_all(&mut f, b"x").unwrap();
    assert_eq!(std::fs::read_to_string(root.join("etc/new")).unwrap(), "x");
}

#[test]
fn proc_path_is_a_stable_handle() {
    let (_t, root) = tree();
    let r = Root::open(&root).unwrap();
    let etc = r.resolve("/etc").unwrap();
    // Swapping the directory for a link after resolution does not redirect the handle.
    std::fs::rename(root.join("etc"), root.join("etc.old")).unwrap();
    symlink("/", root.join("etc")).unwrap();
    assert_eq!(
        std::fs::read_to_string(etc.proc_path().join("hostname")).unwrap(),
        "INSIDE"
    );
}

#[test]
fn inner_path_is_where_the_kernel_arrived() {
    let (_t, root) = tree();
    symlink("/", root.join("h")).unwrap();
    symlink("etc", root.join("e")).unwrap();
    let r = Root::open(&root).unwrap();
    assert_eq!(r.host_path().unwrap(), root.canonicalize().unwrap());
    let f = r.resolve("/h/h/e/hostname").unwrap();
    assert_eq!(r.inner_path(&f).unwrap(), Path::new("/etc/hostname"));
    assert_eq!(
        r.inner_path(&r.resolve("..").unwrap()).unwrap(),
        Path::new("/")
    );
    // An object of another root is not inside this one.
    let other = Root::open(root.parent().unwrap()).unwrap();
    let outside = other.resolve("host/etc/hostname").unwrap();
    assert!(r.inner_path(&outside).is_err());
}

//! Layers, whiteouts, hostile tars, images and archive outputs (with skopeo/umoci when installed).

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use rbuild_cache::Store;
use rbuild_exporter::*;
use rbuild_types::{Digest, ImageRef, Platform};

fn mknod(p: &Path, kind: libc::mode_t, major: u32, minor: u32) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let r = unsafe { libc::mknod(c.as_ptr(), kind | 0o644, libc::makedev(major, minor)) };
    assert_eq!(r, 0, "mknod {}", p.display());
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| buf[..r as usize].to_vec())
}

fn set_xattr(p: &Path, name: &str, v: &[u8]) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let r = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    assert_eq!(r, 0, "setxattr {name} on {}", p.display());
}

/// A snapshot with a whiteout, an opaque dir, a hard link, a symlink, a fifo, a device, xattrs.
fn sample_snapshot(store: &Store) -> rbuild_cache::SnapshotId {
    let b = store.new_snapshot().unwrap();
    let fs_dir = b.fs_dir();
    fs::create_dir_all(fs_dir.join("etc")).unwrap();
    fs::write(fs_dir.join("etc/hello"), b"hello world\n").unwrap();
    fs::set_permissions(fs_dir.join("etc/hello"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::lchown(fs_dir.join("etc/hello"), Some(1000), Some(1001)).unwrap();
    fs::hard_link(fs_dir.join("etc/hello"), fs_dir.join("etc/hello-link")).unwrap();
    std::os::unix::fs::symlink("hello", fs_dir.join("etc/sym")).unwrap();
    mknod(&fs_dir.join("gone"), libc::S_IFCHR, 0, 0); // whiteout
    fs::create_dir(fs_dir.join("opaque")).unwrap();
    set_xattr(&fs_dir.join("opaque"), "trusted.overlay.opaque", b"y");
    fs::write(fs_dir.join("opaque/new"), b"n").unwrap();
    mknod(&fs_dir.join("fifo"), libc::S_IFIFO, 0, 0);
    mknod(&fs_dir.join("null"), libc::S_IFCHR, 1, 3);
    set_xattr(&fs_dir.join("etc/hello"), "user.note", b"kept");
    b.commit().unwrap()
}

#[test]
fn whiteout_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(&t.path().join("store")).unwrap();
    let snap = sample_snapshot(&store);
    let (diff_id, size) = write_layer(&store, &snap).unwrap();
    assert!(size > 0);
    // Hashed only: the blob is made when a consumer asks for it, and it has the diff_id.
    assert!(!store.has_blob(&diff_id));
    assert!(has_layer(&store, &diff_id).unwrap());
    assert_eq!(layer_size(&store, &diff_id).unwrap(), size);
    let b = layer_blob(&store, &diff_id, Compression::None).unwrap();
    assert_eq!((b.digest.clone(), b.size), (diff_id.clone(), size));
    assert_eq!(Digest::of(&store.read_blob(&diff_id).unwrap()), diff_id);
    assert_eq!(store.layer_snapshot(&diff_id).unwrap(), Some(snap.clone()));
    // Deterministic: the same snapshot gives the same digest.
    assert_eq!(write_layer(&store, &snap).unwrap().0, diff_id);

    // The tar holds .wh. entries, not devices 0/0.
    let mut names = vec![];
    let data = store.read_blob(&diff_id).unwrap();
    let mut ar = tar::Archive::new(&data[..]);
    for e in ar.entries().unwrap() {
        names.push(e.unwrap().path().unwrap().to_string_lossy().into_owned());
    }
    assert!(names.contains(&".wh.gone".to_string()), "{names:?}");
    assert!(
        names.contains(&"opaque/.wh..wh..opq".to_string()),
        "{names:?}"
    );
    // Depth first, sorted by the snapshot's names (the whiteout sorts as "gone").
    let top: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !n.contains('/'))
        .collect();
    assert_eq!(top, ["etc", "fifo", ".wh.gone", "null", "opaque"]);

    let out = t.path().join("out");
    unpack_layer(fs::File::open(store.blob_path(&diff_id)).unwrap(), &out).unwrap();
    let m = fs::symlink_metadata(out.join("gone")).unwrap();
    assert!(m.file_type().is_char_device() && m.rdev() == 0);
    assert_eq!(
        xattr(&out.join("opaque"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(fs::read(out.join("opaque/new")).unwrap(), b"n");
    let h = fs::metadata(out.join("etc/hello")).unwrap();
    assert_eq!((h.mode() & 0o7777, h.uid(), h.gid()), (0o640, 1000, 1001));
    assert_eq!(
        h.ino(),
        fs::metadata(out.join("etc/hello-link")).unwrap().ino()
    );
    assert_eq!(
        fs::read_link(out.join("etc/sym")).unwrap(),
        Path::new("hello")
    );
    assert!(fs::symlink_metadata(out.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let null = fs::symlink_metadata(out.join("null")).unwrap();
    assert!(null.file_type().is_char_device() && null.rdev() == libc::makedev(1, 3));
    assert_eq!(
        xattr(&out.join("etc/hello"), "user.note").as_deref(),
        Some(&b"kept"[..])
    );
    let src = store.snapshot_dir(&snap);
    assert_eq!(
        fs::metadata(src.join("etc/hello")).unwrap().mtime(),
        h.mtime(),
        "mtime kept"
    );

    // Re-exporting the unpacked tree gives the identical layer, also when it is unpacked in a
    // later second than the original was made (whiteouts keep the entry's mtime).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = store.new_snapshot().unwrap();
    unpack_layer(
        fs::File::open(store.blob_path(&diff_id)).unwrap(),
        &b.fs_dir(),
    )
    .unwrap();
    let snap2 = b.commit().unwrap();
    assert_eq!(write_layer(&store, &snap2).unwrap().0, diff_id);
}

fn tar_with(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        let data = b"x";
        h.set_size(if *kind == tar::EntryType::Regular {
            1
        } else {
            0
        });
        // Bypass the tar crate's own path checks: write the raw name.
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        if !link.is_empty() {
            h.set_link_name(link).unwrap();
        }
        h.set_cksum();
        b.append(
            &h,
            &data[..if *kind == tar::EntryType::Regular {
                1
            } else {
                0
            }],
        )
        .unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn hostile_tars_are_refused() {
    use tar::EntryType::*;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dotdot", tar_with(&[("../x", Regular, "")])),
        ("nested dotdot", tar_with(&[("a/../../x", Regular, "")])),
        ("absolute", tar_with(&[("/etc/evil", Regular, "")])),
        (
            "symlink then file",
            tar_with(&[("link", Symlink, "/tmp"), ("link/evil", Regular, "")]),
        ),
        ("hardlink out", tar_with(&[("h", Link, "../../etc/passwd")])),
    ];
    for (what, data) in cases {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("dest");
        let err = unpack_layer(std::io::Cursor::new(data), &dest).unwrap_err();
        assert!(matches!(err, Error::UnsafePath { .. }), "{what}: {err}");
        assert!(err.to_string().contains("unsafe path"), "{what}: {err}");
        assert!(
            !t.path().join("x").exists() && !Path::new("/tmp/evil").exists(),
            "{what}"
        );
    }
}

#[test]
fn compressed_layers_unpack() {
    let t = tempfile::tempdir().unwrap();
    let plain = tar_with(&[
        ("dir/", tar::EntryType::Directory, ""),
        ("dir/f", tar::EntryType::Regular, ""),
    ]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&plain[..], 3).unwrap();
    for (name, data) in [("plain", plain.clone()), ("gz", gz), ("zst", zst)] {
        let dest = t.path().join(name);
        unpack_layer(std::io::Cursor::new(data), &dest).unwrap();
        assert_eq!(fs::read(dest.join("dir/f")).unwrap(), b"x", "{name}");
    }
}

fn rootfs_tar(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("rootfs");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("etc/passwd"), b"root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::os::unix::fs::symlink("tool", root.join("bin/sh")).unwrap();
    let tar = dir.join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    tar
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn import_export_and_interop() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(&t.path().join("store")).unwrap();
    let tar = rootfs_tar(t.path());
    let name: ImageRef = "busybox:local".parse().unwrap();
    let m = import_rootfs(&store, &tar, &name, &Platform::host()).unwrap();
    assert_eq!(store.get_tag(&name).unwrap(), Some(m.clone()));
    let img = load_image(&store, &m).unwrap();
    assert_eq!(img.manifest_digest, m);
    assert_eq!(img.config.rootfs().diff_ids().len(), 1);
    assert_eq!(
        img.manifest.layers()[0].media_type().to_string(),
        "application/vnd.oci.image.layer.v1.tar"
    );
    let diff: Digest = img.config.rootfs().diff_ids()[0].parse().unwrap();
    let snap = ensure_snapshot(&store, &diff).unwrap();
    assert!(store.snapshot_dir(&snap).join("bin/tool").is_file());

    // Local dir output.
    let local = t.path().join("local");
    export_local_dir(&store, &m, &local, false).unwrap();
    assert_eq!(
        fs::read(local.join("etc/passwd")).unwrap(),
        b"root:x:0:0:root:/root:/bin/sh\n"
    );

    for c in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let out = t.path().join(format!("img-{c}.tar"));
        let exported =
            export_oci_archive(&store, &m, std::slice::from_ref(&name), &out, c).unwrap();
        assert!(out.is_file());
        // Compressed once: a second export reuses the stored compressed blob (same digest).
        assert_eq!(
            export_oci_archive(&store, &m, std::slice::from_ref(&name), &out, c).unwrap(),
            exported
        );
        if c == Compression::None {
            assert_eq!(exported, m);
        }
        if have("skopeo") {
            let o = Command::new("skopeo")
                .args(["inspect", &format!("oci-archive:{}", out.display())])
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "skopeo ({c}): {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(v["Digest"], exported.to_string());
        } else {
            eprintln!("skopeo not installed: skipping skopeo inspect");
        }
        if have("umoci") && c != Compression::Zstd {
            let layout = t.path().join(format!("layout-{c}"));
            fs::create_dir(&layout).unwrap();
            assert!(Command::new("tar")
                .arg("-C")
                .arg(&layout)
                .arg("-xf")
                .arg(&out)
                .status()
                .unwrap()
                .success());
            let bundle = t.path().join(format!("bundle-{c}"));
            let o = Command::new("umoci")
                .args(["unpack", "--image", &format!("{}:local", layout.display())])
                .arg(&bundle)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "umoci ({c}): {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert_eq!(
                fs::read(bundle.join("rootfs/bin/tool")).unwrap(),
                b"#!/bin/sh\necho hi\n"
            );
            assert_eq!(
                fs::read_link(bundle.join("rootfs/bin/sh")).unwrap(),
                Path::new("tool")
            );
        }
    }

    // Docker archive out, then both archive kinds back into a fresh store.
    let docker = t.path().join("docker.tar");
    export_docker_archive(&store, &m, std::slice::from_ref(&name), &docker).unwrap();
    if have("skopeo") {
        let o = Command::new("skopeo")
            .args(["inspect", &format!("docker-archive:{}", docker.display())])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "skopeo docker-archive: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    for (kind, path) in [
        ("docker", docker.clone()),
        ("oci", t.path().join("img-gzip.tar")),
    ] {
        let store2 = Store::open(&t.path().join(format!("store-{kind}"))).unwrap();
        let loaded = load_archive(&store2, &path).unwrap();
        assert_eq!(loaded.len(), 1, "{kind}");
        assert_eq!(loaded[0].0.as_ref(), Some(&name), "{kind}");
        let img2 = load_image(&store2, &loaded[0].1).unwrap();
        assert_eq!(img2.config_digest, img.config_digest, "{kind}");
        assert_eq!(
            loaded[0].1, m,
            "{kind}: same manifest as the original store"
        );
    }
}

#[test]
fn whiteouts_apply_in_local_output() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(&t.path().join("store")).unwrap();
    let base = store.new_snapshot().unwrap();
    fs::create_dir_all(base.fs_dir().join("opaque")).unwrap();
    fs::write(base.fs_dir().join("opaque/old"), b"old").unwrap();
    fs::write(base.fs_dir().join("gone"), b"g").unwrap();
    fs::write(base.fs_dir().join("stays"), b"s").unwrap();
    let base = base.commit().unwrap();
    let top = sample_snapshot(&store);
    let (d1, _) = write_layer(&store, &base).unwrap();
    let (d2, _) = write_layer(&store, &top).unwrap();
    let mut rootfs = oci_spec::image::RootFs::default();
    rootfs.set_diff_ids(vec![d1.to_string(), d2.to_string()]);
    let mut config = oci_spec::image::ImageConfiguration::default();
    config.set_rootfs(rootfs);
    let m = write_image(&store, &config).unwrap();
    let img = load_image(&store, &m).unwrap();
    assert_eq!(img.manifest.layers().len(), 2);
    assert_eq!(
        img.manifest.layers()[1].digest().to_string(),
        d2.to_string()
    );
    let out = t.path().join("local");
    export_local_dir(&store, &m, &out, false).unwrap();
    assert!(!out.join("gone").exists());
    assert!(out.join("stays").exists());
    assert!(!out.join("opaque/old").exists());
    assert!(out.join("opaque/new").exists());
    // Missing layers are reported by digest.
    let mut bad = oci_spec::image::ImageConfiguration::default();
    let mut rootfs = oci_spec::image::RootFs::default();
    rootfs.set_diff_ids(vec![Digest::of(b"missing").to_string()]);
    bad.set_rootfs(rootfs);
    let err = write_image(&store, &bad).unwrap_err();
    assert!(
        err.to_string()
            .contains(&Digest::of(b"missing").to_string()),
        "{err}"
    );
}

/// One tar entry with PAX `SCHILY.xattr.*` records.
fn append_with_xattrs(
    b: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: tar::EntryType,
    xattrs: &[(&str, &[u8])],
) {
    let records: Vec<(String, &[u8])> = xattrs
        .iter()
        .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
        .collect();
    b.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    let data: &[u8] = if kind == tar::EntryType::Regular {
        b"x"
    } else {
        b""
    };
    h.set_size(data.len() as u64);
    h.set_path(name).unwrap();
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// A capability set as `setcap cap_net_raw+ep` writes it (VFS_CAP_REVISION_2).
const NET_RAW_CAP: &[u8] = &[
    0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

#[test]
fn layers_cannot_plant_trusted_xattrs() {
    let t = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let overlay: &[(&str, &[u8])] = &[
        ("trusted.overlay.opaque", b"y"),
        ("trusted.overlay.redirect", b"/etc"),
        ("trusted.overlay.metacopy", b""),
        ("trusted.overlay.origin", b"\x00\xfb"),
        ("trusted.rbuild-test", b"1"),
        ("user.kept", b"u"),
    ];
    append_with_xattrs(&mut b, "planted", tar::EntryType::Directory, overlay);
    append_with_xattrs(&mut b, "planted/file", tar::EntryType::Regular, overlay);
    append_with_xattrs(
        &mut b,
        "ping",
        tar::EntryType::Regular,
        &[("security.capability", NET_RAW_CAP)],
    );
    // The unpacker's own opaque marker still works.
    append_with_xattrs(&mut b, "real", tar::EntryType::Directory, &[]);
    append_with_xattrs(&mut b, "real/.wh..wh..opq", tar::EntryType::Regular, &[]);
    append_with_xattrs(&mut b, ".wh.gone", tar::EntryType::Regular, &[]);
    let data = b.into_inner().unwrap();
    let out = t.path().join("snap");
    unpack_layer(std::io::Cursor::new(data), &out).unwrap();
    for p in [out.join("planted"), out.join("planted/file")] {
        for (k, _) in overlay.iter().filter(|(k, _)| k.starts_with("trusted.")) {
            assert_eq!(xattr(&p, k), None, "{k} was planted on {}", p.display());
        }
        assert_eq!(xattr(&p, "user.kept").as_deref(), Some(&b"u"[..]));
    }
    assert_eq!(
        xattr(&out.join("ping"), "security.capability").as_deref(),
        Some(NET_RAW_CAP),
        "file capabilities are image content"
    );
    assert_eq!(
        xattr(&out.join("real"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    let m = fs::symlink_metadata(out.join("gone")).unwrap();
    assert!(m.file_type().is_char_device() && m.rdev() == 0);
    assert!(layer_xattr_allowed(b"security.capability"));
    assert!(!layer_xattr_allowed(b"trusted.overlay.upper"));
}

#[test]
fn local_output_drops_setid_bits_devices_and_caps_unless_asked() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(&t.path().join("store")).unwrap();
    let b = store.new_snapshot().unwrap();
    let fs_dir = b.fs_dir();
    fs::create_dir_all(fs_dir.join("bin")).unwrap();
    fs::create_dir_all(fs_dir.join("shared")).unwrap();
    fs::write(fs_dir.join("bin/su"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(fs_dir.join("bin/su"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(fs_dir.join("bin/wall"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(fs_dir.join("bin/wall"), fs::Permissions::from_mode(0o2755)).unwrap();
    fs::write(fs_dir.join("bin/ping"), b"#!/bin/sh\n").unwrap();
    set_xattr(&fs_dir.join("bin/ping"), "security.capability", NET_RAW_CAP);
    fs::set_permissions(fs_dir.join("shared"), fs::Permissions::from_mode(0o2775)).unwrap();
    mknod(&fs_dir.join("sda"), libc::S_IFBLK, 8, 0);
    mknod(&fs_dir.join("mem"), libc::S_IFCHR, 1, 1);
    mknod(&fs_dir.join("fifo"), libc::S_IFIFO, 0, 0);
    let snap = b.commit().unwrap();
    let (d, _) = write_layer(&store, &snap).unwrap();
    let mut rootfs = oci_spec::image::RootFs::default();
    rootfs.set_diff_ids(vec![d.to_string()]);
    let mut config = oci_spec::image::ImageConfiguration::default();
    config.set_rootfs(rootfs);
    let m = write_image(&store, &config).unwrap();
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;

    let out = t.path().join("plain");
    export_local_dir(&store, &m, &out, false).unwrap();
    assert_eq!(mode(&out.join("bin/su")), 0o755);
    assert_eq!(mode(&out.join("bin/wall")), 0o755);
    assert_eq!(xattr(&out.join("bin/ping"), "security.capability"), None);
    assert_eq!(
        mode(&out.join("shared")),
        0o2775,
        "set-gid directories are harmless"
    );
    assert!(
        fs::symlink_metadata(out.join("sda")).is_err(),
        "block device skipped"
    );
    assert!(
        fs::symlink_metadata(out.join("mem")).is_err(),
        "char device skipped"
    );
    assert!(fs::symlink_metadata(out.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());

    let out = t.path().join("special");
    export_local_dir(&store, &m, &out, true).unwrap();
    assert_eq!(mode(&out.join("bin/su")), 0o4755);
    assert_eq!(mode(&out.join("bin/wall")), 0o2755);
    assert_eq!(
        xattr(&out.join("bin/ping"), "security.capability").as_deref(),
        Some(NET_RAW_CAP)
    );
    let sda = fs::symlink_metadata(out.join("sda")).unwrap();
    assert!(sda.file_type().is_block_device() && sda.rdev() == libc::makedev(8, 0));
}

/// Regenerating a built layer's tar from its snapshot gives the recorded diff_id in every
/// form (the mtime clamp included); a snapshot damaged after the build gives a clear error and
/// leaves no blob behind.
#[test]
fn lazy_layer_blobs_are_verified() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(&t.path().join("store")).unwrap();
    let snap = sample_snapshot(&store);
    let (diff_id, size) = write_layer_clamped(&store, &snap, Some(1_000)).unwrap();
    assert!(!store.has_blob(&diff_id));
    // gzip straight from the snapshot: the uncompressed tar is never written.
    let gz = layer_blob(&store, &diff_id, Compression::Gzip).unwrap();
    assert!(!store.has_blob(&diff_id));
    let mut plain = Vec::new();
    std::io::Read::read_to_end(
        &mut decompressed(fs::File::open(store.blob_path(&gz.digest)).unwrap()).unwrap(),
        &mut plain,
    )
    .unwrap();
    assert_eq!(
        (Digest::of(&plain), plain.len() as u64),
        (diff_id.clone(), size)
    );
    assert_eq!(gz.media_type, "application/vnd.oci.image.layer.v1.tar+gzip");
    // Reused, not made again.
    assert_eq!(layer_blob(&store, &diff_id, Compression::Gzip).unwrap(), gz);
    let z = layer_blob(&store, &diff_id, Compression::Zstd).unwrap();
    assert_ne!(z.digest, gz.digest);

    // Damage: one byte of a file of the snapshot changes, its size and mtime do not.
    let snap2 = {
        let b = store.new_snapshot().unwrap();
        fs::write(b.fs_dir().join("data"), b"good bytes").unwrap();
        b.commit().unwrap()
    };
    let (d2, _) = write_layer(&store, &snap2).unwrap();
    let f = store.snapshot_dir(&snap2).join("data");
    let mtime = fs::metadata(&f).unwrap().modified().unwrap();
    fs::write(&f, b"evil bytes").unwrap();
    fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let err = layer_blob(&store, &d2, c).unwrap_err();
        assert!(matches!(err, Error::LayerDamaged { .. }), "{c}: {err}");
        let msg = err.for_layer_of("image web:v1").to_string();
        assert!(msg.starts_with("image web:v1: layer "), "{msg}");
        assert!(
            msg.contains(&d2.to_string()) && msg.contains("--no-cache"),
            "{msg}"
        );
        assert!(msg.contains("damaged"), "{msg}");
    }
    assert!(!store.has_blob(&d2));
    assert_eq!(
        fs::read_dir(t.path().join("store/ingest")).unwrap().count(),
        0,
        "no partial blob is left"
    );
    // An image using it cannot be exported in any format.
    let mut rootfs = oci_spec::image::RootFs::default();
    rootfs.set_diff_ids(vec![d2.to_string()]);
    let mut config = oci_spec::image::ImageConfiguration::default();
    config.set_rootfs(rootfs);
    let m = write_image(&store, &config).unwrap();
    let name: ImageRef = "web:v1".parse().unwrap();
    let out = t.path().join("out.tar");
    let err = export_docker_archive(&store, &m, std::slice::from_ref(&name), &out).unwrap_err();
    assert!(err.to_string().contains("image web:v1: layer"), "{err}");
    assert!(!out.exists());
    let err = export_oci_archive(&store, &m, &[name], &out, Compression::Gzip).unwrap_err();
    assert!(matches!(err, Error::LayerDamaged { .. }), "{err}");
    assert!(export_local_dir(&store, &m, &t.path().join("local"), false).is_err());
    assert!(distribution_manifest(&store, &m, Compression::Gzip).is_err());
    // A rebuild (--no-cache) records a fresh snapshot with the same content: fixed.
    let snap3 = {
        let b = store.new_snapshot().unwrap();
        fs::write(b.fs_dir().join("data"), b"good bytes").unwrap();
        fs::File::options()
            .write(true)
            .open(b.fs_dir().join("data"))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        b.commit().unwrap()
    };
    assert_eq!(write_layer(&store, &snap3).unwrap().0, d2);
    export_oci_archive(&store, &m, &[], &out, Compression::Gzip).unwrap();
}

/// A layer kept only as its gzip blob (a remote cache hit): its snapshot, its tar and other
/// compressions are made on demand and checked against the diff_id; a compressed blob that is
/// not the layer gives an error and nothing is committed.
#[test]
fn layers_kept_compressed_are_made_on_demand_and_verified() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(&t.path().join("store")).unwrap();
    let gz = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, data).unwrap();
        e.finish().unwrap()
    };
    let plain = tar_with(&[
        ("dir/", tar::EntryType::Directory, ""),
        ("dir/f", tar::EntryType::Regular, ""),
    ]);
    let diff_id = Digest::of(&plain);
    let zd = store.put_blob(&gz(&plain)).unwrap();
    let zsize = store.blob_size(&zd).unwrap();
    let id = store
        .put_lazy_layer(&diff_id, plain.len() as u64, "gzip", &zd, zsize)
        .unwrap();
    assert!(!store.has_blob(&diff_id) && !store.has_snapshot(&id));
    assert!(has_layer(&store, &diff_id).unwrap());
    assert_eq!(layer_size(&store, &diff_id).unwrap(), plain.len() as u64);
    // Held in use without unpacking; the gzip blob is the output form as is.
    let (held, _guard) = ensure_layer_in_use(&store, &diff_id).unwrap();
    assert_eq!(held, id);
    assert!(!store.has_snapshot(&id));
    assert_eq!(
        layer_blob(&store, &diff_id, Compression::Gzip)
            .unwrap()
            .digest,
        zd
    );
    // The snapshot, on demand, under the reserved id.
    assert_eq!(ensure_snapshot(&store, &diff_id).unwrap(), id);
    assert_eq!(
        fs::read(store.snapshot_dir(&id).join("dir/f")).unwrap(),
        b"x"
    );
    // Other forms: zstd and the tar itself, made from the gzip blob.
    let z = layer_blob(&store, &diff_id, Compression::Zstd).unwrap();
    assert_eq!(
        zstd::decode_all(&store.read_blob(&z.digest).unwrap()[..]).unwrap(),
        plain
    );
    let u = layer_blob(&store, &diff_id, Compression::None).unwrap();
    assert_eq!(u.digest, diff_id);

    // A gzip blob recorded for a diff_id it is not (a store edited, a hostile import): every
    // form made from it fails, nothing is committed.
    let other = tar_with(&[("g", tar::EntryType::Regular, "")]);
    let lie = Digest::of(b"not this tar");
    let od = store.put_blob(&gz(&other)).unwrap();
    let id2 = store
        .put_lazy_layer(&lie, other.len() as u64, "gzip", &od, 1)
        .unwrap();
    let e = ensure_snapshot(&store, &lie).unwrap_err();
    assert!(e.to_string().contains("not its diff_id"), "{e}");
    assert!(!store.has_snapshot(&id2));
    assert!(layer_blob(&store, &lie, Compression::None).is_err());
    assert!(!store.has_blob(&lie));
    assert!(layer_blob(&store, &lie, Compression::Zstd).is_err());
    let mut tar = layer_tar(&store, &lie).unwrap();
    assert!(std::io::copy(&mut tar, &mut std::io::sink()).is_err());
}

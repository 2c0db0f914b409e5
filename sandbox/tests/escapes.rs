//! Hostile inputs against the sandbox (issue 11, the sandbox side): an image, a step or a mount that
//! tries to reach the host through mount targets, read-only binds, stub cleanup, device nodes and
//! `/proc/1/exe`. Each case failed on the code before the hardening. Needs root and
//! /usr/bin/busybox (static). `harness = false`: main() calls `init_if_requested` first because the
//! sandbox re-executes this binary as its helper.

use rbuild_sandbox::{default_spec, spawn, Outcome, Rootfs, RunOptions};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

struct Fixture {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    dir: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::Builder::new()
        .prefix("rbuild-escapes-")
        .tempdir()
        .expect("tempdir");
    let base = tmp.path().join("base");
    std::fs::create_dir_all(base.join("bin")).unwrap();
    std::fs::create_dir_all(base.join("etc")).unwrap();
    std::fs::copy("/usr/bin/busybox", base.join("bin/busybox")).expect("copy busybox");
    let list = std::process::Command::new("/usr/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", base.join("bin").join(applet));
        }
    }
    std::fs::write(base.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    let dir = tmp.path().to_path_buf();
    Fixture {
        _tmp: tmp,
        base,
        dir,
    }
}

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Fixture {
    /// A fresh directory under the fixture.
    fn fresh(&self, what: &str) -> PathBuf {
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let d = self.dir.join(format!("{what}{n}"));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// An overlay root: `extra` lower layers on top of the busybox base.
    fn overlay(&self, extra: &[PathBuf]) -> Rootfs {
        let mut lower = extra.to_vec();
        lower.push(self.base.clone());
        Rootfs::Overlay {
            lower,
            upper: self.fresh("upper"),
            work: self.fresh("work"),
        }
    }
}

/// A directory on the HOST (outside every root) that a hostile input aims at.
struct Victim(PathBuf);

impl Victim {
    fn new(what: &str) -> Victim {
        let p = std::env::temp_dir().join(format!(
            "rbuild-escapes-victim-{what}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Victim(p)
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sh_spec(script: &str) -> oci_spec::runtime::Spec {
    default_spec(
        vec!["/bin/sh".into(), "-c".into(), script.into()],
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        "/",
        true,
    )
}

fn with_mounts(
    mut spec: oci_spec::runtime::Spec,
    mounts: serde_json::Value,
) -> oci_spec::runtime::Spec {
    let extra: Vec<oci_spec::runtime::Mount> = serde_json::from_value(mounts).unwrap();
    let mut all = spec.mounts().clone().unwrap_or_default();
    all.extend(extra);
    spec.set_mounts(Some(all));
    spec
}

fn with_init(mut spec: oci_spec::runtime::Spec) -> oci_spec::runtime::Spec {
    rbuild_sandbox::set_init(&mut spec, true);
    spec
}

fn run_spec(
    spec: &oci_spec::runtime::Spec,
    rootfs: Rootfs,
) -> Result<(Outcome, String, String), rbuild_sandbox::Error> {
    let opts = RunOptions {
        rootfs,
        stdin: Stdio::null(),
        stdout: Stdio::piped(),
        stderr: Stdio::piped(),
    };
    let mut c = spawn(spec, opts)?;
    let mut out = c.stdout().unwrap();
    let mut err = c.stderr().unwrap();
    let t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut o = String::new();
    out.read_to_string(&mut o).unwrap();
    let e = t.join().unwrap();
    let outcome = c.wait_outcome()?;
    Ok((outcome, o, e))
}

/// A mount target whose path goes through more symbolic links than the kernel follows (40) must
/// fail with ELOOP inside the root. The old resolver stopped expanding after 255 links and handed
/// the rest of the path to the host, which followed `l255 -> l256 -> /victim` and created
/// `/victim/sub` on the host.
fn mount_target_link_chain(f: &Fixture) {
    let victim = Victim::new("chain");
    let layer = f.fresh("chain-layer");
    for i in 0..256 {
        std::os::unix::fs::symlink(format!("l{}", i + 1), layer.join(format!("l{i}"))).unwrap();
    }
    std::os::unix::fs::symlink(&victim.0, layer.join("l256")).unwrap();
    let spec = with_mounts(
        sh_spec("true"),
        serde_json::json!([{"destination": "/l0/sub", "type": "tmpfs", "source": "tmpfs"}]),
    );
    let r = run_spec(&spec, f.overlay(&[layer]));
    assert!(
        !victim.0.join("sub").exists(),
        "a mount point was created on the host: {}",
        victim.0.join("sub").display()
    );
    let err = r.expect_err("the mount must fail").to_string();
    assert!(err.contains("too many levels of symbolic links"), "{err}");
    // An absolute link at a mount target stays in the root (as BuildKit/runc follow it).
    let layer = f.fresh("abs-layer");
    std::os::unix::fs::symlink(&victim.0, layer.join("data")).unwrap();
    let spec = with_mounts(
        sh_spec("touch /data/inside && ls -d /data/ && readlink /data"),
        serde_json::json!([{"destination": "/data/m", "type": "tmpfs", "source": "tmpfs"}]),
    );
    let (o, out, err) = run_spec(&spec, f.overlay(&[layer])).expect("spawn");
    assert_eq!(o.code(), 0, "{out} {err}");
    assert!(
        std::fs::read_dir(&victim.0).unwrap().next().is_none(),
        "host victim dir written"
    );
}

/// A read-only bind is read-only in every submount: a tmpfs under the bound directory, and the
/// host's /proc and /sys under a bind of `/`. The old code remounted only the top mount read-only.
fn read_only_bind_is_recursive(f: &Fixture) {
    let src = f.fresh("ro-src");
    let sub = src.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &sub,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _guard = Unmount(sub.clone());
    let spec = with_mounts(
        sh_spec(
            "grep -E ' /(data|h)[/ ]' /proc/mounts | grep -v ' ro[,\\ ]' | sed 's/^/RW: /'; \
             touch /data/sub/x 2>&1; echo rc=$?; \
             (echo rbuild-test > /h/proc/self/comm) 2>/dev/null && echo host-proc-writable; \
             grep -c ' /h/proc ' /proc/mounts",
        ),
        serde_json::json!([
            {"destination": "/data", "type": "bind", "source": src, "options": ["rbind", "ro"]},
            {"destination": "/h", "type": "bind", "source": "/", "options": ["rbind", "ro"]},
        ]),
    );
    let (o, out, err) = run_spec(&spec, f.overlay(&[])).expect("spawn");
    assert_eq!(o.code(), 0, "{out} {err}");
    assert!(!out.contains("RW: "), "writable submounts: {out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(!out.contains("rc=0"), "{out}");
    assert!(!out.contains("writable"), "{out}");
    assert!(
        out.trim_end().ends_with('1'),
        "host /proc not under /h: {out}"
    );
    assert!(!sub.join("x").exists());
}

/// The step replaces a mount stub's parent with a symlink to a host directory; the cleanup after
/// it must not follow that link. The old cleanup joined the stub's path onto the upper dir and
/// removed the empty directory and the empty file it found at the host end of the link.
fn stub_cleanup_stays_in_upper(f: &Fixture) {
    let victim = Victim::new("stubs");
    std::fs::create_dir(victim.0.join("c")).unwrap();
    std::fs::write(victim.0.join("hosts"), "").unwrap();
    let hostfile = f.fresh("bind-file").join("hosts");
    std::fs::write(&hostfile, "127.0.0.1 x\n").unwrap();
    let v = victim.0.display();
    let script = format!(
        "set -e; mv /a/b /a/old; ln -s {v} /a/b; mv /f/g /f/old; ln -s {v} /f/g; \
         mv /v /v.old; ln -s / /v; mkdir /w"
    );
    let spec = with_mounts(
        sh_spec(&script),
        serde_json::json!([
            {"destination": "/a/b/c", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/f/g/hosts", "type": "bind", "source": hostfile, "options": ["bind"]},
            {"destination": "/v/w", "type": "tmpfs", "source": "tmpfs"},
        ]),
    );
    let rootfs = f.overlay(&[]);
    let Rootfs::Overlay { upper, .. } = &rootfs else {
        unreachable!()
    };
    let upper = upper.clone();
    let (o, out, err) = run_spec(&spec, rootfs).expect("spawn");
    assert_eq!(o.code(), 0, "{out} {err}");
    assert!(victim.0.join("c").is_dir(), "host directory removed");
    assert!(victim.0.join("hosts").is_file(), "host file removed");
    // The stubs themselves, moved by the step, are the step's business: they stay in the layer.
    assert!(upper.join("a/old/c").is_dir());
    // `/v -> /` makes the stub `/v/w` name the step's own `/w`: not a stub, kept.
    assert!(upper.join("w").is_dir(), "the step's /w was removed");
    assert_eq!(
        std::fs::read_link(upper.join("a/b")).unwrap(),
        victim.0,
        "the step's symlink is kept"
    );
}

/// The first block device of the host (major:minor), a loop device when there is one.
fn host_block_device() -> Option<(u32, u32)> {
    let mut devs: Vec<(u32, u32)> = std::fs::read_dir("/sys/dev/block")
        .ok()?
        .filter_map(|e| {
            let n = e.ok()?.file_name().into_string().ok()?;
            let (a, b) = n.split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect();
    devs.sort_by_key(|(maj, _)| *maj != 7);
    devs.first().copied()
}

/// The device script: create nodes (CAP_MKNOD allows it, as in Docker) and open them.
fn device_script(block: (u32, u32)) -> String {
    format!(
        "mknod /blk b {} {} && echo made-block; \
         (exec 3</blk) 2>&1 | sed 's/^/blk: /'; \
         mknod /fuse c 10 229 && (exec 4<>/fuse) 2>&1 | sed 's/^/fuse: /'; \
         (exec 5</layer-dev) 2>&1 | sed 's/^/layer: /'; \
         echo x > /dev/null && head -c 4 /dev/zero | wc -c && head -c 4 /dev/urandom | wc -c && echo allowed-ok; \
         (exec 6<>/dev/ptmx) && echo ptmx-ok",
        block.0, block.1
    )
}

fn check_device_output(out: &str, err: &str) {
    assert!(
        out.contains("made-block"),
        "mknod itself is allowed: {out} {err}"
    );
    for what in ["blk", "fuse", "layer"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{what}: ")))
            .unwrap_or_else(|| panic!("{what} was opened: {out} {err}"));
        assert!(line.contains("Operation not permitted"), "{what}: {out}");
    }
    assert!(
        out.contains("allowed-ok") && out.contains("ptmx-ok"),
        "{out} {err}"
    );
}

/// A layer holding a block device node (as a pulled layer may).
fn device_layer(f: &Fixture, block: (u32, u32)) -> PathBuf {
    let layer = f.fresh("dev-layer");
    nix::sys::stat::mknod(
        &layer.join("layer-dev"),
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(block.0 as u64, block.1 as u64),
    )
    .unwrap();
    layer
}

/// This process's cgroup path for `controller` in /proc/PID/cgroup (v1 name or "" for v2).
fn cgroup_of(pid: u32, controller: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|l| {
        let mut p = l.splitn(3, ':');
        let (_, ctrls, path) = (p.next()?, p.next()?, p.next()?);
        let hit = if controller.is_empty() {
            ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == controller)
        };
        hit.then(|| path.to_string())
    })
}

fn mount_point(fstype: &str, option: Option<&str>) -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 3 && f[2] == fstype && option.is_none_or(|o| f[3].split(',').any(|x| x == o)))
            .then(|| PathBuf::from(f[1]))
    })
}

/// Only Docker's default devices can be opened: a block device made with mknod, a char device
/// outside the list (fuse) and a device node shipped in a layer fail with EPERM (with the cgroup
/// version the host gives by default).
fn devices_default(f: &Fixture) {
    let Some(block) = host_block_device() else {
        println!("  NOTE: no block device on this host: the block case is untestable");
        return;
    };
    let layer = device_layer(f, block);
    let (o, out, err) =
        run_spec(&sh_spec(&device_script(block)), f.overlay(&[layer])).expect("spawn");
    assert_eq!(o.code(), 0, "{out} {err}");
    check_device_output(&out, &err);
}

/// `RBUILD_CGROUP=v1`: the v1 `devices` controller enforces the same rules, and the container's
/// `devices.list` holds exactly the allow list.
fn devices_v1(f: &Fixture) {
    let Some(mnt) = mount_point("cgroup", Some("devices")) else {
        println!("  NOTE: no v1 devices controller here: the v1 rules are untestable");
        return;
    };
    let _guard = CgroupEnvGuard;
    std::env::set_var(rbuild_sandbox::CGROUP_ENV, "v1");
    if let Some(block) = host_block_device() {
        let layer = device_layer(f, block);
        let (o, out, err) =
            run_spec(&sh_spec(&device_script(block)), f.overlay(&[layer])).expect("spawn");
        assert_eq!(o.code(), 0, "{out} {err}");
        check_device_output(&out, &err);
    }
    let opts = RunOptions {
        rootfs: f.overlay(&[]),
        stdin: Stdio::null(),
        stdout: Stdio::null(),
        stderr: Stdio::null(),
    };
    let c = spawn(&sh_spec("sleep 2"), opts).unwrap();
    let rel = cgroup_of(c.pid(), "devices").expect("PID 1 in a devices cgroup");
    let list = std::fs::read_to_string(mnt.join(rel.trim_start_matches('/')).join("devices.list"))
        .unwrap();
    drop(c);
    let mut got: Vec<&str> = list.lines().collect();
    got.sort();
    let mut want = vec![
        "b *:* m",
        "c *:* m",
        "c 1:3 rwm",
        "c 1:5 rwm",
        "c 1:7 rwm",
        "c 1:8 rwm",
        "c 1:9 rwm",
        "c 5:0 rwm",
        "c 5:1 rwm",
        "c 5:2 rwm",
        "c 136:* rwm",
    ];
    want.sort();
    assert_eq!(got, want, "{list}");
}

/// Unsets `RBUILD_CGROUP` when dropped (also when a test panics).
struct CgroupEnvGuard;

impl Drop for CgroupEnvGuard {
    fn drop(&mut self) {
        std::env::remove_var(rbuild_sandbox::CGROUP_ENV);
    }
}

/// `bpf(BPF_PROG_QUERY)` of the BPF_CGROUP_DEVICE programs attached to the cgroup directory.
fn attached_device_programs(cgroup_dir: &Path) -> std::io::Result<u32> {
    #[repr(C)]
    struct Query {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
    }
    let dir = std::fs::File::open(cgroup_dir)?;
    let mut ids = [0u32; 16];
    let mut q = Query {
        target_fd: std::os::fd::AsRawFd::as_raw_fd(&dir) as u32,
        attach_type: 6, // BPF_CGROUP_DEVICE
        query_flags: 0,
        attach_flags: 0,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        _pad: 0,
    };
    // SAFETY: BPF_PROG_QUERY (16) with a valid attr of the given size and an id buffer it fills.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            16,
            &mut q as *mut Query,
            std::mem::size_of::<Query>(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(q.prog_cnt)
}

/// On cgroup v2 the same rule is a BPF_PROG_TYPE_CGROUP_DEVICE program attached to the
/// container's cgroup: queried with BPF_PROG_QUERY, and its effect checked with the same devices.
fn devices_v2(f: &Fixture) {
    let Some(mnt) = mount_point("cgroup2", None) else {
        println!("  NOTE: no cgroup2 hierarchy here: the BPF device program is untestable");
        return;
    };
    let _guard = CgroupEnvGuard;
    std::env::set_var(rbuild_sandbox::CGROUP_ENV, "v2");
    let opts = RunOptions {
        rootfs: f.overlay(&[]),
        stdin: Stdio::null(),
        stdout: Stdio::null(),
        stderr: Stdio::null(),
    };
    let c = spawn(&sh_spec("sleep 2"), opts).unwrap();
    let rel = cgroup_of(c.pid(), "").expect("PID 1 in a v2 cgroup");
    let n = attached_device_programs(&mnt.join(rel.trim_start_matches('/')));
    drop(c);
    assert_eq!(n.expect("BPF_PROG_QUERY"), 1, "one device program attached");
    if let Some(block) = host_block_device() {
        let layer = device_layer(f, block);
        let (o, out, err) =
            run_spec(&sh_spec(&device_script(block)), f.overlay(&[layer])).expect("spawn");
        assert_eq!(o.code(), 0, "{out} {err}");
        check_device_output(&out, &err);
    }
}

fn sha256_of(p: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `--init` keeps PID 1 in rbuild's code; its `/proc/1/exe` must not be the host's binary (runc
/// CVE-2019-5736): it is a sealed in-memory copy, which cannot be written either.
fn init_exe_is_not_the_host_binary(f: &Fixture) {
    let exe = std::env::current_exe().unwrap();
    let before = sha256_of(&exe);
    let m = std::fs::metadata(&exe).unwrap();
    let script = "stat -L -c '%d:%i' /proc/1/exe; readlink /proc/1/exe; \
                  (echo x > /proc/1/exe) 2>&1; echo rc=$?; \
                  (echo x >> /proc/1/exe) 2>/dev/null; echo append-rc=$?; \
                  head -c 4 /proc/1/exe | tail -c 3";
    let (o, out, err) = run_spec(&with_init(sh_spec(script)), f.overlay(&[])).expect("spawn");
    assert_eq!(o.code(), 0, "{out} {err}");
    let lines: Vec<&str> = out.lines().collect();
    let (dev, ino) = lines[0].split_once(':').expect("stat output");
    assert!(
        !(dev == m.dev().to_string() && ino == m.ino().to_string()),
        "/proc/1/exe is the host binary {}: {out}",
        exe.display()
    );
    assert!(lines[1].starts_with("/memfd:"), "{out}");
    assert!(!out.contains("rc=0"), "/proc/1/exe writable: {out}");
    assert!(out.trim_end().ends_with("ELF"), "{out}");
    assert_eq!(sha256_of(&exe), before, "host binary modified");
}

/// The working directory is resolved inside the root: a magic link is refused, a symlink of the
/// image is followed inside the root.
fn workdir_inside_root(f: &Fixture) {
    let layer = f.fresh("wd-layer");
    let victim = Victim::new("workdir");
    std::os::unix::fs::symlink(&victim.0, layer.join("w")).unwrap();
    let mut spec = sh_spec("pwd -P; touch made");
    let mut p = spec.process().clone().unwrap();
    p.set_cwd("/w/sub".into());
    spec.set_process(Some(p.clone()));
    let (o, out, err) = run_spec(&spec, f.overlay(&[layer])).expect("spawn");
    assert_eq!(o.code(), 0, "{err}");
    assert_eq!(out.trim(), format!("{}/sub", victim.0.display()));
    assert!(!victim.0.join("sub").exists(), "created on the host");
    p.set_cwd("/proc/self/fd/3".into());
    spec.set_process(Some(p));
    let err = run_spec(&spec, f.overlay(&[]))
        .expect_err("a magic-link cwd must fail")
        .to_string();
    assert!(err.contains("working directory /proc/self/fd/3"), "{err}");
}

/// One test.
type TestFn = fn(&Fixture);

fn main() {
    rbuild_sandbox::init_if_requested();
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if !nix::unistd::geteuid().is_root() || !Path::new("/usr/bin/busybox").exists() {
        eprintln!("escape tests skipped: need root and /usr/bin/busybox");
        return;
    }
    let f = fixture();
    let tests: Vec<(&str, TestFn)> = vec![
        ("mount_target_link_chain", mount_target_link_chain),
        ("read_only_bind_is_recursive", read_only_bind_is_recursive),
        ("stub_cleanup_stays_in_upper", stub_cleanup_stays_in_upper),
        ("devices_default", devices_default),
        ("devices_v1", devices_v1),
        ("devices_v2", devices_v2),
        (
            "init_exe_is_not_the_host_binary",
            init_exe_is_not_the_host_binary,
        ),
        ("workdir_inside_root", workdir_inside_root),
    ];
    let mut failed = Vec::new();
    for (name, t) in tests {
        if filter.as_deref().is_some_and(|flt| !name.contains(flt)) {
            continue;
        }
        let start = std::time::Instant::now();
        match std::panic::catch_unwind(|| t(&f)) {
            Ok(()) => println!("test {name} ... ok ({:?})", start.elapsed()),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(name);
            }
        }
    }
    drop(f);
    if !failed.is_empty() {
        println!("failed: {failed:?}");
        std::process::exit(1);
    }
}

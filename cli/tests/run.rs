//! End-to-end tests of `rbuild run` and the container commands: isolation facts asserted from
//! inside the container, every flag, volumes, `ps`/`rm`/`diff`/`commit`, ptys and signals.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn run(env: &Env, args: &[&str]) -> Output {
    let mut a = vec!["run"];
    a.extend_from_slice(args);
    env.rbuild(&a)
}

fn run_ok(env: &Env, args: &[&str]) -> String {
    let out = run(env, args);
    assert_ok(&out);
    stdout(&out)
}

fn sh(env: &Env, flags: &[&str], script: &str) -> Output {
    let mut a: Vec<&str> = flags.to_vec();
    a.extend_from_slice(&["busybox:local", "sh", "-c", script]);
    run(env, &a)
}

#[test]
fn pid1_hostname_host_files_and_exit_codes() {
    let env = Env::new();
    let marker = env.work.path().join("host-only-marker");
    std::fs::write(&marker, "x").unwrap();
    let script = format!(
        "echo $$; hostname; cat /etc/hostname; test -e {} && echo VISIBLE; echo done",
        marker.display()
    );
    let out = run_ok(
        &env,
        &[
            "--rm",
            "--hostname",
            "box",
            "busybox:local",
            "sh",
            "-c",
            &script,
        ],
    );
    assert_eq!(out, "1\nbox\nbox\ndone\n");
    // Exit codes pass through; a signal is 128+N; a missing program is 127 with Docker's message.
    assert_eq!(sh(&env, &["--rm"], "exit 42").status.code(), Some(42));
    let out = sh(&env, &["--rm"], "sh -c 'kill -TERM $$'; echo $?");
    assert_eq!(stdout(&out), "143\n");
    let out = run(&env, &["--rm", "busybox:local", "no-such-program"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(stderr(&out).contains("executable file not found in $PATH"));
}

#[test]
fn proc_sys_read_only_mount_refused_no_host_fds() {
    let env = Env::new();
    let out = sh(
        &env,
        &["--rm"],
        "echo x > /proc/sys/kernel/domainname 2>/dev/null && echo WROTE; \
         mount -t tmpfs none /mnt 2>/dev/null && echo MOUNTED; \
         grep -q ' /proc/sys proc ro,' /proc/mounts && echo SYS-RO; \
         grep -q ' /sys sysfs ro,' /proc/mounts && echo SYSFS-RO; \
         grep CapEff /proc/self/status",
    );
    assert_ok(&out);
    let o = stdout(&out);
    assert!(!o.contains("WROTE") && !o.contains("MOUNTED"), "{o}");
    assert!(o.contains("SYS-RO") && o.contains("SYSFS-RO"), "{o}");
    // Docker's default capabilities: no CAP_SYS_ADMIN (bit 21).
    assert!(o.contains("CapEff:\t00000000a80425fb"), "{o}");
    // A descriptor the caller leaked into rbuild (fd 7, not close-on-exec) never reaches it.
    let f = std::fs::File::open("/etc/hostname").unwrap();
    let fd = f.as_raw_fd();
    let mut cmd = Command::new(bin());
    cmd.args([
        "run",
        "--rm",
        "busybox:local",
        "sh",
        "-c",
        "ls /proc/$$/fd; true",
    ])
    .env("RBUILD_ROOT", env.root.path());
    // SAFETY: dup2 between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if nix::libc::dup2(fd, 7) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_ok(&out);
    assert_eq!(stdout(&out), "0\n1\n2\n");
}

#[test]
fn memory_limit_oom_kill_is_reported() {
    let env = Env::new();
    let out = sh(
        &env,
        &["--rm", "--memory", "16m"],
        "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived",
    );
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    assert!(!stdout(&out).contains("survived"));
    assert!(stderr(&out).contains("OOM killer"), "{}", stderr(&out));
    assert!(stderr(&out).contains("--memory"));
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    let env = Env::new();
    let t = Instant::now();
    let bomb = "n=0; while [ $n -lt 200 ]; do sleep 2 & n=$((n+1)); done; echo all-forked";
    let out = sh(&env, &["--rm", "--pids-limit", "20"], bomb);
    assert!(!stdout(&out).contains("all-forked"));
    assert!(stderr(&out).contains("can't fork"), "{}", stderr(&out));
    assert!(t.elapsed() < Duration::from_secs(20));
    // The same loop without the limit forks every process.
    let out = sh(
        &env,
        &["--rm"],
        "n=0; while [ $n -lt 40 ]; do sleep 0.1 & n=$((n+1)); done; wait; echo all-forked",
    );
    assert_eq!(stdout(&out), "all-forked\n");
}

#[test]
fn network_none_has_only_lo_and_host_has_the_hosts() {
    let env = Env::new();
    let out = run_ok(
        &env,
        &[
            "--rm",
            "--network",
            "none",
            "busybox:local",
            "ls",
            "/sys/class/net",
        ],
    );
    assert_eq!(out, "lo\n");
    let out = run_ok(
        &env,
        &[
            "--rm",
            "--network",
            "none",
            "busybox:local",
            "sh",
            "-c",
            "grep -c : /proc/net/dev",
        ],
    );
    assert_eq!(out, "1\n");
    // veths and bridges come and go with other tests' containers: compare the rest.
    let transient = |n: &str| n.starts_with("veth") || n.starts_with("rbuild");
    let mut host: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !transient(n))
        .collect();
    host.sort();
    let out = run_ok(
        &env,
        &[
            "--rm",
            "--network",
            "host",
            "busybox:local",
            "ls",
            "/sys/class/net",
        ],
    );
    let seen: Vec<&str> = out.lines().filter(|n| !transient(n)).collect();
    assert_eq!(seen, host);
    // The default network: a veth of its own (cli/tests/network.rs has the rest).
    let out = run_ok(
        &env,
        &[
            "--rm",
            "--network",
            "bridge",
            "busybox:local",
            "ls",
            "/sys/class/net",
        ],
    );
    assert_eq!(out, "eth0\nlo\n");
    let out = run(
        &env,
        &["--rm", "--network", "no such", "busybox:local", "true"],
    );
    assert!(!out.status.success() && stderr(&out).contains("container:NAME"));
}

#[test]
fn env_workdir_user_entrypoint_flags() {
    let env = Env::new();
    let ctx = env.context(
        "img",
        "FROM busybox:local\nENV A=image B=image\nWORKDIR /srv\n\
         RUN echo app:x:1234:1234::/home/app:/bin/sh >> /etc/passwd && mkdir -p /home/app\n\
         ENTRYPOINT [\"echo\", \"ep\"]\nCMD [\"default\"]\n",
        &[],
    );
    env.build_ok("img:v1", &ctx, &[]);
    // Entrypoint + Cmd; CMD arguments replace Cmd; --entrypoint replaces both.
    assert_eq!(run_ok(&env, &["--rm", "img:v1"]), "ep default\n");
    assert_eq!(run_ok(&env, &["--rm", "img:v1", "x", "y"]), "ep x y\n");
    assert_eq!(
        run_ok(&env, &["--rm", "--entrypoint", "pwd", "img:v1"]),
        "/srv\n"
    );
    assert_eq!(
        run_ok(
            &env,
            &["--rm", "--entrypoint", "", "img:v1", "echo", "no-ep"]
        ),
        "no-ep\n"
    );
    // -e over --env-file over the image's Env; -e K passes the host's value.
    let ef = env.work.path().join("vars.env");
    std::fs::write(&ef, "# comment\nB=file\nC=file\n").unwrap();
    let out = Command::new(bin())
        .args([
            "run",
            "--rm",
            "--env-file",
            ef.to_str().unwrap(),
            "-e",
            "C=flag",
            "-e",
            "HOSTVAR",
        ])
        .args([
            "--entrypoint",
            "sh",
            "img:v1",
            "-c",
            "echo $A $B $C $HOSTVAR",
        ])
        .env("RBUILD_ROOT", env.root.path())
        .env("HOSTVAR", "fromhost")
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(stdout(&out), "image file flag fromhost\n");
    let bad = env.work.path().join("bad.env");
    std::fs::write(&bad, "OK=1\nnot valid=2\n").unwrap();
    let out = run(
        &env,
        &["--rm", "--env-file", bad.to_str().unwrap(), "img:v1"],
    );
    assert!(stderr(&out).contains("bad.env:2"), "{}", stderr(&out));
    // -w (created when missing), -u by name and by uid:gid, with HOME from /etc/passwd.
    let out = run_ok(
        &env,
        &[
            "--rm",
            "-w",
            "/new/dir",
            "-u",
            "app",
            "--entrypoint",
            "sh",
            "img:v1",
            "-c",
            "pwd; id -u; echo $HOME",
        ],
    );
    assert_eq!(out, "/new/dir\n1234\n/home/app\n");
    let out = run_ok(
        &env,
        &["--rm", "-u", "42:43", "--entrypoint", "id", "img:v1"],
    );
    assert!(out.starts_with("uid=42 gid=43"), "{out}");
}

#[test]
fn read_only_root_tmpfs_and_bind_mounts() {
    let env = Env::new();
    let host = env.work.path().join("shared");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("in.txt"), "from host\n").unwrap();
    let rw = format!("{}:/data", host.display());
    let ro = format!("{}:/ro:ro", host.display());
    let out = sh(
        &env,
        &[
            "--rm",
            "--read-only",
            "--tmpfs",
            "/scratch:size=1m",
            "-v",
            &rw,
            "-v",
            &ro,
        ],
        "touch /x 2>/dev/null && echo ROOT-WRITABLE; \
         echo t > /scratch/t && grep -q ' /scratch tmpfs' /proc/mounts && echo TMPFS; \
         cat /data/in.txt; echo out > /data/out.txt; \
         touch /ro/y 2>/dev/null && echo RO-WRITABLE; echo end",
    );
    assert_ok(&out);
    assert_eq!(stdout(&out), "TMPFS\nfrom host\nend\n");
    assert_eq!(
        std::fs::read_to_string(host.join("out.txt")).unwrap(),
        "out\n"
    );
    let out = run(
        &env,
        &["--rm", "-v", "/does/not/exist:/x", "busybox:local", "true"],
    );
    assert!(!out.status.success() && stderr(&out).contains("does not exist"));
}

#[test]
fn named_volumes_persist_and_are_seeded_from_the_image() {
    let env = Env::new();
    assert_ok(&sh(
        &env,
        &["--rm", "-v", "data:/data"],
        "echo one > /data/f",
    ));
    let out = sh(
        &env,
        &["--rm", "-v", "data:/data"],
        "cat /data/f; echo two >> /data/f",
    );
    assert_eq!(stdout(&out), "one\n");
    let out = sh(
        &env,
        &["--rm", "-v", "data:/data:ro"],
        "cat /data/f; touch /data/g 2>/dev/null || echo RO",
    );
    assert_eq!(stdout(&out), "one\ntwo\nRO\n");
    // A new volume mounted over an image directory starts with the image's content.
    let out = sh(
        &env,
        &["--rm", "-v", "etc:/etc"],
        "grep -c root /etc/passwd",
    );
    assert_eq!(stdout(&out), "1\n");
    assert!(std::fs::read_to_string(env.root.path().join("volumes/etc/_data/passwd")).is_ok());
    let ls = stdout(&env.rbuild(&["volume", "ls", "-q"]));
    assert_eq!(ls, "data\netc\n");
    // In use by a kept container: rm refuses; prune keeps it.
    assert!(sh(&env, &["--name", "user", "-v", "data:/data"], "true")
        .status
        .success());
    let out = env.rbuild(&["volume", "rm", "data"]);
    assert!(!out.status.success() && stderr(&out).contains("in use by container(s) user"));
    let out = env.rbuild(&["volume", "prune"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("etc") && !stdout(&out).contains("data\n"));
    assert_ok(&env.rbuild(&["rm", "user"]));
    assert_ok(&env.rbuild(&["volume", "rm", "data"]));
    assert_eq!(stdout(&env.rbuild(&["volume", "ls", "-q"])), "");
}

#[test]
fn kept_containers_ps_diff_commit_rm() {
    let env = Env::new();
    // --rm leaves nothing; without it the container is listed with its exit code.
    sh(&env, &["--rm", "--name", "gone"], "true");
    let out = sh(
        &env,
        &["--name", "web"],
        "echo hi > /new; rm /etc/group; echo x >> /etc/passwd; mkdir /d; exit 3",
    );
    assert_eq!(out.status.code(), Some(3));
    let ps = stdout(&env.rbuild(&["ps", "-a"]));
    assert!(
        ps.contains("Exited (3)") && ps.contains(" web\n") && !ps.contains("gone"),
        "{ps}"
    );
    assert_eq!(
        stdout(&env.rbuild(&["ps"])).lines().count(),
        1,
        "only the header"
    );
    let out = sh(&env, &["--name", "web"], "true");
    assert!(stderr(&out).contains("already in use"));
    let diff = stdout(&env.rbuild(&["diff", "web"]));
    assert_eq!(diff, "A /d\nC /etc\nD /etc/group\nC /etc/passwd\nA /new\n");
    // commit: image layers + the container's layer (whiteouts included).
    let out = env.rbuild(&["commit", "web", "web:committed"]);
    assert_ok(&out);
    let out = run_ok(
        &env,
        &[
            "--rm",
            "web:committed",
            "sh",
            "-c",
            "cat /new; test -e /etc/group || echo no-group; tail -1 /etc/passwd",
        ],
    );
    assert_eq!(out, "hi\nno-group\nx\n");
    assert_ok(&env.rbuild(&["rm", "web"]));
    assert!(!env.root.path().join("containers/web").exists());
    let out = env.rbuild(&["rm", "web"]);
    assert!(!out.status.success() && stderr(&out).contains("no such container"));
}

#[test]
fn cpus_sets_the_cfs_quota() {
    let env = Env::new();
    let mut child = Command::new(bin())
        .args([
            "run",
            "--rm",
            "--cpus",
            "0.25",
            "busybox:local",
            "sleep",
            "3",
        ])
        .env("RBUILD_ROOT", env.root.path())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut found = false;
    while Instant::now() < deadline && !found {
        // Find the container's process (a child of the helper) and read its cpu cgroup.
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if cmdline != b"sleep\x003\x00" {
                continue;
            }
            let cg = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
            for line in cg.lines() {
                let mut p = line.splitn(3, ':');
                let (_, ctrl, path) = (p.next(), p.next().unwrap_or(""), p.next().unwrap_or(""));
                let base = if ctrl.split(',').any(|c| c == "cpu") {
                    format!("/sys/fs/cgroup/{ctrl}{path}/cpu.cfs_quota_us")
                } else if ctrl.is_empty() {
                    format!("/sys/fs/cgroup/unified{path}/cpu.max")
                } else {
                    continue;
                };
                if let Ok(q) = std::fs::read_to_string(&base) {
                    if q.trim() == "25000" || q.starts_with("25000 100000") {
                        found = true;
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = child.wait().unwrap();
    assert!(st.success());
    assert!(
        found,
        "no cgroup with a 25000/100000 cpu quota held the container"
    );
}

#[test]
fn stdin_only_with_i() {
    let env = Env::new();
    let run_with_input = |flags: &[&str]| {
        let mut c = Command::new(bin())
            .arg("run")
            .args(flags)
            .args(["busybox:local", "cat"])
            .env("RBUILD_ROOT", env.root.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(b"hello\n").unwrap();
        String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap()
    };
    assert_eq!(run_with_input(&["--rm", "-i"]), "hello\n");
    assert_eq!(run_with_input(&["--rm"]), "");
}

#[test]
fn signals_sent_to_rbuild_reach_the_container() {
    let env = Env::new();
    let mut c = Command::new(bin())
        .args(["run", "--rm", "busybox:local", "sh", "-c"])
        .arg("trap 'echo got-TERM; exit 3' TERM; echo ready; while :; do sleep 0.1; done")
        .env("RBUILD_ROOT", env.root.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = c.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    out.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "got-TERM\n");
    assert_eq!(c.wait().unwrap().code(), Some(3));
}

/// Runs rbuild in a new session whose controlling terminal is a fresh pty (like a user's
/// terminal); returns the child and the pty master.
fn spawn_in_terminal(env: &Env, args: &[&str]) -> (std::process::Child, std::fs::File) {
    let pty = nix::pty::openpty(None, None).unwrap();
    set_size(&pty.master, 30, 100);
    let slave: OwnedFd = pty.slave;
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env("RBUILD_ROOT", env.root.path())
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave);
    // SAFETY: setsid and ioctl between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::libc::setsid();
            if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop(cmd);
    (child, std::fs::File::from(pty.master))
}

fn set_size(master: &OwnedFd, rows: u16, cols: u16) {
    let ws = nix::libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: valid fd and winsize.
    unsafe { nix::libc::ioctl(master.as_raw_fd(), nix::libc::TIOCSWINSZ, &ws) };
}

/// Reads from the pty master until `want` appears (or 10 s pass); returns everything read.
fn read_until(master: &mut std::fs::File, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = String::new();
    let fd = master.as_raw_fd();
    while Instant::now() < deadline && !got.contains(want) {
        let mut pfd = nix::libc::pollfd {
            fd,
            events: nix::libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { nix::libc::poll(&mut pfd, 1, 200) } <= 0 {
            continue;
        }
        let mut buf = [0u8; 4096];
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    got
}

#[test]
fn tty_resize_and_ctrl_c() {
    let env = Env::new();
    // -t alone: the container's stdio is a terminal of the host terminal's size (the host
    // terminal is not in raw mode then, so it adds its own \r to the pty's \r\n, as with docker).
    let (mut c, mut m) = spawn_in_terminal(
        &env,
        &[
            "run",
            "--rm",
            "-t",
            "busybox:local",
            "sh",
            "-c",
            "test -t 0 && test -t 1 && echo IS-TTY; stty size",
        ],
    );
    let out = read_until(&mut m, "30 100");
    assert!(
        out.contains("IS-TTY\r") && out.contains("30 100"),
        "{out:?}"
    );
    assert!(c.wait().unwrap().success());

    // -it: raw mode on the host terminal, resizes follow, Ctrl-C reaches the process.
    let (mut c, mut m) = spawn_in_terminal(
        &env,
        &[
            "run", "--rm", "-it", "busybox:local", "sh", "-c",
            "trap 'stty size' WINCH; trap 'echo got-INT; exit 7' INT; echo ready; while :; do sleep 0.1; done",
        ],
    );
    assert!(read_until(&mut m, "ready").contains("ready"));
    let master_fd: &OwnedFd = &m.try_clone().unwrap().into();
    set_size(master_fd, 40, 120);
    let out = read_until(&mut m, "40 120");
    assert!(out.contains("40 120"), "{out:?}");
    m.write_all(&[3]).unwrap();
    let out = read_until(&mut m, "got-INT");
    assert!(out.contains("got-INT"), "{out:?}");
    assert_eq!(c.wait().unwrap().code(), Some(7));
}

#[test]
fn init_reaps_zombies_forwards_signals_and_passes_exit_codes() {
    let env = Env::new();
    // The command is PID 1's child; PID 1 is rbuild's init.
    let out = run_ok(
        &env,
        &[
            "--rm",
            "--init",
            "busybox:local",
            "sh",
            "-c",
            "echo $$; cat /proc/1/comm",
        ],
    );
    assert_eq!(out, "2\nrbuild-init\n");
    assert_eq!(
        sh(&env, &["--rm", "--init"], "exit 42").status.code(),
        Some(42)
    );
    // An orphan whose parent exited goes to PID 1: `exec sleep` never reaps it, the init does.
    let zombies = "(sleep 0.05 &); \
        (sleep 0.4; grep -l '^State:[[:space:]]*Z' /proc/[0-9]*/status | wc -l) & exec sleep 0.8";
    let out = sh(&env, &["--rm"], zombies);
    assert!(
        stdout(&out).trim().parse::<u32>().unwrap_or(0) >= 1,
        "control: without --init the orphan stays a zombie: {}",
        stdout(&out)
    );
    let out = sh(&env, &["--rm", "--init"], zombies);
    assert_eq!(stdout(&out).trim(), "0", "{}", stderr(&out));

    // SIGTERM to rbuild -> helper -> init -> the command (no handler: 128+15, as docker --init).
    let mut c = Command::new(bin())
        .args(["run", "--rm", "--init", "busybox:local", "sh", "-c"])
        .arg("echo ready; exec sleep 10")
        .env("RBUILD_ROOT", env.root.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = c.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    out.read_exact(&mut buf).unwrap();
    let start = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(c.wait().unwrap().code(), Some(143));
    assert!(start.elapsed() < Duration::from_secs(5));

    // With -it the command is the terminal's foreground process group: Ctrl-C reaches it.
    let (mut c, mut m) = spawn_in_terminal(
        &env,
        &[
            "run",
            "--rm",
            "-it",
            "--init",
            "busybox:local",
            "sh",
            "-c",
            "trap 'echo got-INT; exit 7' INT; echo ready; while :; do sleep 0.1; done",
        ],
    );
    assert!(read_until(&mut m, "ready").contains("ready"));
    m.write_all(&[3]).unwrap();
    let out = read_until(&mut m, "got-INT");
    assert!(out.contains("got-INT"), "{out:?}");
    assert_eq!(c.wait().unwrap().code(), Some(7));
}

/// Issue 11, the sandbox side, end to end through `rbuild run`: a container that plants symlinks
/// for the stub cleanup, opens device nodes, writes through a read-only bind's submount or aims at
/// `/proc/1/exe` reaches nothing on the host.
#[test]
fn hostile_container_reaches_nothing_on_the_host() {
    let env = Env::new();
    // Stub cleanup: the step swaps the parent of a tmpfs mount point for a link to a host dir
    // whose `c` is an empty directory; the cleanup after the container must not remove it.
    let victim = env.work.path().join("victim");
    std::fs::create_dir_all(victim.join("c")).unwrap();
    let script = format!(
        "mv /a/b /a/old && ln -s {} /a/b && echo swapped",
        victim.display()
    );
    let out = sh(&env, &["--name", "swap", "--tmpfs", "/a/b/c"], &script);
    assert_ok(&out);
    assert_eq!(stdout(&out), "swapped\n");
    assert!(
        victim.join("c").is_dir(),
        "host directory removed by the stub cleanup"
    );
    assert_ok(&env.rbuild(&["rm", "swap"]));

    // A read-only volume is read-only in its submounts too.
    let src = env.work.path().join("ro-src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(src.join("sub"))
        .status()
        .unwrap();
    assert!(status.success());
    let ro = format!("{}:/ro:ro", src.display());
    let out = sh(
        &env,
        &["--rm", "-v", &ro],
        "touch /ro/sub/x 2>&1; grep ' /ro/sub ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1",
    );
    let _ = Command::new("umount")
        .arg("-l")
        .arg(src.join("sub"))
        .status();
    assert!(
        stdout(&out).contains("Read-only file system"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).ends_with("ro\n"), "{}", stdout(&out));

    // Devices outside Docker's default set cannot be opened, even when mknod may create them.
    let out = sh(
        &env,
        &["--rm"],
        "mknod /fuse c 10 229 && echo made; (exec 3<>/fuse) 2>&1; echo x > /dev/null && echo null-ok",
    );
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.starts_with("made\n"), "{text}");
    assert!(
        text.contains("Operation not permitted") && text.ends_with("null-ok\n"),
        "{text}"
    );

    // --init: PID 1 is a sealed copy of rbuild, not the host's binary.
    let before = std::fs::read(bin()).unwrap();
    let out = sh(
        &env,
        &["--rm", "--init"],
        "readlink /proc/1/exe; (echo x > /proc/1/exe) 2>/dev/null || echo refused",
    );
    assert_ok(&out);
    assert_eq!(stdout(&out), "/memfd:rbuild-init (deleted)\nrefused\n");
    assert!(
        std::fs::read(bin()).unwrap() == before,
        "host rbuild binary modified"
    );
}

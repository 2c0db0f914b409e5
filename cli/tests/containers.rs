//! End-to-end tests of containers that outlive the command: `run -d` under a monitor, logs,
//! exec, cp, stop/kill/restart policies, healthchecks, concurrent starts, `rm -f` safety and
//! volume seeding through a hostile symlink.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn ok(env: &Env, args: &[&str]) -> String {
    let out = env.rbuild(args);
    assert_ok(&out);
    stdout(&out)
}

fn inspect(env: &Env, name: &str, fmt: &str) -> String {
    ok(env, &["inspect", "-f", fmt, name]).trim().to_string()
}

/// Removes (`rm -f`) every container of the store when dropped, so a failing test leaves no
/// monitor or container running behind it.
struct Cleanup<'a>(&'a Env);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let ids = stdout(&self.0.rbuild(&["ps", "-aq", "--no-trunc"]));
        for id in ids.split_whitespace() {
            let _ = self.0.rbuild(&["rm", "-f", id]);
        }
    }
}

/// Polls `cond` every 50 ms for up to `secs` seconds.
fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let st = s.rsplit(')').next().unwrap_or("").split_whitespace().next();
            !matches!(st, Some("Z") | None)
        })
        .unwrap_or(false)
}

fn record(env: &Env, name: &str) -> serde_json::Value {
    let p = env
        .root
        .path()
        .join("containers")
        .join(name)
        .join("container.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

#[test]
fn detached_httpd_outlives_the_command_and_dies_with_its_monitor() {
    let env = Env::new();
    let _cleanup = Cleanup(&env);
    let port = 18131u16;
    let id = ok(
        &env,
        &[
            "run",
            "-d",
            // The host's network: this test is about the lifecycle (the default bridge network
            // is tested in network.rs and compose.rs).
            "--network",
            "host",
            "--name",
            "web",
            "--label",
            "tier=front",
            "busybox:local",
            "httpd",
            "-f",
            "-p",
            &port.to_string(),
            "-h",
            "/etc",
        ],
    );
    let id = id.trim();
    assert_eq!(id.len(), 64, "run -d prints the full id: {id}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    // The rbuild process has exited; the server keeps serving (its hostname is the short id).
    let body = eventually(5, || http_get(port, "/hostname").is_some())
        .then(|| http_get(port, "/hostname").unwrap())
        .unwrap();
    assert!(body.contains(&id[..12]), "{body}");

    let ps = ok(&env, &["ps"]);
    assert!(ps.starts_with("CONTAINER ID   IMAGE"), "{ps}");
    assert!(
        ps.contains(&id[..12]) && ps.contains("Up ") && ps.contains("web"),
        "{ps}"
    );
    assert_eq!(ok(&env, &["ps", "-q", "--no-trunc"]).trim(), id);
    assert_eq!(
        ok(
            &env,
            &[
                "ps",
                "--filter",
                "label=tier=front",
                "--format",
                "{{.Names}}"
            ]
        )
        .trim(),
        "web"
    );
    assert_eq!(
        ok(&env, &["ps", "--filter", "label=tier=back", "-q"]).trim(),
        ""
    );
    assert_eq!(
        ok(
            &env,
            &[
                "ps",
                "--filter",
                "ancestor=busybox:local",
                "--format",
                "{{.Names}} {{.State}}"
            ]
        )
        .trim(),
        "web running"
    );
    assert_eq!(
        inspect(&env, "web", "{{.State.Status}} {{.State.Running}}"),
        "running true"
    );
    let doc: serde_json::Value = serde_json::from_str(&ok(&env, &["inspect", "web"])).unwrap();
    assert_eq!(doc[0]["Id"], id);
    assert_eq!(doc[0]["Name"], "/web");
    assert_eq!(doc[0]["Config"]["Labels"]["tier"], "front");
    assert_eq!(doc[0]["HostConfig"]["RestartPolicy"]["Name"], "no");
    let pid = doc[0]["State"]["Pid"].as_i64().unwrap() as i32;
    assert!(alive(pid));
    let top = ok(&env, &["top", "web"]);
    assert!(
        top.contains("httpd") && top.contains(&pid.to_string()),
        "{top}"
    );

    // SIGKILL the monitor: the container dies with it and reads as exited.
    let monitor = record(&env, "web")["monitor_pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(eventually(5, || !alive(pid)), "PID 1 outlived its monitor");
    assert!(http_get(port, "/hostname").is_none());
    assert_eq!(ok(&env, &["ps", "-q"]).trim(), "");
    let ps = ok(&env, &["ps", "-a"]);
    assert!(ps.contains("Exited"), "{ps}");
    assert_eq!(inspect(&env, "web", "{{.State.Running}}"), "false");
    ok(&env, &["rm", "web"]);
}

#[test]
fn logs_follow_print_then_exit_wait_and_tail() {
    let env = Env::new();
    let _cleanup = Cleanup(&env);
    ok(
        &env,
        &[
            "run",
            "-d",
            "--name",
            "talk",
            "busybox:local",
            "sh",
            "-c",
            "for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.2; done; exit 4",
        ],
    );
    let out = env.rbuild(&["logs", "-f", "talk"]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "out1\nout2\nout3\n");
    assert_eq!(stderr(&out), "err1\nerr2\nerr3\n");
    assert_eq!(ok(&env, &["wait", "talk"]).trim(), "4");
    // --tail counts the lines of both streams.
    let tail = env.rbuild(&["logs", "--tail", "2", "talk"]);
    assert_eq!(
        (stdout(&tail).as_str(), stderr(&tail).as_str()),
        ("out3\n", "err3\n")
    );
    let ts = stdout(&env.rbuild(&["logs", "-t", "talk"]));
    let first = ts.lines().next().unwrap();
    let (t, rest) = first.split_once(' ').unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(t).is_ok() && rest == "out1",
        "{first}"
    );
    assert_eq!(
        stdout(&env.rbuild(&["logs", "--since", "1h", "talk"])),
        "out1\nout2\nout3\n"
    );
    assert_eq!(stdout(&env.rbuild(&["logs", "--until", "1h", "talk"])), "");
    let ps = ok(&env, &["ps", "-a", "--format", "{{.Status}}"]);
    assert!(ps.starts_with("Exited (4) "), "{ps}");
    // The json-file format on disk.
    let raw =
        std::fs::read_to_string(env.root.path().join("containers/talk/container.log")).unwrap();
    let line: serde_json::Value = serde_json::from_str(raw.lines().next().unwrap()).unwrap();
    assert!(line["log"].is_string() && line["stream"].is_string() && line["time"].is_string());

    // Log rotation by size.
    ok(
        &env,
        &[
            "run",
            "-d",
            "--name",
            "chatty",
            "--log-opt",
            "max-size=1k",
            "--log-opt",
            "max-file=2",
            "busybox:local",
            "sh",
            "-c",
            "i=0; while [ $i -lt 200 ]; do echo line$i; i=$((i+1)); done",
        ],
    );
    ok(&env, &["wait", "chatty"]);
    let dir = env.root.path().join("containers/chatty");
    assert!(dir.join("container.log.1").exists() && !dir.join("container.log.2").exists());
    assert!(std::fs::metadata(dir.join("container.log")).unwrap().len() <= 1024);
    assert!(stdout(&env.rbuild(&["logs", "chatty"])).ends_with("line199\n"));
}

#[test]
fn exec_shares_files_hostname_and_pid_namespace() {
    let env = Env::new();
    let _cleanup = Cleanup(&env);
    ok(
        &env,
        &[
            "run",
            "-d",
            "--name",
            "box",
            "--hostname",
            "boxhost",
            "busybox:local",
            "sleep",
            "300",
        ],
    );
    ok(&env, &["exec", "box", "sh", "-c", "echo shared > /tmp/f"]);
    assert_eq!(ok(&env, &["exec", "box", "cat", "/tmp/f"]), "shared\n");
    assert_eq!(ok(&env, &["exec", "box", "hostname"]), "boxhost\n");
    // Same pid namespace: PID 1 is the container's sleep; the exec'd shell is not PID 1.
    let o = ok(
        &env,
        &[
            "exec",
            "box",
            "sh",
            "-c",
            "cat /proc/1/cmdline | tr '\\0' ' '; echo; echo $$",
        ],
    );
    let mut l = o.lines();
    assert_eq!(l.next().unwrap().trim(), "sleep 300");
    assert_ne!(l.next().unwrap(), "1");
    // Exit codes, user, working directory, environment, capabilities.
    assert_eq!(
        env.rbuild(&["exec", "box", "sh", "-c", "exit 7"])
            .status
            .code(),
        Some(7)
    );
    assert_eq!(
        ok(&env, &["exec", "-u", "65534", "box", "id", "-u"]),
        "65534\n"
    );
    assert_eq!(ok(&env, &["exec", "-w", "/tmp", "box", "pwd"]), "/tmp\n");
    assert_eq!(
        ok(
            &env,
            &[
                "exec",
                "-e",
                "GREETING=hi",
                "box",
                "sh",
                "-c",
                "echo $GREETING"
            ]
        ),
        "hi\n"
    );
    let caps = ok(
        &env,
        &["exec", "box", "grep", "CapEff", "/proc/self/status"],
    );
    assert!(caps.contains("00000000a80425fb"), "{caps}");
    let out = env.rbuild(&["exec", "box", "no-such-program"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    // -i passes stdin.
    let mut child = Command::new(bin())
        .args(["exec", "-i", "box", "cat"])
        .env("RBUILD_ROOT", env.root.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"piped\n").unwrap();
    assert_eq!(
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap(),
        "piped\n"
    );
    // -d returns at once; the process runs on.
    ok(
        &env,
        &[
            "exec",
            "-d",
            "box",
            "sh",
            "-c",
            "sleep 0.3; echo late > /tmp/late",
        ],
    );
    assert!(eventually(5, || env
        .rbuild(&["exec", "box", "cat", "/tmp/late"])
        .status
        .success()));
    ok(&env, &["stop", "-t", "0", "box"]);
    let out = env.rbuild(&["exec", "box", "true"]);
    assert!(!out.status.success() && stderr(&out).contains("is not running"));
    ok(&env, &["rm", "box"]);
}

#[test]
fn cp_in_and_out_stays_inside_the_container() {
    let env = Env::new();
    let _cleanup = Cleanup(&env);
    ok(
        &env,
        &[
            "run",
            "-d",
            "--name",
            "files",
            "busybox:local",
            "sh",
            "-c",
            "mkdir -p /data/sub && echo inside > /data/sub/f && ln -s / /data/hostile && sleep 300",
        ],
    );
    assert!(eventually(5, || env
        .rbuild(&["exec", "files", "test", "-L", "/data/hostile"])
        .status
        .success()));
    let w = env.work.path();
    // Out: a file, a directory, a tar stream, and through the hostile link (the container's
    // own /etc/hostname, never the host's).
    ok(
        &env,
        &["cp", "files:/data/sub/f", w.join("f").to_str().unwrap()],
    );
    assert_eq!(std::fs::read_to_string(w.join("f")).unwrap(), "inside\n");
    ok(&env, &["cp", "files:/data", w.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(w.join("data/sub/f")).unwrap(),
        "inside\n"
    );
    assert_eq!(
        std::fs::read_link(w.join("data/hostile")).unwrap().to_str(),
        Some("/")
    );
    ok(
        &env,
        &[
            "cp",
            "files:/data/hostile/etc/hostname",
            w.join("hn").to_str().unwrap(),
        ],
    );
    let hostname = inspect(&env, "files", "{{.Config.Hostname}}");
    assert_eq!(
        std::fs::read_to_string(w.join("hn")).unwrap().trim(),
        hostname
    );
    let tar = env.rbuild(&["cp", "files:/data/sub", "-"]);
    assert_ok(&tar);
    let names: Vec<String> = tar::Archive::new(&tar.stdout[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, vec!["sub", "sub/f"]);

    // In: a file through the hostile link lands in the container's /tmp, not the host's.
    let marker = format!("rbuild-containers-cp-{}", std::process::id());
    std::fs::write(w.join(&marker), "from host\n").unwrap();
    ok(
        &env,
        &[
            "cp",
            w.join(&marker).to_str().unwrap(),
            "files:/data/hostile/tmp/",
        ],
    );
    assert_eq!(
        ok(&env, &["exec", "files", "cat", &format!("/tmp/{marker}")]),
        "from host\n"
    );
    assert!(!std::path::Path::new("/tmp").join(&marker).exists());
    // A tar stream in; a new name.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o640);
    b.append_data(&mut h, "streamed", &b"abc"[..]).unwrap();
    let data = b.into_inner().unwrap();
    let mut child = Command::new(bin())
        .args(["cp", "-", "files:/tmp"])
        .env("RBUILD_ROOT", env.root.path())
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    assert_ok(&child.wait_with_output().unwrap());
    assert_eq!(
        ok(
            &env,
            &["exec", "files", "stat", "-c", "%a %s", "/tmp/streamed"]
        ),
        "640 3\n"
    );
    ok(
        &env,
        &["cp", w.join(&marker).to_str().unwrap(), "files:/renamed"],
    );
    assert_eq!(
        ok(&env, &["exec", "files", "cat", "/renamed"]),
        "from host\n"
    );

    // A stopped container: both directions still work, on its writable layer.
    ok(&env, &["stop", "-t", "0", "files"]);
    ok(
        &env,
        &["cp", "files:/renamed", w.join("r2").to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_to_string(w.join("r2")).unwrap(),
        "from host\n"
    );
    ok(
        &env,
        &[
            "cp",
            w.join(&marker).to_str().unwrap(),
            "files:/data/hostile/stopped",
        ],
    );
    assert!(env
        .root
        .path()
        .join("containers/files/upper/stopped")
        .is_file());
    assert!(!std::path::Path::new("/stopped").exists());
    let out = env.rbuild(&["cp", "files:/nope", w.to_str().unwrap()]);
    assert!(
        !out.status.success() && stderr(&out).contains("not found"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn stop_honours_stopsignal_and_timeout_kill_and_restart() {
    let env = Env::new();
    let _cleanup = Cleanup(&env);
    let ctx = env.context(
        "stopsig",
        "FROM busybox:local\nSTOPSIGNAL SIGUSR1\nCMD [\"sh\", \"-c\", \"trap 'echo got-usr1; exit 0' USR1; while true; do sleep 0.1; done\"]\n",
        &[],
    );
    env.build_ok("stopsig:1", &ctx, &[]);
    ok(&env, &["run", "-d", "--name", "graceful", "stopsig:1"]);
    assert_eq!(
        inspect(&env, "graceful", "{{.Config.StopSignal}}"),
        "SIGUSR1"
    );
    let t = Instant::now();
    ok(&env, &["stop", "-t", "20", "graceful"]);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(
        inspect(&env, "graceful", "{{.State.Status}} {{.State.ExitCode}}"),
        "exited 0"
    );
    assert!(stdout(&env.rbuild(&["logs", "graceful"])).contains("got-usr1"));

    // A program that ignores the signal is killed after the timeout.
    ok(
        &env,
        &[
            "run",
            "-d",
            "--name",
            "stubborn",
            "--stop-timeout",
            "1",
            "busybox:local",
            "sh",
            "-c",
            "trap '' TERM; while true; do sleep 0.1; done",
        ],
    );
    let t = Instant::now();
    ok(&env, &["stop", "stubborn"]);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(6),
        "{took:?}"
    );
    assert_eq!(inspect(&env, "stubborn", "{{.State.ExitCode}}"), "137");

    // restart: a new PID 1 in the same container (its writable layer kept).
    ok(&env, &["start", "stubborn"]);
    ok(&env, &["exec", "stubborn", "touch", "/kept"]);
    let pid1 = inspect(&env, "stubborn", "{{.State.Pid}}");
    ok(&env, &["restart", "-t", "0", "stubborn"]);
    let pid2 = inspect(&env, "stubborn", "{{.State.Pid}}");
    assert_ne!(pid1, pid2);
    assert!(env
        .rbuild(&["exec", "stubborn", "test", "-e", "/kept"])
        .status
        .success());
    // kill -s: the signal reaches PID 1.
    ok(&env, &["kill", "-s", "KILL", "stubborn"]);
    assert_eq!(ok(&env, &["wait", "stubborn"]).trim(), "137");
    let out = env.rbuild(&["kill", "stubborn"]);
    assert!(!out.status.success() && stderr(&out).contains("not running"));
    // rename, then the old name is gone.
    ok(&env, &["rename", "stubborn", "renamed"]);
    assert!(!env.rbuild(&["inspect", "stubborn"]).status.success());
    assert_eq!(inspect(&env, "renamed", "{{.Name}}"), "/renamed");
}

#[test]
fn restart_on_failure_restarts_exactly_three_times() {
    let env = Env::new();
    let _cleanup = Cleanup(&env);
    ok(
        &env,
        &[
            "run",
            "-d",
            "--name",
            "flaky",
            "--restart",
            "on-failure:3",
            "busybox:local",
            "sh",
            "-c",
            "echo attempt; exit 3",
        ],
    );
    assert_eq!(ok(&env, &["wait", "flaky"]).trim(), "3");
    assert_eq!(
        inspect(&env, "flaky", "{{.RestartCount}} {{.State.Status}}"),
        "3 exited"
    );
    assert_eq!(
        stdout(&env.rbuild(&["logs", "flaky"])),
        "attempt\n".repeat(4)
    );
    // A success is not restarted by on-failure; `always` is stopped by `stop`.
    ok(
        &env,
        &[
            "run",
            "-d",
            "--name",
            "fine",
            "--restart",
            "on-failure",
            "busybox:local",
            "true",
        ],
    );
    assert_eq!(ok(&env, &["wait", "fine"]).trim(), "0");
    assert_eq!(inspect(&env, "fine", "{{.RestartCount}}"), "0");
    ok(
        &env,
        &[
            "run",
            "-d",
            "--name",
            "forever",
            "--restart",
            "always",
            "busybox:local",
            "sh",
            "-c",
            "sleep 0.2",
        ],
    );
    assert!(eventually(10, || inspect(
        &env,
        "forever",
        "{{.RestartCount}}"
    ) != "0"));
    ok(&env, &["stop", "-t", "1", "forever"]);
    let n = inspect(&env, "forever", "{{.RestartCount}}");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        inspect(&env, "forever", "{{.RestartCount}} {{.State.Status}}"),
        format!("{n} exited")
    );
}

#[test]
fn failing_healthcheck_turns_ps_unhealthy() {
    let env = Env::new();
    let _cleanup = Cleanup(&env);
    ok(
        &env,
        &[
            "run",
            "-d",
            "--name",
            "sick",
            "--health-cmd",
            "echo probing; exit 1",
            "--health-interval",
            "100ms",
            "--health-retries",
            "2",
            "busybox:local",
            "sleep",
            "300",
        ],
    );
    ok(
        &env,
        &[
            "run",
            "-d",
            "--name",
            "well",
            "--health-cmd",
            "test -d /proc",
            "--health-interval",
            "100ms",
            "busybox:local",
            "sleep",
            "300",
        ],
    );
    assert!(eventually(10, || ok(
        &env,
        &["ps", "--filter", "name=sick"]
    )
    .contains("(unhealthy)")));
    assert!(eventually(10, || ok(
        &env,
        &["ps", "--filter", "name=well"]
    )
    .contains("(healthy)")));
    let h: serde_json::Value =
        serde_json::from_str(&inspect(&env, "sick", "{{json .State.Health}}")).unwrap();
    assert_eq!(h["Status"], "unhealthy");
    assert!(h["FailingStreak"].as_u64().unwrap() >= 2);
    assert_eq!(h["Log"][0]["ExitCode"], 1);
    assert_eq!(h["Log"][0]["Output"], "probing\n");
    // An image HEALTHCHECK is used; --no-healthcheck disables it.
    let ctx = env.context(
        "hc",
        "FROM busybox:local\nHEALTHCHECK --interval=1s CMD false\nCMD [\"sleep\", \"300\"]\n",
        &[],
    );
    env.build_ok("hc:1", &ctx, &[]);
    ok(&env, &["create", "--name", "img-hc", "hc:1"]);
    assert_eq!(
        inspect(&env, "img-hc", "{{json .Config.Healthcheck.Test}}"),
        r#"["CMD-SHELL","false"]"#
    );
    ok(
        &env,
        &["create", "--name", "no-hc", "--no-healthcheck", "hc:1"],
    );
    assert_eq!(
        inspect(&env, "no-hc", "{{json .Config.Healthcheck}}"),
        "null"
    );
    ok(&env, &["rm", "-f", "sick", "well"]);
}

#[test]
fn concurrent_starts_start_once() {
    let env = Env::new();
    let _cleanup = Cleanup(&env);
    let id = ok(
        &env,
        &[
            "create",
            "--name",
            "once",
            "-v",
            "oncevol:/data",
            "busybox:local",
            "sh",
            "-c",
            "echo started >> /data/log; sleep 300",
        ],
    );
    assert_eq!(id.trim().len(), 64);
    assert_eq!(inspect(&env, "once", "{{.State.Status}}"), "created");
    // --cidfile gets the full id; an existing file is refused.
    let cid = env.work.path().join("cid");
    let id2 = ok(
        &env,
        &[
            "create",
            "--cidfile",
            cid.to_str().unwrap(),
            "busybox:local",
            "true",
        ],
    );
    assert_eq!(std::fs::read_to_string(&cid).unwrap(), id2.trim());
    let out = env.rbuild(&[
        "create",
        "--cidfile",
        cid.to_str().unwrap(),
        "busybox:local",
        "true",
    ]);
    assert!(!out.status.success() && stderr(&out).contains("exists"));
    ok(&env, &["rm", id2.trim()]);
    let spawn = || {
        Command::new(bin())
            .args(["start", "once"])
            .env("RBUILD_ROOT", env.root.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b): (Output, Output) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_ok(&a);
    assert_ok(&b);
    assert!(eventually(5, || env
        .rbuild(&["exec", "once", "cat", "/data/log"])
        .status
        .success()));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ok(&env, &["exec", "once", "cat", "/data/log"]), "started\n");
    assert_eq!(inspect(&env, "once", "{{.RestartCount}}"), "0");
    ok(&env, &["rm", "-f", "once"]);
    assert_eq!(ok(&env, &["ps", "-aq"]).trim(), "");
}

#[test]
fn rm_force_never_kills_an_unrelated_process() {
    let env = Env::new();
    let _cleanup = Cleanup(&env);
    ok(
        &env,
        &[
            "run",
            "-d",
            "--name",
            "victim",
            "busybox:local",
            "sleep",
            "300",
        ],
    );
    let rec = record(&env, "victim");
    let pid = rec["pid"].as_i64().unwrap() as i32;
    // `rm` of a running container is refused; `rm -f` kills it and its monitor.
    let out = env.rbuild(&["rm", "victim"]);
    assert!(!out.status.success() && stderr(&out).contains("running"));
    ok(&env, &["rm", "-f", "victim"]);
    assert!(!alive(pid));
    assert!(!env.root.path().join("containers/victim").exists());

    // A record whose pids now belong to unrelated processes (pid reuse after a reboot): the
    // start times differ, so nothing is signalled and the container is just removed.
    ok(
        &env,
        &["create", "--name", "stale", "busybox:local", "true"],
    );
    let mut bystander = Command::new("sleep").arg("60").spawn().unwrap();
    let bpid = bystander.id() as i64;
    let p = env.root.path().join("containers/stale/container.json");
    let mut rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    rec["pid"] = bpid.into();
    rec["pid_start"] = 1.into();
    rec["monitor_pid"] = bpid.into();
    rec["monitor_start"] = 1.into();
    rec["started_at"] = "2026-01-01T00:00:00Z".into();
    std::fs::write(&p, serde_json::to_vec(&rec).unwrap()).unwrap();
    let ps = ok(
        &env,
        &[
            "ps",
            "-a",
            "--filter",
            "name=stale",
            "--format",
            "{{.State}}",
        ],
    );
    assert_eq!(ps.trim(), "exited", "a reused pid is not the container");
    ok(&env, &["rm", "-f", "stale"]);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "rm -f killed an unrelated process"
    );
    bystander.kill().unwrap();
    let _ = bystander.wait();
}

#[test]
fn volume_seeding_never_copies_a_host_path() {
    let env = Env::new();
    let _cleanup = Cleanup(&env);
    // The image's /data is a symlink to a host directory that holds a secret.
    let host = tempfile::Builder::new()
        .prefix("rbuild-containers-secret-")
        .tempdir()
        .unwrap();
    std::fs::write(host.path().join("secret"), "host secret\n").unwrap();
    let ctx = env.context(
        "hostile",
        &format!(
            "FROM busybox:local\nRUN mkdir -p /seed && echo image > /seed/f && ln -s {} /data && ln -s /seed /good\n",
            host.path().display()
        ),
        &[],
    );
    env.build_ok("hostile:1", &ctx, &[]);
    let out = env.rbuild(&["run", "--rm", "-v", "hvol:/data", "hostile:1", "true"]);
    assert_ok(&out);
    let data = env.root.path().join("volumes/hvol/_data");
    assert!(
        !data.join("secret").exists(),
        "the host's directory was copied into the volume"
    );
    // A link that stays inside the image seeds from the image's target, as Docker does.
    assert_ok(&env.rbuild(&["run", "--rm", "-v", "gvol:/good", "hostile:1", "true"]));
    assert_eq!(
        std::fs::read_to_string(env.root.path().join("volumes/gvol/_data/f")).unwrap(),
        "image\n"
    );
}

#[test]
fn pause_stats_volumes_and_system_commands() {
    let env = Env::new();
    let _cleanup = Cleanup(&env);
    ok(
        &env,
        &[
            "run",
            "-d",
            "--name",
            "spin",
            "busybox:local",
            "sh",
            "-c",
            "while :; do :; done",
        ],
    );
    // pause: every process frozen (state D/T in the freezer), ps says Paused, exec refused.
    ok(&env, &["pause", "spin"]);
    assert!(ok(&env, &["ps"]).contains("(Paused)"));
    assert_eq!(
        inspect(&env, "spin", "{{.State.Status}} {{.State.Paused}}"),
        "paused true"
    );
    let out = env.rbuild(&["exec", "spin", "true"]);
    assert!(!out.status.success() && stderr(&out).contains("paused"));
    let st = ok(&env, &["stats", "--no-stream", "spin"]);
    let cpu: f64 = st
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .trim_end_matches('%')
        .parse()
        .unwrap();
    assert!(cpu < 1.0, "a paused container uses no CPU: {st}");
    ok(&env, &["unpause", "spin"]);
    assert_eq!(inspect(&env, "spin", "{{.State.Status}}"), "running");
    let st = ok(&env, &["stats", "--no-stream"]);
    assert!(st.starts_with("CONTAINER ID   NAME"), "{st}");
    let row = st.lines().nth(1).unwrap();
    let cpu: f64 = row
        .split_whitespace()
        .nth(2)
        .unwrap()
        .trim_end_matches('%')
        .parse()
        .unwrap();
    assert!(
        cpu > 5.0,
        "a busy loop uses CPU (even on a loaded machine): {st}"
    );
    assert!(row.contains("MiB / ") && row.ends_with(" 1"), "{row}");
    // A paused container still stops.
    ok(&env, &["pause", "spin"]);
    ok(&env, &["stop", "-t", "1", "spin"]);
    assert_eq!(inspect(&env, "spin", "{{.State.Status}}"), "exited");

    // Volumes: create with a label, inspect, then used and seen by df.
    assert_eq!(
        ok(&env, &["volume", "create", "--label", "team=a", "data1"]).trim(),
        "data1"
    );
    let v: serde_json::Value =
        serde_json::from_str(&ok(&env, &["volume", "inspect", "data1"])).unwrap();
    assert_eq!(v[0]["Name"], "data1");
    assert_eq!(v[0]["Labels"]["team"], "a");
    assert_eq!(v[0]["Driver"], "local");
    assert!(v[0]["Mountpoint"]
        .as_str()
        .unwrap()
        .ends_with("volumes/data1/_data"));
    assert!(!env.rbuild(&["volume", "inspect", "nope"]).status.success());
    let generated = ok(&env, &["volume", "create"]);
    assert_eq!(generated.trim().len(), 64);
    ok(
        &env,
        &[
            "run",
            "--rm",
            "-v",
            "data1:/d",
            "busybox:local",
            "sh",
            "-c",
            "head -c 5000 /dev/zero > /d/f",
        ],
    );
    let df = ok(&env, &["system", "df"]);
    let lines: Vec<&str> = df.lines().collect();
    assert!(
        lines[0].starts_with("TYPE") && lines[0].contains("RECLAIMABLE"),
        "{df}"
    );
    assert!(lines[1].starts_with("Images          1         "), "{df}");
    assert!(lines[2].starts_with("Containers      1         0"), "{df}");
    assert!(
        lines[3].starts_with("Local Volumes   2         0         5kB"),
        "{df}"
    );

    // Events: the journal, filtered, in Docker's text and JSON forms.
    let ev = ok(
        &env,
        &[
            "system",
            "events",
            "--since",
            "1h",
            "--until",
            "0s",
            "--filter",
            "container=spin",
        ],
    );
    let actions: Vec<&str> = ev
        .lines()
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    assert_eq!(&actions[..2], &["create", "start"], "{ev}");
    assert!(
        actions.contains(&"pause") && actions.contains(&"unpause") && actions.contains(&"die"),
        "{ev}"
    );
    let js = ok(
        &env,
        &[
            "system",
            "events",
            "--until",
            "0s",
            "--filter",
            "event=create",
            "--format",
            "json",
        ],
    );
    for l in js.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["Action"], "create");
    }
    assert!(js.lines().count() >= 2, "{js}");
    ok(&env, &["tag", "busybox:local", "other:1"]);
    ok(&env, &["rmi", "other:1"]);
    let img = ok(
        &env,
        &[
            "system",
            "events",
            "--until",
            "0s",
            "--filter",
            "type=image",
        ],
    );
    let img: Vec<&str> = img
        .lines()
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    assert_eq!(img, vec!["tag", "untag"]);

    // prune: the stopped container and unused anonymous volumes; named volumes stay.
    ok(
        &env,
        &[
            "run",
            "-d",
            "--name",
            "keep",
            "-v",
            "/anon",
            "busybox:local",
            "sleep",
            "300",
        ],
    );
    ok(
        &env,
        &[
            "run",
            "--name",
            "gone",
            "-v",
            "/anon2",
            "busybox:local",
            "true",
        ],
    );
    let p = ok(&env, &["system", "prune", "-f", "--volumes"]);
    assert!(
        p.contains("Deleted Containers:") && p.contains("Total reclaimed space:"),
        "{p}"
    );
    let left = ok(&env, &["ps", "-a", "--format", "{{.Names}}"]);
    assert_eq!(left.trim(), "keep");
    let vols = ok(&env, &["volume", "ls", "-q"]);
    assert!(
        vols.contains("data1") && vols.lines().filter(|v| v.starts_with("anon-")).count() == 1,
        "{vols}"
    );
    ok(&env, &["rm", "-f", "keep"]);
}

#[test]
fn attach_passes_stdin_output_and_exit_code_and_detaches_with_ctrl_p_ctrl_q() {
    let env = Env::new();
    let _cleanup = Cleanup(&env);
    ok(
        &env,
        &[
            "run",
            "-d",
            "-i",
            "--name",
            "echoer",
            "busybox:local",
            "sh",
            "-c",
            "while read l; do echo \"got $l\"; echo \"err $l\" >&2; done; exit 5",
        ],
    );
    let attach = |name: &str, input: &'static [&'static [u8]], linger_ms: u64| {
        let mut child = Command::new(bin())
            .args(["attach", name])
            .env("RBUILD_ROOT", env.root.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            for chunk in input {
                std::thread::sleep(Duration::from_millis(300));
                stdin.write_all(chunk).unwrap();
            }
            std::thread::sleep(Duration::from_millis(linger_ms));
        });
        child.wait_with_output().unwrap()
    };
    let out = attach("echoer", &[b"one\ntwo\n"], 0);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(stdout(&out), "got one\ngot two\n");
    assert_eq!(stderr(&out), "err one\nerr two\n");
    // With a terminal: Ctrl-P Ctrl-Q detaches and the container keeps running.
    ok(
        &env,
        &["run", "-d", "-it", "--name", "shell", "busybox:local", "sh"],
    );
    let out = attach("shell", &[b"echo hi-$((40+2))\n", b"\x10\x11"], 500);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("hi-42"), "{}", stdout(&out));
    assert_eq!(inspect(&env, "shell", "{{.State.Status}}"), "running");
    let out = env.rbuild(&["attach", "echoer"]);
    assert!(!out.status.success() && stderr(&out).contains("stopped container"));
    ok(&env, &["rm", "-f", "shell", "echoer"]);
}

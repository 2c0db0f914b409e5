//! End-to-end tests of the Dockerfile language: builds of testdata/features/* with the real binary,
//! with their effects checked in the resulting image (files, owners, modes, contents, config).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Copies testdata/features/NAME into the test's work dir (so generated files stay out of the repo).
fn feature(env: &Env, name: &str) -> PathBuf {
    let src = repo().join("testdata/features").join(name);
    let dst = env.work.path().join(name);
    let st = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(&dst)
        .status()
        .unwrap();
    assert!(st.success());
    dst
}

fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert_ok(&out);
}

/// `rbuild run --rm IMAGE sh -c SCRIPT`, asserting success; returns stdout.
fn run_in(env: &Env, image: &str, script: &str) -> String {
    let out = env.rbuild(&["run", "--rm", image, "sh", "-c", script]);
    assert_ok(&out);
    stdout(&out)
}

/// The raw image config (`skopeo inspect --config --raw`: Docker's extension fields such as
/// Healthcheck and OnBuild included) of an OCI archive written by the build.
fn config_of(env: &Env, tag: &str, dir: &Path, extra: &[&str]) -> Option<serde_json::Value> {
    let oci = env
        .work
        .path()
        .join(format!("{}.oci.tar", tag.replace(':', "_")));
    let out = format!("type=oci,dest={}", oci.display());
    let mut args = vec!["--output", out.as_str()];
    args.extend_from_slice(extra);
    env.build_ok(tag, dir, &args);
    if !have("skopeo") {
        return None;
    }
    let o = Command::new("skopeo")
        .args([
            "inspect",
            "--config",
            "--raw",
            &format!("oci-archive:{}", oci.display()),
        ])
        .output()
        .unwrap();
    assert_ok(&o);
    Some(serde_json::from_slice(&o.stdout).unwrap())
}

#[test]
fn copy_and_add_semantics() {
    let env = Env::new();
    let ctx = feature(&env, "copy");
    sh(
        &ctx,
        "mkdir -p arch/top/inner && echo payload > arch/top/inner/p.txt && chmod 0750 arch/top/inner/p.txt
         tar -C arch -cf archive.tar top
         gzip -c archive.tar > archive.tar.gz
         bzip2 -c archive.tar > archive.tar.bz2
         xz -c archive.tar > archive.tar.xz
         echo 'not a tar' | gzip -c > fake.tar.gz",
    );
    env.build_ok("copy:t", &ctx, &[]);
    let got = run_in(
        &env,
        "copy:t",
        "cat /inline.txt /inline-dir/raw.txt
         cd / && stat -c '%n %u:%g %a' inline.txt own/names own/user-only own/numeric own/uid-only \
           mode/octal mode/symbolic as-file as-dir/one.txt work/rel/two.txt real/one.txt linked
         find contents glob par excl x -print | sort
         stat -c '%n %a' x/plain/top/inner/p.txt
         cat x/xz/top/inner/p.txt; ls -l linkdir | cut -c1",
    );
    let want = "hello world
hello ${WHO}
inline.txt 0:0 644
own/names 1000:2000 644
own/user-only 1000:1001 644
own/numeric 5:6 644
own/uid-only 7:7 644
mode/octal 0:0 750
mode/symbolic 0:0 764
as-file 0:0 644
as-dir/one.txt 0:0 644
work/rel/two.txt 0:0 644
real/one.txt 0:0 644
linked 0:0 644
contents
contents/d
contents/sub
contents/sub/s
excl
excl/keep.txt
glob
glob/one.txt
glob/two.txt
par
par/tree
par/tree/a
par/tree/a/b
par/tree/a/b/x.go
x
x/bz2
x/bz2/top
x/bz2/top/inner
x/bz2/top/inner/p.txt
x/copied
x/copied/archive.tar.gz
x/fake
x/fake/fake.tar.gz
x/gz
x/gz/top
x/gz/top/inner
x/gz/top/inner/p.txt
x/plain
x/plain/top
x/plain/top/inner
x/plain/top/inner/p.txt
x/xz
x/xz/top
x/xz/top/inner
x/xz/top/inner/p.txt
x/plain/top/inner/p.txt 750
payload
l
";
    assert_eq!(got, want);
}

#[test]
fn run_heredocs_shell_user_env() {
    let env = Env::new();
    let ctx = feature(&env, "run");
    let log = env.build_ok("run:t", &ctx, &["--build-arg", "GREETING=hey"]);
    assert!(
        log.contains("shell-changed") || log.contains("ran"),
        "{log}"
    );
    let got = run_in(
        &env,
        "run:t",
        "cat /h1 /h2 /h3 /h4 /h5 /env /shell /tmp/id /tmp/pwd; stat -c '%n %u' /home/app/sub",
    );
    let want = "hey 1
second line
tabs stripped
literal $GREETING
script=/dev/pipes/EOF
first
second
1|two words|1-two words|hey
shell-changed
uid=1000(app) gid=1001(appgrp)
/home/app/sub
/home/app/sub 1000
";
    assert_eq!(got, want);
}

#[test]
fn config_instructions_reach_the_image_config() {
    let env = Env::new();
    let ctx = feature(&env, "config");
    let Some(cfg) = config_of(&env, "config:t", &ctx, &["--build-arg", "VERSION=2.5"]) else {
        return;
    };
    let c = &cfg["config"];
    assert_eq!(c["WorkingDir"], "/opt/app/data", "{c}");
    assert_eq!(c["User"], "nobody");
    assert_eq!(c["StopSignal"], "SIGINT");
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(c["Cmd"], serde_json::json!(["echo $APP_VERSION"]));
    assert_eq!(c["Labels"]["org.example.version"], "2.5");
    assert_eq!(c["Labels"]["other"], "x");
    for p in ["80/tcp", "53/udp", "8000/tcp", "8001/tcp"] {
        assert!(c["ExposedPorts"].get(p).is_some(), "{p} in {c}");
    }
    for v in ["/var/lib/db", "/cache", "/tmp/x"] {
        assert!(c["Volumes"].get(v).is_some(), "{v} in {c}");
    }
    let env_list: Vec<&str> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env_list.contains(&"APP_VERSION=2.5"), "{env_list:?}");
    assert!(
        !env_list.iter().any(|e| e.starts_with("VERSION=")),
        "ARGs are not persisted: {env_list:?}"
    );
    let hc = &c["Healthcheck"];
    assert_eq!(
        hc["Test"],
        serde_json::json!(["CMD-SHELL", "wget -q -O- http://localhost/ || exit 1"])
    );
    assert_eq!(hc["Interval"], 30_000_000_000u64);
    assert_eq!(hc["Timeout"], 5_000_000_000u64);
    assert_eq!(hc["Retries"], 3);
    // WORKDIR creates the directory (a layer, as BuildKit) even though no RUN uses it.
    let hist = cfg["history"].as_array().unwrap();
    assert!(
        hist.iter()
            .any(|h| h["created_by"] == "WORKDIR /opt/app/data" && h["empty_layer"] != true),
        "{hist:?}"
    );
    assert!(
        hist.iter()
            .any(|h| h["created_by"] == "MAINTAINER someone@example.com"),
        "{hist:?}"
    );
    let out = env.rbuild(&["run", "--rm", "config:t"]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "2.5\n");
    let out = env.rbuild(&[
        "run",
        "--rm",
        "--entrypoint",
        "stat",
        "config:t",
        "-c",
        "%n %a %u",
        "/opt/app",
        "/opt/app/data",
    ]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "/opt/app 755 0\n/opt/app/data 755 0\n");
}

#[test]
fn onbuild_triggers_run_in_the_child_build() {
    let env = Env::new();
    let parent = feature(&env, "onbuild");
    let Some(cfg) = config_of(&env, "parent:t", &parent, &[]) else {
        return;
    };
    assert_eq!(
        cfg["config"]["OnBuild"],
        serde_json::json!([
            "COPY message.txt /from-child/",
            "RUN echo triggered > /triggered"
        ])
    );
    // The parent's own build does not run its triggers.
    let out = env.rbuild(&["run", "--rm", "parent:t", "test", "-e", "/triggered"]);
    assert!(!out.status.success());
    let child = env.context(
        "child",
        "FROM parent:t\nRUN cat /triggered /from-child/message.txt > /seen\n",
        &[("message.txt", "from the child context\n")],
    );
    let log = env.build_ok("child:t", &child, &[]);
    assert!(log.contains("RUN echo triggered"), "{log}");
    assert_eq!(
        run_in(&env, "child:t", "cat /seen /parent"),
        "triggered\nfrom the child context\nparent\n"
    );
    // Triggers fire once: the child's image has none left.
    if let Some(cfg) = config_of(&env, "child:t", &child, &[]) {
        assert!(
            cfg["config"].get("OnBuild").is_none_or(|v| v.is_null()),
            "{cfg}"
        );
    }
}

#[test]
fn stages_by_index_image_and_target() {
    let env = Env::new();
    let ctx = feature(&env, "stages");
    let log = env.build_ok("stages:t", &ctx, &[]);
    assert!(!log.contains("echo never"), "{log}");
    assert!(
        log.to_lowercase().contains("skip") && log.contains("unused"),
        "skipped stages are said so: {log}"
    );
    assert_eq!(
        run_in(
            &env,
            "stages:t",
            "cat /copied-by-index /second /final && test ! -e /zero && cmp /from-image /bin/busybox && echo same"
        ),
        "zero\nsecond\nfinal\nsame\n"
    );
    env.build_ok("stages:second", &ctx, &["--target", "second"]);
    let out = env.rbuild(&["run", "--rm", "stages:second", "test", "-e", "/final"]);
    assert!(!out.status.success(), "--target stops at the stage");
    assert_eq!(run_in(&env, "stages:second", "cat /second"), "second\n");
}

/// Builds `dockerfile` and returns stderr of the failure.
fn build_err(env: &Env, name: &str, dockerfile: &str, extra: &[&str]) -> String {
    let dir = env.context(name, dockerfile, &[("f", "x")]);
    let mut args = vec!["build", "--progress", "plain"];
    args.extend_from_slice(extra);
    args.push(dir.to_str().unwrap());
    let out = env.rbuild(&args);
    assert!(!out.status.success(), "{name} should fail");
    let e = stderr(&out);
    assert!(!e.contains("panicked"), "{e}");
    e
}

#[test]
fn stage_errors_are_clear() {
    let env = Env::new();
    let e = build_err(
        &env,
        "unknown",
        "FROM busybox:local AS build\nFROM busybox:local\nCOPY --from=biuld /f /f\n",
        &[],
    );
    assert!(e.contains("biuld") && e.contains("build"), "{e}");
    let e = build_err(
        &env,
        "dup",
        "FROM busybox:local AS a\nFROM busybox:local AS a\n",
        &[],
    );
    assert!(
        e.contains("a") && e.to_lowercase().contains("duplicate"),
        "{e}"
    );
    let e = build_err(
        &env,
        "cycle",
        "FROM busybox:local AS a\nCOPY --from=b /f /f\nFROM busybox:local AS b\nCOPY --from=a /f /f\n",
        &[],
    );
    assert!(e.contains("line 2") || e.contains(":2"), "{e}");
    let e = build_err(
        &env,
        "target",
        "FROM busybox:local AS a\n",
        &["--target", "nope"],
    );
    assert!(e.contains("nope"), "{e}");
}

/// A one-request-at-a-time HTTP server on 127.0.0.1 serving `body` at any path.
fn serve(body: &'static [u8], requests: usize) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(requests) {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Tue, 15 Nov 1994 08:12:31 GMT\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(body);
        }
    });
    format!("http://{addr}")
}

#[test]
fn add_from_url_with_checksum() {
    let env = Env::new();
    let url = serve(b"remote content\n", 8);
    let real = {
        use std::process::Stdio;
        let mut c = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(b"remote content\n")
            .unwrap();
        let o = c.wait_with_output().unwrap();
        format!("sha256:{}", &String::from_utf8_lossy(&o.stdout)[..64])
    };
    let ctx = env.context(
        "url",
        &format!(
            "FROM busybox:local\nADD {url}/files/remote.txt /dl/\nADD --checksum={real} {url}/x/y.bin /named\nADD {url}/files/remote.tar.gz /dl/\n"
        ),
        &[],
    );
    env.build_ok("url:t", &ctx, &[]);
    assert_eq!(
        run_in(
            &env,
            "url:t",
            "cd / && stat -c '%n %a %u %Y' dl/remote.txt named dl/remote.tar.gz && cat named"
        ),
        "dl/remote.txt 600 0 784887151\nnamed 600 0 784887151\ndl/remote.tar.gz 600 0 784887151\nremote content\n"
    );
    let bad = format!("sha256:{}", "0".repeat(64));
    let e = build_err(
        &env,
        "badsum",
        &format!("FROM busybox:local\nADD --checksum={bad} {url}/f /f\n"),
        &[],
    );
    assert!(e.contains("digest mismatch") && e.contains(&real), "{e}");
}

#[test]
fn add_git_repository() {
    if !have("git") {
        return;
    }
    let env = Env::new();
    // file:// repositories must be inside the build context.
    let ctx = env.context("git", "", &[]);
    let repo_dir = ctx.join("repo.git");
    std::fs::create_dir(&repo_dir).unwrap();
    sh(
        &repo_dir,
        "git init -q -b main . && echo v1 > file.txt && mkdir sub && echo s > sub/s.txt
         git -c user.name=t -c user.email=t@e add . && git -c user.name=t -c user.email=t@e commit -qm one
         git tag v1 && echo v2 > file.txt && git -c user.name=t -c user.email=t@e commit -qam two",
    );
    let url = format!("file://{}", repo_dir.display());
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM busybox:local\nADD {url}#v1 /src\nADD --keep-git-dir {url}#main /keep\nADD {url}#main:sub /subonly\nADD {url} /head\n"
        ),
    )
    .unwrap();
    env.build_ok("git:t", &ctx, &[]);
    assert_eq!(
        run_in(
            &env,
            "git:t",
            "cat /src/file.txt /head/file.txt /keep/sub/s.txt /subonly/s.txt; test -e /src/.git || echo no-git; test -d /keep/.git && echo kept"
        ),
        "v1\nv2\ns\ns\nno-git\nkept\n"
    );
}

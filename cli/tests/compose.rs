//! End-to-end tests of `rbuild compose` with the real stack (detached containers under their
//! monitors, netavark/aardvark-dns networks, named volumes): the seeds' scenario (a web service
//! built from a Dockerfile that fetches data from a db service by name, behind a published port,
//! started once the db is healthy), the recreate rules, and the other commands.
//!
//! Every test has its own store, a project named `cmp*` and host ports in 18300-18399.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;

fn have_stack() -> bool {
    let ok = nix::unistd::geteuid().is_root()
        && Path::new("/usr/lib/podman/netavark").exists()
        && Path::new("/usr/lib/podman/aardvark-dns").exists()
        && have("iptables");
    if !ok {
        eprintln!("compose tests skipped: need root, netavark, aardvark-dns and iptables (scripts/deps.sh)");
    }
    ok
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().ok()?,
        Duration::from_secs(2),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf
        .split_once("\r\n\r\n")
        .or_else(|| buf.split_once("\n\n"))?;
    (head.starts_with("HTTP/1.") && head.contains(" 200 ")).then(|| body.to_string())
}

/// Polls until `GET path` answers 200 with a body containing `want`, up to 20 s.
fn wait_body(port: u16, path: &str, want: &str) -> String {
    let start = Instant::now();
    loop {
        if let Some(b) = http_get(port, path) {
            if b.contains(want) {
                return b;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no {want:?} on 127.0.0.1:{port}{path} (last: {:?})",
            http_get(port, path)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A project directory with `compose.yaml` and files.
fn project(env: &Env, files: &[(&str, &str)]) -> std::path::PathBuf {
    let dir = env.work.path().join("app");
    for (p, c) in files {
        let f = dir.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, c).unwrap();
    }
    dir
}

fn compose(env: &Env, dir: &Path, args: &[&str]) -> Output {
    let out = std::process::Command::new(bin())
        .arg("compose")
        .args(args)
        .env("RBUILD_ROOT", env.root.path())
        .current_dir(dir)
        .output()
        .unwrap();
    out
}

fn compose_ok(env: &Env, dir: &Path, args: &[&str]) -> String {
    let out = compose(env, dir, args);
    assert_ok(&out);
    format!("{}{}", stdout(&out), stderr(&out))
}

/// Tears a project down even when an assertion failed.
struct Down<'a>(&'a Env, std::path::PathBuf);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = compose(self.0, &self.1, &["down", "-v", "-t", "1"]);
    }
}

const WEB_DOCKERFILE: &str = "FROM busybox:local
RUN mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho \"Content-Type: text/plain\"\\necho\\nwget -q -O - http://db/ 2>&1\\n' > /www/cgi-bin/data && chmod +x /www/cgi-bin/data && echo web > /www/index.html
CMD [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n";

fn seeds_compose(port: u16) -> String {
    format!(
        "name: cmpseed
services:
  web:
    build: ./web
    init: true
    ports: [\"{port}:80\"]
    depends_on:
      db: {{condition: service_healthy}}
  db:
    image: busybox:local
    init: true
    command: sh -c 'test -f /data/index.html || echo \"hello from db\" > /data/index.html; exec httpd -f -p 80 -h /data'
    volumes: [\"dbdata:/data\"]
    healthcheck:
      test: [\"CMD\", \"wget\", \"-q\", \"-O\", \"/dev/null\", \"http://127.0.0.1/\"]
      interval: 1s
      retries: 30
volumes:
  dbdata:\n"
    )
}

#[test]
fn seeds_scenario_up_down_volume() {
    if !have_stack() {
        return;
    }
    let env = Env::new();
    let port = 18301;
    let dir = project(
        &env,
        &[
            ("compose.yaml", &seeds_compose(port)),
            ("web/Dockerfile", WEB_DOCKERFILE),
        ],
    );
    let _down = Down(&env, dir.clone());
    let log = compose_ok(&env, &dir, &["up", "-d", "--build"]);
    // db is healthy before web is created.
    let healthy = log.find("cmpseed-db-1  Healthy").expect(&log);
    let web_created = log.find("cmpseed-web-1  Created").expect(&log);
    assert!(healthy < web_created, "{log}");
    assert!(log.contains("Network cmpseed_default  Created"), "{log}");
    assert!(log.contains("Volume cmpseed_dbdata  Created"), "{log}");
    // web reaches db by its service name.
    wait_body(port, "/cgi-bin/data", "hello from db");

    // Labels as docker compose sets them.
    let out = env.rbuild(&["inspect", "-f", "{{json .Config.Labels}}", "cmpseed-web-1"]);
    assert_ok(&out);
    let labels = stdout(&out);
    assert!(
        labels.contains("\"com.docker.compose.project\":\"cmpseed\""),
        "{labels}"
    );
    assert!(
        labels.contains("\"com.docker.compose.service\":\"web\""),
        "{labels}"
    );
    assert!(
        labels.contains("com.docker.compose.config-hash"),
        "{labels}"
    );

    // The volume's data survives down + up.
    compose_ok(
        &env,
        &dir,
        &[
            "exec",
            "-T",
            "db",
            "sh",
            "-c",
            "echo changed data > /data/index.html",
        ],
    );
    compose_ok(&env, &dir, &["down"]);
    let out = env.rbuild(&["ps", "-a", "-q"]);
    assert_eq!(stdout(&out).trim(), "", "containers left after down");
    compose_ok(&env, &dir, &["up", "-d"]);
    wait_body(port, "/cgi-bin/data", "changed data");

    // down -v removes everything of the project.
    let log = compose_ok(&env, &dir, &["down", "-v"]);
    assert!(log.contains("Volume cmpseed_dbdata  Removed"), "{log}");
    assert_eq!(stdout(&env.rbuild(&["ps", "-a", "-q"])).trim(), "");
    let vols = stdout(&env.rbuild(&["volume", "ls"]));
    assert!(!vols.contains("cmpseed"), "{vols}");
    let nets = stdout(&env.rbuild(&["network", "ls"]));
    assert!(!nets.contains("cmpseed"), "{nets}");
    assert!(http_get(port, "/").is_none(), "port still published");
}

#[test]
fn second_up_recreates_nothing_and_env_change_recreates_one() {
    if !have_stack() {
        return;
    }
    let env = Env::new();
    let file = |v: &str| {
        format!(
            "name: cmprec
services:
  a:
    image: busybox:local
    init: true
    command: sleep 1000
    environment: {{X: \"{v}\"}}
  b:
    image: busybox:local
    init: true
    command: sleep 1000\n"
        )
    };
    let dir = project(&env, &[("compose.yaml", &file("1"))]);
    let _down = Down(&env, dir.clone());
    let log = compose_ok(&env, &dir, &["up", "-d"]);
    assert_eq!(log.matches("Started").count(), 2, "{log}");
    let log = compose_ok(&env, &dir, &["up", "-d"]);
    assert!(
        !log.contains("Recreate") && !log.contains("Created"),
        "{log}"
    );
    assert_eq!(log.matches("Running").count(), 2, "{log}");

    std::fs::write(dir.join("compose.yaml"), file("2")).unwrap();
    let log = compose_ok(&env, &dir, &["up", "-d"]);
    assert!(log.contains("cmprec-a-1  Recreated"), "{log}");
    assert!(!log.contains("cmprec-b-1  Recreate"), "{log}");
    let out = compose_ok(&env, &dir, &["exec", "-T", "a", "sh", "-c", "echo $X"]);
    assert_eq!(out.trim(), "2");

    let log = compose_ok(&env, &dir, &["up", "-d", "--force-recreate", "b"]);
    assert!(log.contains("cmprec-b-1  Recreated"), "{log}");
    assert!(!log.contains("cmprec-a-1  Recreate"), "{log}");

    // stop / start / restart / ps.
    compose_ok(&env, &dir, &["stop", "-t", "1", "a"]);
    let ps = compose_ok(&env, &dir, &["ps"]);
    assert!(
        !ps.contains("cmprec-a-1") && ps.contains("cmprec-b-1"),
        "{ps}"
    );
    let ps = compose_ok(&env, &dir, &["ps", "-a"]);
    assert!(ps.contains("cmprec-a-1") && ps.contains("Exited"), "{ps}");
    compose_ok(&env, &dir, &["start", "a"]);
    assert!(compose_ok(&env, &dir, &["ps"]).contains("cmprec-a-1"));
    compose_ok(&env, &dir, &["restart", "-t", "1"]);
    let ps = compose_ok(&env, &dir, &["ps", "-q"]);
    assert_eq!(ps.lines().count(), 2, "{ps}");
}

#[test]
fn completed_successfully_logs_run_and_aliases() {
    if !have_stack() {
        return;
    }
    let env = Env::new();
    let dir = project(
        &env,
        &[(
            "compose.yaml",
            "name: cmpmisc
services:
  init:
    image: busybox:local
    command: sh -c 'echo seeding; echo seeded > /shared/ready'
    volumes: [\"shared:/shared\"]
  app:
    image: busybox:local
    init: true
    command: sh -c 'cat /shared/ready; exec sleep 1000'
    volumes: [\"shared:/shared:ro\"]
    networks:
      back:
        aliases: [api]
    depends_on:
      init: {condition: service_completed_successfully}
  client:
    image: busybox:local
    command: [\"true\"]
    networks: [back]
    profiles: [tools]
networks:
  back:
volumes:
  shared:\n",
        )],
    );
    let _down = Down(&env, dir.clone());
    compose_ok(&env, &dir, &["up", "-d"]);
    // app prints once it runs: poll.
    let start = Instant::now();
    let logs = loop {
        let l = compose_ok(&env, &dir, &["logs", "--no-color"]);
        if l.contains("| seeded") || start.elapsed() > Duration::from_secs(15) {
            break l;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(logs.contains("cmpmisc-init-1 | seeding"), "{logs}");
    assert!(logs.contains("cmpmisc-app-1  | seeded"), "{logs}");
    let only = compose_ok(&env, &dir, &["logs", "--no-color", "app"]);
    assert!(!only.contains("seeding"), "{only}");

    // A one-off container on the project network resolves the service and its alias.
    let out = compose(
        &env,
        &dir,
        &[
            "--profile",
            "tools",
            "run",
            "--rm",
            "client",
            "sh",
            "-c",
            "nslookup app >/dev/null && nslookup api >/dev/null && echo resolved",
        ],
    );
    assert_ok(&out);
    assert!(stdout(&out).contains("resolved"), "{}", stderr(&out));
    let left = stdout(&env.rbuild(&["ps", "-a", "--format", "{{.Names}}"]));
    assert!(!left.contains("run"), "run --rm left {left}");
    // Named on the command line, a service is enabled whatever its profiles.
    compose_ok(&env, &dir, &["run", "--rm", "client", "true"]);
    // Not named, it stays disabled.
    let ps = compose_ok(&env, &dir, &["up", "-d"]);
    assert!(!ps.contains("client"), "{ps}");
    let out = compose(&env, &dir, &["exec", "-T", "client", "true"]);
    assert!(!out.status.success());
}

#[test]
fn config_prints_resolved_file_and_errors_name_file_line_key() {
    let env = Env::empty();
    let dir = project(
        &env,
        &[
            (".env", "TAG=1.2\n"),
            (
                "compose.yaml",
                "services:\n  web:\n    image: \"busybox:${TAG}\"\n    ports: [\"8080:80\"]\n",
            ),
        ],
    );
    let out = compose_ok(&env, &dir, &["-p", "cmpcfg", "config"]);
    assert!(out.contains("image: busybox:1.2"), "{out}");
    assert!(out.contains("name: cmpcfg_default"), "{out}");
    assert!(out.contains("published: 8080"), "{out}");
    let svcs = compose_ok(&env, &dir, &["config", "--services"]);
    assert_eq!(svcs.trim(), "web");

    std::fs::write(
        dir.join("compose.yaml"),
        "services:\n  web:\n    image: x\n    portz: [80]\n",
    )
    .unwrap();
    let out = compose(&env, &dir, &["config"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("compose.yaml:4: services.web.portz: unknown key"),
        "{e}"
    );

    std::fs::write(
        dir.join("compose.yaml"),
        "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [a]\n",
    )
    .unwrap();
    let e = stderr(&compose(&env, &dir, &["up", "-d"]));
    assert!(e.contains("dependency cycle"), "{e}");

    let other = env.work.path().join("other.yml");
    std::fs::write(
        &other,
        "services:\n  a:\n    image: x\n    networks: [nope]\n",
    )
    .unwrap();
    let e = stderr(&compose(
        &env,
        &dir,
        &["-f", other.to_str().unwrap(), "config"],
    ));
    assert!(
        e.contains("other.yml:4: services.a.networks: undefined network"),
        "{e}"
    );
}

#[test]
fn service_keys_reach_the_container() {
    if !have_stack() {
        return;
    }
    let env = Env::new();
    let dir = project(
        &env,
        &[
            ("app.env", "FROM_FILE=yes\nSHARED=file\n"),
            ("site/hello.txt", "from the host\n"),
            (
                "compose.yaml",
                "name: cmpkeys
services:
  box:
    image: busybox:local
    init: true
    entrypoint: [\"/bin/sh\", \"-c\"]
    command: [\"exec sleep 1000\"]
    user: \"1234:1234\"
    working_dir: /etc
    hostname: boxhost
    read_only: true
    tmpfs: /scratch
    env_file: app.env
    environment:
      SHARED: inline
      PLAIN: ${CMP_UNSET:-fallback}
    labels: [team=core]
    stop_signal: SIGINT
    stop_grace_period: 2s
    volumes:
      - ./site:/site:ro
      - type: tmpfs
        target: /cache
    ports:
      - target: 80
        published: \"18311\"
        host_ip: 127.0.0.1
    deploy:
      resources:
        limits: {memory: 64m, pids: 50}
",
            ),
        ],
    );
    let _down = Down(&env, dir.clone());
    compose_ok(&env, &dir, &["up", "-d"]);
    let sh = |cmd: &str| compose_ok(&env, &dir, &["exec", "-T", "box", "sh", "-c", cmd]);
    assert_eq!(sh("id -u; id -g").trim(), "1234\n1234");
    assert_eq!(sh("pwd").trim(), "/etc");
    assert_eq!(sh("hostname").trim(), "boxhost");
    assert_eq!(
        sh("echo $FROM_FILE $SHARED $PLAIN").trim(),
        "yes inline fallback"
    );
    assert_eq!(sh("cat /site/hello.txt").trim(), "from the host");
    assert!(sh("touch /rootfile 2>&1 || echo refused").contains("refused"));
    assert!(sh("touch /site/x 2>&1 || echo refused").contains("refused"));
    sh("touch /scratch/a /cache/b");
    let inspect = |fmt: &str| stdout(&env.rbuild(&["inspect", "-f", fmt, "cmpkeys-box-1"]));
    assert!(inspect("{{json .Config.Labels}}").contains("\"team\":\"core\""));
    assert!(
        inspect("{{json .HostConfig}}").contains("67108864"),
        "{}",
        inspect("{{json .HostConfig}}")
    );
    let ps = compose_ok(&env, &dir, &["ps"]);
    assert!(ps.contains("127.0.0.1:18311->80/tcp"), "{ps}");
    // The service's stop signal ends it without waiting for the grace period.
    let t = Instant::now();
    compose_ok(&env, &dir, &["stop", "box"]);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[test]
fn build_in_parallel_and_down_rmi_local() {
    if !have_stack() {
        return;
    }
    let env = Env::new();
    let df = |n: &str| {
        format!("FROM busybox:local\nARG WHO=nobody\nRUN echo {n} $WHO > /who\nCMD [\"sleep\", \"1000\"]\n")
    };
    let dir = project(
        &env,
        &[
            ("one/Dockerfile", &df("one")),
            ("two/Containerfile", &df("two")),
            (
                "compose.yaml",
                "name: cmpbuild
services:
  one:
    build: ./one
    init: true
  two:
    init: true
    build:
      context: two
      dockerfile: Containerfile
      args: {WHO: compose}
      cache_from: [\"type=local,src=/nonexistent/cmpbuild-cache\"]
    image: cmpbuild-second:v1
",
            ),
        ],
    );
    let _down = Down(&env, dir.clone());
    let log = compose_ok(&env, &dir, &["build"]);
    assert!(
        log.contains("Service one  Built") && log.contains("Service two  Built"),
        "{log}"
    );
    // `cache_from` reaches the build as `--cache-from`: a cache that is not there is a warning.
    assert!(
        log.contains("WARNING: --cache-from") && log.contains("no cache found"),
        "{log}"
    );
    let images = stdout(&env.rbuild(&["images"]));
    assert!(
        images.contains("cmpbuild-one") && images.contains("cmpbuild-second"),
        "{images}"
    );
    // A second build is served from the cache.
    let log = compose_ok(&env, &dir, &["build"]);
    assert!(log.contains("CACHED"), "{log}");
    compose_ok(&env, &dir, &["up", "-d"]);
    let who = compose_ok(&env, &dir, &["exec", "-T", "two", "cat", "/who"]);
    assert_eq!(who.trim(), "two compose");
    // A rebuild served from the cache recreates nothing; a changed Dockerfile recreates its service.
    let log = compose_ok(&env, &dir, &["up", "-d", "--build"]);
    assert!(!log.contains("Recreate"), "{log}");
    std::fs::write(dir.join("one/Dockerfile"), df("uno")).unwrap();
    let log = compose_ok(&env, &dir, &["up", "-d", "--build"]);
    assert!(log.contains("cmpbuild-one-1  Recreated"), "{log}");
    assert!(!log.contains("cmpbuild-two-1  Recreate"), "{log}");
    compose_ok(&env, &dir, &["down", "--rmi", "local", "-t", "1"]);
    let images = stdout(&env.rbuild(&["images"]));
    assert!(!images.contains("cmpbuild-one"), "{images}");
    assert!(
        images.contains("cmpbuild-second"),
        "--rmi local removed a named image: {images}"
    );
}

#[test]
fn up_attached_prints_prefixed_logs_until_the_containers_exit() {
    if !have_stack() {
        return;
    }
    let env = Env::new();
    let dir = project(
        &env,
        &[(
            "compose.yaml",
            "name: cmpatt
services:
  hello:
    image: busybox:local
    command: sh -c 'echo hello from compose; sleep 1; echo bye'
",
        )],
    );
    let _down = Down(&env, dir.clone());
    let out = compose_ok(&env, &dir, &["up"]);
    assert!(out.contains("cmpatt-hello-1 | hello from compose"), "{out}");
    assert!(out.contains("cmpatt-hello-1 | bye"), "{out}");
    let ps = compose_ok(&env, &dir, &["ps", "-a"]);
    assert!(ps.contains("Exited (0)"), "{ps}");
}

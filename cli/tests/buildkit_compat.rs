//! End-to-end checks that rbuild gives what BuildKit gives for the same Dockerfile.
//!
//! Every expected value below was produced by BuildKit v0.32.0-57-g73ed6825c (moby/buildkit
//! commit 73ed6825c, built from source, `buildkitd` with runc and the overlayfs snapshotter,
//! `networkMode = "host"`, on this repository's busybox base image pushed to a local registry),
//! by running `buildctl build --frontend dockerfile.v0` on the same Dockerfile and reading the
//! result (`--output type=local` files, the image config, the plain progress or the error).
//! Most Dockerfiles are BuildKit's own integration tests
//! (`frontend/dockerfile/dockerfile_*_test.go`) adapted to `busybox:local`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

/// BuildKit's default PATH (`system.DefaultPathEnv("linux")`).
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Builds `dir` with `--output type=local` and returns the output directory.
fn build_local(env: &Env, dir: &Path, extra: &[&str]) -> PathBuf {
    let out = env.work.path().join(format!(
        "{}-out",
        dir.file_name().unwrap().to_string_lossy()
    ));
    let dest = format!("type=local,dest={}", out.display());
    let mut args = vec!["build", "--progress", "plain", "--output", dest.as_str()];
    args.extend_from_slice(extra);
    args.push(dir.to_str().unwrap());
    assert_ok(&env.rbuild(&args));
    out
}

fn read(dir: &Path, f: &str) -> String {
    fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{}/{f}: {e}", dir.display()))
}

/// Runs a build expected to fail; returns its stderr.
fn build_err(env: &Env, dir: &Path, extra: &[&str]) -> String {
    let mut args = vec!["build", "--progress", "plain"];
    args.extend_from_slice(extra);
    args.push(dir.to_str().unwrap());
    let out = env.rbuild(&args);
    assert!(
        !out.status.success(),
        "the build should fail\n{}",
        stderr(&out)
    );
    stderr(&out)
}

/// The host's architecture as an OCI platform string (BuildKit ran on linux/amd64).
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[test]
fn scratch_image_gets_default_path_and_workdir() {
    let env = Env::new();
    let dir = env.context("scratch", "FROM scratch\nCOPY f /f\n", &[("f", "hi\n")]);
    env.build_ok("sc:1", &dir, &[]);
    let out = env.rbuild(&["image", "inspect", "sc:1"]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // BuildKit: "config":{"Env":["PATH=/usr/local/sbin:..."],"WorkingDir":"/"}
    assert_eq!(
        v[0]["Config"],
        serde_json::json!({"Env": [DEFAULT_PATH], "WorkingDir": "/"})
    );
}

#[test]
fn builtin_platform_args_and_targetstage_scopes() {
    let env = Env::new();
    let df = "\
ARG G1=$TARGETPLATFORM/$TARGETOS/$TARGETARCH/$TARGETVARIANT/$BUILDPLATFORM/$BUILDOS/$BUILDARCH/$BUILDVARIANT/$TARGETSTAGE
FROM busybox:local AS one
ARG G1
RUN echo \"global=$G1\" > /r && echo \"undeclared=$TARGETPLATFORM|$BUILDPLATFORM|$TARGETSTAGE|$TARGETOS\" >> /r
ARG TARGETPLATFORM
ARG TARGETOS
ARG TARGETARCH
ARG TARGETVARIANT
ARG BUILDPLATFORM
ARG BUILDOS
ARG BUILDARCH
ARG BUILDVARIANT
ARG TARGETSTAGE
RUN echo \"declared=$TARGETPLATFORM|$TARGETOS|$TARGETARCH|$TARGETVARIANT|$BUILDPLATFORM|$BUILDOS|$BUILDARCH|$BUILDVARIANT|$TARGETSTAGE\" >> /r
FROM scratch AS final
COPY --from=one /r /r
";
    let dir = env.context("args", df, &[]);
    let a = host_arch();
    // BuildKit (linux/amd64): TARGETSTAGE is the target stage's name, global args see every
    // built-in, a stage only those it declares.
    let want = |stage: &str| {
        format!(
            "global=linux/{a}/linux/{a}//linux/{a}/linux/{a}//{stage}\n\
             undeclared=|||\n\
             declared=linux/{a}|linux|{a}||linux/{a}|linux|{a}||{stage}\n"
        )
    };
    assert_eq!(read(&build_local(&env, &dir, &[]), "r"), want("final"));
    let out = build_local(&env, &dir, &["--target", "one"]);
    assert_eq!(read(&out, "r"), want("one"));
    // An unnamed target stage: `default` (BuildKit's testTargetStageNameArg).
    let dir = env.context(
        "args2",
        "FROM busybox:local\nARG TARGETSTAGE\nRUN echo \"ts=$TARGETSTAGE\" > /r\n",
        &[],
    );
    assert_eq!(read(&build_local(&env, &dir, &[]), "r"), "ts=default\n");
}

#[test]
fn user_sets_supplementary_groups() {
    let env = Env::new();
    // BuildKit's testUser, shortened.
    let df = "\
FROM busybox:local AS base
RUN mkdir -m 0777 /out && echo 'wheel:x:10:root' >> /etc/group
RUN echo \"none $(id -u):$(id -g)/$(id -G)\" >> /out/r && chmod 666 /out/r
USER root
RUN echo \"root $(id -u):$(id -g)/$(id -G)\" >> /out/r
USER 0
RUN echo \"root $(id -u):$(id -g)/$(id -G)\" >> /out/r
USER root
RUN echo 'dockerio:x:1001:1001::/bin:/bin/false' >> /etc/passwd && echo 'dockerio:x:1001:' >> /etc/group && echo 'supplementary:x:1002:dockerio' >> /etc/group
USER dockerio
RUN echo \"dockerio $(id -u):$(id -g)/$(id -G)\" >> /out/r
USER 1001
RUN echo \"1001 $(id -u):$(id -g)/$(id -G)\" >> /out/r
USER dockerio:dockerio
RUN echo \"dockerio:dockerio $(id -u):$(id -g)/$(id -G)\" >> /out/r
USER 1001:1002
RUN echo \"1001:1002 $(id -u):$(id -g)/$(id -G)\" >> /out/r
USER 4242
RUN echo \"4242 $(id -u):$(id -g)/$(id -G)\" >> /out/r
FROM scratch
COPY --from=base /out/r /r
";
    let dir = env.context("user", df, &[]);
    assert_eq!(
        read(&build_local(&env, &dir, &[]), "r"),
        "none 0:0/0 10
root 0:0/0 10
root 0:0/0 10
dockerio 1001:1001/1001 1002
1001 1001:1001/1001 1002
dockerio:dockerio 1001:1001/1001
1001:1002 1001:1002/1002
4242 4242:0/0
"
    );
}

#[test]
fn sandbox_hostname_and_etc_hosts() {
    let env = Env::new();
    let df = "\
FROM busybox:local AS base
RUN (hostname; echo \"HOSTNAME=$HOSTNAME\"; cat /etc/hosts; [ -e /etc/hostname ] || echo no /etc/hostname) > /r
FROM scratch
COPY --from=base /r /r
";
    let dir = env.context("host", df, &[]);
    assert_eq!(
        read(&build_local(&env, &dir, &[]), "r"),
        "buildkitsandbox\nHOSTNAME=buildkitsandbox\n127.0.0.1\tlocalhost buildkitsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\nno /etc/hostname\n"
    );
    // buildctl --opt build-arg:BUILDKIT_SANDBOX_HOSTNAME=myhost --opt add-hosts=foo=1.2.3.4,bar=::1
    let out = build_local(
        &env,
        &dir,
        &[
            "--build-arg",
            "BUILDKIT_SANDBOX_HOSTNAME=myhost",
            "--add-host",
            "foo:1.2.3.4",
            "--add-host",
            "bar=::1",
        ],
    );
    assert_eq!(
        read(&out, "r"),
        "myhost\nHOSTNAME=myhost\n127.0.0.1\tlocalhost myhost\n::1\tlocalhost ip6-localhost ip6-loopback\n1.2.3.4\tfoo\n::1\tbar\nno /etc/hostname\n"
    );
}

#[test]
fn run_mount_options_expand_and_tmpfs_replaces_dev_shm() {
    let env = Env::new();
    // BuildKit's testMountArg, testMountEnvVar and testMountTmpfsSize, and a plain tmpfs.
    let df = "\
FROM busybox:local AS base
ARG MNT_TYPE=cache
ENV SOME_PATH=/mycache
RUN --mount=type=$MNT_TYPE,target=$SOME_PATH touch /mycache/foo
RUN --mount=type=cache,target=/mycache [ -f /mycache/foo ]
RUN mount | grep -E '/dev/shm|/dev ' > /default
RUN --mount=type=tmpfs,target=/dev/shm,size=128m mount | grep /dev/shm > /tmpfssize
RUN --mount=type=tmpfs,target=/t mount | grep ' /t ' > /plain
FROM scratch
COPY --from=base /default /tmpfssize /plain /
";
    let dir = env.context("mounts", df, &[]);
    let out = build_local(&env, &dir, &[]);
    assert_eq!(
        read(&out, "default"),
        "tmpfs on /dev type tmpfs (rw,nosuid,size=65536k,mode=755)\nshm on /dev/shm type tmpfs (rw,nosuid,nodev,noexec,relatime,size=65536k)\n"
    );
    assert_eq!(
        read(&out, "tmpfssize"),
        "tmpfs on /dev/shm type tmpfs (rw,nosuid,relatime,size=131072k)\n"
    );
    assert_eq!(
        read(&out, "plain"),
        "tmpfs on /t type tmpfs (rw,nosuid,relatime)\n"
    );
    // testMountFromError: `from=` is never expanded.
    let dir = env.context(
        "mountfrom",
        "FROM busybox:local AS test\nRUN touch /tmp/test\nFROM busybox:local\nENV ttt=test\nRUN --mount=from=$ttt,type=cache,target=/tmp ls\n",
        &[],
    );
    // BuildKit: "dockerfile parse error on line 5: 'from' doesn't support variable expansion,
    // define alias stage instead"
    let e = build_err(&env, &dir, &[]);
    assert!(
        e.contains("Dockerfile:5") && e.contains("'from' doesn't support variable expansion"),
        "{e}"
    );
}

#[test]
fn lowercase_dockerfile_is_found() {
    let env = Env::new();
    let dir = env.work.path().join("lc");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("dockerfile"),
        "FROM busybox:local\nRUN echo lower > /lc\n",
    )
    .unwrap();
    // BuildKit: `#1 [internal] load build definition from Dockerfile` ... `[2/2] RUN echo lower > /lc`
    let log = env.build_ok("lc:1", &dir, &[]);
    assert!(log.contains("[2/2] RUN echo lower > /lc"), "{log}");
    let out = env.rbuild(&["run", "--rm", "lc:1", "cat", "/lc"]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "lower\n");
}

#[test]
fn errors_where_buildkit_errors() {
    let env = Env::new();
    // testDockerignoreInvalid. BuildKit: `illegal exclusion pattern: "!"`.
    let dir = env.context(
        "ign",
        "FROM scratch\nCOPY . .\n",
        &[(".dockerignore", "!\n"), ("f", "x")],
    );
    let e = build_err(&env, &dir, &[]);
    assert!(e.contains("illegal exclusion pattern: \"!\""), "{e}");

    // BuildKit: `cannot copy from stage "b", it needs to be defined before current stage "a"`.
    let dir = env.context(
        "order",
        "FROM busybox:local AS a\nCOPY --from=b /x /x\nFROM busybox:local AS b\nRUN touch /x\n",
        &[],
    );
    let e = build_err(&env, &dir, &["--target", "a"]);
    assert!(
        e.contains("stage \"b\"") && e.contains("needs to be defined before the current stage a"),
        "{e}"
    );
    // ... while the last stage alone builds (BuildKit never dispatches `a`).
    build_local(&env, &dir, &[]);
    // FROM sees only earlier stages: `b` is an image name there (BuildKit: "failed to resolve
    // source metadata for docker.io/library/b:latest").
    let dir = env.context(
        "fromlater",
        "FROM b AS a\nRUN echo a\nFROM busybox:local AS b\nRUN echo b\n",
        &[],
    );
    let e = build_err(&env, &dir, &["--target", "a"]);
    assert!(e.contains("cannot load base image b"), "{e}");

    // testSourceDateEpochDockerfileDefaultInvalid. BuildKit: `invalid SOURCE_DATE_EPOCH: not-a-timestamp`.
    let dir = env.context(
        "sde",
        "ARG SOURCE_DATE_EPOCH=not-a-timestamp\nFROM scratch\nCOPY Dockerfile .\n",
        &[],
    );
    let e = build_err(&env, &dir, &[]);
    assert!(
        e.contains("invalid SOURCE_DATE_EPOCH: not-a-timestamp"),
        "{e}"
    );
    let dir = env.context("sde2", "FROM scratch\nCOPY Dockerfile .\n", &[]);
    let e = build_err(&env, &dir, &["--build-arg", "SOURCE_DATE_EPOCH=soon"]);
    assert!(e.contains("invalid SOURCE_DATE_EPOCH: soon"), "{e}");
}

#[test]
fn source_date_epoch_from_a_global_arg() {
    let env = Env::new();
    // testSourceDateEpochDockerfileDefault: the ARG default sets the image's created time.
    let dir = env.context(
        "sdeok",
        "ARG SOURCE_DATE_EPOCH=1445412480\nFROM scratch\nCOPY Dockerfile .\n",
        &[],
    );
    env.build_ok("sde:1", &dir, &[]);
    let out = env.rbuild(&["image", "inspect", "sde:1"]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["Created"], "2015-10-21T07:28:00Z");
}

#[test]
fn onbuild_of_a_stage_runs_in_stages_built_from_it() {
    let env = Env::new();
    // testOnBuildInheritedStageRun and testOnBuildInheritedStageWithFrom: BuildKit gives
    // "11" and "12".
    let df = "\
FROM busybox:local AS src
RUN mkdir -p /in && echo -n 12 > /in/file
FROM busybox:local AS base
ONBUILD RUN mkdir -p /out && echo -n 11 >> /out/foo
ONBUILD COPY --from=src /in/file /out/from
FROM base AS mid
RUN cp /out/foo /out/bar
FROM scratch
COPY --from=mid /out/bar /out/from /
";
    let dir = env.context("onbuild", df, &[]);
    let log_dir = build_local(&env, &dir, &[]);
    assert_eq!(read(&log_dir, "bar"), "11");
    assert_eq!(read(&log_dir, "from"), "12");
    // The triggers are numbered and marked as BuildKit prints them.
    let log = env.build_ok("ob:1", &dir, &["--no-cache"]);
    assert!(
        log.contains("[mid 1/3] ONBUILD RUN mkdir -p /out && echo -n 11 >> /out/foo"),
        "{log}"
    );
    assert!(
        log.contains("[mid 2/3] ONBUILD COPY --from=src /in/file /out/from"),
        "{log}"
    );
    assert!(log.contains("[mid 3/3] RUN cp /out/foo /out/bar"), "{log}");
}

#[test]
fn shebang_heredocs_run_through_their_interpreter() {
    let env = Env::new();
    // testRunShebangHeredoc plus the other forms BuildKit accepts.
    let df = "FROM busybox:local AS build
WORKDIR /dest
RUN <<EOF
#!/usr/bin/awk -f
BEGIN {
\tprint \"hello\" >> \"./out1\"
}
EOF
RUN <<-EOF
\t#!/usr/bin/awk -f
\tBEGIN {
\t\tprint \"hello\" >> \"./out2\"
\t}
EOF
RUN <<\"EOF\"
#!/bin/sh
echo \"q $0\" > ./out3
EOF
RUN <<EOF sh
#!/bin/false
echo \"with cmd\" > ./out4
EOF
RUN <<EOF
#!/bin/sh -e
echo \"$0 $-\" > ./out5
EOF
RUN <<EOF
  #!/bin/false
echo \"indent $0\" > ./out6
EOF
FROM scratch
COPY --from=build /dest /
";
    let dir = env.context("heredoc", df, &[]);
    let out = build_local(&env, &dir, &[]);
    for (f, want) in [
        ("out1", "hello\n"),
        ("out2", "hello\n"),
        ("out3", "q /dev/pipes/EOF\n"),
        ("out4", "with cmd\n"),
        ("out5", "/dev/pipes/EOF e\n"),
        ("out6", "indent /bin/sh\n"),
    ] {
        assert_eq!(read(&out, f), want, "{f}");
    }
}

#[test]
fn plain_progress_numbers_steps_as_buildkit() {
    let env = Env::new();
    let dir = env.context(
        "num",
        "FROM busybox:local\nENV A=1\nRUN echo a\nWORKDIR /\nWORKDIR /x\nLABEL a=b\nCOPY Dockerfile /d\nADD Dockerfile /e\nRUN echo b\n",
        &[],
    );
    let log = env.build_ok("num:1", &dir, &[]);
    let names: Vec<String> = steps(&log).into_iter().map(|(_, n)| n).collect();
    // BuildKit: [1/7] FROM docker.io/library/busybox:latest@sha256:..., then these (WORKDIR /
    // makes no step, so the count ends at 6).
    assert_eq!(
        names,
        vec![
            "[1/7] FROM busybox:local",
            "[2/7] RUN echo a",
            "[3/7] WORKDIR /x",
            "[4/7] COPY Dockerfile /d",
            "[5/7] ADD Dockerfile /e",
            "[6/7] RUN echo b",
        ]
    );
    let df = "\
FROM busybox:local AS base
ARG TARGETSTAGE
RUN echo \"ts=$TARGETSTAGE\" > /ts
FROM base AS mid
RUN echo m
WORKDIR /w
COPY Dockerfile /x
FROM scratch
COPY --from=mid /ts /
";
    let dir = env.context("num2", df, &[]);
    let log = env.build_ok("num:2", &dir, &[]);
    let mut names: Vec<String> = steps(&log).into_iter().map(|(_, n)| n).collect();
    names.sort();
    // BuildKit (sorted): a stage built FROM a stage has no FROM step; FROM scratch has none.
    assert_eq!(
        names,
        vec![
            "[base 1/2] FROM busybox:local",
            "[base 2/2] RUN echo \"ts=default\" > /ts",
            "[mid 1/3] RUN echo m",
            "[mid 2/3] WORKDIR /w",
            "[mid 3/3] COPY Dockerfile /x",
            "[stage-2 1/1] COPY --from=mid /ts /",
        ]
    );
}

/// The context of `copy_rules_match_buildkit`: a 0700 root and a 0700 directory, nested trees for
/// `--parents`/`--exclude`, links at the top and inside a directory, a tar archive.
const COPY_CONTEXT: &str = "
mkdir -p dir700/sub a/b/c x/y p/q links ex/keep ex/skip/deep ex/keep/skip
echo f > dir700/sub/f && chmod 700 dir700 dir700/sub
echo 1 > a/b/c/one.txt && echo 2 > a/b/two.txt && echo 3 > x/y/three.md && echo 4 > p/q/four.txt
echo t > links/target.txt && ln -s target.txt links/rel-link && ln -s links/target.txt toplink
ln -s /etc/passwd links/abs-link
echo k > ex/keep/k && echo s > ex/skip/deep/s && echo n > ex/keep/skip/n
echo arch > arch.txt && tar -cf arch.tar arch.txt
chmod 700 .
";

/// COPY and ADD cases, one instruction each; the last RUN lists the results.
const COPY_DOCKERFILE: &str = r#"FROM busybox:local AS src
RUN mkdir -p /real/d && echo inner > /real/d/file && ln -s /real /linkdir && ln -s /real/d/file /abslink && mkdir /target && ln -s /target /abs-dest
FROM busybox:local
COPY . /out/
COPY dir700 /d700/
COPY --chown=1000:1000 dir700 /chowned/new/
RUN mkdir -m 0700 /exist && chown 5:5 /exist
COPY --chown=1000:1000 a /exist/
COPY --chmod=0751 a/b/two.txt /cm/par/ents/
COPY toplink /followed
COPY links /keptlinks/
COPY --from=src /linkdir/d/file /through-link
COPY --from=src /abslink /abslink-followed
COPY --parents ./a/b/c/one.txt /par1/
COPY --parents a/./b/c/one.txt /par2/
COPY --parents a/b/*.txt x/y/*.md /par3/
COPY --parents **/*.txt /par4/
COPY --parents p/q /par5/
COPY --exclude=skip ex /ex1/
COPY --exclude=**/skip ex /ex2/
COPY --exclude=*/deep ex /ex3/
ADD --unpack=false arch.tar /nounpack/
ADD arch.tar /unpack/
RUN mkdir /target && ln -s /target /abs-dest
ADD arch.tar /abs-dest/
ADD http://{addr}/remote.bin /remote/
ADD http://{addr}/remote.bin /remote-file
RUN cd / && find out d700 chowned exist cm followed keptlinks through-link abslink-followed par1 par2 par3 par4 par5 ex1 ex2 ex3 nounpack unpack abs-dest target target/arch.txt remote remote-file | sort | while read p; do echo "$p $(stat -c '%a %u:%g %F' $p)$( [ -L $p ] && echo " -> $(readlink $p)")"; done > /listing.txt
"#;

/// The listing (path, mode, owner, type, link target) BuildKit gave for `COPY_DOCKERFILE`.
const COPY_LISTING: &str = "abs-dest 777 0:0 symbolic link -> /target
abslink-followed 644 0:0 regular file
chowned 755 1000:1000 directory
chowned/new 755 1000:1000 directory
chowned/new/sub 700 1000:1000 directory
chowned/new/sub/f 644 1000:1000 regular file
cm 751 0:0 directory
cm/par 751 0:0 directory
cm/par/ents 751 0:0 directory
cm/par/ents/two.txt 751 0:0 regular file
d700 755 0:0 directory
d700/sub 700 0:0 directory
d700/sub/f 644 0:0 regular file
ex1 755 0:0 directory
ex1/keep 755 0:0 directory
ex1/keep/k 644 0:0 regular file
ex1/keep/skip 755 0:0 directory
ex1/keep/skip/n 644 0:0 regular file
ex2 755 0:0 directory
ex2/keep 755 0:0 directory
ex2/keep/k 644 0:0 regular file
ex3 755 0:0 directory
ex3/keep 755 0:0 directory
ex3/keep/k 644 0:0 regular file
ex3/keep/skip 755 0:0 directory
ex3/keep/skip/n 644 0:0 regular file
ex3/skip 755 0:0 directory
exist 700 5:5 directory
exist/b 755 1000:1000 directory
exist/b/c 755 1000:1000 directory
exist/b/c/one.txt 644 1000:1000 regular file
exist/b/two.txt 644 1000:1000 regular file
followed 644 0:0 regular file
keptlinks 755 0:0 directory
keptlinks/abs-link 777 0:0 symbolic link -> /etc/passwd
keptlinks/rel-link 777 0:0 symbolic link -> target.txt
keptlinks/target.txt 644 0:0 regular file
nounpack 755 0:0 directory
nounpack/arch.tar 644 0:0 regular file
out 755 0:0 directory
out/Dockerfile 644 0:0 regular file
out/a 755 0:0 directory
out/a/b 755 0:0 directory
out/a/b/c 755 0:0 directory
out/a/b/c/one.txt 644 0:0 regular file
out/a/b/two.txt 644 0:0 regular file
out/arch.tar 644 0:0 regular file
out/arch.txt 644 0:0 regular file
out/dir700 700 0:0 directory
out/dir700/sub 700 0:0 directory
out/dir700/sub/f 644 0:0 regular file
out/ex 755 0:0 directory
out/ex/keep 755 0:0 directory
out/ex/keep/k 644 0:0 regular file
out/ex/keep/skip 755 0:0 directory
out/ex/keep/skip/n 644 0:0 regular file
out/ex/skip 755 0:0 directory
out/ex/skip/deep 755 0:0 directory
out/ex/skip/deep/s 644 0:0 regular file
out/links 755 0:0 directory
out/links/abs-link 777 0:0 symbolic link -> /etc/passwd
out/links/rel-link 777 0:0 symbolic link -> target.txt
out/links/target.txt 644 0:0 regular file
out/p 755 0:0 directory
out/p/q 755 0:0 directory
out/p/q/four.txt 644 0:0 regular file
out/toplink 777 0:0 symbolic link -> links/target.txt
out/x 755 0:0 directory
out/x/y 755 0:0 directory
out/x/y/three.md 644 0:0 regular file
par1 755 0:0 directory
par1/a 755 0:0 directory
par1/a/b 755 0:0 directory
par1/a/b/c 755 0:0 directory
par1/a/b/c/one.txt 644 0:0 regular file
par2 755 0:0 directory
par2/b 755 0:0 directory
par2/b/c 755 0:0 directory
par2/b/c/one.txt 644 0:0 regular file
par3 755 0:0 directory
par3/a 755 0:0 directory
par3/a/b 755 0:0 directory
par3/a/b/two.txt 644 0:0 regular file
par3/x 755 0:0 directory
par3/x/y 755 0:0 directory
par3/x/y/three.md 644 0:0 regular file
par4 755 0:0 directory
par4/a 755 0:0 directory
par4/a/b 755 0:0 directory
par4/a/b/c 755 0:0 directory
par4/a/b/c/one.txt 644 0:0 regular file
par4/a/b/two.txt 644 0:0 regular file
par4/arch.txt 644 0:0 regular file
par4/links 755 0:0 directory
par4/links/target.txt 644 0:0 regular file
par4/p 755 0:0 directory
par4/p/q 755 0:0 directory
par4/p/q/four.txt 644 0:0 regular file
par5 755 0:0 directory
par5/p 755 0:0 directory
par5/p/q 755 0:0 directory
par5/p/q/four.txt 644 0:0 regular file
remote 755 0:0 directory
remote-file 600 0:0 regular file
remote/remote.bin 600 0:0 regular file
target 755 0:0 directory
target/arch.txt 644 0:0 regular file
target/arch.txt 644 0:0 regular file
through-link 644 0:0 regular file
unpack 755 0:0 directory
unpack/arch.txt 644 0:0 regular file
";

/// Serves `body` over HTTP on a loopback port (every request); returns the address.
fn serve(body: &'static [u8]) -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(body);
        }
    });
    addr
}

#[test]
fn copy_rules_match_buildkit() {
    let env = Env::new();
    let addr = serve(b"remote\n");
    let df = COPY_DOCKERFILE.replace("{addr}", &addr.to_string());
    let dir = env.context("copyctx", &df, &[]);
    let out = std::process::Command::new("sh")
        .arg("-ec")
        .arg(COPY_CONTEXT)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_ok(&out);
    let got = read(&build_local(&env, &dir, &[]), "listing.txt");
    // Compared line by line so a failure names the first entry that differs.
    for (g, w) in got.lines().zip(COPY_LISTING.lines()) {
        assert_eq!(g, w, "\nrbuild:\n{got}\nBuildKit:\n{COPY_LISTING}");
    }
    assert_eq!(got, COPY_LISTING);
}

/// Ownership and modes of the directories COPY creates (BuildKit: 0755 and the --chown owner, an
/// octal --chmod's mode, the destination's own mode when it exists; a plain `**` is one level).
const COPY_DIRS_DOCKERFILE: &str = r#"FROM busybox:local AS src
RUN mkdir -m 700 /own700 && touch /own700/f && chown -R 5:5 /own700 && mkdir -p /deep/x && chown 6:6 /deep /deep/x
FROM busybox:local
COPY --from=src /own700 /fromsrc/
COPY --from=src /own700 /fromsrc2
COPY --chmod=0751 dir700 /cmdir/
COPY --chmod=u+x,g-r a/b/two.txt /cmsym/new/
COPY --chown=7:7 a/b/two.txt /chparents/x/y/
COPY --chown=7:7 --chmod=0700 a/b /chboth/
COPY **/*.txt /flat/
COPY --parents --chown=8:8 a/b/c /pch/
RUN mkdir -p /existp && chown 9:9 /existp && chmod 711 /existp
COPY --parents a/b/c /existp/
RUN cd / && find fromsrc fromsrc2 cmdir cmsym chparents chboth flat pch existp | sort | while read p; do echo "$p $(stat -c '%a %u:%g %F' $p)"; done > /listing.txt
"#;

/// The listing BuildKit gave for `COPY_DIRS_DOCKERFILE`.
const COPY_DIRS_LISTING: &str = "chboth 700 7:7 directory
chboth/c 700 7:7 directory
chboth/c/one.txt 700 7:7 regular file
chboth/two.txt 700 7:7 regular file
chparents 755 7:7 directory
chparents/x 755 7:7 directory
chparents/x/y 755 7:7 directory
chparents/x/y/two.txt 644 7:7 regular file
cmdir 751 0:0 directory
cmdir/sub 751 0:0 directory
cmdir/sub/f 751 0:0 regular file
cmsym 755 0:0 directory
cmsym/new 755 0:0 directory
cmsym/new/two.txt 704 0:0 regular file
existp 711 9:9 directory
existp/a 755 0:0 directory
existp/a/b 755 0:0 directory
existp/a/b/c 755 0:0 directory
existp/a/b/c/one.txt 644 0:0 regular file
flat 755 0:0 directory
flat/target.txt 644 0:0 regular file
fromsrc 755 0:0 directory
fromsrc/f 644 5:5 regular empty file
fromsrc2 755 0:0 directory
fromsrc2/f 644 5:5 regular empty file
pch 755 8:8 directory
pch/a 755 8:8 directory
pch/a/b 755 8:8 directory
pch/a/b/c 755 8:8 directory
pch/a/b/c/one.txt 644 8:8 regular file
";

#[test]
fn copy_created_directories_match_buildkit() {
    let env = Env::new();
    let dir = env.context("copydirs", COPY_DIRS_DOCKERFILE, &[]);
    let out = std::process::Command::new("sh")
        .arg("-ec")
        .arg(COPY_CONTEXT.replace("chmod 700 .", ""))
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_ok(&out);
    let got = read(&build_local(&env, &dir, &[]), "listing.txt");
    for (g, w) in got.lines().zip(COPY_DIRS_LISTING.lines()) {
        assert_eq!(g, w, "\nrbuild:\n{got}\nBuildKit:\n{COPY_DIRS_LISTING}");
    }
    assert_eq!(got, COPY_DIRS_LISTING);
}

/// BuildKit's testCopyRelativeParents (alpine -> busybox:local): each target's RUN checks the
/// layout BuildKit produced.
const PARENTS_DOCKERFILE: &str = r#"
FROM busybox:local AS base
WORKDIR /test
RUN <<eot
	set -ex
	mkdir -p a/b/c/d/e
	mkdir -p a/b2/c/d/e
	mkdir -p a/b/c2/d/e
	mkdir -p a/b/c2/d/e2
	touch a/b/c/d/foo
	touch a/b/c/d/e/bay
	touch a/b2/c/d/e/bar
	touch a/b/c2/d/e/baz
	touch a/b/c2/d/e2/baz
eot

FROM busybox:local AS middle
COPY --from=base --parents /test/a/b/./c/d /out/
RUN <<eot
	set -ex
	[ -d /out/c/d/e ]
	[ -f /out/c/d/foo ]
	[ ! -d /out/a ]
	[ ! -d /out/e ]
eot

FROM busybox:local AS end
COPY --from=base --parents /test/a/b/c/d/. /out/
RUN <<eot
	set -ex
	[ -d /out/test/a/b/c/d/e ]
	[ -f /out/test/a/b/c/d/foo ]
eot

FROM busybox:local AS start
COPY --from=base --parents ./test/a/b/c/d /out/
RUN <<eot
	set -ex
	[ -d /out/test/a/b/c/d/e ]
	[ -f /out/test/a/b/c/d/foo ]
eot

FROM busybox:local AS double
COPY --from=base --parents /test/a/./b/./c /out/
RUN <<eot
	set -ex
	[ -d /out/b/c/d/e ]
	[ -f /out/b/c/d/foo ]
eot

FROM busybox:local AS wildcard
COPY --from=base --parents /test/a/./*/c /out/
RUN <<eot
	set -ex
	[ -d /out/b/c/d/e ]
	[ -f /out/b2/c/d/e/bar ]
eot

FROM busybox:local AS doublewildcard
COPY --from=base --parents /test/a/b*/./c/**/e /out/
RUN <<eot
	set -ex
	[ -d /out/c/d/e ]
	[ -f /out/c/d/e/bay ] # via b
	[ -f /out/c/d/e/bar ] # via b2
eot

FROM busybox:local AS doubleinputs
COPY --from=base --parents /test/a/b/c*/./d/**/baz /test/a/b*/./c/**/bar /out/
RUN <<eot
	set -ex
	[ -f /out/d/e/baz ]
	[ ! -f /out/d/e/bay ]
	[ -f /out/d/e2/baz ]
	[ -f /out/c/d/e/bar ] # via b2
eot
"#;

/// BuildKit's testCopyParentsMissingDirectory (alpine -> busybox:local).
const PARENTS_MISSING_DOCKERFILE: &str = r#"
FROM busybox:local AS base
WORKDIR /test
RUN <<eot
	set -ex
	mkdir -p a/b/c/d/e
	touch a/b/c/d/foo
	touch a/b/c/d/e/bay
eot

FROM busybox:local AS normal
COPY --from=base --parents /test/a/b/c/d /out/
RUN <<eot
	set -ex
	[ -d /out/test/a/b/c/d/e ]
	[ -f /out/test/a/b/c/d/e/bay ]
	[ ! -d /out/e ]
	[ ! -d /out/a ]
eot

FROM busybox:local AS withpivot
COPY --from=base --parents /test/a/b/./c/d /out/
RUN <<eot
	set -ex
	[ -d /out/c/d/e ]
	[ -f /out/c/d/foo ]
	[ ! -d /out/a ]
	[ ! -d /out/e ]
eot

FROM busybox:local AS nonexistentfile
COPY --from=base --parents /test/nonexistent-file /out/

FROM busybox:local AS wildcard-nonexistent
COPY --from=base --parents /test/a/b2*/c /out/
RUN <<eot
	set -ex
	[ -d /out ]
	[ ! -d /out/a ]
eot

FROM busybox:local AS wildcard-afterpivot
COPY --from=base --parents /test/a/b/./c2* /out/
RUN <<eot
	set -ex
	[ -d /out ]
	[ ! -d /out/a ]
	[ ! -d /out/c* ]
eot
"#;

#[test]
fn copy_parents_pivots_wildcards_and_missing_directories() {
    let env = Env::new();
    let dir = env.context("parents", PARENTS_DOCKERFILE, &[]);
    for t in [
        "middle",
        "end",
        "start",
        "double",
        "wildcard",
        "doublewildcard",
        "doubleinputs",
    ] {
        env.build_ok(&format!("par:{t}"), &dir, &["--target", t]);
    }
    let dir = env.context("parents-missing", PARENTS_MISSING_DOCKERFILE, &[]);
    for t in [
        "normal",
        "withpivot",
        "wildcard-nonexistent",
        "wildcard-afterpivot",
    ] {
        env.build_ok(&format!("parm:{t}"), &dir, &["--target", t]);
    }
    // BuildKit: `"/test/nonexistent-file": not found`.
    let e = build_err(&env, &dir, &["--target", "nonexistentfile"]);
    assert!(e.contains("\"/test/nonexistent-file\": not found"), "{e}");
}

/// BuildKit's testCopyChownExistingDir: created directories are root's (or --chown's), existing
/// ones keep their owner, copied entries keep theirs (or get --chown's).
const CHOWN_EXISTING_DOCKERFILE: &str = r#"
# Set up files and directories with known ownership
FROM busybox:local AS source
RUN touch /file && chown 100:200 /file \
 && mkdir -p /dir/subdir \
 && touch /dir/subdir/nestedfile \
 && chown 100:200 /dir \
 && chown 101:201 /dir/subdir \
 && chown 102:202 /dir/subdir/nestedfile

FROM busybox:local AS test_base
RUN mkdir -p /existingdir/existingsubdir \
 && touch /existingdir/existingfile \
 && chown 500:600 /existingdir \
 && chown 501:601 /existingdir/existingsubdir \
 && chown 501:601 /existingdir/existingfile


# Copy files from the source stage
FROM test_base AS copy_from
COPY --from=source /file .
# Copy to a non-existing target directory creates the target directory (as root), then copies the _contents_ of the source directory into it
COPY --from=source /dir /dir
# Copying to an existing target directory will copy the _contents_ of the source directory into it
COPY --from=source /dir/. /existingdir

RUN e="100:200"; p="/file"                         ; a=`stat -c "%u:%g" "$p"`; if [ "$a" != "$e" ]; then echo "incorrect ownership on $p. expected $e, got $a"; exit 1; fi \
 && e="0:0";     p="/dir"                          ; a=`stat -c "%u:%g" "$p"`; if [ "$a" != "$e" ]; then echo "incorrect ownership on $p. expected $e, got $a"; exit 1; fi \
 && e="101:201"; p="/dir/subdir"                   ; a=`stat -c "%u:%g" "$p"`; if [ "$a" != "$e" ]; then echo "incorrect ownership on $p. expected $e, got $a"; exit 1; fi \
 && e="102:202"; p="/dir/subdir/nestedfile"        ; a=`stat -c "%u:%g" "$p"`; if [ "$a" != "$e" ]; then echo "incorrect ownership on $p. expected $e, got $a"; exit 1; fi \
# Existing files and directories ownership should not be modified
 && e="500:600"; p="/existingdir"                  ; a=`stat -c "%u:%g" "$p"`; if [ "$a" != "$e" ]; then echo "incorrect ownership on $p. expected $e, got $a"; exit 1; fi \
 && e="501:601"; p="/existingdir/existingsubdir"   ; a=`stat -c "%u:%g" "$p"`; if [ "$a" != "$e" ]; then echo "incorrect ownership on $p. expected $e, got $a"; exit 1; fi \
 && e="501:601"; p="/existingdir/existingfile"     ; a=`stat -c "%u:%g" "$p"`; if [ "$a" != "$e" ]; then echo "incorrect ownership on $p. expected $e, got $a"; exit 1; fi \
# But new files and directories should maintain their ownership
 && e="101:201"; p="/existingdir/subdir"           ; a=`stat -c "%u:%g" "$p"`; if [ "$a" != "$e" ]; then echo "incorrect ownership on $p. expected $e, got $a"; exit 1; fi \
 && e="102:202"; p="/existingdir/subdir/nestedfile"; a=`stat -c "%u:%g" "$p"`; if [ "$a" != "$e" ]; then echo "incorrect ownership on $p. expected $e, got $a"; exit 1; fi


# Copy files from the source stage and chown them.
FROM test_base AS copy_from_chowned
COPY --from=source --chown=300:400 /file .
# Copy to a non-existing target directory creates the target directory (as root), then copies the _contents_ of the source directory into it
COPY --from=source --chown=300:400 /dir /dir
# Copying to an existing target directory copies the _contents_ of the source directory into it
COPY --from=source --chown=300:400 /dir/. /existingdir

RUN e="300:400"; p="/file"                         ; a=`stat -c "%u:%g" "$p"`; if [ "$a" != "$e" ]; then echo "incorrect ownership on $p. expected $e, got $a"; exit 1; fi \
 && e="300:400"; p="/dir"                          ; a=`stat -c "%u:%g" "$p"`; if [ "$a" != "$e" ]; then echo "incorrect ownership on $p. expected $e, got $a"; exit 1; fi \
 && e="300:400"; p="/dir/subdir"                   ; a=`stat -c "%u:%g" "$p"`; if [ "$a" != "$e" ]; then echo "incorrect ownership on $p. expected $e, got $a"; exit 1; fi \
 && e="300:400"; p="/dir/subdir/nestedfile"        ; a=`stat -c "%u:%g" "$p"`; if [ "$a" != "$e" ]; then echo "incorrect ownership on $p. expected $e, got $a"; exit 1; fi \
# Existing files and directories ownership should not be modified
 && e="500:600"; p="/existingdir"                  ; a=`stat -c "%u:%g" "$p"`; if [ "$a" != "$e" ]; then echo "incorrect ownership on $p. expected $e, got $a"; exit 1; fi \
 && e="501:601"; p="/existingdir/existingsubdir"   ; a=`stat -c "%u:%g" "$p"`; if [ "$a" != "$e" ]; then echo "incorrect ownership on $p. expected $e, got $a"; exit 1; fi \
 && e="501:601"; p="/existingdir/existingfile"     ; a=`stat -c "%u:%g" "$p"`; if [ "$a" != "$e" ]; then echo "incorrect ownership on $p. expected $e, got $a"; exit 1; fi \
# But new files and directories should be chowned
 && e="300:400"; p="/existingdir/subdir"           ; a=`stat -c "%u:%g" "$p"`; if [ "$a" != "$e" ]; then echo "incorrect ownership on $p. expected $e, got $a"; exit 1; fi \
 && e="300:400"; p="/existingdir/subdir/nestedfile"; a=`stat -c "%u:%g" "$p"`; if [ "$a" != "$e" ]; then echo "incorrect ownership on $p. expected $e, got $a"; exit 1; fi
"#;

#[test]
fn copy_chown_onto_existing_and_created_directories() {
    let env = Env::new();
    let dir = env.context("chownex", CHOWN_EXISTING_DOCKERFILE, &[]);
    for t in ["copy_from", "copy_from_chowned"] {
        env.build_ok(&format!("cx:{t}"), &dir, &["--target", t]);
    }
    // BuildKit's testCopyThroughSymlinkMultiStage: a path through a link inside a stage
    // resolves inside that stage (absolute and relative links).
    let dir = env.context(
        "throughlink",
        "FROM busybox:local AS build\nRUN mkdir -p /out/sub && ln -s /out/sub /sub && ln -s out/sub /sub2 && echo -n \"data\" > /sub/foo\nFROM scratch\nCOPY --from=build /sub/foo .\nCOPY --from=build /sub2/foo bar\n",
        &[],
    );
    let out = build_local(&env, &dir, &[]);
    assert_eq!(read(&out, "foo"), "data");
    assert_eq!(read(&out, "bar"), "data");
}

#[test]
fn add_archive_through_an_absolute_symlink_and_implied_parents() {
    let env = Env::new();
    // BuildKit's testDockerfileAddArchiveThroughAbsoluteSymlink: the image has /var/run -> /run,
    // the archive has var/run/act/... (no var/ or var/run/ entries) and a hard link.
    let dir = env.context(
        "abssym",
        "FROM scratch\nADD rootfs.tar /\nADD payload.tar /\nADD implied.tar.gz /\n",
        &[],
    );
    let script = "
mkdir -p r/run r/var && ln -s /run r/var/run && tar --numeric-owner -C r -cf rootfs.tar run var
mkdir -p p/var/run/act/actions/broad/.git
printf 'ref: refs/heads/main\\n' > p/var/run/act/actions/broad/.git/HEAD
ln p/var/run/act/actions/broad/.git/HEAD p/var/run/act/actions/broad/.git/HEAD.link
tar --numeric-owner -C p -cf payload.tar var/run/act
mkdir -p i/etc/dnf && printf content0 > i/etc/dnf/dnf.conf
tar --numeric-owner -C i -czf implied.tar.gz etc/dnf
rm -rf r p i
";
    let o = std::process::Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_ok(&o);
    let out = build_local(&env, &dir, &[]);
    let head = out.join("run/act/actions/broad/.git/HEAD");
    let link = out.join("run/act/actions/broad/.git/HEAD.link");
    assert_eq!(fs::read_to_string(&head).unwrap(), "ref: refs/heads/main\n");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(&head).unwrap().ino(),
        fs::metadata(&link).unwrap().ino(),
        "HEAD.link is a hard link to HEAD"
    );
    assert!(fs::symlink_metadata(out.join("var/run"))
        .unwrap()
        .file_type()
        .is_symlink());
    // testDockerfileAddArchiveWithImpliedParentDir.
    assert_eq!(read(&out, "etc/dnf/dnf.conf"), "content0");
}

#[test]
fn add_url_keeps_name_and_takes_chmod() {
    let env = Env::new();
    let addr = serve(b"content1");
    // BuildKit's testAddURLChmod (build-arg mode=400): 0644 0755 0413 0400; without --chmod a
    // remote file is 0600 and named after the URL's last path component.
    let df = format!(
        "FROM busybox:local AS build
ADD --chmod=644 http://{addr}/foo /tmp/foo1
ADD --chmod=755 http://{addr}/foo /tmp/foo2
ADD --chmod=0413 http://{addr}/foo /tmp/foo3
ARG mode
ADD --chmod=${{mode}} http://{addr}/foo /tmp/foo4
ADD http://{addr}/dir/remote.bin /tmp/d/
RUN stat -c \"%04a\" /tmp/foo1 >> /dest && stat -c \"%04a\" /tmp/foo2 >> /dest && stat -c \"%04a\" /tmp/foo3 >> /dest && stat -c \"%04a\" /tmp/foo4 >> /dest && stat -c \"%n %04a\" /tmp/d/* >> /dest
FROM scratch
COPY --from=build /dest /dest
"
    );
    let dir = env.context("addurl", &df, &[]);
    let out = build_local(&env, &dir, &["--build-arg", "mode=400"]);
    assert_eq!(
        read(&out, "dest"),
        "0644\n0755\n0413\n0400\n/tmp/d/remote.bin 0600\n"
    );
}

/// BuildKit's testExcludedFilesOnCopy (plain directory context).
const EXCLUDE_DOCKERFILE: &str = r#"
# ignore all the image files
FROM scratch as builder1
COPY --exclude=*/*.png --exclude=*/*.jpeg . /1

# ignore all document files
FROM scratch as builder2
COPY --exclude=*/*.pdf --exclude=*/*.txt . /2

# ignore all mp3 files
FROM scratch as builder3
ADD --exclude=*.mp3 dir3/ /3/

# Ignore everything, keeping only .mpeg files, using src as a wildcard.
# it's a fake example, just to be sure that src as wildcards work as expected.
FROM scratch as builder4
COPY --exclude=*.mp3 --exclude=*.jpeg --exclude=*.png --exclude=*.pdf --exclude=*.txt dir* /4/

# Ignore everything, keeping only txt files.
# it's a fake example, just to be sure that src as wildcards work as expected.
FROM scratch as builder5
ADD --exclude=*.mp* --exclude=*.jpeg --exclude=*.png --exclude=*.pdf dir* /5

# Exclude all files. No idea how it could be useful, but it should not be forbidden.
FROM scratch as builder6
ADD --exclude=* dir* /6

FROM scratch
COPY --from=builder1 / /builder1
COPY --from=builder2 / /builder2
COPY --from=builder3 / /builder3
COPY --from=builder4 / /builder4
COPY --from=builder5 / /builder5
COPY --from=builder6 / /builder6
"#;

/// `find . | stat` of the `--output type=local` result BuildKit gave for `EXCLUDE_DOCKERFILE`.
const EXCLUDE_LISTING: &str = "./builder1 755 0:0 directory
./builder1/1 755 0:0 directory
./builder1/1/Dockerfile 644 0:0 regular file
./builder1/1/dir1 777 0:0 directory
./builder1/1/dir1/file-102.txt 600 0:0 regular file
./builder1/1/dir2 777 0:0 directory
./builder1/1/dir2/file-201.pdf 600 0:0 regular file
./builder1/1/dir3 777 0:0 directory
./builder1/1/dir3/file-301.mp3 600 0:0 regular file
./builder1/1/dir3/file-302.mpeg 600 0:0 regular file
./builder1/1/dir4 777 0:0 directory
./builder1/1/dir4/file-401.txt 600 0:0 regular file
./builder1/1/dir4/file-402.txt 777 0:0 symbolic link
./builder1/1/dir4/file-403.txt 777 0:0 symbolic link
./builder2 755 0:0 directory
./builder2/2 755 0:0 directory
./builder2/2/Dockerfile 644 0:0 regular file
./builder2/2/dir1 777 0:0 directory
./builder2/2/dir1/file-101.png 600 0:0 regular file
./builder2/2/dir1/file-103.jpeg 600 0:0 regular file
./builder2/2/dir2 777 0:0 directory
./builder2/2/dir2/file-202.jpeg 600 0:0 regular file
./builder2/2/dir2/file-203.png 600 0:0 regular file
./builder2/2/dir3 777 0:0 directory
./builder2/2/dir3/file-301.mp3 600 0:0 regular file
./builder2/2/dir3/file-302.mpeg 600 0:0 regular file
./builder2/2/dir4 777 0:0 directory
./builder3 755 0:0 directory
./builder3/3 755 0:0 directory
./builder3/3/file-302.mpeg 600 0:0 regular file
./builder4 755 0:0 directory
./builder4/4 755 0:0 directory
./builder4/4/file-302.mpeg 600 0:0 regular file
./builder5 755 0:0 directory
./builder5/5 755 0:0 directory
./builder5/5/file-102.txt 600 0:0 regular file
./builder5/5/file-401.txt 600 0:0 regular file
./builder5/5/file-402.txt 777 0:0 symbolic link
./builder5/5/file-403.txt 777 0:0 symbolic link
./builder6 755 0:0 directory
./builder6/6 755 0:0 directory
";

#[test]
fn copy_exclude_matches_buildkit() {
    let env = Env::new();
    let dir = env.context("exclude", EXCLUDE_DOCKERFILE, &[]);
    let script = "
mkdir dir1 dir2 dir3 dir4 && chmod 777 dir1 dir2 dir3 dir4
for f in 'dir1/file-101.png 2' 'dir1/file-102.txt 3' 'dir1/file-103.jpeg 4' 'dir2/file-201.pdf 6' \\
  'dir2/file-202.jpeg 7' 'dir2/file-203.png 8' 'dir3/file-301.mp3 9' 'dir3/file-302.mpeg 10' 'dir4/file-401.txt 11'
do set -- $f; printf %s \"$2\" > $1; chmod 600 $1; done
ln -s file-401.txt dir4/file-402.txt && ln -s file-404.txt dir4/file-403.txt
";
    let o = std::process::Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_ok(&o);
    let out = build_local(&env, &dir, &[]);
    let o = std::process::Command::new("sh")
        .arg("-ec")
        .arg("find . | sort | while read p; do [ \"$p\" = . ] || echo \"$p $(stat -c '%a %u:%g %F' \"$p\")\"; done")
        .current_dir(&out)
        .output()
        .unwrap();
    assert_ok(&o);
    assert_eq!(stdout(&o), EXCLUDE_LISTING);
}

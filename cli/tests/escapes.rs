//! Hostile inputs never reach the host (issue 11, build side): every path a Dockerfile, a build
//! context or a stage names is resolved inside its own root. Each case plants a "host" file
//! outside the root (in the test's work dir) that a string-joining resolver would reach, and checks
//! that rbuild reads the root's own file instead, or fails with "not found" as BuildKit does.
//!
//! `RBUILD_ESCAPES_BIN=/path/to/rbuild` runs the cases against another binary (to see them fail
//! on a build from before the fix).

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

const HOST_SECRET: &str = "HOST-SECRET";

/// The binary under test: `RBUILD_ESCAPES_BIN` or this build's.
fn binary() -> String {
    std::env::var("RBUILD_ESCAPES_BIN").unwrap_or_else(|_| bin().to_string())
}

fn rb(env: &Env, args: &[&str], vars: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(binary());
    c.args(args)
        .env("RBUILD_ROOT", env.root.path())
        .current_dir(env.work.path());
    for (k, v) in vars {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// A directory outside every root with `secret.txt` = HOST-SECRET: what an escape would read.
fn host_dir(env: &Env) -> PathBuf {
    let d = env.work.path().join("host-side");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("secret.txt"), HOST_SECRET).unwrap();
    d
}

/// Builds `ctx` as `tag`; the output (success or not).
fn build(env: &Env, tag: &str, ctx: &Path, vars: &[(&str, &Path)]) -> Output {
    rb(
        env,
        &[
            "build",
            "--progress",
            "plain",
            "-t",
            tag,
            ctx.to_str().unwrap(),
        ],
        vars,
    )
}

/// `cat`s `files` in the image; stdout.
fn cat_in(env: &Env, image: &str, script: &str) -> String {
    let out = rb(env, &["run", "--rm", image, "sh", "-c", script], &[]);
    assert_ok(&out);
    stdout(&out)
}

/// The build must fail with a "not found" message and never show the host's secret.
fn assert_not_found(out: &Output) {
    let all = format!("{}{}", stdout(out), stderr(out));
    assert!(!out.status.success(), "the build succeeded:\n{all}");
    assert!(all.contains("not found"), "{all}");
    assert!(!all.contains(HOST_SECRET), "{all}");
}

#[test]
fn copy_from_a_stage_follows_its_links_inside_the_stage() {
    let env = Env::new();
    let host = host_dir(&env);
    let h = host.display();
    // `/h -> /` in the stage is the stage's root; `/direct` names a host path, which inside the
    // stage is the stage's own copy; a source that is a link is followed (BuildKit's
    // FollowSymlinks), never copied as a link pointing out of the image.
    let ctx = env.context(
        "stage",
        &format!(
            "FROM busybox:local AS s\n\
             RUN mkdir -p {h} && echo STAGE > {h}/secret.txt && ln -s / /h && ln -s {h}/secret.txt /direct\n\
             FROM busybox:local\n\
             COPY --from=s /h{h}/secret.txt /stolen\n\
             COPY --from=s /direct /direct\n\
             COPY --from=s /h/h/h{h}/ /dir/\n"
        ),
        &[],
    );
    assert_ok(&build(&env, "esc-stage:t", &ctx, &[]));
    assert_eq!(
        cat_in(
            &env,
            "esc-stage:t",
            "cat /stolen /direct /dir/secret.txt; test -L /direct || echo regular"
        ),
        "STAGE\nSTAGE\nSTAGE\nregular\n"
    );
    // Missing in the stage: "not found", not the host's file.
    let ctx = env.context(
        "stage-missing",
        &format!(
            "FROM busybox:local AS s\nRUN ln -s / /h\nFROM busybox:local\nCOPY --from=s /h{h}/secret.txt /stolen\n"
        ),
        &[],
    );
    assert_not_found(&build(&env, "esc-stage2:t", &ctx, &[]));
}

#[test]
fn context_links_are_resolved_inside_the_context() {
    let env = Env::new();
    let host = host_dir(&env);
    let h = host.display();
    for (i, (link, target)) in [
        ("dirlink", host.clone()),
        ("up", PathBuf::from("../../../../../../..")),
    ]
    .iter()
    .enumerate()
    {
        let src = if *link == "up" {
            format!("up{h}/secret.txt")
        } else {
            format!("{link}/secret.txt")
        };
        let ctx = env.context(
            &format!("ctx{i}"),
            &format!("FROM busybox:local\nCOPY {src} /x\n"),
            &[],
        );
        symlink(target, ctx.join(link)).unwrap();
        assert_not_found(&build(&env, &format!("esc-ctx{i}:t"), &ctx, &[]));
    }
    // A link that stays inside the context is followed there; one inside a copied directory is
    // copied as a link.
    let ctx = env.context(
        "ctx-ok",
        "FROM busybox:local\nCOPY good/f /f\nCOPY tree /tree\n",
        &[("sub/f", "INSIDE"), ("tree/a", "A")],
    );
    symlink("/sub", ctx.join("good")).unwrap();
    symlink(&host, ctx.join("tree/out")).unwrap();
    assert_ok(&build(&env, "esc-ctx-ok:t", &ctx, &[]));
    assert_eq!(
        cat_in(&env, "esc-ctx-ok:t", "cat /f; echo; readlink /tree/out"),
        format!("INSIDE\n{h}\n")
    );
}

#[test]
fn dockerignore_is_not_bypassed_through_a_link() {
    let env = Env::new();
    for (i, src) in ["link/key", "abslink/key", "link", "dotdot/secret/key"]
        .iter()
        .enumerate()
    {
        let ctx = env.context(
            &format!("ign{i}"),
            &format!("FROM busybox:local\nCOPY {src} /x\n"),
            &[(".dockerignore", "secret\n"), ("secret/key", "IGNORED-KEY")],
        );
        symlink("secret", ctx.join("link")).unwrap();
        symlink("/secret", ctx.join("abslink")).unwrap();
        symlink("..", ctx.join("dotdot")).unwrap();
        let out = build(&env, &format!("esc-ign{i}:t"), &ctx, &[]);
        assert_not_found(&out);
        assert!(!stderr(&out).contains("IGNORED-KEY"));
    }
    // The whole context: the links come along as links, the ignored directory does not.
    let ctx = env.context(
        "ign-all",
        "FROM busybox:local\nCOPY . /all\nRUN --mount=type=bind,target=/m ls /m > /bound; test ! -e /m/link/key\n",
        &[(".dockerignore", "secret\n"), ("secret/key", "IGNORED-KEY")],
    );
    symlink("secret", ctx.join("link")).unwrap();
    assert_ok(&build(&env, "esc-ign-all:t", &ctx, &[]));
    assert_eq!(
        cat_in(
            &env,
            "esc-ign-all:t",
            "test -L /all/link && echo link; test -e /all/secret || echo no-secret; grep -c secret /bound || true"
        ),
        "link\nno-secret\n0\n"
    );
}

#[test]
fn bind_mount_sources_stay_in_their_root() {
    let env = Env::new();
    let host = host_dir(&env);
    let h = host.display();
    let ctx = env.context(
        "bind",
        &format!(
            "FROM busybox:local AS s\n\
             RUN mkdir -p {h} && echo STAGE > {h}/secret.txt && ln -s {h} /hl\n\
             FROM busybox:local\n\
             RUN --mount=type=bind,source=hostroot,target=/h cat /h/marker.txt > /ctx-seen && test ! -e /h{h}\n\
             RUN --mount=type=bind,from=s,source=/hl,target=/m cat /m/secret.txt > /stage-seen\n\
             RUN --mount=type=bind,source=hostroot,target=/rw,rw touch /rw/written\n"
        ),
        &[("marker.txt", "CONTEXT")],
    );
    symlink("/", ctx.join("hostroot")).unwrap();
    let out = build(&env, "esc-bind:t", &ctx, &[]);
    assert_ok(&out);
    assert!(!stderr(&out).contains(HOST_SECRET));
    assert_eq!(
        cat_in(&env, "esc-bind:t", "cat /ctx-seen; echo; cat /stage-seen"),
        "CONTEXT\nSTAGE\n"
    );
    assert!(!Path::new("/written").exists() && !ctx.join("written").exists());
}

#[test]
fn cache_mount_seed_stays_in_the_stage() {
    let env = Env::new();
    let host = host_dir(&env);
    let h = host.display();
    let ctx = env.context(
        "cache",
        &format!(
            "FROM busybox:local AS s\n\
             RUN mkdir -p {h} && echo STAGE > {h}/secret.txt && ln -s {h} /hl\n\
             FROM busybox:local\n\
             RUN --mount=type=cache,id=sec-paths-seed,from=s,source=/hl,target=/c cat /c/secret.txt > /seen\n"
        ),
        &[],
    );
    let out = build(&env, "esc-cache:t", &ctx, &[]);
    assert_ok(&out);
    assert_eq!(cat_in(&env, "esc-cache:t", "cat /seen"), "STAGE\n");
}

#[test]
fn workdir_and_copy_destinations_are_created_inside_the_image() {
    let env = Env::new();
    let host = host_dir(&env);
    let h = host.display();
    // Links in the image that name host paths (absolute, relative climbing out, dangling) are
    // followed inside the image when WORKDIR and COPY create directories through them.
    let ctx = env.context(
        "workdir",
        &format!(
            "FROM busybox:local\n\
             RUN ln -s {h} /w && ln -s ../../../../../../..{h} /up && ln -s {h}/new /dangling\n\
             WORKDIR /w/made\n\
             COPY f /up/copied/\n\
             COPY f /dangling/f\n"
        ),
        &[("f", "F")],
    );
    let out = build(&env, "esc-wd:t", &ctx, &[]);
    assert_ok(&out);
    for p in ["made", "copied", "new"] {
        assert!(!host.join(p).exists(), "{p} was created on the host");
    }
    assert_eq!(
        cat_in(
            &env,
            "esc-wd:t",
            &format!("test -d {h}/made && cat {h}/copied/f {h}/new/f")
        ),
        "FF"
    );
}

#[test]
fn secrets_live_on_a_tmpfs() {
    let env = Env::new();
    let secret = env.work.path().join("tok");
    std::fs::write(&secret, "S3CRET").unwrap();
    let ctx = env.context(
        "secret",
        "FROM busybox:local\nRUN --mount=type=secret,id=tok grep ' /run/secrets/tok ' /proc/mounts | cut -d' ' -f3 > /fstype && cat /run/secrets/tok > /dev/null\n",
        &[],
    );
    let out = rb(
        &env,
        &[
            "build",
            "--progress",
            "plain",
            "-t",
            "esc-secret:t",
            "--secret",
            &format!("id=tok,src={}", secret.display()),
            ctx.to_str().unwrap(),
        ],
        &[],
    );
    assert_ok(&out);
    assert_eq!(cat_in(&env, "esc-secret:t", "cat /fstype"), "tmpfs\n");
}

/// A git repository at `dir` with one commit.
fn git_repo(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new("sh")
        .arg("-ec")
        .arg(
            "git init -q -b main . && echo v1 > file.txt && git -c user.name=t -c user.email=t@e add . \
             && git -c user.name=t -c user.email=t@e commit -qm one",
        )
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert_ok(&out);
}

#[test]
fn add_git_runs_without_the_host_users_config_and_only_from_the_context() {
    if !have("git") {
        return;
    }
    let env = Env::new();
    // The invoking user's git config would run a hook on checkout.
    let home = env.work.path().join("home");
    let hooks = env.work.path().join("hooks");
    let marker = env.work.path().join("hook-ran");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&hooks).unwrap();
    std::fs::write(
        home.join(".gitconfig"),
        format!("[core]\n\thooksPath = {}\n", hooks.display()),
    )
    .unwrap();
    let hook = hooks.join("post-checkout");
    std::fs::write(&hook, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
    let exec = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&hook, exec).unwrap();
    let ctx = env.context("git-in", "", &[]);
    git_repo(&ctx.join("repo.git"));
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM busybox:local\nADD file://{}/repo.git /src\n",
            ctx.display()
        ),
    )
    .unwrap();
    assert_ok(&build(&env, "esc-git:t", &ctx, &[("HOME", &home)]));
    assert!(!marker.exists(), "the host user's hook ran");
    assert_eq!(cat_in(&env, "esc-git:t", "cat /src/file.txt"), "v1\n");
    // A repository outside the context is refused.
    let outside = env.work.path().join("outside.git");
    git_repo(&outside);
    let ctx = env.context(
        "git-out",
        &format!(
            "FROM busybox:local\nADD file://{} /src\n",
            outside.display()
        ),
        &[],
    );
    let out = build(&env, "esc-git2:t", &ctx, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("inside the build context"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn classics_tar_slip_and_dotdot_stay_inside() {
    let env = Env::new();
    let host = host_dir(&env);
    let h = host.display();
    let ctx = env.context("classic", "FROM busybox:local\nADD slip.tar /x/\n", &[]);
    // A tar whose entries climb out with `..` and through a link it planted itself.
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import tarfile, io\n\
             t = tarfile.open('{}/slip.tar', 'w')\n\
             def add(name, data=b'', kind=tarfile.REGTYPE, link=''):\n\
             \x20   i = tarfile.TarInfo(name); i.type = kind; i.linkname = link; i.size = len(data)\n\
             \x20   t.addfile(i, io.BytesIO(data))\n\
             add('../../../../../../..{h}/slipped', b'x')\n\
             add('l', kind=tarfile.SYMTYPE, link='{h}')\n\
             add('l/through-link', b'x')\n\
             t.close()\n",
            ctx.display()
        ))
        .output()
        .unwrap();
    assert_ok(&out);
    // Extracted inside the image (the `..` entry skipped, the link followed inside the root),
    // never written on the host.
    assert_ok(&build(&env, "esc-classic:t", &ctx, &[]));
    assert!(!host.join("slipped").exists() && !host.join("through-link").exists());
    assert_eq!(
        cat_in(
            &env,
            "esc-classic:t",
            &format!("cat {h}/through-link; test -e {h}/slipped || echo skipped")
        ),
        "xskipped\n"
    );
    // `..` above the context is the context's root: the host file is not there.
    let ctx = env.context(
        "dotdot",
        &format!("FROM busybox:local\nCOPY ../../../..{h}/secret.txt /y\n"),
        &[],
    );
    assert_not_found(&build(&env, "esc-dotdot:t", &ctx, &[]));
    // WORKDIR naming a magic link: the step fails in the container, never runs in a host dir.
    let ctx = env.context(
        "fdcwd",
        "FROM busybox:local\nWORKDIR /proc/self/fd/7\nRUN ls .. > /seen\n",
        &[],
    );
    let out = build(&env, "esc-fd:t", &ctx, &[]);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("working directory"),
        "{}",
        stderr(&out)
    );
}

/// A copied directory that becomes a link to a host directory between two builds (and back):
/// the rebuild, which shares unchanged files with the previous result, copies the link as a
/// link, never links or copies the host's file, and never follows the previous result's link
/// when it looks for files to share.
#[test]
fn a_directory_that_becomes_a_link_between_builds_stays_in_the_context() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let host = host_dir(&env);
    let ctx = env.context(
        "flip",
        "FROM busybox:local\nCOPY tree /tree\n",
        &[("tree/a", "A"), ("tree/sub/secret.txt", HOST_SECRET)],
    );
    assert_ok(&build(&env, "esc-flip:t", &ctx, &[]));
    // The context's own file with the host file's content: a dir -> a link to the host dir.
    std::fs::remove_dir_all(ctx.join("tree/sub")).unwrap();
    symlink(&host, ctx.join("tree/sub")).unwrap();
    assert_ok(&build(&env, "esc-flip:t", &ctx, &[]));
    assert_eq!(
        cat_in(&env, "esc-flip:t", "readlink /tree/sub; cat /tree/a"),
        format!("{}\nA", host.display())
    );
    // And back: the previous result's `tree/sub` is that link; nothing may be shared through it.
    std::fs::remove_file(ctx.join("tree/sub")).unwrap();
    std::fs::create_dir(ctx.join("tree/sub")).unwrap();
    std::fs::write(ctx.join("tree/sub/secret.txt"), HOST_SECRET).unwrap();
    assert_ok(&build(&env, "esc-flip:t", &ctx, &[]));
    assert_eq!(
        cat_in(
            &env,
            "esc-flip:t",
            "test -L /tree/sub && echo link; cat /tree/sub/secret.txt"
        ),
        HOST_SECRET
    );
    let m = std::fs::metadata(host.join("secret.txt")).unwrap();
    assert_eq!(m.nlink(), 1, "the host's file was hard-linked");
}

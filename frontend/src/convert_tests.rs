//! Tests of [`super::convert`] with a fake image resolver.

use super::*;
use std::cell::RefCell;

#[derive(Default)]
struct Fake {
    configs: HashMap<String, ImageConfig>,
    calls: RefCell<Vec<String>>,
}

impl ImageResolver for Fake {
    fn resolve_config(&self, image: &ImageRef, _p: &Platform) -> Result<ImageConfig, String> {
        self.calls.borrow_mut().push(image.to_string());
        self.configs
            .get(&image.to_string())
            .cloned()
            .ok_or_else(|| format!("image {image} not found"))
    }
}

fn fake() -> Fake {
    let mut f = Fake::default();
    f.configs.insert(
        "busybox:local".into(),
        ImageConfig {
            env: vec!["PATH=/usr/bin:/bin".into()],
            cmd: Some(vec!["sh".into()]),
            ..Default::default()
        },
    );
    f.configs
        .insert("alpine:latest".into(), ImageConfig::default());
    f
}

fn opts() -> BuildOptions {
    BuildOptions {
        dockerfile_name: "Dockerfile".into(),
        platform: Some("linux/amd64".parse().unwrap()),
        ..Default::default()
    }
}

fn conv(src: &str, o: &BuildOptions) -> Result<BuildGraph, Error> {
    convert(src, o, &fake())
}

fn exec(g: &BuildGraph, n: NodeIndex) -> &ExecOp {
    match &g.graph[n].op {
        Op::Exec(e) => e,
        o => panic!("not exec: {o:?}"),
    }
}

fn parents(g: &BuildGraph, n: NodeIndex, kind: Input) -> Vec<NodeIndex> {
    use petgraph::visit::EdgeRef;
    g.graph
        .edges_directed(n, petgraph::Direction::Incoming)
        .filter(|e| *e.weight() == kind)
        .map(|e| e.source())
        .collect()
}

const WEB: &str = "\
FROM busybox:local AS build
RUN mkdir /out && echo hi > /out/hello
RUN echo more >> /out/hello

FROM busybox:local
WORKDIR /app
ENV GREETING=hello NAME=world
COPY index.html ./
COPY --from=build /out/hello /app/hello
CMD [\"cat\", \"/app/hello\"]
";

#[test]
fn multi_stage_graph() {
    let f = fake();
    let g = convert(WEB, &opts(), &f).unwrap();
    assert_eq!(g.stages.len(), 2);
    assert_eq!(g.target, 1);
    // one shared image node, two RUNs, WORKDIR's mkdir, two COPYs
    assert_eq!(g.graph.node_count(), 6);
    assert_eq!(f.calls.borrow().len(), 2);
    let build = &g.stages[0];
    assert_eq!(build.name.as_deref(), Some("build"));
    let run2 = build.node;
    assert_eq!(
        g.graph[run2].display,
        "[build 3/3] RUN echo more >> /out/hello"
    );
    let e = exec(&g, run2);
    assert_eq!(e.args, vec!["/bin/sh", "-c", "echo more >> /out/hello"]);
    assert_eq!(e.cwd, "/");
    assert_eq!(e.env, vec!["PATH=/usr/bin:/bin"]);
    let run1 = parents(&g, run2, Input::Rootfs)[0];
    let img = parents(&g, run1, Input::Rootfs)[0];
    assert!(matches!(g.graph[img].op, Op::Image { .. }));
    // the shared image node is named by the stage that used it first (the target)
    assert_eq!(g.graph[img].display, "[stage-1 1/4] FROM busybox:local");

    let fin = &g.stages[1];
    let copy2 = fin.node;
    let Op::Copy(c) = &g.graph[copy2].op else {
        panic!()
    };
    assert_eq!(c.from, CopyFrom::Input);
    assert_eq!(c.srcs, vec!["/out/hello"]);
    assert_eq!(c.dest, "/app/hello");
    assert_eq!(parents(&g, copy2, Input::CopySource), vec![run2]);
    let copy1 = parents(&g, copy2, Input::Rootfs)[0];
    let Op::Copy(c1) = &g.graph[copy1].op else {
        panic!()
    };
    assert_eq!(c1.from, CopyFrom::Context);
    assert_eq!(c1.dest, "/app/");
    // WORKDIR creates its directory, as BuildKit's Mkdir file op.
    let mkdir = parents(&g, copy1, Input::Rootfs)[0];
    assert_eq!(
        g.graph[mkdir].op,
        Op::Mkdir {
            path: "/app".into(),
            user: String::new()
        }
    );
    assert_eq!(g.graph[mkdir].display, "[stage-1 2/4] WORKDIR /app");
    assert_eq!(parents(&g, mkdir, Input::Rootfs), vec![img]);
    assert_eq!(
        g.graph[copy2].display,
        "[stage-1 4/4] COPY --from=build /out/hello /app/hello"
    );

    assert_eq!(fin.config.working_dir, "/app");
    assert_eq!(
        fin.config.env,
        vec!["PATH=/usr/bin:/bin", "GREETING=hello", "NAME=world"]
    );
    assert_eq!(
        fin.config.cmd,
        Some(vec!["cat".into(), "/app/hello".into()])
    );
    let h: Vec<(&str, bool)> = fin
        .history
        .iter()
        .map(|h| (h.created_by.as_str(), h.empty_layer))
        .collect();
    assert_eq!(
        h,
        vec![
            ("WORKDIR /app", false),
            ("ENV GREETING=hello NAME=world", true),
            ("COPY index.html /app/ # buildkit", false),
            ("COPY /out/hello /app/hello # buildkit", false),
            ("CMD [\"cat\" \"/app/hello\"]", true),
        ]
    );
    assert_eq!(
        build.history[0].created_by,
        "RUN /bin/sh -c mkdir /out && echo hi > /out/hello # buildkit"
    );
    assert_eq!(build.history[0].comment.as_deref(), Some(HISTORY_COMMENT));
}

#[test]
fn target_prunes_stages() {
    let mut o = opts();
    o.target = Some("build".into());
    let g = conv(WEB, &o).unwrap();
    assert_eq!(g.stages.len(), 1);
    assert_eq!(g.graph.node_count(), 3);
    assert!(g
        .warnings
        .iter()
        .any(|w| w.contains("skipping stage stage-1")));
    o.target = Some("buidl".into());
    let e = conv(WEB, &o).unwrap_err().to_string();
    assert!(e.contains("did you mean \"build\""), "{e}");
    let g = conv(
        "FROM scratch AS a\nFROM busybox:local AS b\nRUN x\n",
        &opts(),
    )
    .unwrap();
    assert_eq!(g.stages.len(), 1);
    assert_eq!(g.graph.node_count(), 2);
}

#[test]
fn errors_name_file_line_instruction() {
    let mut o = opts();
    o.dockerfile_name = "testdata/web/Dockerfile".into();
    let e = conv("FROM busybox:local\nRUN x\nCOPY --from=buidl /a /b\n", &o)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("testdata/web/Dockerfile:3:13: no stage or image named \"buidl\""),
        "{e}"
    );
    // The offending line, with a caret under the stage name.
    assert!(
        e.ends_with(&format!(
            "\n  |\n3 | COPY --from=buidl /a /b\n  | {}^^^^^",
            " ".repeat(12)
        )),
        "{e}"
    );
    let e = conv(
        "FROM busybox:local AS build\nFROM busybox:local\nCOPY --from=biuld /a /b\n",
        &o,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("did you mean stage \"build\"?"), "{e}");
    assert!(e.starts_with("testdata/web/Dockerfile:3:13:"), "{e}");
    let e = conv("FROM busybox:local AS a\nCOPY --from=a /x /y\n", &o)
        .unwrap_err()
        .to_string();
    assert!(e.contains("circular"), "{e}");
    // FROM sees only earlier stages (BuildKit): `b` here is an image name.
    let e = conv("FROM b AS a\nFROM a AS b\n", &o)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot load base image b"), "{e}");
    let e = conv(
        "FROM busybox:local AS a\nCOPY --from=b /x /y\nFROM busybox:local AS b\n",
        &BuildOptions {
            target: Some("a".into()),
            ..o.clone()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("needs to be defined before the current stage a"),
        "{e}"
    );
    let e = conv("FROM scratch AS a\nFROM scratch AS A\n", &o)
        .unwrap_err()
        .to_string();
    assert!(e.contains("duplicate stage name"), "{e}");
    let e = conv("RUN x\nFROM scratch\n", &o).unwrap_err().to_string();
    assert!(e.contains(":1:1: no FROM"), "{e}");
    assert!(e.contains("\n1 | RUN x\n  | ^^^"), "{e}");
    let e = conv("ARG x\n", &o).unwrap_err().to_string();
    assert!(e.contains("no FROM"), "{e}");
    let e = conv("FROM nope:1\n", &o).unwrap_err().to_string();
    assert!(e.contains(":1:6: cannot load base image"), "{e}");
    assert!(e.ends_with("1 | FROM nope:1\n  |      ^^^^^^"), "{e}");
    let e = conv("FROM scratch\nCOPY --bad a b\n", &o)
        .unwrap_err()
        .to_string();
    assert!(e.contains(":2:6: unknown flag: --bad"), "{e}");
    assert!(e.ends_with("2 | COPY --bad a b\n  |      ^^^^^"), "{e}");
    let e = conv("FROM scratch\nCOPY --from=5 a b\n", &o)
        .unwrap_err()
        .to_string();
    assert!(e.contains("out of range"), "{e}");
}

#[test]
fn arg_scoping() {
    let src = "\
ARG BASE=busybox
ARG TAG=local
ARG UNUSED_GLOBAL=1
FROM ${BASE}:${TAG} AS one
RUN echo $TAG
ARG TAG
ARG V=default-$TAG
RUN echo $V
FROM one
ARG TARGETARCH
ARG P=x
RUN echo $TARGETARCH $P
";
    let mut o = opts();
    o.build_args = vec![("P".into(), "y".into()), ("NOPE".into(), "1".into())];
    let g = conv(src, &o).unwrap();
    let one = &g.stages[0];
    let r1 = parents(&g, one.node, Input::Rootfs)[0];
    assert_eq!(exec(&g, r1).env, vec!["PATH=/usr/bin:/bin"]);
    assert_eq!(
        g.graph[parents(&g, r1, Input::Rootfs)[0]].display,
        "[one 1/3] FROM busybox:local"
    );
    let e = exec(&g, one.node);
    assert_eq!(
        e.env,
        vec!["PATH=/usr/bin:/bin", "TAG=local", "V=default-local"]
    );
    assert_eq!(
        one.history.last().unwrap().created_by,
        "RUN |2 TAG=local V=default-local /bin/sh -c echo $V # buildkit"
    );
    let two = &g.stages[1];
    let e = exec(&g, two.node);
    // FROM a stage continues its chain and config, not its ARGs
    assert_eq!(parents(&g, two.node, Input::Rootfs), vec![one.node]);
    assert_eq!(e.env, vec!["PATH=/usr/bin:/bin", "TARGETARCH=amd64", "P=y"]);
    assert_eq!(two.history.len(), one.history.len() + 3);
    assert!(
        g.warnings.iter().any(|w| w.contains("[NOPE]")),
        "{:?}",
        g.warnings
    );
    // a build-arg overrides a global ARG used in FROM
    o.build_args = vec![("TAG".into(), "other".into())];
    let e = conv(src, &o).unwrap_err().to_string();
    assert!(e.contains("busybox:other"), "{e}");
}

#[test]
fn env_workdir_user_and_shell() {
    let src = "\
FROM busybox:local
ENV DIR=/srv
WORKDIR $DIR
WORKDIR app
USER 1000:1000
SHELL [\"/bin/bash\", \"-euc\"]
RUN --network=none --mount=type=cache,target=.cache echo ${DIR}
ENTRYPOINT run.sh
EXPOSE 80 8000-8001/udp
VOLUME /data
LABEL a=b \"c d\"=e
STOPSIGNAL SIGINT
HEALTHCHECK --interval=5s CMD true
ONBUILD RUN echo triggered
";
    let g = conv(src, &opts()).unwrap();
    let s = &g.stages[0];
    let e = exec(&g, s.node);
    assert_eq!(e.cwd, "/srv/app");
    assert_eq!(e.user, "1000:1000");
    assert_eq!(e.args, vec!["/bin/bash", "-euc", "echo ${DIR}"]);
    assert_eq!(e.network, NetworkMode::None);
    assert_eq!(e.mounts[0].target, "/srv/app/.cache");
    let c = &s.config;
    assert_eq!(c.working_dir, "/srv/app");
    assert_eq!(
        c.entrypoint,
        Some(vec!["/bin/bash".into(), "-euc".into(), "run.sh".into()])
    );
    assert_eq!(c.cmd, None, "ENTRYPOINT resets an inherited CMD");
    assert_eq!(c.exposed_ports, vec!["80/tcp", "8000/udp", "8001/udp"]);
    assert_eq!(c.volumes, vec!["/data"]);
    assert_eq!(c.labels.get("c d").map(String::as_str), Some("e"));
    assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(
        c.healthcheck,
        Some(serde_json::json!({"Test": ["CMD-SHELL", "true"], "Interval": 5_000_000_000i64}))
    );
    assert_eq!(c.on_build, vec!["RUN echo triggered"]);
    assert_eq!(c.shell, Some(vec!["/bin/bash".into(), "-euc".into()]));
    let hist: Vec<&str> = s.history.iter().map(|h| h.created_by.as_str()).collect();
    assert!(
        hist.contains(&"EXPOSE [80/tcp 8000/udp 8001/udp]"),
        "{hist:?}"
    );
    assert!(hist.contains(&"ENTRYPOINT [\"/bin/bash\" \"-euc\" \"run.sh\"]"));
    assert!(hist.contains(
        &"HEALTHCHECK {Test:[CMD-SHELL true] Interval:5s Timeout:0s StartPeriod:0s StartInterval:0s Retries:0}"
    ));
    assert!(hist.contains(&"SHELL [/bin/bash -euc]"));
}

#[test]
fn onbuild_triggers_run_after_from() {
    let mut f = fake();
    f.configs.insert(
        "base:1".into(),
        ImageConfig {
            on_build: vec!["RUN echo from-trigger".into(), "ENV T=1".into()],
            ..Default::default()
        },
    );
    let g = convert("FROM base:1\nRUN echo mine\n", &opts(), &f).unwrap();
    let s = &g.stages[0];
    assert!(s.config.on_build.is_empty());
    // base:1 sets no PATH: the stage gets the default one (BuildKit).
    assert_eq!(
        exec(&g, s.node).env,
        vec![format!("PATH={DEFAULT_PATH}"), "T=1".into()]
    );
    assert_eq!(s.config.env[0], format!("PATH={DEFAULT_PATH}"));
    // BuildKit numbers FROM, RUN/COPY/ADD/WORKDIR and every trigger (cmdTotal); a single stage
    // has no name in the prefix; a trigger's step says ONBUILD.
    assert_eq!(g.graph[s.node].display, "[3/4] RUN echo mine");
    let trig = parents(&g, s.node, Input::Rootfs)[0];
    assert_eq!(g.graph[trig].display, "[2/4] ONBUILD RUN echo from-trigger");
    let first = parents(&g, s.node, Input::Rootfs)[0];
    assert_eq!(exec(&g, first).args[2], "echo from-trigger");
}

#[test]
fn heredocs_and_image_sources() {
    let src = "\
FROM busybox:local
ENV NAME=world
RUN <<EOF
echo hi
EOF
COPY <<A <<'B' /etc/
hello $NAME
A
raw $NAME
B
COPY --from=alpine /etc/os-release /x
COPY --from=busybox:local /bin/sh /y
";
    let g = conv(src, &opts()).unwrap();
    let s = &g.stages[0];
    // image nodes are shared: busybox:local once, alpine once
    let images = g
        .graph
        .node_weights()
        .filter(|n| matches!(n.op, Op::Image { .. }))
        .count();
    assert_eq!(images, 2);
    let mut n = s.node;
    let mut ops = Vec::new();
    loop {
        ops.push(g.graph[n].op.clone());
        match parents(&g, n, Input::Rootfs).first() {
            Some(p) => n = *p,
            None => break,
        }
    }
    ops.reverse();
    assert!(matches!(&ops[1], Op::Exec(e) if e.args == vec!["/bin/sh", "-c", "echo hi\n"]));
    assert!(
        matches!(&ops[2], Op::Copy(c) if c.from == CopyFrom::Inline { name: "A".into(), content: "hello world\n".into() })
    );
    assert!(
        matches!(&ops[3], Op::Copy(c) if c.from == CopyFrom::Inline { name: "B".into(), content: "raw $NAME\n".into() })
    );
    let layers = s.history.iter().filter(|h| !h.empty_layer).count();
    assert_eq!(layers, ops.len() - 1);
    assert_eq!(s.history[2].created_by, "COPY <<A /etc/ # buildkit");
}

/// No input makes the frontend panic: every prefix of every conformance Dockerfile goes
/// through the whole pipeline.
#[test]
fn prefixes_of_conformance_files_never_panic() {
    let dir = crate::test_data::conformance("buildkit/parser/testfiles");
    let entries = std::fs::read_dir(&dir).unwrap();
    let f = fake();
    let mut n = 0;
    for e in entries.flatten() {
        let Ok(bytes) = std::fs::read(e.path().join("Dockerfile")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        for (k, &i) in bounds.iter().enumerate() {
            if k % 5 == 0 || text[i..].starts_with('\n') {
                let _ = convert(&text[..i], &opts(), &f);
                n += 1;
            }
        }
        let _ = convert(&text, &opts(), &f);
    }
    assert!(n > 100);
}

#[test]
fn testdata_features_dockerfile() {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/frontend/features/Dockerfile");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let g = conv(&text, &opts()).unwrap();
    assert_eq!(g.stages.len(), 2);
    let fin = &g.stages[g.target];
    assert_eq!(fin.config.working_dir, "/app");
    assert_eq!(
        fin.config.cmd,
        Some(vec!["/bin/sh".into(), "-ec".into(), "cat /app/msg".into()])
    );
    assert_eq!(fin.config.exposed_ports, vec!["8080/tcp"]);
    let Op::Copy(c) = &g.graph[fin.node].op else {
        panic!()
    };
    assert_eq!(c.dest, "/app/");
    assert_eq!(c.chmod.as_deref(), Some("0644"));
    let build = &g.stages[0];
    let Op::Copy(conf) = &g.graph[build.node].op else {
        panic!()
    };
    assert_eq!(
        conf.from,
        CopyFrom::Inline {
            name: "CONF".into(),
            content: "name=hello\n".into()
        }
    );
    assert_eq!(conf.dest, "/out/app.conf");
}

/// The error of converting `src`, rendered.
fn err_of(src: &str) -> String {
    conv(src, &opts()).unwrap_err().to_string()
}

/// `n` spaces then `^` × `w`: the caret line under column `n + 1`.
fn caret(n: usize, w: usize) -> String {
    format!("{}{}", " ".repeat(n), "^".repeat(w))
}

#[test]
fn unknown_instruction_is_pretty_with_did_you_mean() {
    let e = err_of("FROM busybox:local\nRUN true\nFRUM busybox\n");
    assert_eq!(
        e,
        format!(
            "Dockerfile:3:1: unknown instruction: FRUM (did you mean FROM?)\n  |\n3 | FRUM busybox\n  | {}",
            caret(0, 4)
        )
    );
    // Indented, lower case, far from any instruction: column of the word, no suggestion.
    let e = err_of("FROM busybox:local\n   frobnicate now\n");
    assert!(
        e.starts_with("Dockerfile:2:4: unknown instruction: frobnicate\n"),
        "{e}"
    );
    assert!(
        e.ends_with(&format!("2 |    frobnicate now\n  | {}", caret(3, 10))),
        "{e}"
    );
    // Ten lines and more widen the gutter.
    let src = format!("FROM busybox:local\n{}WROKDIR /x\n", "RUN true\n".repeat(9));
    let e = err_of(&src);
    assert!(
        e.starts_with("Dockerfile:11:1: unknown instruction: WROKDIR (did you mean WORKDIR?)"),
        "{e}"
    );
    assert!(
        e.ends_with(&format!("\n   |\n11 | WROKDIR /x\n   | {}", caret(0, 7))),
        "{e}"
    );
}

#[test]
fn bad_flags_point_at_the_flag_and_suggest() {
    let e = err_of("FROM busybox:local\nCOPY --form=a x /y\n");
    assert!(
        e.starts_with("Dockerfile:2:6: unknown flag: --form (did you mean --from? COPY accepts"),
        "{e}"
    );
    assert!(
        e.ends_with(&format!("2 | COPY --form=a x /y\n  | {}", caret(5, 6))),
        "{e}"
    );
    let e = err_of("FROM busybox:local\nRUN --netwrok=none true\n");
    assert!(
        e.contains(":2:5: unknown flag: --netwrok (did you mean --network?"),
        "{e}"
    );
    let e = err_of("FROM busybox:local\nWORKDIR --x /a\n");
    assert!(
        e.contains(":2:9: unknown flag: --x (WORKDIR takes no flags)"),
        "{e}"
    );
    let e = err_of("FROM busybox:local\nCOPY --link --link a /b\n");
    assert!(e.contains(":2:6: duplicate flag specified: --link"), "{e}");
    let e = err_of("FROM busybox:local\nCOPY --from a /b\n");
    assert!(
        e.contains(":2:6: missing a value on flag: --from=<value>"),
        "{e}"
    );
    // A flag on a continuation line: that line is the one shown.
    let e = err_of("FROM busybox:local\nRUN true\nCOPY \\\n  --chmown=1 \\\n  a /b\n");
    assert!(
        e.starts_with("Dockerfile:4:3: unknown flag: --chmown (did you mean --chown?"),
        "{e}"
    );
    assert!(
        e.ends_with(&format!("4 |   --chmown=1 \\\n  | {}", caret(2, 8))),
        "{e}"
    );
}

#[test]
fn unknown_stages_suggest_a_stage() {
    let src = "FROM busybox:local AS builder\nFROM busybox:local\nRUN --mount=from=bulder,target=/b true\n";
    let e = err_of(src);
    assert!(
        e.starts_with(
            "Dockerfile:3:18: no stage or image named \"bulder\" (did you mean stage \"builder\"?)"
        ),
        "{e}"
    );
    assert!(e.ends_with(&caret(17, 6)), "{e}");
    let mut o = opts();
    o.target = Some("buidler".into());
    let e = conv(src, &o).unwrap_err().to_string();
    assert!(
        e.contains("target stage \"buidler\" could not be found; did you mean \"builder\"?"),
        "{e}"
    );
    let e = err_of("FROM busybox:local AS a\nFROM busybox:local\nCOPY --from=7 /x /y\n");
    assert!(
        e.starts_with("Dockerfile:3:13: stage index 7 is out of range"),
        "{e}"
    );
}

#[test]
fn bad_arg_and_env_point_at_the_word() {
    let e = err_of("FROM busybox:local\nENV A=1 B\n");
    assert!(
        e.starts_with("Dockerfile:2:9: Syntax error - can't find = in \"B\""),
        "{e}"
    );
    assert!(e.contains("write `B=<value>`"), "{e}");
    assert!(
        e.ends_with(&format!("2 | ENV A=1 B\n  | {}", caret(8, 1))),
        "{e}"
    );
    let e = err_of("FROM busybox:local\nLABEL onlykey\n");
    assert!(
        e.starts_with("Dockerfile:2:7: LABEL must have two arguments"),
        "{e}"
    );
    let e = err_of("FROM busybox:local\nARG =x\n");
    assert!(
        e.starts_with("Dockerfile:2:5: ARG names can not be blank"),
        "{e}"
    );
    let e = err_of("FROM busybox:local\nENV =x\n");
    assert!(
        e.starts_with("Dockerfile:2:5: ENV names can not be blank"),
        "{e}"
    );
    // A failed expansion points at the word that failed, on its own line of a continuation.
    let e = err_of("FROM busybox:local\nENV A=1 \\\n    B=${A:?is required}x C=${D\n");
    assert!(e.starts_with("Dockerfile:3:"), "{e}");
    assert!(e.contains("\n3 |     B=${A:?is required}x C=${D\n"), "{e}");
    let e = err_of("FROM busybox:local\nWORKDIR ${NOPE:?set NOPE}\n");
    assert!(
        e.starts_with("Dockerfile:2:9: failed to process \"${NOPE:?set NOPE}\": NOPE: set NOPE"),
        "{e}"
    );
    let e = err_of("ARG V=${\nFROM busybox:local\n");
    assert!(e.starts_with("Dockerfile:1:1: "), "{e}");
    let e = err_of("FROM busybox:local AS 1st\n");
    assert!(
        e.starts_with("Dockerfile:1:23: invalid name for build stage: \"1st\""),
        "{e}"
    );
}

#[test]
fn syntax_errors_have_line_and_column() {
    let e = err_of("FROM busybox:local\nRUN <<EOF\necho hi\n");
    assert!(
        e.starts_with("Dockerfile:2:7: unterminated heredoc: add a line `EOF` after its body"),
        "{e}"
    );
    assert!(
        e.ends_with(&format!("2 | RUN <<EOF\n  | {}", caret(6, 3))),
        "{e}"
    );
    let e = err_of("# escape=x\nFROM busybox:local\n");
    assert!(
        e.starts_with("Dockerfile:1:10: invalid escape token 'x'"),
        "{e}"
    );
    let e = err_of("# escape=`\n# escape=`\nFROM busybox:local\n");
    assert!(
        e.starts_with("Dockerfile:2:10: only one escape parser directive"),
        "{e}"
    );
    let e = err_of("FROM busybox:local\nCMD [\"a\", 1]\n");
    assert!(
        e.starts_with("Dockerfile:2:1: when using JSON array syntax"),
        "{e}"
    );
    let e = err_of("# just a comment\n");
    assert!(
        e.starts_with("Dockerfile:1:1: file with no instructions"),
        "{e}"
    );
}

#[test]
fn snippets_survive_crlf_tabs_bom_and_missing_source() {
    let e = err_of("\u{feff}FROM busybox:local\r\n\tFRUM x\r\n");
    assert!(
        e.starts_with("Dockerfile:2:2: unknown instruction: FRUM"),
        "{e}"
    );
    // A tab is shown as one space so the caret lines up.
    assert!(
        e.ends_with(&format!("2 |  FRUM x\n  | {}", caret(1, 4))),
        "{e}"
    );
    let e = err_of("FROM busybox:local\nRUN true\nFRUM é\n");
    assert!(e.contains("3 | FRUM é\n"), "{e}");
    // Without the source (parse_instruction alone), the instruction is named instead.
    let df = parser::parse("FROM a\nFRUM x\n").unwrap();
    let e = instructions::parse_instruction(&df.instructions[1]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Dockerfile:2: FRUM x: unknown instruction: FRUM (did you mean FROM?)"
    );
    assert_eq!(e.column(), None);
    let e = e.with_source("FROM a\nFRUM x\n");
    assert_eq!((e.line(), e.column()), (Some(2), Some(1)));
    // A source that does not have the line (e.g. an ONBUILD trigger's own text) is no panic.
    let e = instructions::parse_instruction(&df.instructions[1])
        .unwrap_err()
        .with_source("");
    assert_eq!(e.column(), None);
}

/// Expected values from BuildKit v0.32.0-57-g73ed6825c (moby/buildkit 73ed6825c, built from
/// source) on the same Dockerfiles.
#[test]
fn buildkit_stage_defaults_and_builtin_args() {
    let src = "\
ARG G=$TARGETPLATFORM/$BUILDARCH/$TARGETSTAGE
FROM scratch AS s
FROM busybox:local AS final
ARG G
RUN echo $TARGETARCH
ARG TARGETARCH
ARG TARGETSTAGE
RUN echo $TARGETARCH
";
    let g = conv(src, &opts()).unwrap();
    let fin = &g.stages[g.target];
    let r2 = exec(&g, fin.node);
    let r1 = exec(&g, parents(&g, fin.node, Input::Rootfs)[0]);
    // Undeclared built-ins are not in a stage's environment; declared ones are.
    assert!(!r1.env.iter().any(|e| e.starts_with("TARGETARCH=")));
    assert!(
        r1.env.contains(&"G=linux/amd64/amd64/final".to_string()),
        "{:?}",
        r1.env
    );
    assert!(r2.env.contains(&"TARGETARCH=amd64".to_string()));
    assert!(r2.env.contains(&"TARGETSTAGE=final".to_string()));
    // An unnamed target stage is `default`.
    let g = conv("FROM busybox:local\nARG TARGETSTAGE\nRUN x\n", &opts()).unwrap();
    assert!(exec(&g, g.stages[0].node)
        .env
        .contains(&"TARGETSTAGE=default".to_string()));
    // FROM scratch: WorkingDir "/" and the default PATH (BuildKit's emptyImage).
    let g = conv("FROM scratch\nCOPY a /a\n", &opts()).unwrap();
    let c = &g.stages[0].config;
    assert_eq!(c.working_dir, "/");
    assert_eq!(c.env, vec![format!("PATH={DEFAULT_PATH}")]);
    assert_eq!(g.graph[g.stages[0].node].display, "[1/1] COPY a /a");
}

#[test]
fn buildkit_mount_expansion_and_step_width() {
    let src = "\
FROM busybox:local
ARG MNT_TYPE=cache
ENV P=/c
RUN --mount=type=$MNT_TYPE,target=$P/x,id=$MNT_TYPE a
RUN b
RUN c
RUN d
RUN e
RUN f
RUN g
RUN h
RUN i
";
    let g = conv(src, &opts()).unwrap();
    let mut n = g.stages[0].node;
    assert_eq!(g.graph[n].display, "[10/10] RUN i");
    for _ in 0..8 {
        n = parents(&g, n, Input::Rootfs)[0];
    }
    assert_eq!(
        g.graph[n].display,
        "[ 2/10] RUN --mount=type=cache,target=/c/x,id=cache a"
    );
    let m = &exec(&g, n).mounts[0];
    assert_eq!(m.kind, "cache");
    assert_eq!(m.target, "/c/x");
    assert_eq!(m.options, vec![("id".to_string(), "cache".to_string())]);
    // `from=` is never expanded (BuildKit: "'from' doesn't support variable expansion").
    let e = conv(
        "FROM busybox:local\nENV t=x\nRUN --mount=from=$t,target=/m ls\n",
        &opts(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("'from' doesn't support variable expansion"),
        "{e}"
    );
    // An expanded type is still checked.
    let e = conv(
        "FROM busybox:local\nARG T=nfs\nRUN --mount=type=$T,target=/m ls\n",
        &opts(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unsupported mount type \"nfs\""), "{e}");
}

#[test]
fn buildkit_source_date_epoch_arg() {
    let g = conv("ARG SOURCE_DATE_EPOCH=1445412480\nFROM scratch\n", &opts()).unwrap();
    assert_eq!(g.source_date_epoch, Some(1445412480));
    let e = conv(
        "ARG SOURCE_DATE_EPOCH=not-a-timestamp\nFROM scratch\n",
        &opts(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("invalid SOURCE_DATE_EPOCH: not-a-timestamp"),
        "{e}"
    );
    let mut o = opts();
    o.build_args = vec![("SOURCE_DATE_EPOCH".into(), "7".into())];
    let g = conv("ARG SOURCE_DATE_EPOCH=1\nFROM scratch\n", &o).unwrap();
    assert_eq!(g.source_date_epoch, Some(7));
    assert!(g.warnings.is_empty(), "{:?}", g.warnings);
}

/// Issue 12: with an unneeded stage dropped, `stages` is shorter than the Dockerfile's stage
/// list; `BuildGraph::stage` maps every node's Dockerfile position to its stage.
#[test]
fn node_stage_positions_map_to_kept_stages() {
    let src = "FROM busybox:local AS a\nENV WHO=a\nRUN echo a\n\
               FROM busybox:local AS unused\n\
               FROM busybox:local\nENV WHO=final\nCOPY --from=a /x /x\nRUN cat /x\n";
    let g = conv(src, &opts()).unwrap();
    assert_eq!(g.stages.len(), 2);
    assert_eq!(
        g.stages.iter().map(|s| s.index).collect::<Vec<_>>(),
        vec![0, 2]
    );
    assert_eq!(g.target, 1);
    assert!(g.stage(1).is_none(), "the unused stage is not in the graph");
    for n in g.graph.node_indices() {
        let node = &g.graph[n];
        let st = g
            .stage(node.stage)
            .unwrap_or_else(|| panic!("no stage for {}", node.display));
        let want = if node.stage == 0 {
            "WHO=a"
        } else {
            "WHO=final"
        };
        assert!(st.config.env.iter().any(|e| e == want), "{}", node.display);
    }
}

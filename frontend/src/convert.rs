//! Layer 3: typed stages -> [`BuildGraph`] (BuildKit's `dockerfile2llb`).
//!
//! Stages are dispatched on demand starting from the target, so only the stages it needs (through
//! `FROM <stage>`, `COPY --from` and `RUN --mount=from=`) produce nodes. Config-only
//! instructions fold into the stage's [`ImageConfig`] and history.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};

use petgraph::graph::{DiGraph, NodeIndex};
use rbuild_types::{ImageRef, Platform};

use crate::error::{Error, Msg};
use crate::graph::*;
use crate::instructions::{self, CmdLine, Command, Located};
use crate::parser;
use crate::shell::Lexer;

const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";
/// The `PATH` every stage gets when its base sets none (BuildKit's `system.DefaultPathEnv`).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];
/// Build args read by the builder itself: never reported as unconsumed.
const BUILDER_ARGS: &[&str] = &["SOURCE_DATE_EPOCH", "BUILDKIT_SANDBOX_HOSTNAME"];

struct StageDef {
    name: Option<String>,
    base: String,
    platform: Option<String>,
    line: usize,
    original: String,
    commands: Vec<Located>,
}

struct Done {
    node: NodeIndex,
    config: ImageConfig,
    history: Vec<HistoryEntry>,
    platform: Platform,
}

struct Ctx<'a> {
    opts: &'a BuildOptions,
    resolver: &'a dyn ImageResolver,
    escape: char,
    stages: Vec<StageDef>,
    globals: Vec<(String, String)>,
    build_args: HashMap<String, String>,
    consumed: HashSet<String>,
    graph: DiGraph<Node, Input>,
    images: HashMap<(String, String), NodeIndex>,
    done: HashMap<usize, Done>,
    visiting: Vec<usize>,
    target_platform: Platform,
    /// The error of a stage dispatched on behalf of another one (kept whole, with its own line).
    nested: Option<Error>,
    /// The word the last failed expansion or stage reference was about (for the error's column).
    err_token: RefCell<Option<String>>,
}

/// Converts a Dockerfile into the build graph for `opts.target` (or the last stage).
pub fn convert(
    dockerfile_text: &str,
    opts: &BuildOptions,
    resolver: &dyn ImageResolver,
) -> Result<BuildGraph, Error> {
    let file = if opts.dockerfile_name.is_empty() {
        "Dockerfile"
    } else {
        opts.dockerfile_name.as_str()
    };
    convert_inner(dockerfile_text, opts, resolver)
        .map_err(|e| e.with_file(file).with_source(dockerfile_text))
}

/// BuildKit's automatic global args (`defaultArgs`): the build and target platforms and
/// `TARGETSTAGE` (the `--target` name, `default` without one). They are visible in FROM lines and
/// global ARG defaults; a stage sees one only after `ARG NAME` (without a value) declares it.
fn platform_args(
    target: &Platform,
    build: &Platform,
    stage: Option<&str>,
) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for (prefix, p) in [("BUILD", build), ("TARGET", target)] {
        v.push((format!("{prefix}PLATFORM"), p.to_string()));
        v.push((format!("{prefix}OS"), p.os.clone()));
        v.push((format!("{prefix}OSVERSION"), String::new()));
        v.push((format!("{prefix}ARCH"), p.architecture.clone()));
        v.push((
            format!("{prefix}VARIANT"),
            p.variant.clone().unwrap_or_default(),
        ));
    }
    v.push(("TARGETSTAGE".into(), stage.unwrap_or("default").into()));
    v
}

fn lookup<'a>(vars: &'a [(String, String)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |k: &str| {
        vars.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    }
}

fn set_var(vars: &mut Vec<(String, String)>, k: &str, v: &str) {
    match vars.iter_mut().find(|(n, _)| n == k) {
        Some(e) => e.1 = v.to_string(),
        None => vars.push((k.to_string(), v.to_string())),
    }
}

fn convert_inner(
    text: &str,
    opts: &BuildOptions,
    resolver: &dyn ImageResolver,
) -> Result<BuildGraph, Error> {
    let df = parser::parse(text)?;
    let mut meta_args = Vec::new();
    let mut stages: Vec<StageDef> = Vec::new();
    for node in &df.instructions {
        let loc = instructions::parse_instruction(node)?;
        match loc.command {
            Command::From(f) => {
                if let Some(n) = &f.name {
                    if stages.iter().any(|s| s.name.as_deref() == Some(n)) {
                        return Err(Error::instruction(
                            loc.line,
                            &loc.original,
                            format!("duplicate stage name {n:?}: rename one of the stages"),
                        ));
                    }
                }
                stages.push(StageDef {
                    name: f.name,
                    base: f.base,
                    platform: f.platform,
                    line: loc.line,
                    original: loc.original,
                    commands: Vec::new(),
                });
            }
            Command::Arg(_) if stages.is_empty() => meta_args.push(loc),
            _ => match stages.last_mut() {
                Some(s) => s.commands.push(loc),
                None => {
                    return Err(Error::instruction(
                        loc.line,
                        &loc.original,
                        "no FROM before this instruction: a Dockerfile must start with FROM (only ARG may come before it)",
                    ))
                }
            },
        }
    }
    if stages.is_empty() {
        return Err(Error::build(
            "no FROM instruction: add `FROM <image>` to start a stage",
        ));
    }
    let target = match &opts.target {
        Some(t) => {
            let t = t.to_ascii_lowercase();
            stages
                .iter()
                .position(|s| s.name.as_deref() == Some(t.as_str()))
                .ok_or_else(|| {
                    let names: Vec<&str> =
                        stages.iter().filter_map(|s| s.name.as_deref()).collect();
                    let near = instructions::suggest(&t, &names)
                        .map(|s| format!("did you mean {s:?}? "))
                        .unwrap_or_default();
                    Error::build(format!(
                        "target stage {t:?} could not be found; {near}stages are: {}",
                        names.join(", ")
                    ))
                })?
        }
        None => stages.len() - 1,
    };
    let build_platform = Platform::host();
    let target_platform = opts.platform.clone().unwrap_or_else(Platform::host);
    let build_args: HashMap<String, String> = opts.build_args.iter().cloned().collect();
    let mut globals = platform_args(
        &target_platform,
        &build_platform,
        stages[target].name.as_deref(),
    );
    for (k, v) in globals.iter_mut() {
        if let Some(o) = build_args.get(k.as_str()) {
            o.clone_into(v);
        }
    }
    let mut consumed = HashSet::new();
    let lex = Lexer::new(df.escape);
    for loc in &meta_args {
        let Command::Arg(pairs) = &loc.command else {
            continue;
        };
        for (k, default) in pairs {
            let value = if let Some(v) = build_args.get(k) {
                consumed.insert(k.clone());
                Some(v.clone())
            } else if let Some(d) = default {
                Some(
                    lex.process_word(d, &lookup(&globals))
                        .map_err(|m| Error::instruction(loc.line, &loc.original, m))?,
                )
            } else {
                None
            };
            match value {
                Some(v) => set_var(&mut globals, k, &v),
                None => globals.retain(|(n, _)| n != k),
            }
        }
    }
    let source_date_epoch = source_date_epoch(&build_args, &globals)?;
    let mut ctx = Ctx {
        opts,
        resolver,
        escape: df.escape,
        stages,
        globals,
        build_args,
        consumed,
        graph: DiGraph::new(),
        images: HashMap::new(),
        done: HashMap::new(),
        visiting: Vec::new(),
        target_platform,
        nested: None,
        err_token: RefCell::new(None),
    };
    ctx.dispatch_stage(target)?;

    let mut warnings = Vec::new();
    let mut unused: Vec<&String> = ctx
        .opts
        .build_args
        .iter()
        .map(|(k, _)| k)
        .filter(|k| {
            !ctx.consumed.contains(*k)
                && !PROXY_ARGS.contains(&k.as_str())
                && !BUILDER_ARGS.contains(&k.as_str())
        })
        .collect();
    unused.sort();
    unused.dedup();
    if !unused.is_empty() {
        let list: Vec<&str> = unused.iter().map(|s| s.as_str()).collect();
        warnings.push(format!(
            "one or more build-args [{}] were not consumed: declare them with ARG or drop --build-arg",
            list.join(" ")
        ));
    }
    let mut kept: Vec<usize> = ctx.done.keys().copied().collect();
    kept.sort();
    for (i, s) in ctx.stages.iter().enumerate() {
        if !ctx.done.contains_key(&i) {
            warnings.push(format!(
                "skipping stage {} (not needed for the target)",
                stage_label(s.name.as_deref(), i)
            ));
        }
    }
    let mut out_stages = Vec::new();
    let mut target_pos = 0;
    for i in kept {
        let Some(d) = ctx.done.remove(&i) else {
            continue;
        };
        if i == target {
            target_pos = out_stages.len();
        }
        out_stages.push(Stage {
            index: i,
            name: ctx.stages[i].name.clone(),
            node: d.node,
            config: d.config,
            history: d.history,
            platform: d.platform,
        });
    }
    Ok(BuildGraph {
        graph: ctx.graph,
        stages: out_stages,
        target: target_pos,
        warnings,
        source_date_epoch,
    })
}

/// `SOURCE_DATE_EPOCH` from `--build-arg` or a global `ARG SOURCE_DATE_EPOCH=...`, as BuildKit
/// reads it: empty means unset, anything but an integer is an error (BuildKit also accepts the
/// name of a source stage or named context there; rbuild does not).
fn source_date_epoch(
    build_args: &HashMap<String, String>,
    globals: &[(String, String)],
) -> Result<Option<i64>, Error> {
    let v = build_args
        .get("SOURCE_DATE_EPOCH")
        .cloned()
        .or_else(|| lookup(globals)("SOURCE_DATE_EPOCH"))
        .unwrap_or_default();
    if v.is_empty() {
        return Ok(None);
    }
    v.parse::<i64>().map(Some).map_err(|_| {
        Error::build(format!(
            "invalid SOURCE_DATE_EPOCH: {v}: give seconds since the Unix epoch (e.g. $(git log -1 --pretty=%ct))"
        ))
    })
}

/// Parses ONBUILD trigger expressions into instructions run at `line` of the stage using them.
fn onbuild_triggers(triggers: &[String], line: usize) -> Result<Vec<Located>, String> {
    let mut out = Vec::new();
    for trig in triggers {
        let df =
            parser::parse(trig).map_err(|e| format!("invalid ONBUILD trigger {trig:?}: {e}"))?;
        for n in &df.instructions {
            let mut loc = instructions::parse_instruction(n)
                .map_err(|e| format!("invalid ONBUILD trigger {trig:?}: {e}"))?;
            if matches!(loc.command, Command::From(_) | Command::Onbuild(_)) {
                return Err(format!("ONBUILD trigger {trig:?} is not allowed"));
            }
            loc.line = line;
            loc.end_line = line;
            out.push(loc);
        }
    }
    Ok(out)
}

fn step_name(label: &str, n: usize, total: usize, onbuild: bool, text: &str) -> String {
    let width = total.to_string().len();
    let label = if label.is_empty() {
        String::new()
    } else {
        format!("{label} ")
    };
    let ob = if onbuild { "ONBUILD " } else { "" };
    format!("[{label}{n:>width$}/{total}] {ob}{text}")
}

/// Steps BuildKit numbers in a stage: its FROM (an image, not scratch or a stage) and each
/// RUN, COPY, ADD and WORKDIR (`cmdTotal`), plus every ONBUILD trigger it runs.
fn step_total(image_base: bool, commands: &[Located], triggers: usize) -> usize {
    let fs = commands
        .iter()
        .filter(|c| {
            matches!(
                c.command,
                Command::Run(_) | Command::Copy(_) | Command::Workdir(_)
            )
        })
        .count();
    usize::from(image_base) + fs + triggers
}

fn stage_label(name: Option<&str>, i: usize) -> String {
    name.map_or_else(|| format!("stage-{i}"), str::to_string)
}

/// Go's `%q` of a string slice: `["a" "b"]`.
fn go_quote_list(v: &[String]) -> String {
    let q: Vec<String> = v.iter().map(|s| parser::go_quote(s)).collect();
    format!("[{}]", q.join(" "))
}

fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

fn join_workdir(wd: &str, p: &str) -> String {
    let keep_slash = p.ends_with('/') || p == "." || p.is_empty() || p.ends_with("/.");
    let base = if p.starts_with('/') {
        clean_path(p)
    } else {
        clean_path(&format!("{}/{p}", if wd.is_empty() { "/" } else { wd }))
    };
    if keep_slash && !base.ends_with('/') {
        format!("{base}/")
    } else {
        base
    }
}

fn add_env(env: &mut Vec<String>, k: &str, v: &str) {
    let entry = format!("{k}={v}");
    match env
        .iter_mut()
        .find(|e| e.split_once('=').map_or(e.as_str(), |(n, _)| n) == k)
    {
        Some(e) => *e = entry,
        None => env.push(entry),
    }
}

fn parse_ports(p: &str) -> Result<Vec<String>, String> {
    let (port, proto) = match p.split_once('/') {
        Some((a, b)) => (a, b.to_ascii_lowercase()),
        None => (p, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!(
            "invalid proto {proto:?} in port {p:?}: use tcp, udp or sctp"
        ));
    }
    let bad = || format!("invalid port {p:?}: use PORT[-PORT][/PROTO], e.g. 80/tcp");
    let (lo, hi) = match port.split_once('-') {
        Some((a, b)) => (
            a.parse::<u16>().map_err(|_| bad())?,
            b.parse::<u16>().map_err(|_| bad())?,
        ),
        None => {
            let n = port.parse::<u16>().map_err(|_| bad())?;
            (n, n)
        }
    };
    if hi < lo {
        return Err(bad());
    }
    Ok((lo..=hi).map(|n| format!("{n}/{proto}")).collect())
}

fn valid_signal(s: &str) -> bool {
    const NAMES: &[&str] = &[
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
        "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
        "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "POLL", "PWR", "SYS", "RTMIN", "RTMAX",
    ];
    if let Ok(n) = s.parse::<u32>() {
        return n > 0 && n < 65;
    }
    let u = s.to_ascii_uppercase();
    let name = u.strip_prefix("SIG").unwrap_or(&u);
    NAMES.contains(&name) || name.starts_with("RTMIN+") || name.starts_with("RTMAX-")
}

struct StageState {
    index: usize,
    label: String,
    total: usize,
    /// Steps numbered so far (see `display`).
    step: usize,
    /// ONBUILD triggers still to dispatch before the stage's own instructions.
    onbuild_left: usize,
    node: NodeIndex,
    config: ImageConfig,
    /// Environment the steps see: image env plus ARGs, later definitions winning.
    env: Vec<(String, String)>,
    /// ARGs declared in this stage, with their values.
    args: Vec<(String, Option<String>)>,
    history: Vec<HistoryEntry>,
    platform: Platform,
    cmd_set: bool,
}

impl StageState {
    fn history(&mut self, created_by: String, layer: bool) {
        let created_by = if layer {
            format!("{created_by} # buildkit")
        } else {
            created_by
        };
        self.history.push(HistoryEntry {
            created_by,
            empty_layer: !layer,
            comment: Some(HISTORY_COMMENT.into()),
        });
    }
    /// The progress name of the next filesystem-changing step, numbered as BuildKit's
    /// `prefixCommand`: `[label N/T] ` with N right-aligned to the width of T, no label in a
    /// single-stage Dockerfile, and `ONBUILD ` before a trigger's text.
    fn display(&mut self, text: &str) -> String {
        self.step += 1;
        step_name(
            &self.label,
            self.step,
            self.total,
            self.onbuild_left > 0,
            text,
        )
    }
    fn workdir(&self) -> String {
        if self.config.working_dir.is_empty() {
            "/".into()
        } else {
            self.config.working_dir.clone()
        }
    }
}

fn uppercase_cmd(original: &str) -> String {
    let t = original.trim();
    match t.split_once(char::is_whitespace) {
        Some((c, rest)) => format!("{} {}", c.to_ascii_uppercase(), rest.trim_start()),
        None => t.to_ascii_uppercase(),
    }
}

impl Ctx<'_> {
    fn lexer(&self) -> Lexer {
        Lexer::new(self.escape)
    }

    fn image_node(
        &mut self,
        reference: ImageRef,
        platform: Platform,
        display: String,
        stage: usize,
        line: usize,
    ) -> NodeIndex {
        let key = (reference.to_string(), platform.to_string());
        if let Some(n) = self.images.get(&key) {
            return *n;
        }
        let n = self.graph.add_node(Node {
            op: Op::Image {
                reference,
                platform,
            },
            stage,
            display,
            line,
        });
        self.images.insert(key, n);
        n
    }

    /// Finds a stage by name (or by index when `allow_index`), dispatching it if needed.
    fn stage_ref(
        &mut self,
        name: &str,
        current: usize,
        allow_index: bool,
    ) -> Result<Option<usize>, String> {
        let lower = name.to_ascii_lowercase();
        let found = self
            .stages
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()));
        // As BuildKit: FROM sees only the stages above it (a later name is an image reference);
        // COPY --from and RUN --mount from= naming a later stage are errors (their own: a cycle).
        let found = match found {
            Some(i) if i >= current && !allow_index => None,
            Some(i) if i > current => {
                self.blame(name);
                return Err(format!(
                    "cannot use stage {lower:?} here: it needs to be defined before the current stage {}; move it above",
                    stage_label(self.stages[current].name.as_deref(), current)
                ));
            }
            f => f,
        };
        let found = match found {
            Some(i) => Some(i),
            None if allow_index => match name.parse::<usize>() {
                Ok(i) if i < current => Some(i),
                Ok(i) if i < self.stages.len() => {
                    self.blame(name);
                    return Err(format!(
                        "stage index {i} refers to this or a later stage; only earlier stages can be copied from"
                    ));
                }
                Ok(i) => {
                    self.blame(name);
                    return Err(format!(
                        "stage index {i} is out of range: the Dockerfile has {} stages",
                        self.stages.len()
                    ));
                }
                Err(_) => None,
            },
            None => None,
        };
        if let Some(i) = found {
            if self.visiting.contains(&i) {
                self.blame(name);
                return Err(format!(
                    "circular dependency detected on stage {}: a stage cannot use itself or a stage that depends on it",
                    stage_label(self.stages[i].name.as_deref(), i)
                ));
            }
            if let Err(e) = self.dispatch_stage(i) {
                let m = e.to_string();
                self.nested = Some(e);
                return Err(m);
            }
        }
        Ok(found)
    }

    fn dispatch_stage(&mut self, i: usize) -> Result<(), Error> {
        if self.done.contains_key(&i) {
            return Ok(());
        }
        self.visiting.push(i);
        let r = self.dispatch_stage_inner(i);
        self.visiting.pop();
        let d = r?;
        self.done.insert(i, d);
        Ok(())
    }

    fn dispatch_stage_inner(&mut self, i: usize) -> Result<Done, Error> {
        let (line, original) = (self.stages[i].line, self.stages[i].original.clone());
        // FROM errors are about the base image word.
        let raw_base = self.stages[i].base.clone();
        let ferr = |m: String| Error::instruction(line, &original, Msg::at(raw_base.as_str(), m));
        let lex = self.lexer();
        let base = lex
            .process_word(&self.stages[i].base, &lookup(&self.globals))
            .map_err(ferr)?;
        if base.is_empty() {
            return Err(ferr(
                "base name must not be blank: set the ARG it uses or write an image name".into(),
            ));
        }
        let platform = match &self.stages[i].platform {
            Some(raw) => {
                let perr =
                    |m: String| Error::instruction(line, &original, Msg::at(raw.as_str(), m));
                let p = lex
                    .process_word(raw, &lookup(&self.globals))
                    .map_err(perr)?;
                p.parse::<Platform>()
                    .map_err(|e| perr(format!("{e} in --platform")))?
            }
            None => self.target_platform.clone(),
        };
        // A single-stage Dockerfile's steps carry no stage name (`[2/4]`), as in BuildKit.
        let label = if self.stages.len() == 1 {
            String::new()
        } else {
            stage_label(self.stages[i].name.as_deref(), i)
        };
        let parent = match self.stage_ref(&base, i, false) {
            Ok(p) => p,
            Err(m) => return Err(self.nested.take().unwrap_or_else(|| ferr(m))),
        };
        let (node, mut config, history, platform) = if let Some(parent) = parent {
            let p = &self.done[&parent];
            // The parent stage's own ONBUILD instructions run here (BuildKit: `d.base.commands`).
            (
                p.node,
                p.config.clone(),
                p.history.clone(),
                p.platform.clone(),
            )
        } else if base == "scratch" {
            let n = self.graph.add_node(Node {
                op: Op::Scratch,
                stage: i,
                display: String::new(),
                line,
            });
            // BuildKit's `emptyImage`: WorkingDir "/" (PATH is added below).
            let config = ImageConfig {
                working_dir: "/".into(),
                ..ImageConfig::default()
            };
            (n, config, Vec::new(), platform.clone())
        } else {
            let reference: ImageRef = base.parse().map_err(|e| {
                ferr(format!(
                    "{e}; write a valid image reference like busybox:latest"
                ))
            })?;
            let config = self
                .resolver
                .resolve_config(&reference, &platform)
                .map_err(|m| ferr(format!("cannot load base image {base}: {m}")))?;
            let n = self.image_node(reference, platform.clone(), String::new(), i, line);
            (n, config, Vec::new(), platform.clone())
        };
        // ONBUILD triggers of the base (an image's config or an earlier stage) run right after FROM.
        let prepend = onbuild_triggers(&config.on_build, line).map_err(ferr)?;
        config.on_build.clear();
        // Every stage has a PATH (BuildKit: "make sure that PATH is always set").
        if platform.os != "windows" && !config.env.iter().any(|e| e.starts_with("PATH=")) {
            config.env.push(format!("PATH={DEFAULT_PATH}"));
        }
        let image_base = parent.is_none() && base != "scratch";
        let total = step_total(image_base, &self.stages[i].commands, prepend.len());
        if parent.is_none() {
            let w = &mut self.graph[node].display;
            if w.is_empty() {
                *w = if image_base {
                    step_name(&label, 1, total, false, &format!("FROM {base}"))
                } else {
                    "FROM scratch".to_string()
                };
            }
        }
        let mut st = StageState {
            index: i,
            label,
            total,
            step: usize::from(image_base),
            onbuild_left: prepend.len(),
            node,
            config,
            env: Vec::new(),
            args: Vec::new(),
            history,
            platform,
            cmd_set: false,
        };
        for e in &st.config.env {
            let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
            set_var(&mut st.env, k, v);
        }
        let mut commands = prepend;
        commands.extend(self.stages[i].commands.clone());
        for loc in &commands {
            self.err_token.replace(None);
            if let Err(m) = self.dispatch(&mut st, loc) {
                let token = self.err_token.take();
                return Err(self.nested.take().unwrap_or_else(|| {
                    Error::instruction_in(
                        loc.line,
                        loc.end_line,
                        &loc.original,
                        Msg { text: m, token },
                    )
                }));
            }
            st.onbuild_left = st.onbuild_left.saturating_sub(1);
        }
        Ok(Done {
            node: st.node,
            config: st.config,
            history: st.history,
            platform: st.platform,
        })
    }

    /// The instruction as the progress shows it, expanded with the stage's ARG/ENV as BuildKit's
    /// `processCmdEnv` does: for RUN quotes are kept and unset variables left as written
    /// (`RawQuotes`, `SkipUnsetEnv`); the text as written when expansion fails.
    fn step_text(&self, st: &StageState, loc: &Located, run: bool) -> String {
        let mut lex = self.lexer();
        lex.raw_quotes = run;
        lex.skip_unset_env = run;
        let text = lex
            .process_word(&loc.original, &lookup(&st.env))
            .unwrap_or_else(|_| loc.original.clone());
        uppercase_cmd(&text)
    }

    fn expand(&self, st: &StageState, w: &str) -> Result<String, String> {
        self.lexer()
            .process_word(w, &lookup(&st.env))
            .inspect_err(|_| self.blame(w))
    }

    fn expand_words(&self, st: &StageState, w: &str) -> Result<Vec<String>, String> {
        self.lexer()
            .process_words(w, &lookup(&st.env))
            .inspect_err(|_| self.blame(w))
    }

    /// Remembers the word an error is about (the error's caret goes under it).
    fn blame(&self, word: &str) {
        self.err_token.replace(Some(word.to_string()));
    }

    fn with_shell(st: &StageState, cmd: &CmdLine) -> Vec<String> {
        if !cmd.prepend_shell {
            return cmd.args.clone();
        }
        let mut shell = st
            .config
            .shell
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
        shell.push(cmd.args.join(" "));
        shell
    }

    fn dispatch(&mut self, st: &mut StageState, loc: &Located) -> Result<(), String> {
        match &loc.command {
            Command::From(_) => return Err("FROM inside a stage".into()),
            Command::Arg(pairs) => {
                let mut parts = Vec::new();
                for (k, default) in pairs {
                    let value = if let Some(v) = self.build_args.get(k) {
                        Some(v.clone())
                    } else if let Some(d) = default {
                        Some(self.expand(st, d)?)
                    } else {
                        lookup(&self.globals)(k)
                    };
                    self.consumed.insert(k.clone());
                    if let Some(v) = &value {
                        set_var(&mut st.env, k, v);
                        parts.push(format!("{k}={v}"));
                    } else {
                        parts.push(k.clone());
                    }
                    st.args.retain(|(n, _)| n != k);
                    st.args.push((k.clone(), value));
                }
                st.history(format!("ARG {}", parts.join(" ")), false);
            }
            Command::Env(pairs) => {
                let mut expanded = Vec::new();
                for (k, v) in pairs {
                    expanded.push((self.expand(st, k)?, self.expand(st, v)?));
                }
                let mut msg = String::from("ENV");
                for (k, v) in &expanded {
                    set_var(&mut st.env, k, v);
                    add_env(&mut st.config.env, k, v);
                    msg.push_str(&format!(" {k}={v}"));
                }
                st.history(msg, false);
            }
            Command::Label(pairs) => {
                let mut msg = String::from("LABEL");
                let mut expanded = Vec::new();
                for (k, v) in pairs {
                    expanded.push((self.expand(st, k)?, self.expand(st, v)?));
                }
                for (k, v) in expanded {
                    msg.push_str(&format!(" {k}={v}"));
                    st.config.labels.insert(k, v);
                }
                st.history(msg, false);
            }
            Command::Maintainer(m) => {
                let m = self.expand(st, m)?;
                st.history(format!("MAINTAINER {m}"), false);
            }
            Command::Workdir(p) => {
                let p = self.expand(st, p)?;
                let wd = join_workdir(&st.workdir(), &p);
                let wd = if wd.len() > 1 {
                    wd.trim_end_matches('/').to_string()
                } else {
                    wd
                };
                st.config.working_dir = wd.clone();
                // BuildKit creates the directory (a layer) for every WORKDIR but `/`.
                if wd != "/" {
                    let node = self.graph.add_node(Node {
                        op: Op::Mkdir {
                            path: wd.clone(),
                            user: st.config.user.clone(),
                        },
                        stage: st.index,
                        display: st.display(&self.step_text(st, loc, false)),
                        line: loc.line,
                    });
                    self.graph.add_edge(st.node, node, Input::Rootfs);
                    st.node = node;
                }
                // A layer, but without the " # buildkit" mark (BuildKit passes no state here).
                st.history(format!("WORKDIR {wd}"), false);
                if let Some(h) = st.history.last_mut() {
                    h.empty_layer = wd == "/";
                }
            }
            Command::User(u) => {
                let u = self.expand(st, u)?;
                st.config.user = u.clone();
                st.history(format!("USER {u}"), false);
            }
            Command::Expose(ports) => {
                let mut all = Vec::new();
                for p in ports {
                    for w in self.expand_words(st, p)? {
                        all.extend(parse_ports(&w)?);
                    }
                }
                let mut set: BTreeSet<String> = st.config.exposed_ports.drain(..).collect();
                set.extend(all.iter().cloned());
                st.config.exposed_ports = set.into_iter().collect();
                st.history(format!("EXPOSE [{}]", all.join(" ")), false);
            }
            Command::Volume(vols) => {
                let mut vs = Vec::new();
                for v in vols {
                    let e = self.expand(st, v)?;
                    if e.is_empty() {
                        return Err("VOLUME specified can not be an empty string".into());
                    }
                    vs.push(e);
                }
                let mut set: BTreeSet<String> = st.config.volumes.drain(..).collect();
                set.extend(vs.iter().cloned());
                st.config.volumes = set.into_iter().collect();
                st.history(format!("VOLUME [{}]", vs.join(" ")), false);
            }
            Command::StopSignal(s) => {
                let s = self.expand(st, s)?;
                if !valid_signal(&s) {
                    return Err(format!(
                        "invalid signal {s:?}: use a name like SIGTERM or a number"
                    ));
                }
                st.config.stop_signal = Some(s.clone());
                st.history(format!("STOPSIGNAL {s}"), false);
            }
            Command::Shell(sh) => {
                st.config.shell = Some(sh.clone());
                st.history(format!("SHELL [{}]", sh.join(" ")), false);
            }
            Command::Cmd(c) => {
                let args = Self::with_shell(st, c);
                st.history(format!("CMD {}", go_quote_list(&args)), false);
                st.config.cmd = Some(args);
                st.cmd_set = true;
            }
            Command::Entrypoint(c) => {
                let args = Self::with_shell(st, c);
                st.history(format!("ENTRYPOINT {}", go_quote_list(&args)), false);
                st.config.entrypoint = Some(args);
                if !st.cmd_set {
                    st.config.cmd = None;
                }
            }
            Command::Onbuild(expr) => st.config.on_build.push(expr.clone()),
            Command::Healthcheck(h) => {
                let mut obj = serde_json::Map::new();
                obj.insert("Test".into(), serde_json::json!(h.test));
                for (k, v) in [
                    ("Interval", h.interval),
                    ("Timeout", h.timeout),
                    ("StartPeriod", h.start_period),
                    ("StartInterval", h.start_interval),
                    ("Retries", h.retries),
                ] {
                    if v != 0 {
                        obj.insert(k.into(), serde_json::json!(v));
                    }
                }
                st.config.healthcheck = Some(serde_json::Value::Object(obj));
                use instructions::format_duration as d;
                st.history(
                    format!(
                        "HEALTHCHECK {{Test:[{}] Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
                        h.test.join(" "),
                        d(h.interval),
                        d(h.timeout),
                        d(h.start_period),
                        d(h.start_interval),
                        h.retries
                    ),
                    false,
                );
            }
            Command::Run(r) => self.dispatch_run(st, loc, r)?,
            Command::Copy(c) => self.dispatch_copy(st, loc, c)?,
        }
        Ok(())
    }

    fn source_node(
        &mut self,
        st: &StageState,
        from: &str,
        line: usize,
    ) -> Result<NodeIndex, String> {
        if let Some(s) = self.stage_ref(from, st.index, true)? {
            return Ok(self.done[&s].node);
        }
        let names: Vec<&str> = self
            .stages
            .iter()
            .filter_map(|s| s.name.as_deref())
            .collect();
        let near = instructions::suggest(from, &names)
            .map(|s| format!(" (did you mean stage {s:?}?)"))
            .unwrap_or_default();
        let reference: ImageRef = from.parse().map_err(|e| {
            self.blame(from);
            format!("no stage or image named {from:?}{near}: {e}")
        })?;
        if let Err(m) = self.resolver.resolve_config(&reference, &st.platform) {
            self.blame(from);
            return Err(format!("no stage or image named {from:?}{near}: {m}"));
        }
        let display = format!("FROM {from}");
        Ok(self.image_node(reference, st.platform.clone(), display, st.index, line))
    }

    fn dispatch_run(
        &mut self,
        st: &mut StageState,
        loc: &Located,
        r: &instructions::Run,
    ) -> Result<(), String> {
        let mut cmd = r.cmd.clone();
        let mut heredoc_script = None;
        if !cmd.files.is_empty() {
            if cmd.args.len() != 1 || !cmd.prepend_shell {
                return Err("heredocs are only supported with the shell form of RUN".into());
            }
            let only = parser::parse_heredoc(&cmd.args[0])?;
            if only.is_some() && cmd.files[0].chomped_content().starts_with("#!") {
                // As BuildKit: a single heredoc with a shebang becomes an executable file
                // (0755) mounted read-only at /dev/pipes/<name>, which the shell runs.
                let f = &cmd.files[0];
                let scratch = self.graph.add_node(Node {
                    op: Op::Scratch,
                    stage: st.index,
                    display: "[internal] scratch".into(),
                    line: loc.line,
                });
                let file = self.graph.add_node(Node {
                    op: Op::Copy(CopyOp {
                        add: false,
                        from: CopyFrom::Inline {
                            name: f.name.clone(),
                            content: f.chomped_content(),
                        },
                        srcs: Vec::new(),
                        dest: "/".into(),
                        chown: None,
                        chmod: Some("0755".into()),
                        link: false,
                        parents: false,
                        excludes: Vec::new(),
                        keep_git_dir: false,
                        checksum: None,
                        unpack: None,
                    }),
                    stage: st.index,
                    display: "[internal] preparing inline document".into(),
                    line: loc.line,
                });
                self.graph.add_edge(scratch, file, Input::Rootfs);
                heredoc_script = Some((file, f.name.clone()));
                cmd.args = vec![format!("/dev/pipes/{}", f.name)];
            } else if only.is_some() {
                cmd.args = vec![cmd.files[0].chomped_content()];
            } else {
                let mut b = cmd.args[0].clone();
                for f in &cmd.files {
                    b.push('\n');
                    b.push_str(&f.content);
                    b.push_str(&f.name);
                }
                cmd.args = vec![b];
            }
        }
        let args = Self::with_shell(st, &cmd);
        let mut env: Vec<String> = st.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for p in PROXY_ARGS {
            if let Some(v) = self.build_args.get(*p) {
                if !st.env.iter().any(|(k, _)| k == p) {
                    env.push(format!("{p}={v}"));
                }
                self.consumed.insert(p.to_string());
            }
        }
        let cwd = st.workdir();
        let mut mounts = Vec::new();
        let mut sources = Vec::new();
        for raw in &r.mounts {
            // Options are expanded with the stage's ARG/ENV (`type=$MNT_TYPE`), `from=` never.
            let expander = |w: &str| self.expand(st, w);
            let m = instructions::parse_mount(&raw.spec, Some(&expander)).map_err(|e| e.text)?;
            let target = if m.target.is_empty() {
                match m.kind.as_str() {
                    "secret" => {
                        let id = m
                            .options
                            .iter()
                            .find(|(k, _)| k == "id")
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default();
                        if id.is_empty() {
                            return Err("secret mount needs id= or target=".into());
                        }
                        format!("/run/secrets/{id}")
                    }
                    _ => "/run/buildkit/ssh_agent.0".into(),
                }
            } else {
                join_workdir(&cwd, &m.target)
                    .trim_end_matches('/')
                    .to_string()
            };
            let mut options = m.options.clone();
            if let Some(f) = &m.from {
                if f.is_empty() {
                    return Err(
                        "--mount from= names no stage or image: give a stage name, index or image"
                            .into(),
                    );
                }
                sources.push(self.source_node(st, f, loc.line)?);
                options.push(("from".into(), f.clone()));
                options.sort();
            }
            mounts.push(Mount {
                kind: m.kind.clone(),
                target: if target.is_empty() {
                    "/".into()
                } else {
                    target
                },
                options,
            });
        }
        if let Some((file, _)) = heredoc_script {
            mounts.push(Mount {
                kind: "bind".into(),
                target: "/dev/pipes".into(),
                options: vec![
                    ("from".into(), "[heredoc]".into()),
                    ("source".into(), "/".into()),
                ],
            });
            sources.push(file);
        }
        let node = self.graph.add_node(Node {
            op: Op::Exec(ExecOp {
                args: args.clone(),
                env,
                cwd,
                user: st.config.user.clone(),
                network: r.network,
                insecure: r.insecure,
                mounts,
                hostname: self
                    .build_args
                    .get("BUILDKIT_SANDBOX_HOSTNAME")
                    .cloned()
                    .unwrap_or_default(),
                extra_hosts: self.opts.add_hosts.clone(),
            }),
            stage: st.index,
            display: st.display(&self.step_text(st, loc, true)),
            line: loc.line,
        });
        self.graph.add_edge(st.node, node, Input::Rootfs);
        for s in sources {
            self.graph.add_edge(s, node, Input::CopySource);
        }
        st.node = node;
        let mut build_env = Vec::new();
        for (k, v) in &st.args {
            let v = lookup(&st.env)(k).or_else(|| v.clone()).unwrap_or_default();
            build_env.push(format!("{k}={v}"));
        }
        let mut msg = String::from("RUN ");
        if !build_env.is_empty() {
            msg.push_str(&format!("|{} {} ", build_env.len(), build_env.join(" ")));
        }
        msg.push_str(&args.join(" "));
        st.history(msg, true);
        Ok(())
    }

    fn dispatch_copy(
        &mut self,
        st: &mut StageState,
        loc: &Located,
        c: &instructions::Copy,
    ) -> Result<(), String> {
        let name = if c.add { "ADD" } else { "COPY" };
        let mut srcs = Vec::new();
        for s in &c.srcs {
            srcs.push(self.expand(st, s)?);
        }
        let dest_raw = self.expand(st, &c.dest)?;
        let dest = join_workdir(&st.workdir(), &dest_raw);
        let opt = |v: &Option<String>| -> Result<Option<String>, String> {
            v.as_ref().map(|s| self.expand(st, s)).transpose()
        };
        let chown = opt(&c.chown)?.filter(|s| !s.is_empty());
        let chmod = opt(&c.chmod)?.filter(|s| !s.is_empty());
        if let Some(m) = &chmod {
            let octal = u32::from_str_radix(m, 8).is_ok_and(|n| n <= 0o7777);
            let symbolic = !m.is_empty()
                && m.split(',').all(|p| {
                    let p = p.trim_start_matches(['u', 'g', 'o', 'a']);
                    p.starts_with(['+', '-', '=']) && p[1..].chars().all(|c| "rwxXst".contains(c))
                });
            if !octal && !symbolic {
                return Err(format!(
                    "invalid --chmod={m}: use octal (0755) or symbolic (u+x,go-w) mode"
                ));
            }
        }
        let checksum = opt(&c.checksum)?.filter(|s| !s.is_empty());
        let mut excludes = Vec::new();
        for e in &c.excludes {
            excludes.push(self.expand(st, e)?);
        }
        let source = match &c.from {
            Some(f) => {
                let f = self.expand(st, f)?;
                if f.is_empty() {
                    return Err("--from must not be empty".into());
                }
                Some(self.source_node(st, &f, loc.line)?)
            }
            None => None,
        };
        let mut ops: Vec<(CopyFrom, Vec<String>, String)> = Vec::new();
        if !srcs.is_empty() || c.contents.is_empty() {
            let from = if source.is_some() {
                CopyFrom::Input
            } else {
                CopyFrom::Context
            };
            let mut msg = String::from(name);
            if c.parents {
                msg.push_str(" --parents");
            }
            if let Some(x) = &chown {
                msg.push_str(&format!(" --chown={x}"));
            }
            if let Some(x) = &chmod {
                msg.push_str(&format!(" --chmod={x}"));
            }
            for s in &srcs {
                msg.push_str(&format!(" {s}"));
            }
            msg.push_str(&format!(" {dest}"));
            ops.push((from, srcs.clone(), msg));
        }
        for h in &c.contents {
            let content = if h.expand {
                let mut lex = self.lexer();
                lex.skip_process_quotes = true;
                lex.process_word(&h.content, &lookup(&st.env))?
            } else {
                h.content.clone()
            };
            let msg = format!("{name} <<{} {dest}", h.name);
            ops.push((
                CopyFrom::Inline {
                    name: h.name.clone(),
                    content,
                },
                Vec::new(),
                msg,
            ));
        }
        for (from, srcs, msg) in ops {
            let input = matches!(from, CopyFrom::Input);
            let node = self.graph.add_node(Node {
                op: Op::Copy(CopyOp {
                    add: c.add,
                    from,
                    srcs,
                    dest: dest.clone(),
                    chown: chown.clone(),
                    chmod: chmod.clone(),
                    link: c.link,
                    parents: c.parents,
                    excludes: excludes.clone(),
                    keep_git_dir: c.keep_git_dir,
                    checksum: checksum.clone(),
                    unpack: c.unpack,
                }),
                stage: st.index,
                display: st.display(&self.step_text(st, loc, false)),
                line: loc.line,
            });
            self.graph.add_edge(st.node, node, Input::Rootfs);
            if let (true, Some(s)) = (input, source) {
                self.graph.add_edge(s, node, Input::CopySource);
            }
            st.node = node;
            st.history(msg, true);
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;

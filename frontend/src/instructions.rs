//! Layer 2: syntax tree -> typed instructions, with flag validation (BuildKit's
//! `instructions/` package). Words are kept as written: expansion needs the stage's
//! environment and happens in [`crate::convert()`].

use crate::error::{Error, Msg};
use crate::graph::NetworkMode;
use crate::parser::{self, Heredoc, Instruction};

/// Every instruction name, upper case.
pub const INSTRUCTIONS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// `FROM [--platform=p] image [AS name]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct From {
    /// The image or stage, unexpanded.
    pub base: String,
    /// Lower-case stage name.
    pub name: Option<String>,
    /// `--platform`, unexpanded.
    pub platform: Option<String>,
}

/// A command line of RUN, CMD or ENTRYPOINT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmdLine {
    /// JSON elements, or the single shell-form string.
    pub args: Vec<String>,
    /// Shell form: wrap in the stage's SHELL.
    pub prepend_shell: bool,
    /// Heredoc files.
    pub files: Vec<Heredoc>,
}

/// A `RUN --mount`. Parsed as written when it uses no variable; `convert` parses `spec` again
/// with ARG/ENV expansion (BuildKit's two passes of `parseMount`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunMount {
    /// The `--mount` value as written.
    pub spec: String,
    /// `bind`, `cache`, `tmpfs`, `secret`, `ssh`.
    pub kind: String,
    /// Target (may be empty for secret/ssh, which have defaults).
    pub target: String,
    /// `from=`.
    pub from: Option<String>,
    /// Every other option, normalized key names, sorted by key.
    pub options: Vec<(String, String)>,
}

/// `RUN`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// The command.
    pub cmd: CmdLine,
    /// `--mount`s.
    pub mounts: Vec<RunMount>,
    /// `--network`.
    pub network: NetworkMode,
    /// `--security=insecure`.
    pub insecure: bool,
}

/// `COPY` or `ADD`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    /// ADD.
    pub add: bool,
    /// Source paths.
    pub srcs: Vec<String>,
    /// Heredoc sources.
    pub contents: Vec<Heredoc>,
    /// Destination.
    pub dest: String,
    /// `--from`.
    pub from: Option<String>,
    /// `--chown`.
    pub chown: Option<String>,
    /// `--chmod`.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--parents`.
    pub parents: bool,
    /// `--exclude`.
    pub excludes: Vec<String>,
    /// `--keep-git-dir` (ADD).
    pub keep_git_dir: bool,
    /// `--checksum` (ADD).
    pub checksum: Option<String>,
    /// `--unpack` (ADD).
    pub unpack: Option<bool>,
}

/// `HEALTHCHECK`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", ...]` or `["CMD-SHELL", cmd]`.
    pub test: Vec<String>,
    /// Nanoseconds.
    pub interval: i64,
    /// Nanoseconds.
    pub timeout: i64,
    /// Nanoseconds.
    pub start_period: i64,
    /// Nanoseconds.
    pub start_interval: i64,
    /// Retries.
    pub retries: i64,
}

/// A typed instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// FROM.
    From(From),
    /// RUN.
    Run(Run),
    /// CMD.
    Cmd(CmdLine),
    /// ENTRYPOINT.
    Entrypoint(CmdLine),
    /// LABEL pairs.
    Label(Vec<(String, String)>),
    /// MAINTAINER.
    Maintainer(String),
    /// EXPOSE ports as written.
    Expose(Vec<String>),
    /// ENV pairs.
    Env(Vec<(String, String)>),
    /// COPY/ADD.
    Copy(Copy),
    /// VOLUME paths.
    Volume(Vec<String>),
    /// USER.
    User(String),
    /// WORKDIR.
    Workdir(String),
    /// ARG names with optional defaults.
    Arg(Vec<(String, Option<String>)>),
    /// ONBUILD trigger text.
    Onbuild(String),
    /// STOPSIGNAL.
    StopSignal(String),
    /// HEALTHCHECK.
    Healthcheck(Healthcheck),
    /// SHELL.
    Shell(Vec<String>),
}

/// A typed instruction with its place in the Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    /// The instruction.
    pub command: Command,
    /// 1-based start line.
    pub line: usize,
    /// 1-based last line (continuations, heredoc bodies).
    pub end_line: usize,
    /// The instruction text (continuations joined).
    pub original: String,
}

struct Flags {
    raw: Vec<String>,
    parsed: Vec<(String, Option<String>)>,
}

impl Flags {
    fn new(raw: &[String]) -> Result<Flags, Msg> {
        let mut parsed = Vec::new();
        for f in raw {
            let Some(body) = f.strip_prefix("--") else {
                return Err(Msg::at(
                    f.as_str(),
                    format!("arguments to flags must start with --: {f}"),
                ));
            };
            match body.split_once('=') {
                Some((k, v)) => parsed.push((k.to_string(), Some(v.to_string()))),
                None => parsed.push((body.to_string(), None)),
            }
        }
        Ok(Flags {
            raw: raw.to_vec(),
            parsed,
        })
    }

    /// Checks every flag is one of `allowed`; `repeatable` flags may be given several times.
    fn check(&self, cmd: &str, allowed: &[&str], repeatable: &[&str]) -> Result<(), Msg> {
        let mut seen: Vec<&str> = Vec::new();
        for (k, _) in &self.parsed {
            if !allowed.contains(&k.as_str()) {
                let hint = if allowed.is_empty() {
                    format!("{cmd} takes no flags")
                } else {
                    let list: Vec<String> = allowed.iter().map(|a| format!("--{a}")).collect();
                    let near = suggest(k, allowed)
                        .map(|s| format!("did you mean --{s}? "))
                        .unwrap_or_default();
                    format!("{near}{cmd} accepts {}", list.join(", "))
                };
                return Err(Msg::at(
                    format!("--{k}"),
                    format!("unknown flag: --{k} ({hint})"),
                ));
            }
            if seen.contains(&k.as_str()) && !repeatable.contains(&k.as_str()) {
                return Err(Msg::at(
                    format!("--{k}"),
                    format!("duplicate flag specified: --{k} (give it once)"),
                ));
            }
            seen.push(k);
        }
        let _ = &self.raw;
        Ok(())
    }

    fn string(&self, name: &str) -> Result<Option<String>, Msg> {
        match self.parsed.iter().rev().find(|(k, _)| k == name) {
            None => Ok(None),
            Some((_, Some(v))) => Ok(Some(v.clone())),
            Some((_, None)) => Err(Msg::at(
                format!("--{name}"),
                format!("missing a value on flag: --{name}=<value>"),
            )),
        }
    }

    fn strings(&self, name: &str) -> Result<Vec<String>, Msg> {
        self.parsed
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| {
                v.clone().ok_or_else(|| {
                    Msg::at(
                        format!("--{name}"),
                        format!("missing a value on flag: --{name}=<value>"),
                    )
                })
            })
            .collect()
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, Msg> {
        match self.parsed.iter().rev().find(|(k, _)| k == name) {
            None => Ok(None),
            Some((_, None)) => Ok(Some(true)),
            Some((_, Some(v))) => match v.to_ascii_lowercase().as_str() {
                "true" | "" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                _ => Err(Msg::at(
                    format!("--{name}={v}"),
                    format!(
                        "expecting boolean value for flag --{name}, not: {v} (use true or false)"
                    ),
                )),
            },
        }
    }
}

/// The closest candidate by edit distance, if close enough.
pub(crate) fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let w = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (levenshtein(&w, &c.to_ascii_lowercase()), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3) && *d > 0)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn exactly_one(node: &Instruction, name: &str) -> Result<String, Msg> {
    if node.args.len() != 1 {
        return Err(format!("{name} requires exactly one argument").into());
    }
    Ok(node.args[0].clone())
}

fn kvps(node: &Instruction, name: &str) -> Result<Vec<(String, String)>, Msg> {
    if node.args.is_empty() {
        return Err(format!("{name} requires at least one argument: {name} key=value").into());
    }
    if !node.args.chunks_exact(3).remainder().is_empty() {
        return Err(format!("bad input to {name}, too many arguments").into());
    }
    node.args
        .chunks(3)
        .map(|c| {
            if c[0].is_empty() {
                Err(Msg::at(
                    format!("={}", c[1]),
                    format!("{name} names can not be blank: write `{name} name=value`"),
                ))
            } else {
                Ok((c[0].clone(), c[1].clone()))
            }
        })
        .collect()
}

fn cmd_line(node: &Instruction, empty_as_nil: bool) -> CmdLine {
    let mut args = node.args.clone();
    if !node.json && args.len() > 1 {
        args = vec![args.join(" ")];
    }
    if empty_as_nil && args.is_empty() {
        args = Vec::new();
    }
    CmdLine {
        args,
        prepend_shell: !node.json,
        files: node.heredocs.clone(),
    }
}

/// Parses a Go duration (`30s`, `1m30s`, `1.5h`, `100ms`) into nanoseconds.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let bad = || format!("invalid duration {s:?} (use e.g. 30s, 1m30s, 500ms)");
    if s == "0" {
        return Ok(0);
    }
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if n == 0 {
            return Err(bad());
        }
        let num: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[u..];
        total += num * unit;
    }
    if total > i64::MAX as f64 {
        return Err(bad());
    }
    let v = total.round() as i64;
    Ok(if neg { -v } else { v })
}

/// Formats nanoseconds as Go's `time.Duration.String`.
pub fn format_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let neg = ns < 0;
    let u = ns.unsigned_abs();
    let trim = |whole: u64, frac: u64, digits: usize| -> String {
        if frac == 0 {
            whole.to_string()
        } else {
            let f = format!("{frac:0digits$}");
            format!("{whole}.{}", f.trim_end_matches('0'))
        }
    };
    let s = if u < 1_000 {
        format!("{u}ns")
    } else if u < 1_000_000 {
        format!("{}µs", trim(u / 1_000, u % 1_000, 3))
    } else if u < 1_000_000_000 {
        format!("{}ms", trim(u / 1_000_000, u % 1_000_000, 6))
    } else {
        let secs = u / 1_000_000_000;
        let frac = u % 1_000_000_000;
        let h = secs / 3600;
        let m = (secs % 3600) / 60;
        let s = secs % 60;
        let mut out = String::new();
        if h > 0 {
            out.push_str(&format!("{h}h"));
        }
        if h > 0 || m > 0 {
            out.push_str(&format!("{m}m"));
        }
        out.push_str(&format!("{}s", trim(s, frac, 9)));
        out
    };
    if neg {
        format!("-{s}")
    } else {
        s
    }
}

/// Expands one word of an instruction (ARG/ENV values).
pub(crate) type Expander<'a> = &'a dyn Fn(&str) -> Result<String, String>;

/// Parses a `--mount` value. Without `expand`, a value holding a variable leaves the mount to be
/// parsed again at conversion (only `from=` is checked: it is never expanded, as in BuildKit);
/// with it, every value but `from=` is expanded first.
pub(crate) fn parse_mount(spec: &str, expand: Option<Expander>) -> Result<RunMount, Msg> {
    let mut kind = "bind".to_string();
    let mut target = String::new();
    let mut from = None;
    let mut options: Vec<(String, String)> = Vec::new();
    let mut fields = Vec::new();
    let mut deferred = false;
    for field in split_csv(spec)? {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.to_string())),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        let v = match v {
            Some(v) if k == "from" => {
                if v.find('$').is_some_and(|i| i + 1 != v.len()) {
                    return Err(format!(
                        "'from' doesn't support variable expansion ({v}): define an alias stage (FROM {v} AS name) and use its name"
                    )
                    .into());
                }
                Some(v)
            }
            Some(v) => match expand {
                Some(e) => Some(e(&v)?),
                None => {
                    deferred |= v.contains('$');
                    Some(v)
                }
            },
            None => None,
        };
        if k == "type" {
            kind = v.unwrap_or_default();
        } else {
            fields.push((k, v));
        }
    }
    if deferred {
        return Ok(RunMount {
            spec: spec.to_string(),
            kind: String::new(),
            target: String::new(),
            from: None,
            options: Vec::new(),
        });
    }
    if !matches!(kind.as_str(), "bind" | "cache" | "tmpfs" | "secret" | "ssh") {
        let near = suggest(&kind, &["bind", "cache", "tmpfs", "secret", "ssh"])
            .map(|s| format!(" (did you mean {s}?)"))
            .unwrap_or_default();
        return Err(format!(
            "unsupported mount type {kind:?}{near}; use bind, cache, tmpfs, secret or ssh"
        )
        .into());
    }
    for (k, v) in fields {
        let value = |v: Option<String>| {
            v.ok_or_else(|| format!("invalid field '{k}' must be a key=value pair"))
        };
        let boolean = |v: &Option<String>| -> Result<String, String> {
            match v.as_deref() {
                None | Some("true") | Some("1") => Ok("true".into()),
                Some("false") | Some("0") => Ok("false".into()),
                Some(o) => Err(format!("invalid value for {k}: {o}")),
            }
        };
        match k.as_str() {
            "from" => from = Some(value(v)?),
            "source" | "src" => options.push(("source".into(), value(v)?)),
            "target" | "dst" | "destination" => target = value(v)?,
            "readonly" | "ro" => options.push(("readonly".into(), boolean(&v)?)),
            "readwrite" | "rw" => {
                let b = boolean(&v)?;
                options.push((
                    "readonly".into(),
                    if b == "true" { "false" } else { "true" }.into(),
                ));
            }
            "required" if kind == "secret" || kind == "ssh" => {
                options.push(("required".into(), boolean(&v)?))
            }
            "size" if kind == "tmpfs" => options.push(("size".into(), value(v)?)),
            "id" => options.push(("id".into(), value(v)?)),
            "sharing" => {
                let s = value(v)?;
                if !matches!(s.as_str(), "shared" | "private" | "locked") {
                    return Err(format!(
                        "unsupported sharing value {s:?}; use shared, private or locked"
                    )
                    .into());
                }
                if kind != "cache" {
                    return Err(format!("invalid cache sharing set for {kind} mount").into());
                }
                options.push(("sharing".into(), s));
            }
            "mode" | "uid" | "gid" => {
                let s = value(v)?;
                let ok = if k == "mode" {
                    u32::from_str_radix(&s, 8).is_ok()
                } else {
                    s.parse::<u32>().is_ok()
                };
                if !ok {
                    return Err(format!("invalid value {s} for {k}").into());
                }
                if !matches!(kind.as_str(), "cache" | "secret" | "ssh") {
                    return Err(format!("{k} not allowed for {kind:?} type mounts").into());
                }
                options.push((k.clone(), s));
            }
            "env" if kind == "secret" => options.push(("env".into(), value(v)?)),
            _ => return Err(format!("unexpected key '{k}' for mount type '{kind}'").into()),
        }
    }
    if target.is_empty() && !matches!(kind.as_str(), "secret" | "ssh") {
        return Err(format!("mount type={kind} requires a target: add target=/path").into());
    }
    if let Some(f) = &from {
        if kind != "bind" && kind != "cache" {
            return Err(format!("from is not allowed for {kind} mounts ({f})").into());
        }
    }
    options.sort();
    options.dedup_by(|a, b| a.0 == b.0);
    Ok(RunMount {
        spec: spec.to_string(),
        kind,
        target,
        from,
        options,
    })
}

/// Splits a `--mount` value on commas, honouring double quotes as CSV does.
fn split_csv(s: &str) -> Result<Vec<String>, Msg> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_q = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if in_q && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => in_q = !in_q,
            ',' if !in_q => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if in_q {
        return Err(format!("unterminated quote in --mount={s}").into());
    }
    out.push(cur);
    Ok(out.into_iter().filter(|f| !f.is_empty()).collect())
}

/// Parses one syntax-tree instruction into a typed one.
pub fn parse_instruction(node: &Instruction) -> Result<Located, Error> {
    parse_inner(node)
        .map(|command| Located {
            command,
            line: node.start_line,
            end_line: node.end_line,
            original: node.original.trim().to_string(),
        })
        .map_err(|m| Error::instruction_in(node.start_line, node.end_line, node.original.trim(), m))
}

fn parse_inner(node: &Instruction) -> Result<Command, Msg> {
    let flags = Flags::new(&node.flags)?;
    let name = node.name();
    let upper = name.to_ascii_uppercase();
    let no_flags = |f: &Flags| f.check(&upper, &[], &[]);
    Ok(match name.as_str() {
        "from" => {
            flags.check("FROM", &["platform"], &[])?;
            let a = &node.args;
            let stage_name = match a.len() {
                1 => None,
                3 if a[1].eq_ignore_ascii_case("as") => {
                    let n = a[2].to_ascii_lowercase();
                    let mut chars = n.chars();
                    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
                        && chars.all(|c| {
                            c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c)
                        });
                    if !valid {
                        return Err(Msg::at(
                            a[2].as_str(),
                            format!("invalid name for build stage: {:?}, name can't start with a number or contain symbols (use letters, digits, '-', '_' and '.', starting with a letter)", a[2]),
                        ));
                    }
                    Some(n)
                }
                _ => {
                    return Err(
                        "FROM requires either one or three arguments: FROM image [AS name]".into(),
                    )
                }
            };
            Command::From(From {
                base: a[0].clone(),
                name: stage_name,
                platform: flags.string("platform")?,
            })
        }
        "run" => {
            flags.check(
                "RUN",
                &["mount", "network", "security", "device"],
                &["mount", "device"],
            )?;
            let mounts = flags
                .strings("mount")?
                .iter()
                .map(|m| parse_mount(m, None))
                .collect::<Result<Vec<_>, _>>()?;
            let network = match flags.string("network")?.as_deref() {
                None | Some("default") => NetworkMode::Default,
                Some("none") => NetworkMode::None,
                Some("host") => NetworkMode::Host,
                Some(o) => {
                    return Err(format!(
                        "unsupported network mode {o:?}: use default, none or host"
                    )
                    .into())
                }
            };
            let insecure = match flags.string("security")?.as_deref() {
                None | Some("sandbox") => false,
                Some("insecure") => true,
                Some(o) => {
                    return Err(
                        format!("unsupported security mode {o:?}: use sandbox or insecure").into(),
                    )
                }
            };
            Command::Run(Run {
                cmd: cmd_line(node, false),
                mounts,
                network,
                insecure,
            })
        }
        "cmd" => {
            no_flags(&flags)?;
            Command::Cmd(cmd_line(node, false))
        }
        "entrypoint" => {
            no_flags(&flags)?;
            Command::Entrypoint(cmd_line(node, true))
        }
        "label" => {
            no_flags(&flags)?;
            Command::Label(kvps(node, "LABEL")?)
        }
        "env" => {
            no_flags(&flags)?;
            Command::Env(kvps(node, "ENV")?)
        }
        "maintainer" => {
            no_flags(&flags)?;
            Command::Maintainer(exactly_one(node, "MAINTAINER")?)
        }
        "expose" => {
            no_flags(&flags)?;
            if node.args.is_empty() {
                return Err("EXPOSE requires at least one argument: EXPOSE 80/tcp".into());
            }
            Command::Expose(node.args.clone())
        }
        "add" | "copy" => {
            let add = name == "add";
            if add {
                flags.check(
                    "ADD",
                    &[
                        "chown",
                        "chmod",
                        "link",
                        "keep-git-dir",
                        "checksum",
                        "unpack",
                        "exclude",
                    ],
                    &["exclude"],
                )?;
            } else {
                flags.check(
                    "COPY",
                    &["chown", "from", "chmod", "link", "exclude", "parents"],
                    &["exclude"],
                )?;
            }
            if node.args.len() < 2 {
                return Err(format!("{upper} requires at least two arguments, but only one was provided. Destination could not be determined").into());
            }
            let dest = node.args[node.args.len() - 1].clone();
            if parser::parse_heredoc(&dest)?.is_some() {
                return Err(format!("{upper} cannot accept a heredoc as a destination").into());
            }
            let mut srcs = Vec::new();
            let mut contents = Vec::new();
            for src in &node.args[..node.args.len() - 1] {
                match parser::parse_heredoc(src)? {
                    Some(h) if !node.json => {
                        let mut doc = node
                            .heredocs
                            .iter()
                            .find(|d| d.name == h.name)
                            .cloned()
                            .unwrap_or(h);
                        doc.content = doc.chomped_content();
                        contents.push(doc);
                    }
                    _ => srcs.push(src.clone()),
                }
            }
            Command::Copy(Copy {
                add,
                srcs,
                contents,
                dest,
                from: flags.string("from")?,
                chown: flags.string("chown")?,
                chmod: flags.string("chmod")?,
                link: flags.bool("link")?.unwrap_or(false),
                parents: flags.bool("parents")?.unwrap_or(false),
                excludes: flags.strings("exclude")?,
                keep_git_dir: flags.bool("keep-git-dir")?.unwrap_or(false),
                checksum: flags.string("checksum")?,
                unpack: flags.bool("unpack")?,
            })
        }
        "volume" => {
            no_flags(&flags)?;
            if node.args.is_empty() {
                return Err("VOLUME requires at least one argument".into());
            }
            let mut v = Vec::new();
            for a in &node.args {
                let t = a.trim();
                if t.is_empty() {
                    return Err("VOLUME specified can not be an empty string".into());
                }
                v.push(t.to_string());
            }
            Command::Volume(v)
        }
        "user" => {
            no_flags(&flags)?;
            Command::User(exactly_one(node, "USER")?)
        }
        "workdir" => {
            no_flags(&flags)?;
            Command::Workdir(exactly_one(node, "WORKDIR")?)
        }
        "arg" => {
            no_flags(&flags)?;
            if node.args.is_empty() {
                return Err("ARG requires at least one argument: ARG name[=default]".into());
            }
            let mut out = Vec::new();
            for a in &node.args {
                match a.split_once('=') {
                    Some(("", _)) => {
                        return Err(Msg::at(
                            a.as_str(),
                            "ARG names can not be blank: write `ARG name=value`",
                        ))
                    }
                    Some((k, v)) => out.push((k.to_string(), Some(v.to_string()))),
                    None => out.push((a.clone(), None)),
                }
            }
            Command::Arg(out)
        }
        "onbuild" => {
            no_flags(&flags)?;
            let Some(child) = &node.child else {
                return Err("ONBUILD requires at least one argument".into());
            };
            match child.name().as_str() {
                "onbuild" => {
                    return Err("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into())
                }
                "maintainer" | "from" => {
                    return Err(format!(
                        "{} isn't allowed as an ONBUILD trigger",
                        child.command.to_ascii_uppercase()
                    )
                    .into())
                }
                _ => {}
            }
            // Validate the trigger now, so errors point at this line.
            parse_inner(child)?;
            let orig = node.original.trim_start();
            let mut expr = orig
                .get(node.command.len()..)
                .unwrap_or("")
                .trim_start()
                .to_string();
            for h in &node.heredocs {
                expr.push('\n');
                expr.push_str(&h.content);
                expr.push_str(&h.name);
            }
            Command::Onbuild(expr)
        }
        "stopsignal" => {
            no_flags(&flags)?;
            Command::StopSignal(exactly_one(node, "STOPSIGNAL")?)
        }
        "healthcheck" => {
            if node.args.is_empty() {
                return Err("HEALTHCHECK requires at least one argument: HEALTHCHECK CMD <command> or HEALTHCHECK NONE".into());
            }
            let typ = node.args[0].to_ascii_uppercase();
            let rest = &node.args[1..];
            if typ == "NONE" {
                if !rest.is_empty() {
                    return Err("HEALTHCHECK NONE takes no arguments".into());
                }
                no_flags(&flags)?;
                Command::Healthcheck(Healthcheck {
                    test: vec!["NONE".into()],
                    interval: 0,
                    timeout: 0,
                    start_period: 0,
                    start_interval: 0,
                    retries: 0,
                })
            } else {
                flags.check(
                    "HEALTHCHECK",
                    &[
                        "interval",
                        "timeout",
                        "start-period",
                        "start-interval",
                        "retries",
                    ],
                    &[],
                )?;
                if typ != "CMD" {
                    return Err(format!("unknown type {typ:?} in HEALTHCHECK (try CMD)").into());
                }
                let mut args = rest.to_vec();
                if !node.json && args.len() > 1 {
                    args = vec![args.join(" ")];
                }
                if args.is_empty() {
                    return Err("missing command after HEALTHCHECK CMD".into());
                }
                let t = if node.json { "CMD" } else { "CMD-SHELL" };
                let mut test = vec![t.to_string()];
                test.extend(args);
                let dur = |n: &str| -> Result<i64, Msg> {
                    match flags.string(n)? {
                        None => Ok(0),
                        Some(s) if s.is_empty() => Ok(0),
                        Some(s) => {
                            let d = parse_duration(&s).map_err(|m| Msg::at(s.as_str(), m))?;
                            if d != 0 && d < 1_000_000 {
                                return Err(
                                    format!("interval --{n} cannot be less than 1ms").into()
                                );
                            }
                            Ok(d)
                        }
                    }
                };
                let retries = match flags.string("retries")? {
                    None => 0,
                    Some(s) => {
                        let r: i64 = s
                            .parse()
                            .map_err(|_| format!("invalid --retries value {s:?}: use a number"))?;
                        if r < 0 {
                            return Err(format!("--retries cannot be negative ({r})").into());
                        }
                        r
                    }
                };
                Command::Healthcheck(Healthcheck {
                    test,
                    interval: dur("interval")?,
                    timeout: dur("timeout")?,
                    start_period: dur("start-period")?,
                    start_interval: dur("start-interval")?,
                    retries,
                })
            }
        }
        "shell" => {
            no_flags(&flags)?;
            if node.args.is_empty() {
                return Err("SHELL requires at least one argument".into());
            }
            if !node.json {
                return Err(
                    "SHELL requires the arguments to be in JSON form: SHELL [\"/bin/sh\", \"-c\"]"
                        .into(),
                );
            }
            Command::Shell(node.args.clone())
        }
        _ => {
            let near = suggest(&node.command, INSTRUCTIONS)
                .map(|s| format!(" (did you mean {s}?)"))
                .unwrap_or_default();
            return Err(Msg::at(
                node.command.as_str(),
                format!("unknown instruction: {}{near}", node.command),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(src: &str) -> Result<Command, Error> {
        let df = parser::parse(src).map_err(|e| e.with_file("Dockerfile"))?;
        parse_instruction(&df.instructions[0]).map(|l| l.command)
    }

    #[test]
    fn from_forms() {
        assert_eq!(
            one("FROM --platform=linux/arm64 busybox AS Build").unwrap(),
            Command::From(From {
                base: "busybox".into(),
                name: Some("build".into()),
                platform: Some("linux/arm64".into())
            })
        );
        assert!(one("FROM a AS 1x").is_err());
        assert!(one("FROM a b").is_err());
        assert!(one("FROM --plat=x a").is_err());
    }

    #[test]
    fn run_flags() {
        let Command::Run(r) = one(
            "RUN --mount=type=cache,target=/root/.cache,sharing=locked,id=go --mount=type=secret,id=tok,required --network=none --security=insecure make",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(r.mounts.len(), 2);
        assert_eq!(r.mounts[0].kind, "cache");
        assert_eq!(r.mounts[0].target, "/root/.cache");
        assert_eq!(
            r.mounts[0].options,
            vec![
                ("id".into(), "go".into()),
                ("sharing".into(), "locked".into())
            ]
        );
        assert_eq!(
            r.mounts[1].options,
            vec![
                ("id".into(), "tok".into()),
                ("required".into(), "true".into())
            ]
        );
        assert_eq!(r.network, NetworkMode::None);
        assert!(r.insecure);
        assert_eq!(r.cmd.args, vec!["make"]);
        assert!(r.cmd.prepend_shell);
        let Command::Run(r) =
            one("RUN --mount=type=bind,from=build,source=/out,target=/in,rw [\"ls\"]").unwrap()
        else {
            panic!()
        };
        assert_eq!(r.mounts[0].from.as_deref(), Some("build"));
        assert!(!r.cmd.prepend_shell);
        assert!(one("RUN --mount=type=nfs,target=/x a").is_err());
        assert!(one("RUN --mount=type=cache a").is_err());
        assert!(one("RUN --mount=type=tmpfs,target=/t,sharing=shared a").is_err());
        assert!(one("RUN --network=bridge a").is_err());
        assert!(one("RUN --security=root a").is_err());
        assert!(one("RUN --foo a").is_err());
    }

    #[test]
    fn copy_and_add_flags() {
        let Command::Copy(c) = one("COPY --from=build --chown=1:2 --chmod=755 --link --parents --exclude=*.md --exclude=x a b /dst/").unwrap() else {
            panic!()
        };
        assert_eq!(c.srcs, vec!["a", "b"]);
        assert_eq!(c.dest, "/dst/");
        assert_eq!(c.from.as_deref(), Some("build"));
        assert_eq!(c.chown.as_deref(), Some("1:2"));
        assert_eq!(c.chmod.as_deref(), Some("755"));
        assert!(c.link && c.parents);
        assert_eq!(c.excludes, vec!["*.md", "x"]);
        let Command::Copy(c) =
            one("ADD --keep-git-dir=true --checksum=sha256:abc https://x/y.tar /z").unwrap()
        else {
            panic!()
        };
        assert!(c.add && c.keep_git_dir);
        assert_eq!(c.checksum.as_deref(), Some("sha256:abc"));
        assert!(one("COPY --checksum=x a b").is_err());
        assert!(one("ADD --from=x a b").is_err());
        assert!(one("COPY a").is_err());
        assert!(one("COPY --link=maybe a b").is_err());
        assert!(one("COPY --chown a b").is_err());
        let Command::Copy(c) = one("COPY <<-EOF /etc/motd\n\thello\n\tEOF\n").unwrap() else {
            panic!()
        };
        assert_eq!(c.contents[0].content, "hello\n");
        assert!(one("COPY a <<EOF\nx\nEOF\n").is_err());
    }

    #[test]
    fn healthcheck() {
        let Command::Healthcheck(h) = one("HEALTHCHECK --interval=30s --timeout=1m30s --retries=3 --start-period=1.5s --start-interval=500ms CMD curl -f http://x/ || exit 1").unwrap() else {
            panic!()
        };
        assert_eq!(h.test, vec!["CMD-SHELL", "curl -f http://x/ || exit 1"]);
        assert_eq!(h.interval, 30_000_000_000);
        assert_eq!(h.timeout, 90_000_000_000);
        assert_eq!(h.start_period, 1_500_000_000);
        assert_eq!(h.start_interval, 500_000_000);
        assert_eq!(h.retries, 3);
        let Command::Healthcheck(h) = one("HEALTHCHECK CMD [\"true\"]").unwrap() else {
            panic!()
        };
        assert_eq!(h.test, vec!["CMD", "true"]);
        let Command::Healthcheck(h) = one("HEALTHCHECK NONE").unwrap() else {
            panic!()
        };
        assert_eq!(h.test, vec!["NONE"]);
        assert!(one("HEALTHCHECK NONE x").is_err());
        assert!(one("HEALTHCHECK FOO x").is_err());
        assert!(one("HEALTHCHECK --retries=-1 CMD x").is_err());
        assert!(one("HEALTHCHECK --interval=1x CMD x").is_err());
        assert_eq!(format_duration(90_000_000_000), "1m30s");
        assert_eq!(format_duration(1_500_000_000), "1.5s");
        assert_eq!(format_duration(500_000_000), "500ms");
        assert_eq!(format_duration(3_600_000_000_000), "1h0m0s");
    }

    #[test]
    fn shell_onbuild_and_misc() {
        assert_eq!(
            one("SHELL [\"/bin/bash\", \"-c\"]").unwrap(),
            Command::Shell(vec!["/bin/bash".into(), "-c".into()])
        );
        assert!(one("SHELL /bin/bash -c").is_err());
        assert_eq!(
            one("ONBUILD RUN echo hi").unwrap(),
            Command::Onbuild("RUN echo hi".into())
        );
        assert!(one("ONBUILD ONBUILD RUN x").is_err());
        assert!(one("ONBUILD FROM x").is_err());
        assert!(one("ONBUILD RUN --bogus x").is_err());
        assert_eq!(
            one("ARG a b=c").unwrap(),
            Command::Arg(vec![("a".into(), None), ("b".into(), Some("c".into()))])
        );
        assert_eq!(
            one("ENV a=b c=\"d e\"").unwrap(),
            Command::Env(vec![
                ("a".into(), "b".into()),
                ("c".into(), "\"d e\"".into())
            ])
        );
        assert_eq!(
            one("ENV a b c").unwrap(),
            Command::Env(vec![("a".into(), "b c".into())])
        );
        assert_eq!(one("USER a b").unwrap(), Command::User("a b".into()));
        assert!(one("VOLUME [\"\"]").is_err());
        let e = one("RUNN make").unwrap_err().to_string();
        assert!(e.contains("did you mean RUN"), "{e}");
        assert!(e.starts_with("Dockerfile:1: RUNN make"), "{e}");
    }
}

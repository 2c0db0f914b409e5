//! From a merged, interpolated [`Node`] to typed values, with errors that name file, line and key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::interp::{parse_env_file, Vars};
use crate::model::*;
use crate::yaml::{Node, Value};
use crate::Error;

/// What decoding needs besides the tree.
pub(crate) struct Ctx<'a> {
    /// Relative paths are resolved against it.
    pub dir: &'a Path,
    /// Interpolation variables (for `env_file:` values and `~`).
    pub vars: &'a Vars,
}

pub(crate) fn err(n: &Node, key: &str, msg: impl Into<String>) -> Error {
    Error::Invalid {
        file: n.pos.file.to_string(),
        line: n.pos.line,
        key: key.to_string(),
        msg: msg.into(),
    }
}

/// Rejects keys of mapping `n` that are not in `allowed` (an `x-` key is always allowed).
pub(crate) fn check_keys(n: &Node, path: &str, allowed: &[&str]) -> Result<(), Error> {
    let Value::Map(m) = &n.v else {
        return Err(err(
            n,
            path,
            format!("expected a mapping, found {}", n.kind()),
        ));
    };
    for (k, _) in m {
        if !allowed.contains(&k.name.as_str()) && !k.name.starts_with("x-") {
            let key = join(path, &k.name);
            let hint = match suggest(&k.name, allowed) {
                Some(s) => format!(" (did you mean {s:?}?)"),
                None => String::new(),
            };
            return Err(Error::Invalid {
                file: k.pos.file.to_string(),
                line: k.pos.line,
                key,
                msg: format!(
                    "unknown key{hint}; rbuild compose knows: {}",
                    allowed.join(", ")
                ),
            });
        }
    }
    Ok(())
}

fn suggest<'a>(name: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let n = name.to_ascii_lowercase().replace('-', "_");
    allowed.iter().copied().find(|a| {
        *a == n || (a.len() > 3 && (n.starts_with(&a[..a.len() - 1]) || a.starts_with(&n)))
    })
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub(crate) fn entries<'a>(
    n: &'a Node,
    path: &str,
) -> Result<&'a [(crate::yaml::Key, Node)], Error> {
    match &n.v {
        Value::Map(m) => Ok(m),
        Value::Null => Ok(&[]),
        _ => Err(err(
            n,
            path,
            format!("expected a mapping, found {}", n.kind()),
        )),
    }
}

pub(crate) fn string(n: &Node, path: &str) -> Result<String, Error> {
    match &n.v {
        Value::Scalar { text, .. } => Ok(text.clone()),
        _ => Err(err(
            n,
            path,
            format!("expected a string, found {}", n.kind()),
        )),
    }
}

fn opt_string(n: &Node, key: &str, path: &str) -> Result<Option<String>, Error> {
    match n.get(key) {
        None => Ok(None),
        Some(v) if v.v == Value::Null => Ok(None),
        Some(v) => string(v, &join(path, key)).map(Some),
    }
}

fn boolean(n: &Node, path: &str) -> Result<bool, Error> {
    let s = string(n, path)?;
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" => Ok(true),
        "false" | "no" | "off" => Ok(false),
        _ => Err(err(n, path, format!("expected true or false, found {s:?}"))),
    }
}

fn opt_bool(n: &Node, key: &str, path: &str) -> Result<bool, Error> {
    match n.get(key) {
        None => Ok(false),
        Some(v) if v.v == Value::Null => Ok(false),
        Some(v) => boolean(v, &join(path, key)),
    }
}

fn number<T: std::str::FromStr>(n: &Node, path: &str, what: &str) -> Result<T, Error> {
    let s = string(n, path)?;
    s.trim()
        .parse()
        .map_err(|_| err(n, path, format!("expected {what}, found {s:?}")))
}

fn string_list(n: &Node, path: &str) -> Result<Vec<String>, Error> {
    match &n.v {
        Value::Seq(items) => items
            .iter()
            .enumerate()
            .map(|(i, it)| string(it, &format!("{path}[{i}]")))
            .collect(),
        Value::Null => Ok(Vec::new()),
        _ => Err(err(n, path, format!("expected a list, found {}", n.kind()))),
    }
}

fn string_or_list(n: &Node, path: &str) -> Result<Vec<String>, Error> {
    match &n.v {
        Value::Scalar { text, .. } => Ok(vec![text.clone()]),
        _ => string_list(n, path),
    }
}

/// `command:`/`entrypoint:`: a string is split as a shell would, a list is taken as is.
fn command(n: &Node, path: &str) -> Result<Vec<String>, Error> {
    match &n.v {
        Value::Scalar { text, .. } => shell_split(text).map_err(|e| err(n, path, e)),
        _ => string_list(n, path),
    }
}

/// Splits words as `sh` would (quotes and backslashes), without expanding anything.
pub fn shell_split(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(format!("unterminated single quote in {s:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c)
                            }
                            None => return Err(format!("unterminated double quote in {s:?}")),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(format!("unterminated double quote in {s:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') | None => {}
                    Some(c) => cur.push(c),
                }
            }
            c => {
                in_word = true;
                cur.push(c)
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// `environment:`, `labels:`, `args:`: a mapping or a list of `KEY=VALUE` / `KEY`.
fn list_or_map(n: &Node, path: &str) -> Result<BTreeMap<String, Option<String>>, Error> {
    let mut out = BTreeMap::new();
    match &n.v {
        Value::Map(m) => {
            for (k, v) in m {
                let p = join(path, &k.name);
                let val = match &v.v {
                    Value::Null => None,
                    Value::Scalar { text, .. } => Some(text.clone()),
                    _ => {
                        return Err(err(
                            v,
                            &p,
                            format!("expected a string, number or boolean, found {}", v.kind()),
                        ))
                    }
                };
                out.insert(k.name.clone(), val);
            }
        }
        Value::Seq(items) => {
            for (i, it) in items.iter().enumerate() {
                let s = string(it, &format!("{path}[{i}]"))?;
                let (k, v) = match s.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (s, None),
                };
                if k.is_empty() {
                    return Err(err(it, &format!("{path}[{i}]"), "empty name"));
                }
                out.insert(k, v);
            }
        }
        Value::Null => {}
        _ => {
            return Err(err(
                n,
                path,
                format!("expected a mapping or a list, found {}", n.kind()),
            ))
        }
    }
    Ok(out)
}

fn labels(n: Option<&Node>, path: &str) -> Result<BTreeMap<String, String>, Error> {
    Ok(match n {
        None => BTreeMap::new(),
        Some(n) => list_or_map(n, path)?
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect(),
    })
}

/// Go-style durations as compose writes them: `1h2m3s`, `1.5s`, `500ms`, `10us`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?} (expected e.g. 30s, 1m30s, 500ms)");
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = t;
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
        let secs = match &rest[..u] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += num * secs;
        rest = &rest[u..];
    }
    if !total.is_finite() || total > 1e12 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

fn duration(n: &Node, key: &str, path: &str) -> Result<Option<Duration>, Error> {
    match n.get(key) {
        None => Ok(None),
        Some(v) if v.v == Value::Null => Ok(None),
        Some(v) => {
            let p = join(path, key);
            parse_duration(&string(v, &p)?)
                .map(Some)
                .map_err(|e| err(v, &p, e))
        }
    }
}

/// Sizes as compose writes them: `1024`, `512m`, `1.5g`, `100kb`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let n = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let num: f64 = t[..n]
        .parse()
        .map_err(|_| format!("invalid size {s:?} (expected e.g. 512m, 1g, 1048576)"))?;
    let mult: f64 = match t[n..].trim() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024f64.powi(4),
        _ => {
            return Err(format!(
                "invalid size {s:?} (expected e.g. 512m, 1g, 1048576)"
            ))
        }
    };
    let v = num * mult;
    if !v.is_finite() || v > u64::MAX as f64 {
        return Err(format!("size {s:?} is too large"));
    }
    Ok(v as u64)
}

/// Resolves a relative host path (`./x`, `x`, `~/x`) against the project directory.
fn host_path(ctx: &Ctx, p: &str) -> PathBuf {
    if let Some(rest) = p
        .strip_prefix("~/")
        .or(if p == "~" { Some("") } else { None })
    {
        let home = ctx
            .vars
            .get("HOME")
            .cloned()
            .unwrap_or_else(|| "/root".into());
        return normalize(&Path::new(&home).join(rest));
    }
    normalize(&ctx.dir.join(p))
}

/// Removes `.` and resolves `..` lexically (the path names a host directory the user chose).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

const SERVICE_KEYS: &[&str] = &[
    "image",
    "build",
    "container_name",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "volumes",
    "networks",
    "depends_on",
    "healthcheck",
    "restart",
    "user",
    "working_dir",
    "hostname",
    "labels",
    "tmpfs",
    "read_only",
    "init",
    "stop_signal",
    "stop_grace_period",
    "deploy",
    "profiles",
];

/// Decodes one service (`n` is its mapping).
pub(crate) fn service(ctx: &Ctx, name: &str, n: &Node) -> Result<Service, Error> {
    let path = format!("services.{name}");
    check_keys(n, &path, SERVICE_KEYS)?;
    let p = |k: &str| join(&path, k);
    let mut s = Service {
        name: name.to_string(),
        image: opt_string(n, "image", &path)?,
        container_name: opt_string(n, "container_name", &path)?,
        user: opt_string(n, "user", &path)?,
        working_dir: opt_string(n, "working_dir", &path)?,
        hostname: opt_string(n, "hostname", &path)?,
        stop_signal: opt_string(n, "stop_signal", &path)?,
        read_only: opt_bool(n, "read_only", &path)?,
        init: opt_bool(n, "init", &path)?,
        stop_grace_period: duration(n, "stop_grace_period", &path)?,
        labels: labels(n.get("labels"), &p("labels"))?,
        ..Default::default()
    };
    if let Some(b) = n.get("build") {
        s.build = Some(build(ctx, b, &p("build"))?);
    }
    if s.image.is_none() && s.build.is_none() {
        return Err(err(n, &path, "a service needs `image:` or `build:`"));
    }
    if let Some(c) = n.get("command") {
        s.command = Some(command(c, &p("command"))?);
    }
    if let Some(c) = n.get("entrypoint") {
        s.entrypoint = Some(command(c, &p("entrypoint"))?);
    }
    if let Some(f) = n.get("env_file") {
        for (i, file) in string_or_list(f, &p("env_file"))?.iter().enumerate() {
            let fp = format!("{}[{i}]", p("env_file"));
            let path = host_path(ctx, file);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| err(f, &fp, format!("cannot read {}: {e}", path.display())))?;
            let kv = parse_env_file(&text, ctx.vars)
                .map_err(|(line, e)| err(f, &fp, format!("{}:{line}: {e}", path.display())))?;
            s.environment
                .extend(kv.into_iter().map(|(k, v)| (k, Some(v))));
        }
    }
    if let Some(e) = n.get("environment") {
        s.environment.extend(list_or_map(e, &p("environment"))?);
    }
    if let Some(ports) = n.get("ports") {
        s.ports = self::ports(ports, &p("ports"))?;
    }
    if let Some(e) = n.get("expose") {
        s.expose = string_list(e, &p("expose"))?;
    }
    if let Some(v) = n.get("volumes") {
        s.volumes = mounts(ctx, v, &p("volumes"))?;
    }
    s.networks = match n.get("networks") {
        Some(v) => service_networks(v, &p("networks"))?,
        None => BTreeMap::from([("default".to_string(), ServiceNetwork::default())]),
    };
    if let Some(d) = n.get("depends_on") {
        s.depends_on = depends_on(d, &p("depends_on"))?;
    }
    if let Some(h) = n.get("healthcheck") {
        s.healthcheck = Some(healthcheck(h, &p("healthcheck"))?);
    }
    if let Some(r) = n.get("restart") {
        let text = string(r, &p("restart"))?;
        s.restart = parse_restart(&text).map_err(|e| err(r, &p("restart"), e))?;
    }
    if let Some(t) = n.get("tmpfs") {
        s.tmpfs = string_or_list(t, &p("tmpfs"))?;
    }
    if let Some(d) = n.get("deploy") {
        s.limits = deploy(d, &p("deploy"))?;
    }
    if let Some(pr) = n.get("profiles") {
        s.profiles = string_list(pr, &p("profiles"))?;
    }
    Ok(s)
}

fn build(ctx: &Ctx, n: &Node, path: &str) -> Result<Build, Error> {
    if let Value::Scalar { text, .. } = &n.v {
        return Ok(Build {
            context: host_path(ctx, text),
            dockerfile: "Dockerfile".into(),
            ..Default::default()
        });
    }
    check_keys(
        n,
        path,
        &["context", "dockerfile", "args", "target", "cache_from"],
    )?;
    let context = opt_string(n, "context", path)?.unwrap_or_else(|| ".".into());
    Ok(Build {
        context: host_path(ctx, &context),
        dockerfile: opt_string(n, "dockerfile", path)?.unwrap_or_else(|| "Dockerfile".into()),
        args: match n.get("args") {
            Some(a) => list_or_map(a, &join(path, "args"))?,
            None => BTreeMap::new(),
        },
        target: opt_string(n, "target", path)?,
        cache_from: match n.get("cache_from") {
            Some(c) => string_list(c, &join(path, "cache_from"))?,
            None => Vec::new(),
        },
    })
}

fn parse_restart(s: &str) -> Result<Restart, String> {
    Ok(match s {
        "no" | "" => Restart::No,
        "always" => Restart::Always,
        "unless-stopped" => Restart::UnlessStopped,
        "on-failure" => Restart::OnFailure(None),
        _ => match s.strip_prefix("on-failure:") {
            Some(n) => Restart::OnFailure(Some(
                n.parse()
                    .map_err(|_| format!("invalid retry count in {s:?}"))?,
            )),
            None => {
                return Err(format!(
                    "invalid restart policy {s:?} (expected no, always, on-failure[:N] or unless-stopped)"
                ))
            }
        },
    })
}

fn port_range(s: &str) -> Result<(u16, u16), String> {
    let one = |p: &str| -> Result<u16, String> {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("invalid port {p:?}"))
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (one(a)?, one(b)?);
            if b < a {
                return Err(format!("invalid port range {s:?}"));
            }
            Ok((a, b))
        }
        None => {
            let p = one(s)?;
            Ok((p, p))
        }
    }
}

fn protocol(s: &str) -> Result<Protocol, String> {
    match s {
        "tcp" | "" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => Err(format!("unsupported protocol {s:?} (tcp or udp)")),
    }
}

/// Expands `host` (maybe empty) and `target` ranges into ports.
fn expand_ports(
    host_ip: Option<String>,
    host: &str,
    target: &str,
    proto: Protocol,
) -> Result<Vec<Port>, String> {
    let (t0, t1) = port_range(target)?;
    let published = if host.is_empty() {
        None
    } else {
        let (h0, h1) = port_range(host)?;
        if h1 - h0 != t1 - t0 {
            return Err(format!(
                "host range {host} and container range {target} differ in length"
            ));
        }
        Some(h0)
    };
    Ok((t0..=t1)
        .map(|t| Port {
            target: t,
            published: published.map(|h| h + (t - t0)),
            host_ip: host_ip.clone(),
            protocol: proto,
        })
        .collect())
}

/// `[[IP:]HOST:]CONTAINER[/PROTO]` with ranges; IPv6 addresses in brackets.
pub fn parse_port(s: &str) -> Result<Vec<Port>, String> {
    let (spec, proto) = match s.rsplit_once('/') {
        Some((a, p)) => (a, protocol(p)?),
        None => (s, Protocol::Tcp),
    };
    let (ip, rest) = if let Some(r) = spec.strip_prefix('[') {
        let (ip, r) = r
            .split_once("]:")
            .ok_or_else(|| format!("invalid port {s:?}"))?;
        (Some(ip.to_string()), r)
    } else {
        let parts: Vec<&str> = spec.split(':').collect();
        match parts.len() {
            1 | 2 => (None, spec),
            3 => (Some(parts[0].to_string()), &spec[parts[0].len() + 1..]),
            _ => return Err(format!("invalid port {s:?}")),
        }
    };
    let (host, target) = match rest.split_once(':') {
        Some((h, t)) => (h, t),
        None if ip.is_some() => return Err(format!("invalid port {s:?}")),
        None => ("", rest),
    };
    if let Some(ip) = &ip {
        if ip.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("invalid host address {ip:?} in port {s:?}"));
        }
    }
    expand_ports(ip.filter(|i| !i.is_empty()), host, target, proto)
}

fn ports(n: &Node, path: &str) -> Result<Vec<Port>, Error> {
    let Value::Seq(items) = &n.v else {
        return Err(err(n, path, format!("expected a list, found {}", n.kind())));
    };
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if let Value::Scalar { text, .. } = &it.v {
            out.extend(parse_port(text).map_err(|e| err(it, &p, e))?);
            continue;
        }
        check_keys(
            it,
            &p,
            &[
                "target",
                "published",
                "host_ip",
                "protocol",
                "mode",
                "name",
                "app_protocol",
            ],
        )?;
        let target = it
            .get("target")
            .ok_or_else(|| err(it, &p, "a long-syntax port needs `target:`"))?;
        let target = string(target, &join(&p, "target"))?;
        let host = opt_string(it, "published", &p)?.unwrap_or_default();
        let proto = protocol(&opt_string(it, "protocol", &p)?.unwrap_or_default())
            .map_err(|e| err(it, &join(&p, "protocol"), e))?;
        let ip = opt_string(it, "host_ip", &p)?;
        if let Some(m) = opt_string(it, "mode", &p)? {
            if m != "host" && m != "ingress" {
                return Err(err(it, &join(&p, "mode"), "expected host or ingress"));
            }
        }
        out.extend(expand_ports(ip, &host, &target, proto).map_err(|e| err(it, &p, e))?);
    }
    Ok(out)
}

fn is_path(s: &str) -> bool {
    s.starts_with('/') || s.starts_with('.') || s.starts_with('~')
}

fn mount_short(ctx: &Ctx, s: &str) -> Result<Mount, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (src, target, mode) = match parts.as_slice() {
        [t] => (None, *t, ""),
        [s, t] => (Some(*s), *t, ""),
        [s, t, m] => (Some(*s), *t, *m),
        _ => return Err(format!("invalid volume {s:?} (SOURCE:TARGET[:MODE])")),
    };
    if !target.starts_with('/') {
        return Err(format!(
            "invalid volume {s:?}: the container path {target:?} must be absolute"
        ));
    }
    let mut read_only = false;
    for m in mode.split(',').filter(|m| !m.is_empty()) {
        match m {
            "ro" => read_only = true,
            "rw" | "z" | "Z" | "nocopy" | "rprivate" | "private" | "rshared" | "shared"
            | "rslave" | "slave" | "cached" | "delegated" | "consistent" => {}
            _ => return Err(format!("invalid volume mode {m:?} in {s:?}")),
        }
    }
    let source = match src {
        None => MountSource::Volume { source: None },
        Some(p) if is_path(p) => MountSource::Bind {
            source: host_path(ctx, p),
        },
        Some("") => return Err(format!("invalid volume {s:?}: empty source")),
        Some(v) => MountSource::Volume {
            source: Some(v.to_string()),
        },
    };
    Ok(Mount {
        source,
        target: target.to_string(),
        read_only,
    })
}

fn mounts(ctx: &Ctx, n: &Node, path: &str) -> Result<Vec<Mount>, Error> {
    let Value::Seq(items) = &n.v else {
        return Err(err(n, path, format!("expected a list, found {}", n.kind())));
    };
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if let Value::Scalar { text, .. } = &it.v {
            out.push(mount_short(ctx, text).map_err(|e| err(it, &p, e))?);
            continue;
        }
        out.push(mount_long(ctx, it, &p)?);
    }
    Ok(out)
}

fn mount_long(ctx: &Ctx, it: &Node, p: &str) -> Result<Mount, Error> {
    check_keys(
        it,
        p,
        &[
            "type",
            "source",
            "target",
            "read_only",
            "bind",
            "volume",
            "tmpfs",
            "consistency",
        ],
    )?;
    let kind = opt_string(it, "type", p)?.ok_or_else(|| err(it, p, "missing `type:`"))?;
    let target = opt_string(it, "target", p)?.ok_or_else(|| err(it, p, "missing `target:`"))?;
    if !target.starts_with('/') {
        return Err(err(it, &join(p, "target"), "must be an absolute path"));
    }
    let src = opt_string(it, "source", p)?;
    if let Some(b) = it.get("bind") {
        check_keys(
            b,
            &join(p, "bind"),
            &["propagation", "create_host_path", "selinux"],
        )?;
    }
    if let Some(v) = it.get("volume") {
        check_keys(v, &join(p, "volume"), &["nocopy", "subpath"])?;
    }
    let source = match kind.as_str() {
        "volume" => MountSource::Volume {
            source: src.filter(|s| !s.is_empty()),
        },
        "bind" => MountSource::Bind {
            source: host_path(
                ctx,
                &src.ok_or_else(|| err(it, p, "a bind mount needs `source:`"))?,
            ),
        },
        "tmpfs" => {
            let mut size = None;
            if let Some(t) = it.get("tmpfs") {
                let tp = join(p, "tmpfs");
                check_keys(t, &tp, &["size", "mode"])?;
                if let Some(s) = t.get("size") {
                    let sp = join(&tp, "size");
                    size = Some(parse_bytes(&string(s, &sp)?).map_err(|e| err(s, &sp, e))?);
                }
            }
            MountSource::Tmpfs { size }
        }
        other => {
            return Err(err(
                it,
                &join(p, "type"),
                format!("unsupported mount type {other:?} (volume, bind or tmpfs)"),
            ))
        }
    };
    Ok(Mount {
        source,
        target,
        read_only: opt_bool(it, "read_only", p)?,
    })
}

fn service_networks(n: &Node, path: &str) -> Result<BTreeMap<String, ServiceNetwork>, Error> {
    let mut out = BTreeMap::new();
    match &n.v {
        Value::Seq(_) => {
            for name in string_list(n, path)? {
                out.insert(name, ServiceNetwork::default());
            }
        }
        Value::Map(m) => {
            for (k, v) in m {
                let p = join(path, &k.name);
                let mut sn = ServiceNetwork::default();
                if v.v != Value::Null {
                    check_keys(v, &p, &["aliases"])?;
                    if let Some(a) = v.get("aliases") {
                        sn.aliases = string_list(a, &join(&p, "aliases"))?;
                    }
                }
                out.insert(k.name.clone(), sn);
            }
        }
        _ => {
            return Err(err(
                n,
                path,
                format!("expected a list or a mapping, found {}", n.kind()),
            ))
        }
    }
    Ok(out)
}

fn depends_on(n: &Node, path: &str) -> Result<BTreeMap<String, Dependency>, Error> {
    let mut out = BTreeMap::new();
    match &n.v {
        Value::Seq(_) => {
            for name in string_list(n, path)? {
                out.insert(
                    name,
                    Dependency {
                        condition: Condition::ServiceStarted,
                        required: true,
                    },
                );
            }
        }
        Value::Map(m) => {
            for (k, v) in m {
                let p = join(path, &k.name);
                check_keys(v, &p, &["condition", "restart", "required"])?;
                let condition = match opt_string(v, "condition", &p)?.as_deref() {
                    None | Some("service_started") => Condition::ServiceStarted,
                    Some("service_healthy") => Condition::ServiceHealthy,
                    Some("service_completed_successfully") => {
                        Condition::ServiceCompletedSuccessfully
                    }
                    Some(c) => return Err(err(
                        v.get("condition").unwrap_or(v),
                        &join(&p, "condition"),
                        format!("unknown condition {c:?} (service_started, service_healthy or service_completed_successfully)"),
                    )),
                };
                opt_bool(v, "restart", &p)?;
                let required = match v.get("required") {
                    Some(r) => boolean(r, &join(&p, "required"))?,
                    None => true,
                };
                out.insert(
                    k.name.clone(),
                    Dependency {
                        condition,
                        required,
                    },
                );
            }
        }
        _ => {
            return Err(err(
                n,
                path,
                format!("expected a list or a mapping, found {}", n.kind()),
            ))
        }
    }
    Ok(out)
}

fn healthcheck(n: &Node, path: &str) -> Result<Healthcheck, Error> {
    check_keys(
        n,
        path,
        &[
            "test",
            "interval",
            "timeout",
            "start_period",
            "start_interval",
            "retries",
            "disable",
        ],
    )?;
    let test = match n.get("test") {
        None => Vec::new(),
        Some(t) => match &t.v {
            Value::Scalar { text, .. } => vec!["CMD-SHELL".to_string(), text.clone()],
            _ => {
                let l = string_list(t, &join(path, "test"))?;
                match l.first().map(String::as_str) {
                    Some("CMD" | "CMD-SHELL" | "NONE") | None => l,
                    Some(o) => {
                        return Err(err(
                            t,
                            &join(path, "test"),
                            format!("a test list starts with CMD, CMD-SHELL or NONE, not {o:?}"),
                        ))
                    }
                }
            }
        },
    };
    duration(n, "start_interval", path)?;
    Ok(Healthcheck {
        test,
        interval: duration(n, "interval", path)?,
        timeout: duration(n, "timeout", path)?,
        start_period: duration(n, "start_period", path)?,
        retries: match n.get("retries") {
            Some(r) => Some(number(r, &join(path, "retries"), "a whole number")?),
            None => None,
        },
        disable: opt_bool(n, "disable", path)?,
    })
}

fn deploy(n: &Node, path: &str) -> Result<Limits, Error> {
    check_keys(n, path, &["resources"])?;
    let mut l = Limits::default();
    let Some(r) = n.get("resources") else {
        return Ok(l);
    };
    let rp = join(path, "resources");
    check_keys(r, &rp, &["limits"])?;
    let Some(lim) = r.get("limits") else {
        return Ok(l);
    };
    let lp = join(&rp, "limits");
    check_keys(lim, &lp, &["memory", "cpus", "pids"])?;
    if let Some(m) = lim.get("memory") {
        let p = join(&lp, "memory");
        l.memory = Some(parse_bytes(&string(m, &p)?).map_err(|e| err(m, &p, e))?);
    }
    if let Some(c) = lim.get("cpus") {
        let p = join(&lp, "cpus");
        let v: f64 = number(c, &p, "a number of CPUs")?;
        if !(v > 0.0 && v.is_finite()) {
            return Err(err(c, &p, "must be more than 0"));
        }
        l.cpus = Some(v);
    }
    if let Some(c) = lim.get("pids") {
        l.pids = Some(number(c, &join(&lp, "pids"), "a whole number")?);
    }
    Ok(l)
}

/// Decodes a top-level network (`n` may be null).
pub(crate) fn network(project: &str, key: &str, n: &Node) -> Result<Network, Error> {
    let path = format!("networks.{key}");
    let mut net = Network {
        name: format!("{project}_{key}"),
        ..Default::default()
    };
    if n.v == Value::Null {
        return Ok(net);
    }
    check_keys(
        n,
        &path,
        &[
            "name",
            "driver",
            "driver_opts",
            "external",
            "internal",
            "labels",
            "attachable",
            "enable_ipv6",
            "ipam",
        ],
    )?;
    net.external = opt_bool(n, "external", &path)?;
    if let Some(name) = opt_string(n, "name", &path)? {
        net.name = name;
    } else if net.external {
        net.name = key.to_string();
    }
    net.driver = opt_string(n, "driver", &path)?;
    if let Some(d) = &net.driver {
        if d != "bridge" {
            return Err(err(
                n,
                &join(&path, "driver"),
                format!("unsupported driver {d:?} (rbuild networks are bridges)"),
            ));
        }
    }
    net.internal = opt_bool(n, "internal", &path)?;
    net.labels = labels(n.get("labels"), &join(&path, "labels"))?;
    if let Some(ipam) = n.get("ipam") {
        let ip = join(&path, "ipam");
        check_keys(ipam, &ip, &["driver", "config"])?;
        if let Some(c) = ipam.get("config") {
            let Value::Seq(items) = &c.v else {
                return Err(err(c, &join(&ip, "config"), "expected a list"));
            };
            for (i, it) in items.iter().enumerate() {
                let p = format!("{ip}.config[{i}]");
                check_keys(it, &p, &["subnet", "gateway", "ip_range"])?;
                if let Some(s) = opt_string(it, "subnet", &p)? {
                    net.subnets.push(s);
                }
            }
        }
    }
    Ok(net)
}

/// Decodes a top-level volume (`n` may be null).
pub(crate) fn volume(project: &str, key: &str, n: &Node) -> Result<Volume, Error> {
    let path = format!("volumes.{key}");
    let mut vol = Volume {
        name: format!("{project}_{key}"),
        ..Default::default()
    };
    if n.v == Value::Null {
        return Ok(vol);
    }
    check_keys(
        n,
        &path,
        &["name", "driver", "driver_opts", "external", "labels"],
    )?;
    vol.external = opt_bool(n, "external", &path)?;
    if let Some(name) = opt_string(n, "name", &path)? {
        vol.name = name;
    } else if vol.external {
        vol.name = key.to_string();
    }
    vol.driver = opt_string(n, "driver", &path)?;
    if let Some(d) = &vol.driver {
        if d != "local" {
            return Err(err(
                n,
                &join(&path, "driver"),
                format!("unsupported driver {d:?} (only local)"),
            ));
        }
    }
    vol.labels = labels(n.get("labels"), &join(&path, "labels"))?;
    Ok(vol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_words() {
        assert_eq!(
            shell_split(r#"sh -c 'echo $A' "x \"y\"" a\ b"#).unwrap(),
            vec!["sh", "-c", "echo $A", "x \"y\"", "a b"]
        );
        assert_eq!(shell_split("  ").unwrap(), Vec::<String>::new());
        assert_eq!(shell_split("''").unwrap(), vec![""]);
        assert!(shell_split("'x").is_err());
        assert!(shell_split("\"x").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "10", "s", "1x", "-1s", "1..2s", "99999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_bytes("512m").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1.5k").unwrap(), 1536);
        assert_eq!(parse_bytes("100kb").unwrap(), 102400);
        for bad in ["", "m", "1x", "1e400"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ports_short() {
        let p = parse_port("8080:80").unwrap();
        assert_eq!(
            p,
            vec![Port {
                target: 80,
                published: Some(8080),
                host_ip: None,
                protocol: Protocol::Tcp
            }]
        );
        let p = parse_port("127.0.0.1:8080:80/udp").unwrap();
        assert_eq!(p[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(p[0].protocol, Protocol::Udp);
        let p = parse_port("80").unwrap();
        assert_eq!(p[0].published, None);
        let p = parse_port("127.0.0.1::80").unwrap();
        assert_eq!((p[0].published, p[0].target), (None, 80));
        let p = parse_port("[::1]:8080:80").unwrap();
        assert_eq!(p[0].host_ip.as_deref(), Some("::1"));
        let p = parse_port("9000-9002:8000-8002").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!((p[2].published, p[2].target), (Some(9002), 8002));
        for bad in [
            "",
            "x:80",
            "8080:0",
            "70000:80",
            "1-3:1-2",
            "80/sctp",
            "a:b:c:d",
            "nothost:1:2",
            "3-1:3-1",
        ] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn restart_policies() {
        assert_eq!(parse_restart("no").unwrap(), Restart::No);
        assert_eq!(parse_restart("always").unwrap(), Restart::Always);
        assert_eq!(
            parse_restart("on-failure:3").unwrap(),
            Restart::OnFailure(Some(3))
        );
        assert_eq!(
            parse_restart("unless-stopped").unwrap(),
            Restart::UnlessStopped
        );
        assert!(parse_restart("sometimes").is_err());
        assert!(parse_restart("on-failure:x").is_err());
    }

    #[test]
    fn volumes_short() {
        let vars = Vars::from([("HOME".to_string(), "/home/u".to_string())]);
        let ctx = Ctx {
            dir: Path::new("/p"),
            vars: &vars,
        };
        let m = mount_short(&ctx, "data:/var/lib/db").unwrap();
        assert_eq!(
            m.source,
            MountSource::Volume {
                source: Some("data".into())
            }
        );
        let m = mount_short(&ctx, "./html:/www:ro").unwrap();
        assert_eq!(
            m.source,
            MountSource::Bind {
                source: "/p/html".into()
            }
        );
        assert!(m.read_only);
        let m = mount_short(&ctx, "~/x:/x").unwrap();
        assert_eq!(
            m.source,
            MountSource::Bind {
                source: "/home/u/x".into()
            }
        );
        let m = mount_short(&ctx, "../up:/x").unwrap();
        assert_eq!(
            m.source,
            MountSource::Bind {
                source: "/up".into()
            }
        );
        let m = mount_short(&ctx, "/cache").unwrap();
        assert_eq!(m.source, MountSource::Volume { source: None });
        for bad in ["a:b", "a:/b:bogus", "a:/b:c:d", ":/x"] {
            assert!(mount_short(&ctx, bad).is_err(), "{bad}");
        }
    }
}

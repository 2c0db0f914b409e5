//! Finding, reading, interpolating, merging and validating compose files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::decode::{self, check_keys, entries, err, join, Ctx};
use crate::interp::{interpolate_node, parse_env_file, Vars};
use crate::model::*;
use crate::yaml::{self, Key, Node, Value};
use crate::Error;

/// How to find and read a project.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `-f` files, in order (empty: look them up as docker compose does).
    pub files: Vec<PathBuf>,
    /// `-p`.
    pub project_name: Option<String>,
    /// `--project-directory` (default: the first file's directory).
    pub project_dir: Option<PathBuf>,
    /// `--profile` (added to `COMPOSE_PROFILES`).
    pub profiles: Vec<String>,
    /// The process environment.
    pub env: Vars,
    /// The current directory.
    pub cwd: PathBuf,
}

const NAMES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// The compose files docker compose would read in `cwd` (or a parent): the first of
/// `compose.yaml`, `compose.yml`, `docker-compose.yaml`, `docker-compose.yml`, then its override.
pub fn find_files(cwd: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut dir = Some(cwd);
    while let Some(d) = dir {
        if let Some(main) = NAMES.iter().map(|n| d.join(n)).find(|p| p.is_file()) {
            let stem = main
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.rsplit_once('.'))
                .map(|(s, _)| s.to_string())
                .unwrap_or_default();
            let mut files = vec![main];
            if let Some(o) = ["yaml", "yml"]
                .iter()
                .map(|e| d.join(format!("{stem}.override.{e}")))
                .find(|p| p.is_file())
            {
                files.push(o);
            }
            return Ok(files);
        }
        dir = d.parent();
    }
    Err(Error::NotFound {
        dir: cwd.to_path_buf(),
    })
}

/// Docker compose's normalisation of a directory name into a project name.
pub fn normalize_project_name(s: &str) -> String {
    let lower: String = s
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    lower.trim_start_matches(['_', '-']).to_string()
}

/// Checks a project name given by the user (`-p`, `COMPOSE_PROJECT_NAME`, `name:`).
pub fn check_project_name(s: &str) -> Result<(), Error> {
    let ok = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::ProjectName(s.to_string()))
    }
}

fn read_dotenv(dir: &Path, env: &Vars) -> Result<Vars, Error> {
    let path = dir.join(".env");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(env.clone()),
        Err(e) => return Err(Error::Io { path, source: e }),
    };
    let kv = parse_env_file(&text, env).map_err(|(line, msg)| Error::Invalid {
        file: path.display().to_string(),
        line,
        key: String::new(),
        msg,
    })?;
    let mut vars = env.clone();
    for (k, v) in kv {
        vars.entry(k).or_insert(v);
    }
    Ok(vars)
}

/// Loads a project as docker compose would.
pub fn load(opts: &Options) -> Result<Project, Error> {
    let mut files: Vec<PathBuf> = opts.files.iter().map(|f| opts.cwd.join(f)).collect();
    if files.is_empty() {
        if let Some(list) = opts.env.get("COMPOSE_FILE").filter(|s| !s.is_empty()) {
            files = list.split(':').map(|f| opts.cwd.join(f)).collect();
        } else {
            files = find_files(&opts.cwd)?;
        }
    }
    let dir = match &opts.project_dir {
        Some(d) => opts.cwd.join(d),
        None => files[0]
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| opts.cwd.clone()),
    };
    let mut texts = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let text = std::fs::read_to_string(f).map_err(|e| Error::Io {
            path: f.clone(),
            source: e,
        })?;
        let shown = opts
            .files
            .get(i)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| match f.strip_prefix(&opts.cwd) {
                Ok(rel) => rel.display().to_string(),
                Err(_) => f.display().to_string(),
            });
        texts.push((f.clone(), shown, text));
    }
    load_texts(opts, &dir, &texts)
}

/// Loads a project from file contents already read: `(path, name shown in errors, text)`, merged
/// in order, with `dir` as the project directory (its `.env` is read).
pub fn load_texts(
    opts: &Options,
    dir: &Path,
    texts: &[(PathBuf, String, String)],
) -> Result<Project, Error> {
    let vars = read_dotenv(dir, &opts.env)?;
    let mut merged: Option<Node> = None;
    for (_, shown, text) in texts {
        let mut node = yaml::parse(shown, text)?;
        check_keys(
            &node,
            "",
            &["version", "name", "services", "networks", "volumes"],
        )?;
        interpolate_node(&mut node, &vars).map_err(|(line, msg)| Error::Invalid {
            file: shown.clone(),
            line,
            key: String::new(),
            msg,
        })?;
        merged = Some(match merged {
            None => node,
            Some(base) => merge_top(base, node),
        });
    }
    let root = merged.ok_or_else(|| Error::NotFound {
        dir: dir.to_path_buf(),
    })?;
    let name = project_name(opts, &vars, &root, dir)?;
    let mut profiles: BTreeSet<String> = opts.profiles.iter().cloned().collect();
    if let Some(p) = vars.get("COMPOSE_PROFILES") {
        profiles.extend(
            p.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        );
    }
    let files = texts.iter().map(|(p, _, _)| p.clone()).collect();
    build_project(&root, name, dir.to_path_buf(), files, &vars, &profiles)
}

fn project_name(opts: &Options, vars: &Vars, root: &Node, dir: &Path) -> Result<String, Error> {
    if let Some(p) = &opts.project_name {
        check_project_name(p)?;
        return Ok(p.clone());
    }
    if let Some(p) = vars.get("COMPOSE_PROJECT_NAME").filter(|s| !s.is_empty()) {
        check_project_name(p)?;
        return Ok(p.clone());
    }
    if let Some(n) = root.get("name") {
        let s = decode::string(n, "name")?;
        check_project_name(&s).map_err(|e| err(n, "name", e.to_string()))?;
        return Ok(s);
    }
    let base = dir
        .canonicalize()
        .unwrap_or_else(|_| dir.to_path_buf())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = normalize_project_name(&base);
    if n.is_empty() {
        return Err(Error::ProjectName(base));
    }
    Ok(n)
}

fn build_project(
    root: &Node,
    name: String,
    dir: PathBuf,
    files: Vec<PathBuf>,
    vars: &Vars,
    profiles: &BTreeSet<String>,
) -> Result<Project, Error> {
    let ctx = Ctx { dir: &dir, vars };
    let mut project = Project {
        name: name.clone(),
        working_dir: dir.clone(),
        config_files: files,
        services: BTreeMap::new(),
        disabled: BTreeMap::new(),
        networks: BTreeMap::new(),
        volumes: BTreeMap::new(),
    };
    let mut service_nodes = BTreeMap::new();
    if let Some(s) = root.get("services") {
        for (k, n) in entries(s, "services")? {
            if n.v == Value::Null {
                return Err(err(
                    n,
                    &join("services", &k.name),
                    "a service needs `image:` or `build:`",
                ));
            }
            let svc = decode::service(&ctx, &k.name, n)?;
            service_nodes.insert(k.name.clone(), (k.clone(), n));
            let on = svc.profiles.is_empty() || svc.profiles.iter().any(|p| profiles.contains(p));
            if on {
                project.services.insert(k.name.clone(), svc);
            } else {
                project.disabled.insert(k.name.clone(), svc);
            }
        }
    }
    if let Some(s) = root.get("networks") {
        for (k, n) in entries(s, "networks")? {
            project
                .networks
                .insert(k.name.clone(), decode::network(&name, &k.name, n)?);
        }
    }
    if let Some(s) = root.get("volumes") {
        for (k, n) in entries(s, "volumes")? {
            project
                .volumes
                .insert(k.name.clone(), decode::volume(&name, &k.name, n)?);
        }
    }
    validate(&mut project, &service_nodes)?;
    Ok(project)
}

type ServiceNodes<'a> = BTreeMap<String, (Key, &'a Node)>;

fn at(nodes: &ServiceNodes, svc: &str, key: &str) -> (String, usize) {
    let (k, n) = &nodes[svc];
    match n.get(key) {
        Some(v) => (v.pos.file.to_string(), v.pos.line),
        None => (k.pos.file.to_string(), k.pos.line),
    }
}

fn invalid(nodes: &ServiceNodes, svc: &str, key: &str, msg: String) -> Error {
    let (file, line) = at(nodes, svc, key);
    Error::Invalid {
        file,
        line,
        key: format!("services.{svc}.{key}"),
        msg,
    }
}

/// Undefined networks, volumes and services; `depends_on` cycles; the default network.
fn validate(p: &mut Project, nodes: &ServiceNodes) -> Result<(), Error> {
    let uses_default = p
        .services
        .values()
        .any(|s| s.networks.contains_key("default"));
    if uses_default && !p.networks.contains_key("default") {
        p.networks.insert(
            "default".into(),
            Network {
                name: format!("{}_default", p.name),
                ..Default::default()
            },
        );
    }
    for s in p.services.values() {
        for n in s.networks.keys() {
            if !p.networks.contains_key(n) {
                return Err(invalid(
                    nodes,
                    &s.name,
                    "networks",
                    format!("undefined network {n:?} (declare it under the top-level `networks:`)"),
                ));
            }
        }
        for m in &s.volumes {
            if let MountSource::Volume { source: Some(v) } = &m.source {
                if !p.volumes.contains_key(v) {
                    return Err(invalid(
                        nodes,
                        &s.name,
                        "volumes",
                        format!(
                            "undefined volume {v:?} (declare it under the top-level `volumes:`)"
                        ),
                    ));
                }
            }
        }
        for (d, dep) in &s.depends_on {
            if p.services.contains_key(d) {
                continue;
            }
            if p.disabled.contains_key(d) && dep.required {
                return Err(invalid(
                    nodes,
                    &s.name,
                    "depends_on",
                    format!("depends on {d:?}, whose profiles are not enabled"),
                ));
            }
            if !p.disabled.contains_key(d) && dep.required {
                return Err(invalid(
                    nodes,
                    &s.name,
                    "depends_on",
                    format!("depends on undefined service {d:?}"),
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(p) {
        return Err(invalid(
            nodes,
            &cycle[0],
            "depends_on",
            format!("dependency cycle: {}", cycle.join(" -> ")),
        ));
    }
    Ok(())
}

fn find_cycle(p: &Project) -> Option<Vec<String>> {
    fn visit(
        p: &Project,
        s: &str,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|x| x == s) {
            let mut c = stack[i..].to_vec();
            c.push(s.to_string());
            return Some(c);
        }
        if done.contains(s) {
            return None;
        }
        stack.push(s.to_string());
        if let Some(svc) = p.services.get(s) {
            for d in svc.depends_on.keys() {
                if let Some(c) = visit(p, d, stack, done) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        done.insert(s.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for s in p.services.keys() {
        if let Some(c) = visit(p, s, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

// ---- merging several files ------------------------------------------------------------------

fn merge_top(base: Node, over: Node) -> Node {
    merge_map(base, over, |key, b, o| match key {
        "services" => merge_map(b, o, |_, bs, os| merge_service(bs, os)),
        "networks" | "volumes" => merge_map(b, o, |_, x, y| merge_plain(x, y)),
        _ => o,
    })
}

/// Merges two mappings key by key with `f` (a non-mapping `over` replaces `base`).
fn merge_map(base: Node, over: Node, f: impl Fn(&str, Node, Node) -> Node) -> Node {
    let (Value::Map(mut b), Value::Map(o)) = (base.v.clone(), over.v.clone()) else {
        return over;
    };
    for (k, v) in o {
        match b.iter().position(|(bk, _)| bk.name == k.name) {
            Some(i) => {
                let old = b[i].1.clone();
                b[i].1 = f(&k.name, old, v);
            }
            None => b.push((k, v)),
        }
    }
    Node::new(Value::Map(b), base.pos)
}

fn merge_plain(base: Node, over: Node) -> Node {
    if matches!(base.v, Value::Map(_)) && matches!(over.v, Value::Map(_)) {
        merge_map(base, over, |_, b, o| merge_plain(b, o))
    } else {
        over
    }
}

fn merge_service(base: Node, over: Node) -> Node {
    merge_map(base, over, |key, b, o| match key {
        "environment" | "labels" => merge_plain(to_map(b), to_map(o)),
        "build" => merge_map(build_map(b), build_map(o), |k, x, y| match k {
            "args" => merge_plain(to_map(x), to_map(y)),
            _ => merge_plain(x, y),
        }),
        "depends_on" | "networks" => merge_plain(to_map(b), to_map(o)),
        "ports" | "expose" | "env_file" | "tmpfs" | "profiles" => append_unique(b, o),
        "volumes" => merge_volumes(b, o),
        "command" | "entrypoint" => o,
        _ => merge_plain(b, o),
    })
}

/// A list of `K=V` (or of names) as a mapping, for merging.
fn to_map(n: Node) -> Node {
    let Value::Seq(items) = &n.v else {
        return n;
    };
    let mut m = Vec::new();
    for it in items {
        if let Value::Scalar { text, .. } = &it.v {
            let (k, v) = match text.split_once('=') {
                Some((k, v)) => (k.to_string(), Node::str(v, it.pos.clone())),
                None => (text.clone(), Node::new(Value::Null, it.pos.clone())),
            };
            m.push((
                Key {
                    name: k,
                    pos: it.pos.clone(),
                },
                v,
            ));
        }
    }
    Node::new(Value::Map(m), n.pos)
}

fn build_map(n: Node) -> Node {
    match &n.v {
        Value::Scalar { .. } => {
            let pos = n.pos.clone();
            Node::new(
                Value::Map(vec![(
                    Key {
                        name: "context".into(),
                        pos: pos.clone(),
                    },
                    n,
                )]),
                pos,
            )
        }
        _ => n,
    }
}

fn append_unique(base: Node, over: Node) -> Node {
    let (Value::Seq(mut b), Value::Seq(o)) = (base.v.clone(), over.v.clone()) else {
        return over;
    };
    for it in o {
        if !b.iter().any(|x| x.v == it.v) {
            b.push(it);
        }
    }
    Node::new(Value::Seq(b), base.pos)
}

fn mount_target(n: &Node) -> Option<String> {
    match &n.v {
        Value::Scalar { text, .. } => {
            let parts: Vec<&str> = text.split(':').collect();
            Some(if parts.len() == 1 { parts[0] } else { parts[1] }.to_string())
        }
        Value::Map(_) => match n.get("target").map(|t| &t.v) {
            Some(Value::Scalar { text, .. }) => Some(text.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// Volumes merge by container path: an override's mount replaces the base's at the same target.
fn merge_volumes(base: Node, over: Node) -> Node {
    let (Value::Seq(mut b), Value::Seq(o)) = (base.v.clone(), over.v.clone()) else {
        return over;
    };
    for it in o {
        let t = mount_target(&it);
        match b.iter().position(|x| t.is_some() && mount_target(x) == t) {
            Some(i) => b[i] = it,
            None => b.push(it),
        }
    }
    Node::new(Value::Seq(b), base.pos)
}

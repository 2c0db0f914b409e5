//! Cache commands: `rbuild du`, `rbuild prune`, `rbuild cache ls|inspect`, and the cache-related
//! flags of `rbuild build` (`--no-cache-filter`, `--secret`, `--ssh`, `--explain-cache`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use rbuild_cache::{CacheRecord, PruneOptions, Store, UsageRecord};
use rbuild_solver::{Forwarded, SecretSource};
use serde_json::{json, Value};

/// Cache flags of `rbuild build`.
#[derive(Args, Debug, Default)]
pub(crate) struct CacheBuildArgs {
    /// Do not use the cache for the steps of this stage (name or index; repeatable).
    #[arg(long = "no-cache-filter", value_name = "STAGE")]
    pub no_cache_filter: Vec<String>,
    /// Secret for RUN --mount=type=secret: id=ID,src=PATH or id=ID,env=VAR (repeatable).
    #[arg(long = "secret", value_name = "id=ID,src=PATH|env=VAR")]
    pub secrets: Vec<String>,
    /// SSH agent for RUN --mount=type=ssh: `default` ($SSH_AUTH_SOCK) or ID=SOCKET (repeatable).
    #[arg(long = "ssh", value_name = "default|ID[=SOCKET]")]
    pub ssh: Vec<String>,
    /// Explain cache misses in terminal progress too (plain progress always does).
    #[arg(long)]
    pub explain_cache: bool,
}

impl CacheBuildArgs {
    /// `--secret` and `--ssh` as the solver takes them.
    pub fn forwarded(&self) -> Result<Forwarded> {
        let mut f = Forwarded::default();
        for s in &self.secrets {
            let (mut id, mut src, mut env) = (None, None, None);
            for part in s.split(',') {
                match part.split_once('=') {
                    Some(("id", v)) => id = Some(v.to_string()),
                    Some(("src" | "source", v)) => src = Some(PathBuf::from(v)),
                    Some(("env", v)) => env = Some(v.to_string()),
                    Some(("type", "file" | "env")) => {}
                    _ => bail!("--secret {s}: expected id=ID,src=PATH or id=ID,env=VAR"),
                }
            }
            let id = match (id, &src, &env) {
                (Some(id), _, _) => id,
                (None, Some(p), _) => p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| anyhow!("--secret {s}: missing id="))?,
                (None, None, Some(v)) => v.clone(),
                (None, None, None) => bail!("--secret {s}: missing id="),
            };
            let source = match (src, env) {
                (Some(p), None) => {
                    if !p.is_file() {
                        bail!("--secret {s}: {} is not a readable file", p.display());
                    }
                    SecretSource::File(p)
                }
                (None, Some(v)) => SecretSource::Env(v),
                // Docker's shorthand: `--secret id=X` reads the env var X, else a file named X.
                (None, None) => SecretSource::Env(id.clone()),
                (Some(_), Some(_)) => bail!("--secret {s}: give src= or env=, not both"),
            };
            f.secrets.insert(id, source);
        }
        for s in &self.ssh {
            let (id, sock) = match s.split_once('=') {
                Some((id, path)) => (id.to_string(), PathBuf::from(path)),
                None => {
                    let sock = std::env::var_os("SSH_AUTH_SOCK").ok_or_else(|| {
                        anyhow!("--ssh {s}: $SSH_AUTH_SOCK is not set; start an agent (ssh-agent) or pass --ssh {s}=/path/to/agent.sock")
                    })?;
                    (s.clone(), PathBuf::from(sock))
                }
            };
            if std::fs::metadata(&sock).is_err() {
                bail!("--ssh {s}: agent socket {} does not exist", sock.display());
            }
            f.ssh.insert(id, sock);
        }
        Ok(f)
    }
}

/// `--format` of the cache commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub(crate) enum Format {
    /// Human-readable table.
    #[default]
    Table,
    /// JSON.
    Json,
}

/// `rbuild du`.
#[derive(Args, Debug)]
pub(crate) struct DuArgs {
    /// Show every field of every record.
    #[arg(short, long)]
    verbose: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

/// `rbuild prune`.
#[derive(Args, Debug)]
pub(crate) struct PruneArgs {
    /// Remove every cache record, also those of steps whose layers tagged images use (the layers
    /// stay), and the cache mounts (RUN --mount=type=cache contents).
    #[arg(short, long)]
    all: bool,
    /// Keep this much cache (e.g. 500MB, 2GB), removing least recently used records first.
    #[arg(long, value_name = "SIZE")]
    keep_storage: Option<String>,
    /// Keep records used within this duration (e.g. 24h, 30m, 7d).
    #[arg(long, value_name = "DUR")]
    keep_duration: Option<String>,
    /// Filter: until=DUR (as --keep-duration) or type=regular|exec.cachemount (repeatable).
    #[arg(long = "filter", value_name = "until=DUR|type=TYPE")]
    filters: Vec<String>,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    force: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

/// `rbuild cache ...`.
#[derive(Subcommand, Debug)]
pub(crate) enum CacheCommand {
    /// List cache records, most recently used first.
    Ls {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show what made a cache record's key, the layer it produced and its use.
    Inspect {
        /// Record id (a prefix of the key, as `du` and `cache ls` show it).
        id: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

/// How to fix a store that is full or read-only, when `e` says so.
pub(crate) fn hint(e: &anyhow::Error) -> Option<&'static str> {
    let text = format!("{e:#}");
    if text.contains("No space left on device") || text.contains("database or disk is full") {
        Some("HINT: the store's file system is full; free space, or remove unused build cache with `rbuild prune` (`rbuild du` shows what it holds). The store itself is intact.")
    } else if text.contains("Read-only file system") {
        Some("HINT: the store is on a read-only file system; use a writable one with --root or RBUILD_ROOT.")
    } else {
        None
    }
}

/// Length of the short record ids shown (as buildctl's 25 characters).
const SHORT_ID: usize = 25;

fn short_id(r: &CacheRecord) -> String {
    r.key.digest().hex().chars().take(SHORT_ID).collect()
}

/// `1.23MB` style sizes (decimal, as Docker prints them).
pub(crate) fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        let n = format!("{v:.3}");
        let n = n.trim_end_matches('0').trim_end_matches('.');
        format!("{n}{}", UNITS[u])
    }
}

/// Parses `500MB`, `2GB`, `1.5g`, `1024` (bytes) into bytes.
pub(crate) fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| anyhow!("{s:?}: expected a size like 500MB, 2GB or 1048576"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "ki" | "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mi" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        other => bail!("{s:?}: unknown size unit {other:?} (use B, kB, MB, GB, TB, KiB, MiB, GiB)"),
    };
    Ok((num * mult) as u64)
}

/// Parses `24h`, `30m`, `7d`, `90s`, `1h30m` into seconds.
pub(crate) fn parse_duration(s: &str) -> Result<i64> {
    let mut total: i64 = 0;
    let mut num = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num
            .parse()
            .map_err(|_| anyhow!("{s:?}: expected a duration like 24h, 30m, 7d or 1h30m"))?;
        num.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            'w' => 7 * 86400,
            _ => bail!("{s:?}: unknown duration unit {c:?} (use s, m, h, d, w)"),
        };
    }
    if !num.is_empty() {
        bail!("{s:?}: missing unit after {num} (use s, m, h, d, w), e.g. {num}h");
    }
    if s.trim().is_empty() {
        bail!("empty duration; use e.g. 24h");
    }
    Ok(total)
}

fn ago(t: i64) -> String {
    let d = (chrono::Utc::now().timestamp() - t).max(0);
    match d {
        0..=59 => "Less than a minute ago".into(),
        60..=3599 => format!("{} minutes ago", d / 60),
        3600..=86399 => format!("{} hours ago", d / 3600),
        _ => format!("{} days ago", d / 86400),
    }
}

fn rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// One row of `du`: a cache record or a cache mount.
struct Row {
    id: String,
    kind: &'static str,
    reclaimable: bool,
    size: u64,
    created: i64,
    last_used: i64,
    usage_count: u64,
    description: String,
    extra: Value,
}

fn rows(store: &Store) -> Result<Vec<Row>> {
    let mut out: Vec<Row> = store
        .disk_usage()?
        .into_iter()
        .map(|u: UsageRecord| Row {
            id: short_id(&u.record),
            kind: "regular",
            reclaimable: u.reclaimable,
            size: u.record.size,
            created: u.record.created,
            last_used: u.record.last_used,
            usage_count: u.record.usage_count,
            description: u.record.description.clone(),
            extra: json!({"key": u.record.key, "snapshot": u.record.snapshot, "diff_id": u.record.diff_id}),
        })
        .collect();
    for m in store.cache_mounts()? {
        out.push(Row {
            id: m.dir.chars().take(SHORT_ID).collect(),
            kind: "exec.cachemount",
            reclaimable: true,
            size: m.size,
            created: m.created,
            last_used: m.last_used,
            usage_count: m.usage_count,
            description: format!("cache mount id={}", m.id),
            extra: json!({"mount_id": m.id}),
        });
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.last_used));
    Ok(out)
}

fn row_json(r: &Row) -> Value {
    let mut v = json!({
        "id": r.id, "type": r.kind, "reclaimable": r.reclaimable, "size": r.size,
        "created": rfc3339(r.created), "last_used": rfc3339(r.last_used),
        "usage_count": r.usage_count, "description": r.description,
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), r.extra.as_object()) {
        for (k, val) in e {
            o.insert(k.clone(), val.clone());
        }
    }
    v
}

/// `rbuild du`.
pub(crate) fn du(store: &Store, args: DuArgs) -> Result<ExitCode> {
    let rows = rows(store)?;
    let total: u64 = rows.iter().map(|r| r.size).sum();
    let reclaimable: u64 = rows.iter().filter(|r| r.reclaimable).map(|r| r.size).sum();
    if args.format == Format::Json {
        let v = json!({
            "records": rows.iter().map(row_json).collect::<Vec<_>>(),
            "total": total, "reclaimable": reclaimable,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut o = std::io::stdout().lock();
    if args.verbose {
        for r in &rows {
            writeln!(o, "ID:\t\t{}", r.id)?;
            writeln!(o, "Created at:\t{}", rfc3339(r.created))?;
            writeln!(o, "Mutable:\t{}", r.kind == "exec.cachemount")?;
            writeln!(o, "Reclaimable:\t{}", r.reclaimable)?;
            writeln!(o, "Size:\t\t{}", human_size(r.size))?;
            writeln!(o, "Description:\t{}", r.description)?;
            writeln!(o, "Usage count:\t{}", r.usage_count)?;
            writeln!(o, "Last used:\t{}", ago(r.last_used))?;
            writeln!(o, "Type:\t\t{}", r.kind)?;
            writeln!(o)?;
        }
    } else {
        writeln!(
            o,
            "{:<28}{:<14}{:<12}{:<24}DESCRIPTION",
            "ID", "RECLAIMABLE", "SIZE", "LAST ACCESSED"
        )?;
        for r in &rows {
            let id = if r.kind == "exec.cachemount" {
                format!("{}*", r.id)
            } else {
                r.id.clone()
            };
            writeln!(
                o,
                "{:<28}{:<14}{:<12}{:<24}{}",
                id,
                r.reclaimable,
                human_size(r.size),
                ago(r.last_used),
                r.description
            )?;
        }
    }
    writeln!(o, "Shared:\t\t0B")?;
    writeln!(o, "Private:\t{}", human_size(total))?;
    writeln!(o, "Reclaimable:\t{}", human_size(reclaimable))?;
    writeln!(o, "Total:\t\t{}", human_size(total))?;
    Ok(ExitCode::SUCCESS)
}

/// `rbuild prune`.
pub(crate) fn prune(store: &Store, args: PruneArgs) -> Result<ExitCode> {
    let now = chrono::Utc::now().timestamp();
    let mut keep_for = args
        .keep_duration
        .as_deref()
        .map(parse_duration)
        .transpose()
        .context("--keep-duration")?;
    let mut types: Vec<String> = Vec::new();
    for f in &args.filters {
        match f.split_once('=') {
            Some(("until", d)) => keep_for = Some(parse_duration(d).context("--filter until=")?),
            Some(("type", t)) => match t {
                "regular" | "exec.cachemount" => types.push(t.to_string()),
                _ => bail!("--filter type={t}: supported types are regular and exec.cachemount"),
            },
            _ => bail!(
                "--filter {f}: supported filters are until=DUR and type=regular|exec.cachemount"
            ),
        }
    }
    let keep_storage = args
        .keep_storage
        .as_deref()
        .map(parse_size)
        .transpose()
        .context("--keep-storage")?;
    let records = types.is_empty() || types.iter().any(|t| t == "regular");
    let mounts = (args.all && types.is_empty()) || types.iter().any(|t| t == "exec.cachemount");
    if !args.force && std::io::stdin().is_terminal() {
        eprint!(
            "WARNING! This will remove {} build cache. Are you sure you want to continue? [y/N] ",
            if mounts { "all unused" } else { "unused" }
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let before = keep_for.map(|d| now - d);
    let mut removed: Vec<Value> = Vec::new();
    let mut reclaimed = 0u64;
    if records {
        let descriptions: std::collections::HashMap<String, String> = store
            .cache_records()?
            .into_iter()
            .map(|r| (r.key.to_string(), r.description))
            .collect();
        let rep = store.prune(&PruneOptions {
            last_used_before: before,
            keep_storage,
            all: args.all,
        })?;
        reclaimed += rep.reclaimed;
        for k in rep.removed {
            removed.push(json!({
                "id": k.digest().hex().chars().take(SHORT_ID).collect::<String>(),
                "type": "regular",
                "description": descriptions.get(&k.to_string()).cloned().unwrap_or_default(),
            }));
        }
    }
    if mounts {
        for m in store.cache_mounts()? {
            if before.is_some_and(|b| m.last_used >= b) {
                continue;
            }
            if store.remove_cache_mount(&m.id)? {
                reclaimed += m.size;
                removed.push(json!({
                    "id": m.dir.chars().take(SHORT_ID).collect::<String>(),
                    "type": "exec.cachemount",
                    "description": format!("cache mount id={}", m.id),
                }));
            }
        }
    }
    if args.format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"removed": removed, "reclaimed": reclaimed}))?
        );
    } else {
        if !removed.is_empty() {
            println!("{:<28}{:<18}DESCRIPTION", "ID", "TYPE");
        }
        for r in &removed {
            println!(
                "{:<28}{:<18}{}",
                r["id"].as_str().unwrap_or_default(),
                r["type"].as_str().unwrap_or_default(),
                r["description"].as_str().unwrap_or_default()
            );
        }
        println!("Total:\t{}", human_size(reclaimed));
    }
    Ok(ExitCode::SUCCESS)
}

fn find_record(store: &Store, id: &str) -> Result<CacheRecord> {
    let id = id.trim().trim_start_matches("sha256:").to_ascii_lowercase();
    if id.is_empty() {
        bail!("empty cache record id; see `rbuild cache ls`");
    }
    let mut matches: Vec<CacheRecord> = store
        .cache_records()?
        .into_iter()
        .filter(|r| r.key.digest().hex().starts_with(&id))
        .collect();
    match matches.len() {
        0 => bail!("no cache record {id}; `rbuild cache ls` lists them"),
        1 => Ok(matches.swap_remove(0)),
        n => bail!("{n} cache records start with {id}; give more characters of the id"),
    }
}

/// `rbuild cache ls|inspect`.
pub(crate) fn cache(store: &Store, cmd: CacheCommand) -> Result<ExitCode> {
    match cmd {
        CacheCommand::Ls { format } => {
            let recs = store.cache_records()?;
            if format == Format::Json {
                let v: Vec<Value> = recs
                    .iter()
                    .map(|r| {
                        json!({"id": short_id(r), "key": r.key, "size": r.size,
                               "created": rfc3339(r.created), "last_used": rfc3339(r.last_used),
                               "usage_count": r.usage_count, "description": r.description,
                               "diff_id": r.diff_id})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            let mut o = std::io::stdout().lock();
            writeln!(
                o,
                "{:<28}{:<12}{:<24}{:<7}DESCRIPTION",
                "ID", "SIZE", "LAST USED", "USES"
            )?;
            for r in &recs {
                writeln!(
                    o,
                    "{:<28}{:<12}{:<24}{:<7}{}",
                    short_id(r),
                    human_size(r.size),
                    ago(r.last_used),
                    r.usage_count,
                    r.description
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Inspect { id, format } => {
            let mut r = find_record(store, &id)?;
            // A COPY's per-file digests live in the step index, not in the record.
            if r.inputs["content"].is_object() && r.inputs["content"].get("files").is_none() {
                if let Some(full) = store.step_index_inputs_of(&r.key)? {
                    let files = full["doc"]["content"]["files"].clone();
                    if !files.is_null() {
                        r.inputs["content"]["files"] = files;
                    }
                }
            }
            let parent = r.inputs["parent"]
                .as_str()
                .and_then(|p| p.parse().ok())
                .and_then(|k| store.cache_peek(&k).ok().flatten());
            if format == Format::Json {
                let mut v = serde_json::to_value(&r)?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("id".into(), json!(short_id(&r)));
                    o.insert("created".into(), json!(rfc3339(r.created)));
                    o.insert("last_used".into(), json!(rfc3339(r.last_used)));
                    o.insert(
                        "parent_description".into(),
                        json!(parent.as_ref().map(|p| p.description.clone())),
                    );
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            inspect_text(&r, parent.as_ref())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn inspect_text(r: &CacheRecord, parent: Option<&CacheRecord>) -> Result<()> {
    let mut o = std::io::stdout().lock();
    writeln!(o, "ID:          {}", short_id(r))?;
    writeln!(o, "Key:         {}", r.key)?;
    writeln!(o, "Step:        {}", r.description)?;
    writeln!(
        o,
        "Created:     {} ({})",
        rfc3339(r.created),
        ago(r.created)
    )?;
    writeln!(
        o,
        "Last used:   {} ({})",
        rfc3339(r.last_used),
        ago(r.last_used)
    )?;
    writeln!(o, "Usage count: {}", r.usage_count)?;
    writeln!(o, "Size:        {}", human_size(r.size))?;
    if let Some(d) = &r.diff_id {
        writeln!(o, "Layer:       {d}")?;
    }
    if let Some(s) = &r.snapshot {
        writeln!(o, "Snapshot:    {}", s.as_str())?;
    }
    let inputs = &r.inputs;
    writeln!(
        o,
        "Parent:      {}{}",
        inputs["parent"].as_str().unwrap_or("none"),
        parent
            .map(|p| format!(" ({})", p.description))
            .unwrap_or_default()
    )?;
    writeln!(o, "Key version: {}", inputs["v"])?;
    writeln!(o, "Inputs:")?;
    match inputs["op"].as_str() {
        Some("exec") => {
            let e = &inputs["exec"];
            writeln!(o, "  op:      RUN")?;
            writeln!(o, "  command: {}", e["args"])?;
            writeln!(o, "  workdir: {}", e["cwd"].as_str().unwrap_or("/"))?;
            let user = e["user"].as_str().unwrap_or_default();
            writeln!(
                o,
                "  user:    {}",
                if user.is_empty() { "root" } else { user }
            )?;
            writeln!(o, "  network: {}", e["network"])?;
            for env in e["env"].as_array().into_iter().flatten() {
                writeln!(o, "  env:     {}", env.as_str().unwrap_or_default())?;
            }
            for m in e["mounts"].as_array().into_iter().flatten() {
                writeln!(o, "  mount:   {m}")?;
            }
            for s in inputs["sources"].as_array().into_iter().flatten() {
                writeln!(o, "  source:  {}", s.as_str().unwrap_or_default())?;
            }
            for (target, c) in inputs["bind_content"].as_object().into_iter().flatten() {
                writeln!(
                    o,
                    "  bind {target}: {}",
                    c["context"].as_str().unwrap_or_default()
                )?;
                for (p, d) in c["files"].as_object().into_iter().flatten() {
                    writeln!(o, "    {p}  {}", d.as_str().unwrap_or_default())?;
                }
            }
        }
        Some("copy") => {
            let c = &inputs["copy"];
            writeln!(
                o,
                "  op:      {}",
                if c["add"] == json!(true) {
                    "ADD"
                } else {
                    "COPY"
                }
            )?;
            writeln!(o, "  sources: {}", c["srcs"])?;
            writeln!(o, "  dest:    {}", c["dest"].as_str().unwrap_or_default())?;
            for (k, v) in c.as_object().into_iter().flatten() {
                if !matches!(k.as_str(), "add" | "srcs" | "dest")
                    && !v.is_null()
                    && *v != json!(false)
                    && *v != json!([])
                {
                    writeln!(o, "  {k}: {v}")?;
                }
            }
            let content = &inputs["content"];
            if let Some(d) = content["context"].as_str() {
                writeln!(o, "  context digest: {d}")?;
            }
            if let Some(s) = content["source"].as_str() {
                writeln!(o, "  source stage key: {s}")?;
            }
            if let Some(files) = content["files"].as_object() {
                writeln!(o, "  files ({}):", files.len())?;
                for (p, d) in files {
                    let path = p.split_once(':').map(|(_, p)| p).unwrap_or(p);
                    writeln!(
                        o,
                        "    {:<40} {}",
                        if path.is_empty() { "." } else { path },
                        d.as_str().unwrap_or_default()
                    )?;
                }
            }
        }
        _ => writeln!(o, "  {}", serde_json::to_string_pretty(inputs)?)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("1KiB").unwrap(), 1024);
        assert_eq!(parse_size("42").unwrap(), 42);
        assert!(parse_size("12XB").is_err());
        assert_eq!(parse_duration("1h30m").unwrap(), 5400);
        assert_eq!(parse_duration("7d").unwrap(), 7 * 86400);
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("5y").is_err());
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_500_000), "1.5MB");
        assert_eq!(human_size(2_000_000_000), "2GB");
    }
}

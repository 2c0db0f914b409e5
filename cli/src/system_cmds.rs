//! `rbuild system df|prune|events`: the store as Docker's `system` commands show it.

use std::collections::BTreeSet;
use std::io::{BufRead, IsTerminal, Seek, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::Subcommand;
use rbuild_cache::{PruneOptions, Store};
use rbuild_containers::state::{self, Status};
use serde_json::Value;

#[derive(Subcommand, Debug)]
pub(crate) enum SystemCommand {
    /// Show disk usage: images, containers, local volumes, build cache.
    Df {
        /// One line per image, container and volume.
        #[arg(short = 'v', long)]
        verbose: bool,
    },
    /// Remove stopped containers and unused build cache (and more with -a / --volumes).
    Prune {
        /// Also remove every image no container uses.
        #[arg(short = 'a', long)]
        all: bool,
        /// Also remove anonymous volumes no container uses.
        #[arg(long)]
        volumes: bool,
        /// Do not ask for confirmation.
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Print events from the store's journal (create, start, die, stop, kill, destroy, ...).
    Events {
        /// Only events since this time (RFC 3339, Unix seconds, or a duration before now).
        #[arg(long)]
        since: Option<String>,
        /// Only events before this time; without it, wait for new events (Ctrl-C to stop).
        #[arg(long)]
        until: Option<String>,
        /// type=, container=, event=, image= (repeatable; each key must match).
        #[arg(short = 'f', long = "filter")]
        filter: Vec<String>,
        /// `json` or `{{json .}}` for one JSON object per line.
        #[arg(long)]
        format: Option<String>,
    },
}

pub(crate) fn system(store: &Store, cmd: SystemCommand) -> Result<ExitCode> {
    match cmd {
        SystemCommand::Df { verbose } => df(store, verbose),
        SystemCommand::Prune {
            all,
            volumes,
            force,
        } => prune(store, all, volumes, force),
        SystemCommand::Events {
            since,
            until,
            filter,
            format,
        } => events(store, since, until, &filter, format),
    }
}

/// Bytes used by the files under `dir` (each inode once).
pub(crate) fn tree_size(dir: &std::path::Path) -> u64 {
    let mut seen = BTreeSet::new();
    walkdir(dir, &mut seen)
}

fn walkdir(dir: &std::path::Path, seen: &mut BTreeSet<(u64, u64)>) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for e in rd.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            total += walkdir(&e.path(), seen);
        } else if m.is_file() && seen.insert((m.dev(), m.ino())) {
            total += m.size();
        }
    }
    total
}

fn human(n: u64) -> String {
    crate::cache_cmds::human_size(n)
}

fn pct(part: u64, total: u64) -> String {
    format!("{}%", (part * 100).checked_div(total).unwrap_or(0))
}

/// An image of `df`: manifest, names, size, used by a container.
type DfImage = (String, Vec<String>, u64, bool);

/// `system df -v`: one line per image, container and volume.
fn df_verbose(
    out: &mut impl Write,
    images: &[DfImage],
    containers: &[state::ContainerState],
    csizes: &[u64],
    vols: &[(String, usize, u64)],
    b_total: u64,
) -> Result<()> {
    writeln!(out, "Images space usage:\n")?;
    writeln!(
        out,
        "{:<40}{:<22}{:<12}CONTAINERS",
        "REPOSITORY:TAG", "IMAGE ID", "SIZE"
    )?;
    for (m, names, size, _) in images {
        let n = containers
            .iter()
            .filter(|c| &c.record.manifest == m)
            .count();
        let id = m
            .trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect::<String>();
        for name in names {
            writeln!(out, "{name:<40}{id:<22}{:<12}{n}", human(*size))?;
        }
    }
    writeln!(out, "\nContainers space usage:\n")?;
    writeln!(
        out,
        "{:<14}{:<24}{:<12}{:<12}NAMES",
        "CONTAINER ID", "IMAGE", "SIZE", "STATUS"
    )?;
    for (c, s) in containers.iter().zip(csizes) {
        writeln!(
            out,
            "{:<14}{:<24}{:<12}{:<12}{}",
            &c.record.id[..12],
            c.record.image,
            human(*s),
            c.status.name(),
            c.record.name
        )?;
    }
    writeln!(out, "\nLocal Volumes space usage:\n")?;
    writeln!(out, "{:<40}{:<8}SIZE", "VOLUME NAME", "LINKS")?;
    for (v, links, size) in vols {
        writeln!(out, "{v:<40}{links:<8}{}", human(*size))?;
    }
    writeln!(out, "\nBuild cache usage: {}", human(b_total))?;
    Ok(())
}

fn df(store: &Store, verbose: bool) -> Result<ExitCode> {
    let containers = state::list(store).map_err(|e| anyhow!("{e}"))?;
    let used_manifests: BTreeSet<String> = containers
        .iter()
        .map(|c| c.record.manifest.clone())
        .collect();
    // Images: one per manifest (several tags may name it).
    let mut images: Vec<DfImage> = Vec::new();
    for t in store.list_tags()? {
        let m = t.manifest.to_string();
        if let Some(i) = images.iter_mut().find(|i| i.0 == m) {
            i.1.push(t.name);
            continue;
        }
        let size = rbuild_exporter::load_image(store, &t.manifest)
            .map(|i| i.size)
            .unwrap_or(0);
        let active = used_manifests.contains(&m);
        images.push((m, vec![t.name], size, active));
    }
    let img_total: u64 = images.iter().map(|i| i.2).sum();
    let img_free: u64 = images.iter().filter(|i| !i.3).map(|i| i.2).sum();
    let csizes: Vec<u64> = containers
        .iter()
        .map(|c| tree_size(&store.container_dir(&c.record.name).join("upper")))
        .collect();
    let c_total: u64 = csizes.iter().sum();
    let c_free: u64 = containers
        .iter()
        .zip(&csizes)
        .filter(|(c, _)| !c.status.is_running() && !c.supervised)
        .map(|(_, s)| s)
        .sum();
    let mut vols = Vec::new();
    for v in store.list_volumes()? {
        let users = store.volume_users(&v)?;
        let size = tree_size(&store.volume_dir(&v));
        vols.push((v, users.len(), size));
    }
    let v_total: u64 = vols.iter().map(|v| v.2).sum();
    let v_free: u64 = vols.iter().filter(|v| v.1 == 0).map(|v| v.2).sum();
    let usage = store.disk_usage()?;
    let mounts = store.cache_mounts()?;
    let b_total: u64 = usage.iter().map(|u| u.record.size).sum::<u64>()
        + mounts.iter().map(|m| m.size).sum::<u64>();
    let b_free: u64 = usage
        .iter()
        .filter(|u| u.reclaimable)
        .map(|u| u.record.size)
        .sum::<u64>()
        + mounts.iter().map(|m| m.size).sum::<u64>();
    let mut out = std::io::stdout().lock();
    if verbose {
        df_verbose(&mut out, &images, &containers, &csizes, &vols, b_total)?;
        return Ok(ExitCode::SUCCESS);
    }
    let running = containers.iter().filter(|c| c.status.is_running()).count();
    let active_vols = vols.iter().filter(|v| v.1 > 0).count();
    let rows = [
        (
            "Images",
            images.len(),
            images.iter().filter(|i| i.3).count(),
            img_total,
            img_free,
        ),
        ("Containers", containers.len(), running, c_total, c_free),
        ("Local Volumes", vols.len(), active_vols, v_total, v_free),
        (
            "Build Cache",
            usage.len() + mounts.len(),
            0,
            b_total,
            b_free,
        ),
    ];
    writeln!(
        out,
        "{:<16}{:<10}{:<10}{:<10}RECLAIMABLE",
        "TYPE", "TOTAL", "ACTIVE", "SIZE"
    )?;
    for (t, total, active, size, free) in rows {
        writeln!(
            out,
            "{t:<16}{total:<10}{active:<10}{:<10}{} ({})",
            human(size),
            human(free),
            pct(free, size)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn prune(store: &Store, all: bool, volumes: bool, force: bool) -> Result<ExitCode> {
    if !force {
        let mut what = vec!["  - all stopped containers"];
        if volumes {
            what.push("  - all anonymous volumes not used by at least one container");
        }
        what.push(if all {
            "  - all images without at least one container associated to them"
        } else {
            "  - unused build cache"
        });
        if all {
            what.push("  - unused build cache");
        }
        eprintln!("WARNING! This will remove:\n{}", what.join("\n"));
        if !std::io::stdin().is_terminal() {
            bail!("not removing anything without confirmation: add -f (stdin is not a terminal)");
        }
        eprint!("Are you sure you want to continue? [y/N] ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let mut reclaimed = 0u64;
    let mut deleted = Vec::new();
    for c in state::list(store).map_err(|e| anyhow!("{e}"))? {
        if c.status.is_running() || c.status == Status::Restarting || c.supervised {
            continue;
        }
        let size = tree_size(&store.container_dir(&c.record.name).join("upper"));
        if rbuild_containers::lifecycle::remove(store, &c.record.id, false).is_ok() {
            reclaimed += size;
            deleted.push(c.record.id.clone());
        }
    }
    if !deleted.is_empty() {
        println!("Deleted Containers:\n{}\n", deleted.join("\n"));
    }
    if volumes {
        let mut gone = Vec::new();
        for v in store.list_volumes()? {
            if v.starts_with("anon-") && store.volume_users(&v)?.is_empty() {
                let size = tree_size(&store.volume_dir(&v));
                store.remove_volume(&v)?;
                reclaimed += size;
                gone.push(v);
            }
        }
        if !gone.is_empty() {
            println!("Deleted Volumes:\n{}\n", gone.join("\n"));
        }
    }
    if all {
        let used: BTreeSet<String> = state::list(store)
            .map_err(|e| anyhow!("{e}"))?
            .into_iter()
            .map(|c| c.record.manifest)
            .collect();
        let mut untagged = Vec::new();
        for t in store.list_tags()? {
            if !used.contains(&t.manifest.to_string()) {
                let r: rbuild_types::ImageRef = t.name.parse().map_err(|e| anyhow!("{e}"))?;
                if store.remove_tag(&r)? {
                    state::image_event(store, "untag", &t.name);
                    untagged.push(t.name);
                }
            }
        }
        if !untagged.is_empty() {
            println!(
                "Deleted Images:\n{}\n",
                untagged
                    .iter()
                    .map(|n| format!("untagged: {n}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    let rep = store.prune(&PruneOptions {
        last_used_before: None,
        keep_storage: None,
        all,
    })?;
    reclaimed += rep.reclaimed;
    if !rep.removed.is_empty() {
        println!("Deleted build cache objects:");
        for k in &rep.removed {
            println!("{}", k.digest().hex().chars().take(25).collect::<String>());
        }
        println!();
    }
    println!("Total reclaimed space: {}", human(reclaimed));
    Ok(ExitCode::SUCCESS)
}

fn time_bound(s: &str) -> Result<i64> {
    crate::containers::parse_time_bound(s)
}

fn keep(ev: &Value, filters: &[(String, String)], since: Option<i64>, until: Option<i64>) -> bool {
    let t = ev["timeNano"].as_i64().unwrap_or(0);
    if since.is_some_and(|s| t < s) || until.is_some_and(|u| t >= u) {
        return false;
    }
    let keys: BTreeSet<&str> = filters.iter().map(|(k, _)| k.as_str()).collect();
    keys.into_iter().all(|k| {
        filters
            .iter()
            .filter(|(fk, _)| fk == k)
            .any(|(_, v)| match k {
                "type" => ev["Type"] == *v,
                "event" => ev["Action"] == *v,
                "container" => {
                    ev["Type"] == "container"
                        && (ev["Actor"]["Attributes"]["name"] == *v
                            || ev["Actor"]["ID"]
                                .as_str()
                                .is_some_and(|id| id.starts_with(v.as_str())))
                }
                "image" => ev["Actor"]["Attributes"]["image"] == *v,
                _ => false,
            })
    })
}

/// Docker's text form: `2026-11-30T12:00:00.123456789Z container start ID (image=..., name=...)`.
fn event_line(ev: &Value) -> String {
    let t = ev["timeNano"].as_i64().unwrap_or(0);
    let when = chrono::DateTime::from_timestamp(t / 1_000_000_000, (t % 1_000_000_000) as u32)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let attrs = ev["Actor"]["Attributes"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    format!(
        "{when} {} {} {} ({attrs})",
        ev["Type"].as_str().unwrap_or_default(),
        ev["Action"].as_str().unwrap_or_default(),
        ev["Actor"]["ID"].as_str().unwrap_or_default()
    )
}

fn events(
    store: &Store,
    since: Option<String>,
    until: Option<String>,
    filter: &[String],
    format: Option<String>,
) -> Result<ExitCode> {
    let since = since.as_deref().map(time_bound).transpose()?;
    let until = until.as_deref().map(time_bound).transpose()?;
    let mut filters = Vec::new();
    for f in filter {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| anyhow!("--filter {f}: expected KEY=VALUE"))?;
        if !matches!(k, "type" | "event" | "container" | "image") {
            bail!("--filter {k}: supported filters are type, event, container and image");
        }
        filters.push((k.to_string(), v.to_string()));
    }
    let json = matches!(format.as_deref(), Some("json") | Some("{{json .}}"));
    let path = state::events_path(store);
    let mut pos = 0u64;
    let mut out = std::io::stdout().lock();
    loop {
        if let Ok(mut f) = std::fs::File::open(&path) {
            f.seek(std::io::SeekFrom::Start(pos))?;
            let mut r = std::io::BufReader::new(f);
            let mut line = String::new();
            while r.read_line(&mut line)? > 0 {
                if !line.ends_with('\n') {
                    break; // a line being written: read it next time
                }
                pos += line.len() as u64;
                if let Ok(ev) = serde_json::from_str::<Value>(&line) {
                    if keep(&ev, &filters, since, until) {
                        if json {
                            writeln!(out, "{ev}")?;
                        } else {
                            writeln!(out, "{}", event_line(&ev))?;
                        }
                    }
                }
                line.clear();
            }
            out.flush()?;
        }
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        if until.is_some_and(|u| u <= now) {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

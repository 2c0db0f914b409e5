//! `rbuild ps`, `rbuild rm`, `rbuild diff`, `rbuild commit`: containers kept after `rbuild run`.

use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use rbuild_cache::Store;
use rbuild_solver::container;

use crate::parse_ref;

#[derive(Args, Debug)]
pub(crate) struct PsArgs {
    /// Show every container (by default only running ones).
    #[arg(short = 'a', long)]
    all: bool,
    /// Only print container ids.
    #[arg(short = 'q', long)]
    quiet: bool,
}

#[derive(Args, Debug)]
pub(crate) struct RmArgs {
    /// Kill a running container first.
    #[arg(short = 'f', long)]
    force: bool,
    /// Containers (names or id prefixes).
    #[arg(required = true)]
    containers: Vec<String>,
}

#[derive(Args, Debug)]
pub(crate) struct DiffArgs {
    /// Container (name or id prefix).
    container: String,
}

#[derive(Args, Debug)]
pub(crate) struct CommitArgs {
    /// Container (name or id prefix).
    container: String,
    /// Name of the new image, e.g. web:patched.
    image: String,
}

fn ago(secs: i64) -> String {
    let d = (chrono::Utc::now().timestamp() - secs).max(0);
    match d {
        0..=59 => format!("{d} seconds ago"),
        60..=3599 => format!("{} minutes ago", d / 60),
        3600..=86399 => format!("{} hours ago", d / 3600),
        _ => format!("{} days ago", d / 86400),
    }
}

pub(crate) fn ps(store: &Store, args: PsArgs) -> Result<ExitCode> {
    let list = container::list(store).map_err(|e| anyhow!("{e}"))?;
    if !args.quiet {
        println!(
            "{:<12}  {:<20}  {:<24}  {:<16}  {:<28}  NAMES",
            "CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS"
        );
    }
    for c in list.iter().rev().filter(|c| args.all || c.running) {
        let r = &c.record;
        let short = &r.id[..r.id.len().min(12)];
        if args.quiet {
            println!("{short}");
            continue;
        }
        let mut cmd = format!("\"{}\"", r.command.join(" "));
        if cmd.chars().count() > 22 {
            cmd = format!("{}…\"", cmd.chars().take(20).collect::<String>());
        }
        let status = if c.running {
            format!("Up since {}", ago(r.created).replace(" ago", ""))
        } else {
            match (r.exit_code, r.finished) {
                (Some(code), Some(f)) => format!(
                    "Exited ({code}){} {}",
                    if r.oom_killed { " OOMKilled" } else { "" },
                    ago(f)
                ),
                _ => "Exited (unknown)".to_string(),
            }
        };
        println!(
            "{:<12}  {:<20}  {:<24}  {:<16}  {:<28}  {}",
            short,
            r.image,
            cmd,
            ago(r.created),
            status,
            r.name
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn rm(store: &Store, args: RmArgs) -> Result<ExitCode> {
    let mut failed = false;
    for name in &args.containers {
        let r = (|| -> Result<String> {
            if args.force {
                let rec = store
                    .find_container(name)?
                    .ok_or_else(|| anyhow!("no such container: {name} (see `rbuild ps -a`)"))?;
                kill_running(store, &rec.name)?;
                // The killed process could not tear its network down: do it now.
                rbuild_network::Networks::open(store.root())
                    .collect_stale()
                    .with_context(|| format!("tearing down the network of {name}"))?;
            }
            Ok(container::remove(store, name)
                .map_err(|e| anyhow!("{e}"))?
                .name)
        })();
        match r {
            Ok(n) => println!("{n}"),
            Err(e) => {
                eprintln!("ERROR: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Kills the rbuild process running container `name` (it holds the container's lock), then
/// waits for the lock to be released.
fn kill_running(store: &Store, name: &str) -> Result<()> {
    if !store.container_running(name) {
        return Ok(());
    }
    let lock = store.container_dir(name).join("lock");
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&lock)?);
    for l in locks.lines() {
        // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 5 && f[1] == "FLOCK" && f[5].rsplit(':').next() == Some(&ino.to_string()) {
            if let Ok(pid) = f[4].parse::<i32>() {
                // SAFETY: plain kill of the rbuild process holding the lock.
                unsafe { nix::libc::kill(pid, nix::libc::SIGKILL) };
            }
        }
    }
    for _ in 0..100 {
        if !store.container_running(name) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(anyhow!("container {name} is still running after SIGKILL"))
}

pub(crate) fn diff(store: &Store, args: DiffArgs) -> Result<ExitCode> {
    for c in container::diff(store, &args.container).map_err(|e| anyhow!("{e}"))? {
        println!("{} {}", c.kind, c.path);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn commit(store: &Store, args: CommitArgs) -> Result<ExitCode> {
    let target = parse_ref(&args.image)?;
    let id = container::commit(store, &args.container, &target).map_err(|e| anyhow!("{e}"))?;
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}

//! `rbuild volume create|inspect|ls|rm|prune`: named volumes in the store
//! (`volumes/<name>/_data`, with `volumes/<name>/volume.json` holding labels and creation time).

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use rbuild_cache::Store;

#[derive(Subcommand, Debug)]
pub(crate) enum VolumeCommand {
    /// Create a volume (a generated name when none is given); prints its name.
    Create {
        /// Set a label K=V (repeatable).
        #[arg(short = 'l', long = "label")]
        label: Vec<String>,
        /// Volume driver (only `local`).
        #[arg(short = 'd', long, default_value = "local")]
        driver: String,
        /// Name.
        name: Option<String>,
    },
    /// Show volumes' details (Docker's JSON shape).
    Inspect {
        /// Go-template-like format, e.g. `{{.Mountpoint}}`.
        #[arg(short = 'f', long)]
        format: Option<String>,
        /// Volume names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List volumes.
    Ls {
        /// Only print names.
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Remove volumes (refused while a container uses them).
    Rm {
        /// Volume names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove every volume no container uses.
    Prune,
}

fn meta_path(store: &Store, name: &str) -> std::path::PathBuf {
    store
        .volume_dir(name)
        .parent()
        .map(|p| p.join("volume.json"))
        .unwrap_or_default()
}

fn inspect_doc(store: &Store, name: &str) -> Result<serde_json::Value> {
    let data = store.volume_dir(name);
    if !rbuild_cache::valid_name(name) || !data.is_dir() {
        anyhow::bail!("no such volume: {name} (see `rbuild volume ls`)");
    }
    let meta: serde_json::Value = std::fs::read(meta_path(store, name))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let created = meta["CreatedAt"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| {
            std::fs::metadata(&data)
                .and_then(|m| m.modified())
                .map(|t| {
                    chrono::DateTime::<chrono::Utc>::from(t)
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                })
                .unwrap_or_default()
        });
    Ok(serde_json::json!({
        "CreatedAt": created,
        "Driver": "local",
        "Labels": meta.get("Labels").cloned().unwrap_or(serde_json::json!({})),
        "Mountpoint": data,
        "Name": name,
        "Options": {},
        "Scope": "local",
    }))
}

pub(crate) fn volume(store: &Store, cmd: VolumeCommand) -> Result<ExitCode> {
    match cmd {
        VolumeCommand::Create {
            label,
            driver,
            name,
        } => {
            if driver != "local" {
                anyhow::bail!("volume create --driver {driver}: only the local driver exists here");
            }
            let name = name.unwrap_or_else(|| {
                let mut b = [0u8; 32];
                let _ = std::fs::File::open("/dev/urandom")
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
                b.iter().map(|x| format!("{x:02x}")).collect()
            });
            let (_, created) = store.create_volume(&name)?;
            if created {
                let labels: serde_json::Map<String, serde_json::Value> = label
                    .iter()
                    .map(|l| {
                        let (k, v) = l.split_once('=').unwrap_or((l, ""));
                        (k.to_string(), serde_json::json!(v))
                    })
                    .collect();
                let meta = serde_json::json!({
                    "CreatedAt": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "Labels": labels,
                });
                let p = meta_path(store, &name);
                let tmp = p.with_extension("json.tmp");
                std::fs::write(&tmp, meta.to_string())?;
                std::fs::rename(&tmp, &p)?;
                rbuild_containers::state::append_event(
                    store,
                    &serde_json::json!({"Type": "volume", "Action": "create",
                        "Actor": {"ID": name, "Attributes": {"driver": "local"}},
                        "scope": "local", "time": chrono::Utc::now().timestamp(),
                        "timeNano": chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)}),
                );
            }
            println!("{name}");
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Inspect { format, names } => {
            let mut docs = Vec::new();
            let mut failed = false;
            for n in &names {
                match inspect_doc(store, n) {
                    Ok(d) => docs.push(d),
                    Err(e) => {
                        eprintln!("Error: {e}");
                        failed = true;
                    }
                }
            }
            match format {
                Some(f) => {
                    for d in &docs {
                        println!("{}", crate::containers::render_doc(&f, d));
                    }
                }
                None => println!("{}", serde_json::to_string_pretty(&docs)?),
            }
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        VolumeCommand::Ls { quiet } => {
            if !quiet {
                println!("{:<10} VOLUME NAME", "DRIVER");
            }
            for v in store.list_volumes()? {
                if quiet {
                    println!("{v}");
                } else {
                    println!("{:<10} {v}", "local");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Rm { names } => {
            let mut failed = false;
            for n in names {
                match store.remove_volume(&n) {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        eprintln!("ERROR: {e}");
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
        VolumeCommand::Prune => {
            let mut removed = Vec::new();
            for v in store.list_volumes()? {
                if store.volume_users(&v)?.is_empty() {
                    store.remove_volume(&v)?;
                    removed.push(v);
                }
            }
            if !removed.is_empty() {
                println!("Deleted Volumes:");
                for v in &removed {
                    println!("{v}");
                }
                println!();
            }
            println!("Total reclaimed volumes: {}", removed.len());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Creates volume `name` with `labels` when it does not exist yet (as `volume create --label`);
/// returns whether it was created.
pub(crate) fn create_labeled(
    store: &Store,
    name: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<bool> {
    let (_, created) = store.create_volume(name)?;
    if created {
        let meta = serde_json::json!({
            "CreatedAt": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "Labels": labels,
        });
        let p = meta_path(store, name);
        let tmp = p.with_extension("json.tmp");
        std::fs::write(&tmp, meta.to_string())?;
        std::fs::rename(&tmp, &p)?;
        rbuild_containers::state::append_event(
            store,
            &serde_json::json!({"Type": "volume", "Action": "create",
                "Actor": {"ID": name, "Attributes": {"driver": "local"}},
                "scope": "local", "time": chrono::Utc::now().timestamp(),
                "timeNano": chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)}),
        );
    }
    Ok(created)
}

/// The labels of volume `name` (empty when it has none or does not exist).
pub(crate) fn labels_of(store: &Store, name: &str) -> std::collections::BTreeMap<String, String> {
    std::fs::read(meta_path(store, name))
        .ok()
        .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok())
        .and_then(|v| serde_json::from_value(v["Labels"].clone()).ok())
        .unwrap_or_default()
}

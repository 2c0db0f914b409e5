//! `rbuild volume ls|rm|prune`: named volumes in the store.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use rbuild_cache::Store;

#[derive(Subcommand, Debug)]
pub(crate) enum VolumeCommand {
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

pub(crate) fn volume(store: &Store, cmd: VolumeCommand) -> Result<ExitCode> {
    match cmd {
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

//! `rbuild run`.

use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use rbuild_cache::Store;

use crate::parse_ref;

#[derive(Args, Debug)]
#[command(trailing_var_arg = true)]
pub(crate) struct RunArgs {
    /// Remove the container when it exits (containers are always discarded for now).
    #[arg(long)]
    rm: bool,
    /// Keep stdin open.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Set an environment variable K=V (repeatable).
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// User (name|uid[:group|gid]).
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Overwrite the image's entrypoint.
    #[arg(long)]
    entrypoint: Option<String>,
    /// Container hostname.
    #[arg(long)]
    hostname: Option<String>,
    /// Network mode: host (default) or none.
    #[arg(long, default_value = "host")]
    network: String,
    /// Image to run.
    image: String,
    /// Command and arguments.
    #[arg(allow_hyphen_values = true)]
    cmd: Vec<String>,
}

pub(crate) fn run(store: &Store, args: RunArgs) -> Result<ExitCode> {
    let image = parse_ref(&args.image)?;
    let network_none = match args.network.as_str() {
        "none" => true,
        "host" | "default" => false,
        other => bail!("--network {other}: supported modes are host and none"),
    };
    let req = rbuild_solver::container::RunRequest {
        cmd: args.cmd,
        entrypoint: args.entrypoint,
        env: args.env,
        workdir: args.workdir,
        user: args.user,
        hostname: args.hostname,
        network_none,
        interactive: args.interactive,
    };
    let _ = args.rm;
    let status =
        rbuild_solver::container::run_image(store, &image, &req).map_err(|e| anyhow!("{e}"))?;
    Ok(ExitCode::from(status.code().clamp(0, 255) as u8))
}

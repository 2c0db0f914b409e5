//! `rbuild build`: Dockerfile -> image in the store, and the `--output`s.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use rbuild_cache::Store;
use rbuild_frontend::BuildOptions;
use rbuild_types::{ImageRef, Platform};

use crate::{parse_ref, progress};

#[derive(Args, Debug)]
pub(crate) struct BuildArgs {
    /// Name and tag, e.g. web:v1 (repeatable).
    #[arg(short = 't', long = "tag")]
    tags: Vec<String>,
    /// Dockerfile path (default CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Build-time variable K=V (repeatable).
    #[arg(long = "build-arg")]
    build_args: Vec<String>,
    /// Stage to build.
    #[arg(long)]
    target: Option<String>,
    /// Do not use the cache.
    #[arg(long)]
    no_cache: bool,
    /// Progress output.
    #[arg(long, value_enum, default_value = "auto")]
    progress: progress::Mode,
    /// Output, e.g. type=oci,dest=web.tar (repeatable).
    #[arg(short = 'o', long = "output")]
    outputs: Vec<String>,
    /// Target platform (only the host's is supported for now).
    #[arg(long)]
    platform: Option<String>,
    /// Write the image id to this file.
    #[arg(long)]
    iidfile: Option<PathBuf>,
    /// Build context directory.
    context: PathBuf,
}

/// One `--output`.
#[derive(Debug)]
enum Output {
    Oci {
        dest: PathBuf,
        compression: rbuild_exporter::Compression,
    },
}

fn parse_output(s: &str) -> Result<Output> {
    let mut kind = None;
    let mut dest = None;
    let mut compression = rbuild_exporter::Compression::Gzip;
    for part in s.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            anyhow!("--output {s}: expected key=value pairs like type=oci,dest=out.tar")
        })?;
        match k {
            "type" => kind = Some(v.to_string()),
            "dest" => dest = Some(PathBuf::from(v)),
            "compression" => {
                compression = match v {
                    "gzip" => rbuild_exporter::Compression::Gzip,
                    "zstd" => rbuild_exporter::Compression::Zstd,
                    "uncompressed" => rbuild_exporter::Compression::None,
                    _ => bail!("--output {s}: compression must be gzip, zstd or uncompressed"),
                }
            }
            _ => bail!("--output {s}: unknown option {k:?}"),
        }
    }
    match kind.as_deref() {
        Some("oci") => Ok(Output::Oci {
            dest: dest.ok_or_else(|| anyhow!("--output {s}: type=oci needs dest=FILE"))?,
            compression,
        }),
        Some(other) => bail!("--output {s}: type={other} is not supported yet (supported: oci)"),
        None => bail!("--output {s}: missing type=, e.g. type=oci,dest=out.tar"),
    }
}

pub(crate) fn build(store: Store, args: BuildArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let tags: Vec<ImageRef> = args
        .tags
        .iter()
        .map(|t| parse_ref(t))
        .collect::<Result<_>>()?;
    let outputs: Vec<Output> = args
        .outputs
        .iter()
        .map(|o| parse_output(o))
        .collect::<Result<_>>()?;
    let platform = match &args.platform {
        Some(p) => {
            let p: Platform = p.parse().map_err(|e| anyhow!("--platform: {e}"))?;
            let host = Platform::host();
            if p.os != host.os || p.architecture != host.architecture {
                bail!("--platform {p}: only the host platform {host} can be built on this machine");
            }
            Some(p)
        }
        None => None,
    };
    if !args.context.is_dir() {
        bail!(
            "unable to prepare context: path {:?} not found or not a directory",
            args.context.display().to_string()
        );
    }
    let dockerfile = args
        .file
        .clone()
        .unwrap_or_else(|| args.context.join("Dockerfile"));
    let dockerfile_name = dockerfile.display().to_string();
    let text = std::fs::read_to_string(&dockerfile).with_context(|| {
        format!("failed to read dockerfile: open {dockerfile_name}: no such file or not readable; pass -f PATH or add a Dockerfile to the context")
    })?;
    let progress = progress::Progress::new(args.progress);
    progress.internal(
        1,
        &format!(
            "[internal] load build definition from {}",
            dockerfile
                .file_name()
                .map(|f| f.to_string_lossy())
                .unwrap_or_default()
        ),
        Some(&format!("transferring dockerfile: {}B done", text.len())),
        started.elapsed(),
    );
    let mut build_args = Vec::new();
    for a in &args.build_args {
        match a.split_once('=') {
            Some((k, v)) => build_args.push((k.to_string(), v.to_string())),
            None => {
                if let Ok(v) = std::env::var(a) {
                    build_args.push((a.clone(), v));
                }
            }
        }
    }
    let opts = BuildOptions {
        build_args,
        target: args.target.clone(),
        platform,
        dockerfile_name: dockerfile_name.clone(),
    };
    let resolver = rbuild_solver::StoreResolver::new(&store);
    let graph = rbuild_frontend::convert(&text, &opts, &resolver).map_err(|e| anyhow!("{e}"))?;
    let solve_opts = rbuild_solver::SolveOptions {
        context: args.context.clone(),
        dockerfile: dockerfile.clone(),
        dockerfile_name,
        no_cache: args.no_cache,
        first_vertex: 2,
        source_date_epoch: std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|s| s.parse().ok()),
    };
    let sink = |ev| progress.event(ev);
    let result =
        rbuild_solver::solve(&store, &graph, &solve_opts, &sink).map_err(|e| anyhow!("{e}"))?;
    let export_start = Instant::now();
    let id = graph.graph.node_count() + 2;
    progress.event(rbuild_solver::Event::Vertex {
        id,
        name: "exporting to image".into(),
    });
    for t in &tags {
        store.set_tag(t, &result.manifest)?;
    }
    for o in &outputs {
        match o {
            Output::Oci { dest, compression } => {
                rbuild_exporter::export_oci_archive(
                    &store,
                    &result.manifest,
                    &tags,
                    dest,
                    *compression,
                )
                .with_context(|| format!("writing OCI archive {}", dest.display()))?;
            }
        }
    }
    progress.event(rbuild_solver::Event::Done {
        id,
        elapsed: export_start.elapsed(),
    });
    if let Some(f) = &args.iidfile {
        std::fs::write(f, result.config.to_string())
            .with_context(|| format!("writing {}", f.display()))?;
    }
    eprintln!("writing image {} done", result.config);
    for t in &tags {
        eprintln!("naming to {t} done");
    }
    let _ = progress.total();
    Ok(ExitCode::SUCCESS)
}

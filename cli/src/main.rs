//! `rbuild`: a daemonless Dockerfile build engine.
//!
//! `rbuild -t web:v1 .` is `rbuild build -t web:v1 .`. The CLI is the only crate that prints.

mod progress;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use rbuild_cache::Store;
use rbuild_frontend::BuildOptions;
use rbuild_types::{ImageRef, Platform};

/// A daemonless Dockerfile build engine.
#[derive(Parser, Debug)]
#[command(
    name = "rbuild",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// The store directory (default /var/lib/rbuild as root, $XDG_DATA_HOME/rbuild otherwise).
    #[arg(long, env = "RBUILD_ROOT", global = true)]
    root: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build an image from a Dockerfile (the default command).
    Build(BuildArgs),
    /// List images.
    Images,
    /// Run a command in a new container.
    Run(RunArgs),
    /// Make a one-layer image from a rootfs tar.
    Import {
        /// The tar file (a root filesystem).
        tar: PathBuf,
        /// Name to tag it as, e.g. busybox:local.
        name: String,
    },
}

#[derive(Args, Debug)]
struct BuildArgs {
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

#[derive(Args, Debug)]
#[command(trailing_var_arg = true)]
struct RunArgs {
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

const SUBCOMMANDS: &[&str] = &["build", "images", "run", "import", "help"];

fn default_root() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/rbuild");
    }
    match std::env::var_os("XDG_DATA_HOME") {
        Some(d) => PathBuf::from(d).join("rbuild"),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".local/share/rbuild")
        }
    }
}

fn main() -> ExitCode {
    rbuild_sandbox::init_if_requested();
    let mut argv: Vec<String> = std::env::args().collect();
    // `rbuild -t x .` means `rbuild build -t x .`.
    if let Some(first) = argv.get(1) {
        let is_flag_of_top = matches!(first.as_str(), "-h" | "--help" | "-V" | "--version");
        if !SUBCOMMANDS.contains(&first.as_str()) && !is_flag_of_top {
            argv.insert(1, "build".into());
        }
    }
    let cli = Cli::parse_from(argv);
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ERROR: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn open_store(root: Option<PathBuf>) -> Result<Store> {
    let root = root.unwrap_or_else(default_root);
    Store::open(&root).with_context(|| {
        format!(
            "opening the store at {} (set RBUILD_ROOT or --root to use another)",
            root.display()
        )
    })
}

fn parse_ref(s: &str) -> Result<ImageRef> {
    s.parse::<ImageRef>().map_err(|e| anyhow!("{e}"))
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Build(args) => build(open_store(cli.root)?, args),
        Command::Images => images(&open_store(cli.root)?),
        Command::Import { tar, name } => {
            let store = open_store(cli.root)?;
            let name = parse_ref(&name)?;
            let manifest = rbuild_exporter::import_rootfs(&store, &tar, &name, &Platform::host())
                .with_context(|| format!("importing {}", tar.display()))?;
            let img = rbuild_exporter::load_image(&store, &manifest)?;
            println!("{}", img.config_digest);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run(&open_store(cli.root)?, args),
    }
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

fn build(store: Store, args: BuildArgs) -> Result<ExitCode> {
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

fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.3}{}", units[u]).replace(".000", "")
    }
}

fn human_ago(created: Option<&str>) -> String {
    let Some(t) = created.and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok()) else {
        return "N/A".into();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match secs {
        0..=59 => "Less than a minute ago".into(),
        60..=3599 => format!("{} minutes ago", secs / 60),
        3600..=86399 => format!("{} hours ago", secs / 3600),
        _ => format!("{} days ago", secs / 86400),
    }
}

fn images(store: &Store) -> Result<ExitCode> {
    println!(
        "{:<30} {:<12} {:<14} {:<24} SIZE",
        "REPOSITORY", "TAG", "IMAGE ID", "CREATED"
    );
    for t in store.list_tags()? {
        let img = rbuild_exporter::load_image(store, &t.manifest)?;
        let (name, tag) = match t.name.parse::<ImageRef>() {
            Ok(r) => (r.name(), r.tag.clone().unwrap_or_else(|| "<none>".into())),
            Err(_) => (t.name.clone(), "<none>".into()),
        };
        println!(
            "{:<30} {:<12} {:<14} {:<24} {}",
            name,
            tag,
            img.config_digest.short(),
            human_ago(img.config.created().as_deref()),
            human_size(img.size)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn run(store: &Store, args: RunArgs) -> Result<ExitCode> {
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

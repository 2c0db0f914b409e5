//! `rbuild`: a daemonless Dockerfile build engine.
//!
//! `rbuild -t web:v1 .` is `rbuild build -t web:v1 .`. The CLI is the only crate that prints.

mod argv;
mod build;
mod cache_cmds;
mod compose;
mod containers;
mod image_cmds;
mod images;
mod network_cmds;
mod progress;
mod remote_cache;
mod run;
mod system_cmds;
mod volumes;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use rbuild_cache::Store;
use rbuild_types::{ImageRef, Platform};

/// A daemonless Dockerfile build engine.
#[derive(Parser, Debug)]
#[command(name = "rbuild", version, about)]
struct Cli {
    /// The store directory (default /var/lib/rbuild as root, $XDG_DATA_HOME/rbuild otherwise).
    #[arg(long, env = "RBUILD_ROOT", global = true)]
    root: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Build an image from a Dockerfile (the default command).
    Build(build::BuildArgs),
    /// List images.
    Images {
        /// Output format (`json`: one object per line, as `docker images --format json`).
        #[arg(long, value_enum, default_value = "table")]
        format: image_cmds::ListFormat,
    },
    /// Manage images (inspect, ls).
    #[command(subcommand)]
    Image(image_cmds::ImageCommand),
    /// Pull an image from a registry into the store.
    Pull(image_cmds::PullArgs),
    /// Push an image of the store to a registry.
    Push(image_cmds::PushArgs),
    /// Save registry credentials (in ~/.docker/config.json, shared with docker and skopeo).
    Login(image_cmds::LoginArgs),
    /// Remove saved registry credentials.
    Logout {
        /// Registry host[:port].
        server: String,
    },
    /// Show the history of an image (one line per step, newest first).
    History {
        /// Image name or id.
        image: String,
        /// Do not truncate CREATED BY.
        #[arg(long)]
        no_trunc: bool,
    },
    /// Give an image another name.
    Tag {
        /// Existing image (name or id).
        source: String,
        /// New name.
        target: String,
    },
    /// Remove image names (layers stay until `rbuild prune`).
    Rmi {
        /// Image names or ids.
        #[arg(required = true)]
        images: Vec<String>,
        /// Remove every name of an image given by id.
        #[arg(short, long)]
        force: bool,
    },
    /// Write an image to a docker (default) or OCI archive.
    Save(image_cmds::SaveArgs),
    /// Load images from a docker or OCI archive.
    Load {
        /// The archive.
        #[arg(short, long)]
        input: PathBuf,
    },
    /// Run a command in a new container.
    Run(Box<run::RunArgs>),
    /// List containers (running ones; -a: also those kept after they exited).
    Ps(containers::PsArgs),
    /// Remove containers and their writable layers.
    Rm(containers::RmArgs),
    /// Show a container's file changes (A added, C changed, D deleted).
    Diff(containers::DiffArgs),
    /// Make a new image from a container's changes.
    Commit(containers::CommitArgs),
    /// Manage named volumes.
    #[command(subcommand)]
    Volume(volumes::VolumeCommand),
    #[command(flatten)]
    Container(containers::ContainerCommand),
    /// Disk usage, pruning and the event journal of the store.
    #[command(subcommand)]
    System(system_cmds::SystemCommand),
    /// Run a multi-container application from a compose file.
    Compose(compose::ComposeArgs),
    /// Manage networks.
    #[command(subcommand)]
    Network(network_cmds::NetworkCommand),
    /// List a running container's published ports.
    Port(network_cmds::PortArgs),
    /// Show build cache disk usage (records, cache mounts).
    Du(cache_cmds::DuArgs),
    /// Remove unused build cache, least recently used first.
    Prune(cache_cmds::PruneArgs),
    /// Inspect the build cache.
    #[command(subcommand)]
    Cache(cache_cmds::CacheCommand),
    /// Make a one-layer image from a rootfs tar.
    Import {
        /// The tar file (a root filesystem).
        tar: PathBuf,
        /// Name to tag it as, e.g. busybox:local.
        name: String,
    },
}

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
    rbuild_containers::monitor_if_requested(&rbuild_containers::monitor::NoNetworkSetup);
    // Die quietly on a closed pipe (`rbuild images | head`), as other command-line tools do,
    // instead of panicking in println!.
    // SAFETY: setting a signal disposition to the default has no preconditions.
    unsafe {
        nix::libc::signal(nix::libc::SIGPIPE, nix::libc::SIG_DFL);
    }
    // `rbuild -t x .` means `rbuild build -t x .`; `rbuild run IMG CMD -flags` passes the flags on.
    let argv = argv::rewrite(&Cli::command(), std::env::args().collect());
    let cli = Cli::parse_from(argv);
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ERROR: {e:#}");
            if let Some(hint) = cache_cmds::hint(&e) {
                eprintln!("{hint}");
            }
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

pub(crate) fn parse_ref(s: &str) -> Result<ImageRef> {
    s.parse::<ImageRef>().map_err(|e| anyhow!("{e}"))
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Build(args) => {
            let early = build::early_client(&args)?;
            build::build(open_store(cli.root)?, args, early)
        }
        Command::Images { format } => images::images(&open_store(cli.root)?, format),
        Command::Image(c) => image_cmds::image(&open_store(cli.root)?, c),
        Command::Pull(a) => image_cmds::pull(&open_store(cli.root)?, a),
        Command::Push(a) => image_cmds::push(&open_store(cli.root)?, a),
        Command::Login(a) => image_cmds::login(a),
        Command::Logout { server } => image_cmds::logout(&server),
        Command::History { image, no_trunc } => {
            image_cmds::history(&open_store(cli.root)?, &image, no_trunc)
        }
        Command::Tag { source, target } => {
            image_cmds::tag(&open_store(cli.root)?, &source, &target)
        }
        Command::Rmi { images, force } => image_cmds::rmi(&open_store(cli.root)?, &images, force),
        Command::Save(a) => image_cmds::save(&open_store(cli.root)?, a),
        Command::Load { input } => image_cmds::load(&open_store(cli.root)?, &input),
        Command::Import { tar, name } => {
            let store = open_store(cli.root)?;
            let name = parse_ref(&name)?;
            let manifest = rbuild_exporter::import_rootfs(&store, &tar, &name, &Platform::host())
                .with_context(|| format!("importing {}", tar.display()))?;
            let img = rbuild_exporter::load_image(&store, &manifest)?;
            println!("{}", img.config_digest);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run::run(&open_store(cli.root)?, *args),
        Command::Ps(a) => containers::ps(&open_store(cli.root)?, a),
        Command::Rm(a) => containers::rm(&open_store(cli.root)?, a),
        Command::Diff(a) => containers::diff(&open_store(cli.root)?, a),
        Command::Commit(a) => containers::commit(&open_store(cli.root)?, a),
        Command::Volume(c) => volumes::volume(&open_store(cli.root)?, c),
        Command::Container(c) => containers::dispatch(&open_store(cli.root)?, c),
        Command::System(c) => system_cmds::system(&open_store(cli.root)?, c),
        Command::Compose(a) => compose::compose(&open_store(cli.root)?, a),
        Command::Network(c) => network_cmds::network(&open_store(cli.root)?, c),
        Command::Port(a) => network_cmds::port(&open_store(cli.root)?, a),
        Command::Du(a) => cache_cmds::du(&open_store(cli.root)?, a),
        Command::Prune(a) => cache_cmds::prune(&open_store(cli.root)?, a),
        Command::Cache(c) => cache_cmds::cache(&open_store(cli.root)?, c),
    }
}

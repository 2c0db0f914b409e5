//! `rbuild compose`: a multi-container application from a compose file, run in this process
//! through the containers and network crates (no daemon, no shelling out to rbuild).
//!
//! - [`rbuild_compose`] reads the files into a typed [`Project`];
//! - `up` builds (rbuild's solver, services in parallel) or pulls the images, creates the project's
//!   networks and volumes, then creates/starts each service's container in dependency order,
//!   waiting for `service_healthy` / `service_completed_successfully`; a container whose
//!   `com.docker.compose.config-hash` (or image) label differs from the file is recreated;
//! - the other commands find the project's containers by their `com.docker.compose.*` labels.

mod engine;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::{Args, Parser, Subcommand};
use rbuild_cache::Store;
use rbuild_compose::{Project, LABEL_ONEOFF, LABEL_PROJECT, LABEL_SERVICE};
use rbuild_containers::logs::LogReader;
use rbuild_containers::run::ContainerConfig;
use rbuild_containers::state::{self, ContainerState, Status};

use engine::Engine;

/// `rbuild compose` and its global flags.
#[derive(Args, Debug)]
pub(crate) struct ComposeArgs {
    /// Compose file (repeatable: merged in order; default: compose.yaml and its override).
    #[arg(short = 'f', long = "file")]
    files: Vec<PathBuf>,
    /// Project name (default: COMPOSE_PROJECT_NAME, the file's `name:`, or the directory).
    #[arg(short = 'p', long = "project-name")]
    project: Option<String>,
    /// Project directory (default: the first file's directory).
    #[arg(long)]
    project_directory: Option<PathBuf>,
    /// Enable services of this profile (repeatable; also COMPOSE_PROFILES).
    #[arg(long = "profile")]
    profiles: Vec<String>,
    #[command(subcommand)]
    cmd: ComposeCommand,
}

#[derive(Subcommand, Debug)]
enum ComposeCommand {
    /// Create and start the services' containers (and networks, volumes, images).
    Up {
        /// Detached: return once every container is started.
        #[arg(short = 'd', long)]
        detach: bool,
        /// Build images before starting containers.
        #[arg(long)]
        build: bool,
        /// Never build: fail when a built service's image is missing.
        #[arg(long)]
        no_build: bool,
        /// Recreate containers even if their configuration did not change.
        #[arg(long)]
        force_recreate: bool,
        /// Seconds to wait for a container to stop when recreating it.
        #[arg(short = 't', long = "timeout")]
        timeout: Option<u32>,
        /// Services (default: all, and always what they depend on).
        services: Vec<String>,
    },
    /// Stop and remove the project's containers and networks.
    Down {
        /// Also remove the named volumes of the file and anonymous volumes.
        #[arg(short = 'v', long)]
        volumes: bool,
        /// Also remove images: `local` (those built without an `image:` name) or `all`.
        #[arg(long)]
        rmi: Option<String>,
        /// Seconds to wait for a container to stop.
        #[arg(short = 't', long = "timeout")]
        timeout: Option<u32>,
    },
    /// List the project's containers.
    Ps {
        /// Also stopped containers.
        #[arg(short = 'a', long)]
        all: bool,
        /// Only names.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Services.
        services: Vec<String>,
    },
    /// Show the services' output, prefixed with the container name.
    Logs {
        /// Follow until the containers exit.
        #[arg(short = 'f', long)]
        follow: bool,
        /// No colours.
        #[arg(long)]
        no_color: bool,
        /// Prefix lines with their time.
        #[arg(short = 't', long)]
        timestamps: bool,
        /// Services.
        services: Vec<String>,
    },
    /// Build the services' images (in parallel, with rbuild's cache).
    Build {
        /// Do not use the cache.
        #[arg(long)]
        no_cache: bool,
        /// Services.
        services: Vec<String>,
    },
    /// Run a command in a service's running container.
    #[command(trailing_var_arg = true)]
    Exec {
        /// No pseudo-TTY (the default when stdin is not a terminal).
        #[arg(short = 'T')]
        no_tty: bool,
        /// Set an environment variable K=V (repeatable).
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        /// User.
        #[arg(short = 'u', long)]
        user: Option<String>,
        /// Working directory.
        #[arg(short = 'w', long)]
        workdir: Option<String>,
        /// Service.
        service: String,
        /// Command and arguments.
        #[arg(required = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Run a one-off command in a new container of a service (its dependencies are started).
    #[command(trailing_var_arg = true)]
    Run {
        /// Remove the container when it exits.
        #[arg(long)]
        rm: bool,
        /// Set an environment variable K=V (repeatable).
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        /// Do not start the dependencies.
        #[arg(long)]
        no_deps: bool,
        /// Service.
        service: String,
        /// Command and arguments (default: the service's).
        #[arg(allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Stop the services' containers.
    Stop {
        /// Seconds to wait before SIGKILL.
        #[arg(short = 't', long = "timeout")]
        timeout: Option<u32>,
        /// Services.
        services: Vec<String>,
    },
    /// Start the services' existing containers.
    Start {
        /// Services.
        services: Vec<String>,
    },
    /// Restart the services' containers.
    Restart {
        /// Seconds to wait before SIGKILL.
        #[arg(short = 't', long = "timeout")]
        timeout: Option<u32>,
        /// Services.
        services: Vec<String>,
    },
    /// Print the resolved file (interpolated, merged, with defaults).
    Config {
        /// Only the service names.
        #[arg(long)]
        services: bool,
        /// Only the volume names.
        #[arg(long)]
        volumes: bool,
        /// Only validate.
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Pull the images of the services that name one.
    Pull {
        /// Services.
        services: Vec<String>,
    },
    /// Push the images of the services that build one with an `image:` name.
    Push {
        /// Services.
        services: Vec<String>,
    },
}

fn load(a: &ComposeArgs) -> Result<Project> {
    let opts = rbuild_compose::Options {
        files: a.files.clone(),
        project_name: a.project.clone(),
        project_dir: a.project_directory.clone(),
        profiles: a.profiles.clone(),
        env: std::env::vars().collect(),
        cwd: std::env::current_dir()?,
    };
    rbuild_compose::load(&opts).map_err(|e| anyhow!("{e}"))
}

pub(crate) fn compose(store: &Store, a: ComposeArgs) -> Result<ExitCode> {
    let mut project = load(&a)?;
    // A service named on the command line is enabled whatever its profiles (as docker compose).
    let named: Vec<String> = match &a.cmd {
        ComposeCommand::Up { services, .. }
        | ComposeCommand::Build { services, .. }
        | ComposeCommand::Pull { services }
        | ComposeCommand::Push { services } => services.clone(),
        ComposeCommand::Run { service, .. } => vec![service.clone()],
        _ => Vec::new(),
    };
    for n in named {
        if let Some(s) = project.disabled.remove(&n) {
            project.services.insert(n, s);
        }
    }
    let e = Engine::new(store, project);
    match a.cmd {
        ComposeCommand::Up {
            detach,
            build,
            no_build,
            force_recreate,
            timeout,
            services,
        } => e.up(
            &services,
            engine::UpOptions {
                detach,
                build,
                no_build,
                force_recreate,
                timeout,
            },
        ),
        ComposeCommand::Down {
            volumes,
            rmi,
            timeout,
        } => e.down(volumes, rmi.as_deref(), timeout),
        ComposeCommand::Ps {
            all,
            quiet,
            services,
        } => ps(&e, all, quiet, &services),
        ComposeCommand::Logs {
            follow,
            no_color,
            timestamps,
            services,
        } => logs(&e, follow, !no_color, timestamps, &services),
        ComposeCommand::Build { no_cache, services } => {
            let order = e.selected(&services)?;
            e.build(&order, no_cache)?;
            Ok(ExitCode::SUCCESS)
        }
        ComposeCommand::Exec {
            no_tty,
            env,
            user,
            workdir,
            service,
            cmd,
        } => exec(&e, no_tty, env, user, workdir, &service, cmd),
        ComposeCommand::Run {
            rm,
            env,
            no_deps,
            service,
            cmd,
        } => e.run_oneoff(&service, rm, &env, no_deps, cmd),
        ComposeCommand::Stop { timeout, services } => e.stop(&services, timeout),
        ComposeCommand::Start { services } => e.start(&services),
        ComposeCommand::Restart { timeout, services } => {
            e.stop(&services, timeout)?;
            e.start(&services)
        }
        ComposeCommand::Config {
            services,
            volumes,
            quiet,
        } => {
            let p = e.project();
            if quiet {
            } else if services {
                for s in p.services.keys() {
                    println!("{s}");
                }
            } else if volumes {
                for v in p.volumes.keys() {
                    println!("{v}");
                }
            } else {
                print!("{}", p.to_yaml());
            }
            Ok(ExitCode::SUCCESS)
        }
        ComposeCommand::Pull { services } => e.pull(&services),
        ComposeCommand::Push { services } => e.push(&services),
    }
}

/// A project container: its state and its configuration (labels).
pub(crate) struct Member {
    pub st: ContainerState,
    pub conf: ContainerConfig,
}

impl Member {
    fn name(&self) -> &str {
        &self.st.record.name
    }

    fn service(&self) -> &str {
        self.conf
            .labels
            .get(LABEL_SERVICE)
            .map(String::as_str)
            .unwrap_or("")
    }

    fn oneoff(&self) -> bool {
        self.conf.labels.get(LABEL_ONEOFF).map(String::as_str) == Some("True")
    }

    fn running(&self) -> bool {
        matches!(
            self.st.status,
            Status::Running | Status::Paused | Status::Restarting
        )
    }
}

/// Every container labelled with project `name`, oldest first.
pub(crate) fn members(store: &Store, name: &str) -> Result<Vec<Member>> {
    let mut out = Vec::new();
    for st in state::list(store).map_err(|e| anyhow!("{e}"))? {
        let Ok(conf) = ContainerConfig::load(store, &st.record.name) else {
            continue;
        };
        if conf.labels.get(LABEL_PROJECT).map(String::as_str) == Some(name) {
            out.push(Member { st, conf });
        }
    }
    out.sort_by_key(|m| m.st.record.created);
    Ok(out)
}

fn ps(e: &Engine, all: bool, quiet: bool, services: &[String]) -> Result<ExitCode> {
    let list: Vec<Member> = members(e.store(), &e.project().name)?
        .into_iter()
        .filter(|m| services.is_empty() || services.iter().any(|s| s == m.service()))
        .filter(|m| all || m.running())
        .collect();
    if quiet {
        for m in &list {
            println!("{}", m.st.record.id);
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<28} {:<24} {:<12} {:<28} PORTS",
        "NAME", "IMAGE", "SERVICE", "STATUS"
    );
    for m in &list {
        println!(
            "{:<28} {:<24} {:<12} {:<28} {}",
            m.name(),
            m.st.record.image,
            m.service(),
            crate::containers::status_text(&m.st),
            m.st.record.network.ports.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

const COLORS: [u8; 6] = [36, 33, 32, 35, 34, 31];

fn logs(
    e: &Engine,
    follow: bool,
    color: bool,
    timestamps: bool,
    services: &[String],
) -> Result<ExitCode> {
    for s in services {
        if !e.project().services.contains_key(s) {
            bail!("no such service: {s}");
        }
    }
    let list: Vec<Member> = members(e.store(), &e.project().name)?
        .into_iter()
        .filter(|m| !m.oneoff())
        .filter(|m| services.is_empty() || services.iter().any(|s| s == m.service()))
        .collect();
    let names: Vec<String> = list.iter().map(|m| m.name().to_string()).collect();
    follow_logs(e.store(), &names, follow, color, timestamps, None)
}

/// Prints the logs of `names`, each line prefixed `NAME  | ` (coloured per container when
/// `color` and stdout is a terminal); with `follow`, until every container has exited or `stop`
/// is set.
pub(crate) fn follow_logs(
    store: &Store,
    names: &[String],
    follow: bool,
    color: bool,
    timestamps: bool,
    stop: Option<&std::sync::atomic::AtomicBool>,
) -> Result<ExitCode> {
    let color = color && std::io::stdout().is_terminal();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut readers: Vec<(String, String, LogReader)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let p = format!("{n:<width$} | ");
            let prefix = if color {
                format!("\x1b[{}m{p}\x1b[0m", COLORS[i % COLORS.len()])
            } else {
                p
            };
            (n.clone(), prefix, LogReader::new(&store.container_dir(n)))
        })
        .collect();
    let mut out = std::io::stdout().lock();
    let mut first = true;
    loop {
        let mut any = false;
        for (_, prefix, r) in readers.iter_mut() {
            let entries = if first { r.read_existing() } else { r.poll() };
            for en in entries.unwrap_or_default() {
                any = true;
                let ts = if timestamps {
                    format!("{} ", en.time)
                } else {
                    String::new()
                };
                let line = en.log.strip_suffix('\n').unwrap_or(&en.log);
                writeln!(out, "{prefix}{ts}{line}")?;
            }
        }
        out.flush()?;
        first = false;
        if !follow || stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst)) {
            break;
        }
        if !any {
            let running = readers.iter().any(|(n, _, _)| {
                state::get(store, n).is_ok_and(|s| {
                    matches!(
                        s.status,
                        Status::Running | Status::Paused | Status::Restarting
                    )
                })
            });
            if !running {
                break;
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Parser)]
struct ContainerCli {
    #[command(subcommand)]
    c: crate::containers::ContainerCommand,
}

fn exec(
    e: &Engine,
    no_tty: bool,
    env: Vec<String>,
    user: Option<String>,
    workdir: Option<String>,
    service: &str,
    cmd: Vec<String>,
) -> Result<ExitCode> {
    let svc = e
        .project()
        .services
        .get(service)
        .ok_or_else(|| anyhow!("no such service: {service}"))?;
    let name = e.project().container_name(svc);
    let mut argv: Vec<String> = vec!["rbuild".into(), "exec".into()];
    if !no_tty && std::io::stdin().is_terminal() {
        argv.push("-it".into());
    }
    for v in env {
        argv.extend(["-e".into(), v]);
    }
    if let Some(u) = user {
        argv.extend(["-u".into(), u]);
    }
    if let Some(w) = workdir {
        argv.extend(["-w".into(), w]);
    }
    argv.push(name);
    argv.extend(cmd);
    let c = ContainerCli::try_parse_from(argv).map_err(|e| anyhow!("{e}"))?;
    crate::containers::dispatch(e.store(), c.c)
}

/// `K=V` for each variable of a service's environment (a name without a value takes the
/// process's, or is left out).
pub(crate) fn env_list(env: &BTreeMap<String, Option<String>>) -> Vec<String> {
    env.iter()
        .filter_map(|(k, v)| match v {
            Some(v) => Some(format!("{k}={v}")),
            None => std::env::var(k).ok().map(|v| format!("{k}={v}")),
        })
        .collect()
}

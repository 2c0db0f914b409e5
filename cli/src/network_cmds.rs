//! `rbuild network create|ls|inspect|rm|prune|connect|disconnect`, `rbuild port`, and the
//! networking flags of `rbuild run`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use rbuild_cache::Store;
use rbuild_network::{etc, CreateOptions, NetworkConfig, NetworkMode, Networks, PortSpec};

#[derive(Subcommand, Debug)]
pub(crate) enum NetworkCommand {
    /// Create a network (a bridge with its own subnet; containers on it find each other by name).
    Create(CreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls {
        /// Only print names.
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Show networks' definitions (JSON, netavark's format).
    Inspect {
        /// Network names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove networks (refused while a container uses them).
    #[command(alias = "remove")]
    Rm {
        /// Network names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove every user-defined network no container uses.
    Prune {
        /// Do not ask (accepted for docker compatibility; rbuild never asks).
        #[arg(short, long)]
        force: bool,
    },
    /// Connect a running container to a network.
    Connect {
        /// Another name the container answers to on this network (repeatable).
        #[arg(long)]
        alias: Vec<String>,
        /// The network.
        network: String,
        /// The container (name or id).
        container: String,
    },
    /// Disconnect a running container from a network.
    Disconnect {
        /// Accepted for docker compatibility.
        #[arg(short, long)]
        force: bool,
        /// The network.
        network: String,
        /// The container (name or id).
        container: String,
    },
}

#[derive(Args, Debug)]
pub(crate) struct CreateArgs {
    /// Subnet in CIDR form (default: a free 10.89.N.0/24).
    #[arg(long)]
    subnet: Option<String>,
    /// Gateway (default: the subnet's first address).
    #[arg(long)]
    gateway: Option<String>,
    /// No route out of the network (containers reach only each other).
    #[arg(long)]
    internal: bool,
    /// A label K=V (repeatable).
    #[arg(long)]
    label: Vec<String>,
    /// Driver (only bridge).
    #[arg(short, long, default_value = "bridge")]
    driver: String,
    /// The network's name.
    name: String,
}

#[derive(Args, Debug)]
pub(crate) struct PortArgs {
    /// The container (name or id).
    container: String,
    /// Only this container port (PORT[/tcp|udp]).
    port: Option<String>,
}

/// The networking flags of `rbuild run` as a [`NetworkConfig`].
pub(crate) fn network_config(
    network: Option<&str>,
    aliases: &[String],
    publish: &[String],
    publish_all: bool,
    add_host: &[String],
    dns: &[String],
    link: &[String],
) -> Result<NetworkConfig> {
    let mode = NetworkMode::parse(network, aliases)?;
    let ports = publish
        .iter()
        .map(|p| PortSpec::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    let dns = dns
        .iter()
        .map(|d| {
            d.parse::<IpAddr>()
                .map_err(|_| anyhow!("--dns {d}: not an IP address"))
        })
        .collect::<Result<Vec<_>>>()?;
    let add_hosts = add_host
        .iter()
        .map(|h| etc::parse_add_host(h))
        .collect::<Result<Vec<_>, _>>()?;
    let links = link
        .iter()
        .map(|l| etc::parse_link(l))
        .collect::<Result<Vec<_>, _>>()?;
    if !links.is_empty() && matches!(mode, NetworkMode::Host | NetworkMode::None) {
        bail!("--link needs a bridge network; it cannot be used with --network host or none");
    }
    Ok(NetworkConfig {
        mode,
        ports,
        publish_all,
        dns,
        add_hosts,
        links,
    })
}

pub(crate) fn network(store: &Store, cmd: NetworkCommand) -> Result<ExitCode> {
    let nets = Networks::open(store.root());
    match cmd {
        NetworkCommand::Create(a) => {
            if a.driver != "bridge" {
                bail!("--driver {}: only the bridge driver is supported", a.driver);
            }
            let mut labels = BTreeMap::new();
            for l in &a.label {
                let (k, v) = l.split_once('=').unwrap_or((l, ""));
                if k.is_empty() {
                    bail!("--label {l}: expected KEY=VALUE");
                }
                labels.insert(k.to_string(), v.to_string());
            }
            let opts = CreateOptions {
                subnet: a
                    .subnet
                    .as_deref()
                    .map(|s| {
                        s.parse().map_err(|_| {
                            anyhow!("--subnet {s}: expected a CIDR subnet such as 10.89.5.0/24")
                        })
                    })
                    .transpose()?,
                gateway: a
                    .gateway
                    .as_deref()
                    .map(|g| {
                        g.parse()
                            .map_err(|_| anyhow!("--gateway {g}: not an IP address"))
                    })
                    .transpose()?,
                internal: a.internal,
                labels,
            };
            let n = nets.create(&a.name, &opts)?;
            println!("{}", n.id);
        }
        NetworkCommand::Ls { quiet } => {
            let list = nets.list()?;
            if !quiet {
                println!(
                    "{:<14} {:<20} {:<10} {:<18} SCOPE",
                    "NETWORK ID", "NAME", "DRIVER", "SUBNET"
                );
            }
            for n in list {
                if quiet {
                    println!("{}", n.name);
                } else {
                    let subnet = n
                        .subnets
                        .iter()
                        .map(|s| s.subnet.to_string())
                        .collect::<Vec<_>>()
                        .join(",");
                    println!(
                        "{:<14} {:<20} {:<10} {:<18} local",
                        &n.id[..12.min(n.id.len())],
                        n.name,
                        n.driver,
                        subnet
                    );
                }
            }
        }
        NetworkCommand::Inspect { names } => {
            let mut out = Vec::new();
            for n in &names {
                out.push(nets.get(n)?);
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        NetworkCommand::Rm { names } => {
            let mut failed = false;
            for n in &names {
                match nets.remove(n) {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        eprintln!("ERROR: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::from(1));
            }
        }
        NetworkCommand::Prune { force: _ } => {
            let removed = nets.prune()?;
            if !removed.is_empty() {
                println!("Deleted Networks:");
                for n in removed {
                    println!("{n}");
                }
            }
        }
        NetworkCommand::Connect {
            alias,
            network,
            container,
        } => nets
            .connect(&network, &container, &alias)
            .with_context(|| format!("connecting {container} to {network}"))?,
        NetworkCommand::Disconnect {
            force: _,
            network,
            container,
        } => nets
            .disconnect(&network, &container)
            .with_context(|| format!("disconnecting {container} from {network}"))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `rbuild port CONTAINER [PORT[/PROTO]]`, as `docker port`.
pub(crate) fn port(store: &Store, a: PortArgs) -> Result<ExitCode> {
    let nets = Networks::open(store.root());
    let rec = nets.find(&a.container)?;
    let want = match &a.port {
        None => None,
        Some(p) => {
            let (n, proto) = p.split_once('/').unwrap_or((p, "tcp"));
            let n: u16 = n
                .parse()
                .map_err(|_| anyhow!("{p}: expected PORT[/tcp|udp]"))?;
            Some((n, proto.to_string()))
        }
    };
    let mut found = false;
    for p in rec.ports() {
        match &want {
            Some((n, proto)) if *n == p.container_port && *proto == p.protocol => {
                println!("{}:{}", p.host_ip, p.host_port);
                found = true;
            }
            Some(_) => {}
            None => {
                println!(
                    "{}/{} -> {}:{}",
                    p.container_port, p.protocol, p.host_ip, p.host_port
                );
                found = true;
            }
        }
    }
    if let (Some(p), false) = (&a.port, found) {
        bail!("no public port {p} published for {}", a.container);
    }
    Ok(ExitCode::SUCCESS)
}

//! A container's network attachment: namespace, netavark setup/teardown, ports, etc files.

use crate::error::{io, Error, Result};
use crate::etc::{self, AddHostIp, HostEntry};
use crate::ipam::{Ipam, Lock};
use crate::ports::{free_port, port_is_free, PortSpec};
use crate::store::{Networks, DEFAULT_NETWORK};
use crate::types::{NetworkOptions, PerNetworkOptions, PortMapping, StatusBlock};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `--network`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NetworkMode {
    /// An empty namespace with only `lo` (the sandbox makes it).
    None,
    /// The host's namespace.
    Host,
    /// Another container's namespace (`container:NAME`).
    Container(String),
    /// These networks (by name) with these aliases each; empty: the default network `bridge`.
    Networks(Vec<(String, Vec<String>)>),
}

impl Default for NetworkMode {
    fn default() -> Self {
        NetworkMode::Networks(Vec::new())
    }
}

impl NetworkMode {
    /// Parses `--network` (`none`, `host`, `bridge`/`default`, `container:NAME`, a network name)
    /// with the `--network-alias` names, which apply to it.
    pub fn parse(network: Option<&str>, aliases: &[String]) -> Result<NetworkMode> {
        let mode = match network.unwrap_or("bridge") {
            "none" => NetworkMode::None,
            "host" => NetworkMode::Host,
            "bridge" | "default" => {
                NetworkMode::Networks(vec![(DEFAULT_NETWORK.into(), aliases.to_vec())])
            }
            c if c.starts_with("container:") => {
                NetworkMode::Container(c["container:".len()..].to_string())
            }
            name if crate::store::valid_name(name) => {
                NetworkMode::Networks(vec![(name.into(), aliases.to_vec())])
            }
            other => {
                return Err(Error::Invalid(format!(
                "--network {other}: expected none, host, bridge, container:NAME or a network name"
            )))
            }
        };
        if !aliases.is_empty() && !matches!(mode, NetworkMode::Networks(_)) {
            return Err(Error::Invalid(
                "--network-alias needs a user-defined network (--network NAME)".into(),
            ));
        }
        Ok(mode)
    }
}

/// A container's networking flags.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetworkConfig {
    /// `--network` (+ `--network-alias`).
    pub mode: NetworkMode,
    /// `-p`.
    pub ports: Vec<PortSpec>,
    /// `-P`: publish every port the image EXPOSEs on a free host port.
    pub publish_all: bool,
    /// `--dns`.
    pub dns: Vec<IpAddr>,
    /// `--add-host`.
    pub add_hosts: Vec<(String, AddHostIp)>,
    /// `--link NAME:ALIAS`.
    pub links: Vec<(String, String)>,
}

impl NetworkConfig {
    /// Whether the container needs nothing of this crate (host networking, no extra entries):
    /// then it simply sees the host's `/etc/hosts` and `/etc/resolv.conf`.
    pub fn is_plain_host(&self) -> bool {
        self.mode == NetworkMode::Host
            && self.dns.is_empty()
            && self.add_hosts.is_empty()
            && self.links.is_empty()
            && self.ports.is_empty()
            && !self.publish_all
    }
}

/// What a container asks of the network.
#[derive(Clone, Debug)]
pub struct AttachRequest<'a> {
    /// The container's id (hex).
    pub container_id: &'a str,
    /// Its name (answered by aardvark-dns).
    pub container_name: &'a str,
    /// Its hostname (in `/etc/hosts`).
    pub hostname: &'a str,
    /// The flags.
    pub config: &'a NetworkConfig,
    /// The image's `ExposedPorts` keys (for `-P`).
    pub exposed: &'a [String],
}

/// A published port as it ended up.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PublishedPort {
    /// The container's port.
    pub container_port: u16,
    /// `tcp`/`udp`.
    pub protocol: String,
    /// The host address (`0.0.0.0` for all).
    pub host_ip: String,
    /// The host port.
    pub host_port: u16,
}

/// What is recorded of an attachment (`networks/containers/<id>/record.json`): enough to tear it
/// down after a crash, and what `port`, `inspect` and `--link` read.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AttachmentRecord {
    /// The container's id.
    pub container_id: String,
    /// The container's name.
    pub container_name: String,
    /// The hostname.
    pub hostname: String,
    /// The namespace (None: host or none mode, the sandbox's business).
    pub netns: Option<PathBuf>,
    /// Whether this attachment pinned the namespace (false for `container:NAME`).
    pub owns_netns: bool,
    /// What netavark was given (the networks currently connected).
    pub options: NetworkOptions,
    /// What netavark answered, per network.
    pub status: BTreeMap<String, StatusBlock>,
    /// `--dns`.
    pub dns: Vec<IpAddr>,
    /// `/etc/hosts` entries from `--add-host` and `--link`.
    pub extra_hosts: Vec<HostEntry>,
    /// The generated `/etc/hosts`.
    pub hosts_path: PathBuf,
    /// The generated `/etc/resolv.conf`.
    pub resolv_path: PathBuf,
    /// Set once setup finished (a record without it is being set up or was interrupted).
    #[serde(default)]
    pub complete: bool,
    /// netavark's `--config` directory for this attachment (the store's, see
    /// [`Networks::netavark_dir`]); None in records of older rbuilds, which shared
    /// `<run>/netavark` for the host.
    #[serde(default)]
    pub netavark_config: Option<PathBuf>,
}

/// The host-wide copy of an attachment (`<run>/attached/<id>.json`): what is needed to tear it
/// down even when its store is gone (a deleted temporary store, a killed test).
#[derive(serde::Serialize, serde::Deserialize)]
struct Ticket {
    /// The store's `networks/` directory.
    networks_dir: PathBuf,
    record: AttachmentRecord,
}

impl AttachmentRecord {
    /// The container's addresses (all networks).
    pub fn ips(&self) -> Vec<IpAddr> {
        self.status.values().flat_map(status_ips).collect()
    }

    /// The published ports.
    pub fn ports(&self) -> Vec<PublishedPort> {
        self.options
            .port_mappings
            .iter()
            .flatten()
            .map(|m| PublishedPort {
                container_port: m.container_port,
                protocol: m.protocol.clone(),
                host_ip: if m.host_ip.is_empty() {
                    "0.0.0.0".into()
                } else {
                    m.host_ip.clone()
                },
                host_port: m.host_port,
            })
            .collect()
    }

    fn dns_servers(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = Vec::new();
        for (name, s) in &self.status {
            let dns_net = self
                .options
                .network_info
                .get(name)
                .is_some_and(|n| n.dns_enabled);
            if dns_net {
                for ip in s.dns_server_ips.iter().flatten() {
                    if !v.contains(ip) {
                        v.push(*ip);
                    }
                }
            }
        }
        v
    }
}

/// A live attachment, owned by the process running the container. Dropping it tears it down
/// (as [`Attachment::detach`], errors ignored); if the process dies instead, its lock is released
/// and the next garbage collection tears it down.
pub struct Attachment {
    nets: Networks,
    record: AttachmentRecord,
    done: bool,
    _live: Lock,
}

impl Attachment {
    /// What was set up.
    pub fn record(&self) -> &AttachmentRecord {
        &self.record
    }

    /// The namespace the container must join (None: the sandbox decides, host or none).
    pub fn netns(&self) -> Option<&Path> {
        self.record.netns.as_deref()
    }

    /// Host files to bind on `/etc/hosts` and `/etc/resolv.conf`.
    pub fn etc_files(&self) -> [(&Path, &str); 2] {
        [
            (self.record.hosts_path.as_path(), "/etc/hosts"),
            (self.record.resolv_path.as_path(), "/etc/resolv.conf"),
        ]
    }

    /// Tears everything down (netavark teardown, addresses, namespace, files).
    pub fn detach(mut self) -> Result<()> {
        self.done = true;
        self.teardown()
    }

    fn teardown(&self) -> Result<()> {
        let _l = self.nets.lock()?;
        // Re-read: `network connect`/`disconnect` may have changed it.
        let rec = self
            .nets
            .read_record(&self.record.container_id)
            .unwrap_or(self.record.clone());
        self.nets.teardown(&rec)
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.teardown();
        }
    }
}

impl Networks {
    fn container_dir(&self, id: &str) -> PathBuf {
        self.dir.join("containers").join(id)
    }

    fn read_record(&self, id: &str) -> Result<AttachmentRecord> {
        let p = self.container_dir(id).join("record.json");
        let b = std::fs::read(&p).map_err(io(format!("read {}", p.display())))?;
        serde_json::from_slice(&b).map_err(|e| Error::Corrupt {
            path: p.display().to_string(),
            message: e.to_string(),
        })
    }

    fn ticket_path(&self, id: &str) -> PathBuf {
        self.run.join("attached").join(format!("{id}.json"))
    }

    fn write_record(&self, r: &AttachmentRecord) -> Result<()> {
        let tdir = self.run.join("attached");
        std::fs::create_dir_all(&tdir).map_err(io(format!("create {}", tdir.display())))?;
        let t = Ticket {
            networks_dir: self.dir.clone(),
            record: r.clone(),
        };
        let ttmp = tdir.join(format!("{}.tmp", r.container_id));
        let text = serde_json::to_vec(&t).map_err(|e| Error::Invalid(e.to_string()))?;
        std::fs::write(&ttmp, text).map_err(io(format!("write {}", ttmp.display())))?;
        std::fs::rename(&ttmp, self.ticket_path(&r.container_id))
            .map_err(io(format!("rename {}", ttmp.display())))?;
        let dir = self.container_dir(&r.container_id);
        let tmp = dir.join("record.tmp");
        let text = serde_json::to_vec_pretty(r).map_err(|e| Error::Invalid(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(io(format!("write {}", tmp.display())))?;
        std::fs::rename(&tmp, dir.join("record.json"))
            .map_err(io(format!("rename {}", tmp.display())))
    }

    /// Every attachment record of the store (live or not).
    pub(crate) fn records(&self) -> Result<Vec<AttachmentRecord>> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.dir.join("containers")) else {
            return Ok(out);
        };
        for e in rd.flatten() {
            if let Ok(r) = self.read_record(&e.file_name().to_string_lossy()) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The live attachment of the container named (or with the id) `name`.
    pub fn find(&self, name: &str) -> Result<AttachmentRecord> {
        self.collect_stale()?;
        self.records()?
            .into_iter()
            .find(|r| r.complete && (r.container_name == name || r.container_id == name))
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no running container {name} is attached to a network"
                ))
            })
    }

    /// Tears down attachments whose owner died (their live lock is free): this store's, and any
    /// store's on the host whose attachment outlived its process (host-wide tickets).
    pub fn collect_stale(&self) -> Result<()> {
        if let Ok(rd) = std::fs::read_dir(self.run.join("attached")) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_none_or(|x| x != "json") {
                    continue;
                }
                let Ok(t) = std::fs::read(&p)
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice::<Ticket>(&b).map_err(|e| e.to_string()))
                else {
                    continue;
                };
                let other = Networks {
                    dir: t.networks_dir.clone(),
                    ..self.clone()
                };
                let cdir = other.container_dir(&t.record.container_id);
                let _live = if cdir.is_dir() {
                    match Lock::try_exclusive(&cdir.join("live.lock"))? {
                        Some(l) => Some(l),
                        None => continue, // alive
                    }
                } else {
                    None
                };
                // The store may be gone (a deleted temporary store): no lock to take then.
                let _l = if other.dir.is_dir() {
                    Some(other.lock()?)
                } else {
                    None
                };
                let rec = other
                    .read_record(&t.record.container_id)
                    .unwrap_or(t.record);
                // Best effort: parts may already be gone (the namespace died with its store).
                let _ = other.teardown(&rec);
            }
        }
        let Ok(rd) = std::fs::read_dir(self.dir.join("containers")) else {
            return Ok(());
        };
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let Some(_live) = Lock::try_exclusive(&e.path().join("live.lock"))? else {
                continue;
            };
            let _l = self.lock()?;
            match self.read_record(&id) {
                Ok(r) => {
                    let _ = self.teardown(&r);
                }
                // Died before the record was written: nothing was set up beyond the directory
                // and maybe the namespace.
                Err(_) => {
                    let _ = crate::netns::remove(&self.netns_dir.join(&id));
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(())
    }

    /// Sets up the container's networking as `req` asks, before its first process starts.
    pub fn attach(&self, req: &AttachRequest<'_>) -> Result<Attachment> {
        if !req.container_id.bytes().all(|b| b.is_ascii_alphanumeric())
            || req.container_id.is_empty()
        {
            return Err(Error::Invalid(format!(
                "bad container id {:?}",
                req.container_id
            )));
        }
        self.collect_stale()?;
        let dir = self.container_dir(req.container_id);
        std::fs::create_dir_all(dir.parent().expect("has parent"))
            .map_err(io(format!("create {}", self.dir.display())))?;
        std::fs::create_dir(&dir).map_err(io(format!("create {}", dir.display())))?;
        let live = Lock::exclusive(&dir.join("live.lock"))?;
        match self.attach_inner(req, &dir) {
            Ok(record) => Ok(Attachment {
                nets: self.clone(),
                record,
                done: false,
                _live: live,
            }),
            Err(e) => {
                let _l = self.lock();
                if let Ok(r) = self.read_record(req.container_id) {
                    let _ = self.teardown(&r);
                }
                let _ = crate::netns::remove(&self.netns_dir.join(req.container_id));
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    fn attach_inner(&self, req: &AttachRequest<'_>, dir: &Path) -> Result<AttachmentRecord> {
        let cfg = req.config;
        let mut ports = cfg.ports.clone();
        if cfg.publish_all {
            for key in req.exposed {
                let p = PortSpec::from_exposed(key)?;
                if !ports
                    .iter()
                    .any(|x| x.container_port == p.container_port && x.protocol == p.protocol)
                {
                    ports.push(p);
                }
            }
        }
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let mut rec = AttachmentRecord {
            container_id: req.container_id.to_string(),
            container_name: req.container_name.to_string(),
            hostname: req.hostname.to_string(),
            netns: None,
            owns_netns: false,
            options: NetworkOptions {
                container_id: req.container_id.to_string(),
                container_name: req.container_name.to_string(),
                networks: BTreeMap::new(),
                network_info: BTreeMap::new(),
                port_mappings: None,
                dns_servers: (!cfg.dns.is_empty()).then(|| cfg.dns.clone()),
            },
            status: BTreeMap::new(),
            dns: cfg.dns.clone(),
            extra_hosts: Vec::new(),
            hosts_path: dir.join("hosts"),
            resolv_path: dir.join("resolv.conf"),
            complete: false,
            netavark_config: Some(self.netavark_dir()),
        };
        let mut hosts_base = None;
        match &cfg.mode {
            NetworkMode::Host => {
                if !ports.is_empty() {
                    return Err(Error::Invalid(
                        "-p/-P have no effect with --network host (the container uses the host's ports); drop them".into(),
                    ));
                }
                hosts_base = Some(std::fs::read_to_string("/etc/hosts").unwrap_or_default());
            }
            NetworkMode::None => {
                if !ports.is_empty() {
                    return Err(Error::Invalid(
                        "-p/-P need a network; --network none has none".into(),
                    ));
                }
            }
            NetworkMode::Container(other) => {
                if !ports.is_empty() {
                    return Err(Error::Invalid(format!(
                        "-p/-P cannot be used with --network container:{other}; publish the ports on {other}"
                    )));
                }
                let o = self.find(other)?;
                let ns = o.netns.clone().ok_or_else(|| {
                    Error::Invalid(format!(
                        "container {other} has no network namespace of rbuild's to share"
                    ))
                })?;
                rec.netns = Some(ns);
                rec.hostname = o.hostname.clone();
                rec.status = o.status.clone();
                hosts_base = std::fs::read_to_string(&o.hosts_path).ok();
                std::fs::copy(&o.resolv_path, &rec.resolv_path)
                    .map_err(io(format!("copy {}", o.resolv_path.display())))?;
            }
            NetworkMode::Networks(list) => {
                let netns = self.netns_dir.join(req.container_id);
                crate::netns::create(&netns)?;
                rec.netns = Some(netns.clone());
                rec.owns_netns = true;
                let ipam = Ipam::new(&self.run);
                let list: Vec<(String, Vec<String>)> = if list.is_empty() {
                    vec![(DEFAULT_NETWORK.to_string(), Vec::new())]
                } else {
                    list.clone()
                };
                for (i, (name, aliases)) in list.iter().enumerate() {
                    let def = self.get(name)?;
                    if !aliases.is_empty() && !def.dns_enabled {
                        return Err(Error::Invalid(format!(
                            "--network-alias needs a network with DNS; {name} (the default network) has none: use a network made with `rbuild network create`"
                        )));
                    }
                    let ip = ipam.allocate(&def, req.container_id, &netns)?;
                    rec.options.networks.insert(
                        name.clone(),
                        PerNetworkOptions {
                            aliases: (!aliases.is_empty()).then(|| aliases.clone()),
                            interface_name: format!("eth{i}"),
                            static_ips: Some(vec![ip]),
                            static_mac: None,
                        },
                    );
                    rec.options.network_info.insert(name.clone(), def);
                }
                rec.options.port_mappings = self.port_mappings(&ports)?;
                // Recorded before netavark runs, so a crash in between is cleaned up.
                self.write_record(&rec)?;
                let lock = self.lock()?;
                rec.status = self.netavark("setup", &netns, &rec)?;
                drop(lock);
                let names: Vec<&str> = rec.options.networks.keys().map(String::as_str).collect();
                self.wait_dns(&rec, &names);
            }
        }
        for (name, ip) in &cfg.add_hosts {
            let ip = match ip {
                AddHostIp::Ip(ip) => *ip,
                AddHostIp::HostGateway => first_gateway(&rec).ok_or_else(|| {
                    Error::Invalid(format!(
                        "--add-host {name}:host-gateway needs a bridge network (its gateway is the host)"
                    ))
                })?,
            };
            rec.extra_hosts.push(HostEntry {
                ip,
                names: vec![name.clone()],
            });
        }
        for (other, alias) in &cfg.links {
            let o = self.find(other).map_err(|_| {
                Error::NotFound(format!(
                    "--link {other}:{alias}: no running container {other} with a network"
                ))
            })?;
            let ip = *o.ips().first().ok_or_else(|| {
                Error::Invalid(format!("--link {other}: container {other} has no address"))
            })?;
            let mut names = vec![alias.clone()];
            for n in [&o.hostname, &o.container_name] {
                if !names.contains(n) {
                    names.push(n.clone());
                }
            }
            rec.extra_hosts.push(HostEntry { ip, names });
        }
        let own = rec.ips();
        let own_first: Vec<IpAddr> = own.first().copied().into_iter().collect();
        let hosts = etc::hosts_file(
            hosts_base.as_deref(),
            &rec.extra_hosts,
            &own_first,
            &rec.hostname,
        );
        std::fs::write(&rec.hosts_path, hosts)
            .map_err(io(format!("write {}", rec.hosts_path.display())))?;
        if !matches!(cfg.mode, NetworkMode::Container(_)) {
            let r = etc::resolv_conf(&host_resolv, &rec.dns_servers(), &cfg.dns);
            std::fs::write(&rec.resolv_path, r)
                .map_err(io(format!("write {}", rec.resolv_path.display())))?;
        }
        rec.complete = true;
        self.write_record(&rec)?;
        Ok(rec)
    }

    /// Host ports for `-p`/`-P`: the given ones checked against the host and other containers,
    /// free ones chosen for the others.
    fn port_mappings(&self, specs: &[PortSpec]) -> Result<Option<Vec<PortMapping>>> {
        if specs.is_empty() {
            return Ok(None);
        }
        let mut published: Vec<(u16, String, String)> = Vec::new(); // port, proto, owner
        for r in self.records()? {
            for p in r.ports() {
                published.push((p.host_port, p.protocol, r.container_name.clone()));
            }
        }
        let mut out: Vec<PortMapping> = Vec::new();
        for s in specs {
            let host_port = match s.host_port {
                Some(p) => {
                    if let Some((_, _, who)) = published
                        .iter()
                        .find(|(hp, pr, _)| *hp == p && pr == s.protocol.as_str())
                    {
                        return Err(Error::Conflict(format!(
                            "port {p}/{} is already published by container {who}",
                            s.protocol
                        )));
                    }
                    if !port_is_free(s.host_ip, s.protocol, p) {
                        return Err(Error::Conflict(format!(
                            "-p {p}:{}: host port {p}/{} is in use by a program on the host (address already in use)",
                            s.container_port, s.protocol
                        )));
                    }
                    p
                }
                None => {
                    let taken: Vec<u16> = published
                        .iter()
                        .map(|x| x.0)
                        .chain(out.iter().map(|m| m.host_port))
                        .collect();
                    free_port(s.host_ip, s.protocol, &taken)?
                }
            };
            if out
                .iter()
                .any(|m| m.host_port == host_port && m.protocol == s.protocol.as_str())
            {
                return Err(Error::Conflict(format!(
                    "host port {host_port}/{} is published twice",
                    s.protocol
                )));
            }
            published.push((host_port, s.protocol.as_str().into(), String::new()));
            out.push(PortMapping {
                container_port: s.container_port,
                host_ip: s.host_ip.map(|i| i.to_string()).unwrap_or_default(),
                host_port,
                protocol: s.protocol.as_str().into(),
                range: 1,
            });
        }
        Ok(Some(out))
    }

    /// netavark's `--config` directory for this store's attachments, where it keeps
    /// aardvark-dns' configuration and pid (`aardvark-dns/`): `<run>/netavark/<store key>`, the
    /// key being the first 16 hex digits of the SHA-256 of the store's `networks/` path. So each
    /// store has its own aardvark-dns, where podman has one per host: aardvark-dns 1.4 (Debian 12)
    /// closes and reopens every socket it serves on the SIGHUP netavark sends for each join and
    /// leave (containers/aardvark-dns#389), so with one server for the host, containers coming
    /// and going in one store (a CI job, a test) refused lookups in every other one for a
    /// moment. A server per store, not per network: aardvark-dns answers a container the names of
    /// all its networks, which it can only do for networks it serves itself, and a container
    /// only joins networks of its own store.
    pub(crate) fn netavark_dir(&self) -> PathBuf {
        use sha2::Digest as _;
        let path = self.dir.canonicalize().unwrap_or_else(|_| self.dir.clone());
        let sum = sha2::Sha256::digest(path.as_os_str().as_encoded_bytes());
        self.run.join("netavark").join(&hex::encode(sum)[..16])
    }

    /// Waits (up to [`dnsprobe::PATIENCE`]) until the aardvark-dns of each DNS network in
    /// `networks` answers the container's name, so its first lookup does not fall into the
    /// server's restart; a server that stays silent is left for the container to report.
    fn wait_dns(&self, rec: &AttachmentRecord, networks: &[&str]) {
        for name in networks {
            let dns = rec
                .options
                .network_info
                .get(*name)
                .is_some_and(|n| n.dns_enabled);
            let Some(status) = rec.status.get(*name).filter(|_| dns) else {
                continue;
            };
            let v6 = !status_ips(status).any(|ip| ip.is_ipv4());
            let Some(server) = status.dns_server_ips.iter().flatten().next() else {
                continue;
            };
            let t = std::time::Instant::now();
            let ok = crate::dnsprobe::wait_answering(
                *server,
                &rec.container_name,
                v6,
                crate::dnsprobe::PATIENCE,
            );
            if std::env::var_os("RBUILD_DEBUG").is_some() {
                eprintln!(
                    "aardvark-dns on {server} for {}: answered={ok} after {:?}",
                    rec.container_name,
                    t.elapsed()
                );
            }
        }
    }

    /// Runs `netavark --config DIR COMMAND NETNS` with the record's options on stdin, DIR being
    /// the one the record names; returns the status netavark prints per network. A teardown that
    /// leaves the store's directory without DNS entries removes it.
    fn netavark(
        &self,
        command: &str,
        netns: &Path,
        rec: &AttachmentRecord,
    ) -> Result<BTreeMap<String, StatusBlock>> {
        if !self.netavark.exists() {
            return Err(Error::Netavark {
                command: command.into(),
                message: format!(
                    "{} not found: install podman's network stack (apt-get install netavark aardvark-dns iptables) or set RBUILD_NETAVARK",
                    self.netavark.display()
                ),
            });
        }
        let config = rec
            .netavark_config
            .clone()
            .unwrap_or_else(|| self.run.join("netavark"));
        std::fs::create_dir_all(&self.run).map_err(io(format!("create {}", self.run.display())))?;
        // One netavark at a time on the host (podman holds its network lock the same way): a
        // teardown removes the bridge when it sees no veth left on it, which races with another
        // container's setup or teardown on the same bridge ("failed to get bridge interface").
        let _host_lock = Lock::exclusive(&self.run.join("netavark.lock"))?;
        // Made and removed (once idle) under that lock, so a removal never races a setup.
        std::fs::create_dir_all(&config).map_err(io(format!("create {}", config.display())))?;
        let out = self.run_netavark(&config, command, netns, &rec.options);
        if command == "teardown" && rec.netavark_config.is_some() {
            remove_if_idle(&config);
        }
        out
    }

    /// One `netavark` run (the caller holds the host's netavark lock).
    fn run_netavark(
        &self,
        config: &Path,
        command: &str,
        netns: &Path,
        opts: &NetworkOptions,
    ) -> Result<BTreeMap<String, StatusBlock>> {
        let input = serde_json::to_vec(opts).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut cmd = Command::new(&self.netavark);
        cmd.arg("--config")
            .arg(config)
            .args(["--rootless", "false", "--aardvark-binary"])
            .arg(&self.aardvark)
            .arg(command)
            .arg(netns)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("RBUILD_DEBUG").is_some() {
            cmd.env("RUST_LOG", "debug");
        }
        let started = std::time::Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(io(format!("start {}", self.netavark.display())))?;
        if let Some(mut i) = child.stdin.take() {
            i.write_all(&input)
                .map_err(io(format!("write to {}", self.netavark.display())))?;
        }
        let out = child
            .wait_with_output()
            .map_err(io(format!("wait for {}", self.netavark.display())))?;
        if std::env::var_os("RBUILD_DEBUG").is_some() {
            eprintln!(
                "netavark {command} {} ({:?}) <<< {}\n{}",
                netns.display(),
                started.elapsed(),
                String::from_utf8_lossy(&input),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if !out.status.success() {
            // netavark prints {"error": "..."} on stdout.
            let stdout = String::from_utf8_lossy(&out.stdout);
            let message = serde_json::from_str::<serde_json::Value>(&stdout)
                .ok()
                .and_then(|v| v["error"].as_str().map(String::from))
                .unwrap_or_else(|| {
                    format!(
                        "{} {}",
                        stdout.trim(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                });
            return Err(Error::Netavark {
                command: command.into(),
                message,
            });
        }
        if command != "setup" {
            return Ok(BTreeMap::new());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| Error::Netavark {
            command: command.into(),
            message: format!(
                "unexpected output {:?}: {e}",
                String::from_utf8_lossy(&out.stdout)
            ),
        })
    }

    /// Undoes an attachment (caller holds the store's network lock).
    pub(crate) fn teardown(&self, rec: &AttachmentRecord) -> Result<()> {
        let mut first_err = None;
        if let (Some(ns), true) = (&rec.netns, rec.owns_netns) {
            if !rec.options.networks.is_empty() {
                if let Err(e) = self.netavark("teardown", ns, rec) {
                    first_err.get_or_insert(e);
                }
            }
            let ipam = Ipam::new(&self.run);
            for def in rec.options.network_info.values() {
                if let Err(e) = ipam.release(def, &rec.container_id) {
                    first_err.get_or_insert(e);
                }
            }
            if let Err(e) = crate::netns::remove(ns) {
                first_err.get_or_insert(e);
            }
        }
        let _ = std::fs::remove_file(self.ticket_path(&rec.container_id));
        let dir = self.container_dir(&rec.container_id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                first_err.get_or_insert(io(format!("remove {}", dir.display()))(e));
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// `network connect [--alias A] NET CONTAINER` on a running container.
    pub fn connect(&self, network: &str, container: &str, aliases: &[String]) -> Result<()> {
        let def = self.get(network)?;
        if !aliases.is_empty() && !def.dns_enabled {
            return Err(Error::Invalid(format!(
                "--alias needs a network with DNS; {network} has none"
            )));
        }
        let mut rec = self.find(container)?;
        let _l = self.lock()?;
        let (Some(ns), true) = (rec.netns.clone(), rec.owns_netns) else {
            return Err(Error::Invalid(format!(
                "container {container} does not use bridge networking (host, none or another container's namespace)"
            )));
        };
        if rec.options.networks.contains_key(network) {
            return Err(Error::Conflict(format!(
                "container {container} is already connected to network {network}"
            )));
        }
        let used: Vec<&str> = rec
            .options
            .networks
            .values()
            .map(|p| p.interface_name.as_str())
            .collect();
        let iface = (0..)
            .map(|i| format!("eth{i}"))
            .find(|n| !used.contains(&n.as_str()))
            .expect("an unused name");
        let ip = Ipam::new(&self.run).allocate(&def, &rec.container_id, &ns)?;
        let one = PerNetworkOptions {
            aliases: (!aliases.is_empty()).then(|| aliases.to_vec()),
            interface_name: iface,
            static_ips: Some(vec![ip]),
            static_mac: None,
        };
        let mut only = rec.clone();
        only.options.networks = BTreeMap::from([(network.to_string(), one.clone())]);
        only.options.network_info = BTreeMap::from([(network.to_string(), def.clone())]);
        let status = match self.netavark("setup", &ns, &only) {
            Ok(s) => s,
            Err(e) => {
                let _ = Ipam::new(&self.run).release(&def, &rec.container_id);
                return Err(e);
            }
        };
        rec.options.networks.insert(network.to_string(), one);
        rec.options.network_info.insert(network.to_string(), def);
        rec.status.extend(status);
        self.write_record(&rec)?;
        self.wait_dns(&rec, &[network]);
        self.rewrite_resolv(&rec)
    }

    /// `network disconnect NET CONTAINER`.
    pub fn disconnect(&self, network: &str, container: &str) -> Result<()> {
        let mut rec = self.find(container)?;
        let _l = self.lock()?;
        let (Some(ns), Some(one), Some(def)) = (
            rec.netns.clone(),
            rec.options.networks.get(network).cloned(),
            rec.options.network_info.get(network).cloned(),
        ) else {
            return Err(Error::NotFound(format!(
                "container {container} is not connected to network {network}"
            )));
        };
        let mut only = rec.clone();
        only.options.networks = BTreeMap::from([(network.to_string(), one)]);
        only.options.network_info = BTreeMap::from([(network.to_string(), def.clone())]);
        self.netavark("teardown", &ns, &only)?;
        Ipam::new(&self.run).release(&def, &rec.container_id)?;
        rec.options.networks.remove(network);
        rec.options.network_info.remove(network);
        rec.status.remove(network);
        self.write_record(&rec)?;
        self.rewrite_resolv(&rec)
    }

    /// Rewrites the container's resolv.conf in place (same inode: it is bind-mounted) after its
    /// networks changed, so names of a newly connected network resolve.
    fn rewrite_resolv(&self, rec: &AttachmentRecord) -> Result<()> {
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let text = etc::resolv_conf(&host, &rec.dns_servers(), &rec.dns);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&rec.resolv_path)
            .map_err(io(format!("open {}", rec.resolv_path.display())))?;
        f.write_all(text.as_bytes())
            .map_err(io(format!("write {}", rec.resolv_path.display())))
    }
}

/// Removes a store's netavark directory once no network of it has DNS entries left (its
/// aardvark-dns exits by itself then), so `/run` keeps nothing of stores whose containers ended.
fn remove_if_idle(config: &Path) {
    let busy = std::fs::read_dir(config.join("aardvark-dns"))
        .map(|rd| rd.flatten().any(|e| e.file_name() != "aardvark.pid"))
        .unwrap_or(false);
    if !busy {
        let _ = std::fs::remove_dir_all(config);
    }
}

/// The container's addresses on one network, as netavark reported them.
fn status_ips(s: &StatusBlock) -> impl Iterator<Item = IpAddr> + '_ {
    s.interfaces
        .iter()
        .flat_map(|i| i.values())
        .filter_map(|i| i.subnets.as_ref())
        .flatten()
        .map(|a| a.ipnet.addr())
}

fn first_gateway(rec: &AttachmentRecord) -> Option<IpAddr> {
    rec.options
        .network_info
        .values()
        .filter_map(|n| n.subnet_v4())
        .find_map(|s| s.gateway)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_flag() {
        let none: [String; 0] = [];
        assert_eq!(
            NetworkMode::parse(None, &none).unwrap(),
            NetworkMode::Networks(vec![("bridge".into(), vec![])])
        );
        assert_eq!(
            NetworkMode::parse(Some("none"), &none).unwrap(),
            NetworkMode::None
        );
        assert_eq!(
            NetworkMode::parse(Some("host"), &none).unwrap(),
            NetworkMode::Host
        );
        assert_eq!(
            NetworkMode::parse(Some("container:db"), &none).unwrap(),
            NetworkMode::Container("db".into())
        );
        let a = ["web".to_string()];
        assert_eq!(
            NetworkMode::parse(Some("app"), &a).unwrap(),
            NetworkMode::Networks(vec![("app".into(), vec!["web".into()])])
        );
        assert!(NetworkMode::parse(Some("host"), &a).is_err());
        assert!(NetworkMode::parse(Some("bad name"), &none).is_err());
        let plain = NetworkConfig {
            mode: NetworkMode::Host,
            ..Default::default()
        };
        assert!(plain.is_plain_host());
        assert!(!NetworkConfig::default().is_plain_host());
    }

    #[test]
    fn record_ports_and_ips() {
        let rec: AttachmentRecord = serde_json::from_str(
            r#"{"container_id":"c","container_name":"web","hostname":"h","netns":"/x","owns_netns":true,
            "options":{"container_id":"c","container_name":"web","networks":{},"network_info":{},
              "port_mappings":[{"container_port":80,"host_ip":"","host_port":8080,"protocol":"tcp","range":1}],
              "dns_servers":null},
            "status":{"app":{"dns_search_domains":[],"dns_server_ips":["10.89.3.1"],
              "interfaces":{"eth0":{"mac_address":"aa","subnets":[{"ipnet":"10.89.3.2/24","gateway":"10.89.3.1"}]}}}},
            "dns":[],"extra_hosts":[],"hosts_path":"/h","resolv_path":"/r"}"#,
        )
        .unwrap();
        assert!(!rec.complete);
        assert_eq!(rec.ips(), vec!["10.89.3.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            rec.ports(),
            vec![PublishedPort {
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: "0.0.0.0".into(),
                host_port: 8080
            }]
        );
        // DNS servers only from DNS-enabled networks (app is unknown here: none).
        assert!(rec.dns_servers().is_empty());
    }
}

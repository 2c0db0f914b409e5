//! Network definitions in the store: create, list, inspect, remove, prune.

use crate::error::{io, Error, Result};
use crate::ipam::{self, Ipam, Lock};
use crate::types::{Network, Subnet};
use ipnet::{IpNet, Ipv4Net};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// The name of the default network.
pub const DEFAULT_NETWORK: &str = "bridge";
const DEFAULT_INTERFACE: &str = "rbuild0";
/// Podman's own default network is 10.88.0.0/16 and its user networks start at 10.89.0.0/24;
/// rbuild's default network takes 10.89.0.0/24 unless something on the host (a route, a podman
/// definition, a network of another store) already uses it, then the next free /24.
const POOL_BASE: [u8; 2] = [10, 89];

/// `network create` options.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// `--subnet` (default: a free 10.89.N.0/24).
    pub subnet: Option<IpNet>,
    /// `--gateway` (default: the subnet's first address).
    pub gateway: Option<IpAddr>,
    /// `--internal`: no route out.
    pub internal: bool,
    /// `--label K=V`.
    pub labels: BTreeMap<String, String>,
}

/// The networks of one store, and the tools that drive them.
#[derive(Clone, Debug)]
pub struct Networks {
    pub(crate) dir: PathBuf,
    pub(crate) netns_dir: PathBuf,
    pub(crate) run: PathBuf,
    pub(crate) netavark: PathBuf,
    pub(crate) aardvark: PathBuf,
}

fn first_existing(env: &str, candidates: &[&str]) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(candidates[0]))
}

/// `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 64 characters.
pub(crate) fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    n.len() <= 64
        && c.next().is_some_and(|f| f.is_ascii_alphanumeric())
        && c.all(|x| x.is_ascii_alphanumeric() || "_.-".contains(x))
}

impl Networks {
    /// The networks of the store at `store_root` (`networks/`, `netns/` inside it). netavark and
    /// aardvark-dns are found at `$RBUILD_NETAVARK`/`$RBUILD_AARDVARK_DNS` or where Debian and
    /// Fedora install them; the host-wide state (leases, aardvark-dns' configuration) is in
    /// `$RBUILD_NET_RUN` or `/run/rbuild/net`.
    pub fn open(store_root: &Path) -> Networks {
        Networks {
            dir: store_root.join("networks"),
            netns_dir: store_root.join("netns"),
            run: std::env::var_os("RBUILD_NET_RUN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/run/rbuild/net")),
            netavark: first_existing(
                "RBUILD_NETAVARK",
                &["/usr/lib/podman/netavark", "/usr/libexec/podman/netavark"],
            ),
            aardvark: first_existing(
                "RBUILD_AARDVARK_DNS",
                &[
                    "/usr/lib/podman/aardvark-dns",
                    "/usr/libexec/podman/aardvark-dns",
                ],
            ),
        }
    }

    fn def_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    pub(crate) fn lock(&self) -> Result<Lock> {
        Lock::exclusive(&self.dir.join(".lock"))
    }

    fn read_def(path: &Path) -> Result<Network> {
        let b = std::fs::read(path).map_err(io(format!("read {}", path.display())))?;
        serde_json::from_slice(&b).map_err(|e| Error::Corrupt {
            path: path.display().to_string(),
            message: format!("not a network definition: {e}"),
        })
    }

    fn write_def(&self, n: &Network) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(io(format!("create {}", self.dir.display())))?;
        let path = self.def_path(&n.name);
        let tmp = self.dir.join(format!(".{}.tmp", n.name));
        let text = serde_json::to_vec_pretty(n).map_err(|e| Error::Invalid(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(io(format!("write {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io(format!("rename to {}", path.display())))
    }

    /// Every network definition, the default one included (made if missing), sorted by name.
    pub fn list(&self) -> Result<Vec<Network>> {
        self.get(DEFAULT_NETWORK)?;
        let mut out = Vec::new();
        let rd =
            std::fs::read_dir(&self.dir).map_err(io(format!("read {}", self.dir.display())))?;
        for e in rd.flatten() {
            let p = e.path();
            let is_def = p.extension().is_some_and(|x| x == "json")
                && !e.file_name().to_string_lossy().starts_with('.');
            if is_def && p.is_file() {
                out.push(Self::read_def(&p)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The definition of `name` (the default network is made on first use).
    pub fn get(&self, name: &str) -> Result<Network> {
        if !valid_name(name) {
            return Err(Error::NotFound(format!("network {name} not found")));
        }
        let path = self.def_path(name);
        if path.is_file() {
            return Self::read_def(&path);
        }
        if name == DEFAULT_NETWORK {
            let _l = self.lock()?;
            if path.is_file() {
                return Self::read_def(&path);
            }
            let n = self.new_definition(DEFAULT_NETWORK, &CreateOptions::default(), true)?;
            self.write_def(&n)?;
            return Ok(n);
        }
        Err(Error::NotFound(format!(
            "network {name} not found; create it with `rbuild network create {name}`"
        )))
    }

    /// `network create`.
    pub fn create(&self, name: &str, opts: &CreateOptions) -> Result<Network> {
        if !valid_name(name) {
            return Err(Error::Invalid(format!(
                "invalid network name {name:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 64 characters"
            )));
        }
        if matches!(name, "host" | "none" | DEFAULT_NETWORK) {
            return Err(Error::Conflict(format!(
                "network name {name} is reserved for a predefined network"
            )));
        }
        let _l = self.lock()?;
        if self.def_path(name).exists() {
            return Err(Error::Conflict(format!(
                "network with name {name} already exists"
            )));
        }
        let n = self.new_definition(name, opts, false)?;
        self.write_def(&n)?;
        Ok(n)
    }

    fn new_definition(&self, name: &str, opts: &CreateOptions, default: bool) -> Result<Network> {
        let mut taken = self.taken();
        let iface = if default {
            taken.retain(|t| t.iface.as_deref() != Some(DEFAULT_INTERFACE));
            DEFAULT_INTERFACE.to_string()
        } else {
            (1..10_000)
                .map(|i| format!("rbuild{i}"))
                .find(|i| {
                    !taken.iter().any(|t| t.iface.as_deref() == Some(i.as_str()))
                        && !Path::new("/sys/class/net").join(i).exists()
                })
                .ok_or_else(|| Error::Conflict("no free bridge interface name".into()))?
        };
        let subnet = match opts.subnet {
            Some(s) => {
                let s = s.trunc();
                if let Some(t) = taken
                    .iter()
                    .find(|t| t.net.contains(&s.network()) || s.contains(&t.net.network()))
                {
                    return Err(Error::Conflict(format!(
                        "--subnet {s} overlaps {} ({}); choose another subnet",
                        t.net, t.what
                    )));
                }
                s
            }
            None => (0..=255u8)
                .map(|i| {
                    IpNet::V4(
                        Ipv4Net::new(Ipv4Addr::new(POOL_BASE[0], POOL_BASE[1], i, 0), 24)
                            .expect("valid prefix"),
                    )
                })
                .find(|c| {
                    !taken
                        .iter()
                        .any(|t| t.net.contains(&c.network()) || c.contains(&t.net.network()))
                })
                .ok_or_else(|| {
                    Error::Conflict(
                        "no free subnet left in 10.89.0.0/16; give one with --subnet".into(),
                    )
                })?,
        };
        let IpNet::V4(v4) = subnet else {
            return Err(Error::Invalid(format!(
                "--subnet {subnet}: only IPv4 subnets are supported"
            )));
        };
        if v4.prefix_len() > 30 {
            return Err(Error::Invalid(format!(
                "--subnet {subnet}: too small; use a prefix of /30 or shorter"
            )));
        }
        let gateway = match opts.gateway {
            Some(g) if !subnet.contains(&g) => {
                return Err(Error::Invalid(format!(
                    "--gateway {g} is not in the subnet {subnet}"
                )))
            }
            Some(g) => g,
            None => IpAddr::V4(ipam::default_gateway(&v4).expect("prefix <= 30 has hosts")),
        };
        let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let mut h = Sha256::new();
        h.update(name.as_bytes());
        h.update(created.as_bytes());
        h.update(std::process::id().to_le_bytes());
        h.update(self.dir.as_os_str().as_encoded_bytes());
        Ok(Network {
            name: name.to_string(),
            id: hex::encode(h.finalize()),
            driver: "bridge".into(),
            network_interface: Some(iface),
            created,
            subnets: vec![Subnet {
                subnet,
                gateway: Some(gateway),
            }],
            ipv6_enabled: false,
            internal: opts.internal,
            dns_enabled: !default,
            labels: opts.labels.clone(),
            options: None,
            ipam_options: Some(BTreeMap::from([("driver".into(), "host-local".into())])),
        })
    }

    /// Subnets and bridge names already used: host routes, this store's networks, live leases of
    /// any store, podman's definitions.
    fn taken(&self) -> Vec<Taken> {
        let mut out = host_routes();
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if let Ok(n) = Self::read_def(&e.path()) {
                    for s in &n.subnets {
                        out.push(Taken {
                            net: s.subnet,
                            iface: n.network_interface.clone(),
                            what: format!("network {}", n.name),
                        });
                    }
                }
            }
        }
        for (iface, net) in Ipam::new(&self.run).in_use() {
            out.push(Taken {
                net,
                what: format!("the network on bridge {iface}"),
                iface: Some(iface),
            });
        }
        for dir in ["/etc/containers/networks", "/run/containers/networks"] {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    if let Ok(n) = Self::read_def(&e.path()) {
                        for s in &n.subnets {
                            out.push(Taken {
                                net: s.subnet,
                                iface: None,
                                what: format!("podman network {}", n.name),
                            });
                        }
                    }
                }
            }
        }
        // podman's default network.
        out.push(Taken {
            net: "10.88.0.0/16".parse().expect("valid"),
            iface: None,
            what: "podman's default network".into(),
        });
        out
    }

    /// `network rm`: refused for the default network and for networks containers use.
    pub fn remove(&self, name: &str) -> Result<()> {
        if name == DEFAULT_NETWORK || name == "host" || name == "none" {
            return Err(Error::Conflict(format!(
                "{name} is a pre-defined network and cannot be removed"
            )));
        }
        self.get(name)?;
        self.collect_stale()?;
        let _l = self.lock()?;
        let users: Vec<String> = self
            .records()?
            .into_iter()
            .filter(|r| r.options.networks.contains_key(name))
            .map(|r| r.container_name)
            .collect();
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "network {name} is in use by container(s) {}; stop them or `rbuild network disconnect {name} CONTAINER` first",
                users.join(", ")
            )));
        }
        let p = self.def_path(name);
        std::fs::remove_file(&p).map_err(io(format!("remove {}", p.display())))
    }

    /// `network prune`: removes every user network no container uses; returns their names.
    pub fn prune(&self) -> Result<Vec<String>> {
        self.collect_stale()?;
        let mut removed = Vec::new();
        for n in self.list()? {
            if n.name == DEFAULT_NETWORK {
                continue;
            }
            match self.remove(&n.name) {
                Ok(()) => removed.push(n.name),
                Err(Error::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }
}

struct Taken {
    net: IpNet,
    iface: Option<String>,
    what: String,
}

/// IPv4 routes of the host (`/proc/net/route`), default routes excluded.
fn host_routes() -> Vec<Taken> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let (Ok(dest), Ok(mask)) = (u32::from_str_radix(f[1], 16), u32::from_str_radix(f[7], 16))
        else {
            continue;
        };
        // The file holds addresses in host byte order of a little-endian read of network order.
        let dest = Ipv4Addr::from(u32::from_be(dest.to_le()));
        let prefix = u32::from_be(mask.to_le()).count_ones() as u8;
        if prefix == 0 {
            continue;
        }
        if let Ok(n) = Ipv4Net::new(dest, prefix) {
            out.push(Taken {
                net: IpNet::V4(n),
                iface: Some(f[0].to_string()),
                what: format!("a route of the host via {}", f[0]),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(dir: &Path) -> Networks {
        let mut n = Networks::open(dir);
        n.run = dir.join("run");
        n
    }

    #[test]
    fn create_inspect_remove() {
        let d = tempfile::tempdir().unwrap();
        let n = nets(d.path());
        let def = n.get(DEFAULT_NETWORK).unwrap();
        assert_eq!(def.network_interface.as_deref(), Some("rbuild0"));
        assert!(!def.dns_enabled);
        let opts = CreateOptions {
            subnet: Some("10.89.211.0/24".parse().unwrap()),
            labels: BTreeMap::from([("a".into(), "b".into())]),
            internal: true,
            ..Default::default()
        };
        let app = n.create("unit-app", &opts).unwrap();
        assert!(app.dns_enabled && app.internal);
        assert_eq!(
            app.subnet_v4().unwrap().gateway,
            Some("10.89.211.1".parse().unwrap())
        );
        assert_ne!(app.network_interface, def.network_interface);
        // Same subnet again: refused, naming the other network.
        let e = n.create("unit-b", &opts).unwrap_err().to_string();
        assert!(e.contains("overlaps") && e.contains("unit-app"), "{e}");
        assert!(n.create("unit-app", &CreateOptions::default()).is_err());
        assert!(n.create("bad name", &CreateOptions::default()).is_err());
        assert!(n.create("host", &CreateOptions::default()).is_err());
        let g = CreateOptions {
            subnet: Some("10.89.212.0/24".parse().unwrap()),
            gateway: Some("10.89.213.1".parse().unwrap()),
            ..Default::default()
        };
        assert!(n
            .create("unit-c", &g)
            .unwrap_err()
            .to_string()
            .contains("not in the subnet"));
        // An automatic subnet avoids the ones taken.
        let auto = n.create("unit-auto", &CreateOptions::default()).unwrap();
        let s = auto.subnet_v4().unwrap().subnet;
        assert_ne!(s, def.subnet_v4().unwrap().subnet);
        assert_ne!(s, app.subnet_v4().unwrap().subnet);
        let names: Vec<String> = n.list().unwrap().into_iter().map(|x| x.name).collect();
        assert_eq!(names, ["bridge", "unit-app", "unit-auto"]);
        // Stored in podman's format.
        let text = std::fs::read_to_string(d.path().join("networks/unit-app.json")).unwrap();
        assert!(
            text.contains("\"ipam_options\"") && text.contains("\"host-local\""),
            "{text}"
        );
        n.remove("unit-app").unwrap();
        assert!(matches!(n.get("unit-app"), Err(Error::NotFound(_))));
        assert!(n.remove(DEFAULT_NETWORK).is_err());
        assert_eq!(n.prune().unwrap(), ["unit-auto"]);
        assert_eq!(n.list().unwrap().len(), 1);
    }

    #[test]
    fn routes_parse() {
        // Whatever the host has, loopback-free parsing yields valid prefixes.
        for t in host_routes() {
            assert!(t.net.prefix_len() > 0);
        }
    }
}

//! Address management. netavark 1.4's `host-local` IPAM takes the container's addresses from the
//! caller (`static_ips`; podman keeps them in its `ipam.db`), so rbuild keeps leases itself, per
//! bridge, in a host-wide directory: bridges, subnets and their addresses are host resources that
//! several stores (and podman) share, so two stores using the same bridge must not hand out the
//! same address. A lease whose network namespace is gone is stale and reused.

use crate::error::{io, Error, Result};
use crate::types::Network;
use ipnet::{IpNet, Ipv4Net};
use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// An exclusive flock on a file, released on drop.
pub(crate) struct Lock(#[allow(dead_code)] File);

impl Lock {
    /// Waits for the exclusive lock on `path` (created if missing).
    pub(crate) fn exclusive(path: &Path) -> Result<Lock> {
        let f = open_lock(path)?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io(format!("lock {}", path.display()))(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Lock(f))
    }

    /// The exclusive lock on `path` if nobody holds it.
    pub(crate) fn try_exclusive(path: &Path) -> Result<Option<Lock>> {
        let f = open_lock(path)?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Ok(None);
            }
            return Err(io(format!("lock {}", path.display()))(e));
        }
        Ok(Some(Lock(f)))
    }
}

fn open_lock(path: &Path) -> Result<File> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io(format!("create {}", d.display())))?;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io(format!("open {}", path.display())))
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Leases {
    subnet: Option<IpNet>,
    /// address -> lease
    leases: BTreeMap<IpAddr, Lease>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Lease {
    container: String,
    netns: PathBuf,
}

/// The host-wide IPAM directory (`<run>/ipam`).
pub(crate) struct Ipam {
    dir: PathBuf,
}

impl Ipam {
    pub(crate) fn new(run: &Path) -> Ipam {
        Ipam {
            dir: run.join("ipam"),
        }
    }

    fn file(&self, net: &Network) -> Result<PathBuf> {
        let iface = net.network_interface.as_deref().ok_or_else(|| {
            Error::Invalid(format!("network {} has no bridge interface", net.name))
        })?;
        Ok(self.dir.join(format!("{iface}.json")))
    }

    fn load(path: &Path) -> Result<Leases> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Corrupt {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Leases::default()),
            Err(e) => Err(io(format!("read {}", path.display()))(e)),
        }
    }

    fn save(path: &Path, l: &Leases) -> Result<()> {
        if l.leases.is_empty() {
            return match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(io(format!("remove {}", path.display()))(e))
                }
                _ => Ok(()),
            };
        }
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_vec_pretty(l).map_err(|e| Error::Invalid(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(io(format!("write {}", tmp.display())))?;
        std::fs::rename(&tmp, path).map_err(io(format!("rename to {}", path.display())))
    }

    /// Leases the first free address of the network's IPv4 subnet (after the gateway) to
    /// `container`, whose namespace is pinned at `netns`.
    pub(crate) fn allocate(&self, net: &Network, container: &str, netns: &Path) -> Result<IpAddr> {
        let sub = net
            .subnet_v4()
            .ok_or_else(|| Error::Invalid(format!("network {} has no IPv4 subnet", net.name)))?;
        let IpNet::V4(v4) = sub.subnet else {
            unreachable!("subnet_v4 returns IPv4 subnets")
        };
        let _lock = Lock::exclusive(&self.dir.join(".lock"))?;
        let path = self.file(net)?;
        let mut l = Self::load(&path)?;
        if l.subnet.is_some_and(|s| s != sub.subnet) {
            // Another store's network of the same bridge name with another subnet: its leases
            // belong to a bridge that is being replaced; keep only live ones of ours.
            l.leases.clear();
        }
        l.subnet = Some(sub.subnet);
        l.leases
            .retain(|_, lease| crate::netns::is_pinned(&lease.netns));
        if let Some((ip, _)) = l.leases.iter().find(|(_, x)| x.container == container) {
            return Ok(*ip);
        }
        let ip =
            first_free(&v4, sub.gateway, |ip| l.leases.contains_key(&ip)).ok_or_else(|| {
                Error::Conflict(format!(
                    "network {}: no free address left in {}",
                    net.name, sub.subnet
                ))
            })?;
        l.leases.insert(
            ip,
            Lease {
                container: container.to_string(),
                netns: netns.to_path_buf(),
            },
        );
        Self::save(&path, &l)?;
        Ok(ip)
    }

    /// Gives `container`'s address on `net` back.
    pub(crate) fn release(&self, net: &Network, container: &str) -> Result<()> {
        let _lock = Lock::exclusive(&self.dir.join(".lock"))?;
        let path = self.file(net)?;
        let mut l = Self::load(&path)?;
        l.leases.retain(|_, x| x.container != container);
        l.leases
            .retain(|_, lease| crate::netns::is_pinned(&lease.netns));
        Self::save(&path, &l)
    }

    /// Bridges and subnets with live leases (taken, whichever store they belong to).
    pub(crate) fn in_use(&self) -> Vec<(String, IpNet)> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                if let (Ok(l), Some(stem)) = (Self::load(&p), p.file_stem()) {
                    if let Some(s) = l.subnet {
                        if l.leases.values().any(|x| crate::netns::is_pinned(&x.netns)) {
                            out.push((stem.to_string_lossy().into_owned(), s));
                        }
                    }
                }
            }
        }
        out
    }
}

/// The first host address of `net` that is not the gateway, not the broadcast and not taken.
fn first_free(
    net: &Ipv4Net,
    gateway: Option<IpAddr>,
    taken: impl Fn(IpAddr) -> bool,
) -> Option<IpAddr> {
    net.hosts()
        .map(IpAddr::V4)
        .filter(|ip| Some(*ip) != gateway)
        .find(|ip| !taken(*ip))
}

/// The gateway of a subnet: its first host address.
pub(crate) fn default_gateway(net: &Ipv4Net) -> Option<Ipv4Addr> {
    net.hosts().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_free_skips_gateway_and_taken() {
        let n: Ipv4Net = "10.89.5.0/24".parse().unwrap();
        let gw = Some("10.89.5.1".parse().unwrap());
        assert_eq!(
            first_free(&n, gw, |_| false),
            Some("10.89.5.2".parse().unwrap())
        );
        let taken: IpAddr = "10.89.5.2".parse().unwrap();
        assert_eq!(
            first_free(&n, gw, |ip| ip == taken),
            Some("10.89.5.3".parse().unwrap())
        );
        let tiny: Ipv4Net = "10.89.5.0/30".parse().unwrap();
        assert_eq!(first_free(&tiny, gw, |_| true), None);
        assert_eq!(default_gateway(&n), Some("10.89.5.1".parse().unwrap()));
    }
}

//! `-p`/`-P` port specs.

use crate::error::{Error, Result};
use std::fmt;
use std::net::IpAddr;

/// A transport protocol of a published port.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `-p` (or one EXPOSEd port of `-P`): `[[IP:]HOST:]CTR[/tcp|udp]`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortSpec {
    /// The host address to listen on (None: all).
    pub host_ip: Option<IpAddr>,
    /// The host port (None: a free one is chosen).
    pub host_port: Option<u16>,
    /// The container's port.
    pub container_port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

fn port(s: &str, spec: &str) -> Result<u16> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(Error::Invalid(format!(
            "-p {spec}: {s:?} is not a port number (1-65535); use [[IP:]HOST_PORT:]CONTAINER_PORT[/tcp|udp]"
        ))),
    }
}

impl PortSpec {
    /// Parses Docker's `-p` syntax: `CTR`, `HOST:CTR`, `IP:HOST:CTR`, `IP::CTR`, each with an
    /// optional `/tcp` or `/udp`; IPv6 host addresses in brackets (`[::1]:8080:80`).
    pub fn parse(spec: &str) -> Result<PortSpec> {
        let (rest, protocol) = match spec.rsplit_once('/') {
            Some((r, "tcp")) => (r, Protocol::Tcp),
            Some((r, "udp")) => (r, Protocol::Udp),
            Some((_, p)) => {
                return Err(Error::Invalid(format!(
                    "-p {spec}: unsupported protocol {p:?}; use tcp or udp"
                )))
            }
            None => (spec, Protocol::Tcp),
        };
        let (ip, rest) = if let Some(r) = rest.strip_prefix('[') {
            let (ip, r) = r.split_once("]:").ok_or_else(|| {
                Error::Invalid(format!(
                    "-p {spec}: expected [IPv6]:HOST_PORT:CONTAINER_PORT"
                ))
            })?;
            (Some(ip), r)
        } else {
            let parts: Vec<&str> = rest.split(':').collect();
            match parts.len() {
                1 | 2 => (None, rest),
                3 => (Some(parts[0]), &rest[parts[0].len() + 1..]),
                _ => {
                    return Err(Error::Invalid(format!(
                        "-p {spec}: too many colons; use [[IP:]HOST_PORT:]CONTAINER_PORT[/tcp|udp]"
                    )))
                }
            }
        };
        let host_ip =
            match ip {
                None | Some("") => None,
                Some(s) => Some(s.parse::<IpAddr>().map_err(|_| {
                    Error::Invalid(format!("-p {spec}: {s:?} is not an IP address"))
                })?),
            };
        let (host_port, container_port) = match rest.split_once(':') {
            None => (None, port(rest, spec)?),
            Some(("", c)) => (None, port(c, spec)?),
            Some((h, c)) => (Some(port(h, spec)?), port(c, spec)?),
        };
        Ok(PortSpec {
            host_ip,
            host_port,
            container_port,
            protocol,
        })
    }

    /// The image's `ExposedPorts` key (`80/tcp`, `53/udp`, `8080`) as a spec publishing it on a
    /// free host port (`-P`).
    pub fn from_exposed(key: &str) -> Result<PortSpec> {
        let (p, proto) = key.split_once('/').unwrap_or((key, "tcp"));
        let protocol = match proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => {
                return Err(Error::Invalid(format!(
                "-P: the image exposes {key}, whose protocol {other:?} is not supported (tcp, udp)"
            )))
            }
        };
        Ok(PortSpec {
            host_ip: None,
            host_port: None,
            container_port: port(p, key)?,
            protocol,
        })
    }
}

/// A free port on `ip` (all addresses when None) chosen by the kernel, skipping `taken`.
pub(crate) fn free_port(ip: Option<IpAddr>, proto: Protocol, taken: &[u16]) -> Result<u16> {
    let addr = ip.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    for _ in 0..64 {
        let p = match proto {
            Protocol::Tcp => std::net::TcpListener::bind((addr, 0)).and_then(|l| l.local_addr()),
            Protocol::Udp => std::net::UdpSocket::bind((addr, 0)).and_then(|l| l.local_addr()),
        }
        .map_err(|e| Error::Io {
            what: format!("find a free {proto} port on {addr}"),
            source: e,
        })?
        .port();
        if !taken.contains(&p) {
            return Ok(p);
        }
    }
    Err(Error::Invalid(format!(
        "no free {proto} port found on {addr}"
    )))
}

/// Whether `port` can be bound on `ip` now (nothing on the host listens there).
pub(crate) fn port_is_free(ip: Option<IpAddr>, proto: Protocol, port: u16) -> bool {
    let addr = ip.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    match proto {
        Protocol::Tcp => std::net::TcpListener::bind((addr, port)).is_ok(),
        Protocol::Udp => std::net::UdpSocket::bind((addr, port)).is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PortSpec {
        PortSpec::parse(s).unwrap()
    }

    #[test]
    fn docker_forms() {
        assert_eq!(
            p("8080:80"),
            PortSpec {
                host_ip: None,
                host_port: Some(8080),
                container_port: 80,
                protocol: Protocol::Tcp
            }
        );
        assert_eq!(p("80").host_port, None);
        assert_eq!(p("53:53/udp").protocol, Protocol::Udp);
        let s = p("127.0.0.1:18200:80/tcp");
        assert_eq!(s.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!((s.host_port, s.container_port), (Some(18200), 80));
        let s = p("127.0.0.1::80");
        assert_eq!((s.host_port, s.container_port), (None, 80));
        let s = p("[::1]:8080:80");
        assert_eq!(s.host_ip, Some("::1".parse().unwrap()));
        for bad in [
            "",
            "0",
            "x:80",
            "80/sctp",
            "1:2:3:4",
            "300.1.1.1:80:80",
            "70000:80",
            "[::1:80",
        ] {
            assert!(PortSpec::parse(bad).is_err(), "{bad}");
        }
        let e = PortSpec::parse("80/sctp").unwrap_err().to_string();
        assert!(e.contains("tcp or udp"), "{e}");
    }

    #[test]
    fn exposed_keys() {
        assert_eq!(PortSpec::from_exposed("80/tcp").unwrap().container_port, 80);
        assert_eq!(
            PortSpec::from_exposed("53/udp").unwrap().protocol,
            Protocol::Udp
        );
        assert_eq!(
            PortSpec::from_exposed("8080").unwrap().protocol,
            Protocol::Tcp
        );
        assert!(PortSpec::from_exposed("80/sctp").is_err());
    }

    #[test]
    fn free_ports() {
        let a = free_port(None, Protocol::Tcp, &[]).unwrap();
        let b = free_port(None, Protocol::Tcp, &[a]).unwrap();
        assert_ne!(a, b);
        let l = std::net::TcpListener::bind(("0.0.0.0", 0)).unwrap();
        assert!(!port_is_free(
            None,
            Protocol::Tcp,
            l.local_addr().unwrap().port()
        ));
    }
}

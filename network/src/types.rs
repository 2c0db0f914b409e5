//! netavark's JSON: the network definition (also the on-disk format of `networks/<name>.json`,
//! the same as podman's `/etc/containers/networks/<name>.json`), the per-container options sent
//! on stdin to `netavark setup|teardown`, and the status it prints.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// A network definition in podman's/netavark's format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// The network's name (`bridge` for the default one).
    pub name: String,
    /// 64 hex characters.
    pub id: String,
    /// Always `bridge` here.
    pub driver: String,
    /// The host bridge interface (`rbuild0`, `rbuild1`...).
    pub network_interface: Option<String>,
    /// RFC 3339 creation time.
    #[serde(default)]
    pub created: String,
    /// The network's subnets (one IPv4 subnet for networks rbuild creates).
    #[serde(default)]
    pub subnets: Vec<Subnet>,
    /// Whether a subnet is IPv6.
    #[serde(default)]
    pub ipv6_enabled: bool,
    /// No routing out of the network (`--internal`).
    #[serde(default)]
    pub internal: bool,
    /// aardvark-dns answers the names of the network's containers.
    #[serde(default)]
    pub dns_enabled: bool,
    /// `--label K=V`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Driver options (`mtu`, `isolate`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<BTreeMap<String, String>>,
    /// `{"driver": "host-local"}`: addresses are chosen by the caller (rbuild's IPAM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam_options: Option<BTreeMap<String, String>>,
}

impl Network {
    /// The first IPv4 subnet with its gateway.
    pub fn subnet_v4(&self) -> Option<&Subnet> {
        self.subnets
            .iter()
            .find(|s| matches!(s.subnet, IpNet::V4(_)))
    }
}

/// One subnet of a network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    /// The subnet in CIDR form.
    pub subnet: IpNet,
    /// The gateway (the bridge's address; aardvark-dns listens there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

/// What `netavark setup|teardown` reads on stdin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkOptions {
    /// Used in firewall rule comments and aardvark-dns entries.
    pub container_id: String,
    /// The name aardvark-dns answers.
    pub container_name: String,
    /// Per network (keyed by network name): interface, addresses, aliases.
    pub networks: BTreeMap<String, PerNetworkOptions>,
    /// The definitions of the same networks.
    pub network_info: BTreeMap<String, Network>,
    /// Published ports.
    #[serde(default)]
    pub port_mappings: Option<Vec<PortMapping>>,
    /// `--dns`: upstream servers aardvark-dns forwards this container's queries to.
    #[serde(default)]
    pub dns_servers: Option<Vec<IpAddr>>,
}

/// A container's options on one network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerNetworkOptions {
    /// `--network-alias` names (answered by aardvark-dns besides the container name).
    #[serde(default)]
    pub aliases: Option<Vec<String>>,
    /// `eth0`, `eth1`...
    pub interface_name: String,
    /// The addresses rbuild's IPAM chose (netavark's host-local IPAM requires them).
    pub static_ips: Option<Vec<IpAddr>>,
    /// A fixed MAC address.
    #[serde(default)]
    pub static_mac: Option<String>,
}

/// One published port, as netavark takes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// The port inside the container.
    pub container_port: u16,
    /// The host address (empty: every address).
    pub host_ip: String,
    /// The host port.
    pub host_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Number of consecutive ports (1).
    pub range: u16,
}

/// What `netavark setup` prints per network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusBlock {
    /// Search domains for resolv.conf (`dns.podman` on DNS-enabled networks).
    #[serde(default)]
    pub dns_search_domains: Option<Vec<String>>,
    /// Name servers for resolv.conf (the gateway, where aardvark-dns listens).
    #[serde(default)]
    pub dns_server_ips: Option<Vec<IpAddr>>,
    /// The container's interfaces on the network (keyed by name).
    #[serde(default)]
    pub interfaces: Option<BTreeMap<String, NetInterface>>,
}

/// An interface netavark created in the container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInterface {
    /// Its MAC address.
    pub mac_address: String,
    /// Its addresses.
    #[serde(default)]
    pub subnets: Option<Vec<NetAddress>>,
}

/// An address of an interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetAddress {
    /// The network's gateway.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// The container's address with the subnet's prefix length.
    pub ipnet: IpNet,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_podman_definition_and_netavark_status() {
        // As podman 4.3 wrote /etc/containers/networks/<name>.json here.
        let def = r#"{"name": "obs", "id": "23eb9b3f93a043490f8b4f166c8370d84e5455e789b9d578c282152f9e91d230",
            "driver": "bridge", "network_interface": "podman1", "created": "2026-11-30T21:51:30.177979123Z",
            "subnets": [{"subnet": "10.89.77.0/24", "gateway": "10.89.77.1"}], "ipv6_enabled": false,
            "internal": false, "dns_enabled": true, "ipam_options": {"driver": "host-local"}}"#;
        let n: Network = serde_json::from_str(def).unwrap();
        assert_eq!(
            n.subnet_v4().unwrap().gateway,
            Some("10.89.77.1".parse().unwrap())
        );
        let status = r#"{"obs":{"dns_search_domains":["dns.podman"],"dns_server_ips":["10.89.77.1"],
            "interfaces":{"eth0":{"mac_address":"9a:1e:2b:3c:4d:5e","subnets":[{"ipnet":"10.89.77.2/24","gateway":"10.89.77.1"}]}}}}"#;
        let s: BTreeMap<String, StatusBlock> = serde_json::from_str(status).unwrap();
        let eth0 = &s["obs"].interfaces.as_ref().unwrap()["eth0"];
        assert_eq!(
            eth0.subnets.as_ref().unwrap()[0].ipnet.to_string(),
            "10.89.77.2/24"
        );
    }
}

//! The crate against the real netavark and aardvark-dns (root): a pinned namespace gets its
//! interface, address, routes and DNS entry; connect/disconnect add and remove interfaces; detach
//! leaves nothing. Subnets 10.89.215.0/24 and 10.89.216.0/24 are this test's.

use rbuild_network::{
    AttachRequest, CreateOptions, NetworkConfig, NetworkMode, Networks, PortSpec,
};
use std::path::Path;
use std::process::Command;

fn in_netns(ns: &Path, cmd: &[&str]) -> String {
    let o = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(cmd)
        .output()
        .expect("nsenter");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn rules(subnet: &str) -> usize {
    let o = Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.contains(subnet))
        .count()
}

#[test]
fn attach_connect_disconnect_detach() {
    if !nix::unistd::geteuid().is_root() || !Path::new("/usr/lib/podman/netavark").exists() {
        eprintln!("skipped: needs root and netavark");
        return;
    }
    let store = tempfile::tempdir().unwrap();
    let nets = Networks::open(store.path());
    let opts = |s: &str| CreateOptions {
        subnet: Some(s.parse().unwrap()),
        ..Default::default()
    };
    nets.create("network-it-a", &opts("10.89.215.0/24"))
        .unwrap();
    nets.create("network-it-b", &opts("10.89.216.0/24"))
        .unwrap();
    let config = NetworkConfig {
        mode: NetworkMode::Networks(vec![("network-it-a".into(), vec!["alias-a".into()])]),
        ports: vec![PortSpec::parse("127.0.0.1::80").unwrap()],
        ..Default::default()
    };
    let id = "0123456789abcdef0123456789abcdef";
    let a = nets
        .attach(&AttachRequest {
            container_id: id,
            container_name: "network-it-c",
            hostname: "itc",
            config: &config,
            exposed: &[],
        })
        .unwrap();
    let ns = a.netns().unwrap().to_path_buf();
    assert!(ns.starts_with(store.path().join("netns")));
    let rec = a.record().clone();
    assert_eq!(
        rec.ips(),
        vec!["10.89.215.2".parse::<std::net::IpAddr>().unwrap()]
    );
    let eth0 = in_netns(&ns, &["ip", "-o", "-4", "addr", "show", "eth0"]);
    assert!(eth0.contains("inet 10.89.215.2/24"), "{eth0}");
    assert!(in_netns(&ns, &["ip", "route"]).contains("default via 10.89.215.1"));
    // One netavark directory, so one aardvark-dns, per store.
    let dns_a = rec.netavark_config.clone().unwrap();
    assert!(dns_a.starts_with("/run/rbuild/net/netavark/"), "{dns_a:?}");
    let dns = std::fs::read_to_string(dns_a.join("aardvark-dns/network-it-a")).unwrap();
    assert!(dns.contains("network-it-c,alias-a"), "{dns}");
    let hosts = std::fs::read_to_string(&rec.hosts_path).unwrap();
    assert!(hosts.ends_with("10.89.215.2\titc\n"), "{hosts}");
    let resolv = std::fs::read_to_string(&rec.resolv_path).unwrap();
    assert!(resolv.contains("nameserver 10.89.215.1\n"), "{resolv}");
    assert!(rules("10.89.215.") > 0);
    let port = rec.ports()[0].clone();
    assert_eq!(port.host_ip, "127.0.0.1");
    assert_eq!(nets.find("network-it-c").unwrap().container_id, id);

    nets.connect("network-it-b", "network-it-c", &[]).unwrap();
    let eth1 = in_netns(&ns, &["ip", "-o", "-4", "addr", "show", "eth1"]);
    assert!(eth1.contains("inet 10.89.216.2/24"), "{eth1}");
    let resolv = std::fs::read_to_string(&rec.resolv_path).unwrap();
    assert!(resolv.contains("nameserver 10.89.216.1\n"), "{resolv}");
    assert!(nets.connect("network-it-b", "network-it-c", &[]).is_err());
    nets.disconnect("network-it-a", "network-it-c").unwrap();
    assert!(in_netns(&ns, &["ip", "-o", "link"])
        .lines()
        .all(|l| !l.contains("eth0")));
    assert!(!dns_a.join("aardvark-dns/network-it-a").exists());
    assert!(nets.remove("network-it-b").is_err(), "in use");

    a.detach().unwrap();
    assert!(!ns.exists());
    assert_eq!(rules("10.89.215."), 0);
    assert_eq!(rules("10.89.216."), 0);
    assert!(nets.find("network-it-c").is_err());
    nets.remove("network-it-a").unwrap();
    nets.remove("network-it-b").unwrap();
    assert!(
        !dns_a.exists(),
        "the last teardown leaves no netavark directory"
    );
}

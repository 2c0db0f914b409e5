//! # rbuild-network: container networks
//!
//! Networks are podman's: definitions in netavark's JSON format (`<store>/networks/<name>.json`),
//! bridges, veth pairs, NAT, port forwarding and firewall rules made by podman's `netavark`, and
//! name resolution between containers by `aardvark-dns`, which netavark starts and feeds. This
//! crate does what podman's libnetwork does around them:
//!
//! - definitions: the default network `bridge` (made on first use, interface `rbuild0`, DNS
//!   off as Docker's default bridge) and user networks ([`Networks::create`], DNS on), with
//!   subnets chosen to collide with no host route, podman network or other rbuild network;
//! - IPAM: netavark's `host-local` driver takes the addresses from its caller, so leases are kept
//!   per bridge in a host-wide directory (`/run/rbuild/net/ipam`, see `ipam.rs`);
//! - a network namespace per container, pinned at `<store>/netns/<id>` ([`netns`]), configured by
//!   `netavark setup` before the container's PID 1 joins it (the sandbox `setns`es into it);
//! - `/etc/hosts`, `/etc/resolv.conf` written as Docker writes them ([`etc`]);
//! - published ports ([`PortSpec`]), `network connect`/`disconnect` on a live attachment;
//! - one aardvark-dns per store (netavark's configuration directory is per store), so containers
//!   coming and going in one store do not interrupt the lookups of another, and an attachment
//!   returns once its network's server answers the container's name (`dnsprobe.rs`);
//! - teardown: `netavark teardown` (veth, and the bridge, firewall chains and aardvark-dns entries
//!   once the last container left), the leases, the namespace.
//!
//! An attachment is owned by the process running the container, which holds
//! `<store>/networks/containers/<id>/live.lock`; an attachment whose lock is free belongs to a
//! process that died and is torn down by the next `attach`, `network rm` or `prune`.

mod attach;
mod dnsprobe;
pub mod error;
pub mod etc;
mod ipam;
pub mod netns;
mod ports;
mod store;
pub mod types;

pub use attach::{
    AttachRequest, Attachment, AttachmentRecord, NetworkConfig, NetworkMode, PublishedPort,
};
pub use error::{Error, Result};
pub use etc::{AddHostIp, HostEntry};
pub use ports::{PortSpec, Protocol};
pub use store::{CreateOptions, Networks, DEFAULT_NETWORK};

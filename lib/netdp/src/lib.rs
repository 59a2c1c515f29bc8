//! Pod datapath over the kernel's own interfaces: netlink, setns and ethtool
//! ioctls, never a shelled-out `ip`.
//!
//! Netlink requests go through `rtnetlink` sockets this crate opens itself;
//! a socket for a pod's network namespace is opened *inside* that namespace
//! once, on a dedicated thread, and then used for every request. The veth's
//! sandbox end is created directly in the target namespace (moving it later
//! costs an RCU barrier under `rtnl_lock`). Sysctls and gratuitous ARP run
//! from a thread that has entered the namespace.

mod error;
mod ethtool;
mod garp;
mod names;
mod netlink;
mod netns;
mod pod;

pub use error::NetdpError;
pub use ethtool::set_tx_checksum;
pub use garp::{garp_frame, send_garp, GarpSpec};
pub use names::{host_veth_name, mac_from_ipv4, parse_mac, MAC_PREFIX};
pub use netlink::{Link, Netlink, Route};
pub use netns::{in_netns, in_netns_async, NetnsFile};
pub use pod::{
    configure_sandbox, create_veth, del_link_in, inspect, netns_has_ipv4, IfaceState,
    SandboxConfig, VethSpec,
};

pub type Result<T, E = NetdpError> = std::result::Result<T, E>;

/// Formats a MAC the way `ip link` and CNI results do: `0a:4c:0a:00:00:05`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

//! The `external_ids` keys LeEngine puts on a pod's OVS port. The CNI plugin
//! writes them; the plugin's GC/CHECK and the node-agent's reclaim find
//! ports by them, so they live in one place.

/// Marks ports created by the CNI plugin (value [`OWNER_CNI`]).
pub const OWNER: &str = "leengine-owner";
pub const OWNER_CNI: &str = "leengine-cni";
pub const CONTAINER_ID: &str = "leengine-container-id";
pub const IFNAME: &str = "leengine-ifname";
pub const POD_NAMESPACE: &str = "leengine-pod-namespace";
pub const POD_NAME: &str = "leengine-pod-name";
pub const IP: &str = "leengine-ip";
/// The CNI network (config `name`) the port was made for: GC of one network
/// leaves the ports of another alone.
pub const NETWORK: &str = "leengine-network";

//! Records IPAM keeps in etcd (JSON, camelCase) and the values its API returns.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::pool::Exclusion;
use crate::Vlan;

/// `{prefix}/ipam/pools/{name}`: an IP range planned with the network team.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    pub name: String,
    pub cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub vlan: Vlan,
    pub block_size: u32,
    #[serde(default)]
    pub excludes: Vec<Exclusion>,
}

/// `{prefix}/ipam/node-blocks/{node}/{pool}/{block}`: a block claimed by
/// `node`. The record exists exactly while the block is claimed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Block {
    pub pool: String,
    pub cidr: Ipv4Net,
    pub node: String,
    pub claimed_at: u64,
    /// Next allocation sequence number. Seeded from the etcd revision at
    /// claim time so numbers never repeat even if the block is released and
    /// claimed again: a stale release can never match a newer allocation.
    pub next_seq: u64,
    #[serde(default)]
    pub allocations: BTreeMap<Ipv4Addr, Allocation>,
    /// When each address was last freed (unix seconds); drives longest-free-first and the cooldown.
    #[serde(default)]
    pub freed_at: BTreeMap<Ipv4Addr, u64>,
    /// Addresses kept for a pod identity after release (sticky IPs).
    #[serde(default)]
    pub reserved: BTreeMap<Ipv4Addr, Reservation>,
}

/// `{prefix}/ipam/blocks/{pool}/{block}`: the claim. Created only if absent
/// (so two nodes can never own one block); the record itself lives under
/// the owner at `{prefix}/ipam/node-blocks/{node}/{pool}/{block}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BlockClaim {
    pub pool: String,
    pub cidr: Ipv4Net,
    pub node: String,
}

/// `{prefix}/ipam/full/{pool}`: at `revision` no block of the pool had an
/// address for anyone (every release in the pool deletes the marker). An
/// address reserved for a sticky pod becomes free for others at `until`,
/// with nobody writing: the marker holds only until then.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FullMarker {
    pub revision: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
}

impl FullMarker {
    pub fn holds(&self, now: u64) -> bool {
        self.until.is_none_or(|u| now < u)
    }
}

/// One allocated address inside a block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    pub seq: u64,
    pub container_id: String,
    pub ifname: String,
    pub node: String,
    pub since: u64,
}

/// A sticky reservation: `pod` (`namespace/name`) may take this address back until `until`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    pub pod: String,
    pub until: u64,
    /// Any pod of this app (namespace) may take the address until `until`
    /// (the app reserve, see [`crate::apps`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

impl Reservation {
    /// Whether the reservation keeps `ip` from `pod` (`namespace/name`) at `now`.
    pub fn excludes(&self, pod: Option<&str>, now: u64) -> bool {
        if self.until <= now || pod == Some(self.pod.as_str()) {
            return false;
        }
        let ns = pod.and_then(|p| p.split_once('/')).map(|(ns, _)| ns);
        !(self.app.is_some() && self.app.as_deref() == ns)
    }
}

/// `{prefix}/ipam/sticky/{namespace}/{name}`: the address a pod identity last held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StickyRecord {
    pub ip: Ipv4Addr,
    pub pool: String,
    pub until: u64,
}

/// `{prefix}/ipam/handles/{container-id}/{ifname}`: the address one CNI attachment holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    pub node: String,
    /// The CNI network (config `name`) the attachment was made for; CNI GC
    /// of one network never touches another's. `None` on records made
    /// before it was recorded: no GC collects those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub vlan: Vlan,
    pub pool: String,
    pub block: Ipv4Net,
    /// The allocation's sequence number in its block (see [`Block::next_seq`]).
    pub seq: u64,
    /// Unix seconds of the allocation.
    pub since: u64,
}

impl Attachment {
    /// `namespace/name` when both are known.
    pub fn pod(&self) -> Option<String> {
        match (&self.pod_namespace, &self.pod_name) {
            (Some(ns), Some(name)) => Some(format!("{ns}/{name}")),
            _ => None,
        }
    }
}

/// What a CNI ADD asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AssignRequest {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    /// The CNI network asking (recorded in the [`Attachment`]).
    pub network: Option<String>,
    /// Eligible pools in order of preference; empty = every pool of the Cell (by name).
    pub pools: Vec<String>,
    /// A specific address (CNI args `IP=` / runtimeConfig `ips`).
    pub requested_ip: Option<Ipv4Addr>,
}

/// The result of [`crate::Ipam::assign`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub ip: Ipv4Addr,
    /// The pool's prefix length (a block is an allocation unit, not a subnet).
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub vlan: Vlan,
    pub pool: String,
    pub seq: u64,
    /// False when the handle already existed and ADD was replayed.
    pub created: bool,
    pub attachment: Attachment,
}

impl Assignment {
    pub(crate) fn new(attachment: Attachment, created: bool) -> Self {
        Self {
            ip: attachment.ip,
            prefix_len: attachment.prefix_len,
            gateway: attachment.gateway,
            vlan: attachment.vlan,
            pool: attachment.pool.clone(),
            seq: attachment.seq,
            created,
            attachment,
        }
    }
}

/// Per-pool figures for `cnictl pool list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolUsage {
    pub pool: Pool,
    pub blocks_claimed: u64,
    pub blocks_total: u64,
    /// Addresses that can ever be handed out (minus network, broadcast, gateway, excludes).
    pub ips_assignable: u64,
    pub ips_used: u64,
    /// Kept for an app or a pod identity (neither used nor free).
    #[serde(default)]
    pub ips_reserved: u64,
    pub ips_free: u64,
    /// Apps bound to the pool (empty: shared).
    #[serde(default)]
    pub apps: Vec<String>,
}

impl PoolUsage {
    pub fn percent_used(&self) -> f64 {
        if self.ips_assignable == 0 {
            return 100.0;
        }
        self.ips_used as f64 * 100.0 / self.ips_assignable as f64
    }
}

/// Filter for block and IP listings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub node: Option<String>,
    pub pool: Option<String>,
}

/// State of one address, for `cnictl ip show`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum IpState {
    /// Network, broadcast, gateway or an excluded address.
    Unassignable {
        reason: String,
    },
    /// In a block nobody has claimed yet.
    Unclaimed,
    Free {
        #[serde(skip_serializing_if = "Option::is_none")]
        freed_at: Option<u64>,
    },
    Reserved {
        reservation: Reservation,
    },
    Allocated {
        attachment: Box<Attachment>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpInfo {
    pub ip: Ipv4Addr,
    pub pool: String,
    pub block: Ipv4Net,
    /// The node owning the block, if claimed.
    pub block_node: Option<String>,
    #[serde(flatten)]
    pub state: IpState,
}

/// `{prefix}/nodes/{node}/attachments`: what the node-agent found alive on
/// its node (pod netns interfaces with their addresses) at `scanned_at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeAttachmentsReport {
    pub node: String,
    /// Unix seconds of the scan.
    pub scanned_at: u64,
    pub attachments: Vec<LiveAttachment>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveAttachment {
    pub container_id: String,
    pub ifname: String,
    pub ip: Ipv4Addr,
}

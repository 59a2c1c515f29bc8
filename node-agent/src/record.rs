//! `{prefix}/nodes/{node}`: the registration record (JSON, camelCase), and
//! the host figures it carries (sysinfo).

use serde::{Deserialize, Serialize};

use crate::metrics::{DiskStat, NodeStats};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub node: String,
    pub agent_version: String,
    /// Unix seconds.
    pub started_at: u64,
    pub updated_at: u64,
    pub capacity: Capacity,
    pub usage: Usage,
    /// `None` when no uplinks are configured.
    pub bond: Option<BondRecord>,
    /// Why bond health could not be read (OVSDB down, bond missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond_error: Option<String>,
    pub reclaim: bool,
    /// Containers the swap guard could not constrain (when it is on).
    #[serde(default)]
    pub swap_unconstrained: Vec<String>,
    /// Where Prometheus scrapes this agent (core's service discovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    pub cpus: usize,
    pub memory_bytes: u64,
    pub disks: Vec<Disk>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub cpu_ratio: f64,
    pub load1: f64,
    pub memory_used_bytes: u64,
    pub swap_used_bytes: u64,
    pub disks: Vec<Disk>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    pub mount: String,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BondRecord {
    pub name: String,
    pub bridge: Option<String>,
    pub mode: Option<String>,
    pub trunks: Vec<u16>,
    pub active_member: Option<String>,
    pub members: Vec<MemberRecord>,
    pub members_up: usize,
    pub members_down: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberRecord {
    pub name: String,
    pub up: bool,
}

impl BondRecord {
    pub fn from_status(s: &leengine_ovsdb::BondStatus) -> Self {
        Self {
            name: s.name.clone(),
            bridge: s.bridge.clone(),
            mode: s.mode.clone(),
            trunks: s.trunks.clone(),
            active_member: s.active_member.clone(),
            members: s
                .members
                .iter()
                .map(|m| MemberRecord {
                    name: m.name.clone(),
                    up: m.is_up(),
                })
                .collect(),
            members_up: s.members_up(),
            members_down: s.members_down(),
        }
    }
}

/// Host figures from sysinfo; one instance is kept so CPU usage is a delta
/// between two refreshes.
#[derive(Debug)]
pub struct Host {
    sys: sysinfo::System,
    disks: sysinfo::Disks,
}

impl Host {
    pub fn new() -> anyhow::Result<Self> {
        let mut sys = sysinfo::System::new().map_err(|e| anyhow::anyhow!("sysinfo: {e:?}"))?;
        sys.refresh_cpu_usage();
        let disks = sysinfo::Disks::new_with_refreshed_list()
            .map_err(|e| anyhow::anyhow!("sysinfo disks: {e:?}"))?;
        Ok(Self { sys, disks })
    }

    pub fn stats(&mut self) -> NodeStats {
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
        self.disks.refresh(true);
        let mut disks: Vec<DiskStat> = self
            .disks
            .iter()
            .map(|d| DiskStat {
                mount: d.mount_point().display().to_string(),
                total: d.total_space(),
                available: d.available_space(),
            })
            .filter(|d| d.total > 0)
            .collect();
        disks.sort_by(|a, b| a.mount.cmp(&b.mount));
        disks.dedup_by(|a, b| a.mount == b.mount);
        NodeStats {
            cpus: self.sys.cpus().len(),
            cpu_usage_ratio: f64::from(self.sys.global_cpu_usage()) / 100.0,
            memory_total: self.sys.total_memory(),
            memory_used: self.sys.used_memory(),
            swap_total: self.sys.total_swap(),
            swap_used: self.sys.used_swap(),
            load1: sysinfo::System::load_average()
                .map(|l| l.one)
                .unwrap_or(0.0),
            disks,
        }
    }
}

/// Capacity and usage parts of the record from one stats sample (pure).
pub fn capacity_usage(n: &NodeStats) -> (Capacity, Usage) {
    let disk = |f: fn(&DiskStat) -> u64| {
        n.disks
            .iter()
            .map(|d| Disk {
                mount: d.mount.clone(),
                bytes: f(d),
            })
            .collect()
    };
    (
        Capacity {
            cpus: n.cpus,
            memory_bytes: n.memory_total,
            disks: disk(|d| d.total),
        },
        Usage {
            cpu_ratio: n.cpu_usage_ratio,
            load1: n.load1,
            memory_used_bytes: n.memory_used,
            swap_used_bytes: n.swap_used,
            disks: disk(|d| d.available),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_in_camel_case() {
        let n = NodeStats {
            cpus: 4,
            memory_total: 8,
            memory_used: 3,
            disks: vec![DiskStat {
                mount: "/".into(),
                total: 100,
                available: 40,
            }],
            ..Default::default()
        };
        let (capacity, usage) = capacity_usage(&n);
        assert_eq!(usage.disks[0].bytes, 40);
        let r = NodeRecord {
            node: "n1".into(),
            agent_version: "0.1.0".into(),
            started_at: 1,
            updated_at: 2,
            capacity,
            usage,
            bond: None,
            bond_error: Some("OVSDB unavailable".into()),
            reclaim: true,
            swap_unconstrained: vec![],
            metrics_address: Some("10.0.0.1:9477".into()),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["capacity"]["memoryBytes"], 8);
        assert_eq!(v["bondError"], "OVSDB unavailable");
        assert_eq!(v["metricsAddress"], "10.0.0.1:9477");
        assert_eq!(serde_json::from_value::<NodeRecord>(v).unwrap(), r);
    }
}

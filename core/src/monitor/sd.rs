//! Prometheus HTTP service discovery (`http_sd_configs`): every node-agent
//! and nginx-agent that registered a metrics address in etcd is a target,
//! so a new host is scraped without touching Prometheus' configuration.
//! The registrations are leased, so a dead agent drops out within its TTL.
//! Node-agents register in their Cell's etcd (with the default prefix, as
//! the Cell record names it) or, in a one-etcd Region, in the core's own;
//! nginx-agents in the Region's `/slb/` tree.

use std::collections::BTreeMap;

use etcd_client::{GetOptions, TxnOp};
use leengine_store::keys::{parse_slb_agent_key, slb_root_prefix, NodeKey};
use leengine_store::Keys;
use serde::{Deserialize, Serialize};

use crate::cells::CellRecord;
use crate::problem::ApiError;
use crate::store::Db;

/// One target group of the http_sd answer.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// The one field discovery needs from either agent's record.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Advertised {
    #[serde(default)]
    metrics_address: Option<String>,
}

fn group(addr: String, labels: &[(&str, &str)]) -> TargetGroup {
    TargetGroup {
        targets: vec![addr],
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn advertised(value: &[u8]) -> Option<String> {
    serde_json::from_slice::<Advertised>(value)
        .ok()?
        .metrics_address
        .filter(|a| !a.is_empty())
}

async fn nodes(
    etcd: &etcd_client::Client,
    keys: &Keys,
    cell: &str,
    out: &mut Vec<TargetGroup>,
) -> Result<(), etcd_client::Error> {
    let resp = etcd
        .kv_client()
        .get(keys.nodes_prefix(), Some(GetOptions::new().with_prefix()))
        .await?;
    for k in resp.kvs() {
        let Ok(key) = k.key_str() else { continue };
        if let Some(NodeKey::Registration(node)) = keys.parse_node_key(key) {
            if let Some(addr) = advertised(k.value()) {
                let labels = [("leengine_role", "node"), ("node", node), ("cell", cell)];
                out.push(group(addr, &labels));
            }
        }
    }
    Ok(())
}

/// A Cell's etcd that cannot be read leaves out its nodes, not the answer:
/// Prometheus would otherwise drop every target at once.
async fn cell_nodes(cell: &CellRecord, out: &mut Vec<TargetGroup>) {
    let read = async {
        let (etcd, keys) = crate::cells::etcd(cell).await.map_err(|e| e.detail)?;
        nodes(&etcd, &keys, &cell.name, out)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(crate::cells::ETCD_TIMEOUT * 2, read).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(cell = %cell.name, error = %e, "Cell etcd not read for discovery")
        }
        Err(_) => tracing::warn!(cell = %cell.name, "Cell etcd timed out for discovery"),
    }
}

pub async fn targets(db: &Db) -> Result<Vec<TargetGroup>, ApiError> {
    let mut out = Vec::new();
    nodes(&db.etcd, &db.keys, "", &mut out).await?;
    for (_, cell) in db.list::<CellRecord>(&db.keys.cells_prefix()).await? {
        if !cell.etcd.is_empty() {
            cell_nodes(&cell, &mut out).await;
        }
    }
    let mut kv = db.etcd.kv_client();
    // Keys first: the SLB tree also holds every domain's config.
    let slb = kv
        .get(
            slb_root_prefix(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await?;
    let agents: Vec<String> = slb
        .kvs()
        .iter()
        .filter_map(|k| k.key_str().ok())
        .filter(|k| parse_slb_agent_key(k).is_some())
        .map(str::to_string)
        .collect();
    if agents.is_empty() {
        return Ok(out);
    }
    let reads = agents
        .iter()
        .map(|k| TxnOp::get(k.as_str(), None))
        .collect();
    let batch = leengine_store::record::read(&db.etcd, reads).await?;
    for (key, get) in agents.iter().zip(&batch.responses) {
        let Some((grp, host)) = parse_slb_agent_key(key) else {
            continue;
        };
        if let Some(addr) = get.kvs().first().and_then(|k| advertised(k.value())) {
            let labels = [("leengine_role", "nginx"), ("group", grp), ("host", host)];
            out.push(group(addr, &labels));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_records_with_an_address_are_targets() {
        assert_eq!(
            advertised(br#"{"node":"n1","metricsAddress":"10.0.0.1:9477"}"#),
            Some("10.0.0.1:9477".into())
        );
        assert_eq!(advertised(br#"{"node":"n1"}"#), None);
        assert_eq!(advertised(br#"{"metricsAddress":""}"#), None);
        assert_eq!(advertised(b"not json"), None);
    }
}

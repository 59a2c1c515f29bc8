//! What boss shows of a Cell's machines: each node's allocatable CPU and
//! memory against what the pods placed on it request, live from the Cell's
//! apiserver (as the scheduler counts it).

use std::collections::BTreeMap;

use axum::extract::State;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use serde::Serialize;

use crate::auth::Caller;
use crate::problem::{ApiError, Json, Path};
use crate::quantity;
use crate::server::Core;

#[derive(Debug, Default, Serialize)]
pub struct NodeUsage {
    pub name: String,
    /// The node's `Ready` condition is `True`.
    pub ready: bool,
    pub cpu_allocatable_millis: u64,
    pub cpu_requested_millis: u64,
    pub memory_allocatable_bytes: u64,
    pub memory_requested_bytes: u64,
    /// Pods bound to the node that have not finished.
    pub pods: u64,
}

/// `GET /api/v1/admin/cells/{cell}/nodes` (admin).
pub async fn nodes(
    State(core): State<Core>,
    caller: Caller,
    Path(cell): Path<String>,
) -> Result<Json<Vec<NodeUsage>>, ApiError> {
    caller.require_admin()?;
    let rec = super::require(&core.db, &cell).await?;
    let client = super::client(&core.settings.cells, &rec.value).await?;
    let kube = |e| super::kube_error(&cell, e);
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(kube)?;
    let pods = Api::<Pod>::all(client)
        .list(&ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed"))
        .await
        .map_err(kube)?;
    let mut out: BTreeMap<String, NodeUsage> = nodes
        .items
        .into_iter()
        .map(|n| {
            let u = node_view(n);
            (u.name.clone(), u)
        })
        .collect();
    for p in pods.items {
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        if let Some(u) = out.get_mut(&node) {
            let (cpu, mem) = requests(&p);
            u.cpu_requested_millis += cpu;
            u.memory_requested_bytes += mem;
            u.pods += 1;
        }
    }
    Ok(Json(out.into_values().collect()))
}

fn node_view(n: Node) -> NodeUsage {
    let status = n.status.unwrap_or_default();
    let alloc = status.allocatable.unwrap_or_default();
    let get = |k: &str, parse: fn(&str) -> Option<u64>| {
        alloc.get(k).and_then(|q| parse(&q.0)).unwrap_or(0)
    };
    NodeUsage {
        name: n.metadata.name.unwrap_or_default(),
        ready: status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        cpu_allocatable_millis: get("cpu", quantity::cpu_millis),
        memory_allocatable_bytes: get("memory", quantity::memory_bytes),
        ..Default::default()
    }
}

/// The pod's CPU and memory requests, summed over its containers.
fn requests(p: &Pod) -> (u64, u64) {
    let containers = p.spec.iter().flat_map(|s| s.containers.iter());
    let mut sum = (0, 0);
    for c in containers {
        let Some(req) = c.resources.as_ref().and_then(|r| r.requests.as_ref()) else {
            continue;
        };
        sum.0 += req
            .get("cpu")
            .and_then(|q| quantity::cpu_millis(&q.0))
            .unwrap_or(0);
        sum.1 += req
            .get("memory")
            .and_then(|q| quantity::memory_bytes(&q.0))
            .unwrap_or(0);
    }
    sum
}

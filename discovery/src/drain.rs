//! The acknowledging half of the drain contract (docs/discovery.md).
//!
//! A request is acked once (1) the domain's upstream in etcd excludes its
//! pods, at revision R (the write that dropped them, or the upstream's
//! current revision when it already did), and (2) every live nginx agent
//! of the group (a status record under `/slb/{group}/agents/`, leased)
//! reports `appliedRevision >= R`. An ack whose request is gone is deleted.

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::{Client, Compare, GetOptions, Txn, TxnOp};
use leengine_slb::AgentStatus;
use leengine_store::keys::slb_agents_prefix;
use leengine_store::region::DrainAck;
use leengine_store::Keys;

use crate::model::{DomainRef, Drain};

/// A drain, by the key parts of its request.
pub type DrainId = (DomainRef, String);

/// Which requests to ack at which revision, and which acks to delete.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub want: BTreeMap<DrainId, i64>,
    pub stale: Vec<DrainId>,
}

/// Pure: `effective` is the revision of each domain's upstream when etcd
/// holds what the current world computes (absent while a write is due).
pub fn plan(
    drains: &[Drain],
    effective: &BTreeMap<DomainRef, i64>,
    acked: &BTreeSet<DrainId>,
) -> Plan {
    let live: BTreeSet<DrainId> = drains
        .iter()
        .map(|d| (d.target.clone(), d.id.clone()))
        .collect();
    let want = drains
        .iter()
        .map(|d| (d.target.clone(), d.id.clone()))
        .filter(|id| !acked.contains(id))
        .filter_map(|id| Some((id.clone(), *effective.get(&id.0)?)))
        .collect();
    let stale = acked.difference(&live).cloned().collect();
    Plan { want, stale }
}

/// Pure: whether every live agent has applied `revision`.
pub fn applied_everywhere(agents: &[AgentStatus], revision: i64) -> bool {
    agents.iter().all(|a| a.applied_revision >= revision)
}

pub async fn agents(
    client: &mut Client,
    group: &str,
) -> Result<Vec<AgentStatus>, etcd_client::Error> {
    let resp = client
        .get(
            slb_agents_prefix(group),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect())
}

/// The acks in etcd at the start of a term.
pub async fn existing(
    client: &mut Client,
    keys: &Keys,
) -> Result<BTreeSet<DrainId>, etcd_client::Error> {
    let resp = client
        .get(
            keys.drain_acks_prefix(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let (g, d, id) = keys.parse_drain_key(&key)?;
            Some((
                DomainRef {
                    group: g.into(),
                    domain: d.into(),
                },
                id.to_string(),
            ))
        })
        .collect())
}

/// Writes (`Some(rev)`) or deletes (`None`) an ack under the fence;
/// `false` when fenced.
pub async fn set(
    client: &mut Client,
    keys: &Keys,
    fence: Compare,
    id: &DrainId,
    revision: Option<i64>,
) -> Result<bool, etcd_client::Error> {
    let key = keys.drain_ack(&id.0.group, &id.0.domain, &id.1);
    let op = match revision {
        Some(revision) => {
            let ack = DrainAck {
                revision,
                acked: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            };
            TxnOp::put(
                key,
                serde_json::to_string(&ack).expect("ack serialises"),
                None,
            )
        }
        None => TxnOp::delete(key, None),
    };
    let resp = client.txn(Txn::new().when([fence]).and_then([op])).await?;
    Ok(resp.succeeded())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dom(d: &str) -> DomainRef {
        DomainRef {
            group: "g".into(),
            domain: d.into(),
        }
    }

    fn drain(d: &str, id: &str) -> Drain {
        Drain {
            id: id.into(),
            target: dom(d),
            cell: "c".into(),
            namespace: "n".into(),
            pods: ["p".to_string()].into(),
        }
    }

    #[test]
    fn a_drain_is_acked_only_once_its_domain_is_written() {
        let drains = [drain("a.com", "r1"), drain("b.com", "r2")];
        let effective = [(dom("a.com"), 40)].into();
        let p = plan(&drains, &effective, &BTreeSet::new());
        assert_eq!(p.want, [((dom("a.com"), "r1".to_string()), 40)].into());
        assert!(p.stale.is_empty());
    }

    #[test]
    fn acked_requests_are_not_acked_again_and_acks_of_gone_requests_are_stale() {
        let drains = [drain("a.com", "r1")];
        let effective = [(dom("a.com"), 40)].into();
        let acked = [
            (dom("a.com"), "r1".to_string()),
            (dom("a.com"), "r0".to_string()),
        ]
        .into();
        let p = plan(&drains, &effective, &acked);
        assert!(p.want.is_empty());
        assert_eq!(p.stale, vec![(dom("a.com"), "r0".to_string())]);
    }

    #[test]
    fn every_live_agent_must_have_applied_the_revision() {
        let a = |rev| AgentStatus {
            applied_revision: rev,
            ..Default::default()
        };
        assert!(applied_everywhere(&[a(41), a(40)], 40));
        assert!(!applied_everywhere(&[a(41), a(39)], 40));
        // No live agent: nothing serves the pods any more.
        assert!(applied_everywhere(&[], 40));
    }
}

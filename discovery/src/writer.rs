//! The one path by which discovery changes etcd's SLB keys: a domain's
//! `upstream`, in a transaction that compares (1) the leader fence, (2) that
//! the domain's `config` exists (no orphan peers, as slb-core does) and
//! (3) that the upstream is still the one read (an admin's change of the
//! balancing or a weight is never overwritten blind).

use std::collections::BTreeSet;
use std::net::SocketAddr;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use leengine_slb::{Server, Upstream};
use leengine_store::keys::{slb_domain_config, slb_domain_upstream};

use crate::model::DomainRef;

/// What etcd holds for a domain.
#[derive(Clone, Debug, PartialEq)]
pub struct Current {
    pub config: bool,
    /// `None`: no upstream key, or one that does not parse.
    pub upstream: Option<Upstream>,
    /// 0 when the key is absent.
    pub mod_revision: i64,
}

impl Current {
    pub fn servers(&self) -> Option<BTreeSet<SocketAddr>> {
        self.upstream
            .as_ref()
            .map(|u| u.servers.iter().map(|s| s.address).collect())
    }
}

#[derive(Debug, PartialEq)]
pub enum Outcome {
    Written {
        revision: i64,
    },
    /// Something changed meanwhile: `Current` is what etcd holds now.
    Conflict(Current),
    /// This replica is no longer the active one.
    Fenced,
}

pub async fn read(client: &mut Client, d: &DomainRef) -> Result<Current, etcd_client::Error> {
    let txn = Txn::new().and_then([
        TxnOp::get(slb_domain_config(&d.group, &d.domain), None),
        TxnOp::get(slb_domain_upstream(&d.group, &d.domain), None),
    ]);
    let resp = client.txn(txn).await?;
    Ok(current_of(resp.op_responses()))
}

fn current_of(ops: Vec<TxnOpResponse>) -> Current {
    let mut gets = ops.into_iter().filter_map(|op| match op {
        TxnOpResponse::Get(g) => Some(g),
        _ => None,
    });
    let config = gets.next().is_some_and(|g| !g.kvs().is_empty());
    let up = gets.next();
    let kv = up.as_ref().and_then(|g| g.kvs().first());
    Current {
        config,
        upstream: kv.and_then(|kv| Upstream::parse(kv.value()).ok()),
        mod_revision: kv.map_or(0, |kv| kv.mod_revision()),
    }
}

/// The record to write: `servers`, keeping the balancing and each kept
/// server's settings from what etcd holds.
pub fn merged(current: &Current, servers: &BTreeSet<SocketAddr>) -> Upstream {
    let old = current.upstream.clone().unwrap_or_default();
    let servers = servers
        .iter()
        .map(|a| {
            old.servers
                .iter()
                .find(|s| s.address == *a)
                .cloned()
                .unwrap_or_else(|| Server::new(*a))
        })
        .collect();
    Upstream {
        servers,
        balancing: old.balancing,
    }
}

pub async fn write(
    client: &mut Client,
    fence: Compare,
    d: &DomainRef,
    current: &Current,
    up: &Upstream,
) -> Result<Outcome, etcd_client::Error> {
    let config = slb_domain_config(&d.group, &d.domain);
    let upstream = slb_domain_upstream(&d.group, &d.domain);
    let value = serde_json::to_string(up).expect("an upstream serialises");
    let txn = Txn::new()
        .when([
            fence,
            Compare::version(config.as_str(), CompareOp::Greater, 0),
            Compare::mod_revision(upstream.as_str(), CompareOp::Equal, current.mod_revision),
        ])
        .and_then([TxnOp::put(upstream.as_str(), value, None)])
        .or_else([
            TxnOp::get(config.as_str(), None),
            TxnOp::get(upstream.as_str(), None),
        ]);
    let resp = client.txn(txn).await?;
    if resp.succeeded() {
        return Ok(Outcome::Written {
            revision: resp.header().map_or(0, |h| h.revision()),
        });
    }
    let now = current_of(resp.op_responses());
    if now.config && now.mod_revision == current.mod_revision {
        return Ok(Outcome::Fenced);
    }
    Ok(Outcome::Conflict(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_keeps_balancing_and_kept_servers_settings() {
        let old: Upstream = serde_json::from_str(
            r#"{"servers":[{"address":"10.0.0.1:80","weight":5},{"address":"10.0.0.2:80"}],
                "balancing":{"method":"least_conn"}}"#,
        )
        .unwrap();
        let cur = Current {
            config: true,
            upstream: Some(old),
            mod_revision: 7,
        };
        let want: BTreeSet<SocketAddr> = ["10.0.0.1:80", "10.0.0.3:80"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let up = merged(&cur, &want);
        assert_eq!(up.balancing, leengine_slb::Balancing::LeastConn);
        assert_eq!(up.servers.len(), 2);
        assert_eq!(up.servers[0].weight, 5);
        assert_eq!(up.servers[1], Server::new("10.0.0.3:80".parse().unwrap()));
        up.validate().unwrap();
    }
}

//! Registration `{prefix}/nodes/{node}` under a kept-alive lease: it exists
//! while the agent lives, disappears within the TTL after it dies, and is
//! revoked at once on a clean stop.

use std::sync::Arc;

use leengine_store::lease::{Registration, Source};

use crate::agent::{now_secs, stopped, Shared};
use crate::record::{capacity_usage, BondRecord, NodeRecord};

pub async fn record(sh: &Shared) -> NodeRecord {
    let stats = sh.host.lock().await.stats();
    let (capacity, usage) = capacity_usage(&stats);
    let (bond, bond_error) = if sh.cfg.uplinks.is_empty() {
        (None, None)
    } else {
        match bond_status(sh).await {
            Ok(s) => (Some(BondRecord::from_status(&s)), None),
            Err(e) => (None, Some(e.to_string())),
        }
    };
    NodeRecord {
        node: sh.cfg.node.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: sh.started_wall,
        updated_at: now_secs(),
        capacity,
        usage,
        bond,
        bond_error,
        reclaim: sh.cfg.reclaim,
        swap_unconstrained: sh.state.lock().await.swap_unconstrained.clone(),
        metrics_address: sh.cfg.metrics_advertise.clone(),
    }
}

pub async fn bond_status(
    sh: &Shared,
) -> Result<leengine_ovsdb::BondStatus, leengine_ovsdb::OvsdbError> {
    sh.ovs().await?.bond_status(&sh.cfg.bond).await
}

/// Keeps the registration alive until shutdown, then revokes the lease
/// (the shared leased-record rules: `leengine_store::lease`).
pub async fn run(sh: Arc<Shared>) {
    let key = sh.keys.node(&sh.cfg.node);
    let refresh = tokio::time::interval_at(
        tokio::time::Instant::now() + sh.cfg.refresh_interval,
        sh.cfg.refresh_interval,
    );
    let source = Refreshed {
        sh: sh.clone(),
        refresh,
    };
    Registration::new(sh.etcd.clone(), key, sh.cfg.lease_ttl, source)
        .run(None, stopped(sh.shutdown.clone()))
        .await;
}

/// The node record, rewritten every refresh interval (usage, bond state).
struct Refreshed {
    sh: Arc<Shared>,
    refresh: tokio::time::Interval,
}

impl Source for Refreshed {
    async fn value(&mut self) -> Vec<u8> {
        leengine_store::record::json(&record(&self.sh).await)
    }

    async fn changed(&mut self) {
        self.refresh.tick().await;
    }
}

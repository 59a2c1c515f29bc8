//! Registration `{prefix}/nodes/{node}` under a kept-alive lease: it exists
//! while the agent lives, disappears within the TTL after it dies, and is
//! revoked at once on a clean stop.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::PutOptions;

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
    }
}

pub async fn bond_status(
    sh: &Shared,
) -> Result<leengine_ovsdb::BondStatus, leengine_ovsdb::OvsdbError> {
    sh.ovs().await?.bond_status(&sh.cfg.bond).await
}

async fn put(sh: &Shared, lease: i64) -> Result<(), etcd_client::Error> {
    let rec = record(sh).await;
    let value = serde_json::to_vec(&rec).expect("record serialises");
    sh.etcd
        .kv_client()
        .put(
            sh.keys.node(&sh.cfg.node),
            value,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
    Ok(())
}

enum End {
    Stop,
    Lost,
}

/// Keeps the registration alive until shutdown, then revokes the lease.
pub async fn run(sh: Arc<Shared>) {
    let ttl = sh.cfg.lease_ttl;
    loop {
        let lease = match sh
            .etcd
            .lease_client()
            .grant(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX), None)
            .await
        {
            Ok(l) => l.id(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot grant registration lease; retrying");
                if wait_or_stop(&sh, Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        };
        match hold(&sh, lease, ttl).await {
            End::Stop => {
                match sh.etcd.lease_client().revoke(lease).await {
                    Ok(_) => tracing::info!(lease, "registration revoked"),
                    Err(e) => {
                        tracing::warn!(lease, error = %e, "cannot revoke lease; it expires with its TTL")
                    }
                }
                return;
            }
            End::Lost => {
                tracing::warn!(lease, "registration lease lost; registering again");
                if wait_or_stop(&sh, Duration::from_millis(500)).await {
                    return;
                }
            }
        }
    }
}

/// True when shutdown came first.
async fn wait_or_stop(sh: &Shared, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => sh.stopping(),
        _ = stopped(sh.shutdown.clone()) => true,
    }
}

async fn hold(sh: &Shared, lease: i64, ttl: Duration) -> End {
    if let Err(e) = put(sh, lease).await {
        tracing::warn!(error = %e, "cannot write registration");
        return if sh.stopping() { End::Stop } else { End::Lost };
    }
    tracing::info!(node = %sh.cfg.node, lease, ttl = ?ttl, "registered");
    let (mut keeper, mut stream) = match sh.etcd.lease_client().keep_alive(lease).await {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open lease keep-alive");
            return End::Lost;
        }
    };
    let mut keep = tokio::time::interval(ttl / 3);
    let mut refresh = tokio::time::interval(sh.cfg.refresh_interval);
    refresh.tick().await;
    loop {
        tokio::select! {
            _ = keep.tick() => {
                let alive = async {
                    keeper.keep_alive().await?;
                    stream.message().await
                };
                match tokio::time::timeout(ttl / 3, alive).await {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                    Ok(Ok(_)) => return End::Lost,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "lease keep-alive failed");
                        return End::Lost;
                    }
                    Err(_) => {
                        tracing::warn!("lease keep-alive timed out");
                        return End::Lost;
                    }
                }
            }
            _ = refresh.tick() => {
                if let Err(e) = put(sh, lease).await {
                    tracing::warn!(error = %e, "cannot refresh registration");
                }
            }
            _ = stopped(sh.shutdown.clone()) => return End::Stop,
        }
    }
}

//! Node bootstrap through OVSDB: the bridge exists and the uplinks form the
//! bond, trunking the VLANs of every pool in etcd. Re-run on start, on any
//! change under the pools prefix, and periodically (drift repair).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use etcd_client::Event;
use leengine_ovsdb::Converge;
use leengine_store::follow::{follow, Follow, Follower, Snapshot};
use tokio::sync::Notify;

use crate::agent::{stopped, Shared};

/// VLANs the bond must carry: every pool's VLAN; 0 (untagged) included
/// when a pool is untagged so its frames are admitted too.
pub fn trunks(pools: &[leengine_ipam::Pool]) -> Vec<u16> {
    let mut v: Vec<u16> = pools.iter().map(|p| p.vlan).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// One convergence pass. Pools are read first: if etcd cannot be read the
/// bond is left as it is rather than trunking a guess.
pub async fn converge(sh: &Shared) -> anyhow::Result<()> {
    let cfg = &sh.cfg;
    let ovs = sh.ovs().await.context("OVSDB")?;
    let bridge = ovs
        .ensure_bridge(&cfg.bridge, &cfg.datapath_type)
        .await
        .with_context(|| format!("ensure bridge {}", cfg.bridge))?;
    if bridge != Converge::Unchanged {
        tracing::info!(bridge = %cfg.bridge, outcome = ?bridge, "bridge converged");
    }
    if cfg.uplinks.is_empty() {
        return Ok(());
    }
    let pools = sh.ipam.list_pools().await.context("list pools")?;
    let vlans = trunks(&pools);
    if vlans.is_empty() {
        tracing::warn!(bond = %cfg.bond, "no IP pools yet: the bond trunks every VLAN until one exists");
    }
    let outcome = ovs
        .ensure_bond(&cfg.bridge, &cfg.bond, &cfg.uplinks, cfg.bond_mode, &vlans)
        .await
        .with_context(|| format!("ensure bond {}", cfg.bond))?;
    if outcome != Converge::Unchanged {
        tracing::info!(bond = %cfg.bond, outcome = ?outcome, trunks = ?vlans, mode = %cfg.bond_mode, "bond converged");
    }
    Ok(())
}

/// Converges now, then on every pools change and every reconcile interval
/// (2 s after a failed pass).
pub async fn run(sh: Arc<Shared>) {
    let changed = Arc::new(Notify::new());
    let pools = Follow::prefix(sh.keys.pools_prefix()).keys_only();
    let mut follower = PoolsChanged {
        changed: changed.clone(),
        first: true,
    };
    let etcd = sh.etcd.clone();
    let stop = stopped(sh.shutdown.clone());
    let watcher = tokio::spawn(async move { follow(&etcd, &pools, &mut follower, stop).await });
    loop {
        let retry = match converge(&sh).await {
            Ok(()) => sh.cfg.reconcile_interval,
            Err(e) => {
                tracing::warn!(
                    error = %crate::chain(&e),
                    "bootstrap did not converge; retrying"
                );
                Duration::from_secs(2)
            }
        };
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(retry) => {}
            () = stopped(sh.shutdown.clone()) => break,
        }
    }
    watcher.abort();
}

/// Wakes the convergence loop when the pools change (and after a resync,
/// which may hide changes; the first full read is the start-up pass's).
struct PoolsChanged {
    changed: Arc<Notify>,
    first: bool,
}

impl Follower for PoolsChanged {
    type Error = std::convert::Infallible;

    async fn reset(&mut self, _: Snapshot) -> Result<(), Self::Error> {
        if !std::mem::take(&mut self.first) {
            self.changed.notify_one();
        }
        Ok(())
    }

    async fn apply(&mut self, events: &[Event]) -> Result<(), Self::Error> {
        tracing::info!(events = events.len(), "IP pools changed");
        self.changed.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, vlan: u16) -> leengine_ipam::Pool {
        leengine_ipam::Pool {
            name: name.into(),
            cidr: "10.0.0.0/22".parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            vlan,
            block_size: 16,
            excludes: vec![],
        }
    }

    #[test]
    fn trunks_are_sorted_unique_and_keep_untagged() {
        assert_eq!(
            trunks(&[pool("a", 300), pool("b", 100), pool("c", 300)]),
            [100, 300]
        );
        assert_eq!(trunks(&[pool("a", 0), pool("b", 7)]), [0, 7]);
        assert!(trunks(&[]).is_empty());
    }
}

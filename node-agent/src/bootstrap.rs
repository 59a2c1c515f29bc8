//! Node bootstrap through OVSDB: the bridge exists and the uplinks form the
//! bond, trunking the VLANs of every pool in etcd. Re-run on start, on any
//! change under the pools prefix, and periodically (drift repair).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use etcd_client::{WatchOptions, WatchStream};
use leengine_ovsdb::Converge;

use crate::agent::{stopped, Shared};

/// VLANs the bond must carry: every pool's VLAN (pools are always tagged,
/// docs/ipam.md "VLANs").
pub fn trunks(pools: &[leengine_ipam::Pool]) -> Vec<u16> {
    let mut v: Vec<u16> = pools.iter().map(|p| p.vlan.id()).collect();
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

async fn next(
    w: &mut Option<WatchStream>,
) -> Result<Option<etcd_client::WatchResponse>, etcd_client::Error> {
    match w {
        Some(w) => w.message().await,
        None => std::future::pending().await,
    }
}

/// Converges now, then on every pools change and every reconcile interval.
pub async fn run(sh: Arc<Shared>) {
    let prefix = sh.keys.pools_prefix();
    let mut watch: Option<WatchStream> = None;
    let mut etcd = sh.etcd.clone();
    loop {
        if let Err(e) = converge(&sh).await {
            tracing::warn!(
                error = %crate::chain(&e),
                "bootstrap did not converge; retrying"
            );
        }
        if watch.is_none() {
            match etcd
                .watch(prefix.clone(), Some(WatchOptions::new().with_prefix()))
                .await
            {
                Ok(w) => watch = Some(w),
                Err(e) => tracing::warn!(error = %e, "cannot watch pools; polling"),
            }
        }
        let retry = if watch.is_some() {
            sh.cfg.reconcile_interval
        } else {
            Duration::from_secs(2)
        };
        tokio::select! {
            msg = next(&mut watch) => match msg {
                Ok(Some(r)) if !r.events().is_empty() => {
                    tracing::info!(events = r.events().len(), "IP pools changed");
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    watch = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            _ = tokio::time::sleep(retry) => {}
            _ = stopped(sh.shutdown.clone()) => return,
        }
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
            vlan: leengine_ipam::Vlan::new(vlan).unwrap(),
            block_size: 16,
            excludes: vec![],
        }
    }

    #[test]
    fn trunks_are_sorted_unique() {
        assert_eq!(
            trunks(&[pool("a", 300), pool("b", 100), pool("c", 300)]),
            [100, 300]
        );
        assert_eq!(trunks(&[pool("a", 4094), pool("b", 1)]), [1, 4094]);
        assert!(trunks(&[]).is_empty());
    }
}

//! One active replica per Region: the holder of a leased record.
//!
//! A replica campaigns by creating `{prefix}/discovery/leader` under its
//! lease (a transaction that only succeeds while the key is absent), keeps
//! the lease alive, and is active until a keep-alive fails for a whole TTL
//! or etcd says the lease is gone. Every write the active replica makes
//! compares the leader key's create revision with its own ([`Term::fence`]),
//! so a replica that lost the lease without noticing cannot write. A
//! standby waits for the key to disappear (the holder resigned, or its
//! lease expired ~TTL after a crash) and campaigns at once.
//!
//! h-store is adding a shared leased-record/campaign helper to
//! `leengine-store`; this module is the seam to swap for it.

use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use tokio::sync::watch;

use crate::registry::Task;

/// A term as the active replica.
#[derive(Debug)]
pub struct Term {
    pub lease: i64,
    pub create_revision: i64,
    key: String,
    lost: watch::Receiver<bool>,
    _keeper: Task,
}

impl Term {
    /// The compare every write of this term carries.
    pub fn fence(&self) -> Compare {
        Compare::create_revision(self.key.as_str(), CompareOp::Equal, self.create_revision)
    }

    /// Resolves when the lease is gone or could not be renewed for a TTL.
    pub async fn lost(&self) {
        let mut rx = self.lost.clone();
        let _ = rx.wait_for(|lost| *lost).await;
    }

    /// Gives the record up at once (a clean shutdown hands over without
    /// waiting for the TTL).
    pub async fn resign(self, client: &mut Client) {
        if let Err(e) = client.lease_revoke(self.lease).await {
            tracing::warn!(error = %e, "could not revoke the leader lease; it expires by itself");
        }
    }
}

/// Campaigns until this replica holds the record.
pub async fn campaign(client: &mut Client, key: &str, id: &str, ttl: Duration) -> Term {
    loop {
        match try_once(client, key, id, ttl).await {
            Ok(Ok(term)) => return term,
            Ok(Err(holder_rev)) => wait_for_vacancy(client, key, holder_rev, ttl).await,
            Err(e) => {
                tracing::warn!(error = %e, "campaign failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// `Ok(Ok(term))` elected; `Ok(Err(rev))` someone holds it (header revision).
async fn try_once(
    client: &mut Client,
    key: &str,
    id: &str,
    ttl: Duration,
) -> Result<Result<Term, i64>, etcd_client::Error> {
    let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
    let lease = client.lease_grant(secs, None).await?.id();
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            id,
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(key, None)]);
    let resp = client.txn(txn).await?;
    let rev = resp.header().map_or(0, |h| h.revision());
    if !resp.succeeded() {
        let _ = client.lease_revoke(lease).await;
        return Ok(Err(rev));
    }
    let (tx, lost) = watch::channel(false);
    let keeper = Task::spawn(keep_alive(client.clone(), lease, ttl, tx));
    tracing::info!(id, lease, revision = rev, "elected: this replica is active");
    Ok(Ok(Term {
        lease,
        create_revision: rev,
        key: key.to_string(),
        lost,
        _keeper: keeper,
    }))
}

async fn keep_alive(mut client: Client, lease: i64, ttl: Duration, lost: watch::Sender<bool>) {
    let every = ttl / 3;
    let mut renewed = Instant::now();
    loop {
        let ok = match client.lease_keep_alive(lease).await {
            Ok((mut keeper, mut stream)) => loop {
                if keeper.keep_alive().await.is_err() {
                    break true;
                }
                // An answer must come within the interval (etcd gone
                // silent is a failed renewal, not a wait).
                match tokio::time::timeout(every, stream.message()).await {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => renewed = Instant::now(),
                    Ok(Ok(Some(_))) => break false,
                    _ => break true,
                }
                tokio::time::sleep(every).await;
            },
            Err(_) => true,
        };
        if !ok || renewed.elapsed() >= ttl {
            tracing::error!(lease, "leader lease lost; stepping down");
            lost.send_replace(true);
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Returns when the record is deleted (or after a TTL, to look again).
async fn wait_for_vacancy(client: &mut Client, key: &str, seen: i64, ttl: Duration) {
    let watch = async {
        let opts = WatchOptions::new().with_start_revision(seen + 1);
        let Ok(mut stream) = client.watch(key, Some(opts)).await else {
            return;
        };
        while let Ok(Some(resp)) = stream.message().await {
            if resp.canceled()
                || resp
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
            {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(ttl, watch).await;
}

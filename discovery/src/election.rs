//! One active replica per Region: the holder of the leased record
//! `{prefix}/discovery/leader` (`leengine_store::lease::campaign`: create it
//! while absent under our lease, keep the lease alive, lost when a
//! keep-alive is not answered in time or etcd says the lease is gone).
//!
//! Every write of the active replica carries [`Term::fence`]: the leader key
//! is still bound to this term's lease. A replica that lost its lease
//! without noticing (a pause longer than the TTL) cannot write, because the
//! key is gone or bound to the next holder's lease.

use std::time::Duration;

use etcd_client::{Client, Compare};
use leengine_store::lease::{self, LeasedRecord};

/// A term as the active replica.
#[derive(Debug)]
pub struct Term {
    rec: LeasedRecord,
}

impl Term {
    /// The compare every write of this term carries.
    pub fn fence(&self) -> Compare {
        leengine_store::record::leased_by(self.rec.key(), self.rec.lease().id())
    }

    /// Resolves when the lease is gone or could not be renewed in time.
    pub async fn lost(&self) {
        self.rec.lost().await;
    }

    /// Gives the record up at once (a clean shutdown hands over without
    /// waiting for the TTL).
    pub async fn resign(self) {
        if !self.rec.release().await {
            tracing::warn!("could not revoke the leader lease; it expires by itself");
        }
    }
}

/// Campaigns until this replica holds the record; etcd errors are retried.
pub async fn campaign(client: &Client, key: &str, id: &str, ttl: Duration) -> Term {
    loop {
        match lease::campaign(client, key, id.as_bytes().to_vec(), ttl).await {
            Ok(rec) => {
                tracing::info!(
                    id,
                    lease = rec.lease().id(),
                    "elected: this replica is active"
                );
                return Term { rec };
            }
            Err(e) => {
                tracing::warn!(error = %e, "campaign failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

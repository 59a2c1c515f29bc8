//! Publishes the agent's status at `/slb/{group}/agents/{host}` under a
//! lease: it is rewritten on every change and vanishes when the agent dies.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use leengine_store::keys::slb_agent;

use crate::shared::Shared;

const COALESCE: Duration = Duration::from_millis(200);

pub async fn run(shared: Arc<Shared>, mut client: Client, ttl: Duration) {
    loop {
        if let Err(e) = session(&shared, &mut client, ttl).await {
            tracing::warn!(error = %e, "status publishing interrupted; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn session(
    shared: &Shared,
    client: &mut Client,
    ttl: Duration,
) -> Result<(), etcd_client::Error> {
    let key = slb_agent(&shared.group, &shared.host);
    let ttl_secs = i64::try_from(ttl.as_secs().max(2)).unwrap_or(10);
    let lease = client.lease_grant(ttl_secs, None).await?.id();
    let (mut keeper, mut responses) = client.lease_keep_alive(lease).await?;
    let put = |client: &mut Client| {
        let body = serde_json::to_vec(&shared.status()).unwrap_or_default();
        let mut client = client.clone();
        let key = key.clone();
        async move {
            client
                .put(key, body, Some(PutOptions::new().with_lease(lease)))
                .await
                .map(drop)
        }
    };
    put(client).await?;
    let mut tick = tokio::time::interval(ttl / 3);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                keeper.keep_alive().await?;
                match responses.message().await? {
                    Some(r) if r.ttl() > 0 => {}
                    _ => return Err(etcd_client::Error::LeaseKeepAliveError("lease expired".into())),
                }
            }
            () = shared.report_changed.notified() => {
                // One write for a burst of reports (each peer change reports
                // twice, and every agent of the group writes).
                tokio::time::sleep(COALESCE).await;
                put(client).await?;
            }
        }
    }
}

//! Publishes the agent's status at `/slb/{group}/agents/{host}` under a
//! kept-alive lease (`leengine_store::lease`): it is rewritten on every
//! change and vanishes when the agent dies.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use leengine_store::keys::slb_agent;
use leengine_store::lease::{Registration, Source};

use crate::shared::Shared;

const COALESCE: Duration = Duration::from_millis(200);

/// Until `stop`, then the record is revoked.
pub async fn run(
    shared: Arc<Shared>,
    client: Client,
    ttl: Duration,
    stop: impl Future<Output = ()>,
) {
    let key = slb_agent(&shared.group, &shared.host);
    Registration::new(client, key, ttl, Status { shared })
        .run(None, stop)
        .await;
}

struct Status {
    shared: Arc<Shared>,
}

impl Source for Status {
    async fn value(&mut self) -> Vec<u8> {
        leengine_store::record::json(&self.shared.status())
    }

    async fn changed(&mut self) {
        self.shared.report_changed.notified().await;
        // One write for a burst of reports (each peer change reports
        // twice, and every agent of the group writes).
        tokio::time::sleep(COALESCE).await;
    }
}

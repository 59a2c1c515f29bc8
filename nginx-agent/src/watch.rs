//! Keeps [`Desired`](crate::state::Desired) in step with etcd: a full read,
//! then a watch from the revision after it. A broken stream resumes from the
//! last folded revision (no event lost); a compacted revision forces a new
//! full read.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions};
use leengine_store::keys::slb_domains_prefix;

use crate::shared::Shared;

pub async fn run(shared: Arc<Shared>, mut client: Client) {
    let mut need_sync = true;
    let mut backoff = Duration::from_millis(200);
    loop {
        match session(&shared, &mut client, &mut need_sync).await {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "etcd watch interrupted; nginx keeps its state");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn session(
    shared: &Shared,
    client: &mut Client,
    need_sync: &mut bool,
) -> Result<(), etcd_client::Error> {
    let prefix = slb_domains_prefix(&shared.group);
    if *need_sync {
        let resp = client
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let kvs: Vec<(String, Vec<u8>, i64)> = resp
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                    kv.mod_revision(),
                )
            })
            .collect();
        shared.desired().reset(
            &shared.group,
            kvs.iter().map(|(k, v, r)| (k.as_str(), v.as_slice(), *r)),
            revision,
        );
        *need_sync = false;
        tracing::info!(revision, keys = kvs.len(), "full sync");
        notify(shared);
    }
    let start = shared.desired().revision + 1;
    let mut stream = leengine_store::watch_prefix_from(client, &prefix, start).await?;
    while let Some(resp) = stream.message().await? {
        if resp.compact_revision() > 0 || resp.canceled() {
            tracing::warn!(
                compact_revision = resp.compact_revision(),
                reason = resp.cancel_reason(),
                "watch cancelled (history compacted?); resyncing"
            );
            *need_sync = true;
            return Ok(());
        }
        if resp.events().is_empty() {
            // A progress notification: every event up to its revision has
            // been delivered. A creation reply promises nothing.
            if !resp.created() {
                if let Some(h) = resp.header() {
                    let mut d = shared.desired();
                    d.revision = d.revision.max(h.revision());
                }
            }
            continue;
        }
        {
            let mut d = shared.desired();
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key());
                let value = match ev.event_type() {
                    EventType::Put => Some((kv.value(), kv.mod_revision())),
                    EventType::Delete => None,
                };
                if let Some((domain, change)) = d.apply(&shared.group, &key, value) {
                    tracing::info!(domain = %domain, change = ?change, revision = kv.mod_revision(), "etcd event");
                }
                d.revision = d.revision.max(kv.mod_revision());
            }
        }
        notify(shared);
    }
    Err(etcd_client::Error::WatchError("watch stream ended".into()))
}

fn notify(shared: &Shared) {
    shared.upstream_changed.notify_one();
    shared.config_changed.notify_one();
}

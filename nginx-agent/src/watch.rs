//! Keeps [`Desired`](crate::state::Desired) in step with etcd through the
//! shared snapshot-then-watch (`leengine_store::follow`): a full read, then
//! every change; a broken stream resumes from the last folded revision (no
//! event lost); a compacted revision forces a new full read.

use std::sync::Arc;

use etcd_client::{Client, Event, EventType};
use leengine_store::follow::{follow, Follow, Follower, Snapshot};
use leengine_store::keys::slb_domains_prefix;

use crate::shared::Shared;

pub async fn run(shared: Arc<Shared>, client: Client) {
    let what = Follow::prefix(slb_domains_prefix(&shared.group));
    follow(
        &client,
        &what,
        &mut Folder { shared },
        std::future::pending(),
    )
    .await;
}

struct Folder {
    shared: Arc<Shared>,
}

impl Follower for Folder {
    type Error = std::convert::Infallible;

    async fn reset(&mut self, snapshot: Snapshot) -> Result<(), Self::Error> {
        let shared = &self.shared;
        let kvs: Vec<(String, &[u8], i64)> = snapshot
            .kvs
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value(),
                    kv.mod_revision(),
                )
            })
            .collect();
        shared.desired().reset(
            &shared.group,
            kvs.iter().map(|(k, v, r)| (k.as_str(), *v, *r)),
            snapshot.revision,
        );
        tracing::info!(revision = snapshot.revision, keys = kvs.len(), "full sync");
        notify(shared);
        Ok(())
    }

    async fn apply(&mut self, events: &[Event]) -> Result<(), Self::Error> {
        let shared = &self.shared;
        {
            let mut d = shared.desired();
            for ev in events {
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
        Ok(())
    }

    /// Every event up to `revision` is folded in: the applied revision
    /// reported in the status may say so.
    fn progress(&mut self, revision: i64) {
        let mut d = self.shared.desired();
        d.revision = d.revision.max(revision);
    }
}

fn notify(shared: &Shared) {
    shared.upstream_changed.notify_one();
    shared.config_changed.notify_one();
}

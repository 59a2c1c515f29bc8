//! A prefix of etcd, followed with the shared snapshot-then-watch
//! (`leengine_store::follow`: resume after a broken stream, a full read
//! after a compaction). The caller's [`Folder`] sees a reset (the whole
//! prefix) and then single puts and deletes.

use std::convert::Infallible;

use etcd_client::{Client, Event, EventType};
use leengine_store::follow::{Follow, Follower, Snapshot};

pub trait Folder: Send {
    fn reset(&mut self, kvs: Vec<(String, Vec<u8>)>);
    fn put(&mut self, key: &str, value: &[u8]);
    fn delete(&mut self, key: &str);
}

/// Runs until aborted; etcd errors are retried.
pub async fn follow(client: Client, prefix: String, folder: impl Folder) {
    let what = Follow::prefix(prefix);
    let mut f = Folded(folder);
    leengine_store::follow::follow(&client, &what, &mut f, std::future::pending()).await;
}

struct Folded<F>(F);

impl<F: Folder> Follower for Folded<F> {
    type Error = Infallible;

    async fn reset(&mut self, s: Snapshot) -> Result<(), Infallible> {
        let kvs = s
            .kvs
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                )
            })
            .collect();
        self.0.reset(kvs);
        Ok(())
    }

    async fn apply(&mut self, events: &[Event]) -> Result<(), Infallible> {
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key());
            match ev.event_type() {
                EventType::Put => self.0.put(&key, kv.value()),
                EventType::Delete => self.0.delete(&key),
            }
        }
        Ok(())
    }
}

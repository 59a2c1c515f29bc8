//! A prefix of etcd, followed: a full read, then a watch from the revision
//! after it. A broken stream resumes from the last revision seen; a
//! compacted one reads everything again. The caller's [`Folder`] sees a
//! reset (the whole prefix) and then single puts and deletes.

use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions};

pub trait Folder: Send {
    fn reset(&mut self, kvs: Vec<(String, Vec<u8>)>);
    fn put(&mut self, key: &str, value: &[u8]);
    fn delete(&mut self, key: &str);
}

/// Runs until aborted; etcd errors are retried.
pub async fn follow(mut client: Client, prefix: String, mut folder: impl Folder) {
    let mut revision: Option<i64> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        match session(&mut client, &prefix, &mut revision, &mut folder).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(prefix = %prefix, error = %e, retry_in = ?backoff, "etcd watch interrupted");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn session(
    client: &mut Client,
    prefix: &str,
    revision: &mut Option<i64>,
    folder: &mut impl Folder,
) -> Result<(), etcd_client::Error> {
    let rev = match *revision {
        Some(r) => r,
        None => {
            let resp = client
                .get(prefix, Some(GetOptions::new().with_prefix()))
                .await?;
            let kvs = resp
                .kvs()
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        kv.value().to_vec(),
                    )
                })
                .collect();
            folder.reset(kvs);
            let r = resp.header().map_or(0, |h| h.revision());
            *revision = Some(r);
            r
        }
    };
    let mut stream = leengine_store::watch_prefix_from(client, prefix, rev + 1).await?;
    while let Some(resp) = stream.message().await? {
        if resp.compact_revision() > 0 || resp.canceled() {
            tracing::warn!(prefix = %prefix, "etcd watch cancelled (compacted?); reading again");
            *revision = None;
            return Ok(());
        }
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key());
            match ev.event_type() {
                EventType::Put => folder.put(&key, kv.value()),
                EventType::Delete => folder.delete(&key),
            }
            *revision = Some(kv.mod_revision());
        }
    }
    Err(etcd_client::Error::WatchError("watch stream ended".into()))
}

//! Snapshot-then-watch: hold what is under a prefix and follow every change.
//!
//! One behaviour everywhere ([`follow`]):
//! - first a full read of the prefix ([`Follower::reset`]), then a watch
//!   from the revision after it, so no change between the two is lost;
//! - a broken or ended stream is resumed from the revision after the last
//!   change delivered (progress notifications advance it too), after a
//!   pause growing from 200 ms to 5 s — no full read, no event lost;
//! - a watch etcd cancels — the revision to resume from was compacted away,
//!   or anything else — and a failed handler both mean *resync*: a new full
//!   read replaces what the follower held;
//! - optionally a resync every `resync_every` as well (drift repair, sweeps).

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, Event, GetOptions, KeyValue};

const FIRST_PAUSE: Duration = Duration::from_millis(200);
const LONGEST_PAUSE: Duration = Duration::from_secs(5);

/// Everything under the prefix at one revision.
#[derive(Debug)]
pub struct Snapshot {
    pub kvs: Vec<KeyValue>,
    pub revision: i64,
}

/// What to follow.
#[derive(Clone, Debug)]
pub struct Follow {
    prefix: String,
    keys_only: bool,
    resync_every: Option<Duration>,
    resume_after: Option<i64>,
}

impl Follow {
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            keys_only: false,
            resync_every: None,
            resume_after: None,
        }
    }

    /// Snapshots carry keys without values (followers that only need names).
    pub fn keys_only(mut self) -> Self {
        self.keys_only = true;
        self
    }

    /// A full read every `period` too, for followers that repair drift.
    pub fn resync_every(mut self, period: Duration) -> Self {
        self.resync_every = Some(period);
        self
    }

    /// The follower already holds the state at `revision` (read earlier or
    /// kept across a restart): start with a watch from the revision after
    /// it instead of a full read. If that revision was compacted, the first
    /// thing the follower sees is a resync.
    pub fn resume_after(mut self, revision: i64) -> Self {
        self.resume_after = Some(revision);
        self
    }
}

/// The side that holds the state. Errors are logged and cause a resync.
pub trait Follower: Send {
    type Error: std::fmt::Display + Send;
    /// Replace everything held with `snapshot`.
    fn reset(&mut self, snapshot: Snapshot)
        -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// The changes of one watch response, in revision order.
    fn apply(&mut self, events: &[Event]) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Every change up to `revision` has been delivered (progress notification).
    fn progress(&mut self, _revision: i64) {}
}

enum End {
    /// The stream broke: resume from the last revision.
    Broken(String),
    /// Read everything again.
    Resync(String),
    Stopped,
}

/// Follows `what` into `follower` until `stop` resolves.
pub async fn follow<F: Follower>(
    client: &Client,
    what: &Follow,
    follower: &mut F,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut last = what.resume_after;
    let mut pause = FIRST_PAUSE;
    loop {
        // Whether etcd and the handler worked this time: a resync after
        // progress is immediate, failures in a row back off.
        let mut progressed = false;
        let end = tokio::select! {
            end = session(client, what, follower, &mut last, &mut progressed) => end,
            () = &mut stop => End::Stopped,
        };
        if progressed {
            pause = FIRST_PAUSE;
        }
        match end {
            End::Stopped => return,
            End::Resync(why) => {
                tracing::warn!(prefix = %what.prefix, reason = %why, "resyncing");
                last = None;
                if progressed {
                    continue;
                }
            }
            End::Broken(why) => {
                tracing::warn!(prefix = %what.prefix, reason = %why, retry_in = ?pause, "etcd watch interrupted");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = &mut stop => return,
        }
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

async fn session<F: Follower>(
    client: &Client,
    what: &Follow,
    follower: &mut F,
    last: &mut Option<i64>,
    progressed: &mut bool,
) -> End {
    let from = match *last {
        Some(rev) => rev,
        None => {
            let snapshot = match read(client, what).await {
                Ok(s) => s,
                Err(e) => return End::Broken(format!("full read failed: {e}")),
            };
            let revision = snapshot.revision;
            let keys = snapshot.kvs.len();
            if let Err(e) = follower.reset(snapshot).await {
                return End::Resync(format!("handler failed on the full read: {e}"));
            }
            tracing::debug!(prefix = %what.prefix, revision, keys, "full read");
            *last = Some(revision);
            *progressed = true;
            revision
        }
    };
    let mut stream =
        match crate::watch_prefix_from(&mut client.clone(), &what.prefix, from + 1).await {
            Ok(s) => s,
            Err(e) => return End::Broken(format!("cannot watch: {e}")),
        };
    let mut resync = what
        .resync_every
        .map(|p| tokio::time::interval_at(tokio::time::Instant::now() + p, p));
    loop {
        let msg = tokio::select! {
            msg = stream.message() => msg,
            _ = tick(&mut resync) => return End::Resync("periodic".into()),
        };
        let resp = match msg {
            Ok(Some(resp)) => resp,
            Ok(None) => return End::Broken("watch stream ended".into()),
            Err(e) => return End::Broken(e.to_string()),
        };
        if resp.compact_revision() > 0 || resp.canceled() {
            return End::Resync(format!(
                "watch cancelled (compacted at {}): {}",
                resp.compact_revision(),
                resp.cancel_reason()
            ));
        }
        if resp.events().is_empty() {
            // A progress notification vouches for every revision up to its
            // header's; a creation reply promises nothing.
            if !resp.created() {
                if let Some(h) = resp.header() {
                    *last = Some(last.unwrap_or(0).max(h.revision()));
                    follower.progress(h.revision());
                }
            }
            *progressed = true;
            continue;
        }
        if let Err(e) = follower.apply(resp.events()).await {
            return End::Resync(format!("handler failed: {e}"));
        }
        let newest = resp
            .events()
            .iter()
            .filter_map(|e| e.kv())
            .map(|kv| kv.mod_revision())
            .max();
        *last = Some(last.unwrap_or(0).max(newest.unwrap_or(0)));
    }
}

async fn tick(t: &mut Option<tokio::time::Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn read(client: &Client, what: &Follow) -> Result<Snapshot, etcd_client::Error> {
    let mut opts = GetOptions::new().with_prefix();
    if what.keys_only {
        opts = opts.with_keys_only();
    }
    let resp = client
        .kv_client()
        .get(what.prefix.as_str(), Some(opts))
        .await?;
    Ok(Snapshot {
        revision: resp.header().map_or(0, |h| h.revision()),
        kvs: resp.kvs().to_vec(),
    })
}

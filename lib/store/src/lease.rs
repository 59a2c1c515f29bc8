//! Records that live as long as their writer: a key under a lease of its
//! own, kept alive in the background, rewritten on change, revoked on a
//! clean stop — agent registrations, status records, leader keys.
//!
//! One behaviour everywhere:
//! - the TTL is whole seconds, at least [`MIN_TTL`];
//! - a keep-alive goes out every TTL/3 and must be answered within TTL/3;
//!   the first one that fails, goes unanswered or reports the lease expired
//!   makes the lease *lost* ([`Lease::lost`]): from then on the holder must
//!   not act as the key's owner (a leader steps down);
//! - a registration ([`Registration::run`]) re-registers
//!   [`REREGISTER_AFTER`] after a loss with a fresh lease, overwriting its key
//!   (no delete in between, so watchers see no flap);
//! - a clean stop revokes the lease: its keys go at once instead of a TTL
//!   later. Dropping a [`Lease`] stops its keep-alives without revoking.
//!
//! Leader election: [`LeasedRecord::create`] is "create the key if absent,
//! under my lease" in one transaction; [`campaign`] waits for the key to
//! be free and takes it; [`LeasedRecord::lost`] tells the winner when it no
//! longer holds it. For example:
//!
//! ```no_run
//! # async fn leader(client: etcd_client::Client) -> Result<(), etcd_client::Error> {
//! use std::time::Duration;
//! let me = leengine_store::lease::campaign(&client, "/leengine/leader", b"core-1".to_vec(), Duration::from_secs(10)).await?;
//! tokio::select! {
//!     () = me.lost() => { /* step down: another process may lead now */ }
//!     () = async { /* lead */ } => {}
//! }
//! me.release().await; // resign: the next campaigner wins at once
//! # Ok(()) }
//! ```

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, EventType, PutOptions, WatchOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::record::{self, Commit};

/// Shortest lease: a keep-alive every TTL/3 needs a TTL of a few seconds.
pub const MIN_TTL: Duration = Duration::from_secs(2);
/// Pause before registering again after a loss (or a failed grant).
pub const REREGISTER_AFTER: Duration = Duration::from_secs(1);

/// A lease granted to one holder and kept alive in the background until
/// it is revoked, lost or dropped.
pub struct Lease {
    client: Client,
    id: i64,
    ttl: Duration,
    lost: watch::Receiver<bool>,
    keeper: JoinHandle<()>,
}

impl Lease {
    pub async fn grant(client: &Client, ttl: Duration) -> Result<Lease, etcd_client::Error> {
        let secs = ttl.as_secs().max(MIN_TTL.as_secs());
        let ttl = Duration::from_secs(secs);
        let id = client
            .lease_client()
            .grant(i64::try_from(secs).unwrap_or(i64::MAX), None)
            .await?
            .id();
        let (tx, lost) = watch::channel(false);
        let keeper = tokio::spawn(keep_alive(client.clone(), id, ttl, tx));
        Ok(Lease {
            client: client.clone(),
            id,
            ttl,
            lost,
            keeper,
        })
    }

    pub fn id(&self) -> i64 {
        self.id
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves once the lease is lost (never, while it is kept alive).
    pub async fn lost(&self) {
        let mut rx = self.lost.clone();
        // An error means the keeper is gone, which only happens once lost.
        let _ = rx.wait_for(|lost| *lost).await;
    }

    /// Stops the keep-alives and revokes the lease: every key under it is
    /// deleted now (`true`). A failure is logged; the keys then expire with
    /// the TTL.
    pub async fn revoke(self) -> bool {
        self.keeper.abort();
        match self.client.lease_client().revoke(self.id).await {
            Ok(_) => {
                tracing::debug!(lease = self.id, "lease revoked");
                true
            }
            Err(e) => {
                tracing::warn!(lease = self.id, error = %e, "cannot revoke lease; its keys expire with its TTL");
                false
            }
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.id)
            .field("ttl", &self.ttl)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

async fn keep_alive(client: Client, id: i64, ttl: Duration, lost: watch::Sender<bool>) {
    let why = match keep_alive_until_lost(&client, id, ttl).await {
        Ok(()) => "lease expired".to_string(),
        Err(e) => e,
    };
    tracing::warn!(lease = id, reason = %why, "lease lost");
    let _ = lost.send(true);
}

/// Returns when etcd says the lease expired (`Ok`) or a keep-alive failed.
async fn keep_alive_until_lost(client: &Client, id: i64, ttl: Duration) -> Result<(), String> {
    let (mut keeper, mut answers) = client
        .lease_client()
        .keep_alive(id)
        .await
        .map_err(|e| format!("cannot open keep-alive: {e}"))?;
    let mut tick = tokio::time::interval(ttl / 3);
    loop {
        tick.tick().await;
        let answer = async {
            keeper.keep_alive().await?;
            answers.message().await
        };
        match tokio::time::timeout(ttl / 3, answer).await {
            Ok(Ok(Some(a))) if a.ttl() > 0 => {}
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => return Err(format!("keep-alive failed: {e}")),
            Err(_) => return Err("keep-alive unanswered".to_string()),
        }
    }
}

/// A record at `key` bound to a lease of its own.
#[derive(Debug)]
pub struct LeasedRecord {
    key: String,
    lease: Lease,
}

impl LeasedRecord {
    /// Grants a lease and writes `value` under it, replacing whatever the
    /// key held (a registration: the key is this holder's by name).
    pub async fn put(
        client: &Client,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<LeasedRecord, etcd_client::Error> {
        let lease = Lease::grant(client, ttl).await?;
        let opts = PutOptions::new().with_lease(lease.id);
        client.kv_client().put(key, value, Some(opts)).await?;
        Ok(LeasedRecord {
            key: key.to_string(),
            lease,
        })
    }

    /// Grants a lease and creates `key` = `value` under it if the key is
    /// absent (a campaign). `Ok(None)` when another holder has it; the
    /// unused lease is revoked.
    pub async fn create(
        client: &Client,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<Option<LeasedRecord>, etcd_client::Error> {
        Ok(Self::try_create(client, key, value, ttl).await?.ok())
    }

    /// [`create`](Self::create), telling on a loss the revision the key was
    /// seen held at.
    async fn try_create(
        client: &Client,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<Result<LeasedRecord, i64>, etcd_client::Error> {
        let lease = Lease::grant(client, ttl).await?;
        let put = etcd_client::TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease.id)));
        let outcome = record::commit_else(
            client,
            vec![record::absent(key)],
            vec![put],
            vec![record::get(key)],
        )
        .await;
        match outcome {
            Ok(Ok(_)) => Ok(Ok(LeasedRecord {
                key: key.to_string(),
                lease,
            })),
            Ok(Err(held)) => {
                let _unused_lease_gone = lease.revoke().await;
                Ok(Err(held
                    .first()
                    .and_then(|g| g.header())
                    .map_or(0, |h| h.revision())))
            }
            Err(e) => {
                let _unused_lease_gone = lease.revoke().await;
                Err(e)
            }
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Rewrites the value, on the condition that the key is still under
    /// this record's lease: `Conflict` means it is not (deleted, or taken by
    /// someone else) and the holder should treat it as lost.
    pub async fn update(
        &self,
        client: &Client,
        value: Vec<u8>,
    ) -> Result<Commit, etcd_client::Error> {
        let put = etcd_client::TxnOp::put(
            self.key.as_str(),
            value,
            Some(PutOptions::new().with_lease(self.lease.id)),
        );
        record::commit(
            client,
            vec![record::leased_by(self.key.as_str(), self.lease.id)],
            vec![put],
        )
        .await
    }

    /// Resolves when the lease is lost: the key may be gone or another's.
    pub async fn lost(&self) {
        self.lease.lost().await
    }

    /// Revokes the lease: the key is deleted now (clean stop, resignation);
    /// `false` if etcd could not be told (the key then expires with the TTL).
    pub async fn release(self) -> bool {
        self.lease.revoke().await
    }
}

/// Waits until `key` is free and takes it under a lease of its own (leader
/// election). Losers watch the key and try again when it is deleted; a
/// failed watch falls back to trying again every TTL.
pub async fn campaign(
    client: &Client,
    key: &str,
    value: Vec<u8>,
    ttl: Duration,
) -> Result<LeasedRecord, etcd_client::Error> {
    loop {
        match LeasedRecord::try_create(client, key, value.clone(), ttl).await? {
            Ok(won) => return Ok(won),
            Err(seen_at) => wait_deleted(client, key, seen_at, ttl.max(MIN_TTL)).await,
        }
    }
}

/// Returns when `key` is deleted after `revision`, or after `patience`.
async fn wait_deleted(client: &Client, key: &str, revision: i64, patience: Duration) {
    let opts = WatchOptions::new().with_start_revision(revision + 1);
    let deleted = async {
        let mut stream = client.watch_client().watch(key, Some(opts)).await?;
        while let Some(resp) = stream.message().await? {
            if resp.canceled()
                || resp
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
            {
                break;
            }
        }
        Ok::<(), etcd_client::Error>(())
    };
    let _ = tokio::time::timeout(patience, deleted).await;
}

/// What a [`Registration`] publishes.
pub trait Source: Send {
    /// The record's value now; asked at every (re)registration and after
    /// every [`changed`](Source::changed).
    fn value(&mut self) -> impl Future<Output = Vec<u8>> + Send;
    /// Resolves when the value should be written again.
    fn changed(&mut self) -> impl Future<Output = ()> + Send;
}

/// A component's record under its own kept-alive lease, for as long as
/// the component runs (see the module's rules).
pub struct Registration<S> {
    client: Client,
    key: String,
    ttl: Duration,
    source: S,
}

impl<S> std::fmt::Debug for Registration<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.key)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<S: Source> Registration<S> {
    pub fn new(client: Client, key: String, ttl: Duration, source: S) -> Self {
        Self {
            client,
            key,
            ttl,
            source,
        }
    }

    /// Registers once (for components that refuse to start unregistered).
    pub async fn register(&mut self) -> Result<LeasedRecord, etcd_client::Error> {
        let value = self.source.value().await;
        let rec = LeasedRecord::put(&self.client, &self.key, value, self.ttl).await?;
        tracing::info!(key = %self.key, lease = rec.lease.id, ttl = ?rec.lease.ttl, "registered");
        Ok(rec)
    }

    /// Keeps the record (`held`, or a new registration) alive and current
    /// until `stop` resolves, then revokes it.
    pub async fn run(mut self, held: Option<LeasedRecord>, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut held = held;
        loop {
            let rec = match held.take() {
                Some(rec) => rec,
                None => match self.register().await {
                    Ok(rec) => rec,
                    Err(e) => {
                        tracing::warn!(key = %self.key, error = %e, "cannot register; retrying");
                        if pause_or_stop(REREGISTER_AFTER, &mut stop).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            tokio::select! {
                () = self.hold(&rec) => {
                    tracing::warn!(key = %self.key, lease = rec.lease.id, "registration lost; registering again");
                    drop(rec);
                    if pause_or_stop(REREGISTER_AFTER, &mut stop).await {
                        return;
                    }
                }
                () = &mut stop => {
                    let lease = rec.lease.id;
                    if rec.release().await {
                        tracing::info!(key = %self.key, lease, "registration revoked");
                    }
                    return;
                }
            }
        }
    }

    /// Rewrites the record on every change; returns when it is lost.
    async fn hold(&mut self, rec: &LeasedRecord) {
        loop {
            tokio::select! {
                () = rec.lost() => return,
                () = self.source.changed() => {
                    let value = self.source.value().await;
                    match rec.update(&self.client, value).await {
                        Ok(Commit::Applied { .. }) => {}
                        Ok(Commit::Conflict) => {
                            tracing::warn!(key = %self.key, "registration key is gone or not ours");
                            return;
                        }
                        Err(e) => tracing::warn!(key = %self.key, error = %e, "cannot rewrite registration"),
                    }
                }
            }
        }
    }
}

/// True when `stop` came first.
async fn pause_or_stop(
    d: Duration,
    stop: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => false,
        () = stop.as_mut() => true,
    }
}

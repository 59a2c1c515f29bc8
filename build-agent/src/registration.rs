//! The host's registration key under a kept-alive lease. If the agent or
//! the host dies, keep-alives stop and etcd deletes the key within the TTL;
//! core sees the delete and moves the host's unfinished tasks.

use std::time::Duration;

use etcd_client::PutOptions;
use leengine_build::BuilderInfo;
use tokio::sync::watch;

#[derive(Clone)]
pub struct Registration {
    etcd: etcd_client::Client,
    key: String,
    info: BuilderInfo,
    ttl: Duration,
    lease: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

/// By hand: the etcd client has no `Debug`.
impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.key)
            .field("info", &self.info)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Registration {
    pub fn new(etcd: etcd_client::Client, key: String, info: BuilderInfo, ttl: Duration) -> Self {
        Self {
            etcd,
            key,
            info,
            ttl,
            lease: Default::default(),
        }
    }

    /// Grants a fresh lease and writes the record under it.
    pub async fn register(&self) -> Result<(), etcd_client::Error> {
        let mut etcd = self.etcd.clone();
        let lease = etcd
            .lease_grant(i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX), None)
            .await?
            .id();
        self.lease.store(lease, std::sync::atomic::Ordering::SeqCst);
        self.put(&self.info).await
    }

    async fn put(&self, info: &BuilderInfo) -> Result<(), etcd_client::Error> {
        let lease = self.lease.load(std::sync::atomic::Ordering::SeqCst);
        let value = serde_json::to_vec(info).expect("builder info serialises");
        self.etcd
            .clone()
            .put(
                self.key.as_str(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
        Ok(())
    }

    /// Keeps the lease alive and republishes the running count; re-registers
    /// with a new lease if the old one was lost (etcd outage longer than the TTL).
    pub async fn keep(self, mut running: watch::Receiver<u32>) {
        let mut info = self.info.clone();
        loop {
            match self.keep_lease(&mut info, &mut running).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "registration lost; registering again"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            info.running = *running.borrow();
            if let Err(e) = self.register().await {
                tracing::warn!(error = %e, "cannot register");
            } else if let Err(e) = self.put(&info).await {
                tracing::warn!(error = %e, "cannot publish builder record");
            }
        }
    }

    async fn keep_lease(
        &self,
        info: &mut BuilderInfo,
        running: &mut watch::Receiver<u32>,
    ) -> Result<(), etcd_client::Error> {
        let lease = self.lease.load(std::sync::atomic::Ordering::SeqCst);
        let mut etcd = self.etcd.clone();
        let (mut keeper, mut answers) = etcd.lease_keep_alive(lease).await?;
        let mut tick = tokio::time::interval(self.ttl / 3);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    keeper.keep_alive().await?;
                    match answers.message().await? {
                        Some(a) if a.ttl() > 0 => {}
                        _ => return Err(etcd_client::Error::LeaseKeepAliveError(format!("lease {lease:x} expired"))),
                    }
                }
                changed = running.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    info.running = *running.borrow();
                    self.put(info).await?;
                }
            }
        }
    }

    /// Deletes the registration at once (clean shutdown).
    pub async fn revoke(&self) {
        let lease = self.lease.load(std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = self.etcd.clone().lease_revoke(lease).await {
            tracing::warn!(error = %e, "cannot revoke lease; the key expires with its TTL");
        }
    }
}

//! Wiring: connections, start-up reaping, the task watch and shutdown.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use etcd_client::{EventType, GetOptions};
use leengine_build::validate::Policy;
use leengine_build::{BuildTask, BuilderInfo};
use leengine_store::keys::BuilderKey;
use leengine_store::Keys;
use tokio::sync::{watch, Semaphore};

use crate::registration::Registration;

/// What the agent is started with (from the flags: `crate::cli::Args`).
#[derive(Debug)]
pub struct Settings {
    pub id: String,
    pub etcd: leengine_store::EtcdConfig,
    /// Docker Engine API address.
    pub docker: String,
    pub work_dir: PathBuf,
    pub cache_dir: PathBuf,
    /// Builds run at once.
    pub capacity: u32,
    /// Registration lease TTL.
    pub ttl: Duration,
    pub labels: BTreeMap<String, String>,
    pub policy: Policy,
    pub compile_network: String,
    pub limits: crate::docker::Limits,
    pub git_credentials_dir: PathBuf,
    pub stage_timeout: Duration,
    pub log_retention: Duration,
}

/// Everything a build needs from the host; shared by all runs.
pub struct Agent {
    pub id: String,
    pub etcd: etcd_client::Client,
    pub keys: Keys,
    pub docker: bollard::Docker,
    pub work_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub compile_network: String,
    pub limits: crate::docker::Limits,
    /// The core's policy again: a task is checked before anything of it
    /// reaches git, Docker or a path.
    pub policy: Policy,
    pub git_credentials_dir: PathBuf,
    pub stage_timeout: Duration,
    log_retention: Duration,
    ttl: Duration,
    info: BuilderInfo,
    slots: Arc<Semaphore>,
    /// Builds holding a slot; published in the registration.
    running: watch::Sender<u32>,
    /// Maven's local repository tolerates one writer: builds of one config
    /// on this host take its lock for the compile stage.
    cache_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Task key → cancel switch of the build running it.
    inflight: Mutex<HashMap<String, watch::Sender<bool>>>,
}

/// By hand: the etcd client has no `Debug`.
impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("id", &self.id)
            .field("keys", &self.keys)
            .field("work_dir", &self.work_dir)
            .field("cache_dir", &self.cache_dir)
            .field("compile_network", &self.compile_network)
            .field("limits", &self.limits)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Agent {
    pub async fn start(s: Settings) -> anyhow::Result<Arc<Self>> {
        let etcd = leengine_store::connect(&s.etcd).await?;
        let docker = crate::docker::connect(&s.docker).await?;
        for dir in [&s.work_dir, &s.cache_dir] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let info = BuilderInfo {
            id: s.id.clone(),
            capacity: s.capacity,
            running: 0,
            labels: s.labels,
            started_at: chrono::Utc::now(),
        };
        let agent = Arc::new(Self {
            id: s.id,
            etcd,
            keys: s.etcd.keys(),
            docker,
            work_dir: s.work_dir,
            cache_dir: s.cache_dir,
            compile_network: s.compile_network,
            limits: s.limits,
            policy: s.policy,
            git_credentials_dir: s.git_credentials_dir,
            stage_timeout: s.stage_timeout,
            log_retention: s.log_retention,
            ttl: s.ttl,
            info,
            slots: Arc::new(Semaphore::new(s.capacity as usize)),
            running: watch::channel(0).0,
            cache_locks: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
        });
        agent.reap().await;
        Ok(agent)
    }

    /// A previous incarnation may have died mid-build: its containers and
    /// checkouts are ours to remove (its tasks are re-read and rerun).
    async fn reap(&self) {
        crate::docker::remove_builder_containers(&self.docker, &self.id).await;
        let runs = self.runs_dir();
        if runs.exists() {
            if let Err(e) = std::fs::remove_dir_all(&runs) {
                tracing::warn!(dir = %runs.display(), error = %e, "cannot remove old checkouts");
            }
        }
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.work_dir.join("runs")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.work_dir.join("logs")
    }

    pub fn cache_lock(&self, config: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.cache_locks
            .lock()
            .expect("cache lock map poisoned")
            .entry(config.to_string())
            .or_default()
            .clone()
    }

    pub async fn run(self: Arc<Self>) -> anyhow::Result<()> {
        let mut shutdown = leengine_cli::Shutdown::install()?;
        let reg = Registration::new(
            self.etcd.clone(),
            self.keys.builder(&self.id),
            self.info.clone(),
            self.ttl,
        );
        reg.register().await.context("cannot register")?;
        tracing::info!(builder = %self.id, capacity = self.info.capacity, "registered");
        let keepalive = tokio::spawn(reg.clone().keep(self.running.subscribe()));
        let retention = tokio::spawn(crate::retention::sweep_forever(
            self.logs_dir(),
            self.log_retention,
        ));
        let tasks = tokio::spawn(self.clone().watch_tasks_forever());
        shutdown.recv().await;
        tracing::info!(builder = %self.id, "stopping; running builds move to other hosts");
        tasks.abort();
        keepalive.abort();
        retention.abort();
        reg.revoke().await;
        Ok(())
    }

    async fn watch_tasks_forever(self: Arc<Self>) {
        loop {
            if let Err(e) = self.clone().watch_tasks().await {
                tracing::warn!(error = %e, "task watch failed; re-reading tasks");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Full read, then watch from the revision after it: no task is missed
    /// between the two.
    async fn watch_tasks(self: Arc<Self>) -> Result<(), etcd_client::Error> {
        let mut etcd = self.etcd.clone();
        let prefix = self.keys.builder_tasks_prefix(&self.id);
        let resp = etcd
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        for kv in resp.kvs() {
            self.clone().on_task(kv.key_str()?, kv.value());
        }
        let mut stream = leengine_store::watch_prefix_from(&mut etcd, &prefix, rev + 1).await?;
        while let Some(resp) = stream.message().await? {
            if resp.canceled() {
                return Ok(());
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                match ev.event_type() {
                    EventType::Put => self.clone().on_task(kv.key_str()?, kv.value()),
                    EventType::Delete => self.cancel(kv.key_str()?),
                }
            }
        }
        Ok(())
    }

    fn on_task(self: Arc<Self>, key: &str, value: &[u8]) {
        if !matches!(self.keys.parse_builder_key(key), Some(BuilderKey::Task { builder, .. }) if builder == self.id)
        {
            return;
        }
        let task: BuildTask = match serde_json::from_slice(value) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(key, error = %e, "undecodable task ignored");
                return;
            }
        };
        if let Err(e) = task.check(&self.policy) {
            tracing::error!(key, error = %e, "task refused");
            tokio::spawn(crate::runner::refuse(self, key.to_string(), task, e));
            return;
        }
        let (cancel_tx, cancel_rx) = watch::channel(false);
        {
            let mut inflight = self.inflight.lock().expect("inflight map poisoned");
            if inflight.contains_key(key) {
                return;
            }
            inflight.insert(key.to_string(), cancel_tx);
        }
        let key = key.to_string();
        tokio::spawn(async move {
            let permit = self.slots.clone().acquire_owned().await;
            self.running.send_modify(|n| *n += 1);
            crate::runner::run(&self, &key, task, cancel_rx).await;
            self.running.send_modify(|n| *n -= 1);
            drop(permit);
            self.inflight
                .lock()
                .expect("inflight map poisoned")
                .remove(&key);
        });
    }

    /// The task key vanished (re-dispatched elsewhere or config deleted).
    fn cancel(&self, key: &str) {
        if let Some(tx) = self
            .inflight
            .lock()
            .expect("inflight map poisoned")
            .get(key)
        {
            let _ = tx.send(true);
        }
    }
}

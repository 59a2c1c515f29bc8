//! Wiring: connections, start-up reaping, the task watch and shutdown.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use etcd_client::{Event, EventType};
use leengine_build::validate::Policy;
use leengine_build::{BuildTask, BuilderInfo};
use leengine_store::follow::{follow, Follow, Follower, Snapshot};
use leengine_store::keys::BuilderKey;
use leengine_store::Keys;
use tokio::sync::{watch, Semaphore};

use crate::registration::Running;
use crate::Args;
use leengine_store::lease::Registration;

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

impl Agent {
    pub async fn start(args: &Args) -> anyhow::Result<Arc<Self>> {
        let policy = Policy::new(Some(args.registry.clone()), &args.git_hosts)?;
        let mut cfg = args.etcd_auth.config(args.etcd.clone());
        cfg.prefix = Some(args.prefix.clone());
        let etcd = leengine_store::connect(&cfg).await?;
        let docker = crate::docker::connect(&args.docker).await?;
        for dir in [&args.work_dir, &args.cache_dir] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let info = BuilderInfo {
            id: args.id.clone(),
            capacity: args.capacity,
            running: 0,
            labels: args.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
            started_at: chrono::Utc::now(),
        };
        let agent = Arc::new(Self {
            id: args.id.clone(),
            etcd,
            keys: cfg.keys(),
            docker,
            work_dir: args.work_dir.clone(),
            cache_dir: args.cache_dir.clone(),
            compile_network: args.compile_network.clone(),
            limits: crate::docker::Limits {
                nano_cpus: (args.cpus * 1e9) as i64,
                memory: args.memory,
                pids: args.pids_limit,
            },
            policy,
            git_credentials_dir: args.git_credentials_dir.clone(),
            stage_timeout: args.stage_timeout,
            log_retention: args.log_retention,
            ttl: args.ttl,
            info,
            slots: Arc::new(Semaphore::new(args.capacity as usize)),
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
        let mut reg = Registration::new(
            self.etcd.clone(),
            self.keys.builder(&self.id),
            self.ttl,
            Running::new(self.info.clone(), self.running.subscribe()),
        );
        let held = reg.register().await.context("cannot register")?;
        tracing::info!(builder = %self.id, capacity = self.info.capacity, "registered");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let keepalive = tokio::spawn(reg.run(Some(held), async {
            let _ = stopped.await;
        }));
        let retention = tokio::spawn(crate::retention::sweep_forever(
            self.logs_dir(),
            self.log_retention,
        ));
        let tasks = tokio::spawn(self.clone().watch_tasks_forever());
        shutdown_signal().await;
        tracing::info!(builder = %self.id, "stopping; running builds move to other hosts");
        tasks.abort();
        retention.abort();
        // Revokes the registration: the key goes now, not a TTL later.
        let _ = stop.send(());
        let _ = keepalive.await;
        Ok(())
    }

    /// Every task of this host, through the shared snapshot-then-watch: a
    /// full read, then each change; no task is missed between the two.
    async fn watch_tasks_forever(self: Arc<Self>) {
        let what = Follow::prefix(self.keys.builder_tasks_prefix(&self.id));
        let etcd = self.etcd.clone();
        follow(
            &etcd,
            &what,
            &mut Tasks { agent: self },
            std::future::pending(),
        )
        .await;
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

struct Tasks {
    agent: Arc<Agent>,
}

impl Follower for Tasks {
    type Error = etcd_client::Error;

    /// A task already running is left alone (`on_task` skips it). A full
    /// read only adds: a task deleted while its delete event was compacted
    /// away keeps running until its run's compare refuses its next report.
    async fn reset(&mut self, snapshot: Snapshot) -> Result<(), Self::Error> {
        for kv in &snapshot.kvs {
            self.agent.clone().on_task(kv.key_str()?, kv.value());
        }
        Ok(())
    }

    async fn apply(&mut self, events: &[Event]) -> Result<(), Self::Error> {
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            match ev.event_type() {
                EventType::Put => self.agent.clone().on_task(kv.key_str()?, kv.value()),
                EventType::Delete => self.agent.cancel(kv.key_str()?),
            }
        }
        Ok(())
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

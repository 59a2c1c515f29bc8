//! Advancing a run record and keeping its log.
//!
//! Every write to the run is a compare-and-swap on its mod revision, and is
//! refused when the run no longer names this builder and attempt: after a
//! re-dispatch the old builder must not overwrite the new one's progress.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use leengine_build::{BoundedLog, BuildRun, BuildTask};
use leengine_store::record;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The run was moved to another builder or finished.
    #[error("run {0} is no longer this builder's")]
    Lost(String),
    /// The run record is gone (its config was deleted).
    #[error("run {0} no longer exists")]
    Gone(String),
    /// etcd kept failing.
    #[error("cannot update run {run}: {source}")]
    Etcd {
        run: String,
        #[source]
        source: etcd_client::Error,
    },
}

/// Full log on disk, bounded tail for etcd. Cloned into every stage.
#[derive(Clone)]
pub struct LogSink {
    inner: Arc<Mutex<(Option<std::fs::File>, BoundedLog)>>,
    lines: Arc<std::sync::atomic::AtomicU64>,
}

impl LogSink {
    pub fn open(path: PathBuf) -> Self {
        let file = path
            .parent()
            .map(std::fs::create_dir_all)
            .transpose()
            .and_then(|_| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
            })
            .map_err(|e| tracing::warn!(path = %path.display(), error = %e, "full log not kept"))
            .ok();
        Self {
            inner: Arc::new(Mutex::new((
                file,
                BoundedLog::new(leengine_build::log::DEFAULT_LOG_TAIL_BYTES),
            ))),
            lines: Default::default(),
        }
    }

    /// Appends text (possibly several lines) to both logs, with URL
    /// credentials redacted (git echoes remote URLs).
    pub fn write(&self, text: &str) {
        let text = leengine_build::redact_credentials(text);
        let mut g = self.inner.lock().expect("log poisoned");
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if let Some(f) = g.0.as_mut() {
                let _ = writeln!(f, "{} {line}", Utc::now().format("%H:%M:%S%.3f"));
            }
            g.1.push_line(line);
            self.lines
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn lines_written(&self) -> u64 {
        self.lines.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Puts `earlier` (the log the run already had, e.g. core's note about a
    /// re-dispatch) in front of what this attempt logged so far.
    fn seed(&self, earlier: &str) {
        let mut g = self.inner.lock().expect("log poisoned");
        let mut log = BoundedLog::new(leengine_build::log::DEFAULT_LOG_TAIL_BYTES);
        for line in earlier.lines().chain(g.1.text().lines()) {
            log.push_line(line);
        }
        g.1 = log;
    }

    fn tail(&self) -> (String, u64) {
        let g = self.inner.lock().expect("log poisoned");
        (g.1.text().to_string(), g.1.truncated())
    }
}

pub struct Reporter {
    etcd: etcd_client::Client,
    run_key: String,
    task_key: String,
    builder: String,
    attempt: u32,
    pub log: LogSink,
    seeded: std::sync::atomic::AtomicBool,
}

impl Reporter {
    pub fn new(agent: &crate::agent::Agent, task_key: &str, task: &BuildTask) -> Self {
        let log = LogSink::open(
            agent
                .logs_dir()
                .join(&task.config)
                .join(format!("{}-{}.log", task.run, task.attempt)),
        );
        Self {
            etcd: agent.etcd.clone(),
            run_key: agent.keys.build_run(&task.config, &task.run),
            task_key: task_key.to_string(),
            builder: agent.id.clone(),
            attempt: task.attempt,
            log,
            seeded: Default::default(),
        }
    }

    /// Applies `f` to the run; with `finish`, also deletes the task key in
    /// the same transaction.
    pub async fn update(
        &self,
        finish: bool,
        f: impl Fn(&mut BuildRun),
    ) -> Result<BuildRun, ReportError> {
        let mut last_err = None;
        for attempt in 0..8u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
            }
            match self.try_update(finish, &f).await {
                Ok(Some(run)) => return Ok(run),
                Ok(None) => continue, // lost a compare race: re-read
                Err(e @ (ReportError::Lost(_) | ReportError::Gone(_))) => return Err(e),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| ReportError::Lost(self.run_key.clone())))
    }

    async fn try_update(
        &self,
        finish: bool,
        f: &impl Fn(&mut BuildRun),
    ) -> Result<Option<BuildRun>, ReportError> {
        let etcd_err = |source| ReportError::Etcd {
            run: self.run_key.clone(),
            source,
        };
        let mut etcd = self.etcd.clone();
        let resp = etcd
            .get(self.run_key.as_str(), None)
            .await
            .map_err(etcd_err)?;
        let lost = || ReportError::Lost(self.run_key.clone());
        let kv = resp
            .kvs()
            .first()
            .ok_or_else(|| ReportError::Gone(self.run_key.clone()))?;
        let mut run: BuildRun = serde_json::from_slice(kv.value()).map_err(|_| lost())?;
        if run.builder != self.builder || run.attempt != self.attempt || run.status.is_terminal() {
            return Err(lost());
        }
        f(&mut run);
        if !self.seeded.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.log.seed(&run.log);
        }
        let (tail, truncated) = self.log.tail();
        run.log = tail;
        run.log_truncated_bytes = truncated;
        let mut ops = vec![record::put(self.run_key.as_str(), &run)];
        if finish {
            ops.push(record::delete(self.task_key.as_str()));
        }
        let compares = vec![record::unchanged(
            self.run_key.as_str(),
            Some(kv.mod_revision()),
        )];
        let ok = record::commit(&etcd, compares, ops)
            .await
            .map_err(etcd_err)?
            .applied();
        Ok(ok.then_some(run))
    }

    /// Removes a task whose run is gone.
    pub async fn drop_task(&self) {
        if let Err(e) = self.etcd.clone().delete(self.task_key.as_str(), None).await {
            tracing::warn!(task = %self.task_key, error = %e, "cannot delete stale task");
        }
    }
}

//! One build, start to finish: stages in order, each timed in the run
//! record; clean-up whatever happened; then the final status.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use leengine_build::{validate, BuildTask, RunStatus, Stage, ValidationError};
use tokio::sync::watch;

use crate::agent::Agent;
use crate::docker::{self, BuildTrace, LABEL_BUILDER, LABEL_CONFIG, LABEL_RUN};
use crate::report::{ReportError, Reporter};

/// Why a build stopped early.
enum Stop {
    /// A stage failed: the run is marked failed at that stage.
    Failed(Stage, String),
    /// The run is not ours any more (moved, deleted): stop silently.
    Lost(ReportError),
}

impl From<ReportError> for Stop {
    fn from(e: ReportError) -> Self {
        Stop::Lost(e)
    }
}

struct Build<'a> {
    agent: &'a Agent,
    task: &'a BuildTask,
    rep: Arc<Reporter>,
    dir: PathBuf,
    container: String,
    reference: Option<String>,
    trace: BuildTrace,
}

pub async fn run(
    agent: &Agent,
    task_key: &str,
    task: BuildTask,
    mut cancel: watch::Receiver<bool>,
) {
    let rep = Arc::new(Reporter::new(agent, task_key, &task));
    let flusher = tokio::spawn(flush_log(rep.clone()));
    let mut b = Build {
        agent,
        task: &task,
        rep,
        dir: agent
            .runs_dir()
            .join(format!("{}-{}", task.run, task.attempt)),
        container: format!("leengine-build-{}-{}", task.run, task.attempt),
        reference: None,
        trace: BuildTrace::default(),
    };
    tracing::info!(run = %task.run, config = %task.config, attempt = task.attempt, "build started");
    let outcome = tokio::select! {
        r = b.stages() => Some(r),
        _ = cancel.wait_for(|c| *c) => None,
    };
    flusher.abort();
    b.cleanup().await;
    let now = Utc::now();
    let result = match outcome {
        None => {
            tracing::warn!(run = %task.run, "task withdrawn; build abandoned");
            return;
        }
        Some(Ok(image)) => {
            b.rep.log.write(&format!("pushed {image}"));
            b.rep
                .update(true, |r| {
                    r.close_stage(true, now);
                    r.status = RunStatus::Succeeded;
                    r.image = Some(image.clone());
                    r.finished_at = Some(now);
                })
                .await
        }
        Some(Err(Stop::Failed(stage, msg))) => {
            b.rep.log.write(&format!("{} failed: {msg}", stage.name()));
            b.rep
                .update(true, |r| r.fail(stage, msg.clone(), now))
                .await
        }
        Some(Err(Stop::Lost(e))) => Err(e),
    };
    match result {
        Ok(r) => {
            tracing::info!(run = %task.run, status = ?r.status, failed_stage = ?r.failed_stage, "build finished")
        }
        Err(ReportError::Gone(_)) => {
            tracing::warn!(run = %task.run, "run deleted; dropping its task");
            b.rep.drop_task().await;
        }
        Err(e) => tracing::warn!(run = %task.run, error = %e, "build abandoned"),
    }
}

/// Fails the run of a task that does not pass the policy, without touching
/// git, Docker or the disk. A task whose own names are unusable as keys and
/// paths has no run this agent could safely address: its key is deleted.
pub async fn refuse(agent: Arc<Agent>, task_key: String, task: BuildTask, err: ValidationError) {
    let names_ok =
        validate::name("config", &task.config).is_ok() && validate::name("run", &task.run).is_ok();
    let msg = format!("task refused by build host {}: {err}", agent.id);
    if !names_ok {
        if let Err(e) = agent.etcd.clone().delete(task_key.as_str(), None).await {
            tracing::warn!(task = %task_key, error = %e, "cannot delete refused task");
        }
        return;
    }
    let rep = Reporter::new(&agent, &task_key, &task);
    rep.log.write(&msg);
    let now = Utc::now();
    match rep
        .update(true, |r| r.fail(Stage::Dispatch, msg.clone(), now))
        .await
    {
        Ok(_) => {}
        Err(ReportError::Gone(_)) => rep.drop_task().await,
        Err(e) => tracing::warn!(run = %task.run, error = %e, "cannot record the refusal"),
    }
}

/// How often a growing log is copied into the run record between stage
/// changes, so a long compile can be followed live.
const LOG_FLUSH_EVERY: Duration = Duration::from_secs(3);

async fn flush_log(rep: Arc<Reporter>) {
    let mut seen = rep.log.lines_written();
    loop {
        tokio::time::sleep(LOG_FLUSH_EVERY).await;
        let now = rep.log.lines_written();
        if now != seen && rep.update(false, |_| {}).await.is_ok() {
            seen = now;
        }
    }
}

impl Build<'_> {
    async fn enter(&self, stage: Stage) -> Result<(), Stop> {
        let now = Utc::now();
        self.rep.log.write(&format!("==> {}", stage.name()));
        self.rep
            .update(false, |r| {
                // A stage still open when cloning starts belongs to an
                // incarnation of this agent that died mid-build.
                r.close_stage(stage != Stage::Clone, now);
                r.start_stage(stage, now);
            })
            .await?;
        Ok(())
    }

    async fn timed<T, E: std::fmt::Display>(
        &self,
        stage: Stage,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, Stop> {
        let limit = self.agent.stage_timeout;
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Stop::Failed(stage, e.to_string())),
            Err(_) => Err(Stop::Failed(
                stage,
                format!("timed out after {}", humantime::format_duration(limit)),
            )),
        }
    }

    fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_BUILDER.to_string(), self.agent.id.clone()),
            (LABEL_CONFIG.to_string(), self.task.config.clone()),
            (LABEL_RUN.to_string(), self.task.run.clone()),
        ])
    }

    /// Returns the pushed reference.
    async fn stages(&mut self) -> Result<String, Stop> {
        let spec = &self.task.spec;
        let log = self.rep.log.clone();

        self.enter(Stage::Clone).await?;
        let src = self.dir.join("src");
        let mkdir = tokio::fs::create_dir_all(&self.dir).await;
        self.timed(Stage::Clone, async { mkdir }).await?;
        // The task passed the policy, so the image is REGISTRY/GROUP/NAME.
        let group = self
            .agent
            .policy
            .repository(&spec.image)
            .ok()
            .and_then(|r| r.split_once('/'))
            .map_or("", |(g, _)| g);
        let remote = crate::git::Remote::new(
            &spec.repo,
            spec.repo_credential.as_deref(),
            &self.agent.git_credentials_dir,
            group,
        );
        let remote = self.timed(Stage::Clone, async { remote }).await?;
        let commit = self
            .timed(
                Stage::Clone,
                crate::git::clone(
                    &log,
                    &remote,
                    &spec.branch,
                    self.task.commit.as_deref(),
                    &src,
                ),
            )
            .await?;
        let tag = self.task.tag.clone().unwrap_or_else(|| commit.clone());
        let reference = format!("{}:{tag}", spec.image);
        self.reference = Some(reference.clone());
        let c = commit.clone();
        self.rep
            .update(false, |r| r.commit = Some(c.clone()))
            .await?;

        // Builds of one config on this host take turns from here on: Maven's
        // local repository allows one writer, and a failed build's layer
        // clean-up must not race a sibling build using the same cached layers.
        let lock = self.agent.cache_lock(&self.task.config);
        let _turn = lock.lock().await;

        if let Some(compile) = &spec.compile {
            self.enter(Stage::Compile).await?;
            let cache = self.cache_dir();
            let mk = tokio::fs::create_dir_all(&cache).await;
            self.timed(Stage::Compile, async { mk }).await?;
            self.remove_older_caches();
            log.write(&format!(
                "cache {} -> {}",
                cache.display(),
                compile.cache_mount
            ));
            let job = docker::CompileJob {
                name: self.container.clone(),
                image: &compile.image,
                script: &compile.script,
                src: &src,
                cache: &cache,
                cache_mount: &compile.cache_mount,
                network: &self.agent.compile_network,
                limits: &self.agent.limits,
                labels: self.labels(),
            };
            let r = self
                .timed(
                    Stage::Compile,
                    docker::compile(&self.agent.docker, &job, &log),
                )
                .await;
            docker::remove_container(&self.agent.docker, &self.container).await;
            r?;
        }

        self.enter(Stage::Build).await?;
        let ctx = self.dir.join("context.tar");
        let (s, df, outs, c2) = (
            src.clone(),
            spec.dockerfile.clone(),
            spec.outputs.clone(),
            ctx.clone(),
        );
        let size = tokio::task::spawn_blocking(move || crate::context::write(&s, &df, &outs, &c2))
            .await
            .map_err(|e| Stop::Failed(Stage::Build, format!("context writer panicked: {e}")))?;
        let size = self.timed(Stage::Build, async { size }).await?;
        log.write(&format!(
            "build context: {size} bytes ({} outputs + {})",
            spec.outputs.len(),
            spec.dockerfile
        ));
        let labels = self.labels();
        let mut trace = BuildTrace::default();
        let r = self
            .timed(
                Stage::Build,
                docker::build(
                    &self.agent.docker,
                    docker::BuildJob {
                        context: &ctx,
                        dockerfile: &spec.dockerfile,
                        reference: &reference,
                        labels,
                        network: &self.agent.compile_network,
                        limits: &self.agent.limits,
                    },
                    &mut trace,
                    &log,
                ),
            )
            .await;
        self.trace = trace;
        r?;

        self.enter(Stage::Push).await?;
        self.timed(
            Stage::Push,
            docker::push(
                &self.agent.docker,
                &spec.image,
                &tag,
                self.task.push_auth.as_ref(),
                &log,
            ),
        )
        .await?;
        Ok(reference)
    }

    /// `{cache-dir}/{config}/{incarnation}/m2`: a config deleted and created
    /// again under the same id (maybe by someone else) starts cold.
    fn cache_dir(&self) -> PathBuf {
        self.agent
            .cache_dir
            .join(&self.task.config)
            .join(self.task.config_incarnation.to_string())
            .join("m2")
    }

    /// Caches of earlier incarnations of this config are dead weight; the
    /// per-config lock is held, so no build of this host uses them.
    fn remove_older_caches(&self) {
        let dir = self.agent.cache_dir.join(&self.task.config);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let older = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i64>().ok())
                .is_some_and(|n| n < self.task.config_incarnation);
            if older {
                if let Err(err) = std::fs::remove_dir_all(e.path()) {
                    tracing::warn!(dir = %e.path().display(), error = %err, "cannot remove old cache");
                }
            }
        }
    }

    /// Runs after every build, whatever happened. Failures here are logged,
    /// not fatal: the image is already in the registry or the build failed.
    async fn cleanup(&mut self) {
        docker::remove_container(&self.agent.docker, &self.container).await;
        if let Some(reference) = &self.reference {
            docker::remove_build_images(&self.agent.docker, reference, &self.trace).await;
        }
        if self.dir.exists() {
            let dir = self.dir.clone();
            let r = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
            if let Ok(Err(e)) = r {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove checkout");
            }
        }
    }
}

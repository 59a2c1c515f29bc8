//! Records stored in etcd (JSON, camelCase).
//!
//! - `{prefix}/builds/configs/{config}`        → [`BuildConfig`]
//! - `{prefix}/builds/runs/{config}/{run}`     → [`BuildRun`] (status, stages, log tail)
//! - `{prefix}/builders/{builder}`             → [`BuilderInfo`] (under the agent's lease)
//! - `{prefix}/builders/{builder}/tasks/{run}` → [`BuildTask`]

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where the Maven local repository is mounted in the compile container
/// unless the config says otherwise.
pub const DEFAULT_CACHE_MOUNT: &str = "/root/.m2/repository";
pub const DEFAULT_DOCKERFILE: &str = "Dockerfile";

/// Re-dispatches allowed after a builder is lost: the task goes to the next
/// builder once more; a second loss fails the run.
pub const MAX_REDISPATCHES: usize = 1;

/// What to build: everything an agent needs besides the trigger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BuildSpec {
    /// Network git URL on one of the farm's allowed git hosts
    /// ([`crate::validate::Policy`]).
    pub repo: String,
    /// Name of the clone credential on the build hosts
    /// (`{git-credentials-dir}/{name}.json`); the secret never enters etcd
    /// or the API. `None`: the host's own git credentials, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_credential: Option<String>,
    pub branch: String,
    /// Dockerfile path inside the repository.
    #[serde(default = "default_dockerfile")]
    pub dockerfile: String,
    #[serde(default)]
    pub compile: Option<CompileSpec>,
    /// Paths (files or directories) inside the repository, after the compile
    /// step, that go into the build context next to the Dockerfile. Nothing
    /// else does: sources stay on the builder.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Target repository without tag in the platform registry,
    /// `REGISTRY/GROUP/NAME`, e.g. `registry.example:5000/team/app`.
    pub image: String,
}

fn default_dockerfile() -> String {
    DEFAULT_DOCKERFILE.to_string()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompileSpec {
    /// Image the compile container runs (must exist on the builder).
    pub image: String,
    /// Script inside the repository, run with `/bin/sh` from the repo root.
    pub script: String,
    /// Container path where the per-config cache directory is mounted.
    #[serde(default = "default_cache_mount")]
    pub cache_mount: String,
}

fn default_cache_mount() -> String {
    DEFAULT_CACHE_MOUNT.to_string()
}

/// A stored build config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildConfig {
    pub id: String,
    pub spec: BuildSpec,
    pub creator: String,
    /// Hex SHA-256 of the GitLab webhook secret; the secret itself is shown
    /// once, at creation.
    pub webhook_token_sha256: String,
    pub created_at: DateTime<Utc>,
    /// The user whose push rights on `spec.image` were checked when the
    /// image was last set; webhook builds push as them. Configs written
    /// before this field push as their creator.
    #[serde(default)]
    pub push_as: Option<String>,
}

impl BuildConfig {
    pub fn pusher(&self) -> &str {
        self.push_as.as_deref().unwrap_or(&self.creator)
    }
}

/// What the agent pushes with: a registry bearer token the core signed for
/// exactly one repository (pull and push on `spec.image`), expiring at
/// `expires_at`. Never a password: task keys are readable by every agent.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PushAuth {
    /// `host[:port]` of the registry.
    pub server: String,
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for PushAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushAuth")
            .field("server", &self.server)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The value of a builder's task key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildTask {
    pub run: String,
    pub config: String,
    /// The config key's etcd create revision: tells a re-created config
    /// from the one it replaced (each incarnation has its own cache).
    #[serde(default)]
    pub config_incarnation: i64,
    pub spec: BuildSpec,
    /// Exact commit to build (webhook); `None` builds the branch head.
    #[serde(default)]
    pub commit: Option<String>,
    /// Requested tag; `None` tags with the commit id.
    #[serde(default)]
    pub tag: Option<String>,
    /// `None`: the registry takes anonymous pushes (no token server).
    #[serde(default)]
    pub push_auth: Option<PushAuth>,
    /// 1 for the first placement, 2 after a re-dispatch.
    pub attempt: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    Dispatch,
    Clone,
    Compile,
    Build,
    Push,
}

impl Stage {
    /// The status a run shows while in this stage.
    pub fn status(self) -> RunStatus {
        match self {
            Stage::Dispatch => RunStatus::Queued,
            Stage::Clone => RunStatus::Cloning,
            Stage::Compile => RunStatus::Compiling,
            Stage::Build => RunStatus::Building,
            Stage::Push => RunStatus::Pushing,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Stage::Dispatch => "dispatch",
            Stage::Clone => "clone",
            Stage::Compile => "compile",
            Stage::Build => "build",
            Stage::Push => "push",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RunStatus {
    Queued,
    Cloning,
    Compiling,
    Building,
    Pushing,
    Succeeded,
    Failed,
}

impl RunStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Succeeded | RunStatus::Failed)
    }

    /// The stage a run in this status is in; `None` once finished.
    pub fn stage(self) -> Option<Stage> {
        match self {
            RunStatus::Queued => Some(Stage::Dispatch),
            RunStatus::Cloning => Some(Stage::Clone),
            RunStatus::Compiling => Some(Stage::Compile),
            RunStatus::Building => Some(Stage::Build),
            RunStatus::Pushing => Some(Stage::Push),
            RunStatus::Succeeded | RunStatus::Failed => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageTiming {
    pub stage: Stage,
    pub started_at: DateTime<Utc>,
    #[serde(default)]
    pub ended_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub ok: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Trigger {
    Manual { user: String },
    Webhook { user: Option<String> },
}

/// A builder was lost while holding the task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Redispatch {
    pub from: String,
    /// `None` when no other builder was alive (the run then failed).
    pub to: Option<String>,
    pub at: DateTime<Utc>,
}

/// One build: written by core at dispatch, advanced by the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildRun {
    pub id: String,
    pub config: String,
    /// The builder currently responsible; only it may advance the run.
    pub builder: String,
    pub attempt: u32,
    pub trigger: Trigger,
    pub status: RunStatus,
    #[serde(default)]
    pub requested_tag: Option<String>,
    #[serde(default)]
    pub commit: Option<String>,
    /// Full pushed reference `image:tag` once known.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub failed_stage: Option<Stage>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub stages: Vec<StageTiming>,
    #[serde(default)]
    pub redispatches: Vec<Redispatch>,
    /// Tail of the log (see [`crate::BoundedLog`]); the agent keeps the rest.
    #[serde(default)]
    pub log: String,
    #[serde(default)]
    pub log_truncated_bytes: u64,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
}

impl BuildRun {
    /// A run just placed on `builder`, first attempt, nothing done yet.
    pub fn queued(
        id: String,
        config: String,
        builder: String,
        trigger: Trigger,
        requested_tag: Option<String>,
        commit: Option<String>,
    ) -> BuildRun {
        BuildRun {
            id,
            config,
            builder,
            attempt: 1,
            trigger,
            status: RunStatus::Queued,
            requested_tag,
            commit,
            image: None,
            failed_stage: None,
            error: None,
            stages: vec![],
            redispatches: vec![],
            log: String::new(),
            log_truncated_bytes: 0,
            created_at: Utc::now(),
            finished_at: None,
        }
    }

    /// Marks the run failed at `stage`; the open stage timing, if any, is closed.
    pub fn fail(&mut self, stage: Stage, error: impl Into<String>, now: DateTime<Utc>) {
        self.close_stage(false, now);
        self.status = RunStatus::Failed;
        self.failed_stage = Some(stage);
        self.error = Some(error.into());
        self.finished_at = Some(now);
    }

    /// Starts `stage` (closing nothing: call [`close_stage`](Self::close_stage) first).
    pub fn start_stage(&mut self, stage: Stage, now: DateTime<Utc>) {
        self.status = stage.status();
        self.stages.push(StageTiming {
            stage,
            started_at: now,
            ended_at: None,
            duration_ms: None,
            ok: None,
        });
    }

    /// Closes the last open stage, if any.
    pub fn close_stage(&mut self, ok: bool, now: DateTime<Utc>) {
        if let Some(t) = self.stages.last_mut().filter(|t| t.ended_at.is_none()) {
            t.ended_at = Some(now);
            t.duration_ms =
                Some(u64::try_from((now - t.started_at).num_milliseconds()).unwrap_or(0));
            t.ok = Some(ok);
        }
    }

    /// The decision core takes for this run when `lost` left: move it to
    /// a live builder, fail it, or leave it (finished, or not on `lost`).
    pub fn on_builder_lost<S: AsRef<str>>(&self, lost: &str, live: &[S]) -> LostDecision {
        if self.status.is_terminal() || self.builder != lost {
            return LostDecision::Ignore;
        }
        if self.redispatches.len() >= MAX_REDISPATCHES {
            return LostDecision::Fail(format!(
                "builder {lost} lost after {} re-dispatch(es)",
                self.redispatches.len()
            ));
        }
        match crate::redispatch_target(&self.config, lost, live) {
            Some(to) => LostDecision::Move(to.to_string()),
            None => LostDecision::Fail(format!("builder {lost} lost and no other builder is live")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LostDecision {
    Ignore,
    Move(String),
    Fail(String),
}

/// A builder's registration record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuilderInfo {
    pub id: String,
    pub capacity: u32,
    pub running: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub started_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(builder: &str) -> BuildRun {
        let mut r = BuildRun::queued(
            "r1".into(),
            "cfg".into(),
            builder.into(),
            Trigger::Manual { user: "u".into() },
            None,
            None,
        );
        r.status = RunStatus::Cloning;
        r
    }

    #[test]
    fn lost_builder_moves_once_then_fails() {
        let live = vec!["b".to_string(), "c".to_string()];
        let mut r = run("a");
        let LostDecision::Move(to) = r.on_builder_lost("a", &live) else {
            panic!("first loss must move")
        };
        assert_eq!(
            Some(to.as_str()),
            crate::rank("cfg", &live).first().copied()
        );
        r.redispatches.push(Redispatch {
            from: "a".into(),
            to: Some(to.clone()),
            at: Utc::now(),
        });
        r.builder = to.clone();
        assert!(matches!(
            r.on_builder_lost(&to, &live),
            LostDecision::Fail(_)
        ));
    }

    #[test]
    fn lost_builder_ignores_finished_or_foreign_runs() {
        let live = vec!["b".to_string()];
        let mut r = run("a");
        assert_eq!(r.on_builder_lost("x", &live), LostDecision::Ignore);
        r.status = RunStatus::Succeeded;
        assert_eq!(r.on_builder_lost("a", &live), LostDecision::Ignore);
        let r = run("a");
        assert!(matches!(
            r.on_builder_lost("a", &Vec::<String>::new()),
            LostDecision::Fail(_)
        ));
    }

    #[test]
    fn stage_timings_close_with_duration() {
        let mut r = run("a");
        let t0 = Utc::now();
        r.start_stage(Stage::Compile, t0);
        assert_eq!(r.status, RunStatus::Compiling);
        r.fail(
            Stage::Compile,
            "exit 1",
            t0 + chrono::Duration::milliseconds(1500),
        );
        assert_eq!(r.stages[0].duration_ms, Some(1500));
        assert_eq!(r.stages[0].ok, Some(false));
        assert_eq!(r.failed_stage, Some(Stage::Compile));
        assert!(r.status.is_terminal());
    }

    #[test]
    fn spec_defaults_and_rejects_unknown_fields() {
        let s: BuildSpec =
            serde_json::from_str(r#"{"repo":"/r","branch":"main","image":"h:5000/a"}"#).unwrap();
        assert_eq!(s.dockerfile, "Dockerfile");
        assert!(serde_json::from_str::<BuildSpec>(
            r#"{"repo":"/r","branch":"main","image":"a","dockerFile":"x"}"#
        )
        .is_err());
    }
}

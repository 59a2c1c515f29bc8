//! Placing a run on a builder: one transaction writes the run record and the
//! builder's task key, on the condition that the run is new, the config is
//! unchanged and the chosen builder is still registered.

use chrono::Utc;
use etcd_client::GetOptions;
use leengine_build::{rank, BuildConfig, BuildRun, BuildTask, PushAuth, Trigger};
use leengine_store::keys::BuilderKey;
use leengine_store::Keys;
use leengine_store::{record, retry};

use super::BuildsState;
use crate::access::Kind;
use crate::activity;
use crate::problem::ApiError;
use crate::stats::{self, Metric};

#[derive(Clone, Debug)]
pub struct DispatchRequest {
    pub trigger: Trigger,
    /// The user whose push right was checked: the push token's subject.
    pub pusher: String,
    pub tag: Option<String>,
    pub commit: Option<String>,
}

/// Builders with a registration key (lease-bound, so alive), sorted.
pub async fn live_builders(
    etcd: &mut etcd_client::Client,
    keys: &Keys,
) -> Result<Vec<String>, etcd_client::Error> {
    let resp = etcd
        .get(
            keys.builders_prefix(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await?;
    let mut live: Vec<String> = resp
        .kvs()
        .iter()
        .filter_map(|kv| match keys.parse_builder_key(kv.key_str().ok()?) {
            Some(BuilderKey::Builder(b)) => Some(b.to_string()),
            _ => None,
        })
        .collect();
    live.sort();
    Ok(live)
}

/// A config as read from etcd.
#[derive(Clone, Debug)]
pub struct StoredConfig {
    pub config: BuildConfig,
    /// Mod revision: the dispatch commits only if the config is unchanged.
    pub rev: i64,
    /// Create revision: differs between a config and a re-created one of
    /// the same id.
    pub incarnation: i64,
}

/// A token for pushing to this config's image only, when the registry
/// takes tokens from this core.
fn push_auth(state: &BuildsState, config: &BuildConfig, pusher: &str) -> Option<PushAuth> {
    let tokens = state.tokens.as_ref()?;
    let policy = &state.settings.policy;
    let server = policy.registry.clone()?;
    let repository = policy.repository(&config.spec.image).ok()?;
    let now = Utc::now();
    let ttl = state.settings.push_token_ttl;
    let t = tokens.scoped_push_token(pusher, repository, ttl, now);
    Some(PushAuth {
        server,
        token: t.token,
        expires_at: now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1)),
    })
}

/// Run ids sort by creation time and are safe key segments.
fn new_run_id() -> String {
    let suffix: u32 = rand::random::<u32>() & 0xff_ffff;
    format!("{}-{suffix:06x}", Utc::now().format("%Y%m%d%H%M%S%3f"))
}

/// Creates a run of `stored` on the builder rendezvous hashing picks among
/// the live ones. The caller has checked `req.pusher`'s push right.
pub async fn dispatch(
    state: &BuildsState,
    stored: &StoredConfig,
    req: DispatchRequest,
) -> Result<BuildRun, ApiError> {
    let (config, config_rev) = (&stored.config, stored.rev);
    let push_auth = push_auth(state, config, &req.pusher);
    let keys = &state.keys;
    let (req, push_auth) = (&req, &push_auth);
    retry::optimistic(retry::BACKGROUND, move || async move {
        let mut etcd = state.etcd.clone();
        let live = live_builders(&mut etcd, keys).await?;
        let Some(builder) = rank(&config.id, &live).first().map(|b| b.to_string()) else {
            return Err(ApiError::unavailable(
                "no build host is registered; start leengine-build-agent",
            ));
        };
        let run = BuildRun::queued(
            new_run_id(),
            config.id.clone(),
            builder.clone(),
            req.trigger.clone(),
            req.tag.clone(),
            req.commit.clone(),
        );
        let task = BuildTask {
            run: run.id.clone(),
            config: config.id.clone(),
            config_incarnation: stored.incarnation,
            spec: config.spec.clone(),
            commit: req.commit.clone(),
            tag: req.tag.clone(),
            push_auth: push_auth.clone(),
            attempt: 1,
        };
        let run_key = keys.build_run(&config.id, &run.id);
        let (actor, via) = match &req.trigger {
            Trigger::Manual { user } => (user.clone(), "manual"),
            Trigger::Webhook { user } => (
                format!("webhook:{}", user.as_deref().unwrap_or("gitlab")),
                "webhook",
            ),
        };
        let ev = activity::event(
            &actor,
            "build_triggered",
            serde_json::json!({
                "run": run.id, "builder": builder, "trigger": via,
                "tag": run.requested_tag, "commit": run.commit,
            }),
        );
        let compares = vec![
            record::absent(run_key.as_str()),
            record::unchanged(keys.build_config(&config.id), Some(config_rev)),
            record::present(keys.builder(&builder)),
        ];
        let ops = vec![
            record::put(run_key, &run),
            record::put(keys.builder_task(&builder, &run.id), &task),
            // Counted here, once per run: a re-dispatch is the same build.
            stats::op(
                keys,
                Metric::Builds,
                run.created_at,
                &format!("{}:{}", config.id, run.id),
                &config.id,
            ),
            activity::op(keys, Kind::Build, &config.id, &ev),
        ];
        if record::commit(&etcd, compares, ops).await?.applied() {
            tracing::info!(config = %config.id, run = %run.id, %builder, "build dispatched");
            return Ok(Some(run));
        }
        let still = etcd.get(keys.build_config(&config.id), None).await?;
        match still.kvs().first() {
            None => Err(config_gone(&config.id)),
            Some(kv) if kv.mod_revision() != config_rev => Err(ApiError::conflict(
                "build_config_changed",
                format!(
                    "build config {} changed while dispatching; retry",
                    config.id
                ),
            )),
            Some(_) => Ok(None),
        }
    })
    .await?
    .ok_or_else(|_| ApiError::unavailable("build hosts kept leaving while dispatching; retry"))
}

pub(super) fn config_gone(id: &str) -> ApiError {
    ApiError::not_found(
        "build_config_not_found",
        format!("build config {id} does not exist"),
    )
}

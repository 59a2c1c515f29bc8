//! HTTP handlers under `/api/v1/builds/`.
//!
//! Permissions (until member roles cover builds): the creator of a config and
//! admins may read, trigger and delete it; others get 404, so configs they
//! cannot see do not leak their existence. The webhook authenticates with
//! the config's own secret instead of a user.

use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use chrono::Utc;
use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp};
use leengine_build::validate;
use leengine_build::{BuildConfig, BuildRun, BuildSpec, BuilderInfo, CompileSpec, Trigger};
use serde::{Deserialize, Serialize};

use super::dispatch::{config_gone, dispatch, DispatchRequest};
use super::webhook::{self, GitlabPush, PushMatch};
use super::BuildsState;
use crate::auth::Caller;
use crate::problem::{ApiError, Json, Path};

pub(super) fn routes() -> Router<BuildsState> {
    Router::new()
        .route(
            "/api/v1/builds/configs",
            post(create_config).get(list_configs),
        )
        .route(
            "/api/v1/builds/configs/{id}",
            get(get_config).put(update_config).delete(delete_config),
        )
        .route(
            "/api/v1/builds/configs/{id}/runs",
            post(trigger).get(list_runs),
        )
        .route("/api/v1/builds/configs/{id}/runs/{run}", get(get_run))
        .route("/api/v1/builds/configs/{id}/webhook", post(gitlab_webhook))
        .route("/api/v1/builds/builders", get(list_builders))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateConfig {
    id: String,
    repo: String,
    branch: String,
    #[serde(default)]
    dockerfile: Option<String>,
    #[serde(default)]
    compile: Option<CompileSpec>,
    #[serde(default)]
    outputs: Vec<String>,
    image: String,
}

/// A config as the API shows it (the webhook secret hash stays inside).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigView {
    id: String,
    #[serde(flatten)]
    spec: BuildSpec,
    creator: String,
    created_at: chrono::DateTime<Utc>,
    webhook_path: String,
}

impl From<BuildConfig> for ConfigView {
    fn from(c: BuildConfig) -> Self {
        Self {
            webhook_path: format!("/api/v1/builds/configs/{}/webhook", c.id),
            id: c.id,
            spec: c.spec,
            creator: c.creator,
            created_at: c.created_at,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Created {
    #[serde(flatten)]
    config: ConfigView,
    /// Shown once: GitLab's "Secret token" for the webhook.
    webhook_token: String,
}

fn invalid(e: validate::ValidationError) -> ApiError {
    ApiError::bad_request("invalid_build_config", e.to_string())
}

async fn create_config(
    axum::extract::State(st): axum::extract::State<BuildsState>,
    caller: Caller,
    Json(body): Json<CreateConfig>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    validate::name("id", &body.id).map_err(invalid)?;
    let spec = BuildSpec {
        repo: body.repo,
        branch: body.branch,
        dockerfile: body
            .dockerfile
            .unwrap_or_else(|| leengine_build::DEFAULT_DOCKERFILE.to_string()),
        compile: body.compile,
        outputs: body.outputs,
        image: body.image,
    };
    spec.validate().map_err(invalid)?;
    let token = webhook::new_token();
    let cfg = BuildConfig {
        id: body.id,
        spec,
        creator: caller.user,
        webhook_token_sha256: webhook::token_hash(&token),
        created_at: Utc::now(),
    };
    let key = st.keys.build_config(&cfg.id);
    let txn = Txn::new()
        .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, serde_json::to_vec(&cfg)?, None)]);
    if !st.etcd.clone().txn(txn).await?.succeeded() {
        return Err(ApiError::conflict(
            "build_config_exists",
            format!("build config {} already exists", cfg.id),
        ));
    }
    tracing::info!(config = %cfg.id, creator = %cfg.creator, "build config created");
    Ok((
        StatusCode::CREATED,
        Json(Created {
            config: cfg.into(),
            webhook_token: token,
        }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpdateConfig {
    repo: String,
    branch: String,
    #[serde(default)]
    dockerfile: Option<String>,
    #[serde(default)]
    compile: Option<CompileSpec>,
    #[serde(default)]
    outputs: Vec<String>,
    image: String,
}

/// Replaces the spec; creator, webhook secret and running builds are kept
/// (a task carries its own copy of the spec).
async fn update_config(
    axum::extract::State(st): axum::extract::State<BuildsState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<UpdateConfig>,
) -> Result<Json<ConfigView>, ApiError> {
    let spec = BuildSpec {
        repo: body.repo,
        branch: body.branch,
        dockerfile: body
            .dockerfile
            .unwrap_or_else(|| leengine_build::DEFAULT_DOCKERFILE.to_string()),
        compile: body.compile,
        outputs: body.outputs,
        image: body.image,
    };
    spec.validate().map_err(invalid)?;
    let (mut cfg, rev) = visible_config(&st, &caller, &id).await?;
    cfg.spec = spec;
    let key = st.keys.build_config(&id);
    let txn = Txn::new()
        .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)])
        .and_then([TxnOp::put(key, serde_json::to_vec(&cfg)?, None)]);
    if !st.etcd.clone().txn(txn).await?.succeeded() {
        return Err(ApiError::conflict(
            "build_config_changed",
            format!("build config {id} changed meanwhile; retry"),
        ));
    }
    Ok(Json(cfg.into()))
}

/// Reads a config; `None` when absent. Returns the mod revision for CAS.
async fn read_config(st: &BuildsState, id: &str) -> Result<Option<(BuildConfig, i64)>, ApiError> {
    if validate::name("id", id).is_err() {
        return Ok(None);
    }
    let resp = st.etcd.clone().get(st.keys.build_config(id), None).await?;
    match resp.kvs().first() {
        None => Ok(None),
        Some(kv) => Ok(Some((
            serde_json::from_slice(kv.value())?,
            kv.mod_revision(),
        ))),
    }
}

fn may_use(caller: &Caller, cfg: &BuildConfig) -> bool {
    caller.admin || caller.user == cfg.creator
}

/// The config if the caller may use it; 404 otherwise.
async fn visible_config(
    st: &BuildsState,
    caller: &Caller,
    id: &str,
) -> Result<(BuildConfig, i64), ApiError> {
    match read_config(st, id).await? {
        Some((cfg, rev)) if may_use(caller, &cfg) => Ok((cfg, rev)),
        _ => Err(config_gone(id)),
    }
}

async fn list_configs(
    axum::extract::State(st): axum::extract::State<BuildsState>,
    caller: Caller,
) -> Result<Json<Vec<ConfigView>>, ApiError> {
    let resp = st
        .etcd
        .clone()
        .get(
            st.keys.build_configs_prefix(),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    let mut out = Vec::new();
    for kv in resp.kvs() {
        let cfg: BuildConfig = serde_json::from_slice(kv.value())?;
        if may_use(&caller, &cfg) {
            out.push(cfg.into());
        }
    }
    Ok(Json(out))
}

async fn get_config(
    axum::extract::State(st): axum::extract::State<BuildsState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ConfigView>, ApiError> {
    Ok(Json(visible_config(&st, &caller, &id).await?.0.into()))
}

/// Deletes the config and its run records; tasks already on builders finish
/// (their run updates then fail their compare and the agent drops them).
async fn delete_config(
    axum::extract::State(st): axum::extract::State<BuildsState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (_, rev) = visible_config(&st, &caller, &id).await?;
    let key = st.keys.build_config(&id);
    let txn = Txn::new()
        .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)])
        .and_then([
            TxnOp::delete(key, None),
            TxnOp::delete(
                st.keys.build_runs_prefix(&id),
                Some(DeleteOptions::new().with_prefix()),
            ),
        ]);
    if !st.etcd.clone().txn(txn).await?.succeeded() {
        return Err(ApiError::conflict(
            "build_config_changed",
            format!("build config {id} changed meanwhile; retry"),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TriggerBody {
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    commit: Option<String>,
}

async fn trigger(
    axum::extract::State(st): axum::extract::State<BuildsState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<BuildRun>), ApiError> {
    // An empty body is a plain "build the branch head".
    let body: TriggerBody = if body.iter().all(u8::is_ascii_whitespace) {
        TriggerBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?
    };
    if let Some(t) = &body.tag {
        validate::tag(t).map_err(|e| ApiError::bad_request("invalid_tag", e.to_string()))?;
    }
    if let Some(c) = &body.commit {
        validate::commit(c).map_err(|e| ApiError::bad_request("invalid_commit", e.to_string()))?;
    }
    let (cfg, rev) = visible_config(&st, &caller, &id).await?;
    let req = DispatchRequest {
        trigger: Trigger::Manual { user: caller.user },
        tag: body.tag,
        commit: body.commit,
    };
    let run = dispatch(&st, &cfg, rev, req).await?;
    Ok((StatusCode::ACCEPTED, Json(run)))
}

async fn list_runs(
    axum::extract::State(st): axum::extract::State<BuildsState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<BuildRun>>, ApiError> {
    visible_config(&st, &caller, &id).await?;
    let resp = st
        .etcd
        .clone()
        .get(
            st.keys.build_runs_prefix(&id),
            Some(GetOptions::new().with_prefix().with_sort(
                etcd_client::SortTarget::Key,
                etcd_client::SortOrder::Descend,
            )),
        )
        .await?;
    let runs = resp
        .kvs()
        .iter()
        .map(|kv| serde_json::from_slice(kv.value()))
        .collect::<Result<Vec<BuildRun>, _>>()?;
    Ok(Json(runs))
}

async fn get_run(
    axum::extract::State(st): axum::extract::State<BuildsState>,
    caller: Caller,
    Path((id, run)): Path<(String, String)>,
) -> Result<Json<BuildRun>, ApiError> {
    visible_config(&st, &caller, &id).await?;
    let not_found = || {
        ApiError::not_found(
            "build_run_not_found",
            format!("build {id}/{run} does not exist"),
        )
    };
    validate::name("run", &run).map_err(|_| not_found())?;
    let resp = st
        .etcd
        .clone()
        .get(st.keys.build_run(&id, &run), None)
        .await?;
    let kv = resp.kvs().first().ok_or_else(not_found)?;
    Ok(Json(serde_json::from_slice(kv.value())?))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct WebhookOutcome {
    triggered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run: Option<BuildRun>,
}

async fn gitlab_webhook(
    axum::extract::State(st): axum::extract::State<BuildsState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(push): Json<GitlabPush>,
) -> Result<(StatusCode, Json<WebhookOutcome>), ApiError> {
    let (cfg, rev) = read_config(&st, &id)
        .await?
        .ok_or_else(|| config_gone(&id))?;
    let presented = headers
        .get("x-gitlab-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !webhook::token_matches(&cfg, presented) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "webhook_token_invalid",
            format!("X-Gitlab-Token is missing or does not match build config {id}"),
        ));
    }
    match webhook::match_push(&cfg, &push) {
        PushMatch::RepoMismatch => Err(ApiError::bad_request(
            "webhook_repo_mismatch",
            format!(
                "the push is not from {}, the repository of build config {id}",
                cfg.spec.repo
            ),
        )),
        PushMatch::Ignore(reason) => Ok((
            StatusCode::OK,
            Json(WebhookOutcome {
                triggered: false,
                reason: Some(reason),
                run: None,
            }),
        )),
        PushMatch::Build { commit } => {
            validate::commit(&commit)
                .map_err(|e| ApiError::bad_request("invalid_commit", e.to_string()))?;
            let req = DispatchRequest {
                trigger: Trigger::Webhook {
                    user: push.user_username.clone(),
                },
                tag: None,
                commit: Some(commit),
            };
            let run = dispatch(&st, &cfg, rev, req).await?;
            Ok((
                StatusCode::ACCEPTED,
                Json(WebhookOutcome {
                    triggered: true,
                    reason: None,
                    run: Some(run),
                }),
            ))
        }
    }
}

async fn list_builders(
    axum::extract::State(st): axum::extract::State<BuildsState>,
    _caller: Caller,
) -> Result<Json<Vec<BuilderInfo>>, ApiError> {
    let resp = st
        .etcd
        .clone()
        .get(
            st.keys.builders_prefix(),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    let mut out = Vec::new();
    for kv in resp.kvs() {
        if let Some(leengine_store::keys::BuilderKey::Builder(_)) =
            st.keys.parse_builder_key(kv.key_str().unwrap_or_default())
        {
            out.push(serde_json::from_slice(kv.value())?);
        }
    }
    Ok(Json(out))
}

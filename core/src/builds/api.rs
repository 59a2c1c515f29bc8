//! HTTP handlers under `/api/v1/builds/`.
//!
//! Build configs are `build` resources of the shared role engine
//! ([`crate::access`]): the creator is Owner, members are managed under
//! `/api/v1/builds/configs/{id}/members`, and every handler asks
//! `access::authorize` for its action (Guest sees the config, Reporter reads
//! runs and their logs, Developer triggers, Master updates, Owner deletes).
//! Non-members of a private config get 404. The webhook authenticates with
//! the config's own secret instead of a user.

use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use chrono::Utc;
use etcd_client::GetOptions;
use leengine_build::validate;
use leengine_build::{BuildConfig, BuildRun, BuildSpec, BuilderInfo, CompileSpec, Trigger};
use leengine_store::record;
use serde::{Deserialize, Serialize};

use super::dispatch::{config_gone, dispatch, DispatchRequest, StoredConfig};
use super::webhook::{self, GitlabPush, PushMatch};
use super::{push, BuildsState};
use crate::access::{self, Action, Grant, Kind, Role};
use crate::activity;
use crate::auth::Caller;
use crate::problem::{ApiError, Json, Path};
use crate::store;

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
    /// A credential name on the build hosts, never a secret.
    #[serde(default)]
    repo_credential: Option<String>,
    branch: String,
    #[serde(default)]
    dockerfile: Option<String>,
    #[serde(default)]
    compile: Option<CompileSpec>,
    #[serde(default)]
    outputs: Vec<String>,
    image: String,
    /// Public configs are visible (not buildable) to every signed-in user.
    #[serde(default)]
    public: bool,
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
    public: bool,
    /// The caller's role; `null` for a non-member seeing a public config.
    role: Option<Role>,
}

fn view(c: BuildConfig, public: bool, role: Option<Role>) -> ConfigView {
    let mut spec = c.spec;
    // Configs are refused with credentials in the URL; older ones may hold some.
    spec.repo = leengine_build::redact_credentials(&spec.repo).into_owned();
    ConfigView {
        webhook_path: format!("/api/v1/builds/configs/{}/webhook", c.id),
        id: c.id,
        spec,
        creator: c.creator,
        created_at: c.created_at,
        public,
        role,
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

/// The spec's syntax, the farm's policy (allowed git host, the platform
/// registry) and `user`'s push right on the target image: checked whenever
/// a config is written or a build is started.
async fn check_spec(
    st: &BuildsState,
    spec: &BuildSpec,
    user: &str,
    admin: bool,
) -> Result<(), ApiError> {
    spec.check(&st.settings.policy).map_err(invalid)?;
    let repository = st
        .settings
        .policy
        .repository(&spec.image)
        .map_err(invalid)?;
    push::check(st, user, admin, repository).await
}

async fn create_config(
    axum::extract::State(st): axum::extract::State<BuildsState>,
    caller: Caller,
    Json(body): Json<CreateConfig>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    validate::name("id", &body.id).map_err(invalid)?;
    // The id is also the name of the `build` resource, which must end alnum.
    if !access::valid_name(&body.id) {
        return Err(ApiError::bad_request(
            "invalid_build_config",
            format!("id {:?} must end with a letter or digit", body.id),
        ));
    }
    let spec = BuildSpec {
        repo: body.repo,
        repo_credential: body.repo_credential,
        branch: body.branch,
        dockerfile: body
            .dockerfile
            .unwrap_or_else(|| leengine_build::DEFAULT_DOCKERFILE.to_string()),
        compile: body.compile,
        outputs: body.outputs,
        image: body.image,
    };
    check_spec(&st, &spec, &caller.user, caller.admin).await?;
    let token = webhook::new_token();
    let cfg = BuildConfig {
        id: body.id,
        spec,
        creator: caller.user.clone(),
        webhook_token_sha256: webhook::token_hash(&token),
        created_at: Utc::now(),
        push_as: Some(caller.user.clone()),
    };
    let key = st.keys.build_config(&cfg.id);
    access::register(
        &st.db(),
        &caller,
        Kind::Build,
        &cfg.id,
        body.public,
        String::new(),
        (
            vec![store::absent(key.clone())],
            vec![store::put(key, &cfg)],
        ),
    )
    .await?;
    tracing::info!(config = %cfg.id, creator = %cfg.creator, "build config created");
    Ok((
        StatusCode::CREATED,
        Json(Created {
            config: view(cfg, body.public, Some(Role::Owner)),
            webhook_token: token,
        }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpdateConfig {
    repo: String,
    /// A credential name on the build hosts, never a secret.
    #[serde(default)]
    repo_credential: Option<String>,
    branch: String,
    #[serde(default)]
    dockerfile: Option<String>,
    #[serde(default)]
    compile: Option<CompileSpec>,
    #[serde(default)]
    outputs: Vec<String>,
    image: String,
    /// Absent: the visibility stays as it is.
    #[serde(default)]
    public: Option<bool>,
}

/// Replaces the spec (and optionally the visibility); creator, webhook
/// secret and running builds are kept (a task carries its own copy of the
/// spec).
async fn update_config(
    axum::extract::State(st): axum::extract::State<BuildsState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<UpdateConfig>,
) -> Result<Json<ConfigView>, ApiError> {
    let (grant, stored) = authorized(&st, &caller, &id, Action::Update).await?;
    let (mut cfg, rev) = (stored.config, stored.rev);
    let spec = BuildSpec {
        repo: body.repo,
        repo_credential: body.repo_credential,
        branch: body.branch,
        dockerfile: body
            .dockerfile
            .unwrap_or_else(|| leengine_build::DEFAULT_DOCKERFILE.to_string()),
        compile: body.compile,
        outputs: body.outputs,
        image: body.image,
    };
    check_spec(&st, &spec, &caller.user, caller.admin).await?;
    cfg.spec = spec;
    cfg.push_as = Some(caller.user.clone());
    let mut resource = grant.resource.value.clone();
    resource.public = body.public.unwrap_or(resource.public);
    let ev = activity::event(
        &caller.user,
        "updated",
        serde_json::json!({
            "repo": cfg.spec.repo, "branch": cfg.spec.branch,
            "image": cfg.spec.image, "public": resource.public,
        }),
    );
    let key = st.keys.build_config(&id);
    let res_key = st.keys.core_resource(Kind::Build.as_str(), &id);
    let committed = st
        .db()
        .commit(
            vec![
                store::unchanged(key.clone(), Some(rev)),
                grant.resource.unchanged(),
            ],
            vec![
                store::put(key, &cfg),
                store::put(res_key, &resource),
                activity::op(&st.keys, Kind::Build, &id, &ev),
            ],
        )
        .await?;
    if !committed.applied() {
        return Err(ApiError::conflict(
            "build_config_changed",
            format!("build config {id} changed meanwhile; retry"),
        ));
    }
    tracing::info!(config = %id, user = %caller.user, "build config updated");
    Ok(Json(view(cfg, resource.public, grant.role)))
}

/// Reads a config; `None` when absent.
async fn read_config(st: &BuildsState, id: &str) -> Result<Option<StoredConfig>, ApiError> {
    if validate::name("id", id).is_err() {
        return Ok(None);
    }
    let resp = st.etcd.clone().get(st.keys.build_config(id), None).await?;
    match resp.kvs().first() {
        None => Ok(None),
        Some(kv) => Ok(Some(StoredConfig {
            config: serde_json::from_slice(kv.value())?,
            rev: kv.mod_revision(),
            incarnation: kv.create_revision(),
        })),
    }
}

/// The config if the caller may do `action` on it (404 to non-members of a
/// private config, 403 to members lacking the role), with its revisions.
async fn authorized(
    st: &BuildsState,
    caller: &Caller,
    id: &str,
    action: Action,
) -> Result<(Grant, StoredConfig), ApiError> {
    let grant = access::authorize(&st.db(), Some(caller), Kind::Build, id, action).await?;
    let stored = read_config(st, id).await?.ok_or_else(|| config_gone(id))?;
    Ok((grant, stored))
}

/// Configs the caller created or is a member of (admins: all). Reads are
/// proportional to the caller's memberships, in batches of 64.
async fn list_configs(
    axum::extract::State(st): axum::extract::State<BuildsState>,
    caller: Caller,
) -> Result<Json<Vec<ConfigView>>, ApiError> {
    let visible = access::visible(&st.db(), &caller, Kind::Build).await?;
    let mut out = Vec::new();
    for chunk in visible.chunks(64) {
        let reads = chunk
            .iter()
            .map(|(r, _)| record::get(st.keys.build_config(&r.name)))
            .collect();
        let batch = record::read(&st.etcd, reads).await?;
        for ((r, role), get) in chunk.iter().zip(&batch.responses) {
            if let Some(cfg) = record::decode_one(get)? {
                out.push(view(cfg.value, r.public, Some(*role)));
            }
        }
    }
    Ok(Json(out))
}

async fn get_config(
    axum::extract::State(st): axum::extract::State<BuildsState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ConfigView>, ApiError> {
    let (grant, stored) = authorized(&st, &caller, &id, Action::View).await?;
    Ok(Json(view(
        stored.config,
        grant.resource.value.public,
        grant.role,
    )))
}

/// Deletes the config, its run records, members and feed; tasks already on
/// builders finish (their run updates then fail their compare and the agent
/// drops them).
async fn delete_config(
    axum::extract::State(st): axum::extract::State<BuildsState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (grant, stored) = authorized(&st, &caller, &id, Action::Delete).await?;
    let rev = stored.rev;
    let key = st.keys.build_config(&id);
    access::unregister(
        &st.db(),
        &grant,
        (
            vec![store::unchanged(key.clone(), Some(rev))],
            vec![
                store::delete(key),
                store::delete_prefix(st.keys.build_runs_prefix(&id)),
            ],
        ),
    )
    .await?;
    tracing::info!(config = %id, user = %caller.user, "build config deleted");
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
    let (_, stored) = authorized(&st, &caller, &id, Action::Trigger).await?;
    // The push right is the triggering user's, checked now: a role lost
    // since the config was written stops their builds.
    check_spec(&st, &stored.config.spec, &caller.user, caller.admin).await?;
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
    let req = DispatchRequest {
        trigger: Trigger::Manual {
            user: caller.user.clone(),
        },
        pusher: caller.user,
        tag: body.tag,
        commit: body.commit,
    };
    let run = dispatch(&st, &stored, req).await?;
    Ok((StatusCode::ACCEPTED, Json(run)))
}

async fn list_runs(
    axum::extract::State(st): axum::extract::State<BuildsState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<BuildRun>>, ApiError> {
    authorized(&st, &caller, &id, Action::ReadLogs).await?;
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
    authorized(&st, &caller, &id, Action::ReadLogs).await?;
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
    let presented = headers
        .get("x-gitlab-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // An unknown id and a wrong secret get the same answer (after the same
    // hashing), so the hook does not tell which config ids exist.
    let Some(stored) = webhook::authenticate(read_config(&st, &id).await?, presented) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "webhook_token_invalid",
            "X-Gitlab-Token is missing or does not match this webhook",
        ));
    };
    let cfg = &stored.config;
    match webhook::match_push(cfg, &push) {
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
            // Nobody signed in: the build pushes as whoever last set the image.
            cfg.spec.check(&st.settings.policy).map_err(invalid)?;
            let repository = st
                .settings
                .policy
                .repository(&cfg.spec.image)
                .map_err(invalid)?;
            push::check_user(&st, cfg.pusher(), repository).await?;
            let req = DispatchRequest {
                trigger: Trigger::Webhook {
                    user: push.user_username.clone(),
                },
                pusher: cfg.pusher().to_string(),
                tag: None,
                commit: Some(commit),
            };
            let run = dispatch(&st, &stored, req).await?;
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

//! Routes under `/api/v1/slb/groups/{group}/`.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use etcd_client::GetOptions;
use leengine_slb::model::validate_domain;
use leengine_slb::render::render_domain;
use leengine_slb::{AgentStatus, DomainConfig, Upstream};
use leengine_store::keys;
use leengine_store::record;
use serde::Deserialize;

use super::view::{agent_domain_status, DomainStatus, DomainView};
use super::SlbState;
use crate::auth::Caller;
use crate::problem::{ApiError, Json, Path};

pub fn router(state: SlbState) -> Router {
    Router::new()
        .route("/api/v1/slb/groups/{group}/domains", get(list).post(create))
        .route(
            "/api/v1/slb/groups/{group}/domains/{domain}",
            get(show).put(update).delete(remove),
        )
        .route(
            "/api/v1/slb/groups/{group}/domains/{domain}/upstream",
            put(replace_upstream),
        )
        .route(
            "/api/v1/slb/groups/{group}/domains/{domain}/nginx",
            get(rendered),
        )
        .route(
            "/api/v1/slb/groups/{group}/domains/{domain}/status",
            get(status),
        )
        .route("/api/v1/slb/groups/{group}/agents", get(agents))
        .route(
            "/api/v1/slb/groups/{group}/dns",
            get(super::dns::show)
                .put(super::dns::set)
                .delete(super::dns::remove),
        )
        .with_state(state)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateBody {
    domain: String,
    config: DomainConfig,
    #[serde(default)]
    upstream: Upstream,
}

pub(super) fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    if caller.admin {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "admin_only",
            "only administrators may change load-balancer configuration",
        ))
    }
}

pub(super) fn check_group(group: &str) -> Result<(), ApiError> {
    validate_domain(group).map_err(|_| {
        ApiError::bad_request(
            "invalid_group",
            format!("group {group:?} must be a lowercase name"),
        )
    })
}

fn check_domain(group: &str, domain: &str) -> Result<(), ApiError> {
    check_group(group)?;
    validate_domain(domain).map_err(|e| ApiError::bad_request("invalid_domain", e.to_string()))
}

fn invalid_config(e: leengine_slb::SlbError) -> ApiError {
    ApiError::bad_request("invalid_config", e.to_string())
}

fn invalid_upstream(e: leengine_slb::SlbError) -> ApiError {
    ApiError::bad_request("invalid_upstream", e.to_string())
}

fn domain_missing(group: &str, domain: &str) -> ApiError {
    ApiError::not_found(
        "domain_not_found",
        format!("no domain {domain} in group {group}"),
    )
}

fn etag(revision: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// `If-Match: "REV"` → the config revision the caller last saw.
fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .map(|s| s.trim().trim_matches('"'))
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request("invalid_if_match", "If-Match must be an ETag from this API")
        })
}

async fn read_domain(st: &SlbState, group: &str, domain: &str) -> Result<DomainView, ApiError> {
    let resp = st
        .etcd
        .clone()
        .get(
            keys::slb_domain_prefix(group, domain),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    let (ck, uk) = (
        keys::slb_domain_config(group, domain),
        keys::slb_domain_upstream(group, domain),
    );
    let mut config = None;
    let mut upstream = (Upstream::default(), 0);
    for kv in resp.kvs() {
        if kv.key() == ck.as_bytes() {
            config = Some((serde_json::from_slice(kv.value())?, kv.mod_revision()));
        } else if kv.key() == uk.as_bytes() {
            upstream = (serde_json::from_slice(kv.value())?, kv.mod_revision());
        }
    }
    let (config, config_revision) = config.ok_or_else(|| domain_missing(group, domain))?;
    Ok(DomainView {
        group: group.to_string(),
        domain: domain.to_string(),
        config,
        upstream: upstream.0,
        config_revision,
        upstream_revision: upstream.1,
    })
}

fn with_etag(view: DomainView, status: StatusCode) -> Response {
    let tag = etag(view.config_revision);
    let mut resp = (status, Json(view)).into_response();
    resp.headers_mut().insert(header::ETAG, tag);
    resp
}

async fn list(
    _caller: Caller,
    axum::extract::State(st): axum::extract::State<SlbState>,
    Path(group): Path<String>,
) -> Result<Json<Vec<DomainView>>, ApiError> {
    check_group(&group)?;
    let resp = st
        .etcd
        .clone()
        .get(
            keys::slb_domains_prefix(&group),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    let mut domains =
        std::collections::BTreeMap::<String, (Option<(DomainConfig, i64)>, (Upstream, i64))>::new();
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        match keys::parse_slb_domain_key(&group, &key) {
            Some(keys::SlbDomainKey::Config(d)) => {
                domains.entry(d.to_string()).or_default().0 =
                    Some((serde_json::from_slice(kv.value())?, kv.mod_revision()));
            }
            Some(keys::SlbDomainKey::Upstream(d)) => {
                domains.entry(d.to_string()).or_default().1 =
                    (serde_json::from_slice(kv.value())?, kv.mod_revision());
            }
            None => {}
        }
    }
    let views = domains
        .into_iter()
        .filter_map(|(domain, (config, upstream))| {
            let (config, config_revision) = config?;
            Some(DomainView {
                group: group.clone(),
                domain,
                config,
                upstream: upstream.0,
                config_revision,
                upstream_revision: upstream.1,
            })
        })
        .collect();
    Ok(Json(views))
}

async fn create(
    caller: Caller,
    axum::extract::State(st): axum::extract::State<SlbState>,
    Path(group): Path<String>,
    Json(body): Json<CreateBody>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    check_domain(&group, &body.domain)?;
    body.config.validate(&body.domain).map_err(invalid_config)?;
    body.upstream.validate().map_err(invalid_upstream)?;
    let ck = keys::slb_domain_config(&group, &body.domain);
    let uk = keys::slb_domain_upstream(&group, &body.domain);
    let created = record::commit(
        &st.etcd,
        vec![record::absent(&ck)],
        vec![
            record::put(&ck, &body.config),
            record::put(&uk, &body.upstream),
        ],
    )
    .await?;
    let Some(rev) = created.revision() else {
        return Err(ApiError::conflict(
            "domain_exists",
            format!("domain {} already exists in group {group}", body.domain),
        ));
    };
    tracing::info!(user = %caller.user, group = %group, domain = %body.domain, revision = rev, "slb domain created");
    let view = DomainView {
        group,
        domain: body.domain,
        config: body.config,
        upstream: body.upstream,
        config_revision: rev,
        upstream_revision: rev,
    };
    Ok(with_etag(view, StatusCode::CREATED))
}

async fn show(
    _caller: Caller,
    axum::extract::State(st): axum::extract::State<SlbState>,
    Path((group, domain)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    check_domain(&group, &domain)?;
    Ok(with_etag(
        read_domain(&st, &group, &domain).await?,
        StatusCode::OK,
    ))
}

async fn update(
    caller: Caller,
    axum::extract::State(st): axum::extract::State<SlbState>,
    Path((group, domain)): Path<(String, String)>,
    headers: HeaderMap,
    Json(config): Json<DomainConfig>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    check_domain(&group, &domain)?;
    config.validate(&domain).map_err(invalid_config)?;
    let expected = if_match(&headers)?;
    let ck = keys::slb_domain_config(&group, &domain);
    let guard = match expected {
        Some(rev) => record::unchanged(&ck, Some(rev)),
        None => record::present(&ck),
    };
    let done = record::commit(&st.etcd, vec![guard], vec![record::put(&ck, &config)]).await?;
    if !done.applied() {
        // Tell "gone" from "changed meanwhile".
        let view = read_domain(&st, &group, &domain).await?;
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "revision_mismatch",
            format!(
                "config of {domain} is at revision {}, not {}",
                view.config_revision,
                expected.unwrap_or_default()
            ),
        ));
    }
    tracing::info!(user = %caller.user, group = %group, domain = %domain, "slb domain config updated");
    Ok(with_etag(
        read_domain(&st, &group, &domain).await?,
        StatusCode::OK,
    ))
}

async fn remove(
    caller: Caller,
    axum::extract::State(st): axum::extract::State<SlbState>,
    Path((group, domain)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    require_admin(&caller)?;
    check_domain(&group, &domain)?;
    let ck = keys::slb_domain_config(&group, &domain);
    let done = record::commit(
        &st.etcd,
        vec![record::present(&ck)],
        vec![record::delete_prefix(keys::slb_domain_prefix(
            &group, &domain,
        ))],
    )
    .await?;
    if !done.applied() {
        return Err(domain_missing(&group, &domain));
    }
    tracing::info!(user = %caller.user, group = %group, domain = %domain, "slb domain deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Service discovery's call: the complete new peer list.
async fn replace_upstream(
    caller: Caller,
    axum::extract::State(st): axum::extract::State<SlbState>,
    Path((group, domain)): Path<(String, String)>,
    Json(upstream): Json<Upstream>,
) -> Result<Json<Upstream>, ApiError> {
    require_admin(&caller)?;
    check_domain(&group, &domain)?;
    upstream.validate().map_err(invalid_upstream)?;
    let ck = keys::slb_domain_config(&group, &domain);
    let done = record::commit(
        &st.etcd,
        vec![record::present(&ck)],
        vec![record::put(
            keys::slb_domain_upstream(&group, &domain),
            &upstream,
        )],
    )
    .await?;
    if !done.applied() {
        return Err(domain_missing(&group, &domain));
    }
    tracing::info!(group = %group, domain = %domain, servers = upstream.servers.len(), "slb upstream replaced");
    Ok(Json(upstream))
}

/// The nginx file the agents render for the domain.
async fn rendered(
    _caller: Caller,
    axum::extract::State(st): axum::extract::State<SlbState>,
    Path((group, domain)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    check_domain(&group, &domain)?;
    let view = read_domain(&st, &group, &domain).await?;
    let text = render_domain(&domain, &view.config);
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

async fn read_agents(st: &SlbState, group: &str) -> Result<Vec<AgentStatus>, ApiError> {
    let resp = st
        .etcd
        .clone()
        .get(
            keys::slb_agents_prefix(group),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    resp.kvs()
        .iter()
        .map(|kv| serde_json::from_slice(kv.value()).map_err(ApiError::from))
        .collect()
}

async fn status(
    _caller: Caller,
    axum::extract::State(st): axum::extract::State<SlbState>,
    Path((group, domain)): Path<(String, String)>,
) -> Result<Json<DomainStatus>, ApiError> {
    check_domain(&group, &domain)?;
    let view = read_domain(&st, &group, &domain).await?;
    let latest = view.config_revision.max(view.upstream_revision);
    let agents = read_agents(&st, &group)
        .await?
        .iter()
        .map(|a| agent_domain_status(a, &domain, latest))
        .collect();
    Ok(Json(DomainStatus {
        domain,
        config_revision: view.config_revision,
        upstream_revision: view.upstream_revision,
        agents,
    }))
}

async fn agents(
    _caller: Caller,
    axum::extract::State(st): axum::extract::State<SlbState>,
    Path(group): Path<String>,
) -> Result<Json<Vec<AgentStatus>>, ApiError> {
    check_group(&group)?;
    Ok(Json(read_agents(&st, &group).await?))
}

//! Admin API of the Cell registry: register, list, show, drain/activate,
//! remove when empty.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use serde::Deserialize;

use super::{CellRecord, CellState};
use crate::auth::Caller;
use crate::deploy::objects::MANAGED_SELECTOR;
use crate::problem::{ApiError, Json, Path};
use crate::server::Core;
use crate::store;

pub fn router() -> Router<Core> {
    Router::new()
        .route("/api/v1/admin/cells", get(list).post(register))
        .route(
            "/api/v1/admin/cells/{cell}",
            get(show).patch(update).delete(remove),
        )
        .route("/api/v1/admin/cells/{cell}/nodes", get(super::nodes::nodes))
        .route("/api/v1/admin/cells/{cell}/pools", get(super::pools::pools))
        .route("/api/v1/apps/{name}/ip-ranges", get(super::ranges::export))
        .route(
            "/api/v1/apps/{name}/ip-pools/{cell}/{pool}",
            axum::routing::put(super::ranges::bind).delete(super::ranges::unbind),
        )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCell {
    pub name: String,
    /// File name of the kubeconfig in the core's credentials directory.
    pub kubeconfig: String,
    #[serde(default)]
    pub etcd: Vec<String>,
    #[serde(default)]
    pub nginx_groups: Vec<String>,
    #[serde(default)]
    pub delegated_pools: Vec<String>,
}

fn check_groups(groups: &[String]) -> Result<(), ApiError> {
    match groups.iter().find(|g| !crate::access::valid_name(g)) {
        Some(g) => Err(ApiError::bad_request(
            "invalid_nginx_group",
            format!("{g:?} is not an nginx group name"),
        )),
        None => Ok(()),
    }
}

async fn register(
    State(core): State<Core>,
    caller: Caller,
    Json(body): Json<NewCell>,
) -> Result<(StatusCode, Json<CellRecord>), ApiError> {
    caller.require_admin()?;
    // Cell names go into etcd keys, drain ids and Kubernetes labels.
    if !crate::access::valid_name(&body.name) || body.name.contains(['.', '_']) {
        return Err(ApiError::bad_request(
            "invalid_name",
            format!(
                "{:?} is not a Cell name (lower-case letters, digits, '-'; at most 63)",
                body.name
            ),
        ));
    }
    check_groups(&body.nginx_groups)?;
    let (_, api_url) = super::read_kubeconfig(&core.settings.cells, &body.kubeconfig)
        .map_err(|e| ApiError::bad_request("invalid_kubeconfig", e))?;
    let rec = CellRecord {
        name: body.name.clone(),
        kubeconfig: body.kubeconfig,
        api_url,
        etcd: body.etcd,
        nginx_groups: body.nginx_groups,
        delegated_pools: body.delegated_pools,
        state: CellState::Active,
        apps: 0,
        created: Utc::now(),
    };
    let key = core.db.keys.cell(&rec.name);
    let ok = core
        .db
        .commit(
            vec![store::absent(key.clone())],
            vec![store::put(key, &rec)],
        )
        .await?;
    if !ok.applied() {
        return Err(ApiError::conflict(
            "cell_exists",
            format!("cell {} is already registered", rec.name),
        ));
    }
    tracing::info!(cell = %rec.name, api = %rec.api_url, "cell registered");
    Ok((StatusCode::CREATED, Json(rec)))
}

async fn list(State(core): State<Core>, caller: Caller) -> Result<Json<Vec<CellRecord>>, ApiError> {
    caller.require_admin()?;
    Ok(Json(super::list(&core.db).await?))
}

async fn show(
    State(core): State<Core>,
    caller: Caller,
    Path(cell): Path<String>,
) -> Result<Json<CellRecord>, ApiError> {
    caller.require_admin()?;
    let c = super::require(&core.db, &cell).await?;
    Ok(Json(c.value))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellPatch {
    #[serde(default)]
    pub state: Option<CellState>,
    #[serde(default)]
    pub nginx_groups: Option<Vec<String>>,
    #[serde(default)]
    pub etcd: Option<Vec<String>>,
    #[serde(default)]
    pub delegated_pools: Option<Vec<String>>,
}

async fn update(
    State(core): State<Core>,
    caller: Caller,
    Path(cell): Path<String>,
    Json(p): Json<CellPatch>,
) -> Result<Json<CellRecord>, ApiError> {
    caller.require_admin()?;
    if let Some(g) = &p.nginx_groups {
        check_groups(g)?;
    }
    let (core, cell, p) = (&core, cell.as_str(), &p);
    let rec = store::optimistic(move || async move {
        let cur = super::require(&core.db, cell).await?;
        let mut rec = cur.value.clone();
        if let Some(s) = p.state {
            rec.state = s;
        }
        if let Some(g) = &p.nginx_groups {
            rec.nginx_groups = g.clone();
        }
        if let Some(e) = &p.etcd {
            rec.etcd = e.clone();
        }
        if let Some(d) = &p.delegated_pools {
            rec.delegated_pools = d.clone();
        }
        let put = store::put(core.db.keys.cell(cell), &rec);
        let done = core.db.commit(vec![cur.unchanged()], vec![put]).await?;
        Ok(done.applied().then_some(rec))
    })
    .await?;
    Ok(Json(rec))
}

/// Only an empty Cell goes: no app placed there and no namespace of ours
/// left in it (the reconciler removes a deleted app's namespaces).
async fn remove(
    State(core): State<Core>,
    caller: Caller,
    Path(cell): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let cur = super::require(&core.db, &cell).await?;
    if cur.value.apps > 0 {
        return Err(ApiError::conflict(
            "cell_not_empty",
            format!("cell {cell} still runs {} apps", cur.value.apps),
        ));
    }
    let client = super::client(&core.settings.cells, &cur.value).await?;
    let left = Api::<Namespace>::all(client)
        .list(&ListParams::default().labels(MANAGED_SELECTOR))
        .await
        .map_err(|e| super::kube_error(&cell, e))?;
    if !left.items.is_empty() {
        return Err(ApiError::conflict(
            "cell_not_empty",
            format!(
                "cell {cell} still holds {} app namespaces being removed; retry",
                left.items.len()
            ),
        ));
    }
    let gone = store::delete(core.db.keys.cell(&cell));
    if !core
        .db
        .commit(vec![cur.unchanged()], vec![gone])
        .await?
        .applied()
    {
        return Err(ApiError::conflict(
            "cell_changed",
            format!("cell {cell} changed meanwhile (an app was placed?); retry"),
        ));
    }
    tracing::info!(cell = %cell, "cell removed");
    Ok(StatusCode::NO_CONTENT)
}

//! An app's IP ranges (docs/ipam.md, "Apps: bound pools and the reserve"):
//! the pools of each of its Cells bound to its namespace, bound and unbound
//! here, and exported in one call for the firewall team ("allow
//! 10.1.8.0/27, that is app `shop`, in every Cell").
//!
//! Who may bind: an administrator any pool; the app's Owner only a pool the
//! administrators delegated on the Cell (`delegated_pools`) and that no
//! other app is bound to — sharing a pool between apps is an admin's call.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use ipnet::Ipv4Net;
use leengine_ipam::{AppBinding, BindRequest, Ipam, PoolUsage};
use serde::{Deserialize, Serialize};

use super::CellRecord;
use crate::access::{self, Action, Kind, Role};
use crate::activity;
use crate::auth::Caller;
use crate::deploy::spec::AppSpec;
use crate::problem::{ApiError, Json, Path, Query};
use crate::server::Core;

/// One bound range of the app in one Cell.
#[derive(Debug, PartialEq, Serialize)]
pub struct RangeView {
    pub cell: String,
    pub pool: String,
    pub cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub vlan: u16,
    /// Other apps bound to the same pool: a rule on the range admits them too.
    pub shared_with: Vec<String>,
    /// The pool's addresses, as `cnictl pool list` counts them (all its
    /// apps' pods when shared).
    pub ips_assignable: u64,
    pub ips_used: u64,
    pub ips_reserved: u64,
    pub ips_free: u64,
}

/// The app's binding in one Cell; `binding: null` = it uses shared pools.
#[derive(Debug, PartialEq, Serialize)]
pub struct CellRanges {
    pub cell: String,
    pub binding: Option<BindingView>,
    pub ranges: Vec<RangeView>,
    /// Addresses the app gave up and may take back (upgrade handover).
    pub reserved: usize,
}

#[derive(Debug, PartialEq, Serialize)]
pub struct BindingView {
    pub pools: Vec<String>,
    pub shared_fallback: bool,
    pub reserve_secs: u64,
}

impl From<AppBinding> for BindingView {
    fn from(b: AppBinding) -> Self {
        Self {
            pools: b.pools,
            shared_fallback: b.shared_fallback,
            reserve_secs: b.reserve_secs,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// `json` (default) or `text`: one `CELL CIDR APP POOL VLAN` line a range.
    #[serde(default)]
    pub format: Option<String>,
}

/// `{}` keeps the binding's settings (defaults for a new one).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindBody {
    #[serde(default)]
    pub shared_fallback: Option<bool>,
    #[serde(default)]
    pub reserve_secs: Option<u64>,
}

/// The plain-text export: what a firewall change request quotes.
pub fn text_lines(app: &str, cells: &[CellRanges]) -> String {
    cells
        .iter()
        .flat_map(|c| &c.ranges)
        .map(|r| format!("{} {} {app} {} vlan={}\n", r.cell, r.cidr, r.pool, r.vlan))
        .collect()
}

/// Namespace → app name: IPAM bindings are by namespace, people read names.
pub(super) async fn app_names(core: &Core) -> Result<BTreeMap<String, String>, ApiError> {
    Ok(crate::deploy::spec::all(&core.db)
        .await?
        .into_iter()
        .map(|s| (s.namespace, s.name))
        .collect())
}

async fn spec(core: &Core, app: &str) -> Result<AppSpec, ApiError> {
    Ok(core
        .db
        .get::<AppSpec>(&core.db.keys.app(app))
        .await?
        .ok_or_else(|| ApiError::conflict("app_incomplete", format!("app {app} has no spec")))?
        .value)
}

async fn cell(core: &Core, name: &str) -> Result<CellRecord, ApiError> {
    Ok(super::require(&core.db, name).await?.value)
}

async fn ipam(cell: &CellRecord) -> Result<Ipam, ApiError> {
    let (client, keys) = super::etcd(cell).await?;
    Ok(Ipam::new(client, keys, "leengine-core"))
}

async fn cell_ranges(
    ipam: &Ipam,
    cell: &CellRecord,
    ns: &str,
    names: &BTreeMap<String, String>,
) -> Result<CellRanges, ApiError> {
    let err = |e| super::pools::ipam_error(&cell.name, e);
    let binding = ipam
        .bindings()
        .await
        .map_err(err)?
        .into_iter()
        .find(|b| b.app == ns);
    // Bindings and pools read together: the ranges are of one revision.
    let ranges = ipam.app_ranges(Some(ns)).await.map_err(err)?;
    let reserved = ipam.app_reserve(ns).await.map_err(err)?.len();
    let usage: BTreeMap<String, PoolUsage> = ipam
        .pool_usage(None)
        .await
        .map_err(err)?
        .into_iter()
        .map(|u| (u.pool.name.clone(), u))
        .collect();
    let name_of = |n: String| names.get(&n).cloned().unwrap_or(n);
    Ok(CellRanges {
        cell: cell.name.clone(),
        binding: binding.map(BindingView::from),
        ranges: ranges
            .into_iter()
            .map(|r| {
                let u = usage.get(&r.pool);
                let count = |f: fn(&PoolUsage) -> u64| u.map_or(0, f);
                RangeView {
                    cell: cell.name.clone(),
                    cidr: r.cidr,
                    gateway: r.gateway,
                    vlan: r.vlan.id(),
                    shared_with: r.shared_with.into_iter().map(name_of).collect(),
                    ips_assignable: count(|u| u.ips_assignable),
                    ips_used: count(|u| u.ips_used),
                    ips_reserved: count(|u| u.ips_reserved),
                    ips_free: count(|u| u.ips_free),
                    pool: r.pool,
                }
            })
            .collect(),
        reserved,
    })
}

/// `GET /api/v1/apps/{name}/ip-ranges[?format=text]` (Guest+): every Cell
/// of the app, in one answer or none (a Cell down → 503 naming it): a
/// firewall rule must not be written from half the picture.
pub async fn export(
    State(core): State<Core>,
    caller: Caller,
    Path(app): Path<String>,
    Query(q): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let text = match q.format.as_deref() {
        None | Some("json") => false,
        Some("text") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_format",
                format!("format {other:?}: json or text"),
            ))
        }
    };
    access::authorize(&core.db, Some(&caller), Kind::App, &app, Action::View).await?;
    let spec = spec(&core, &app).await?;
    let names = app_names(&core).await?;
    let mut out = Vec::new();
    for c in &spec.cells {
        let cell = cell(&core, c).await?;
        out.push(cell_ranges(&ipam(&cell).await?, &cell, &spec.namespace, &names).await?);
    }
    if text {
        let body = text_lines(&app, &out);
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response());
    }
    Ok(Json(out).into_response())
}

/// What a non-admin Owner may bind: a delegated pool no other app holds.
fn owner_may_bind(
    cell: &CellRecord,
    pool: &str,
    ns: &str,
    bindings: &[AppBinding],
) -> Result<(), ApiError> {
    if !cell.delegated_pools.iter().any(|p| p == pool) {
        return Err(ApiError::forbidden(
            "pool_not_delegated",
            format!(
                "IP pool {pool} of cell {} is not delegated to app Owners; an administrator binds it",
                cell.name
            ),
        ));
    }
    let others = leengine_ipam::apps::apps_of(bindings, pool)
        .into_iter()
        .any(|a| a != ns);
    if others {
        return Err(ApiError::conflict(
            "pool_bound_elsewhere",
            format!("IP pool {pool} is bound to another app; only administrators share a pool"),
        ));
    }
    Ok(())
}

/// The checks every bind/unbind makes: the app is one of the caller's
/// (Owner) or the caller is an admin, and the Cell is one of the app's.
async fn target(
    core: &Core,
    caller: &Caller,
    app: &str,
    cell_name: &str,
) -> Result<(AppSpec, CellRecord), ApiError> {
    let g = access::authorize(&core.db, Some(caller), Kind::App, app, Action::View).await?;
    if !caller.admin && g.role != Some(Role::Owner) {
        return Err(ApiError::forbidden(
            "owner_only",
            format!("only app {app}'s Owners and administrators bind its IP pools"),
        ));
    }
    let spec = spec(core, app).await?;
    if !spec.cells.iter().any(|c| c == cell_name) {
        return Err(ApiError::not_found(
            "cell_not_of_app",
            format!("app {app} does not run in cell {cell_name}"),
        ));
    }
    Ok((spec, cell(core, cell_name).await?))
}

async fn record(core: &Core, caller: &Caller, app: &str, action: &str, detail: serde_json::Value) {
    let ev = activity::event(&caller.user, action, detail);
    let op = activity::op(&core.db.keys, Kind::App, app, &ev);
    // The binding is in the Cell's etcd already: a lost event must not undo it.
    if let Err(e) = core.db.commit(vec![], vec![op]).await {
        tracing::warn!(app, error = %e, "{action} not recorded in the activity feed");
    }
}

/// `PUT /api/v1/apps/{name}/ip-pools/{cell}/{pool}`: bind (or change the
/// binding's settings); answers the app's ranges in that Cell.
pub async fn bind(
    State(core): State<Core>,
    caller: Caller,
    Path((app, cell_name, pool)): Path<(String, String, String)>,
    Json(body): Json<BindBody>,
) -> Result<Json<CellRanges>, ApiError> {
    let (spec, cell) = target(&core, &caller, &app, &cell_name).await?;
    let ipam = ipam(&cell).await?;
    let err = |e| super::pools::ipam_error(&cell.name, e);
    if !caller.admin {
        let bindings = ipam.bindings().await.map_err(err)?;
        owner_may_bind(&cell, &pool, &spec.namespace, &bindings)?;
    }
    let req = BindRequest {
        app: spec.namespace.clone(),
        pool: pool.clone(),
        shared_fallback: body.shared_fallback,
        reserve_secs: body.reserve_secs,
    };
    let b = ipam.bind(&req).await.map_err(err)?;
    tracing::info!(user = %caller.user, app, cell = %cell.name, pool, "ip pool bound");
    let detail = serde_json::json!({ "cell": cell.name, "pool": pool, "pools": b.pools });
    record(&core, &caller, &app, "ip_pool_bound", detail).await;
    let names = app_names(&core).await?;
    Ok(Json(
        cell_ranges(&ipam, &cell, &spec.namespace, &names).await?,
    ))
}

/// `DELETE /api/v1/apps/{name}/ip-pools/{cell}/{pool}`.
pub async fn unbind(
    State(core): State<Core>,
    caller: Caller,
    Path((app, cell_name, pool)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let (spec, cell) = target(&core, &caller, &app, &cell_name).await?;
    ipam(&cell)
        .await?
        .unbind(&spec.namespace, &pool)
        .await
        .map_err(|e| super::pools::ipam_error(&cell.name, e))?;
    tracing::info!(user = %caller.user, app, cell = %cell.name, pool, "ip pool unbound");
    let detail = serde_json::json!({ "cell": cell.name, "pool": pool });
    record(&core, &caller, &app, "ip_pool_unbound", detail).await;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(delegated: &[&str]) -> CellRecord {
        CellRecord {
            name: "cella".into(),
            kubeconfig: "a".into(),
            api_url: "https://a".into(),
            etcd: vec![],
            nginx_groups: vec![],
            delegated_pools: delegated.iter().map(|s| s.to_string()).collect(),
            state: super::super::CellState::Active,
            apps: 0,
            created: chrono::Utc::now(),
        }
    }

    fn binding(ns: &str, pools: &[&str]) -> AppBinding {
        AppBinding {
            app: ns.into(),
            pools: pools.iter().map(|s| s.to_string()).collect(),
            shared_fallback: false,
            reserve_secs: 600,
        }
    }

    fn code(r: Result<(), ApiError>) -> &'static str {
        r.err().map_or("ok", |e| e.code)
    }

    #[test]
    fn an_owner_binds_only_delegated_pools() {
        assert_eq!(
            code(owner_may_bind(&cell(&[]), "p", "shop-1", &[])),
            "pool_not_delegated"
        );
        assert_eq!(
            code(owner_may_bind(&cell(&["q"]), "p", "shop-1", &[])),
            "pool_not_delegated"
        );
        assert_eq!(
            code(owner_may_bind(&cell(&["p"]), "p", "shop-1", &[])),
            "ok"
        );
    }

    #[test]
    fn an_owner_never_shares_a_pool_another_app_holds() {
        let held = [binding("blog-2", &["p"])];
        assert_eq!(
            code(owner_may_bind(&cell(&["p"]), "p", "shop-1", &held)),
            "pool_bound_elsewhere"
        );
        let own = [binding("shop-1", &["p"])];
        assert_eq!(
            code(owner_may_bind(&cell(&["p"]), "p", "shop-1", &own)),
            "ok",
            "re-binding its own"
        );
    }

    #[test]
    fn the_text_export_is_one_line_a_range_in_cell_order() {
        let r = |cell: &str, cidr: &str| RangeView {
            cell: cell.into(),
            pool: "shop27".into(),
            cidr: cidr.parse().unwrap(),
            gateway: "10.1.8.1".parse().unwrap(),
            vlan: 120,
            shared_with: vec![],
            ips_assignable: 29,
            ips_used: 4,
            ips_reserved: 0,
            ips_free: 25,
        };
        let cells = [
            CellRanges {
                cell: "cella".into(),
                binding: None,
                ranges: vec![r("cella", "10.1.8.0/27")],
                reserved: 0,
            },
            CellRanges {
                cell: "cellb".into(),
                binding: None,
                ranges: vec![],
                reserved: 0,
            },
            CellRanges {
                cell: "cellc".into(),
                binding: None,
                ranges: vec![r("cellc", "10.2.8.0/27")],
                reserved: 2,
            },
        ];
        assert_eq!(
            text_lines("shop", &cells),
            "cella 10.1.8.0/27 shop shop27 vlan=120\ncellc 10.2.8.0/27 shop shop27 vlan=120\n"
        );
    }
}

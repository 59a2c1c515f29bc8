//! What boss shows of a Cell's address space: each IP pool's use, read
//! from the IPAM in the Cell's etcd, as `cnictl pool list` shows it.

use std::net::Ipv4Addr;

use axum::extract::State;
use ipnet::Ipv4Net;
use leengine_ipam::{Ipam, IpamError, PoolUsage};
use serde::Serialize;

use crate::auth::Caller;
use crate::problem::{ApiError, Json, Path};
use crate::server::Core;

#[derive(Debug, PartialEq, Serialize)]
pub struct PoolView {
    pub name: String,
    pub cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub vlan: u16,
    /// Addresses that can ever be handed out (no network, broadcast,
    /// gateway or excluded address).
    pub ips_assignable: u64,
    pub ips_used: u64,
    /// Kept for an app or a pod identity: neither used nor free.
    pub ips_reserved: u64,
    pub ips_free: u64,
    pub blocks_claimed: u64,
    pub blocks_total: u64,
    /// Apps the pool is bound to (by name; a namespace of no app as is);
    /// empty: shared by every app.
    pub apps: Vec<String>,
}

impl From<PoolUsage> for PoolView {
    fn from(u: PoolUsage) -> Self {
        Self {
            name: u.pool.name,
            cidr: u.pool.cidr,
            gateway: u.pool.gateway,
            vlan: u.pool.vlan.id(),
            ips_assignable: u.ips_assignable,
            ips_used: u.ips_used,
            ips_reserved: u.ips_reserved,
            ips_free: u.ips_free,
            blocks_claimed: u.blocks_claimed,
            blocks_total: u.blocks_total,
            apps: u.apps,
        }
    }
}

/// `GET /api/v1/admin/cells/{cell}/pools` (admin).
pub async fn pools(
    State(core): State<Core>,
    caller: Caller,
    Path(cell): Path<String>,
) -> Result<Json<Vec<PoolView>>, ApiError> {
    caller.require_admin()?;
    let rec = super::require(&core.db, &cell).await?;
    let (client, keys) = super::etcd(&rec.value).await?;
    // Reads only: the IPAM's node name is never used.
    let usage = Ipam::new(client, keys, "")
        .pool_usage(None)
        .await
        .map_err(|e| ipam_error(&cell, e))?;
    let names = super::ranges::app_names(&core).await?;
    let view = |u: PoolUsage| {
        let mut v = PoolView::from(u);
        for a in &mut v.apps {
            if let Some(n) = names.get(a) {
                a.clone_from(n);
            }
        }
        v
    };
    Ok(Json(usage.into_iter().map(view).collect()))
}

/// An IPAM error of `cell` as a problem: the Cell's etcd down → 503; the
/// admin's or Owner's mistake → 404/409 naming it; anything else → 502.
pub(super) fn ipam_error(cell: &str, e: IpamError) -> ApiError {
    use axum::http::StatusCode as S;
    let (status, code) = match &e {
        _ if e.is_unavailable() => return super::unavailable(cell, e),
        IpamError::UnknownPool(_) => (S::NOT_FOUND, "pool_not_found"),
        IpamError::NotBound { .. } => (S::NOT_FOUND, "pool_not_bound"),
        IpamError::BindConflict { .. } => (S::CONFLICT, "pool_bind_conflict"),
        IpamError::Contention { .. } => (S::SERVICE_UNAVAILABLE, "cell_busy"),
        IpamError::InvalidRequest(_) => (S::BAD_REQUEST, "invalid_binding"),
        _ => (S::BAD_GATEWAY, "cell_error"),
    };
    ApiError::new(status, code, format!("cell {cell}'s IPAM: {e}"))
}

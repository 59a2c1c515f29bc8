//! The administrator's view and the public permission table.

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use chrono::{Days, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::access::table::{self, TableRow};
use crate::auth::Caller;
use crate::problem::{ApiError, Json, Query};
use crate::server::Core;
use crate::stats::{self, DayStats};

pub fn router() -> Router<Core> {
    Router::new()
        .route("/api/v1/permissions", get(permissions))
        .route("/api/v1/platform", get(platform))
        .route("/api/v1/admin/stats", get(daily_stats))
}

async fn permissions() -> Json<Vec<TableRow>> {
    Json(table::table())
}

/// What the console shows of the platform (`docker pull` lines).
#[derive(Debug, Serialize)]
pub struct Platform {
    /// `host[:port]` of the platform registry; `None` when not configured.
    pub registry: Option<String>,
}

async fn platform(State(core): State<Core>) -> Json<Platform> {
    Json(Platform {
        registry: core.settings.builds.policy.registry.clone(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    /// First day, `YYYY-MM-DD` (UTC); default: six days before `to`.
    #[serde(default)]
    pub from: Option<NaiveDate>,
    /// Last day, inclusive; default: today.
    #[serde(default)]
    pub to: Option<NaiveDate>,
}

#[derive(Debug, Serialize)]
pub struct StatsView {
    pub days: Vec<DayStats>,
}

async fn daily_stats(
    State(core): State<Core>,
    caller: Caller,
    Query(r): Query<Range>,
) -> Result<Json<StatsView>, ApiError> {
    caller.require_admin()?;
    let to = r.to.unwrap_or_else(|| Utc::now().date_naive());
    let from = match r.from {
        Some(f) => f,
        None => to
            .checked_sub_days(Days::new(6))
            .ok_or_else(|| ApiError::bad_request("invalid_range", "`to` is too early"))?,
    };
    Ok(Json(StatsView {
        days: stats::range(&core.db, from, to).await?,
    }))
}

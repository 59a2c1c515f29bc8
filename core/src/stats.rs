//! Daily operation counts for the admin view. Each counted event is its own
//! key (`{prefix}/core/stats/{day}/{metric}/{id}`) written in the same
//! transaction as the operation, so counting is a count-only range read and
//! concurrent operations never fight over a counter. Re-delivered events
//! with the same id (registry notifications) are counted once.

use chrono::{DateTime, NaiveDate, Utc};
use etcd_client::TxnOp;
use leengine_store::Keys;
use serde::{Deserialize, Serialize};

use crate::problem::ApiError;
use crate::store::Db;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Deploys,
    Builds,
    Pushes,
    Scalings,
    /// Version and app deletions.
    Deletions,
}

impl Metric {
    pub const ALL: [Metric; 5] = [
        Metric::Deploys,
        Metric::Builds,
        Metric::Pushes,
        Metric::Scalings,
        Metric::Deletions,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Deploys => "deploys",
            Metric::Builds => "builds",
            Metric::Pushes => "pushes",
            Metric::Scalings => "scalings",
            Metric::Deletions => "deletions",
        }
    }
}

pub fn day(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d").to_string()
}

/// The transaction op that counts one `metric` event with a unique `id`.
pub fn op(keys: &Keys, metric: Metric, at: DateTime<Utc>, id: &str, subject: &str) -> TxnOp {
    TxnOp::put(
        keys.core_stat_event(&day(at), metric.as_str(), id),
        subject.as_bytes().to_vec(),
        None,
    )
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayStats {
    pub day: String,
    pub deploys: u64,
    pub builds: u64,
    pub pushes: u64,
    pub scalings: u64,
    #[serde(default)]
    pub deletions: u64,
}

/// Longest range one request may ask for.
pub const MAX_DAYS: i64 = 366;

/// Counts for each day from `from` to `to` inclusive.
pub async fn range(db: &Db, from: NaiveDate, to: NaiveDate) -> Result<Vec<DayStats>, ApiError> {
    if to < from {
        return Err(ApiError::bad_request(
            "invalid_range",
            "`to` is before `from`",
        ));
    }
    if (to - from).num_days() >= MAX_DAYS {
        return Err(ApiError::bad_request(
            "invalid_range",
            format!("at most {MAX_DAYS} days per request"),
        ));
    }
    let mut out = Vec::new();
    for offset in 0..=(to - from).num_days() {
        let name = (from + chrono::Days::new(offset as u64))
            .format("%Y-%m-%d")
            .to_string();
        let mut s = DayStats {
            day: name.clone(),
            ..Default::default()
        };
        for m in Metric::ALL {
            let n = db
                .count(&db.keys.core_stats_prefix(&name, m.as_str()))
                .await?;
            match m {
                Metric::Deploys => s.deploys = n,
                Metric::Builds => s.builds = n,
                Metric::Pushes => s.pushes = n,
                Metric::Scalings => s.scalings = n,
                Metric::Deletions => s.deletions = n,
            }
        }
        out.push(s);
    }
    Ok(out)
}

//! Activity feed per resource. Every mutating action adds its event in the
//! same etcd transaction as the change itself, so the feed never shows a
//! change that did not happen nor misses one that did.

use chrono::{DateTime, Utc};
use etcd_client::{GetOptions, SortOrder, SortTarget, TxnOp};
use leengine_store::Keys;
use serde::{Deserialize, Serialize};

use crate::access::Kind;
use crate::problem::ApiError;
use crate::store::{self, Db};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub at: DateTime<Utc>,
    pub actor: String,
    /// e.g. `created`, `member_added`, `deployed`, `scaled`, `pushed`.
    pub action: String,
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// Time-ordered and unique: keys sort by time, the random tail keeps two
/// events of the same nanosecond apart.
pub fn new_id(at: DateTime<Utc>) -> String {
    let nanos = at.timestamp_nanos_opt().unwrap_or_default();
    format!("{nanos:020}-{:08x}", rand::random::<u32>())
}

pub fn event(actor: &str, action: &str, detail: serde_json::Value) -> Event {
    let at = Utc::now();
    Event {
        id: new_id(at),
        at,
        actor: actor.to_string(),
        action: action.to_string(),
        detail,
    }
}

/// The transaction op that records `ev` on the resource's feed.
pub fn op(keys: &Keys, kind: Kind, name: &str, ev: &Event) -> TxnOp {
    store::put(keys.core_activity(kind.as_str(), name, &ev.id), ev)
}

/// Newest first, at most `limit` (etcd sorts and limits).
pub async fn list(db: &Db, kind: Kind, name: &str, limit: usize) -> Result<Vec<Event>, ApiError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let prefix = db.keys.core_activity_prefix(kind.as_str(), name);
    let opts = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Key, SortOrder::Descend)
        .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
    let resp = db.etcd.kv_client().get(prefix, Some(opts)).await?;
    resp.kvs()
        .iter()
        .map(|kv| Ok(serde_json::from_slice(kv.value())?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time() {
        let a = new_id(DateTime::from_timestamp(1_000, 5).unwrap());
        let b = new_id(DateTime::from_timestamp(1_000, 6).unwrap());
        let c = new_id(DateTime::from_timestamp(20_000, 0).unwrap());
        assert!(a < b && b < c, "{a} {b} {c}");
    }
}

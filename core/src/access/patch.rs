//! Changes every resource kind shares: its description and public flag.

use serde::Deserialize;

use super::{authorize, Action, Grant, Kind};
use crate::activity;
use crate::auth::Caller;
use crate::problem::ApiError;
use crate::store::{self, Db};

const MAX_DESCRIPTION: usize = 1000;

pub fn check_description(d: &str) -> Result<(), ApiError> {
    if d.chars().count() > MAX_DESCRIPTION {
        return Err(ApiError::bad_request(
            "invalid_description",
            format!("a description has at most {MAX_DESCRIPTION} characters"),
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Patch {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub public: Option<bool>,
}

/// Shared by apps, images and groups: change description / public flag.
pub async fn patch(
    db: &Db,
    caller: &Caller,
    kind: Kind,
    name: &str,
    p: &Patch,
) -> Result<Grant, ApiError> {
    if let Some(d) = &p.description {
        check_description(d)?;
    }
    store::optimistic(move || async move {
        let mut g = authorize(db, Some(caller), kind, name, Action::Update).await?;
        let r = &mut g.resource.value;
        if let Some(d) = &p.description {
            r.description = d.clone();
        }
        if let Some(public) = p.public {
            r.public = public;
        }
        let ev = activity::event(
            &caller.user,
            "updated",
            serde_json::json!({ "description": p.description, "public": p.public }),
        );
        let done = db
            .commit(
                vec![g.resource.unchanged()],
                vec![
                    store::put(g.resource.key.as_str(), &g.resource.value),
                    activity::op(&db.keys, kind, name, &ev),
                ],
            )
            .await?;
        Ok(done.applied().then_some(g))
    })
    .await
}

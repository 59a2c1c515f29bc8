//! Who may make the farm push where. A build pushes `spec.image` with a
//! token the core signs, so creating, updating or triggering a config needs
//! the push right the registry would demand of the person themselves: the
//! image's role, or for an image not pushed yet its group's (pushing
//! creates it), as in `/v2/token`.

use crate::access::{self, table, Action, Decision, Kind, Role};
use crate::problem::ApiError;
use crate::users::User;

use super::BuildsState;

/// Refuses unless `user` may push to `repository` (`group/name`). Unknown
/// and invisible images and groups are refused the same way as visible
/// ones without the role, so the answer tells nothing about them.
pub(super) async fn check(
    st: &BuildsState,
    user: &str,
    admin: bool,
    repository: &str,
) -> Result<(), ApiError> {
    if !access::valid_resource_name(Kind::Image, repository) {
        return Err(ApiError::bad_request(
            "invalid_build_config",
            format!("image repository {repository:?} must be GROUP/NAME with lower-case names"),
        ));
    }
    let db = st.db();
    let effective = |role: Option<Role>| if admin { Some(Role::Owner) } else { role };
    let (image, role) = access::load(&db, Kind::Image, repository, Some(user)).await?;
    let allowed = match image {
        Some(img) => {
            table::decide(
                Kind::Image,
                Action::Push,
                img.value.public,
                effective(role),
                false,
            ) == Decision::Allow
        }
        None => {
            let group = access::image_group(repository).unwrap_or_default();
            let (g, role) = access::load(&db, Kind::Group, group, Some(user)).await?;
            g.is_some()
                && table::decide(Kind::Group, Action::Push, false, effective(role), false)
                    == Decision::Allow
        }
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "image_push_forbidden",
            format!(
                "{user} may not push to image {repository}: a build config needs push rights \
                 (Developer) on its target image or the image's group"
            ),
        ))
    }
}

/// [`check`] for a user who is not the caller (webhook builds push as the
/// config's `push_as`); a deleted account may push nowhere.
pub(super) async fn check_user(
    st: &BuildsState,
    user: &str,
    repository: &str,
) -> Result<(), ApiError> {
    let admin = st
        .db()
        .get::<User>(&st.keys.core_user(user))
        .await?
        .map(|u| u.value.admin);
    match admin {
        Some(admin) => check(st, user, admin, repository).await,
        None => Err(ApiError::forbidden(
            "image_push_forbidden",
            format!("{user}, who set this config's image, no longer exists; a member with push rights must update the config"),
        )),
    }
}

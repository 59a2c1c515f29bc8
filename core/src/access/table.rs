//! The permission table: which role may do what on which kind of resource.
//! Pure data; served by `GET /api/v1/permissions` and written in
//! docs/core-api.md.

use serde::{Deserialize, Serialize};

/// The four resource kinds that carry members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    App,
    Image,
    Group,
    Build,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::App, Kind::Image, Kind::Group, Kind::Build];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::App => "app",
            Kind::Image => "image",
            Kind::Group => "group",
            Kind::Build => "build",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The problem code for "no such resource (that you may see)".
    pub fn not_found_code(self) -> &'static str {
        match self {
            Kind::App => "app_not_found",
            Kind::Image => "image_not_found",
            Kind::Group => "group_not_found",
            Kind::Build => "build_config_not_found",
        }
    }
}

/// GitLab-style roles, ordered from least to most powerful.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    Guest,
    Reporter,
    Developer,
    Master,
    Owner,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Guest,
        Role::Reporter,
        Role::Developer,
        Role::Master,
        Role::Owner,
    ];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// See the resource, its members and its activity feed.
    View,
    /// Read build or application logs.
    ReadLogs,
    /// Pull an image (on a group: every image in it).
    Pull,
    /// Push an image (on a group: every image in it, and create new ones).
    Push,
    /// Trigger a build.
    Trigger,
    /// Deploy a new application version.
    Deploy,
    /// Change an application's replica count.
    Scale,
    /// Change the resource's settings (description, public flag, spec).
    Update,
    /// Add, change and remove members (up to the caller's own role).
    ManageMembers,
    /// Delete the resource.
    Delete,
}

impl Action {
    pub const ALL: [Action; 10] = [
        Action::View,
        Action::ReadLogs,
        Action::Pull,
        Action::Push,
        Action::Trigger,
        Action::Deploy,
        Action::Scale,
        Action::Update,
        Action::ManageMembers,
        Action::Delete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::View => "view",
            Action::ReadLogs => "read_logs",
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Trigger => "trigger",
            Action::Deploy => "deploy",
            Action::Scale => "scale",
            Action::Update => "update",
            Action::ManageMembers => "manage_members",
            Action::Delete => "delete",
        }
    }
}

/// The least role that may do `action` on a `kind`; `None` when the action
/// does not apply to that kind.
pub fn min_role(kind: Kind, action: Action) -> Option<Role> {
    use Action as A;
    use Kind as K;
    let role = match (kind, action) {
        (_, A::View) => Role::Guest,
        (K::App | K::Build, A::ReadLogs) => Role::Reporter,
        (K::Image | K::Group, A::Pull) => Role::Reporter,
        (K::Image | K::Group, A::Push) => Role::Developer,
        (K::Build, A::Trigger) => Role::Developer,
        (K::App, A::Deploy | A::Scale) => Role::Master,
        (_, A::Update | A::ManageMembers) => Role::Master,
        (_, A::Delete) => Role::Owner,
        _ => return None,
    };
    Some(role)
}

/// What a caller who is not a member may do on a public resource.
/// Anonymous callers get this too, for images and groups only (registry
/// pulls). A public group does not make its images public: each image has its
/// own flag.
pub fn public_allows(kind: Kind, action: Action) -> bool {
    match action {
        Action::View => true,
        Action::Pull => kind == Kind::Image,
        _ => false,
    }
}

pub fn anonymous_allowed(kind: Kind) -> bool {
    matches!(kind, Kind::Image | Kind::Group)
}

/// Why a request is refused, before it is turned into 401/403/404.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// The caller may not know the resource exists: 404.
    Hidden,
    /// Anonymous, and signing in could help: 401.
    SignIn,
    /// The caller sees the resource but lacks the role: 403.
    Forbidden,
}

/// `role`: the caller's effective role (admins count as Owner), `None` for
/// non-members; `anonymous`: no credentials at all.
pub fn decide(
    kind: Kind,
    action: Action,
    public: bool,
    role: Option<Role>,
    anonymous: bool,
) -> Decision {
    let Some(needed) = min_role(kind, action) else {
        return Decision::Forbidden;
    };
    match role {
        Some(r) if r >= needed => Decision::Allow,
        Some(_) => Decision::Forbidden,
        None if !public => Decision::Hidden,
        None if anonymous && !anonymous_allowed(kind) => Decision::Hidden,
        None if public_allows(kind, action) => Decision::Allow,
        None if anonymous => Decision::SignIn,
        None => Decision::Forbidden,
    }
}

/// One row of the served permission table.
#[derive(Debug, Serialize)]
pub struct TableRow {
    pub kind: Kind,
    pub action: Action,
    pub description: &'static str,
    pub min_role: Role,
    pub roles: Vec<Role>,
    pub public_non_member: bool,
    pub public_anonymous: bool,
}

fn describe(kind: Kind, action: Action) -> &'static str {
    match (kind, action) {
        (_, Action::View) => "see the resource, its members and its activity",
        (Kind::App, Action::ReadLogs) => "read application logs",
        (_, Action::ReadLogs) => "read build logs",
        (Kind::Group, Action::Pull) => "pull every image of the group",
        (_, Action::Pull) => "pull the image",
        (Kind::Group, Action::Push) => "push to every image of the group, create images in it",
        (_, Action::Push) => "push the image",
        (_, Action::Trigger) => "trigger a build",
        (_, Action::Deploy) => "deploy a new version",
        (_, Action::Scale) => "change the replica count",
        (_, Action::Update) => "change settings and visibility",
        (_, Action::ManageMembers) => "add, change, remove members (up to one's own role)",
        (_, Action::Delete) => "delete the resource",
    }
}

pub fn table() -> Vec<TableRow> {
    let mut rows = Vec::new();
    for kind in Kind::ALL {
        for action in Action::ALL {
            let Some(min) = min_role(kind, action) else {
                continue;
            };
            rows.push(TableRow {
                kind,
                action,
                description: describe(kind, action),
                min_role: min,
                roles: Role::ALL.into_iter().filter(|r| *r >= min).collect(),
                public_non_member: public_allows(kind, action),
                public_anonymous: public_allows(kind, action) && anonymous_allowed(kind),
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitlab_semantics() {
        assert_eq!(min_role(Kind::App, Action::Deploy), Some(Role::Master));
        assert_eq!(min_role(Kind::App, Action::Scale), Some(Role::Master));
        assert_eq!(min_role(Kind::Image, Action::Push), Some(Role::Developer));
        assert_eq!(
            min_role(Kind::Build, Action::Trigger),
            Some(Role::Developer)
        );
        assert_eq!(min_role(Kind::Image, Action::Pull), Some(Role::Reporter));
        assert_eq!(min_role(Kind::App, Action::Delete), Some(Role::Owner));
        assert_eq!(min_role(Kind::App, Action::Push), None);
        assert_eq!(min_role(Kind::Image, Action::Deploy), None);
    }

    #[test]
    fn decisions_distinguish_404_403_401() {
        use Decision::*;
        let d = |public, role, anon| decide(Kind::Image, Action::Push, public, role, anon);
        assert_eq!(d(false, None, false), Hidden);
        assert_eq!(d(false, None, true), Hidden);
        assert_eq!(d(true, None, false), Forbidden);
        assert_eq!(d(true, None, true), SignIn);
        assert_eq!(d(false, Some(Role::Reporter), false), Forbidden);
        assert_eq!(d(false, Some(Role::Developer), false), Allow);
        assert_eq!(decide(Kind::Image, Action::Pull, true, None, true), Allow);
        // Public apps are visible to signed-in users only.
        assert_eq!(decide(Kind::App, Action::View, true, None, true), Hidden);
        assert_eq!(decide(Kind::App, Action::View, true, None, false), Allow);
    }

    #[test]
    fn table_lists_roles_at_or_above_minimum() {
        let t = table();
        let deploy = t
            .iter()
            .find(|r| r.kind == Kind::App && r.action == Action::Deploy)
            .unwrap();
        assert_eq!(deploy.roles, vec![Role::Master, Role::Owner]);
        assert!(t.iter().all(|r| min_role(r.kind, r.action).is_some()));
    }
}

//! Docker Registry v2 token server (`GET /v2/token`) and the registry's
//! notification endpoint (`POST /api/v1/registry/events`).
//!
//! A token grants, per requested repository, the intersection of the asked
//! actions and what the caller's role allows; anything refused is simply
//! left out, and the registry answers the client with its own 401/403.

pub mod events;
pub mod kid;
pub mod manifest;
pub mod scope;
mod scoped;
pub mod signer;

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::access::{self, table, Action, Kind, Role};
use crate::auth::Caller;
use crate::deploy::robot::{self, TokenSubject};
use crate::problem::{ApiError, Json};
use crate::server::Core;
use scope::Access;
use signer::{Claims, Signer};

/// How the core signs registry tokens.
#[derive(Clone)]
pub struct RegistrySettings {
    /// Must equal the registry's `auth.token.service`.
    pub service: String,
    /// Must equal the registry's `auth.token.issuer`.
    pub issuer: String,
    /// P-256 private key, PEM.
    pub key_pem: String,
    /// Certificate(s) of the key, PEM — the registry's `rootcertbundle`;
    /// checked against the key at start-up when given.
    pub cert_pem: Option<String>,
    pub ttl: Duration,
    /// Bearer secret the registry sends with notifications; `None` disables
    /// the notification endpoint.
    pub notify_secret: Option<String>,
}

impl std::fmt::Debug for RegistrySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrySettings")
            .field("service", &self.service)
            .field("issuer", &self.issuer)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

pub struct TokenServer {
    signer: Signer,
    service: String,
    issuer: String,
    ttl: Duration,
    notify_secret: Option<String>,
}

/// Written by hand: the secret it holds must not reach a log.
impl std::fmt::Debug for TokenServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenServer")
            .field("service", &self.service)
            .field("issuer", &self.issuer)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// The token endpoint's answer (both field names, as clients differ).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct TokenResponse {
    pub token: String,
    pub access_token: String,
    pub expires_in: u64,
    pub issued_at: DateTime<Utc>,
}

impl TokenServer {
    pub fn new(s: &RegistrySettings) -> Result<Self, ApiError> {
        let signer = Signer::from_pem(&s.key_pem, s.cert_pem.as_deref())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(Self {
            signer,
            service: s.service.clone(),
            issuer: s.issuer.clone(),
            ttl: s.ttl,
            notify_secret: s.notify_secret.clone(),
        })
    }

    pub fn kid(&self) -> &str {
        self.signer.kid()
    }

    /// Signs a token valid from `now` for the configured lifetime.
    pub fn issue_at(
        &self,
        subject: &str,
        access: Vec<Access>,
        now: DateTime<Utc>,
    ) -> TokenResponse {
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(300);
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.to_string(),
            aud: self.service.clone(),
            exp: now.timestamp() + ttl,
            nbf: now.timestamp(),
            iat: now.timestamp(),
            jti: format!("{:032x}", rand::random::<u128>()),
            access,
        };
        let token = self.signer.sign(&claims);
        TokenResponse {
            access_token: token.clone(),
            token,
            expires_in: self.ttl.as_secs(),
            issued_at: now,
        }
    }
}

pub fn router() -> Router<Core> {
    Router::new()
        .route("/v2/token", get(token))
        .route("/api/v1/registry/events", post(events::receive))
}

fn server(core: &Core) -> Result<&TokenServer, ApiError> {
    core.registry.as_deref().ok_or_else(|| {
        ApiError::not_found(
            "registry_disabled",
            "the registry token server is not configured",
        )
    })
}

async fn token(
    State(core): State<Core>,
    subject: TokenSubject,
    RawQuery(raw): RawQuery,
) -> Result<Json<TokenResponse>, ApiError> {
    let ts = server(&core)?;
    let pairs = scope::query_pairs(raw.as_deref().unwrap_or(""));
    let service = pairs
        .iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.as_str());
    if service != Some(ts.service.as_str()) {
        return Err(ApiError::bad_request(
            "invalid_service",
            format!("service must be {:?}", ts.service),
        ));
    }
    let asked = scope::parse_all(
        pairs
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.as_str()),
    )
    .map_err(|e| ApiError::bad_request("invalid_scope", e))?;
    let mut granted = Vec::new();
    for a in asked {
        let actions = match &subject {
            TokenSubject::User(caller) => allowed(&core, caller.as_ref(), &a).await?,
            TokenSubject::Robot(app) if a.kind == "repository" => {
                robot::robot_actions(&core.db, app, &a.name, &a.actions).await?
            }
            TokenSubject::Robot(_) => Vec::new(),
        };
        if !actions.is_empty() {
            granted.push(Access { actions, ..a });
        }
    }
    let robot_name;
    let subject = match &subject {
        TokenSubject::User(caller) => caller.as_ref().map_or("", |c| c.user.as_str()),
        TokenSubject::Robot(app) => {
            robot_name = robot::user_name(app);
            robot_name.as_str()
        }
    };
    tracing::debug!(
        user = subject,
        granted = granted.len(),
        "registry token issued"
    );
    Ok(Json(ts.issue_at(subject, granted, Utc::now())))
}

fn registry_action(a: &str) -> Option<Action> {
    match a {
        "pull" => Some(Action::Pull),
        "push" => Some(Action::Push),
        "delete" => Some(Action::Delete),
        _ => None,
    }
}

/// What a caller may do on one registry repository.
#[derive(Clone, Copy, Debug)]
pub struct Rights {
    repo: Repo,
    public: bool,
    role: Option<Role>,
    anonymous: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repo {
    /// An image record exists: its own rules.
    Image,
    /// No record yet, the group exists: the group's rules (a push creates
    /// the image).
    New,
    /// Neither image nor group.
    Unknown,
    /// A deleted image: its content may still be in the registry, so the
    /// name belongs to nobody (admins may pull and delete, to clean up).
    Deleted,
}

impl Rights {
    pub fn allows(&self, act: Action) -> bool {
        let decide = |kind| {
            table::decide(kind, act, self.public, self.role, self.anonymous)
                == table::Decision::Allow
        };
        match self.repo {
            Repo::Image => decide(Kind::Image),
            Repo::New => act != Action::Delete && decide(Kind::Group),
            Repo::Unknown => false,
            Repo::Deleted => self.role == Some(Role::Owner) && act != Action::Push,
        }
    }
}

/// The rights of `caller` (None: anonymous) on repository `name`
/// (`group/repo`): the one rule for registry tokens and for deploys.
pub async fn rights(core: &Core, caller: Option<&Caller>, name: &str) -> Result<Rights, ApiError> {
    let user = caller.map(|c| c.user.as_str());
    let admin = caller.is_some_and(|c| c.admin);
    let effective = |role: Option<Role>| if admin { Some(Role::Owner) } else { role };
    let mut rights = Rights {
        repo: Repo::Unknown,
        public: false,
        role: None,
        anonymous: caller.is_none(),
    };
    if !access::valid_resource_name(Kind::Image, name) {
        return Ok(rights);
    }
    let (image, role) = access::load(&core.db, Kind::Image, name, user).await?;
    if let Some(img) = image {
        rights.repo = Repo::Image;
        rights.public = img.value.public;
        rights.role = effective(role);
        return Ok(rights);
    }
    if crate::images::is_tombstoned(&core.db, name).await? {
        rights.repo = Repo::Deleted;
        rights.role = effective(None);
        return Ok(rights);
    }
    let group = access::image_group(name).unwrap_or_default();
    let (g, role) = access::load(&core.db, Kind::Group, group, user).await?;
    if g.is_some() {
        rights.repo = Repo::New;
        rights.role = effective(role);
    }
    Ok(rights)
}

/// The asked actions the caller may have on one scope.
async fn allowed(
    core: &Core,
    caller: Option<&Caller>,
    a: &Access,
) -> Result<Vec<String>, ApiError> {
    let asked: Vec<&str> = if a.actions.iter().any(|x| x == "*") {
        vec!["pull", "push", "delete"]
    } else {
        a.actions.iter().map(String::as_str).collect()
    };
    match (a.kind.as_str(), a.name.as_str()) {
        ("registry", "catalog") if caller.is_some_and(|c| c.admin) => return Ok(a.actions.clone()),
        ("repository", name) if access::valid_resource_name(Kind::Image, name) => {}
        _ => return Ok(Vec::new()),
    }
    let rights = rights(core, caller, &a.name).await?;
    Ok(asked
        .into_iter()
        .filter(|x| registry_action(x).is_some_and(|act| rights.allows(act)))
        .map(str::to_string)
        .collect())
}

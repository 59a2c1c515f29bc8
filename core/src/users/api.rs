//! Account endpoints: login, the caller's profile and tokens, and the
//! administrator's user management.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{check_password, create_user, issue_token, secret, TokenRecord, User};
use crate::auth::{Caller, ClientAddr, Proof, Signed};
use crate::problem::{ApiError, Json, Path};
use crate::quota::{self, Quota, Usage};
use crate::server::Core;
use crate::store;

pub fn router() -> Router<Core> {
    Router::new()
        .route("/api/v1/login", post(login))
        .route("/api/v1/user", get(me))
        .route("/api/v1/user/password", put(change_password))
        .route("/api/v1/user/tokens", get(list_tokens).post(new_token))
        .route("/api/v1/user/tokens/{id}", delete(revoke_token))
        .route("/api/v1/users", get(list_users).post(add_user))
        .route("/api/v1/users/{name}/quota", put(set_quota))
}

/// A user as the API shows it (never the hash).
#[derive(Debug, Serialize)]
pub struct UserView {
    pub name: String,
    pub admin: bool,
    pub created: DateTime<Utc>,
    pub quota: Quota,
    pub usage: Usage,
}

async fn view(core: &Core, u: User) -> Result<UserView, ApiError> {
    Ok(UserView {
        usage: quota::usage(&core.db, &u.name).await?,
        quota: u.quota.map_or(core.settings.default_quota, |q| {
            q.effective(core.settings.default_quota)
        }),
        name: u.name,
        admin: u.admin,
        created: u.created,
    })
}

fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    caller.require_admin()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub user: String,
    pub password: String,
}

/// Written by hand: the secret it holds must not reach a log.
impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
pub struct NewToken {
    pub id: String,
    pub name: String,
    pub token: String,
    pub expires: Option<DateTime<Utc>>,
}

/// Written by hand: the secret it holds must not reach a log.
impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

async fn login(
    State(core): State<Core>,
    ClientAddr(client): ClientAddr,
    Json(body): Json<Login>,
) -> Result<(StatusCode, Json<NewToken>), ApiError> {
    let user = check_password(&core.db, &core.throttle, client, &body.user, &body.password)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    let ttl =
        chrono::Duration::from_std(core.settings.login_ttl).unwrap_or(chrono::Duration::hours(24));
    let (rec, token) = issue_token(&core.db, &user.name, "login", Some(Utc::now() + ttl)).await?;
    tracing::info!(user = %user.name, token_id = %rec.id, "login");
    Ok((
        StatusCode::CREATED,
        Json(NewToken {
            id: rec.id,
            name: rec.name,
            token,
            expires: rec.expires,
        }),
    ))
}

async fn load_user(core: &Core, name: &str) -> Result<store::Rec<User>, ApiError> {
    core.db
        .get::<User>(&core.db.keys.core_user(name))
        .await?
        .ok_or_else(|| ApiError::not_found("user_not_found", format!("no user {name}")))
}

async fn me(State(core): State<Core>, caller: Caller) -> Result<Json<UserView>, ApiError> {
    let u = load_user(&core, &caller.user).await?;
    Ok(Json(view(&core, u.value).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    pub current: String,
    pub new: String,
}

/// Written by hand: the secret it holds must not reach a log.
impl std::fmt::Debug for ChangePassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangePassword").finish_non_exhaustive()
    }
}

/// Most deletes in one etcd transaction (etcd's default limit is 128 ops).
const DELETES_PER_TXN: usize = 100;

/// Changes the caller's password and revokes every other token of theirs
/// (access tokens and login sessions; the token making the request, if
/// any, stays): whoever knew the old password may have minted some.
async fn change_password(
    State(core): State<Core>,
    ClientAddr(client): ClientAddr,
    Signed { caller, proof }: Signed,
    Json(body): Json<ChangePassword>,
) -> Result<StatusCode, ApiError> {
    let u = load_user(&core, &caller.user).await?;
    // Throttled like a login: a stolen token must not become a way to
    // guess the password.
    let admission = core.throttle.admit(client, &caller.user)?;
    let slot = core.throttle.hashing().await?;
    let ok = secret::verify_password(&body.current, &u.value.password_hash).await?;
    drop(slot);
    core.throttle.settle(admission, ok);
    if !ok {
        return Err(ApiError::forbidden(
            "wrong_password",
            "the current password is wrong",
        ));
    }
    let mut next = u.value.clone();
    next.password_hash = {
        let _slot = core.throttle.hashing().await?;
        secret::hash_password(&body.new).await?
    };
    let keep = match &proof {
        Proof::Token { id, .. } => Some(id.as_str()),
        _ => None,
    };
    let stale: Vec<String> = core
        .db
        .list::<TokenRecord>(&core.db.keys.core_tokens_prefix())
        .await?
        .into_iter()
        .filter(|(_, t)| t.user == caller.user && Some(t.id.as_str()) != keep)
        .map(|(key, _)| key)
        .collect();
    let mut chunks = stale.chunks(DELETES_PER_TXN);
    let first: Vec<_> = chunks
        .next()
        .unwrap_or_default()
        .iter()
        .map(|k| store::delete(k.as_str()))
        .collect();
    let key = core.db.keys.core_user(&caller.user);
    let mut ops = vec![store::put(key.clone(), &next)];
    ops.extend(first);
    if !core.db.commit(vec![u.unchanged()], ops).await?.applied() {
        return Err(store::contention());
    }
    // The password is changed; the rest are deletes that may be repeated.
    for chunk in chunks {
        let ops = chunk.iter().map(|k| store::delete(k.as_str())).collect();
        let _always_applies = core.db.commit(vec![], ops).await?;
    }
    tracing::info!(user = %caller.user, revoked = stale.len(), "password changed, other tokens revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub created: DateTime<Utc>,
    pub expires: Option<DateTime<Utc>>,
}

impl From<TokenRecord> for TokenView {
    fn from(t: TokenRecord) -> Self {
        Self {
            id: t.id,
            name: t.name,
            created: t.created,
            expires: t.expires,
        }
    }
}

async fn list_tokens(
    State(core): State<Core>,
    caller: Caller,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    let all = core
        .db
        .list::<TokenRecord>(&core.db.keys.core_tokens_prefix())
        .await?;
    Ok(Json(
        all.into_iter()
            .map(|(_, t)| t)
            .filter(|t| t.user == caller.user)
            .map(TokenView::from)
            .collect(),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub name: String,
    /// Lifetime in days; none = until revoked.
    #[serde(default)]
    pub expires_in_days: Option<u32>,
}

/// A token may not outlive the token that asks for it (a stolen login
/// session must not turn into a credential that never expires); a password
/// may mint any token.
fn check_outlives(proof: &Proof, expires: Option<DateTime<Utc>>) -> Result<(), ApiError> {
    let Proof::Token {
        expires: Some(limit),
        ..
    } = proof
    else {
        return Ok(());
    };
    if expires.is_none_or(|e| e > *limit) {
        return Err(ApiError::forbidden(
            "token_outlives_credential",
            format!(
                "the token making this request expires at {limit}; a new token may not expire later (sign in with Basic user:password to issue longer-lived tokens)"
            ),
        ));
    }
    Ok(())
}

async fn new_token(
    State(core): State<Core>,
    Signed { caller, proof }: Signed,
    Json(body): Json<TokenRequest>,
) -> Result<(StatusCode, Json<NewToken>), ApiError> {
    if body.name.is_empty() || body.name.len() > 100 {
        return Err(ApiError::bad_request(
            "invalid_name",
            "a token name has 1 to 100 characters",
        ));
    }
    let expires = match body.expires_in_days {
        Some(0) => {
            return Err(ApiError::bad_request(
                "invalid_expiry",
                "expires_in_days must be at least 1",
            ))
        }
        Some(d) if d > 3650 => {
            return Err(ApiError::bad_request(
                "invalid_expiry",
                "expires_in_days is at most 3650",
            ))
        }
        Some(d) => Some(Utc::now() + chrono::Duration::days(i64::from(d))),
        None => None,
    };
    check_outlives(&proof, expires)?;
    let (rec, token) = issue_token(&core.db, &caller.user, &body.name, expires).await?;
    tracing::info!(user = %caller.user, token_id = %rec.id, "access token issued");
    Ok((
        StatusCode::CREATED,
        Json(NewToken {
            id: rec.id,
            name: rec.name,
            token,
            expires: rec.expires,
        }),
    ))
}

async fn revoke_token(
    State(core): State<Core>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let key = core.db.keys.core_token(&id);
    let not_found = || ApiError::not_found("token_not_found", format!("no token {id}"));
    if id.contains('/') {
        return Err(not_found());
    }
    let rec = core
        .db
        .get::<TokenRecord>(&key)
        .await?
        .ok_or_else(not_found)?;
    if rec.value.user != caller.user && !caller.admin {
        return Err(not_found());
    }
    if !core
        .db
        .commit(vec![rec.unchanged()], vec![store::delete(key)])
        .await?
        .applied()
    {
        return Err(not_found());
    }
    tracing::info!(user = %caller.user, token_id = %id, "access token revoked");
    Ok(StatusCode::NO_CONTENT)
}

async fn list_users(
    State(core): State<Core>,
    caller: Caller,
) -> Result<Json<Vec<UserView>>, ApiError> {
    require_admin(&caller)?;
    let mut out = Vec::new();
    for (_, u) in core
        .db
        .list::<User>(&core.db.keys.core_users_prefix())
        .await?
    {
        out.push(view(&core, u).await?);
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    pub password: String,
    #[serde(default)]
    pub admin: bool,
}

/// Written by hand: the secret it holds must not reach a log.
impl std::fmt::Debug for NewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser")
            .field("name", &self.name)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

async fn add_user(
    State(core): State<Core>,
    caller: Caller,
    Json(body): Json<NewUser>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    require_admin(&caller)?;
    let u = create_user(&core.db, &body.name, &body.password, body.admin).await?;
    tracing::info!(by = %caller.user, user = %u.name, admin = u.admin, "user created");
    Ok((StatusCode::CREATED, Json(view(&core, u).await?)))
}

async fn set_quota(
    State(core): State<Core>,
    caller: Caller,
    Path(name): Path<String>,
    Json(q): Json<Quota>,
) -> Result<Json<UserView>, ApiError> {
    require_admin(&caller)?;
    let (core, name) = (&core, name.as_str());
    let next = store::optimistic(move || async move {
        let u = load_user(core, name).await?;
        let mut next = u.value.clone();
        next.quota = Some(q);
        let done = core
            .db
            .commit(vec![u.unchanged()], vec![store::put(u.key.as_str(), &next)])
            .await?;
        Ok(done.applied().then_some(next))
    })
    .await?;
    tracing::info!(by = %caller.user, user = %name, quota = ?q, "quota set");
    Ok(Json(view(core, next).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_do_not_outlive_their_minter() {
        let now = Utc::now();
        let day = chrono::Duration::days(1);
        let session = Proof::Token {
            id: "0123456789ab".into(),
            expires: Some(now + day),
        };
        assert!(check_outlives(&session, Some(now + day)).is_ok());
        assert!(check_outlives(&session, Some(now + chrono::Duration::hours(1))).is_ok());
        for longer in [None, Some(now + day * 2)] {
            let e = check_outlives(&session, longer).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::FORBIDDEN, "token_outlives_credential")
            );
        }
        let forever = Proof::Token {
            id: "0123456789ab".into(),
            expires: None,
        };
        assert!(check_outlives(&forever, None).is_ok());
        assert!(check_outlives(&Proof::Password, None).is_ok());
        assert!(check_outlives(&Proof::Unknown, None).is_ok());
    }
}

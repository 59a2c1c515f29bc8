//! Local accounts and personal access tokens.
//!
//! Passwords are stored as argon2id PHC strings. Access tokens are
//! `lep_{id}_{secret}` with 256 random bits of secret; only the SHA-256 of
//! the secret is stored (a high-entropy secret needs no slow hash, and token
//! checks sit on the registry's hot path). Neither ever reaches a log line.

pub mod api;
pub mod secret;

use chrono::{DateTime, Utc};
use etcd_client::{Txn, TxnOp, TxnOpResponse};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::auth::{constant_time_eq, credentials, Authenticator, Caller, Credentials};
use crate::problem::ApiError;
use crate::quota::Quota;
use crate::store::{self, Db};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub password_hash: String,
    #[serde(default)]
    pub admin: bool,
    pub created: DateTime<Utc>,
    /// Overrides the configured default quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub user: String,
    pub name: String,
    /// Hex SHA-256 of the secret part.
    pub hash: String,
    pub created: DateTime<Utc>,
    #[serde(default)]
    pub expires: Option<DateTime<Utc>>,
}

/// Creates `name` unless it exists. 409 `user_exists` otherwise.
pub async fn create_user(
    db: &Db,
    name: &str,
    password: &str,
    admin: bool,
) -> Result<User, ApiError> {
    if !crate::access::valid_name(name) {
        return Err(ApiError::bad_request(
            "invalid_name",
            format!("{name:?} is not a valid user name (lower-case letters, digits, '-', '_', '.'; at most 63)"),
        ));
    }
    let user = User {
        name: name.to_string(),
        password_hash: secret::hash_password(password).await?,
        admin,
        created: Utc::now(),
        quota: None,
    };
    let key = db.keys.core_user(name);
    if !db
        .commit(
            vec![store::absent(key.clone())],
            vec![store::put(key, &user)],
        )
        .await?
    {
        return Err(ApiError::conflict(
            "user_exists",
            format!("user {name} already exists"),
        ));
    }
    Ok(user)
}

/// Makes sure the configured administrator exists; an existing account is
/// left alone (its password may have been changed since).
pub async fn bootstrap_admin(db: &Db, name: &str, password: &str) -> Result<bool, ApiError> {
    match create_user(db, name, password, true).await {
        Ok(_) => Ok(true),
        Err(e) if e.code == "user_exists" => Ok(false),
        Err(e) => Err(e),
    }
}

/// Issues a new access token for `user`; returns the record and the only
/// copy of the token string.
pub async fn issue_token(
    db: &Db,
    user: &str,
    name: &str,
    expires: Option<DateTime<Utc>>,
) -> Result<(TokenRecord, String), ApiError> {
    let (id, secret_part, token) = secret::new_token();
    let rec = TokenRecord {
        id: id.clone(),
        user: user.to_string(),
        name: name.to_string(),
        hash: secret::sha256_hex(&secret_part),
        created: Utc::now(),
        expires,
    };
    let key = db.keys.core_token(&id);
    let ok = db
        .commit(
            vec![
                store::absent(key.clone()),
                store::present(db.keys.core_user(user)),
            ],
            vec![store::put(key, &rec)],
        )
        .await?;
    if !ok {
        return Err(ApiError::conflict(
            "token_conflict",
            "could not store the token; retry",
        ));
    }
    Ok((rec, token))
}

/// Reads the token record (by id) and, in the same round trip, `user` if given.
async fn token_and_user(
    db: &Db,
    id: &str,
    user: Option<&str>,
) -> Result<(Option<TokenRecord>, Option<User>), ApiError> {
    let mut ops = vec![TxnOp::get(db.keys.core_token(id), None)];
    if let Some(u) = user {
        ops.push(TxnOp::get(db.keys.core_user(u), None));
    }
    let resp = db.etcd.kv_client().txn(Txn::new().and_then(ops)).await?;
    let mut out = (None, None);
    for (i, r) in resp.op_responses().into_iter().enumerate() {
        let TxnOpResponse::Get(g) = r else { continue };
        let Some(kv) = g.kvs().first() else { continue };
        if i == 0 {
            out.0 = Some(serde_json::from_slice(kv.value())?);
        } else {
            out.1 = Some(serde_json::from_slice(kv.value())?);
        }
    }
    Ok(out)
}

/// The user a token string belongs to, if it is valid now.
async fn check_token(
    db: &Db,
    token: &str,
    claimed_user: Option<&str>,
) -> Result<Option<User>, ApiError> {
    let Some((id, secret_part)) = secret::split_token(token) else {
        return Ok(None);
    };
    let (rec, user) = token_and_user(db, id, claimed_user).await?;
    let Some(rec) = rec else { return Ok(None) };
    let hash = secret::sha256_hex(secret_part);
    if !constant_time_eq(hash.as_bytes(), rec.hash.as_bytes()) {
        return Ok(None);
    }
    if rec.expires.is_some_and(|e| e <= Utc::now()) {
        return Ok(None);
    }
    match claimed_user {
        Some(u) if u != rec.user => Ok(None),
        Some(_) => Ok(user),
        None => Ok(db
            .get::<User>(&db.keys.core_user(&rec.user))
            .await?
            .map(|v| v.value)),
    }
}

/// Password check; runs argon2 off the async threads.
pub async fn check_password(db: &Db, name: &str, password: &str) -> Result<Option<User>, ApiError> {
    let Some(user) = db.get::<User>(&db.keys.core_user(name)).await? else {
        // Spend the same effort as for a real user so timing does not tell
        // which names exist.
        secret::verify_password(password, secret::dummy_hash()).await?;
        return Ok(None);
    };
    let ok = secret::verify_password(password, &user.value.password_hash).await?;
    Ok(ok.then_some(user.value))
}

/// Authenticates against the accounts and tokens in etcd:
/// `Bearer TOKEN`, `Basic user:TOKEN` or `Basic user:PASSWORD`.
#[derive(Clone)]
pub struct EtcdAuthenticator {
    pub db: Db,
}

impl Authenticator for EtcdAuthenticator {
    fn authenticate<'a>(
        &'a self,
        headers: &'a axum::http::HeaderMap,
    ) -> BoxFuture<'a, Result<Option<Caller>, ApiError>> {
        Box::pin(async move {
            let user = match credentials(headers)? {
                None => return Ok(None),
                Some(Credentials::Bearer(t)) => check_token(&self.db, &t, None).await?,
                Some(Credentials::Basic { user, secret }) if secret::looks_like_token(&secret) => {
                    check_token(&self.db, &secret, Some(&user)).await?
                }
                Some(Credentials::Basic { user, secret }) => {
                    check_password(&self.db, &user, &secret).await?
                }
            };
            let user = user.ok_or_else(ApiError::unauthorized)?;
            Ok(Some(Caller {
                user: user.name,
                admin: user.admin,
            }))
        })
    }
}

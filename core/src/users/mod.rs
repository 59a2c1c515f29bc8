//! Local accounts and personal access tokens.
//!
//! Passwords are stored as argon2id PHC strings. Access tokens are
//! `lep_{id}_{secret}` with 256 random bits of secret; only the SHA-256 of
//! the secret is stored (a high-entropy secret needs no slow hash, and token
//! checks sit on the registry's hot path). Neither ever reaches a log line.

pub mod api;
pub mod secret;
pub mod throttle;

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use leengine_store::record;
use serde::{Deserialize, Serialize};

use crate::auth::{constant_time_eq, credentials, Authenticator, Caller, Credentials, Proof};
use crate::problem::ApiError;
use crate::quota::Quota;
use crate::store::{self, Db};
use throttle::Throttle;

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
    try_create_user(db, name, password, admin)
        .await?
        .ok_or_else(|| ApiError::conflict("user_exists", format!("user {name} already exists")))
}

/// [`create_user`], answering `None` when the name is taken.
pub async fn try_create_user(
    db: &Db,
    name: &str,
    password: &str,
    admin: bool,
) -> Result<Option<User>, ApiError> {
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
    let done = db
        .commit(
            vec![store::absent(key.clone())],
            vec![store::put(key, &user)],
        )
        .await?;
    Ok(done.applied().then_some(user))
}

/// Makes sure the configured administrator exists; an existing account is
/// left alone (its password may have been changed since).
pub async fn bootstrap_admin(db: &Db, name: &str, password: &str) -> Result<bool, ApiError> {
    Ok(try_create_user(db, name, password, true).await?.is_some())
}

/// Seconds an etcd lease on a token record lasts: until the token expires
/// (the check refuses it from then on; the lease only cleans up), at least 1.
pub fn lease_seconds(expires: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    let ms = (expires - now).num_milliseconds().max(0);
    (ms / 1000 + i64::from(ms % 1000 > 0)).max(1)
}

/// Issues a new access token for `user`; returns the record and the only
/// copy of the token string. A token with an expiry is stored under an etcd
/// lease that ends with it, so expired tokens (every login) do not pile up.
pub async fn issue_token(
    db: &Db,
    user: &str,
    name: &str,
    expires: Option<DateTime<Utc>>,
) -> Result<(TokenRecord, String), ApiError> {
    let (id, secret_part, token) = secret::new_token();
    let now = Utc::now();
    let rec = TokenRecord {
        id: id.clone(),
        user: user.to_string(),
        name: name.to_string(),
        hash: secret::sha256_hex(&secret_part),
        created: now,
        expires,
    };
    let key = db.keys.core_token(&id);
    let lease = match expires {
        Some(e) => Some(
            db.etcd
                .lease_client()
                .grant(lease_seconds(e, now), None)
                .await?
                .id(),
        ),
        None => None,
    };
    let put = match lease {
        Some(l) => record::put_leased(key.clone(), &rec, l),
        None => store::put(key.clone(), &rec),
    };
    let done = db
        .commit(
            vec![
                store::absent(key.clone()),
                store::present(db.keys.core_user(user)),
            ],
            vec![put],
        )
        .await?;
    if !done.applied() {
        if let Some(l) = lease {
            // Nothing is attached to it; it would expire anyway.
            let _ = db.etcd.lease_client().revoke(l).await;
        }
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
    let mut reads = vec![record::get(db.keys.core_token(id))];
    if let Some(u) = user {
        reads.push(record::get(db.keys.core_user(u)));
    }
    let batch = record::read(&db.etcd, reads).await?;
    let token = record::decode_one::<TokenRecord>(&batch.responses[0])?;
    let user = match batch.responses.get(1) {
        Some(get) => record::decode_one::<User>(get)?,
        None => None,
    };
    Ok((token.map(|r| r.value), user.map(|r| r.value)))
}

/// The user a token string belongs to, and the token, if it is valid now.
async fn check_token(
    db: &Db,
    token: &str,
    claimed_user: Option<&str>,
) -> Result<Option<(User, TokenRecord)>, ApiError> {
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
    let user = match claimed_user {
        Some(u) if u != rec.user => None,
        Some(_) => user,
        None => db
            .get::<User>(&db.keys.core_user(&rec.user))
            .await?
            .map(|v| v.value),
    };
    Ok(user.map(|u| (u, rec)))
}

/// Password check, throttled (see [`throttle`]); argon2 runs off the async
/// threads, in one of the throttle's hashing slots.
pub async fn check_password(
    db: &Db,
    throttle: &Throttle,
    client: Option<IpAddr>,
    name: &str,
    password: &str,
) -> Result<Option<User>, ApiError> {
    if !crate::access::valid_name(name) {
        // No account can have this name, and the naming rules are public:
        // refusing without a hash reveals nothing.
        return Ok(None);
    }
    let admission = throttle.admit(client, name)?;
    let checked = async {
        let user = db.get::<User>(&db.keys.core_user(name)).await?;
        let _slot = throttle.hashing().await?;
        // Without the user, spend the same effort as for a real one so
        // timing does not tell which names exist.
        let hash = user
            .as_ref()
            .map_or(secret::dummy_hash(), |u| u.value.password_hash.as_str());
        let ok = secret::verify_password(password, hash).await?;
        Ok::<_, ApiError>(user.filter(|_| ok).map(|u| u.value))
    }
    .await;
    // Only a wrong password counts against the name (not an etcd outage).
    throttle.settle(admission, !matches!(checked, Ok(None)));
    checked
}

/// Authenticates against the accounts and tokens in etcd:
/// `Bearer TOKEN`, `Basic user:TOKEN` or `Basic user:PASSWORD`.
#[derive(Clone)]
pub struct EtcdAuthenticator {
    pub db: Db,
    pub throttle: Arc<Throttle>,
}

impl Authenticator for EtcdAuthenticator {
    fn authenticate<'a>(
        &'a self,
        headers: &'a axum::http::HeaderMap,
    ) -> BoxFuture<'a, Result<Option<Caller>, ApiError>> {
        Box::pin(async move { Ok(self.identify(headers, None).await?.map(|(c, _)| c)) })
    }

    fn identify<'a>(
        &'a self,
        headers: &'a axum::http::HeaderMap,
        client: Option<IpAddr>,
    ) -> BoxFuture<'a, Result<Option<(Caller, Proof)>, ApiError>> {
        Box::pin(async move {
            let token = |(u, t): (User, TokenRecord)| {
                let proof = Proof::Token {
                    id: t.id,
                    expires: t.expires,
                };
                (u, proof)
            };
            let found = match credentials(headers)? {
                None => return Ok(None),
                Some(Credentials::Bearer(t)) => check_token(&self.db, &t, None).await?.map(token),
                Some(Credentials::Basic { user, secret }) if secret::looks_like_token(&secret) => {
                    check_token(&self.db, &secret, Some(&user))
                        .await?
                        .map(token)
                }
                Some(Credentials::Basic { user, secret }) => {
                    check_password(&self.db, &self.throttle, client, &user, &secret)
                        .await?
                        .map(|u| (u, Proof::Password))
                }
            };
            let (user, proof) = found.ok_or_else(ApiError::unauthorized)?;
            Ok(Some((
                Caller {
                    user: user.name,
                    admin: user.admin,
                },
                proof,
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_end_with_the_token() {
        let now = Utc::now();
        let s = chrono::Duration::seconds;
        assert_eq!(lease_seconds(now + s(90), now), 90);
        assert_eq!(
            lease_seconds(now + chrono::Duration::milliseconds(1500), now),
            2
        );
        assert_eq!(lease_seconds(now - s(5), now), 1);
    }
}

//! Who is calling.
//!
//! `main` puts one `Arc<dyn Authenticator>` into every request's extensions
//! (see [`layer`]); the [`Caller`] and [`MaybeCaller`] extractors ask it. A
//! request without credentials is anonymous; a request with credentials that
//! do not check out is refused with 401 even where anonymous access is allowed,
//! so a typo in a token never silently degrades to "anonymous".

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use crate::problem::ApiError;

/// An authenticated user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    /// Platform administrator: bypasses membership checks.
    pub admin: bool,
}

impl Caller {
    /// 403 `admin_only` unless the caller is a platform administrator.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "admin_only",
                "only administrators may do this",
            ))
        }
    }
}

/// How a caller proved who they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Proof {
    /// A password (Basic auth).
    Password,
    /// An access token or login session.
    Token {
        id: String,
        expires: Option<DateTime<Utc>>,
    },
    /// The authenticator does not say (fixed bootstrap and test tokens).
    Unknown,
}

/// Turns request headers into a caller.
///
/// `Ok(None)`: no credentials were presented. `Err(401)`: credentials were
/// presented and are wrong. Other errors (etcd down) pass through.
pub trait Authenticator: Send + Sync {
    fn authenticate<'a>(
        &'a self,
        headers: &'a HeaderMap,
    ) -> BoxFuture<'a, Result<Option<Caller>, ApiError>>;

    /// [`Authenticator::authenticate`] with the peer address (to throttle
    /// password checks per client) and the kind of proof.
    fn identify<'a>(
        &'a self,
        headers: &'a HeaderMap,
        _client: Option<IpAddr>,
    ) -> BoxFuture<'a, Result<Option<(Caller, Proof)>, ApiError>> {
        Box::pin(async move {
            Ok(self
                .authenticate(headers)
                .await?
                .map(|c| (c, Proof::Unknown)))
        })
    }
}

/// The extension layer that makes `auth` available to the extractors.
pub fn layer(auth: Arc<dyn Authenticator>) -> axum::Extension<Arc<dyn Authenticator>> {
    axum::Extension(auth)
}

/// Result cached in the request so a handler with several extractors
/// authenticates once.
#[derive(Clone)]
struct Authenticated(Option<(Caller, Proof)>);

/// The peer address, when the request came over a socket (`main` serves
/// with connect info; in-process calls have none). A proxy in front of the
/// core is one client: `X-Forwarded-For` is not trusted.
pub fn client_addr(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

async fn resolve(parts: &mut Parts) -> Result<Option<(Caller, Proof)>, ApiError> {
    if let Some(done) = parts.extensions.get::<Authenticated>() {
        return Ok(done.0.clone());
    }
    let auth = parts
        .extensions
        .get::<Arc<dyn Authenticator>>()
        .cloned()
        .ok_or_else(|| ApiError::internal("no authenticator configured"))?;
    let caller = auth.identify(&parts.headers, client_addr(parts)).await?;
    parts.extensions.insert(Authenticated(caller.clone()));
    Ok(caller)
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        resolve(parts)
            .await?
            .map(|(c, _)| c)
            .ok_or_else(ApiError::unauthorized)
    }
}

/// An authenticated caller with the proof they gave.
#[derive(Clone, Debug)]
pub struct Signed {
    pub caller: Caller,
    pub proof: Proof,
}

impl<S: Send + Sync> FromRequestParts<S> for Signed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let (caller, proof) = resolve(parts).await?.ok_or_else(ApiError::unauthorized)?;
        Ok(Signed { caller, proof })
    }
}

/// The peer address of the request, see [`client_addr`].
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(client_addr(parts)))
    }
}

/// The caller if credentials were presented; anonymous otherwise.
#[derive(Clone, Debug)]
pub struct MaybeCaller(pub Option<Caller>);

impl<S: Send + Sync> FromRequestParts<S> for MaybeCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(MaybeCaller(resolve(parts).await?.map(|(c, _)| c)))
    }
}

/// Credentials as presented in an `Authorization` header.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Bearer(String),
    Basic { user: String, secret: String },
}

// Secrets must never reach a log line, so Debug shows only the user.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Self::Basic { user, .. } => write!(f, "Basic({user}:<redacted>)"),
        }
    }
}

/// `Ok(None)` without an `Authorization` header; 401 for one we cannot read.
pub fn credentials(headers: &HeaderMap) -> Result<Option<Credentials>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| ApiError::unauthorized())?;
    let (scheme, rest) = value.split_once(' ').ok_or_else(ApiError::unauthorized)?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Ok(Some(Credentials::Bearer(rest.to_string())));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| ApiError::unauthorized())?;
        let text = String::from_utf8(raw).map_err(|_| ApiError::unauthorized())?;
        let (user, secret) = text.split_once(':').ok_or_else(ApiError::unauthorized)?;
        if user.is_empty() {
            return Err(ApiError::unauthorized());
        }
        return Ok(Some(Credentials::Basic {
            user: user.to_string(),
            secret: secret.to_string(),
        }));
    }
    Err(ApiError::unauthorized())
}

/// Compares secrets without an early exit, so response time does not reveal
/// how many leading bytes matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One fixed admin token: bootstrap, and tests of modules that only need
/// "some authenticated admin". Accepts `Bearer TOKEN` and `Basic USER:TOKEN`.
#[derive(Clone)]
pub struct StaticAdminToken {
    pub user: String,
    pub token: String,
}

impl StaticAdminToken {
    pub fn new(user: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            token: token.into(),
        }
    }
}

impl Authenticator for StaticAdminToken {
    fn authenticate<'a>(
        &'a self,
        headers: &'a HeaderMap,
    ) -> BoxFuture<'a, Result<Option<Caller>, ApiError>> {
        Box::pin(async move {
            let secret_ok = match credentials(headers)? {
                None => return Ok(None),
                Some(Credentials::Bearer(t)) => {
                    constant_time_eq(t.as_bytes(), self.token.as_bytes())
                }
                Some(Credentials::Basic { user, secret }) => {
                    user == self.user && constant_time_eq(secret.as_bytes(), self.token.as_bytes())
                }
            };
            if !secret_ok {
                return Err(ApiError::unauthorized());
            }
            Ok(Some(Caller {
                user: self.user.clone(),
                admin: true,
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_auth(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn parses_bearer_and_basic() {
        assert_eq!(credentials(&HeaderMap::new()).unwrap(), None);
        assert_eq!(
            credentials(&with_auth("Bearer abc")).unwrap(),
            Some(Credentials::Bearer("abc".into()))
        );
        // "alice:pa:ss" — the secret may itself contain ':'.
        assert_eq!(
            credentials(&with_auth("Basic YWxpY2U6cGE6c3M=")).unwrap(),
            Some(Credentials::Basic {
                user: "alice".into(),
                secret: "pa:ss".into()
            })
        );
        assert!(credentials(&with_auth("Basic !!!")).is_err());
        assert!(credentials(&with_auth("Digest x")).is_err());
        assert!(credentials(&with_auth("Bearer")).is_err());
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Credentials::Basic {
            user: "alice".into(),
            secret: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", Credentials::Bearer("tok".into())).contains("tok"));
    }

    #[tokio::test]
    async fn static_token_checks_secret() {
        let a = StaticAdminToken::new("root", "s3cret");
        assert_eq!(a.authenticate(&HeaderMap::new()).await.unwrap(), None);
        let ok = a.authenticate(&with_auth("Bearer s3cret")).await.unwrap();
        assert_eq!(ok.unwrap().user, "root");
        let bad = a.authenticate(&with_auth("Bearer nope")).await.unwrap_err();
        assert_eq!(bad.status, axum::http::StatusCode::UNAUTHORIZED);
    }
}

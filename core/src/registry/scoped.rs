//! Push tokens for build tasks: signed like the tokens of `/v2/token`, but
//! for exactly one repository and with their own lifetime, so a task key
//! (readable by every build agent) carries no reusable credential.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::scope::Access;
use super::signer::Claims;
use super::{TokenResponse, TokenServer};

impl TokenServer {
    /// A token granting `pull` and `push` on `repository` only, to
    /// `subject` (the registry's events then name them as the pusher),
    /// valid from `now` for `ttl`.
    pub fn scoped_push_token(
        &self,
        subject: &str,
        repository: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> TokenResponse {
        let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.to_string(),
            aud: self.service.clone(),
            exp: now.timestamp().saturating_add(secs),
            nbf: now.timestamp(),
            iat: now.timestamp(),
            jti: format!("{:032x}", rand::random::<u128>()),
            access: vec![Access {
                kind: "repository".into(),
                name: repository.to_string(),
                actions: vec!["pull".into(), "push".into()],
            }],
        };
        let token = self.signer.sign(&claims);
        TokenResponse {
            access_token: token.clone(),
            token,
            expires_in: ttl.as_secs(),
            issued_at: now,
        }
    }
}

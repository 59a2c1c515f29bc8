//! Password hashing and token strings (pure, apart from argon2 running on
//! the blocking pool).

use std::sync::OnceLock;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::problem::ApiError;

pub const TOKEN_PREFIX: &str = "lep_";
pub const MIN_PASSWORD: usize = 8;
pub const MAX_PASSWORD: usize = 1024;

pub fn check_password_policy(password: &str) -> Result<(), ApiError> {
    let n = password.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&n) {
        return Err(ApiError::bad_request(
            "weak_password",
            format!("a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters"),
        ));
    }
    Ok(())
}

pub async fn hash_password(password: &str) -> Result<String, ApiError> {
    check_password_policy(password)?;
    let pw = password.to_string();
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(pw.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| ApiError::internal(format!("argon2: {e}")))
    })
    .await
    .map_err(|e| ApiError::internal(format!("hashing task: {e}")))?
}

pub async fn verify_password(password: &str, phc: &str) -> Result<bool, ApiError> {
    if password.len() > MAX_PASSWORD * 4 {
        return Ok(false);
    }
    let pw = password.to_string();
    let phc = phc.to_string();
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&phc)
            .map_err(|e| ApiError::internal(format!("stored password hash: {e}")))?;
        Ok(Argon2::default()
            .verify_password(pw.as_bytes(), &parsed)
            .is_ok())
    })
    .await
    .map_err(|e| ApiError::internal(format!("hashing task: {e}")))?
}

/// A hash of a random password, checked against when the user does not exist.
pub fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| {
        let pw: [u8; 16] = rand::random();
        Argon2::default()
            .hash_password(&pw)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

pub fn sha256_hex(s: &str) -> String {
    hex_lower(&Sha256::digest(s.as_bytes()))
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `(id, secret, token)`: a 48-bit id to find the record, 256 secret bits.
pub fn new_token() -> (String, String, String) {
    let id = hex_lower(&rand::random::<[u8; 6]>());
    let secret =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let token = format!("{TOKEN_PREFIX}{id}_{secret}");
    (id, secret, token)
}

pub fn looks_like_token(s: &str) -> bool {
    s.starts_with(TOKEN_PREFIX)
}

/// `lep_{id}_{secret}` → `(id, secret)`; the id is hex so the first `_`
/// after it ends it, whatever the secret holds.
pub fn split_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit());
    (id_ok && !secret.is_empty()).then_some((id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip() {
        let (id, secret, token) = new_token();
        assert!(looks_like_token(&token));
        assert_eq!(split_token(&token), Some((id.as_str(), secret.as_str())));
        assert_eq!(split_token("lep_zz_abc"), None);
        assert_eq!(split_token("lep_0123456789ab_"), None);
        assert_eq!(split_token("nope"), None);
        let (_, s2, t2) = new_token();
        assert_ne!(t2, token);
        assert_ne!(s2, secret);
    }

    #[test]
    fn sha256_is_hex() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[tokio::test]
    async fn password_hash_verifies() {
        let h = hash_password("correct horse").await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(!h.contains("correct horse"));
        assert!(verify_password("correct horse", &h).await.unwrap());
        assert!(!verify_password("wrong horse!", &h).await.unwrap());
        assert_eq!(
            hash_password("short").await.unwrap_err().code,
            "weak_password"
        );
    }
}

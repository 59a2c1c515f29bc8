//! ES256 JWTs for the registry, signed with a P-256 key whose certificate
//! the registry trusts (`auth.token.rootcertbundle`).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{DecodePrivateKey, EncodePublicKey};
use serde::Serialize;

use super::kid::key_id;
use super::scope::Access;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The signing key is neither a PKCS#8 nor a SEC1 P-256 private key in PEM.
    #[error("token signing key is not a P-256 private key in PEM (PKCS#8 or SEC1)")]
    BadKey,
    /// The public key cannot be encoded.
    #[error("cannot encode the public key: {0}")]
    Encode(String),
    /// No certificate in the given PEM holds the signing key's public key.
    #[error("no certificate in the bundle carries the signing key's public key")]
    CertMismatch,
}

#[derive(Clone, Debug, Serialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    pub access: Vec<Access>,
}

pub struct Signer {
    key: SigningKey,
    kid: String,
}

/// Written by hand: the secret it holds must not reach a log.
impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The DER bodies of every `-----BEGIN CERTIFICATE-----` block.
fn pem_certificates(pem: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut body: Option<String> = None;
    for line in pem.lines().map(str::trim) {
        match line {
            "-----BEGIN CERTIFICATE-----" => body = Some(String::new()),
            "-----END CERTIFICATE-----" => {
                if let Some(b) = body.take() {
                    if let Ok(der) = STANDARD.decode(b) {
                        out.push(der);
                    }
                }
            }
            l => {
                if let Some(b) = body.as_mut() {
                    b.push_str(l);
                }
            }
        }
    }
    out
}

impl Signer {
    /// Loads the key and, when given, checks that `cert_pem` holds a
    /// certificate for it: a certificate embeds its subject's public key
    /// info verbatim, so finding the SPKI bytes in the DER is the check.
    pub fn from_pem(key_pem: &str, cert_pem: Option<&str>) -> Result<Self, KeyError> {
        let key = SigningKey::from_pkcs8_pem(key_pem)
            .ok()
            .or_else(|| {
                p256::SecretKey::from_sec1_pem(key_pem)
                    .ok()
                    .map(SigningKey::from)
            })
            .ok_or(KeyError::BadKey)?;
        let spki = key
            .verifying_key()
            .to_public_key_der()
            .map_err(|e| KeyError::Encode(e.to_string()))?;
        let spki = spki.as_bytes();
        if let Some(pem) = cert_pem {
            let found = pem_certificates(pem)
                .iter()
                .any(|der| der.windows(spki.len()).any(|w| w == spki));
            if !found {
                return Err(KeyError::CertMismatch);
            }
        }
        Ok(Self {
            kid: key_id(spki),
            key,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn verifying_key(&self) -> &p256::ecdsa::VerifyingKey {
        self.key.verifying_key()
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let header = serde_json::json!({ "typ": "JWT", "alg": "ES256", "kid": self.kid });
        let h = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap_or_default());
        let c = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let input = format!("{h}.{c}");
        let sig: Signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier as _;
    use p256::pkcs8::EncodePrivateKey;

    fn new_key_pem() -> String {
        let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>().into()).unwrap();
        key.to_pkcs8_pem(Default::default()).unwrap().to_string()
    }

    #[test]
    fn signs_verifiable_es256() {
        let s = Signer::from_pem(&new_key_pem(), None).unwrap();
        let claims = Claims {
            iss: "core".into(),
            sub: "alice".into(),
            aud: "registry".into(),
            exp: 2,
            nbf: 1,
            iat: 1,
            jti: "j".into(),
            access: vec![],
        };
        let jwt = s.sign(&claims);
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], s.kid());
        let sig = Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
        let input = format!("{}.{}", parts[0], parts[1]);
        assert!(s.verifying_key().verify(input.as_bytes(), &sig).is_ok());
        assert!(s.verifying_key().verify(b"tampered", &sig).is_err());
    }

    #[test]
    fn rejects_garbage_and_foreign_certs() {
        assert!(matches!(
            Signer::from_pem("nope", None),
            Err(KeyError::BadKey)
        ));
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            Signer::from_pem(&new_key_pem(), Some(cert)),
            Err(KeyError::CertMismatch)
        ));
    }
}

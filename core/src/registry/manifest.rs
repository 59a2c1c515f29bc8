//! Is `repo:tag` in the platform registry? Asked before a deploy writes
//! anything, so a mistyped or never-built tag is refused at the API instead
//! of surfacing minutes later as `ImagePullBackOff` in every Cell.
//!
//! The core asks with a pull token it signs itself for that one repository
//! (the registry trusts the core's token key), over HTTPS — plain HTTP only
//! for a registry on a loopback address, Docker's own rule for insecure
//! registries.

use std::net::IpAddr;
use std::time::Duration;

use chrono::Utc;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::problem::ApiError;
use crate::server::Core;

use super::scope::Access;
use super::signer::Claims;
use super::TokenServer;

/// How long one question to the registry may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Every manifest kind a tag can point at; the registry answers 404 for a
/// tag whose manifest is of a kind not accepted.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("registry {registry} did not answer: {reason}")]
    Unreachable { registry: String, reason: String },
    #[error("registry {registry} answered {status} for {repository}:{tag}")]
    Unexpected {
        registry: String,
        repository: String,
        tag: String,
        status: StatusCode,
    },
}

impl TokenServer {
    /// A short-lived token granting `pull` on `repository` only.
    fn probe_token(&self, repository: &str) -> String {
        let now = Utc::now().timestamp();
        self.signer.sign(&Claims {
            iss: self.issuer.clone(),
            sub: "leengine-core".into(),
            aud: self.service.clone(),
            exp: now + 60,
            nbf: now,
            iat: now,
            jti: format!("{:032x}", rand::random::<u128>()),
            access: vec![Access {
                kind: "repository".into(),
                name: repository.to_string(),
                actions: vec!["pull".into()],
            }],
        })
    }

    /// Whether `registry` (`host[:port]`) holds `repository:tag`.
    pub async fn tag_exists(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
    ) -> Result<bool, ProbeError> {
        let unreachable = |reason: String| ProbeError::Unreachable {
            registry: registry.to_string(),
            reason,
        };
        let scheme = if is_loopback(registry) {
            "http"
        } else {
            "https"
        };
        let uri = format!("{scheme}://{registry}/v2/{repository}/manifests/{tag}");
        let req = Request::builder()
            .method(Method::HEAD)
            .uri(&uri)
            .header("Accept", ACCEPT)
            .header(
                "Authorization",
                format!("Bearer {}", self.probe_token(repository)),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| unreachable(e.to_string()))?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| unreachable(format!("no CA roots: {e}")))?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(https);
        let resp = tokio::time::timeout(TIMEOUT, client.request(req))
            .await
            .map_err(|_| unreachable(format!("no answer within {TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        match resp.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            status => Err(ProbeError::Unexpected {
                registry: registry.to_string(),
                repository: repository.to_string(),
                tag: tag.to_string(),
                status,
            }),
        }
    }
}

/// Refuses a deploy of `image:tag` when `image` is in the platform registry
/// (`--build-registry-server`) and the registry does not hold the tag.
/// Images elsewhere, or a core without the token server, are not asked.
pub async fn require_tag(core: &Core, image: &str, tag: &str) -> Result<(), ApiError> {
    let (Some(platform), Some(tokens)) = (
        core.settings.builds.policy.registry.as_deref(),
        core.registry.as_ref(),
    ) else {
        return Ok(());
    };
    let Some((host, repository)) = image.split_once('/') else {
        return Ok(());
    };
    if host != platform {
        return Ok(());
    }
    match tokens.tag_exists(platform, repository, tag).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(ApiError::bad_request(
            "image_tag_not_found",
            format!("{image}:{tag} is not in the registry: push (or build) it first"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "registry_unavailable",
            e.to_string(),
        )),
    }
}

/// `localhost[:port]` or a loopback address (with or without port).
fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn only_loopback_registries_are_asked_over_plain_http() {
        for r in [
            "127.0.0.1:5000",
            "localhost",
            "localhost:5000",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in [
            "registry.example:5000",
            "10.0.0.1:5000",
            "localhost.example",
            "[fe80::1]:443",
        ] {
            assert!(!is_loopback(r), "{r}");
        }
    }
}

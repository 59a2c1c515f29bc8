//! The web console (`/`) and boss (`/boss`): the single-page app of
//! `console/` (docs/console.md), served from the directory `npm run build`
//! fills. A directory rather than files embedded at compile time, so the
//! Rust build and its tests never need node, and a console fix ships
//! without rebuilding the core.
//!
//! Every answer carries a Content-Security-Policy of `'self'` only: the page
//! can make no request outside the core (no CDN, no third-party script),
//! and injected markup could neither load nor send anything elsewhere.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::problem::{ApiError, Path};

/// What the page may load and talk to: this origin, nothing else, and it
/// may not be framed (clickjacking).
const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
    style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// `/`, `/boss` and `/assets/{file}` from `dir` (`index.html` and `assets/`).
pub fn router(dir: PathBuf) -> Router {
    let dir = Arc::new(dir);
    Router::new()
        .route("/", get(index))
        .route("/boss", get(index))
        .route("/assets/{file}", get(asset))
        .with_state(dir)
}

async fn index(State(dir): State<Arc<PathBuf>>) -> Result<Response, ApiError> {
    let path = dir.join("index.html");
    let body = tokio::fs::read(&path)
        .await
        .map_err(|e| not_installed(&path, &e))?;
    // The page names its hashed assets: always ask for the current one.
    Ok(respond(body, "text/html; charset=utf-8", "no-cache"))
}

async fn asset(
    State(dir): State<Arc<PathBuf>>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let missing = || ApiError::not_found("asset_not_found", format!("no asset {file:?}"));
    let kind = content_type(&file).ok_or_else(missing)?;
    let body = tokio::fs::read(dir.join("assets").join(&file))
        .await
        .map_err(|_| missing())?;
    // Vite puts a content hash in every asset name.
    Ok(respond(body, kind, "public, max-age=31536000, immutable"))
}

fn not_installed(path: &FsPath, e: &std::io::Error) -> ApiError {
    ApiError::not_found(
        "console_not_installed",
        format!(
            "the web console is not installed: {}: {e} (build it with `npm ci && npm run build` in console/, see --console-dir)",
            path.display()
        ),
    )
}

/// The type of an asset name Vite writes; `None` for anything else,
/// including names that could leave the directory (`..`, `/`, hidden files).
fn content_type(file: &str) -> Option<&'static str> {
    let plain = !file.starts_with('.')
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !plain {
        return None;
    }
    Some(match file.rsplit_once('.')?.1 {
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        _ => return None,
    })
}

fn respond(body: Vec<u8>, kind: &'static str, cache: &'static str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_asset_names_are_served() {
        assert_eq!(
            content_type("index-Bc1x_9.js"),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(
            content_type("index-Q2.css"),
            Some("text/css; charset=utf-8")
        );
        for bad in [
            "..",
            "../index.html",
            ".env.js",
            "a/b.js",
            "x.html",
            "noext",
            "a%2e.js",
        ] {
            assert_eq!(content_type(bad), None, "{bad}");
        }
    }
}

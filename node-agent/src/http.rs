//! Local HTTP endpoint: `GET /metrics` (Prometheus), `POST /scan` (scan now,
//! answer with its summary), `GET /healthz`.
//!
//! The endpoint may listen beyond loopback so Prometheus can scrape it, but
//! only a caller on this host may trigger scans: each scan reads every pod
//! netns and counts as a look for the leak reclaim.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::{mpsc, oneshot};

use crate::agent::{stopped, Shared};
use crate::scan::ScanSummary;

pub type ScanRequests = mpsc::Sender<oneshot::Sender<ScanSummary>>;

#[derive(Clone)]
struct Ctx {
    sh: Arc<Shared>,
    scans: ScanRequests,
}

pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

pub async fn serve(listener: tokio::net::TcpListener, sh: Arc<Shared>, scans: ScanRequests) {
    let stop = stopped(sh.shutdown.clone());
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/scan", post(scan))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(Ctx { sh, scans });
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "HTTP endpoint failed");
    }
}

async fn metrics(State(ctx): State<Ctx>) -> Response {
    let snap = crate::collect::snapshot(&ctx.sh).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&snap),
    )
        .into_response()
}

fn problem(status: StatusCode, detail: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        serde_json::json!({"title": status.canonical_reason(), "status": status.as_u16(), "detail": detail})
            .to_string(),
    )
        .into_response()
}

/// Scans on demand only for callers on this host.
fn may_scan(peer: &SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

async fn scan(State(ctx): State<Ctx>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Response {
    if !may_scan(&peer) {
        tracing::warn!(%peer, "refused POST /scan from a remote peer");
        return problem(
            StatusCode::FORBIDDEN,
            "POST /scan is only accepted from this host (loopback)",
        );
    }
    let (tx, rx) = oneshot::channel();
    if ctx.scans.send(tx).await.is_err() {
        return problem(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping");
    }
    match rx.await {
        Ok(sum) => Json(sum).into_response(),
        Err(_) => problem(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_peers_may_scan() {
        for (peer, ok) in [
            ("127.0.0.1:5000", true),
            ("127.1.2.3:5000", true),
            ("[::1]:5000", true),
            ("[::ffff:127.0.0.1]:5000", true),
            ("10.0.0.7:5000", false),
            ("192.0.2.1:5000", false),
            ("[::ffff:10.0.0.7]:5000", false),
            ("[2001:db8::1]:5000", false),
        ] {
            assert_eq!(may_scan(&peer.parse().unwrap()), ok, "{peer}");
        }
    }
}

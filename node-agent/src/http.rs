//! Local HTTP endpoint: `GET /metrics` (Prometheus), `POST /scan` (scan now,
//! answer with its summary), `GET /healthz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
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

async fn scan(State(ctx): State<Ctx>) -> Response {
    let (tx, rx) = oneshot::channel();
    if ctx.scans.send(tx).await.is_err() {
        return problem(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping");
    }
    match rx.await {
        Ok(sum) => Json(sum).into_response(),
        Err(_) => problem(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping"),
    }
}

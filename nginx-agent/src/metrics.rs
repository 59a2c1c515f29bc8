//! `GET /metrics` for Prometheus: the lua per-domain counters nginx keeps
//! (fetched from the admin server, `leengine_slb::render::METRICS_PATH`)
//! followed by the agent's own figures. Raw HTTP/1.0 like the admin client:
//! one small exchange per scrape needs no HTTP stack.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use leengine_slb::render::METRICS_PATH;

use crate::shared::Shared;

const TIMEOUT: Duration = Duration::from_secs(5);
/// A scrape request is one short line and a few headers.
const MAX_REQUEST: usize = 8192;

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, admin_port: u16, lb: bool) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(TIMEOUT, answer(conn, &shared, admin_port, lb)).await;
        });
    }
}

async fn answer(
    mut conn: TcpStream,
    shared: &Shared,
    admin_port: u16,
    lb: bool,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let (status, body) = if line.starts_with("GET /metrics ") || line.starts_with("GET /metrics?") {
        let mut text = if lb {
            lua_counters(admin_port).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "lua counters not read");
                String::new()
            })
        } else {
            String::new()
        };
        text.push_str(&agent_families(shared, lb));
        ("200 OK", text)
    } else {
        ("404 Not Found", "only GET /metrics\n".to_string())
    };
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}

async fn lua_counters(admin_port: u16) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", admin_port))
        .await
        .map_err(|e| format!("admin 127.0.0.1:{admin_port}: {e}"))?;
    let req = format!("GET {METRICS_PATH} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&resp);
    match text.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") =>
        {
            Ok(body.to_string())
        }
        _ => Err(format!(
            "admin answered: {}",
            text.lines().next().unwrap_or("nothing")
        )),
    }
}

fn agent_families(shared: &Shared, lb: bool) -> String {
    let st = shared.status();
    let mut out = String::new();
    for (name, kind, help, v) in [
        (
            "leengine_nginx_reloads_total",
            "counter",
            "nginx reloads done by the agent.",
            st.reloads,
        ),
        (
            "leengine_nginx_domains",
            "gauge",
            "Domains with a live config file.",
            u64::try_from(st.domains.len()).unwrap_or(u64::MAX),
        ),
        (
            "leengine_nginx_domain_errors",
            "gauge",
            "Domains whose latest config is not live.",
            u64::try_from(st.errors.len()).unwrap_or(u64::MAX),
        ),
        (
            "leengine_nginx_shared_dict_refusals_total",
            "counter",
            "Upstream writes the shared dict had no room for.",
            st.shared_dict_refusals,
        ),
        (
            "leengine_nginx_lb_metrics_enabled",
            "gauge",
            "1 when nginx counts requests per domain (--lb-metrics).",
            u64::from(lb),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
    out
}

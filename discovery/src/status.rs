//! `GET /status` (JSON), `GET /metrics` (Prometheus text), `GET /healthz`.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use crate::hub::{Hub, LAG_BUCKETS};

#[derive(Clone)]
struct Ctx {
    hub: Arc<Hub>,
    id: Arc<str>,
}

pub fn router(hub: Arc<Hub>, id: &str) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(Ctx { hub, id: id.into() })
}

async fn status(State(c): State<Ctx>) -> impl IntoResponse {
    let h = &c.hub;
    let (count, sum) = h.with_lag(|l| (l.count, l.sum));
    Json(serde_json::json!({
        "id": &*c.id,
        "active": h.active.load(Ordering::Relaxed),
        "cells": h.cells(),
        "upstreamWrites": Hub::count(&h.writes),
        "upstreamWriteConflicts": Hub::count(&h.write_conflicts),
        "upstreamWriteErrors": Hub::count(&h.write_errors),
        "drainAcks": Hub::count(&h.acks),
        "lag": {"count": count, "sumSeconds": sum},
    }))
}

async fn metrics(State(c): State<Ctx>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&c.hub),
    )
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

pub fn render(h: &Hub) -> String {
    let mut o = String::new();
    head(
        &mut o,
        "leengine_discovery_active",
        "gauge",
        "1 while this replica is the Region's active one.",
    );
    let _ = writeln!(
        o,
        "leengine_discovery_active {}",
        u8::from(h.active.load(Ordering::Relaxed))
    );
    let cells = h.cells();
    let per_cell: [(&str, &str, &str); 6] = [
        (
            "cell_watch_state",
            "gauge",
            "0 connecting (never listed), 1 watching, 2 unreachable (last known endpoints kept).",
        ),
        (
            "cell_last_change_timestamp_seconds",
            "gauge",
            "When the Cell's EndpointSlices last changed (unix time).",
        ),
        (
            "cell_lists_total",
            "counter",
            "Full lists of the Cell's EndpointSlices (the first and one per 410 Gone).",
        ),
        (
            "cell_watches_total",
            "counter",
            "Watch streams opened (resumes from the last resourceVersion).",
        ),
        (
            "cell_events_total",
            "counter",
            "EndpointSlice watch events received.",
        ),
        ("cell_slices", "gauge", "EndpointSlices known for the Cell."),
    ];
    for (name, kind, help) in per_cell {
        let name = format!("leengine_discovery_{name}");
        head(&mut o, &name, kind, help);
        for (cell, s) in &cells {
            let v = match name.as_str() {
                "leengine_discovery_cell_watch_state" => f64::from(s.state.metric()),
                "leengine_discovery_cell_last_change_timestamp_seconds" => s
                    .last_change
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0.0, |d| d.as_secs_f64()),
                "leengine_discovery_cell_lists_total" => s.lists as f64,
                "leengine_discovery_cell_watches_total" => s.watches as f64,
                "leengine_discovery_cell_events_total" => s.events as f64,
                _ => s.slices as f64,
            };
            let _ = writeln!(o, "{name}{{cell=\"{cell}\"}} {v}");
        }
    }
    for (name, help, c) in [
        (
            "upstream_writes_total",
            "Upstream records written.",
            &h.writes,
        ),
        (
            "upstream_write_conflicts_total",
            "Writes refused because the upstream changed meanwhile (read again, retried).",
            &h.write_conflicts,
        ),
        (
            "upstream_write_errors_total",
            "Writes that failed on an etcd error.",
            &h.write_errors,
        ),
        ("drain_acks_total", "Drain requests acknowledged.", &h.acks),
    ] {
        let name = format!("leengine_discovery_{name}");
        head(&mut o, &name, "counter", help);
        let _ = writeln!(o, "{name} {}", Hub::count(c));
    }
    let name = "leengine_discovery_lag_seconds";
    head(
        &mut o,
        name,
        "histogram",
        "From an EndpointSlice change arriving to the upstream written in etcd.",
    );
    h.with_lag(|l| {
        for (b, n) in LAG_BUCKETS.iter().zip(l.buckets) {
            let _ = writeln!(o, "{name}_bucket{{le=\"{b}\"}} {n}");
        }
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {}", l.count);
        let _ = writeln!(o, "{name}_sum {}\n{name}_count {}", l.sum, l.count);
    });
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_name_every_cell_and_count_lag() {
        let h = Hub::default();
        h.cell_listed("c1", Default::default(), "42");
        h.record_lag(0.02);
        h.writes.fetch_add(3, Ordering::Relaxed);
        let text = render(&h);
        assert!(
            text.contains("leengine_discovery_cell_watch_state{cell=\"c1\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("leengine_discovery_cell_lists_total{cell=\"c1\"} 1\n"));
        assert!(text.contains("leengine_discovery_upstream_writes_total 3\n"));
        assert!(text.contains("leengine_discovery_lag_seconds_bucket{le=\"0.01\"} 0\n"));
        assert!(text.contains("leengine_discovery_lag_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(text.contains("leengine_discovery_lag_seconds_count 1\n"));
    }
}

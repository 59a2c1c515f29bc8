//! Requests through the real nginx are counted per domain in lua, exported
//! by the agent, and show up in a real Prometheus as the domain's series.

mod support;

use std::time::Duration;

use leengine_testenv as te;
use support::*;

fn value(prom: &te::Prometheus, q: &str) -> f64 {
    prom.query(q)
        .first()
        .and_then(|r| r["value"][1].as_str().and_then(|v| v.parse().ok()))
        .unwrap_or(-1.0)
}

#[test]
fn requests_through_nginx_show_up_in_the_domains_series() {
    let etcd = te::Etcd::start();
    let mut h = Host::new(&etcd);
    let port = te::free_port();
    h.extra_args = vec!["--metrics-listen".into(), format!("127.0.0.1:{port}")];
    let a1 = h.backend("a1");
    h.put_domain("a.example.com", &h.domain_config(), &upstream_of(&[&a1]));
    h.put_domain("b.example.com", &h.domain_config(), r#"{"servers":[]}"#);
    h.start_agent();
    h.wait_status("serving both domains", |s| s.domains.len() == 2);
    assert_eq!(
        h.status().unwrap().metrics_address,
        Some(format!("127.0.0.1:{port}")),
        "the status tells discovery where to scrape"
    );
    h.start_nginx();
    h.wait_body("a.example.com", "a1");
    let prom = te::Prometheus::start(|_| {
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: nginx\n    \
             static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        )
    });
    let ok = "leengine_lb_requests_total{domain=\"a.example.com\",class=\"2xx\"}";
    let before = te::wait_until(Duration::from_secs(30), || value(&prom, ok) >= 1.0);
    assert!(before, "no 2xx series for a.example.com");
    let base = value(&prom, ok);
    for _ in 0..25 {
        assert_eq!(h.get("a.example.com", "/").status, 200);
    }
    for _ in 0..3 {
        assert_eq!(h.get("b.example.com", "/").status, 502);
    }
    assert_eq!(h.get("unknown.example.com", "/").status, 404);
    assert!(
        te::wait_until(Duration::from_secs(30), || value(&prom, ok) >= base + 25.0),
        "2xx count did not follow: {}",
        value(&prom, ok)
    );
    assert_eq!(value(&prom, ok), base + 25.0, "each request counted once");
    let bad = "leengine_lb_requests_total{domain=\"b.example.com\",class=\"5xx\"}";
    assert!(te::wait_until(Duration::from_secs(30), || value(
        &prom, bad
    ) == 3.0));
    assert!(
        prom.query("leengine_lb_requests_total{domain=\"unknown.example.com\"}")
            .is_empty(),
        "the catch-all server is nobody's domain"
    );
    let count = "leengine_lb_upstream_response_seconds_count{domain=\"a.example.com\"}";
    assert!(
        value(&prom, count) >= base + 25.0,
        "histogram count {}",
        value(&prom, count)
    );
    let inf = "leengine_lb_upstream_response_seconds_bucket{domain=\"a.example.com\",le=\"+Inf\"}";
    assert_eq!(value(&prom, inf), value(&prom, count));
    assert_eq!(value(&prom, "leengine_nginx_lb_metrics_enabled"), 1.0);
}

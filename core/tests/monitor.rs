//! Monitoring with the real parts: Prometheus discovering node-agents through
//! core's http_sd endpoint, alert rules rendered into a file a real
//! Prometheus loads, the read API's tenancy, and Alertmanager → core's
//! webhook → e-mail through a real SMTP server.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::*;
use leengine_core::monitor::MonitorSettings;
use leengine_core::server::Settings;
use leengine_testenv as te;
use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(60);

/// Serves the core's router on a free loopback port (Prometheus and
/// Alertmanager call it over TCP).
async fn serve(env: &Env) -> u16 {
    let port = te::free_port();
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let app = env
        .app
        .clone()
        .into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(l, app).await });
    port
}

/// A real node-agent (no OVSDB: registration and metrics need none).
struct NodeAgent(Child);

impl NodeAgent {
    fn start(env: &Env, node: &str) -> (NodeAgent, u16) {
        let port = te::free_port();
        let etcd = &env.etcd;
        let mut cmd = Command::new(sibling("leengine-node-agent"));
        cmd.args(["--node", node, "--etcd-endpoints", &etcd.endpoint()])
            .args(["--etcd-prefix", etcd.keys().prefix()])
            .args(etcd.tls_args(&te::Component::node_agent(node)))
            .args(["--ovsdb", "unix:/nonexistent/leengine-test.sock"])
            .args([
                "--lease-ttl",
                "3s",
                "--scan-interval",
                "1s",
                "--reclaim",
                "off",
            ])
            .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        (NodeAgent(cmd.spawn().unwrap()), port)
    }

    fn stop(&mut self) {
        // SIGTERM: the agent revokes its lease, so the target goes at once.
        let pid = i32::try_from(self.0.id()).unwrap();
        // SAFETY: kill(2) on a child we spawned.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn up_target(prom: &te::Prometheus, node: &str, port: u16) -> bool {
    prom.active_targets().iter().any(|t| {
        t["labels"]["node"] == node
            && t["scrapeUrl"]
                .as_str()
                .is_some_and(|u| u.contains(&format!(":{port}/")))
            && t["health"] == "up"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_discovers_node_agents_through_core_without_config_edits() {
    let env = Env::start(Settings::default()).await;
    let core = serve(&env).await;
    let prom = te::Prometheus::start(|_| {
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: leengine\n    \
             http_sd_configs:\n      - url: http://127.0.0.1:{core}/api/v1/monitor/targets\n        \
             refresh_interval: 1s\n"
        )
    });
    let (mut a1, p1) = NodeAgent::start(&env, "n1");
    assert!(
        te::wait_until(PATIENCE, || up_target(&prom, "n1", p1)),
        "n1 not scraped: {:?}",
        prom.active_targets()
    );
    assert!(
        te::wait_until(PATIENCE, || !prom
            .query("leengine_node_scans_total{node=\"n1\",leengine_role=\"node\"}")
            .is_empty()),
        "n1's samples are not in Prometheus"
    );
    // A node added later is scraped too; the configuration is never touched.
    let (_a2, p2) = NodeAgent::start(&env, "n2");
    assert!(
        te::wait_until(PATIENCE, || up_target(&prom, "n2", p2)),
        "n2 not scraped: {:?}",
        prom.active_targets()
    );
    a1.stop();
    assert!(
        te::wait_until(PATIENCE, || !prom
            .active_targets()
            .iter()
            .any(|t| t["labels"]["node"] == "n1")),
        "a stopped agent stays a target"
    );
    assert!(up_target(&prom, "n2", p2));
}

async fn app_with_members(env: &Env) -> (Auth, Auth, Auth) {
    let owner = env.user("olga", false).await;
    let master = env.user("max", false).await;
    let dev = env.user("dora", false).await;
    for (app, lb) in [("web", "web.example.com"), ("other", "other.example.com")] {
        env.create(
            &owner,
            "/api/v1/apps",
            json!({"name": app, "lb": {"domain": lb, "group": "g1"}}),
        )
        .await;
    }
    for (u, role) in [("max", "Master"), ("dora", "Developer")] {
        env.set_role(&owner, &format!("/api/v1/apps/web/members/{u}"), role)
            .await;
    }
    (owner, master, dev)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_need_a_master_are_validated_and_prometheus_loads_them() {
    let rules_dir = tempfile::tempdir().unwrap();
    let rules = rules_dir.path().join("leengine-rules.json");
    let prom = te::Prometheus::start(|_| {
        format!(
            "global:\n  evaluation_interval: 1s\nrule_files:\n  - {}\n",
            rules.display()
        )
    });
    let env = Env::start(Settings {
        monitor: MonitorSettings {
            prometheus: Some(prom.addr()),
            rules_file: Some(rules.clone()),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let (owner, master, dev) = app_with_members(&env).await;
    let rule = json!({"name": "cpu-high", "metric": "cpu_percent", "comparison": ">", "threshold": 50, "for": "5s"});
    let (st, v) = env
        .call(
            &dev,
            Method::POST,
            "/api/v1/apps/web/alerts",
            Some(rule.clone()),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::FORBIDDEN,
        "a Developer may not add rules: {v}"
    );
    env.create(&master, "/api/v1/apps/web/alerts", rule.clone())
        .await;
    let (st, v) = env
        .call(
            &dev,
            Method::PUT,
            "/api/v1/apps/web/alerts/cpu-high",
            Some(json!({"metric": "cpu_percent", "comparison": ">", "threshold": 1})),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::FORBIDDEN,
        "a Developer may not edit rules: {v}"
    );
    let mut bad = rule.clone();
    bad["comparison"] = json!("!=");
    let (st, v) = env
        .call(&owner, Method::POST, "/api/v1/apps/web/alerts", Some(bad))
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_alert_rule"))
    );
    assert!(
        v["detail"].as_str().unwrap().starts_with("comparison:"),
        "{v}"
    );
    // Developers see the rules (view rights), and so does the activity feed.
    let (st, v) = env
        .call(&dev, Method::GET, "/api/v1/apps/web/alerts", None)
        .await;
    assert_eq!(
        (st, v[0]["name"].as_str()),
        (StatusCode::OK, Some("cpu-high")),
        "{v}"
    );

    // Prometheus loaded the rendered file through its reload endpoint.
    let (st, v) = te::http("GET", prom.port(), "/api/v1/rules", "").unwrap();
    assert_eq!(st, 200);
    let v: Value = serde_json::from_str(&v).unwrap();
    let groups = v["data"]["groups"].as_array().unwrap().clone();
    let app_group = groups
        .iter()
        .find(|g| g["name"] == "app-web")
        .expect("app-web group");
    let r = &app_group["rules"][0];
    assert_eq!(r["labels"]["leengine_rule"], "cpu-high");
    assert!(
        r["query"].as_str().unwrap().contains("namespace=\"web-"),
        "the namespace is fixed: {r}"
    );
    assert!(groups.iter().any(|g| g["name"] == "leengine-defaults"));
    assert!(
        te::wait_until(PATIENCE, || {
            let (_, v) = te::http("GET", prom.port(), "/api/v1/rules", "").unwrap();
            v.contains("\"health\":\"ok\"")
        }),
        "Prometheus does not evaluate the rule"
    );
    // Deleting the last rule removes the app's group.
    let (st, _) = env
        .call(
            &owner,
            Method::DELETE,
            "/api/v1/apps/web/alerts/cpu-high",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (_, text) = te::http("GET", prom.port(), "/api/v1/rules", "").unwrap();
    assert!(!text.contains("app-web"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_api_fixes_the_namespace_and_refuses_other_apps() {
    let prom = te::Prometheus::start(|_| "global:\n  scrape_interval: 1s\n".to_string());
    let env = Env::start(Settings {
        monitor: MonitorSettings {
            prometheus: Some(prom.addr()),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let (owner, _master, dev) = app_with_members(&env).await;
    // dora is a member of web only: other is hidden from her.
    let (st, v) = env
        .call(&dev, Method::GET, "/api/v1/apps/other/metrics/cpu", None)
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("app_not_found"))
    );
    let (st, v) = env
        .call(
            &dev,
            Method::GET,
            "/api/v1/apps/web/metrics/cpu?start=100&end=200&step=10",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        (v["unit"].as_str(), v["step"].as_u64()),
        (Some("cores"), Some(10))
    );
    assert!(v["series"].as_array().unwrap().is_empty());
    // A pod name cannot carry PromQL.
    let (st, v) = env
        .call(
            &owner,
            Method::GET,
            "/api/v1/apps/web/pods/x%22%7D%20or%20vector(1)/metrics/cpu",
            None,
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_pod"))
    );
    let (st, v) = env
        .call(
            &owner,
            Method::GET,
            "/api/v1/apps/web/metrics/cpu?start=5&end=1",
            None,
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_range"))
    );
    let (st, v) = env
        .call(&owner, Method::GET, "/api/v1/apps/web/metrics/up", None)
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_metric"))
    );
    // Prometheus' own series exist; none of them reaches an app.
    let (st, v) = env
        .call(
            &owner,
            Method::GET,
            "/api/v1/apps/web/metrics/requests",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(v["series"].as_array().unwrap().is_empty(), "{v}");
}

fn mails_to(smtp: &te::Smtp, to: &str) -> Vec<String> {
    smtp.messages()
        .into_iter()
        .filter(|m| m.contains(&format!("To: <{to}>")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_alerts_reach_owner_and_master_once_and_the_activity_feed() {
    let smtp = te::Smtp::start();
    let secrets = tempfile::tempdir().unwrap();
    let secret_file = secrets.path().join("webhook.secret");
    std::fs::write(&secret_file, "am-secret").unwrap();
    let env = Env::start(Settings {
        monitor: MonitorSettings {
            webhook_secret: Some("am-secret".into()),
            smtp: Some(smtp.addr()),
            mail_from: "leengine@test".into(),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let core = serve(&env).await;
    let (owner, master, dev) = app_with_members(&env).await;
    for (u, who) in [(&owner, "olga"), (&master, "max"), (&dev, "dora")] {
        let (st, v) = env
            .call(
                u,
                Method::PUT,
                "/api/v1/user/notifications",
                Some(json!({"email": format!("{who}@example.com")})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    let am = te::Alertmanager::start(|_| {
        format!(
            "route:\n  receiver: core\n  group_by: ['leengine_app', 'leengine_rule']\n  \
             group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: core\n    webhook_configs:\n      - url: http://127.0.0.1:{core}/api/v1/monitor/alertmanager\n        \
             send_resolved: true\n        http_config:\n          authorization:\n            \
             type: Bearer\n            credentials_file: {}\n",
            secret_file.display()
        )
    });
    // What Prometheus posts for a firing rule (its rule evaluation is
    // covered above; here the route, the webhook and the mail).
    let alert = |ends: &str| {
        json!([{
            "labels": {"alertname": "LeengineAppRule", "leengine_app": "web", "leengine_rule": "cpu-high", "pod": "web-1"},
            "annotations": {"summary": "cpu_percent > 50 for 5s", "value": "97"},
            "startsAt": "2026-01-01T00:00:00Z",
            "endsAt": ends,
        }])
        .to_string()
    };
    let post = |body: String| {
        let (st, v) = te::http_json("POST", am.port(), "/api/v2/alerts", &body).unwrap();
        assert_eq!(st, 200, "{v}");
    };
    post(alert("2099-01-01T00:00:00Z"));
    assert!(
        te::wait_until(PATIENCE, || mails_to(&smtp, "olga@example.com").len() == 1
            && mails_to(&smtp, "max@example.com").len() == 1),
        "Owner and Master not mailed: {:?}",
        smtp.messages()
    );
    // Alertmanager re-sends the same alert; nobody gets it twice.
    post(alert("2099-01-01T00:00:00Z"));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(mails_to(&smtp, "olga@example.com").len(), 1);
    assert_eq!(mails_to(&smtp, "max@example.com").len(), 1);
    assert!(
        mails_to(&smtp, "dora@example.com").is_empty(),
        "a Developer was mailed"
    );
    let m = &mails_to(&smtp, "olga@example.com")[0];
    assert!(m.contains("Subject: [firing] web: cpu-high"), "{m}");

    // Resolved: endsAt in the past.
    post(alert("2026-01-01T00:01:00Z"));
    assert!(
        te::wait_until(PATIENCE, || mails_to(&smtp, "olga@example.com").len() == 2
            && mails_to(&smtp, "max@example.com").len() == 2),
        "resolution not mailed: {:?}",
        smtp.messages()
    );
    assert!(mails_to(&smtp, "olga@example.com")[1].contains("Subject: [resolved] web: cpu-high"));
    assert!(mails_to(&smtp, "dora@example.com").is_empty());
    let (_, feed) = env
        .call(&dev, Method::GET, "/api/v1/apps/web/activity", None)
        .await;
    let actions: Vec<&str> = feed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"alert_firing") && actions.contains(&"alert_resolved"),
        "{actions:?}"
    );
    assert_eq!(actions.iter().filter(|a| **a == "alert_firing").count(), 1);
    // The webhook refuses callers without the secret.
    let (st, _) = te::http_json(
        "POST",
        core,
        "/api/v1/monitor/alertmanager",
        "{\"alerts\":[]}",
    )
    .unwrap();
    assert_eq!(st, 401);
}

fn hooks_for(sink: &te::HttpSink, user: &str) -> Vec<Value> {
    sink.requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == format!("/hooks/{user}"))
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_each_members_webhook_and_region_alerts_reach_the_admins() {
    let smtp = te::Smtp::start();
    let sink = te::HttpSink::start();
    let secrets = tempfile::tempdir().unwrap();
    let secret_file = secrets.path().join("webhook.secret");
    std::fs::write(&secret_file, "am-secret").unwrap();
    let env = Env::start(Settings {
        monitor: MonitorSettings {
            webhook_secret: Some("am-secret".into()),
            smtp: Some(smtp.addr()),
            mail_from: "leengine@test".into(),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let core = serve(&env).await;
    let (owner, master, dev) = app_with_members(&env).await;
    let admin = env.user("root", true).await;
    let hook = |who: &str| format!("http://127.0.0.1:{}/hooks/{who}", sink.port());
    for (u, who, contact) in [
        (&owner, "olga", json!({"webhook": hook("olga")})),
        (
            &master,
            "max",
            json!({"webhook": hook("max"), "email": "max@example.com"}),
        ),
        (&dev, "dora", json!({"webhook": hook("dora")})),
        (
            &admin,
            "root",
            json!({"email": "root@example.com", "webhook": hook("root")}),
        ),
    ] {
        let (st, v) = env
            .call(u, Method::PUT, "/api/v1/user/notifications", Some(contact))
            .await;
        assert_eq!(st, StatusCode::OK, "{who}: {v}");
    }
    let (st, v) = env
        .call(
            &owner,
            Method::PUT,
            "/api/v1/user/notifications",
            Some(json!({"webhook": "https://example.com/x"})),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_contact"))
    );
    let am = te::Alertmanager::start(|_| {
        format!(
            "route:\n  receiver: core\n  group_by: ['alertname', 'leengine_app', 'leengine_rule']\n  \
             group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: core\n    webhook_configs:\n      - url: http://127.0.0.1:{core}/api/v1/monitor/alertmanager\n        \
             send_resolved: true\n        http_config:\n          authorization:\n            \
             type: Bearer\n            credentials_file: {}\n",
            secret_file.display()
        )
    });
    let post = |labels: Value| {
        let body = json!([{
            "labels": labels,
            "annotations": {"summary": "s", "value": "1"},
            "startsAt": "2026-01-01T00:00:00Z",
            "endsAt": "2099-01-01T00:00:00Z",
        }])
        .to_string();
        let (st, v) = te::http_json("POST", am.port(), "/api/v2/alerts", &body).unwrap();
        assert_eq!(st, 200, "{v}");
    };
    post(
        json!({"alertname": "LeengineAppRule", "leengine_app": "web", "leengine_rule": "cpu-high"}),
    );
    assert!(
        te::wait_until(PATIENCE, || hooks_for(&sink, "olga").len() == 1
            && hooks_for(&sink, "max").len() == 1
            && mails_to(&smtp, "max@example.com").len() == 1),
        "Owner's and Master's webhooks not called: {:?}",
        sink.requests()
    );
    let h = &hooks_for(&sink, "max")[0];
    assert_eq!(
        (h["app"].as_str(), h["user"].as_str()),
        (Some("web"), Some("max"))
    );
    assert_eq!(h["alert"]["status"], "firing");
    assert_eq!(h["alert"]["labels"]["leengine_rule"], "cpu-high");

    // A node's swap guard: no app; the admins hear of it, nobody else.
    post(
        json!({"alertname": "LeengineSwapGuardUnconstrained", "leengine_default": "swap_guard", "node": "n1"}),
    );
    assert!(
        te::wait_until(PATIENCE, || mails_to(&smtp, "root@example.com").len() == 1
            && hooks_for(&sink, "root").len() == 1),
        "the admin was not told of the swap guard: {:?} {:?}",
        smtp.messages(),
        sink.requests()
    );
    let m = &mails_to(&smtp, "root@example.com")[0];
    assert!(
        m.contains("Subject: [firing] region: LeengineSwapGuardUnconstrained"),
        "{m}"
    );
    // Alertmanager repeats nothing new; settle, then count once more.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        hooks_for(&sink, "olga").len(),
        1,
        "Owner: the app alert only"
    );
    assert_eq!(hooks_for(&sink, "max").len(), 1);
    assert_eq!(mails_to(&smtp, "max@example.com").len(), 1);
    assert!(
        hooks_for(&sink, "dora").is_empty(),
        "a Developer was called"
    );
    assert_eq!(
        hooks_for(&sink, "root").len(),
        1,
        "admin: the region alert only"
    );
    assert_eq!(mails_to(&smtp, "root@example.com").len(), 1);
}

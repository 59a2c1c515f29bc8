//! The whole alert path on a real Cell: a pod burning CPU in its app's
//! namespace, the Cell's node-agent labelling its cgroup from the kubelet's
//! pods, Prometheus (in the node's namespace) finding that agent through
//! core's service discovery and evaluating the app's rule, Alertmanager
//! routing to core's webhook, e-mail through a real SMTP server to the
//! app's Owner and Master — and the resolution when the burn stops; then
//! the pod deleted by hand and the app's `pods_deleted` rule firing.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::*;
use leengine_core::cells::CellSettings;
use leengine_core::monitor::MonitorSettings;
use leengine_core::server::Settings;
use leengine_testenv as te;
use serde_json::json;

/// Hang guard; not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(240);
/// How long the pod burns: the alert must fire within it. The threshold is
/// low (2 % of a core) because the shared test machine may give a busy loop
/// little more than that.
const BURN_SECS: u32 = 90;

fn mails_to(smtp: &te::Smtp, to: &str, status: &str) -> usize {
    smtp.messages()
        .iter()
        .filter(|m| {
            m.contains(&format!("To: <{to}>")) && m.contains(&format!("Subject: [{status}]"))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pod_burning_cpu_alerts_owner_and_master_once_and_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("cells");
    std::fs::create_dir(&creds).unwrap();
    let secret_file = dir.path().join("am.secret");
    std::fs::write(&secret_file, "am-secret").unwrap();
    let rules = dir.path().join("rules.json");
    let smtp = te::Smtp::start();
    let cell =
        tokio::task::block_in_place(|| start_cell(140, Some(sibling("leengine-node-agent"))));
    let node_ns = cell.ovs().netns();

    // Core on a real port; Prometheus runs in the node's namespace (the
    // agent listens on its loopback) and reaches core and Alertmanager
    // through forwards.
    let core_port = te::free_port();
    let am = te::Alertmanager::start(|_| {
        format!(
            "route:\n  receiver: core\n  group_by: ['leengine_app', 'leengine_rule']\n  \
             group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: core\n    webhook_configs:\n      - url: http://127.0.0.1:{core_port}/api/v1/monitor/alertmanager\n        \
             send_resolved: true\n        http_config:\n          authorization:\n            \
             type: Bearer\n            credentials_file: {}\n",
            secret_file.display()
        )
    });
    let sd = node_ns.forward_tcp(core_port);
    let am_in_ns = node_ns.forward_tcp(am.port());
    let prom = te::Prometheus::start_in(node_ns, |_| {
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_in_ns}']\n\
             scrape_configs:\n  - job_name: leengine\n    http_sd_configs:\n      - url: http://127.0.0.1:{sd}/api/v1/monitor/targets\n        \
             refresh_interval: 1s\n",
            rules.display()
        )
    });
    let env = Env::start(Settings {
        cells: CellSettings {
            credentials_dir: creds.clone(),
            min_app_cells: 1,
        },
        monitor: MonitorSettings {
            prometheus: Some(prom.addr()),
            rules_file: Some(rules.clone()),
            webhook_secret: Some("am-secret".into()),
            smtp: Some(smtp.addr()),
            mail_from: "leengine@test".into(),
        },
        ..Default::default()
    })
    .await;
    let l = tokio::net::TcpListener::bind(("127.0.0.1", core_port))
        .await
        .unwrap();
    let app = env
        .app
        .clone()
        .into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(l, app).await });

    let admin = env.user("root", true).await;
    std::fs::copy(cell.kubeconfig(), creds.join("cella.kubeconfig")).unwrap();
    env.create(
        &admin,
        "/api/v1/admin/cells",
        json!({"name": "cella", "kubeconfig": "cella.kubeconfig", "etcd": [cell.etcd_endpoint()]}),
    )
    .await;
    let owner = env.user("olga", false).await;
    let master = env.user("max", false).await;
    let dev = env.user("dora", false).await;
    env.create(&owner, "/api/v1/apps", json!({"name": "burn"}))
        .await;
    for (u, role) in [("max", "Master"), ("dora", "Developer")] {
        env.set_role(&owner, &format!("/api/v1/apps/burn/members/{u}"), role)
            .await;
    }
    for (u, who) in [(&owner, "olga"), (&master, "max"), (&dev, "dora")] {
        let (st, _) = env
            .call(
                u,
                Method::PUT,
                "/api/v1/user/notifications",
                Some(json!({"email": format!("{who}@example.com")})),
            )
            .await;
        assert_eq!(st, StatusCode::OK);
    }
    let rule = json!({"name": "cpu-high", "metric": "cpu_percent", "comparison": ">", "threshold": 2, "for": "5s"});
    let (st, _) = env
        .call(
            &dev,
            Method::POST,
            "/api/v1/apps/burn/alerts",
            Some(rule.clone()),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    env.create(&master, "/api/v1/apps/burn/alerts", rule).await;
    let deleted = json!({"name": "pods-deleted", "metric": "pods_deleted", "comparison": ">", "threshold": 0});
    env.create(&owner, "/api/v1/apps/burn/alerts", deleted)
        .await;
    let (_, v) = env
        .call(&owner, Method::GET, "/api/v1/apps/burn", None)
        .await;
    let ns = v["desired"]["namespace"].as_str().unwrap().to_string();

    // The pod: burns BURN_SECS, then idles.
    let burn = format!(
        "end=$(( $(date +%s) + {BURN_SECS} )); while [ $(date +%s) -lt $end ]; do :; done; exec sleep 3600"
    );
    let image = te::Image::busybox(&["/bin/sh", "-c", &burn], &[], &[]);
    cell.import_image(0, &image.save("leengine.local/burn:1"));
    cell.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata:\n  name: burner\n  namespace: {ns}\n  labels: {{leengine.io/app: burn, leengine.io/version: '1'}}\n\
         spec:\n  containers:\n    - name: main\n      image: leengine.local/burn:1\n      imagePullPolicy: Never\n"
    ));

    // The agent labels the real pod's cgroup: the read API sees its CPU.
    let labelled = te::wait_until(PATIENCE, || {
        !prom
            .query(&format!(
                "leengine_container_cpu_seconds_total{{namespace=\"{ns}\",pod=\"burner\",container=\"main\",app=\"burn\",version=\"1\"}}"
            ))
            .is_empty()
    });
    assert!(
        labelled,
        "no labelled CPU series; targets {:?}",
        prom.active_targets()
    );
    // The read API serves it to a Developer (view rights), per container.
    let mut last = serde_json::Value::Null;
    let mut served = false;
    for _ in 0..PATIENCE.as_secs() {
        let path = "/api/v1/apps/burn/pods/burner/metrics/cpu?step=5";
        let (st, v) = env.call(&dev, Method::GET, path, None).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        served = v["series"]
            .as_array()
            .is_some_and(|s| s.iter().any(|x| x["labels"]["container"] == "main"));
        last = v;
        if served {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(served, "read API has no series of container main: {last}");

    let fired = te::wait_until(PATIENCE, || {
        mails_to(&smtp, "olga@example.com", "firing") >= 1
            && mails_to(&smtp, "max@example.com", "firing") >= 1
    });
    assert!(
        fired,
        "no alert mail; Prometheus alerts {:?}",
        prom.alerts()
    );
    let resolved = te::wait_until(PATIENCE + Duration::from_secs(u64::from(BURN_SECS)), || {
        mails_to(&smtp, "olga@example.com", "resolved") >= 1
            && mails_to(&smtp, "max@example.com", "resolved") >= 1
    });
    assert!(
        resolved,
        "no resolution mail; Prometheus alerts {:?}",
        prom.alerts()
    );
    for who in ["olga", "max"] {
        let to = format!("{who}@example.com");
        assert_eq!(mails_to(&smtp, &to, "firing"), 1, "{who}: one firing mail");
        assert_eq!(
            mails_to(&smtp, &to, "resolved"),
            1,
            "{who}: one resolution mail"
        );
    }
    assert!(
        smtp.messages()
            .iter()
            .all(|m| !m.contains("dora@example.com")),
        "a Developer was mailed"
    );
    let (_, feed) = env
        .call(&dev, Method::GET, "/api/v1/apps/burn/activity", None)
        .await;
    let actions: Vec<&str> = feed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "alert_firing").count(),
        1,
        "{actions:?}"
    );
    assert_eq!(
        actions.iter().filter(|a| **a == "alert_resolved").count(),
        1,
        "{actions:?}"
    );

    // The pod deleted by hand (not by the platform): the node-agent counts
    // it `by="other"` from the watch's last state, and the app's
    // pods_deleted rule reaches the Owner and the Master, not the Developer.
    let out = cell.kubectl(&["-n", &ns, "delete", "pod", "burner", "--wait=false"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let subject = "[firing] burn: pods-deleted";
    let fired = te::wait_until(PATIENCE, || {
        mails_about(&smtp, "olga@example.com", subject) >= 1
            && mails_about(&smtp, "max@example.com", subject) >= 1
    });
    assert!(
        fired,
        "no mail about the deleted pod; deletions {:?}, alerts {:?}",
        prom.query(&format!(
            "leengine_pod_deletions_total{{namespace=\"{ns}\"}}"
        )),
        prom.alerts()
    );
    assert_eq!(mails_about(&smtp, "dora@example.com", subject), 0);
    drop(am);
}

fn mails_about(smtp: &te::Smtp, to: &str, subject: &str) -> usize {
    smtp.messages()
        .iter()
        .filter(|m| {
            let line = |want: String| m.lines().any(|l| l.trim_end() == want);
            line(format!("To: <{to}>")) && line(format!("Subject: {subject}"))
        })
        .count()
}

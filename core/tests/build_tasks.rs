//! Build configs through the whole core (`server::app`, real etcd): every
//! task the core writes carries a push token scoped to the config's image
//! (never a password), which reaches no API response or log line; manual and
//! webhook builds are counted in the admin statistics and recorded in the
//! config's activity feed.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::{jwt_claims, token_keypair, Auth, Env};
use leengine_build::validate::Policy;
use leengine_build::BuildTask;
use leengine_core::builds::BuildSettings;
use leengine_core::registry::RegistrySettings;
use leengine_core::server::Settings;
use serde_json::{json, Value};
use tower::ServiceExt as _;

const REGISTRY: &str = "127.0.0.1:5000";

/// Every log line of this test binary, as the operator would see them.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn capture_logs() -> Captured {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    logs
}

async fn webhook(env: &Env, id: &str, token: &str, sha: &str) -> (StatusCode, Value) {
    let push = json!({
        "object_kind": "push", "ref": "refs/heads/main", "after": sha, "checkout_sha": sha,
        "user_username": "dev1",
        "project": {"git_http_url": "http://gitlab.example/team/app.git"},
        "repository": {"url": "http://gitlab.example/team/app.git"}
    });
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("/api/v1/builds/configs/{id}/webhook"))
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-gitlab-token", token)
        .body(Body::from(push.to_string()))
        .unwrap();
    let resp = env.app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_carry_scoped_push_tokens_and_builds_are_counted() {
    let logs = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let (key, cert, _) = token_keypair(dir.path());
    let env = Env::start(Settings {
        registry: Some(RegistrySettings {
            service: "leengine-registry".into(),
            issuer: "leengine-core".into(),
            key_pem: key,
            cert_pem: Some(cert),
            ttl: std::time::Duration::from_secs(300),
            notify_secret: None,
        }),
        builds: BuildSettings {
            policy: Policy::new(Some(REGISTRY.into()), &["http://gitlab.example"]).unwrap(),
            push_token_ttl: std::time::Duration::from_secs(1800),
        },
        ..Default::default()
    })
    .await;
    let alice = env.user("alice", false).await;
    let admin = env.user("root", true).await;
    let (s, v) = env
        .call(
            &alice,
            Method::POST,
            "/api/v1/groups",
            Some(json!({"name": "team"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let keys = env.core.db.keys.clone();
    env.core
        .db
        .etcd
        .kv_client()
        .put(
            keys.builder("b1"),
            json!({"id": "b1", "capacity": 1, "running": 0, "startedAt": "2026-01-01T00:00:00Z"})
                .to_string(),
            None,
        )
        .await
        .unwrap();

    let mut bodies = Vec::new();
    let mut secrets = Vec::new();
    let (s, created) = env
        .call(
            &alice,
            Method::POST,
            "/api/v1/builds/configs",
            Some(
                json!({"id": "app", "repo": "http://gitlab.example/team/app.git",
                "branch": "main", "image": "127.0.0.1:5000/team/app"}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(
        (&created["role"], &created["public"]),
        (&json!("Owner"), &json!(false))
    );
    let hook_token = created["webhookToken"].as_str().unwrap().to_string();
    bodies.push(created);

    let (s, manual) = env
        .call(
            &alice,
            Method::POST,
            "/api/v1/builds/configs/app/runs",
            Some(json!({"tag": "v1"})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{manual}");
    let sha = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7";
    let (s, hooked) = webhook(&env, "app", &hook_token, sha).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{hooked}");
    assert_eq!(hooked["triggered"], true);

    for run in [&manual["id"], &hooked["run"]["id"]] {
        let resp = env
            .core
            .db
            .etcd
            .kv_client()
            .get(keys.builder_task("b1", run.as_str().unwrap()), None)
            .await
            .unwrap();
        let raw = String::from_utf8_lossy(resp.kvs()[0].value()).to_string();
        assert!(!raw.contains("password"), "no password in a task: {raw}");
        let task: BuildTask = serde_json::from_str(&raw).unwrap();
        let auth = task.push_auth.expect("task carries a push token");
        assert_eq!(auth.server, REGISTRY);
        let claims = jwt_claims(&auth.token);
        assert_eq!(
            claims["access"],
            json!([{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]),
            "exactly one repository: {claims}"
        );
        // Manual builds push as the trigger, webhook builds as whoever set
        // the image (alice here).
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["aud"], "leengine-registry");
        let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
        assert_eq!(lifetime, 1800, "the configured push token lifetime");
        assert_eq!(auth.expires_at.timestamp(), claims["exp"].as_i64().unwrap());
        assert!(task.config_incarnation > 0);
        secrets.push(auth.token.split('.').nth(2).unwrap().to_string());
    }
    bodies.extend([manual.clone(), hooked]);

    for path in [
        "/api/v1/builds/configs",
        "/api/v1/builds/configs/app",
        "/api/v1/builds/configs/app/runs",
        &format!(
            "/api/v1/builds/configs/app/runs/{}",
            manual["id"].as_str().unwrap()
        ),
        "/api/v1/builds/builders",
        "/api/v1/builds/configs/app/activity",
    ] {
        let (s, v) = env.call(&alice, Method::GET, path, None).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        bodies.push(v);
    }
    for b in &bodies {
        for sig in &secrets {
            assert!(!b.to_string().contains(sig), "token in a response: {b}");
        }
    }

    let (s, feed) = env
        .call(
            &alice,
            Method::GET,
            "/api/v1/builds/configs/app/activity",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let actions: Vec<(&str, &str)> = feed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("build_triggered", "webhook:dev1"),
            ("build_triggered", "alice"),
            ("created", "alice"),
        ]
    );

    let (s, stats) = env
        .call(&admin, Method::GET, "/api/v1/admin/stats", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{stats}");
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let day = stats["days"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["day"] == today.as_str())
        .unwrap_or_else(|| panic!("no {today} in {stats}"));
    assert_eq!(day["builds"], 2, "{stats}");

    // A Reporter reads runs but may not trigger; nothing is counted then.
    env.user("rita", false).await;
    let (s, v) = env
        .call(
            &alice,
            Method::PUT,
            "/api/v1/builds/configs/app/members/rita",
            Some(json!({"role": "Reporter"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let rita = Auth::Basic("rita".into(), "password-of-test".into());
    let (s, _) = env
        .call(&rita, Method::GET, "/api/v1/builds/configs/app/runs", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = env
        .call(&rita, Method::POST, "/api/v1/builds/configs/app/runs", None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (_, stats) = env
        .call(&admin, Method::GET, "/api/v1/admin/stats", None)
        .await;
    assert_eq!(
        stats["days"].as_array().unwrap().last().unwrap()["builds"],
        2
    );

    let text = logs.text();
    assert!(
        text.contains("build dispatched"),
        "logs were captured: {text}"
    );
    for sig in &secrets {
        assert!(!text.contains(sig), "token in the log:\n{text}");
    }
}

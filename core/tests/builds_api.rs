//! Build dispatch against a real etcd: configs, triggers, the GitLab
//! webhook, rendezvous placement and re-dispatch after a builder's lease
//! expires. Builders here are registration keys under real leases (the
//! agent itself is exercised in build-agent/tests).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use etcd_client::{GetOptions, PutOptions};
use futures::future::BoxFuture;
use leengine_build::validate::Policy;
use leengine_build::{BuildRun, BuildTask, RunStatus, Stage};
use leengine_core::access::{self, Kind, Member, Role};
use leengine_core::auth::{self, Authenticator, Caller};
use leengine_core::builds::{router, spawn_redispatch, BuildSettings, BuildsState};
use leengine_core::problem::ApiError;
use leengine_core::store::Db;
use leengine_store::Keys;
use leengine_testenv as te;
use serde_json::{json, Value};
use tower::ServiceExt;

/// `Bearer admin` is an administrator; `Bearer alice` / `Bearer bob` are users.
struct Tokens;

impl Authenticator for Tokens {
    fn authenticate<'a>(
        &'a self,
        headers: &'a HeaderMap,
    ) -> BoxFuture<'a, Result<Option<Caller>, ApiError>> {
        Box::pin(async move {
            let v = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let who = |u: &str, admin| {
                Ok(Some(Caller {
                    user: u.into(),
                    admin,
                }))
            };
            match v {
                None => Ok(None),
                Some("Bearer admin") => who("root", true),
                Some("Bearer alice") => who("alice", false),
                Some("Bearer bob") => who("bob", false),
                Some(_) => Err(ApiError::unauthorized()),
            }
        })
    }
}

struct Env {
    /// Owned here unless the test keeps it across runtimes.
    _etcd: Option<te::Etcd>,
    app: Router,
    etcd: etcd_client::Client,
    keys: Keys,
}

async fn env() -> Env {
    let etcd = te::Etcd::start_with_prefix("/t");
    let client = etcd.client(&te::Component::Core).await;
    let keys = Keys::new("/t");
    seed(&client, &keys).await;
    Env {
        _etcd: Some(etcd),
        app: serve(state(&client, &keys)),
        etcd: client,
        keys,
    }
}

impl Env {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        who: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_h(method, uri, who, body, &[]).await
    }

    async fn call_h(
        &self,
        method: &str,
        uri: &str,
        who: Option<&str>,
        body: Option<Value>,
        extra: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(w) = who {
            req = req.header(header::AUTHORIZATION, format!("Bearer {w}"));
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// A builder registration under its own lease, as the agent writes it.
    async fn builder(&self, id: &str, ttl: i64) -> i64 {
        let mut c = self.etcd.clone();
        let lease = c.lease_grant(ttl, None).await.unwrap().id();
        let info =
            json!({"id": id, "capacity": 1, "running": 0, "startedAt": "2026-01-01T00:00:00Z"});
        c.put(
            self.keys.builder(id),
            info.to_string(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
        lease
    }

    async fn run(&self, config: &str, run: &str) -> BuildRun {
        let r = self
            .etcd
            .clone()
            .get(self.keys.build_run(config, run), None)
            .await
            .unwrap();
        serde_json::from_slice(r.kvs()[0].value()).unwrap()
    }

    async fn tasks(&self, builder: &str) -> Vec<BuildTask> {
        let r = self
            .etcd
            .clone()
            .get(
                self.keys.builder_tasks_prefix(builder),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        r.kvs()
            .iter()
            .map(|kv| serde_json::from_slice(kv.value()).unwrap())
            .collect()
    }

    async fn run_count(&self) -> usize {
        let r = self
            .etcd
            .clone()
            .get(
                format!("{}runs/", self.keys.builds_prefix()),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .unwrap();
        usize::try_from(r.count()).unwrap()
    }
}

const REGISTRY: &str = "127.0.0.1:5000";

/// The builds API as the core runs it: the routes, and the builder-loss
/// watcher that `main` starts beside them.
fn serve(s: BuildsState) -> axum::Router {
    spawn_redispatch(s.clone());
    router(s).layer(auth::layer(Arc::new(Tokens)))
}

fn state(client: &etcd_client::Client, keys: &Keys) -> BuildsState {
    let settings = BuildSettings {
        policy: Policy::new(Some(REGISTRY.into()), &["http://gitlab.example"]).unwrap(),
        ..Default::default()
    };
    BuildsState::new(client.clone(), keys.clone(), settings)
}

/// The users behind the test tokens; alice owns group `team`, the target
/// of most configs here; bob has no role on it.
async fn seed(client: &etcd_client::Client, keys: &Keys) {
    let db = Db::new(client.clone(), keys.clone());
    for user in ["alice", "bob", "root"] {
        leengine_core::users::create_user(&db, user, "password-of-test", user == "root")
            .await
            .unwrap();
    }
    group(&db, "team", "alice", &[]).await;
}

/// Group `name` owned by `owner`, with `members`.
async fn group(db: &Db, name: &str, owner: &str, members: &[(&str, Role)]) {
    let caller = Caller {
        user: owner.into(),
        admin: false,
    };
    access::register(
        db,
        &caller,
        Kind::Group,
        name,
        false,
        String::new(),
        (vec![], vec![]),
    )
    .await
    .unwrap();
    for (user, role) in members {
        let m = Member {
            user: user.to_string(),
            role: *role,
            added_by: owner.into(),
            added: chrono::Utc::now(),
        };
        assert!(db
            .commit(vec![], access::member_ops(db, Kind::Group, name, &m))
            .await
            .unwrap()
            .applied());
    }
}

fn config(id: &str) -> Value {
    json!({
        "id": id,
        "repo": "http://gitlab.example/team/app.git",
        "branch": "main",
        "image": "127.0.0.1:5000/team/app",
        "outputs": ["target/app.jar"],
        "compile": {"image": "local/maven:3", "script": "build.sh"}
    })
}

async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn configs_are_validated_owned_and_private() {
    let e = env().await;
    let (s, v) = e
        .call(
            "POST",
            "/api/v1/builds/configs",
            Some("alice"),
            Some(config("app")),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["creator"], "alice");
    assert_eq!(v["dockerfile"], "Dockerfile");
    assert_eq!(v["compile"]["cacheMount"], "/root/.m2/repository");
    assert_eq!(v["webhookToken"].as_str().unwrap().len(), 48);
    assert!(v.get("webhookTokenSha256").is_none());

    let (s, v) = e
        .call(
            "POST",
            "/api/v1/builds/configs",
            Some("alice"),
            Some(config("app")),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("build_config_exists"))
    );

    for (field, bad) in [
        ("id", json!("App/x")),
        ("branch", json!("a..b")),
        ("image", json!("127.0.0.1:5000/team/app:v1")),
        ("outputs", json!(["../../etc"])),
        ("repo", json!("--upload-pack=x")),
    ] {
        let mut c = config("other");
        c[field] = bad;
        let (s, v) = e
            .call("POST", "/api/v1/builds/configs", Some("alice"), Some(c))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{field}: {v}");
        assert_eq!(v["code"], "invalid_build_config");
        assert!(
            v["detail"].as_str().unwrap().contains(field),
            "{field}: {v}"
        );
    }
    let mut c = config("other");
    c["dockerFile"] = json!("x");
    let (s, v) = e
        .call("POST", "/api/v1/builds/configs", Some("alice"), Some(c))
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "unknown fields are refused: {v}"
    );

    let (s, _) = e
        .call("POST", "/api/v1/builds/configs", None, Some(config("x")))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = e
        .call("GET", "/api/v1/builds/configs/app", Some("bob"), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "bob is not a member");
    let (s, v) = e
        .call("GET", "/api/v1/builds/configs", Some("bob"), None)
        .await;
    assert_eq!((s, v), (StatusCode::OK, json!([])));
    let (s, _) = e
        .call("POST", "/api/v1/builds/configs/app/runs", Some("bob"), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = e
        .call("GET", "/api/v1/builds/configs/app", Some("admin"), None)
        .await;
    assert_eq!((s, &v["id"]), (StatusCode::OK, &json!("app")));

    let mut upd = config("app");
    upd.as_object_mut().unwrap().remove("id");
    upd["branch"] = json!("release");
    let (s, _) = e
        .call(
            "PUT",
            "/api/v1/builds/configs/app",
            Some("bob"),
            Some(upd.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    upd["image"] = json!("Bad");
    let (s, v) = e
        .call(
            "PUT",
            "/api/v1/builds/configs/app",
            Some("alice"),
            Some(upd.clone()),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_build_config"))
    );
    upd["image"] = json!("127.0.0.1:5000/team/app2");
    let (s, v) = e
        .call(
            "PUT",
            "/api/v1/builds/configs/app",
            Some("alice"),
            Some(upd),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (&v["branch"], &v["creator"]),
        (&json!("release"), &json!("alice"))
    );

    let (s, _) = e
        .call("DELETE", "/api/v1/builds/configs/app", Some("bob"), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = e
        .call("DELETE", "/api/v1/builds/configs/app", Some("alice"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = e
        .call("GET", "/api/v1/builds/configs/app", Some("alice"), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn trigger_places_by_rendezvous_in_one_write() {
    let e = env().await;
    e.call(
        "POST",
        "/api/v1/builds/configs",
        Some("alice"),
        Some(config("app")),
    )
    .await;

    let (s, v) = e
        .call(
            "POST",
            "/api/v1/builds/configs/app/runs",
            Some("alice"),
            None,
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
        "{v}"
    );
    assert_eq!(e.run_count().await, 0, "nothing written without a builder");

    let live: Vec<String> = (0..5).map(|i| format!("b{i}")).collect();
    for b in &live {
        e.builder(b, 60).await;
    }
    let (s, v) = e
        .call(
            "POST",
            "/api/v1/builds/configs/app/runs",
            Some("alice"),
            Some(json!({"tag": "v1.2"})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let expected = leengine_build::rank("app", &live)[0];
    assert_eq!(v["builder"], expected);
    assert_eq!(v["status"], "queued");
    let run_id = v["id"].as_str().unwrap();
    let tasks = e.tasks(expected).await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].run, run_id);
    assert_eq!(tasks[0].tag.as_deref(), Some("v1.2"));
    assert_eq!(tasks[0].spec.outputs, vec!["target/app.jar".to_string()]);

    // Same config, same builder, every time.
    for _ in 0..3 {
        let (_, v) = e
            .call(
                "POST",
                "/api/v1/builds/configs/app/runs",
                Some("alice"),
                None,
            )
            .await;
        assert_eq!(v["builder"], expected);
    }
    let (s, v) = e
        .call(
            "GET",
            "/api/v1/builds/configs/app/runs",
            Some("alice"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 4);
    let (s, v) = e
        .call(
            "GET",
            &format!("/api/v1/builds/configs/app/runs/{run_id}"),
            Some("admin"),
            None,
        )
        .await;
    assert_eq!((s, &v["requestedTag"]), (StatusCode::OK, &json!("v1.2")));

    let (s, v) = e
        .call(
            "POST",
            "/api/v1/builds/configs/app/runs",
            Some("alice"),
            Some(json!({"tag": "-bad"})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_tag"))
    );
    let (s, v) = e
        .call(
            "POST",
            "/api/v1/builds/configs/app/runs",
            Some("alice"),
            Some(json!({"commit": "xyz"})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_commit"))
    );
    assert_eq!(e.run_count().await, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn gitlab_webhook_checks_token_repo_and_branch() {
    let e = env().await;
    let (_, created) = e
        .call(
            "POST",
            "/api/v1/builds/configs",
            Some("alice"),
            Some(config("app")),
        )
        .await;
    let token = created["webhookToken"].as_str().unwrap().to_string();
    e.builder("b1", 60).await;
    let sha = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7";
    let push = |r: &str, url: &str| {
        json!({
            "object_kind": "push", "ref": r, "after": sha, "checkout_sha": sha,
            "user_username": "dev1",
            "project": {"git_http_url": url},
            "repository": {"url": url}
        })
    };
    let good = push("refs/heads/main", "http://gitlab.example/team/app.git");
    let hook = "/api/v1/builds/configs/app/webhook";

    for bad in [None, Some("wrong"), Some(&token[..47])] {
        let hdr: Vec<(&str, &str)> = bad.map(|t| vec![("x-gitlab-token", t)]).unwrap_or_default();
        let (s, v) = e.call_h("POST", hook, None, Some(good.clone()), &hdr).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{bad:?}: {v}");
        assert_eq!(v["code"], "webhook_token_invalid");
    }
    // A user's credentials are no substitute for the hook's secret.
    let (s, _) = e
        .call_h("POST", hook, Some("admin"), Some(good.clone()), &[])
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(e.run_count().await, 0, "refused hooks write nothing");

    let tok = [("x-gitlab-token", token.as_str())];
    let (s, v) = e
        .call_h(
            "POST",
            hook,
            None,
            Some(push(
                "refs/heads/main",
                "http://gitlab.example/evil/app.git",
            )),
            &tok,
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("webhook_repo_mismatch"))
    );
    let (s, v) = e
        .call_h(
            "POST",
            hook,
            None,
            Some(push("refs/heads/dev", "http://gitlab.example/team/app")),
            &tok,
        )
        .await;
    assert_eq!((s, &v["triggered"]), (StatusCode::OK, &json!(false)), "{v}");
    assert_eq!(e.run_count().await, 0);

    let (s, v) = e.call_h("POST", hook, None, Some(good), &tok).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["triggered"], true);
    assert_eq!(v["run"]["commit"], sha);
    assert_eq!(
        v["run"]["trigger"],
        json!({"kind": "webhook", "user": "dev1"})
    );
    let tasks = e.tasks("b1").await;
    assert_eq!(tasks[0].commit.as_deref(), Some(sha));
    assert_eq!(
        tasks[0].tag, None,
        "tag defaults to the commit on the agent"
    );

    // An unknown id is answered exactly like a wrong secret: the hook does
    // not tell which config ids exist.
    let (s, unknown) = e
        .call_h(
            "POST",
            "/api/v1/builds/configs/nope/webhook",
            None,
            Some(json!({})),
            &tok,
        )
        .await;
    let (_, wrong) = e
        .call_h(
            "POST",
            hook,
            None,
            Some(json!({})),
            &[("x-gitlab-token", "wrong")],
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{unknown}");
    assert_eq!(unknown, wrong);
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_builder_task_moves_once_then_fails() {
    let e = env().await;
    e.call(
        "POST",
        "/api/v1/builds/configs",
        Some("alice"),
        Some(config("app")),
    )
    .await;
    let live = ["b1".to_string(), "b2".to_string(), "b3".to_string()];
    let mut leases = std::collections::HashMap::new();
    for b in &live {
        leases.insert(b.clone(), e.builder(b, 60).await);
    }
    let order: Vec<String> = leengine_build::rank("app", &live)
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (_, v) = e
        .call(
            "POST",
            "/api/v1/builds/configs/app/runs",
            Some("alice"),
            None,
        )
        .await;
    let run_id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["builder"], order[0].as_str());

    // The first builder dies (lease gone, as when it stops keeping it alive).
    e.etcd
        .clone()
        .lease_revoke(leases[&order[0]])
        .await
        .unwrap();
    wait_for("task to move", || async {
        e.tasks(&order[1]).await.len() == 1
    })
    .await;
    assert!(
        e.tasks(&order[0]).await.is_empty(),
        "old task removed in the same txn"
    );
    let run = e.run("app", &run_id).await;
    assert_eq!(run.builder, order[1]);
    assert_eq!(run.attempt, 2);
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(run.redispatches.len(), 1);
    assert_eq!(run.redispatches[0].from, order[0]);
    assert_eq!(run.redispatches[0].to.as_deref(), Some(order[1].as_str()));
    assert!(run.log.contains("re-dispatched"));
    assert_eq!(e.tasks(&order[1]).await[0].attempt, 2);

    // The second one dies too: only one re-dispatch, then the run fails.
    e.etcd
        .clone()
        .lease_revoke(leases[&order[1]])
        .await
        .unwrap();
    wait_for("run to fail", || async {
        e.run("app", &run_id).await.status == RunStatus::Failed
    })
    .await;
    let run = e.run("app", &run_id).await;
    assert_eq!(run.failed_stage, Some(Stage::Dispatch));
    assert!(run.error.unwrap().contains("lost"));
    assert_eq!(run.redispatches.len(), 2);
    assert!(e.tasks(&order[1]).await.is_empty());
    assert!(e.tasks(&order[2]).await.is_empty(), "no second move");
}

/// A core whose runtime is gone watches nothing; the next core's start-up
/// sweep must find the orphaned task.
#[test]
fn tasks_of_a_builder_that_died_while_no_core_watched_are_swept() {
    let etcd = te::Etcd::start_with_prefix("/t");
    let keys = Keys::new("/t");
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
    };

    let first = rt();
    let (run_id, dead) = first.block_on(async {
        let client = etcd.client(&te::Component::Core).await;
        seed(&client, &keys).await;
        let e = Env {
            app: serve(state(&client, &keys)),
            etcd: client,
            keys: keys.clone(),
            _etcd: None,
        };
        e.call(
            "POST",
            "/api/v1/builds/configs",
            Some("alice"),
            Some(config("app")),
        )
        .await;
        let dead = e.builder("gone", 60).await;
        let (_, v) = e
            .call(
                "POST",
                "/api/v1/builds/configs/app/runs",
                Some("alice"),
                None,
            )
            .await;
        assert_eq!(v["builder"], "gone");
        (v["id"].as_str().unwrap().to_string(), dead)
    });
    drop(first); // the first core's watcher dies with its runtime

    let second = rt();
    second.block_on(async {
        let client = etcd.client(&te::Component::Core).await;
        client.clone().lease_revoke(dead).await.unwrap();
        let e = Env {
            app: Router::new(),
            etcd: client.clone(),
            keys: keys.clone(),
            _etcd: None,
        };
        e.builder("fresh", 60).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(e.tasks("gone").await.len(), 1, "nobody watching yet");
        let _core = serve(state(&client, &keys));
        wait_for("task on fresh", || async {
            e.tasks("fresh").await.len() == 1
        })
        .await;
        let run = e.run("app", &run_id).await;
        assert_eq!(run.builder, "fresh");
        assert_eq!(run.redispatches.len(), 1);
        assert!(e.tasks("gone").await.is_empty());
    });
}

/// The issue's scenario: bob has no role on group `payments` and tries to
/// make the farm push to payments/api by creating, updating or triggering
/// a config; and nobody may point a config at another registry host.
#[tokio::test(flavor = "multi_thread")]
async fn configs_need_push_rights_on_their_image_and_the_platform_registry() {
    let e = env().await;
    let db = Db::new(e.etcd.clone(), e.keys.clone());
    group(&db, "payments", "alice", &[]).await;
    e.builder("b1", 60).await;
    let target = |img: &str| {
        let mut c = config("bobs");
        c["image"] = json!(format!("{REGISTRY}/{img}"));
        c
    };
    let forbidden = |s: StatusCode, v: &Value| {
        assert_eq!(
            (s, v["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("image_push_forbidden")),
            "{v}"
        );
    };

    // Create: refused, for a group bob cannot see and for one that does not exist alike.
    for img in ["payments/api", "nosuchgroup/api"] {
        let (s, v) = e
            .call(
                "POST",
                "/api/v1/builds/configs",
                Some("bob"),
                Some(target(img)),
            )
            .await;
        forbidden(s, &v);
    }
    // bob gets his own group and a config there ...
    group(&db, "bobs", "bob", &[]).await;
    let (s, v) = e
        .call(
            "POST",
            "/api/v1/builds/configs",
            Some("bob"),
            Some(target("bobs/api")),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // ... but cannot retarget it at payments.
    let mut upd = target("payments/api");
    upd.as_object_mut().unwrap().remove("id");
    let (s, v) = e
        .call("PUT", "/api/v1/builds/configs/bobs", Some("bob"), Some(upd))
        .await;
    forbidden(s, &v);

    // Trigger: alice's config pushes to payments/api; bob is a Developer
    // of the config (may trigger it) but has no role on payments.
    let mut c = config("pay");
    c["image"] = json!(format!("{REGISTRY}/payments/api"));
    let (s, v) = e
        .call("POST", "/api/v1/builds/configs", Some("alice"), Some(c))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let dev = Member {
        user: "bob".into(),
        role: Role::Developer,
        added_by: "alice".into(),
        added: chrono::Utc::now(),
    };
    assert!(db
        .commit(vec![], access::member_ops(&db, Kind::Build, "pay", &dev))
        .await
        .unwrap()
        .applied());
    let (s, v) = e
        .call("POST", "/api/v1/builds/configs/pay/runs", Some("bob"), None)
        .await;
    forbidden(s, &v);
    assert_eq!(e.run_count().await, 0, "nothing dispatched");
    // With Developer on the group it works.
    assert!(db
        .commit(
            vec![],
            access::member_ops(&db, Kind::Group, "payments", &dev)
        )
        .await
        .unwrap()
        .applied());
    let (s, v) = e
        .call("POST", "/api/v1/builds/configs/pay/runs", Some("bob"), None)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");

    // Another registry host, or no registry host, is refused for everyone.
    for img in [
        "evil.example:5000/payments/api",
        "127.0.0.1:5001/payments/api",
        "payments/api",
    ] {
        let mut c = config("elsewhere");
        c["image"] = json!(img);
        let (s, v) = e
            .call("POST", "/api/v1/builds/configs", Some("admin"), Some(c))
            .await;
        assert_eq!(
            (s, v["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_build_config")),
            "{img}: {v}"
        );
        assert!(v["detail"].as_str().unwrap().contains(REGISTRY), "{v}");
    }
}

/// Repositories must be URLs on the configured git hosts: no local paths,
/// no file://, no other hosts, no credentials in the URL.
#[tokio::test(flavor = "multi_thread")]
async fn repos_are_limited_to_the_configured_git_hosts() {
    let e = env().await;
    for repo in [
        "/srv/git/app.git",
        "file:///srv/git/app.git",
        "gitlab.example:team/app.git",
        "https://gitlab.example/team/app.git",
        "http://github.com/team/app.git",
        "http://bob:hunter2@gitlab.example/team/app.git",
    ] {
        let mut c = config("r");
        c["repo"] = json!(repo);
        let (s, v) = e
            .call("POST", "/api/v1/builds/configs", Some("alice"), Some(c))
            .await;
        assert_eq!(
            (s, v["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_build_config")),
            "{repo}: {v}"
        );
        assert!(!v.to_string().contains("hunter2"), "secret echoed: {v}");
    }
}

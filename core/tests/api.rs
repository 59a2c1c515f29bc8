//! Accounts, quotas, member rules, activity, statistics, notifications and
//! error shapes, through the HTTP routes against a real etcd.

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::{jwt_claims, token_keypair, Auth, Env};
use leengine_core::quota::Quota;
use leengine_core::registry::RegistrySettings;
use leengine_core::server::Settings;
use serde_json::{json, Value};

async fn env_with_registry() -> (Env, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert, _) = token_keypair(dir.path());
    let settings = Settings {
        default_quota: Quota {
            max_apps: 3,
            max_containers: 10,
            max_cpu_millis: Some(100_000),
            max_memory_bytes: Some(200 << 30),
        },
        registry: Some(RegistrySettings {
            service: "reg".into(),
            issuer: "core".into(),
            key_pem: key,
            cert_pem: Some(cert),
            ttl: Duration::from_secs(60),
            notify_secret: Some("notify-secret".into()),
        }),
        ..Default::default()
    };
    (Env::start(settings).await, dir)
}

fn names(v: &Value) -> Vec<String> {
    let mut n: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_tokens_and_secrets() {
    let (env, _d) = env_with_registry().await;
    let admin = env.user("root", true).await;
    let (st, _) = env
        .call(
            &admin,
            Method::POST,
            "/api/v1/users",
            Some(json!({"name": "alice", "password": "alice-password"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, v) = env
        .call(
            &admin,
            Method::POST,
            "/api/v1/users",
            Some(json!({"name": "alice", "password": "alice-password"})),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("user_exists"))
    );
    let (st, v) = env
        .call(
            &admin,
            Method::POST,
            "/api/v1/users",
            Some(json!({"name": "bob", "password": "short"})),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("weak_password"))
    );

    // Wrong password and unknown user look the same.
    let (st, _) = env
        .call(
            &Auth::Anonymous,
            Method::POST,
            "/api/v1/login",
            Some(json!({"user": "alice", "password": "nope-nope"})),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = env
        .call(
            &Auth::Anonymous,
            Method::POST,
            "/api/v1/login",
            Some(json!({"user": "ghost", "password": "nope-nope"})),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, v) = env
        .call(
            &Auth::Anonymous,
            Method::POST,
            "/api/v1/login",
            Some(json!({"user": "alice", "password": "alice-password"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let token = v["token"].as_str().unwrap().to_string();
    let alice = Auth::Bearer(token.clone());
    let (st, me) = env.call(&alice, Method::GET, "/api/v1/user", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(me["name"], "alice");
    assert!(me.get("password_hash").is_none());

    // Basic with user:password and user:token both work; a token of
    // another user does not.
    let basic = Auth::Basic("alice".into(), "alice-password".into());
    assert_eq!(
        env.call(&basic, Method::GET, "/api/v1/user", None).await.0,
        StatusCode::OK
    );
    let basic_tok = Auth::Basic("alice".into(), token.clone());
    assert_eq!(
        env.call(&basic_tok, Method::GET, "/api/v1/user", None)
            .await
            .0,
        StatusCode::OK
    );
    let wrong_user = Auth::Basic("root".into(), token.clone());
    assert_eq!(
        env.call(&wrong_user, Method::GET, "/api/v1/user", None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );

    // Listing shows no secret; the stored record holds only a hash.
    let (_, list) = env
        .call(&alice, Method::GET, "/api/v1/user/tokens", None)
        .await;
    assert!(!list.to_string().contains(&token));
    let raw = env
        .etcd
        .etcdctl(&["get", "--prefix", env.core.db.keys.core_prefix().as_str()]);
    let dump = String::from_utf8_lossy(&raw.stdout);
    assert!(dump.contains("$argon2id$"));
    assert!(!dump.contains("alice-password"));
    assert!(!dump.contains(token.splitn(3, '_').nth(2).unwrap()));

    // Revoked → 401.
    let id = v["id"].as_str().unwrap();
    let (st, _) = env
        .call(
            &alice,
            Method::DELETE,
            &format!("/api/v1/user/tokens/{id}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(
        env.call(&alice, Method::GET, "/api/v1/user", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Non-admins cannot manage users: 403, anonymous: 401.
    let (st, _) = env.call(&basic, Method::GET, "/api/v1/users", None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = env
        .call(&Auth::Anonymous, Method::GET, "/api/v1/users", None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_hold_under_concurrency() {
    let (env, _d) = env_with_registry().await;
    let admin = env.user("root", true).await;
    let u = env.user("carol", false).await;
    let (st, _) = env
        .call(
            &admin,
            Method::PUT,
            "/api/v1/users/carol/quota",
            Some(json!({"max_apps": 2, "max_containers": 5})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    // Fire the creations concurrently on the same router.
    let futs = (0..6).map(|i| {
        let (env, u) = (&env, u.clone());
        async move {
            env.call(
                &u,
                Method::POST,
                "/api/v1/apps",
                Some(json!({"name": format!("app{i}")})),
            )
            .await
        }
    });
    let results = futures::future::join_all(futs).await;
    let created = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    let refused: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::FORBIDDEN)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(created, 2, "{results:?}");
    assert_eq!(refused.len(), 4);
    assert!(refused.iter().all(|v| v["code"] == "quota_apps"));
    let (_, me) = env.call(&u, Method::GET, "/api/v1/user", None).await;
    assert_eq!(me["usage"]["apps"], 2);

    let (_, apps) = env.call(&u, Method::GET, "/api/v1/apps", None).await;
    let app = apps[0]["name"].as_str().unwrap().to_string();
    env.public_image(&admin, "team/web").await;
    let deploy = |n: u32| json!({"image": "team/web", "tag": "v1", "replicas": n});
    let (st, v) = env
        .call(
            &u,
            Method::POST,
            &format!("/api/v1/apps/{app}/deploy"),
            Some(deploy(6)),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("quota_containers"))
    );
    let (st, _) = env
        .call(
            &u,
            Method::POST,
            &format!("/api/v1/apps/{app}/deploy"),
            Some(deploy(4)),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = env
        .call(
            &u,
            Method::POST,
            &format!("/api/v1/apps/{app}/scale"),
            Some(json!({"replicas": 6})),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("quota_containers"))
    );
    let (st, _) = env
        .call(
            &u,
            Method::POST,
            &format!("/api/v1/apps/{app}/scale"),
            Some(json!({"replicas": 5})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    // Deleting returns both the app and its containers.
    assert_eq!(
        env.call(&u, Method::DELETE, &format!("/api/v1/apps/{app}"), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let (_, me) = env.call(&u, Method::GET, "/api/v1/user", None).await;
    assert_eq!(
        (
            me["usage"]["apps"].as_u64(),
            me["usage"]["containers"].as_u64()
        ),
        (Some(1), Some(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_and_memory_requests_are_charged_to_the_quota() {
    let (env, _d) = env_with_registry().await;
    let admin = env.user("root", true).await;
    let u = env.user("rita", false).await;
    // Old bodies stay valid: without CPU and memory the defaults apply.
    let (st, v) = env
        .call(
            &admin,
            Method::PUT,
            "/api/v1/users/rita/quota",
            Some(json!({"max_apps": 2, "max_containers": 100})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["quota"]["max_cpu_millis"], 100_000);
    assert_eq!(v["quota"]["max_memory_bytes"], 200u64 << 30);
    let (st, v) = env
        .call(
            &admin,
            Method::PUT,
            "/api/v1/users/rita/quota",
            Some(json!({"max_apps": 2, "max_containers": 100,
                        "max_cpu_millis": 2000, "max_memory_bytes": 1u64 << 30})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    env.call(
        &u,
        Method::POST,
        "/api/v1/apps",
        Some(json!({"name": "big"})),
    )
    .await;
    env.public_image(&admin, "team/web").await;
    let versions = "/api/v1/apps/big/versions";
    let fields = |replicas: u32, cpu: &str, mem: &str| {
        json!({"image": "team/web", "tag": "v1", "replicas": replicas,
               "resources": {"cpu_request": cpu, "memory_request": mem}})
    };
    let usage = |me: &Value| {
        (
            me["usage"]["containers"].as_u64(),
            me["usage"]["cpu_millis"].as_u64(),
            me["usage"]["memory_bytes"].as_u64(),
        )
    };
    let me = || env.call(&u, Method::GET, "/api/v1/user", None);

    // 5 × 500m = 2.5 cores > 2; 3 × 512Mi = 1.5Gi > 1Gi.
    for (body, code, detail) in [
        (
            fields(5, "500m", "1Mi"),
            "quota_cpu",
            "at most 2000 CPU millicores (in use 0, asked +2500)",
        ),
        (
            fields(3, "1m", "512Mi"),
            "quota_memory",
            "in use 0, asked +1610612736",
        ),
    ] {
        let (st, v) = env.call(&u, Method::POST, versions, Some(body)).await;
        assert_eq!(
            (st, v["code"].as_str()),
            (StatusCode::FORBIDDEN, Some(code)),
            "{v}"
        );
        assert!(v["detail"].as_str().unwrap().contains(detail), "{v}");
    }
    let (st, v) = env
        .call(&u, Method::POST, versions, Some(fields(1, "lots", "1Mi")))
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_resources")),
        "{v}"
    );
    // Nothing was written by the refusals.
    assert_eq!(usage(&me().await.1), (Some(0), Some(0), Some(0)));
    let (st, v) = env.call(&u, Method::GET, versions, None).await;
    assert_eq!(
        (st, v.as_array().map(Vec::len)),
        (StatusCode::OK, Some(0)),
        "{v}"
    );

    // 4 × 500m = 2 cores and 4 × 256Mi = 1Gi: exactly the quota.
    let v = env.create(&u, versions, fields(4, "500m", "256Mi")).await;
    let version = v["version"].as_u64().unwrap();
    assert_eq!(usage(&me().await.1), (Some(4), Some(2000), Some(1 << 30)));
    // Neither a second version with requests nor a scale-up fits.
    let (st, v) = env
        .call(&u, Method::POST, versions, Some(fields(1, "1m", "1")))
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("quota_cpu")),
        "{v}"
    );
    let scale = format!("{versions}/{version}/scale");
    let (st, v) = env
        .call(&u, Method::POST, &scale, Some(json!({"replicas": 5})))
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("quota_cpu")),
        "{v}"
    );

    // Scaling down frees CPU and memory, and the room can be used again.
    let (st, v) = env
        .call(&u, Method::POST, &scale, Some(json!({"replicas": 2})))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(usage(&me().await.1), (Some(2), Some(1000), Some(512 << 20)));
    env.create(&u, versions, fields(2, "500m", "256Mi")).await;
    assert_eq!(usage(&me().await.1), (Some(4), Some(2000), Some(1 << 30)));

    // Deleting a version frees its share; deleting the app frees the rest.
    let (st, v) = env
        .call(&u, Method::DELETE, &format!("{versions}/{version}"), None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(usage(&me().await.1), (Some(2), Some(1000), Some(512 << 20)));
    let (st, _) = env.call(&u, Method::DELETE, "/api/v1/apps/big", None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let me = me().await.1;
    assert_eq!(usage(&me), (Some(0), Some(0), Some(0)));
    assert_eq!(me["quota"]["max_cpu_millis"], 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_lists_activity_and_stats() {
    let (env, _d) = env_with_registry().await;
    let admin = env.user("root", true).await;
    let owner = env.user("olga", false).await;
    let master = env.user("max", false).await;
    let dev = env.user("dora", false).await;
    env.call(
        &owner,
        Method::POST,
        "/api/v1/apps",
        Some(json!({"name": "web"})),
    )
    .await;
    env.call(
        &dev,
        Method::POST,
        "/api/v1/apps",
        Some(json!({"name": "devs-own"})),
    )
    .await;
    let put = |u: &str, role: &str| {
        (
            format!("/api/v1/apps/web/members/{u}"),
            json!({"role": role}),
        )
    };
    let (p, b) = put("max", "Master");
    assert_eq!(
        env.call(&owner, Method::PUT, &p, Some(b)).await.0,
        StatusCode::OK
    );
    // A Master cannot create Owners nor touch the Owner.
    let (p, b) = put("dora", "Owner");
    let (st, v) = env.call(&master, Method::PUT, &p, Some(b)).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("role_too_high"))
    );
    let (st, _) = env
        .call(
            &master,
            Method::DELETE,
            "/api/v1/apps/web/members/olga",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (p, b) = put("dora", "Developer");
    assert_eq!(
        env.call(&master, Method::PUT, &p, Some(b)).await.0,
        StatusCode::OK
    );
    let (p, b) = put("nobody", "Guest");
    let (st, v) = env.call(&owner, Method::PUT, &p, Some(b)).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("user_not_found"))
    );
    // The last Owner stays.
    let (st, v) = env
        .call(
            &owner,
            Method::DELETE,
            "/api/v1/apps/web/members/olga",
            None,
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("last_owner"))
    );
    let (p, b) = put("nobody", "NotARole");
    let (st, v) = env.call(&owner, Method::PUT, &p, Some(b)).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_body"))
    );

    // Lists: own and member-of only; admin sees all.
    assert_eq!(
        names(&env.call(&dev, Method::GET, "/api/v1/apps", None).await.1),
        ["devs-own", "web"]
    );
    assert_eq!(
        names(&env.call(&master, Method::GET, "/api/v1/apps", None).await.1),
        ["web"]
    );
    assert_eq!(
        names(&env.call(&admin, Method::GET, "/api/v1/apps", None).await.1),
        ["devs-own", "web"]
    );

    env.public_image(&admin, "t/w").await;
    env.call(
        &master,
        Method::POST,
        "/api/v1/apps/web/deploy",
        Some(json!({"image": "t/w", "tag": "a1"})),
    )
    .await;
    env.call(
        &master,
        Method::POST,
        "/api/v1/apps/web/deploy",
        Some(json!({"image": "t/w", "tag": "a2"})),
    )
    .await;
    env.call(
        &owner,
        Method::POST,
        "/api/v1/apps/web/scale",
        Some(json!({"replicas": 3})),
    )
    .await;
    let (_, feed) = env
        .call(&dev, Method::GET, "/api/v1/apps/web/activity", None)
        .await;
    let actions: Vec<&str> = feed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "scaled",
            "deployed",
            "deployed",
            "member_added",
            "member_added",
            "created"
        ],
        "{feed}"
    );
    let (_, versions) = env
        .call(&dev, Method::GET, "/api/v1/apps/web/versions", None)
        .await;
    assert_eq!(versions.as_array().unwrap().len(), 2);
    assert_eq!(versions[1]["tag"], "a2");

    let (st, v) = env
        .call(&dev, Method::GET, "/api/v1/admin/stats", None)
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("admin_only"))
    );
    let (st, stats) = env
        .call(&admin, Method::GET, "/api/v1/admin/stats", None)
        .await;
    assert_eq!(st, StatusCode::OK);
    let today = stats["days"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (today["deploys"].as_u64(), today["scalings"].as_u64()),
        (Some(2), Some(1)),
        "{stats}"
    );
    let (st, v) = env
        .call(
            &admin,
            Method::GET,
            "/api/v1/admin/stats?from=2026-02-10&to=2026-01-01",
            None,
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_range"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_roles_reach_existing_images_and_pushes_are_recorded() {
    let (env, _d) = env_with_registry().await;
    let admin = env.user("root", true).await;
    let owner = env.user("olga", false).await;
    let rep = env.user("rita", false).await;
    let dev = env.user("dan", false).await;
    env.call(
        &owner,
        Method::POST,
        "/api/v1/groups",
        Some(json!({"name": "team"})),
    )
    .await;
    for (u, r) in [("rita", "Reporter"), ("dan", "Developer")] {
        env.set_role(&owner, &format!("/api/v1/groups/team/members/{u}"), r)
            .await;
    }
    // A Reporter of the group may not create images in it; a Developer may.
    let (st, _) = env
        .call(
            &rep,
            Method::POST,
            "/api/v1/images",
            Some(json!({"name": "team/app"})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = env
        .call(
            &dev,
            Method::POST,
            "/api/v1/images",
            Some(json!({"name": "team/app"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let granted = |v: &Value| -> Vec<String> {
        let c = jwt_claims(v["token"].as_str().unwrap());
        c["access"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|a| {
                a["actions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_string())
            })
            .collect()
    };
    let q = "/v2/token?service=reg&scope=repository:team/app:pull,push";
    let (_, v) = env.call(&rep, Method::GET, q, None).await;
    assert_eq!(granted(&v), ["pull"]);
    let (_, v) = env.call(&dev, Method::GET, q, None).await;
    assert_eq!(granted(&v), ["pull", "push"]);
    let (st, v) = env
        .call(
            &dev,
            Method::GET,
            "/v2/token?service=other&scope=repository:team/app:pull",
            None,
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_service"))
    );
    let (st, v) = env
        .call(
            &dev,
            Method::GET,
            "/v2/token?service=reg&scope=garbage",
            None,
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope"))
    );

    // Notifications: a manifest push to a new repository creates it with
    // the pusher as Owner; re-delivery counts once; blob events do not count.
    let envelope = json!({"events": [
        {"id": "ev-1", "timestamp": "2026-03-01T10:00:00Z", "action": "push",
         "target": {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "repository": "team/new", "digest": "sha256:ab", "tag": "v1"},
         "actor": {"name": "dan"}},
        {"id": "ev-2", "timestamp": "2026-03-01T10:00:00Z", "action": "push",
         "target": {"mediaType": "application/octet-stream", "repository": "team/new", "digest": "sha256:cd"},
         "actor": {"name": "dan"}}
    ]});
    let notify = Auth::Bearer("notify-secret".into());
    let (st, _) = env
        .call(
            &Auth::Bearer("wrong".into()),
            Method::POST,
            "/api/v1/registry/events",
            Some(envelope.clone()),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    for _ in 0..2 {
        let (st, v) = env
            .call(
                &notify,
                Method::POST,
                "/api/v1/registry/events",
                Some(envelope.clone()),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    let (st, img) = env
        .call(&dev, Method::GET, "/api/v1/images/team/new", None)
        .await;
    assert_eq!(
        (st, img["creator"].as_str(), img["role"].as_str()),
        (StatusCode::OK, Some("dan"), Some("Owner"))
    );
    let (_, feed) = env
        .call(&dev, Method::GET, "/api/v1/images/team/new/activity", None)
        .await;
    let pushed = feed
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "pushed")
        .count();
    assert_eq!(pushed, 1, "{feed}");
    let (_, stats) = env
        .call(
            &admin,
            Method::GET,
            "/api/v1/admin/stats?from=2026-03-01&to=2026-03-01",
            None,
        )
        .await;
    assert_eq!(stats["days"][0]["pushes"], 1, "{stats}");

    // Group members list the group's images; others see none of them.
    assert_eq!(
        names(&env.call(&rep, Method::GET, "/api/v1/images", None).await.1),
        ["team/app", "team/new"]
    );
    let stranger = env.user("sam", false).await;
    assert!(names(
        &env.call(&stranger, Method::GET, "/api/v1/images", None)
            .await
            .1
    )
    .is_empty());
    assert_eq!(
        names(
            &env.call(&admin, Method::GET, "/api/v1/images", None)
                .await
                .1
        ),
        ["team/app", "team/new"]
    );

    // A group with images cannot be deleted.
    let (st, v) = env
        .call(&owner, Method::DELETE, "/api/v1/groups/team", None)
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("group_not_empty"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_problem_json() {
    let (mut env, _d) = env_with_registry().await;
    let u = env.user("erin", false).await;
    let (st, v) = env.call(&u, Method::GET, "/no/such/path", None).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_route"))
    );
    let (st, v) = env.call(&u, Method::PUT, "/api/v1/apps", None).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
    let (st, v) = env
        .call(&u, Method::POST, "/api/v1/apps", Some(json!({"name": 5})))
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_body"))
    );
    let (st, v) = env
        .call(
            &u,
            Method::POST,
            "/api/v1/apps",
            Some(json!({"name": "Bad Name"})),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_name"))
    );
    let (st, v) = env.call(&u, Method::GET, "/api/v1/apps/ghost", None).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("app_not_found"))
    );
    let (st, _) = env
        .call(
            &Auth::Bearer("lep_000000000000_x".into()),
            Method::GET,
            "/api/v1/apps",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // etcd down: 503, not 500.
    env.etcd.stop();
    let (st, v) = env.call(&u, Method::GET, "/api/v1/apps", None).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_removing_each_other_leave_one_and_admin_bootstrap_keeps_password() {
    let (env, _d) = env_with_registry().await;
    let a = env.user("anna", false).await;
    let b = env.user("bert", false).await;
    env.call(
        &a,
        Method::POST,
        "/api/v1/groups",
        Some(json!({"name": "g"})),
    )
    .await;
    let (st, _) = env
        .call(
            &a,
            Method::PUT,
            "/api/v1/groups/g/members/bert",
            Some(json!({"role": "Owner"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    for round in 0..5 {
        // Both Owners try to remove the other at the same time: the
        // compare-and-swap on the resource lets exactly one through.
        let (ra, rb) = tokio::join!(
            env.call(&a, Method::DELETE, "/api/v1/groups/g/members/bert", None),
            env.call(&b, Method::DELETE, "/api/v1/groups/g/members/anna", None),
        );
        let ok = [ra.0, rb.0]
            .iter()
            .filter(|s| **s == StatusCode::NO_CONTENT)
            .count();
        assert_eq!(ok, 1, "round {round}: {ra:?} {rb:?}");
        let survivor = if ra.0 == StatusCode::NO_CONTENT {
            &a
        } else {
            &b
        };
        let (st, m) = env
            .call(survivor, Method::GET, "/api/v1/groups/g/members", None)
            .await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(m.as_array().unwrap().len(), 1, "{m}");
        let other = if ra.0 == StatusCode::NO_CONTENT {
            "bert"
        } else {
            "anna"
        };
        let (st, _) = env
            .call(
                survivor,
                Method::PUT,
                &format!("/api/v1/groups/g/members/{other}"),
                Some(json!({"role": "Owner"})),
            )
            .await;
        assert_eq!(st, StatusCode::OK);
    }

    // Bootstrapping an existing admin leaves its password alone.
    let db = &env.core.db;
    assert!(
        leengine_core::users::bootstrap_admin(db, "boss", "first-password")
            .await
            .unwrap()
    );
    assert!(
        !leengine_core::users::bootstrap_admin(db, "boss", "second-password")
            .await
            .unwrap()
    );
    let ok = Auth::Basic("boss".into(), "first-password".into());
    let (st, me) = env.call(&ok, Method::GET, "/api/v1/user", None).await;
    assert_eq!((st, me["admin"].as_bool()), (StatusCode::OK, Some(true)));
    let old = Auth::Basic("boss".into(), "second-password".into());
    assert_eq!(
        env.call(&old, Method::GET, "/api/v1/user", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Wrong credentials at the token endpoint: 401 (docker login fails),
    // none: an anonymous token.
    let (st, _) = env
        .call(&old, Method::GET, "/v2/token?service=reg", None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, v) = env
        .call(
            &Auth::Anonymous,
            Method::GET,
            "/v2/token?service=reg&scope=repository:g/x:pull",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        jwt_claims(v["token"].as_str().unwrap())["access"],
        json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_lb_is_changed_by_masters_and_shows_the_groups_dns() {
    let (env, _d) = env_with_registry().await;
    let admin = env.user("root", true).await;
    let owner = env.user("olga", false).await;
    let master = env.user("max", false).await;
    let dev = env.user("dora", false).await;
    let lb = json!({"domain": "web.example.com", "group": "public"});
    let (st, _) = env
        .call(
            &owner,
            Method::POST,
            "/api/v1/apps",
            Some(json!({"name": "web", "lb": lb})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    for (u, role) in [("max", "Master"), ("dora", "Developer")] {
        let (st, _) = env
            .call(
                &owner,
                Method::PUT,
                &format!("/api/v1/apps/web/members/{u}"),
                Some(json!({"role": role})),
            )
            .await;
        assert_eq!(st, StatusCode::OK);
    }
    let (_, v) = env.call(&dev, Method::GET, "/api/v1/apps/web", None).await;
    assert_eq!(
        v["dns"],
        json!({"domain": "web.example.com", "group": "public", "cname": null, "vips": []})
    );
    let dns = json!({"cname": "public.lb.example.com", "vips": ["10.9.0.1"]});
    let (st, _) = env
        .call(
            &admin,
            Method::PUT,
            "/api/v1/slb/groups/public/dns",
            Some(dns),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (_, v) = env.call(&dev, Method::GET, "/api/v1/apps/web", None).await;
    assert_eq!(v["dns"]["cname"], "public.lb.example.com");
    assert_eq!(v["dns"]["vips"], json!(["10.9.0.1"]));

    let moved = json!({"domain": "www.example.com", "group": "public"});
    let u = "/api/v1/apps/web/lb";
    let (st, v) = env.call(&dev, Method::PUT, u, Some(moved.clone())).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{v}"
    );
    let (st, v) = env.call(&dev, Method::DELETE, u, None).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let bad = json!({"domain": "Bad_Domain", "group": "public"});
    let (st, v) = env.call(&master, Method::PUT, u, Some(bad)).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_lb"))
    );
    let (st, v) = env.call(&master, Method::PUT, u, Some(moved.clone())).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["desired"]["lb"], moved);
    assert_eq!(v["dns"]["domain"], "www.example.com");
    let (_, v) = env.call(&dev, Method::GET, "/api/v1/apps/web", None).await;
    assert_eq!(v["desired"]["lb"], moved);

    let (st, v) = env.call(&master, Method::DELETE, u, None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(
        v["desired"]["lb"].is_null() && v.get("dns").is_none(),
        "{v}"
    );
    let (_, feed) = env
        .call(&owner, Method::GET, "/api/v1/apps/web/activity", None)
        .await;
    let changes = feed
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "lb_changed")
        .count();
    assert_eq!(changes, 2, "{feed}");
}

/// A kubeconfig naming an apiserver that is never asked: the pools route
/// reads only the Cell's etcd.
fn cell_settings(dir: &std::path::Path) -> Settings {
    std::fs::write(
        dir.join("far.kubeconfig"),
        "apiVersion: v1\nkind: Config\nclusters:\n- name: far\n  cluster: {server: 'https://127.0.0.1:1'}\n\
         contexts:\n- name: far\n  context: {cluster: far, user: far}\ncurrent-context: far\n\
         users:\n- name: far\n  user: {token: unused}\n",
    )
    .unwrap();
    let mut settings = Settings::default();
    settings.cells.credentials_dir = dir.to_path_buf();
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cell_pools_name_each_fault() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::start(cell_settings(dir.path())).await;
    let admin = env.user("root", true).await;
    let ann = env.user("ann", false).await;
    env.create(
        &admin,
        "/api/v1/admin/cells",
        json!({"name": "far", "kubeconfig": "far.kubeconfig"}),
    )
    .await;
    let code = |(st, v): (StatusCode, Value)| (st, v["code"].as_str().map(String::from));
    let pools = "/api/v1/admin/cells/far/pools";

    assert_eq!(
        code(env.call(&ann, Method::GET, pools, None).await).0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        code(
            env.call(&admin, Method::GET, "/api/v1/admin/cells/none/pools", None)
                .await
        ),
        (StatusCode::NOT_FOUND, Some("cell_not_found".into()))
    );
    let (st, v) = env.call(&admin, Method::GET, pools, None).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("cell_etcd_unset")),
        "{v}"
    );
    assert!(v["detail"].as_str().unwrap().contains("far"), "{v}");

    // An etcd that does not answer: 503 naming the Cell, not a stalled request.
    let dead = format!("http://127.0.0.1:{}", leengine_testenv::free_port());
    let (st, _) = env
        .call(
            &admin,
            Method::PATCH,
            "/api/v1/admin/cells/far",
            Some(json!({"etcd": [dead]})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = env.call(&admin, Method::GET, pools, None).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("cell_unavailable")),
        "{v}"
    );
    assert!(v["detail"].as_str().unwrap().contains("far"), "{v}");
}

/// A policy record of another shape (written by hand, or by a newer core)
/// costs its app's autoscaling only: the reconciler still reads
/// every app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_autoscale_policy_does_not_stop_the_reconciler() {
    let env = Env::start(Settings::default()).await;
    let owner = env.user("olga", false).await;
    env.create(&owner, "/api/v1/apps", json!({"name": "web"}))
        .await;
    let mut kv = env.core.db.etcd.kv_client();
    kv.put(
        env.core.db.keys.app_autoscale("web"),
        r#"{"min":"x"}"#,
        None,
    )
    .await
    .unwrap();
    let d = leengine_core::deploy::reconcile::read_desired(&env.core)
        .await
        .expect("the desired state is read despite the bad policy");
    assert!(d.apps.contains_key("web"));
    assert!(d.policies.is_empty());
    let (st, v) = env
        .call(&owner, Method::GET, "/api/v1/apps/web/autoscale", None)
        .await;
    assert!(
        st.is_server_error() || st == StatusCode::NOT_FOUND,
        "{st} {v}"
    );
}

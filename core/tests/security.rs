//! Security holes closed in the core API (docs/security.md): deploys without pull rights,
//! deleted image names handed to the next owner, unthrottled password
//! checks, tokens that outlive their minter, tokens that survive a password
//! change and expired login tokens that are never cleaned up.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::{jwt_claims, token_keypair, Auth, Env};
use leengine_core::registry::RegistrySettings;
use leengine_core::server::Settings;
use leengine_core::users::throttle::Limits;
use serde_json::{json, Value};

const SERVICE: &str = "reg";
const NOTIFY: &str = "notify-secret";

fn settings(dir: &std::path::Path) -> Settings {
    let (key, cert, _) = token_keypair(dir);
    Settings {
        registry: Some(RegistrySettings {
            service: SERVICE.into(),
            issuer: "core".into(),
            key_pem: key,
            cert_pem: Some(cert),
            ttl: Duration::from_secs(60),
            notify_secret: Some(NOTIFY.into()),
        }),
        ..Default::default()
    }
}

/// The actions a registry token grants on `repo`.
fn granted(v: &Value, repo: &str) -> Vec<String> {
    let c = jwt_claims(v["token"].as_str().expect("a token"));
    c["access"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["name"] == repo)
        .flat_map(|a| {
            a["actions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_string())
        })
        .collect()
}

async fn ok(env: &Env, auth: &Auth, m: Method, path: &str, body: Option<Value>) -> Value {
    let (st, v) = env.call(auth, m, path, body).await;
    assert!(st.is_success(), "{path}: {st} {v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_needs_pull_rights_on_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::start(settings(dir.path())).await;
    let olga = env.user("olga", false).await; // owns the images
    let max = env.user("max", false).await; // Master of the app only
    ok(
        &env,
        &max,
        Method::POST,
        "/api/v1/apps",
        Some(json!({"name": "web"})),
    )
    .await;
    for body in [json!({"name": "payments"}), json!({"name": "open"})] {
        ok(&env, &olga, Method::POST, "/api/v1/groups", Some(body)).await;
    }
    for name in ["payments/api", "open/thing"] {
        let body = json!({"name": name});
        ok(&env, &olga, Method::POST, "/api/v1/images", Some(body)).await;
    }
    let deploy = |image: &str| {
        let body = json!({"image": image, "tag": "v1"});
        let env = &env;
        let max = max.clone();
        async move {
            env.call(&max, Method::POST, "/api/v1/apps/web/deploy", Some(body))
                .await
        }
    };
    // No role on the (private) image, with or without a registry host, an
    // image that does not exist, and one that is not a platform image.
    for image in [
        "payments/api",
        "127.0.0.1:5000/payments/api",
        "payments/nothing-here",
        "nginx",
    ] {
        let (st, v) = deploy(image).await;
        assert_eq!(
            (st, v["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("image_pull_forbidden")),
            "{image}: {v}"
        );
    }
    let (_, versions) = env
        .call(&max, Method::GET, "/api/v1/apps/web/versions", None)
        .await;
    assert_eq!(versions, json!([]), "nothing was deployed");
    // Guest may not pull; Reporter on the image may.
    let member = |path: &str, role: &str| {
        let (path, body) = (path.to_string(), json!({"role": role}));
        let env = &env;
        let olga = olga.clone();
        async move { ok(env, &olga, Method::PUT, &path, Some(body)).await }
    };
    member("/api/v1/images/payments/api/members/max", "Guest").await;
    assert_eq!(deploy("payments/api").await.0, StatusCode::FORBIDDEN);
    member("/api/v1/images/payments/api/members/max", "Reporter").await;
    let (st, v) = deploy("127.0.0.1:5000/payments/api").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["state"]["version"], 1);
    // A Reporter of the group pulls every image of it.
    member("/api/v1/groups/open/members/max", "Reporter").await;
    assert_eq!(deploy("open/thing").await.0, StatusCode::OK);
    member("/api/v1/groups/open/members/max", "Guest").await;
    assert_eq!(deploy("open/thing").await.0, StatusCode::FORBIDDEN);
    // A public image: anyone signed in may pull it (a Guest of its group,
    // as on the registry, may not).
    env.public_image(&olga, "open/public").await;
    assert_eq!(deploy("open/public").await.0, StatusCode::FORBIDDEN);
    ok(
        &env,
        &olga,
        Method::DELETE,
        "/api/v1/groups/open/members/max",
        None,
    )
    .await;
    assert_eq!(deploy("open/public").await.0, StatusCode::OK);
    // A non-member of the app still gets the app's 404 first.
    let (st, v) = env
        .call(
            &olga,
            Method::POST,
            "/api/v1/apps/web/deploy",
            Some(json!({"image": "open/public", "tag": "v1"})),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("app_not_found"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_image_name_goes_to_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::start(settings(dir.path())).await;
    let olga = env.user("olga", false).await;
    let mallory = env.user("mallory", false).await;
    let admin = env.user("root", true).await;
    ok(
        &env,
        &olga,
        Method::POST,
        "/api/v1/groups",
        Some(json!({"name": "team"})),
    )
    .await;
    let body = json!({"name": "team/web"});
    ok(&env, &olga, Method::POST, "/api/v1/images", Some(body)).await;
    ok(&env, &olga, Method::DELETE, "/api/v1/images/team/web", None).await;
    ok(&env, &olga, Method::DELETE, "/api/v1/groups/team", None).await;
    // Mallory re-creates the group and becomes its Owner...
    ok(
        &env,
        &mallory,
        Method::POST,
        "/api/v1/groups",
        Some(json!({"name": "team"})),
    )
    .await;
    // ...but gets nothing on the deleted repository, and cannot re-create it.
    let q = format!("/v2/token?service={SERVICE}&scope=repository:team/web:pull,push,delete");
    let (_, v) = env.call(&mallory, Method::GET, &q, None).await;
    assert!(
        granted(&v, "team/web").is_empty(),
        "{:?}",
        granted(&v, "team/web")
    );
    let (st, v) = env
        .call(
            &mallory,
            Method::POST,
            "/api/v1/images",
            Some(json!({"name": "team/web"})),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("image_deleted"))
    );
    // Other names of the group are hers.
    let q2 = format!("/v2/token?service={SERVICE}&scope=repository:team/new:pull,push");
    let (_, v) = env.call(&mallory, Method::GET, &q2, None).await;
    assert_eq!(granted(&v, "team/new"), ["pull", "push"]);
    // A push with a token from before the delete does not revive the name.
    let event = json!({"events": [{"id": "ev-late-1", "action": "push",
        "target": {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "repository": "team/web", "digest": "sha256:00", "tag": "v2"},
        "actor": {"name": "mallory"}}]});
    let (st, v) = env
        .call(
            &Auth::Bearer(NOTIFY.into()),
            Method::POST,
            "/api/v1/registry/events",
            Some(event),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, _) = env
        .call(&mallory, Method::GET, "/api/v1/images/team/web", None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // Deploys of it are refused; an admin may still pull and delete (to
    // clean the registry up), not push.
    ok(
        &env,
        &mallory,
        Method::POST,
        "/api/v1/apps",
        Some(json!({"name": "app"})),
    )
    .await;
    let (st, _) = env
        .call(
            &mallory,
            Method::POST,
            "/api/v1/apps/app/deploy",
            Some(json!({"image": "team/web", "tag": "v1"})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (_, v) = env.call(&admin, Method::GET, &q, None).await;
    assert_eq!(granted(&v, "team/web"), ["pull", "delete"]);
}

fn peer(last: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, last], 40000))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_checks_are_throttled_per_user_and_client() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::start(Settings {
        limits: Limits {
            client_burst: 6,
            client_per_minute: 1,
            user_burst: 3,
            user_per_minute: 1,
            hash_concurrency: 2,
        },
        ..settings(dir.path())
    })
    .await;
    let Auth::Bearer(alice_token) = env.user("alice", false).await else {
        unreachable!()
    };
    env.user("bob", false).await;
    let login = |from: u8, user: &str, password: &str| {
        let body = json!({"user": user, "password": password});
        let env = &env;
        async move {
            env.call_from(
                peer(from),
                &Auth::Anonymous,
                Method::POST,
                "/api/v1/login",
                Some(body),
            )
            .await
        }
    };
    // Per user: three failures from three clients, then even the right
    // password is refused, with a Retry-After.
    for from in 1..=3 {
        assert_eq!(
            login(from, "alice", "wrong-password").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    let (st, v, retry) = login(4, "alice", "password-of-test").await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("too_many_requests"))
    );
    let secs: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    // Basic auth with the password is the same check; an access token is not.
    let basic = Auth::Basic("alice".into(), "password-of-test".into());
    let (st, _, _) = env
        .call_from(peer(5), &basic, Method::GET, "/api/v1/user", None)
        .await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    let with_token = Auth::Basic("alice".into(), alice_token);
    let (st, _, _) = env
        .call_from(peer(5), &with_token, Method::GET, "/api/v1/user", None)
        .await;
    assert_eq!(st, StatusCode::OK);
    // Successes do not count against a user: bob signs in again and again.
    for _ in 0..3 {
        assert_eq!(
            login(6, "bob", "password-of-test").await.0,
            StatusCode::CREATED
        );
    }
    // Per client: client 6 has used 3 of 6; three more, then 429 whoever it
    // asks for, also on the registry token endpoint.
    for _ in 0..3 {
        assert_eq!(
            login(6, "bob", "password-of-test").await.0,
            StatusCode::CREATED
        );
    }
    assert_eq!(
        login(6, "bob", "password-of-test").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    let token_url = format!("/v2/token?service={SERVICE}&scope=repository:x/y:pull");
    let bob = Auth::Basic("bob".into(), "password-of-test".into());
    let (st, v, retry) = env
        .call_from(peer(6), &bob, Method::GET, &token_url, None)
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("too_many_requests"))
    );
    assert!(retry.is_some());
    // Another client is not affected.
    let (st, _, _) = env
        .call_from(peer(7), &bob, Method::GET, &token_url, None)
        .await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_do_not_outlive_their_minter_and_a_password_change_revokes_them() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::start(settings(dir.path())).await;
    env.user("alice", false).await;
    let password = Auth::Basic("alice".into(), "password-of-test".into());
    let (st, session) = env
        .call(
            &Auth::Anonymous,
            Method::POST,
            "/api/v1/login",
            Some(json!({"user": "alice", "password": "password-of-test"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let session = Auth::Bearer(session["token"].as_str().unwrap().to_string());
    // A login session (24 h) may not mint a token that lives longer.
    for body in [
        json!({"name": "ci"}),
        json!({"name": "ci", "expires_in_days": 2}),
    ] {
        let (st, v) = env
            .call(&session, Method::POST, "/api/v1/user/tokens", Some(body))
            .await;
        assert_eq!(
            (st, v["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("token_outlives_credential")),
            "{v}"
        );
    }
    // The password may; a non-expiring token may mint non-expiring ones, an
    // expiring one only shorter ones.
    let v = ok(
        &env,
        &password,
        Method::POST,
        "/api/v1/user/tokens",
        Some(json!({"name": "ci"})),
    )
    .await;
    let forever = Auth::Bearer(v["token"].as_str().unwrap().to_string());
    let v = ok(
        &env,
        &forever,
        Method::POST,
        "/api/v1/user/tokens",
        Some(json!({"name": "ci2"})),
    )
    .await;
    assert_eq!(v["expires"], Value::Null);
    let body = json!({"name": "week", "expires_in_days": 7});
    let v = ok(
        &env,
        &password,
        Method::POST,
        "/api/v1/user/tokens",
        Some(body),
    )
    .await;
    let week = Auth::Bearer(v["token"].as_str().unwrap().to_string());
    let (st, _) = env
        .call(
            &week,
            Method::POST,
            "/api/v1/user/tokens",
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let body = json!({"name": "day", "expires_in_days": 1});
    ok(&env, &week, Method::POST, "/api/v1/user/tokens", Some(body)).await;

    // A password change (made with the week token) revokes every other token.
    let (_, before) = env
        .call(&week, Method::GET, "/api/v1/user/tokens", None)
        .await;
    assert_eq!(before.as_array().unwrap().len(), 6, "{before}");
    let body = json!({"current": "password-of-test", "new": "a-new-password"});
    let (st, v) = env
        .call(&week, Method::PUT, "/api/v1/user/password", Some(body))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    for old in [&session, &forever] {
        let (st, _) = env.call(old, Method::GET, "/api/v1/user", None).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
    }
    let (_, after) = env
        .call(&week, Method::GET, "/api/v1/user/tokens", None)
        .await;
    assert_eq!(names(&after), ["week"], "{after}");
    let (st, _) = env.call(&password, Method::GET, "/api/v1/user", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "the old password is gone");
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_tokens_are_removed_from_etcd_when_they_expire() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::start(Settings {
        login_ttl: Duration::from_secs(2),
        ..settings(dir.path())
    })
    .await;
    let alice = env.user("alice", false).await;
    let (st, v) = env
        .call(
            &Auth::Anonymous,
            Method::POST,
            "/api/v1/login",
            Some(json!({"user": "alice", "password": "password-of-test"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let id = v["id"].as_str().unwrap().to_string();
    let body = json!({"name": "week", "expires_in_days": 7});
    let week = ok(
        &env,
        &alice,
        Method::POST,
        "/api/v1/user/tokens",
        Some(body),
    )
    .await;
    let db = &env.core.db;
    let lease_of = |id: String| async move {
        let resp = db
            .etcd
            .kv_client()
            .get(db.keys.core_token(&id), None)
            .await
            .unwrap();
        resp.kvs().first().map(|kv| kv.lease())
    };
    // Both expiring tokens sit on a lease no longer than their lifetime; the
    // non-expiring one does not.
    for (id, most) in [
        (id.clone(), 2),
        (week["id"].as_str().unwrap().to_string(), 7 * 86400),
    ] {
        let lease = lease_of(id.clone()).await.expect("token stored");
        assert_ne!(lease, 0, "token {id} has no lease");
        let ttl = db
            .etcd
            .lease_client()
            .time_to_live(lease, None)
            .await
            .unwrap();
        assert!(
            ttl.granted_ttl() <= most && ttl.granted_ttl() > 0,
            "{}",
            ttl.granted_ttl()
        );
    }
    let (_, all) = env
        .call(&alice, Method::GET, "/api/v1/user/tokens", None)
        .await;
    let test_id = all
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "test")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(lease_of(test_id).await, Some(0));
    // The login token's lease runs out and etcd deletes the record.
    let mut gone = false;
    for _ in 0..100 {
        if lease_of(id.clone()).await.is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "expired login token still stored");
}

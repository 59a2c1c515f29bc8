//! slb-core routes driven in-process against a real etcd.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use futures::future::BoxFuture;
use leengine_core::auth::{self, Authenticator, Caller};
use leengine_core::problem::ApiError;
use leengine_core::slb::{router, SlbState};
use leengine_testenv as te;
use serde_json::{json, Value};
use tower::ServiceExt;

/// `Bearer admin` is an administrator, `Bearer user` an ordinary user.
struct Tokens;

impl Authenticator for Tokens {
    fn authenticate<'a>(
        &'a self,
        headers: &'a HeaderMap,
    ) -> BoxFuture<'a, Result<Option<Caller>, ApiError>> {
        Box::pin(async move {
            match headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
            {
                None => Ok(None),
                Some("Bearer admin") => Ok(Some(Caller {
                    user: "root".into(),
                    admin: true,
                })),
                Some("Bearer user") => Ok(Some(Caller {
                    user: "alice".into(),
                    admin: false,
                })),
                Some(_) => Err(ApiError::unauthorized()),
            }
        })
    }
}

async fn app(etcd: &te::Etcd) -> (Router, etcd_client::Client) {
    let client = etcd.client(&te::Component::Core).await;
    let state = SlbState::new(client.clone(), leengine_store::Keys::default());
    (router(state).layer(auth::layer(Arc::new(Tokens))), client)
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
    text: String,
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    who: Option<&str>,
    body: Option<Value>,
    if_match: Option<&str>,
) -> Resp {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(w) = who {
        req = req.header(header::AUTHORIZATION, format!("Bearer {w}"));
    }
    if let Some(m) = if_match {
        req = req.header(header::IF_MATCH, m);
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .expect("request");
    let resp = app.clone().oneshot(req).await.expect("call");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Resp {
        status,
        headers,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        text,
    }
}

const D: &str = "/api/v1/slb/groups/g1/domains";

fn create_body(domain: &str) -> Value {
    json!({"domain": domain, "config": {"listen": [{"port": 80}]},
           "upstream": {"servers": [{"address": "10.0.0.1:8080"}]}})
}

#[tokio::test]
async fn domain_lifecycle_with_permissions_and_validation() {
    let etcd = te::Etcd::start();
    let (app, mut client) = app(&etcd).await;

    assert_eq!(
        call(&app, "POST", D, None, Some(create_body("a.com")), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let r = call(
        &app,
        "POST",
        D,
        Some("user"),
        Some(create_body("a.com")),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("admin_only"))
    );
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/problem+json");

    let r = call(
        &app,
        "POST",
        D,
        Some("admin"),
        Some(create_body("a.com")),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let etag = r.headers[header::ETAG].to_str().unwrap().to_string();
    let stored = client
        .get("/slb/g1/domains/a.com/upstream", None)
        .await
        .unwrap();
    let up: Value = serde_json::from_slice(stored.kvs()[0].value()).unwrap();
    assert_eq!(up["servers"][0]["address"], "10.0.0.1:8080");

    let r = call(
        &app,
        "POST",
        D,
        Some("admin"),
        Some(create_body("a.com")),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::CONFLICT, Some("domain_exists"))
    );

    // Precise validation errors, nothing written.
    let bad = json!({"domain": "b.com", "config": {"listen": [{"port": 443, "ssl": true}]}});
    let r = call(&app, "POST", D, Some("admin"), Some(bad), None).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_config"))
    );
    assert!(
        r.json["detail"].as_str().unwrap().starts_with("tls:"),
        "{}",
        r.text
    );
    let r = call(
        &app,
        "POST",
        D,
        Some("admin"),
        Some(create_body("B_.com")),
        None,
    )
    .await;
    assert_eq!(r.json["code"], "invalid_domain");
    let r = call(
        &app,
        "POST",
        D,
        Some("admin"),
        Some(json!({"domain": "b.com", "config": {"listn": 1}})),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_body"))
    );
    assert_eq!(
        client
            .get(
                "/slb/g1/domains/b.com/",
                Some(etcd_client::GetOptions::new().with_prefix())
            )
            .await
            .unwrap()
            .count(),
        0
    );

    // Reads for any user.
    let r = call(&app, "GET", &format!("{D}/a.com"), Some("user"), None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["config"]["listen"][0]["port"], 80);
    let r = call(&app, "GET", D, Some("user"), None, None).await;
    assert_eq!(r.json.as_array().unwrap().len(), 1);
    let r = call(
        &app,
        "GET",
        &format!("{D}/a.com/nginx"),
        Some("user"),
        None,
        None,
    )
    .await;
    assert!(
        r.text.contains("server_name \"a.com\";") && r.text.contains("balancer_by_lua_block"),
        "{}",
        r.text
    );
    assert_eq!(
        call(
            &app,
            "GET",
            &format!("{D}/zz.com"),
            Some("user"),
            None,
            None
        )
        .await
        .json["code"],
        "domain_not_found"
    );

    // Update with optimistic concurrency.
    let new_cfg = json!({"listen": [{"port": 8080}], "headers": {"X-A": "1"}});
    let r = call(
        &app,
        "PUT",
        &format!("{D}/a.com"),
        Some("admin"),
        Some(new_cfg.clone()),
        Some("\"1\""),
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::PRECONDITION_FAILED, Some("revision_mismatch"))
    );
    let r = call(
        &app,
        "PUT",
        &format!("{D}/a.com"),
        Some("admin"),
        Some(new_cfg.clone()),
        Some(&etag),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["config"]["headers"]["X-A"], "1");
    let r = call(
        &app,
        "PUT",
        &format!("{D}/a.com"),
        Some("admin"),
        Some(new_cfg.clone()),
        Some(&etag),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::PRECONDITION_FAILED,
        "a stale ETag must not overwrite"
    );
    assert_eq!(
        call(
            &app,
            "PUT",
            &format!("{D}/zz.com"),
            Some("admin"),
            Some(new_cfg),
            None
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );

    // Upstream replacement (service discovery).
    let up = json!({"servers": [{"address": "10.0.0.2:80", "weight": 2}], "balancing": {"method": "least_conn"}});
    assert_eq!(
        call(
            &app,
            "PUT",
            &format!("{D}/a.com/upstream"),
            Some("user"),
            Some(up.clone()),
            None
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    let r = call(
        &app,
        "PUT",
        &format!("{D}/a.com/upstream"),
        Some("admin"),
        Some(up.clone()),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = call(
        &app,
        "PUT",
        &format!("{D}/zz.com/upstream"),
        Some("admin"),
        Some(up),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        client
            .get("/slb/g1/domains/zz.com/upstream", None)
            .await
            .unwrap()
            .count(),
        0,
        "no orphan upstream"
    );
    let dup = json!({"servers": [{"address": "10.0.0.2:80"}, {"address": "10.0.0.2:80"}]});
    let r = call(
        &app,
        "PUT",
        &format!("{D}/a.com/upstream"),
        Some("admin"),
        Some(dup),
        None,
    )
    .await;
    assert_eq!(r.json["code"], "invalid_upstream");
    assert!(r.json["detail"]
        .as_str()
        .unwrap()
        .contains("servers[1].address"));
    let r = call(&app, "GET", &format!("{D}/a.com"), Some("user"), None, None).await;
    assert_eq!(r.json["upstream"]["servers"][0]["weight"], 2);

    // Delete is one transaction over both keys.
    assert_eq!(
        call(
            &app,
            "DELETE",
            &format!("{D}/a.com"),
            Some("admin"),
            None,
            None
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        client
            .get(
                "/slb/g1/domains/a.com/",
                Some(etcd_client::GetOptions::new().with_prefix())
            )
            .await
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        call(
            &app,
            "DELETE",
            &format!("{D}/a.com"),
            Some("admin"),
            None,
            None
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn status_per_agent_and_concurrent_creates() {
    let mut etcd = te::Etcd::start();
    let (app, mut client) = app(&etcd).await;

    let creates = (0..8).map(|_| {
        call(
            &app,
            "POST",
            D,
            Some("admin"),
            Some(create_body("c.com")),
            None,
        )
    });
    let statuses: Vec<StatusCode> = futures::future::join_all(creates)
        .await
        .into_iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count(),
        7,
        "{statuses:?}"
    );

    let view = call(&app, "GET", &format!("{D}/c.com"), Some("user"), None, None)
        .await
        .json;
    let latest = view["upstreamRevision"]
        .as_i64()
        .unwrap()
        .max(view["configRevision"].as_i64().unwrap());
    let agent = |host: &str, rev: i64, err: Option<Value>| {
        let mut v = json!({"host": host, "appliedRevision": rev, "reloads": 1, "updated": "2026-01-01T00:00:00Z", "domains": ["c.com"]});
        if let Some(e) = err {
            v["errors"] = json!({"c.com": e});
        }
        v.to_string()
    };
    client
        .put("/slb/g1/agents/h1", agent("h1", latest, None), None)
        .await
        .unwrap();
    client
        .put("/slb/g1/agents/h2", agent("h2", latest - 1, None), None)
        .await
        .unwrap();
    let e = json!({"revision": latest, "kind": "nginx-test", "message": "unknown variable"});
    client
        .put("/slb/g1/agents/h3", agent("h3", latest + 5, Some(e)), None)
        .await
        .unwrap();
    let r = call(
        &app,
        "GET",
        &format!("{D}/c.com/status"),
        Some("user"),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let by_host: std::collections::BTreeMap<String, (bool, Value)> = r.json["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["host"].as_str().unwrap().to_string(),
                (a["inSync"].as_bool().unwrap(), a["error"].clone()),
            )
        })
        .collect();
    assert!(by_host["h1"].0);
    assert!(!by_host["h2"].0, "behind the latest write");
    assert!(!by_host["h3"].0);
    assert_eq!(by_host["h3"].1["kind"], "nginx-test");
    let r = call(
        &app,
        "GET",
        "/api/v1/slb/groups/g1/agents",
        Some("user"),
        None,
        None,
    )
    .await;
    assert_eq!(r.json.as_array().unwrap().len(), 3);

    // etcd down: 503 problem, not a hang or a 500.
    etcd.stop();
    let r = call(&app, "GET", &format!("{D}/c.com"), Some("user"), None, None).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn group_dns_is_set_by_admins_validated_and_read_by_users() {
    let etcd = te::Etcd::start();
    let (app, _client) = app(&etcd).await;
    let u = "/api/v1/slb/groups/g1/dns";
    let r = call(&app, "GET", u, Some("user"), None, None).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("dns_not_found"))
    );
    let good = json!({"cname": "g1.lb.example.com", "vips": ["10.1.0.10", "2001:db8::10"]});
    let r = call(&app, "PUT", u, Some("user"), Some(good.clone()), None).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("admin_only"))
    );
    for (bad, code) in [
        (json!({}), "invalid_dns"),
        (json!({"cname": "G1.example.com"}), "invalid_cname"),
        (json!({"cname": "a..b"}), "invalid_cname"),
        (json!({"vips": ["127.0.0.1"]}), "invalid_vip"),
        (json!({"vips": ["10.1.0.10", "10.1.0.10"]}), "invalid_vip"),
    ] {
        let r = call(&app, "PUT", u, Some("admin"), Some(bad.clone()), None).await;
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{bad}"
        );
    }
    let r = call(
        &app,
        "PUT",
        u,
        Some("admin"),
        Some(json!({"vips": ["10.1.0.300"]})),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_body"))
    );
    assert_eq!(
        call(&app, "GET", u, Some("user"), None, None).await.status,
        StatusCode::NOT_FOUND
    );

    let r = call(&app, "PUT", u, Some("admin"), Some(good.clone()), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = call(&app, "GET", u, Some("user"), None, None).await;
    assert_eq!((r.status, r.json), (StatusCode::OK, good));
    // The record is no domain: the group's domain list does not show it.
    let r = call(&app, "GET", D, Some("user"), None, None).await;
    assert_eq!(r.json, json!([]));

    assert_eq!(
        call(&app, "DELETE", u, Some("user"), None, None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&app, "DELETE", u, Some("admin"), None, None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let r = call(&app, "DELETE", u, Some("admin"), None, None).await;
    assert_eq!(r.json["code"].as_str(), Some("dns_not_found"));
}

//! Shared by the core's integration tests: a real etcd, the core's router
//! in process, and a small request helper.
#![allow(dead_code)]

pub mod lb;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use leengine_core::server::{self, Core, Settings};
use leengine_core::store::Db;
use leengine_core::users;
use leengine_testenv as te;
use serde_json::Value;
use tower::ServiceExt as _;

pub struct Env {
    pub etcd: te::Etcd,
    pub core: Core,
    pub app: Router,
}

#[derive(Clone, Debug)]
pub enum Auth {
    Anonymous,
    Bearer(String),
    Basic(String, String),
}

impl Env {
    pub async fn start(settings: Settings) -> Env {
        let etcd = te::Etcd::start_with_prefix(&te::unique_name("core"));
        let client = etcd.client(&te::Component::Core).await;
        let db = Db::new(client, etcd.keys().clone());
        let core = Core::new(db, settings).expect("core settings");
        let app = server::app(core.clone());
        // As main does beside the server.
        server::spawn_background(&core);
        Env { etcd, core, app }
    }

    pub async fn call(
        &self,
        auth: &Auth,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        match auth {
            Auth::Anonymous => {}
            Auth::Bearer(t) => req = req.header(header::AUTHORIZATION, format!("Bearer {t}")),
            Auth::Basic(u, p) => {
                let enc = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                req = req.header(header::AUTHORIZATION, format!("Basic {enc}"));
            }
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&b).unwrap())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let is_problem = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v == "application/problem+json");
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22)
            .await
            .unwrap();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        if status.is_client_error() || status.is_server_error() {
            assert!(
                is_problem,
                "{path}: error {status} is not problem JSON: {v}"
            );
            assert!(v["code"].is_string(), "{path}: problem without code: {v}");
        }
        (status, v)
    }

    /// Creates a user directly and returns a bearer token for them.
    pub async fn user(&self, name: &str, admin: bool) -> Auth {
        users::create_user(&self.core.db, name, "password-of-test", admin)
            .await
            .unwrap();
        let (_, token) = users::issue_token(&self.core.db, name, "test", None)
            .await
            .unwrap();
        Auth::Bearer(token)
    }
}

impl Env {
    /// Creates the public image `group/repo` (and its group, if missing) as
    /// `owner`: anyone signed in may pull it, so anyone may deploy it.
    pub async fn public_image(&self, owner: &Auth, name: &str) {
        let group = name.split('/').next().unwrap();
        self.call(
            owner,
            Method::POST,
            "/api/v1/groups",
            Some(serde_json::json!({"name": group})),
        )
        .await;
        let (st, v) = self
            .call(
                owner,
                Method::POST,
                "/api/v1/images",
                Some(serde_json::json!({"name": name, "public": true})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "create image {name}: {v}");
    }

    /// `POST path` with `body` as `by`; asserts 201 Created and returns the body.
    pub async fn create(&self, by: &Auth, path: &str, body: Value) -> Value {
        let (st, v) = self.call(by, Method::POST, path, Some(body)).await;
        assert_eq!(st, StatusCode::CREATED, "POST {path}: {v}");
        v
    }

    /// `PUT member` (a `.../members/{user}` path) with `role` as `by`;
    /// asserts 200 OK.
    pub async fn set_role(&self, by: &Auth, member: &str, role: &str) {
        let (st, v) = self
            .call(
                by,
                Method::PUT,
                member,
                Some(serde_json::json!({"role": role})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "PUT {member}: {v}");
    }

    /// Serves the router on a free loopback port (for the registry's token
    /// realm and other real clients) and returns the port.
    pub async fn serve(&self) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        self.serve_on(listener);
        port
    }

    /// Serves the router on `listener`.
    pub fn serve_on(&self, listener: tokio::net::TcpListener) {
        tokio::spawn(std::future::IntoFuture::into_future(axum::serve(
            listener,
            self.app.clone(),
        )));
    }

    /// [`Env::call`] as if over a socket from `peer` (the address the
    /// throttle of password checks keys on).
    pub async fn call_from(
        &self,
        peer: std::net::SocketAddr,
        auth: &Auth,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value, Option<String>) {
        let mut req = Request::builder().method(method).uri(path);
        match auth {
            Auth::Anonymous => {}
            Auth::Bearer(t) => req = req.header(header::AUTHORIZATION, format!("Bearer {t}")),
            Auth::Basic(u, p) => {
                let enc = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                req = req.header(header::AUTHORIZATION, format!("Basic {enc}"));
            }
        }
        let mut req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&b).unwrap())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_string());
        let is_problem = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v == "application/problem+json");
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_client_error() {
            assert!(is_problem && v["code"].is_string(), "{path}: {status} {v}");
        }
        (status, v, retry_after)
    }
}

/// The claims part of a JWT, decoded (tests only read it).
pub fn jwt_claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("jwt has three parts");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

/// A P-256 key and self-signed certificate made with openssl, as an
/// operator would. Returns (key PEM, cert PEM, cert path).
pub fn token_keypair(dir: &std::path::Path) -> (String, String, std::path::PathBuf) {
    let key = dir.join("token.key");
    let cert = dir.join("token.crt");
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
        ])
        .args(["-subj", "/CN=leengine-core"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        std::fs::read_to_string(&key).unwrap(),
        std::fs::read_to_string(&cert).unwrap(),
        cert,
    )
}

pub const SERVICE: &str = "leengine-registry";
pub const ISSUER: &str = "leengine-core";

/// A registry whose token realm is the core on `core_port`, trusting the
/// token certificate at `cert`.
pub fn token_registry(core_port: u16, cert: &std::path::Path) -> te::Registry {
    te::Registry::start_with(&format!(
        "auth:\n  token:\n    realm: http://127.0.0.1:{core_port}/v2/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
        cert.display()
    ))
}

/// Another binary of the workspace, next to this crate's.
pub fn sibling(name: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_BIN_EXE_leengine-core")).with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// A registry token from the core listening on `core` for `scope`, as
/// `user:secret`.
pub fn registry_token(core: u16, scope: &str, user: &str, secret: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sf", "-u", &format!("{user}:{secret}")])
        .arg(format!(
            "http://127.0.0.1:{core}/v2/token?service={SERVICE}&scope={scope}"
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "token for {user}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["token"].as_str().unwrap().to_string()
}

/// The core's registry token server for the tests' registries.
pub fn registry_settings(
    key_pem: String,
    cert_pem: String,
) -> leengine_core::registry::RegistrySettings {
    leengine_core::registry::RegistrySettings {
        service: SERVICE.into(),
        issuer: ISSUER.into(),
        key_pem,
        cert_pem: Some(cert_pem),
        ttl: std::time::Duration::from_secs(300),
        notify_secret: None,
    }
}

/// A one-node Cell whose pool `web` (VLAN `vlan`) is created in its etcd
/// with cnictl, as network operators do.
pub fn start_cell_with_pool(vlan: u16) -> te::Cell {
    start_cell(vlan, None)
}

/// Like [`start_cell_with_pool`], with `node_agent` on every node.
pub fn start_cell(vlan: u16, node_agent: Option<std::path::PathBuf>) -> te::Cell {
    let cell = te::Cell::start(te::CellSpec {
        nodes: 1,
        pools: vec![("web".into(), vlan)],
        cni_plugin: sibling("leengine-cni"),
        node_agent,
        reclaim: false,
        network: te::CellNetwork::Leengine,
    });
    let pool = cell.pools()[0].clone();
    let out = std::process::Command::new(sibling("cnictl"))
        .args(["--etcd", &cell.etcd_endpoint(), "pool", "add", "web"])
        .args(["--cidr", &pool.cidr, "--gateway", &pool.gateway])
        .args(["--vlan", &vlan.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cell
}

//! A real Docker Distribution registry configured for token auth against
//! the core (served on loopback), driven by a real docker client.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use chrono::Utc;
use common::{token_keypair, Auth, Env};
use leengine_core::registry::scope::Access;
use leengine_core::registry::RegistrySettings;
use leengine_core::server::Settings;
use leengine_testenv as te;
use serde_json::json;

const SERVICE: &str = "leengine-registry";
const ISSUER: &str = "leengine-core";
const NOTIFY: &str = "notify-secret-for-test";

fn registry_yaml(core_port: u16, cert: &Path) -> String {
    format!(
        "auth:\n  token:\n    realm: http://127.0.0.1:{core_port}/v2/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n\
notifications:\n  endpoints:\n    - name: core\n      url: http://127.0.0.1:{core_port}/api/v1/registry/events\n      headers:\n        Authorization: [\"Bearer {NOTIFY}\"]\n      timeout: 2s\n      threshold: 3\n      backoff: 1s\n",
        cert.display()
    )
}

/// The docker CLI against the test daemon with its own credential store.
fn docker(d: &te::Dockerd, config: &Path, args: &[&str]) -> Output {
    let mut c: Command = d.cli(&[]);
    c.arg("--config").arg(config).args(args);
    c.output().expect("run docker")
}

fn ok(o: &Output) -> bool {
    o.status.success()
}

fn show(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn login(d: &te::Dockerd, config: &Path, reg: &str, user: &str, secret: &str) {
    let mut c = d.cli(&[]);
    c.arg("--config")
        .arg(config)
        .args(["login", "-u", user, "--password-stdin", reg]);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(secret.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(ok(&out), "docker login as {user}: {}", show(&out));
}

/// `GET /v2/NAME/manifests/TAG` on the registry with a bearer token; the status.
fn manifest_status(reg: &str, name: &str, tag: &str, token: &str) -> u16 {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "-H",
            "Accept: application/vnd.docker.distribution.manifest.v2+json",
        ])
        .arg(format!("http://{reg}/v2/{name}/manifests/{tag}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_push_pull_through_token_auth() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert, cert_path) = token_keypair(dir.path());
    let env = Env::start(Settings {
        registry: Some(RegistrySettings {
            service: SERVICE.into(),
            issuer: ISSUER.into(),
            key_pem: key,
            cert_pem: Some(cert),
            ttl: Duration::from_secs(300),
            notify_secret: Some(NOTIFY.into()),
        }),
        ..Default::default()
    })
    .await;
    let core_port = env.serve().await;

    let registry = te::Registry::start_with(&registry_yaml(core_port, &cert_path));
    let reg = registry.addr();
    let dockerd = te::Dockerd::start();
    te::build_busybox_image(&dockerd, "bb:1");

    let owner = env.user("olga", false).await;
    let Auth::Bearer(dan_token) = env.user("dan", false).await else {
        unreachable!()
    };
    env.user("rita", false).await; // password "password-of-test"
    let Auth::Bearer(otto_token) = env.user("otto", false).await else {
        unreachable!()
    };
    for (path, body) in [
        ("/api/v1/groups", json!({"name": "team"})),
        ("/api/v1/images", json!({"name": "team/private"})),
        (
            "/api/v1/images",
            json!({"name": "team/public", "public": true}),
        ),
    ] {
        env.create(&owner, path, body).await;
    }
    for (path, role) in [
        ("/api/v1/groups/team/members/dan", "Developer"),
        ("/api/v1/images/team/private/members/rita", "Reporter"),
    ] {
        env.set_role(&owner, path, role).await;
    }

    let cfg = |n: &str| {
        let p = dir.path().join(format!("docker-{n}"));
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    let (dan, rita, otto, anon) = (cfg("dan"), cfg("rita"), cfg("otto"), cfg("anon"));
    let private = format!("{reg}/team/private:v1");
    let public = format!("{reg}/team/public:v1");

    // Developer (through the group) pushes, logged in with an access token.
    login(&dockerd, &dan, &reg, "dan", &dan_token);
    for target in [&private, &public] {
        assert!(ok(&docker(&dockerd, &dan, &["tag", "bb:1", target])));
        let out = docker(&dockerd, &dan, &["push", target]);
        assert!(ok(&out), "dan pushes {target}: {}", show(&out));
    }

    // The registry's notification reaches the activity feed and the stats.
    let mut pushed = false;
    for _ in 0..100 {
        let (_, feed) = env
            .call(
                &owner,
                Method::GET,
                "/api/v1/images/team/private/activity",
                None,
            )
            .await;
        if feed
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "pushed" && e["actor"] == "dan" && e["detail"]["tag"] == "v1")
        {
            pushed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(pushed, "push notification not recorded");

    // Reporter (logged in with a password) pulls the private image...
    login(&dockerd, &rita, &reg, "rita", "password-of-test");
    assert!(ok(&docker(&dockerd, &rita, &["rmi", &private])));
    let out = docker(&dockerd, &rita, &["pull", &private]);
    assert!(ok(&out), "rita pulls: {}", show(&out));
    // ...and may not push to it.
    let rita_tag = format!("{reg}/team/private:by-rita");
    assert!(ok(&docker(&dockerd, &rita, &["tag", "bb:1", &rita_tag])));
    let out = docker(&dockerd, &rita, &["push", &rita_tag]);
    assert!(!ok(&out), "rita must not push: {}", show(&out));
    assert!(
        show(&out).contains("denied") || show(&out).contains("unauthorized"),
        "{}",
        show(&out)
    );

    // A non-member is refused the private image.
    login(&dockerd, &otto, &reg, "otto", &otto_token);
    assert!(ok(&docker(&dockerd, &otto, &["rmi", &private])));
    let out = docker(&dockerd, &otto, &["pull", &private]);
    assert!(!ok(&out), "otto must not pull: {}", show(&out));

    // Anyone, even without logging in, pulls the public image.
    assert!(ok(&docker(&dockerd, &anon, &["rmi", &public])));
    let out = docker(&dockerd, &anon, &["pull", &public]);
    assert!(ok(&out), "anonymous pulls public: {}", show(&out));
    // ...but not the private one.
    let out = docker(&dockerd, &anon, &["pull", &private]);
    assert!(!ok(&out), "anonymous must not pull private: {}", show(&out));

    // An expired token is refused by the registry; the same grant, fresh, works.
    let ts = env.core.registry.as_ref().unwrap();
    let grant = || {
        vec![Access {
            kind: "repository".into(),
            name: "team/private".into(),
            actions: vec!["pull".into()],
        }]
    };
    let expired = ts.issue_at("rita", grant(), Utc::now() - chrono::Duration::hours(2));
    let fresh = ts.issue_at("rita", grant(), Utc::now());
    assert_eq!(
        manifest_status(&reg, "team/private", "v1", &expired.token),
        401
    );
    assert_eq!(
        manifest_status(&reg, "team/private", "v1", &fresh.token),
        200
    );

    let (_, stats) = env
        .call(
            &env.user("root", true).await,
            Method::GET,
            "/api/v1/admin/stats",
            None,
        )
        .await;
    let today = stats["days"].as_array().unwrap().last().unwrap();
    assert!(today["pushes"].as_u64().unwrap() >= 2, "{stats}");

    // Deleting the images and the group leaves the content in the
    // registry: whoever re-creates the group must not get it.
    for path in [
        "/api/v1/images/team/private",
        "/api/v1/images/team/public",
        "/api/v1/groups/team",
    ] {
        let (st, v) = env.call(&owner, Method::DELETE, path, None).await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{path}: {v}");
    }
    let Auth::Bearer(mallory_token) = env.user("mallory", false).await else {
        unreachable!()
    };
    let mallory_auth = Auth::Bearer(mallory_token.clone());
    env.create(&mallory_auth, "/api/v1/groups", json!({"name": "team"}))
        .await;
    let mallory = cfg("mallory");
    login(&dockerd, &mallory, &reg, "mallory", &mallory_token);
    for image in [&private, &public] {
        let _ = docker(&dockerd, &mallory, &["rmi", image]);
        let out = docker(&dockerd, &mallory, &["pull", image]);
        assert!(
            !ok(&out),
            "the group's new Owner pulls the deleted {image}: {}",
            show(&out)
        );
    }
    // The registry still holds it (an admin's token pulls it, to clean up).
    let (_, v) = env
        .call(
            &env.user("root2", true).await,
            Method::GET,
            &format!("/v2/token?service={SERVICE}&scope=repository:team/private:pull"),
            None,
        )
        .await;
    assert_eq!(
        manifest_status(&reg, "team/private", "v1", v["token"].as_str().unwrap()),
        200
    );
}

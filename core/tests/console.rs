//! The web console and boss in a real browser: a real etcd and the whole
//! core serving `console/dist` on a TCP port; `node --test` drives Debian's
//! Chromium through playwright-core (`console/tests/console.test.mjs`).
//! Screenshots go to `console/test-results/`.
//!
//! A real nginx agent reports to the boss's nginx-group page; a real build
//! agent (its own dockerd, a git daemon with a tiny project) runs the build
//! the page triggers.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use axum::body::Body;
use axum::http::Method;
use axum::http::{header, Request, StatusCode};
use common::{Auth, Env};
use leengine_build::validate::Policy;
use leengine_core::builds::BuildSettings;
use leengine_core::cells::CellSettings;
use leengine_core::deploy::{reconcile, DeploySettings};
use leengine_core::registry::RegistrySettings;
use leengine_core::server::Settings;
use leengine_core::users;
use leengine_testenv as te;
use tower::ServiceExt as _;

const PASSWORD: &str = "password-of-test";
const REGISTRY: &str = "127.0.0.1:5000";
const GIT: &str = "http://gitlab.example";
const NOTIFY_SECRET: &str = "notify-secret-of-test";

fn console_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../console")
}

/// `console/dist`, built here when missing (hack/test.sh builds it first).
/// Built once per test process: tests run in parallel, and two `vite build`s into the same
/// `dist/` empty it under each other.
fn console_dist() -> PathBuf {
    static DIST: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIST.get_or_init(build_console).clone()
}

fn build_console() -> PathBuf {
    let src = console_src();
    let npm = |args: &[&str]| {
        let st = Command::new("npm")
            .args(args)
            .current_dir(&src)
            .status()
            .expect("npm (hack/deps.sh installs node and npm)");
        assert!(st.success(), "npm {args:?} in console/ failed");
    };
    if !src.join("node_modules").is_dir() {
        npm(&["ci"]);
    }
    if !src.join("dist/index.html").is_file() {
        npm(&["run", "build"]);
    }
    src.join("dist")
}

fn settings(console_dir: Option<PathBuf>) -> Settings {
    Settings {
        console_dir,
        builds: BuildSettings {
            policy: Policy::new(Some(REGISTRY.into()), &[GIT]).unwrap(),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn raw(env: &Env, path: &str) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let req = Request::get(path).body(Body::empty()).unwrap();
    let resp = env.app.clone().oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 24).await.unwrap();
    (parts.status, parts.headers, bytes.to_vec())
}

#[tokio::test]
async fn core_serves_the_console_with_a_same_origin_policy() {
    let dist = console_dist();
    let env = Env::start(settings(Some(dist.clone()))).await;
    for page in ["/", "/boss"] {
        let (st, h, body) = raw(&env, page).await;
        assert_eq!(st, StatusCode::OK, "{page}");
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
        let html = String::from_utf8(body).unwrap();
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "{html}"
        );
    }
    // Every asset the page names is served, with its type; nothing else is.
    let html = std::fs::read_to_string(dist.join("index.html")).unwrap();
    let assets: Vec<&str> = html
        .split('"')
        .filter(|s| s.starts_with("/assets/"))
        .collect();
    assert!(assets.len() >= 2, "script and stylesheet in {html}");
    for a in assets {
        let (st, h, body) = raw(&env, a).await;
        assert_eq!(st, StatusCode::OK, "{a}");
        assert!(h[header::CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("immutable"));
        assert!(!body.is_empty());
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains("//cdn.") && !text.contains("fonts.googleapis"),
            "{a} names an outside host"
        );
    }
    for bad in [
        "/assets/..%2Findex.html",
        "/assets/missing.js",
        "/assets/x.html",
    ] {
        let (st, v) = env
            .call(&common::Auth::Anonymous, axum::http::Method::GET, bad, None)
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{bad}: {v}");
    }
    // The API is untouched: unknown paths are still problem JSON.
    let (st, v) = env
        .call(
            &common::Auth::Anonymous,
            axum::http::Method::GET,
            "/nope",
            None,
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_route"))
    );
}

#[tokio::test]
async fn a_missing_console_is_a_problem_naming_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::start(settings(Some(dir.path().join("absent")))).await;
    let (st, v) = env
        .call(&common::Auth::Anonymous, axum::http::Method::GET, "/", None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(v["code"], "console_not_installed");
    assert!(v["detail"].as_str().unwrap().contains("absent"), "{v}");
}

/// The base and compile image of the build: a local FROM-scratch busybox
/// (nothing is pulled).
const BASE_IMAGE: &str = "leengine-test/base:1";

/// The git server with `team/web.git`, a tiny project whose compile
/// script takes a few seconds, so the page sees the run live; and the
/// commit it holds.
fn web_repo(dir: &Path) -> (te::GitServer, String) {
    let git = te::GitServer::start();
    let src = dir.join("web-src");
    std::fs::create_dir(&src).unwrap();
    let dockerfile = format!("FROM {BASE_IMAGE}\nCOPY target/app.txt /app.txt\n");
    for (name, text) in [
        (
            "build.sh",
            "set -e\necho \"compiling web\"\nsleep 3\nmkdir -p target\necho hello > target/app.txt\necho \"compiled web\"\n",
        ),
        ("Dockerfile", dockerfile.as_str()),
    ] {
        std::fs::write(src.join(name), text).unwrap();
    }
    let commit = git.commit_dir("team/web.git", &src, "web: first");
    (git, commit)
}

/// A real build host: its own dockerd with the base image built locally,
/// and `leengine-build-agent` as a process.
struct BuildHost {
    _dockerd: te::Dockerd,
    agent: std::process::Child,
}

impl BuildHost {
    fn start(etcd: &te::Etcd, registry: &str, git_host: &str, dir: &Path) -> BuildHost {
        let dockerd = te::Dockerd::start();
        te::build_busybox_image(&dockerd, BASE_IMAGE);
        let log = std::fs::File::create(dir.join("build-agent.log")).unwrap();
        let agent = Command::new(common::sibling("leengine-build-agent"))
            .args(["--id", "builder-1", "--etcd", &etcd.endpoint()])
            .args(["--prefix", etcd.keys().prefix()])
            .args(etcd.tls_args(&te::Component::build_agent("builder-1")))
            .args(["--docker", &dockerd.host(), "--registry", registry])
            .args(["--git-host", git_host, "--ttl", "3s"])
            .arg("--work-dir")
            .arg(dir.join("build-work"))
            .arg("--cache-dir")
            .arg(dir.join("build-cache"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn leengine-build-agent");
        BuildHost {
            _dockerd: dockerd,
            agent,
        }
    }
}

impl Drop for BuildHost {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_and_boss_in_chromium() {
    let dist = console_dist();
    let dir = tempfile::tempdir().unwrap();
    let (key_pem, cert_pem, cert_path) = common::token_keypair(dir.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let core_port = listener.local_addr().unwrap().port();
    // A real registry with the core's token auth: a deploy asks it whether
    // the tag exists. Its own notifications stay off: the page test posts
    // the push events itself, so the boss's counts are exactly the test's.
    let registry = common::token_registry(core_port, &cert_path);
    let reg = registry.addr();
    let (git, commit) = tokio::task::block_in_place(|| web_repo(dir.path()));
    let env = Env::start(Settings {
        // The token server, and the notification secret the page test's
        // push events carry (they fill the deploy dialog's tags).
        registry: Some(RegistrySettings {
            service: "leengine-registry".into(),
            issuer: "leengine-core".into(),
            key_pem,
            cert_pem: Some(cert_pem),
            ttl: Duration::from_secs(300),
            notify_secret: Some(NOTIFY_SECRET.into()),
        }),
        builds: BuildSettings {
            policy: Policy::new(Some(reg.clone()), &[git.host()]).unwrap(),
            ..Default::default()
        },
        ..settings(Some(dist))
    })
    .await;
    for (name, admin) in [("root", true), ("mia", false), ("dev", false)] {
        users::create_user(&env.core.db, name, PASSWORD, admin)
            .await
            .unwrap();
    }
    let _builder =
        tokio::task::block_in_place(|| BuildHost::start(&env.etcd, &reg, &git.host(), dir.path()));
    let app = env
        .app
        .clone()
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(std::future::IntoFuture::into_future(axum::serve(
        listener, app,
    )));
    // The image group the apps' image lives in (a deploy needs pull on it),
    // and the tags the pages deploy, really in the registry.
    let mia = Auth::Basic("mia".into(), PASSWORD.into());
    env.create(&mia, "/api/v1/groups", serde_json::json!({"name": "team"}))
        .await;
    let push = common::registry_token(core_port, "repository:team/web:push,pull", "mia", PASSWORD);
    for tag in ["v1", "v2", "v7"] {
        te::Image::web(8080).push(&reg, "team/web", tag, Some(&push));
    }
    // A real nginx agent of group `lbg` with its nginx: the boss page
    // shows what it reports, `nginx -t` refusals included.
    let nginx_port = te::free_port();
    let _agent = tokio::task::block_in_place(|| {
        te::NginxAgent::start(
            &common::sibling("leengine-nginx-agent"),
            &env.etcd,
            "lbg",
            "h1",
        )
    });
    run_node(
        "tests/console.test.mjs",
        &[
            ("CONSOLE_NGINX_PORT", nginx_port.to_string()),
            ("CONSOLE_URL", url),
            ("CONSOLE_PASSWORD", PASSWORD.into()),
            ("CONSOLE_GIT_REPO", git.url("team/web.git")),
            ("CONSOLE_COMMIT", commit),
            ("CONSOLE_BASE_IMAGE", BASE_IMAGE.into()),
            ("CONSOLE_REGISTRY", reg.clone()),
            ("CONSOLE_NOTIFY_SECRET", NOTIFY_SECRET.into()),
        ],
    )
    .await;
}

/// The pages that need a Cell: one real one-node Kubernetes Cell, a real
/// registry with token auth whose notifications reach the core, images
/// pushed to it; `console/tests/cell.test.mjs` deploys and scales from the
/// browser and watches the pods come up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn app_pages_with_a_real_cell() {
    let dist = console_dist();
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("cells");
    std::fs::create_dir(&creds).unwrap();
    let (key, cert, cert_path) = common::token_keypair(dir.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let core_port = listener.local_addr().unwrap().port();
    let registry = te::Registry::start_with(&format!(
        "auth:\n  token:\n    realm: http://127.0.0.1:{core_port}/v2/token\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n\
notifications:\n  endpoints:\n    - name: core\n      url: http://127.0.0.1:{core_port}/api/v1/registry/events\n      headers:\n        Authorization: [\"Bearer {NOTIFY_SECRET}\"]\n      timeout: 2s\n      threshold: 3\n      backoff: 1s\n",
        common::SERVICE,
        common::ISSUER,
        cert_path.display()
    ));
    let reg = registry.addr();
    let env = Env::start(Settings {
        registry: Some(RegistrySettings {
            notify_secret: Some(NOTIFY_SECRET.into()),
            ..common::registry_settings(key, cert)
        }),
        cells: CellSettings {
            credentials_dir: creds.clone(),
            min_app_cells: 1,
        },
        deploy: DeploySettings {
            resync: Duration::from_secs(2),
            ..Default::default()
        },
        builds: BuildSettings {
            policy: Policy::new(Some(reg.clone()), &[GIT]).unwrap(),
            ..Default::default()
        },
        console_dir: Some(dist),
        ..Default::default()
    })
    .await;
    let app = env
        .app
        .clone()
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(std::future::IntoFuture::into_future(axum::serve(
        listener, app,
    )));
    tokio::spawn(reconcile::run(env.core.clone()));
    for (name, admin) in [("root", true), ("mia", false)] {
        users::create_user(&env.core.db, name, PASSWORD, admin)
            .await
            .unwrap();
    }
    let mia = Auth::Basic("mia".into(), PASSWORD.into());
    env.create(&mia, "/api/v1/groups", serde_json::json!({"name": "team"}))
        .await;
    let push = common::registry_token(core_port, "repository:team/web:push,pull", "mia", PASSWORD);
    for tag in ["v1", "v2"] {
        te::Image::web(8080).push(&reg, "team/web", tag, Some(&push));
    }
    // The registry notifies asynchronously: the pages read what it sent.
    let mut pushes = 0;
    for _ in 0..300 {
        let (_, feed) = env
            .call(&mia, Method::GET, "/api/v1/images/team/web/activity", None)
            .await;
        pushes = feed
            .as_array()
            .map_or(0, |a| a.iter().filter(|e| e["action"] == "pushed").count());
        if pushes == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(pushes, 2, "both pushes reach the image's feed");
    let cell = tokio::task::block_in_place(|| common::start_cell_with_pool(133));
    cell.trust_registry(&reg);
    std::fs::copy(cell.kubeconfig(), creds.join("cella.kubeconfig")).unwrap();
    let root = Auth::Basic("root".into(), PASSWORD.into());
    env.create(
        &root,
        "/api/v1/admin/cells",
        serde_json::json!({"name": "cella", "kubeconfig": "cella.kubeconfig",
                "etcd": [cell.etcd_endpoint()], "nginx_groups": ["edge"]}),
    )
    .await;
    run_node(
        "tests/cell.test.mjs",
        &[
            ("CONSOLE_URL", format!("http://127.0.0.1:{core_port}")),
            ("CONSOLE_PASSWORD", PASSWORD.into()),
            ("CONSOLE_REGISTRY", reg.clone()),
        ],
    )
    .await;
}

/// `node --test FILE` in console/ with `vars`; the test fails unless every
/// browser test passed.
async fn run_node(file: &str, vars: &[(&str, String)]) {
    let out = tokio::process::Command::new("node")
        .args(["--test", "--test-reporter=spec", file])
        .current_dir(console_src())
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .output()
        .await
        .expect("node (hack/deps.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "browser tests failed:\n{stdout}\n{stderr}"
    );
    // The spec reporter's summary: tests ran, none failed.
    assert!(
        stdout.contains("ℹ fail 0") && !stdout.contains("ℹ pass 0"),
        "{stdout}"
    );
}

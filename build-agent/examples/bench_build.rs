//! Build farm benchmark (run through hack/bench/build.sh).
//!
//! `cache`: one project whose compile step fetches N artifacts over HTTP from
//! a loopback "Maven mirror" into the Maven repository, built cold (empty
//! per-config cache) and then warm, with per-stage timings from the run record.
//!
//! `dispatch`: 1,000 build configs triggered once each through the core's
//! API over 10 registered builders: spread per builder and dispatch latency.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request};
use axum::Router;
use etcd_client::PutOptions;
use leengine_build::validate::Policy;
use leengine_build::{BuildRun, RunStatus};
use leengine_core::access::{self, Kind};
use leengine_core::auth::{self, Caller, StaticAdminToken};
use leengine_core::builds::{router, BuildSettings, BuildsState};
use leengine_core::store::Db;
use leengine_store::Keys;
use leengine_testenv as te;
use serde_json::{json, Value};
use tower::ServiceExt;

async fn call(app: &Router, method: &str, uri: &str, body: Option<Value>) -> Value {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, "Bearer tok")
        .header(header::CONTENT_TYPE, "application/json")
        .body(
            body.map(|b| Body::from(b.to_string()))
                .unwrap_or_else(Body::empty),
        )
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    assert!(status.is_success(), "{method} {uri}: {status} {v}");
    v
}

/// The build routes for admin `root`, with group `bench` (the target of
/// every image) in place.
async fn app(client: etcd_client::Client, registry: &str, git_host: &str) -> Router {
    let keys = Keys::new("/bench");
    let root = Caller {
        user: "root".into(),
        admin: true,
    };
    let db = Db::new(client.clone(), keys.clone());
    access::register(
        &db,
        &root,
        Kind::Group,
        "bench",
        false,
        String::new(),
        (vec![], vec![]),
    )
    .await
    .unwrap();
    let settings = BuildSettings {
        policy: Policy::new(Some(registry.into()), &[git_host]).unwrap(),
        ..Default::default()
    };
    router(BuildsState::new(client, keys, settings))
        .layer(auth::layer(Arc::new(StaticAdminToken::new("root", "tok"))))
}

/// `git-daemon` itself: `git daemon` runs it as a child, which killing
/// `git` would leave behind.
fn git_daemon_bin() -> PathBuf {
    let out = Command::new("git").arg("--exec-path").output().unwrap();
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("git-daemon")
}

/// `git daemon` serving `dir`; returns the child and the allowed-host entry.
fn git_daemon(dir: &Path) -> (std::process::Child, String) {
    let port = te::free_port();
    let child = Command::new(git_daemon_bin())
        .args(["--export-all", "--reuseaddr", "--listen=127.0.0.1"])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", dir.display()))
        .arg(dir)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(te::wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    (child, format!("git://127.0.0.1:{port}"))
}

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

/// Serves `dir` read-only on `addr`: the stand-in Maven mirror.
async fn mirror(dir: std::path::PathBuf, addr: &str) -> u16 {
    let app = Router::new().route(
        "/{*path}",
        axum::routing::get(move |axum::extract::Path(p): axum::extract::Path<String>| {
            let dir = dir.clone();
            async move {
                match tokio::fs::read(dir.join(p.replace("..", ""))).await {
                    Ok(b) => Ok(b),
                    Err(_) => Err(axum::http::StatusCode::NOT_FOUND),
                }
            }
        }),
    );
    let l = tokio::net::TcpListener::bind((addr, 0)).await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    port
}

async fn cache_bench() {
    let artifacts: usize = std::env::var("BENCH_ARTIFACTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let size_kib: usize = std::env::var("BENCH_ARTIFACT_KIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let warm_runs = 3;
    let agent_bin = std::env::var("LEENGINE_BUILD_AGENT_BIN").expect("LEENGINE_BUILD_AGENT_BIN");
    let etcd = te::Etcd::start_with_prefix("/bench");
    let dockerd = te::Dockerd::start();
    let registry = te::Registry::start();
    let base = "bench/base:1";
    te::build_busybox_image(&dockerd, base);
    let tmp = tempfile::tempdir().unwrap();

    let mirror_dir = tmp.path().join("mirror");
    let mut deps = String::new();
    for i in 0..artifacts {
        let rel = format!("org/bench/dep{i}/1.0/dep{i}-1.0.jar");
        let p = mirror_dir.join(&rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let bytes: Vec<u8> = (0..size_kib * 1024)
            .map(|j| u8::try_from((i * 31 + j) % 251).expect("< 251"))
            .collect();
        std::fs::write(&p, bytes).unwrap();
        deps.push_str(&rel);
        deps.push('\n');
    }
    // Compile containers get no host network: they reach the mirror on a
    // network of their own, through its gateway (in production that network
    // is firewalled to the mirror alone; docs/build-farm.md).
    let net = "bench-mirror";
    let out = dockerd.cli(&["network", "create", net]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = dockerd
        .cli(&[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
            net,
        ])
        .output()
        .unwrap();
    let gateway = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let port = mirror(mirror_dir, &gateway).await;

    let served = tmp.path().join("git");
    std::fs::create_dir_all(&served).unwrap();
    let (mut git_child, git_host) = git_daemon(&served);
    let repo = served.join("project");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("deps.txt"), deps).unwrap();
    std::fs::write(
        repo.join("build.sh"),
        format!(
            "set -e\nM=\"$LEENGINE_CACHE\"\nfetched=0\nwhile read -r rel; do\n  if [ ! -f \"$M/$rel\" ]; then\n    mkdir -p \"$(dirname \"$M/$rel\")\"\n    wget -q -O \"$M/$rel\" \"http://{gateway}:{port}/$rel\"\n    fetched=$((fetched+1))\n  fi\ndone < deps.txt\necho \"fetched $fetched artifacts\"\nmkdir -p target\nwhile read -r rel; do cat \"$M/$rel\"; done < deps.txt | md5sum > target/app.jar\n"
        ),
    )
    .unwrap();
    std::fs::write(
        repo.join("Dockerfile"),
        format!("FROM {base}\nCOPY target/app.jar /app.jar\n"),
    )
    .unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(
        &repo,
        &[
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@b",
            "commit",
            "-q",
            "-m",
            "bench",
        ],
    );

    let mut agent = Command::new(agent_bin)
        .args([
            "--id",
            "bench-1",
            "--etcd",
            &etcd.endpoint(),
            "--prefix",
            "/bench",
        ])
        .args(etcd.tls_args(&te::Component::build_agent("bench-1")))
        .args([
            "--docker",
            &dockerd.host(),
            "--capacity",
            "1",
            "--compile-network",
            net,
            "--registry",
            &registry.addr(),
            "--git-host",
            &git_host,
        ])
        .arg("--work-dir")
        .arg(tmp.path().join("work"))
        .arg("--cache-dir")
        .arg(tmp.path().join("cache"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = etcd.client(&te::Component::Core).await;
    let app = app(client, &registry.addr(), &git_host).await;
    for _ in 0..100 {
        if call(&app, "GET", "/api/v1/builds/builders", None)
            .await
            .as_array()
            .map(Vec::len)
            == Some(1)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    call(
        &app,
        "POST",
        "/api/v1/builds/configs",
        Some(json!({
            "id": "bench", "repo": format!("{git_host}/project"), "branch": "main",
            "image": format!("{}/bench/app", registry.addr()), "outputs": ["target/app.jar"],
            "compile": {"image": base, "script": "build.sh"}
        })),
    )
    .await;

    println!(
        "cache: {artifacts} artifacts x {size_kib} KiB = {} MiB fetched over loopback HTTP on a cold cache",
        artifacts * size_kib / 1024
    );
    println!(
        "{:<6} {:>9} {:>9} {:>9} {:>9} {:>9}  compile says",
        "run", "clone ms", "compile", "build", "push", "total"
    );
    for i in 0..=warm_runs {
        let run = call(
            &app,
            "POST",
            "/api/v1/builds/configs/bench/runs",
            Some(json!({"tag": format!("r{i}")})),
        )
        .await;
        let id = run["id"].as_str().unwrap().to_string();
        let run: BuildRun = loop {
            let v = call(
                &app,
                "GET",
                &format!("/api/v1/builds/configs/bench/runs/{id}"),
                None,
            )
            .await;
            let r: BuildRun = serde_json::from_value(v).unwrap();
            if r.status.is_terminal() {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(run.status, RunStatus::Succeeded, "{}", run.log);
        let ms = |name: &str| {
            run.stages
                .iter()
                .find(|s| s.stage.name() == name)
                .and_then(|s| s.duration_ms)
                .unwrap_or(0)
        };
        let total = (run.finished_at.unwrap() - run.created_at).num_milliseconds();
        let said = run
            .log
            .lines()
            .find(|l| l.starts_with("fetched"))
            .unwrap_or("")
            .to_string();
        let label = if i == 0 {
            "cold".to_string()
        } else {
            format!("warm{i}")
        };
        println!(
            "{label:<6} {:>9} {:>9} {:>9} {:>9} {:>9}  {said}",
            ms("clone"),
            ms("compile"),
            ms("build"),
            ms("push"),
            total
        );
    }
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = git_child.kill();
    let _ = git_child.wait();
}

async fn dispatch_bench() {
    let configs = 1000;
    let builders = 10;
    let etcd = te::Etcd::start_with_prefix("/bench");
    let mut client = etcd.client(&te::Component::Core).await;
    let keys = Keys::new("/bench");
    let lease = client.lease_grant(600, None).await.unwrap().id();
    let names: Vec<String> = (0..builders).map(|i| format!("builder-{i:02}")).collect();
    for b in &names {
        let info =
            json!({"id": b, "capacity": 4, "running": 0, "startedAt": "2026-01-01T00:00:00Z"});
        client
            .put(
                keys.builder(b),
                info.to_string(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .unwrap();
    }
    let app = app(client.clone(), "127.0.0.1:5000", "https://git.example").await;
    for i in 0..configs {
        call(
            &app,
            "POST",
            "/api/v1/builds/configs",
            Some(
                json!({"id": format!("project-{i:04}"), "repo": "https://git.example/p.git", "branch": "main",
                        "image": "127.0.0.1:5000/bench/p"}),
            ),
        )
        .await;
    }
    let mut lat = Vec::with_capacity(configs);
    let mut per: std::collections::BTreeMap<String, usize> = Default::default();
    let start = Instant::now();
    for i in 0..configs {
        let t = Instant::now();
        let run = call(
            &app,
            "POST",
            &format!("/api/v1/builds/configs/project-{i:04}/runs"),
            None,
        )
        .await;
        lat.push(t.elapsed());
        *per.entry(run["builder"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let total = start.elapsed();
    lat.sort();
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a percentile index: a fraction in [0, 1] of a length"
    )]
    let pct =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1000.0;
    println!("dispatch: {configs} configs x 1 trigger over {builders} builders (sequential, in-process API, real etcd)");
    println!(
        "  total {:.2} s = {:.0} dispatches/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        total.as_secs_f64(),
        configs as f64 / total.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    let counts: Vec<usize> = per.values().copied().collect();
    let mean = configs as f64 / f64::from(builders);
    let sd = (counts
        .iter()
        .map(|c| (*c as f64 - mean).powi(2))
        .sum::<f64>()
        / f64::from(builders))
    .sqrt();
    println!(
        "  spread: {}  (min {}, max {}, stddev {:.1}, ideal {mean:.0})",
        per.iter()
            .map(|(b, n)| format!("{}={n}", b.trim_start_matches("builder-")))
            .collect::<Vec<_>>()
            .join(" "),
        counts.iter().min().unwrap(),
        counts.iter().max().unwrap(),
        sd
    );
    // Removing one builder moves only its own configs.
    let fewer: Vec<String> = names.iter().skip(1).cloned().collect();
    let moved = (0..configs)
        .filter(|i| {
            let c = format!("project-{i:04}");
            leengine_build::rank(&c, &names)[0] != leengine_build::rank(&c, &fewer)[0]
        })
        .count();
    println!(
        "  builder-00 leaves: {moved} of {configs} configs change host (it had {})",
        per.get("builder-00").copied().unwrap_or(0)
    );
}

#[tokio::main]
async fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("cache") => cache_bench().await,
        Some("dispatch") => dispatch_bench().await,
        _ => {
            eprintln!("usage: bench_build cache|dispatch");
            std::process::exit(2);
        }
    }
}

//! The build farm end to end: real etcd, dockerd and registry; the core's
//! build routes in-process; `leengine-build-agent` as real processes; git
//! repositories served by a real `git daemon` on loopback (`te::GitServer`,
//! the farm's one allowed git host). Nothing is pulled: the base and compile
//! image is a local FROM-scratch busybox.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use leengine_build::validate::Policy;
use leengine_build::{BuildRun, RunStatus, Stage};
use leengine_core::access::{self, Kind};
use leengine_core::auth::{self, Caller, StaticAdminToken};
use leengine_core::builds::{router, spawn_redispatch, BuildSettings, BuildsState};
use leengine_core::registry::{RegistrySettings, TokenServer};
use leengine_core::store::Db;
use leengine_store::Keys;
use leengine_testenv as te;
use serde_json::{json, Value};
use tower::ServiceExt;

const PREFIX: &str = "/farm";

struct Farm {
    etcd: te::Etcd,
    dockerd: te::Dockerd,
    registry: te::Registry,
    git: te::GitServer,
    dir: tempfile::TempDir,
    app: Router,
    base: String,
}

struct Agent {
    child: Child,
    work: PathBuf,
    cache: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL: no lease revoke, no clean-up
        let _ = self.child.wait();
    }
}

fn sh(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Commits `files` to the repo at `dir` (created on first use); returns the commit id.
fn commit(dir: &Path, files: &[(&str, &str)]) -> String {
    if !dir.join(".git").exists() {
        std::fs::create_dir_all(dir).unwrap();
        sh(dir, &["git", "init", "-q", "-b", "main"]);
    }
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    sh(dir, &["git", "add", "-A"]);
    sh(
        dir,
        &[
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "-m",
            "c",
        ],
    );
    sh(dir, &["git", "rev-parse", "HEAD"])
}

impl Farm {
    async fn start() -> Farm {
        Self::start_with("", None).await
    }

    /// `registry_extra`: YAML appended to the registry config; `tokens`:
    /// the core's token server, which signs each task's push token.
    async fn start_with(registry_extra: &str, tokens: Option<Arc<TokenServer>>) -> Farm {
        Self::start_full(registry_extra, tokens, &[]).await
    }

    /// `git_hosts`: allowed besides the git daemon.
    async fn start_full(
        registry_extra: &str,
        tokens: Option<Arc<TokenServer>>,
        git_hosts: &[String],
    ) -> Farm {
        let etcd = te::Etcd::start_with_prefix(PREFIX);
        let dockerd = te::Dockerd::start();
        let registry = te::Registry::start_with(registry_extra);
        let git = te::GitServer::start();
        let base = "leengine-test/base:1".to_string();
        te::build_busybox_image(&dockerd, &base);
        let client = etcd.client(&te::Component::Core).await;
        // Group `team` holds every target image; root (admin) may push there.
        let db = Db::new(client.clone(), Keys::new(PREFIX));
        let root = Caller {
            user: "root".into(),
            admin: true,
        };
        access::register(
            &db,
            &root,
            Kind::Group,
            "team",
            false,
            String::new(),
            (vec![], vec![]),
        )
        .await
        .unwrap();
        let settings = BuildSettings {
            policy: Policy::new(Some(registry.addr()), &[&[git.host()], git_hosts].concat())
                .unwrap(),
            ..Default::default()
        };
        let mut state = BuildsState::new(client, Keys::new(PREFIX), settings);
        if let Some(t) = tokens {
            state = state.with_push_tokens(t);
        }
        // As the core's main does beside the server: a lost builder's tasks
        // move on only through this watcher.
        spawn_redispatch(state.clone());
        let app = router(state).layer(auth::layer(Arc::new(StaticAdminToken::new("root", "tok"))));
        Farm {
            etcd,
            dockerd,
            registry,
            git,
            dir: tempfile::tempdir().unwrap(),
            app,
            base,
        }
    }

    fn agent(&self, id: &str, capacity: u32) -> Agent {
        self.agent_with(id, capacity, &[])
    }

    fn agent_with(&self, id: &str, capacity: u32, extra: &[&str]) -> Agent {
        let work = self.dir.path().join(id).join("work");
        let cache = self.dir.path().join(id).join("cache");
        let log = std::fs::File::create(self.dir.path().join(format!("{id}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_leengine-build-agent"))
            .args([
                "--id",
                id,
                "--etcd",
                &self.etcd.endpoint(),
                "--prefix",
                PREFIX,
            ])
            .args(self.etcd.tls_args(&te::Component::build_agent(id)))
            .args([
                "--docker",
                &self.dockerd.host(),
                "--capacity",
                &capacity.to_string(),
            ])
            .args(["--ttl", "2s", "--registry", &self.registry.addr()])
            .args(["--git-host", &self.git.host()])
            .args(extra)
            .arg("--work-dir")
            .arg(&work)
            .arg("--cache-dir")
            .arg(&cache)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Agent { child, work, cache }
    }

    async fn wait_builders(&self, n: usize) {
        for _ in 0..100 {
            let (_, v) = self.call("GET", "/api/v1/builds/builders", None).await;
            if v.as_array().map(Vec::len) == Some(n) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{n} builders did not register; logs in {}",
            self.dir.path().display()
        );
    }

    async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, "Bearer tok");
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn create(&self, cfg: Value) {
        let (s, v) = self.call("POST", "/api/v1/builds/configs", Some(cfg)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    async fn trigger(&self, cfg: &str, body: Option<Value>) -> BuildRun {
        let (s, v) = self
            .call("POST", &format!("/api/v1/builds/configs/{cfg}/runs"), body)
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        serde_json::from_value(v).unwrap()
    }

    async fn run(&self, cfg: &str, run: &str) -> BuildRun {
        let (s, v) = self
            .call(
                "GET",
                &format!("/api/v1/builds/configs/{cfg}/runs/{run}"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        serde_json::from_value(v).unwrap()
    }

    async fn wait_status(
        &self,
        cfg: &str,
        run: &str,
        pred: impl Fn(&BuildRun) -> bool,
    ) -> BuildRun {
        for _ in 0..1200 {
            let r = self.run(cfg, run).await;
            if pred(&r) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = self.run(cfg, run).await;
        panic!(
            "run {cfg}/{run} stuck: {r:#?}\nagent logs in {}",
            self.dir.path().display()
        );
    }

    async fn finished(&self, cfg: &str, run: &str) -> BuildRun {
        self.wait_status(cfg, run, |r| r.status.is_terminal()).await
    }

    /// Tags of `repo` according to the registry's HTTP API.
    fn tags(&self, repo: &str) -> Vec<String> {
        let resp = self
            .registry
            .get(&format!("/v2/{repo}/tags/list"))
            .unwrap_or_default();
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or("{}");
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        v["tags"]
            .as_array()
            .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    }

    fn docker(&self, args: &[&str]) -> Vec<String> {
        let out = self.dockerd.cli(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .filter(|l| !l.is_empty())
            .collect();
        v.sort();
        v
    }

    fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.registry.addr())
    }
}

/// `{cache}/{config}/{incarnation}` directories.
fn cache_dirs(cache: &Path, config: &str) -> Vec<PathBuf> {
    std::fs::read_dir(cache.join(config))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn assert_stages(run: &BuildRun, want: &[Stage]) {
    let got: Vec<Stage> = run.stages.iter().map(|s| s.stage).collect();
    assert_eq!(got, want, "{run:#?}");
    for s in &run.stages {
        assert!(s.ended_at.is_some() && s.duration_ms.is_some(), "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn repo_with_dockerfile_becomes_an_image_tagged_with_its_commit() {
    let farm = Farm::start().await;
    let repo = farm.git.path("web.git");
    let url = farm.git.url("web.git");
    let dockerfile = format!("FROM {}\nCOPY app.txt /app.txt\n", farm.base);
    let c1 = commit(
        &repo,
        &[
            ("Dockerfile", &dockerfile),
            ("app.txt", "v1"),
            ("secret.txt", "s"),
        ],
    );
    let c2 = commit(&repo, &[("app.txt", "v2")]);
    let _a = farm.agent("b1", 2);
    farm.wait_builders(1).await;
    let images_before = farm.docker(&["images", "-a", "-q"]);
    farm.create(json!({
        "id": "web", "repo": url, "branch": "main",
        "image": farm.image("team/web"), "outputs": ["app.txt"]
    }))
    .await;

    let run = farm.trigger("web", None).await;
    let run = farm.finished("web", &run.id).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.log);
    assert_eq!(run.commit.as_deref(), Some(c2.as_str()));
    assert_eq!(run.image, Some(format!("{}:{c2}", farm.image("team/web"))));
    assert_stages(&run, &[Stage::Clone, Stage::Build, Stage::Push]);
    assert!(run.stages.iter().all(|s| s.ok == Some(true)));
    assert!(
        farm.tags("team/web").contains(&c2),
        "{:?}",
        farm.tags("team/web")
    );

    // An exact older commit with a requested tag.
    let run = farm
        .trigger("web", Some(json!({"commit": c1, "tag": "v1"})))
        .await;
    let run = farm.finished("web", &run.id).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.log);
    assert_eq!(run.commit.as_deref(), Some(c1.as_str()));
    let mut tags = farm.tags("team/web");
    tags.sort();
    let mut want = vec![c2.clone(), "v1".to_string()];
    want.sort();
    assert_eq!(tags, want);

    // Pushed images are not kept on the builder; nothing is left running.
    assert_eq!(farm.docker(&["images", "-a", "-q"]), images_before);
    assert!(farm.docker(&["ps", "-a", "-q"]).is_empty());
    assert_eq!(
        std::fs::read_dir(farm.dir.path().join("b1/work/runs"))
            .unwrap()
            .count(),
        0
    );
    let disk_log = std::fs::read_to_string(
        farm.dir
            .path()
            .join("b1/work/logs/web")
            .join(format!("{}-1.log", run.id)),
    )
    .unwrap();
    assert!(disk_log.contains("==> push"), "{disk_log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn compile_cache_is_reused_per_config_and_never_shared() {
    let farm = Farm::start().await;
    let repo = farm.git.path("svc.git");
    let url = farm.git.url("svc.git");
    // "Downloads" the dependency only when the Maven repository lacks it; the
    // sleep widens the check-then-write window so unserialised builds of one
    // config would both download.
    let script = r#"set -e
M="$LEENGINE_CACHE"
if [ -f "$M/org/dep/1.0/dep-1.0.jar" ]; then
  echo "dep-1.0.jar found in cache"
else
  echo "downloading dep-1.0.jar"
  sleep 1
  mkdir -p "$M/org/dep/1.0"
  echo "dependency bytes" > "$M/org/dep/1.0/dep-1.0.jar"
  echo "dep-1.0.jar" >> "$M/downloads.log"
fi
mkdir -p target
cat "$M/org/dep/1.0/dep-1.0.jar" > target/app.jar
"#;
    let dockerfile = format!("FROM {}\nCOPY target/app.jar /app.jar\n", farm.base);
    commit(&repo, &[("build.sh", script), ("Dockerfile", &dockerfile)]);
    let agent = farm.agent("b1", 2);
    farm.wait_builders(1).await;
    for id in ["svc-a", "svc-b"] {
        farm.create(json!({
            "id": id, "repo": url, "branch": "main",
            "image": farm.image(&format!("team/{id}")), "outputs": ["target/app.jar"],
            "compile": {"image": farm.base, "script": "build.sh"}
        }))
        .await;
    }
    // Counted over every cache directory of the config (one per incarnation).
    let downloads = |cfg: &str| {
        cache_dirs(&agent.cache, cfg)
            .iter()
            .map(|d| {
                std::fs::read_to_string(d.join("m2/downloads.log"))
                    .map(|s| s.lines().count())
                    .unwrap_or(0)
            })
            .sum::<usize>()
    };

    // Two builds of one config at once on a host with room for both.
    let r1 = farm.trigger("svc-a", Some(json!({"tag": "one"}))).await;
    let r2 = farm.trigger("svc-a", Some(json!({"tag": "two"}))).await;
    let r1 = farm.finished("svc-a", &r1.id).await;
    let r2 = farm.finished("svc-a", &r2.id).await;
    for r in [&r1, &r2] {
        assert_eq!(r.status, RunStatus::Succeeded, "{}", r.log);
        assert_stages(
            r,
            &[Stage::Clone, Stage::Compile, Stage::Build, Stage::Push],
        );
    }
    assert_eq!(downloads("svc-a"), 1, "second build found the cache");
    let logs = [r1.log.as_str(), r2.log.as_str()];
    assert_eq!(
        logs.iter()
            .filter(|l| l.contains("downloading dep-1.0.jar"))
            .count(),
        1
    );
    assert_eq!(
        logs.iter().filter(|l| l.contains("found in cache")).count(),
        1
    );

    // Another config starts cold: it cannot see svc-a's repository.
    let r3 = farm.trigger("svc-b", None).await;
    let r3 = farm.finished("svc-b", &r3.id).await;
    assert_eq!(r3.status, RunStatus::Succeeded, "{}", r3.log);
    assert!(r3.log.contains("downloading dep-1.0.jar"), "{}", r3.log);
    assert_eq!(downloads("svc-b"), 1);
    assert_eq!(downloads("svc-a"), 1);
    let mut tags = farm.tags("team/svc-a");
    tags.sort();
    assert_eq!(tags, vec!["one", "two"]);
    assert!(
        farm.docker(&["ps", "-a", "-q"]).is_empty(),
        "compile containers removed"
    );

    // svc-b deleted and created again (by anyone) is a new config: it
    // starts cold, and the old incarnation's cache is removed.
    let old = cache_dirs(&agent.cache, "svc-b");
    assert_eq!(old.len(), 1, "{old:?}");
    let (s, v) = farm
        .call("DELETE", "/api/v1/builds/configs/svc-b", None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    farm.create(json!({
        "id": "svc-b", "repo": url, "branch": "main",
        "image": farm.image("team/svc-b"), "outputs": ["target/app.jar"],
        "compile": {"image": farm.base, "script": "build.sh"}
    }))
    .await;
    let r4 = farm.trigger("svc-b", None).await;
    let r4 = farm.finished("svc-b", &r4.id).await;
    assert_eq!(r4.status, RunStatus::Succeeded, "{}", r4.log);
    assert!(r4.log.contains("downloading dep-1.0.jar"), "{}", r4.log);
    let new = cache_dirs(&agent.cache, "svc-b");
    assert_eq!(new.len(), 1, "{new:?}");
    assert_ne!(new, old);
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_name_their_stage_keep_the_log_and_leave_nothing_behind() {
    let farm = Farm::start().await;
    let repo = farm.git.path("bad.git");
    let url = farm.git.url("bad.git");
    let bad_dockerfile = format!(
        "FROM {}\nCOPY app.txt /app.txt\nRUN echo boom-build && exit 7\n",
        farm.base
    );
    commit(
        &repo,
        &[
            ("compile.sh", "echo boom-compile >&2\nexit 3\n"),
            ("ok.sh", "echo fine\n"),
            ("Dockerfile", &bad_dockerfile),
            ("app.txt", "x"),
        ],
    );
    let agent = farm.agent("b1", 3);
    farm.wait_builders(1).await;
    let images_before = farm.docker(&["images", "-a", "-q"]);
    let cfg = |id: &str, script: &str, outputs: Value| {
        json!({
            "id": id, "repo": url, "branch": "main",
            "image": farm.image(&format!("team/{id}")), "outputs": outputs,
            "compile": {"image": farm.base, "script": script}
        })
    };
    farm.create(cfg("bad-compile", "compile.sh", json!(["app.txt"])))
        .await;
    farm.create(cfg("bad-docker", "ok.sh", json!(["app.txt"])))
        .await;
    farm.create(cfg("bad-output", "ok.sh", json!(["target/app.jar"])))
        .await;
    let runs = [
        farm.trigger("bad-compile", None).await,
        farm.trigger("bad-docker", None).await,
        farm.trigger("bad-output", None).await,
    ];

    let r = farm.finished("bad-compile", &runs[0].id).await;
    assert_eq!(
        (r.status, r.failed_stage),
        (RunStatus::Failed, Some(Stage::Compile))
    );
    assert!(
        r.error.as_deref().unwrap().contains("status 3"),
        "{:?}",
        r.error
    );
    assert!(r.log.contains("boom-compile"), "{}", r.log);
    assert_eq!(r.stages.last().unwrap().ok, Some(false));

    let r = farm.finished("bad-docker", &runs[1].id).await;
    assert_eq!(
        (r.status, r.failed_stage),
        (RunStatus::Failed, Some(Stage::Build)),
        "{}",
        r.log
    );
    assert!(r.log.contains("boom-build"), "{}", r.log);

    let r = farm.finished("bad-output", &runs[2].id).await;
    assert_eq!(
        (r.status, r.failed_stage),
        (RunStatus::Failed, Some(Stage::Build))
    );
    assert!(
        r.error.as_deref().unwrap().contains("target/app.jar"),
        "{:?}",
        r.error
    );

    for id in ["bad-compile", "bad-docker", "bad-output"] {
        assert!(farm.tags(&format!("team/{id}")).is_empty());
    }
    assert!(
        farm.docker(&["ps", "-a", "-q"]).is_empty(),
        "no containers left"
    );
    assert_eq!(
        farm.docker(&["images", "-a", "-q"]),
        images_before,
        "no layers left"
    );
    assert_eq!(
        std::fs::read_dir(agent.work.join("runs")).unwrap().count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_agent_mid_build_redispatches_the_task() {
    let farm = Farm::start().await;
    let repo = farm.git.path("slow.git");
    let url = farm.git.url("slow.git");
    let dockerfile = format!("FROM {}\nCOPY target/app.jar /app.jar\n", farm.base);
    let head = commit(
        &repo,
        &[
            (
                "build.sh",
                "echo compiling\nsleep 4\nmkdir -p target\necho jar > target/app.jar\n",
            ),
            ("Dockerfile", &dockerfile),
        ],
    );
    let mut agents = std::collections::HashMap::from([
        ("b1".to_string(), farm.agent("b1", 1)),
        ("b2".to_string(), farm.agent("b2", 1)),
    ]);
    farm.wait_builders(2).await;
    farm.create(json!({
        "id": "slow", "repo": url, "branch": "main",
        "image": farm.image("team/slow"), "outputs": ["target/app.jar"],
        "compile": {"image": farm.base, "script": "build.sh"}
    }))
    .await;
    let run = farm.trigger("slow", None).await;
    let first = run.builder.clone();
    // The script's first line shows up while it still runs: the log tail is
    // flushed during a stage, not only at its end.
    farm.wait_status("slow", &run.id, |r| {
        r.status == RunStatus::Compiling && r.log.lines().any(|l| l == "compiling")
    })
    .await;
    agents.get_mut(&first).unwrap().kill9();

    let done = farm.finished("slow", &run.id).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{}", done.log);
    assert_ne!(done.builder, first);
    assert_eq!(done.attempt, 2);
    assert_eq!(done.redispatches.len(), 1);
    assert_eq!(done.redispatches[0].from, first);
    assert_eq!(
        done.redispatches[0].to.as_deref(),
        Some(done.builder.as_str())
    );
    assert!(done.log.contains("re-dispatched"), "{}", done.log);
    assert!(farm.tags("team/slow").contains(&head));
    let (_, builders) = farm.call("GET", "/api/v1/builds/builders", None).await;
    assert_eq!(builders.as_array().unwrap().len(), 1, "{builders}");
}

/// Smart HTTP git (`git http-backend` as CGI) for the bare repositories
/// under `root`, refusing requests without `Authorization: {auth}`.
async fn git_http(root: PathBuf, auth: String) -> u16 {
    use axum::response::IntoResponse;
    let handler = move |method: axum::http::Method,
                        uri: axum::http::Uri,
                        headers: axum::http::HeaderMap,
                        body: axum::body::Bytes| {
        let (root, auth) = (root.clone(), auth.clone());
        async move {
            let presented = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if presented != Some(auth.as_str()) {
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Basic realm=\"git\"")],
                )
                    .into_response();
            }
            let h = |n: &str| {
                headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let mut child = tokio::process::Command::new("git")
                .arg("http-backend")
                .env("GIT_PROJECT_ROOT", &root)
                .env("GIT_HTTP_EXPORT_ALL", "1")
                .env("REMOTE_USER", "reader")
                .env("PATH_INFO", uri.path())
                .env("QUERY_STRING", uri.query().unwrap_or(""))
                .env("REQUEST_METHOD", method.as_str())
                .env("CONTENT_TYPE", h("content-type"))
                .env("HTTP_CONTENT_ENCODING", h("content-encoding"))
                .env("GIT_PROTOCOL", h("git-protocol"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut stdin, &body)
                .await
                .unwrap();
            drop(stdin);
            let out = child.wait_with_output().await.unwrap();
            let split = out
                .stdout
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .unwrap();
            let head = String::from_utf8_lossy(&out.stdout[..split]).to_string();
            let mut resp = axum::response::Response::builder();
            for line in head.lines() {
                let (k, v) = line.split_once(": ").unwrap();
                if k.eq_ignore_ascii_case("status") {
                    resp = resp.status(v[..3].parse::<u16>().unwrap());
                } else {
                    resp = resp.header(k, v);
                }
            }
            resp.body(Body::from(out.stdout[split + 4..].to_vec()))
                .unwrap()
                .into_response()
        }
    };
    let app = Router::new().fallback(handler);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(std::future::IntoFuture::into_future(axum::serve(l, app)));
    port
}

/// A private repository behind HTTP basic auth: the build host has no
/// credentials for it; a config names a credential file on the build host
/// (the secret never enters etcd or the API), usable only by configs whose
/// image is in one of the file's groups.
#[tokio::test(flavor = "multi_thread")]
async fn private_repositories_clone_with_the_config_credential() {
    use base64::Engine as _;
    const PASSWORD: &str = "reader-pw-5b1c";
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("reader:{PASSWORD}"))
    );
    let served = tempfile::tempdir().unwrap();
    let port = git_http(served.path().to_path_buf(), auth.clone()).await;
    let http_host = format!("http://127.0.0.1:{port}");
    let farm = Farm::start_full("", None, std::slice::from_ref(&http_host)).await;
    let src = farm.dir.path().join("private-src");
    let dockerfile = format!("FROM {}\nCOPY app.txt /app.txt\n", farm.base);
    let head = commit(&src, &[("Dockerfile", &dockerfile), ("app.txt", "x")]);
    sh(
        served.path(),
        &[
            "git",
            "clone",
            "-q",
            "--bare",
            src.to_str().unwrap(),
            "private.git",
        ],
    );
    let creds = farm.dir.path().join("git-credentials");
    std::fs::create_dir_all(&creds).unwrap();
    let file = |groups: &str| {
        format!(r#"{{"groups": {groups}, "username": "reader", "password": "{PASSWORD}"}}"#)
    };
    std::fs::write(creds.join("team-reader.json"), file(r#"["team"]"#)).unwrap();
    std::fs::write(creds.join("payments-reader.json"), file(r#"["payments"]"#)).unwrap();
    let _a = farm.agent_with(
        "b1",
        1,
        &[
            "--git-host",
            &http_host,
            "--git-credentials-dir",
            creds.to_str().unwrap(),
        ],
    );
    farm.wait_builders(1).await;
    let url = format!("{http_host}/private.git");
    let cfg = |id: &str, credential: Option<&str>| {
        let mut c = json!({
            "id": id, "repo": url, "branch": "main",
            "image": farm.image(&format!("team/{id}")), "outputs": ["app.txt"]
        });
        if let Some(n) = credential {
            c["repoCredential"] = json!(n);
        }
        c
    };
    farm.create(cfg("with-cred", Some("team-reader"))).await;
    farm.create(cfg("no-cred", None)).await;
    farm.create(cfg("foreign-cred", Some("payments-reader")))
        .await;

    let run = farm.trigger("with-cred", None).await;
    let run = farm.finished("with-cred", &run.id).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.log);
    assert_eq!(run.commit.as_deref(), Some(head.as_str()));
    let b64 = auth.trim_start_matches("Basic ");
    assert!(
        !run.log.contains(PASSWORD) && !run.log.contains(b64),
        "the credential never reaches the log: {}",
        run.log
    );

    // Without a credential the host has none: the server refuses the clone.
    let run = farm.trigger("no-cred", None).await;
    let run = farm.finished("no-cred", &run.id).await;
    assert_eq!(
        (run.status, run.failed_stage),
        (RunStatus::Failed, Some(Stage::Clone)),
        "{}",
        run.log
    );
    // A credential for another group's images is not handed out.
    let run = farm.trigger("foreign-cred", None).await;
    let run = farm.finished("foreign-cred", &run.id).await;
    assert_eq!(
        (run.status, run.failed_stage),
        (RunStatus::Failed, Some(Stage::Clone))
    );
    let err = run.error.unwrap();
    assert!(
        err.contains("payments-reader") && err.contains("group team"),
        "{err}"
    );

    // The API shows the credential's name only.
    let (s, v) = farm
        .call("GET", "/api/v1/builds/configs/with-cred", None)
        .await;
    assert_eq!(
        (s, &v["repoCredential"]),
        (StatusCode::OK, &json!("team-reader"))
    );
    assert!(!v.to_string().contains(PASSWORD));
}

/// A P-256 key and self-signed certificate, as the operator makes them for
/// the core's token signer and the registry's rootcertbundle.
fn token_keypair(dir: &Path) -> (String, PathBuf) {
    let (key, cert) = (dir.join("token.key"), dir.join("token.crt"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args([
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=leengine-core",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (std::fs::read_to_string(&key).unwrap(), cert)
}

/// Status of a blob upload start on `repo` with `token` (or anonymously).
fn upload_status(registry: &str, repo: &str, token: Option<&str>) -> u16 {
    let mut c = Command::new("curl");
    c.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"]);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = c
        .arg(format!("http://{registry}/v2/{repo}/blobs/uploads/"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

const SERVICE: &str = "leengine-registry";
const ISSUER: &str = "leengine-core";

/// The registry takes only tokens the core signed. The task carries a token
/// for exactly the config's image — no password — and the agent pushes with
/// it; the same token cannot push to another repository.
#[tokio::test(flavor = "multi_thread")]
async fn push_uses_a_token_scoped_to_the_config_image() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = token_keypair(dir.path());
    // Nothing listens at the realm: a push with the task's token needs no
    // token request.
    let extra = format!(
        "auth:\n  token:\n    realm: http://127.0.0.1:9/v2/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
        cert.display()
    );
    let tokens = Arc::new(
        TokenServer::new(&RegistrySettings {
            service: SERVICE.into(),
            issuer: ISSUER.into(),
            key_pem: key,
            cert_pem: None,
            ttl: Duration::from_secs(300),
            notify_secret: None,
        })
        .unwrap(),
    );
    let farm = Farm::start_with(&extra, Some(tokens.clone())).await;
    let reg = farm.registry.addr();
    let repo = farm.git.path("auth.git");
    let url = farm.git.url("auth.git");
    let dockerfile = format!("FROM {}\nCOPY app.txt /app.txt\n", farm.base);
    let head = commit(&repo, &[("Dockerfile", &dockerfile), ("app.txt", "x")]);

    // First the task lands on a builder that runs nothing, to be read.
    let mut etcd = farm.etcd.client(&te::Component::Core).await;
    let keys = Keys::new(PREFIX);
    let idle =
        json!({"id": "idle", "capacity": 1, "running": 0, "startedAt": "2026-01-01T00:00:00Z"});
    etcd.put(keys.builder("idle"), idle.to_string(), None)
        .await
        .unwrap();
    farm.create(json!({
        "id": "private", "repo": url, "branch": "main",
        "image": farm.image("team/private"), "outputs": ["app.txt"]
    }))
    .await;
    let run = farm.trigger("private", None).await;
    assert_eq!(run.builder, "idle");
    let got = etcd
        .get(keys.builder_task("idle", &run.id), None)
        .await
        .unwrap();
    let raw = String::from_utf8_lossy(got.kvs()[0].value()).to_string();
    assert!(!raw.contains("password"), "no password in the task: {raw}");
    let task: leengine_build::BuildTask = serde_json::from_str(&raw).unwrap();
    let token = task.push_auth.expect("a push token").token;
    assert_eq!(upload_status(&reg, "team/private", None), 401, "anonymous");
    assert_eq!(
        upload_status(&reg, "team/other", Some(&token)),
        401,
        "another repository"
    );
    assert_eq!(
        upload_status(&reg, "other/private", Some(&token)),
        401,
        "another group"
    );
    assert_eq!(
        upload_status(&reg, "team/private", Some(&token)),
        202,
        "its own"
    );

    // The idle builder leaves; the task moves to a real agent, which pushes
    // with that same token.
    let _a = farm.agent("b1", 1);
    farm.wait_builders(2).await;
    etcd.delete(keys.builder("idle"), None).await.unwrap();
    let run = farm.finished("private", &run.id).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.log);
    assert_eq!(run.builder, "b1");
    let pull = tokens.issue_at(
        "test",
        vec![leengine_core::registry::scope::Access {
            kind: "repository".into(),
            name: "team/private".into(),
            actions: vec!["pull".into()],
        }],
        chrono::Utc::now(),
    );
    let tags = Command::new("curl")
        .args([
            "-sf",
            "-H",
            &format!("Authorization: Bearer {}", pull.token),
        ])
        .arg(format!("http://{reg}/v2/team/private/tags/list"))
        .output()
        .unwrap();
    let tags: Value = serde_json::from_slice(&tags.stdout).unwrap();
    assert_eq!(tags["tags"], json!([head]));
    let sig = token.rsplit('.').next().unwrap();
    assert!(!run.log.contains(sig), "the token never reaches the log");
}

/// etcd is shared: a task that did not come from the core's checks (a
/// branch that is a git option, a local repository, another registry) is
/// refused by the agent itself, the run failed with the reason, and
/// nothing of it reaches git or Docker.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_refuses_tasks_that_fail_the_policy() {
    let farm = Farm::start().await;
    let repo = farm.git.path("web.git");
    let dockerfile = format!("FROM {}\nCOPY app.txt /app.txt\n", farm.base);
    commit(&repo, &[("Dockerfile", &dockerfile), ("app.txt", "x")]);
    let _a = farm.agent("b1", 2);
    farm.wait_builders(1).await;
    let mut etcd = farm.etcd.client(&te::Component::Core).await;
    let keys = Keys::new(PREFIX);
    let pwned = farm.dir.path().join("pwned");
    let good = leengine_build::BuildSpec {
        repo: farm.git.url("web.git"),
        repo_credential: None,
        branch: "main".into(),
        dockerfile: "Dockerfile".into(),
        compile: None,
        outputs: vec!["app.txt".into()],
        image: farm.image("team/web"),
    };
    let cases = [
        (
            "branch",
            leengine_build::BuildSpec {
                branch: format!("--upload-pack=touch {}", pwned.display()),
                ..good.clone()
            },
        ),
        (
            "repo",
            leengine_build::BuildSpec {
                repo: repo.to_str().unwrap().to_string(),
                ..good.clone()
            },
        ),
        (
            "repo",
            leengine_build::BuildSpec {
                repo: format!("file://{}", repo.display()),
                ..good.clone()
            },
        ),
        (
            "outputs",
            leengine_build::BuildSpec {
                outputs: vec!["../../../etc/passwd".into()],
                ..good.clone()
            },
        ),
        (
            "image",
            leengine_build::BuildSpec {
                image: "evil.example:5000/team/web".into(),
                ..good.clone()
            },
        ),
    ];
    for (i, (field, spec)) in cases.into_iter().enumerate() {
        let id = format!("evil-{i}");
        let run = BuildRun::queued(
            id.clone(),
            "web".into(),
            "b1".into(),
            leengine_build::Trigger::Manual {
                user: "mallory".into(),
            },
            None,
            None,
        );
        let task = leengine_build::BuildTask {
            run: id.clone(),
            config: "web".into(),
            config_incarnation: 1,
            spec,
            commit: None,
            tag: None,
            push_auth: None,
            attempt: 1,
        };
        etcd.put(
            keys.build_run("web", &id),
            serde_json::to_vec(&run).unwrap(),
            None,
        )
        .await
        .unwrap();
        etcd.put(
            keys.builder_task("b1", &id),
            serde_json::to_vec(&task).unwrap(),
            None,
        )
        .await
        .unwrap();
        let mut done = None;
        for _ in 0..200 {
            let got = etcd.get(keys.build_run("web", &id), None).await.unwrap();
            let r: BuildRun = serde_json::from_slice(got.kvs()[0].value()).unwrap();
            if r.status.is_terminal() {
                done = Some(r);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = done.unwrap_or_else(|| panic!("{field}: run {id} not failed"));
        assert_eq!(
            (r.status, r.failed_stage),
            (RunStatus::Failed, Some(Stage::Dispatch)),
            "{field}: {r:#?}"
        );
        let err = r.error.unwrap();
        assert!(
            err.contains("refused by build host b1") && err.contains(field),
            "{field}: {err}"
        );
        assert!(
            !r.log.contains("==> clone"),
            "{field}: nothing ran: {}",
            r.log
        );
        let left = etcd.get(keys.builder_task("b1", &id), None).await.unwrap();
        assert_eq!(
            left.count(),
            0,
            "{field}: the task is removed with the verdict"
        );
    }
    assert!(!pwned.exists(), "the branch never became a git option");
    assert!(farm.docker(&["ps", "-a", "-q"]).is_empty());
}

/// Compile containers run user code. With the default network (`none`)
/// neither etcd nor the core is reachable from inside one; the same probe
/// from a container on the host network does reach etcd (so the probe can
/// tell), and the agent refuses to start with `--compile-network host`.
/// The container also gets the configured CPU, memory and pids limits.
#[tokio::test(flavor = "multi_thread")]
async fn compile_containers_cannot_reach_etcd_or_core_and_are_limited() {
    let farm = Farm::start().await;
    // A real core API on every address of the host.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let core_port = listener.local_addr().unwrap().port();
    tokio::spawn(std::future::IntoFuture::into_future(axum::serve(
        listener,
        farm.app.clone(),
    )));
    let etcd_port = farm.etcd.endpoint().rsplit(':').next().unwrap().to_string();
    let host_ip = sh(Path::new("/"), &["hostname", "-I"])
        .split_whitespace()
        .find(|a| a.contains('.'))
        .unwrap_or("127.0.0.1")
        .to_string();
    let targets = [
        format!("127.0.0.1:{etcd_port}"),
        format!("{host_ip}:{etcd_port}"),
        format!("127.0.0.1:{core_port}"),
        format!("{host_ip}:{core_port}"),
    ];
    // Reached = a TCP connection opened (etcd speaks TLS, the core HTTP);
    // nc fails on refused or unreachable. (busybox's static wget crashes
    // resolving even an IP; nc does not resolve.)
    let probe = format!(
        r#"for t in {}; do
  if nc -w 3 "${{t%:*}}" "${{t#*:}}" </dev/null 2>/tmp/err >/dev/null; then
    echo "REACHED $t"
  else
    echo "unreachable $t: $(tail -n 1 /tmp/err)"
  fi
done
"#,
        targets.join(" ")
    );
    let control = farm
        .dockerd
        .cli(&[
            "run",
            "--rm",
            "--network",
            "host",
            &farm.base,
            "sh",
            "-c",
            &probe,
        ])
        .output()
        .unwrap();
    let control = String::from_utf8_lossy(&control.stdout).to_string();
    assert!(
        control.contains(&format!("REACHED 127.0.0.1:{etcd_port}"))
            && control.contains(&format!("REACHED 127.0.0.1:{core_port}")),
        "the probe sees etcd and core from the host network: {control}"
    );

    let refused = Command::new(env!("CARGO_BIN_EXE_leengine-build-agent"))
        .args([
            "--id",
            "h",
            "--etcd",
            &farm.etcd.endpoint(),
            "--registry",
            "r:5000",
        ])
        .args(["--git-host", "https://g", "--compile-network", "host"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "clap refuses the value");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("etcd and the core are reachable"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let repo = farm.git.path("net.git");
    // Waits for the test to have inspected the running container.
    let script = format!(
        "{probe}echo probed\nwhile [ ! -f /workspace/.go ]; do sleep 0.1; done\nmkdir -p target\necho jar > target/app.jar\n"
    );
    let dockerfile = format!("FROM {}\nCOPY target/app.jar /app.jar\n", farm.base);
    commit(&repo, &[("build.sh", &script), ("Dockerfile", &dockerfile)]);
    let agent = farm.agent_with(
        "b1",
        1,
        &["--cpus", "1.5", "--memory", "256m", "--pids-limit", "300"],
    );
    farm.wait_builders(1).await;
    farm.create(json!({
        "id": "net", "repo": farm.git.url("net.git"), "branch": "main",
        "image": farm.image("team/net"), "outputs": ["target/app.jar"],
        "compile": {"image": farm.base, "script": "build.sh"}
    }))
    .await;
    let run = farm.trigger("net", None).await;
    farm.wait_status("net", &run.id, |r| r.log.lines().any(|l| l == "probed"))
        .await;
    let limits = farm.docker(&[
        "inspect",
        "-f",
        "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.HostConfig.PidsLimit}} {{.HostConfig.NetworkMode}}",
        &format!("leengine-build-{}-1", run.id),
    ]);
    std::fs::write(
        agent
            .work
            .join("runs")
            .join(format!("{}-1/src/.go", run.id)),
        "",
    )
    .unwrap();
    assert_eq!(
        limits,
        vec![format!("1500000000 {m} {m} 300 none", m = 256 << 20)]
    );
    let run = farm.finished("net", &run.id).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.log);
    for t in &targets {
        assert!(
            run.log.contains(&format!("unreachable {t}")),
            "{t}: {}",
            run.log
        );
    }
    assert!(!run.log.contains("REACHED"), "{}", run.log);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_builder_queues_what_exceeds_its_capacity() {
    let farm = Farm::start().await;
    let repo = farm.git.path("q.git");
    let url = farm.git.url("q.git");
    let dockerfile = format!("FROM {}\nCOPY app.txt /app.txt\n", farm.base);
    commit(
        &repo,
        &[
            ("build.sh", "echo working\nsleep 3\n"),
            ("Dockerfile", &dockerfile),
            ("app.txt", "x"),
        ],
    );
    let _a = farm.agent("b1", 1);
    farm.wait_builders(1).await;
    for id in ["q-one", "q-two"] {
        farm.create(json!({
            "id": id, "repo": url, "branch": "main",
            "image": farm.image(&format!("team/{id}")), "outputs": ["app.txt"],
            "compile": {"image": farm.base, "script": "build.sh"}
        }))
        .await;
    }
    let one = farm.trigger("q-one", None).await;
    let two = farm.trigger("q-two", None).await;
    // Whichever started first compiles while the other waits for the slot.
    let (first, second) = loop {
        let (a, b) = (
            farm.run("q-one", &one.id).await,
            farm.run("q-two", &two.id).await,
        );
        if a.status == RunStatus::Compiling {
            break (a, b);
        }
        if b.status == RunStatus::Compiling {
            break (b, a);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(second.status, RunStatus::Queued, "capacity 1: {second:#?}");
    let (_, builders) = farm.call("GET", "/api/v1/builds/builders", None).await;
    assert_eq!(builders[0]["running"], 1, "{builders}");
    let first = farm.finished(&first.config, &first.id).await;
    let second = farm.finished(&second.config, &second.id).await;
    assert_eq!(
        (first.status, second.status),
        (RunStatus::Succeeded, RunStatus::Succeeded)
    );
    assert!(second.stages[0].started_at >= first.stages.last().unwrap().started_at);
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_rides_out_an_etcd_restart() {
    let mut farm = Farm::start().await;
    let repo = farm.git.path("r.git");
    let url = farm.git.url("r.git");
    let dockerfile = format!("FROM {}\nCOPY app.txt /app.txt\n", farm.base);
    let head = commit(&repo, &[("Dockerfile", &dockerfile), ("app.txt", "x")]);
    let _a = farm.agent("b1", 1);
    farm.wait_builders(1).await;
    farm.create(json!({
        "id": "resilient", "repo": url, "branch": "main",
        "image": farm.image("team/resilient"), "outputs": ["app.txt"]
    }))
    .await;

    // Longer than the 2 s TTL: the lease and the task watch must both recover.
    farm.etcd.stop();
    tokio::time::sleep(Duration::from_secs(4)).await;
    farm.etcd.restart();

    farm.wait_builders(1).await;
    let mut run = None;
    for _ in 0..100 {
        let (s, v) = farm
            .call("POST", "/api/v1/builds/configs/resilient/runs", None)
            .await;
        if s == StatusCode::ACCEPTED {
            run = Some(serde_json::from_value::<BuildRun>(v).unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let run = run.expect("core could not dispatch after the restart");
    let run = farm.finished("resilient", &run.id).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.log);
    assert!(farm.tags("team/resilient").contains(&head));
}

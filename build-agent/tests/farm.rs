//! The build farm end to end: real etcd, dockerd and registry; the core's
//! build routes in-process; `leengine-build-agent` as real processes; git
//! repositories in temp dirs cloned by path. Nothing is pulled: the base and
//! compile image is a local FROM-scratch busybox.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use leengine_build::{BuildRun, RegistryAuth, RunStatus, Stage};
use leengine_core::auth::{self, StaticAdminToken};
use leengine_core::builds::{router, BuildsState};
use leengine_store::Keys;
use leengine_testenv as te;
use serde_json::{json, Value};
use tower::ServiceExt;

const PREFIX: &str = "/farm";

struct Farm {
    etcd: te::Etcd,
    dockerd: te::Dockerd,
    registry: te::Registry,
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

    /// `registry_extra`: YAML appended to the registry config; `auth`: the
    /// push credentials core hands to agents.
    async fn start_with(registry_extra: &str, auth: Option<RegistryAuth>) -> Farm {
        let etcd = te::Etcd::start_with_prefix(PREFIX);
        let dockerd = te::Dockerd::start();
        let registry = te::Registry::start_with(registry_extra);
        let base = "leengine-test/base:1".to_string();
        te::build_busybox_image(&dockerd, &base);
        let client = etcd.client(&te::Component::Core).await;
        let mut state = BuildsState::new(client, Keys::new(PREFIX));
        if let Some(a) = auth {
            state = state.with_registry_auth(a);
        }
        let app = router(state).layer(auth::layer(Arc::new(StaticAdminToken::new("root", "tok"))));
        Farm {
            etcd,
            dockerd,
            registry,
            dir: tempfile::tempdir().unwrap(),
            app,
            base,
        }
    }

    fn agent(&self, id: &str, capacity: u32) -> Agent {
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
            .args(["--ttl", "2s", "--compile-network", "none"])
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
    let repo = farm.dir.path().join("web.git");
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
        "id": "web", "repo": repo.to_str().unwrap(), "branch": "main",
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
    let repo = farm.dir.path().join("svc.git");
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
            "id": id, "repo": repo.to_str().unwrap(), "branch": "main",
            "image": farm.image(&format!("team/{id}")), "outputs": ["target/app.jar"],
            "compile": {"image": farm.base, "script": "build.sh"}
        }))
        .await;
    }
    let downloads = |cfg: &str| {
        std::fs::read_to_string(agent.cache.join(cfg).join("m2/downloads.log"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
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
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_name_their_stage_keep_the_log_and_leave_nothing_behind() {
    let farm = Farm::start().await;
    let repo = farm.dir.path().join("bad.git");
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
            "id": id, "repo": repo.to_str().unwrap(), "branch": "main",
            "image": farm.image(id), "outputs": outputs,
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
        assert!(farm.tags(id).is_empty());
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
    let repo = farm.dir.path().join("slow.git");
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
        "id": "slow", "repo": repo.to_str().unwrap(), "branch": "main",
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

/// A bcrypt hash (cost 12) of `push-s3cret`, made with Python's crypt module:
/// the registry's htpasswd file wants bcrypt.
const PUSHER_HTPASSWD: &str = "pusher:$2b$12$Sb.ozy0CWvHXwasVIMaY9uiFOnAUPOVvDJUfIBTW9KQiW1wTZcoPy";

#[tokio::test(flavor = "multi_thread")]
async fn push_uses_the_credentials_in_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("{PUSHER_HTPASSWD}\n")).unwrap();
    let extra = format!(
        "auth:\n  htpasswd:\n    realm: leengine-test\n    path: {}\n",
        htpasswd.display()
    );
    // Right credentials for the first config, wrong ones for the second:
    // both come from core through the task, nothing is configured on the host.
    let auth = |password: &str| RegistryAuth {
        username: Some("pusher".into()),
        password: Some(password.into()),
        ..Default::default()
    };
    let farm = Farm::start_with(&extra, Some(auth("push-s3cret"))).await;
    let repo = farm.dir.path().join("auth.git");
    let dockerfile = format!("FROM {}\nCOPY app.txt /app.txt\n", farm.base);
    let head = commit(&repo, &[("Dockerfile", &dockerfile), ("app.txt", "x")]);
    let _a = farm.agent("b1", 1);
    farm.wait_builders(1).await;
    farm.create(json!({
        "id": "private", "repo": repo.to_str().unwrap(), "branch": "main",
        "image": farm.image("team/private"), "outputs": ["app.txt"]
    }))
    .await;
    let run = farm.trigger("private", None).await;
    let run = farm.finished("private", &run.id).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{}", run.log);
    let tags = Command::new("curl")
        .args(["-sf", "-u", "pusher:push-s3cret"])
        .arg(format!(
            "http://{}/v2/team/private/tags/list",
            farm.registry.addr()
        ))
        .output()
        .unwrap();
    let tags: Value = serde_json::from_slice(&tags.stdout).unwrap();
    assert_eq!(tags["tags"], json!([head]));
    assert!(
        !run.log.contains("push-s3cret"),
        "credentials never reach the log"
    );

    let client = farm.etcd.client(&te::Component::Core).await;
    let wrong = BuildsState::new(client, Keys::new(PREFIX)).with_registry_auth(auth("nope"));
    let wrong_app =
        router(wrong).layer(auth::layer(Arc::new(StaticAdminToken::new("root", "tok"))));
    let req = Request::builder()
        .method("POST")
        .uri("/api/v1/builds/configs/private/runs")
        .header(header::AUTHORIZATION, "Bearer tok")
        .body(Body::empty())
        .unwrap();
    let resp = wrong_app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let run: BuildRun = serde_json::from_slice(&bytes).unwrap();
    let run = farm.finished("private", &run.id).await;
    assert_eq!(
        (run.status, run.failed_stage),
        (RunStatus::Failed, Some(Stage::Push)),
        "{}",
        run.log
    );
    assert!(
        run.error.as_deref().unwrap().contains("docker push"),
        "{:?}",
        run.error
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_builder_queues_what_exceeds_its_capacity() {
    let farm = Farm::start().await;
    let repo = farm.dir.path().join("q.git");
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
            "id": id, "repo": repo.to_str().unwrap(), "branch": "main",
            "image": farm.image(id), "outputs": ["app.txt"],
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
    let repo = farm.dir.path().join("r.git");
    let dockerfile = format!("FROM {}\nCOPY app.txt /app.txt\n", farm.base);
    let head = commit(&repo, &[("Dockerfile", &dockerfile), ("app.txt", "x")]);
    let _a = farm.agent("b1", 1);
    farm.wait_builders(1).await;
    farm.create(json!({
        "id": "resilient", "repo": repo.to_str().unwrap(), "branch": "main",
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

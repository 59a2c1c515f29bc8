//! The main job end to end (issue 16): a developer pushes; a GitLab push
//! webhook reaches the core; a build host clones the repository, compiles
//! the real Maven project `examples/hello-shop` in the JDK + Maven image with
//! the config's own cache (dependencies downloaded from Maven Central through
//! the site's mirror the first time, none the second), builds the image onto
//! the JRE base and pushes it to the registry with the core's token; the core
//! deploys it to two real Cells; discovery puts the Ready pods behind nginx;
//! a second version replaces the first under load. Everything real: etcd,
//! dockerd, registry, git daemon, Kubernetes, containerd, the CNI plugin,
//! OVS, nginx and every LeEngine binary. `hack/demo.sh` runs this test with
//! `--nocapture`: the lines it prints are the demo's narration.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use common::{
    registry_settings, registry_token, sibling, token_keypair, Auth, Env, ISSUER, SERVICE,
};
use leengine_build::placement;
use leengine_build::validate::Policy;
use leengine_build::{BuildRun, RunStatus, Stage};
use leengine_core::builds::BuildSettings;
use leengine_core::cells::CellSettings;
use leengine_core::deploy::{reconcile, DeploySettings};
use leengine_core::server::Settings;
use leengine_testenv as te;
use serde_json::{json, Value};

/// Hang guard for waits; not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(600);
const GROUP: &str = "public";
const DOMAIN: &str = "shop.demo";
const APP: &str = "shop";
const IMAGE: &str = "shop/hello-shop";

/// The demo's narration: a heading per step...
fn say(what: &str) {
    println!("\n== {what}");
}

/// ...and the evidence under it.
fn show(what: &str) {
    println!("   {what}");
}

/// Evidence that also goes into the one-screen summary at the end.
fn note(summary: &mut Vec<String>, what: String) {
    show(&what);
    summary.push(what);
}

/// A child process killed (and reaped) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Proc {
    let f = std::fs::File::create(log).unwrap();
    Proc(
        cmd.stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")),
    )
}

/// Blocks the async test thread for a synchronous wait.
fn sync<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The build side of a Region: core (in process, on a TCP port: GitLab and
/// the registry call it), the registry with the core's token auth, the git
/// server, a dockerd for the build hosts with the Java images loaded, the
/// Maven mirror on the compile network, and `builders` build agents.
struct Platform {
    env: Env,
    core_port: u16,
    registry: te::Registry,
    git: te::GitServer,
    mirror: te::MavenMirror,
    builders: Vec<Builder>,
    dockerd: te::Dockerd,
    dir: tempfile::TempDir,
    creds: PathBuf,
    admin: Auth,
    olga: Auth,
    olga_token: String,
}

struct Builder {
    id: String,
    work: PathBuf,
    _proc: Proc,
}

impl Platform {
    async fn start(builders: usize) -> Platform {
        let dir = tempfile::Builder::new()
            .prefix("e2e-")
            .tempdir_in(te::run_dir())
            .unwrap();
        let creds = dir.path().join("cells");
        std::fs::create_dir(&creds).unwrap();
        let (key, cert, cert_path) = token_keypair(dir.path());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let core_port = listener.local_addr().unwrap().port();
        let registry = te::Registry::start_with(&format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{core_port}/v2/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            cert_path.display()
        ));
        let git = te::GitServer::start();
        let env = Env::start(Settings {
            registry: Some(registry_settings(key, cert)),
            builds: BuildSettings {
                policy: Policy::new(Some(registry.addr()), &[git.host()]).unwrap(),
                ..Default::default()
            },
            cells: CellSettings {
                credentials_dir: creds.clone(),
                min_app_cells: 2,
            },
            deploy: DeploySettings {
                resync: Duration::from_secs(2),
                drain_timeout: Duration::from_secs(20),
                ..DeploySettings::default()
            },
            ..Default::default()
        })
        .await;
        tokio::spawn(std::future::IntoFuture::into_future(axum::serve(
            listener,
            env.app.clone(),
        )));
        tokio::spawn(reconcile::run(env.core.clone()));

        let dockerd = sync(te::Dockerd::start);
        let net = te::unique_name("compile");
        let gateway = dockerd.create_network(&net);
        let mirror = sync(|| te::MavenMirror::start(&gateway));
        sync(|| te::load_java_images(&dockerd, &mirror.url()));
        let admin = env.user("root", true).await;
        let olga_token = developer(&env, &admin, "olga").await;
        let mut p = Platform {
            env,
            core_port,
            registry,
            git,
            mirror,
            builders: Vec::new(),
            dockerd,
            dir,
            creds,
            admin,
            olga: Auth::Bearer(olga_token.clone()),
            olga_token,
        };
        for i in 1..=builders {
            let b = p.builder(&format!("build-{i:02}"), &net);
            p.builders.push(b);
        }
        p.wait_builders(builders).await;
        p
    }

    fn builder(&self, id: &str, net: &str) -> Builder {
        let work = self.dir.path().join(id).join("work");
        let cache = self.dir.path().join(id).join("cache");
        let etcd = &self.env.etcd;
        let proc = spawn(
            Command::new(sibling("leengine-build-agent"))
                .args(["--id", id, "--etcd", &etcd.endpoint()])
                .args(["--prefix", etcd.keys().prefix()])
                .args(etcd.tls_args(&te::Component::build_agent(id)))
                .args(["--docker", &self.dockerd.host()])
                .args(["--registry", &self.registry.addr()])
                .args(["--git-host", &self.git.host()])
                .args(["--compile-network", net, "--ttl", "3s"])
                .arg("--work-dir")
                .arg(&work)
                .arg("--cache-dir")
                .arg(&cache),
            &self.dir.path().join(format!("{id}.log")),
        );
        Builder {
            id: id.into(),
            work,
            _proc: proc,
        }
    }

    async fn wait_builders(&self, n: usize) {
        for _ in 0..300 {
            let (_, v) = self
                .call(&self.admin, Method::GET, "/api/v1/builds/builders", None)
                .await;
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

    async fn call(
        &self,
        who: &Auth,
        m: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.env.call(who, m, path, body).await
    }

    /// Creates group `shop`, image `shop/hello-shop` and build config `id`
    /// for repository `repo` as olga; returns the webhook (path, secret).
    async fn build_config(&self, id: &str, repo: &str, compile: bool) -> (String, String) {
        for (path, body) in [
            ("/api/v1/groups", json!({"name": "shop"})),
            ("/api/v1/images", json!({"name": format!("shop/{id}")})),
        ] {
            let (st, v) = self.call(&self.olga, Method::POST, path, Some(body)).await;
            assert!(
                st == StatusCode::CREATED || v["code"] == "group_exists",
                "{path}: {st} {v}"
            );
        }
        let mut cfg = json!({
            "id": id, "repo": self.git.url(repo), "branch": "main",
            "image": format!("{}/shop/{id}", self.registry.addr()),
            "outputs": ["target/hello-shop.jar"],
        });
        if compile {
            cfg["compile"] =
                json!({"image": te::COMPILE_IMAGE, "script": "compile.sh", "cacheMount": "/m2"});
        }
        let (st, v) = self
            .call(
                &self.olga,
                Method::POST,
                "/api/v1/builds/configs",
                Some(cfg),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        (
            v["webhookPath"].as_str().unwrap().to_string(),
            v["webhookToken"].as_str().unwrap().to_string(),
        )
    }

    /// Copies `src` into repository `repo` and commits: the developer's push.
    fn commit(&self, repo: &str, src: &Path, message: &str) -> String {
        self.git.commit_dir(repo, src, message)
    }

    /// GitLab's push hook for `repo` moving `main` from `before` to `after`.
    fn hook(
        &self,
        path: &str,
        secret: &str,
        repo: &str,
        before: &str,
        after: &str,
    ) -> (u16, Value) {
        let url = self.git.url(repo);
        let body = json!({
            "object_kind": "push", "event_name": "push",
            "before": before, "after": after, "ref": "refs/heads/main",
            "checkout_sha": after, "user_id": 7, "user_name": "Olga",
            "user_username": "olga", "user_email": "olga@shop.demo", "project_id": 12,
            "project": {"id": 12, "name": repo, "path_with_namespace": format!("shop/{repo}"),
                "default_branch": "main", "web_url": url, "git_http_url": url, "git_ssh_url": url},
            "commits": [{"id": after, "message": "change", "author": {"name": "Olga", "email": "olga@shop.demo"}}],
            "total_commits_count": 1,
            "repository": {"name": repo, "url": url, "homepage": url, "git_http_url": url, "git_ssh_url": url},
        });
        let mut child = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "-X", "POST"])
            .args([
                "-H",
                "Content-Type: application/json",
                "-H",
                "X-Gitlab-Event: Push Hook",
            ])
            .args(["-H", &format!("X-Gitlab-Token: {secret}")])
            .args(["--data-binary", "@-"])
            .arg(format!("http://127.0.0.1:{}{path}", self.core_port))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text
            .trim_end()
            .rsplit_once('\n')
            .unwrap_or(("", text.trim()));
        (
            code.parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    }

    async fn runs(&self, config: &str) -> Vec<Value> {
        let (st, v) = self
            .call(
                &self.olga,
                Method::GET,
                &format!("/api/v1/builds/configs/{config}/runs"),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        v.as_array().cloned().unwrap_or_default()
    }

    /// Waits for the run to finish, printing each stage as it ends.
    async fn finished(&self, config: &str, run: &str) -> BuildRun {
        let path = format!("/api/v1/builds/configs/{config}/runs/{run}");
        let start = Instant::now();
        let mut reported = 0;
        let mut last_tick = Instant::now();
        while start.elapsed() < PATIENCE {
            let (st, v) = self.call(&self.olga, Method::GET, &path, None).await;
            assert_eq!(st, StatusCode::OK, "{v}");
            let r: BuildRun = serde_json::from_value(v).unwrap();
            for s in r
                .stages
                .iter()
                .filter(|s| s.ended_at.is_some())
                .skip(reported)
            {
                show(&format!(
                    "{:<8} {:>6} ms  {}",
                    format!("{:?}", s.stage).to_lowercase(),
                    s.duration_ms.unwrap_or(0),
                    if s.ok == Some(true) { "ok" } else { "FAILED" }
                ));
                reported += 1;
            }
            if r.status.is_terminal() {
                return r;
            }
            if last_tick.elapsed() > Duration::from_secs(15) {
                show(&format!(
                    "... {:?} ({} s)",
                    r.status,
                    start.elapsed().as_secs()
                ));
                last_tick = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "run {config}/{run} did not finish; logs in {}",
            self.dir.path().display()
        );
    }

    /// The build host's full log of a run (the record keeps only its tail).
    fn full_log(&self, run: &BuildRun) -> String {
        let b = self
            .builders
            .iter()
            .find(|b| b.id == run.builder)
            .expect("the run's builder is one of ours");
        let p = b
            .work
            .join("logs")
            .join(&run.config)
            .join(format!("{}-{}.log", run.id, run.attempt));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// The tags of `repo` in the registry, asked with olga's pull token.
    fn tags(&self, repo: &str) -> Vec<String> {
        let token = registry_token(
            self.core_port,
            &format!("repository:{repo}:pull"),
            "olga",
            &self.olga_token,
        );
        let out = Command::new("curl")
            .args(["-s", "-H", &format!("Authorization: Bearer {token}")])
            .arg(format!(
                "http://{}/v2/{repo}/tags/list",
                self.registry.addr()
            ))
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The admin (the installer's bootstrap user) creates developer `name`
/// through the API; the developer logs in. Returns the login token.
async fn developer(env: &Env, admin: &Auth, name: &str) -> String {
    let password = format!("{name}-demo-password");
    let (st, v) = env
        .call(
            admin,
            Method::POST,
            "/api/v1/users",
            Some(json!({"name": name, "password": password})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, v) = env
        .call(
            &Auth::Anonymous,
            Method::POST,
            "/api/v1/login",
            Some(json!({"user": name, "password": password})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    show(&format!(
        "admin root created user {name} (POST /api/v1/users); {name} logged in (token {}, expires {})",
        v["id"].as_str().unwrap_or(""),
        v["expires"].as_str().unwrap_or("never")
    ));
    v["token"].as_str().unwrap().to_string()
}

/// Maven's own count: one `Downloaded from` line per file fetched.
fn maven_downloads(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("Downloaded from"))
        .count()
}

fn stage_ms(run: &BuildRun, stage: Stage) -> u64 {
    run.stages
        .iter()
        .find(|s| s.stage == stage)
        .and_then(|s| s.duration_ms)
        .unwrap_or(0)
}

fn stages(run: &BuildRun) -> Vec<Stage> {
    run.stages.iter().map(|s| s.stage).collect()
}

/// The example project, with `edit` applied to copies of its files, in a
/// new directory (the developer's working tree).
fn example_with(dir: &Path, name: &str, edit: &[(&str, &str, &str)]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello-shop");
    let tree = dir.join(name);
    let _ = std::fs::remove_dir_all(&tree);
    let out = Command::new("cp")
        .arg("-rT")
        .arg(&src)
        .arg(&tree)
        .output()
        .unwrap();
    assert!(out.status.success());
    let _ = std::fs::remove_dir_all(tree.join("target"));
    for (file, from, to) in edit {
        let p = tree.join(file);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "{file} has {from:?}");
        std::fs::write(&p, text.replace(from, to)).unwrap();
    }
    tree
}

const VERSION_FILE: &str = "src/main/java/demo/shop/Version.java";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn build_failures_stop_at_their_stage_and_push_nothing() {
    let p = Platform::start(1).await;

    say("A webhook with a wrong secret is refused and triggers nothing");
    let (path, secret) = p.build_config("broken", "broken.git", true).await;
    let bad = example_with(
        p.dir.path(),
        "broken",
        &[(
            "src/main/java/demo/shop/Main.java",
            "public static void main",
            "public static void main(String[] args) { syntax error here }\n    static void old",
        )],
    );
    let c = p.commit("broken.git", &bad, "break the build");
    let (st, v) = p.hook(
        &path,
        &format!("{secret}x"),
        "broken.git",
        &"0".repeat(40),
        &c,
    );
    assert_eq!(
        (st, v["code"].as_str()),
        (401, Some("webhook_token_invalid")),
        "{v}"
    );
    let (st, _) = p.hook(&path, "", "broken.git", &"0".repeat(40), &c);
    assert_eq!(st, 401);
    assert!(
        p.runs("broken").await.is_empty(),
        "a refused hook dispatches nothing"
    );
    show("wrong X-Gitlab-Token: 401 webhook_token_invalid, no run");

    say("A compile error fails the run at `compile`, with Maven's output in the log");
    let (st, v) = p.hook(&path, &secret, "broken.git", &"0".repeat(40), &c);
    assert_eq!(st, 202, "{v}");
    let run = p.finished("broken", v["run"]["id"].as_str().unwrap()).await;
    assert_eq!(run.status, RunStatus::Failed, "{}", run.log);
    assert_eq!(run.failed_stage, Some(Stage::Compile), "{run:#?}");
    assert_eq!(stages(&run), [Stage::Clone, Stage::Compile]);
    assert!(run.log.contains("COMPILATION ERROR"), "{}", run.log);
    assert!(run.log.contains("Main.java"), "{}", run.log);
    assert!(p.tags("shop/broken").is_empty(), "nothing pushed");
    show(&format!(
        "failed at compile: {}",
        run.error.as_deref().unwrap_or("")
    ));

    say("A Dockerfile error fails the run at `build`");
    let (path, secret) = p.build_config("badfile", "badfile.git", false).await;
    let tree = example_with(
        p.dir.path(),
        "badfile",
        &[("Dockerfile", "COPY target", "COPPY target")],
    );
    std::fs::create_dir_all(tree.join("target")).unwrap();
    std::fs::write(tree.join("target/hello-shop.jar"), "not built here").unwrap();
    // The jar is committed here (no compile stage): un-ignore target/.
    std::fs::write(tree.join(".gitignore"), "").unwrap();
    let c = p.commit("badfile.git", &tree, "typo in the Dockerfile");
    let (st, v) = p.hook(&path, &secret, "badfile.git", &"0".repeat(40), &c);
    assert_eq!(st, 202, "{v}");
    let run = p
        .finished("badfile", v["run"]["id"].as_str().unwrap())
        .await;
    assert_eq!(run.status, RunStatus::Failed, "{}", run.log);
    assert_eq!(run.failed_stage, Some(Stage::Build), "{run:#?}");
    assert_eq!(stages(&run), [Stage::Clone, Stage::Build]);
    let said = format!("{} {}", run.log, run.error.clone().unwrap_or_default());
    assert!(said.to_lowercase().contains("coppy"), "{said}");
    assert!(p.tags("shop/badfile").is_empty(), "nothing pushed");
    show(&format!(
        "failed at build: {}",
        run.error.as_deref().unwrap_or("")
    ));
}

/// The nginx hosts of group [`GROUP`], each on its own loopback address
/// (`--listen-address`), as two machines would each bind their own IP.
const NGINX: [(&str, [u8; 4]); 2] = [("nginx-1", [127, 0, 0, 2]), ("nginx-2", [127, 0, 0, 3])];

/// One answer of the app through the nginx at `addr`: (status, version, pod).
fn shop_get(addr: IpAddr, port: u16) -> Option<(u16, String, String)> {
    let mut s = TcpStream::connect((addr, port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET / HTTP/1.0\r\nHost: {DOMAIN}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    Some((
        status,
        v["version"].as_str().unwrap_or("").to_string(),
        v["pod"].as_str().unwrap_or("").to_string(),
    ))
}

/// The pod IPs an nginx host holds for [`DOMAIN`] (nginx's own admin view).
fn peer_ips(n: &te::NginxAgent) -> BTreeSet<String> {
    n.live_peers(DOMAIN)
        .iter()
        .map(|a| a.ip().to_string())
        .collect()
}

/// Waits until every nginx host holds exactly `ips` for [`DOMAIN`].
fn wait_upstreams(nginx: &[te::NginxAgent], ips: &BTreeSet<String>) {
    for n in nginx {
        let mut last = BTreeSet::new();
        let ok = te::wait_until(PATIENCE, || {
            last = peer_ips(n);
            &last == ips
        });
        assert!(ok, "{}: upstream {last:?}, want {ips:?}", n.host);
    }
}

fn kjson(cell: &te::Cell, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_slice(&cell.kubectl(&a).stdout).unwrap_or(Value::Null)
}

/// Live pods of `version` in the app's namespace.
fn pods(cell: &te::Cell, ns: &str, version: u64) -> Vec<Value> {
    let sel = format!("leengine.io/version={version}");
    kjson(cell, &["-n", ns, "get", "pods", "-l", &sel])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn ready(p: &Value) -> bool {
    p["metadata"]["deletionTimestamp"].is_null() && te::pod_ready(p)
}

/// Waits for `n` Ready pods of `version` with addresses of the Cell's pool
/// (and no others, terminating ones included); returns (name, IP, node)
/// of each.
fn wait_ready(cell: &te::Cell, ns: &str, version: u64, n: usize) -> Vec<(String, String, String)> {
    let net = cell.pools()[0].cidr.rsplit_once('.').unwrap().0.to_string() + ".";
    let mut seen = Vec::new();
    let ok = te::wait_until(PATIENCE, || {
        seen = pods(cell, ns, version);
        seen.len() == n
            && seen.iter().all(|p| {
                ready(p)
                    && p["status"]["podIP"]
                        .as_str()
                        .is_some_and(|ip| ip.starts_with(&net))
            })
    });
    assert!(
        ok,
        "{}: v{version} wants {n} Ready pods in {net}0/24: {seen:#?}",
        cell.name
    );
    seen.iter()
        .map(|p| {
            let s = |v: &Value| v.as_str().unwrap_or("").to_string();
            (
                s(&p["metadata"]["name"]),
                s(&p["status"]["podIP"]),
                s(&p["spec"]["nodeName"]),
            )
        })
        .collect()
}

/// What one nginx host answered under [`Load`].
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// Requests in a loop until stopped, each client going to the nginx hosts
/// in turn: counts answers and failures (no answer, or not 200) per host,
/// and keeps the versions of the last answers.
struct Load {
    stop: Arc<AtomicBool>,
    tallies: Arc<Vec<Tally>>,
    last: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// (answered, failed) per nginx host, and the versions of the last 200 answers.
struct Counted {
    per_host: Vec<(u64, u64)>,
    last: Vec<String>,
}

impl Counted {
    fn failed(&self) -> u64 {
        self.per_host.iter().map(|c| c.1).sum()
    }

    fn describe(&self) -> String {
        let hosts: Vec<String> = NGINX
            .iter()
            .zip(&self.per_host)
            .map(|((name, _), (ok, failed))| format!("{name} {ok} answered/{failed} failed"))
            .collect();
        hosts.join(", ")
    }
}

impl Load {
    fn start(addrs: &[IpAddr], port: u16, clients: usize) -> Load {
        let l = Load {
            stop: Arc::new(AtomicBool::new(false)),
            tallies: Arc::new(addrs.iter().map(|_| Tally::default()).collect()),
            last: Arc::new(Mutex::new(Vec::new())),
            threads: Vec::new(),
        };
        let threads = (0..clients)
            .map(|c| {
                let (stop, tallies, last) = (l.stop.clone(), l.tallies.clone(), l.last.clone());
                let addrs = addrs.to_vec();
                std::thread::spawn(move || {
                    let mut i = c;
                    while !stop.load(Ordering::Relaxed) {
                        let h = i % addrs.len();
                        i += 1;
                        match shop_get(addrs[h], port) {
                            Some((200, version, _)) => {
                                tallies[h].ok.fetch_add(1, Ordering::Relaxed);
                                let mut l = last.lock().unwrap();
                                l.push(version);
                                let n = l.len();
                                if n > 200 {
                                    l.drain(..n - 200);
                                }
                            }
                            _ => {
                                tallies[h].failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        Load { threads, ..l }
    }

    fn stop(self) -> Counted {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let last = self.last.lock().unwrap().clone();
        Counted {
            per_host: self
                .tallies
                .iter()
                .map(|t| {
                    (
                        t.ok.load(Ordering::Relaxed),
                        t.failed.load(Ordering::Relaxed),
                    )
                })
                .collect(),
            last,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn git_push_to_traffic_through_nginx_with_a_grey_upgrade() {
    let t_all = Instant::now();
    let mut summary = Vec::new();
    say("Starting the Region: core, registry (core's token auth), git server, 2 build hosts, Maven mirror");
    let cells = std::thread::spawn(|| {
        std::thread::scope(|s| {
            let a = s.spawn(|| common::start_cell_with_pool(100));
            let b = s.spawn(|| common::start_cell_with_pool(101));
            (a.join().unwrap(), b.join().unwrap())
        })
    });
    let p = Platform::start(2).await;
    show(&format!("harness run dir {}", te::run_dir().display()));
    show(&format!(
        "core on 127.0.0.1:{}, registry {}, git {}",
        p.core_port,
        p.registry.addr(),
        p.git.host()
    ));
    show(&format!(
        "Maven mirror {} (Maven Central behind it)",
        p.mirror.url()
    ));

    say("The developer (olga) creates image group `shop` and a build config for hello-shop");
    let (hook, secret) = p.build_config("hello-shop", "hello-shop.git", true).await;
    show(&format!(
        "webhook {hook} (GitLab: Settings > Webhooks, secret token shown once)"
    ));

    say("git push: commit 1 of the real Maven project (examples/hello-shop)");
    let zero = "0".repeat(40);
    let tree1 = example_with(p.dir.path(), "v1", &[]);
    let c1 = p.commit("hello-shop.git", &tree1, "hello-shop v1");
    let (st, v) = p.hook(
        &hook,
        &format!("{secret}-wrong"),
        "hello-shop.git",
        &zero,
        &c1,
    );
    assert_eq!(st, 401, "{v}");
    assert!(p.runs("hello-shop").await.is_empty());
    show("a hook with the wrong secret: 401, nothing dispatched");
    let downloads0 = p.mirror.downloads();
    let t_push1 = Instant::now();
    let (st, v) = p.hook(&hook, &secret, "hello-shop.git", &zero, &c1);
    assert_eq!((st, v["triggered"].as_bool()), (202, Some(true)), "{v}");
    let builder1 = v["run"]["builder"].as_str().unwrap().to_string();
    let ids: Vec<&str> = p.builders.iter().map(|b| b.id.as_str()).collect();
    let ranking = placement::rank("hello-shop", &ids);
    assert_eq!(
        ranking[0], builder1,
        "the core placed the run on the top-ranked host"
    );
    show(&format!(
        "GitLab push hook for {}: 202, run {} on {builder1}",
        &c1[..12],
        v["run"]["id"]
    ));
    note(
        &mut summary,
        format!("placement: rendezvous hash of config `hello-shop` over {} build hosts ranks {ranking:?}: {builder1}", ids.len()),
    );
    let run1 = p
        .finished("hello-shop", v["run"]["id"].as_str().unwrap())
        .await;
    let push_to_image1 = t_push1.elapsed();
    assert_eq!(run1.status, RunStatus::Succeeded, "{}", run1.log);
    assert_eq!(
        stages(&run1),
        [Stage::Clone, Stage::Compile, Stage::Build, Stage::Push]
    );
    assert!(
        run1.stages.iter().all(|s| s.ok == Some(true)),
        "{:#?}",
        run1.stages
    );
    assert_eq!(run1.commit.as_deref(), Some(c1.as_str()));
    let image = format!("{}/{IMAGE}", p.registry.addr());
    assert_eq!(
        run1.image.as_deref(),
        Some(format!("{image}:{c1}").as_str())
    );
    let cold_mirror = p.mirror.downloads() - downloads0;
    let cold_maven = maven_downloads(&p.full_log(&run1));
    assert!(
        cold_mirror > 0 && cold_maven > 0,
        "a cold cache downloads: mirror {cold_mirror}, Maven {cold_maven}"
    );
    assert!(p.full_log(&run1).contains("BUILD SUCCESS"));
    assert!(p.tags(IMAGE).contains(&c1), "{:?}", p.tags(IMAGE));
    note(&mut summary, format!("image {image}:{} in the registry; cold cache: Maven downloaded {cold_maven} files ({cold_mirror} through the mirror)", &c1[..12]));

    say("git push: commit 2 (version string v2); same build host, warm cache");
    let tree2 = example_with(p.dir.path(), "v2", &[(VERSION_FILE, "\"v1\"", "\"v2\"")]);
    let c2 = p.commit("hello-shop.git", &tree2, "hello-shop v2");
    let downloads1 = p.mirror.downloads();
    let t_push2 = Instant::now();
    let (st, v) = p.hook(&hook, &secret, "hello-shop.git", &c1, &c2);
    assert_eq!(st, 202, "{v}");
    let run2 = p
        .finished("hello-shop", v["run"]["id"].as_str().unwrap())
        .await;
    let push_to_image2 = t_push2.elapsed();
    assert_eq!(run2.status, RunStatus::Succeeded, "{}", run2.log);
    assert_eq!(
        run2.builder, builder1,
        "the same config lands on the same (warm) host"
    );
    let warm_mirror = p.mirror.downloads() - downloads1;
    let warm_maven = maven_downloads(&p.full_log(&run2));
    assert_eq!(
        (warm_mirror, warm_maven),
        (0, 0),
        "a warm cache downloads nothing"
    );
    assert!(p.tags(IMAGE).contains(&c2));
    note(
        &mut summary,
        format!("{:<8} {:>9} {:>9}", "stage", "cold ms", "warm ms"),
    );
    for s in [Stage::Clone, Stage::Compile, Stage::Build, Stage::Push] {
        note(
            &mut summary,
            format!(
                "{:<8} {:>9} {:>9}",
                format!("{s:?}").to_lowercase(),
                stage_ms(&run1, s),
                stage_ms(&run2, s)
            ),
        );
    }
    note(
        &mut summary,
        format!(
            "{:<8} {:>9} {:>9}  (Maven downloads)",
            "files", cold_maven, warm_maven
        ),
    );
    show(&format!(
        "push -> image in registry: cold {:.1} s, warm {:.1} s",
        push_to_image1.as_secs_f64(),
        push_to_image2.as_secs_f64()
    ));

    say(
        "Two Cells join the Region (1 node each), nginx group `public` of 2 nginx hosts, discovery",
    );
    let (ca, cb) = sync(|| cells.join().unwrap());
    for (name, cell) in [("cella", &ca), ("cellb", &cb)] {
        cell.trust_registry(&p.registry.addr());
        std::fs::copy(
            cell.kubeconfig(),
            p.creds.join(format!("{name}.kubeconfig")),
        )
        .unwrap();
        let (st, v) = p
            .call(
                &p.admin,
                Method::POST,
                "/api/v1/admin/cells",
                Some(json!({
                "name": name, "kubeconfig": format!("{name}.kubeconfig"),
                "etcd": [cell.etcd_endpoint()], "nginx_groups": [GROUP]})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        show(&format!(
            "{name}: apiserver {}, pool {} VLAN {}",
            cell.api_url(),
            cell.pools()[0].cidr,
            cell.pools()[0].vlan
        ));
    }
    let http_port = te::free_port();
    let (st, v) = p
        .call(
            &p.admin,
            Method::POST,
            &format!("/api/v1/slb/groups/{GROUP}/domains"),
            Some(json!({"domain": DOMAIN, "config": {"listen": [{"port": http_port}]}})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let etcd = &p.env.etcd;
    let nginx: Vec<te::NginxAgent> = NGINX
        .iter()
        .map(|(name, addr)| {
            let agent = sibling("leengine-nginx-agent");
            sync(|| te::NginxAgent::start_on(&agent, etcd, GROUP, name, Some((*addr).into())))
        })
        .collect();
    let addrs: Vec<IpAddr> = nginx.iter().map(|n| n.address).collect();
    let discovery = te::Discovery::start(
        &sibling("leengine-discovery"),
        etcd,
        &p.creds,
        "disc-1",
        &["--prefix", etcd.keys().prefix()],
    );
    for n in &nginx {
        show(&format!(
            "{} (leengine-nginx-agent --listen-address {}) serves {DOMAIN} on {}:{http_port}",
            n.host, n.address, n.address
        ));
    }

    say("olga creates app `shop` (domain shop.demo, nginx group public) and deploys v1: 2 replicas per Cell");
    let (st, app) = p
        .call(
            &p.olga,
            Method::POST,
            "/api/v1/apps",
            Some(json!({
            "name": APP, "image": image, "lb": {"domain": DOMAIN, "group": GROUP}})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{app}");
    let ns = app["desired"]["namespace"].as_str().unwrap().to_string();
    let (st, v) = p
        .call(
            &p.olga,
            Method::POST,
            &format!("/api/v1/apps/{APP}/versions"),
            Some(json!({
            "tag": "never-built", "replicas": 2})),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("image_tag_not_found")),
        "{v}"
    );
    for cell in [&ca, &cb] {
        let made = kjson(cell, &["-n", &ns, "get", "deployments,pods"]);
        assert_eq!(
            made["items"],
            json!([]),
            "{}: nothing made for a missing tag",
            cell.name
        );
    }
    show("a deploy of tag `never-built`: 400 image_tag_not_found (the core asked the registry); no Deployment, no pod");
    let (st, v) = p
        .call(
            &p.olga,
            Method::POST,
            &format!("/api/v1/apps/{APP}/versions"),
            Some(json!({
            "tag": c1, "replicas": 2, "health": {"path": "/healthz", "period_seconds": 2}})),
        )
        .await;
    assert_eq!(
        (st, v["version"].as_u64()),
        (StatusCode::CREATED, Some(1)),
        "{v}"
    );
    let mut v1_pods = Vec::new();
    let mut v1_ips = BTreeSet::new();
    for (name, cell) in [("cella", &ca), ("cellb", &cb)] {
        for (pod, ip, node) in sync(|| wait_ready(cell, &ns, 1, 2)) {
            note(
                &mut summary,
                format!(
                    "{name} {node}: {pod} Ready at {ip} (VLAN {})",
                    cell.pools()[0].vlan
                ),
            );
            v1_pods.push(pod);
            v1_ips.insert(ip);
        }
    }

    say(&format!(
        "curl -H 'Host: {DOMAIN}' through each nginx: the pods answer"
    ));
    sync(|| wait_upstreams(&nginx, &v1_ips));
    for n in &nginx {
        let mut answered = BTreeSet::new();
        let mut samples = Vec::new();
        let all = sync(|| {
            te::wait_until(PATIENCE, || {
                if let Some((200, version, pod)) = shop_get(n.address, http_port) {
                    assert_eq!(version, "v1");
                    assert!(v1_pods.contains(&pod), "{pod} is not a v1 pod");
                    if answered.insert(pod.clone()) {
                        samples.push(pod);
                    }
                }
                answered.len() == v1_pods.len()
            })
        });
        assert!(
            all,
            "{}: every pod answers: {answered:?} of {v1_pods:?}",
            n.host
        );
        for pod in &samples {
            show(&format!(
                "curl -H 'Host: {DOMAIN}' http://{}:{http_port}/ -> {} served, {pod} answered v1",
                n.address, n.host
            ));
        }
        note(
            &mut summary,
            format!(
                "{} ({}:{http_port}) answered from all 4 pods; its upstream {:?}",
                n.host,
                n.address,
                peer_ips(n)
            ),
        );
    }

    say("Deploy v2 (commit 2's image, other fields from the template), then delete v1 with drain while load runs through both nginx");
    let (_, mut tpl) = p
        .call(
            &p.olga,
            Method::GET,
            &format!("/api/v1/apps/{APP}/versions/template"),
            None,
        )
        .await;
    tpl["tag"] = json!(c2);
    let t_deploy2 = Instant::now();
    let (st, v) = p
        .call(
            &p.olga,
            Method::POST,
            &format!("/api/v1/apps/{APP}/versions"),
            Some(tpl),
        )
        .await;
    assert_eq!(
        (st, v["version"].as_u64()),
        (StatusCode::CREATED, Some(2)),
        "{v}"
    );
    let first_v2 = sync(|| {
        te::wait_until(PATIENCE, || {
            shop_get(addrs[0], http_port).is_some_and(|(s, v, _)| s == 200 && v == "v2")
        })
    });
    assert!(first_v2, "v2 answers through nginx");
    let deploy_to_v2 = t_deploy2.elapsed();
    let mut v2_ips = BTreeSet::new();
    for cell in [&ca, &cb] {
        v2_ips.extend(
            sync(|| wait_ready(cell, &ns, 2, 2))
                .into_iter()
                .map(|p| p.1),
        );
    }
    note(
        &mut summary,
        format!(
            "push -> image {:.1} s (warm build) + deploy -> first v2 answer {:.1} s = {:.1} s",
            push_to_image2.as_secs_f64(),
            deploy_to_v2.as_secs_f64(),
            (push_to_image2 + deploy_to_v2).as_secs_f64()
        ),
    );
    let load = Load::start(&addrs, http_port, 4);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (st, _) = p
        .call(
            &p.olga,
            Method::DELETE,
            &format!("/api/v1/apps/{APP}/versions/1"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    for cell in [&ca, &cb] {
        let gone = sync(|| te::wait_until(PATIENCE, || pods(cell, &ns, 1).is_empty()));
        assert!(gone, "{}: v1 pods gone", cell.name);
    }
    sync(|| wait_upstreams(&nginx, &v2_ips));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let upgrade = load.stop();
    assert!(
        upgrade.per_host.iter().all(|c| c.0 > 0),
        "every nginx host answered: {}",
        upgrade.describe()
    );
    assert_eq!(
        upgrade.failed(),
        0,
        "a drained upgrade fails no request: {}",
        upgrade.describe()
    );
    assert!(
        upgrade.last.iter().rev().take(50).all(|v| v == "v2"),
        "only v2 answers at the end: {:?}",
        upgrade.last
    );
    let (_, evs) = p
        .call(
            &p.olga,
            Method::GET,
            &format!("/api/v1/apps/{APP}/events?limit=500"),
            None,
        )
        .await;
    let events = evs["events"].as_array().cloned().unwrap_or_default();
    assert!(
        !events.iter().any(|e| e["reason"] == "DrainTimeout"),
        "discovery acknowledged every drain (both nginx hosts applied it) before the pods went: {evs}"
    );
    note(&mut summary, format!("grey upgrade v1 -> v2 under load: {}; drains acknowledged by discovery after both nginx hosts applied them (no DrainTimeout)", upgrade.describe()));

    say("olga scales v2 to 3 pods per Cell and back to 2, under load through both nginx");
    let load = Load::start(&addrs, http_port, 4);
    let mut scaled_ips = BTreeSet::new();
    for (replicas, verb) in [(3usize, "up"), (2, "down")] {
        let (st, v) = p
            .call(
                &p.olga,
                Method::POST,
                &format!("/api/v1/apps/{APP}/versions/2/scale"),
                Some(json!({"replicas": replicas})),
            )
            .await;
        assert_eq!(
            (st, v["replicas"].as_u64()),
            (StatusCode::OK, Some(replicas as u64)),
            "{v}"
        );
        let mut ips = BTreeSet::new();
        for cell in [&ca, &cb] {
            ips.extend(
                sync(|| wait_ready(cell, &ns, 2, replicas))
                    .into_iter()
                    .map(|p| p.1),
            );
        }
        sync(|| wait_upstreams(&nginx, &ips));
        let line = format!(
            "scaled {verb} to {replicas} per Cell: {} pods Ready, {} upstream of both nginx hosts: {ips:?}",
            ips.len(),
            if verb == "up" { "the new ones in the" } else { "only they in the" },
        );
        note(&mut summary, line);
        scaled_ips = ips;
    }
    let scaling = load.stop();
    assert_eq!(
        scaling.failed(),
        0,
        "scaling (down drains first) fails no request: {}",
        scaling.describe()
    );
    note(
        &mut summary,
        format!("during the scaling: {}", scaling.describe()),
    );

    say("What the platform shows through core's API: containers, events, activity");
    let (_, containers) = p
        .call(
            &p.olga,
            Method::GET,
            &format!("/api/v1/apps/{APP}/containers"),
            None,
        )
        .await;
    let list = containers.as_array().cloned().unwrap_or_default();
    let listed: BTreeSet<String> = list
        .iter()
        .filter_map(|c| c["ip"].as_str().map(String::from))
        .collect();
    assert_eq!(
        (list.len(), &listed),
        (4, &scaled_ips),
        "the containers are the pods left after the scaling: {containers}"
    );
    show(&format!(
        "{:<40} {:<6} {:<24} {:<15} {:<3} ready",
        "pod", "cell", "node", "ip", "ver"
    ));
    for c in &list {
        assert_eq!(
            (c["version"].as_u64(), c["ready"].as_bool()),
            (Some(2), Some(true)),
            "{c}"
        );
        let s = |k: &str| c[k].as_str().unwrap_or("-").to_string();
        show(&format!(
            "{:<40} {:<6} {:<24} {:<15} v{:<2} {}",
            s("pod"),
            s("cell"),
            s("node"),
            s("ip"),
            c["version"],
            c["ready"]
        ));
    }
    let (st, evs) = p
        .call(
            &p.olga,
            Method::GET,
            &format!("/api/v1/apps/{APP}/events?limit=500"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{evs}");
    let events = evs["events"].as_array().cloned().unwrap_or_default();
    for cell in ["cella", "cellb"] {
        let mut reasons = std::collections::BTreeMap::<String, usize>::new();
        for e in events.iter().filter(|e| e["cell"] == cell) {
            *reasons
                .entry(e["reason"].as_str().unwrap_or("-").to_string())
                .or_default() += 1;
        }
        assert!(
            reasons.contains_key("Started"),
            "{cell}: the kubelet's events reach the app's feed: {reasons:?}"
        );
        note(&mut summary, format!("events {cell}: {reasons:?}"));
    }
    for e in events.iter().take(5) {
        show(&format!(
            "{} {} {} {}: {}",
            e["cell"].as_str().unwrap_or(""),
            e["type"].as_str().unwrap_or(""),
            e["reason"].as_str().unwrap_or(""),
            e["object"].as_str().unwrap_or(""),
            e["message"].as_str().unwrap_or("")
        ));
    }
    let (st, feed) = p
        .call(
            &p.olga,
            Method::GET,
            &format!("/api/v1/apps/{APP}/activity"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{feed}");
    let mut feed = feed.as_array().cloned().unwrap_or_default();
    feed.reverse();
    for e in &feed {
        show(&format!(
            "activity {} {} {} {}",
            e["at"].as_str().unwrap_or(""),
            e["actor"].as_str().unwrap_or(""),
            e["action"].as_str().unwrap_or(""),
            e["detail"]
        ));
    }
    let changes: Vec<&str> = feed
        .iter()
        .filter_map(|e| e["action"].as_str())
        .filter(|a| ["deployed", "version_deleted", "scaled"].contains(a))
        .collect();
    assert_eq!(
        changes,
        [
            "deployed",
            "deployed",
            "version_deleted",
            "scaled",
            "scaled"
        ],
        "{feed:?}"
    );
    note(
        &mut summary,
        format!("activity of {APP} (oldest first): {changes:?}"),
    );

    say("Teardown: the app is deleted; nothing of it is left in either Cell, every IP back in its pool");
    let (st, _) = p
        .call(
            &p.olga,
            Method::DELETE,
            &format!("/api/v1/apps/{APP}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    for cell in [&ca, &cb] {
        let gone = sync(|| {
            te::wait_until(PATIENCE, || {
                !cell.kubectl(&["get", "namespace", &ns]).status.success()
            })
        });
        assert!(gone, "{}: namespace {ns} removed", cell.name);
        let freed = sync(|| {
            te::wait_until(PATIENCE, || {
                let out = Command::new(sibling("cnictl"))
                    .args([
                        "--etcd",
                        &cell.etcd_endpoint(),
                        "--output",
                        "json",
                        "ip",
                        "list",
                    ])
                    .output()
                    .unwrap();
                out.status.success()
                    && serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| v == json!([]))
            })
        });
        assert!(freed, "{}: pod IPs released", cell.name);
    }
    // The domain lost its last binding: discovery takes its servers out,
    // so no address handed to another pod later gets shop.demo's requests.
    for n in &nginx {
        let emptied = te::wait_until(PATIENCE, || peer_ips(n).is_empty());
        assert!(
            emptied,
            "{} still holds {:?} for {DOMAIN}\ndiscovery:\n{}\nagent:\n{}",
            n.host,
            peer_ips(n),
            discovery.log(),
            n.log()
        );
    }
    show("both nginx hosts hold no server for shop.demo any more");
    let (st, _) = p
        .call(&p.olga, Method::GET, &format!("/api/v1/apps/{APP}"), None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "the app and its feed are gone");
    let (_, stats) = p
        .call(&p.admin, Method::GET, "/api/v1/admin/stats", None)
        .await;
    let today = stats["days"]
        .as_array()
        .and_then(|d| d.last())
        .cloned()
        .unwrap_or(Value::Null);
    let count = |k: &str| today[k].as_u64();
    assert_eq!(
        [
            count("builds"),
            count("deploys"),
            count("scalings"),
            count("deletions")
        ],
        [Some(2), Some(2), Some(2), Some(2)],
        "2 builds, 2 deploys, 2 scalings, 2 deletions (v1 and the app): {stats}"
    );
    note(&mut summary, format!("admin's counts today: {today}"));
    note(
        &mut summary,
        format!(
            "teardown: namespaces gone, pod IPs released; whole flow {:.0} s",
            t_all.elapsed().as_secs_f64()
        ),
    );
    println!("\n== SUMMARY");
    for l in &summary {
        println!("{l}");
    }
    println!("== END SUMMARY");
}

//! The load-balancer side of a Region, shared by the discovery and core
//! tests: real nginx agents with their nginx, `leengine-discovery`
//! replicas as processes, plain HTTP probes and a steady request load that
//! counts every failure.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::run::{free_port, new_dir, wait_until};
use crate::{Component, Etcd};

/// Hang guard for the start-up waits; not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(60);

/// One discovery replica (a process).
#[derive(Debug)]
pub struct Discovery {
    pub id: String,
    pub child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
}

impl Discovery {
    /// Starts `bin` against `etcd` as the `discovery` identity; Cell
    /// kubeconfigs are looked up in `credentials_dir`, the log goes there too.
    pub fn start(
        bin: &Path,
        etcd: &Etcd,
        credentials_dir: &Path,
        id: &str,
        extra: &[&str],
    ) -> Discovery {
        let port = free_port();
        let log = credentials_dir.join(format!("discovery-{id}.log"));
        let f = std::fs::File::create(&log).expect("log");
        let child = Command::new(bin)
            .args(["--etcd", &etcd.endpoint(), "--id", id])
            .args(etcd.tls_args(&Component::Discovery))
            .arg("--credentials-dir")
            .arg(credentials_dir)
            .args([
                "--lease-ttl",
                "2s",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .args(extra)
            .env("RUST_LOG", "info,kube=warn,hyper=warn")
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup"))
            .stderr(f)
            .spawn()
            .expect("spawn discovery");
        Discovery {
            id: id.into(),
            child: Some(child),
            port,
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn http(&self, path: &str) -> Option<String> {
        http_get(self.port, path)
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.http("/status")?).ok()
    }

    pub fn is_active(&self) -> bool {
        self.status().is_some_and(|s| s["active"] == true)
    }

    /// A sample of `/metrics` (`name{labels}` exactly as written).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = self.http("/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    pub fn wait_active(&self) {
        assert!(
            wait_until(PATIENCE, || self.is_active()),
            "{} never became active:\n{}",
            self.id,
            self.log()
        );
    }

    pub fn wait_metric(&self, series: &str, f: impl Fn(f64) -> bool, why: &str) -> f64 {
        let mut last = None;
        let ok = wait_until(PATIENCE, || {
            last = self.metric(series);
            last.is_some_and(&f)
        });
        assert!(ok, "{why}: {series} is {last:?}\n{}", self.log());
        last.unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A minimal HTTP/1.0 GET on loopback; `None` when nothing answers 200.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    http_get_host(port, "127.0.0.1", path)
        .filter(|(s, _)| *s == 200)
        .map(|r| r.1)
}

/// `(status, body)` of a GET of `path` on loopback `port` for virtual host `host`.
pub fn http_get_host(port: u16, host: &str, path: &str) -> Option<(u16, String)> {
    http_request(port, host, "GET", path)
}

fn http_request(port: u16, host: &str, method: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    // A body length only where one is expected (a CGI reads it for POST).
    let length = if method == "GET" {
        ""
    } else {
        "Content-Length: 0\r\n"
    };
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\n{length}\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// An nginx agent's command line as every test runs it: identity, etcd
/// (`endpoint`, TLS flags), and its directories under `dir` (`conf/`,
/// `state/`, the nginx prefix, pid file, `logs/error.log`), status TTL 4 s.
/// Callers add the admin port and what they vary.
pub fn nginx_agent_command(
    bin: &Path,
    group: &str,
    host: &str,
    endpoint: &str,
    tls: &[String],
    dir: &Path,
) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["--group", group, "--host", host])
        .args(["--etcd", endpoint])
        .args(tls)
        .arg("--conf-dir")
        .arg(dir.join("conf"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--nginx-prefix")
        .arg(dir)
        .arg("--pid-file")
        .arg(dir.join("nginx.pid"))
        .arg("--error-log")
        .arg(dir.join("logs/error.log"))
        .args(["--status-ttl", "4s"])
        .env("RUST_LOG", "info");
    cmd
}

/// Spawns an agent built by [`nginx_agent_command`] (output in
/// `dir/logs/agent.log`) and waits until it has written nginx's main config.
pub fn spawn_agent(cmd: &mut Command, dir: &Path, patience: Duration) -> Result<Child, String> {
    let log_path = dir.join("logs/agent.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("agent log: {e}"))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| format!("agent log: {e}"))?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawn nginx agent: {e}"))?;
    let conf = dir.join("conf/nginx.conf");
    if wait_until(patience, || conf.exists()) {
        return Ok(child);
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    Err(format!("agent wrote no nginx.conf:\n{log}"))
}

/// Starts nginx on the agent's main config in `dir` the way systemd would
/// (output in `dir/logs/nginx.out`) and waits until it listens on the
/// agent's `admin_port`.
pub fn spawn_nginx(dir: &Path, admin_port: u16, patience: Duration) -> Result<Child, String> {
    let out_path = dir.join("logs/nginx.out");
    let log = std::fs::File::create(&out_path).map_err(|e| format!("nginx log: {e}"))?;
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("conf/nginx.conf"))
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| format!("nginx log: {e}"))?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawn nginx: {e}"))?;
    if wait_until(patience, || {
        TcpStream::connect(("127.0.0.1", admin_port)).is_ok()
    }) {
        return Ok(child);
    }
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    Err(format!("nginx did not come up: {out}"))
}

/// A real nginx agent of `group` with its nginx.
#[derive(Debug)]
pub struct NginxAgent {
    pub host: String,
    /// Its `--listen-address`: where its domains are served (127.0.0.1 when
    /// started without one, nginx then binding every address).
    pub address: IpAddr,
    pub dir: PathBuf,
    pub admin_port: u16,
    /// The agent's `GET /metrics` (nginx's per-domain counters included),
    /// advertised in its status for core's service discovery.
    pub metrics_port: u16,
    pub agent: Option<Child>,
    pub nginx: Option<Child>,
}

impl NginxAgent {
    /// Starts the agent binary `bin` for `group` as `host`, then nginx on
    /// the config it writes.
    pub fn start(bin: &Path, etcd: &Etcd, group: &str, host: &str) -> NginxAgent {
        Self::start_on(bin, etcd, group, host, None)
    }

    /// [`NginxAgent::start`] with `--listen-address address`: several hosts
    /// of one group on this machine, each on its own loopback address
    /// (127.0.0.2, 127.0.0.3, ...: all of 127/8 is local on Linux).
    pub fn start_on(
        bin: &Path,
        etcd: &Etcd,
        group: &str,
        host: &str,
        address: Option<IpAddr>,
    ) -> NginxAgent {
        let dir = new_dir("agent");
        std::fs::create_dir_all(dir.join("logs")).expect("mkdir logs");
        let mut a = NginxAgent {
            host: host.into(),
            address: address.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            admin_port: free_port(),
            metrics_port: free_port(),
            dir,
            agent: None,
            nginx: None,
        };
        a.start_agent(bin, etcd, group, address);
        a.start_nginx();
        a
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn start_agent(&mut self, bin: &Path, etcd: &Etcd, group: &str, address: Option<IpAddr>) {
        let tls = etcd.tls_args(&Component::nginx_agent(group));
        let mut cmd =
            nginx_agent_command(bin, group, &self.host, &etcd.endpoint(), &tls, &self.dir);
        cmd.args(["--admin-port", &self.admin_port.to_string()])
            .args(["--worker-processes", "1", "--debounce", "50ms"])
            .args([
                "--metrics-listen",
                &format!("127.0.0.1:{}", self.metrics_port),
            ])
            .args(address.map(|a| format!("--listen-address={a}")));
        self.agent =
            Some(spawn_agent(&mut cmd, &self.dir, PATIENCE).unwrap_or_else(|e| panic!("{e}")));
    }

    fn start_nginx(&mut self) {
        self.nginx = Some(
            spawn_nginx(&self.dir, self.admin_port, PATIENCE).unwrap_or_else(|e| panic!("{e}")),
        );
    }

    /// The peers nginx itself holds for `domain` (its admin endpoint).
    pub fn live_peers(&self, domain: &str) -> BTreeSet<SocketAddr> {
        let secret = std::fs::read_to_string(self.path("state/admin.secret")).unwrap_or_default();
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.admin_port)) else {
            return BTreeSet::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = write!(
            s,
            "GET /leengine/upstreams HTTP/1.0\r\nHost: 127.0.0.1\r\nX-Leengine-Admin-Secret: {}\r\n\r\n",
            secret.trim()
        );
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        let body = buf.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        // `@domain method key` starts a section; each server line starts
        // with its address (other lines, e.g. `#down` notes, are skipped).
        let mut out = BTreeSet::new();
        let mut inside = false;
        for l in body.lines() {
            if let Some(head) = l.strip_prefix('@') {
                inside = head.split(' ').next() == Some(domain);
            } else if inside {
                if let Some(a) = l.split(' ').next().and_then(|a| a.parse().ok()) {
                    out.insert(a);
                }
            }
        }
        out
    }

    pub fn signal(&self, sig: i32) {
        let Some(pid) = self.agent.as_ref().map(Child::id) else {
            return;
        };
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(i32::try_from(pid).expect("pid"), sig) };
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("logs/agent.log")).unwrap_or_default()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.path("logs/error.log")).unwrap_or_default()
    }
}

impl Drop for NginxAgent {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        for c in [self.agent.take(), self.nginx.take()].into_iter().flatten() {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
        // nginx workers outlive a SIGKILLed master.
        let marker = self.dir.display().to_string();
        let me = i32::try_from(std::process::id()).expect("pid");
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
                if String::from_utf8_lossy(&c).contains(&marker) && pid != me {
                    // SAFETY: a process started for this agent.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

/// What a [`Load`] counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadCount {
    pub ok: u64,
    pub failed: u64,
    /// The first failures, as `status` or the I/O error (at most 20).
    pub samples: Vec<String>,
}

/// A steady load: `workers` threads sending `method path` for `host`
/// to loopback `port` back to back, one connection per request (so every
/// request is routed anew). Anything but a 2xx answer — an error status,
/// a refused or reset connection, a timeout — counts as failed.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    samples: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(port: u16, host: &str, method: &str, path: &str, workers: usize) -> Load {
        Self::paced(port, host, method, path, workers, Duration::ZERO)
    }

    /// [`Load::start`] with each worker resting `pause` after each request:
    /// a light load of about `workers / pause` requests per second.
    pub fn paced(
        port: u16,
        host: &str,
        method: &str,
        path: &str,
        workers: usize,
        pause: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let samples: Arc<Mutex<Vec<String>>> = Arc::default();
        let threads = (0..workers)
            .map(|_| {
                let (stop, ok, failed, samples) =
                    (stop.clone(), ok.clone(), failed.clone(), samples.clone());
                let (host, method, path) = (host.to_string(), method.to_string(), path.to_string());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        match http_request(port, &host, &method, &path) {
                            Some((s, _)) if (200..300).contains(&s) => {
                                ok.fetch_add(1, Ordering::SeqCst);
                            }
                            other => {
                                failed.fetch_add(1, Ordering::SeqCst);
                                let mut v = samples.lock().expect("samples");
                                if v.len() < 20 {
                                    v.push(format!("{other:?}"));
                                }
                            }
                        }
                        std::thread::sleep(pause);
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            samples,
            threads,
        }
    }

    /// The counts so far.
    pub fn count(&self) -> LoadCount {
        LoadCount {
            ok: self.ok.load(Ordering::SeqCst),
            failed: self.failed.load(Ordering::SeqCst),
            samples: self.samples.lock().expect("samples").clone(),
        }
    }

    /// Stops the workers (each finishes its request) and returns the counts.
    pub fn stop(mut self) -> LoadCount {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.count()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

//! A host for the agent under test: real etcd (testenv), a real nginx with
//! lua run from the agent's config (test-local: testenv's `Nginx` owns its
//! config and `pid`, which the agent must own here), the agent binary, and
//! tiny tokio HTTP backends answering with their own id.

#![allow(dead_code)] // each test file uses a different part

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use leengine_testenv as te;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const GROUP: &str = "g1";

pub struct Host {
    pub dir: tempfile::TempDir,
    pub admin_port: u16,
    pub http_port: u16,
    pub etcd_endpoint: String,
    /// `--etcd-ca/--etcd-cert/--etcd-key` of the group's agent identity.
    pub etcd_tls: Vec<String>,
    pub agent: Option<Child>,
    pub nginx: Option<Child>,
    pub rt: tokio::runtime::Runtime,
    pub etcd: etcd_client::Client,
    /// The agent's `--debounce`.
    pub debounce: &'static str,
    /// The agent's `--shared-dict-size` (its default when `None`).
    pub shared_dict_size: Option<&'static str>,
    /// The agent's `--routing`.
    pub routing: &'static str,
    /// The SLB group this host serves.
    pub group: &'static str,
    /// More agent flags (e.g. `--metrics-listen`).
    pub extra_args: Vec<String>,
    /// The agent's `--host` (its status key).
    pub name: &'static str,
    /// The agent's `--listen-address`; requests go to it (else 127.0.0.1).
    pub listen_address: Option<&'static str>,
}

impl Host {
    pub fn new(etcd: &te::Etcd) -> Host {
        Self::in_group(etcd, GROUP)
    }

    /// A host of another group (hosts of different groups share no keys).
    pub fn in_group(etcd: &te::Etcd, group: &'static str) -> Host {
        let dir = tempfile::Builder::new()
            .prefix("slb-host-")
            .tempdir_in(te::run_dir())
            .expect("tempdir");
        std::fs::create_dir_all(dir.path().join("logs")).expect("mkdir");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let client = rt.block_on(etcd.root_client());
        Host {
            dir,
            admin_port: te::free_port(),
            http_port: te::free_port(),
            etcd_endpoint: etcd.endpoint(),
            etcd_tls: etcd.tls_args(&te::Component::nginx_agent(group)),
            agent: None,
            nginx: None,
            rt,
            etcd: client,
            debounce: "50ms",
            shared_dict_size: None,
            routing: "lua",
            group,
            extra_args: Vec::new(),
            name: "h1",
            listen_address: None,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn start_agent(&mut self) {
        let mut cmd = te::nginx_agent_command(
            Path::new(env!("CARGO_BIN_EXE_leengine-nginx-agent")),
            self.group,
            self.name,
            &self.etcd_endpoint,
            &self.etcd_tls,
            self.dir.path(),
        );
        cmd.args(["--routing", self.routing])
            .args(["--admin-port", &self.admin_port.to_string()])
            .args(["--worker-processes", "2", "--debounce", self.debounce])
            .args(["--retry-refused", "1s", "--reload-timeout", "5s"])
            .args(
                self.shared_dict_size
                    .map(|s| vec!["--shared-dict-size", s])
                    .unwrap_or_default(),
            )
            .args(&self.extra_args)
            .args(
                self.listen_address
                    .map(|a| vec!["--listen-address", a])
                    .unwrap_or_default(),
            );
        let agent = te::spawn_agent(&mut cmd, self.dir.path(), Duration::from_secs(10));
        self.agent = Some(agent.unwrap_or_else(|e| panic!("{e}")));
    }

    pub fn signal_agent(&self, sig: i32) {
        let pid = self.agent.as_ref().expect("agent running").id();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid_t(pid), sig) };
    }

    /// SIGKILL: no cleanup, like a crash.
    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts nginx on the agent's main config the way systemd would.
    pub fn start_nginx(&mut self) {
        let nginx = te::spawn_nginx(self.dir.path(), self.admin_port, Duration::from_secs(10));
        self.nginx = Some(nginx.unwrap_or_else(|e| panic!("{e}")));
    }

    pub fn stop_nginx(&mut self) {
        if let Some(mut c) = self.nginx.take() {
            let workers = self.worker_pids();
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid_t(c.id()), libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
            for w in workers {
                // SAFETY: workers of the master we started.
                unsafe { libc::kill(pid_t(w), libc::SIGKILL) };
            }
        }
    }

    pub fn master_pid(&self) -> u32 {
        self.nginx.as_ref().expect("nginx running").id()
    }

    pub fn worker_pids(&self) -> Vec<u32> {
        self.nginx
            .as_ref()
            .map(|c| te::nginx_worker_pids(c.id()))
            .unwrap_or_default()
    }

    /// Waits until `n` workers run and none is shutting down (after a reload
    /// old workers linger until their connections close).
    pub fn settled_workers(&self, n: usize) -> Vec<u32> {
        let mut last = Vec::new();
        te::wait_until(Duration::from_secs(10), || {
            last = self.worker_pids();
            last.len() == n
        });
        last
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.path("logs/agent.log")).unwrap_or_default()
    }

    pub fn put(&self, key: &str, value: &str) {
        let mut c = self.etcd.clone();
        self.rt.block_on(c.put(key, value, None)).expect("etcd put");
    }

    pub fn put_domain(&self, domain: &str, config: &str, upstream: &str) {
        self.put(
            &leengine_store::keys::slb_domain_config(self.group, domain),
            config,
        );
        self.put(
            &leengine_store::keys::slb_domain_upstream(self.group, domain),
            upstream,
        );
    }

    pub fn put_upstream(&self, domain: &str, upstream: &str) {
        self.put(
            &leengine_store::keys::slb_domain_upstream(self.group, domain),
            upstream,
        );
    }

    pub fn put_config(&self, domain: &str, config: &str) {
        self.put(
            &leengine_store::keys::slb_domain_config(self.group, domain),
            config,
        );
    }

    pub fn status(&self) -> Option<leengine_slb::AgentStatus> {
        let mut c = self.etcd.clone();
        let resp = self
            .rt
            .block_on(c.get(leengine_store::keys::slb_agent(self.group, self.name), None))
            .ok()?;
        let kv = resp.kvs().first()?;
        serde_json::from_slice(kv.value()).ok()
    }

    /// Waits for the agent to report a status satisfying `f`.
    pub fn wait_status(
        &self,
        what: &str,
        f: impl Fn(&leengine_slb::AgentStatus) -> bool,
    ) -> leengine_slb::AgentStatus {
        self.wait_status_for(Duration::from_secs(15), what, f)
    }

    /// [`Host::wait_status`] for a step that includes refused reloads
    /// (each waits the agent's `--reload-timeout`).
    pub fn wait_status_for(
        &self,
        timeout: Duration,
        what: &str,
        f: impl Fn(&leengine_slb::AgentStatus) -> bool,
    ) -> leengine_slb::AgentStatus {
        let mut last = None;
        let ok = te::wait_until(timeout, || {
            last = self.status();
            last.as_ref().is_some_and(&f)
        });
        assert!(
            ok,
            "status never {what}; last {last:?}\nagent log:\n{}",
            self.agent_log()
        );
        last.expect("status")
    }

    pub fn get(&self, host: &str, path: &str) -> Response {
        let addr = self.listen_address.unwrap_or("127.0.0.1");
        request_to(addr, self.http_port, "GET", host, path, &[], "")
    }

    /// The secret the agent keeps for the admin endpoint.
    pub fn admin_secret(&self) -> String {
        std::fs::read_to_string(self.path("state/admin.secret"))
            .expect("admin secret")
            .trim()
            .to_string()
    }

    /// A request to the admin endpoint, as the agent makes it.
    pub fn admin(&self, method: &str, path: &str, body: &str) -> Response {
        let header = format!("X-Leengine-Admin-Secret: {}", self.admin_secret());
        request(self.admin_port, method, "127.0.0.1", path, &[&header], body)
    }

    /// Polls until `host` answers with `body`.
    pub fn wait_body(&self, host: &str, body: &str) {
        let mut last = None;
        let ok = te::wait_until(Duration::from_secs(15), || {
            let r = self.get(host, "/");
            let hit = r.status == 200 && r.body == body;
            last = Some(r);
            hit
        });
        assert!(
            ok,
            "{host} never answered {body:?}; last {last:?}\nagent log:\n{}",
            self.agent_log()
        );
    }

    pub fn backend(&self, id: &str) -> Backend {
        Backend::start(&self.rt, id)
    }

    pub fn domain_config(&self) -> String {
        format!(r#"{{"listen":[{{"port":{}}}]}}"#, self.http_port)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill_agent();
        self.stop_nginx();
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

/// One HTTP/1.0 GET with a Host header (status 0 if nothing answered).
pub fn get(port: u16, host: &str, path: &str) -> Response {
    request(port, "GET", host, path, &[], "")
}

/// One HTTP/1.0 request (status 0 if nothing answered).
pub fn request(
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> Response {
    request_to("127.0.0.1", port, method, host, path, headers, body)
}

/// [`request`] to `addr` instead of 127.0.0.1.
pub fn request_to(
    addr: &str,
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> Response {
    let attempt = || -> std::io::Result<Response> {
        let mut s = TcpStream::connect((addr, port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: {host}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok(Response {
            status,
            headers: head.to_string(),
            body: body.to_string(),
        })
    };
    attempt().unwrap_or(Response {
        status: 0,
        headers: String::new(),
        body: String::new(),
    })
}

/// A loopback HTTP/1.1 server answering every request with its id
/// (keep-alive capable, so nginx's upstream keepalive is exercised); an
/// echo backend also answers with the request head it got (header lines
/// sorted), and takes 2 s to answer a path starting with `/slow`.
pub struct Backend {
    pub id: String,
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub fn start(rt: &tokio::runtime::Runtime, id: &str) -> Backend {
        Self::serve(rt, id, false)
    }

    pub fn echo(rt: &tokio::runtime::Runtime, id: &str) -> Backend {
        Self::serve(rt, id, true)
    }

    fn serve(rt: &tokio::runtime::Runtime, id: &str, echo: bool) -> Backend {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let body = id.to_string();
        let task = rt.spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else { continue };
                let body = body.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
                        let head: Vec<u8> = buf.drain(..end).collect();
                        let head = String::from_utf8_lossy(&head).into_owned();
                        let body = if echo {
                            let length = content_length(&head);
                            while buf.len() < length {
                                match conn.read(&mut chunk).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                }
                            }
                            buf.drain(..length);
                            if head.split(' ').nth(1).is_some_and(|p| p.starts_with("/slow")) {
                                tokio::time::sleep(Duration::from_secs(2)).await;
                            }
                            format!("{body}\n{}", sorted_head(&head))
                        } else {
                            body.clone()
                        };
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
                            body.len()
                        );
                        if conn.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Backend {
            id: id.to_string(),
            addr,
            task,
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn content_length(head: &str) -> usize {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The request line, then the header lines sorted.
fn sorted_head(head: &str) -> String {
    let mut lines = head.trim_end().lines();
    let first = lines.next().unwrap_or("").to_string();
    let mut rest: Vec<&str> = lines.collect();
    rest.sort_unstable();
    std::iter::once(first.as_str())
        .chain(rest)
        .collect::<Vec<_>>()
        .join("\n")
}

/// `{"servers":[...]}` for the given backends.
pub fn upstream_of(backends: &[&Backend]) -> String {
    let servers: Vec<String> = backends
        .iter()
        .map(|b| format!(r#"{{"address":"{}"}}"#, b.addr))
        .collect();
    format!(r#"{{"servers":[{}]}}"#, servers.join(","))
}

/// A child's pid as kill(2) takes it.
pub fn pid_t(pid: u32) -> libc::pid_t {
    libc::pid_t::try_from(pid).expect("a pid fits pid_t")
}

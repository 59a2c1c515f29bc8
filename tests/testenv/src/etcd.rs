use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use leengine_store::keys::{Component, Keys};
use leengine_store::EtcdConfig;

use crate::run::{free_port, must, new_dir, require_bin, tail, wait_until, Daemon};

/// The user tests observe and set up with: etcd's built-in `root`, whose
/// role reaches every key. No product component is ever given it.
const ROOT: &str = "root";

/// A real single-member etcd on free loopback ports, run the way production
/// runs it: TLS on the client port, client certificates required
/// (`--client-cert-auth`, the CN is the etcd user) and authentication on.
///
/// Each component's identity (a client certificate signed by this etcd's
/// own CA, an etcd user and a role holding exactly
/// [`Keys::grants`](leengine_store::Keys::grants)) is made the first time a
/// test asks for it, under the prefix the `Etcd` was started with.
#[derive(Debug)]
pub struct Etcd {
    dir: PathBuf,
    pki: PathBuf,
    keys: Keys,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    daemon: Option<Daemon>,
    /// etcd users created so far (plus their certificates).
    users: Mutex<BTreeSet<String>>,
    /// Last certificate serial this CA handed out.
    serial: AtomicU64,
}

/// PEM files of one identity, for binaries that take paths.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Etcd {
    /// etcd with TLS and auth; component identities get grants under the
    /// default key prefix `/leengine`.
    pub fn start() -> Etcd {
        Self::start_with_prefix(leengine_store::keys::DEFAULT_PREFIX)
    }

    /// Same, for tests that keep their keys under another prefix.
    pub fn start_with_prefix(prefix: &str) -> Etcd {
        let dir = new_dir("etcd");
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki).expect("create pki dir");
        let mut e = Etcd {
            dir,
            pki,
            keys: Keys::new(prefix),
            client_port: free_port(),
            peer_port: free_port(),
            metrics_port: free_port(),
            daemon: None,
            users: Mutex::new(BTreeSet::new()),
            serial: AtomicU64::new(0),
        };
        e.make_ca();
        e.spawn();
        // Before auth is on, the root certificate's CN is not checked
        // against a user yet; after it, `root` is that user.
        e.issue(ROOT);
        e.ctl_ok(&["user", "add", ROOT, "--no-password"]);
        e.ctl_ok(&["user", "grant-role", ROOT, "root"]);
        e.ctl_ok(&["auth", "enable"]);
        e.users.lock().unwrap().insert(ROOT.into());
        e
    }

    fn spawn(&mut self) {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let metrics = format!("http://127.0.0.1:{}", self.metrics_port);
        let mut cmd = Command::new(etcd_bin());
        cmd.args(["--name", "testenv"])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .arg("--client-cert-auth")
            .arg("--trusted-ca-file")
            .arg(self.ca_file())
            .arg("--cert-file")
            .arg(self.server_cert_file())
            .arg("--key-file")
            .arg(self.server_key_file())
            // Plain-HTTP /health for the readiness poll; it serves no keys.
            .args(["--listen-metrics-urls", &metrics])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("testenv={peer}")])
            // Leases in tests are short; etcd's default minimum TTL check
            // tolerates them, and a fast election keeps restarts quick.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--log-level", "warn"]);
        let mut d = Daemon::spawn("etcd", &self.dir, &mut cmd);
        let port = self.metrics_port;
        let healthy = wait_until(Duration::from_secs(20), || {
            d.assert_running();
            health(port)
        });
        if !healthy {
            panic!("etcd did not become healthy:\n{}", tail(&d.log));
        }
        self.daemon = Some(d);
    }

    /// `https://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_port)
    }

    /// `127.0.0.1:PORT` of etcd's plain-HTTP `/metrics` and `/health`.
    pub fn metrics_addr(&self) -> String {
        format!("127.0.0.1:{}", self.metrics_port)
    }

    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint()]
    }

    pub fn port(&self) -> u16 {
        self.client_port
    }

    /// The key layout the identities' grants were made for.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The CA that signed the server and every client certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.pki.join("ca.pem")
    }

    /// etcd's server certificate (SAN 127.0.0.1 and localhost).
    pub fn server_cert_file(&self) -> PathBuf {
        self.pki.join("server.pem")
    }

    pub fn server_key_file(&self) -> PathBuf {
        self.pki.join("server.key")
    }

    /// PEM files of `component`'s identity (made on first use).
    pub fn tls_files(&self, component: &Component) -> TlsFiles {
        self.ensure(component);
        self.files(&component.user())
    }

    /// PEM files of the `root` identity, for observers outside the product
    /// (etcdctl, kube-apiserver's `--etcd-cafile/--etcd-certfile/--etcd-keyfile`).
    pub fn root_files(&self) -> TlsFiles {
        self.files(ROOT)
    }

    /// Connection settings of `component`: endpoints, prefix and its identity.
    pub fn config(&self, component: &Component) -> EtcdConfig {
        self.config_for(self.tls_files(component))
    }

    /// Connection settings with the `root` identity.
    pub fn root_config(&self) -> EtcdConfig {
        self.config_for(self.root_files())
    }

    /// The flags every binary takes: `--etcd-ca F --etcd-cert F --etcd-key F`.
    pub fn tls_args(&self, component: &Component) -> Vec<String> {
        let f = self.tls_files(component);
        [
            ("--etcd-ca", f.ca),
            ("--etcd-cert", f.cert),
            ("--etcd-key", f.key),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
        .collect()
    }

    /// A client acting as `component`.
    pub async fn client(&self, component: &Component) -> etcd_client::Client {
        connect(&self.config(component)).await
    }

    /// A client acting as `root` (sees and may change everything).
    pub async fn root_client(&self) -> etcd_client::Client {
        connect(&self.root_config()).await
    }

    /// Kills etcd (SIGKILL, like a crash); data and port are kept for [`restart`](Self::restart).
    pub fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill9();
        }
    }

    /// Starts etcd again on the same port with the same data (users,
    /// roles and the auth switch are data too).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn is_running(&self) -> bool {
        self.daemon.is_some()
    }

    /// Runs `etcdctl` as `root` against this instance (tests observe with it).
    pub fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        self.etcdctl_as(&self.root_files(), args)
    }

    /// Runs `etcdctl` with `files`' identity.
    pub fn etcdctl_as(&self, files: &TlsFiles, args: &[&str]) -> std::process::Output {
        self.ctl_cmd(files, args).output().expect("run etcdctl")
    }

    fn ctl_cmd(&self, files: &TlsFiles, args: &[&str]) -> Command {
        let mut cmd = Command::new(require_bin("etcdctl", "etcd-client"));
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .arg(format!("--cacert={}", files.ca.display()))
            .arg(format!("--cert={}", files.cert.display()))
            .arg(format!("--key={}", files.key.display()))
            .args(args);
        cmd
    }

    fn ctl_ok(&self, args: &[&str]) {
        must(&mut self.ctl_cmd(&self.root_files(), args));
    }

    fn config_for(&self, f: TlsFiles) -> EtcdConfig {
        EtcdConfig {
            endpoints: self.endpoints(),
            prefix: Some(self.keys.prefix().to_string()),
            ca: Some(f.ca.display().to_string()),
            cert: Some(f.cert.display().to_string()),
            key: Some(f.key.display().to_string()),
            user: None,
            password_file: None,
        }
    }

    fn files(&self, user: &str) -> TlsFiles {
        TlsFiles {
            ca: self.ca_file(),
            cert: self.pki.join(format!("{user}.pem")),
            key: self.pki.join(format!("{user}.key")),
        }
    }

    /// Creates `component`'s certificate, user and role once.
    fn ensure(&self, component: &Component) {
        let user = component.user();
        let mut users = self.users.lock().unwrap();
        if users.contains(&user) {
            return;
        }
        self.issue(&user);
        self.ctl_ok(&["user", "add", &user, "--no-password"]);
        self.ctl_ok(&["role", "add", &user]);
        for g in self.keys.grants(component) {
            let mut args = vec!["role", "grant-permission", &user, g.access.etcd_name()];
            args.push(&g.key);
            if g.prefix {
                args.push("--prefix");
            }
            self.ctl_ok(&args);
        }
        self.ctl_ok(&["user", "grant-role", &user, &user]);
        users.insert(user);
    }

    fn make_ca(&self) {
        let openssl = require_bin("openssl", "openssl");
        must(
            Command::new(&openssl)
                .args(["req", "-x509", "-nodes", "-days", "30"])
                .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
                .args(["-subj", "/CN=leengine-testenv-ca"])
                .arg("-keyout")
                .arg(self.pki.join("ca.key"))
                .arg("-out")
                .arg(self.ca_file()),
        );
        self.sign(
            "server",
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        );
    }

    /// A client certificate whose CN is the etcd user `user`.
    fn issue(&self, user: &str) {
        self.sign(user, user, "extendedKeyUsage=clientAuth\n");
    }

    fn sign(&self, file: &str, cn: &str, ext: &str) {
        let openssl = require_bin("openssl", "openssl");
        let p = |suffix: &str| self.pki.join(format!("{file}.{suffix}"));
        std::fs::write(p("ext"), ext).expect("write openssl extensions");
        must(
            Command::new(&openssl)
                .args(["req", "-nodes"])
                .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
                .args(["-subj", &format!("/CN={cn}")])
                .arg("-keyout")
                .arg(p("key"))
                .arg("-out")
                .arg(p("csr")),
        );
        must(
            Command::new(&openssl)
                .args(["x509", "-req", "-days", "30", "-set_serial"])
                .arg((self.serial.fetch_add(1, Ordering::Relaxed) + 1).to_string())
                .arg("-in")
                .arg(p("csr"))
                .arg("-CA")
                .arg(self.ca_file())
                .arg("-CAkey")
                .arg(self.pki.join("ca.key"))
                .arg("-extfile")
                .arg(p("ext"))
                .arg("-out")
                .arg(p("pem")),
        );
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `LEENGINE_ETCD_BIN` when set (to test against another etcd release),
/// else `etcd` from the system.
fn etcd_bin() -> PathBuf {
    match std::env::var_os("LEENGINE_ETCD_BIN") {
        Some(p) if !p.is_empty() => {
            let p = PathBuf::from(p);
            assert!(
                p.exists(),
                "LEENGINE_ETCD_BIN={} does not exist",
                p.display()
            );
            p
        }
        _ => require_bin("etcd", "etcd-server"),
    }
}

async fn connect(cfg: &EtcdConfig) -> etcd_client::Client {
    leengine_store::connect(cfg)
        .await
        .unwrap_or_else(|e| panic!("connect to testenv etcd: {e}"))
}

fn health(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

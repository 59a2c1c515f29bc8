use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::run::{free_port, new_dir, require_bin, tail, wait_until, Daemon};

/// A real single-member etcd on free loopback ports.
pub struct Etcd {
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    daemon: Option<Daemon>,
}

impl Etcd {
    pub fn start() -> Etcd {
        require_bin("etcd", "etcd-server");
        let mut e = Etcd {
            dir: new_dir("etcd"),
            client_port: free_port(),
            peer_port: free_port(),
            daemon: None,
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", "testenv"])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("testenv={peer}")])
            // Leases in tests are short; etcd's default minimum TTL check
            // tolerates them, and a fast election keeps restarts quick.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--log-level", "warn"]);
        let mut d = Daemon::spawn("etcd", &self.dir, &mut cmd);
        let port = self.client_port;
        let healthy = wait_until(Duration::from_secs(20), || {
            d.assert_running();
            health(port)
        });
        if !healthy {
            panic!("etcd did not become healthy:\n{}", tail(&d.log));
        }
        self.daemon = Some(d);
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint()]
    }

    pub fn port(&self) -> u16 {
        self.client_port
    }

    /// Kills etcd (SIGKILL, like a crash); data and port are kept for [`restart`](Self::restart).
    pub fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill9();
        }
    }

    /// Starts etcd again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn is_running(&self) -> bool {
        self.daemon.is_some()
    }

    /// Runs `etcdctl` against this instance (tests observe with it).
    pub fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        require_bin("etcdctl", "etcd-client");
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .args(args)
            .output()
            .expect("run etcdctl")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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

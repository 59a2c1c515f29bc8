//! A real Prometheus (Debian `prometheus`) on a free loopback port, with
//! the configuration the test gives (`{port}` in it is its own port) and
//! the lifecycle API on so rule reloads work.

use std::fs;
use std::path::{Path, PathBuf};

use crate::http::{form, http};
use crate::netns::Netns;
use crate::run::{free_port, new_dir, require_bin, Daemon};

#[derive(Debug)]
pub struct Prometheus {
    daemon: Daemon,
    /// Where this process reaches the API (a forward when it runs in a netns).
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    /// `config`: prometheus.yml text; rule files may live under [`Self::dir`].
    pub fn start(config: impl FnOnce(&Path) -> String) -> Prometheus {
        Self::spawn(None, config)
    }

    /// Runs inside `netns` (e.g. a Cell's node namespace, where the agents
    /// listen on loopback); the API is reached through a forward.
    pub fn start_in(netns: &Netns, config: impl FnOnce(&Path) -> String) -> Prometheus {
        Self::spawn(Some(netns), config)
    }

    fn spawn(netns: Option<&Netns>, config: impl FnOnce(&Path) -> String) -> Prometheus {
        let bin = require_bin("prometheus", "prometheus");
        let dir = new_dir("prometheus");
        let listen = free_port();
        let conf = dir.join("prometheus.yml");
        fs::write(&conf, config(&dir)).expect("write prometheus.yml");
        let bin = bin.display().to_string();
        let mut cmd = match netns {
            Some(ns) => ns.command(&[&bin]),
            None => std::process::Command::new(&bin),
        };
        let port = netns.map_or(listen, |ns| ns.expose_tcp(listen));
        cmd.arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{listen}"))
            .arg("--web.enable-lifecycle");
        let daemon = Daemon::spawn_ready("prometheus", &dir, &mut cmd, port);
        Prometheus { daemon, port, dir }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The directory holding prometheus.yml (and the test's rule files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// `data.result` of an instant query (empty on any failure).
    pub fn query(&self, q: &str) -> Vec<serde_json::Value> {
        self.api("/api/v1/query", &format!("query={}", form(q)))["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// `data.activeTargets` of `/api/v1/targets`.
    pub fn active_targets(&self) -> Vec<serde_json::Value> {
        self.api("/api/v1/targets?state=active", "")["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// `data.alerts` of `/api/v1/alerts`.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        self.api("/api/v1/alerts", "")["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn api(&self, path: &str, body: &str) -> serde_json::Value {
        let method = if body.is_empty() { "GET" } else { "POST" };
        http(method, self.port, path, body)
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
            .map(|v| v["data"].clone())
            .unwrap_or_default()
    }
}

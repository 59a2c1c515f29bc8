//! A real Alertmanager (Debian `prometheus-alertmanager`) on free loopback
//! ports (web + cluster listener off), with the configuration the test gives.

use std::fs;
use std::path::{Path, PathBuf};

use crate::http::http;
use crate::run::{free_port, new_dir, require_bin, Daemon};

#[derive(Debug)]
pub struct Alertmanager {
    daemon: Daemon,
    port: u16,
    dir: PathBuf,
}

impl Alertmanager {
    pub fn start(config: impl FnOnce(&Path) -> String) -> Alertmanager {
        let bin = require_bin("prometheus-alertmanager", "prometheus-alertmanager");
        let dir = new_dir("alertmanager");
        let port = free_port();
        let conf = dir.join("alertmanager.yml");
        fs::write(&conf, config(&dir)).expect("write alertmanager.yml");
        let mut cmd = std::process::Command::new(bin);
        cmd.arg(format!("--config.file={}", conf.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=");
        let daemon = Daemon::spawn_ready("alertmanager", &dir, &mut cmd, port);
        Alertmanager { daemon, port, dir }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// Alerts Alertmanager holds (`/api/v2/alerts`).
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        http("GET", self.port, "/api/v2/alerts", "")
            .and_then(|(_, b)| serde_json::from_str::<Vec<serde_json::Value>>(&b).ok())
            .unwrap_or_default()
    }
}

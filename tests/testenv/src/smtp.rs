//! A real SMTP server on a free loopback port: Debian's `aiosmtpd` (package
//! `python3-aiosmtpd`) delivering every message into a Maildir the test reads.

use std::fs;
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::run::{free_port, new_dir, require_bin, wait_until, Daemon};

#[derive(Debug)]
pub struct Smtp {
    _daemon: Daemon,
    port: u16,
    maildir: PathBuf,
}

impl Smtp {
    pub fn start() -> Smtp {
        let bin = require_bin("aiosmtpd", "python3-aiosmtpd");
        let dir = new_dir("smtp");
        let maildir = dir.join("Maildir");
        let port = free_port();
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["-n", "-l", &format!("127.0.0.1:{port}"), "-c"])
            .arg("aiosmtpd.handlers.Mailbox")
            .arg(&maildir);
        let mut daemon = Daemon::spawn("aiosmtpd", &dir, &mut cmd);
        let up = wait_until(Duration::from_secs(20), || {
            daemon.assert_running();
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "aiosmtpd did not listen; log {}", daemon.log.display());
        Smtp {
            _daemon: daemon,
            port,
            maildir,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every delivered message (headers and body), oldest first.
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<_> = ["new", "cur"]
            .iter()
            .filter_map(|d| fs::read_dir(self.maildir.join(d)).ok())
            .flatten()
            .flatten()
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        files.sort();
        files
            .into_iter()
            .filter_map(|(_, p)| fs::read_to_string(p).ok())
            .collect()
    }
}

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::run::{free_port, must, new_dir, wait_until};

/// A real `git daemon` serving every repository under its directory at
/// `git://127.0.0.1:PORT/NAME`: the build farm's one allowed git host.
#[derive(Debug)]
pub struct GitServer {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl GitServer {
    pub fn start() -> GitServer {
        let dir = new_dir("git");
        let port = free_port();
        // `git-daemon` itself: `git daemon` runs it as a child, which killing
        // `git` would leave behind.
        let exec = must(Command::new("git").arg("--exec-path"));
        let bin = PathBuf::from(String::from_utf8_lossy(&exec.stdout).trim()).join("git-daemon");
        let child = Command::new(bin)
            .args(["--export-all", "--reuseaddr", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", dir.display()))
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn git-daemon");
        let up = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "git daemon did not listen on {port}");
        GitServer { child, dir, port }
    }

    /// The allowed-host entry of the build policy.
    pub fn host(&self) -> String {
        format!("git://127.0.0.1:{}", self.port)
    }

    /// Where repository `name` lives on disk (commit into it there).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.host())
    }

    /// Copies the files of `src` into repository `name` (created with
    /// branch `main` on first use) and commits them; returns the commit id.
    pub fn commit_dir(&self, name: &str, src: &Path, message: &str) -> String {
        let repo = self.path(name);
        if !repo.join(".git").exists() {
            std::fs::create_dir_all(&repo).expect("mkdir repo");
            git(&repo, &["init", "-q", "-b", "main"]);
        }
        must(Command::new("cp").arg("-rT").arg(src).arg(&repo));
        git(&repo, &["add", "-A"]);
        git(
            &repo,
            &[
                "-c",
                "user.name=dev",
                "-c",
                "user.email=dev@shop.demo",
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                message,
            ],
        );
        git(&repo, &["rev-parse", "HEAD"])
    }
}

/// `git ARGS` in `dir`; its trimmed standard output.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = must(Command::new("git").arg("-C").arg(dir).args(args));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

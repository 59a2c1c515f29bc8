//! The nginx binary (for `nginx -t`, the one allowed exec) and the master
//! process (reload = SIGHUP to the pid in the pid file, what `nginx -s
//! reload` does, without depending on the live config being parseable).

use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[derive(Clone, Debug)]
pub struct Nginx {
    pub bin: PathBuf,
    pub prefix: PathBuf,
    pub pid_file: PathBuf,
}

impl Nginx {
    /// `nginx -t` on a complete main config; the error is nginx's own
    /// `[emerg]` line(s).
    pub async fn test(&self, conf: &Path) -> Result<(), String> {
        let out = tokio::process::Command::new(&self.bin)
            .arg("-t")
            .arg("-q")
            .arg("-p")
            .arg(&self.prefix)
            .arg("-c")
            .arg(conf)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("[emerg]") || l.contains("[alert]") || l.contains("[crit]"))
            .collect();
        let msg = if lines.is_empty() {
            stderr.trim().to_string()
        } else {
            lines.join("; ")
        };
        Err(msg.replace("nginx: ", ""))
    }

    /// The running master, if any.
    pub fn master(&self) -> Option<Pid> {
        let text = std::fs::read_to_string(&self.pid_file).ok()?;
        let pid = Pid::from_raw(text.trim().parse().ok()?);
        kill(pid, None).ok().map(|()| pid)
    }

    /// Asks the master to reload. `Ok(false)`: nginx is not running, the
    /// files are simply there when it starts.
    pub fn reload(&self) -> Result<bool, String> {
        match self.master() {
            None => Ok(false),
            Some(pid) => kill(pid, Signal::SIGHUP)
                .map(|()| true)
                .map_err(|e| format!("SIGHUP to nginx master {pid}: {e}")),
        }
    }
}

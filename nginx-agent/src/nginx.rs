//! The nginx binary (for `nginx -t`, the one allowed exec) and the master
//! process (reload = SIGHUP to the pid in the pid file, what `nginx -s
//! reload` does, without depending on the live config being parseable).
//! A reload's outcome is not in the signal: the master logs a failure
//! (e.g. a port `nginx -t` cannot know is in use) and keeps the old
//! workers; the caller confirms a reload through the generation marker and
//! takes the reason from the error log.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[derive(Clone, Debug)]
pub struct Nginx {
    pub bin: PathBuf,
    pub prefix: PathBuf,
    pub pid_file: PathBuf,
    pub error_log: PathBuf,
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

    /// Where the error log ends now: [`Nginx::errors_since`] reads from here.
    pub fn error_log_end(&self) -> u64 {
        std::fs::metadata(&self.error_log).map_or(0, |m| m.len())
    }

    /// nginx's own words for what failed after `offset` (empty if it
    /// logged nothing serious).
    pub fn errors_since(&self, offset: u64) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.error_log) {
            if f.seek(SeekFrom::Start(offset)).is_ok() {
                let _ = f.take(64 * 1024).read_to_string(&mut text);
            }
        }
        serious_lines(&text)
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

/// `[emerg]`/`[alert]`/`[crit]` lines without time and pid, each once
/// (nginx retries a bind five times and logs every attempt).
fn serious_lines(log: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for line in log.lines() {
        let Some(at) = ["[emerg]", "[alert]", "[crit]"]
            .iter()
            .filter_map(|l| line.find(l))
            .min()
        else {
            continue;
        };
        // "[emerg] 12345#12345: message"
        let rest = line[at..].split_once(' ').map_or("", |(_, r)| r);
        let msg = rest.split_once(": ").map_or(rest, |(_, m)| m);
        if !out.contains(&msg) {
            out.push(msg);
        }
    }
    out.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_errors_are_nginx_lines_once() {
        let log = "2026/12/01 20:30:29 [notice] 1#1: signal 1 (SIGHUP) received\n\
2026/12/01 20:30:29 [emerg] 20198#20198: bind() to 0.0.0.0:18777 failed (98: Address already in use)\n\
2026/12/01 20:30:30 [emerg] 20198#20198: bind() to 0.0.0.0:18777 failed (98: Address already in use)\n\
2026/12/01 20:30:31 [emerg] 20198#20198: still could not bind()\n";
        assert_eq!(
            serious_lines(log),
            "bind() to 0.0.0.0:18777 failed (98: Address already in use); still could not bind()"
        );
        assert_eq!(serious_lines("x [warn] 1#1: meh\n"), "");
    }
}

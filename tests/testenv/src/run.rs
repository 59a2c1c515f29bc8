//! The per-process run directory, the reaper of killed runs, unique names and
//! the tracked daemon process every service builds on.

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::http::http;

const ROOT: &str = "/tmp/leengine-testenv";

/// `/tmp/leengine-testenv/run-{pid}-{starttime}`: everything this test process
/// creates lives below it and is listed in its `netns` / `links` files.
pub fn run_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        fs::create_dir_all(ROOT).expect("create /tmp/leengine-testenv");
        reap_stale();
        let me = std::process::id();
        let dir = Path::new(ROOT).join(format!("run-{me}-{}", start_time(me).unwrap_or(0)));
        fs::create_dir_all(&dir).expect("create run dir");
        dir
    })
}

/// A fresh directory below the run dir.
pub(crate) fn new_dir(what: &str) -> PathBuf {
    let dir = run_dir().join(unique_name(what));
    fs::create_dir_all(&dir).expect("create service dir");
    dir
}

/// A name unique among concurrently running test processes and within this
/// one, at most 15 characters (fits an interface name). `prefix` is cut to 6.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let p: String = prefix.chars().take(6).collect();
    // Fixed-width PID so that (pid, counter) pairs cannot run together.
    format!("{p}{:0>5}{}", base36(std::process::id()), base36(n))
}

fn base36(mut v: u32) -> String {
    const D: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(D[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

/// Ports handed to services come from below the kernel's ephemeral range
/// (32768–60999 here), so no outgoing connection of any process can take one
/// between our probe and the service's bind, and above the usual fixed
/// service ports. 30000–32767 is Kubernetes' NodePort range, also avoided.
const PORTS: std::ops::Range<u16> = 20000..30000;

/// A loopback TCP port reserved for this test process.
///
/// A port is claimed with an exclusive `flock` on
/// `/tmp/leengine-testenv/ports/{port}` that is held (the descriptor is kept)
/// until the process exits, so concurrently running test binaries never get
/// the same port, and a dead run's ports come back by themselves. A port
/// something else has bound is skipped.
pub fn free_port() -> u16 {
    static HELD: Mutex<Vec<fs::File>> = Mutex::new(Vec::new());
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = Path::new(ROOT).join("ports");
    fs::create_dir_all(&dir).expect("create the port claim dir");
    let span = u32::from(PORTS.end - PORTS.start);
    // Start each process somewhere else in the range so they rarely probe
    // each other's claims.
    let origin = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let offset = u16::try_from((origin + step) % span).expect("below the span");
        let port = PORTS.start + offset;
        let Some(claim) = claim(&dir.join(port.to_string())) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            HELD.lock().unwrap_or_else(|p| p.into_inner()).push(claim);
            return port;
        }
    }
    panic!("no free port left in {PORTS:?}");
}

/// The open, exclusively locked claim file, or None when another process
/// (or an earlier claim of this one) holds it.
fn claim(path: &Path) -> Option<fs::File> {
    use std::os::fd::AsRawFd;
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .expect("open a port claim");
    // SAFETY: flock(2) on a descriptor we own; no memory is shared.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    (rc == 0).then_some(f)
}

/// The path of `bin`, or a one-line panic naming the Debian package.
pub fn require_bin(bin: &str, package: &str) -> PathBuf {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/bin",
        "/usr/lib/cni",
    ] {
        let p = Path::new(dir).join(bin);
        if p.exists() {
            return p;
        }
    }
    panic!("missing `{bin}`: install the Debian package `{package}` (bash hack/deps.sh)");
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command, panics with its stderr when it fails.
pub(crate) fn must(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    out
}

/// Appends a line to one of the run dir's inventory files (`netns`, `pids`).
pub(crate) fn record(file: &str, line: &str) {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir().join(file))
        .expect("open inventory");
    writeln!(f, "{line}").expect("write inventory");
}

/// A service process we started; killed (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub(crate) struct Daemon {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Daemon {
    /// Spawns `cmd` with stdout and stderr going to `dir/{name}.log`.
    pub fn spawn(name: &str, dir: &Path, cmd: &mut Command) -> Daemon {
        let log = dir.join(format!("{name}.log"));
        let f = fs::File::create(&log).expect("create log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup log"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        record("pids", &child.id().to_string());
        Daemon {
            child,
            name: name.to_string(),
            log,
        }
    }

    /// Spawns `cmd` like [`Self::spawn`] and waits until `GET /-/ready` on
    /// `port` answers 200 (the readiness endpoint of Prometheus and
    /// Alertmanager); panics with the log's path when it does not in 30 s.
    pub fn spawn_ready(name: &str, dir: &Path, cmd: &mut Command, port: u16) -> Daemon {
        let mut daemon = Daemon::spawn(name, dir, cmd);
        let up = wait_until(Duration::from_secs(30), || {
            daemon.assert_running();
            http("GET", port, "/-/ready", "").is_some_and(|(s, _)| s == 200)
        });
        assert!(
            up,
            "{name} did not become ready; log {}",
            daemon.log.display()
        );
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics with the tail of the log when the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}); log {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log)
            );
        }
    }

    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// SIGKILL, no chance to clean up: what a crash looks like.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn tail(path: &Path) -> String {
    let s = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

pub(crate) fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a PID we spawned; no memory is shared.
    unsafe {
        libc::kill(i32::try_from(pid).expect("a pid fits pid_t"), sig);
    }
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22; the command name (field 2) may hold spaces, so count from ')'.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Cleans up after runs whose test process no longer exists.
pub fn reap_stale() {
    let Ok(entries) = fs::read_dir(ROOT) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("run-") else {
            continue;
        };
        let mut it = rest.split('-');
        let (Some(pid), Some(start)) = (it.next(), it.next()) else {
            continue;
        };
        let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
            continue;
        };
        if start_time(pid) == Some(start) {
            continue; // still running
        }
        reap(&e.path());
    }
}

fn reap(dir: &Path) {
    // Daemons first (anything whose command line names the dir, plus the
    // recorded PIDs), so nothing holds the namespaces or files.
    let marker = dir.to_string_lossy().into_owned();
    let mut victims: Vec<u32> = fs::read_to_string(dir.join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&marker))
                .unwrap_or(false)
        })
        .collect();
    if let Ok(procs) = fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok(c) = fs::read(p.path().join("cmdline")) {
                if String::from_utf8_lossy(&c).contains(&marker) {
                    victims.push(pid);
                }
            }
        }
    }
    for pid in &victims {
        signal(*pid, libc::SIGKILL);
    }
    std::thread::sleep(Duration::from_millis(100));
    // Containers of a killed Cell's nodes: their kubelet cgroup roots.
    for root in fs::read_to_string(dir.join("cgroups"))
        .unwrap_or_default()
        .lines()
    {
        crate::cgroup::kill_all(root.trim(), true);
    }
    for ns in fs::read_to_string(dir.join("netns"))
        .unwrap_or_default()
        .lines()
    {
        let _ = Command::new("ip")
            .args(["netns", "del", ns.trim()])
            .stderr(Stdio::null())
            .status();
    }
    // Mounts under the dir (dockerd overlays, netns binds) must go before rm.
    if let Ok(mounts) = fs::read_to_string("/proc/self/mounts") {
        let mut targets: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|t| t.starts_with(marker.as_str()))
            .collect();
        targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
        for t in targets {
            let _ = Command::new("umount").args(["-l", t]).status();
        }
    }
    let _ = fs::remove_dir_all(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_fit_an_ifname_and_differ() {
        let a = unique_name("bridge");
        let b = unique_name("bridge");
        assert_ne!(a, b);
        assert!(a.len() <= 15, "{a}");
        assert!(a.starts_with("bridge"));
    }

    #[test]
    fn base36_digits() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }
}

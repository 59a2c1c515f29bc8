use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::run::{must, record, require_bin, run_dir, unique_name};

/// A network namespace made the way container runtimes make them: a new
/// namespace bind-mounted at `/run/netns/{name}`, loopback up (what the CNI
/// `loopback` plugin does). Deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    pub fn new() -> Netns {
        Self::named(&unique_name("ns"))
    }

    pub fn named(name: &str) -> Netns {
        require_bin("ip", "iproute2");
        run_dir();
        record("netns", name);
        must(Command::new("ip").args(["netns", "add", name]));
        let ns = Netns {
            name: name.to_string(),
            path: Path::new("/run/netns").join(name),
        };
        must(&mut ns.command(&["ip", "link", "set", "lo", "up"]));
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A command that will run inside this namespace.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(argv);
        c
    }

    /// Runs `argv` inside the namespace and returns its output (not checked).
    pub fn exec(&self, argv: &[&str]) -> Output {
        self.command(argv).output().expect("run ip netns exec")
    }

    /// Runs `argv` inside the namespace; panics with stderr when it fails.
    pub fn must(&self, argv: &[&str]) -> Output {
        must(&mut self.command(argv))
    }

    /// True when one ICMP echo to `ip` is answered within `secs` seconds.
    pub fn ping(&self, ip: &str, secs: u32) -> bool {
        self.exec(&["ping", "-c", "1", "-W", &secs.to_string(), ip])
            .status
            .success()
    }

    /// Listens on `127.0.0.1:PORT` inside this namespace and forwards every
    /// connection to `127.0.0.1:target` in the caller's namespace; returns
    /// PORT. Lets a program run inside [`Ovs::netns`](crate::Ovs::netns) (a
    /// node's host side) reach the test's etcd. Lives until the process ends.
    pub fn forward_tcp(&self, target: u16) -> u16 {
        self.forward_tcp_at(0, target)
    }

    /// [`Netns::forward_tcp`] on `127.0.0.1:target` inside this namespace
    /// too: an address a service advertises (an agent's metrics, say) then
    /// works from both sides.
    pub fn mirror_tcp(&self, target: u16) {
        self.forward_tcp_at(target, target);
    }

    fn forward_tcp_at(&self, port: u16, target: u16) -> u16 {
        let file = std::fs::File::open(&self.path).expect("open netns");
        // setns on a throwaway thread: only that thread changes namespace,
        // and the socket keeps the namespace it was created in.
        let listener = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns(2) on this thread with a valid namespace fd.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            TcpListener::bind(("127.0.0.1", port)).expect("bind in netns")
        })
        .join()
        .expect("forwarder setup");
        let port = listener.local_addr().expect("local addr").port();
        std::thread::spawn(move || {
            for down in listener.incoming().flatten() {
                let Ok(up) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                pump(down, up);
            }
        });
        port
    }

    /// The reverse of [`Netns::forward_tcp`]: listens on `127.0.0.1:PORT` in
    /// the caller's namespace and forwards to `127.0.0.1:target` inside this
    /// one; returns PORT (e.g. a test reading a Prometheus that must run in
    /// a node's namespace). Lives until the process ends.
    pub fn expose_tcp(&self, target: u16) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let file = std::fs::File::open(&self.path).expect("open netns");
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns(2) on this thread with a valid namespace fd; the
            // listener was bound before, so it stays in the caller's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            for down in listener.incoming().flatten() {
                let Ok(up) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                pump(down, up);
            }
        });
        port
    }

    /// Deletes the namespace now (what a crashed runtime's cleanup might do
    /// without calling CNI DEL).
    pub fn delete(&mut self) {
        if self.path.exists() {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Copies both directions until either side closes.
fn pump(down: TcpStream, up: TcpStream) {
    // Each side's writes are passed on as they come: with Nagle on, a small
    // write waits for the peer's delayed ACK (40 ms), which both ends of a
    // request-response protocol (gRPC to etcd) had already switched off.
    let _ = (down.set_nodelay(true), up.set_nodelay(true));
    let (Ok(mut d2), Ok(mut u2)) = (down.try_clone(), up.try_clone()) else {
        return;
    };
    let (mut d, mut u) = (down, up);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut d, &mut u);
        let _ = u.shutdown(Shutdown::Write);
    });
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut u2, &mut d2);
        let _ = d2.shutdown(Shutdown::Write);
    });
}

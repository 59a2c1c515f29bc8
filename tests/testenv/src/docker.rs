use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::run::{free_port, must, new_dir, require_bin, tail, wait_until, Daemon};

/// A real dockerd with its own socket, data-root and exec-root (and its own
/// managed containerd), no bridge networking and no iptables changes.
#[derive(Debug)]
pub struct Dockerd {
    daemon: Option<Daemon>,
    dir: PathBuf,
    /// Networks made with [`Dockerd::create_network`]: their bridges live
    /// in the host namespace and outlive dockerd unless removed.
    networks: std::sync::Mutex<Vec<String>>,
}

impl Dockerd {
    pub fn start() -> Dockerd {
        require_bin("dockerd", "docker.io");
        let dir = new_dir("docker");
        let sock = dir.join("docker.sock");
        let mut d = Daemon::spawn(
            "dockerd",
            &dir,
            Command::new("dockerd")
                .arg("--host")
                .arg(format!("unix://{}", sock.display()))
                .arg("--data-root")
                .arg(dir.join("data"))
                .arg("--exec-root")
                .arg(dir.join("exec"))
                .arg("--pidfile")
                .arg(dir.join("dockerd.pid"))
                .args(["--bridge=none", "--iptables=false", "--ip-masq=false"]),
        );
        let up = wait_until(Duration::from_secs(60), || {
            d.assert_running();
            http_unix(&sock, "/_ping").is_some_and(|r| r.ends_with("OK"))
        });
        if !up {
            panic!("dockerd did not come up:\n{}", tail(&d.log));
        }
        Dockerd {
            daemon: Some(d),
            dir,
            networks: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// `unix:///…/docker.sock`
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Creates the bridge network `name` and returns its gateway address:
    /// compile containers on it reach the host only there (where the test
    /// puts the Maven mirror), as on a build host's firewalled network.
    pub fn create_network(&self, name: &str) -> String {
        must(&mut self.cli(&["network", "create", name]));
        self.networks
            .lock()
            .expect("networks lock")
            .push(name.to_string());
        let out = must(&mut self.cli(&[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
            name,
        ]));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A `docker` CLI command against this daemon (tests drive/observe with it).
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        c.arg("-H").arg(self.host()).args(args);
        c
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        for n in self
            .networks
            .get_mut()
            .map(std::mem::take)
            .unwrap_or_default()
        {
            let _ = self.cli(&["network", "rm", &n]).output();
        }
        self.daemon.take();
        // Overlay mounts of killed containers would make remove_dir_all fail.
        let _ = Command::new("umount")
            .arg("-R")
            .arg("-l")
            .arg(self.dir.join("data"))
            .stderr(std::process::Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A real Docker Distribution registry on a free loopback port.
#[derive(Debug)]
pub struct Registry {
    _daemon: Daemon,
    dir: PathBuf,
    port: u16,
}

impl Registry {
    pub fn start() -> Registry {
        Self::start_with("")
    }

    /// `extra` is appended to the generated config.yml as top-level YAML
    /// (e.g. an `auth:` or `notifications:` section).
    pub fn start_with(extra: &str) -> Registry {
        require_bin("docker-registry", "docker-registry");
        let dir = new_dir("registry");
        let port = free_port();
        let conf = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: testenv-secret\n{extra}\n",
            dir.join("data").display()
        );
        let conf_path = dir.join("config.yml");
        fs::write(&conf_path, conf).expect("write registry config");
        let mut d = Daemon::spawn(
            "registry",
            &dir,
            Command::new("docker-registry").arg("serve").arg(&conf_path),
        );
        let up = wait_until(Duration::from_secs(20), || {
            d.assert_running();
            http_tcp(port, "/v2/").is_some()
        });
        if !up {
            panic!("registry did not come up:\n{}", tail(&d.log));
        }
        Registry {
            _daemon: d,
            dir,
            port,
        }
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// GET on the registry's HTTP API; `(status line, body)`.
    pub fn get(&self, path: &str) -> Option<String> {
        http_tcp(self.port, path)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn http_unix(sock: &Path, path: &str) -> Option<String> {
    let mut s = UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    http_exchange(&mut s, path)
}

fn http_tcp(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    http_exchange(&mut s, path)
}

fn http_exchange(s: &mut (impl Read + Write), path: &str) -> Option<String> {
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/").then_some(out)
}

/// A minimal root filesystem: busybox-static with every applet linked, plus
/// the directories a container runtime mounts over. For `podman --rootfs`.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let busybox = require_bin("busybox", "busybox-static");
    let root = dir.join("rootfs");
    for d in [
        "bin", "etc", "proc", "sys", "dev", "tmp", "run", "var", "root",
    ] {
        fs::create_dir_all(root.join(d)).expect("mkdir rootfs");
    }
    fs::copy(&busybox, root.join("bin/busybox")).expect("copy busybox");
    let list = must(Command::new(&busybox).arg("--list"));
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = root.join("bin").join(applet);
        if applet != "busybox" && !link.exists() {
            std::os::unix::fs::symlink("busybox", link).expect("link applet");
        }
    }
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
    root
}

/// Builds `FROM scratch` + busybox as `tag` in `dockerd` (nothing is pulled).
pub fn build_busybox_image(dockerd: &Dockerd, tag: &str) {
    let ctx = new_dir("bbctx");
    busybox_rootfs(&ctx);
    fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY rootfs/ /\nCMD [\"/bin/sh\"]\n",
    )
    .expect("write Dockerfile");
    let ctx_s = ctx.to_string_lossy().into_owned();
    must(&mut dockerd.cli(&["build", "-q", "-t", tag, &ctx_s]));
    let _ = fs::remove_dir_all(&ctx);
}

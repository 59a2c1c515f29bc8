use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::run::{free_port, must, new_dir, require_bin, signal, tail, wait_until, Daemon};

/// What a config renderer gets: the prefix dir, a free port for the test's
/// `listen`, and the lines every LeEngine nginx config needs.
#[derive(Debug)]
pub struct NginxCtx {
    pub prefix: PathBuf,
    pub port: u16,
}

impl NginxCtx {
    /// Main-context lines loading the lua module (Debian's ndk + lua .so).
    pub fn main_preamble(&self) -> String {
        "load_module /usr/lib/nginx/modules/ndk_http_module.so;\n\
         load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;\n"
            .to_string()
    }

    /// `http {}` lines: temp paths inside the prefix (Debian's defaults point
    /// at /var/lib/nginx) and the lua package path for resty.core.
    pub fn http_preamble(&self) -> String {
        let p = self.prefix.display();
        format!(
            "client_body_temp_path {p}/tmp/body;\n\
             proxy_temp_path {p}/tmp/proxy;\n\
             fastcgi_temp_path {p}/tmp/fastcgi;\n\
             uwsgi_temp_path {p}/tmp/uwsgi;\n\
             scgi_temp_path {p}/tmp/scgi;\n\
             access_log {p}/logs/access.log;\n\
             lua_package_path \"/usr/share/lua/5.1/?.lua;;\";\n"
        )
    }
}

/// A real nginx (with the lua module available) running a config the test
/// renders. The config must not set `daemon` or `pid`: those are given on
/// the command line so the process stays ours.
#[derive(Debug)]
pub struct Nginx {
    daemon: Option<Daemon>,
    ctx: NginxCtx,
}

impl Nginx {
    pub fn start(render: impl FnOnce(&NginxCtx) -> String) -> Nginx {
        require_bin("nginx", "nginx");
        let prefix = new_dir("nginx");
        for d in ["logs", "tmp", "conf"] {
            fs::create_dir_all(prefix.join(d)).expect("mkdir");
        }
        let ctx = NginxCtx {
            prefix,
            port: free_port(),
        };
        let conf = render(&ctx);
        fs::write(ctx.prefix.join("conf/nginx.conf"), conf).expect("write nginx.conf");
        let mut n = Nginx { daemon: None, ctx };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let mut cmd = self.base_cmd();
        cmd.arg("-g").arg(format!(
            "daemon off; pid {}; error_log {}/logs/error.log;",
            self.pid_file().display(),
            self.ctx.prefix.display()
        ));
        let mut d = Daemon::spawn("nginx", &self.ctx.prefix, &mut cmd);
        let port = self.ctx.port;
        let pid_file = self.pid_file();
        let up = wait_until(Duration::from_secs(10), || {
            d.assert_running();
            pid_file.exists() && TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if !up {
            panic!("nginx did not come up:\n{}", tail(&d.log));
        }
        self.daemon = Some(d);
    }

    fn base_cmd(&self) -> Command {
        let mut c = Command::new("nginx");
        c.arg("-p")
            .arg(&self.ctx.prefix)
            .arg("-c")
            .arg(self.conf_path());
        c
    }

    pub fn ctx(&self) -> &NginxCtx {
        &self.ctx
    }

    pub fn port(&self) -> u16 {
        self.ctx.port
    }

    pub fn prefix(&self) -> &Path {
        &self.ctx.prefix
    }

    pub fn conf_path(&self) -> PathBuf {
        self.ctx.prefix.join("conf/nginx.conf")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.ctx.prefix.join("nginx.pid")
    }

    pub fn master_pid(&self) -> u32 {
        self.daemon.as_ref().expect("nginx running").pid()
    }

    /// PIDs of the current worker processes (they change on reload).
    pub fn worker_pids(&self) -> Vec<u32> {
        worker_pids(self.master_pid())
    }

    /// Rewrites the config and reloads (SIGHUP), after `nginx -t` passes.
    pub fn reload_with(&self, conf: &str) {
        fs::write(self.conf_path(), conf).expect("write nginx.conf");
        must(self.base_cmd().arg("-t"));
        signal(self.master_pid(), libc::SIGHUP);
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.daemon.take();
        let _ = fs::remove_dir_all(&self.ctx.prefix);
    }
}

/// PIDs of the worker processes of the nginx master `master`. A reload
/// replaces them; an upstream hot-swap must not.
pub fn worker_pids(master: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let ppid: Option<u32> = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
        if ppid == Some(master) && String::from_utf8_lossy(&cmd).contains("worker process") {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

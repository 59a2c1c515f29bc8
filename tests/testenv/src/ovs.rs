use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::netns::Netns;
use crate::run::{must, new_dir, require_bin, tail, unique_name, wait_until, Daemon};

/// ovsdb-server + ovs-vswitchd (userspace datapath) with a private database,
/// `ovs-vswitchd` running inside its own host namespace (see the crate doc).
#[derive(Debug)]
pub struct Ovs {
    // Declared first: daemons stop before the namespace and dir go.
    vswitchd: Option<Daemon>,
    ovsdb: Option<Daemon>,
    netns: Netns,
    dir: PathBuf,
}

impl Ovs {
    pub fn start() -> Ovs {
        require_bin("ovsdb-server", "openvswitch-switch");
        require_bin("ovs-vswitchd", "openvswitch-switch");
        require_bin("ovs-vsctl", "openvswitch-switch");
        let dir = new_dir("ovs");
        let db = dir.join("conf.db");
        must(
            Command::new("ovsdb-tool")
                .arg("create")
                .arg(&db)
                .arg("/usr/share/openvswitch/vswitch.ovsschema"),
        );
        let sock = dir.join("db.sock");
        let mut ovsdb = Daemon::spawn(
            "ovsdb-server",
            &dir,
            Command::new("ovsdb-server")
                .arg(&db)
                .arg(format!("--remote=punix:{}", sock.display()))
                .arg(format!("--unixctl={}", dir.join("ovsdb.ctl").display()))
                .arg(format!("--pidfile={}", dir.join("ovsdb.pid").display())),
        );
        if !wait_until(Duration::from_secs(10), || {
            ovsdb.assert_running();
            sock.exists()
        }) {
            panic!(
                "ovsdb-server did not create its socket:\n{}",
                tail(&ovsdb.log)
            );
        }
        let netns = Netns::named(&unique_name("ovsh"));
        let mut ovs = Ovs {
            vswitchd: None,
            ovsdb: Some(ovsdb),
            netns,
            dir,
        };
        ovs.vsctl(&["--no-wait", "init"]);
        let vswitchd = Daemon::spawn(
            "ovs-vswitchd",
            &ovs.dir,
            ovs.netns
                .command(&["ovs-vswitchd"])
                .arg(format!("unix:{}", sock.display()))
                .arg("--disable-system")
                .arg(format!(
                    "--unixctl={}",
                    ovs.dir.join("vswitchd.ctl").display()
                ))
                .arg(format!(
                    "--pidfile={}",
                    ovs.dir.join("vswitchd.pid").display()
                )),
        );
        ovs.vswitchd = Some(vswitchd);
        // A round trip that waits for ovs-vswitchd to apply the config.
        ovs.vsctl(&["set", "Open_vSwitch", ".", "external_ids:testenv=1"]);
        ovs
    }

    /// `unix:/path/db.sock`, the form OVSDB clients take.
    pub fn db_url(&self) -> String {
        format!("unix:{}", self.db_sock().display())
    }

    pub fn db_sock(&self) -> PathBuf {
        self.dir.join("db.sock")
    }

    /// The host namespace `ovs-vswitchd` runs in.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A command that runs in the host namespace (run the CNI plugin or the
    /// node-agent this way so they see the bridge's ports).
    pub fn command(&self, argv: &[&str]) -> Command {
        self.netns.command(argv)
    }

    /// `ovs-vsctl` against this instance; panics when it fails.
    pub fn vsctl(&self, args: &[&str]) -> String {
        let out = must(&mut self.vsctl_cmd(args));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `ovs-vsctl` against this instance, unchecked.
    pub fn try_vsctl(&self, args: &[&str]) -> Output {
        self.vsctl_cmd(args).output().expect("run ovs-vsctl")
    }

    fn vsctl_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ovs-vsctl");
        c.arg(format!("--db={}", self.db_url()))
            .arg("--timeout=20")
            .args(args);
        c
    }

    /// A new `datapath_type=netdev` bridge with a unique name.
    pub fn add_bridge(&self) -> String {
        let name = unique_name("br");
        self.add_bridge_named(&name);
        name
    }

    pub fn add_bridge_named(&self, name: &str) {
        self.vsctl(&[
            "add-br",
            name,
            "--",
            "set",
            "bridge",
            name,
            "datapath_type=netdev",
        ]);
        must(&mut self.command(&["ip", "link", "set", name, "up"]));
    }

    /// Kills ovsdb-server (clients then see the database as unreachable).
    pub fn stop_db(&mut self) {
        if let Some(mut d) = self.ovsdb.take() {
            d.kill9();
        }
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        self.vswitchd.take();
        self.ovsdb.take();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

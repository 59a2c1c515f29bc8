//! cgroup v1 roots for test kubelets (`--cgroup-root`), and the teardown of
//! everything a node ran in them: a killed runtime leaves its containers
//! running, so a node is only gone when its cgroups are empty.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::run::{record, signal, wait_until};

const MOUNT: &str = "/sys/fs/cgroup";

/// Every cgroup hierarchy mounted under /sys/fs/cgroup (v1 controllers, the
/// named `systemd` one and the hybrid `unified`).
fn hierarchies() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(MOUNT)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    out.retain(|p| p.join("cgroup.procs").exists());
    out.sort();
    out
}

/// Creates `/NAME` in every hierarchy (kubelet wants its cgroup root to
/// exist) and records it for the reaper. A new v1 cpuset starts with no CPUs
/// or memory nodes, so those are copied from the top.
pub(crate) fn create_root(name: &str) -> String {
    let root = format!("/{name}");
    record("cgroups", &root);
    for h in hierarchies() {
        let dir = h.join(name);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        for knob in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = fs::read_to_string(h.join(knob)) {
                fs::write(dir.join(knob), v.trim()).expect("init cpuset");
            }
        }
    }
    root
}

fn tasks_below(dir: &Path, out: &mut HashSet<u32>) {
    if let Ok(s) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if let Ok(d) = fs::read_dir(dir) {
        for e in d.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                tasks_below(&e.path(), out);
            }
        }
    }
}

/// The PIDs in `root` and below, across hierarchies.
pub(crate) fn tasks(root: &str) -> HashSet<u32> {
    let mut out = HashSet::new();
    for h in hierarchies() {
        tasks_below(&h.join(root.trim_start_matches('/')), &mut out);
    }
    out
}

/// Network-namespace inodes held by `pids`.
fn netns_inodes(pids: &HashSet<u32>) -> HashSet<u64> {
    pids.iter()
        .filter_map(|p| fs::metadata(format!("/proc/{p}/ns/net")).ok())
        .map(|m| m.ino())
        .collect()
}

/// Unmounts and removes the `/run/netns` entries whose namespace is one of
/// `inodes` (the pod namespaces a runtime made for the killed containers).
fn remove_netns(inodes: &HashSet<u64>) {
    let Ok(d) = fs::read_dir("/run/netns") else {
        return;
    };
    for e in d.flatten() {
        let ino = fs::metadata(e.path()).map(|m| m.ino()).unwrap_or(0);
        if inodes.contains(&ino) {
            let _ = Command::new("umount")
                .arg(e.path())
                .stderr(Stdio::null())
                .status();
            let _ = fs::remove_file(e.path());
        }
    }
}

/// SIGKILLs every process in `root`, removes their pod namespaces, and —
/// with `remove` — the cgroup directories themselves (deepest first).
pub(crate) fn kill_all(root: &str, remove: bool) {
    let pids = tasks(root);
    let inodes = netns_inodes(&pids);
    for p in &pids {
        signal(*p, libc::SIGKILL);
    }
    wait_until(Duration::from_secs(10), || tasks(root).is_empty());
    remove_netns(&inodes);
    if remove {
        for h in hierarchies() {
            rmdir_tree(&h.join(root.trim_start_matches('/')));
        }
    }
}

fn rmdir_tree(dir: &Path) {
    if let Ok(d) = fs::read_dir(dir) {
        for e in d.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                rmdir_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

//! Host-local serialisation of every party touching one attachment: the
//! CNI plugin's ADD/DEL/CHECK/GC and the node-agent's reclaim.

use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// Where the lock files live (tmpfs: nothing survives a reboot, nor should it).
pub const LOCK_DIR: &str = "/run/leengine-cni";

/// The lock of one attachment, held until dropped.
pub type Guard = Flock<File>;

#[derive(Debug, thiserror::Error)]
#[error("cannot lock {}: {source}", path.display())]
pub struct LockError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Blocks until no other caller holds this attachment's stripe. 256 stripes
/// keyed by the host veth name's hash keep the number of files bounded;
/// two attachments sharing a stripe merely wait for each other.
pub fn attachment(container_id: &str, ifname: &str) -> Result<Guard, LockError> {
    attachment_in(Path::new(LOCK_DIR), container_id, ifname)
}

/// [`attachment`] for async callers: the wait happens off the runtime's threads.
pub async fn attachment_async(container_id: &str, ifname: &str) -> Result<Guard, LockError> {
    let (cid, ifname) = (container_id.to_string(), ifname.to_string());
    tokio::task::spawn_blocking(move || attachment(&cid, &ifname))
        .await
        .map_err(|e| LockError {
            path: LOCK_DIR.into(),
            source: std::io::Error::other(e),
        })?
}

fn attachment_in(dir: &Path, container_id: &str, ifname: &str) -> Result<Guard, LockError> {
    let io = |path: &Path, source| LockError {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let path = dir.join(format!("{}.lock", stripe(container_id, ifname)));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io(&path, e))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io(&path, e.into()))
}

/// Two hex digits of the host veth name's hash.
fn stripe(container_id: &str, ifname: &str) -> String {
    leengine_netdp::host_veth_name(container_id, ifname)[2..4].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_stripe_blocks_every_other_holder_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let held = attachment_in(dir.path(), "c1", "eth0").unwrap();
        let path = dir.path().join(format!("{}.lock", stripe("c1", "eth0")));
        let other = || {
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok()
        };
        assert!(!other(), "a second holder got the lock");
        drop(held);
        assert!(other(), "the lock outlived its guard");
    }

    #[test]
    fn an_unusable_lock_dir_is_a_precise_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        let e = attachment_in(&file, "c1", "eth0").unwrap_err();
        assert!(e.to_string().starts_with("cannot lock "), "{e}");
        assert!(e.to_string().contains("not-a-dir"), "{e}");
    }
}

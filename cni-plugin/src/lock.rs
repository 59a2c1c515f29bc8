//! Host-local serialisation of calls for one attachment.

use crate::error::{CniError, CniResult, IO_FAILURE};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};

/// Where the lock files live (tmpfs: nothing survives a reboot, nor should it).
pub const LOCK_DIR: &str = "/run/leengine-cni";

/// Blocks until no other call holds this attachment's stripe. 256 stripes
/// keyed by the host veth name's hash keep the number of files bounded;
/// two attachments sharing a stripe merely wait for each other.
pub fn attachment(container_id: &str, ifname: &str) -> CniResult<Flock<File>> {
    let io = |what: &str, e: std::io::Error| {
        CniError::new(IO_FAILURE, format!("lock {what}")).with_details(e.to_string())
    };
    std::fs::create_dir_all(LOCK_DIR).map_err(|e| io(LOCK_DIR, e))?;
    let name = leengine_netdp::host_veth_name(container_id, ifname);
    let path = format!("{LOCK_DIR}/{}.lock", &name[2..4]);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io(&path, e))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io(&path, e.into()))
}

use crate::{NetdpError, Result};
use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

/// An open handle on a network namespace (a bind-mounted nsfs file such as
/// `/run/netns/NAME` or `/proc/PID/ns/net`). Holding it keeps the namespace
/// alive, so later calls cannot race with its removal.
#[derive(Debug)]
pub struct NetnsFile {
    path: PathBuf,
    file: File,
}

impl NetnsFile {
    pub fn open(path: &Path) -> Result<Self> {
        match File::open(path) {
            Ok(file) => Ok(Self {
                path: path.to_path_buf(),
                file,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(NetdpError::NetnsMissing(path.to_path_buf()))
            }
            Err(source) => Err(NetdpError::Netns {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn try_clone(&self) -> Result<Self> {
        Ok(Self {
            path: self.path.clone(),
            file: self.file.try_clone().map_err(|source| NetdpError::Netns {
                path: self.path.clone(),
                source,
            })?,
        })
    }
}

/// Runs `f` on a fresh thread that has entered `ns`, then returns the thread
/// to its original namespace. Sockets `f` opens stay bound to `ns` for their
/// whole life, which is how a netlink socket "inside" a pod is made.
pub fn in_netns<T, F>(ns: &NetnsFile, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns = ns.try_clone()?;
    std::thread::spawn(move || enter_and_run(&ns, f))
        .join()
        .map_err(|_| NetdpError::ThreadPanicked)?
}

/// [`in_netns`] without blocking the async runtime while `f` runs.
pub async fn in_netns_async<T, F>(ns: &NetnsFile, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns = ns.try_clone()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(enter_and_run(&ns, f));
    });
    rx.await.map_err(|_| NetdpError::ThreadPanicked)?
}

fn enter_and_run<T>(ns: &NetnsFile, f: impl FnOnce() -> T) -> Result<T> {
    let io = |source: std::io::Error| NetdpError::Netns {
        path: ns.path.clone(),
        source,
    };
    let original = File::open("/proc/thread-self/ns/net").map_err(io)?;
    setns(ns.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| io(e.into()))?;
    let out = f();
    // The thread ends right after this, but going back keeps the contract
    // "only f ran in the pod" even if a caller later reuses this helper.
    if let Err(e) = setns(original.as_fd(), CloneFlags::CLONE_NEWNET) {
        tracing::warn!(error = %e, "cannot return helper thread to its netns");
    }
    Ok(out)
}

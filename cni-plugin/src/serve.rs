//! The node-agent's CNI service: the plugin's work, done in a long-lived
//! process that keeps its etcd and OVSDB sessions warm (as Calico's,
//! Cilium's and Kube-OVN's node daemons do), reached by the plugin over a
//! unix socket ([`crate::relay`]).
//!
//! A call here is the same code as a call in the plugin process — the same
//! parse, the same attachment lock, the same rollback — with two
//! differences that follow from the process: sessions come from
//! [`Sessions::warm`], and the gratuitous ARPs are a task here rather than
//! a detached process. A configuration without `hostNetns` means "the
//! namespace the plugin runs in": the caller's, which the socket tells.

use crate::backend::Sessions;
use crate::cmd_del::Tail;
use crate::relay::{Reply, Request, MAX_MESSAGE};
use crate::{attachment, execute, prepare, respond, version};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

#[derive(Debug, thiserror::Error)]
#[error("CNI service socket {}: {source}", path.display())]
pub struct BindError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Listens at `path`, readable and writable by root only: whoever can
/// connect can attach and detach pods. A socket left by an earlier run is
/// replaced (one agent per node).
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let io = |source| BindError {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    let l = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(l)
}

/// Answers calls until `stop` completes; each call is its own task, so a
/// slow one (a lock held by another call) holds up no other. On stop the
/// socket is removed first (a plugin then runs its calls itself) and the
/// calls under way are finished, not cut.
pub async fn serve(
    listener: UnixListener,
    sessions: Arc<Sessions>,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut calls = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let sessions = sessions.clone();
                    calls.spawn(async move {
                        if let Err(e) = handle(stream, &sessions).await {
                            tracing::warn!(error = %e, "CNI call over the socket failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "CNI service: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            // Reaps finished calls so the set does not grow.
            Some(_) = calls.join_next(), if !calls.is_empty() => {}
        }
    }
    if let Ok(addr) = listener.local_addr() {
        if let Some(path) = addr.as_pathname() {
            let _ = std::fs::remove_file(path);
        }
    }
    drop(listener);
    while calls.join_next().await.is_some() {}
}

async fn handle(mut stream: UnixStream, sessions: &Sessions) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    // Only a caller as privileged as this process may attach pods.
    if cred.uid() != 0 && cred.uid() != nix::unistd::geteuid().as_raw() {
        return Err(std::io::Error::other(format!(
            "caller uid {} refused",
            cred.uid()
        )));
    }
    let mut body = Vec::new();
    (&mut stream)
        .take(MAX_MESSAGE)
        .read_to_end(&mut body)
        .await?;
    let req: Request = serde_json::from_slice(&body).map_err(std::io::Error::other)?;
    tracing::debug!(pid = ?cred.pid(), "CNI call received");
    let caller_netns = cred.pid().and_then(caller_netns);
    let (output, status, rest) = answer(&req, caller_netns, sessions).await;
    let reply = serde_json::to_vec(&Reply { output, status }).map_err(std::io::Error::other)?;
    let sent = async {
        stream.write_all(&reply).await?;
        stream.shutdown().await
    }
    .await;
    // Finished whether or not the caller still listens, the lock held.
    if let Some((_guard, tail)) = rest {
        tail.await;
    }
    sent
}

/// A call's lock and the work it still has to finish.
type Rest = (Option<leengine_attach::lock::Guard>, Tail);

/// One call, as [`crate::answer`] would answer it in the plugin process,
/// and what is left to finish after the answer.
pub async fn answer(
    req: &Request,
    caller_netns: Option<PathBuf>,
    sessions: &Sessions,
) -> (serde_json::Value, u8, Option<Rest>) {
    let stdin = req.config.as_bytes();
    let mut rest = None;
    let outcome = async {
        let Some((env, mut conf)) = prepare(|k| req.env.get(k).cloned(), stdin)? else {
            return Ok(version::version_info());
        };
        if conf.host_netns.is_none() {
            conf.host_netns = caller_netns;
        }
        let guard = match attachment(&env) {
            Some((c, i)) => Some(leengine_attach::lock::attachment_async(c, i).await?),
            None => None,
        };
        let (out, tail) = execute(&env, &conf, sessions).await?;
        rest = tail.map(|t| (guard, t));
        Ok(out)
    }
    .await;
    let (out, status) = respond(stdin, outcome);
    (out, status, rest)
}

/// The caller's network namespace when it is not this process's (`None`:
/// the same, which this process's own netlink sockets already reach).
fn caller_netns(pid: i32) -> Option<PathBuf> {
    let theirs = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    match (id(&theirs), id(Path::new("/proc/self/ns/net"))) {
        (Some(a), Some(b)) if a != b => Some(theirs),
        _ => None,
    }
}

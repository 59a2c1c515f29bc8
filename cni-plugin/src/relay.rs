//! The plugin as a thin client of the node-agent's CNI service: the call's
//! `CNI_*` variables and configuration go over the unix socket, the answer
//! comes back as what to print and the exit status. One call per
//! connection; the service closes it once it has answered.
//!
//! Nothing listening (no agent on this node, or one restarting) is not an
//! error: the call runs in this process with the same code, only without
//! warm sessions. A service that took the call and then went away is one:
//! the work may be half done, which the runtime's DEL (or retried ADD)
//! finishes — as after a plugin process killed mid-call.

use crate::config;
use crate::env::Command;
use crate::error::{CniError, CniResult, TRY_AGAIN_LATER};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// The largest request or reply either side reads (a GC's list of valid
/// attachments at ten thousand pods is well under it).
pub const MAX_MESSAGE: u64 = 16 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// The caller's `CNI_*` variables.
    pub env: BTreeMap<String, String>,
    /// The network configuration as read from stdin.
    pub config: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    /// What the plugin prints (`null`: nothing).
    pub output: Value,
    /// Its exit status.
    pub status: u8,
}

#[derive(Debug)]
pub enum Relayed {
    Answer(Value, u8),
    /// Nobody accepted the call: run it here.
    NotServing,
}

/// The socket a call goes to: VERSION never does (it needs no
/// configuration), nor a configuration that does not parse (its error is
/// the same here), nor one without `agentSocket`.
pub fn target(get: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Option<PathBuf> {
    let cmd = get("CNI_COMMAND").and_then(|c| Command::parse(&c))?;
    if cmd == Command::Version {
        return None;
    }
    config::parse(stdin).ok()?.agent_socket
}

/// Hands the call to the service at `socket`.
pub fn call(socket: &Path, stdin: &[u8]) -> CniResult<Relayed> {
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(socket = %socket.display(), error = %e, "CNI service not there: running here");
            return Ok(Relayed::NotServing);
        }
    };
    tracing::debug!(socket = %socket.display(), "relaying the call");
    let req = Request {
        env: std::env::vars()
            .filter(|(k, _)| k.starts_with("CNI_"))
            .collect(),
        // `target` parsed it, so it is JSON, hence UTF-8.
        config: String::from_utf8_lossy(stdin).into_owned(),
    };
    let lost = |what: &str, e: &dyn std::fmt::Display| {
        CniError::new(
            TRY_AGAIN_LATER,
            format!("node-agent CNI service at {}: {what}", socket.display()),
        )
        .with_details(e.to_string())
    };
    let body = serde_json::to_vec(&req).map_err(|e| lost("cannot encode the call", &e))?;
    stream
        .write_all(&body)
        .and_then(|()| stream.shutdown(std::net::Shutdown::Write))
        .map_err(|e| lost("cannot send the call", &e))?;
    let mut answer = Vec::new();
    stream
        .take(MAX_MESSAGE)
        .read_to_end(&mut answer)
        .map_err(|e| lost("lost before answering", &e))?;
    let reply: Reply = serde_json::from_slice(&answer)
        .map_err(|e| lost("closed the call without an answer", &e))?;
    tracing::debug!(status = reply.status, "answered by the CNI service");
    Ok(Relayed::Answer(reply.output, reply.status))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: &str) -> Vec<u8> {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"n","type":"leengine","bridge":"br0",
                "etcd":{{"endpoints":["https://127.0.0.1:2379"]}}{extra}}}"#
        )
        .into_bytes()
    }

    fn env(cmd: &'static str) -> impl Fn(&str) -> Option<String> {
        move |k| (k == "CNI_COMMAND").then(|| cmd.to_string())
    }

    #[test]
    fn a_configured_socket_takes_every_call_but_version() {
        let c = conf(r#","agentSocket":"/run/leengine/cni.sock""#);
        for cmd in ["ADD", "DEL", "CHECK", "STATUS", "GC"] {
            assert_eq!(
                target(env(cmd), &c),
                Some(PathBuf::from("/run/leengine/cni.sock")),
                "{cmd}"
            );
        }
        assert_eq!(target(env("VERSION"), &c), None);
    }

    #[test]
    fn without_a_socket_or_a_valid_config_the_call_runs_here() {
        assert_eq!(target(env("ADD"), &conf("")), None);
        assert_eq!(target(env("ADD"), b"{not json"), None);
        assert_eq!(target(env("BOGUS"), &conf("")), None);
    }

    #[test]
    fn nothing_listening_means_not_serving() {
        let dir = tempfile::tempdir().unwrap();
        let got = call(&dir.path().join("absent.sock"), &conf("")).unwrap();
        assert!(matches!(got, Relayed::NotServing), "{got:?}");
    }

    #[test]
    fn a_service_that_hangs_up_without_answering_is_try_again_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).unwrap();
            // Gone before answering, as a killed agent would be.
        });
        let e = call(&path, &conf("")).unwrap_err();
        t.join().unwrap();
        assert_eq!(e.code, TRY_AGAIN_LATER);
        assert!(e.msg.contains("without an answer"), "{}", e.msg);
    }
}

//! `leengine-cni`: the CNI plugin of type `leengine` (see docs/cni-plugin.md).
//!
//! Reads `CNI_*` from the environment and the network configuration from
//! stdin, prints the result (or a CNI error object) on stdout and exits 0
//! (or 1), exactly as libcni expects. The work runs in this process or, when
//! the configuration names an `agentSocket` the node-agent listens on, in
//! the node-agent's warm CNI service ([`serve`]), this process relaying.

pub mod backend;
pub mod cmd_add;
pub mod cmd_check;
pub mod cmd_del;
pub mod cmd_gc;
pub mod cmd_status;
pub mod config;
pub mod env;
pub mod error;
pub mod garp_follow;
pub mod relay;
pub mod result;
pub mod serve;
pub mod version;

use backend::Sessions;
use config::NetConf;
use env::CniEnv;
use error::{CniError, INCOMPATIBLE_VERSION, IO_FAILURE};
use serde_json::Value;

/// Answers one call: what to print on stdout (`Null`: nothing) and the
/// exit status. A configured `agentSocket` where the node-agent listens
/// takes the call; otherwise it runs here.
pub fn answer(stdin: std::io::Result<Vec<u8>>) -> (Value, u8) {
    let stdin = match stdin {
        Ok(bytes) => bytes,
        Err(e) => {
            let e = CniError::new(IO_FAILURE, "cannot read stdin").with_details(e.to_string());
            return respond(&[], Err(e));
        }
    };
    if let Some(socket) = relay::target(|k| std::env::var(k).ok(), &stdin) {
        match relay::call(&socket, &stdin) {
            Ok(relay::Relayed::Answer(out, code)) => return (out, code),
            Ok(relay::Relayed::NotServing) => {}
            Err(e) => return respond(&stdin, Err(e)),
        }
    }
    let outcome = run(&stdin);
    respond(&stdin, outcome)
}

/// What a call prints and its exit status. A failure is a CNI error object
/// in the config's version (or the latest one we speak when the config
/// cannot say).
pub fn respond(stdin: &[u8], outcome: Result<Value, CniError>) -> (Value, u8) {
    match outcome {
        Ok(v) => (v, 0),
        Err(e) => {
            tracing::warn!(code = e.code, msg = %e.msg, details = %e.details, "CNI call failed");
            let v = config::peek_version(stdin)
                .filter(|v| version::is_supported(v))
                .unwrap_or_else(|| version::LATEST.to_string());
            (e.to_json(&v), 1)
        }
    }
}

/// Dispatches one CNI call in this process; `Value::Null` means "print
/// nothing" (DEL, GC, STATUS).
pub fn run(stdin: &[u8]) -> Result<Value, CniError> {
    let Some((env, conf)) = prepare(|k| std::env::var(k).ok(), stdin)? else {
        return Ok(version::version_info());
    };
    let _guard = match attachment(&env) {
        Some((c, i)) => Some(leengine_attach::lock::attachment(c, i)?),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CniError::new(IO_FAILURE, "cannot start the async runtime").with_details(e.to_string())
        })?;
    rt.block_on(async {
        let (out, tail) = execute(&env, &conf, &Sessions::cold()).await?;
        if let Some(tail) = tail {
            tail.await;
        }
        Ok(out)
    })
}

/// The call's environment and configuration, checked against each other;
/// `None` for VERSION, which needs neither.
pub fn prepare(
    get: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<Option<(CniEnv, NetConf)>, CniError> {
    let env = env::parse_env(get)?;
    if env.command == env::Command::Version {
        return Ok(None);
    }
    let conf = config::parse(stdin)?;
    let need = match env.command {
        env::Command::Check => Some("0.4.0"),
        env::Command::Status | env::Command::Gc => Some("1.1.0"),
        _ => None,
    };
    if let Some(min) = need {
        if !version::at_least(&conf.cni_version, min) {
            return Err(CniError::new(
                INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {} does not allow {:?} (needs {min} or later)",
                    conf.cni_version, env.command
                ),
            ));
        }
    }
    Ok(Some((env, conf)))
}

/// The attachment whose lock the call holds: ADD/DEL/CHECK of the same
/// (container, ifname) never interleave, whatever order the runtime fires
/// them in. GC spans attachments and takes each one's lock itself.
pub fn attachment(env: &CniEnv) -> Option<(&str, &str)> {
    match (&env.container_id, &env.ifname) {
        (Some(c), Some(i)) if env.command != env::Command::Gc => Some((c, i)),
        _ => None,
    }
}

/// Runs a prepared call (its attachment's lock held by the caller): the
/// answer, and what is to be finished after it under the same lock (only
/// from warm sessions: DEL's [`cmd_del::Tail`]).
pub async fn execute(
    env: &CniEnv,
    conf: &NetConf,
    s: &Sessions,
) -> Result<(Value, Option<cmd_del::Tail>), CniError> {
    let done = |()| (Value::Null, None);
    match env.command {
        env::Command::Add => cmd_add::add(env, conf, s).await.map(|v| (v, None)),
        env::Command::Del => cmd_del::del(env, conf, s).await.map(|t| (Value::Null, t)),
        env::Command::Check => cmd_check::check(env, conf, s).await.map(done),
        env::Command::Status => cmd_status::status(conf, s).await.map(done),
        env::Command::Gc => cmd_gc::gc(conf, s).await.map(done),
        env::Command::Version => Ok((version::version_info(), None)),
    }
}

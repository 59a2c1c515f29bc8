//! `leengine-cni`: the CNI plugin of type `leengine` (see docs/cni-plugin.md).
//!
//! Reads `CNI_*` from the environment and the network configuration from
//! stdin, prints the result (or a CNI error object) on stdout and exits 0
//! (or 1), exactly as libcni expects.

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
pub mod result;
pub mod version;

use error::{CniError, INCOMPATIBLE_VERSION, IO_FAILURE};
use serde_json::Value;

/// Answers one call: what to print on stdout (`Null`: nothing) and the
/// exit status. A failure is a CNI error object in the config's version
/// (or the latest one we speak when the config cannot say).
pub fn answer(stdin: std::io::Result<Vec<u8>>) -> (Value, u8) {
    let (stdin, outcome) = match stdin {
        Ok(bytes) => {
            let outcome = run(&bytes);
            (bytes, outcome)
        }
        Err(e) => (
            Vec::new(),
            Err(CniError::new(IO_FAILURE, "cannot read stdin").with_details(e.to_string())),
        ),
    };
    match outcome {
        Ok(v) => (v, 0),
        Err(e) => {
            tracing::warn!(code = e.code, msg = %e.msg, details = %e.details, "CNI call failed");
            let v = config::peek_version(&stdin)
                .filter(|v| version::is_supported(v))
                .unwrap_or_else(|| version::LATEST.to_string());
            (e.to_json(&v), 1)
        }
    }
}

/// Dispatches one CNI call; `Value::Null` means "print nothing" (DEL, GC, STATUS).
pub fn run(stdin: &[u8]) -> Result<Value, CniError> {
    let env = env::parse_env(|k| std::env::var(k).ok())?;
    if env.command == env::Command::Version {
        return Ok(version::version_info());
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
    // One attachment at a time: ADD/DEL/CHECK of the same (container, ifname)
    // never interleave, whatever order the runtime fires them in.
    let _guard = match (&env.container_id, &env.ifname) {
        (Some(c), Some(i)) if env.command != env::Command::Gc => {
            Some(leengine_attach::lock::attachment(c, i)?)
        }
        _ => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CniError::new(IO_FAILURE, "cannot start the async runtime").with_details(e.to_string())
        })?;
    rt.block_on(async {
        match env.command {
            env::Command::Add => cmd_add::add(&env, &conf).await,
            env::Command::Del => cmd_del::del(&env, &conf).await.map(|()| Value::Null),
            env::Command::Check => cmd_check::check(&env, &conf).await.map(|()| Value::Null),
            env::Command::Status => cmd_status::status(&conf).await.map(|()| Value::Null),
            env::Command::Gc => cmd_gc::gc(&conf).await.map(|()| Value::Null),
            env::Command::Version => Ok(version::version_info()),
        }
    })
}

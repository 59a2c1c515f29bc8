//! `leengine-cni`: the CNI plugin of type `leengine` (see docs/cni-plugin.md).
//!
//! Reads `CNI_*` from the environment and the network configuration from
//! stdin, prints the result (or a CNI error object) on stdout and exits 0
//! (or 1), exactly as libcni expects.

mod backend;
mod cmd_add;
mod cmd_check;
mod cmd_del;
mod cmd_gc;
mod cmd_status;
mod config;
mod env;
mod error;
mod garp_follow;
mod result;
mod version;

use error::{CniError, INCOMPATIBLE_VERSION, IO_FAILURE};
use serde_json::Value;
use std::io::{Read, Write};

fn main() {
    init_logging();
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(garp_follow::ARG) {
        std::process::exit(garp_follow::run(&argv[2..]));
    }
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => run(&stdin),
        Err(e) => Err(CniError::new(IO_FAILURE, "cannot read stdin").with_details(e.to_string())),
    };
    let (out, code) = match outcome {
        Ok(v) => (v, 0),
        Err(e) => {
            tracing::warn!(code = e.code, msg = %e.msg, details = %e.details, "CNI call failed");
            let v = config::peek_version(&stdin)
                .filter(|v| version::is_supported(v))
                .unwrap_or_else(|| version::LATEST.to_string());
            (e.to_json(&v), 1)
        }
    };
    let mut so = std::io::stdout().lock();
    if !out.is_null() {
        let _ = serde_json::to_writer(&mut so, &out);
        let _ = so.write_all(b"\n");
    }
    let _ = so.flush();
    std::process::exit(code);
}

fn init_logging() {
    let filter = std::env::var("LEENGINE_CNI_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// Dispatches one CNI call; `Value::Null` means "print nothing" (DEL, GC, STATUS).
fn run(stdin: &[u8]) -> Result<Value, CniError> {
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

//! `leengine-node-agent`: see the library and docs/node-agent.md.

use std::process::ExitCode;

use leengine_cli::{Exit, Logs, WithExit};
use leengine_node_agent::config::{Args, Config};

const BIN: &str = "leengine-node-agent";

fn main() -> ExitCode {
    let args: Args = match leengine_cli::parse(BIN) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let cfg = match Config::load(args) {
        Ok(c) => c,
        Err(e) => return leengine_cli::finish(BIN, Err(WithExit(Exit::Usage, e))),
    };
    Logs {
        format: cfg.log_format,
        ..Logs::default()
    }
    .init();
    let outcome = leengine_cli::block_on(Some(2), leengine_node_agent::run(cfg))
        .and_then(|r| r)
        .map(|()| Exit::Ok);
    if let Err(e) = &outcome {
        tracing::error!(error = %leengine_cli::one_line(e.as_ref()), "agent failed");
    }
    leengine_cli::finish(BIN, outcome)
}

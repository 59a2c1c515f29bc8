//! `cnictl`: see the library ([`cnictl`]) and docs/cnictl.md.

use std::process::ExitCode;

use cnictl::cli::Cli;
use leengine_cli::Logs;

const BIN: &str = "cnictl";

fn main() -> ExitCode {
    let cli: Cli = match leengine_cli::parse(BIN) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    Logs {
        env: "CNICTL_LOG",
        // kube logs its own connect errors; ours already say it on one line.
        default: "warn,kube_client=off",
        ..Logs::default()
    }
    .init();
    let rt = match leengine_cli::runtime(None) {
        Ok(rt) => rt,
        Err(e) => return leengine_cli::finish(BIN, Err(e)),
    };
    leengine_cli::finish(BIN, rt.block_on(cnictl::run(cli)))
}

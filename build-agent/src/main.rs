//! `leengine-build-agent`: see the library and docs/build.md.

use std::process::ExitCode;

use leengine_build_agent::cli::Args;
use leengine_cli::{Exit, Logs, WithExit};

const BIN: &str = "leengine-build-agent";

fn main() -> ExitCode {
    let args: Args = match leengine_cli::parse(BIN) {
        Ok(a) => a,
        Err(code) => return code,
    };
    Logs::default().init();
    let settings = match args.settings() {
        Ok(s) => s,
        Err(e) => return leengine_cli::finish(BIN, Err(WithExit(Exit::Usage, e))),
    };
    let outcome = leengine_cli::block_on(None, leengine_build_agent::run(settings))
        .and_then(|r| r)
        .map(|()| Exit::Ok);
    leengine_cli::finish(BIN, outcome)
}

//! `leengine-nginx-agent`: see the library and docs/slb.md.

use std::process::ExitCode;

use leengine_cli::{Exit, Logs, WithExit};
use leengine_nginx_agent::cli::Args;

const BIN: &str = "leengine-nginx-agent";

fn main() -> ExitCode {
    Logs::default().init();
    let args: Args = match leengine_cli::parse(BIN) {
        Ok(a) => a,
        Err(code) => return code,
    };
    if let Err(e) = args.validate() {
        return leengine_cli::finish(BIN, Err(WithExit(Exit::Usage, e)));
    }
    let outcome = leengine_cli::block_on(None, leengine_nginx_agent::run(args))
        .and_then(|r| r)
        .map(|()| Exit::Ok);
    leengine_cli::finish(BIN, outcome)
}

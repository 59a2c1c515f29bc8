//! `leengine-discovery`: see the library and docs/discovery.md.

use std::process::ExitCode;

use leengine_cli::{Exit, Logs, WithExit};
use leengine_discovery::Args;

const BIN: &str = "leengine-discovery";

fn main() -> ExitCode {
    let args: Args = match leengine_cli::parse(BIN) {
        Ok(a) => a,
        Err(code) => return code,
    };
    if let Err(e) = args.validate() {
        return leengine_cli::finish(BIN, Err(WithExit(Exit::Usage, e)));
    }
    Logs::default().init();
    let outcome = leengine_cli::block_on(None, leengine_discovery::run(args))
        .and_then(|r| r)
        .map(|()| Exit::Ok);
    leengine_cli::finish(BIN, outcome)
}

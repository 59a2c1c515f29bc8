//! leengine-discovery (docs/discovery.md): a thin shell over the library.

use clap::Parser;
use leengine_discovery::{run, Args};

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // One line: clap's message without its usage block.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            fail(&anyhow::anyhow!("{}", first.trim_start_matches("error: ")))
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => fail(&anyhow::anyhow!("tokio runtime: {e}")),
    };
    if let Err(e) = rt.block_on(run(args)) {
        fail(&e);
    }
}

fn fail(e: &anyhow::Error) -> ! {
    eprintln!("leengine-discovery: {e:#}");
    std::process::exit(1);
}

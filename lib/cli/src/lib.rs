//! What every LeEngine binary does the same way (docs/architecture.md,
//! "Shared mechanisms"): parse flags with clap and condense its errors to
//! one line, print an error and its causes as one line, map typed errors to
//! the shared exit statuses, set up `tracing`, wait for SIGTERM/SIGINT, and
//! print `--version` with the git commit the binary was built from.
//!
//! A binary's `main.rs` is a few lines over these:
//!
//! ```no_run
//! use clap::Parser;
//! use leengine_cli::{Exit, Logs};
//!
//! #[derive(Parser)]
//! #[command(version = leengine_cli::version!())]
//! struct Args {}
//!
//! fn main() -> std::process::ExitCode {
//!     let args: Args = match leengine_cli::parse("leengine-x") {
//!         Ok(a) => a,
//!         Err(code) => return code,
//!     };
//!     Logs::default().init();
//!     leengine_cli::finish("leengine-x", Ok::<_, anyhow::Error>(Exit::Ok))
//! }
//! ```

mod error;
mod logs;
mod signal;

pub use error::{condense_clap, one_line, Exit, Fatal, WithExit};
pub use logs::{LogFormat, Logs};
pub use signal::{Shutdown, Stop};

use std::process::ExitCode;

/// The git commit this library was built from (`unknown` in a tarball
/// build without `.git` and without `LEENGINE_GIT_COMMIT`).
pub const GIT_COMMIT: &str = env!("LEENGINE_GIT_COMMIT");

/// `--version` text: `{package version} (git {commit})`. A macro so that the
/// version is the calling binary's package, not this library's.
#[macro_export]
macro_rules! version {
    () => {
        $crate::version_text(env!("CARGO_PKG_VERSION"))
    };
}

/// The text behind [`version!`]; built once per process.
pub fn version_text(package: &'static str) -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| format!("{package} (git {GIT_COMMIT})"))
}

/// Parses the process arguments. `--help` and `--version` are printed and
/// end the process with 0 (as `Err(SUCCESS)`); a bad flag is one line on
/// stderr and [`Exit::Usage`].
pub fn parse<P: clap::Parser>(bin: &str) -> Result<P, ExitCode> {
    parse_from(bin, std::env::args_os())
}

/// [`parse`] over given arguments (the first is the program name).
pub fn parse_from<P, I, T>(bin: &str, args: I) -> Result<P, ExitCode>
where
    P: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    P::try_parse_from(args).map_err(|e| {
        if e.use_stderr() {
            eprintln!("{bin}: error: {}", condense_clap(&e));
            Exit::Usage.into()
        } else {
            let _ = e.print();
            ExitCode::SUCCESS
        }
    })
}

/// Ends a binary's run: an error becomes `{bin}: error: {one line}` on
/// stderr and its [`Fatal::exit`] status.
pub fn finish<E: Fatal>(bin: &str, outcome: Result<Exit, E>) -> ExitCode {
    match outcome {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprintln!("{bin}: error: {}", e.line());
            e.exit().into()
        }
    }
}

/// A tokio runtime, or the one line saying why there is none.
pub fn runtime(worker_threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = match worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if let Some(n) = worker_threads.filter(|n| *n > 1) {
        b.worker_threads(n);
    }
    b.enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}

/// Runs `fut` on a fresh runtime; once it is done, tasks still running
/// (a blocking call in flight, a background loop) get `SHUTDOWN_GRACE`
/// and are then abandoned, so a stop signal ends the process promptly.
pub fn block_on<F: std::future::Future>(
    worker_threads: Option<usize>,
    fut: F,
) -> anyhow::Result<F::Output> {
    let rt = runtime(worker_threads)?;
    let out = rt.block_on(fut);
    rt.shutdown_timeout(SHUTDOWN_GRACE);
    Ok(out)
}

/// See [`block_on`].
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_the_package_and_a_commit() {
        let v = version!();
        assert!(v.starts_with(concat!(env!("CARGO_PKG_VERSION"), " (git ")));
        let commit = GIT_COMMIT;
        assert!(
            commit == "unknown"
                || (commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
            "{commit:?} is neither a commit id nor unknown"
        );
        assert!(v.ends_with(&format!("{commit})")));
    }

    #[derive(clap::Parser, Debug)]
    struct Flags {
        #[arg(long)]
        count: u32,
    }

    #[test]
    fn flags_parse_and_refusals_are_usage() {
        let ok: Flags = parse_from("t", ["t", "--count", "3"]).unwrap();
        assert_eq!(ok.count, 3);
        let bad = parse_from::<Flags, _, _>("t", ["t", "--count", "many"]).unwrap_err();
        assert_eq!(bad, ExitCode::from(Exit::Usage));
        let help = parse_from::<Flags, _, _>("t", ["t", "--help"]).unwrap_err();
        assert_eq!(help, ExitCode::SUCCESS);
    }
}

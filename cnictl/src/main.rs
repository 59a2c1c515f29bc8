//! `cnictl`: pools, blocks, IPs, leak check and safe release for LeEngine's
//! etcd IPAM. Errors are one line on stderr; see [`cli::Cli`] for exit codes.

mod cli;
mod commands;
mod leaks;
mod table;

use std::process::ExitCode;

use clap::Parser;
use leengine_ipam::{Ipam, IpamError};
use leengine_store::{EtcdConfig, StoreError};

use crate::cli::{Cli, Command};

/// Outcome of a command that ran to completion.
pub enum Done {
    Ok,
    /// Leaks found (`check`) or addresses left alone (`release`).
    Attention,
}

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_UNAVAILABLE: u8 = 3;
const EXIT_ATTENTION: u8 = 4;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's first paragraph says what is wrong; the usage after it is noise here.
            let text = e.render().to_string();
            let what: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.is_empty() && !l.starts_with("Usage:"))
                .collect();
            eprintln!("cnictl: {}", what.join(" "));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CNICTL_LOG")
                // kube logs its own connect errors; ours already say it on one line.
                .unwrap_or_else(|_| "warn,kube_client=off".into()),
        )
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cnictl: error: cannot start runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(Done::Ok) => ExitCode::SUCCESS,
        Ok(Done::Attention) => ExitCode::from(EXIT_ATTENTION),
        Err(e) => {
            eprintln!("cnictl: error: {}", one_line(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The error and its causes on one line, without the repeats that nested
/// errors produce when each one also prints its source.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        if cause.is::<IpamError>() {
            break;
        }
    }
    line.replace('\n', " ")
}

fn exit_code(e: &anyhow::Error) -> u8 {
    let unavailable = e.chain().any(|c| {
        c.downcast_ref::<leengine_apiserver::ApiError>()
            .is_some_and(leengine_apiserver::ApiError::is_unavailable)
            || c.downcast_ref::<IpamError>()
                .is_some_and(IpamError::is_unavailable)
            || matches!(
                c.downcast_ref::<StoreError>(),
                Some(StoreError::Unavailable { .. })
            )
    });
    if unavailable {
        EXIT_UNAVAILABLE
    } else {
        EXIT_FAILED
    }
}

async fn run(cli: Cli) -> anyhow::Result<Done> {
    let mut cfg = cli.etcd_auth.config(cli.etcd.clone());
    cfg.prefix = Some(cli.prefix.clone());
    let etcd = Etcd(cfg);
    let out = cli.output;
    match cli.command {
        Command::Pool(cmd) => commands::pool(&etcd, cmd, out).await,
        Command::Block(cmd) => commands::block(&etcd, cmd, out).await,
        Command::Ip(cmd) => commands::ip(&etcd, cmd, out).await,
        Command::Check(args) => leaks::check(&etcd, &args, out).await,
        Command::Release(args) => leaks::release(&etcd, &args, out).await,
    }
}

/// etcd settings; commands connect only once their input is known to be valid.
pub struct Etcd(EtcdConfig);

impl Etcd {
    pub async fn ipam(&self) -> anyhow::Result<Ipam> {
        let client = leengine_store::connect(&self.0).await?;
        Ok(Ipam::new(client, self.0.keys(), "cnictl"))
    }

    pub fn prefix(&self) -> String {
        self.0.keys().prefix().to_string()
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

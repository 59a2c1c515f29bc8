//! `cnictl`: pools, blocks, IPs, leak check and safe release for LeEngine's
//! etcd IPAM. Errors are one line on stderr; see [`cli::Cli`] for exit codes.

pub mod cli;
pub mod commands;
pub mod leaks;
pub mod table;

use leengine_cli::{Exit, Fatal};
use leengine_ipam::{Ipam, IpamError};
use leengine_store::{EtcdConfig, StoreError};

use crate::cli::{Cli, Command};

/// Outcome of a command that ran to completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    Ok,
    /// Leaks found (`check`) or addresses left alone (`release`).
    Attention,
}

/// Why a command failed; the variant decides the exit status.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// Its text already summarises the etcd error under it, so that is
    /// not a `source` (one line, no repeats).
    #[error("{0}")]
    Ipam(IpamError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Apiserver(#[from] leengine_apiserver::ApiError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<IpamError> for CmdError {
    fn from(e: IpamError) -> Self {
        CmdError::Ipam(e)
    }
}

pub type Result<T> = std::result::Result<T, CmdError>;

impl Fatal for CmdError {
    fn exit(&self) -> Exit {
        match self {
            CmdError::Ipam(e) if e.is_unavailable() => Exit::Unavailable,
            CmdError::Apiserver(e) if e.is_unavailable() => Exit::Unavailable,
            CmdError::Store(StoreError::Unavailable { .. }) => Exit::Unavailable,
            _ => Exit::Failed,
        }
    }

    fn line(&self) -> String {
        leengine_cli::one_line(self)
    }
}

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> Result<Exit> {
    let mut cfg = cli.etcd_auth.config(cli.etcd.clone());
    cfg.prefix = Some(cli.prefix.clone());
    let etcd = Etcd(cfg);
    let out = cli.output;
    let done = match cli.command {
        Command::Pool(cmd) => commands::pool(&etcd, cmd, out).await,
        Command::Block(cmd) => commands::block(&etcd, cmd, out).await,
        Command::Ip(cmd) => commands::ip(&etcd, cmd, out).await,
        Command::Check(args) => leaks::check(&etcd, &args, out).await,
        Command::Release(args) => leaks::release(&etcd, &args, out).await,
    }?;
    Ok(match done {
        Done::Ok => Exit::Ok,
        Done::Attention => Exit::Attention,
    })
}

/// etcd settings; commands connect only once their input is known to be valid.
#[derive(Debug)]
pub struct Etcd(EtcdConfig);

impl Etcd {
    pub async fn ipam(&self) -> Result<Ipam> {
        let client = leengine_store::connect(&self.0).await?;
        Ok(Ipam::new(client, self.0.keys(), "cnictl"))
    }

    pub fn prefix(&self) -> String {
        self.0.keys().prefix().to_string()
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).map_err(anyhow::Error::from)?
    );
    Ok(())
}

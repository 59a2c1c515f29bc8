//! `leengine-build-agent`: one per build host. Registers the host in etcd
//! under a lease, watches its task keys and turns each task into an image in
//! the registry (clone → compile → build → push).

pub mod agent;
pub mod cli;
pub mod context;
pub mod docker;
pub mod git;
pub mod registration;
pub mod report;
pub mod retention;
pub mod runner;

/// Starts the agent and runs it until SIGTERM/SIGINT.
pub async fn run(settings: agent::Settings) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let agent = agent::Agent::start(settings)
        .await
        .context("cannot start")?;
    agent.run().await
}

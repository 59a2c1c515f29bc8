//! `cnictl-gen DIR`: writes cnictl's shell completions (DIR/completions/) and
//! man pages (DIR/man/, one per command) for hack/package.sh. A binary of its
//! own behind the `gen` feature, so cnictl's build never carries
//! clap_complete and clap_mangen.

#[path = "../src/cli.rs"]
mod cli;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> anyhow::Result<()> {
    let dir: PathBuf = std::env::args_os()
        .nth(1)
        .context("usage: cnictl-gen DIR")?
        .into();
    let mut cmd = cli::Cli::command();
    cmd.build();
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "cnictl", &completions)
            .with_context(|| format!("{shell} completions"))?;
    }
    let man = dir.join("man");
    std::fs::create_dir_all(&man)?;
    man_pages(&cmd, "cnictl", &man)
}

/// `cnictl.1`, `cnictl-pool.1`, `cnictl-pool-add.1`, … (git's naming).
fn man_pages(cmd: &clap::Command, name: &str, dir: &Path) -> anyhow::Result<()> {
    let mut page = Vec::new();
    // clap keeps names as &'static str; this process is short-lived.
    let title: &'static str = Box::leak(name.to_string().into_boxed_str());
    clap_mangen::Man::new(cmd.clone().name(title)).render(&mut page)?;
    let file = dir.join(format!("{name}.1"));
    std::fs::write(&file, page).with_context(|| format!("writing {}", file.display()))?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        man_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}

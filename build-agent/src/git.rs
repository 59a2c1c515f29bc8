//! Clone stage: the `git` CLI (the one external tool the agent runs; git's
//! transports, credentials helpers and protocol quirks are not worth
//! re-implementing).

use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;

use crate::report::LogSink;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// git could not be started.
    #[error("cannot run git: {0}")]
    Spawn(#[source] std::io::Error),
    /// A git command exited non-zero.
    #[error("git {step} failed ({status}); see the log")]
    Failed { step: &'static str, status: String },
    /// `rev-parse HEAD` printed something that is not a commit id.
    #[error("git rev-parse printed {0:?}, not a commit id")]
    BadHead(String),
}

async fn git(
    log: &LogSink,
    step: &'static str,
    cwd: &Path,
    args: &[&str],
) -> Result<String, GitError> {
    log.write(&format!("$ git {}", args.join(" ")));
    let out = Command::new("git")
        .args(args)
        .current_dir(cwd)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(GitError::Spawn)?;
    log.write(&String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        log.write(&stdout);
        return Err(GitError::Failed {
            step,
            status: out.status.to_string(),
        });
    }
    Ok(stdout)
}

/// Clones `branch` of `repo` into `dest` (shallow when no exact commit is
/// asked for) and checks out `commit` if given. Returns the HEAD commit id.
pub async fn clone(
    log: &LogSink,
    repo: &str,
    branch: &str,
    commit: Option<&str>,
    dest: &Path,
) -> Result<String, GitError> {
    let parent = dest.parent().unwrap_or(Path::new("/"));
    let dest_s = dest.to_string_lossy();
    // A pushed commit may already be behind the branch head when we get to
    // it; fetch some history so it is usually present without a full clone.
    let depth = if commit.is_some() { "50" } else { "1" };
    git(
        log,
        "clone",
        parent,
        &[
            "clone",
            "--depth",
            depth,
            "--branch",
            branch,
            "--single-branch",
            "--no-tags",
            "--",
            repo,
            &dest_s,
        ],
    )
    .await?;
    if let Some(c) = commit {
        if git(log, "checkout", dest, &["checkout", "--detach", c, "--"])
            .await
            .is_err()
        {
            git(
                log,
                "fetch",
                dest,
                &["fetch", "--unshallow", "origin", branch],
            )
            .await?;
            git(log, "checkout", dest, &["checkout", "--detach", c, "--"]).await?;
        }
    }
    let head = git(log, "rev-parse", dest, &["rev-parse", "HEAD"]).await?;
    let head = head.trim().to_string();
    leengine_build::validate::commit(&head).map_err(|_| GitError::BadHead(head.clone()))?;
    log.write(&format!("checked out {head}"));
    Ok(head)
}

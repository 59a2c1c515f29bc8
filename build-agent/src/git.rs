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
    /// The config's clone credential is missing, unreadable or not for it.
    #[error("clone credential {name}: {why}")]
    Credential { name: String, why: String },
}

/// `{git-credentials-dir}/{name}.json`, written by the operator: who may use
/// it (configs whose image is in one of `groups`, i.e. whoever may push
/// there) and the HTTP user and password or token.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialFile {
    groups: Vec<String>,
    username: String,
    password: String,
}

/// What a clone needs besides the URL: the transport it may use and the
/// environment carrying a credential.
pub struct Remote<'a> {
    pub repo: &'a str,
    /// The repo passed the policy: it is `scheme://…`.
    scheme: &'a str,
    env: Vec<(String, String)>,
}

/// Written by hand: the secret it holds must not reach a log.
impl std::fmt::Debug for Remote<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("repo", &self.repo)
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

impl<'a> Remote<'a> {
    /// `credential`: the config's credential name, checked against
    /// `image_group` (the group of the config's target image).
    pub fn new(
        repo: &'a str,
        credential: Option<&str>,
        dir: &Path,
        image_group: &str,
    ) -> Result<Self, GitError> {
        let scheme = repo.split_once("://").map_or("none", |(s, _)| s);
        let env = match credential {
            None => vec![],
            Some(name) => credential_env(dir, name, scheme, image_group)?,
        };
        Ok(Self { repo, scheme, env })
    }
}

/// The credential as an `Authorization` header through `GIT_CONFIG_*`
/// (git ≥ 2.31): neither on the command line (`ps`) nor in the URL (logs).
fn credential_env(
    dir: &Path,
    name: &str,
    scheme: &str,
    image_group: &str,
) -> Result<Vec<(String, String)>, GitError> {
    let err = |why: String| GitError::Credential {
        name: name.to_string(),
        why,
    };
    if scheme != "https" && scheme != "http" {
        return Err(err(format!(
            "only http(s) repositories take a credential; {scheme} uses the host's"
        )));
    }
    let path = dir.join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    let c: CredentialFile = serde_json::from_str(&text)
        .map_err(|e| err(format!("{} is not a credential file: {e}", path.display())))?;
    if !c.groups.iter().any(|g| g == image_group) {
        return Err(err(format!(
            "may not be used by configs pushing to group {image_group}"
        )));
    }
    use base64::Engine as _;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password));
    Ok(vec![
        ("GIT_CONFIG_COUNT".into(), "1".into()),
        ("GIT_CONFIG_KEY_0".into(), "http.extraHeader".into()),
        (
            "GIT_CONFIG_VALUE_0".into(),
            format!("Authorization: Basic {basic}"),
        ),
    ])
}

/// Options in front of every git command: only the repository's own
/// transport is allowed (never `file`, `ext` or another URL a server
/// redirects to), and no user or system config adds helpers or rewrites.
fn protocol_args(scheme: &str) -> Vec<String> {
    vec![
        "-c".into(),
        "protocol.allow=never".into(),
        "-c".into(),
        format!("protocol.{scheme}.allow=always"),
        "-c".into(),
        "protocol.file.allow=never".into(),
    ]
}

/// `--` ends the options: a positional argument never becomes one.
fn clone_args<'a>(repo: &'a str, branch: &'a str, depth: &'a str, dest: &'a str) -> Vec<&'a str> {
    vec![
        "clone",
        "--depth",
        depth,
        "--branch",
        branch,
        "--single-branch",
        "--no-tags",
        "--",
        repo,
        dest,
    ]
}

fn fetch_args(branch: &str) -> Vec<&str> {
    vec!["fetch", "--unshallow", "--", "origin", branch]
}

async fn git(
    log: &LogSink,
    step: &'static str,
    cwd: &Path,
    remote: &Remote<'_>,
    args: &[&str],
) -> Result<String, GitError> {
    log.write(&format!("$ git {}", args.join(" ")));
    let out = Command::new("git")
        .args(protocol_args(remote.scheme))
        .envs(remote.env.iter().map(|(k, v)| (k, v)))
        .args(args)
        .current_dir(cwd)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROTOCOL_FROM_USER", "0")
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
    remote: &Remote<'_>,
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
        remote,
        &clone_args(remote.repo, branch, depth, &dest_s),
    )
    .await?;
    if let Some(c) = commit {
        let checkout = ["checkout", "--detach", c, "--"];
        if git(log, "checkout", dest, remote, &checkout).await.is_err() {
            git(log, "fetch", dest, remote, &fetch_args(branch)).await?;
            git(log, "checkout", dest, remote, &checkout).await?;
        }
    }
    let head = git(log, "rev-parse", dest, remote, &["rev-parse", "HEAD"]).await?;
    let head = head.trim().to_string();
    leengine_build::validate::commit(&head).map_err(|_| GitError::BadHead(head.clone()))?;
    log.write(&format!("checked out {head}"));
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positional_arguments_follow_the_double_dash() {
        let evil = "--upload-pack=touch /tmp/pwned";
        for args in [clone_args(evil, evil, "1", "/w/src"), fetch_args(evil)] {
            let dash = args.iter().position(|a| *a == "--").unwrap();
            let at = args.iter().rposition(|a| *a == evil).unwrap();
            assert!(at > dash, "{args:?}");
        }
        // Clone's --branch takes the branch as its value, not as an option.
        let c = clone_args("git://h/r", evil, "1", "/w/src");
        let b = c.iter().position(|a| *a == "--branch").unwrap();
        assert_eq!(c[b + 1], evil);
    }

    #[test]
    fn only_the_repository_transport_is_allowed() {
        let a = protocol_args("https");
        assert!(a.contains(&"protocol.allow=never".to_string()));
        assert!(a.contains(&"protocol.https.allow=always".to_string()));
        assert!(a.contains(&"protocol.file.allow=never".to_string()));
    }
}

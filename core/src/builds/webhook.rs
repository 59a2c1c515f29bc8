//! GitLab push webhooks: which pushes trigger which config.
//!
//! GitLab sends every push of a project to the hook, whatever the branch, so
//! a push to another branch is acknowledged and ignored rather than refused.
//! A push from another repository is refused: the hook is misconfigured.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use leengine_build::BuildConfig;

use super::dispatch::StoredConfig;

/// The fields of GitLab's "Push Hook" payload we use.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GitlabPush {
    pub object_kind: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub after: String,
    pub checkout_sha: Option<String>,
    pub user_username: Option<String>,
    pub project: GitlabProject,
    pub repository: GitlabRepository,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GitlabProject {
    pub git_http_url: Option<String>,
    pub git_ssh_url: Option<String>,
    pub web_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GitlabRepository {
    pub url: Option<String>,
    pub git_http_url: Option<String>,
    pub git_ssh_url: Option<String>,
    pub homepage: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum PushMatch {
    /// Build this commit.
    Build { commit: String },
    /// Acknowledge without building (other branch, branch deletion, not a push).
    Ignore(String),
    /// The payload names a repository other than the config's.
    RepoMismatch,
}

fn normalise(url: &str) -> &str {
    url.trim_end_matches('/').trim_end_matches(".git")
}

pub fn match_push(cfg: &BuildConfig, push: &GitlabPush) -> PushMatch {
    if push.object_kind != "push" {
        return PushMatch::Ignore(format!("event {:?} is not a push", push.object_kind));
    }
    let urls = [
        &push.project.git_http_url,
        &push.project.git_ssh_url,
        &push.project.web_url,
        &push.repository.url,
        &push.repository.git_http_url,
        &push.repository.git_ssh_url,
        &push.repository.homepage,
    ];
    let want = normalise(&cfg.spec.repo);
    if !urls
        .iter()
        .flat_map(|u| u.as_deref())
        .any(|u| normalise(u) == want)
    {
        return PushMatch::RepoMismatch;
    }
    let branch = push.git_ref.strip_prefix("refs/heads/");
    if branch != Some(cfg.spec.branch.as_str()) {
        return PushMatch::Ignore(format!(
            "ref {} is not branch {}",
            push.git_ref, cfg.spec.branch
        ));
    }
    let commit = push
        .checkout_sha
        .clone()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| push.after.clone());
    if commit.is_empty() || commit.bytes().all(|b| b == b'0') {
        return PushMatch::Ignore("branch deleted".into());
    }
    PushMatch::Build { commit }
}

pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares hashes so the time taken says nothing about the secret.
pub fn token_matches(cfg: &BuildConfig, presented: &str) -> bool {
    crate::auth::constant_time_eq(
        token_hash(presented).as_bytes(),
        cfg.webhook_token_sha256.as_bytes(),
    )
}

/// The config if `presented` is its secret. Hashes even when there is no
/// config, so an unknown id costs what a wrong secret does.
pub fn authenticate(found: Option<StoredConfig>, presented: &str) -> Option<StoredConfig> {
    match found {
        Some(s) if token_matches(&s.config, presented) => Some(s),
        Some(_) => None,
        None => {
            std::hint::black_box(token_hash(presented));
            None
        }
    }
}

pub fn new_token() -> String {
    rand::random::<[u8; 24]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use leengine_build::BuildSpec;

    fn cfg() -> BuildConfig {
        BuildConfig {
            id: "app".into(),
            spec: BuildSpec {
                repo: "http://gitlab.example/team/app.git".into(),
                repo_credential: None,
                branch: "main".into(),
                dockerfile: "Dockerfile".into(),
                compile: None,
                outputs: vec![],
                image: "reg/app".into(),
            },
            creator: "alice".into(),
            webhook_token_sha256: token_hash("s3cret"),
            created_at: chrono::Utc::now(),
            push_as: None,
        }
    }

    fn push(git_ref: &str, url: &str) -> GitlabPush {
        serde_json::from_value(serde_json::json!({
            "object_kind": "push",
            "ref": git_ref,
            "before": "0000000000000000000000000000000000000000",
            "after": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
            "checkout_sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
            "project": {"git_http_url": url, "git_ssh_url": "git@gitlab.example:team/app.git"},
            "repository": {"url": "git@gitlab.example:team/app.git"}
        }))
        .unwrap()
    }

    #[test]
    fn push_to_the_branch_builds_its_commit() {
        assert_eq!(
            match_push(
                &cfg(),
                &push("refs/heads/main", "http://gitlab.example/team/app")
            ),
            PushMatch::Build {
                commit: "da1560886d4f094c3e6c9ef40349f7d38b5d27d7".into()
            }
        );
    }

    #[test]
    fn other_branch_tag_or_deletion_is_ignored() {
        let c = cfg();
        let u = "http://gitlab.example/team/app.git";
        assert!(matches!(
            match_push(&c, &push("refs/heads/dev", u)),
            PushMatch::Ignore(_)
        ));
        assert!(matches!(
            match_push(&c, &push("refs/tags/main", u)),
            PushMatch::Ignore(_)
        ));
        let mut p = push("refs/heads/main", u);
        p.checkout_sha = None;
        p.after = "0".repeat(40);
        assert!(matches!(match_push(&c, &p), PushMatch::Ignore(_)));
        let mut p = push("refs/heads/main", u);
        p.object_kind = "tag_push".into();
        assert!(matches!(match_push(&c, &p), PushMatch::Ignore(_)));
    }

    #[test]
    fn other_repository_is_a_mismatch() {
        let mut p = push("refs/heads/main", "http://gitlab.example/team/other.git");
        p.project.git_ssh_url = None;
        p.repository.url = None;
        assert_eq!(match_push(&cfg(), &p), PushMatch::RepoMismatch);
    }

    #[test]
    fn tokens_compare_by_hash() {
        let c = cfg();
        assert!(token_matches(&c, "s3cret"));
        assert!(!token_matches(&c, "s3cre"));
        assert!(!token_matches(&c, ""));
        assert_eq!(new_token().len(), 48);
        assert_ne!(new_token(), new_token());
    }
}

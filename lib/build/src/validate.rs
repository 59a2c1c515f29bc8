//! Input checks for everything that ends up in a path, a git argument, a
//! Docker reference or an etcd key segment. Rejected early with the field
//! named, so a bad config never reaches a builder.

use crate::model::{BuildSpec, CompileSpec};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// A name used as a key segment and directory name is malformed.
    #[error("{field} {value:?} must be 1-63 chars of a-z, 0-9, '-' or '_', starting with a letter or digit")]
    Name { field: &'static str, value: String },
    /// A required field is empty.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// A field that reaches a command line starts with '-' or holds control characters.
    #[error(
        "{field} {value:?} must not start with '-' or contain whitespace or control characters"
    )]
    Unsafe { field: &'static str, value: String },
    /// A git branch name breaks git's ref-name rules.
    #[error("branch {0:?} is not a valid git branch name")]
    Branch(String),
    /// A repository-relative path is absolute or climbs out with `..`.
    #[error("{field} {value:?} must be a relative path inside the repository without '..'")]
    RelPath { field: &'static str, value: String },
    /// A container path is not absolute or is `/`.
    #[error("{field} {value:?} must be an absolute container path other than '/'")]
    AbsPath { field: &'static str, value: String },
    /// The target image is not a lowercase repository reference without tag.
    #[error("image {0:?} must be a lowercase repository reference like host:5000/team/app, without tag or digest")]
    Image(String),
    /// A tag breaks Docker's tag grammar.
    #[error("tag {0:?} must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")]
    Tag(String),
    /// A commit id is not a hex object name.
    #[error("commit {0:?} must be 7-64 hex digits")]
    Commit(String),
    /// The repository is not a network URL git may fetch from.
    #[error("repo {0:?} must be a URL scheme://host[:port]/path with scheme https, http, ssh or git (no local paths, file:// or scp-style host:path)")]
    Repo(String),
    /// The repository URL carries a secret.
    #[error("repo {0:?} must not carry credentials in the URL (only an ssh user name)")]
    RepoCredentials(String),
    /// The repository is on a git server the farm is not configured for.
    #[error("repo {repo:?} is not on an allowed git host (allowed: {allowed})")]
    RepoHost { repo: String, allowed: String },
    /// An allowed-git-host entry of the configuration is malformed.
    #[error("git host {0:?} must be scheme://host[:port] with scheme https, http, ssh or git")]
    GitHost(String),
    /// The target image is not in the platform registry.
    #[error(
        "image {image:?} must be {registry}/GROUP/NAME: builds push only to the platform registry"
    )]
    Registry { image: String, registry: String },
    /// No platform registry is configured, so nothing may be built.
    #[error("no platform registry is configured: builds cannot push anywhere")]
    NoRegistry,
    /// A task lacks a field only older writers leave out.
    #[error("task has no {0}")]
    Missing(&'static str),
}

/// Config ids, builder ids and run ids: safe as etcd key segments and
/// directory names.
pub fn name(field: &'static str, value: &str) -> Result<(), ValidationError> {
    let ok = (1..=63).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && value.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(ValidationError::Name {
            field,
            value: value.to_string(),
        })
    }
}

fn arg(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::Empty(field));
    }
    if value.starts_with('-') || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ValidationError::Unsafe {
            field,
            value: value.to_string(),
        });
    }
    Ok(())
}

pub fn branch(value: &str) -> Result<(), ValidationError> {
    arg("branch", value)?;
    let bad = value.contains("..")
        || value.contains("@{")
        || value.contains("//")
        || value.ends_with('/')
        || value.ends_with(".lock")
        || value.ends_with('.')
        || value.starts_with('/')
        || value.chars().any(|c| "~^:?*[\\".contains(c));
    if bad {
        Err(ValidationError::Branch(value.to_string()))
    } else {
        Ok(())
    }
}

pub fn rel_path(field: &'static str, value: &str) -> Result<(), ValidationError> {
    arg(field, value)?;
    let p = std::path::Path::new(value);
    let ok = p.is_relative()
        && p.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        })
        && p.components()
            .any(|c| matches!(c, std::path::Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::RelPath {
            field,
            value: value.to_string(),
        })
    }
}

fn abs_path(field: &'static str, value: &str) -> Result<(), ValidationError> {
    arg(field, value)?;
    let p = std::path::Path::new(value);
    let ok = p.is_absolute()
        && p.components().count() > 1
        && !p
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::AbsPath {
            field,
            value: value.to_string(),
        })
    }
}

/// `[host[:port]/]path` with lowercase path components; no tag, no digest.
pub fn image(value: &str) -> Result<(), ValidationError> {
    let err = || ValidationError::Image(value.to_string());
    if value.is_empty() || value.len() > 255 || value.contains('@') {
        return Err(err());
    }
    let mut parts: Vec<&str> = value.split('/').collect();
    let first_is_host = parts.len() > 1
        && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost");
    if first_is_host {
        let host = parts.remove(0);
        let (h, port) = host.split_once(':').unwrap_or((host, "0"));
        let host_ok = !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            && port.parse::<u16>().is_ok();
        if !host_ok {
            return Err(err());
        }
    }
    let comp_ok = |c: &str| {
        !c.is_empty()
            && c.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-'
            })
            && c.as_bytes()[0].is_ascii_alphanumeric()
            && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
    };
    if parts.is_empty() || !parts.iter().all(|c| comp_ok(c)) {
        return Err(err());
    }
    Ok(())
}

pub fn tag(value: &str) -> Result<(), ValidationError> {
    let ok = (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        && (value.as_bytes()[0].is_ascii_alphanumeric() || value.as_bytes()[0] == b'_');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::Tag(value.to_string()))
    }
}

pub fn commit(value: &str) -> Result<(), ValidationError> {
    if (7..=64).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(ValidationError::Commit(value.to_string()))
    }
}

/// Image names the compile step may run: a local reference, tag allowed.
fn compile_image(value: &str) -> Result<(), ValidationError> {
    arg("compile.image", value)?;
    let (repo, t) = match value.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t)),
        _ => (value, None),
    };
    image(repo)?;
    t.map(tag).transpose()?;
    Ok(())
}

fn compile(c: &CompileSpec) -> Result<(), ValidationError> {
    compile_image(&c.image)?;
    rel_path("compile.script", &c.script)?;
    abs_path("compile.cacheMount", &c.cache_mount)
}

const GIT_SCHEMES: [&str; 4] = ["https", "http", "ssh", "git"];

/// The parts of a repository URL (or of an allowed-host entry, path empty)
/// that decide where git connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitHost {
    pub scheme: String,
    pub host: String,
    pub port: Option<u16>,
}

impl std::fmt::Display for GitHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

/// Splits `scheme://[user@]host[:port]/path`; `None` for anything else
/// (local paths, `file://`, scp-style `host:path`, IPv6 literals).
fn split_url(value: &str) -> Option<(GitHost, Option<&str>, &str)> {
    let (scheme, rest) = value.split_once("://")?;
    if !GIT_SCHEMES.contains(&scheme) {
        return None;
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (host, port) = match hostport.split_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().ok().filter(|p| *p > 0)?)),
        None => (hostport, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && host.as_bytes()[0].is_ascii_alphanumeric();
    host_ok.then(|| {
        (
            GitHost {
                scheme: scheme.to_string(),
                host: host.to_ascii_lowercase(),
                port,
            },
            user,
            path,
        )
    })
}

impl GitHost {
    /// Parses an allowed-host entry `scheme://host[:port]` (a trailing `/`
    /// is tolerated).
    pub fn parse(value: &str) -> Result<GitHost, ValidationError> {
        match split_url(value.trim_end_matches('/')) {
            Some((h, None, "")) => Ok(h),
            _ => Err(ValidationError::GitHost(value.to_string())),
        }
    }
}

/// A repository URL's syntax: a network URL with a path, no secret in it.
fn repo_url(value: &str) -> Result<GitHost, ValidationError> {
    arg("repo", value)?;
    let (host, user, path) =
        split_url(value).ok_or_else(|| ValidationError::Repo(value.to_string()))?;
    if path.trim_matches('/').is_empty() {
        return Err(ValidationError::Repo(value.to_string()));
    }
    // An ssh user name is not a secret; anything else before '@' may be one.
    let user_ok = match user {
        None => true,
        Some(u) => host.scheme == "ssh" && !u.is_empty() && !u.contains(':'),
    };
    if !user_ok {
        return Err(ValidationError::RepoCredentials(
            crate::redact_credentials(value).into_owned(),
        ));
    }
    Ok(host)
}

/// What a build may reach besides its own inputs: the one registry images
/// go to and the git servers sources come from. Core checks every config
/// against it, and every build agent checks every task again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// `host[:port]` of the platform registry; `None` refuses every image.
    pub registry: Option<String>,
    pub git_hosts: Vec<GitHost>,
}

impl Policy {
    /// `git_hosts`: entries `scheme://host[:port]`.
    pub fn new(
        registry: Option<String>,
        git_hosts: &[impl AsRef<str>],
    ) -> Result<Policy, ValidationError> {
        Ok(Policy {
            registry,
            git_hosts: git_hosts
                .iter()
                .map(|h| GitHost::parse(h.as_ref()))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The repository is a URL on one of the allowed git hosts.
    pub fn repo(&self, value: &str) -> Result<(), ValidationError> {
        let host = repo_url(value)?;
        if self.git_hosts.contains(&host) {
            return Ok(());
        }
        let allowed: Vec<String> = self.git_hosts.iter().map(|h| h.to_string()).collect();
        Err(ValidationError::RepoHost {
            repo: value.to_string(),
            allowed: if allowed.is_empty() {
                "none configured".into()
            } else {
                allowed.join(", ")
            },
        })
    }

    /// The registry repository (`group/name`) of an image in the platform
    /// registry.
    pub fn repository<'a>(&self, image_ref: &'a str) -> Result<&'a str, ValidationError> {
        let registry = self
            .registry
            .as_deref()
            .ok_or(ValidationError::NoRegistry)?;
        image(image_ref)?;
        let wrong = || ValidationError::Registry {
            image: image_ref.to_string(),
            registry: registry.to_string(),
        };
        let path = image_ref
            .strip_prefix(registry)
            .and_then(|p| p.strip_prefix('/'))
            .ok_or_else(wrong)?;
        if path.split('/').count() != 2 {
            return Err(wrong());
        }
        Ok(path)
    }
}

impl BuildSpec {
    /// Syntax and policy: what core accepts and agents re-check.
    pub fn check(&self, policy: &Policy) -> Result<(), ValidationError> {
        self.validate()?;
        policy.repo(&self.repo)?;
        policy.repository(&self.image)?;
        Ok(())
    }

    /// Syntax only.
    pub fn validate(&self) -> Result<(), ValidationError> {
        repo_url(&self.repo)?;
        if let Some(c) = &self.repo_credential {
            name("repoCredential", c)?;
        }
        branch(&self.branch)?;
        rel_path("dockerfile", &self.dockerfile)?;
        if let Some(c) = &self.compile {
            compile(c)?;
        }
        for o in &self.outputs {
            rel_path("outputs", o)?;
        }
        image(&self.image)
    }
}

impl crate::BuildTask {
    /// Everything an agent takes from a task it read from etcd: names that
    /// become keys and directories, git arguments, the spec under `policy`.
    pub fn check(&self, policy: &Policy) -> Result<(), ValidationError> {
        name("config", &self.config)?;
        name("run", &self.run)?;
        if self.config_incarnation <= 0 {
            return Err(ValidationError::Missing("config incarnation"));
        }
        if let Some(c) = &self.commit {
            commit(c)?;
        }
        if let Some(t) = &self.tag {
            tag(t)?;
        }
        self.spec.check(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BuildSpec {
        BuildSpec {
            repo: "https://git.example/team/app.git".into(),
            repo_credential: None,
            branch: "main".into(),
            dockerfile: "docker/Dockerfile".into(),
            compile: Some(CompileSpec {
                image: "local/maven:3".into(),
                script: "build.sh".into(),
                cache_mount: "/root/.m2/repository".into(),
            }),
            outputs: vec!["target/app.jar".into()],
            image: "127.0.0.1:5000/team/app".into(),
        }
    }

    #[test]
    fn a_good_spec_passes() {
        spec().validate().unwrap();
    }

    #[test]
    fn names_are_key_and_dir_safe() {
        name("id", "shop-api_2").unwrap();
        for bad in ["", "Shop", "-x", "a/b", "a.b", "..", &"a".repeat(64)] {
            assert!(name("id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let mut s = spec();
        s.repo = "--upload-pack=evil".into();
        assert!(matches!(
            s.validate(),
            Err(ValidationError::Unsafe { field: "repo", .. })
        ));
        let mut s = spec();
        s.repo_credential = Some("../../etc/shadow".into());
        assert!(matches!(
            s.validate(),
            Err(ValidationError::Name {
                field: "repoCredential",
                ..
            })
        ));
        let mut s = spec();
        s.branch = "a..b".into();
        assert_eq!(s.validate(), Err(ValidationError::Branch("a..b".into())));
        let mut s = spec();
        s.outputs = vec!["../etc/passwd".into()];
        assert!(matches!(
            s.validate(),
            Err(ValidationError::RelPath {
                field: "outputs",
                ..
            })
        ));
        let mut s = spec();
        s.dockerfile = "/Dockerfile".into();
        assert!(matches!(
            s.validate(),
            Err(ValidationError::RelPath {
                field: "dockerfile",
                ..
            })
        ));
        let mut s = spec();
        s.compile.as_mut().unwrap().cache_mount = "/".into();
        assert!(matches!(s.validate(), Err(ValidationError::AbsPath { .. })));
        let mut s = spec();
        s.image = "127.0.0.1:5000/Team/app".into();
        assert!(matches!(s.validate(), Err(ValidationError::Image(_))));
        let mut s = spec();
        s.image = "127.0.0.1:5000/team/app:v1".into();
        assert!(matches!(s.validate(), Err(ValidationError::Image(_))));
    }

    #[test]
    fn images_tags_commits() {
        image("app").unwrap();
        image("localhost/app").unwrap();
        image("reg.example.com:443/a/b-c/d_e").unwrap();
        assert!(image("reg:99999/a").is_err());
        assert!(image("a//b").is_err());
        tag("v1.2.3").unwrap();
        tag("0123abc").unwrap();
        assert!(tag(".x").is_err());
        assert!(tag(&"a".repeat(129)).is_err());
        commit("0123abcdef").unwrap();
        assert!(commit("xyz1234").is_err());
        compile_image("local/maven:3").unwrap();
        compile_image("127.0.0.1:5000/maven").unwrap();
        assert!(compile_image("Maven").is_err());
    }

    fn policy() -> Policy {
        Policy::new(
            Some("127.0.0.1:5000".into()),
            &["https://git.example", "git://127.0.0.1:9418"],
        )
        .unwrap()
    }

    #[test]
    fn repos_are_network_urls_on_allowed_hosts() {
        let p = policy();
        p.repo("https://git.example/team/app.git").unwrap();
        p.repo("https://GIT.example/team/app").unwrap();
        p.repo("git://127.0.0.1:9418/app.git").unwrap();
        for local in [
            "/srv/git/app.git",
            "file:///srv/git/app.git",
            "git.example:team/app.git",
            "ext::sh",
            "https://git.example",
            "https://git.example/",
            "ftp://git.example/app",
            "https://[::1]/app",
        ] {
            assert!(
                matches!(p.repo(local), Err(ValidationError::Repo(_))),
                "{local:?}: {:?}",
                p.repo(local)
            );
        }
        for other in [
            "https://git.example:444/team/app",
            "http://git.example/team/app",
            "https://evil.example/team/app",
            "git://127.0.0.1:9419/app.git",
        ] {
            assert!(
                matches!(p.repo(other), Err(ValidationError::RepoHost { .. })),
                "{other:?}"
            );
        }
        for secret in [
            "https://user:pw@git.example/team/app",
            "https://glpat-token@git.example/team/app",
            "ssh://git:pw@git.example/team/app",
        ] {
            assert!(
                matches!(p.repo(secret), Err(ValidationError::RepoCredentials(_))),
                "{secret:?}"
            );
        }
        let ssh = Policy::new(None, &["ssh://git.example"]).unwrap();
        ssh.repo("ssh://git@git.example/team/app.git").unwrap();
        assert!(Policy::new(None, &["git.example"]).is_err());
        assert!(Policy::new(None, &["https://git.example/path"]).is_err());
        assert!(Policy::new(None, &["file:///"]).is_err());
    }

    #[test]
    fn images_go_to_the_platform_registry_only() {
        let p = policy();
        assert_eq!(p.repository("127.0.0.1:5000/team/app"), Ok("team/app"));
        for bad in [
            "evil.example:5000/team/app",
            "127.0.0.1:5001/team/app",
            "127.0.0.1:50000/team/app",
            "team/app",
            "127.0.0.1:5000/app",
            "127.0.0.1:5000/a/b/c",
        ] {
            assert!(
                matches!(p.repository(bad), Err(ValidationError::Registry { .. })),
                "{bad:?}: {:?}",
                p.repository(bad)
            );
        }
        assert_eq!(
            Policy::default().repository("127.0.0.1:5000/team/app"),
            Err(ValidationError::NoRegistry)
        );
    }

    #[test]
    fn tasks_are_checked_like_configs() {
        let task = crate::BuildTask {
            run: "r1".into(),
            config: "app".into(),
            config_incarnation: 7,
            spec: BuildSpec {
                image: "127.0.0.1:5000/team/app".into(),
                ..spec()
            },
            commit: None,
            tag: None,
            push_auth: None,
            attempt: 1,
        };
        task.check(&policy()).unwrap();
        let mut t = task.clone();
        t.spec.branch = "--upload-pack=touch /tmp/pwned".into();
        assert!(matches!(
            t.check(&policy()),
            Err(ValidationError::Unsafe {
                field: "branch",
                ..
            })
        ));
        let mut t = task.clone();
        t.run = "../../etc".into();
        assert!(t.check(&policy()).is_err());
        let mut t = task.clone();
        t.spec.repo = "/srv/git/app.git".into();
        assert!(t.check(&policy()).is_err());
        let mut t = task.clone();
        t.spec.image = "evil.example/team/app".into();
        assert!(t.check(&policy()).is_err());
        let mut t = task;
        t.config_incarnation = 0;
        assert_eq!(
            t.check(&policy()),
            Err(ValidationError::Missing("config incarnation"))
        );
    }
}

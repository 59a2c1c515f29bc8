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

impl BuildSpec {
    pub fn validate(&self) -> Result<(), ValidationError> {
        arg("repo", &self.repo)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BuildSpec {
        BuildSpec {
            repo: "/srv/git/app.git".into(),
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
}

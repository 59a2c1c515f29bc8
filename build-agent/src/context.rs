//! The Docker build context: the Dockerfile plus the declared outputs, at
//! their repository paths, and nothing else. Sources, `.git` and the
//! compile cache never reach the daemon, so they cannot end up in a layer.

use std::fs::File;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The Dockerfile is not in the checkout.
    #[error("Dockerfile {0} not found in the repository")]
    NoDockerfile(String),
    /// A declared output does not exist after the compile stage.
    #[error("declared output {0} does not exist (did the compile step produce it?)")]
    MissingOutput(String),
    /// A path leads out of the checkout through a symlinked directory.
    #[error("{0} resolves outside the repository (through a symlink)")]
    Escapes(String),
    /// Writing the tar failed.
    #[error("cannot write build context: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes the context tar for `src` to `dest`; returns its size in bytes.
/// Symlinks are stored as links, never followed, so a link to `/etc` in a
/// repository cannot pull host files into the image.
pub fn write(
    src: &Path,
    dockerfile: &str,
    outputs: &[String],
    dest: &Path,
) -> Result<u64, ContextError> {
    let root = src.canonicalize()?;
    // The last component may be a link (stored as such); every directory on
    // the way must stay inside the checkout, or `link/secret` with
    // `link -> /etc` would copy host files into the image.
    let inside = |rel: &str| -> Result<std::path::PathBuf, ContextError> {
        let p = src.join(rel);
        match p.parent().unwrap_or(src).canonicalize() {
            Ok(dir) if dir.starts_with(&root) => Ok(p),
            Ok(_) => Err(ContextError::Escapes(rel.to_string())),
            Err(_) => Ok(p), // missing: reported by the caller
        }
    };
    let mut tar = tar::Builder::new(File::create(dest)?);
    tar.follow_symlinks(false);
    let df = inside(dockerfile)?;
    if !std::fs::symlink_metadata(&df).is_ok_and(|m| m.is_file()) {
        return Err(ContextError::NoDockerfile(dockerfile.to_string()));
    }
    tar.append_path_with_name(&df, dockerfile)?;
    for out in outputs {
        let p = inside(out)?;
        let meta =
            std::fs::symlink_metadata(&p).map_err(|_| ContextError::MissingOutput(out.clone()))?;
        if meta.is_dir() {
            tar.append_dir_all(out, &p)?;
        } else {
            tar.append_path_with_name(&p, out)?;
        }
    }
    tar.into_inner()?.sync_all()?;
    Ok(std::fs::metadata(dest)?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar_path: &Path) -> Vec<String> {
        let mut a = tar::Archive::new(File::open(tar_path).unwrap());
        let mut v: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn only_dockerfile_and_outputs_go_in() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("docker")).unwrap();
        std::fs::create_dir_all(src.join("target/lib")).unwrap();
        std::fs::create_dir_all(src.join(".git")).unwrap();
        std::fs::write(src.join("docker/Dockerfile"), "FROM x").unwrap();
        std::fs::write(src.join("target/app.jar"), "jar").unwrap();
        std::fs::write(src.join("target/lib/dep.jar"), "dep").unwrap();
        std::fs::write(src.join("Main.java"), "secret source").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("target/lib/link")).unwrap();
        let out = d.path().join("ctx.tar");
        let outputs = vec!["target/app.jar".to_string(), "target/lib".to_string()];
        write(&src, "docker/Dockerfile", &outputs, &out).unwrap();
        let n = names(&out);
        assert!(n.contains(&"docker/Dockerfile".to_string()), "{n:?}");
        assert!(n.contains(&"target/app.jar".to_string()));
        assert!(n.contains(&"target/lib/dep.jar".to_string()));
        assert!(
            !n.iter()
                .any(|p| p.contains("Main.java") || p.contains(".git")),
            "{n:?}"
        );
        let mut a = tar::Archive::new(File::open(&out).unwrap());
        let link = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap().ends_with("link"))
            .unwrap();
        assert!(
            link.header().entry_type().is_symlink(),
            "links are not followed"
        );
    }

    #[test]
    fn symlinked_directories_cannot_lead_out() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("host");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("shadow"), "root:x").unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("Dockerfile"), "FROM x").unwrap();
        std::os::unix::fs::symlink(&outside, src.join("etc")).unwrap();
        let out = d.path().join("ctx.tar");
        assert!(matches!(
            write(&src, "Dockerfile", &["etc/shadow".into()], &out),
            Err(ContextError::Escapes(p)) if p == "etc/shadow"
        ));
        std::os::unix::fs::symlink(outside.join("shadow"), src.join("Dockerfile.link")).unwrap();
        assert!(
            matches!(
                write(&src, "Dockerfile.link", &[], &out),
                Err(ContextError::NoDockerfile(_))
            ),
            "a Dockerfile that is a link is refused"
        );
    }

    #[test]
    fn missing_pieces_are_named() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("ctx.tar");
        assert!(matches!(
            write(d.path(), "Dockerfile", &[], &out),
            Err(ContextError::NoDockerfile(_))
        ));
        std::fs::write(d.path().join("Dockerfile"), "FROM x").unwrap();
        assert!(matches!(
            write(d.path(), "Dockerfile", &["target/app.jar".into()], &out),
            Err(ContextError::MissingOutput(o)) if o == "target/app.jar"
        ));
    }
}

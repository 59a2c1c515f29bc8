//! Records the git commit the binaries are built from, for `--version`.
//!
//! `LEENGINE_GIT_COMMIT` set at build time wins (packaging from a tarball
//! that knows its commit); otherwise `git rev-parse HEAD` of this
//! workspace; otherwise "unknown" (a tarball without `.git`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=LEENGINE_GIT_COMMIT");
    let commit = std::env::var("LEENGINE_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(from_git)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=LEENGINE_GIT_COMMIT={}", commit.trim());
}

fn from_git() -> Option<String> {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    // lib/cli → the workspace root; a tarball unpacked inside some other
    // repository must not report that repository's commit.
    let root = manifest.parent()?.parent()?.canonicalize().ok()?;
    let top = git(&root, &["rev-parse", "--show-toplevel"])?;
    if Path::new(&top).canonicalize().ok()? != root {
        return None;
    }
    // Rebuild when HEAD moves: HEAD itself, the branch it points at, packed refs.
    for name in ["HEAD", "packed-refs"] {
        rerun_on(&root, name);
    }
    if let Some(branch) = git(&root, &["symbolic-ref", "-q", "HEAD"]) {
        rerun_on(&root, &branch);
    }
    git(&root, &["rev-parse", "HEAD"])
}

fn rerun_on(root: &Path, name: &str) {
    if let Some(path) = git(root, &["rev-parse", "--git-path", name]) {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

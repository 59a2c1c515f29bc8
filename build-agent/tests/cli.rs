//! A bad etcd TLS setting ends the agent with one line naming the file.

use std::process::Command;

#[test]
fn a_bad_etcd_tls_file_is_one_line_naming_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_leengine-build-agent"))
        .args(["--id", "b1", "--etcd", "https://127.0.0.1:1"])
        .args([
            "--registry",
            "registry.local:5000",
            "--git-host",
            "https://git.local",
        ])
        .args(["--etcd-ca", "/dev/null"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("leengine-build-agent: "), "{err}");
    assert!(
        err.contains("etcd CA file /dev/null holds no PEM certificate"),
        "{err}"
    );
}

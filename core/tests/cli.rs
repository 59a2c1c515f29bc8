//! The binary against the TLS etcd: it connects with core's certificate, and
//! a bad TLS file is one line naming it.

use std::process::{Command, Stdio};
use std::time::Duration;

use leengine_testenv as te;

const BIN: &str = env!("CARGO_BIN_EXE_leengine-core");

#[test]
fn core_reaches_etcd_with_its_certificate_and_names_a_bad_tls_file() {
    let etcd = te::Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("admin.password");
    std::fs::write(&password, "s3cret-admin\n").unwrap();
    let mut core = Command::new(BIN)
        .args(["--listen", &format!("127.0.0.1:{}", te::free_port())])
        .args(["--etcd", &etcd.endpoint()])
        .args(etcd.tls_args(&te::Component::Core))
        .arg("--admin-password-file")
        .arg(&password)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let admin = etcd.keys().core_user("admin");
    let written = te::wait_until(Duration::from_secs(20), || {
        !etcd
            .etcdctl(&["get", &admin, "--keys-only"])
            .stdout
            .is_empty()
    });
    let _ = core.kill();
    let _ = core.wait();
    assert!(
        written,
        "core did not create its admin through the TLS etcd"
    );

    let tls = etcd.tls_files(&te::Component::Core);
    let out = Command::new(BIN)
        .args(["--etcd", &etcd.endpoint()])
        .arg("--etcd-ca")
        .arg(&tls.ca)
        .arg("--etcd-cert")
        .arg(&tls.cert)
        .args(["--etcd-key", "/nonexistent/core.key"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot read etcd client key file /nonexistent/core.key: No such file"),
        "{err}"
    );
}

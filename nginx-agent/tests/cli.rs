//! Bad invocations end with status 1 and one readable line.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_leengine-nginx-agent"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_fail_with_one_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let conf = dir.path().join("c").display().to_string();
    let cases: [(&[&str], &str); 6] = [
        (&[], "--group"),
        (
            &["--group", "Bad Group", "--conf-dir", &conf],
            "--group \"Bad Group\"",
        ),
        (&["--group", "g", "--debounce", "soon"], "soon"),
        (
            &["--group", "g", "--nginx-user", "a;b"],
            "--nginx-user \"a;b\"",
        ),
        (
            &["--group", "g", "--conf-dir", "/proc/no/such"],
            "preparing /proc/no/such",
        ),
        (
            &[
                "--group",
                "g",
                "--conf-dir",
                &conf,
                "--etcd",
                "https://127.0.0.1:1",
                "--etcd-ca",
                "/nonexistent/ca.pem",
            ],
            "cannot read etcd CA file /nonexistent/ca.pem: No such file",
        ),
    ];
    for (args, needle) in cases {
        let (code, stderr) = run(args);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("leengine-nginx-agent: "), "{stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

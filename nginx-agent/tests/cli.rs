//! Bad invocations end with one readable line: status 2 for refused flags,
//! 1 for a start that fails (an unusable directory or TLS file).

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
    let cases: [(&[&str], &str, i32); 6] = [
        (&[], "--group", 2),
        (
            &["--group", "Bad Group", "--conf-dir", &conf],
            "--group \"Bad Group\"",
            2,
        ),
        (&["--group", "g", "--debounce", "soon"], "soon", 2),
        (
            &["--group", "g", "--nginx-user", "a;b"],
            "--nginx-user \"a;b\"",
            2,
        ),
        (
            &["--group", "g", "--conf-dir", "/proc/no/such"],
            "preparing /proc/no/such",
            1,
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
            1,
        ),
    ];
    for (args, needle, want) in cases {
        let (code, stderr) = run(args);
        assert_eq!(code, want, "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("leengine-nginx-agent: "), "{stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// SIGTERM (systemd's stop) ends the agent cleanly, also while it is still
/// waiting for an unreachable etcd.
#[test]
fn sigterm_stops_the_agent_while_etcd_is_unreachable() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_leengine-nginx-agent"))
        .args(["--group", "g", "--etcd", "http://127.0.0.1:1"])
        .arg("--conf-dir")
        .arg(dir.path().join("c"))
        .arg("--state-dir")
        .arg(dir.path().join("s"))
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start agent");
    // Up once it has said it is starting (etcd is dialled after that).
    let mut err = std::io::BufReader::new(agent.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("starting") {
        line.clear();
        let n = std::io::BufRead::read_line(&mut err, &mut line).expect("read log");
        assert!(n > 0, "agent ended before starting");
    }
    let pid = libc::pid_t::try_from(agent.id()).expect("pid");
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = agent.wait().expect("wait");
    assert!(status.success(), "{status:?}");
}

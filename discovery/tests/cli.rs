//! Bad flags and settings end the program with one line and exit 2 (usage),
//! before anything is changed (no etcd is needed for that).

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_leengine-discovery"))
        .args(args)
        .output()
        .expect("run leengine-discovery");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_settings_are_one_line_and_exit_2() {
    for (args, want) in [
        (vec!["--lease-ttl", "1s"], "--lease-ttl must be at least 2s"),
        (
            vec!["--min-write-interval", "11s"],
            "--min-write-interval must be at most 10s",
        ),
        (
            vec!["--lease-ttl", "soon"],
            "invalid value 'soon' for '--lease-ttl",
        ),
        (
            vec!["--etcd-cert", "/nonexistent.pem"],
            "client certificate given without its key",
        ),
        (
            vec!["--listen", "not-an-address"],
            "invalid value 'not-an-address' for '--listen",
        ),
    ] {
        let (code, err) = run(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line, got {err:?}");
        assert!(err.starts_with("leengine-discovery: error: "), "{err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

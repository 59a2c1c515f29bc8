//! A run killed with SIGKILL leaves daemons, namespaces and directories; the
//! next run must clean them up before it starts anything.

use std::path::Path;
use std::process::Command;

#[test]
fn leftovers_of_a_killed_run_are_reaped() {
    let out = Command::new(env!("CARGO_BIN_EXE_testenv-crash"))
        .output()
        .expect("run the crashing helper");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k} in {text}"))
            .to_string()
    };
    let netns = field("netns");
    let dir = field("dir");
    let pids: Vec<u32> = field("pids")
        .split(',')
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(
        Path::new("/run/netns").join(&netns).exists(),
        "crash left no netns"
    );
    assert!(
        pids.iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists()),
        "crash left no daemon"
    );

    leengine_testenv::reap_stale();

    assert!(
        !Path::new("/run/netns").join(&netns).exists(),
        "netns not reaped"
    );
    for p in &pids {
        let alive = std::fs::read_to_string(format!("/proc/{p}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false);
        assert!(!alive, "daemon {p} not reaped");
    }
    assert!(!Path::new(&dir).exists(), "run dir not reaped");
}

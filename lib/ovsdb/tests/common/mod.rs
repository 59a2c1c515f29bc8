//! Helpers shared by the integration tests (each test binary uses a subset).
#![allow(dead_code)]

use leengine_testenv as te;

/// A veth pair in the OVS host namespace; returns (host end, peer). Both ends are
/// brought up when `up`; they vanish with the namespace.
pub fn veth(ovs: &te::Ovs, up: bool) -> (String, String) {
    let a = te::unique_name("va");
    let b = te::unique_name("vb");
    run(
        ovs,
        &["ip", "link", "add", &a, "type", "veth", "peer", "name", &b],
    );
    if up {
        run(ovs, &["ip", "link", "set", &a, "up"]);
        run(ovs, &["ip", "link", "set", &b, "up"]);
    }
    (a, b)
}

/// Runs a command in the OVS host namespace, panicking with its stderr on failure.
pub fn run(ovs: &te::Ovs, argv: &[&str]) -> String {
    let out = ovs.command(argv).output().expect("spawn");
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ovs-vsctl get TABLE ROW COLUMN`, unquoted.
pub fn get(ovs: &te::Ovs, table: &str, row: &str, column: &str) -> String {
    ovs.vsctl(&["get", table, row, column])
        .trim_matches('"')
        .to_string()
}

/// Number of rows of `table` whose `column` equals `value` (ovs-vsctl find syntax).
pub fn count(ovs: &te::Ovs, table: &str, cond: &str) -> usize {
    ovs.vsctl(&["--bare", "--columns=_uuid", "find", table, cond])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

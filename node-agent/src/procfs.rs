//! /proc readers: per-task I/O and per-netns interface counters. Parsing is pure.

use std::collections::BTreeMap;
use std::path::Path;

/// `/proc/PID/io`: bytes this task group (and its reaped children) caused
/// to be read from / written to storage.
pub fn parse_task_io(text: &str) -> Option<(u64, u64)> {
    let get = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().parse::<u64>().ok())?
        })
    };
    Some((get("read_bytes")?, get("write_bytes")?))
}

/// Sum of [`parse_task_io`] over `pids` (tasks gone meanwhile are skipped).
pub fn tasks_io(pids: &[i32]) -> (u64, u64) {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/io")).ok())
        .filter_map(|t| parse_task_io(&t))
        .fold((0, 0), |(r, w), (a, b)| (r + a, w + b))
}

/// Counters of one interface from `/proc/net/dev`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfStats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// `/proc/net/dev` → counters by interface name.
pub fn parse_net_dev(text: &str) -> BTreeMap<String, IfStats> {
    let mut out = BTreeMap::new();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if f.len() < 16 {
            continue;
        }
        out.insert(
            name.trim().to_string(),
            IfStats {
                rx_bytes: f[0],
                rx_packets: f[1],
                tx_bytes: f[8],
                tx_packets: f[9],
            },
        );
    }
    out
}

/// Counters of `ifname` inside the namespace at `netns`. `/proc/net` shows
/// the namespace of the reading thread, so a helper thread enters it.
pub async fn netns_if_stats(netns: &Path, ifname: &str) -> Option<IfStats> {
    let ns = leengine_netdp::NetnsFile::open(netns).ok()?;
    let ifname = ifname.to_string();
    leengine_netdp::in_netns_async(&ns, move || {
        std::fs::read_to_string("/proc/thread-self/net/dev")
            .ok()
            .and_then(|t| parse_net_dev(&t).remove(&ifname))
    })
    .await
    .ok()
    .flatten()
}

/// `(st_dev, st_ino)` of a namespace file: two paths name the same netns
/// exactly when these match.
pub fn ns_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_io() {
        let t = "rchar: 5253836\nwchar: 5242974\nsyscr: 23\nsyscw: 8\nread_bytes: 4096\n\
                 write_bytes: 5242880\ncancelled_write_bytes: 0\n";
        assert_eq!(parse_task_io(t), Some((4096, 5242880)));
        assert_eq!(parse_task_io("rchar: 1\n"), None);
    }

    #[test]
    fn net_dev() {
        let t = "Inter-|   Receive                                                |  Transmit\n \
                 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
                 lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n  \
                 eth0: 1234567    890    0    0    0     0          0         0    54321      98    0    0    0     0       0          0\n";
        let m = parse_net_dev(t);
        assert_eq!(
            m["eth0"],
            IfStats {
                rx_bytes: 1234567,
                rx_packets: 890,
                tx_bytes: 54321,
                tx_packets: 98
            }
        );
        assert_eq!(m["lo"].rx_bytes, 100);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn own_process_and_netns() {
        assert_eq!(tasks_io(&[-1]), (0, 0), "gone tasks count nothing");
        let a = ns_id(Path::new("/proc/self/ns/net")).unwrap();
        assert_eq!(Some(a), ns_id(Path::new("/proc/thread-self/ns/net")));
    }
}

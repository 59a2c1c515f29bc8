//! Real network namespaces, real veths, observed with iproute2.

use leengine_netdp::{
    configure_sandbox, create_veth, del_link_in, format_mac, inspect, mac_from_ipv4,
    netns_has_ipv4, send_garp, GarpSpec, NetdpError, Netlink, NetnsFile, SandboxConfig, VethSpec,
};
use leengine_testenv as te;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

struct TestNs(te::Netns);

impl TestNs {
    fn new() -> Self {
        Self(te::Netns::new())
    }
    fn path(&self) -> PathBuf {
        self.0.path().to_path_buf()
    }
    fn name(&self) -> &str {
        self.0.name()
    }
    fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip"];
        full.extend_from_slice(args);
        String::from_utf8(self.0.must(&full).stdout).unwrap()
    }
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Plays the node's host namespace, so the test never touches the real host.
async fn host_ns() -> (TestNs, Netlink) {
    let ns = TestNs::new();
    let nl = Netlink::in_netns(&NetnsFile::open(&ns.path()).unwrap())
        .await
        .unwrap();
    (ns, nl)
}

fn host_has_link(host: &TestNs, name: &str) -> bool {
    host.0
        .command(&["ip", "link", "show", name])
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn unique_host_name(tag: &str) -> String {
    format!("t{tag}{}", std::process::id() % 100_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn veth_into_netns_with_address_route_mac_mtu_and_arp_notify() {
    let ns = TestNs::new();
    let nsf = NetnsFile::open(&ns.path()).unwrap();
    let (hns, host) = host_ns().await;
    let sandbox = Netlink::in_netns(&nsf).await.unwrap();
    let ip = Ipv4Addr::new(10, 99, 1, 5);
    let mac = mac_from_ipv4(ip);
    let host_if = unique_host_name("a");

    let spec = VethSpec {
        host_ifname: host_if.clone(),
        sandbox_ifname: "eth0".into(),
        mtu: 1400,
        sandbox_mac: Some(mac),
    };
    let (h, s) = create_veth(&host, &sandbox, &nsf, &spec).await.unwrap();
    assert!(h.up);
    assert_eq!(s.mac, Some(mac));
    assert!(host_has_link(&hns, &host_if));
    // The sandbox end was never in the host namespace under its own name.
    assert!(!ns.ip(&["link", "show", "eth0"]).is_empty());

    let cfg = SandboxConfig {
        ifname: "eth0".into(),
        mac: None,
        ip,
        prefix_len: 22,
        gateway: Some(Ipv4Addr::new(10, 99, 0, 1)),
        arp_notify: true,
        software_tx_checksum: false,
    };
    let done = configure_sandbox(&sandbox, &nsf, &cfg).await.unwrap();
    assert!(done.up);
    assert_eq!(done.mac, Some(mac));

    let addr = ns.ip(&["-4", "addr", "show", "eth0"]);
    assert!(addr.contains("10.99.1.5/22"), "{addr}");
    let link_out = ns.ip(&["link", "show", "eth0"]);
    assert!(link_out.contains(&format_mac(&mac)), "{link_out}");
    assert!(link_out.contains("mtu 1400"), "{link_out}");
    assert!(link_out.contains(",UP"), "the kernel has it up: {link_out}");
    let routes = ns.ip(&["-4", "route"]);
    assert!(
        routes.contains("default via 10.99.0.1 dev eth0"),
        "{routes}"
    );
    let notify = run(&[
        "ip",
        "netns",
        "exec",
        ns.name(),
        "cat",
        "/proc/sys/net/ipv4/conf/eth0/arp_notify",
    ]);
    assert_eq!(notify.trim(), "1");
    // The host's own setting is untouched by the in-netns write.
    assert!(
        std::fs::metadata("/proc/sys/net/ipv4/conf/eth0").is_err()
            || std::fs::read_to_string("/proc/sys/net/ipv4/conf/eth0/arp_notify")
                .unwrap()
                .trim()
                == "0"
    );

    let st = inspect(&sandbox, "eth0").await.unwrap().unwrap();
    assert_eq!(st.addrs, vec![(ip, 22)]);
    assert!(st
        .routes
        .iter()
        .any(|r| r.dst_len == 0 && r.gateway == Some(Ipv4Addr::new(10, 99, 0, 1))));
    assert!(inspect(&sandbox, "nope0").await.unwrap().is_none());

    assert!(netns_has_ipv4(&ns.path(), "eth0", ip).await.unwrap());
    assert!(
        !netns_has_ipv4(&ns.path(), "eth0", Ipv4Addr::new(10, 99, 1, 6))
            .await
            .unwrap()
    );
    assert!(!netns_has_ipv4(&ns.path(), "eth1", ip).await.unwrap());
    assert!(
        !netns_has_ipv4(&PathBuf::from("/run/netns/definitely-not-here"), "eth0", ip)
            .await
            .unwrap()
    );

    assert!(host.del_link(&host_if).await.unwrap());
    assert!(!host_has_link(&hns, &host_if));
    // The peer went with the host end.
    assert!(!ns.ip(&["link"]).contains("eth0"));
    // Everything already gone: still fine, and says so.
    assert!(!host.del_link(&host_if).await.unwrap());
    assert!(!del_link_in(&ns.path(), "eth0").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_sandbox_name_is_refused_before_anything_is_created() {
    let ns = TestNs::new();
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    let nsf = NetnsFile::open(&ns.path()).unwrap();
    let (hns, host) = host_ns().await;
    let sandbox = Netlink::in_netns(&nsf).await.unwrap();
    let host_if = unique_host_name("b");
    let spec = VethSpec {
        host_ifname: host_if.clone(),
        sandbox_ifname: "eth0".into(),
        mtu: 1500,
        sandbox_mac: None,
    };
    let err = create_veth(&host, &sandbox, &nsf, &spec).await.unwrap_err();
    assert!(matches!(err, NetdpError::LinkExists(_)), "{err}");
    assert!(!host_has_link(&hns, &host_if));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_netns_is_reported_as_missing_and_deleting_in_it_tolerates_it() {
    let p = PathBuf::from("/run/netns/ndp-missing-xyz");
    assert!(matches!(
        NetnsFile::open(&p),
        Err(NetdpError::NetnsMissing(_))
    ));
    assert!(!del_link_in(&p, "eth0").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gratuitous_arp_leaves_the_sandbox() {
    let ns = TestNs::new();
    let nsf = NetnsFile::open(&ns.path()).unwrap();
    let (hns, host) = host_ns().await;
    let sandbox = Netlink::in_netns(&nsf).await.unwrap();
    let ip = Ipv4Addr::new(10, 98, 0, 7);
    let mac = mac_from_ipv4(ip);
    let host_if = unique_host_name("g");
    let spec = VethSpec {
        host_ifname: host_if.clone(),
        sandbox_ifname: "eth0".into(),
        mtu: 1500,
        sandbox_mac: Some(mac),
    };
    create_veth(&host, &sandbox, &nsf, &spec).await.unwrap();
    let cfg = SandboxConfig {
        ifname: "eth0".into(),
        mac: None,
        ip,
        prefix_len: 24,
        gateway: None,
        arp_notify: false,
        software_tx_checksum: false,
    };
    configure_sandbox(&sandbox, &nsf, &cfg).await.unwrap();

    let mut dump = hns
        .0
        .command(&[
            "tcpdump", "-l", "-n", "-e", "-c", "3", "-i", &host_if, "arp",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(dump.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening") {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "tcpdump did not start"
        );
    }

    send_garp(
        &nsf,
        GarpSpec {
            ifname: "eth0".into(),
            mac,
            ip,
            count: 3,
            interval: Duration::from_millis(20),
        },
    )
    .await
    .unwrap();

    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || dump.wait_with_output()),
    )
    .await
    .expect("tcpdump saw 3 ARP frames")
    .unwrap()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let hits = text
        .lines()
        .filter(|l| l.contains(&format_mac(&mac)) && l.contains("who-has 10.98.0.7 tell 10.98.0.7"))
        .count();
    assert_eq!(hits, 3, "{text}");
    host.del_link(&host_if).await.unwrap();
}

/// `ethtool -k IFNAME` inside `ns`: is transmit checksumming on?
fn tx_checksumming(ns: &TestNs, ifname: &str) -> bool {
    let out = run(&["ip", "netns", "exec", ns.name(), "ethtool", "-k", ifname]);
    let line = out
        .lines()
        .find(|l| l.starts_with("tx-checksumming:"))
        .unwrap_or_else(|| panic!("no tx-checksumming in {out}"));
    line.contains(": on")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn software_tx_checksum_turns_the_sandbox_offload_off_and_only_when_asked() {
    for software in [false, true] {
        let ns = TestNs::new();
        let nsf = NetnsFile::open(&ns.path()).unwrap();
        let (_hns, host) = host_ns().await;
        let sandbox = Netlink::in_netns(&nsf).await.unwrap();
        let spec = VethSpec {
            host_ifname: unique_host_name("c"),
            sandbox_ifname: "eth0".into(),
            mtu: 1500,
            sandbox_mac: None,
        };
        create_veth(&host, &sandbox, &nsf, &spec).await.unwrap();
        assert!(
            tx_checksumming(&ns, "eth0"),
            "a new veth offloads checksums"
        );
        // The MAC of a veth made before its address was known.
        let mac = mac_from_ipv4(Ipv4Addr::new(10, 98, 1, 7));
        let cfg = SandboxConfig {
            ifname: "eth0".into(),
            mac: Some(mac),
            ip: Ipv4Addr::new(10, 98, 1, 7),
            prefix_len: 24,
            gateway: None,
            arp_notify: false,
            software_tx_checksum: software,
        };
        let done = configure_sandbox(&sandbox, &nsf, &cfg).await.unwrap();
        assert_eq!(done.mac, Some(mac));
        assert_eq!(
            tx_checksumming(&ns, "eth0"),
            !software,
            "software={software}"
        );
    }
}

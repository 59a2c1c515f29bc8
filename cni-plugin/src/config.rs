//! The network configuration on stdin (one plugin entry of a conflist, as
//! libcni hands it over with `name`, `cniVersion`, `runtimeConfig` and
//! `prevResult` filled in).

use crate::error::{
    CniError, CniResult, DECODE, INCOMPATIBLE_VERSION, INVALID_CONFIG, UNSUPPORTED_FIELD,
};
use crate::version;
use leengine_store::EtcdConfig;
use serde::Deserialize;
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_OVSDB: &str = "unix:/var/run/openvswitch/db.sock";
pub const DEFAULT_MTU: u32 = 1500;
pub const DEFAULT_GARP: Garp = Garp {
    count: 3,
    interval: Duration::from_millis(50),
};
/// GC leaves attachments younger than this alone: the runtime's list of
/// valid attachments is older than the call, and an ADD it has not recorded
/// yet must survive.
pub const DEFAULT_GC_GRACE: Duration = Duration::from_secs(300);

/// Keys allowed at the top level; anything else is a typo worth refusing.
const KNOWN_KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "capabilities",
    "runtimeConfig",
    "prevResult",
    "args",
    "dns",
    "bridge",
    "ovsdb",
    "etcd",
    "node",
    "pools",
    "mtu",
    "garp",
    "hostNetns",
    "agentSocket",
    "gcGraceSecs",
    "cni.dev/valid-attachments",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Garp {
    pub count: u32,
    pub interval: Duration,
}

#[derive(Clone, Debug)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub bridge: String,
    pub ovsdb: String,
    pub etcd: EtcdConfig,
    pub node: Option<String>,
    pub pools: Vec<String>,
    pub mtu: u32,
    /// `None` = gratuitous ARP off (`"garp": false`).
    pub garp: Option<Garp>,
    pub dns: Option<Value>,
    /// Network namespace holding ovs-vswitchd and the host veth ends;
    /// `None` = the namespace the plugin runs in.
    pub host_netns: Option<PathBuf>,
    /// The node-agent's CNI service: the call is handed to it, else (nothing
    /// listens there) done in this process.
    pub agent_socket: Option<PathBuf>,
    /// GC only collects attachments at least this old.
    pub gc_grace: Duration,
    pub runtime_ips: Vec<Ipv4Addr>,
    pub runtime_mac: Option<[u8; 6]>,
    pub prev_result: Option<Value>,
    /// GC's `cni.dev/valid-attachments`: (container id, ifname).
    pub valid_attachments: Option<Vec<(String, String)>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawEtcd {
    endpoints: Vec<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    ca: Option<String>,
    #[serde(default)]
    cert: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    password_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawGarp {
    count: u32,
    interval_ms: u64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawGarpOrBool {
    Bool(bool),
    Garp(RawGarp),
}

#[derive(Deserialize, Default)]
struct RawRuntime {
    #[serde(default)]
    ips: Vec<String>,
    #[serde(default)]
    mac: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    name: String,
    #[serde(rename = "type")]
    _type: String,
    bridge: String,
    #[serde(default)]
    ovsdb: Option<String>,
    etcd: RawEtcd,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    pools: Vec<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    garp: Option<RawGarpOrBool>,
    #[serde(default)]
    dns: Option<Value>,
    #[serde(default)]
    host_netns: Option<PathBuf>,
    #[serde(default)]
    agent_socket: Option<PathBuf>,
    #[serde(default)]
    gc_grace_secs: Option<u64>,
    #[serde(default)]
    runtime_config: Option<RawRuntime>,
    #[serde(default)]
    prev_result: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<RawAttachment>>,
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(INVALID_CONFIG, msg)
}

/// Just the `cniVersion`, for commands (VERSION) and error replies that need
/// it before or without a full parse.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_string)
}

/// Parses and validates the whole configuration.
pub fn parse(stdin: &[u8]) -> CniResult<NetConf> {
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(DECODE, "network configuration on stdin is not valid JSON")
            .with_details(e.to_string())
    })?;
    let obj = value
        .as_object()
        .ok_or_else(|| invalid("network configuration must be a JSON object"))?;
    let cni_version = match obj.get("cniVersion") {
        None => return Err(invalid("cniVersion is missing")),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(invalid("cniVersion must be a string")),
    };
    if !version::is_supported(&cni_version) {
        return Err(CniError::new(
            INCOMPATIBLE_VERSION,
            format!("incompatible CNI version {cni_version:?}"),
        )
        .with_details(format!("supported: {}", version::SUPPORTED.join(", "))));
    }
    if obj.contains_key("ipam") {
        return Err(invalid(
            "\"ipam\" is not used: leengine allocates from the etcd pools itself; remove it",
        ));
    }
    if let Some(k) = obj.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
        return Err(invalid(format!("unknown configuration key {k:?}")));
    }
    let raw: Raw = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        invalid(format!(
            "invalid network configuration at {path}: {}",
            e.into_inner()
        ))
    })?;
    validate(cni_version, raw)
}

fn validate(cni_version: String, raw: Raw) -> CniResult<NetConf> {
    let segment_ok =
        |s: &str| !s.is_empty() && !s.contains('/') && !s.chars().any(char::is_whitespace);
    // Recorded with every attachment (GC scope), so it must be a key segment.
    if !segment_ok(&raw.name) {
        return Err(invalid(format!(
            "name {:?} is not a valid network name",
            raw.name
        )));
    }
    if crate::env::validate_ifname(&raw.bridge).is_err() {
        return Err(invalid(format!(
            "bridge {:?} is not a valid interface name",
            raw.bridge
        )));
    }
    let ovsdb = raw.ovsdb.unwrap_or_else(|| DEFAULT_OVSDB.to_string());
    ovsdb.parse::<leengine_ovsdb::Endpoint>().map_err(|_| {
        invalid(format!(
            "ovsdb {ovsdb:?}: expected unix:PATH or tcp:HOST:PORT"
        ))
    })?;
    if raw.etcd.endpoints.is_empty() {
        return Err(invalid("etcd.endpoints must list at least one URL"));
    }
    for ep in &raw.etcd.endpoints {
        let rest = ep
            .strip_prefix("http://")
            .or_else(|| ep.strip_prefix("https://"));
        if rest.is_none_or(|r| r.is_empty() || r.contains('/')) {
            return Err(invalid(format!(
                "etcd endpoint {ep:?}: expected http://HOST:PORT or https://HOST:PORT"
            )));
        }
    }
    if raw.etcd.cert.is_some() != raw.etcd.key.is_some() {
        return Err(invalid("etcd.cert and etcd.key go together"));
    }
    if let Some(p) = &raw.etcd.prefix {
        if p.is_empty() || p == "/" {
            return Err(invalid("etcd.prefix must not be empty"));
        }
    }
    if let Some(n) = &raw.node {
        if !segment_ok(n) {
            return Err(invalid(format!("node {n:?} is not a valid node name")));
        }
    }
    for p in &raw.pools {
        if !segment_ok(p) {
            return Err(invalid(format!("pool name {p:?} is invalid")));
        }
    }
    let mtu = raw.mtu.unwrap_or(DEFAULT_MTU);
    if !(68..=65535).contains(&mtu) {
        return Err(invalid(format!("mtu {mtu} is outside 68..65535")));
    }
    let garp = match raw.garp {
        None | Some(RawGarpOrBool::Bool(true)) => Some(DEFAULT_GARP),
        Some(RawGarpOrBool::Bool(false)) => None,
        Some(RawGarpOrBool::Garp(g)) => {
            if !(1..=100).contains(&g.count) {
                return Err(invalid(format!("garp.count {} is outside 1..100", g.count)));
            }
            if g.interval_ms > 10_000 {
                return Err(invalid(format!(
                    "garp.intervalMs {} is above 10000",
                    g.interval_ms
                )));
            }
            Some(Garp {
                count: g.count,
                interval: Duration::from_millis(g.interval_ms),
            })
        }
    };
    if let Some(dns) = &raw.dns {
        if !dns.is_object() {
            return Err(invalid("dns must be an object"));
        }
    }
    for (key, path) in [
        ("hostNetns", &raw.host_netns),
        ("agentSocket", &raw.agent_socket),
    ] {
        if let Some(p) = path.as_ref().filter(|p| !p.is_absolute()) {
            return Err(invalid(format!(
                "{key} {} is not an absolute path",
                p.display()
            )));
        }
    }
    let rt = raw.runtime_config.unwrap_or_default();
    let runtime_ips = rt
        .ips
        .iter()
        .map(|s| {
            let addr = s.split_once('/').map_or(s.as_str(), |(a, _)| a);
            if addr.parse::<std::net::Ipv6Addr>().is_ok() {
                return Err(CniError::new(
                    UNSUPPORTED_FIELD,
                    format!("runtimeConfig.ips: {s:?}: IPv6 is not supported"),
                ));
            }
            addr.parse::<Ipv4Addr>()
                .map_err(|_| invalid(format!("runtimeConfig.ips: {s:?} is not an IPv4 address")))
        })
        .collect::<CniResult<Vec<_>>>()?;
    if runtime_ips.len() > 1 {
        return Err(CniError::new(
            UNSUPPORTED_FIELD,
            format!(
                "runtimeConfig.ips: {:?}: only one IPv4 address per attachment",
                rt.ips
            ),
        ));
    }
    let runtime_mac = match &rt.mac {
        None => None,
        Some(m) => {
            let mac = leengine_netdp::parse_mac(m)
                .ok_or_else(|| invalid(format!("runtimeConfig.mac {m:?} is not a MAC address")))?;
            if mac[0] & 1 == 1 || mac == [0; 6] {
                return Err(invalid(format!(
                    "runtimeConfig.mac {m:?} is not a unicast address"
                )));
            }
            Some(mac)
        }
    };
    Ok(NetConf {
        cni_version,
        name: raw.name,
        bridge: raw.bridge,
        ovsdb,
        etcd: EtcdConfig {
            endpoints: raw.etcd.endpoints,
            prefix: raw.etcd.prefix,
            ca: raw.etcd.ca,
            cert: raw.etcd.cert,
            key: raw.etcd.key,
            user: raw.etcd.user,
            password_file: raw.etcd.password_file,
        },
        node: raw.node,
        pools: raw.pools,
        mtu,
        garp,
        dns: raw.dns,
        host_netns: raw.host_netns,
        agent_socket: raw.agent_socket,
        gc_grace: raw
            .gc_grace_secs
            .map_or(DEFAULT_GC_GRACE, Duration::from_secs),
        runtime_ips,
        runtime_mac,
        prev_result: raw.prev_result,
        valid_attachments: raw
            .valid_attachments
            .map(|v| v.into_iter().map(|a| (a.container_id, a.ifname)).collect()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "cniVersion": "1.0.0", "name": "pods", "type": "leengine",
            "bridge": "br0", "etcd": { "endpoints": ["http://127.0.0.1:2379"] }
        })
    }

    fn with(key: &str, v: Value) -> Vec<u8> {
        let mut b = base();
        b[key] = v;
        serde_json::to_vec(&b).unwrap()
    }

    /// The conflist the Debian package installs as /etc/leengine/cni/,
    /// as libcni hands its first plugin to us.
    #[test]
    fn packaged_conflist_parses() {
        let list: Value =
            serde_json::from_str(include_str!("../debian/10-leengine.conflist")).unwrap();
        let mut plugin = list["plugins"][0].clone();
        plugin["cniVersion"] = list["cniVersion"].clone();
        plugin["name"] = list["name"].clone();
        let c = parse(&serde_json::to_vec(&plugin).unwrap()).unwrap();
        assert_eq!(
            (c.bridge.as_str(), c.ovsdb.as_str()),
            ("br0", DEFAULT_OVSDB)
        );
        assert_eq!(
            c.etcd.cert.as_deref(),
            Some("/etc/leengine/pki/cni-plugin.pem")
        );
        // Where the packaged node-agent serves (its DEFAULT_CNI_SOCKET).
        assert_eq!(
            c.agent_socket.as_deref(),
            Some(std::path::Path::new("/run/leengine/cni.sock"))
        );
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(&serde_json::to_vec(&base()).unwrap()).unwrap();
        assert_eq!(c.mtu, DEFAULT_MTU);
        assert_eq!(c.ovsdb, DEFAULT_OVSDB);
        assert_eq!(c.garp, Some(DEFAULT_GARP));
        assert!(c.pools.is_empty());
        assert_eq!(c.gc_grace, DEFAULT_GC_GRACE);
        let c = parse(&with("gcGraceSecs", json!(0))).unwrap();
        assert_eq!(c.gc_grace, Duration::ZERO);
    }

    #[test]
    fn full_config_like_the_docs() {
        let c = parse(
            br#"{ "cniVersion": "1.1.0", "name": "pods", "type": "leengine", "bridge": "br0",
              "ovsdb": "tcp:127.0.0.1:6640",
              "etcd": { "endpoints": ["https://10.0.0.1:2379"], "prefix": "/le", "ca": "/ca.pem", "cert": "/c.pem", "key": "/k.pem" },
              "node": "n1", "pools": ["a", "b"], "mtu": 9000, "garp": { "count": 2, "intervalMs": 10 },
              "dns": { "nameservers": ["10.0.0.2"] },
              "runtimeConfig": { "ips": ["10.1.0.9/22"], "mac": "0a:00:00:00:00:01", "portMappings": [] },
              "capabilities": { "ips": true, "mac": true } }"#,
        )
        .unwrap();
        assert_eq!(c.pools, vec!["a", "b"]);
        assert_eq!(
            c.garp,
            Some(Garp {
                count: 2,
                interval: Duration::from_millis(10)
            })
        );
        assert_eq!(c.runtime_ips, vec![Ipv4Addr::new(10, 1, 0, 9)]);
        assert_eq!(c.runtime_mac, Some([0x0a, 0, 0, 0, 0, 1]));
        assert_eq!(c.etcd.keys().prefix(), "/le");
        assert_eq!(parse(&with("garp", json!(false))).unwrap().garp, None);
    }

    #[test]
    fn each_bad_config_has_a_precise_code_and_message() {
        let cases: Vec<(Vec<u8>, u32, &str)> = vec![
            (b"not json".to_vec(), DECODE, "JSON"),
            (b"[]".to_vec(), INVALID_CONFIG, "object"),
            (
                with("cniVersion", json!("0.2.0")),
                INCOMPATIBLE_VERSION,
                "0.2.0",
            ),
            (with("cniVersion", json!(1)), INVALID_CONFIG, "cniVersion"),
            (with("brige", json!("x")), INVALID_CONFIG, "brige"),
            (
                with("ipam", json!({"type": "host-local"})),
                INVALID_CONFIG,
                "ipam",
            ),
            (with("bridge", json!("")), INVALID_CONFIG, "bridge"),
            (with("name", json!("")), INVALID_CONFIG, "name"),
            (with("name", json!("a/b")), INVALID_CONFIG, "name"),
            (
                with("gcGraceSecs", json!(-1)),
                INVALID_CONFIG,
                "gcGraceSecs",
            ),
            (
                with("bridge", json!("a-very-long-bridge-name")),
                INVALID_CONFIG,
                "bridge",
            ),
            (with("bridge", json!(5)), INVALID_CONFIG, "bridge"),
            (with("mtu", json!(20)), INVALID_CONFIG, "mtu"),
            (with("mtu", json!("big")), INVALID_CONFIG, "mtu"),
            (
                with("ovsdb", json!("/var/run/db.sock")),
                INVALID_CONFIG,
                "ovsdb",
            ),
            (
                with("etcd", json!({"endpoints": []})),
                INVALID_CONFIG,
                "endpoints",
            ),
            (
                with("etcd", json!({"endpoints": ["127.0.0.1:2379"]})),
                INVALID_CONFIG,
                "127.0.0.1:2379",
            ),
            (
                with("etcd", json!({"endpoints": ["http://h:1"], "cert": "/c"})),
                INVALID_CONFIG,
                "key",
            ),
            (
                with("etcd", json!({"endpoints": ["http://h:1"], "tls": true})),
                INVALID_CONFIG,
                "tls",
            ),
            (
                with("garp", json!({"count": 0, "intervalMs": 5})),
                INVALID_CONFIG,
                "garp.count",
            ),
            (
                with("garp", json!({"count": 3, "intervalMs": 50000})),
                INVALID_CONFIG,
                "intervalMs",
            ),
            (with("garp", json!("yes")), INVALID_CONFIG, "garp"),
            (with("pools", json!(["a/b"])), INVALID_CONFIG, "a/b"),
            (with("node", json!("")), INVALID_CONFIG, "node"),
            (with("dns", json!([])), INVALID_CONFIG, "dns"),
            (
                with("hostNetns", json!("run/netns/x")),
                INVALID_CONFIG,
                "hostNetns",
            ),
            (
                with("agentSocket", json!("run/leengine/cni.sock")),
                INVALID_CONFIG,
                "agentSocket",
            ),
            (with("agentSocket", json!(7)), INVALID_CONFIG, "agentSocket"),
            (
                with("runtimeConfig", json!({"ips": ["fe80::1/64"]})),
                UNSUPPORTED_FIELD,
                "fe80",
            ),
            (
                with("runtimeConfig", json!({"ips": ["10.0.0.1", "10.0.0.2"]})),
                UNSUPPORTED_FIELD,
                "10.0.0.2",
            ),
            (
                with("runtimeConfig", json!({"ips": ["10.0.0.x"]})),
                INVALID_CONFIG,
                "10.0.0.x",
            ),
            (
                with("runtimeConfig", json!({"mac": "01:00:00:00:00:01"})),
                INVALID_CONFIG,
                "unicast",
            ),
            (
                with("runtimeConfig", json!({"mac": "zz"})),
                INVALID_CONFIG,
                "zz",
            ),
        ];
        for (input, code, needle) in cases {
            let err = parse(&input).unwrap_err();
            assert_eq!(err.code, code, "{}: {err}", String::from_utf8_lossy(&input));
            assert!(
                format!("{} {}", err.msg, err.details).contains(needle),
                "{needle}: {err}"
            );
        }
        let mut no_etcd = base();
        no_etcd.as_object_mut().unwrap().remove("etcd");
        let err = parse(&serde_json::to_vec(&no_etcd).unwrap()).unwrap_err();
        assert!(err.msg.contains("etcd"), "{err}");
        let mut no_version = base();
        no_version.as_object_mut().unwrap().remove("cniVersion");
        assert!(parse(&serde_json::to_vec(&no_version).unwrap())
            .unwrap_err()
            .msg
            .contains("cniVersion"));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("bridge".to_string()),
                        Just("etcd".to_string()),
                        Just("mtu".to_string()),
                        Just("garp".to_string()),
                        Just("endpoints".to_string()),
                        Just("runtimeConfig".to_string()),
                        Just("ips".to_string()),
                        "[a-z]{1,6}"
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_map_to_config_codes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Err(e) = parse(&bytes) {
                prop_assert!([DECODE, INVALID_CONFIG, INCOMPATIBLE_VERSION, UNSUPPORTED_FIELD].contains(&e.code));
            }
        }

        #[test]
        fn mutated_fields_never_panic(key in prop_oneof![
                Just("bridge"), Just("etcd"), Just("mtu"), Just("garp"), Just("pools"), Just("node"),
                Just("runtimeConfig"), Just("ovsdb"), Just("dns"), Just("cni.dev/valid-attachments")],
            v in arb_json()) {
            match parse(&with(key, v)) {
                Ok(c) => {
                    prop_assert!((68..=65535).contains(&c.mtu));
                    prop_assert!(!c.bridge.is_empty() && c.bridge.len() <= 15);
                    prop_assert!(!c.etcd.endpoints.is_empty());
                }
                Err(e) => prop_assert!([INVALID_CONFIG, UNSUPPORTED_FIELD].contains(&e.code), "{}", e),
            }
        }
    }
}

//! The CNI_* environment and CNI_ARGS, validated the way libcni fills them.

use crate::error::{CniError, CniResult, INVALID_ENV};
use std::net::Ipv4Addr;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            _ => return None,
        })
    }
}

/// CNI_ARGS keys this plugin reads; kubelet and podman also send the others listed in [`KNOWN_ARGS`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub ip: Option<Ipv4Addr>,
}

const KNOWN_ARGS: &[&str] = &[
    "IgnoreUnknown",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
    "IP",
];

/// Everything the runtime passed in the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    pub args: CniArgs,
    pub path: Option<String>,
}

fn bad(msg: impl Into<String>) -> CniError {
    CniError::new(INVALID_ENV, msg)
}

/// Reads the environment through `get` (so tests need no process env).
pub fn parse_env(get: impl Fn(&str) -> Option<String>) -> CniResult<CniEnv> {
    let non_empty = |k: &str| get(k).filter(|v| !v.is_empty());
    let command = match get("CNI_COMMAND") {
        None => return Err(bad("CNI_COMMAND is not set")),
        Some(c) => Command::parse(&c).ok_or_else(|| {
            bad(format!(
                "unknown CNI_COMMAND {c:?}: expected ADD, DEL, CHECK, VERSION, STATUS or GC"
            ))
        })?,
    };
    // libcni asks VERSION with placeholder values ("dummy") in the other
    // variables: they mean nothing then and must not be judged.
    if command == Command::Version {
        return Ok(CniEnv {
            command,
            container_id: None,
            netns: None,
            ifname: None,
            args: CniArgs::default(),
            path: None,
        });
    }
    let env = CniEnv {
        command,
        container_id: non_empty("CNI_CONTAINERID"),
        netns: non_empty("CNI_NETNS").map(PathBuf::from),
        ifname: non_empty("CNI_IFNAME"),
        args: parse_args(&get("CNI_ARGS").unwrap_or_default())?,
        path: non_empty("CNI_PATH"),
    };
    let needs: &[&str] = match command {
        Command::Add | Command::Check => {
            &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
        }
        Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
        Command::Version | Command::Status | Command::Gc => &[],
    };
    for var in needs {
        let present = match *var {
            "CNI_CONTAINERID" => env.container_id.is_some(),
            "CNI_NETNS" => env.netns.is_some(),
            "CNI_IFNAME" => env.ifname.is_some(),
            _ => env.path.is_some(),
        };
        if !present {
            return Err(bad(format!(
                "{var} is required for {command:?} but not set"
            )));
        }
    }
    if let Some(id) = &env.container_id {
        validate_container_id(id)?;
    }
    if let Some(ifname) = &env.ifname {
        validate_ifname(ifname)?;
    }
    if let Some(ns) = &env.netns {
        if !ns.is_absolute() {
            return Err(bad(format!(
                "CNI_NETNS {} is not an absolute path",
                ns.display()
            )));
        }
    }
    Ok(env)
}

/// The spec's container id rule: `[A-Za-z0-9][A-Za-z0-9_.-]*`.
pub fn validate_container_id(id: &str) -> CniResult<()> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok && id.len() <= 256 {
        Ok(())
    } else {
        Err(bad(format!(
            "CNI_CONTAINERID {id:?} is invalid: letters, digits, '_', '.', '-' only, starting with a letter or digit"
        )))
    }
}

/// Linux interface name rules (IFNAMSIZ, no '/', ':' or whitespace).
pub fn validate_ifname(name: &str) -> CniResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "CNI_IFNAME {name:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"
        )))
    }
}

/// `K=V;K=V`. Unknown keys are refused unless `IgnoreUnknown=1`, like the
/// reference plugins do.
pub fn parse_args(raw: &str) -> CniResult<CniArgs> {
    let mut out = CniArgs::default();
    let mut seen: Vec<&str> = Vec::new();
    let mut unknown: Vec<&str> = Vec::new();
    let mut ignore_unknown = false;
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| bad(format!("CNI_ARGS: {pair:?} is not KEY=VALUE")))?;
        if k.is_empty() {
            return Err(bad(format!("CNI_ARGS: empty key in {pair:?}")));
        }
        if seen.contains(&k) {
            return Err(bad(format!("CNI_ARGS: {k} given twice")));
        }
        seen.push(k);
        match k {
            "IgnoreUnknown" => {
                ignore_unknown = match v.to_ascii_lowercase().as_str() {
                    "1" | "true" => true,
                    "0" | "false" | "" => false,
                    _ => {
                        return Err(bad(format!(
                            "CNI_ARGS: IgnoreUnknown={v:?} is not a boolean"
                        )))
                    }
                }
            }
            "K8S_POD_NAMESPACE" => out.pod_namespace = Some(k8s_name(k, v)?),
            "K8S_POD_NAME" => out.pod_name = Some(k8s_name(k, v)?),
            "IP" => out.ip = Some(parse_ip_arg(v)?),
            _ if KNOWN_ARGS.contains(&k) => {}
            _ => unknown.push(k),
        }
    }
    if !unknown.is_empty() && !ignore_unknown {
        return Err(bad(format!(
            "CNI_ARGS: unknown key(s) {} (add IgnoreUnknown=1 to allow them)",
            unknown.join(", ")
        )));
    }
    Ok(out)
}

fn k8s_name(key: &str, v: &str) -> CniResult<String> {
    if v.is_empty() || v.len() > 253 || v.contains('/') || v.chars().any(char::is_control) {
        return Err(bad(format!("CNI_ARGS: {key}={v:?} is not a valid name")));
    }
    Ok(v.to_string())
}

/// `IP=10.0.0.5` or `IP=10.0.0.5/22` (the length is the pool's anyway).
fn parse_ip_arg(v: &str) -> CniResult<Ipv4Addr> {
    let addr = v.split_once('/').map_or(v, |(a, len)| {
        if len.parse::<u8>().is_ok_and(|l| l <= 32) {
            a
        } else {
            "invalid"
        }
    });
    addr.parse()
        .map_err(|_| bad(format!("CNI_ARGS: IP={v:?} is not an IPv4 address")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> CniResult<CniEnv> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_env(|k| m.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];

    #[test]
    fn full_add_env_parses() {
        let e = env_of(ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.ifname.as_deref(), Some("eth0"));
    }

    #[test]
    fn each_missing_var_is_named() {
        for skip in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
            let pairs: Vec<_> = ADD.iter().copied().filter(|(k, _)| *k != skip).collect();
            let err = env_of(&pairs).unwrap_err();
            assert_eq!(err.code, INVALID_ENV);
            assert!(err.msg.contains(skip), "{err}");
        }
        let err = env_of(&[]).unwrap_err();
        assert!(err.msg.contains("CNI_COMMAND"));
    }

    #[test]
    fn del_does_not_need_a_netns_and_version_needs_nothing() {
        let pairs: Vec<_> = ADD
            .iter()
            .map(|(k, v)| {
                if *k == "CNI_COMMAND" {
                    (*k, "DEL")
                } else {
                    (*k, *v)
                }
            })
            .filter(|(k, _)| *k != "CNI_NETNS")
            .collect();
        assert_eq!(env_of(&pairs).unwrap().command, Command::Del);
        assert_eq!(
            env_of(&[("CNI_COMMAND", "VERSION")]).unwrap().command,
            Command::Version
        );
    }

    #[test]
    fn unknown_command_is_invalid_env() {
        let err = env_of(&[("CNI_COMMAND", "FROB")]).unwrap_err();
        assert_eq!(err.code, INVALID_ENV);
        assert!(err.msg.contains("FROB"));
    }

    #[test]
    fn bad_ids_and_ifnames_are_refused() {
        for id in ["-abc", "a/b", "a b", "ä"] {
            assert!(validate_container_id(id).is_err(), "{id}");
        }
        for name in ["", ".", "..", "a/b", "a:b", "a b", "abcdefghijklmnop"] {
            assert!(validate_ifname(name).is_err(), "{name}");
        }
        validate_ifname("abcdefghijklmno").unwrap();
    }

    #[test]
    fn args_like_kubelet_and_podman() {
        let a = parse_args(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u;FOO=bar",
        )
        .unwrap();
        assert_eq!(a.pod_namespace.as_deref(), Some("default"));
        assert_eq!(a.pod_name.as_deref(), Some("web-1"));
        assert_eq!(
            parse_args("IP=10.0.0.5").unwrap().ip,
            Some(Ipv4Addr::new(10, 0, 0, 5))
        );
        assert_eq!(
            parse_args("IP=10.0.0.5/22").unwrap().ip,
            Some(Ipv4Addr::new(10, 0, 0, 5))
        );
        assert_eq!(parse_args("").unwrap(), CniArgs::default());
    }

    #[test]
    fn bad_args_are_named() {
        for (raw, needle) in [
            ("FOO=bar", "FOO"),
            ("IP=10.0.0.300", "IP"),
            ("IP=10.0.0.3/40", "IP"),
            ("K8S_POD_NAME=a/b", "K8S_POD_NAME"),
            ("noequals", "noequals"),
            ("=v", "empty key"),
            ("IP=1.2.3.4;IP=1.2.3.5", "twice"),
            ("IgnoreUnknown=maybe", "IgnoreUnknown"),
        ] {
            let err = parse_args(raw).unwrap_err();
            assert_eq!(err.code, INVALID_ENV);
            assert!(err.msg.contains(needle), "{raw}: {err}");
        }
    }

    proptest! {
        #[test]
        fn args_parser_never_panics_and_errors_are_env_errors(raw in ".{0,80}") {
            if let Err(e) = parse_args(&raw) {
                prop_assert_eq!(e.code, INVALID_ENV);
            }
        }

        #[test]
        fn well_formed_args_round_trip(ns in "[a-z0-9-]{1,20}", name in "[a-z0-9.-]{1,30}", ip in any::<[u8; 4]>()) {
            let ip = Ipv4Addr::from(ip);
            let a = parse_args(&format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};IP={ip}")).unwrap();
            prop_assert_eq!(a.pod_namespace, Some(ns));
            prop_assert_eq!(a.pod_name, Some(name));
            prop_assert_eq!(a.ip, Some(ip));
        }

        #[test]
        fn env_parser_never_panics(cmd in ".{0,10}", id in ".{0,20}", ifname in ".{0,20}", ns in ".{0,20}") {
            let _ = env_of(&[
                ("CNI_COMMAND", &cmd), ("CNI_CONTAINERID", &id), ("CNI_IFNAME", &ifname),
                ("CNI_NETNS", &ns), ("CNI_PATH", "/x"),
            ]);
        }
    }
}

//! The CNI result, rendered for the requested spec version and read back
//! from `prevResult` (CHECK).

use crate::version;
use ipnet::Ipv4Net;
use serde_json::{json, Map, Value};
use std::net::Ipv4Addr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub mtu: Option<u32>,
    /// The netns path for the container end; `None` for the host end.
    pub sandbox: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpConfig {
    pub address: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Net,
    pub gw: Option<Ipv4Addr>,
}

/// The success result of ADD (and the `prevResult` CHECK compares with);
/// not to be confused with [`crate::error::CniResult`], a `Result` alias.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SuccessResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Option<Value>,
}

impl SuccessResult {
    /// JSON for spec version `v` (0.3.0 … 1.1.0).
    pub fn to_json(&self, v: &str) -> Value {
        let with_mtu = version::at_least(v, "1.1.0");
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), json!(i.name));
                o.insert("mac".into(), json!(i.mac));
                if let (true, Some(mtu)) = (with_mtu, i.mtu) {
                    o.insert("mtu".into(), json!(mtu));
                }
                if let Some(s) = &i.sandbox {
                    o.insert("sandbox".into(), json!(s));
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if version::ips_carry_version(v) {
                    o.insert("version".into(), json!("4"));
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), json!(gw.to_string()));
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), json!(i));
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| match r.gw {
                Some(gw) => json!({ "dst": r.dst.to_string(), "gw": gw.to_string() }),
                None => json!({ "dst": r.dst.to_string() }),
            })
            .collect();
        let mut out = json!({
            "cniVersion": v,
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
        });
        if let Some(dns) = &self.dns {
            out["dns"] = dns.clone();
        }
        out
    }

    /// Reads a result of any supported version; IPv6 entries are skipped.
    pub fn from_json(v: &Value) -> Result<Self, String> {
        let o = v.as_object().ok_or("prevResult is not an object")?;
        let str_of = |x: &Value, what: &str| -> Result<String, String> {
            x.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("prevResult: {what} is not a string"))
        };
        let mut out = SuccessResult::default();
        for i in arr(o.get("interfaces"))? {
            out.interfaces.push(Interface {
                name: str_of(i.get("name").unwrap_or(&Value::Null), "interface name")?,
                mac: i
                    .get("mac")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                mtu: i
                    .get("mtu")
                    .and_then(Value::as_u64)
                    .and_then(|m| u32::try_from(m).ok()),
                sandbox: i.get("sandbox").and_then(Value::as_str).map(str::to_string),
            });
        }
        for ip in arr(o.get("ips"))? {
            let addr = str_of(ip.get("address").unwrap_or(&Value::Null), "ips[].address")?;
            if addr.contains(':') {
                continue;
            }
            let address: Ipv4Net = addr
                .parse()
                .map_err(|_| format!("prevResult: bad address {addr:?}"))?;
            let gateway = match ip.get("gateway").and_then(Value::as_str) {
                Some(g) => Some(
                    g.parse()
                        .map_err(|_| format!("prevResult: bad gateway {g:?}"))?,
                ),
                None => None,
            };
            out.ips.push(IpConfig {
                address,
                gateway,
                interface: ip
                    .get("interface")
                    .and_then(Value::as_u64)
                    .and_then(|i| usize::try_from(i).ok()),
            });
        }
        for r in arr(o.get("routes"))? {
            let dst = str_of(r.get("dst").unwrap_or(&Value::Null), "routes[].dst")?;
            if dst.contains(':') {
                continue;
            }
            out.routes.push(Route {
                dst: dst
                    .parse()
                    .map_err(|_| format!("prevResult: bad route {dst:?}"))?,
                gw: match r.get("gw").and_then(Value::as_str) {
                    Some(g) => Some(g.parse().map_err(|_| format!("prevResult: bad gw {g:?}"))?),
                    None => None,
                },
            });
        }
        out.dns = o.get("dns").cloned();
        Ok(out)
    }
}

fn arr(v: Option<&Value>) -> Result<&[Value], String> {
    match v {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err("prevResult: expected an array".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SuccessResult {
        SuccessResult {
            interfaces: vec![
                Interface {
                    name: "le0123".into(),
                    mac: "aa:aa:aa:aa:aa:aa".into(),
                    mtu: Some(1500),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "0a:4c:0a:01:00:05".into(),
                    mtu: Some(1500),
                    sandbox: Some("/run/netns/x".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.1.0.5/22".parse().unwrap(),
                gateway: Some("10.1.0.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.1.0.1".parse().unwrap()),
            }],
            dns: None,
        }
    }

    #[test]
    fn old_versions_carry_ip_version_new_ones_mtu() {
        let old = sample().to_json("0.3.1");
        assert_eq!(old["ips"][0]["version"], "4");
        assert!(old["interfaces"][0].get("mtu").is_none());
        assert!(old.get("dns").is_none());
        let v100 = sample().to_json("1.0.0");
        assert!(v100["ips"][0].get("version").is_none());
        assert!(v100["interfaces"][1].get("mtu").is_none());
        let new = sample().to_json("1.1.0");
        assert_eq!(new["interfaces"][1]["mtu"], 1500);
        assert_eq!(new["ips"][0]["interface"], 1);
        assert_eq!(new["routes"][0]["gw"], "10.1.0.1");
        assert_eq!(new["cniVersion"], "1.1.0");
    }

    #[test]
    fn every_version_round_trips() {
        for v in crate::version::SUPPORTED {
            let mut want = sample();
            if !crate::version::at_least(v, "1.1.0") {
                for i in &mut want.interfaces {
                    i.mtu = None;
                }
            }
            assert_eq!(
                SuccessResult::from_json(&sample().to_json(v)).unwrap(),
                want,
                "{v}"
            );
        }
    }

    #[test]
    fn dns_passes_through() {
        let mut r = sample();
        r.dns = Some(json!({ "nameservers": ["10.0.0.2"] }));
        assert_eq!(r.to_json("0.4.0")["dns"]["nameservers"][0], "10.0.0.2");
    }
}

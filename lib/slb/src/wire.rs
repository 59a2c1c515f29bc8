//! The line format the agent sends to nginx's admin endpoint and dumps to
//! disk, chosen so the lua side needs no JSON library (Debian's lua module
//! ships without cjson):
//!
//! ```text
//! @a.example.com rr -                 section: domain, method, hash key or -
//! 10.0.0.1:8080 1 1 10 0              address weight max_fails fail_timeout down
//! !b.example.com                      remove a domain (merge mode only)
//! =a.example.com return {...}         the lua router's route of a domain
//! ~a.example.com                      remove a route (merge mode only)
//! >80|www.a.example.com a.example.com the domain serving a server name on a listen
//! <80|www.a.example.com               remove that (merge mode only)
//! ```
//!
//! Each write is an item with a key (`u:{domain}`, `r:{domain}`,
//! `h:{listen}|{name}`, as in nginx's shared dict); the agent diffs items
//! and nginx answers a refused one by its key.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::model::{Balancing, Server, Upstream};
use crate::SlbError;

/// Encodes upserts (`Some`) and removals (`None`).
pub fn encode<'a>(items: impl IntoIterator<Item = (&'a str, Option<&'a Upstream>)>) -> String {
    let mut s = String::new();
    for (domain, up) in items {
        match up {
            None => {
                let _ = writeln!(s, "!{domain}");
            }
            Some(up) => {
                let (method, key) = match &up.balancing {
                    Balancing::RoundRobin => ("rr", "-"),
                    Balancing::LeastConn => ("least_conn", "-"),
                    Balancing::Hash { key } => ("hash", key.as_str()),
                };
                let _ = writeln!(s, "@{domain} {method} {key}");
                for sv in &up.servers {
                    let _ = writeln!(
                        s,
                        "{} {} {} {} {}",
                        sv.address,
                        sv.weight,
                        sv.max_fails,
                        sv.fail_timeout,
                        u8::from(sv.down)
                    );
                }
            }
        }
    }
    s
}

/// Everything the agent pushes to nginx.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub upstreams: BTreeMap<String, Upstream>,
    /// Route text by domain (`crate::route::Route::text`).
    pub routes: BTreeMap<String, String>,
    /// `{listen}|{name}` -> domain.
    pub hosts: BTreeMap<String, String>,
}

impl State {
    /// The state as items: key -> its wire text.
    pub fn items(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (d, u) in &self.upstreams {
            out.insert(format!("u:{d}"), upstream_item(d, u));
        }
        for (d, r) in &self.routes {
            out.insert(format!("r:{d}"), route_item(d, r));
        }
        for (h, d) in &self.hosts {
            out.insert(format!("h:{h}"), host_item(h, d));
        }
        out
    }
}

/// The wire text of item `u:{domain}`.
pub fn upstream_item(domain: &str, up: &Upstream) -> String {
    encode([(domain, Some(up))])
}

/// The wire text of item `r:{domain}`.
pub fn route_item(domain: &str, text: &str) -> String {
    format!("={domain} {text}\n")
}

/// The wire text of item `h:{host}`.
pub fn host_item(host: &str, domain: &str) -> String {
    format!(">{host} {domain}\n")
}

/// The wire line removing the item `key`.
pub fn removal(key: &str) -> String {
    match key.split_once(':') {
        Some(("r", d)) => format!("~{d}\n"),
        Some(("h", h)) => format!("<{h}\n"),
        Some((_, d)) => format!("!{d}\n"),
        None => format!("!{key}\n"),
    }
}

/// The domain an item belongs to (`None` for server-name items).
pub fn item_domain(key: &str) -> Option<&str> {
    match key.split_once(':') {
        Some(("u" | "r", d)) => Some(d),
        _ => None,
    }
}

/// Encodes a full state (for a replace push or the dump).
pub fn encode_all(state: &State) -> String {
    state.items().into_values().collect()
}

/// Parses a full state written by [`encode_all`] (the agent's dump).
pub fn decode_all(text: &str) -> Result<State, SlbError> {
    let mut state = State::default();
    let out = &mut state.upstreams;
    let mut current: Option<(String, Upstream)> = None;
    for (n, line) in text.lines().enumerate() {
        let bad = |why: &str| SlbError::invalid(format!("line {}", n + 1), why.to_string());
        if line.is_empty() {
            continue;
        }
        if let Some(head) = line.strip_prefix('@') {
            if let Some((d, u)) = current.take() {
                out.insert(d, u);
            }
            let f: Vec<&str> = head.split(' ').collect();
            let [domain, method, key] = f[..] else {
                return Err(bad("section header needs domain, method, key"));
            };
            let balancing = match (method, key) {
                ("rr", "-") => Balancing::RoundRobin,
                ("least_conn", "-") => Balancing::LeastConn,
                ("hash", k) if k != "-" => Balancing::Hash { key: k.into() },
                _ => return Err(bad("unknown balancing method")),
            };
            current = Some((
                domain.to_string(),
                Upstream {
                    servers: Vec::new(),
                    balancing,
                },
            ));
        } else if let Some(rest) = line.strip_prefix('=') {
            let Some((d, text)) = rest.split_once(' ') else {
                return Err(bad("route line needs domain and text"));
            };
            state.routes.insert(d.to_string(), text.to_string());
        } else if let Some(rest) = line.strip_prefix('>') {
            let Some((h, d)) = rest.split_once(' ') else {
                return Err(bad("host line needs host and domain"));
            };
            state.hosts.insert(h.to_string(), d.to_string());
        } else if line.starts_with(['!', '~', '<']) {
            return Err(bad("removal in a full state"));
        } else {
            let Some((_, up)) = current.as_mut() else {
                return Err(bad("server before any section"));
            };
            let f: Vec<&str> = line.split(' ').collect();
            let [addr, w, mf, ft, down] = f[..] else {
                return Err(bad("server line needs 5 fields"));
            };
            let num = |s: &str| s.parse::<u32>().map_err(|_| bad("not a number"));
            let mut sv = Server::new(addr.parse().map_err(|_| bad("not an ip:port"))?);
            sv.weight = num(w)?;
            sv.max_fails = num(mf)?;
            sv.fail_timeout = num(ft)?;
            sv.down = down == "1";
            up.servers.push(sv);
        }
    }
    if let Some((d, u)) = current {
        out.insert(d, u);
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(json: &str) -> Upstream {
        Upstream::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn encodes_sections_and_removals() {
        let a = up(
            r#"{"servers":[{"address":"10.0.0.1:80","weight":3},{"address":"[::1]:81","down":true}]}"#,
        );
        let text = encode([("a.com", Some(&a)), ("b.com", None)]);
        assert_eq!(
            text,
            "@a.com rr -\n10.0.0.1:80 3 1 10 0\n[::1]:81 1 1 10 1\n!b.com\n"
        );
    }

    #[test]
    fn full_state_round_trips() {
        let mut state = State::default();
        let m = &mut state.upstreams;
        m.insert("a.com".to_string(), up(r#"{"servers":[{"address":"10.0.0.1:80","maxFails":0,"failTimeout":3}],"balancing":{"method":"least_conn"}}"#));
        m.insert(
            "b.com".to_string(),
            up(r#"{"balancing":{"method":"hash","key":"$request_uri"}}"#),
        );
        m.insert(
            "c.com".to_string(),
            up(r#"{"servers":[{"address":"10.0.0.2:80"},{"address":"10.0.0.3:80"}]}"#),
        );
        state
            .routes
            .insert("c.com".into(), "return {h={},locs={}}".into());
        state.hosts.insert("80|*.c.com".into(), "c.com".into());
        assert_eq!(decode_all(&encode_all(&state)).unwrap(), state);
        assert_eq!(removal("r:c.com"), "~c.com\n");
        assert_eq!(removal("h:80|*.c.com"), "<80|*.c.com\n");
        assert_eq!(removal("u:c.com"), "!c.com\n");
        assert_eq!(item_domain("h:80|c.com"), None);
    }

    #[test]
    fn decode_rejects_garbage() {
        assert!(decode_all("10.0.0.1:80 1 1 10 0\n").is_err());
        assert!(decode_all("@a.com weird -\n").is_err());
        assert!(decode_all("@a.com rr -\nx 1 1 10 0\n").is_err());
        assert!(decode_all("!a.com\n").is_err());
    }
}

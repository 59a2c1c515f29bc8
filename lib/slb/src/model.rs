//! The JSON records under `/slb/{group}/domains/{domain}/` and their
//! validation. Validation rejects everything the renderer could not quote
//! safely; what only nginx can judge (certificate files, variables, regexes)
//! is left to `nginx -t` on the agent.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::SlbError;

/// `/slb/{group}/domains/{domain}/config`: everything except the peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DomainConfig {
    /// `server_name`s; empty means just the domain itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
    #[serde(default = "default_listen")]
    pub listen: Vec<Listen>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// Empty means one location `/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locations: Vec<Location>,
    /// Response headers added by the server block (`add_header`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// nginx size, e.g. `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_max_body_size: Option<String>,
}

fn default_listen() -> Vec<Listen> {
    vec![Listen {
        port: 80,
        address: None,
        ssl: false,
    }]
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listen {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    #[serde(default)]
    pub ssl: bool,
}

/// Paths of PEM files present on every nginx host of the group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tls {
    pub certificate: String,
    pub certificate_key: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Location {
    pub path: String,
    #[serde(default, rename = "match")]
    pub match_: LocationMatch,
    /// `proxy_set_header` (values may use nginx variables such as `$host`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub proxy_headers: BTreeMap<String, String>,
    /// Response headers (`add_header`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// nginx times, e.g. `5s`, `500ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_max_body_size: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rewrites: Vec<Rewrite>,
}

impl Location {
    pub fn root() -> Self {
        Self {
            path: "/".into(),
            match_: LocationMatch::Prefix,
            proxy_headers: BTreeMap::new(),
            headers: BTreeMap::new(),
            connect_timeout: None,
            read_timeout: None,
            send_timeout: None,
            client_max_body_size: None,
            rewrites: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocationMatch {
    #[default]
    Prefix,
    Exact,
    Regex,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rewrite {
    /// PCRE, checked by `nginx -t`.
    pub pattern: String,
    pub replacement: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<RewriteFlag>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewriteFlag {
    Last,
    Break,
    Redirect,
    Permanent,
}

/// `/slb/{group}/domains/{domain}/upstream`: the peers, swapped without reload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Upstream {
    #[serde(default)]
    pub servers: Vec<Server>,
    #[serde(default)]
    pub balancing: Balancing,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    /// `ip:port` (`[v6]:port` for IPv6).
    pub address: SocketAddr,
    #[serde(default = "one")]
    pub weight: u32,
    /// Failures within `failTimeout` that take the server out for
    /// `failTimeout`; 0 never takes it out.
    #[serde(default = "one")]
    pub max_fails: u32,
    /// Seconds.
    #[serde(default = "ten")]
    pub fail_timeout: u32,
    #[serde(default)]
    pub down: bool,
}

impl Server {
    pub fn new(address: SocketAddr) -> Self {
        Self {
            address,
            weight: 1,
            max_fails: 1,
            fail_timeout: 10,
            down: false,
        }
    }
}

fn one() -> u32 {
    1
}
fn ten() -> u32 {
    10
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum Balancing {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Fewest active requests per weight, counted across workers.
    LeastConn,
    /// Consistent hash ring over one nginx variable, e.g. `$remote_addr`.
    Hash { key: String },
}

pub const MAX_WEIGHT: u32 = 100;
pub const MAX_FAIL_TIMEOUT: u32 = 3600;
const MAX_TEXT: usize = 1024;

impl DomainConfig {
    /// Parses and validates the record stored for `domain`.
    pub fn parse(domain: &str, json: &[u8]) -> Result<Self, SlbError> {
        let cfg: Self = serde_json::from_slice(json)?;
        cfg.validate(domain)?;
        Ok(cfg)
    }

    /// The config as one host serves it: a listen entry naming no address
    /// binds `host` (the host's own address, `--listen-address`), so several
    /// hosts of a group can share one machine's ports, or a host keeps its
    /// other addresses free. An entry naming its address keeps it. `None`
    /// leaves every entry as written (all addresses).
    pub fn bound_to(mut self, host: Option<IpAddr>) -> Self {
        for l in &mut self.listen {
            l.address = l.address.or(host);
        }
        self
    }

    /// Refuses a listen entry on `port` (the agent's admin port): on the
    /// same address its catch-all `default_server` would take the admin
    /// server's requests; on another it would expose the port. Checked by
    /// the agent, which alone knows the port.
    pub fn check_reserved_port(&self, port: u16) -> Result<(), SlbError> {
        match self.listen.iter().position(|l| l.port == port) {
            Some(i) => Err(SlbError::invalid(
                format!("listen[{i}].port"),
                format!("port {port} is the nginx agent's admin port on this host"),
            )),
            None => Ok(()),
        }
    }

    pub fn validate(&self, domain: &str) -> Result<(), SlbError> {
        validate_domain(domain)?;
        for (i, name) in self.server_names.iter().enumerate() {
            validate_server_name(name)
                .map_err(|r| SlbError::invalid(format!("serverNames[{i}]"), r))?;
        }
        if self.listen.is_empty() {
            return Err(SlbError::invalid(
                "listen",
                "at least one listen entry is required",
            ));
        }
        for (i, l) in self.listen.iter().enumerate() {
            if l.port == 0 {
                return Err(SlbError::invalid(
                    format!("listen[{i}].port"),
                    "port 0 is not allowed",
                ));
            }
        }
        let ssl = self.listen.iter().any(|l| l.ssl);
        match (&self.tls, ssl) {
            (None, true) => {
                return Err(SlbError::invalid(
                    "tls",
                    "a listen entry has ssl but no tls certificate is set",
                ))
            }
            (Some(_), false) => {
                return Err(SlbError::invalid(
                    "tls",
                    "a certificate is set but no listen entry has ssl",
                ))
            }
            (Some(t), true) => {
                validate_abs_path(&t.certificate)
                    .map_err(|r| SlbError::invalid("tls.certificate", r))?;
                validate_abs_path(&t.certificate_key)
                    .map_err(|r| SlbError::invalid("tls.certificateKey", r))?;
            }
            (None, false) => {}
        }
        validate_headers("headers", &self.headers)?;
        if let Some(s) = &self.client_max_body_size {
            validate_size(s).map_err(|r| SlbError::invalid("clientMaxBodySize", r))?;
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, loc) in self.locations.iter().enumerate() {
            let f = |n: &str| format!("locations[{i}].{n}");
            validate_location_path(loc).map_err(|r| SlbError::invalid(f("path"), r))?;
            if !seen.insert((loc.match_ as u8, loc.path.as_str())) {
                return Err(SlbError::invalid(f("path"), "duplicate location"));
            }
            validate_headers(&f("proxyHeaders"), &loc.proxy_headers)?;
            validate_headers(&f("headers"), &loc.headers)?;
            for (name, t) in [
                ("connectTimeout", &loc.connect_timeout),
                ("readTimeout", &loc.read_timeout),
                ("sendTimeout", &loc.send_timeout),
            ] {
                if let Some(t) = t {
                    validate_time(t).map_err(|r| SlbError::invalid(f(name), r))?;
                }
            }
            if let Some(s) = &loc.client_max_body_size {
                validate_size(s).map_err(|r| SlbError::invalid(f("clientMaxBodySize"), r))?;
            }
            for (j, rw) in loc.rewrites.iter().enumerate() {
                validate_text(&rw.pattern)
                    .map_err(|r| SlbError::invalid(f(&format!("rewrites[{j}].pattern")), r))?;
                validate_text(&rw.replacement)
                    .map_err(|r| SlbError::invalid(f(&format!("rewrites[{j}].replacement")), r))?;
            }
        }
        Ok(())
    }

    pub fn effective_server_names(&self, domain: &str) -> Vec<String> {
        if self.server_names.is_empty() {
            vec![domain.to_string()]
        } else {
            self.server_names.clone()
        }
    }

    pub fn effective_locations(&self) -> Vec<Location> {
        if self.locations.is_empty() {
            vec![Location::root()]
        } else {
            self.locations.clone()
        }
    }
}

impl Upstream {
    pub fn parse(json: &[u8]) -> Result<Self, SlbError> {
        let up: Self = serde_json::from_slice(json)?;
        up.validate()?;
        Ok(up)
    }

    pub fn validate(&self) -> Result<(), SlbError> {
        let mut seen = std::collections::BTreeSet::new();
        for (i, s) in self.servers.iter().enumerate() {
            let f = |n: &str| format!("servers[{i}].{n}");
            if !seen.insert(s.address) {
                return Err(SlbError::invalid(
                    f("address"),
                    format!("duplicate server {}", s.address),
                ));
            }
            if s.address.port() == 0 {
                return Err(SlbError::invalid(f("address"), "port 0 is not allowed"));
            }
            if s.address.ip().is_unspecified() {
                return Err(SlbError::invalid(f("address"), "unspecified address"));
            }
            if !(1..=MAX_WEIGHT).contains(&s.weight) {
                return Err(SlbError::invalid(
                    f("weight"),
                    format!("must be 1..={MAX_WEIGHT}"),
                ));
            }
            if !(1..=MAX_FAIL_TIMEOUT).contains(&s.fail_timeout) {
                return Err(SlbError::invalid(
                    f("failTimeout"),
                    format!("must be 1..={MAX_FAIL_TIMEOUT} seconds"),
                ));
            }
        }
        if let Balancing::Hash { key } = &self.balancing {
            let name = key.strip_prefix('$').unwrap_or("");
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(SlbError::invalid(
                    "balancing.key",
                    "must be one nginx variable such as $remote_addr or $request_uri",
                ));
            }
        }
        Ok(())
    }
}

/// A domain is also a key segment and part of the upstream name: plain
/// lowercase DNS names only.
pub fn validate_domain(domain: &str) -> Result<(), SlbError> {
    let ok = !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(SlbError::invalid(
            "domain",
            format!("{domain:?} is not a lowercase DNS name (letters, digits, '-', dots)"),
        ))
    }
}

fn validate_server_name(name: &str) -> Result<(), String> {
    let base = name.strip_prefix("*.").unwrap_or(name);
    validate_domain(base).map_err(|_| format!("{name:?} is not a DNS name or *.wildcard"))
}

fn validate_text(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_TEXT {
        return Err(format!("longer than {MAX_TEXT} bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    Ok(())
}

fn validate_abs_path(p: &str) -> Result<(), String> {
    validate_text(p)?;
    if !p.starts_with('/') {
        return Err(format!("{p:?} is not an absolute path"));
    }
    Ok(())
}

fn validate_headers(field: &str, headers: &BTreeMap<String, String>) -> Result<(), SlbError> {
    for (name, value) in headers {
        let token = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !token {
            return Err(SlbError::invalid(
                field,
                format!("{name:?} is not a header name"),
            ));
        }
        validate_text(value).map_err(|r| SlbError::invalid(format!("{field}.{name}"), r))?;
    }
    Ok(())
}

fn validate_location_path(loc: &Location) -> Result<(), String> {
    validate_text(&loc.path)?;
    if loc.match_ != LocationMatch::Regex && !loc.path.starts_with('/') {
        return Err(format!("{:?} must start with '/'", loc.path));
    }
    if loc.path.contains(char::is_whitespace) {
        return Err("must not contain whitespace".into());
    }
    Ok(())
}

fn validate_number_with_units(s: &str, units: &[&str], what: &str) -> Result<(), String> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let unit = &s[digits..];
    if digits == 0 || digits > 9 || !units.contains(&unit) {
        return Err(format!(
            "{s:?} is not an nginx {what} (number with one of {units:?})"
        ));
    }
    Ok(())
}

fn validate_time(s: &str) -> Result<(), String> {
    validate_number_with_units(s, &["", "ms", "s", "m", "h"], "time")
}

fn validate_size(s: &str) -> Result<(), String> {
    validate_number_with_units(s, &["", "k", "K", "m", "M", "g", "G"], "size")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_field(e: SlbError) -> String {
        match e {
            SlbError::Invalid { field, .. } => field,
            SlbError::Json(j) => format!("json: {j}"),
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = DomainConfig::parse("a.example.com", b"{}").unwrap();
        assert_eq!(c.listen[0].port, 80);
        assert_eq!(
            c.effective_server_names("a.example.com"),
            vec!["a.example.com"]
        );
        assert_eq!(c.effective_locations()[0].path, "/");
    }

    #[test]
    fn full_config_round_trips() {
        let json = r#"{"serverNames":["a.example.com","*.a.example.com"],
            "listen":[{"port":80},{"port":443,"ssl":true}],
            "tls":{"certificate":"/etc/ssl/a.pem","certificateKey":"/etc/ssl/a.key"},
            "headers":{"X-Frame-Options":"DENY"},"clientMaxBodySize":"10m",
            "locations":[{"path":"/api","proxyHeaders":{"Host":"$host"},"readTimeout":"30s",
              "rewrites":[{"pattern":"^/api/(.*)$","replacement":"/$1","flag":"break"}]},
              {"path":"^/img/.*\\.png$","match":"regex"}]}"#;
        let c = DomainConfig::parse("a.example.com", json.as_bytes()).unwrap();
        let again = serde_json::to_vec(&c).unwrap();
        assert_eq!(DomainConfig::parse("a.example.com", &again).unwrap(), c);
    }

    #[test]
    fn rejects_bad_configs_with_the_field() {
        let cases = [
            (r#"{"serverNames":["a b"]}"#, "serverNames[0]"),
            (r#"{"listen":[]}"#, "listen"),
            (r#"{"listen":[{"port":0}]}"#, "listen[0].port"),
            (r#"{"listen":[{"port":443,"ssl":true}]}"#, "tls"),
            (
                r#"{"tls":{"certificate":"/a","certificateKey":"/b"}}"#,
                "tls",
            ),
            (
                r#"{"listen":[{"port":443,"ssl":true}],"tls":{"certificate":"a","certificateKey":"/b"}}"#,
                "tls.certificate",
            ),
            (r#"{"headers":{"Bad Name":"x"}}"#, "headers"),
            (r#"{"headers":{"X":"a\nb"}}"#, "headers.X"),
            (r#"{"locations":[{"path":"api"}]}"#, "locations[0].path"),
            (
                r#"{"locations":[{"path":"/"},{"path":"/"}]}"#,
                "locations[1].path",
            ),
            (
                r#"{"locations":[{"path":"/","readTimeout":"5 s"}]}"#,
                "locations[0].readTimeout",
            ),
            (r#"{"clientMaxBodySize":"10x"}"#, "clientMaxBodySize"),
        ];
        for (json, field) in cases {
            let e = DomainConfig::parse("a.example.com", json.as_bytes()).unwrap_err();
            assert_eq!(err_field(e), field, "{json}");
        }
        assert!(matches!(
            DomainConfig::parse("a.example.com", br#"{"listn":[]}"#),
            Err(SlbError::Json(_))
        ));
        assert_eq!(
            err_field(DomainConfig::parse("A.com", b"{}").unwrap_err()),
            "domain"
        );
        assert_eq!(
            err_field(DomainConfig::parse("a/b", b"{}").unwrap_err()),
            "domain"
        );
    }

    #[test]
    fn a_host_address_binds_only_the_entries_naming_none() {
        let c = DomainConfig::parse(
            "a.com",
            br#"{"listen":[{"port":80},{"port":81,"address":"10.0.0.9"}]}"#,
        )
        .unwrap();
        let host: IpAddr = "127.0.0.2".parse().unwrap();
        let bound = c.clone().bound_to(Some(host));
        let addrs: Vec<_> = bound.listen.iter().map(|l| l.address).collect();
        assert_eq!(addrs, [Some(host), Some("10.0.0.9".parse().unwrap())]);
        assert_eq!(c.clone().bound_to(None), c);
    }

    #[test]
    fn the_admin_port_is_reserved() {
        let c = DomainConfig::parse("a.com", br#"{"listen":[{"port":80},{"port":8999}]}"#).unwrap();
        assert_eq!(
            c.check_reserved_port(8999).unwrap_err().to_string(),
            "listen[1].port: port 8999 is the nginx agent's admin port on this host"
        );
        assert!(c.check_reserved_port(9000).is_ok());
    }

    #[test]
    fn upstream_defaults_and_checks() {
        let u = Upstream::parse(br#"{"servers":[{"address":"10.0.0.1:8080"}]}"#).unwrap();
        assert_eq!(u.servers[0], Server::new("10.0.0.1:8080".parse().unwrap()));
        assert_eq!(u.balancing, Balancing::RoundRobin);
        let h =
            Upstream::parse(br#"{"balancing":{"method":"hash","key":"$remote_addr"}}"#).unwrap();
        assert_eq!(
            h.balancing,
            Balancing::Hash {
                key: "$remote_addr".into()
            }
        );
        let cases = [
            (
                r#"{"servers":[{"address":"10.0.0.1:1"},{"address":"10.0.0.1:1"}]}"#,
                "servers[1].address",
            ),
            (
                r#"{"servers":[{"address":"10.0.0.1:0"}]}"#,
                "servers[0].address",
            ),
            (
                r#"{"servers":[{"address":"0.0.0.0:80"}]}"#,
                "servers[0].address",
            ),
            (
                r#"{"servers":[{"address":"10.0.0.1:1","weight":0}]}"#,
                "servers[0].weight",
            ),
            (
                r#"{"servers":[{"address":"10.0.0.1:1","failTimeout":0}]}"#,
                "servers[0].failTimeout",
            ),
            (
                r#"{"balancing":{"method":"hash","key":"remote_addr"}}"#,
                "balancing.key",
            ),
            (
                r#"{"balancing":{"method":"hash","key":"$a;b"}}"#,
                "balancing.key",
            ),
        ];
        for (json, field) in cases {
            assert_eq!(
                err_field(Upstream::parse(json.as_bytes()).unwrap_err()),
                field,
                "{json}"
            );
        }
        assert!(matches!(
            Upstream::parse(br#"{"servers":[{"address":"nohost"}]}"#),
            Err(SlbError::Json(_))
        ));
    }
}

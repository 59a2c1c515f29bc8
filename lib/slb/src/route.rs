//! The lua router's form of a domain config (`leengine/router.lua`): a
//! domain without TLS is served by one shared server per listen address,
//! and its behaviour is data in the shared dict instead of a generated
//! server block, so changing it needs no reload. Everything nginx would
//! resolve at config load (inheritance of `add_header`, the default body
//! size, the implicit `Host` header, sizes and times) is resolved here, so
//! the lua side only follows nginx's request-time order.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::model::{DomainConfig, Listen, LocationMatch, RewriteFlag};
use crate::render::{
    certificate_lines, listen_addr, lua_string, quote, server_name_line, NO_PEERS,
};
use crate::SlbError;

/// A domain's route: the table the router reads (`r:{domain}`) and the
/// `{listen}|{server name}` keys pointing at the domain (`h:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// One line of lua: `return {...}`.
    pub text: String,
    pub hosts: Vec<String>,
    /// Listen addresses as the router file writes them (`80`, `10.0.0.1:8080`).
    pub listens: Vec<String>,
}

/// nginx's default `client_max_body_size`.
const DEFAULT_BODY: u64 = 1024 * 1024;

/// TLS needs its certificate at config load: a domain with an `ssl` listen
/// gets a server block of its own there ([`render_tls_servers`]) that holds
/// only what selects it (listens, server names, certificate) and routes
/// through the same lua router, so its other fields still change without a
/// reload.
pub fn needs_tls_server(cfg: &DomainConfig) -> bool {
    cfg.listen.iter().any(|l| l.ssl)
}

/// The router's key of a listen: an `ssl` one is served by the domain's own
/// TLS server, never by a shared router server (`/` cannot be in an address).
fn listen_key(l: &Listen) -> String {
    if l.ssl {
        format!("{}{TLS_SUFFIX}", listen_addr(l))
    } else {
        listen_addr(l)
    }
}

const TLS_SUFFIX: &str = "/ssl";

/// The server blocks of a domain with `ssl` listens: one per such listen
/// (the router tells listens apart by `$leengine_listen`), each carrying
/// the certificate and handing every request to the router. They change
/// only when a listen, a server name or the certificate does.
pub fn render_tls_servers(domain: &str, cfg: &DomainConfig) -> String {
    let mut s = format!("# {domain}: TLS, routed by lua; written by leengine-nginx-agent.\n");
    let (names, certificate) = (server_name_line(domain, cfg), certificate_lines(cfg));
    for l in cfg.listen.iter().filter(|l| l.ssl) {
        let _ = write!(
            s,
            "server {{\n    listen {} ssl;\n{names}{certificate}",
            listen_addr(l)
        );
        s.push_str(&router_body(&listen_key(l)));
    }
    s
}

/// What every server handing its requests to the router holds after its
/// listens.
fn router_body(key: &str) -> String {
    format!(
        "    set $leengine_listen {};\n    set $leengine_proxy_host $host;\n    \
# The router judges every location's own limit.\n    client_max_body_size 0;\n    \
location / {{\n        \
rewrite_by_lua_block {{ require(\"leengine.router\").route() }}\n        \
header_filter_by_lua_block {{ require(\"leengine.router\").headers() }}\n        \
proxy_set_header Connection \"\";\n        \
proxy_set_header Host $leengine_proxy_host;\n        \
proxy_pass http://{ROUTER_UPSTREAM};\n    }}\n}}\n",
        quote(key)
    )
}

/// The route of a validated, lua-routable config. Refuses variables nginx
/// does not know (what `nginx -t` says about a generated file).
pub fn render_route(domain: &str, cfg: &DomainConfig) -> Result<Route, SlbError> {
    let server_body = match &cfg.client_max_body_size {
        Some(s) => size_bytes(s),
        None => DEFAULT_BODY,
    };
    check_vars("headers", cfg.headers.values())?;
    let mut t = String::from("return {");
    let _ = write!(t, "h={},locs={{", pairs(&cfg.headers));
    for (i, loc) in cfg.effective_locations().iter().enumerate() {
        let field = |n: &str| format!("locations[{i}].{n}");
        check_vars(&field("headers"), loc.headers.values())?;
        check_vars(&field("proxyHeaders"), loc.proxy_headers.values())?;
        for rw in &loc.rewrites {
            check_vars(&field("rewrites"), [&rw.replacement])?;
        }
        let m = match loc.match_ {
            LocationMatch::Prefix => "p",
            LocationMatch::Exact => "e",
            LocationMatch::Regex => "r",
        };
        let _ = write!(t, "{{path={},m=\"{m}\"", lua_string(&loc.path));
        if loc.match_ != LocationMatch::Regex && loc.path.ends_with('/') {
            t.push_str(",slash=true");
        }
        let body = loc
            .client_max_body_size
            .as_deref()
            .map_or(server_body, size_bytes);
        let _ = write!(t, ",body={body}");
        let host = loc
            .proxy_headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("host"))
            .map_or("$host", |(_, v)| v.as_str());
        let _ = write!(t, ",host={}", lua_string(host));
        let others: BTreeMap<String, String> = loc
            .proxy_headers
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("host"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let _ = write!(t, ",ph={}", pairs(&others));
        if !loc.headers.is_empty() {
            let _ = write!(t, ",h={}", pairs(&loc.headers));
        }
        for (key, value) in [
            ("ct", &loc.connect_timeout),
            ("st", &loc.send_timeout),
            ("rt", &loc.read_timeout),
        ] {
            if let Some(v) = value {
                let _ = write!(t, ",{key}={}", time_seconds(v));
            }
        }
        t.push_str(",rw={");
        for rw in &loc.rewrites {
            let flag = match rw.flag {
                None => "nil",
                Some(RewriteFlag::Last) => "\"last\"",
                Some(RewriteFlag::Break) => "\"break\"",
                Some(RewriteFlag::Redirect) => "\"redirect\"",
                Some(RewriteFlag::Permanent) => "\"permanent\"",
            };
            let _ = write!(
                t,
                "{{{},{},{flag}}},",
                lua_string(&rw.pattern),
                lua_string(&rw.replacement)
            );
        }
        t.push_str("}},");
    }
    t.push_str("}}");
    let listens: Vec<String> = cfg.listen.iter().map(listen_key).collect();
    let names = cfg.effective_server_names(domain);
    let hosts = listens
        .iter()
        .flat_map(|l| names.iter().map(move |n| format!("{l}|{n}")))
        .collect();
    Ok(Route {
        text: t,
        hosts,
        listens,
    })
}

/// `{{"name","value"},...}` in the (sorted) order nginx gets the directives.
fn pairs(map: &BTreeMap<String, String>) -> String {
    let mut s = String::from("{");
    for (k, v) in map {
        let _ = write!(s, "{{{},{}}},", lua_string(k), lua_string(v));
    }
    s.push('}');
    s
}

/// The shared servers of the lua-routed listens: each is the listen's
/// `default_server` (a generated TLS domain's server block on the same
/// address still wins for its own names) and hands every request to the
/// router. Its `listen` lines end in `default_server`, which tells
/// [`crate::render::render_default_servers`] the address is covered.
pub fn render_router<'a>(listens: impl IntoIterator<Item = &'a str>) -> String {
    let mut s = String::from("# Lua-routed listens; written by leengine-nginx-agent.\n");
    let mut any = false;
    for l in listens {
        any = true;
        if l.ends_with(TLS_SUFFIX) {
            continue;
        }
        let _ = write!(
            s,
            "server {{\n    listen {l} default_server;\n    server_name \"\";\n{}",
            router_body(l)
        );
    }
    if any {
        let _ = write!(
            s,
            "upstream {ROUTER_UPSTREAM} {{\n    server {NO_PEERS};\n    \
balancer_by_lua_block {{ require(\"leengine.router\").balance() }}\n    \
keepalive 1024;\n}}\n"
        );
    }
    s
}

/// The one upstream of every lua-routed request.
pub const ROUTER_UPSTREAM: &str = "leengine_router";

/// nginx size (validated) in bytes; `0` means no limit.
fn size_bytes(s: &str) -> u64 {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = s[..digits].parse().unwrap_or(0);
    let unit = match &s[digits..] {
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        _ => 1,
    };
    n.saturating_mul(unit)
}

/// nginx time (validated) in seconds, as a lua number.
fn time_seconds(s: &str) -> String {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = s[..digits].parse().unwrap_or(0);
    let ms = match &s[digits..] {
        "ms" => n,
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        _ => n.saturating_mul(1000),
    };
    let (whole, frac) = (ms / 1000, ms % 1000);
    if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{frac:03}")
    }
}

/// Variables of the nginx build the agent runs (Debian's nginx with the
/// lua module), besides the prefixed families in [`VAR_PREFIXES`].
const KNOWN_VARS: &[&str] = &[
    "args",
    "binary_remote_addr",
    "body_bytes_sent",
    "bytes_sent",
    "connection",
    "connection_requests",
    "connection_time",
    "content_length",
    "content_type",
    "document_root",
    "document_uri",
    "host",
    "hostname",
    "https",
    "is_args",
    "limit_rate",
    "msec",
    "nginx_version",
    "pid",
    "pipe",
    "proxy_add_x_forwarded_for",
    "proxy_host",
    "proxy_port",
    "proxy_protocol_addr",
    "proxy_protocol_port",
    "proxy_protocol_server_addr",
    "proxy_protocol_server_port",
    "query_string",
    "realip_remote_addr",
    "realip_remote_port",
    "realpath_root",
    "remote_addr",
    "remote_port",
    "remote_user",
    "request",
    "request_body",
    "request_body_file",
    "request_completion",
    "request_filename",
    "request_id",
    "request_length",
    "request_method",
    "request_time",
    "request_uri",
    "scheme",
    "server_addr",
    "server_name",
    "server_port",
    "server_protocol",
    "status",
    "tcpinfo_rtt",
    "tcpinfo_rttvar",
    "tcpinfo_snd_cwnd",
    "tcpinfo_rcv_space",
    "time_iso8601",
    "time_local",
    "uri",
];

const VAR_PREFIXES: &[&str] = &[
    "arg_",
    "cookie_",
    "http_",
    "sent_http_",
    "sent_trailer_",
    "upstream_",
    "ssl_",
];

/// Refuses a `$name` nginx would not know (`nginx -t`: unknown variable).
fn check_vars<'a>(
    field: &str,
    values: impl IntoIterator<Item = &'a String>,
) -> Result<(), SlbError> {
    for v in values {
        for name in var_names(v) {
            let known = KNOWN_VARS.contains(&name)
                || VAR_PREFIXES
                    .iter()
                    .any(|p| name.len() > p.len() && name.starts_with(p));
            if !known {
                return Err(SlbError::invalid(
                    field,
                    format!("unknown \"{name}\" variable"),
                ));
            }
        }
    }
    Ok(())
}

/// `$name` and `${name}`, not captures (`$1`).
fn var_names(v: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = v;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let (name, after) = match rest.strip_prefix('{') {
            Some(inner) => match inner.find('}') {
                Some(end) => (&inner[..end], &inner[end + 1..]),
                None => (inner, ""),
            },
            None => {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            }
        };
        if !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit()) {
            out.push(name);
        }
        rest = after;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> DomainConfig {
        DomainConfig::parse("a.com", json.as_bytes()).unwrap()
    }

    #[test]
    fn route_resolves_inheritance_defaults_and_units() {
        let c = cfg(
            r#"{"serverNames":["a.com","*.a.com"],"listen":[{"port":80},{"port":8080,"address":"127.0.0.1"}],
            "headers":{"X-S":"1"},"clientMaxBodySize":"2k",
            "locations":[{"path":"/api/","proxyHeaders":{"HOST":"b","X-R":"$remote_addr"},
              "headers":{"X-L":"2"},"connectTimeout":"500ms","readTimeout":"1m","clientMaxBodySize":"0",
              "rewrites":[{"pattern":"^/api/(.*)$","replacement":"/$1","flag":"break"}]},
              {"path":"^/x\"$","match":"regex"}]}"#,
        );
        let r = render_route("a.com", &c).unwrap();
        assert_eq!(
            r.text,
            "return {h={{\"X-S\",\"1\"},},locs={\
{path=\"/api/\",m=\"p\",slash=true,body=0,host=\"b\",ph={{\"X-R\",\"$remote_addr\"},},h={{\"X-L\",\"2\"},},ct=0.500,rt=60,\
rw={{\"^/api/(.*)$\",\"/$1\",\"break\"},}},\
{path=\"^/x\\\"$\",m=\"r\",body=2048,host=\"$host\",ph={},rw={}},}}"
        );
        assert_eq!(
            r.hosts,
            vec![
                "80|a.com",
                "80|*.a.com",
                "127.0.0.1:8080|a.com",
                "127.0.0.1:8080|*.a.com"
            ]
        );
        assert_eq!(r.listens, vec!["80", "127.0.0.1:8080"]);
        let d = render_route("a.com", &cfg("{}")).unwrap();
        assert!(d.text.contains("body=1048576"), "{}", d.text);
    }

    #[test]
    fn unknown_variables_are_refused_like_nginx_t() {
        let e = render_route(
            "a.com",
            &cfg(r#"{"locations":[{"path":"/","headers":{"X":"${no_such_variable}"}}]}"#),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "locations[0].headers: unknown \"no_such_variable\" variable"
        );
        let ok = r#"{"headers":{"X":"$http_x_a $arg_b ${host}$1 $$"}}"#;
        assert!(render_route("a.com", &cfg(ok)).is_ok());
    }

    #[test]
    fn a_tls_domain_gets_its_own_servers_that_route_through_the_router() {
        assert!(!needs_tls_server(&cfg("{}")));
        let c = cfg(
            r#"{"serverNames":["a.com","b.com"],"listen":[{"port":80},{"port":443,"ssl":true}],
            "tls":{"certificate":"/c","certificateKey":"/k"},"headers":{"X":"1"}}"#,
        );
        assert!(needs_tls_server(&c));
        let r = render_route("a.com", &c).unwrap();
        assert_eq!(r.listens, vec!["80", "443/ssl"]);
        assert!(
            r.hosts.contains(&"443/ssl|b.com".to_string()),
            "{:?}",
            r.hosts
        );
        let tls = render_tls_servers("a.com", &c);
        assert_eq!(
            tls.matches("server {").count(),
            1,
            "one per ssl listen: {tls}"
        );
        for want in [
            "    listen 443 ssl;\n",
            "server_name \"a.com\" \"b.com\";",
            "ssl_certificate \"/c\";",
            "ssl_certificate_key \"/k\";",
            "set $leengine_listen \"443/ssl\";",
            "proxy_pass http://leengine_router;",
        ] {
            assert!(tls.contains(want), "{want} in {tls}");
        }
        // Its behaviour is in the route only: a header change leaves the file.
        let other = cfg(
            r#"{"serverNames":["a.com","b.com"],"listen":[{"port":80},{"port":443,"ssl":true}],
            "tls":{"certificate":"/c","certificateKey":"/k"},"headers":{"X":"2"}}"#,
        );
        assert_eq!(render_tls_servers("a.com", &other), tls);
        // The shared router serves the plain listen only, and still has the
        // upstream when every listen is TLS.
        let router = render_router(r.listens.iter().map(String::as_str));
        assert!(router.contains("listen 80 default_server;"), "{router}");
        assert!(!router.contains("443"), "{router}");
        let only_tls = render_router(["443/ssl"]);
        assert!(only_tls.contains("upstream leengine_router"), "{only_tls}");
        assert!(!only_tls.contains("server {"), "{only_tls}");
    }

    #[test]
    fn a_host_bound_route_and_its_router_agree_on_the_host_address() {
        let c = cfg(r#"{"listen":[{"port":8080}]}"#).bound_to(Some("127.0.0.3".parse().unwrap()));
        let r = render_route("a.com", &c).unwrap();
        assert_eq!(r.listens, vec!["127.0.0.3:8080"]);
        assert_eq!(r.hosts, vec!["127.0.0.3:8080|a.com"]);
        let text = render_router(r.listens.iter().map(String::as_str));
        assert!(
            text.contains("listen 127.0.0.3:8080 default_server;"),
            "{text}"
        );
        assert!(
            text.contains("set $leengine_listen \"127.0.0.3:8080\";"),
            "{text}"
        );
    }

    #[test]
    fn router_file_marks_its_listens_default() {
        let text = render_router(["80", "[::1]:81"]);
        assert!(text.contains("listen 80 default_server;"));
        assert!(text.contains("listen [::1]:81 default_server;"));
        assert!(text.contains("set $leengine_listen \"[::1]:81\";"));
        assert_eq!(text.matches("upstream leengine_router").count(), 1);
        assert!(!render_router([]).contains("upstream"));
    }
}

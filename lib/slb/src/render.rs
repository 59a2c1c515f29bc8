//! nginx configuration text. A domain file never mentions a peer: every
//! upstream block hands selection to the lua balancer, so peer changes never
//! change a file and never need a reload.

use std::fmt::Write;
use std::path::PathBuf;

use crate::model::{DomainConfig, Listen, LocationMatch, RewriteFlag};

/// Name of the `lua_shared_dict` holding peers, failure marks and counters.
pub const SHARED_DICT: &str = "leengine_upstreams";
/// Placeholder server of every upstream block.
pub const NO_PEERS: &str = "unix:/run/leengine-no-upstream-servers.sock";
/// Path of the admin location on the local-only admin server.
pub const ADMIN_PATH: &str = "/leengine/upstreams";
/// Header carrying the admin secret; the lua admin refuses requests
/// without it.
pub const ADMIN_SECRET_HEADER: &str = "X-Leengine-Admin-Secret";
/// File of a generation holding its marker (`$leengine_generation`), which
/// the admin endpoint serves: the agent reads it back after a reload to
/// know the new workers run that generation.
pub const GENERATION_FILE: &str = "_generation.conf";

/// Host-level settings of the main `nginx.conf` (agent flags).
#[derive(Clone, Debug)]
pub struct MainParams {
    /// Directory holding `ndk_http_module.so` and `ngx_http_lua_module.so`.
    pub module_dir: PathBuf,
    /// Directory whose `leengine/*.lua` the agent writes.
    pub lua_dir: PathBuf,
    /// Where resty.core lives (Debian: `/usr/share/lua/5.1`).
    pub lua_system_dir: PathBuf,
    /// Directory of the domain files to include.
    pub domains_dir: PathBuf,
    pub pid_file: PathBuf,
    pub error_log: PathBuf,
    /// `None` turns the access log off.
    pub access_log: Option<PathBuf>,
    pub admin_port: u16,
    /// Upstream dump loaded by `init_by_lua` so a restarted nginx serves the
    /// last peers before the agent speaks to it.
    pub dump_file: PathBuf,
    /// Admin secret, read by `init_by_lua` in the (root) master.
    pub secret_file: PathBuf,
    /// `auto` when `None`.
    pub worker_processes: Option<u16>,
    /// Worker user (`user` directive); nginx's default (`nobody`) when `None`.
    pub user: Option<String>,
    pub shared_dict_size: String,
    /// Per-domain request counters (`leengine.metrics`), served on the
    /// admin server at [`METRICS_PATH`].
    pub lb_metrics: bool,
    pub names_hash: NamesHash,
}

/// `server_names_hash_max_size` / `_bucket_size` for a set of names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamesHash {
    pub max_size: usize,
    pub bucket_size: usize,
}

impl NamesHash {
    /// Sizes nginx can build its server-name hash with at once (no
    /// "could not build optimal server_names_hash" warning): buckets that
    /// hold 8 of the longest names (an element is a pointer, the name and
    /// its length, 8-aligned, as `NGX_HASH_ELT_SIZE`), and at least as many
    /// buckets as names, so even an unlucky spread fits.
    pub fn for_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let (mut count, mut longest) = (0usize, 0usize);
        for n in names {
            count += 1;
            longest = longest.max(n.len());
        }
        let elt = (8 + longest + 2).div_ceil(8) * 8;
        Self {
            max_size: (count.next_power_of_two() * 2).max(512),
            bucket_size: (8 * elt + 8).next_power_of_two().max(128),
        }
    }

    /// The names of the `server_name` lines of rendered domain files.
    pub fn for_files<'a>(files: impl IntoIterator<Item = &'a str>) -> Self {
        let names = files.into_iter().flat_map(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("    server_name "))
                .flat_map(|l| l.trim_end_matches(';').split(' '))
                .map(|n| n.trim_matches('"'))
        });
        Self::for_names(names)
    }
}

/// Path of the Prometheus text of the lua counters on the admin server.
pub const METRICS_PATH: &str = "/leengine/metrics";

/// The main `nginx.conf`; `domains_dir` differs between the staged copy used
/// by `nginx -t` and the live one, nothing else does.
pub fn render_main(p: &MainParams) -> String {
    let workers = p
        .worker_processes
        .map_or_else(|| "auto".to_string(), |n| n.to_string());
    let access = p
        .access_log
        .as_ref()
        .map_or_else(|| "off".to_string(), |a| quote(&a.display().to_string()));
    let d = |p: &PathBuf| quote(&p.display().to_string());
    let user = p
        .user
        .as_ref()
        .map_or_else(String::new, |u| format!("user {};\n", quote(u)));
    format!(
        "# Written by leengine-nginx-agent; edits are overwritten.\n\
{user}load_module {ndk};\n\
load_module {lua};\n\
worker_processes {workers};\n\
pid {pid};\n\
error_log {error_log} warn;\n\
events {{\n    worker_connections 4096;\n}}\n\
http {{\n\
    access_log {access};\n\
    lua_package_path {pkg};\n\
    lua_shared_dict {SHARED_DICT} {dict_size};\n\
    init_by_lua_block {{ local u = require(\"leengine.upstreams\"); u.load_secret({secret}); u.load_dump({dump}) }}\n\
    {metrics_dict}log_by_lua_block {{ local ctx = ngx.ctx; require(\"leengine.balancer\").log(ctx){metrics_log} }}\n\
    server_tokens off;\n\
    server_names_hash_max_size {hash_max};\n\
    server_names_hash_bucket_size {hash_bucket};\n\
    proxy_http_version 1.1;\n\
    proxy_next_upstream error timeout;\n\
    server {{\n\
        listen 127.0.0.1:{admin_port};\n\
        allow 127.0.0.1;\n\
        deny all;\n\
        client_body_buffer_size 16m;\n\
        client_max_body_size 16m;\n\
        location = {ADMIN_PATH} {{\n\
            content_by_lua_block {{ require(\"leengine.upstreams\").admin() }}\n\
        }}\n\
        {metrics_location}location / {{\n            return 404;\n        }}\n\
    }}\n\
    include {include};\n\
}}\n",
        ndk = d(&p.module_dir.join("ndk_http_module.so")),
        lua = d(&p.module_dir.join("ngx_http_lua_module.so")),
        pid = d(&p.pid_file),
        error_log = d(&p.error_log),
        pkg = quote(&format!(
            "{}/?.lua;{}/?.lua;;",
            p.lua_dir.display(),
            p.lua_system_dir.display()
        )),
        dict_size = p.shared_dict_size,
        hash_max = p.names_hash.max_size,
        hash_bucket = p.names_hash.bucket_size,
        dump = lua_string(&p.dump_file.display().to_string()),
        secret = lua_string(&p.secret_file.display().to_string()),
        admin_port = p.admin_port,
        include = d(&p.domains_dir.join("*.conf")),
        metrics_dict = if p.lb_metrics { "lua_shared_dict leengine_metrics 8m;\n    " } else { "" },
        metrics_log = if p.lb_metrics { " require(\"leengine.metrics\").log(ctx)" } else { "" },
        metrics_location = if p.lb_metrics {
            format!("location = {METRICS_PATH} {{\n            content_by_lua_block {{ require(\"leengine.metrics\").render() }}\n        }}\n        ")
        } else {
            String::new()
        },
    )
}

/// File holding the catch-all servers; `_` cannot start a domain.
pub const DEFAULT_FILE: &str = "_default.conf";

/// Catch-all servers for every address the domain files listen on, so a
/// request for an unknown Host gets 404 instead of some domain's backend.
/// Reads the `listen` lines [`render_domain`] writes; an address some file
/// already serves as `default_server` (the lua router's) is covered.
pub fn render_default_servers<'a>(domain_files: impl IntoIterator<Item = &'a str>) -> String {
    let mut listens = std::collections::BTreeSet::new();
    let mut covered = std::collections::BTreeSet::new();
    for text in domain_files {
        for line in text.lines() {
            if let Some(l) = line
                .strip_prefix("    listen ")
                .and_then(|l| l.strip_suffix(';'))
            {
                match l.strip_suffix(" default_server") {
                    Some(addr) => covered.insert(addr.to_string()),
                    None => listens.insert(l.to_string()),
                };
            }
        }
    }
    listens.retain(|l| !covered.contains(l.strip_suffix(" ssl").unwrap_or(l)));
    let mut s = String::from("# Unknown hosts; written by leengine-nginx-agent.\n");
    for l in listens {
        let (addr, ssl) = match l.strip_suffix(" ssl") {
            Some(a) => (a, true),
            None => (l.as_str(), false),
        };
        let _ = writeln!(s, "server {{");
        if ssl {
            let _ = writeln!(s, "    listen {addr} ssl default_server;");
            let _ = writeln!(s, "    ssl_reject_handshake on;");
        } else {
            let _ = writeln!(s, "    listen {addr} default_server;");
        }
        let _ = writeln!(s, "    return 404;");
        let _ = writeln!(s, "}}");
    }
    s
}

/// The [`GENERATION_FILE`] of a generation; `marker` is `[A-Za-z0-9.-]`.
pub fn render_generation(marker: &str) -> String {
    format!(
        "# Generation marker; written by leengine-nginx-agent.\n\
         map $host $leengine_generation {{\n    default \"{marker}\";\n}}\n"
    )
}

/// File name of a domain inside the domains directory.
pub fn domain_file_name(domain: &str) -> String {
    format!("{domain}.conf")
}

/// Inverse of [`domain_file_name`] (`None` for other files).
pub fn domain_of_file_name(name: &str) -> Option<&str> {
    name.strip_suffix(".conf").filter(|d| !d.starts_with('_'))
}

pub fn upstream_name(domain: &str) -> String {
    format!("leengine_{domain}")
}

/// The complete file for one validated domain.
pub fn render_domain(domain: &str, cfg: &DomainConfig) -> String {
    let up = upstream_name(domain);
    let mut s = String::new();
    let _ = writeln!(s, "# Domain {domain}; written by leengine-nginx-agent.");
    let _ = writeln!(s, "upstream {up} {{");
    // nginx requires a server; the balancer replaces it, except when there
    // are no peers: then this socket, which never exists, yields a 502.
    let _ = writeln!(s, "    server {NO_PEERS};");
    let _ = writeln!(
        s,
        "    balancer_by_lua_block {{ require(\"leengine.balancer\").balance({}) }}",
        lua_string(domain)
    );
    let _ = writeln!(s, "    keepalive 64;");
    let _ = writeln!(s, "}}");
    let _ = writeln!(s, "server {{");
    for l in &cfg.listen {
        let ssl = if l.ssl { " ssl" } else { "" };
        let _ = writeln!(s, "    listen {}{ssl};", listen_addr(l));
    }
    s.push_str(&server_name_line(domain, cfg));
    // The lua counters' label: server_name may list other names first.
    let _ = writeln!(s, "    set $leengine_domain {};", quote(domain));
    s.push_str(&certificate_lines(cfg));
    if let Some(b) = &cfg.client_max_body_size {
        let _ = writeln!(s, "    client_max_body_size {b};");
    }
    for (k, v) in &cfg.headers {
        let _ = writeln!(s, "    add_header {} {} always;", quote(k), quote(v));
    }
    for loc in cfg.effective_locations() {
        let modifier = match loc.match_ {
            LocationMatch::Prefix => "",
            LocationMatch::Exact => "= ",
            LocationMatch::Regex => "~ ",
        };
        let _ = writeln!(s, "    location {modifier}{} {{", quote(&loc.path));
        for rw in &loc.rewrites {
            let flag = match rw.flag {
                None => "",
                Some(RewriteFlag::Last) => " last",
                Some(RewriteFlag::Break) => " break",
                Some(RewriteFlag::Redirect) => " redirect",
                Some(RewriteFlag::Permanent) => " permanent",
            };
            let _ = writeln!(
                s,
                "        rewrite {} {}{flag};",
                quote(&rw.pattern),
                quote(&rw.replacement)
            );
        }
        // Upstream keepalive needs HTTP/1.1 and no hop-by-hop Connection.
        let _ = writeln!(s, "        proxy_set_header Connection \"\";");
        if !loc
            .proxy_headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("host"))
        {
            let _ = writeln!(s, "        proxy_set_header Host $host;");
        }
        for (k, v) in &loc.proxy_headers {
            let _ = writeln!(s, "        proxy_set_header {} {};", quote(k), quote(v));
        }
        for (k, v) in &loc.headers {
            let _ = writeln!(s, "        add_header {} {} always;", quote(k), quote(v));
        }
        for (directive, value) in [
            ("proxy_connect_timeout", &loc.connect_timeout),
            ("proxy_read_timeout", &loc.read_timeout),
            ("proxy_send_timeout", &loc.send_timeout),
            ("client_max_body_size", &loc.client_max_body_size),
        ] {
            if let Some(v) = value {
                let _ = writeln!(s, "        {directive} {v};");
            }
        }
        let _ = writeln!(s, "        proxy_pass http://{up};");
        let _ = writeln!(s, "    }}");
    }
    let _ = writeln!(s, "}}");
    s
}

/// A listen address as nginx writes it: `80`, `10.0.0.1:80`, `[::1]:80`.
/// A server block's `server_name` line (with its indent and newline).
pub(crate) fn server_name_line(domain: &str, cfg: &DomainConfig) -> String {
    let names: Vec<String> = cfg
        .effective_server_names(domain)
        .iter()
        .map(|n| quote(n))
        .collect();
    format!("    server_name {};\n", names.join(" "))
}

/// The `ssl_certificate[_key]` lines of a TLS config; empty without one.
pub(crate) fn certificate_lines(cfg: &DomainConfig) -> String {
    cfg.tls.as_ref().map_or_else(String::new, |t| {
        format!(
            "    ssl_certificate {};\n    ssl_certificate_key {};\n",
            quote(&t.certificate),
            quote(&t.certificate_key)
        )
    })
}

pub fn listen_addr(l: &Listen) -> String {
    match l.address {
        Some(std::net::IpAddr::V6(a)) => format!("[{a}]:{}", l.port),
        Some(a) => format!("{a}:{}", l.port),
        None => l.port.to_string(),
    }
}

/// An nginx double-quoted string. Validation has already refused control
/// characters, so escaping `\` and `"` is all that is needed.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A lua string literal (inside an nginx `*_by_lua_block`, where nginx does
/// not interpret the text).
pub(crate) fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_escapes() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quote("$host"), "\"$host\"");
    }

    #[test]
    fn domain_file_has_no_peers_and_uses_the_balancer() {
        let cfg: DomainConfig = serde_json::from_str(
            r#"{"listen":[{"port":8080}],"headers":{"X-A":"1"},
                "locations":[{"path":"/api","match":"exact","readTimeout":"5s",
                  "proxyHeaders":{"X-Real-IP":"$remote_addr"},
                  "rewrites":[{"pattern":"^/x(.*)$","replacement":"/$1","flag":"break"}]}]}"#,
        )
        .unwrap();
        let text = render_domain("a.example.com", &cfg);
        let expected = "\
# Domain a.example.com; written by leengine-nginx-agent.
upstream leengine_a.example.com {
    server unix:/run/leengine-no-upstream-servers.sock;
    balancer_by_lua_block { require(\"leengine.balancer\").balance(\"a.example.com\") }
    keepalive 64;
}
server {
    listen 8080;
    server_name \"a.example.com\";
    set $leengine_domain \"a.example.com\";
    add_header \"X-A\" \"1\" always;
    location = \"/api\" {
        rewrite \"^/x(.*)$\" \"/$1\" break;
        proxy_set_header Connection \"\";
        proxy_set_header Host $host;
        proxy_set_header \"X-Real-IP\" \"$remote_addr\";
        proxy_read_timeout 5s;
        proxy_pass http://leengine_a.example.com;
    }
}
";
        assert_eq!(text, expected);
    }

    #[test]
    fn tls_and_explicit_host_header() {
        let cfg: DomainConfig = serde_json::from_str(
            r#"{"listen":[{"port":443,"ssl":true,"address":"::1"}],
                "tls":{"certificate":"/c.pem","certificateKey":"/k.pem"},
                "locations":[{"path":"/","proxyHeaders":{"host":"backend"}}]}"#,
        )
        .unwrap();
        let text = render_domain("b.example.com", &cfg);
        assert!(text.contains("listen [::1]:443 ssl;"));
        assert!(text.contains("ssl_certificate \"/c.pem\";"));
        assert!(text.contains("ssl_certificate_key \"/k.pem\";"));
        assert!(!text.contains("proxy_set_header Host $host;"));
        assert!(text.contains("proxy_set_header \"host\" \"backend\";"));
    }

    #[test]
    fn default_servers_cover_every_listen_once() {
        let a: DomainConfig =
            serde_json::from_str(r#"{"listen":[{"port":80},{"port":443,"ssl":true}],"tls":{"certificate":"/c","certificateKey":"/k"}}"#)
                .unwrap();
        let b: DomainConfig = serde_json::from_str(r#"{"listen":[{"port":80}]}"#).unwrap();
        let files = [render_domain("a.com", &a), render_domain("b.com", &b)];
        let text = render_default_servers(files.iter().map(String::as_str));
        assert_eq!(text.matches("listen 80 default_server;").count(), 1);
        assert!(text.contains("listen 443 ssl default_server;\n    ssl_reject_handshake on;"));
        assert_eq!(text.matches("return 404;").count(), 2);
        assert!(!render_default_servers([]).contains("server {"));
    }

    #[test]
    fn a_host_bound_domain_and_its_catch_all_listen_on_the_host_address() {
        let c: DomainConfig =
            serde_json::from_str(r#"{"listen":[{"port":8080},{"port":8443,"ssl":true}],"tls":{"certificate":"/c","certificateKey":"/k"}}"#)
                .unwrap();
        let c = c.bound_to(Some("127.0.0.2".parse().unwrap()));
        let file = render_domain("a.com", &c);
        assert!(file.contains("    listen 127.0.0.2:8080;\n"), "{file}");
        assert!(file.contains("    listen 127.0.0.2:8443 ssl;\n"), "{file}");
        assert!(!file.contains("listen 8080"), "{file}");
        let text = render_default_servers([file.as_str()]);
        assert!(
            text.contains("listen 127.0.0.2:8080 default_server;"),
            "{text}"
        );
        assert!(
            text.contains("listen 127.0.0.2:8443 ssl default_server;"),
            "{text}"
        );
        let v6: DomainConfig = serde_json::from_str(r#"{"listen":[{"port":80}]}"#).unwrap();
        let v6 = render_domain("b.com", &v6.bound_to(Some("fd00::2".parse().unwrap())));
        assert!(v6.contains("    listen [fd00::2]:80;\n"), "{v6}");
    }

    #[test]
    fn main_includes_domains_and_admin() {
        let p = MainParams {
            module_dir: "/usr/lib/nginx/modules".into(),
            lua_dir: "/etc/le/lua".into(),
            lua_system_dir: "/usr/share/lua/5.1".into(),
            domains_dir: "/etc/le/domains".into(),
            pid_file: "/run/nginx.pid".into(),
            error_log: "/var/log/nginx/error.log".into(),
            access_log: None,
            admin_port: 9876,
            dump_file: "/var/lib/le/upstreams.dump".into(),
            secret_file: "/var/lib/le/admin.secret".into(),
            worker_processes: Some(2),
            user: Some("www-data".into()),
            shared_dict_size: "32m".into(),
            lb_metrics: true,
            names_hash: NamesHash::for_names(["a.com"]),
        };
        let text = render_main(&p);
        assert!(text.contains("lua_shared_dict leengine_metrics 8m;"));
        assert!(text.contains(
            "log_by_lua_block { local ctx = ngx.ctx; require(\"leengine.balancer\").log(ctx) require(\"leengine.metrics\").log(ctx) }"
        ));
        assert!(text.contains("location = /leengine/metrics {"));
        let off = render_main(&MainParams {
            lb_metrics: false,
            ..p
        });
        assert!(!off.contains("leengine.metrics") && !off.contains("leengine_metrics"));
        assert!(text.contains("load_module \"/usr/lib/nginx/modules/ngx_http_lua_module.so\";"));
        assert!(text.contains("listen 127.0.0.1:9876;"));
        assert!(text.contains("include \"/etc/le/domains/*.conf\";"));
        assert!(text.contains("lua_shared_dict leengine_upstreams 32m;"));
        assert!(text.contains(
            "u.load_secret(\"/var/lib/le/admin.secret\"); u.load_dump(\"/var/lib/le/upstreams.dump\")"
        ));
        assert!(text.contains("worker_processes 2;"));
        assert!(text.contains("server_names_hash_max_size 512;"));
        assert!(text.contains("server_names_hash_bucket_size 256;"));
        assert!(text.contains("access_log off;"));
        assert!(text.contains("\nuser \"www-data\";\n"));
    }

    #[test]
    fn names_hash_follows_count_and_length() {
        let long = "x".repeat(100);
        let h = NamesHash::for_names(["a.com", long.as_str()]);
        assert_eq!(h.bucket_size, 1024, "8 x 112-byte elements + 8");
        let many: Vec<String> = (0..10_000).map(|i| format!("d{i}.example.com")).collect();
        let h = NamesHash::for_names(many.iter().map(String::as_str));
        assert_eq!(h.max_size, 32_768);
        assert_eq!(h.bucket_size, 512, "8 x 32-byte elements + 8");
        let file = render_domain(
            "a.com",
            &serde_json::from_str(r#"{"serverNames":["a.com","*.a.com"]}"#).unwrap(),
        );
        assert_eq!(
            NamesHash::for_files([file.as_str()]),
            NamesHash::for_names(["a.com", "*.a.com"])
        );
    }

    #[test]
    fn router_listens_get_no_catch_all() {
        let a: DomainConfig = serde_json::from_str(
            r#"{"listen":[{"port":80},{"port":443,"ssl":true}],"tls":{"certificate":"/c","certificateKey":"/k"}}"#,
        )
        .unwrap();
        let router = crate::route::render_router(["80"]);
        let files = [render_domain("a.com", &a), router];
        let text = render_default_servers(files.iter().map(String::as_str));
        assert!(!text.contains("listen 80 default_server;"), "{text}");
        assert!(text.contains("listen 443 ssl default_server;"));
    }

    #[test]
    fn generation_marker_is_a_map_variable() {
        assert!(render_generation("7-abc")
            .contains("map $host $leengine_generation {\n    default \"7-abc\";\n}"));
    }

    #[test]
    fn file_names_round_trip() {
        assert_eq!(domain_of_file_name(&domain_file_name("a.b")), Some("a.b"));
        assert_eq!(domain_of_file_name("x.tmp"), None);
        assert_eq!(domain_of_file_name(DEFAULT_FILE), None);
        assert_eq!(domain_of_file_name(GENERATION_FILE), None);
    }
}

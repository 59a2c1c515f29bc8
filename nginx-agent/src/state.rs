//! What etcd says the group should look like, folded from the full sync and
//! the watch events. Pure: the tasks share it behind a mutex.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use leengine_slb::model::validate_domain;
use leengine_slb::render::render_domain;
use leengine_slb::route::{
    needs_tls_server, render_route, render_router, render_tls_servers, Route,
};
use leengine_slb::wire::{self, State};
use leengine_slb::{classify, Change, DomainConfig, DomainError, Upstream};
use leengine_store::keys::{parse_slb_domain_key, SlbDomainKey};

use crate::cli::Routing;

/// Key of the lua router's file among the domain files (`_router.conf`).
pub const ROUTER: &str = "_router";

#[derive(Debug, Default)]
pub struct Domain {
    /// Latest config key: its mod revision and the parse result.
    config: Option<(i64, Result<DomainConfig, String>)>,
    /// Last valid upstream (an invalid write keeps the previous one).
    upstream: Option<Upstream>,
    /// Mod revision of that upstream write.
    upstream_revision: i64,
    upstream_error: Option<(i64, String)>,
    /// Last good route (lua routing): an invalid write keeps serving it.
    route: Option<Route>,
}

impl Domain {
    /// The file a valid config renders to: its server block when generated;
    /// with lua routing only the TLS servers of a domain with `ssl` listens.
    fn file(&self, domain: &str, routing: Routing) -> Option<String> {
        match &self.config {
            Some((_, Ok(cfg))) if routing == Routing::Generated => Some(render_domain(domain, cfg)),
            Some((_, Ok(cfg))) if needs_tls_server(cfg) => Some(render_tls_servers(domain, cfg)),
            _ => None,
        }
    }

    /// Folds in a config write: the parse result and, for lua routing, the
    /// route (whose own refusals make the config invalid here).
    fn set_config(
        &mut self,
        domain: &str,
        rev: i64,
        cfg: Result<DomainConfig, String>,
        routing: Routing,
    ) {
        let cfg = match cfg {
            Ok(c) if routing == Routing::Lua => match render_route(domain, &c) {
                Ok(route) => {
                    self.route = Some(route);
                    Ok(c)
                }
                Err(e) => Err(e.to_string()),
            },
            Ok(c) => {
                self.route = None;
                Ok(c)
            }
            Err(e) => Err(e),
        };
        self.config = Some((rev, cfg));
    }
}

#[derive(Debug, Default)]
pub struct Desired {
    domains: BTreeMap<String, Domain>,
    /// Every event up to this revision is folded in.
    pub revision: i64,
    /// A full sync has happened; before it the state is only the dump.
    pub synced: bool,
    /// The admin server's port: a config listening on it is invalid here.
    admin_port: u16,
    routing: Routing,
    /// This host's bind address for listens naming none (`--listen-address`).
    listen_address: Option<IpAddr>,
    /// Item keys (`wire::State::items`) that may have changed since the
    /// pusher last took them; `None`: all of them (start, full sync), so a
    /// change costs the pusher its own items, not the whole group's.
    touched: Option<BTreeSet<String>>,
}

impl Desired {
    /// The state before etcd was ever reached: what was last pushed.
    pub fn from_dump(dump: State, admin_port: u16, routing: Routing) -> Self {
        let mut domains: BTreeMap<String, Domain> = BTreeMap::new();
        for (d, u) in dump.upstreams {
            domains.entry(d).or_default().upstream = Some(u);
        }
        for (d, text) in dump.routes {
            let hosts: Vec<String> = dump
                .hosts
                .iter()
                .filter(|(_, owner)| **owner == d)
                .map(|(h, _)| h.clone())
                .collect();
            let mut listens: Vec<String> = hosts
                .iter()
                .filter_map(|h| h.split_once('|').map(|(l, _)| l.to_string()))
                .collect();
            listens.dedup();
            let route = Route {
                text,
                hosts,
                listens,
            };
            domains.entry(d).or_default().route = Some(route);
        }
        Self {
            domains,
            revision: 0,
            synced: false,
            admin_port,
            routing,
            listen_address: None,
            touched: None,
        }
    }

    /// Binds the listens naming no address to `addr` (this host's own).
    pub fn with_listen_address(mut self, addr: Option<IpAddr>) -> Self {
        self.listen_address = addr;
        self
    }

    /// Replaces everything with a full read taken at `revision`.
    pub fn reset<'a>(
        &mut self,
        group: &str,
        kvs: impl IntoIterator<Item = (&'a str, &'a [u8], i64)>,
        revision: i64,
    ) {
        self.domains.clear();
        for (k, v, rev) in kvs {
            self.apply(group, k, Some((v, rev)));
        }
        self.revision = revision;
        self.synced = true;
        self.touched = None;
    }

    /// The item keys touched since the last call (`None`: all).
    pub fn take_touched(&mut self) -> Option<BTreeSet<String>> {
        self.touched.replace(BTreeSet::new())
    }

    /// Item `key` as [`Desired::pushed`] has it (`None`: not pushed).
    pub fn item(&self, key: &str) -> Option<String> {
        let (kind, name) = key.split_once(':')?;
        match kind {
            "u" => {
                let up = self.domains.get(name)?.upstream.as_ref()?;
                Some(wire::upstream_item(name, up))
            }
            "r" => {
                let route = self.domains.get(name)?.route.as_ref()?;
                Some(wire::route_item(name, &route.text))
            }
            "h" => self
                .domains
                .iter()
                .find(|(_, e)| {
                    e.route
                        .as_ref()
                        .is_some_and(|r| r.hosts.iter().any(|h| h == name))
                })
                .map(|(d, _)| wire::host_item(name, d)),
            _ => None,
        }
    }

    /// Folds in one put (`Some`) or delete (`None`) and says what it means
    /// for nginx; other keys are ignored (`None`).
    pub fn apply(
        &mut self,
        group: &str,
        key: &str,
        value: Option<(&[u8], i64)>,
    ) -> Option<(String, Change)> {
        let parsed = parse_slb_domain_key(group, key)?;
        let domain = match &parsed {
            SlbDomainKey::Config(d) | SlbDomainKey::Upstream(d) => *d,
        };
        let routing = self.routing;
        let entry = self.domains.entry(domain.to_string()).or_default();
        let (old_file, old_up) = (entry.file(domain, routing), entry.upstream.clone());
        let old_route = entry.route.clone();
        match (parsed, value) {
            (SlbDomainKey::Config(_), Some((v, rev))) => {
                let cfg = DomainConfig::parse(domain, v)
                    .and_then(|c| c.check_reserved_port(self.admin_port).map(|()| c))
                    .map(|c| c.bound_to(self.listen_address))
                    .map_err(|e| e.to_string());
                entry.set_config(domain, rev, cfg, routing);
            }
            (SlbDomainKey::Config(_), None) => {
                entry.config = None;
                entry.route = None;
            }
            (SlbDomainKey::Upstream(_), Some((v, rev))) => {
                match validate_domain(domain).and_then(|()| Upstream::parse(v)) {
                    Ok(up) => {
                        entry.upstream = Some(up);
                        entry.upstream_revision = rev;
                        entry.upstream_error = None;
                    }
                    Err(e) => entry.upstream_error = Some((rev, e.to_string())),
                }
            }
            (SlbDomainKey::Upstream(_), None) => {
                entry.upstream = None;
                entry.upstream_error = None;
            }
        }
        let change = match classify(
            old_file.as_deref(),
            entry.file(domain, routing).as_deref(),
            old_up.as_ref(),
            entry.upstream.as_ref(),
        ) {
            Change::None if old_route != entry.route => Change::Route,
            c => c,
        };
        if let Some(t) = &mut self.touched {
            t.insert(format!("u:{domain}"));
            t.insert(format!("r:{domain}"));
            let hosts = old_route.iter().chain(entry.route.iter());
            t.extend(hosts.flat_map(|r| r.hosts.iter().map(|h| format!("h:{h}"))));
        }
        if entry.config.is_none() && entry.upstream.is_none() && entry.upstream_error.is_none() {
            self.domains.remove(domain);
        }
        Some((domain.to_string(), change))
    }

    pub fn upstreams(&self) -> BTreeMap<String, Upstream> {
        self.domains
            .iter()
            .filter_map(|(d, e)| e.upstream.clone().map(|u| (d.clone(), u)))
            .collect()
    }

    /// What nginx's shared dict should hold: peers, routes and server
    /// names. A name two domains claim on one listen goes to the first in
    /// name order, as nginx keeps the first of conflicting server names
    /// (it reads the domain files in that order).
    pub fn pushed(&self) -> State {
        let mut state = State {
            upstreams: self.upstreams(),
            ..State::default()
        };
        for (d, e) in &self.domains {
            if let Some(r) = &e.route {
                state.routes.insert(d.clone(), r.text.clone());
                for h in &r.hosts {
                    state.hosts.entry(h.clone()).or_insert_with(|| d.clone());
                }
            }
        }
        state
    }

    /// Domains the lua router serves.
    pub fn routed(&self) -> impl Iterator<Item = &str> {
        self.domains
            .iter()
            .filter(|(_, e)| e.route.is_some())
            .map(|(d, _)| d.as_str())
    }

    /// The files nginx should have. A domain whose config is invalid keeps
    /// its `applied` file (last good) and gets an error instead.
    pub fn files(
        &self,
        applied: &BTreeMap<String, String>,
    ) -> (BTreeMap<String, String>, BTreeMap<String, DomainError>) {
        let mut files = BTreeMap::new();
        let mut errors = BTreeMap::new();
        if self.routing == Routing::Lua {
            let listens: std::collections::BTreeSet<&str> = self
                .domains
                .values()
                .filter_map(|e| e.route.as_ref())
                .flat_map(|r| r.listens.iter().map(String::as_str))
                .collect();
            files.insert(ROUTER.to_string(), render_router(listens));
        }
        for (d, e) in &self.domains {
            match &e.config {
                Some((_, Ok(_))) => {
                    files.extend(e.file(d, self.routing).map(|f| (d.clone(), f)));
                }
                Some((rev, Err(msg))) => {
                    if let Some(old) = applied.get(d) {
                        files.insert(d.clone(), old.clone());
                    }
                    errors.insert(d.clone(), domain_error(*rev, "invalid", msg));
                }
                None => {}
            }
            if let Some((rev, msg)) = &e.upstream_error {
                errors
                    .entry(d.clone())
                    .or_insert_with(|| domain_error(*rev, "invalid-upstream", msg));
            }
        }
        (files, errors)
    }

    pub fn upstream_revision(&self, domain: &str) -> i64 {
        self.domains.get(domain).map_or(0, |e| e.upstream_revision)
    }

    pub fn config_revision(&self, domain: &str) -> i64 {
        self.domains
            .get(domain)
            .and_then(|e| e.config.as_ref())
            .map_or(0, |(rev, _)| *rev)
    }
}

pub fn domain_error(revision: i64, kind: &str, message: &str) -> DomainError {
    DomainError {
        revision,
        kind: kind.to_string(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: &str = "g1";

    fn generated() -> Desired {
        Desired::from_dump(State::default(), 0, Routing::Generated)
    }

    fn key(d: &str, leaf: &str) -> String {
        format!("/slb/{G}/domains/{d}/{leaf}")
    }

    #[test]
    fn folds_puts_and_deletes() {
        let mut s = generated();
        let up = br#"{"servers":[{"address":"10.0.0.1:80"}]}"#;
        let cfg = |c: Change| Some(("a.com".to_string(), c));
        assert_eq!(
            s.apply(G, &key("a.com", "config"), Some((b"{}", 5))),
            cfg(Change::Config)
        );
        assert_eq!(
            s.apply(G, &key("a.com", "upstream"), Some((up, 6))),
            cfg(Change::UpstreamOnly)
        );
        assert_eq!(
            s.apply(G, &key("a.com", "upstream"), Some((up, 7))),
            cfg(Change::None)
        );
        // Same config, different JSON spelling: renders the same, no reload.
        let same = br#"{"listen":[{"port":80}]}"#;
        assert_eq!(
            s.apply(G, &key("a.com", "config"), Some((same, 8))),
            cfg(Change::None)
        );
        assert_eq!(s.apply(G, "/slb/g1/agents/h1", Some((b"{}", 9))), None);
        let (files, errors) = s.files(&BTreeMap::new());
        assert!(files["a.com"].contains("server_name \"a.com\""));
        assert!(errors.is_empty());
        assert_eq!(s.upstreams()["a.com"].servers.len(), 1);
        assert_eq!(s.config_revision("a.com"), 8);
        assert_eq!(s.upstream_revision("a.com"), 7);
        assert_eq!(
            s.apply(G, &key("a.com", "config"), None),
            cfg(Change::Config)
        );
        assert!(s.files(&BTreeMap::new()).0.is_empty());
        s.apply(G, &key("a.com", "upstream"), None);
        assert!(s.domains.is_empty());
    }

    #[test]
    fn invalid_config_keeps_last_good_file_and_reports() {
        let mut s = generated();
        s.apply(G, &key("a.com", "config"), Some((br#"{"listen":[]}"#, 9)));
        let applied: BTreeMap<_, _> = [("a.com".to_string(), "old".to_string())].into();
        let (files, errors) = s.files(&applied);
        assert_eq!(files["a.com"], "old");
        assert_eq!(errors["a.com"].kind, "invalid");
        assert_eq!(errors["a.com"].revision, 9);
        assert!(s.files(&BTreeMap::new()).0.is_empty());
    }

    #[test]
    fn a_config_on_the_admin_port_is_invalid_here() {
        let mut s = Desired::from_dump(State::default(), 8999, Routing::Generated);
        let cfg = br#"{"listen":[{"port":8999,"address":"127.0.0.1"}]}"#;
        assert_eq!(
            s.apply(G, &key("a.com", "config"), Some((cfg, 4))),
            Some(("a.com".to_string(), Change::None))
        );
        let (files, errors) = s.files(&BTreeMap::new());
        assert!(files.is_empty(), "never rendered");
        assert_eq!(errors["a.com"].kind, "invalid");
        assert!(errors["a.com"].message.contains("admin port"), "{errors:?}");
    }

    #[test]
    fn invalid_upstream_keeps_previous_peers() {
        let mut s = generated();
        s.apply(
            G,
            &key("a.com", "upstream"),
            Some((br#"{"servers":[{"address":"10.0.0.1:80"}]}"#, 3)),
        );
        s.apply(
            G,
            &key("a.com", "upstream"),
            Some((br#"{"servers":[{"address":"x"}]}"#, 4)),
        );
        assert_eq!(s.upstreams()["a.com"].servers.len(), 1);
        assert_eq!(
            s.files(&BTreeMap::new()).1["a.com"].kind,
            "invalid-upstream"
        );
        s.apply(G, &key("B.com", "upstream"), Some((br#"{}"#, 5)));
        assert!(!s.upstreams().contains_key("B.com"));
    }

    #[test]
    fn reset_replaces_everything() {
        let dump = State {
            upstreams: [("old.com".to_string(), Upstream::default())].into(),
            ..State::default()
        };
        let mut s = Desired::from_dump(dump, 0, Routing::Generated);
        assert!(!s.synced);
        let k = key("new.com", "config");
        s.reset(G, [(k.as_str(), &b"{}"[..], 3)], 10);
        assert!(s.synced);
        assert_eq!(s.revision, 10);
        assert!(s.upstreams().is_empty());
        assert!(s.files(&BTreeMap::new()).0.contains_key("new.com"));
    }

    #[test]
    fn lua_routing_pushes_routes_and_keeps_the_last_good_one() {
        let mut s = Desired::from_dump(State::default(), 8999, Routing::Lua);
        let cfg = |c: Change| Some(("a.com".to_string(), c));
        assert_eq!(
            s.apply(G, &key("a.com", "config"), Some((b"{}", 3))),
            cfg(Change::Route)
        );
        let hdr = br#"{"headers":{"X":"1"}}"#;
        assert_eq!(
            s.apply(G, &key("a.com", "config"), Some((hdr, 4))),
            cfg(Change::Route)
        );
        s.apply(
            G,
            &key("b.com", "config"),
            Some((
                br#"{"serverNames":["a.com","b.com"],"listen":[{"port":81}]}"#,
                5,
            )),
        );
        let p = s.pushed();
        assert!(p.routes["a.com"].contains("\"X\",\"1\""), "{p:?}");
        assert_eq!(p.hosts["80|a.com"], "a.com");
        assert_eq!(p.hosts["81|a.com"], "b.com");
        let (files, errors) = s.files(&BTreeMap::new());
        assert_eq!(files.keys().collect::<Vec<_>>(), vec![ROUTER]);
        assert!(files[ROUTER].contains("listen 80 default_server;"));
        assert!(files[ROUTER].contains("listen 81 default_server;"));
        assert!(errors.is_empty());
        // An unknown variable is refused; the last good route stays.
        let bad = br#"{"headers":{"X":"$nope"}}"#;
        s.apply(G, &key("a.com", "config"), Some((bad, 6)));
        assert_eq!(s.pushed().routes["a.com"], p.routes["a.com"]);
        assert_eq!(s.files(&BTreeMap::new()).1["a.com"].kind, "invalid");
        // TLS: the domain's own servers (a file, so a reload), routed by lua.
        let tls = br#"{"listen":[{"port":443,"ssl":true}],"tls":{"certificate":"/c","certificateKey":"/k"}}"#;
        assert_eq!(
            s.apply(G, &key("a.com", "config"), Some((tls, 7))),
            cfg(Change::Config)
        );
        assert!(s.pushed().routes.contains_key("a.com"));
        assert_eq!(s.pushed().hosts["443/ssl|a.com"], "a.com");
        let (files, _) = s.files(&BTreeMap::new());
        assert!(files["a.com"].contains("ssl_certificate \"/c\";"));
        assert!(!files[ROUTER].contains("443"), "{}", files[ROUTER]);
        // Anything but listens, names and the certificate: the route only.
        let tls2 = br#"{"listen":[{"port":443,"ssl":true}],"tls":{"certificate":"/c","certificateKey":"/k"},"headers":{"X":"2"}}"#;
        assert_eq!(
            s.apply(G, &key("a.com", "config"), Some((tls2, 8))),
            cfg(Change::Route)
        );
        assert!(s.pushed().routes["a.com"].contains("\"X\",\"2\""));
        // The dump restores routes and names.
        let again = Desired::from_dump(s.pushed(), 8999, Routing::Lua);
        assert_eq!(again.pushed(), s.pushed());
    }

    #[test]
    fn a_listen_address_binds_both_routing_modes_to_this_host() {
        let addr = Some("127.0.0.2".parse().unwrap());
        let port = br#"{"listen":[{"port":8080}]}"#;
        let mut lua =
            Desired::from_dump(State::default(), 8999, Routing::Lua).with_listen_address(addr);
        lua.apply(G, &key("a.com", "config"), Some((port, 3)));
        assert_eq!(lua.pushed().hosts["127.0.0.2:8080|a.com"], "a.com");
        let router = &lua.files(&BTreeMap::new()).0[ROUTER];
        assert!(
            router.contains("listen 127.0.0.2:8080 default_server;"),
            "{router}"
        );
        let mut gen = generated().with_listen_address(addr);
        gen.apply(G, &key("a.com", "config"), Some((port, 3)));
        let file = &gen.files(&BTreeMap::new()).0["a.com"];
        assert!(file.contains("    listen 127.0.0.2:8080;\n"), "{file}");
    }

    /// The pusher's incremental items must be exactly what a full push
    /// sends: same texts, same owner of a contested server name.
    fn assert_items_match_full(s: &Desired) {
        let full = s.pushed().items();
        for (k, text) in &full {
            assert_eq!(s.item(k).as_ref(), Some(text), "{k}");
        }
    }

    #[test]
    fn a_change_touches_only_its_domains_items() {
        let mut s = Desired::from_dump(State::default(), 8999, Routing::Lua);
        assert_eq!(s.take_touched(), None, "before the first take: everything");
        let k = key("a.com", "config");
        s.reset(G, [(k.as_str(), &b"{}"[..], 3)], 3);
        assert_eq!(s.take_touched(), None, "a full sync: everything");
        let both = br#"{"serverNames":["a.com","b.com"]}"#;
        s.apply(G, &key("b.com", "config"), Some((both, 4)));
        let up = br#"{"servers":[{"address":"10.0.0.1:80"}]}"#;
        s.apply(G, &key("b.com", "upstream"), Some((up, 5)));
        let touched = s.take_touched().expect("incremental");
        let want: BTreeSet<String> = ["u:b.com", "r:b.com", "h:80|a.com", "h:80|b.com"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(touched, want);
        assert_items_match_full(&s);
        // a.com keeps the name it shares with b.com (name order).
        assert_eq!(s.item("h:80|a.com").as_deref(), Some(">80|a.com a.com\n"));
        // Deleting a.com hands the shared name to b.com.
        s.apply(G, &key("a.com", "config"), None);
        let touched = s.take_touched().expect("incremental");
        assert!(touched.contains("h:80|a.com") && touched.contains("r:a.com"));
        assert_eq!(s.item("r:a.com"), None);
        assert_eq!(s.item("h:80|a.com").as_deref(), Some(">80|a.com b.com\n"));
        assert_items_match_full(&s);
    }
}

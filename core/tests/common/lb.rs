//! A whole serving path for an app: the core (API + reconciler, in
//! process, on a socket for the registry's token requests), the platform
//! registry with token auth, one real Cell with a node, `leengine-discovery`
//! and an nginx agent with its nginx, all real. (One agent: two nginx on
//! one host cannot both listen on the domain's port.) Shared by the grey-upgrade
//! test and the drain benchmark.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use leengine_core::cells::CellSettings;
use leengine_core::deploy::spec::AppSpec;
use leengine_core::deploy::{objects, reconcile, DeploySettings};
use leengine_core::monitor::MonitorSettings;
use leengine_core::server::Settings;
use leengine_store::region::ServiceBinding;
use leengine_testenv as te;
use serde_json::{json, Value};

use super::{registry_settings, registry_token, sibling, token_keypair};
use super::{token_registry, Auth, Env};

pub const GROUP: &str = "g1";
pub const DOMAIN: &str = "web.example.com";
pub const CELL: &str = "cella";
/// Hang guard for waits; not a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(240);

/// The label selector of one version's pods.
pub fn version(n: u64) -> String {
    format!("leengine.io/version={n}")
}

/// What Prometheus scrapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Monitoring {
    /// The nginx agent's per-domain counters (Prometheus on the host).
    Lb,
    /// The node-agent's container metrics too: Prometheus in the node's
    /// namespace, where that agent listens (the nginx agent's metrics port
    /// is mirrored into it).
    Containers,
}

/// How often Prometheus scrapes and the autoscaler decides.
#[derive(Clone, Copy, Debug)]
pub struct Cadence {
    pub scrape: Duration,
    pub autoscale_period: Duration,
}

impl Cadence {
    /// Short, so tests see decisions within seconds.
    pub const TESTS: Cadence = Cadence {
        scrape: Duration::from_secs(1),
        autoscale_period: Duration::from_secs(2),
    };
}

pub struct LbRegion {
    pub env: Env,
    pub cell: te::Cell,
    pub registry: te::Registry,
    pub discovery: te::Discovery,
    pub agents: Vec<te::NginxAgent>,
    /// nginx's listen port for [`DOMAIN`].
    pub port: u16,
    pub admin: Auth,
    pub owner: Auth,
    /// Scraping every agent core's service discovery lists (with
    /// [`LbRegion::start_monitored`]), core's `--prometheus`.
    pub prometheus: Option<te::Prometheus>,
    pub dir: tempfile::TempDir,
}

impl LbRegion {
    /// Everything up, the image `team/web` pushed with `tags`, the domain
    /// published through the core's SLB API; no app yet. The image's server
    /// stops at once on SIGTERM: a pod that still gets requests when it is
    /// deleted fails them.
    pub async fn start(vlan: u16, tags: &[&str]) -> LbRegion {
        Self::start_with(vlan, tags, None).await
    }

    /// [`LbRegion::start`] with Prometheus (scraping every second what
    /// core's discovery lists) and an autoscaler deciding every 2 s.
    pub async fn start_monitored(vlan: u16, tags: &[&str], m: Monitoring) -> LbRegion {
        Self::start_at(vlan, tags, m, Cadence::TESTS).await
    }

    /// [`LbRegion::start_monitored`] at another cadence.
    pub async fn start_at(vlan: u16, tags: &[&str], m: Monitoring, c: Cadence) -> LbRegion {
        Self::start_with(vlan, tags, Some((m, c))).await
    }

    async fn start_with(
        vlan: u16,
        tags: &[&str],
        monitoring: Option<(Monitoring, Cadence)>,
    ) -> LbRegion {
        let cadence = monitoring.map_or(Cadence::TESTS, |m| m.1);
        let monitoring = monitoring.map(|m| m.0);
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("cells");
        std::fs::create_dir(&creds).unwrap();
        let (key, cert, cert_path) = token_keypair(dir.path());
        // Bound before Prometheus starts: its discovery asks core.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let core_port = listener.local_addr().unwrap().port();
        let node_agent = (monitoring == Some(Monitoring::Containers))
            .then(|| super::sibling("leengine-node-agent"));
        let cell = tokio::task::block_in_place(|| super::start_cell(vlan, node_agent));
        let prometheus = monitoring.map(|m| {
            let config = |sd: u16| {
                move |_: &std::path::Path| {
                    format!(
                        "global:\n  scrape_interval: {}s\n\
                         scrape_configs:\n  - job_name: leengine\n    http_sd_configs:\n      \
                         - url: http://127.0.0.1:{sd}/api/v1/monitor/targets\n        \
                         refresh_interval: 1s\n",
                        cadence.scrape.as_secs()
                    )
                }
            };
            match m {
                Monitoring::Lb => te::Prometheus::start(config(core_port)),
                Monitoring::Containers => {
                    let ns = cell.ovs().netns();
                    te::Prometheus::start_in(ns, config(ns.forward_tcp(core_port)))
                }
            }
        });
        let env = Env::start(Settings {
            registry: Some(registry_settings(key, cert)),
            cells: CellSettings {
                credentials_dir: creds.clone(),
                min_app_cells: 1,
            },
            deploy: DeploySettings {
                resync: Duration::from_secs(2),
                autoscale_period: cadence.autoscale_period,
                ..DeploySettings::default()
            },
            monitor: MonitorSettings {
                prometheus: prometheus.as_ref().map(te::Prometheus::addr),
                ..MonitorSettings::default()
            },
            ..Default::default()
        })
        .await;
        env.serve_on(listener);
        tokio::spawn(reconcile::run(env.core.clone()));
        let registry = token_registry(core_port, &cert_path);
        let admin = env.user("root", true).await;
        let Auth::Bearer(token) = env.user("olga", false).await else {
            unreachable!()
        };
        let owner = Auth::Bearer(token.clone());
        for (path, body) in [
            ("/api/v1/groups", json!({"name": "team"})),
            ("/api/v1/images", json!({"name": "team/web"})),
        ] {
            let (st, v) = env.call(&owner, Method::POST, path, Some(body)).await;
            assert_eq!(st, StatusCode::CREATED, "{v}");
        }
        let push = registry_token(core_port, "repository:team/web:push,pull", "olga", &token);
        for tag in tags {
            te::Image::web_stopping_on_sigterm(8080).push(
                &registry.addr(),
                "team/web",
                tag,
                Some(&push),
            );
        }
        cell.trust_registry(&registry.addr());
        std::fs::copy(cell.kubeconfig(), creds.join(format!("{CELL}.kubeconfig"))).unwrap();
        let (st, v) = env
            .call(
                &admin,
                Method::POST,
                "/api/v1/admin/cells",
                Some(
                    json!({"name": CELL, "kubeconfig": format!("{CELL}.kubeconfig"),
                    "etcd": [cell.etcd_endpoint()], "nginx_groups": [GROUP]}),
                ),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        let discovery = te::Discovery::start(
            &sibling("leengine-discovery"),
            &env.etcd,
            &creds,
            "d1",
            &["--prefix", env.etcd.keys().prefix()],
        );
        let agents = ["h1"]
            .iter()
            .map(|h| te::NginxAgent::start(&sibling("leengine-nginx-agent"), &env.etcd, GROUP, h))
            .collect::<Vec<_>>();
        if monitoring == Some(Monitoring::Containers) {
            for a in &agents {
                cell.ovs().netns().mirror_tcp(a.metrics_port);
            }
        }
        let port = publish_domain(&env, &admin, DOMAIN).await;
        tokio::task::block_in_place(|| discovery.wait_active());
        LbRegion {
            env,
            cell,
            registry,
            discovery,
            agents,
            port,
            admin,
            owner,
            prometheus,
            dir,
        }
    }

    /// Publishes another domain of [`GROUP`]; returns its port.
    pub async fn publish(&self, domain: &str) -> u16 {
        publish_domain(&self.env, &self.admin, domain).await
    }

    /// Namespace `ns` in the Cell with `app`'s pull secret (its robot may
    /// pull from any namespace), for Deployments applied without the core;
    /// returns `app`'s spec moved there, without LB.
    pub fn plain_namespace(&self, app: &AppSpec, ns: &str) -> AppSpec {
        let mut plain = app.clone();
        plain.namespace = ns.into();
        plain.uid = ns.into();
        plain.lb = None;
        let c = &self.cell;
        let out = c.kubectl(&["create", "namespace", ns]);
        assert!(out.status.success(), "{out:?}");
        let secret = c.kubectl(&[
            "-n",
            &app.namespace,
            "get",
            "secret",
            objects::PULL_SECRET,
            "-o",
            "json",
        ]);
        let mut secret: Value = serde_json::from_slice(&secret.stdout).unwrap();
        secret["metadata"] = json!({"name": objects::PULL_SECRET, "namespace": ns});
        c.apply(&secret.to_string());
        plain
    }

    /// A peer outside the core: [`LbRegion::plain_namespace`] with the
    /// app's Service, bound to `domain` (published) through a discovery
    /// Service binding, so a plain Deployment applied there is served by
    /// the same discovery, agent and nginx. Returns the peer's spec (for
    /// [`objects::deployment`]) and the domain's port.
    pub async fn plain_peer(&self, app: &AppSpec, ns: &str, domain: &str) -> (AppSpec, u16) {
        let port = self.publish(domain).await;
        let plain = tokio::task::block_in_place(|| self.plain_namespace(app, ns));
        let c = &self.cell;
        c.apply(&serde_json::to_string(&objects::service(&plain)).unwrap());
        let binding = ServiceBinding {
            group: GROUP.into(),
            domain: domain.into(),
            port: None,
        };
        let key = self
            .env
            .core
            .db
            .keys
            .discovery_service(CELL, ns, objects::SERVICE_NAME);
        let mut root = self.env.etcd.root_client().await;
        root.put(key, serde_json::to_string(&binding).unwrap(), None)
            .await
            .unwrap();
        (plain, port)
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.env.call(&self.owner, method, path, body).await
    }

    /// Creates the app `name` served on [`DOMAIN`]; returns its record.
    pub async fn create_app(&self, name: &str) -> Value {
        let (st, app) = self
            .call(
                Method::POST,
                "/api/v1/apps",
                Some(
                    json!({"name": name, "image": format!("{}/team/web", self.registry.addr()),
                    "lb": {"domain": DOMAIN, "group": GROUP}}),
                ),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{app}");
        app
    }

    /// Deploys a version of `app` with `replicas` in the Cell; returns the
    /// version record.
    pub async fn deploy(&self, app: &str, tag: &str, replicas: u32) -> Value {
        let (st, v) = self.try_deploy(app, tag, replicas, false).await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        v
    }

    /// A deploy of `tag`, replacing the newest version one pod at a time
    /// when `replace`; the answer as it comes.
    pub async fn try_deploy(
        &self,
        app: &str,
        tag: &str,
        replicas: u32,
        replace: bool,
    ) -> (StatusCode, Value) {
        let body = json!({"tag": tag, "replicas": replicas, "replace": replace,
            "health": {"path": "/healthz", "period_seconds": 1}, "env": {"VERSION": tag}});
        self.call(
            Method::POST,
            &format!("/api/v1/apps/{app}/versions"),
            Some(body),
        )
        .await
    }

    pub async fn scale(&self, app: &str, version: u64, replicas: u32) {
        let (st, v) = self
            .call(
                Method::POST,
                &format!("/api/v1/apps/{app}/versions/{version}/scale"),
                Some(json!({"cells": {CELL: replicas}})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }

    pub async fn delete_version(&self, app: &str, version: u64) {
        let (st, v) = self
            .call(
                Method::DELETE,
                &format!("/api/v1/apps/{app}/versions/{version}"),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    }

    /// `pod name → IP` of the running (not terminating) pods matching
    /// `selector` in `ns`, and whether every one of them is Ready.
    pub fn pods(&self, ns: &str, selector: &str) -> (Vec<(String, String)>, bool) {
        let out = self
            .cell
            .kubectl(&["-n", ns, "get", "pods", "-l", selector, "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let items: Vec<&Value> = v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect();
        let ready = items.iter().all(|p| te::pod_ready(p));
        let pods = items
            .iter()
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    p["status"]["podIP"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        (pods, ready)
    }

    /// Pods of any state (terminating too) matching `selector` in `ns`.
    pub fn pod_count(&self, ns: &str, selector: &str) -> usize {
        let out = self
            .cell
            .kubectl(&["-n", ns, "get", "pods", "-l", selector, "-o", "name"]);
        String::from_utf8_lossy(&out.stdout).lines().count()
    }

    /// Waits until `n` pods of `selector` run, all Ready, every one of them
    /// in the nginx peers for [`DOMAIN`] and nothing else there (when
    /// `only`), and no other pod of `selector` is left at all.
    pub fn wait_served(
        &self,
        ns: &str,
        selector: &str,
        n: usize,
        only: bool,
    ) -> BTreeSet<SocketAddr> {
        self.wait_served_on(DOMAIN, ns, selector, n, only)
    }

    /// [`Self::wait_served`] for `domain`.
    pub fn wait_served_on(
        &self,
        domain: &str,
        ns: &str,
        selector: &str,
        n: usize,
        only: bool,
    ) -> BTreeSet<SocketAddr> {
        let mut last = (Vec::new(), Vec::new());
        let ok = te::wait_until(PATIENCE, || {
            let (pods, ready) = self.pods(ns, selector);
            let want: BTreeSet<SocketAddr> = pods
                .iter()
                .filter_map(|(_, ip)| format!("{ip}:8080").parse().ok())
                .collect();
            let peers: Vec<BTreeSet<SocketAddr>> =
                self.agents.iter().map(|a| a.live_peers(domain)).collect();
            let ok = ready
                && want.len() == n
                && self.pod_count(ns, selector) == n
                && peers.iter().all(|p| {
                    if only {
                        *p == want
                    } else {
                        p.is_superset(&want)
                    }
                });
            last = (pods, peers);
            ok
        });
        assert!(
            ok,
            "{n} pods of {selector} never served alone={only}: pods {:?}, peers {:?}\n{}",
            last.0,
            last.1,
            self.discovery.log()
        );
        last.0
            .iter()
            .filter_map(|(_, ip)| format!("{ip}:8080").parse().ok())
            .collect()
    }

    /// A load through nginx: non-idempotent requests (POST to a CGI that
    /// prints the pod's name and version), so nginx never retries one it
    /// already sent to a peer.
    pub fn load(&self, workers: usize) -> te::Load {
        te::Load::start(self.port, DOMAIN, "POST", "/cgi-bin/whoami", workers)
    }
}

/// The domain's config through the core's SLB API, listening on a free port.
async fn publish_domain(env: &Env, admin: &Auth, domain: &str) -> u16 {
    let port = te::free_port();
    let (st, v) = env
        .call(
            admin,
            Method::POST,
            &format!("/api/v1/slb/groups/{GROUP}/domains"),
            Some(json!({"domain": domain, "config": {"listen": [{"port": port}]}})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    port
}

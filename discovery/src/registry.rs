//! What discovery follows in etcd: the Cell registry (a Cell added or
//! removed starts or stops its watcher, without restart), the Service
//! bindings and the drain requests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use leengine_store::keys::AppKey;
use leengine_store::region::{AppRoute, CellRecord, DrainRequest, ServiceBinding, APP_SERVICE};
use leengine_store::Keys;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::follow::Folder;
use crate::hub::Hub;
use crate::model::{Binding, DomainRef, Drain, ServiceRef};

/// A task that ends with its owner.
#[derive(Debug)]
pub struct Task(JoinHandle<()>);

impl Task {
    pub fn spawn(f: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        Self(tokio::spawn(f))
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn parse<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Option<T> {
    serde_json::from_slice(value)
        .map_err(
            |e| tracing::warn!(key = %key, error = %e, "ignoring a record that does not parse"),
        )
        .ok()
}

/// A prefix folded into a map by key; `entry` reads one record (`None`:
/// not one of ours, or unusable), `publish` hands the whole map on after
/// every change.
pub struct MapFolder<T> {
    map: BTreeMap<String, T>,
    entry: Box<Entry<T>>,
    publish: Box<Publish<T>>,
}

/// By hand: the two closures have no `Debug`.
impl<T: std::fmt::Debug> std::fmt::Debug for MapFolder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapFolder")
            .field("map", &self.map)
            .finish_non_exhaustive()
    }
}

type Entry<T> = dyn Fn(&str, &[u8]) -> Option<T> + Send;
type Publish<T> = dyn Fn(&BTreeMap<String, T>) + Send;

impl<T> MapFolder<T> {
    pub fn new(
        entry: impl Fn(&str, &[u8]) -> Option<T> + Send + 'static,
        publish: impl Fn(&BTreeMap<String, T>) + Send + 'static,
    ) -> Self {
        Self {
            map: BTreeMap::new(),
            entry: Box::new(entry),
            publish: Box::new(publish),
        }
    }
}

impl<T: Send> Folder for MapFolder<T> {
    fn reset(&mut self, kvs: Vec<(String, Vec<u8>)>) {
        self.map = kvs
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), (self.entry)(k, v)?)))
            .collect();
        (self.publish)(&self.map);
    }
    fn put(&mut self, key: &str, value: &[u8]) {
        match (self.entry)(key, value) {
            Some(e) => self.map.insert(key.to_string(), e),
            None => self.map.remove(key),
        };
        (self.publish)(&self.map);
    }
    fn delete(&mut self, key: &str) {
        if self.map.remove(key).is_some() {
            (self.publish)(&self.map);
        }
    }
}

/// `{prefix}/cells/` → the Cells to watch, by name.
pub fn cells(
    keys: Keys,
    tx: watch::Sender<BTreeMap<String, CellRecord>>,
) -> MapFolder<(String, CellRecord)> {
    let prefix = keys.cells_prefix();
    MapFolder::new(
        move |k, v| {
            let name = k
                .strip_prefix(&prefix)
                .filter(|n| !n.is_empty() && !n.contains('/'))?;
            Some((name.to_string(), parse(k, v)?))
        },
        move |m| {
            tx.send_replace(m.values().cloned().collect());
        },
    )
}

/// `{prefix}/discovery/services/` → [`World::bindings`](crate::model::World).
pub fn bindings(keys: Keys, hub: Arc<Hub>) -> MapFolder<(ServiceRef, Binding)> {
    MapFolder::new(
        move |k, v| {
            let (cell, namespace, service) = keys.parse_discovery_service(k)?;
            let b: ServiceBinding = parse(k, v)?;
            let svc = ServiceRef {
                cell: cell.into(),
                namespace: namespace.into(),
                service: service.into(),
            };
            let target = DomainRef {
                group: b.group,
                domain: b.domain,
            };
            Some((
                svc,
                Binding {
                    target,
                    port: b.port,
                },
            ))
        },
        move |m| {
            let bindings = m.values().cloned().collect();
            hub.update(|w| w.bindings = bindings);
        },
    )
}

/// `{prefix}/apps/` → [`World::app_bindings`](crate::model::World): an app
/// with a load balancer, its Service in each of its Cells.
pub fn apps(keys: Keys, hub: Arc<Hub>) -> MapFolder<Vec<(ServiceRef, Binding)>> {
    MapFolder::new(
        move |k, v| {
            // Versions, status and robots live under the app's key too.
            let Some(AppKey::App(_)) = keys.parse_app_key(k) else {
                return None;
            };
            app_bindings(&parse::<AppRoute>(k, v)?)
        },
        move |m| {
            let bindings = m.values().flatten().cloned().collect();
            hub.update(|w| w.app_bindings = bindings);
        },
    )
}

fn app_bindings(app: &AppRoute) -> Option<Vec<(ServiceRef, Binding)>> {
    let lb = app.lb.as_ref()?;
    let target = DomainRef {
        group: lb.group.clone(),
        domain: lb.domain.clone(),
    };
    Some(
        app.cells
            .iter()
            .map(|cell| {
                let svc = ServiceRef {
                    cell: cell.clone(),
                    namespace: app.namespace.clone(),
                    service: APP_SERVICE.into(),
                };
                let b = Binding {
                    target: target.clone(),
                    port: None,
                };
                (svc, b)
            })
            .collect(),
    )
}

/// `{prefix}/drain/` → [`World::drains`](crate::model::World).
pub fn drains(keys: Keys, hub: Arc<Hub>) -> MapFolder<Drain> {
    MapFolder::new(
        move |k, v| {
            let (group, domain, id) = keys.parse_drain_key(k)?;
            let r: DrainRequest = parse(k, v)?;
            Some(Drain {
                id: id.into(),
                target: DomainRef {
                    group: group.into(),
                    domain: domain.into(),
                },
                cell: r.cell,
                namespace: r.namespace,
                pods: r.pods.into_iter().collect(),
            })
        },
        move |m| {
            let drains = m.values().cloned().collect();
            hub.update(|w| w.drains = drains);
        },
    )
}

/// Starts and stops one watcher per registered Cell.
pub async fn supervise(
    mut rx: watch::Receiver<BTreeMap<String, CellRecord>>,
    hub: Arc<Hub>,
    credentials_dir: PathBuf,
    watch_timeout: Duration,
) {
    let mut running: BTreeMap<String, (CellRecord, Task)> = BTreeMap::new();
    loop {
        let want = rx.borrow_and_update().clone();
        let gone: Vec<String> = running
            .keys()
            .filter(|c| !want.contains_key(*c))
            .cloned()
            .collect();
        for c in gone {
            tracing::info!(cell = %c, "cell removed from the registry; its endpoints leave");
            running.remove(&c);
            hub.forget_cell(&c);
        }
        for (cell, rec) in want {
            if running.get(&cell).is_some_and(|(r, _)| *r == rec) {
                continue;
            }
            tracing::info!(cell = %cell, apiserver = %rec.apiserver, "watching cell");
            hub.update(|w| {
                w.cells.entry(cell.clone()).or_insert(None);
            });
            let task = Task::spawn(cell_task(
                cell.clone(),
                rec.clone(),
                hub.clone(),
                credentials_dir.clone(),
                watch_timeout,
            ));
            running.insert(cell, (rec, task));
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn cell_task(
    cell: String,
    rec: CellRecord,
    hub: Arc<Hub>,
    dir: PathBuf,
    watch_timeout: Duration,
) {
    loop {
        match crate::cellwatch::client(&cell, &rec, &dir, watch_timeout).await {
            Ok(client) => return crate::cellwatch::run(cell, client, hub, watch_timeout).await,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the Cell's client; retrying");
                hub.cell_status(&cell, |s| s.last_error = Some(e.to_string()));
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::follow::Folder;

    fn world_after(puts: &[(String, &str)]) -> crate::model::World {
        let keys = Keys::new("/le");
        let hub = Arc::new(Hub::default());
        let mut f = apps(keys, hub.clone());
        for (k, v) in puts {
            f.put(k, v.as_bytes());
        }
        hub.take().0
    }

    #[test]
    fn an_app_with_a_load_balancer_binds_its_service_in_each_cell() {
        let keys = Keys::new("/le");
        // core's record carries more fields than discovery reads.
        let rec = r#"{"name":"shop","uid":"u1","namespace":"app-shop-u1","cells":["c1","c2"],
                      "lb":{"domain":"shop.example","group":"g1"},"port":8080}"#;
        let w = world_after(&[(keys.app("shop"), rec)]);
        let got: Vec<_> = w.app_bindings.iter().collect();
        assert_eq!(got.len(), 2);
        for (svc, b) in got {
            assert_eq!(svc.namespace, "app-shop-u1");
            assert_eq!(svc.service, APP_SERVICE);
            assert_eq!(
                (b.target.group.as_str(), b.target.domain.as_str()),
                ("g1", "shop.example")
            );
        }
        let cells: Vec<_> = w.app_bindings.keys().map(|s| s.cell.as_str()).collect();
        assert_eq!(cells, ["c1", "c2"]);
    }

    #[test]
    fn an_app_without_load_balancer_or_a_child_record_binds_nothing() {
        let keys = Keys::new("/le");
        let no_lb =
            r#"{"name":"job","uid":"u2","namespace":"app-job-u2","cells":["c1"],"port":8080}"#;
        let version = r#"{"namespace":"x","cells":["c1"],"lb":{"domain":"d","group":"g"}}"#;
        let w = world_after(&[
            (keys.app("job"), no_lb),
            (keys.app_version("job", 1), version),
        ]);
        assert!(w.app_bindings.is_empty(), "{:?}", w.app_bindings);
    }
}

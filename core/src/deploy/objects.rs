//! The Kubernetes objects of an app in one Cell, built from the desired
//! state (pure; the reconciler applies them with server-side apply).

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, Event, EventSource, HTTPGetAction, LocalObjectReference,
    Namespace, ObjectReference, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Secret,
    Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;

use super::spec::{deployment_name, AppSpec, VersionSpec};

/// The one field manager of everything the platform applies.
pub const FIELD_MANAGER: &str = "leengine-core";
pub const MANAGED_LABEL: &str = "leengine.io/managed-by";
pub const MANAGED_SELECTOR: &str = "leengine.io/managed-by=leengine-core";
/// Unique per app: the Service selects on it, so every version serves.
pub const APP_UID_LABEL: &str = "leengine.io/app-uid";
pub const APP_LABEL: &str = "leengine.io/app";
pub const VERSION_LABEL: &str = "leengine.io/version";
/// Where a namespace remembers its app's LB, so that deleting an app whose
/// desired state is gone can still drain it.
pub const LB_GROUP_ANNOTATION: &str = "leengine.io/lb-group";
pub const LB_DOMAIN_ANNOTATION: &str = "leengine.io/lb-domain";
/// The ReplicaSet controller removes the pods with the lowest cost first.
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
pub const SERVICE_NAME: &str = leengine_store::region::APP_SERVICE;
pub const PULL_SECRET: &str = "leengine-pull";
pub const CONTAINER: &str = "app";
/// Time a pod gets between SIGTERM and SIGKILL once it left the LB.
pub const TERMINATION_GRACE_SECONDS: i64 = 10;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn app_labels(app: &AppSpec) -> BTreeMap<String, String> {
    labels(&[
        (MANAGED_LABEL, FIELD_MANAGER),
        (APP_UID_LABEL, &app.uid),
        (APP_LABEL, &app.name),
    ])
}

/// Selects one version's pods.
pub fn version_selector(app: &AppSpec, version: u64) -> String {
    format!("{APP_UID_LABEL}={},{VERSION_LABEL}={version}", app.uid)
}

pub fn namespace(app: &AppSpec) -> Namespace {
    let annotations = app.lb.as_ref().map(|lb| {
        labels(&[
            (LB_GROUP_ANNOTATION, &lb.group),
            (LB_DOMAIN_ANNOTATION, &lb.domain),
        ])
    });
    Namespace {
        metadata: ObjectMeta {
            name: Some(app.namespace.clone()),
            labels: Some(app_labels(app)),
            annotations,
            ..Default::default()
        },
        ..Default::default()
    }
}

pub fn service(app: &AppSpec) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(SERVICE_NAME.into()),
            namespace: Some(app.namespace.clone()),
            labels: Some(app_labels(app)),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(labels(&[(APP_UID_LABEL, &app.uid)])),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: i32::from(app.port),
                target_port: Some(IntOrString::Int(i32::from(app.port))),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `kubernetes.io/dockerconfigjson` for every registry host the app pulls
/// from, with the robot's `user:password`.
pub fn pull_secret(app: &AppSpec, hosts: &[String], user: &str, password: &str) -> Secret {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let auths: serde_json::Map<String, serde_json::Value> = hosts
        .iter()
        .map(|h| {
            (
                h.clone(),
                serde_json::json!({"username": user, "password": password, "auth": auth}),
            )
        })
        .collect();
    let config = serde_json::json!({ "auths": auths }).to_string();
    Secret {
        metadata: ObjectMeta {
            name: Some(PULL_SECRET.into()),
            namespace: Some(app.namespace.clone()),
            labels: Some(app_labels(app)),
            ..Default::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        data: Some(BTreeMap::from([(
            ".dockerconfigjson".to_string(),
            ByteString(config.into_bytes()),
        )])),
        ..Default::default()
    }
}

fn resources(v: &VersionSpec) -> Option<ResourceRequirements> {
    let r = &v.resources;
    let pick = |cpu: &Option<String>, mem: &Option<String>| {
        let m: BTreeMap<String, Quantity> = [("cpu", cpu), ("memory", mem)]
            .into_iter()
            .filter_map(|(k, q)| q.clone().map(|q| (k.to_string(), Quantity(q))))
            .collect();
        (!m.is_empty()).then_some(m)
    };
    let requests = pick(&r.cpu_request, &r.memory_request);
    let limits = pick(&r.cpu_limit, &r.memory_limit);
    (requests.is_some() || limits.is_some()).then(|| ResourceRequirements {
        requests,
        limits,
        ..Default::default()
    })
}

fn probe(app: &AppSpec, v: &VersionSpec) -> Option<Probe> {
    let h = v.health.as_ref()?;
    let int = |n: u32| Some(i32::try_from(n).unwrap_or(i32::MAX));
    Some(Probe {
        http_get: Some(HTTPGetAction {
            path: Some(h.path.clone()),
            port: IntOrString::Int(i32::from(h.port.unwrap_or(app.port))),
            ..Default::default()
        }),
        initial_delay_seconds: int(h.initial_delay_seconds),
        period_seconds: int(h.period_seconds),
        timeout_seconds: int(h.timeout_seconds),
        success_threshold: int(h.success_threshold),
        failure_threshold: int(h.failure_threshold),
        ..Default::default()
    })
}

/// The version's Deployment in `cell` with `replicas` (the reconciler may
/// hold a scale-down until the drain is acknowledged).
pub fn deployment(app: &AppSpec, v: &VersionSpec, replicas: u32) -> Deployment {
    let version = v.version.to_string();
    let mut pod_labels = app_labels(app);
    pod_labels.insert(VERSION_LABEL.into(), version.clone());
    let selector = labels(&[(APP_UID_LABEL, &app.uid), (VERSION_LABEL, &version)]);
    let env: Vec<EnvVar> = v
        .env
        .iter()
        .map(|(k, val)| EnvVar {
            name: k.clone(),
            value: Some(val.clone()),
            ..Default::default()
        })
        .collect();
    let readiness = probe(app, v);
    let liveness = readiness
        .clone()
        .filter(|_| v.health.as_ref().is_some_and(|h| h.liveness));
    let container = Container {
        name: CONTAINER.into(),
        image: Some(format!("{}:{}", v.image, v.tag)),
        ports: Some(vec![ContainerPort {
            container_port: i32::from(app.port),
            name: Some("http".into()),
            ..Default::default()
        }]),
        env: (!env.is_empty()).then_some(env),
        resources: resources(v),
        readiness_probe: readiness,
        liveness_probe: liveness,
        ..Default::default()
    };
    Deployment {
        metadata: ObjectMeta {
            name: Some(deployment_name(v.version)),
            namespace: Some(app.namespace.clone()),
            labels: Some(pod_labels.clone()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            revision_history_limit: Some(2),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    image_pull_secrets: Some(vec![LocalObjectReference {
                        name: PULL_SECRET.into(),
                    }]),
                    termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The registry host of an image reference (`host[:port]/group/repo`), if
/// it names one.
pub fn registry_host(image: &str) -> Option<&str> {
    let (first, _) = image.split_once('/')?;
    (first.contains(['.', ':']) || first == "localhost").then_some(first)
}

/// An Event on Deployment `deployment` of namespace `ns`, from the
/// platform: `(type, reason, message)`, as `kubectl describe` shows it.
pub fn deployment_event(ns: &str, deployment: &str, what: (&str, &str, String)) -> Event {
    let (type_, reason, message) = what;
    let now = super::now_time();
    Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("leengine-{}-", reason.to_lowercase())),
            namespace: Some(ns.to_string()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("apps/v1".into()),
            kind: Some("Deployment".into()),
            name: Some(deployment.to_string()),
            namespace: Some(ns.to_string()),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message),
        type_: Some(type_.into()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        source: Some(EventSource {
            component: Some(FIELD_MANAGER.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::spec::{Health, Lb, Resources};

    fn app() -> AppSpec {
        AppSpec {
            name: "web".into(),
            uid: "u1".into(),
            namespace: "web-u1".into(),
            image: Some("127.0.0.1:5000/team/web".into()),
            cells: vec!["a".into()],
            lb: Some(Lb {
                domain: "web.example".into(),
                group: "g".into(),
            }),
            port: 8080,
        }
    }

    fn version() -> VersionSpec {
        VersionSpec {
            version: 3,
            image: "127.0.0.1:5000/team/web".into(),
            tag: "v3".into(),
            replicas: 2,
            cells: Default::default(),
            resources: Resources {
                cpu_request: Some("100m".into()),
                ..Default::default()
            },
            env: BTreeMap::from([("MODE".into(), "prod".into())]),
            health: Some(Health {
                path: "/healthz".into(),
                port: None,
                initial_delay_seconds: 1,
                period_seconds: 2,
                timeout_seconds: 1,
                success_threshold: 1,
                failure_threshold: 3,
                liveness: false,
            }),
            replaces: None,
            by: "u".into(),
            at: chrono::Utc::now(),
        }
    }

    #[test]
    fn the_service_selects_every_version_by_the_app_uid() {
        let s = service(&app());
        let sel = s.spec.unwrap().selector.unwrap();
        assert_eq!(sel, labels(&[(APP_UID_LABEL, "u1")]));
        let d = deployment(&app(), &version(), 2);
        let pod = d.spec.unwrap().template.metadata.unwrap().labels.unwrap();
        assert_eq!(pod[APP_UID_LABEL], "u1");
        assert_eq!(pod[VERSION_LABEL], "3");
    }

    #[test]
    fn the_health_check_becomes_the_readiness_probe_only() {
        let d = deployment(&app(), &version(), 2);
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(2));
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("127.0.0.1:5000/team/web:v3"));
        let p = c.readiness_probe.as_ref().unwrap();
        assert_eq!(p.http_get.as_ref().unwrap().port, IntOrString::Int(8080));
        assert_eq!(p.period_seconds, Some(2));
        assert!(c.liveness_probe.is_none());
        assert_eq!(
            c.resources.as_ref().unwrap().requests.as_ref().unwrap()["cpu"],
            Quantity("100m".into())
        );
        assert_eq!(pod.image_pull_secrets.unwrap()[0].name, PULL_SECRET);
    }

    #[test]
    fn the_pull_secret_is_a_docker_config_for_each_host() {
        let s = pull_secret(&app(), &["127.0.0.1:5000".into()], "app$web", "pw");
        let raw = &s.data.unwrap()[".dockerconfigjson"].0;
        let v: serde_json::Value = serde_json::from_slice(raw).unwrap();
        assert_eq!(v["auths"]["127.0.0.1:5000"]["username"], "app$web");
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
    }

    #[test]
    fn the_namespace_remembers_the_lb() {
        let n = namespace(&app());
        let a = n.metadata.annotations.unwrap();
        assert_eq!(a[LB_GROUP_ANNOTATION], "g");
        assert_eq!(a[LB_DOMAIN_ANNOTATION], "web.example");
    }

    #[test]
    fn registry_hosts() {
        assert_eq!(registry_host("127.0.0.1:5000/t/w"), Some("127.0.0.1:5000"));
        assert_eq!(registry_host("reg.example/t/w"), Some("reg.example"));
        assert_eq!(registry_host("t/w"), None);
    }
}

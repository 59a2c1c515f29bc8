//! EndpointSlice (discovery.k8s.io/v1) → [`Slice`]: only what the upstream needs.

use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::model::{Endpoint, Slice};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `((namespace, name), slice)`; `None` for a slice discovery cannot use
/// (FQDN addresses, no owning Service).
pub fn convert(es: &EndpointSlice) -> Option<((String, String), Slice)> {
    let meta = &es.metadata;
    let key = (meta.namespace.clone()?, meta.name.clone()?);
    if es.address_type != "IPv4" && es.address_type != "IPv6" {
        return None;
    }
    let service = meta.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone();
    let ports = es
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p.name.clone().filter(|n| !n.is_empty()),
                u16::try_from(p.port?).ok()?,
            ))
        })
        .collect();
    let endpoints = es
        .endpoints
        .iter()
        .flat_map(|e| {
            let c = e.conditions.as_ref();
            // The API says an unset `ready` means ready; the controller always sets it.
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let pod = e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone());
            e.addresses.iter().filter_map(move |a| {
                Some(Endpoint {
                    ip: a.parse().ok()?,
                    ready,
                    terminating,
                    pod: pod.clone(),
                })
            })
        })
        .collect();
    Some((
        key.clone(),
        Slice {
            namespace: key.0,
            service,
            ports,
            endpoints,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn conditions_ports_and_pods_are_read() {
        let es = parse(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true},
                 "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "shop"}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.0.0.3"]}
            ]
        }));
        let (key, s) = convert(&es).unwrap();
        assert_eq!(key, ("shop".into(), "web-abc".into()));
        assert_eq!(s.service, "web");
        assert_eq!(s.ports, vec![(Some("http".into()), 8080)]);
        assert_eq!(s.endpoints.len(), 3);
        assert_eq!(s.endpoints[0].pod.as_deref(), Some("web-1"));
        assert!(s.endpoints[0].ready && !s.endpoints[0].terminating);
        assert!(!s.endpoints[1].ready && s.endpoints[1].terminating);
        assert!(s.endpoints[2].ready, "unset ready means ready");
    }

    #[test]
    fn fqdn_and_orphan_slices_are_skipped() {
        let base = |t: &str, labels: serde_json::Value| {
            parse(serde_json::json!({
                "metadata": {"name": "x", "namespace": "n", "labels": labels},
                "addressType": t, "endpoints": []
            }))
        };
        assert!(convert(&base(
            "FQDN",
            serde_json::json!({"kubernetes.io/service-name": "s"})
        ))
        .is_none());
        assert!(convert(&base("IPv4", serde_json::json!({}))).is_none());
        assert!(convert(&base(
            "IPv6",
            serde_json::json!({"kubernetes.io/service-name": "s"})
        ))
        .is_some());
    }
}

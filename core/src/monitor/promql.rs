//! The PromQL the core sends: built here from fixed templates, with the
//! app's namespace (and a validated pod name) as the only inputs, escaped
//! as PromQL string literals. No request text reaches a query otherwise.

use crate::deploy::autoscale::Target;
use serde::Serialize;

/// A series the read API serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// CPU cores in use (rate of CPU seconds).
    Cpu,
    /// Working set bytes.
    Memory,
    MemoryLimit,
    NetworkRx,
    NetworkTx,
    DiskRead,
    DiskWrite,
    DiskReadOps,
    DiskWriteOps,
    Restarts,
    /// Requests per second through the app's LB domain, by status class.
    Requests,
}

impl Metric {
    pub const ALL: [Metric; 11] = [
        Metric::Cpu,
        Metric::Memory,
        Metric::MemoryLimit,
        Metric::NetworkRx,
        Metric::NetworkTx,
        Metric::DiskRead,
        Metric::DiskWrite,
        Metric::DiskReadOps,
        Metric::DiskWriteOps,
        Metric::Restarts,
        Metric::Requests,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cpu => "cpu",
            Metric::Memory => "memory",
            Metric::MemoryLimit => "memory_limit",
            Metric::NetworkRx => "network_rx",
            Metric::NetworkTx => "network_tx",
            Metric::DiskRead => "disk_read",
            Metric::DiskWrite => "disk_write",
            Metric::DiskReadOps => "disk_read_ops",
            Metric::DiskWriteOps => "disk_write_ops",
            Metric::Restarts => "restarts",
            Metric::Requests => "requests",
        }
    }

    pub fn parse(s: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.as_str() == s)
    }

    pub fn unit(self) -> &'static str {
        match self {
            Metric::Cpu => "cores",
            Metric::Memory | Metric::MemoryLimit => "bytes",
            Metric::NetworkRx | Metric::NetworkTx | Metric::DiskRead | Metric::DiskWrite => {
                "bytes/s"
            }
            Metric::DiskReadOps | Metric::DiskWriteOps => "ops/s",
            Metric::Restarts => "restarts",
            Metric::Requests => "requests/s",
        }
    }

    /// The node-agent family behind a container metric; `None` for
    /// `requests`, which nginx counts per domain.
    fn family(self) -> Option<(&'static str, bool)> {
        let f = match self {
            Metric::Cpu => ("leengine_container_cpu_seconds_total", true),
            Metric::Memory => ("leengine_container_memory_working_set_bytes", false),
            Metric::MemoryLimit => ("leengine_container_memory_limit_bytes", false),
            Metric::NetworkRx => ("leengine_pod_network_receive_bytes_total", true),
            Metric::NetworkTx => ("leengine_pod_network_transmit_bytes_total", true),
            Metric::DiskRead => ("leengine_container_blkio_read_bytes_total", true),
            Metric::DiskWrite => ("leengine_container_blkio_write_bytes_total", true),
            Metric::DiskReadOps => ("leengine_container_blkio_read_ops_total", true),
            Metric::DiskWriteOps => ("leengine_container_blkio_write_ops_total", true),
            Metric::Restarts => ("leengine_container_restarts_total", false),
            Metric::Requests => return None,
        };
        Some(f)
    }
}

/// A PromQL double-quoted string literal holding exactly `s`.
pub fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whose series: an app (its namespace), optionally one pod of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope<'a> {
    pub namespace: &'a str,
    pub pod: Option<&'a str>,
    /// The app's LB domain, for `requests`.
    pub domain: Option<&'a str>,
}

impl Scope<'_> {
    fn selector(&self) -> String {
        let mut s = format!("namespace={}", literal(self.namespace));
        if let Some(p) = self.pod {
            s.push_str(&format!(",pod={}", literal(p)));
        }
        s
    }
}

/// The query for `metric` in `scope`: per container for a pod, per pod for
/// an app; `None` when the app has no LB domain and `requests` is asked.
pub fn query(metric: Metric, scope: &Scope<'_>, rate_window: &str) -> Option<String> {
    let Some((family, counter)) = metric.family() else {
        let domain = literal(scope.domain?);
        return Some(format!(
            "sum by (class) (rate(leengine_lb_requests_total{{domain={domain}}}[{rate_window}]))"
        ));
    };
    let by = if scope.pod.is_some() {
        "pod, container"
    } else {
        "pod"
    };
    let sel = format!("{family}{{{}}}", scope.selector());
    Some(if counter {
        format!("sum by ({by}) (rate({sel}[{rate_window}]))")
    } else {
        format!("sum by ({by}) ({sel})")
    })
}

/// CPU in percent of each container's own allowance in namespace `ns`:
/// its CPU limit, else its CPU request (both from the pod spec, exported
/// by the node-agent), else one core. `or` keeps the first basis a
/// container has, since all three sides carry the same `(pod, container)`.
pub fn cpu_percent(ns: &str) -> String {
    let sel = format!("{{namespace={}}}", literal(ns));
    let used =
        format!("sum by (pod, container) (rate(leengine_container_cpu_seconds_total{sel}[1m]))");
    let basis = |family: &str| format!("max by (pod, container) ({family}{sel} > 0)");
    format!(
        "100 * (({used} / on (pod, container) ({} or {})) or {used})",
        basis("leengine_container_cpu_limit_cores"),
        basis("leengine_container_cpu_request_cores"),
    )
}

/// One autoscaling target over the last `window` seconds: per pod of the
/// app's version `version` in Cell `cell` (namespace `ns`), or, for
/// requests, the domain's total per nginx host; `None`: requests without
/// a domain.
pub fn autoscale(
    target: Target,
    ns: &str,
    cell: &str,
    version: u64,
    domain: Option<&str>,
    window: u32,
) -> Option<String> {
    let sel = format!(
        "{{namespace={},cell={},version={}}}",
        literal(ns),
        literal(cell),
        literal(&version.to_string())
    );
    let rate = |family: &str| format!("sum by (pod) (rate({family}{sel}[{window}s]))");
    Some(match target {
        Target::RequestsPerSecond => format!(
            "sum by (host) (rate(leengine_lb_requests_total{{domain={}}}[{window}s]))",
            literal(domain?)
        ),
        Target::CpuPercent => rate("leengine_container_cpu_seconds_total"),
        Target::MemoryPercent => format!(
            "sum by (pod) (avg_over_time(leengine_container_memory_working_set_bytes{sel}[{window}s]))"
        ),
        Target::DiskBytesPerSecond => format!(
            "{} + {}",
            rate("leengine_container_blkio_read_bytes_total"),
            rate("leengine_container_blkio_write_bytes_total")
        ),
    })
}

/// Pods of namespace `ns` deleted in the last 10 minutes without the
/// platform asking, summed over the nodes that saw them go.
pub fn pods_deleted(ns: &str) -> String {
    format!(
        "sum by (namespace) (increase(leengine_pod_deletions_total{{namespace={},by=\"other\"}}[10m]))",
        literal(ns)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_percent_is_of_the_limit_else_the_request_else_one_core() {
        let used = "sum by (pod, container) (rate(leengine_container_cpu_seconds_total{namespace=\"web-u1\"}[1m]))";
        assert_eq!(
            cpu_percent("web-u1"),
            format!(
                "100 * (({used} / on (pod, container) (\
                 max by (pod, container) (leengine_container_cpu_limit_cores{{namespace=\"web-u1\"}} > 0) or \
                 max by (pod, container) (leengine_container_cpu_request_cores{{namespace=\"web-u1\"}} > 0))) or {used})"
            )
        );
        assert!(cpu_percent("a\"}or{b=\"").contains("namespace=\"a\\\"}or{b=\\\"\""));
    }

    #[test]
    fn literals_cannot_leave_the_string() {
        assert_eq!(literal("web-u1"), "\"web-u1\"");
        assert_eq!(literal("a\"}or{x=\"1"), "\"a\\\"}or{x=\\\"1\"");
        assert_eq!(literal("a\\\"b"), "\"a\\\\\\\"b\"");
        assert_eq!(literal("x\ny\u{1}"), "\"x\\ny\\u0001\"");
    }

    #[test]
    fn app_and_pod_queries_fix_the_namespace() {
        let app = Scope {
            namespace: "web-u1",
            pod: None,
            domain: Some("web.example.com"),
        };
        assert_eq!(
            query(Metric::Cpu, &app, "1m").unwrap(),
            "sum by (pod) (rate(leengine_container_cpu_seconds_total{namespace=\"web-u1\"}[1m]))"
        );
        assert_eq!(
            query(Metric::Memory, &app, "1m").unwrap(),
            "sum by (pod) (leengine_container_memory_working_set_bytes{namespace=\"web-u1\"})"
        );
        assert_eq!(
            query(Metric::Requests, &app, "1m").unwrap(),
            "sum by (class) (rate(leengine_lb_requests_total{domain=\"web.example.com\"}[1m]))"
        );
        let pod = Scope {
            pod: Some("web-1\"} or vector(1) or {a=\""),
            ..app
        };
        let q = query(Metric::NetworkRx, &pod, "30s").unwrap();
        assert_eq!(
            q,
            "sum by (pod, container) (rate(leengine_pod_network_receive_bytes_total{namespace=\"web-u1\",pod=\"web-1\\\"} or vector(1) or {a=\\\"\"}[30s]))"
        );
        let no_lb = Scope {
            domain: None,
            ..app
        };
        assert_eq!(query(Metric::Requests, &no_lb, "1m"), None);
    }

    #[test]
    fn autoscale_queries_fix_namespace_cell_and_version() {
        let q = |t| autoscale(t, "web-u1", "cella", 3, Some("web.example.com"), 30);
        assert_eq!(
            q(Target::CpuPercent).unwrap(),
            "sum by (pod) (rate(leengine_container_cpu_seconds_total{namespace=\"web-u1\",cell=\"cella\",version=\"3\"}[30s]))"
        );
        assert_eq!(
            q(Target::RequestsPerSecond).unwrap(),
            "sum by (host) (rate(leengine_lb_requests_total{domain=\"web.example.com\"}[30s]))"
        );
        assert!(q(Target::MemoryPercent).unwrap().starts_with(
            "sum by (pod) (avg_over_time(leengine_container_memory_working_set_bytes{"
        ));
        assert!(q(Target::DiskBytesPerSecond)
            .unwrap()
            .contains("read_bytes_total"));
        assert_eq!(
            autoscale(Target::RequestsPerSecond, "n", "c", 1, None, 30),
            None
        );
        let evil = autoscale(Target::CpuPercent, "a\"}or{b=\"", "c", 1, None, 30).unwrap();
        assert!(evil.contains("namespace=\"a\\\"}or{b=\\\"\""));
    }

    #[test]
    fn deleted_pods_count_only_what_the_platform_did_not_ask() {
        assert_eq!(
            pods_deleted("web-u1"),
            "sum by (namespace) (increase(leengine_pod_deletions_total{namespace=\"web-u1\",by=\"other\"}[10m]))"
        );
    }

    #[test]
    fn names_round_trip() {
        for m in Metric::ALL {
            assert_eq!(Metric::parse(m.as_str()), Some(m));
        }
        assert_eq!(Metric::parse("up"), None);
    }
}

//! OpenAPI paths and schemas of apps on Kubernetes: versions, live reads
//! from the Cells (`crate::deploy::api`) and the Cell registry
//! (`crate::cells::api`).

use serde_json::{json, Map, Value};

use super::{array, no_content, ok_json, op, path_param, problem, schema_ref};

fn cell_unavailable(mut o: Value) -> Value {
    o["responses"]["502"] = problem("a Cell's apiserver refused the call (`cell_error`)");
    o["responses"]["503"] = problem(
        "etcd unavailable, or a Cell's apiserver unreachable (`cell_unavailable`, naming the Cell)",
    );
    o
}

fn replicas() -> Value {
    json!({ "type": "integer", "minimum": 0, "maximum": 10000 })
}

fn cell_counts() -> Value {
    json!({ "type": "object", "additionalProperties": replicas() })
}

pub(super) fn paths(p: &mut Map<String, Value>) {
    let name = [path_param("name")];
    let version = [path_param("name"), path_param("version")];
    p.insert("/api/v1/apps/{name}/lb".into(), json!({
        "put": op("setAppLb", "set or move the app's LB: domain and nginx group (Master+)", true, &name,
            Some(schema_ref("Lb")), ok_json("200", schema_ref("App"))),
        "delete": op("deleteAppLb", "take the app off its LB (Master+)", true, &name, None, ok_json("200", schema_ref("App"))),
    }));
    p.insert("/api/v1/apps/{name}/versions".into(), json!({
        "get": cell_unavailable(op("appVersions", "versions with desired and ready replicas per Cell, read from the Cells (Guest+)",
            true, &name, None, ok_json("200", array("VersionView")))),
        "post": op("createVersion", "deploy a new version beside the others (Master+, and pull rights on the image; charged to the quota)",
            true, &name, Some(schema_ref("VersionFields")), ok_json("201", schema_ref("VersionSpec"))),
    }));
    p.insert("/api/v1/apps/{name}/versions/template".into(), json!({
        "get": op("versionTemplate", "the newest version's fields, to deploy the next one with a new tag (Guest+)",
            true, &name, None, ok_json("200", schema_ref("VersionFields"))),
    }));
    p.insert("/api/v1/apps/{name}/versions/{version}".into(), json!({
        "get": cell_unavailable(op("getVersion", "one version with its replicas per Cell (Guest+)", true, &version, None,
            ok_json("200", schema_ref("VersionView")))),
        "delete": op("deleteVersion", "delete a version: its pods are drained, then deleted, in every Cell (Master+)",
            true, &version, None, no_content()),
    }));
    p.insert("/api/v1/apps/{name}/versions/{version}/scale".into(), json!({
        "post": op("scaleVersion", "change a version's replicas, all Cells and/or per Cell (Master+; charged to the quota)",
            true, &version, Some(json!({ "type": "object", "additionalProperties": false, "properties": {
                "replicas": replicas(), "cells": cell_counts() } })),
            ok_json("200", schema_ref("VersionSpec"))),
    }));
    p.insert("/api/v1/apps/{name}/autoscale".into(), json!({
        "get": op("getAutoscale", "the autoscaling policy and what the autoscaler last read and did per Cell (Guest+); 404 no_policy", true, &name, None,
            ok_json("200", schema_ref("Autoscale"))),
        "put": op("setAutoscale", "set the autoscaling policy of the app's newest version: min/max per Cell and targets (Master+; max checked against the quota)",
            true, &name, Some(schema_ref("AutoscalePolicy")), ok_json("200", schema_ref("AutoscaleRecord"))),
        "delete": op("deleteAutoscale", "remove the policy; the counts stay where they are (Master+)", true, &name, None, no_content()),
    }));
    p.insert("/api/v1/apps/{name}/containers".into(), json!({
        "get": cell_unavailable(op("appContainers", "the app's pods in every Cell (Guest+)", true, &name, None,
            ok_json("200", array("Container")))),
    }));
    let mut paged = name.to_vec();
    paged.push(json!({ "name": "limit", "in": "query", "required": false,
        "schema": { "type": "integer", "minimum": 1, "maximum": 500 } }));
    paged.push(json!({ "name": "offset", "in": "query", "required": false,
        "schema": { "type": "integer", "minimum": 0 } }));
    p.insert("/api/v1/apps/{name}/events".into(), json!({
        "get": cell_unavailable(op("appEvents", "Kubernetes events of the app's namespace in every Cell, newest first, paged (Guest+)",
            true, &paged, None, ok_json("200", schema_ref("EventPage")))),
    }));
    p.insert("/api/v1/apps/{name}/status".into(), json!({
        "get": op("appStatus", "the reconciler's last result per Cell (Guest+)", true, &name, None,
            ok_json("200", array("CellStatus"))),
    }));

    let cell = [path_param("cell")];
    let admin = " (admin)";
    p.insert("/api/v1/admin/cells".into(), json!({
        "get": op("listCells", &format!("the Region's Cells{admin}"), true, &[], None, ok_json("200", array("Cell"))),
        "post": op("registerCell", &format!("register a Cell; its kubeconfig is a file name in the core's credentials directory{admin}"),
            true, &[], Some(json!({ "type": "object", "required": ["name", "kubeconfig"], "additionalProperties": false, "properties": {
                "name": { "type": "string", "pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$" },
                "kubeconfig": { "type": "string", "pattern": "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}$" },
                "etcd": { "type": "array", "items": { "type": "string" } },
                "nginx_groups": { "type": "array", "items": { "type": "string" } },
                "delegated_pools": { "type": "array", "items": { "type": "string" } } } })),
            ok_json("201", schema_ref("Cell"))),
    }));
    p.insert("/api/v1/admin/cells/{cell}".into(), json!({
        "get": op("getCell", &format!("one Cell{admin}"), true, &cell, None, ok_json("200", schema_ref("Cell"))),
        "patch": op("updateCell", &format!("drain or activate a Cell, change its groups or etcd{admin}"), true, &cell,
            Some(json!({ "type": "object", "additionalProperties": false, "properties": {
                "state": { "type": "string", "enum": ["active", "draining"] },
                "etcd": { "type": "array", "items": { "type": "string" } },
                "nginx_groups": { "type": "array", "items": { "type": "string" } },
                "delegated_pools": { "type": "array", "items": { "type": "string" },
                    "description": "IP pools an app's Owner may bind to the app" } } })),
            ok_json("200", schema_ref("Cell"))),
        "delete": cell_unavailable(op("removeCell", &format!("remove an empty Cell (no app, no namespace of ours left){admin}"),
            true, &cell, None, no_content())),
    }));
    p.insert("/api/v1/admin/cells/{cell}/nodes".into(), json!({
        "get": cell_unavailable(op("cellNodes", &format!("the Cell's nodes: allocatable CPU and memory vs the requests of the pods on them, live{admin}"),
            true, &cell, None, ok_json("200", array("NodeUsage")))),
    }));
    let mut pools = op(
        "cellPools",
        &format!("the Cell's IP pools and their use, from its IPAM (as `cnictl pool list`){admin}"),
        true,
        &cell,
        None,
        ok_json("200", array("PoolUsage")),
    );
    pools["responses"]["409"] = problem("the Cell has no etcd registered (`cell_etcd_unset`)");
    pools["responses"]["502"] = problem("the Cell's IPAM records could not be read (`cell_error`)");
    pools["responses"]["503"] =
        problem("the Cell's etcd does not answer (`cell_unavailable`, naming the Cell)");
    p.insert(
        "/api/v1/admin/cells/{cell}/pools".into(),
        json!({ "get": pools }),
    );
    let mut export = op("appIpRanges", "the app's bound IP ranges in every one of its Cells, in one answer (Guest+); `format=text`: one `CELL CIDR APP POOL vlan=ID` line a range",
        true, &[path_param("name"), json!({ "name": "format", "in": "query", "required": false,
            "schema": { "type": "string", "enum": ["json", "text"] } })], None, ok_json("200", array("CellRanges")));
    export["responses"]["200"]["content"]["text/plain"] = json!({ "schema": { "type": "string" } });
    export["responses"]["503"] =
        problem("a Cell's etcd does not answer (`cell_unavailable`, naming the Cell)");
    let bind_params = [path_param("name"), path_param("cell"), path_param("pool")];
    let mut bind = op("bindIpPool", "bind the Cell's IP pool to the app: admins any pool, the app's Owner a delegated pool no other app holds",
        true, &bind_params, Some(json!({ "type": "object", "additionalProperties": false, "properties": {
            "shared_fallback": { "type": "boolean" }, "reserve_secs": { "type": "integer", "minimum": 0 } } })),
        ok_json("200", schema_ref("CellRanges")));
    bind["responses"]["409"] = problem("another app's pod holds an address of the pool (`pool_bind_conflict`), or an Owner's pool is bound elsewhere (`pool_bound_elsewhere`)");
    bind["responses"]["503"] = problem("the Cell's etcd does not answer (`cell_unavailable`)");
    let unbind = op(
        "unbindIpPool",
        "unbind the Cell's IP pool from the app (admin or the app's Owner)",
        true,
        &bind_params,
        None,
        no_content(),
    );
    p.insert(
        "/api/v1/apps/{name}/ip-ranges".into(),
        json!({ "get": export }),
    );
    p.insert(
        "/api/v1/apps/{name}/ip-pools/{cell}/{pool}".into(),
        json!({ "put": bind, "delete": unbind }),
    );
}

pub(super) fn schemas(s: &mut Map<String, Value>) {
    let ts = json!({ "type": "string", "format": "date-time" });
    let nullable_ts = json!({ "type": "string", "format": "date-time", "nullable": true });
    let string_map = json!({ "type": "object", "additionalProperties": { "type": "string" } });
    let quantity =
        json!({ "type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$" });
    let seconds = json!({ "type": "integer", "minimum": 1, "maximum": 3600 });
    let threshold = json!({ "type": "integer", "minimum": 1, "maximum": 1000 });
    let fields = json!({
        "image": { "type": "string", "nullable": true },
        "tag": { "type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$" },
        "replicas": replicas(), "cells": cell_counts(),
        "resources": schema_ref("Resources"), "env": string_map,
        "health": { "allOf": [schema_ref("Health")], "nullable": true },
        "replace": { "type": "boolean", "description": "replace the newest version one pod at a time (no surge; the new pods take the old pods' addresses; the old version is deleted once replaced in every Cell). 409 replacement_in_progress while the newest version is still replacing another" },
    });
    let mut spec_props = fields.as_object().cloned().unwrap_or_default();
    spec_props.remove("replace");
    spec_props.insert("replaces".into(), json!({ "type": "integer", "description": "the version this one replaces one pod at a time" }));
    spec_props.insert("version".into(), json!({ "type": "integer" }));
    spec_props.insert("image".into(), json!({ "type": "string" }));
    spec_props.insert("by".into(), json!({ "type": "string" }));
    spec_props.insert("at".into(), ts.clone());
    let mut view_props = spec_props.clone();
    view_props.insert("placement".into(), array("Placement"));
    let spec_required = json!(["version", "image", "tag", "replicas", "by", "at"]);
    let per_pod = |d: &str| json!({ "type": "number", "minimum": 0, "exclusiveMinimum": true, "maximum": 1e12, "description": d });
    let percent =
        |d: &str| json!({ "type": "integer", "minimum": 1, "maximum": 100_000, "description": d });
    let window =
        |d: &str| json!({ "type": "integer", "minimum": 0, "maximum": 3600, "description": d });
    let policy = json!({ "type": "object", "required": ["min", "max"], "additionalProperties": false, "properties": {
        "min": { "type": "integer", "minimum": 1, "maximum": 10000, "description": "fewest replicas per Cell" },
        "max": { "type": "integer", "minimum": 1, "maximum": 10000, "description": "most replicas per Cell" },
        "targets": { "type": "object", "additionalProperties": false, "description": "at least one", "properties": {
            "cpu_percent": percent("CPU used per pod, percent of its CPU request"),
            "memory_percent": percent("memory working set per pod, percent of its memory request"),
            "requests_per_second": per_pod("requests per second per pod, from the LB's counters"),
            "disk_bytes_per_second": per_pod("disk bytes read and written per second per pod") } },
        "window_seconds": { "type": "integer", "minimum": 10, "maximum": 3600, "description": "readings averaged over (default 60)" },
        "scale_up_stabilization_seconds": window("lowest recommendation of this window wins a scale-up (default 0)"),
        "scale_down_stabilization_seconds": window("highest recommendation of this window wins a scale-down (default 300)"),
        "tolerance_percent": { "type": "integer", "minimum": 0, "maximum": 50, "description": "no change within this of every target (default 10)" } } });
    let reading = json!({ "type": "object", "required": ["metric", "value", "target"], "properties": {
        "metric": { "type": "string", "enum": ["cpu_percent", "memory_percent", "requests_per_second", "disk_bytes_per_second"] },
        "value": { "type": "number" }, "target": { "type": "number" } } });
    let autoscale_cell = json!({ "type": "object", "required": ["current", "ready", "desired"], "properties": {
        "current": { "type": "integer" }, "ready": { "type": "integer" }, "recommended": { "type": "integer" },
        "desired": { "type": "integer" }, "readings": { "type": "array", "items": reading },
        "frozen": { "type": "string", "description": "why no decision is made (no readings, Cell unreadable, replacement under way, quota)" },
        "last_scale": { "type": "object", "required": ["at", "from", "to"], "properties": {
            "at": ts, "from": { "type": "integer" }, "to": { "type": "integer" }, "reading": reading } } } });
    let record = json!({ "type": "object", "required": ["policy", "by", "at"], "properties": {
        "policy": policy, "by": { "type": "string" }, "at": ts } });
    let mut view = record.clone();
    view["properties"]["status"] = json!({ "type": "object", "nullable": true, "properties": {
        "version": { "type": "integer" }, "at": nullable_ts,
        "cells": { "type": "object", "additionalProperties": autoscale_cell } } });
    let defs = json!({
        "AutoscalePolicy": policy,
        "AutoscaleRecord": record,
        "Autoscale": view,
        "VersionFields": { "type": "object", "required": ["tag"], "additionalProperties": false, "properties": fields },
        "VersionSpec": { "type": "object", "required": spec_required, "properties": spec_props },
        "VersionView": { "type": "object", "required": ["version", "image", "tag", "replicas", "by", "at", "placement"], "properties": view_props },
        "Placement": { "type": "object", "required": ["cell", "desired", "ready", "applied"], "properties": {
            "cell": { "type": "string" }, "desired": { "type": "integer" }, "ready": { "type": "integer" },
            "applied": { "type": "boolean" } } },
        "Resources": { "type": "object", "additionalProperties": false, "properties": {
            "cpu_request": quantity, "cpu_limit": quantity, "memory_request": quantity, "memory_limit": quantity } },
        "Health": { "type": "object", "required": ["path"], "additionalProperties": false, "properties": {
            "path": { "type": "string", "pattern": "^/[^\\s]{0,1023}$" },
            "port": { "type": "integer", "minimum": 1, "maximum": 65535, "nullable": true },
            "initial_delay_seconds": { "type": "integer", "minimum": 0, "maximum": 3600 },
            "period_seconds": seconds, "timeout_seconds": seconds,
            "success_threshold": threshold, "failure_threshold": threshold,
            "liveness": { "type": "boolean" } } },
        "Container": { "type": "object", "required": ["pod", "cell", "ready", "restarts"], "properties": {
            "pod": { "type": "string" }, "version": { "type": "integer", "nullable": true }, "cell": { "type": "string" },
            "node": { "type": "string", "nullable": true }, "ip": { "type": "string", "nullable": true },
            "phase": { "type": "string", "nullable": true }, "ready": { "type": "boolean" },
            "restarts": { "type": "integer" }, "started": nullable_ts } },
        "KubeEvent": { "type": "object", "required": ["cell", "count"], "properties": {
            "cell": { "type": "string" }, "type": { "type": "string", "nullable": true },
            "reason": { "type": "string", "nullable": true }, "message": { "type": "string", "nullable": true },
            "object": { "type": "string", "nullable": true }, "count": { "type": "integer" }, "last": nullable_ts } },
        "EventPage": { "type": "object", "required": ["events"], "properties": {
            "events": array("KubeEvent"), "next_offset": { "type": "integer", "nullable": true } } },
        "CellStatus": { "type": "object", "required": ["cell"], "properties": {
            "cell": { "type": "string" }, "error": { "type": "string", "nullable": true },
            "versions": { "type": "array", "items": { "type": "object", "properties": {
                "version": { "type": "integer" }, "desired": { "type": "integer" }, "ready": { "type": "integer" },
                "draining": { "type": "boolean" },
                "replacing": { "type": "integer", "description": "replacing this version here, one pod at a time" },
                "replaced_by": { "type": "integer", "description": "being replaced here by this version" } } } } } },
        "NodeUsage": { "type": "object", "required": ["name", "ready", "cpu_allocatable_millis", "cpu_requested_millis",
            "memory_allocatable_bytes", "memory_requested_bytes", "pods"], "properties": {
            "name": { "type": "string" }, "ready": { "type": "boolean" },
            "cpu_allocatable_millis": { "type": "integer" }, "cpu_requested_millis": { "type": "integer" },
            "memory_allocatable_bytes": { "type": "integer" }, "memory_requested_bytes": { "type": "integer" },
            "pods": { "type": "integer" } } },
        "CellRanges": { "type": "object", "required": ["cell", "binding", "ranges", "reserved"], "properties": {
            "cell": { "type": "string" },
            "binding": { "type": "object", "nullable": true, "required": ["pools", "shared_fallback", "reserve_secs"], "properties": {
                "pools": { "type": "array", "items": { "type": "string" } }, "shared_fallback": { "type": "boolean" },
                "reserve_secs": { "type": "integer" } } },
            "ranges": { "type": "array", "items": { "type": "object", "required": ["cell", "pool", "cidr", "gateway", "vlan", "shared_with",
                "ips_assignable", "ips_used", "ips_reserved", "ips_free"], "properties": {
                "cell": { "type": "string" }, "pool": { "type": "string" }, "cidr": { "type": "string" },
                "gateway": { "type": "string", "format": "ipv4" }, "vlan": { "type": "integer" },
                "shared_with": { "type": "array", "items": { "type": "string" } },
                "ips_assignable": { "type": "integer" }, "ips_used": { "type": "integer" },
                "ips_reserved": { "type": "integer" }, "ips_free": { "type": "integer" } } } },
            "reserved": { "type": "integer", "description": "addresses the app gave up and may take back" } } },
        "PoolUsage": { "type": "object", "required": ["name", "cidr", "gateway", "vlan", "ips_assignable", "ips_used",
            "ips_reserved", "ips_free", "blocks_claimed", "blocks_total", "apps"], "properties": {
            "name": { "type": "string" }, "cidr": { "type": "string" }, "gateway": { "type": "string", "format": "ipv4" },
            "vlan": { "type": "integer", "minimum": 1, "maximum": 4094 },
            "ips_assignable": { "type": "integer", "description": "addresses that can ever be handed out" },
            "ips_used": { "type": "integer" },
            "ips_reserved": { "type": "integer", "description": "kept for an app or a pod identity: neither used nor free" },
            "ips_free": { "type": "integer" }, "blocks_claimed": { "type": "integer" }, "blocks_total": { "type": "integer" },
            "apps": { "type": "array", "items": { "type": "string" }, "description": "apps the pool is bound to; empty: shared" } } },
        "Cell": { "type": "object", "required": ["name", "kubeconfig", "api_url", "state", "apps", "created"], "properties": {
            "name": { "type": "string" }, "kubeconfig": { "type": "string", "description": "file name in the credentials directory (a reference, never the credentials)" },
            "api_url": { "type": "string" }, "etcd": { "type": "array", "items": { "type": "string" } },
            "nginx_groups": { "type": "array", "items": { "type": "string" } },
            "delegated_pools": { "type": "array", "items": { "type": "string" } },
            "state": { "type": "string", "enum": ["active", "draining"] }, "apps": { "type": "integer" }, "created": ts } },
        "AppSpec": { "type": "object", "required": ["name", "uid", "namespace", "cells", "port"], "properties": {
            "name": { "type": "string" }, "uid": { "type": "string" }, "namespace": { "type": "string" },
            "image": { "type": "string", "nullable": true }, "cells": { "type": "array", "items": { "type": "string" } },
            "lb": { "allOf": [schema_ref("Lb")], "nullable": true }, "port": { "type": "integer" } } },
        "Lb": { "type": "object", "required": ["domain", "group"], "additionalProperties": false, "properties": {
            "domain": { "type": "string" }, "group": { "type": "string" } } },
        "LbDns": { "type": "object", "required": ["domain", "group", "cname", "vips"],
            "description": "what to configure in DNS: the domain as a CNAME of cname, or A/AAAA records of vips", "properties": {
            "domain": { "type": "string" }, "group": { "type": "string" },
            "cname": { "type": "string", "nullable": true },
            "vips": { "type": "array", "items": { "type": "string" } } } },
    });
    if let Value::Object(m) = defs {
        s.extend(m);
    }
}

/// `POST /api/v1/apps`: the resource fields plus the app's desired state.
pub(super) fn new_app(name_pattern: &str) -> Value {
    json!({ "type": "object", "required": ["name"], "additionalProperties": false, "properties": {
        "name": { "type": "string", "pattern": name_pattern }, "description": { "type": "string", "maxLength": 1000 },
        "public": { "type": "boolean" },
        "image": { "type": "string", "pattern": "^[a-z0-9._:-]+(/[a-z0-9._:-]+)*$", "maxLength": 255, "nullable": true },
        "cells": { "type": "array", "items": { "type": "string" }, "nullable": true },
        "lb": { "allOf": [schema_ref("Lb")], "nullable": true },
        "port": { "type": "integer", "minimum": 1, "maximum": 65535, "nullable": true } } })
}

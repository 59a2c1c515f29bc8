//! OpenAPI paths and schemas of the load-balancer routes (`crate::slb`).

use serde_json::{json, Map, Value};

use super::{array, ok_json, op, path_param, problem, schema_ref};

fn string_map() -> Value {
    json!({ "type": "object", "additionalProperties": { "type": "string" } })
}

fn with_etag((status, mut resp): (String, Value)) -> (String, Value) {
    resp["headers"] = json!({ "ETag": { "description": "\"REV\": the config revision, for If-Match",
        "schema": { "type": "string" } } });
    (status, resp)
}

pub(super) fn paths(p: &mut Map<String, Value>) {
    let group = [path_param("group")];
    let domain = [path_param("group"), path_param("domain")];
    let admin = "; admin only (403 otherwise)";
    let mut create = op(
        "createSlbDomain",
        &format!("add a domain with its config and upstream{admin}"),
        true,
        &group,
        Some(
            json!({ "type": "object", "required": ["domain", "config"], "additionalProperties": false,
            "properties": { "domain": { "type": "string" }, "config": schema_ref("DomainConfig"),
                "upstream": schema_ref("Upstream") } }),
        ),
        with_etag(ok_json("201", schema_ref("DomainView"))),
    );
    create["responses"]["409"] = problem("the domain exists");
    p.insert("/api/v1/slb/groups/{group}/domains".into(), json!({
        "get": op("listSlbDomains", "domains of an SLB group", true, &group, None, ok_json("200", array("DomainView"))),
        "post": create,
    }));
    let mut put_params = domain.to_vec();
    put_params.push(json!({ "name": "If-Match", "in": "header", "required": false,
        "schema": { "type": "string" }, "description": "ETag of the config last read; 412 if it changed" }));
    let mut update = op(
        "updateSlbDomain",
        &format!("replace a domain's config{admin}"),
        true,
        &put_params,
        Some(schema_ref("DomainConfig")),
        with_etag(ok_json("200", schema_ref("DomainView"))),
    );
    update["responses"]["412"] = problem("the config changed since the If-Match revision");
    p.insert("/api/v1/slb/groups/{group}/domains/{domain}".into(), json!({
        "get": op("getSlbDomain", "a domain's config and upstream", true, &domain, None,
            with_etag(ok_json("200", schema_ref("DomainView")))),
        "put": update,
        "delete": op("deleteSlbDomain", &format!("remove a domain{admin}"), true, &domain, None, super::no_content()),
    }));
    p.insert("/api/v1/slb/groups/{group}/domains/{domain}/upstream".into(), json!({
        "put": op("replaceSlbUpstream", &format!("replace the peer list (no nginx reload){admin}"), true, &domain,
            Some(schema_ref("Upstream")), ok_json("200", schema_ref("Upstream"))),
    }));
    p.insert("/api/v1/slb/groups/{group}/domains/{domain}/nginx".into(), json!({
        "get": op("renderSlbDomain", "the nginx server block the agents render", true, &domain, None,
            ("200".to_string(), json!({ "description": "nginx configuration",
                "content": { "text/plain": { "schema": { "type": "string" } } } }))),
    }));
    p.insert("/api/v1/slb/groups/{group}/domains/{domain}/status".into(), json!({
        "get": op("slbDomainStatus", "per agent: applied revision, in sync, error", true, &domain, None,
            ok_json("200", schema_ref("DomainStatus"))),
    }));
    p.insert("/api/v1/slb/groups/{group}/agents".into(), json!({
        "get": op("listSlbAgents", "live nginx agents of the group", true, &group, None, ok_json("200", array("AgentStatus"))),
    }));
    let mut get_dns = op(
        "getSlbGroupDns",
        "what users point their domains at: CNAME target and/or VIPs",
        true,
        &group,
        None,
        ok_json("200", schema_ref("GroupDns")),
    );
    get_dns["responses"]["404"] = problem("no DNS record for the group (`dns_not_found`)");
    let mut del_dns = op(
        "deleteSlbGroupDns",
        &format!("remove the group's DNS record{admin}"),
        true,
        &group,
        None,
        super::no_content(),
    );
    del_dns["responses"]["404"] = problem("no DNS record for the group (`dns_not_found`)");
    p.insert("/api/v1/slb/groups/{group}/dns".into(), json!({
        "get": get_dns,
        "put": op("setSlbGroupDns", &format!("set the group's CNAME target and/or VIPs{admin}"), true, &group,
            Some(schema_ref("GroupDns")), ok_json("200", schema_ref("GroupDns"))),
        "delete": del_dns,
    }));
}

pub(super) fn schemas(s: &mut Map<String, Value>) {
    s.insert("GroupDns".into(), json!({ "type": "object", "additionalProperties": false, "properties": {
        "cname": { "type": "string", "nullable": true, "description": "lower-case DNS name" },
        "vips": { "type": "array", "maxItems": 16, "items": { "type": "string", "description": "unicast IPv4 or IPv6 address" } } } }));
    let nstr = json!({ "type": "string", "nullable": true });
    let uint = json!({ "type": "integer", "minimum": 0, "maximum": 4294967295u64 });
    let domain_error = json!({ "type": "object", "required": ["revision", "kind", "message"], "properties": {
        "revision": { "type": "integer" }, "kind": { "type": "string" }, "message": { "type": "string" } } });
    let balancing = |method: &str, extra: Value| {
        let mut props = json!({ "method": { "type": "string", "enum": [method] } });
        let mut required = vec![json!("method")];
        if let Value::Object(m) = extra {
            for (k, v) in m {
                required.push(json!(k.clone()));
                props[k] = v;
            }
        }
        json!({ "type": "object", "required": required, "additionalProperties": false, "properties": props })
    };
    let more = json!({
        "DomainConfig": { "type": "object", "additionalProperties": false, "properties": {
            "serverNames": { "type": "array", "items": { "type": "string" } },
            "listen": { "type": "array", "items": { "type": "object", "required": ["port"], "additionalProperties": false,
                "properties": { "port": { "type": "integer", "minimum": 0, "maximum": 65535 },
                    "address": { "type": "string", "nullable": true, "description": "IP address" },
                    "ssl": { "type": "boolean" } } } },
            "tls": { "type": "object", "nullable": true, "required": ["certificate", "certificateKey"],
                "additionalProperties": false, "properties": {
                    "certificate": { "type": "string" }, "certificateKey": { "type": "string" } } },
            "locations": { "type": "array", "items": schema_ref("Location") },
            "headers": string_map(),
            "clientMaxBodySize": nstr } },
        "Location": { "type": "object", "required": ["path"], "additionalProperties": false, "properties": {
            "path": { "type": "string" },
            "match": { "type": "string", "enum": ["prefix", "exact", "regex"] },
            "proxyHeaders": string_map(), "headers": string_map(),
            "connectTimeout": nstr, "readTimeout": nstr, "sendTimeout": nstr, "clientMaxBodySize": nstr,
            "rewrites": { "type": "array", "items": { "type": "object", "required": ["pattern", "replacement"],
                "additionalProperties": false, "properties": {
                    "pattern": { "type": "string" }, "replacement": { "type": "string" },
                    "flag": { "type": "string", "enum": ["last", "break", "redirect", "permanent"], "nullable": true } } } } } },
        "Upstream": { "type": "object", "additionalProperties": false, "properties": {
            "servers": { "type": "array", "items": { "type": "object", "required": ["address"], "additionalProperties": false,
                "properties": { "address": { "type": "string", "description": "IP:port" },
                    "weight": uint, "maxFails": uint, "failTimeout": uint, "down": { "type": "boolean" } } } },
            "balancing": { "oneOf": [
                balancing("round_robin", json!({})),
                balancing("least_conn", json!({})),
                balancing("hash", json!({ "key": { "type": "string" } })),
            ] } } },
        "DomainView": { "type": "object",
            "required": ["group", "domain", "config", "upstream", "configRevision", "upstreamRevision"], "properties": {
                "group": { "type": "string" }, "domain": { "type": "string" },
                "config": schema_ref("DomainConfig"), "upstream": schema_ref("Upstream"),
                "configRevision": { "type": "integer" }, "upstreamRevision": { "type": "integer" } } },
        "DomainStatus": { "type": "object", "required": ["domain", "configRevision", "upstreamRevision", "agents"], "properties": {
            "domain": { "type": "string" }, "configRevision": { "type": "integer" }, "upstreamRevision": { "type": "integer" },
            "agents": { "type": "array", "items": { "type": "object",
                "required": ["host", "appliedRevision", "inSync", "updated"], "properties": {
                    "host": { "type": "string" }, "appliedRevision": { "type": "integer" }, "inSync": { "type": "boolean" },
                    "error": domain_error, "updated": { "type": "string" } } } } } },
        "AgentStatus": { "type": "object", "required": ["host", "appliedRevision", "reloads", "updated"], "properties": {
            "host": { "type": "string" }, "appliedRevision": { "type": "integer" },
            "errors": { "type": "object", "additionalProperties": domain_error },
            "error": { "type": "string" }, "domains": { "type": "array", "items": { "type": "string" } },
            "reloads": { "type": "integer" }, "lastReload": { "type": "string" }, "updated": { "type": "string" } } },
    });
    if let Value::Object(m) = more {
        s.extend(m);
    }
}

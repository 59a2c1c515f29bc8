//! `GET /openapi.json`: the hand-written OpenAPI 3.0 description of the
//! core's own routes (hand-written JSON keeps compile times down; the
//! schemathesis run in hack/schemathesis.sh keeps it honest).

mod apps;
mod builds;
mod monitor;
mod slb;

use axum::routing::get;
use axum::Router;
use serde_json::{json, Map, Value};

use crate::problem::Json;
use crate::server::Core;

pub fn router() -> Router<Core> {
    Router::new().route("/openapi.json", get(|| async { Json(document()) }))
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn problem(desc: &str) -> Value {
    json!({ "description": desc, "content": { "application/problem+json": { "schema": schema_ref("Problem") } } })
}

fn ok_json(status: &str, schema: Value) -> (String, Value) {
    (
        status.to_string(),
        json!({ "description": "success", "content": { "application/json": { "schema": schema } } }),
    )
}

fn no_content() -> (String, Value) {
    ("204".to_string(), json!({ "description": "done" }))
}

fn array(item: &str) -> Value {
    json!({ "type": "array", "items": schema_ref(item) })
}

fn path_param(name: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } })
}

/// One operation. `auth`: credentials required; `body`: request
/// schema; every operation may answer 400/401/403/404/409/429/503 as
/// problem JSON (429: any request may carry a password, and password checks
/// are throttled).
fn op(
    id: &str,
    summary: &str,
    auth: bool,
    params: &[Value],
    body: Option<Value>,
    success: (String, Value),
) -> Value {
    let mut responses = Map::new();
    responses.insert(success.0, success.1);
    responses.insert("400".into(), problem("malformed request"));
    // Even where anonymous calls are allowed, wrong credentials are refused.
    responses.insert("401".into(), problem("no or invalid credentials"));
    responses.insert("403".into(), problem("role or quota does not allow this"));
    responses.insert(
        "404".into(),
        problem("no such resource, or not visible to the caller"),
    );
    responses.insert(
        "409".into(),
        problem("conflict (exists, last owner, not empty, contention)"),
    );
    responses.insert(
        "429".into(),
        json!({ "description": "too many password checks; retry after the Retry-After seconds",
            "headers": { "Retry-After": { "schema": { "type": "integer", "minimum": 1 } } },
            "content": { "application/problem+json": { "schema": schema_ref("Problem") } } }),
    );
    responses.insert("503".into(), problem("etcd unavailable"));
    let mut o = json!({
        "operationId": id,
        "summary": summary,
        "parameters": params,
        "responses": responses,
    });
    if let Some(b) = body {
        o["requestBody"] =
            json!({ "required": true, "content": { "application/json": { "schema": b } } });
        o["responses"]["415"] = problem("body is not JSON");
    }
    if !auth {
        o["security"] = json!([{}, { "bearer": [] }, { "basic": [] }]);
    }
    o
}

/// Member and activity routes of one resource kind.
fn member_paths(paths: &mut Map<String, Value>, tag: &str, base: &str, params: &[Value]) {
    let mut with_user = params.to_vec();
    with_user.push(path_param("user"));
    paths.insert(
        format!("{base}/members"),
        json!({ "get": op(&format!("{tag}ListMembers"), "members (Guest+)", true, params, None, ok_json("200", array("Member"))) }),
    );
    paths.insert(
        format!("{base}/members/{{user}}"),
        json!({
            "put": op(&format!("{tag}SetMember"), "add or change a member (Master+, up to one's own role)", true, &with_user,
                Some(json!({ "type": "object", "required": ["role"], "additionalProperties": false,
                    "properties": { "role": schema_ref("Role") } })),
                ok_json("200", schema_ref("Member"))),
            "delete": op(&format!("{tag}RemoveMember"), "remove a member (Master+)", true, &with_user, None, no_content()),
        }),
    );
    let mut feed = params.to_vec();
    feed.push(json!({ "name": "limit", "in": "query", "required": false,
        "schema": { "type": "integer", "minimum": 0, "maximum": 1000 } }));
    paths.insert(
        format!("{base}/activity"),
        json!({ "get": op(&format!("{tag}Activity"), "activity feed, newest first (Guest+)", true, &feed, None, ok_json("200", array("Event"))) }),
    );
}

const NAME: &str = "^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$";
const IMAGE: &str = "^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?/[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$";

fn new_resource(pattern: &str) -> Value {
    json!({ "type": "object", "required": ["name"], "additionalProperties": false, "properties": {
        "name": { "type": "string", "pattern": pattern }, "description": { "type": "string", "maxLength": 1000 },
        "public": { "type": "boolean" } } })
}

/// OpenAPI links from a creation to the operations on what it created, so
/// stateful fuzzing works on real resources.
fn link(created: (String, Value), targets: &[(&str, &str)]) -> (String, Value) {
    let targets: Vec<(&str, &str, &str)> = targets
        .iter()
        .map(|(op_id, param)| (*op_id, *param, "$response.body#/name"))
        .collect();
    link_from(created, &targets)
}

/// Links with explicit runtime expressions: `(operationId, parameter,
/// expression)`; rows naming the same operation are one link.
fn link_from(created: (String, Value), targets: &[(&str, &str, &str)]) -> (String, Value) {
    let (status, mut resp) = created;
    let mut links = Map::new();
    for (op_id, param, expr) in targets {
        let l = links
            .entry((*op_id).to_string())
            .or_insert_with(|| json!({ "operationId": op_id, "parameters": {} }));
        l["parameters"][*param] = json!(expr);
    }
    resp["links"] = Value::Object(links);
    (status, resp)
}

fn patch() -> Value {
    json!({ "type": "object", "additionalProperties": false, "properties": {
        "description": { "type": "string", "maxLength": 1000, "nullable": true },
        "public": { "type": "boolean", "nullable": true } } })
}

fn paths() -> Map<String, Value> {
    let mut p = Map::new();
    let name = [path_param("name")];
    let image = [path_param("group"), path_param("repo")];
    p.insert("/api/v1/login".into(), json!({ "post": op("login", "password login; returns an access token", false, &[],
        Some(json!({ "type": "object", "required": ["user", "password"], "additionalProperties": false,
            "properties": { "user": { "type": "string" }, "password": { "type": "string" } } })),
        ok_json("201", schema_ref("NewToken"))) }));
    p.insert("/api/v1/user".into(), json!({ "get": op("me", "the caller's account, quota and usage", true, &[], None, ok_json("200", schema_ref("User"))) }));
    p.insert("/api/v1/user/password".into(), json!({ "put": op("changePassword", "change the caller's password", true, &[],
        Some(json!({ "type": "object", "required": ["current", "new"], "additionalProperties": false,
            "properties": { "current": { "type": "string" }, "new": { "type": "string" } } })), no_content()) }));
    p.insert("/api/v1/user/tokens".into(), json!({
        "get": op("listTokens", "the caller's access tokens (no secrets)", true, &[], None, ok_json("200", array("Token"))),
        "post": op("newToken", "issue an access token", true, &[],
            Some(json!({ "type": "object", "required": ["name"], "additionalProperties": false, "properties": {
                "name": { "type": "string", "minLength": 1, "maxLength": 100 },
                "expires_in_days": { "type": "integer", "minimum": 1, "maximum": 3650, "nullable": true } } })),
            ok_json("201", schema_ref("NewToken"))),
    }));
    p.insert("/api/v1/user/tokens/{id}".into(), json!({ "delete": op("revokeToken", "revoke an access token", true, &[path_param("id")], None, no_content()) }));
    p.insert("/api/v1/users".into(), json!({
        "get": op("listUsers", "all users (admin)", true, &[], None, ok_json("200", array("User"))),
        "post": op("addUser", "create a user (admin)", true, &[],
            Some(json!({ "type": "object", "required": ["name", "password"], "additionalProperties": false, "properties": {
                "name": { "type": "string", "pattern": NAME }, "password": { "type": "string", "minLength": 8, "maxLength": 1024 },
                "admin": { "type": "boolean" } } })),
            link(ok_json("201", schema_ref("User")), &[("setQuota", "name")])),
    }));
    p.insert(
        "/api/v1/users/{name}/quota".into(),
        json!({ "put": op("setQuota", "set a user's quota (admin)", true, &name,
        Some(schema_ref("Quota")), ok_json("200", schema_ref("User"))) }),
    );

    p.insert("/api/v1/apps".into(), json!({
        "get": op("listApps", "apps the caller created or is a member of", true, &[], None, ok_json("200", array("App"))),
        "post": op("createApp", "create an app in its Cells (caller becomes Owner; counts against max_apps)", true, &[], Some(apps::new_app(NAME)),
            link(ok_json("201", schema_ref("App")), &[("getApp", "name"), ("updateApp", "name"), ("deployApp", "name"),
                ("scaleApp", "name"), ("appVersions", "name"), ("appListMembers", "name"), ("appActivity", "name"),
                ("appSetMember", "name"), ("deleteApp", "name")])),
    }));
    p.insert("/api/v1/apps/{name}".into(), json!({
        "get": op("getApp", "an app (Guest+)", true, &name, None, ok_json("200", schema_ref("App"))),
        "patch": op("updateApp", "change description / visibility (Master+)", true, &name, Some(patch()), ok_json("200", schema_ref("App"))),
        "delete": op("deleteApp", "delete an app (Owner)", true, &name, None, no_content()),
    }));
    p.insert("/api/v1/apps/{name}/deploy".into(), json!({ "post": op("deployApp", "deploy a new version with the newest version's other fields (Master+, and pull rights on the image)", true, &name,
        Some(json!({ "type": "object", "required": ["image", "tag"], "additionalProperties": false, "properties": {
            "image": { "type": "string", "pattern": "^[a-z0-9._-]+(/[a-z0-9._-]+)*$", "maxLength": 255 },
            "tag": { "type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$" },
            "replicas": { "type": "integer", "minimum": 0, "maximum": 10000, "nullable": true },
            "replace": { "type": "boolean", "description": "replace the newest version one pod at a time, as in VersionFields" } } })),
        ok_json("200", schema_ref("App"))) }));
    p.insert("/api/v1/apps/{name}/scale".into(), json!({ "post": op("scaleApp", "set the newest version's replicas in every Cell (Master+)", true, &name,
        Some(json!({ "type": "object", "required": ["replicas"], "additionalProperties": false, "properties": {
            "replicas": { "type": "integer", "minimum": 0, "maximum": 10000 } } })),
        ok_json("200", schema_ref("App"))) }));
    member_paths(&mut p, "app", "/api/v1/apps/{name}", &name);

    p.insert("/api/v1/groups".into(), json!({
        "get": op("listGroups", "image groups the caller is a member of", true, &[], None, ok_json("200", array("Resource"))),
        "post": op("createGroup", "create an image group", true, &[], Some(new_resource(NAME)),
            link(ok_json("201", schema_ref("Resource")), &[("getGroup", "name"), ("updateGroup", "name"),
                ("groupListMembers", "name"), ("groupActivity", "name"), ("groupSetMember", "name"), ("deleteGroup", "name")])),
    }));
    p.insert("/api/v1/groups/{name}".into(), json!({
        "get": op("getGroup", "an image group (Guest+; public ones to anyone)", false, &name, None, ok_json("200", schema_ref("Resource"))),
        "patch": op("updateGroup", "change description / visibility (Master+)", true, &name, Some(patch()), ok_json("200", schema_ref("Resource"))),
        "delete": op("deleteGroup", "delete an empty group (Owner)", true, &name, None, no_content()),
    }));
    member_paths(&mut p, "group", "/api/v1/groups/{name}", &name);

    p.insert("/api/v1/images".into(), json!({
        "get": op("listImages", "images the caller is a member of, directly or through the group", true, &[], None, ok_json("200", array("Resource"))),
        "post": op("createImage", "create group/repo (Developer+ of the group)", true, &[], Some(new_resource(IMAGE)), ok_json("201", schema_ref("Resource"))),
    }));
    p.insert("/api/v1/images/{group}/{repo}".into(), json!({
        "get": op("getImage", "an image (Guest+; public ones to anyone)", false, &image, None, ok_json("200", schema_ref("Resource"))),
        "patch": op("updateImage", "change description / visibility (Master+)", true, &image, Some(patch()), ok_json("200", schema_ref("Resource"))),
        "delete": op("deleteImage", "delete the image record (Owner)", true, &image, None, no_content()),
    }));
    member_paths(&mut p, "image", "/api/v1/images/{group}/{repo}", &image);
    member_paths(
        &mut p,
        "build",
        "/api/v1/builds/configs/{id}",
        &[path_param("id")],
    );

    p.insert("/api/v1/platform".into(), json!({ "get": op("platform", "what clients show of the platform: the registry images are pushed to and pulled from", false, &[], None,
        ok_json("200", json!({ "type": "object", "required": ["registry"], "properties": {
            "registry": { "type": "string", "nullable": true, "description": "`host[:port]` of the platform registry (`--build-registry-server`)" } } }))) }));
    p.insert("/api/v1/permissions".into(), json!({ "get": op("permissions", "the permission table", false, &[], None, ok_json("200", array("PermissionRow"))) }));
    let day = json!({ "type": "string", "format": "date" });
    p.insert("/api/v1/admin/stats".into(), json!({ "get": op("stats", "daily counts of deploys, builds, pushes, scalings, deletions (admin)", true,
        &[json!({ "name": "from", "in": "query", "required": false, "schema": day }),
          json!({ "name": "to", "in": "query", "required": false, "schema": day })],
        None, ok_json("200", schema_ref("Stats"))) }));
    p.insert("/v2/token".into(), json!({ "get": op("registryToken", "Docker Registry v2 token (Basic auth or anonymous)", false,
        &[json!({ "name": "service", "in": "query", "required": true, "schema": { "type": "string" },
                  "description": "must equal the configured service" }),
          json!({ "name": "scope", "in": "query", "required": false, "explode": true,
                  "schema": { "type": "array", "items": { "type": "string" } } })],
        None, ok_json("200", schema_ref("RegistryToken"))) }));
    let mut events = op(
        "registryEvents",
        "registry notifications (bearer = the notify secret)",
        true,
        &[],
        Some(
            json!({ "type": "object", "required": ["events"], "properties": { "events": { "type": "array", "items": schema_ref("RegistryEvent") } } }),
        ),
        ("200".to_string(), json!({ "description": "recorded" })),
    );
    events["security"] = json!([{ "bearer": [] }]);
    p.insert("/api/v1/registry/events".into(), json!({ "post": events }));
    apps::paths(&mut p);
    builds::paths(&mut p);
    monitor::paths(&mut p);
    slb::paths(&mut p);
    p
}

fn schemas() -> Value {
    let mut all = core_schemas().as_object().cloned().unwrap_or_default();
    apps::schemas(&mut all);
    builds::schemas(&mut all);
    monitor::schemas(&mut all);
    slb::schemas(&mut all);
    Value::Object(all)
}

fn core_schemas() -> Value {
    let ts = json!({ "type": "string", "format": "date-time" });
    let nullable_role = json!({ "allOf": [schema_ref("Role")], "nullable": true });
    json!({
        "Problem": { "type": "object", "required": ["type", "title", "status", "detail", "code"], "properties": {
            "type": { "type": "string" }, "title": { "type": "string" }, "status": { "type": "integer" },
            "detail": { "type": "string" }, "code": { "type": "string" } } },
        "Role": { "type": "string", "enum": ["Guest", "Reporter", "Developer", "Master", "Owner"] },
        "Quota": { "type": "object", "required": ["max_apps", "max_containers"], "additionalProperties": false, "properties": {
            "max_apps": { "type": "integer", "minimum": 0, "maximum": 4294967295u64 },
            "max_containers": { "type": "integer", "minimum": 0, "maximum": 4294967295u64 },
            "max_cpu_millis": { "type": "integer", "minimum": 0, "maximum": u64::MAX, "nullable": true,
                "description": "CPU requests × replicas allowed, in millicores; absent or null in a request: the configured default" },
            "max_memory_bytes": { "type": "integer", "minimum": 0, "maximum": u64::MAX, "nullable": true,
                "description": "memory requests × replicas allowed, in bytes; absent or null in a request: the configured default" } } },
        "Usage": { "type": "object", "properties": { "apps": { "type": "integer" }, "containers": { "type": "integer" },
            "cpu_millis": { "type": "integer", "description": "millicores requested by the replicas of the user's apps" },
            "memory_bytes": { "type": "integer", "description": "bytes of memory requested by the replicas of the user's apps" } } },
        "User": { "type": "object", "required": ["name", "admin", "created", "quota", "usage"], "properties": {
            "name": { "type": "string" }, "admin": { "type": "boolean" }, "created": ts,
            "quota": schema_ref("Quota"), "usage": schema_ref("Usage") } },
        "NewToken": { "type": "object", "required": ["id", "name", "token"], "properties": {
            "id": { "type": "string" }, "name": { "type": "string" }, "token": { "type": "string" },
            "expires": { "type": "string", "format": "date-time", "nullable": true } } },
        "Token": { "type": "object", "required": ["id", "name", "created"], "properties": {
            "id": { "type": "string" }, "name": { "type": "string" }, "created": ts,
            "expires": { "type": "string", "format": "date-time", "nullable": true } } },
        "AppState": { "type": "object", "required": ["version", "replicas"], "properties": {
            "version": { "type": "integer" }, "image": { "type": "string", "nullable": true },
            "tag": { "type": "string", "nullable": true }, "replicas": { "type": "integer" } } },
        "App": { "type": "object", "required": ["name", "creator", "public", "description", "created", "state"], "properties": {
            "name": { "type": "string" }, "creator": { "type": "string" }, "public": { "type": "boolean" },
            "description": { "type": "string" }, "created": ts, "state": schema_ref("AppState"), "role": nullable_role,
            "desired": schema_ref("AppSpec"), "dns": schema_ref("LbDns") } },
        "Resource": { "type": "object", "required": ["name", "creator", "public", "description", "created"], "properties": {
            "name": { "type": "string" }, "creator": { "type": "string" }, "public": { "type": "boolean" },
            "description": { "type": "string" }, "created": ts, "role": nullable_role } },
        "Member": { "type": "object", "required": ["user", "role", "added_by", "added"], "properties": {
            "user": { "type": "string" }, "role": schema_ref("Role"), "added_by": { "type": "string" }, "added": ts } },
        "Event": { "type": "object", "required": ["id", "at", "actor", "action"], "properties": {
            "id": { "type": "string" }, "at": ts, "actor": { "type": "string" }, "action": { "type": "string" }, "detail": {} } },
        "PermissionRow": { "type": "object", "required": ["kind", "action", "min_role", "roles"], "properties": {
            "kind": { "type": "string", "enum": ["app", "image", "group", "build"] }, "action": { "type": "string" },
            "description": { "type": "string" }, "min_role": schema_ref("Role"), "roles": array("Role"),
            "public_non_member": { "type": "boolean" }, "public_anonymous": { "type": "boolean" } } },
        "Stats": { "type": "object", "required": ["days"], "properties": { "days": { "type": "array", "items": {
            "type": "object", "required": ["day", "deploys", "builds", "pushes", "scalings", "deletions"], "properties": {
                "day": { "type": "string", "format": "date" }, "deploys": { "type": "integer" }, "builds": { "type": "integer" },
                "pushes": { "type": "integer" }, "scalings": { "type": "integer" }, "deletions": { "type": "integer" } } } } } },
        "RegistryToken": { "type": "object", "required": ["token", "access_token", "expires_in", "issued_at"], "properties": {
            "token": { "type": "string" }, "access_token": { "type": "string" }, "expires_in": { "type": "integer" }, "issued_at": ts } },
        "RegistryEvent": { "type": "object", "required": ["id", "action", "target"], "properties": {
            "id": { "type": "string" }, "timestamp": ts, "action": { "type": "string" },
            "target": { "type": "object", "required": ["repository"], "properties": {
                "mediaType": { "type": "string" }, "repository": { "type": "string" },
                "digest": { "type": "string" }, "tag": { "type": "string" } } },
            "actor": { "type": "object", "properties": { "name": { "type": "string" } } } } },
    })
}

pub fn document() -> Value {
    json!({
        "openapi": "3.0.3",
        "info": { "title": "LeEngine core API", "version": env!("CARGO_PKG_VERSION"),
            "description": "Errors are RFC 7807 problem documents with a stable `code`. See docs/core-api.md." },
        "paths": paths(),
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "description": "personal access token (lep_…)" },
                "basic": { "type": "http", "scheme": "basic", "description": "user:password or user:access-token" },
            },
        },
        "security": [{ "bearer": [] }, { "basic": [] }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ref_resolves() {
        let doc = document();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("#/components/schemas/").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            assert!(schemas.contains_key(&name), "dangling $ref {name}");
        }
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/api/v1/builds/configs",
            "/api/v1/builds/configs/{id}/runs/{run}",
            "/api/v1/builds/configs/{id}/webhook",
            "/api/v1/builds/configs/{id}/members/{user}",
            "/api/v1/slb/groups/{group}/domains/{domain}",
            "/api/v1/slb/groups/{group}/agents",
            "/api/v1/apps/{name}/versions/{version}/scale",
            "/api/v1/apps/{name}/versions/template",
            "/api/v1/apps/{name}/containers",
            "/api/v1/apps/{name}/events",
            "/api/v1/admin/cells/{cell}",
            "/api/v1/admin/cells/{cell}/pools",
            "/api/v1/apps/{name}/ip-ranges",
            "/api/v1/apps/{name}/ip-pools/{cell}/{pool}",
            "/api/v1/apps/{name}/metrics/{metric}",
            "/api/v1/apps/{name}/pods/{pod}/metrics/{metric}",
            "/api/v1/apps/{name}/alerts/{rule}",
            "/api/v1/user/notifications",
            "/api/v1/monitor/targets",
            "/api/v1/monitor/alertmanager",
        ] {
            assert!(paths.contains_key(p), "{p} is not documented");
        }
    }
}

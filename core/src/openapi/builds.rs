//! OpenAPI paths and schemas of the build routes (`crate::builds`).

use serde_json::{json, Map, Value};

use super::{array, link_from, ok_json, op, path_param, problem, schema_ref};

/// Build config ids: `leengine_build::validate::name` and a resource name.
const BUILD_ID: &str = "^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$";
/// Exactly `validate::tag` and `validate::commit`.
const TAG: &str = "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$";
const COMMIT: &str = "^[0-9a-fA-F]{7,64}$";

fn spec_properties() -> Map<String, Value> {
    json!({
        "repo": { "type": "string",
            "description": "`scheme://host[:port]/path` on one of the core's `--build-git-host` servers" },
        "repoCredential": { "type": "string", "nullable": true,
            "description": "name of a clone credential held by the build hosts (never the secret itself)" },
        "branch": { "type": "string" },
        "dockerfile": { "type": "string", "nullable": true, "description": "default `Dockerfile`" },
        "compile": { "allOf": [schema_ref("CompileSpec")], "nullable": true },
        "outputs": { "type": "array", "items": { "type": "string" },
            "description": "paths (relative to the repo) that go into the build context" },
        "image": { "type": "string", "description": "target image without tag, e.g. `registry:5000/team/app`" },
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}

fn create_body() -> Value {
    let mut props = spec_properties();
    props.insert(
        "id".into(),
        json!({ "type": "string", "pattern": BUILD_ID }),
    );
    props.insert("public".into(), json!({ "type": "boolean" }));
    json!({ "type": "object", "required": ["id", "repo", "branch", "image"],
        "additionalProperties": false, "properties": props,
        "example": { "id": "web", "repo": "https://git.example/team/web.git", "branch": "main",
            "image": "127.0.0.1:5000/team/web" } })
}

fn update_body() -> Value {
    let mut props = spec_properties();
    props.insert(
        "public".into(),
        json!({ "type": "boolean", "nullable": true }),
    );
    json!({ "type": "object", "required": ["repo", "branch", "image"],
        "additionalProperties": false, "properties": props,
        "example": { "repo": "https://git.example/team/web.git", "branch": "release",
            "image": "127.0.0.1:5000/team/web" } })
}

pub(super) fn paths(p: &mut Map<String, Value>) {
    let id = [path_param("id")];
    let run = [path_param("id"), path_param("run")];
    let from_config: Vec<(&str, &str, &str)> = [
        "getBuildConfig",
        "updateBuildConfig",
        "deleteBuildConfig",
        "triggerBuild",
        "listBuildRuns",
        "buildListMembers",
        "buildActivity",
        "buildSetMember",
        "buildWebhook",
    ]
    .into_iter()
    .map(|op| (op, "id", "$response.body#/id"))
    .collect();
    p.insert("/api/v1/builds/configs".into(), json!({
        "get": op("listBuildConfigs", "build configs the caller created or is a member of", true, &[], None,
            ok_json("200", array("BuildConfig"))),
        "post": op("createBuildConfig", "create a build config (caller becomes Owner); the webhook token is shown once",
            true, &[], Some(create_body()),
            link_from(ok_json("201", schema_ref("NewBuildConfig")), &from_config)),
    }));
    p.insert("/api/v1/builds/configs/{id}".into(), json!({
        "get": op("getBuildConfig", "a build config (Guest+; public ones to signed-in users)", true, &id, None,
            ok_json("200", schema_ref("BuildConfig"))),
        "put": op("updateBuildConfig", "replace the spec, optionally the visibility (Master+)", true, &id,
            Some(update_body()), ok_json("200", schema_ref("BuildConfig"))),
        "delete": op("deleteBuildConfig", "delete the config, its runs, members and feed (Owner)", true, &id, None,
            super::no_content()),
    }));
    let mut trigger = op(
        "triggerBuild",
        "build now (Developer+): the branch head, or `commit`; tag default: the commit id",
        true,
        &id,
        None,
        link_from(
            ok_json("202", schema_ref("BuildRun")),
            &[
                ("getBuildRun", "id", "$request.path.id"),
                ("getBuildRun", "run", "$response.body#/id"),
            ],
        ),
    );
    trigger["requestBody"] = json!({ "required": false, "content": { "application/json": { "schema": {
        "type": "object", "additionalProperties": false, "properties": {
            "tag": { "type": "string", "nullable": true, "pattern": TAG },
            "commit": { "type": "string", "nullable": true, "pattern": COMMIT } },
        "example": { "tag": "v1" } } } } });
    trigger["responses"]["503"] = problem("no build host is registered, or etcd unavailable");
    p.insert("/api/v1/builds/configs/{id}/runs".into(), json!({
        "get": op("listBuildRuns", "runs with status, stage timings and log tail, newest first (Reporter+)", true, &id, None,
            ok_json("200", array("BuildRun"))),
        "post": trigger,
    }));
    p.insert("/api/v1/builds/configs/{id}/runs/{run}".into(), json!({
        "get": op("getBuildRun", "one run (Reporter+)", true, &run, None, ok_json("200", schema_ref("BuildRun"))),
    }));
    let mut hook_params = id.to_vec();
    hook_params.push(
        json!({ "name": "X-Gitlab-Token", "in": "header", "required": false,
        "schema": { "type": "string" }, "description": "the config's webhook token" }),
    );
    let mut hook = op(
        "buildWebhook",
        "GitLab push hook: builds when repo and branch match (authenticated by X-Gitlab-Token, not a user)",
        false,
        &hook_params,
        Some(schema_ref("GitlabPush")),
        ok_json("200", schema_ref("WebhookOutcome")),
    );
    hook["responses"]["202"] = json!({ "description": "build dispatched",
        "content": { "application/json": { "schema": schema_ref("WebhookOutcome") } } });
    hook["responses"]["503"] = problem("no build host is registered, or etcd unavailable");
    hook["security"] = json!([{}]);
    p.insert(
        "/api/v1/builds/configs/{id}/webhook".into(),
        json!({ "post": hook }),
    );
    p.insert("/api/v1/builds/builders".into(), json!({
        "get": op("listBuilders", "live build hosts", true, &[], None, ok_json("200", array("BuilderInfo"))),
    }));
}

pub(super) fn schemas(s: &mut Map<String, Value>) {
    let ts = json!({ "type": "string", "format": "date-time" });
    let nts = json!({ "type": "string", "format": "date-time", "nullable": true });
    let nstr = json!({ "type": "string", "nullable": true });
    let stage =
        json!({ "type": "string", "enum": ["dispatch", "clone", "compile", "build", "push"] });
    let mut config_props = spec_properties();
    for (k, v) in [
        ("id", json!({ "type": "string" })),
        ("creator", json!({ "type": "string" })),
        ("createdAt", ts.clone()),
        ("webhookPath", json!({ "type": "string" })),
        ("public", json!({ "type": "boolean" })),
        (
            "role",
            json!({ "allOf": [schema_ref("Role")], "nullable": true }),
        ),
    ] {
        config_props.insert(k.into(), v);
    }
    let required = json!([
        "id",
        "repo",
        "branch",
        "dockerfile",
        "outputs",
        "image",
        "creator",
        "createdAt",
        "webhookPath",
        "public"
    ]);
    let mut new_props = config_props.clone();
    new_props.insert(
        "webhookToken".into(),
        json!({ "type": "string", "description": "GitLab's secret token; shown only here" }),
    );
    let mut new_required = required.clone();
    if let Value::Array(a) = &mut new_required {
        a.push(json!("webhookToken"));
    }
    let more = json!({
        "CompileSpec": { "type": "object", "required": ["image", "script"], "additionalProperties": false, "properties": {
            "image": { "type": "string", "description": "local image the compile step runs in" },
            "script": { "type": "string", "description": "script in the repo, run with the repo as working dir" },
            "cacheMount": { "type": "string", "description": "where the per-config Maven cache is mounted" } } },
        "BuildConfig": { "type": "object", "required": required, "properties": config_props },
        "NewBuildConfig": { "type": "object", "required": new_required, "properties": new_props },
        "StageTiming": { "type": "object", "required": ["stage", "startedAt"], "properties": {
            "stage": stage, "startedAt": ts, "endedAt": nts,
            "durationMs": { "type": "integer", "nullable": true }, "ok": { "type": "boolean", "nullable": true } } },
        "BuildRun": { "type": "object",
            "required": ["id", "config", "builder", "attempt", "trigger", "status", "stages", "redispatches", "log", "createdAt"],
            "properties": {
                "id": { "type": "string" }, "config": { "type": "string" }, "builder": { "type": "string" },
                "attempt": { "type": "integer" },
                "trigger": { "type": "object", "required": ["kind"], "properties": {
                    "kind": { "type": "string", "enum": ["manual", "webhook"] }, "user": nstr } },
                "status": { "type": "string", "enum": ["queued", "cloning", "compiling", "building", "pushing", "succeeded", "failed"] },
                "requestedTag": nstr, "commit": nstr, "image": nstr,
                "failedStage": { "type": "string", "enum": ["dispatch", "clone", "compile", "build", "push"], "nullable": true },
                "error": nstr, "stages": array("StageTiming"),
                "redispatches": { "type": "array", "items": { "type": "object", "required": ["from", "at"], "properties": {
                    "from": { "type": "string" }, "to": nstr, "at": ts } } },
                "log": { "type": "string", "description": "tail of the log" },
                "logTruncatedBytes": { "type": "integer" }, "createdAt": ts, "finishedAt": nts } },
        "BuilderInfo": { "type": "object", "required": ["id", "capacity", "running", "startedAt"], "properties": {
            "id": { "type": "string" }, "capacity": { "type": "integer" }, "running": { "type": "integer" },
            "labels": { "type": "object", "additionalProperties": { "type": "string" } }, "startedAt": ts } },
        "GitlabPush": { "type": "object", "description": "GitLab's Push Hook payload (fields used)", "properties": {
            "object_kind": { "type": "string" }, "ref": { "type": "string" }, "after": { "type": "string" },
            "checkout_sha": nstr, "user_username": nstr,
            "project": { "type": "object", "properties": {
                "git_http_url": nstr, "git_ssh_url": nstr, "web_url": nstr } },
            "repository": { "type": "object", "properties": {
                "url": nstr, "git_http_url": nstr, "git_ssh_url": nstr, "homepage": nstr } } } },
        "WebhookOutcome": { "type": "object", "required": ["triggered"], "properties": {
            "triggered": { "type": "boolean" }, "reason": { "type": "string" }, "run": schema_ref("BuildRun") } },
    });
    if let Value::Object(m) = more {
        s.extend(m);
    }
}

//! A Cell's kubelet pulls a private app image from the platform registry
//! with an `imagePullSecret`: containerd follows the registry's token
//! challenge to the core's `/v2/token`, which grants pull by role.

mod common;

use std::time::Duration;

use base64::Engine;
use common::{
    registry_settings, registry_token, start_cell_with_pool, token_keypair, token_registry, Auth,
    Env,
};
use leengine_core::server::Settings;
use leengine_testenv as te;
use serde_json::{json, Value};

/// Hang guard; not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(180);

fn pod(name: &str, image: &str, secret: Option<&str>) -> String {
    let secrets = secret
        .map(|s| format!("  imagePullSecrets: [{{name: {s}}}]\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{secrets}  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: web, image: \"{image}\"}}\n"
    )
}

/// The pod's phase and its container's waiting reason, if any.
fn state(cell: &te::Cell, name: &str) -> (String, String) {
    let out = cell.kubectl(&["get", "pod", name, "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let waiting = &v["status"]["containerStatuses"][0]["state"]["waiting"]["reason"];
    (
        v["status"]["phase"].as_str().unwrap_or("").to_string(),
        waiting.as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_pulls_a_private_image_with_a_pull_secret_through_the_core_token_server() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert, cert_path) = token_keypair(dir.path());
    let env = Env::start(Settings {
        registry: Some(registry_settings(key, cert)),
        ..Default::default()
    })
    .await;
    let core = env.serve().await;
    let registry = token_registry(core, &cert_path);
    let reg = registry.addr();

    let owner = env.user("olga", false).await;
    let Auth::Bearer(dan) = env.user("dan", false).await else {
        unreachable!()
    };
    env.user("rita", false).await; // password "password-of-test"
    for (path, body) in [
        ("/api/v1/groups", json!({"name": "team"})),
        ("/api/v1/images", json!({"name": "team/private"})),
    ] {
        env.create(&owner, path, body).await;
    }
    for (path, role) in [
        ("/api/v1/groups/team/members/dan", "Developer"),
        ("/api/v1/images/team/private/members/rita", "Reporter"),
    ] {
        env.set_role(&owner, path, role).await;
    }
    let push = registry_token(core, "repository:team/private:push,pull", "dan", &dan);
    te::Image::web(8080).push(&reg, "team/private", "v1", Some(&push));

    let cell = tokio::task::block_in_place(|| start_cell_with_pool(130));
    cell.trust_registry(&reg);

    // The pull secret holds a Reporter's credentials, as the platform's
    // pull-only robot credential would.
    let auth = base64::engine::general_purpose::STANDARD.encode("rita:password-of-test");
    let dockercfg = json!({"auths": {reg.clone(): {"auth": auth}}}).to_string();
    cell.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: pull, namespace: default}}\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: {}\n",
        base64::engine::general_purpose::STANDARD.encode(dockercfg)
    ));
    let image = format!("{reg}/team/private:v1");
    cell.apply(&pod("with-secret", &image, Some("pull")));
    cell.apply(&pod("without-secret", &image, None));

    let mut seen = (String::new(), String::new());
    let running = tokio::task::block_in_place(|| {
        te::wait_until(PATIENCE, || {
            seen = state(&cell, "with-secret");
            seen.0 == "Running"
        })
    });
    assert!(running, "pod with the pull secret: {seen:?}");
    // Without credentials the registry refuses: the pull fails, visibly.
    let refused = tokio::task::block_in_place(|| {
        te::wait_until(PATIENCE, || {
            seen = state(&cell, "without-secret");
            matches!(seen.1.as_str(), "ErrImagePull" | "ImagePullBackOff")
        })
    });
    assert!(refused, "pod without a pull secret: {seen:?}");
    let events = cell.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=without-secret",
        "-o",
        "json",
    ]);
    let text = String::from_utf8_lossy(&events.stdout);
    assert!(
        text.contains("401") || text.contains("nauthorized") || text.contains("denied"),
        "the refusal comes from the registry's auth: {text}"
    );
}

//! Permission matrix: 5 roles (plus a non-member and an anonymous caller) ×
//! every action of every resource kind × public/private, through the real
//! HTTP routes (and the registry token endpoint for pull/push) against a
//! real etcd. The expectations are written out here independently of the
//! crate's table.

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::{jwt_claims, token_keypair, Auth, Env};
use leengine_core::access::{self, Action, Kind, Role};
use leengine_core::auth::Caller;
use leengine_core::registry::RegistrySettings;
use leengine_core::server::Settings;
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    Member(Role),
    NonMember,
    Anonymous,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    Ok,
    Unauthorized,
    Forbidden,
    NotFound,
    /// A token without the asked action (the registry then refuses).
    Denied,
}

/// How an action is exercised.
#[derive(Clone, Copy)]
enum Via {
    /// An HTTP route that requires credentials.
    Http,
    /// An HTTP route that anonymous callers may use.
    HttpAnon,
    /// The registry token endpoint: Ok = the action is granted.
    Token(&'static str),
    /// `access::authorize` (for actions whose route lives in another module).
    Authorize(Action),
}

struct Case {
    name: &'static str,
    min: Role,
    /// Allowed to a signed-in non-member when the resource is public.
    public_ok: bool,
    via: Via,
}

fn expect(case: &Case, who: Who, public: bool) -> Outcome {
    let anon_route = matches!(case.via, Via::HttpAnon | Via::Token(_));
    match who {
        Who::Member(r) if r >= case.min => Outcome::Ok,
        Who::Member(_) => Outcome::Forbidden,
        Who::NonMember if !public => Outcome::NotFound,
        Who::NonMember if case.public_ok => Outcome::Ok,
        Who::NonMember => Outcome::Forbidden,
        Who::Anonymous if !anon_route => match case.via {
            // authorize() on a kind anonymous callers never see.
            Via::Authorize(_) => Outcome::NotFound,
            _ => Outcome::Unauthorized,
        },
        Who::Anonymous if !public => Outcome::NotFound,
        Who::Anonymous if case.public_ok => Outcome::Ok,
        Who::Anonymous => Outcome::Unauthorized,
    }
}

fn outcome(status: StatusCode) -> Outcome {
    match status.as_u16() {
        200..=299 => Outcome::Ok,
        401 => Outcome::Unauthorized,
        403 => Outcome::Forbidden,
        404 => Outcome::NotFound,
        s => panic!("unexpected status {s}"),
    }
}

const ROLES: [Role; 5] = [
    Role::Guest,
    Role::Reporter,
    Role::Developer,
    Role::Master,
    Role::Owner,
];

fn cases(kind: Kind) -> Vec<Case> {
    let c = |name, min, public_ok, via| Case {
        name,
        min,
        public_ok,
        via,
    };
    use Role::*;
    match kind {
        Kind::App => vec![
            c("view", Guest, true, Via::Http),
            c("members", Guest, true, Via::Http),
            c("activity", Guest, true, Via::Http),
            c("versions", Guest, true, Via::Http),
            c(
                "read_logs",
                Reporter,
                false,
                Via::Authorize(Action::ReadLogs),
            ),
            c("deploy", Master, false, Via::Http),
            c("scale", Master, false, Via::Http),
            c("update", Master, false, Via::Http),
            c("manage_members", Master, false, Via::Http),
            c("delete", Owner, false, Via::Http),
        ],
        Kind::Image => vec![
            c("view", Guest, true, Via::HttpAnon),
            c("members", Guest, true, Via::Http),
            c("activity", Guest, true, Via::Http),
            c("pull", Reporter, true, Via::Token("pull")),
            c("push", Developer, false, Via::Token("push")),
            c("registry_delete", Owner, false, Via::Token("delete")),
            c("update", Master, false, Via::Http),
            c("manage_members", Master, false, Via::Http),
            c("delete", Owner, false, Via::Http),
        ],
        Kind::Group => vec![
            c("view", Guest, true, Via::HttpAnon),
            c("members", Guest, true, Via::Http),
            c("activity", Guest, true, Via::Http),
            // Pull/push on a not-yet-pushed image of the group: the group role decides.
            c("pull", Reporter, false, Via::Token("pull")),
            c("push", Developer, false, Via::Token("push")),
            c("update", Master, false, Via::Http),
            c("manage_members", Master, false, Via::Http),
            c("delete", Owner, false, Via::Http),
        ],
        Kind::Build => vec![
            c("view", Guest, true, Via::Http),
            c("members", Guest, true, Via::Http),
            c("activity", Guest, true, Via::Http),
            c("runs", Reporter, false, Via::Http),
            c(
                "read_logs",
                Reporter,
                false,
                Via::Authorize(Action::ReadLogs),
            ),
            c("trigger", Developer, false, Via::Http),
            c("update", Master, false, Via::Http),
            c("manage_members", Master, false, Via::Http),
            c("delete", Owner, false, Via::Http),
        ],
    }
}

struct World {
    env: Env,
    role_users: Vec<(Role, String, Auth)>,
    outsider: (String, Auth),
}

impl World {
    fn auth(&self, who: Who) -> (Option<Caller>, Auth) {
        match who {
            Who::Member(r) => {
                let (_, name, a) = self.role_users.iter().find(|(x, _, _)| *x == r).unwrap();
                (
                    Some(Caller {
                        user: name.clone(),
                        admin: false,
                    }),
                    a.clone(),
                )
            }
            Who::NonMember => (
                Some(Caller {
                    user: self.outsider.0.clone(),
                    admin: false,
                }),
                self.outsider.1.clone(),
            ),
            Who::Anonymous => (None, Auth::Anonymous),
        }
    }
}

fn base(kind: Kind, name: &str) -> String {
    match kind {
        Kind::App => format!("/api/v1/apps/{name}"),
        Kind::Image => format!("/api/v1/images/{name}"),
        Kind::Group => format!("/api/v1/groups/{name}"),
        Kind::Build => format!("/api/v1/builds/configs/{name}"),
    }
}

async fn run(w: &World, kind: Kind, name: &str, case: &Case, who: Who) -> Outcome {
    let env = &w.env;
    let (caller, auth) = w.auth(who);
    let b = base(kind, name);
    let http =
        |m: Method, p: String, body| async move { outcome(env.call(&auth, m, &p, body).await.0) };
    match (case.via, case.name) {
        (Via::Token(action), _) => {
            let repo = if kind == Kind::Group {
                format!("{name}/not-pushed-yet")
            } else {
                name.to_string()
            };
            let path = format!("/v2/token?service=test-registry&scope=repository:{repo}:{action}");
            let (st, body) = env.call(&w.auth(who).1, Method::GET, &path, None).await;
            assert_eq!(st, StatusCode::OK, "token endpoint: {body}");
            let claims = jwt_claims(body["token"].as_str().unwrap());
            let granted = claims["access"].as_array().unwrap().iter().any(|a| {
                a["name"] == repo.as_str()
                    && a["actions"].as_array().unwrap().iter().any(|x| x == action)
            });
            if granted {
                Outcome::Ok
            } else {
                Outcome::Denied
            }
        }
        (Via::Authorize(action), _) => {
            match access::authorize(&env.core.db, caller.as_ref(), kind, name, action).await {
                Ok(_) => Outcome::Ok,
                Err(e) => outcome(e.status),
            }
        }
        (_, "view") => http(Method::GET, b, None).await,
        (_, "members") => http(Method::GET, format!("{b}/members"), None).await,
        (_, "activity") => http(Method::GET, format!("{b}/activity"), None).await,
        (_, "versions") => http(Method::GET, format!("{b}/versions"), None).await,
        (_, "deploy") => {
            http(
                Method::POST,
                format!("{b}/deploy"),
                Some(json!({"image": "t/w", "tag": "v1"})),
            )
            .await
        }
        (_, "scale") => {
            http(
                Method::POST,
                format!("{b}/scale"),
                Some(json!({"replicas": 2})),
            )
            .await
        }
        (_, "runs") => http(Method::GET, format!("{b}/runs"), None).await,
        (_, "trigger") => http(Method::POST, format!("{b}/runs"), None).await,
        (_, "update") if kind == Kind::Build => {
            let mut spec = build_config(name);
            spec.as_object_mut().unwrap().remove("id");
            spec["branch"] = json!("release");
            http(Method::PUT, b, Some(spec)).await
        }
        (_, "update") => http(Method::PATCH, b, Some(json!({"description": "changed"}))).await,
        (_, "manage_members") => {
            http(
                Method::PUT,
                format!("{b}/members/spare"),
                Some(json!({"role": "Guest"})),
            )
            .await
        }
        (_, "delete") => http(Method::DELETE, b, None).await,
        (_, other) => panic!("no request for {other}"),
    }
}

fn build_config(id: &str) -> serde_json::Value {
    json!({
        "id": id,
        "repo": "https://git.example/team/app.git",
        "branch": "main",
        "image": format!("127.0.0.1:5000/{id}-g/app"),
    })
}

/// `GET /api/v1/builds/configs` lists a config to its members only, public
/// or not; anonymous callers get 401. Returns the number of checks.
async fn check_build_list(w: &World, name: &str) -> usize {
    let mut checks = 0;
    let mut whos: Vec<Who> = ROLES.map(Who::Member).to_vec();
    whos.extend([Who::NonMember, Who::Anonymous]);
    for who in whos {
        let (st, v) = w
            .env
            .call(&w.auth(who).1, Method::GET, "/api/v1/builds/configs", None)
            .await;
        checks += 1;
        if who == Who::Anonymous {
            assert_eq!(st, StatusCode::UNAUTHORIZED, "list as {who:?}: {v}");
            continue;
        }
        assert_eq!(st, StatusCode::OK, "list as {who:?}: {v}");
        let listed = v.as_array().unwrap().iter().any(|c| c["id"] == name);
        assert_eq!(
            listed,
            matches!(who, Who::Member(_)),
            "{name} listed to {who:?}: {v}"
        );
    }
    checks
}

async fn create(w: &World, owner: &Auth, kind: Kind, name: &str, public: bool) {
    let env = &w.env;
    let body = json!({"name": name, "public": public});
    let (st, v) = match kind {
        Kind::App => {
            env.call(owner, Method::POST, "/api/v1/apps", Some(body))
                .await
        }
        Kind::Group => {
            env.call(owner, Method::POST, "/api/v1/groups", Some(body))
                .await
        }
        Kind::Image => {
            let group = name.split('/').next().unwrap();
            env.call(
                owner,
                Method::POST,
                "/api/v1/groups",
                Some(json!({"name": group})),
            )
            .await;
            env.call(owner, Method::POST, "/api/v1/images", Some(body))
                .await
        }
        Kind::Build => {
            // A registered builder, so that allowed triggers are placed.
            let keys = &env.core.db.keys;
            env.core
                .db
                .etcd
                .kv_client()
                .put(
                    keys.builder("matrix-builder"),
                    json!({"id": "matrix-builder", "capacity": 1, "running": 0,
                        "startedAt": "2026-01-01T00:00:00Z"})
                    .to_string(),
                    None,
                )
                .await
                .unwrap();
            // The creator needs push rights on the target image: its group.
            let (st, v) = env
                .call(
                    owner,
                    Method::POST,
                    "/api/v1/groups",
                    Some(json!({"name": format!("{name}-g")})),
                )
                .await;
            assert_eq!(st, StatusCode::CREATED, "group for {name}: {v}");
            let mut c = build_config(name);
            c["public"] = json!(public);
            env.call(owner, Method::POST, "/api/v1/builds/configs", Some(c))
                .await
        }
    };
    assert_eq!(st, StatusCode::CREATED, "create {name}: {v}");
    for (role, user, _) in &w.role_users {
        if *role != Role::Owner {
            let (st, v) = env
                .call(
                    owner,
                    Method::PUT,
                    &format!("{}/members/{user}", base(kind, name)),
                    Some(json!({"role": role})),
                )
                .await;
            assert_eq!(st, StatusCode::OK, "add {user} as {role:?}: {v}");
            if kind == Kind::Build {
                // Push rights on the target image are a separate rule
                // (tests/builds_api.rs); here every member has them, so the
                // matrix shows the build-config role table alone.
                let (st, v) = env
                    .call(
                        owner,
                        Method::PUT,
                        &format!("/api/v1/groups/{name}-g/members/{user}"),
                        Some(json!({"role": "Developer"})),
                    )
                    .await;
                assert_eq!(st, StatusCode::OK, "{user} Developer of {name}-g: {v}");
            }
        }
    }
    if kind == Kind::App {
        let (st, v) = env
            .call(
                owner,
                Method::POST,
                &format!("/api/v1/apps/{name}/deploy"),
                Some(json!({"image": "t/w", "tag": "v0"})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert, _) = token_keypair(dir.path());
    let settings = Settings {
        registry: Some(RegistrySettings {
            service: "test-registry".into(),
            issuer: "test-core".into(),
            key_pem: key,
            cert_pem: Some(cert),
            ttl: Duration::from_secs(300),
            notify_secret: None,
        }),
        builds: leengine_core::builds::BuildSettings {
            policy: leengine_build::validate::Policy::new(
                Some("127.0.0.1:5000".into()),
                &["https://git.example"],
            )
            .unwrap(),
            ..Default::default()
        },
        ..Default::default()
    };
    let env = Env::start(settings).await;
    let mut role_users = Vec::new();
    for r in ROLES {
        let name = format!("{r:?}").to_lowercase();
        let auth = env.user(&name, false).await;
        role_users.push((r, name, auth));
    }
    let outsider = ("outsider".to_string(), env.user("outsider", false).await);
    env.user("spare", false).await;
    let w = World {
        env,
        role_users,
        outsider,
    };
    let owner = w
        .role_users
        .iter()
        .find(|(r, _, _)| *r == Role::Owner)
        .unwrap()
        .2
        .clone();
    // Deploys need pull rights on the image: a public one suits every role.
    w.env.public_image(&owner, "t/w").await;

    let mut whos: Vec<Who> = vec![Who::Anonymous, Who::NonMember];
    // Owner last: its successful delete ends the resource.
    whos.extend(ROLES.map(Who::Member));
    let mut checked = 0;
    let mut failures = Vec::new();
    for kind in Kind::ALL {
        for public in [false, true] {
            let vis = if public { "pub" } else { "priv" };
            let name = match kind {
                Kind::Image => format!("img-{vis}/repo"),
                _ => format!("{}-{vis}", kind.as_str()),
            };
            create(&w, &owner, kind, &name, public).await;
            if kind == Kind::Build {
                checked += check_build_list(&w, &name).await;
            }
            for case in cases(kind) {
                for &who in &whos {
                    let want = expect(&case, who, public);
                    let got = run(&w, kind, &name, &case, who).await;
                    checked += 1;
                    let same = match got {
                        Outcome::Denied => want != Outcome::Ok,
                        g => g == want,
                    };
                    if !same {
                        failures.push(format!(
                            "{kind:?} {vis} {} as {who:?}: want {want:?}, got {got:?}",
                            case.name
                        ));
                    }
                }
            }
            // Only the Owner's delete went through.
            let (st, _) = w
                .env
                .call(&owner, Method::GET, &base(kind, &name), None)
                .await;
            assert_eq!(
                st,
                StatusCode::NOT_FOUND,
                "{name} should be deleted by its Owner"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked > 400, "only {checked} checks");
}

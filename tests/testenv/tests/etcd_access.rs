//! etcd as the product runs it: TLS with client certificates, auth on, and
//! each component's identity confined to the key ranges of its role
//! (`leengine_store::Keys::grants`). A compromised agent must not reach
//! another component's keys.

use leengine_store::keys::{self, Component};
use leengine_store::{EtcdConfig, StoreError};
use leengine_testenv as te;

/// Whether `component` may put `key` / read `key`, as etcd answers it.
struct Probe {
    client: etcd_client::Client,
    who: String,
}

impl Probe {
    async fn new(etcd: &te::Etcd, c: &Component) -> Probe {
        Probe {
            client: etcd.client(c).await,
            who: c.user(),
        }
    }

    async fn put(&self, key: &str) -> bool {
        outcome(
            &self.who,
            key,
            self.client.clone().put(key, "x", None).await,
        )
    }

    async fn read(&self, key: &str) -> bool {
        let opts = etcd_client::GetOptions::new().with_prefix();
        outcome(
            &self.who,
            key,
            self.client.clone().get(key, Some(opts)).await,
        )
    }
}

/// Allowed → true, permission denied → false; anything else fails the test.
fn outcome<T>(who: &str, key: &str, r: Result<T, etcd_client::Error>) -> bool {
    match r {
        Ok(_) => true,
        Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::PermissionDenied => {
            false
        }
        Err(e) => panic!("{who} on {key}: {e}"),
    }
}

#[tokio::test]
async fn each_component_reaches_only_its_key_ranges() {
    let etcd = te::Etcd::start();
    let k = etcd.keys().clone();

    let nginx = Probe::new(&etcd, &Component::nginx_agent("g")).await;
    assert!(nginx.put(&keys::slb_agent("g", "h1")).await);
    assert!(nginx.read(&keys::slb_domains_prefix("g")).await);
    assert!(!nginx.put(&keys::slb_domain_config("g", "a.com")).await);
    assert!(!nginx.put(&keys::slb_agent("other", "h1")).await);
    assert!(!nginx.read(&keys::slb_group_prefix("other")).await);
    assert!(!nginx.read(&k.core_prefix()).await);
    assert!(!nginx.read(&k.builders_prefix()).await);

    let builder = Probe::new(&etcd, &Component::build_agent("b1")).await;
    assert!(builder.put(&k.builder("b1")).await);
    assert!(builder.put(&k.builder_task("b1", "t1")).await);
    assert!(builder.read(&k.builder_tasks_prefix("b1")).await);
    assert!(builder.put(&k.build_run("c", "r")).await);
    assert!(!builder.put(&k.builder("b2")).await);
    assert!(!builder.read(&k.builder_tasks_prefix("b2")).await);
    assert!(!builder.put(&k.build_config("c")).await);
    assert!(!builder.read(&k.core_prefix()).await);
    assert!(!builder.read(&keys::slb_group_prefix("g")).await);

    let node = Probe::new(&etcd, &Component::node_agent("n1")).await;
    assert!(node.put(&k.node("n1")).await);
    assert!(node.put(&k.node_attachments("n1")).await);
    assert!(node.put(&k.pool("p")).await);
    assert!(node.read(&k.nodes_prefix()).await);
    assert!(!node.put(&k.node("n2")).await);
    assert!(!node.put(&k.node_attachments("n2")).await);
    assert!(!node.read(&k.core_prefix()).await);
    assert!(!node.read(&keys::slb_group_prefix("g")).await);

    let cni = Probe::new(&etcd, &Component::cni_plugin("n1")).await;
    assert!(cni.put(&k.handle("c1", "eth0")).await);
    assert!(cni.read(&k.node_attachments("n1")).await);
    assert!(!cni.put(&k.node("n1")).await);
    assert!(!cni.read(&k.builders_prefix()).await);

    let cnictl = Probe::new(&etcd, &Component::Cnictl).await;
    assert!(cnictl.put(&k.pool("p2")).await);
    assert!(!cnictl.put(&k.node("n1")).await);
    assert!(!cnictl.read(&k.core_prefix()).await);

    let core = Probe::new(&etcd, &Component::Core).await;
    assert!(core.put(&k.core_user("u")).await);
    assert!(core.put(&keys::slb_domain_config("g", "a.com")).await);
    assert!(core.put(&k.builder_task("b1", "t2")).await);
    assert!(!core.read(&k.pools_prefix()).await);
    assert!(!core.put(&k.node("n1")).await);
    assert!(core.put(&k.drain_request("g", "a.com", "r1")).await);
    assert!(core.read(&k.drain_acks_prefix()).await);
    assert!(!core.put(&k.drain_ack("g", "a.com", "r1")).await);

    let discovery = Probe::new(&etcd, &Component::Discovery).await;
    assert!(discovery.put(&k.drain_ack("g", "a.com", "r1")).await);
    assert!(discovery.put(&k.discovery_leader()).await);
    assert!(
        discovery
            .put(&keys::slb_domain_upstream("g", "a.com"))
            .await
    );
    assert!(discovery.read(&k.drain_requests_prefix()).await);
    assert!(discovery.read(&k.cells_prefix()).await);
    assert!(discovery.read(&k.discovery_services_prefix()).await);
    assert!(!discovery.put(&k.drain_request("g", "a.com", "r2")).await);
    assert!(!discovery.put(&k.cell("c1")).await);
    assert!(!discovery.read(&k.core_prefix()).await);
    assert!(!discovery.read(&k.pools_prefix()).await);

    // What the agents wrote is there, seen by the observer.
    let out = etcd.etcdctl(&["get", "--prefix", "--keys-only", "/slb/g/agents/"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("/slb/g/agents/h1"));
}

#[tokio::test]
async fn no_client_certificate_or_a_foreign_one_is_refused() {
    let etcd = te::Etcd::start();
    let other = te::Etcd::start();
    let opts = etcd_client::GetOptions::new().with_prefix();

    let mut anonymous = etcd.root_config();
    anonymous.cert = None;
    anonymous.key = None;
    let refused = match leengine_store::connect(&anonymous).await {
        Err(_) => true,
        Ok(mut c) => c.get("/", Some(opts.clone())).await.is_err(),
    };
    assert!(refused, "a client without a certificate got in");

    // A root certificate of another CA is nobody here.
    let mut foreign = etcd.root_config();
    let theirs = other.root_files();
    foreign.cert = Some(theirs.cert.display().to_string());
    foreign.key = Some(theirs.key.display().to_string());
    let refused = match leengine_store::connect(&foreign).await {
        Err(_) => true,
        Ok(mut c) => c.get("/", Some(opts)).await.is_err(),
    };
    assert!(refused, "a certificate of another CA got in");
}

/// The fallback: a user with a password; its token, not the certificate's
/// CN, decides what it may do.
#[tokio::test]
async fn password_users_get_their_own_role() {
    let etcd = te::Etcd::start();
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(etcd.etcdctl(&["user", "add", "ops", "--new-user-password=s3cret"]));
    ok(etcd.etcdctl(&["role", "add", "ops"]));
    ok(etcd.etcdctl(&[
        "role",
        "grant-permission",
        "ops",
        "readwrite",
        "/ops/",
        "--prefix",
    ]));
    ok(etcd.etcdctl(&["user", "grant-role", "ops", "ops"]));
    let dir = te::run_dir().join("etcd-password");
    std::fs::create_dir_all(&dir).unwrap();
    let password_file = dir.join("ops");
    std::fs::write(&password_file, "s3cret\n").unwrap();

    // The certificate would be root; the password login narrows it to `ops`.
    let cfg = EtcdConfig {
        user: Some("ops".into()),
        password_file: Some(password_file.display().to_string()),
        ..etcd.root_config()
    };
    let c = leengine_store::connect(&cfg).await.expect("password login");
    assert!(outcome(
        "ops",
        "/ops/a",
        c.clone().put("/ops/a", "1", None).await
    ));
    assert!(!outcome(
        "ops",
        "/leengine/",
        c.clone().put("/leengine/x", "1", None).await
    ));

    std::fs::write(&password_file, "wrong\n").unwrap();
    let err = leengine_store::connect(&cfg)
        .await
        .err()
        .expect("wrong password refused");
    assert!(matches!(err, StoreError::Refused { .. }), "{err}");
}

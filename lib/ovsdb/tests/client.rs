//! The JSON-RPC layer against a real ovsdb-server: transact, errors, monitors,
//! multiplexing, keepalive and unavailability.

mod common;

use std::io::Read;
use std::time::Duration;

use leengine_ovsdb::{
    datum, Client, Cond, MonitorRequest, Mutation, Op, Options, OvsdbError, Unavailable, Until, DB,
};
use leengine_testenv as te;
use serde_json::json;

#[tokio::test]
async fn echo_list_dbs_and_select() {
    let ovs = te::Ovs::start();
    let c = Client::connect(&ovs.db_url()).await.unwrap();
    c.echo().await.unwrap();
    let dbs = c.list_dbs().await.unwrap();
    assert!(dbs.iter().any(|d| d == DB), "{dbs:?}");
    let r = c
        .transact(
            DB,
            vec![Op::select("Open_vSwitch", vec![], &["_uuid", "bridges"])],
        )
        .await
        .unwrap();
    assert_eq!(
        r[0].rows().unwrap().len(),
        1,
        "ovs-vsctl init created one row"
    );
}

#[tokio::test]
async fn rpc_and_operation_errors_are_distinguished() {
    let ovs = te::Ovs::start();
    let c = Client::connect(&ovs.db_url()).await.unwrap();

    let err = c
        .transact("NoSuchDb", vec![Op::comment("x")])
        .await
        .unwrap_err();
    assert!(
        matches!(err, OvsdbError::Rpc { ref method, .. } if method == "transact"),
        "{err:?}"
    );
    assert!(!err.is_unavailable());
    assert!(err.to_string().contains("unknown database"), "{err}");

    // An operation error points at the operation.
    let err = c
        .transact(
            DB,
            vec![
                Op::comment("first"),
                Op::insert("Bridge", json!({"no_such_column": 1})),
            ],
        )
        .await
        .unwrap_err();
    match &err {
        OvsdbError::Operation {
            index, op, error, ..
        } => {
            assert_eq!(*index, Some(1));
            assert_eq!(op, "op 1 (insert Bridge)");
            assert_eq!(error, "unknown column", "{err}");
        }
        other => panic!("{other:?}"),
    }

    // A unique-index clash is found at commit: reported beyond the operations.
    let br = ovs.add_bridge();
    let dup = te::unique_name("bd");
    let ins = |handle: &str| {
        vec![
            Op::insert_named(
                "Interface",
                json!({"name": format!("{dup}{handle}"), "type": "internal"}),
                "i",
            ),
            Op::insert_named(
                "Port",
                json!({"name": format!("{dup}{handle}"), "interfaces": datum::named_uuid("i")}),
                "p",
            ),
            Op::insert_named(
                "Bridge",
                json!({"name": br, "ports": datum::set([datum::named_uuid("p")])}),
                "b",
            ),
            Op::mutate(
                "Open_vSwitch",
                vec![],
                vec![Mutation::insert(
                    "bridges",
                    datum::set([datum::named_uuid("b")]),
                )],
            ),
        ]
    };
    let err = c.transact(DB, ins("x")).await.unwrap_err();
    assert!(err.is_constraint_violation(), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("identical values ({br})")),
        "{err}"
    );
    assert!(
        matches!(err, OvsdbError::Operation { index: None, .. }),
        "{err:?}"
    );
    assert_eq!(
        common::count(&ovs, "Port", &format!("name={dup}x")),
        0,
        "nothing committed"
    );
}

#[tokio::test]
async fn wait_operation_blocks_until_the_condition_holds() {
    let ovs = te::Ovs::start();
    let c = Client::connect(&ovs.db_url()).await.unwrap();
    let key = te::unique_name("k");
    let waiter = {
        let c = c.clone();
        let key = key.clone();
        tokio::spawn(async move {
            c.transact_timeout(
                DB,
                vec![Op::wait(
                    "Open_vSwitch",
                    vec![Cond::includes(
                        "external_ids",
                        datum::map([(key.as_str(), "go")]),
                    )],
                    &[],
                    Until::NotEqual,
                    vec![],
                    Some(Duration::from_secs(30)),
                )],
                Duration::from_secs(35),
            )
            .await
        })
    };
    // The same connection keeps serving other requests while the wait is parked.
    c.echo().await.unwrap();
    assert!(!waiter.is_finished());
    ovs.vsctl(&[
        "--no-wait",
        "set",
        "Open_vSwitch",
        ".",
        &format!("external_ids:{key}=go"),
    ]);
    waiter.await.unwrap().unwrap();

    // A wait with timeout 0 that does not hold fails at once with "timed out".
    let err = c
        .transact(
            DB,
            vec![Op::assert_present(
                "Bridge",
                vec![Cond::eq("name", te::unique_name("none").as_str())],
            )],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, OvsdbError::Operation { index: Some(0), ref error, .. } if error == "timed out"),
        "{err:?}"
    );
}

#[tokio::test]
async fn monitor_delivers_updates_until_cancelled() {
    let ovs = te::Ovs::start();
    let c = Client::connect(&ovs.db_url()).await.unwrap();
    let mut mon = c
        .monitor(
            DB,
            &[MonitorRequest::new("Bridge", &["name", "datapath_type"])],
        )
        .await
        .unwrap();
    assert!(mon.initial().rows().unwrap().is_empty(), "no bridge yet");

    let br = ovs.add_bridge();
    // add_bridge is an insert then a modify (datapath_type); collect until we see netdev.
    let mut seen_insert = false;
    loop {
        let u = tokio::time::timeout(Duration::from_secs(20), mon.next())
            .await
            .unwrap()
            .unwrap();
        for row in u.rows().unwrap() {
            assert_eq!(row.table, "Bridge");
            let new = row.new.expect("insert or modify");
            if row.old.is_none() {
                assert_eq!(new["name"], json!(br));
                seen_insert = true;
            }
            if new["datapath_type"] == json!("netdev") {
                assert!(seen_insert);
                let id = mon.id().to_string();
                mon.cancel().await.unwrap();
                // The server no longer knows the monitor.
                let err = c.call("monitor_cancel", json!([id])).await.unwrap_err();
                assert!(matches!(err, OvsdbError::Rpc { .. }), "{err:?}");
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_tasks_share_one_connection() {
    let ovs = te::Ovs::start();
    let c = Client::connect(&ovs.db_url()).await.unwrap();
    let prefix = te::unique_name("cc");
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let c = c.clone();
            let key = format!("{prefix}-{i}");
            tokio::spawn(async move {
                // Each reply must reach its own caller: every task reads back its own key.
                c.transact(
                    DB,
                    vec![Op::mutate(
                        "Open_vSwitch",
                        vec![],
                        vec![Mutation::insert(
                            "external_ids",
                            datum::map([(key.as_str(), i.to_string())]),
                        )],
                    )],
                )
                .await
                .unwrap();
                c.echo().await.unwrap();
                let r = c
                    .transact(
                        DB,
                        vec![Op::select(
                            "Open_vSwitch",
                            vec![Cond::includes(
                                "external_ids",
                                datum::map([(key.as_str(), i.to_string())]),
                            )],
                            &["_uuid"],
                        )],
                    )
                    .await
                    .unwrap();
                r[0].rows().unwrap().len()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 1);
    }
    for i in 0..20 {
        assert_eq!(
            common::get(
                &ovs,
                "Open_vSwitch",
                ".",
                &format!("external_ids:{prefix}-{i}")
            ),
            i.to_string()
        );
    }
}

#[tokio::test]
async fn answers_server_echo_probes_over_tcp() {
    let ovs = te::Ovs::start();
    let port = te::free_port();
    let target = format!("ptcp:{port}:127.0.0.1");
    // A Manager row makes ovsdb-server listen with a 1 s inactivity probe.
    ovs.vsctl(&["--no-wait", "set-manager", &target]);
    ovs.vsctl(&[
        "--no-wait",
        "set",
        "Manager",
        &target,
        "inactivity_probe=1000",
    ]);
    let ctl = ovs.dir().join("ovsdb.ctl");
    let out = std::process::Command::new("ovs-appctl")
        .arg("-t")
        .arg(&ctl)
        .args([
            "ovsdb-server/add-remote",
            "db:Open_vSwitch,Open_vSwitch,manager_options",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = format!("tcp:127.0.0.1:{port}");
    assert!(
        te::wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "ovsdb-server did not listen on {url}"
    );

    // Control: a client that never answers the probe is dropped by the server.
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut got = Vec::new();
    let _ = silent.read_to_end(&mut got);
    assert!(
        String::from_utf8_lossy(&got).contains("\"echo\""),
        "server probed: {got:?}"
    );

    let c = Client::connect(&url).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!c.is_closed());
    c.echo().await.unwrap();
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    let mut ovs = te::Ovs::start();
    let missing = format!("unix:{}/nope.sock", ovs.dir().display());
    let err = Client::connect(&missing).await.unwrap_err();
    assert!(
        matches!(err, OvsdbError::Unavailable(Unavailable::Connect { .. })),
        "{err:?}"
    );

    let port = te::free_port();
    let err = Client::connect(&format!("tcp:127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "refused: {err:?}");

    let err = Client::connect("http://x").await.unwrap_err();
    assert!(matches!(err, OvsdbError::BadAddress(_)) && !err.is_unavailable());

    // A request the server does not answer in time.
    let c = Client::connect_with(
        &ovs.db_url(),
        Options {
            request_timeout: Duration::from_millis(300),
            ..Options::default()
        },
    )
    .await
    .unwrap();
    let never = Op::wait(
        "Open_vSwitch",
        vec![Cond::includes(
            "external_ids",
            datum::map([("never", "set")]),
        )],
        &[],
        Until::NotEqual,
        vec![],
        None,
    );
    let err = c.transact(DB, vec![never]).await.unwrap_err();
    assert!(
        matches!(
            err,
            OvsdbError::Unavailable(Unavailable::Timeout {
                method: "transact",
                ..
            })
        ),
        "{err:?}"
    );
    c.echo()
        .await
        .expect("the connection survives a timed-out request");

    // Server gone under a live connection: pending and later requests fail the same way.
    let parked = {
        let c = c.clone();
        tokio::spawn(async move {
            c.transact_timeout(
                DB,
                vec![Op::wait(
                    "Open_vSwitch",
                    vec![Cond::includes(
                        "external_ids",
                        datum::map([("never", "set")]),
                    )],
                    &[],
                    Until::NotEqual,
                    vec![],
                    None,
                )],
                Duration::from_secs(60),
            )
            .await
        })
    };
    c.echo().await.unwrap();
    ovs.stop_db();
    let err = parked.await.unwrap().unwrap_err();
    assert!(
        matches!(err, OvsdbError::Unavailable(Unavailable::Closed { .. })),
        "{err:?}"
    );
    let err = c.echo().await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(c.is_closed());
    let err = Client::connect(&ovs.db_url()).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
}

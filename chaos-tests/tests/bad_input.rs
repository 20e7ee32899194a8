//! Bad input gets a clear error and loses nothing: malformed and oversized requests get
//! INVALID_ARGUMENT naming the field; a node whose RocksDB holds a damaged value refuses to
//! start and names what is damaged.

use std::time::Duration;

use authsec_api::v1;
use authsec_chaos_tests::{init_test_tracing, register_req, Cluster, Options};
use tonic::Code;

fn expect_invalid<T: std::fmt::Debug>(r: Result<T, tonic::Status>, field: &str) {
    let s = r.expect_err("request must be rejected");
    assert_eq!(s.code(), Code::InvalidArgument, "{field}: {s:?}");
    assert!(
        s.message().contains(field),
        "message names {field}: {}",
        s.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_rejected_naming_the_field() -> anyhow::Result<()> {
    init_test_tracing();
    let cluster = Cluster::start(1, Options::default())?;
    cluster.wait_leader(&[1], Duration::from_secs(30)).await?;
    let mut c = cluster.clients(1).await?;
    c.register_client(register_req("good")).await?;
    let head = cluster
        .wait_converged(&[1], 1, Duration::from_secs(10))
        .await?[0]
        .archive_head
        .clone();

    expect_invalid(
        c.register_client(register_req("bad id!")).await,
        "client_id",
    );
    expect_invalid(
        c.register_client(v1::RegisterClientRequest {
            kind: 0,
            ..register_req("k")
        })
        .await,
        "kind",
    );
    expect_invalid(
        c.register_client(v1::RegisterClientRequest {
            kind: 99,
            ..register_req("k")
        })
        .await,
        "kind",
    );
    expect_invalid(
        c.register_client(v1::RegisterClientRequest {
            allowed_scopes: vec!["nocolon".into()],
            ..register_req("s")
        })
        .await,
        "allowed_scopes",
    );
    expect_invalid(
        c.register_client(v1::RegisterClientRequest {
            display_name: "x".repeat(100_000),
            ..register_req("d")
        })
        .await,
        "display_name",
    );
    expect_invalid(
        c.register_client(v1::RegisterClientRequest {
            default_scopes: vec!["billing:read".into()],
            ..register_req("ds")
        })
        .await,
        "default scope",
    );
    expect_invalid(
        c.update_client(v1::UpdateClientRequest {
            client_id: "good".into(),
            ..Default::default()
        })
        .await,
        "update",
    );
    expect_invalid(
        c.list_clients(v1::ListClientsRequest {
            page_size: 5000,
            ..Default::default()
        })
        .await,
        "page_size",
    );
    expect_invalid(
        c.get_client(v1::GetClientRequest {
            client_id: "good".into(),
            consistency: 7,
        })
        .await,
        "consistency",
    );
    // A request over the 1 MiB message bound is refused by the transport before decoding.
    let huge = c
        .register_client(v1::RegisterClientRequest {
            description: "y".repeat(2 << 20),
            ..register_req("h")
        })
        .await
        .expect_err("oversized message");
    assert_eq!(
        huge.code(),
        Code::InvalidArgument,
        "oversized message: {huge:?}"
    );
    assert!(
        huge.message().contains("request"),
        "names the request: {}",
        huge.message()
    );
    println!(
        "oversized message (2 MiB): {:?}: {}",
        huge.code(),
        huge.message()
    );
    // Nothing was written and the node still serves.
    let after = cluster.status(1).await?;
    assert_eq!(after.archive_head, head, "no partial write");
    assert_eq!(
        c.get_client(v1::GetClientRequest {
            client_id: "good".into(),
            consistency: 1
        })
        .await?
        .into_inner()
        .client_id,
        "good"
    );
    Ok(())
}

const ALL_CFS: &[&str] = &[
    "raft_log",
    "raft_meta",
    "sm_meta",
    "archive",
    "proj_meta",
    "proj_nodes",
    "proj_clients",
    "sealed_secrets",
    "local_meta",
    "local_keys",
    "local_outbox",
    "proj_client_auth",
    "proj_entries",
    "proj_roles",
    "proj_bindings",
    "proj_delegations",
    "proj_agents",
    "proj_revocations",
    "proj_keys",
    "proj_federations",
];

/// Write some clients on a one-node cluster, stop it, damage one value, and start it again.
async fn start_with_damage(
    damage: impl FnOnce(&rocksdb::DB),
) -> anyhow::Result<(std::process::ExitStatus, String)> {
    let mut cluster = Cluster::start(1, Options::default())?;
    cluster.wait_leader(&[1], Duration::from_secs(30)).await?;
    let mut c = cluster.clients(1).await?;
    for i in 0..10 {
        c.register_client(register_req(&format!("client-{i:04}")))
            .await?;
    }
    drop(c);
    let st = cluster.stop(1)?;
    assert!(
        st.success(),
        "clean stop: {st:?}\n{}",
        cluster.log_tail(1, 20)
    );
    {
        let path = cluster.data_dir(1)?.join("db");
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, ALL_CFS)?;
        damage(&db);
        db.flush_wal(true)?;
    }
    cluster.spawn(1)?;
    let st = cluster.wait_exit(1, Duration::from_secs(30))?;
    Ok((st, cluster.log_tail(1, 10)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_projection_value_stops_the_node() -> anyhow::Result<()> {
    init_test_tracing();
    let (st, log) = start_with_damage(|db| {
        let cf = db.cf_handle("proj_clients").expect("cf");
        db.put_cf(cf, b"client-0003", b"\x01\x04garbage-not-a-client")
            .expect("put");
    })
    .await?;
    assert!(!st.success(), "the node must refuse to start");
    assert!(
        log.contains("proj_clients") && log.contains("client-0003"),
        "names the damage:\n{log}"
    );
    println!(
        "damaged projection: exit {st}; {}",
        log.lines().last().unwrap_or_default()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_archive_record_stops_the_node() -> anyhow::Result<()> {
    init_test_tracing();
    let (st, log) = start_with_damage(|db| {
        let cf = db.cf_handle("archive").expect("cf");
        let key = 5u64.to_be_bytes();
        let v = db.get_cf(cf, key).expect("get").expect("record 5 exists");
        db.put_cf(cf, key, &v[..v.len() / 2]).expect("put");
    })
    .await?;
    assert!(!st.success(), "the node must refuse to start");
    assert!(
        log.contains("archive") && log.contains("5 (0x0000000000000005)"),
        "names the damage:\n{log}"
    );
    println!(
        "truncated archive record: exit {st}; {}",
        log.lines().last().unwrap_or_default()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_raft_log_entry_stops_the_node() -> anyhow::Result<()> {
    init_test_tracing();
    let (st, log) = start_with_damage(|db| {
        let cf = db.cf_handle("raft_log").expect("cf");
        let (k, v) = db
            .iterator_cf(cf, rocksdb::IteratorMode::End)
            .next()
            .expect("the log has entries")
            .expect("read");
        db.put_cf(cf, &k, &v[..v.len() - 3]).expect("put");
    })
    .await?;
    assert!(!st.success(), "the node must refuse to start");
    assert!(log.contains("raft_log"), "names the damage:\n{log}");
    println!(
        "truncated raft log entry: exit {st}; {}",
        log.lines().last().unwrap_or_default()
    );
    Ok(())
}

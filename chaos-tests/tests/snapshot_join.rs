//! Snapshot: with a low snapshot threshold (every 100 entries; many writes share an entry), a fourth node added after 5,000 events receives a
//! snapshot (the log it would need is already compacted) and ends with the full archive, the
//! same digest and the same head hash. Its peak memory is reported.

use std::time::Duration;

use authsec_api::v1;
use authsec_chaos_tests::{init_test_tracing, peak_rss_kib, register_req, Cluster, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fourth_node_joins_through_a_snapshot() -> anyhow::Result<()> {
    init_test_tracing();
    let opts = Options {
        snapshot_logs_since_last: 100,
        max_in_snapshot_log_to_keep: 10,
        ..Options::default()
    };
    let mut cluster = Cluster::start(3, opts)?;
    let leader = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(30))
        .await?;
    tracing::info!(leader, "phase: leader elected");

    const EVENTS: usize = 5000;
    const CONCURRENCY: usize = 32;
    let mut tasks = Vec::new();
    for w in 0..CONCURRENCY {
        let mut c = cluster.clients(1 + (w as u64 % 3)).await?;
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < EVENTS {
                c.register_client(register_req(&format!("c{i:05}"))).await?;
                i += CONCURRENCY;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let before = cluster
        .wait_converged(&[1, 2, 3], EVENTS as u64, Duration::from_secs(60))
        .await?;
    let head = before[0].archive_head.clone().unwrap_or_default();
    tracing::info!(
        head = head.sequence,
        purged = before[0].purged_index,
        "phase: {EVENTS} events written"
    );
    assert!(
        before.iter().any(|s| s.purged_index > 0),
        "the leader compacted its log: {before:?}"
    );

    cluster.prepare(4, None)?;
    cluster.spawn(4)?;
    let addr4 = cluster.addr(4)?;
    // The new node answers status before it is a member.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while cluster.status(4).await.is_err() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "node 4 did not start: {}",
            cluster.log_tail(4, 20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leader = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(10))
        .await?;
    let mut c =
        v1::cluster_service_client::ClusterServiceClient::new(cluster.channel(leader).await?);
    let r = c
        .add_node(v1::AddNodeRequest {
            node_id: 4,
            addr: addr4,
            learner_only: false,
        })
        .await?
        .into_inner();
    assert!(
        r.members
            .iter()
            .any(|m| m.node_id == 4 && m.role == "voter"),
        "node 4 is a voter: {r:?}"
    );
    tracing::info!("phase: node 4 added as learner, then voter");
    // A new member publishes its signing keys: let it finish before comparing archives.
    cluster.wait_issuing(&[4], Duration::from_secs(60)).await?;

    let after = cluster
        .wait_converged(&[1, 2, 3, 4], head.sequence, Duration::from_secs(60))
        .await?;
    let s4 = after
        .iter()
        .find(|s| s.node_id == 4)
        .ok_or_else(|| anyhow::anyhow!("no status of node 4"))?;
    assert!(s4.snapshot_index > 0, "node 4 holds a snapshot: {s4:?}");
    let log4 = std::fs::read_to_string(&cluster.nodes[&4].log)?;
    assert!(
        log4.contains("snapshot installed"),
        "node 4 installed a snapshot"
    );
    let a1 = cluster.archive(1).await?;
    let a4 = cluster.archive(4).await?;
    assert_eq!(a1.len(), a4.len(), "node 4 has the whole archive");
    assert_eq!(a1, a4, "node 4's archive is identical, record for record");
    let pid = cluster.nodes[&4]
        .pid()
        .ok_or_else(|| anyhow::anyhow!("node 4 not running"))?;
    let peak = peak_rss_kib(pid).unwrap_or(0);
    println!(
        "node 4 joined after {} records through a snapshot at index {}; archive {} records identical; \
         digest {}; head #{} {}; node 4 peak RSS {} KiB",
        head.sequence,
        s4.snapshot_index,
        a4.len(),
        s4.projection_digest,
        s4.archive_head.as_ref().map_or(0, |h| h.sequence),
        s4.archive_head.as_ref().map_or("", |h| h.hash.as_str()),
        peak
    );

    // And out again: removing node 4 leaves three voters and an audit record of it.
    let leader = cluster
        .wait_leader(&[1, 2, 3, 4], Duration::from_secs(10))
        .await?;
    let mut c =
        v1::cluster_service_client::ClusterServiceClient::new(cluster.channel(leader).await?);
    let r = c
        .remove_node(v1::RemoveNodeRequest {
            node_id: 4,
            revoke_keys: false,
        })
        .await?
        .into_inner();
    let ids: Vec<u64> = r.members.iter().map(|m| m.node_id).collect();
    assert_eq!(ids, vec![1, 2, 3], "{r:?}");
    let records = cluster.records(leader).await?;
    let removal = records
        .iter()
        .rposition(|r| r.kind == "node.member_removed" && r.subject == "node:4")
        .ok_or_else(|| anyhow::anyhow!("node 4's removal was not recorded"))?;
    // In the same commit, the keys node 4 signed with leave the bundle; nothing else follows.
    let after: Vec<(&str, &str)> = records[removal + 1..]
        .iter()
        .map(|r| (r.kind.as_str(), r.subject.as_str()))
        .collect();
    assert!(
        after
            .iter()
            .all(|(k, s)| *k == "node_key.retired" && s.starts_with("node_key:n4-")),
        "the removal is the newest record but for node 4's keys retired: {after:?}"
    );
    println!(
        "node 4 removed; membership {ids:?}; record #{} is its removal, then {} of its keys retired",
        records[removal].sequence,
        after.len()
    );
    Ok(())
}

//! Three real node processes on loopback; 1,000 writes sent round-robin to all three are all
//! acknowledged and appear in the same order on every node, with identical projection digests
//! and archive head hashes.

use std::time::Duration;

use authsec_chaos_tests::{init_test_tracing, register_req, Cluster, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_writes_round_robin_converge() -> anyhow::Result<()> {
    init_test_tracing();
    let cluster = Cluster::start(3, Options::default())?;
    let leader = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(30))
        .await?;
    tracing::info!(leader, "phase: leader elected");

    // A follower's event feed in follow mode, opened before the writes: it must deliver every
    // record as it is committed, in order.
    let follower = (1..=3).find(|id| *id != leader).unwrap_or(1);
    let mut feed = authsec_api::v1::event_service_client::EventServiceClient::new(
        cluster.channel(follower).await?,
    )
    .feed(authsec_api::v1::FeedRequest {
        from_sequence: 1,
        follow: true,
    })
    .await?
    .into_inner();

    const WRITES: usize = 1000;
    const CONCURRENCY: usize = 24;
    let mut clients = Vec::new();
    for id in 1..=3 {
        clients.push(cluster.clients(id).await?);
    }
    let mut tasks = Vec::new();
    for w in 0..CONCURRENCY {
        let clients = clients.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = w;
            while i < WRITES {
                let mut c = clients[i % 3].clone();
                let id = format!("client-{i:04}");
                let r = c.register_client(register_req(&id)).await?.into_inner();
                // Read your writes: the node that took the write (often a follower) answers
                // with the client as it applied it.
                anyhow::ensure!(
                    r.client.as_ref().map(|c| c.client_id.as_str()) == Some(id.as_str()),
                    "registration of {id} answered without the client"
                );
                let receipt = r.receipt.ok_or_else(|| anyhow::anyhow!("no receipt"))?;
                anyhow::ensure!(
                    receipt.log_index > 0 && receipt.sequence_first > 0,
                    "receipt names index and sequence"
                );
                acked.push((id, receipt.sequence_first));
                i += CONCURRENCY;
            }
            Ok::<_, anyhow::Error>(acked)
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await??);
    }
    assert_eq!(acked.len(), WRITES, "every write acknowledged");
    tracing::info!("phase: {WRITES} writes acknowledged");

    let max_seq = acked.iter().map(|(_, s)| *s).max().unwrap_or(0);
    let status = cluster
        .wait_converged(&[1, 2, 3], max_seq, Duration::from_secs(30))
        .await?;
    for s in &status {
        tracing::info!(
            node = s.node_id,
            applied = s.applied_index,
            digest = %s.projection_digest,
            head = ?s.archive_head,
            "phase: converged"
        );
    }

    // The same records, in the same order, with the same hashes, on every node.
    let a1 = cluster.archive(1).await?;
    let mut followed = Vec::new();
    while followed.len() < a1.len() {
        let r = tokio::time::timeout(Duration::from_secs(10), feed.message())
            .await??
            .ok_or_else(|| anyhow::anyhow!("follow feed ended"))?;
        followed.push((r.sequence, r.hash, r.record_bytes));
    }
    assert_eq!(
        followed, a1,
        "the follow feed delivered every record, in order"
    );
    let a2 = cluster.archive(2).await?;
    let a3 = cluster.archive(3).await?;
    assert_eq!(a1, a2, "node 1 and node 2 archives differ");
    assert_eq!(a1, a3, "node 1 and node 3 archives differ");
    let seqs: Vec<u64> = a1.iter().map(|r| r.0).collect();
    assert_eq!(
        seqs,
        (1..=a1.len() as u64).collect::<Vec<_>>(),
        "sequences have no gaps"
    );
    // Each acknowledged write sits at the sequence its receipt named.
    for (id, seq) in &acked {
        let rec = authsec_domain_record(&a1[(*seq - 1) as usize].2);
        assert!(
            rec.contains(&format!("client:{id}")),
            "record {seq} is about {id}"
        );
    }
    // Every node serves health, readiness and Prometheus metrics.
    for id in 1..=3u64 {
        let http = &cluster.nodes[&id].http;
        assert_eq!(authsec_chaos_tests::http_get(http, "/healthz")?.0, 200);
        assert_eq!(authsec_chaos_tests::http_get(http, "/readyz")?.0, 200);
        let (code, metrics) = authsec_chaos_tests::http_get(http, "/metrics")?;
        assert_eq!(code, 200);
        assert!(
            metrics.contains(&format!(
                "authsec_archive_head_sequence{{node_id=\"{id}\"}} {}",
                a1.len()
            )),
            "{metrics}"
        );
    }
    println!(
        "{WRITES} writes acknowledged; archive of {} records identical on 3 nodes; digest {}; head {:?}",
        a1.len(),
        status[0].projection_digest,
        status[0].archive_head
    );
    Ok(())
}

/// The subject of a record, found in its bytes (the subject is stored as a plain string).
fn authsec_domain_record(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

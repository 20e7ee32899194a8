//! Durability: kill -9 of the leader during a stream of writes. A new leader is elected; after
//! the old leader restarts, every acknowledged write is present on all nodes and the restarted
//! node has caught up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use authsec_api::v1;
use authsec_chaos_tests::{init_test_tracing, register_req, Cluster, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_leader_kill() -> anyhow::Result<()> {
    init_test_tracing();
    let mut cluster = Cluster::start(3, Options::default())?;
    let old_leader = cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(30))
        .await?;
    tracing::info!(old_leader, "phase: leader elected");

    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let (acked, stop) = (acked.clone(), stop.clone());
        let addrs: Vec<String> = (1..=3)
            .map(|id| cluster.addr(id))
            .collect::<Result<_, _>>()?;
        let transport = cluster.client_transport()?;
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("w{w}-{n:05}");
                // Try nodes in turn; an error is an unacknowledged write, which may or may not
                // have committed, so it is not counted.
                let addr = &addrs[(n as usize + w as usize) % 3];
                let Ok(ch) = authsec_chaos_tests::channel(&transport, addr).await else {
                    continue;
                };
                let mut c = v1::client_service_client::ClientServiceClient::new(ch);
                let mut req = tonic::Request::new(register_req(&id));
                req.set_timeout(Duration::from_secs(15));
                if c.register_client(req).await.is_ok() {
                    acked
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .push(id);
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }

    let wait_acks = |n: usize, timeout: Duration| {
        let acked = acked.clone();
        async move {
            let deadline = Instant::now() + timeout;
            while acked.lock().map(|a| a.len()).unwrap_or(0) < n {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "fewer than {n} writes acknowledged in {timeout:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(())
        }
    };
    wait_acks(300, Duration::from_secs(60)).await?;
    let before_kill = acked.lock().map(|a| a.len()).unwrap_or(0);
    cluster.kill9(old_leader)?;
    tracing::info!(old_leader, before_kill, "phase: leader killed with kill -9");

    let survivors: Vec<u64> = (1..=3).filter(|id| *id != old_leader).collect();
    let new_leader = cluster
        .wait_leader(&survivors, Duration::from_secs(30))
        .await?;
    assert_ne!(new_leader, old_leader);
    wait_acks(before_kill + 300, Duration::from_secs(60)).await?;
    tracing::info!(new_leader, "phase: new leader elected and taking writes");

    cluster.spawn(old_leader)?;
    tracing::info!(old_leader, "phase: old leader restarted");
    wait_acks(before_kill + 500, Duration::from_secs(60)).await?;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await??;
    }
    let acked = acked
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();

    let status = cluster
        .wait_converged(&[1, 2, 3], 0, Duration::from_secs(60))
        .await?;
    // Every acknowledged write is on every node, read from that node's own projections.
    for id in 1..=3 {
        let mut found = 0usize;
        let all = cluster.client_ids(id).await?;
        for a in &acked {
            assert!(
                all.contains(a),
                "acknowledged write {a} missing on node {id}"
            );
            found += 1;
        }
        tracing::info!(
            node = id,
            found,
            total = all.len(),
            "phase: all acknowledged writes present"
        );
    }
    println!(
        "{} writes acknowledged ({} before kill -9 of leader {}); new leader {}; all present on 3 nodes; \
         applied index {} digest {} everywhere",
        acked.len(),
        before_kill,
        old_leader,
        new_leader,
        status[0].applied_index,
        status[0].projection_digest
    );
    Ok(())
}

//! Backup and restore with real processes: `authsec snapshot save` under write load, then
//! `authsec snapshot restore` into a fresh cluster that has the same digest and archive head
//! at the backup's index; and the documented recovery from losing quorum for good
//! (docs/deploy.md, "Losing quorum").

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use authsec_api::v1;
use authsec_chaos_tests::{authsec_bin, register_req, Cluster, Options};

const T: Duration = Duration::from_secs(60);

/// `authsec snapshot save` as an operator runs it; returns its JSON summary.
fn save(from: &Cluster, id: u64, file: &Path) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(authsec_bin()?)
        .args(["snapshot", "save"])
        .arg(file)
        .args(["--endpoint", &from.addr(id)?])
        .arg("--admin-dir")
        .arg(from.admin_dir())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "snapshot save failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("MiB"), "progress is shown: {stderr}");
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A new, empty harness cluster that shares `from`'s trust domain material (the KEK, the
/// root, the admin credential), as an operator restoring a backup has them.
fn empty_cluster_like(from: &Cluster, spare: u64) -> anyhow::Result<Cluster> {
    let c = Cluster::start(
        0,
        Options {
            spare,
            ..Options::default()
        },
    )?;
    std::fs::copy(from.kek_file(), c.kek_file())?;
    for sub in ["admin", "pki"] {
        let (src, dst) = (from.dir.path().join(sub), c.dir.path().join(sub));
        std::fs::create_dir_all(&dst)?;
        for e in std::fs::read_dir(&src)? {
            let e = e?;
            std::fs::copy(e.path(), dst.join(e.file_name()))?;
        }
    }
    Ok(c)
}

/// `authsec snapshot restore` into node `id`'s (empty) data directory, then start it.
fn restore_and_start(c: &mut Cluster, id: u64, file: &Path) -> anyhow::Result<serde_json::Value> {
    c.prepare(id, None)?;
    let cfg = c.nodes[&id].config.clone();
    let out = Command::new(authsec_bin()?)
        .args(["snapshot", "restore"])
        .arg(file)
        .arg("--config")
        .arg(&cfg)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "snapshot restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let v: serde_json::Value = serde_json::from_str(&line).context("restore's summary")?;
    c.members.insert(id);
    c.spawn(id)?;
    Ok(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_with_the_same_digest_and_head() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    let c = Cluster::start(3, Options::default())?;
    c.wait_leader(&[1, 2, 3], T).await?;
    // The nodes publish their signing keys through the log as they start: let that settle,
    // so the digests compared below are not racing it.
    c.wait_issuing(&[1, 2, 3], T).await?;
    let transport = c.client_transport()?;
    let addrs: Vec<String> = (1..=3).map(|id| c.addr(id)).collect::<Result<_, _>>()?;
    let (stop, acked) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut writers = Vec::new();
    for w in 0..4usize {
        let (stop, acked, addrs, transport) = (
            stop.clone(),
            acked.clone(),
            addrs.clone(),
            transport.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let ch = transport.channel(&addrs[(n + w) % 3]).expect("channel");
                let mut req = tonic::Request::new(register_req(&format!("b-w{w}-{n:06}")));
                req.set_timeout(Duration::from_secs(10));
                if v1::client_service_client::ClientServiceClient::new(ch)
                    .register_client(req)
                    .await
                    .is_ok()
                {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Under load: wait for some writes, back up from a follower, let the load go on.
    let deadline = Instant::now() + T;
    while acked.load(Ordering::Relaxed) < 300 {
        anyhow::ensure!(Instant::now() < deadline, "the load did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leader = c.wait_leader(&[1, 2, 3], T).await?;
    let follower = (1..=3).find(|i| *i != leader).unwrap_or(2);
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("authsec.snap");
    let info = save(&c, follower, &file)?;
    let during = acked.load(Ordering::Relaxed);
    while acked.load(Ordering::Relaxed) < during + 200 {
        anyhow::ensure!(Instant::now() < deadline + T, "the load stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await?;
    }
    let index = info["last_log_index"].as_u64().context("index")?;
    let head_seq = info["archive_head"]["sequence"].as_u64().context("head")?;
    assert!(
        head_seq > 300,
        "the backup holds the writes so far ({head_seq})"
    );

    // A fresh cluster from the backup.
    let mut fresh = empty_cluster_like(&c, 3)?;
    let restored = restore_and_start(&mut fresh, 1, &file)?;
    println!("backup under load: {info}");
    println!("restored: {restored}");
    assert_eq!(restored["last_log_index"].as_u64(), Some(index));
    // Restored exactly: the restore reports the backup's digest and head.
    assert_eq!(
        restored["projection_digest"], info["projection_digest"],
        "the restored node has the backup's digest"
    );
    assert_eq!(restored["archive_head"], info["archive_head"]);
    fresh.wait_leader(&[1], T).await?;
    // Started, the node goes on from there: the archive keeps the backup's records (same
    // hashes), and what follows is only its own new signing keys (it holds none of the
    // backed-up node's private keys).
    fresh.wait_issuing(&[1], T).await?;
    let s = fresh.status(1).await?;
    let recs = fresh.records(1).await?;
    let at = recs
        .iter()
        .find(|r| r.sequence == head_seq)
        .context("the backup's head record")?;
    assert_eq!(
        at.hash,
        info["archive_head"]["hash"].as_str().unwrap_or_default()
    );
    let after: Vec<&str> = recs
        .iter()
        .filter(|r| r.sequence > head_seq)
        .map(|r| r.kind.as_str())
        .collect();
    assert!(
        after.iter().all(|k| k.starts_with("node_key.")),
        "only key records follow the backup: {after:?}"
    );
    let h = s.archive_head.clone().unwrap_or_default();
    assert!(
        s.applied_index >= index,
        "the new cluster goes on from the backup's index"
    );
    println!(
        "fresh cluster: applied {}, digest {}, head #{} {}; {} writes acknowledged during the run",
        s.applied_index,
        s.projection_digest,
        h.sequence,
        h.hash,
        acked.load(Ordering::Relaxed)
    );
    // The restored archive is the original's, record for record, up to the backup's head.
    let original = c.archive(leader).await?;
    let copy = fresh.archive(1).await?;
    let copy = &copy[..head_seq as usize];
    assert_eq!(&original[..copy.len()], copy, "the same records and hashes");
    // And the new cluster grows and takes writes.
    fresh.join(1, 2, T).await?;
    fresh
        .clients(2)
        .await?
        .register_client(register_req("after-restore"))
        .await?;
    fresh.wait_converged(&[1, 2], head_seq + 1, T).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_quorum_for_good_is_recovered_from_the_survivor() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    let mut c = Cluster::start(3, Options::default())?;
    c.wait_leader(&[1, 2, 3], T).await?;
    // Key publications settle first: the digest taken below must be the survivor's last.
    c.wait_issuing(&[1, 2, 3], T).await?;
    for i in 0..50 {
        c.clients(1 + i % 3)
            .await?
            .register_client(register_req(&format!("q-{i}")))
            .await?;
    }
    let before = c.wait_converged(&[1, 2, 3], 50, T).await?;
    // Step 1: two of three nodes are gone for good.
    c.kill9(2)?;
    c.kill9(3)?;
    // The survivor cannot commit: a write is refused or times out.
    let mut req = tonic::Request::new(register_req("no-quorum"));
    req.set_timeout(Duration::from_secs(3));
    assert!(
        c.clients(1).await?.register_client(req).await.is_err(),
        "no quorum, no write"
    );
    // Step 2: back up the survivor (no quorum needed).
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("survivor.snap");
    let info = save(&c, 1, &file)?;
    assert_eq!(
        info["projection_digest"].as_str().unwrap_or_default(),
        before[0].projection_digest
    );
    // Step 3: stop it; restore the backup as the first node of a new cluster.
    c.stop(1)?;
    let mut fresh = empty_cluster_like(&c, 3)?;
    restore_and_start(&mut fresh, 1, &file)?;
    fresh.wait_leader(&[1], T).await?;
    // Step 4: two new nodes join with tokens.
    fresh.join(1, 2, T).await?;
    fresh.join(1, 3, T).await?;
    // Step 5: the cluster writes again, and every acknowledged write of the old one is there.
    fresh
        .clients(3)
        .await?
        .register_client(register_req("after-recovery"))
        .await?;
    let head = before[0].archive_head.clone().unwrap_or_default().sequence;
    fresh.wait_converged(&[1, 2, 3], head + 1, T).await?;
    let ids = fresh.client_ids(2).await?;
    for i in 0..50 {
        assert!(ids.contains(&format!("q-{i}")), "q-{i} survived");
    }
    assert!(ids.contains("after-recovery"));
    Ok(())
}

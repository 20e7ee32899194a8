//! `authsec-onboard-bench`: onboard many AI agents (each a client, a generated secret and a
//! workload entry in one committed command) through the admin API of a three-node cluster over
//! mutual TLS, and record the committed rate, node memory and snapshot size. The baseline, in
//! the same run and on the same cluster, is the plain client registration (no secret, no
//! entry) at the same concurrency.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use authsec_api::v1;
use authsec_chaos_tests::{register_req, Cluster, Options};
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// The authsec binary.
    #[arg(long)]
    authsec: PathBuf,
    /// AI agents to onboard.
    #[arg(long, default_value_t = 100_000)]
    clients: u64,
    /// Plain registrations for the baseline.
    #[arg(long, default_value_t = 10_000)]
    baseline: u64,
    /// Concurrent callers, spread round-robin over the three nodes.
    #[arg(long, default_value_t = 64)]
    writers: u64,
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[derive(Debug)]
struct Run {
    done: u64,
    errors: u64,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `total` calls of `op(n)` from `writers` loops; each loop takes the next number.
async fn drive<F, Fut>(total: u64, writers: u64, op: F) -> Run
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (op, next, errors) = (op.clone(), next.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return lat;
                }
                let t = Instant::now();
                match op(n).await {
                    Ok(()) => lat.push(t.elapsed()),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("call {n} failed: {e:#}");
                        }
                    }
                }
            }
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap_or_default());
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i].as_secs_f64() * 1000.0
    };
    Run {
        done: lat.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        secs,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::env::set_var("AUTHSEC_BIN", &args.authsec);
    let mut cluster = Cluster::start(
        3,
        Options {
            snapshot_logs_since_last: 20_000,
            max_in_snapshot_log_to_keep: 1000,
            ..Options::default()
        },
    )?;
    cluster
        .wait_leader(&[1, 2, 3], Duration::from_secs(30))
        .await?;
    let pids: Vec<u32> = (1..=3)
        .filter_map(|id| cluster.node_mut(id).and_then(|n| n.pid()))
        .collect();
    let mut clients = Vec::new();
    for id in 1..=3 {
        clients.push(v1::client_service_client::ClientServiceClient::new(
            cluster.channel(id).await?,
        ));
    }
    let clients = Arc::new(clients);

    let c = clients.clone();
    let base = drive(args.baseline, args.writers, move |n| {
        let mut c = c[(n % 3) as usize].clone();
        async move {
            c.register_client(register_req(&format!("plain-{n}")))
                .await?;
            Ok(())
        }
    })
    .await;
    eprintln!("baseline: {base:?}");
    let rss_before: Vec<u64> = pids.iter().map(|p| rss_kib(*p, "VmRSS:")).collect();

    let c = clients.clone();
    let onboard = drive(args.clients, args.writers, move |n| {
        let mut c = c[(n % 3) as usize].clone();
        async move {
            let r = c
                .create_client(v1::CreateClientRequest {
                    client_id: format!("agent-{n:06}"),
                    kind: v1::ClientKind::AiAgent as i32,
                    owner: "bench".into(),
                    allowed_scopes: vec!["orders:*".into()],
                    generate_secret: true,
                    ..Default::default()
                })
                .await?
                .into_inner();
            anyhow::ensure!(r.entry.is_some() && !r.client_secret.is_empty());
            Ok(())
        }
    })
    .await;
    eprintln!("onboarding: {onboard:?}");
    cluster
        .wait_converged(&[1, 2, 3], 0, Duration::from_secs(120))
        .await?;

    // A snapshot as `authsec snapshot save` streams it.
    let mut stream =
        v1::cluster_service_client::ClusterServiceClient::new(cluster.channel(1).await?)
            .max_decoding_message_size(8 << 20)
            .save_snapshot(v1::SaveSnapshotRequest {})
            .await?
            .into_inner();
    let (mut snap_bytes, mut snap_index) = (0u64, 0u64);
    while let Some(chunk) = stream.message().await? {
        snap_bytes += chunk.data.len() as u64;
        if let Some(i) = chunk.info {
            snap_index = i.last_log_index;
        }
    }
    let rss_after: Vec<u64> = pids.iter().map(|p| rss_kib(*p, "VmRSS:")).collect();
    let peak: Vec<u64> = pids.iter().map(|p| rss_kib(*p, "VmHWM:")).collect();

    let rate = |r: &Run| r.done as f64 / r.secs;
    println!("| run | calls | errors | seconds | committed/s | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, r) in [
        ("baseline: plain client registration", &base),
        ("onboarding: ai_agent client + secret + entry", &onboard),
    ] {
        println!(
            "| {name} | {} | {} | {:.1} | {:.0} | {:.2} | {:.2} |",
            r.done,
            r.errors,
            r.secs,
            rate(r),
            r.p50_ms,
            r.p99_ms
        );
    }
    println!();
    println!(
        "onboarding/baseline committed-rate ratio: {:.2}x ({} writers, round-robin over 3 nodes)",
        rate(&onboard) / rate(&base).max(1e-9),
        args.writers
    );
    for (i, pid) in pids.iter().enumerate() {
        println!(
            "node {} (pid {pid}): RSS {} MiB before onboarding, {} MiB after, peak {} MiB",
            i + 1,
            rss_before[i] / 1024,
            rss_after[i] / 1024,
            peak[i] / 1024
        );
    }
    println!(
        "snapshot (node 1, at log index {snap_index}): {:.1} MiB for {} clients and {} entries",
        snap_bytes as f64 / (1 << 20) as f64,
        base.done + onboard.done,
        onboard.done
    );
    Ok(())
}

//! `authsec-bench`: committed writes per second and commit latency of a three-node authsec
//! cluster (fsync on) beside a three-member etcd cluster, both driven by this same load
//! generator over gRPC with the same value size, concurrency and (plaintext) transport.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use authsec_api::v1;
use authsec_chaos_tests::{free_port, register_req, Cluster, Options};
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// The authsec binary.
    #[arg(long)]
    authsec: PathBuf,
    /// The etcd binary (Debian's etcd-server).
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// Seconds of load per concurrency level.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,16,128")]
    writers: Vec<usize>,
    /// Send authsec writes only to the leader instead of round-robin to every node (shows
    /// what forwarding costs; etcd is always driven through all its members).
    #[arg(long)]
    leader_only: bool,
    /// Skip etcd (authsec figures only).
    #[arg(long)]
    skip_etcd: bool,
    /// Bytes of payload per write.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
}

#[derive(Debug, Clone)]
struct Figures {
    writes: usize,
    errors: usize,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn figures(mut lat: Vec<Duration>, errors: usize, elapsed: Duration) -> Figures {
    lat.sort();
    let pct = |p: f64| {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i].as_secs_f64() * 1000.0
    };
    Figures {
        writes: lat.len(),
        errors,
        per_sec: lat.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    }
}

/// Run `writers` loops for `seconds`, each calling `op(writer, n)`; collect latencies.
async fn drive<F, Fut>(writers: usize, seconds: u64, op: F) -> Figures
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            let mut n = 0u64;
            while Instant::now() < end {
                n += 1;
                let t = Instant::now();
                match op(w, n).await {
                    Ok(()) => lat.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            lat.extend(l);
            errors += e;
        }
    }
    figures(lat, errors, start.elapsed())
}

struct Etcd {
    children: Vec<Child>,
    endpoints: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_etcd(bin: &PathBuf) -> anyhow::Result<Etcd> {
    let dir = tempfile::Builder::new().prefix("etcd-bench-").tempdir()?;
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<anyhow::Result<_>>()?;
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    let mut endpoints = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let log = std::fs::File::create(dir.path().join(format!("e{i}.log")))?;
        let child = Command::new(bin)
            .args(["--name", &format!("e{i}")])
            .args([
                "--data-dir",
                &dir.path().join(format!("e{i}")).display().to_string(),
            ])
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-cluster",
                &cluster,
                "--initial-cluster-state",
                "new",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        children.push(child);
        endpoints.push(format!("127.0.0.1:{client}"));
    }
    Ok(Etcd {
        children,
        endpoints,
        _dir: dir,
    })
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::env::set_var("AUTHSEC_BIN", &args.authsec);
    let pad = "v".repeat(args.value_size);
    let mut rows = Vec::new();

    // authsec
    {
        let cluster = Cluster::start(
            3,
            Options {
                snapshot_logs_since_last: 100_000,
                max_in_snapshot_log_to_keep: 1000,
                ..Options::default()
            },
        )?;
        cluster
            .wait_leader(&[1, 2, 3], Duration::from_secs(30))
            .await?;
        let mut clients = Vec::new();
        for id in 1..=3 {
            clients.push(v1::client_service_client::ClientServiceClient::new(
                cluster.channel(id).await?,
            ));
        }
        let clients = Arc::new(clients);
        for (round, &w) in args.writers.iter().enumerate() {
            let (clients, pad) = (clients.clone(), pad.clone());
            let f = drive(w, args.seconds, move |writer, n| {
                let mut c = clients[(writer + n as usize) % 3].clone();
                let mut req = register_req(&format!("r{round}-w{writer}-{n}"));
                req.display_name = pad.clone();
                async move {
                    c.register_client(req).await?;
                    Ok(())
                }
            })
            .await;
            eprintln!("authsec writers={w}: {f:?}");
            rows.push(("authsec", w, f));
        }
    }

    // etcd
    if !args.skip_etcd {
        let etcd = start_etcd(&args.etcd)?;
        let client = {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(mut c) = etcd_client::Client::connect(etcd.endpoints.clone(), None).await
                {
                    if c.put("warmup", "x", None).await.is_ok() {
                        break c;
                    }
                }
                anyhow::ensure!(Instant::now() < deadline, "etcd did not come up");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        for (round, &w) in args.writers.iter().enumerate() {
            let (client, pad) = (client.clone(), pad.clone());
            let f = drive(w, args.seconds, move |writer, n| {
                let mut kv = client.kv_client();
                let key = format!("r{round}-w{writer}-{n}");
                let value = pad.clone();
                async move {
                    kv.put(key, value, None).await?;
                    Ok(())
                }
            })
            .await;
            eprintln!("etcd writers={w}: {f:?}");
            rows.push(("etcd 3.4", w, f));
        }
    }

    println!("| system | writers | writes/s | p50 ms | p99 ms | writes | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (sys, w, f) in &rows {
        println!(
            "| {sys} | {w} | {:.0} | {:.2} | {:.2} | {} | {} |",
            f.per_sec, f.p50_ms, f.p99_ms, f.writes, f.errors
        );
    }
    println!();
    for &w in &args.writers {
        let a = rows.iter().find(|r| r.0 == "authsec" && r.1 == w);
        let e = rows.iter().find(|r| r.0 != "authsec" && r.1 == w);
        if let (Some(a), Some(e)) = (a, e) {
            println!(
                "writers={w}: authsec/etcd throughput ratio {:.2}x",
                a.2.per_sec / e.2.per_sec.max(1e-9)
            );
        }
    }
    Ok(())
}

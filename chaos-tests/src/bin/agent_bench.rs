//! `authsec-agent-bench`: issue 8's figures, from real processes on loopback.
//!
//! - the agent's memory with `--entries` entries synced and their X.509-SVIDs minted;
//! - the time from an entry's creation (its acknowledgement) to its SVID reaching a workload
//!   that holds a FetchX509SVID stream open, p50 and p99;
//! - FetchJWTSVID served from the agent's cache, calls per second;
//! - the SDK's token verification on one core, ES256 and EdDSA, against `openssl speed`'s
//!   verify ceiling in the same run.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use authsec_api::v1;
use authsec_api::workload as w;
use authsec_chaos_tests::{AgentProc, Cluster, Options, TRUST_DOMAIN};
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// Entries the agent serves for the memory figure.
    #[arg(long, default_value_t = 1000)]
    entries: usize,
    /// Entry-to-SVID samples.
    #[arg(long, default_value_t = 100)]
    samples: usize,
    /// Seconds of FetchJWTSVID load, and of verification per algorithm.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent FetchJWTSVID callers.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Distinct tokens cycled through by the verification figure.
    #[arg(long, default_value_t = 2000)]
    tokens: usize,
}

fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    r
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// `openssl speed`'s verify/s for one algorithm on one core.
fn openssl_verify_per_s(alg: &str, seconds: u64) -> anyhow::Result<f64> {
    let out = std::process::Command::new("openssl")
        .args(["speed", "-seconds", &seconds.to_string(), alg])
        .output()
        .context("run openssl speed")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The table's last line for the algorithm: "... sign/s verify/s".
    let line = text
        .lines()
        .rev()
        .find(|l| {
            let l = l.to_ascii_lowercase();
            (alg == "ecdsap256" && l.contains("nistp256"))
                || (alg == "ed25519" && l.contains("ed25519"))
        })
        .with_context(|| format!("no result line for {alg} in: {text}"))?;
    let v: f64 = line
        .split_whitespace()
        .last()
        .and_then(|x| x.parse().ok())
        .with_context(|| format!("no verify/s in {line:?}"))?;
    Ok(v)
}

/// The SDK verifier's verifications per second on this thread (one core), cycling through
/// `tokens` distinct tokens with the verified-token cache off.
async fn sdk_verify_rate(
    c: &Cluster,
    client: &str,
    secret: &str,
    n: usize,
    seconds: u64,
) -> anyhow::Result<f64> {
    use authsec_sdk::verify::{KeySource, Verifier, VerifierConfig};
    let h = c.https()?;
    let addr = c.oauth_addr(1)?;
    let mut tokens = Vec::with_capacity(n);
    for _ in 0..n {
        let r = h
            .client_credentials(&addr, client, secret, &[("resource", "https://bench.test")])
            .await?;
        anyhow::ensure!(r.status == 200, "token: {r:?}");
        tokens.push(r.json()?["access_token"].as_str().unwrap_or("").to_owned());
    }
    let tls = {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from_pem_file(
            c.admin_dir().join("ca.crt"),
        )?)?;
        let mut t = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        t.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(t)
    };
    let mut cfg = VerifierConfig::new(
        authsec_chaos_tests::OAUTH_ISSUER,
        "https://bench.test",
        KeySource::Jwks {
            uris: vec![format!("https://{addr}/.well-known/jwks.json")],
            tls,
        },
    );
    cfg.cache_entries_max = 0;
    let v = Verifier::new(cfg, None)?;
    for t in &tokens {
        v.verify(t, None)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let start = Instant::now();
    let mut done = 0u64;
    'outer: loop {
        for t in &tokens {
            v.verify(t, None)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            done += 1;
            if done.is_multiple_of(256) && start.elapsed() >= Duration::from_secs(seconds) {
                break 'outer;
            }
        }
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

async fn verify_figures(args: &Args) -> anyhow::Result<Vec<(String, f64, f64)>> {
    let mut out = Vec::new();
    for (alg, openssl) in [("ES256", "ecdsap256"), ("EdDSA", "ed25519")] {
        let c = Cluster::start(
            1,
            Options {
                oauth_extra: format!("alg = {alg:?}"),
                ..Options::default()
            },
        )?;
        c.wait_issuing(&[1], Duration::from_secs(30)).await?;
        let secret = authsec_chaos_tests::oauth::Admin(&c)
            .client(v1::CreateClientRequest {
                client_id: "bench".into(),
                kind: v1::ClientKind::Service as i32,
                ..Default::default()
            })
            .await?;
        let sdk = sdk_verify_rate(&c, "bench", &secret, args.tokens, args.seconds).await?;
        let ceiling = openssl_verify_per_s(openssl, args.seconds.max(2))?;
        out.push((alg.to_owned(), sdk, ceiling));
    }
    Ok(out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let c = Cluster::start(
        3,
        Options {
            extra_toml: "[agents]\nheartbeat_s = 5\n".into(),
            ..Options::default()
        },
    )?;
    c.wait_issuing(&[1, 2, 3], Duration::from_secs(30)).await?;
    let t = v1::agent_service_client::AgentServiceClient::new(c.channel(1).await?)
        .create_join_token(v1::CreateAgentTokenRequest {
            ttl_seconds: 600,
            name: "bench".into(),
        })
        .await?
        .into_inner();
    let dir = tempfile::tempdir()?;
    let mut agent = AgentProc::spawn(&c, dir.path(), &[1, 2, 3], &t.token)?;
    agent.wait_serving(Duration::from_secs(30))?;
    let agent_pid = agent
        .child
        .as_ref()
        .map(std::process::Child::id)
        .context("agent pid")?;
    let base_rss = rss_kib(agent_pid, "VmRSS:").unwrap_or(0);

    // Memory: `entries` entries (another binary's path: minted, not served to us).
    let uid_sel = format!("unix:uid:{}", authsec_chaos_tests::current_uid());
    let made = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for k in 0..16 {
        let ch = c.channel(1 + (k % 3) as u64).await?;
        let (made, parent, uid_sel, n) = (
            made.clone(),
            t.agent_id.clone(),
            uid_sel.clone(),
            args.entries,
        );
        tasks.push(tokio::spawn(async move {
            let mut cl = v1::entry_service_client::EntryServiceClient::new(ch);
            let mut i = k;
            while i < n {
                cl.create_entry(v1::CreateEntryRequest {
                    spiffe_id: format!("spiffe://{TRUST_DOMAIN}/bench/e{i}"),
                    parent_id: parent.clone(),
                    selectors: vec![uid_sel.clone(), format!("unix:path:/opt/bench/w{i}")],
                    ..Default::default()
                })
                .await?;
                made.fetch_add(1, Ordering::Relaxed);
                i += 16;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    // Wait until the agent minted an SVID for every entry (its log counts them).
    let deadline = Instant::now() + Duration::from_secs(120);
    let minted = loop {
        let text = std::fs::read_to_string(&agent.log)?;
        let n: usize = text
            .lines()
            .filter(|l| l.contains("X.509-SVIDs rotated"))
            .filter_map(|l| {
                let i = l.rfind("svids")?;
                l[i..]
                    .chars()
                    .skip_while(|c| !c.is_ascii_digit())
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse::<usize>()
                    .ok()
            })
            .sum();
        if n >= args.entries {
            break n;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the agent minted {n} of {} SVIDs",
            args.entries
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rss = rss_kib(agent_pid, "VmRSS:").unwrap_or(0);
    let hwm = rss_kib(agent_pid, "VmHWM:").unwrap_or(0);

    // This process as a workload, and a stream it keeps open.
    let me = std::env::current_exe()?;
    let self_id = format!("spiffe://{TRUST_DOMAIN}/bench/self");
    let mut entries = v1::entry_service_client::EntryServiceClient::new(c.channel(1).await?);
    let sel = vec![uid_sel.clone(), format!("unix:path:{}", me.display())];
    entries
        .create_entry(v1::CreateEntryRequest {
            spiffe_id: self_id.clone(),
            parent_id: t.agent_id.clone(),
            selectors: sel.clone(),
            ..Default::default()
        })
        .await?;
    let ch = authsec_chaos_tests::unix_channel(&agent.socket).await?;
    let mut wl = w::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(ch.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stream = loop {
        match wl.fetch_x509svid(with_header(w::X509svidRequest {})).await {
            Ok(s) => break s.into_inner(),
            Err(e) => {
                anyhow::ensure!(Instant::now() < deadline, "no SVID for the bench: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    // Entry creation (acknowledged) to the SVID in the workload's stream.
    let mut lat = Vec::with_capacity(args.samples);
    for i in 0..args.samples {
        let id = format!("spiffe://{TRUST_DOMAIN}/bench/lat{i}");
        entries
            .create_entry(v1::CreateEntryRequest {
                spiffe_id: id.clone(),
                parent_id: t.agent_id.clone(),
                selectors: sel.clone(),
                ..Default::default()
            })
            .await?;
        let acked = Instant::now();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), stream.message())
                .await
                .context("no update within 30 s")??
                .context("stream ended")?;
            let ids: BTreeSet<&str> = m.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
            if ids.contains(id.as_str()) {
                break;
            }
        }
        lat.push(acked.elapsed().as_secs_f64() * 1000.0);
    }

    // FetchJWTSVID from the cache.
    let calls = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(args.seconds);
    let mut first = wl.clone();
    first
        .fetch_jwtsvid(with_header(w::JwtsvidRequest {
            audience: vec!["bench".into()],
            spiffe_id: self_id.clone(),
        }))
        .await?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (mut cl, calls, self_id) = (wl.clone(), calls.clone(), self_id.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop {
                cl.fetch_jwtsvid(with_header(w::JwtsvidRequest {
                    audience: vec!["bench".into()],
                    spiffe_id: self_id.clone(),
                }))
                .await?;
                calls.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let jwt_rate = calls.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    drop(stream);
    drop(agent);
    drop(c);

    let verify = verify_figures(&args).await?;

    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| agent RSS with {} entries and their X.509-SVIDs ({minted} minted) | {:.1} MiB (peak {:.1} MiB; {:.1} MiB at start) |",
        args.entries,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        base_rss as f64 / 1024.0
    );
    let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    println!(
        "| entry created (acknowledged) to its SVID in the workload's stream, {} samples | p50 {p50:.1} ms, p99 {p99:.1} ms |",
        args.samples
    );
    println!(
        "| FetchJWTSVID from the agent's cache, {} concurrent callers | {jwt_rate:.0} calls/s |",
        args.concurrency
    );
    for (alg, sdk, ceiling) in verify {
        println!(
            "| SDK token verification, {alg}, one core | {sdk:.0}/s = {:.0}% of openssl speed's {ceiling:.0} verify/s |",
            100.0 * sdk / ceiling
        );
    }
    Ok(())
}

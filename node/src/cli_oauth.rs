//! `authsec oauth bench`: a load generator for OAuth token endpoints (ours or any other), the
//! same one for every server a benchmark compares. HTTP/1.1 keep-alive over TLS, many
//! connections, each sending the same form request back to back.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls::pki_types::{CertificateDer, ServerName};

#[derive(Debug, clap::Subcommand)]
pub enum OauthCmd {
    /// Token requests per second against one or more token endpoints (spread round robin
    /// over the connections), with latency percentiles; JSON on stdout.
    Bench(BenchArgs),
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Token endpoint URL(s), https://host:port/path (repeatable).
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    /// PEM roots to trust for the servers.
    #[arg(long)]
    pub cacert: PathBuf,
    /// client_secret_basic credentials, id:secret.
    #[arg(long)]
    pub basic: String,
    /// The form body of each request.
    #[arg(long, default_value = "grant_type=client_credentials")]
    pub form: String,
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Requests sent before measuring (warms both sides).
    #[arg(long, default_value_t = 2)]
    pub warmup_seconds: u64,
}

pub async fn run(c: OauthCmd) -> anyhow::Result<()> {
    match c {
        OauthCmd::Bench(a) => bench(a).await,
    }
}

struct Target {
    host: String,
    port: u16,
    path: String,
}

fn target(url: &str) -> anyhow::Result<Target> {
    let rest = url
        .strip_prefix("https://")
        .context("the URL must be https://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = authority
        .rsplit_once(':')
        .context("the URL needs host:port")?;
    Ok(Target {
        host: host.to_owned(),
        port: port.parse().context("port")?,
        path: if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
    })
}

async fn bench(a: BenchArgs) -> anyhow::Result<()> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&a.cacert)
        .with_context(|| format!("read {}", a.cacert.display()))?
    {
        roots.add(c?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(authsec_raft::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let config = Arc::new(config);
    let targets: Vec<Arc<Target>> = a
        .urls
        .iter()
        .map(|u| target(u).map(Arc::new))
        .collect::<Result<_, _>>()?;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(&a.basic)
    );
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let first_failure = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut tasks = Vec::new();
    for i in 0..a.connections {
        let t = targets[i % targets.len()].clone();
        let (config, auth, form) = (config.clone(), auth.clone(), a.form.clone());
        let (measuring, stop, failures) = (measuring.clone(), stop.clone(), failures.clone());
        let first_failure = first_failure.clone();
        let note = move |why: String| {
            first_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(why);
        };
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let conn = async {
                    let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port)).await?;
                    tcp.set_nodelay(true)?;
                    let name = ServerName::try_from(t.host.clone())?;
                    let tls = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name, tcp)
                        .await?;
                    let (sender, driver) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                            .await?;
                    tokio::spawn(driver);
                    anyhow::Ok(sender)
                };
                let mut sender = match conn.await {
                    Ok(s) => s,
                    Err(e) => {
                        note(format!("connect: {e:#}"));
                        failures.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                while !stop.load(Ordering::Relaxed) {
                    let req = hyper::Request::post(&t.path)
                        .header("host", format!("{}:{}", t.host, t.port))
                        .header("authorization", &auth)
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(Full::new(Bytes::from(form.clone())))
                        .expect("a valid request");
                    let started = Instant::now();
                    let ok = match sender.send_request(req).await {
                        Ok(resp) => {
                            let status = resp.status();
                            match resp.into_body().collect().await {
                                Ok(b) => {
                                    let b = b.to_bytes();
                                    let ok = status.is_success()
                                        && b.windows(12).any(|w| w == b"access_token");
                                    if !ok {
                                        note(format!(
                                            "{status}: {}",
                                            String::from_utf8_lossy(&b[..b.len().min(300)])
                                        ));
                                    }
                                    ok
                                }
                                Err(e) => {
                                    note(format!("body: {e}"));
                                    false
                                }
                            }
                        }
                        Err(e) => {
                            note(format!("request: {e}"));
                            false
                        }
                    };
                    if measuring.load(Ordering::Relaxed) {
                        if ok {
                            lat.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        } else {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if !ok {
                        break; // a new connection
                    }
                }
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs(a.warmup_seconds)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |v| *v as f64 / 1000.0)
    };
    let out = serde_json::json!({
        "urls": a.urls,
        "connections": a.connections,
        "seconds": elapsed.as_secs_f64(),
        "tokens": lat.len(),
        "tokens_per_s": lat.len() as f64 / elapsed.as_secs_f64(),
        "failures": failures.load(Ordering::Relaxed),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "first_failure": first_failure.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    });
    println!("{out}");
    Ok(())
}

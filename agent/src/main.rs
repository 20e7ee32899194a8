//! `authsec-agent`: `run` serves the Workload API; `api ...` calls it as a workload would.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use authsec_agent::agent::{attest, Agent, Fatal, Identity};
use authsec_agent::attestor::Attestor;
use authsec_agent::client;
use authsec_agent::config::{AgentConfig, Secret, SOCKET_DEFAULT};
use authsec_agent::workload::WorkloadApi;
use authsec_api::workload as w;
use authsec_domain::TrustDomain;
use clap::{Parser, Subcommand};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "authsec-agent",
    version,
    about = "The authsec per-host agent: SPIFFE Workload API, workload attestation, SVID rotation"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Attest to the cluster (first run) and serve the Workload API.
    Run(RunArgs),
    /// Call the Workload API as a workload would.
    #[command(subcommand)]
    Api(ApiCmd),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// A TOML file with the settings below (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    trust_domain: Option<String>,
    /// A node's gRPC address; repeat for each node.
    #[arg(long = "server")]
    servers: Vec<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The Workload API socket [default: /run/authsec/agent.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// sha256:<hex> of the cluster's root CA, for the first attestation.
    #[arg(long)]
    ca_pin: Option<String>,
    /// A file holding the single-use join token.
    #[arg(long)]
    join_token_file: Option<PathBuf>,
    /// The join token itself (prefer --join-token-file or AUTHSEC_JOIN_TOKEN: a command line is
    /// visible to every local user).
    #[arg(long, env = "AUTHSEC_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum ApiCmd {
    /// Fetch the caller's X.509-SVIDs once; print them (and write PEM files with --write).
    FetchX509 {
        #[command(flatten)]
        sock: Sock,
        /// Write svid.pem, svid.key and bundle.pem of the first SVID here.
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Print one JSON line per X.509-SVID update, `--count` of them (0: until the stream ends).
    WatchX509 {
        #[command(flatten)]
        sock: Sock,
        #[arg(long, default_value_t = 0)]
        count: usize,
    },
    /// Fetch JWT-SVIDs for an audience.
    FetchJwt {
        #[command(flatten)]
        sock: Sock,
        #[arg(long, required = true)]
        audience: Vec<String>,
        #[arg(long, default_value = "")]
        spiffe_id: String,
    },
    /// Validate a JWT-SVID for an audience.
    ValidateJwt {
        #[command(flatten)]
        sock: Sock,
        #[arg(long)]
        audience: String,
        token: String,
    },
    /// Fetch the X.509 and JWT bundles.
    FetchBundles {
        #[command(flatten)]
        sock: Sock,
    },
}

#[derive(Debug, clap::Args)]
struct Sock {
    /// The Workload API socket [default: $SPIFFE_ENDPOINT_SOCKET, else /run/authsec/agent.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
}

impl Sock {
    fn path(&self) -> PathBuf {
        self.socket
            .clone()
            .or_else(client::endpoint_from_env)
            .unwrap_or_else(|| PathBuf::from(SOCKET_DEFAULT))
    }
}

fn config(a: RunArgs) -> anyhow::Result<AgentConfig> {
    let mut c: AgentConfig = match &a.config {
        Some(p) => toml::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("parsing {}", p.display()))?,
        None => AgentConfig {
            trust_domain: a
                .trust_domain
                .clone()
                .context("--trust-domain (or a --config file) is required")?,
            servers: Vec::new(),
            data_dir: a
                .data_dir
                .clone()
                .context("--data-dir (or a --config file) is required")?,
            socket_path: PathBuf::from(SOCKET_DEFAULT),
            ca_pin: None,
            join_token_file: None,
            join_token: None,
            backoff_max_ms: 5_000,
        },
    };
    if let Some(td) = a.trust_domain {
        c.trust_domain = td;
    }
    if !a.servers.is_empty() {
        c.servers = a.servers;
    }
    if let Some(d) = a.data_dir {
        c.data_dir = d;
    }
    if let Some(s) = a.socket {
        c.socket_path = s;
    }
    if a.ca_pin.is_some() {
        c.ca_pin = a.ca_pin;
    }
    if a.join_token_file.is_some() {
        c.join_token_file = a.join_token_file;
    }
    if let Some(t) = a.join_token {
        c.join_token = Some(Secret(t));
    }
    anyhow::ensure!(!c.servers.is_empty(), "at least one --server is required");
    Ok(c)
}

async fn run(a: RunArgs) -> anyhow::Result<i32> {
    let cfg = config(a)?;
    let td =
        TrustDomain::parse(&cfg.trust_domain).map_err(|e| anyhow::anyhow!("trust_domain: {e}"))?;
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&cfg.data_dir)
            .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    }
    let margin = SystemTime::now() + Duration::from_secs(5);
    let identity = match Identity::load(&cfg.data_dir)? {
        Some(id) if id.expires_at > margin => {
            tracing::info!(agent = %id.spiffe_id, "resuming with the stored agent SVID");
            id
        }
        Some(id) => {
            tracing::warn!(agent = %id.spiffe_id, "the stored agent SVID expired; attesting again");
            attest(&cfg, &td).await?
        }
        None => attest(&cfg, &td).await?,
    };
    identity.store(&cfg.data_dir)?;
    let agent_id = identity.spiffe_id.clone();
    let agent = Agent::new(&cfg, td, identity)?;
    let api = WorkloadApi::new(
        agent.subscribe(),
        Arc::new(Attestor::default()),
        agent.nodes.clone(),
    );
    let listener = authsec_agent::serve::bind(&cfg.socket_path)?;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(w::spiffe_workload_api_server::SpiffeWorkloadApiServer::new(
                api,
            ))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                },
            ),
    );
    tracing::info!(agent = %agent_id, socket = %cfg.socket_path.display(), "Workload API serving");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let fatal = tokio::select! {
        f = agent.run_loops() => Some(f),
        _ = tokio::signal::ctrl_c() => None,
        _ = term.recv() => None,
    };
    let code = match &fatal {
        Some(f @ Fatal::Refused(_)) => {
            agent.withdraw();
            Identity::forget(&cfg.data_dir);
            tracing::error!(error = %f, "stopping");
            3
        }
        Some(f @ Fatal::Expired(_)) => {
            agent.withdraw();
            tracing::error!(error = %f, "stopping");
            4
        }
        None => 0,
    };
    // Let streams push the withdrawal before the socket closes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    let _ = std::fs::remove_file(&cfg.socket_path);
    Ok(code)
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for c in b.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(c).unwrap_or_default());
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// Split concatenated DER certificates.
fn split_ders(mut b: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        match x509_parser::parse_x509_certificate(b) {
            Ok((rest, _)) => {
                out.push(b[..b.len() - rest.len()].to_vec());
                b = rest;
            }
            Err(_) => break,
        }
    }
    out
}

/// The first message of a Workload API stream (each carries the full state).
async fn first<T>(
    r: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
) -> anyhow::Result<T> {
    let st = |s: tonic::Status| anyhow::anyhow!("{:?}: {}", s.code(), s.message());
    r.map_err(st)?
        .into_inner()
        .message()
        .await
        .map_err(st)?
        .context("the stream ended")
}

fn svid_json(r: &w::X509svidResponse) -> serde_json::Value {
    let svids: Vec<_> = r
        .svids
        .iter()
        .map(|s| {
            let certs = split_ders(&s.x509_svid);
            let (serial, not_after) = certs
                .first()
                .and_then(|c| x509_parser::parse_x509_certificate(c).ok())
                .map(|(_, c)| (c.raw_serial_as_string(), c.validity().not_after.timestamp()))
                .unwrap_or_default();
            json!({"spiffe_id": s.spiffe_id, "serial": serial, "not_after": not_after,
                   "chain_len": certs.len(), "bundle_certs": split_ders(&s.bundle).len()})
        })
        .collect();
    json!({"svids": svids, "federated": r.federated_bundles.keys().collect::<Vec<_>>()})
}

async fn api(c: ApiCmd) -> anyhow::Result<i32> {
    let status = |s: tonic::Status| anyhow::anyhow!("{:?}: {}", s.code(), s.message());
    match c {
        ApiCmd::FetchX509 { sock, write } => {
            let mut cl = client::connect(&sock.path()).await?;
            let mut st = cl
                .fetch_x509svid(client::request(w::X509svidRequest {}))
                .await
                .map_err(status)?
                .into_inner();
            let r = st
                .message()
                .await
                .map_err(status)?
                .context("the stream ended")?;
            println!("{}", svid_json(&r));
            if let (Some(dir), Some(s)) = (write, r.svids.first()) {
                std::fs::create_dir_all(&dir)?;
                let chain: String = split_ders(&s.x509_svid)
                    .iter()
                    .map(|c| pem("CERTIFICATE", c))
                    .collect();
                std::fs::write(dir.join("svid.pem"), chain)?;
                {
                    use std::io::Write;
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .write(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(dir.join("svid.key"))?;
                    f.write_all(pem("PRIVATE KEY", &s.x509_svid_key).as_bytes())?;
                }
                let bundle: String = split_ders(&s.bundle)
                    .iter()
                    .map(|c| pem("CERTIFICATE", c))
                    .collect();
                std::fs::write(dir.join("bundle.pem"), bundle)?;
            }
        }
        ApiCmd::WatchX509 { sock, count } => {
            let mut cl = client::connect(&sock.path()).await?;
            let mut st = cl
                .fetch_x509svid(client::request(w::X509svidRequest {}))
                .await
                .map_err(status)?
                .into_inner();
            let mut n = 0;
            loop {
                match st.message().await {
                    Ok(Some(r)) => {
                        println!("{}", svid_json(&r));
                        n += 1;
                        if count > 0 && n >= count {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(s) => {
                        println!(
                            "{}",
                            json!({"error": format!("{:?}", s.code()), "message": s.message()})
                        );
                        return Ok(2);
                    }
                }
            }
        }
        ApiCmd::FetchJwt {
            sock,
            audience,
            spiffe_id,
        } => {
            let r = client::connect(&sock.path())
                .await?
                .fetch_jwtsvid(client::request(w::JwtsvidRequest {
                    audience,
                    spiffe_id,
                }))
                .await
                .map_err(status)?
                .into_inner();
            for s in r.svids {
                println!("{}", json!({"spiffe_id": s.spiffe_id, "token": s.svid}));
            }
        }
        ApiCmd::ValidateJwt {
            sock,
            audience,
            token,
        } => {
            let r = client::connect(&sock.path())
                .await?
                .validate_jwtsvid(client::request(w::ValidateJwtsvidRequest {
                    audience,
                    svid: token,
                }))
                .await
                .map_err(status)?
                .into_inner();
            println!("{}", json!({"spiffe_id": r.spiffe_id}));
        }
        ApiCmd::FetchBundles { sock } => {
            let mut cl = client::connect(&sock.path()).await?;
            let x = first(
                cl.fetch_x509_bundles(client::request(w::X509BundlesRequest {}))
                    .await,
            )
            .await?;
            let j = first(
                cl.fetch_jwt_bundles(client::request(w::JwtBundlesRequest {}))
                    .await,
            )
            .await?;
            let x509: serde_json::Map<_, _> = x
                .bundles
                .iter()
                .map(|(k, v)| (k.clone(), json!(split_ders(v).len())))
                .collect();
            let jwt: serde_json::Map<_, _> = j
                .bundles
                .iter()
                .map(|(k, v)| {
                    let n = serde_json::from_slice::<serde_json::Value>(v)
                        .ok()
                        .and_then(|d| d.get("keys").and_then(|k| k.as_array()).map(Vec::len))
                        .unwrap_or(0);
                    (k.clone(), json!(n))
                })
                .collect();
            println!("{}", json!({"x509_authorities": x509, "jwt_keys": jwt}));
        }
    }
    Ok(0)
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    let r = rt.block_on(async move {
        match cli.cmd {
            Cmd::Run(a) => run(a).await,
            Cmd::Api(c) => api(c).await,
        }
    });
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

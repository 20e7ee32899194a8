//! `ai-agent`: an AI agent's side. It gets its SVID from the Workload API, (with
//! `--token-endpoint`) a delegated access token from authsec, and calls the tool service over
//! mutual TLS, accepting only the tool's SPIFFE ID. It prints the tool's answer.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use authsec_sdk::tls::{client_config, Authorize};
use authsec_sdk::workload::{socket_path, X509Source};
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

#[derive(Debug, Parser)]
#[command(
    name = "ai-agent",
    about = "An example AI agent: SVID, delegated token, mTLS call"
)]
struct Args {
    /// The Workload API (unix:///path); default $SPIFFE_ENDPOINT_SOCKET.
    #[arg(long)]
    workload_api: Option<String>,
    /// The tool's address (host:port).
    #[arg(long)]
    tool: String,
    /// The tool's SPIFFE ID: the only server accepted.
    #[arg(long)]
    tool_id: String,
    /// How many calls, one per second (to watch rotation).
    #[arg(long, default_value_t = 1)]
    calls: u32,
    #[command(flatten)]
    token: token_args::AgentTokenArgs,
}

#[path = "../token_args.rs"]
mod token_args;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let socket = socket_path(args.workload_api.as_deref())?;
    let source = X509Source::new(&socket, Duration::from_secs(30)).await?;
    let mut tls = client_config(&source, Authorize::ids([args.tool_id.clone()]))?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tokens = args.token.client(&source).await?;
    for i in 0..args.calls {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let bearer = match &tokens {
            Some(t) => Some(t.bearer().await?),
            None => None,
        };
        let tcp = tokio::net::TcpStream::connect(&args.tool).await?;
        let host = args
            .tool
            .rsplit_once(':')
            .map_or(args.tool.as_str(), |(h, _)| h);
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())?;
        let tls = connector.connect(name, tcp).await?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let mut req = hyper::Request::get("/call").header("host", host);
        if let Some(b) = &bearer {
            req = req.header("authorization", format!("Bearer {b}"));
        }
        let resp = send.send_request(req.body(Empty::<Bytes>::new())?).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let svid = source.svid().map(|s| s.serial()).unwrap_or_default();
        println!(
            "{}",
            serde_json::json!({"status": status.as_u16(), "svid_serial": svid,
                               "answer": serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default()})
        );
        if !status.is_success() {
            anyhow::bail!("the tool answered {status}");
        }
    }
    let _ = PathBuf::new();
    Ok(())
}

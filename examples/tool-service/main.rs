//! `tool-service`: a tool an AI agent calls. It is a workload with its own SVID (from the
//! Workload API), serves HTTPS with mutual TLS, accepts only callers whose SVID the trust
//! domain's bundle vouches for and that it authorizes by SPIFFE ID, and (with `--issuer`)
//! requires an access token with the tool's scope: the SDK's bearer layer checks it (and
//! serves the RFC 9728 metadata that its 401 answers point to).
//!
//! `GET /call` answers JSON: the caller's SPIFFE ID from its certificate and, with a token,
//! the token's subject, client, scopes and actor.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use authsec_sdk::layer::BearerLayer;
use authsec_sdk::tls::{peer_spiffe_id, server_config, Authorize};
use authsec_sdk::verify::{AccessClaims, CertThumbprint};
use authsec_sdk::workload::{socket_path, X509Source};
use clap::Parser;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "tool-service",
    about = "An example tool service: mTLS by SVID, tokens by scope"
)]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// The Workload API (unix:///path); default $SPIFFE_ENDPOINT_SOCKET.
    #[arg(long)]
    workload_api: Option<String>,
    /// Callers allowed by SPIFFE ID (repeat); without any, every ID of --trust-domain.
    #[arg(long = "allow")]
    allow: Vec<String>,
    #[arg(long, default_value = "example.org")]
    trust_domain: String,
    #[command(flatten)]
    token: token_args::TokenArgs,
}

#[path = "../token_args.rs"]
mod token_args;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(serve(args))
}

fn json_response(status: u16, body: serde_json::Value) -> http::Response<Full<Bytes>> {
    let mut r = http::Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// The tool itself: who called (from mTLS), and with what token (from the layer).
async fn call(
    peer: String,
    req: http::Request<Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/call" {
        return Ok(json_response(404, json!({"error": "not_found"})));
    }
    let token = req.extensions().get::<Arc<AccessClaims>>().map(|c| {
        json!({"sub": c.sub, "client_id": c.client_id, "scope": c.scope,
               "act": c.act, "delegation": c.delegation})
    });
    Ok(json_response(200, json!({"caller": peer, "token": token})))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let socket = socket_path(args.workload_api.as_deref())?;
    let source = X509Source::new(&socket, Duration::from_secs(30)).await?;
    let authorize = if args.allow.is_empty() {
        Authorize::trust_domain(&args.trust_domain)
    } else {
        Authorize::ids(args.allow.clone())
    };
    let mut tls = server_config(&source, authorize)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let bearer: Option<BearerLayer> = args.token.layer(&source).await?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let me = source.svid().map(|s| s.spiffe_id).unwrap_or_default();
    // The line tests and scripts wait for.
    println!(
        "{}",
        json!({"listening": listener.local_addr()?.to_string(), "spiffe_id": me})
    );
    loop {
        let (tcp, remote) = listener.accept().await?;
        let (acceptor, bearer) = (acceptor.clone(), bearer.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp)).await
            {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::info!(%remote, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let certs = tls.get_ref().1.peer_certificates();
            let peer = certs.and_then(peer_spiffe_id).unwrap_or_default();
            // The presented certificate, for tokens bound to it (cnf.x5t#S256).
            let thumb = certs
                .and_then(|c| c.first())
                .map(|c| CertThumbprint::from_der(c));
            let io = hyper_util::rt::TokioIo::new(tls);
            let handler =
                tower::service_fn(move |req: http::Request<Incoming>| call(peer.clone(), req));
            // Before the bearer layer: it checks a bound token against this certificate.
            let with_cert = move |mut req: http::Request<Incoming>| {
                if let Some(t) = thumb {
                    req.extensions_mut().insert(t);
                }
                req
            };
            let served = match bearer {
                Some(layer) => {
                    let svc = hyper_util::service::TowerToHyperService::new(
                        tower::ServiceBuilder::new()
                            .map_request(with_cert)
                            .layer(layer)
                            .service(handler),
                    );
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await
                }
                None => {
                    let svc = hyper_util::service::TowerToHyperService::new(handler);
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%remote, error = %e, "connection ended");
            }
        });
    }
}

//! HTTPS plumbing the node's endpoints share: server configs, the accept loop, and a bounded
//! one-shot GET for fetching documents (federated bundles, trusted issuers' JWKS).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A fetch's whole exchange is bounded by this.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

pub type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// Accept TLS connections on `listener` until `shutdown`, one task per connection: each is
/// handed to `serve` once its handshake finished within `handshake_timeout`. At most
/// `max_connections` are open at once; beyond that, new ones wait in the listen backlog, so a
/// flood of idle connections cannot exhaust the node's file descriptors. A handshake refused
/// for the client's certificate is counted in `refusals` (a failed authentication).
#[allow(clippy::too_many_arguments)]
pub async fn accept_loop<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
    max_connections: usize,
    refusals: Option<Arc<crate::audit::FailureLog>>,
    mut shutdown: watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(TlsStream, SocketAddr) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let open = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let permit = tokio::select! {
            p = open.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (tcp, remote) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, endpoint = name, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, serve, refusals) = (acceptor.clone(), serve.clone(), refusals.clone());
        tokio::spawn(async move {
            let _permit = permit;
            use authsec_raft::tls::{accept, Accepted};
            match accept(&acceptor, tcp, remote, handshake_timeout).await {
                Accepted::Ok(tls) => serve(tls, remote).await,
                Accepted::Refused(r) => {
                    tracing::info!(
                        %remote,
                        endpoint = name,
                        claimed = r.claimed.as_deref().unwrap_or("-"),
                        reason = %r.reason,
                        "TLS handshake refused: the client certificate"
                    );
                    if let Some(log) = &refusals {
                        log.record_refused_tls(name, &r);
                    }
                }
                Accepted::Failed(e) => {
                    tracing::debug!(%remote, error = %e, endpoint = name, "TLS handshake failed")
                }
            }
        });
    }
}

/// An HTTPS (HTTP/1.1) server config: a Web PKI certificate and key from files if given, else
/// the node's own certificate, asking for (not requiring) a client certificate of the trust
/// domain. `None` without either.
pub fn server_config(
    cert_file: Option<&std::path::Path>,
    key_file: Option<&std::path::Path>,
    tls: Option<&Arc<authsec_raft::tls::TlsState>>,
) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    use anyhow::Context;
    use rustls::pki_types::pem::PemObject;
    let mut c = match (cert_file, key_file, tls) {
        (Some(cert), Some(key), _) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("read {}", cert.display()))?
                .collect::<Result<_, _>>()
                .with_context(|| format!("parse {}", cert.display()))?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("read {}", key.display()))?;
            rustls::ServerConfig::builder_with_provider(authsec_raft::tls::provider())
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .context("the endpoint's certificate and key")?
        }
        (_, _, Some(tls)) => (*tls.server_config(authsec_raft::tls::ClientAuth::Optional)?).clone(),
        _ => return Ok(None),
    };
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(c)))
}

/// `https://host[:port][/path]` split into what the request needs.
fn split_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{url} is not an https:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse::<u16>().map_err(|_| format!("bad port in {url}"))?,
        ),
        _ => (authority, 443),
    };
    if host.is_empty() {
        return Err(format!("no host in {url}"));
    }
    Ok((host.to_owned(), port, path.to_owned()))
}

/// Undo `Transfer-Encoding: chunked`.
fn unchunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a truncated chunk")?;
        let size_str = std::str::from_utf8(&body[..line_end]).map_err(|_| "a bad chunk size")?;
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "a bad chunk size")?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err("a truncated chunk".into());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// Whether an address is one a fetch from outside input must not reach: loopback, private,
/// link-local, unique-local, unspecified, multicast (SSRF protection).
pub fn is_internal(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(a) => {
            a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_multicast()
                || a.is_broadcast()
                || a.octets()[0] == 0
                || (a.octets()[0] == 100 && (a.octets()[1] & 0xc0) == 64) // 100.64/10
        }
        std::net::IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return is_internal(std::net::IpAddr::V4(v4));
            }
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (a.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (a.segments()[0] & 0xffc0) == 0xfe80 // link local
        }
    }
}

/// `GET url` over HTTPS with `config`: one request, no redirects followed (any answer but 200
/// is an error), the body bounded by `limit` and the whole exchange by [`FETCH_TIMEOUT`]. The
/// host is resolved once and the connection goes to that address; unless `allow_internal`, an
/// internal address is refused.
pub async fn get(
    url: &str,
    config: Arc<rustls::ClientConfig>,
    limit: usize,
    allow_internal: bool,
) -> Result<Vec<u8>, String> {
    let (host, port, path) = split_url(url)?;
    let name = ServerName::try_from(host.clone()).map_err(|e| format!("host {host}: {e}"))?;
    let work = async {
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} has no address"))?;
        if !allow_internal && is_internal(addr.ip()) {
            return Err(format!(
                "{host} resolves to {}, an internal address this fetch may not reach",
                addr.ip()
            ));
        }
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {host}:{port}: {e}"))?;
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        );
        tls.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut resp = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    if resp.len() + n > limit + 16 * 1024 {
                        return Err(format!("the answer exceeds {limit} bytes"));
                    }
                    resp.extend_from_slice(&buf[..n]);
                }
                // Peers that close without close_notify: the body is complete by its length.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        Ok(resp)
    };
    let resp = tokio::time::timeout(FETCH_TIMEOUT, work)
        .await
        .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))??;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP header in the answer")?;
    let head = String::from_utf8_lossy(&resp[..split]).to_ascii_lowercase();
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200") {
        return Err(format!(
            "the endpoint answered {status:?} (redirects are not followed)"
        ));
    }
    let body = &resp[split + 4..];
    let body = if head.contains("transfer-encoding: chunked") {
        unchunk(body)?
    } else {
        body.to_vec()
    };
    if body.len() > limit {
        return Err(format!("the answer exceeds {limit} bytes"));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split() {
        assert_eq!(
            split_url("https://a.example:8443/bundle").expect("ok"),
            ("a.example".into(), 8443, "/bundle".into())
        );
        assert_eq!(
            split_url("https://a.example").expect("ok"),
            ("a.example".into(), 443, "/".into())
        );
        assert_eq!(
            split_url("https://127.0.0.1:7201/").expect("ok"),
            ("127.0.0.1".into(), 7201, "/".into())
        );
        assert!(split_url("http://a.example/").is_err());
        assert!(split_url("https://:80/").is_err());
    }

    #[test]
    fn chunks_join() {
        assert_eq!(
            unchunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").expect("ok"),
            b"abcde"
        );
        assert!(unchunk(b"5\r\nab").is_err());
    }

    #[test]
    fn internal_addresses_are_recognized() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.5",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_internal(a.parse().expect("ip")), "{a}");
        }
        for a in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_internal(a.parse().expect("ip")), "{a}");
        }
    }
}

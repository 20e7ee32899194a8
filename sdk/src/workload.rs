//! Live X.509 and JWT sources from the SPIFFE Workload API.
//!
//! [`X509Source`] keeps a `FetchX509SVID` stream open and always holds the latest
//! [`X509Context`] (SVIDs, their keys, the trust bundles), prepared for TLS: a rustls
//! `CertifiedKey` per SVID and a root store per trust domain, so a handshake does no parsing.
//! When the stream breaks (the agent restarts) it reconnects with backoff and keeps serving
//! the last context until its SVID expires. [`JwtSource`] caches JWT-SVIDs per audience until
//! half their lifetime.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use authsec_api::workload::{self as w, spiffe_workload_api_client::SpiffeWorkloadApiClient};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint, Uri};

/// The default agent socket, when neither an address nor `SPIFFE_ENDPOINT_SOCKET` is given.
pub const SOCKET_DEFAULT: &str = "/run/authsec/agent.sock";

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("bad Workload API address {0:?}: use unix:///absolute/path")]
    Address(String),
    #[error("connecting to the Workload API at {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the Workload API answered {code:?}: {message}")]
    Status { code: tonic::Code, message: String },
    #[error("the Workload API sent a bad {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("no X.509-SVID within {0:?}")]
    Timeout(Duration),
}

impl From<tonic::Status> for WorkloadError {
    fn from(s: tonic::Status) -> Self {
        WorkloadError::Status {
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}

/// The socket path of `addr` (`unix:///path` or `unix:/path`), else `SPIFFE_ENDPOINT_SOCKET`,
/// else [`SOCKET_DEFAULT`].
pub fn socket_path(addr: Option<&str>) -> Result<PathBuf, WorkloadError> {
    let v = match addr {
        Some(a) => a.to_owned(),
        None => match std::env::var("SPIFFE_ENDPOINT_SOCKET") {
            Ok(v) => v,
            Err(_) => return Ok(PathBuf::from(SOCKET_DEFAULT)),
        },
    };
    let p = v
        .strip_prefix("unix://")
        .or_else(|| v.strip_prefix("unix:"))
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| WorkloadError::Address(v.clone()))?;
    Ok(PathBuf::from(p))
}

/// A Workload API client (one connection; cheap to clone).
#[derive(Debug, Clone)]
pub struct WorkloadClient {
    inner: SpiffeWorkloadApiClient<Channel>,
}

fn req<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        authsec_api::workload::SECURITY_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    r
}

/// The first message of a Workload API stream (each carries the full state).
async fn first<T>(
    r: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
) -> Result<T, WorkloadError> {
    r?.into_inner()
        .message()
        .await?
        .ok_or(WorkloadError::Invalid {
            what: "stream",
            reason: "ended before the first message".into(),
        })
}

impl WorkloadClient {
    /// Connect to the agent at `socket`.
    pub async fn connect(socket: &Path) -> Result<Self, WorkloadError> {
        let path = socket.to_path_buf();
        let p2 = path.clone();
        let ch = Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let p = p2.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(p).await?,
                    ))
                }
            }))
            .await
            .map_err(|source| WorkloadError::Connect { path, source })?;
        Ok(Self {
            inner: SpiffeWorkloadApiClient::new(ch),
        })
    }

    /// The caller's X.509 context, once.
    pub async fn fetch_x509_context(&self) -> Result<X509Context, WorkloadError> {
        let r = self
            .inner
            .clone()
            .fetch_x509svid(req(w::X509svidRequest {}))
            .await;
        X509Context::from_wire(first(r).await?)
    }

    /// JWT-SVIDs for `audience` (every identity of the caller, or `spiffe_id`'s).
    pub async fn fetch_jwt_svids(
        &self,
        audience: &[String],
        spiffe_id: Option<&str>,
    ) -> Result<Vec<JwtSvid>, WorkloadError> {
        let r = self
            .inner
            .clone()
            .fetch_jwtsvid(req(w::JwtsvidRequest {
                audience: audience.to_vec(),
                spiffe_id: spiffe_id.unwrap_or_default().to_owned(),
            }))
            .await?
            .into_inner();
        r.svids
            .into_iter()
            .map(|s| JwtSvid::parse(s.spiffe_id, s.svid))
            .collect()
    }

    /// The JWT bundles (JWKS JSON) by `spiffe://<td>`, once.
    pub async fn fetch_jwt_bundles(&self) -> Result<BTreeMap<String, Vec<u8>>, WorkloadError> {
        let r = self
            .inner
            .clone()
            .fetch_jwt_bundles(req(w::JwtBundlesRequest {}))
            .await;
        Ok(first(r).await?.bundles.into_iter().collect())
    }

    /// Have the agent validate a JWT-SVID for `audience`; its SPIFFE ID.
    pub async fn validate_jwt_svid(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<String, WorkloadError> {
        Ok(self
            .inner
            .clone()
            .validate_jwtsvid(req(w::ValidateJwtsvidRequest {
                audience: audience.to_owned(),
                svid: token.to_owned(),
            }))
            .await?
            .into_inner()
            .spiffe_id)
    }
}

/// An X.509-SVID with its key, ready for rustls.
#[derive(Clone)]
pub struct X509Svid {
    pub spiffe_id: String,
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    pub not_after: SystemTime,
    /// What a TLS peer is shown: the chain and the signing key.
    pub certified: Arc<CertifiedKey>,
}

impl std::fmt::Debug for X509Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl X509Svid {
    /// The private key (PKCS#8); keep it in memory only.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// The leaf's serial number, hex.
    pub fn serial(&self) -> String {
        self.chain
            .first()
            .and_then(|c| x509_parser::parse_x509_certificate(c).ok())
            .map(|(_, c)| c.raw_serial_as_string().replace(':', ""))
            .unwrap_or_default()
    }
}

/// Everything `FetchX509SVID` delivered, prepared.
#[derive(Debug, Clone)]
pub struct X509Context {
    /// The first is the default identity.
    pub svids: Vec<X509Svid>,
    /// X.509 authorities by `spiffe://<td>`: the SVIDs' own trust domain and federated ones.
    pub bundles: BTreeMap<String, Vec<CertificateDer<'static>>>,
    /// The same as root stores, for verifying peers.
    pub roots: BTreeMap<String, Arc<RootCertStore>>,
}

/// Split concatenated DER certificates.
pub fn split_ders(mut b: &[u8]) -> Result<Vec<CertificateDer<'static>>, WorkloadError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (rest, _) =
            x509_parser::parse_x509_certificate(b).map_err(|e| WorkloadError::Invalid {
                what: "certificate",
                reason: e.to_string(),
            })?;
        out.push(CertificateDer::from(b[..b.len() - rest.len()].to_vec()));
        b = rest;
    }
    Ok(out)
}

fn trust_domain_of(spiffe_id: &str) -> Option<String> {
    let rest = spiffe_id.strip_prefix("spiffe://")?;
    Some(format!("spiffe://{}", rest.split('/').next()?))
}

impl X509Context {
    pub fn from_wire(m: w::X509svidResponse) -> Result<Self, WorkloadError> {
        let provider = authsec_tls::provider();
        let mut bundles = BTreeMap::new();
        let mut svids = Vec::new();
        for s in m.svids {
            let chain = split_ders(&s.x509_svid)?;
            let leaf = chain.first().ok_or(WorkloadError::Invalid {
                what: "X.509-SVID",
                reason: "empty chain".into(),
            })?;
            let not_after = x509_parser::parse_x509_certificate(leaf)
                .map(|(_, c)| c.validity().not_after.timestamp())
                .map_err(|e| WorkloadError::Invalid {
                    what: "X.509-SVID",
                    reason: e.to_string(),
                })?;
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(s.x509_svid_key));
            let certified = CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider)
                .map_err(|e| WorkloadError::Invalid {
                    what: "X.509-SVID key",
                    reason: e.to_string(),
                })?;
            if let Some(td) = trust_domain_of(&s.spiffe_id) {
                bundles.entry(td).or_insert(split_ders(&s.bundle)?);
            }
            svids.push(X509Svid {
                spiffe_id: s.spiffe_id,
                chain,
                key: Arc::new(key),
                not_after: UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64),
                certified: Arc::new(certified),
            });
        }
        for (td, der) in m.federated_bundles {
            bundles.insert(td, split_ders(&der)?);
        }
        let mut roots = BTreeMap::new();
        for (td, certs) in &bundles {
            let mut store = RootCertStore::empty();
            for c in certs {
                // A certificate rustls cannot use as an anchor is skipped, not fatal.
                let _ = store.add(c.clone());
            }
            roots.insert(td.clone(), Arc::new(store));
        }
        Ok(Self {
            svids,
            bundles,
            roots,
        })
    }

    /// The default SVID.
    pub fn default_svid(&self) -> Option<&X509Svid> {
        self.svids.first()
    }
}

/// The latest X.509 context, kept current by a background stream.
#[derive(Debug, Clone)]
pub struct X509Source {
    rx: watch::Receiver<Option<Arc<X509Context>>>,
}

impl X509Source {
    /// Start following the Workload API at `socket`; wait for the first context.
    pub async fn new(socket: &Path, timeout: Duration) -> Result<Self, WorkloadError> {
        let (tx, rx) = watch::channel(None);
        let path = socket.to_path_buf();
        tokio::spawn(follow(path, tx));
        let s = Self { rx };
        s.wait_ready(timeout).await?;
        Ok(s)
    }

    /// The latest context (`None` before the first, or after the agent withdrew the SVIDs).
    pub fn current(&self) -> Option<Arc<X509Context>> {
        self.rx.borrow().clone()
    }

    /// The default SVID now.
    pub fn svid(&self) -> Option<X509Svid> {
        self.current().and_then(|c| c.default_svid().cloned())
    }

    /// A receiver woken on every update.
    pub fn updates(&self) -> watch::Receiver<Option<Arc<X509Context>>> {
        self.rx.clone()
    }

    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), WorkloadError> {
        let mut rx = self.rx.clone();
        tokio::time::timeout(
            timeout,
            rx.wait_for(|c| c.as_ref().is_some_and(|c| !c.svids.is_empty())),
        )
        .await
        .map_err(|_| WorkloadError::Timeout(timeout))?
        .map_err(|_| WorkloadError::Timeout(timeout))?;
        Ok(())
    }
}

/// Keep a `FetchX509SVID` stream open; publish each message; reconnect with backoff.
async fn follow(path: PathBuf, tx: watch::Sender<Option<Arc<X509Context>>>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if tx.is_closed() {
            return;
        }
        match WorkloadClient::connect(&path).await {
            Ok(c) => match c
                .inner
                .clone()
                .fetch_x509svid(req(w::X509svidRequest {}))
                .await
            {
                Ok(r) => {
                    let mut s = r.into_inner();
                    loop {
                        match s.message().await {
                            Ok(Some(m)) => {
                                backoff = Duration::from_millis(100);
                                match X509Context::from_wire(m) {
                                    Ok(ctx) => {
                                        tracing::debug!(
                                            svids = ctx.svids.len(),
                                            "X.509 context updated"
                                        );
                                        tx.send_replace(Some(Arc::new(ctx)));
                                    }
                                    Err(e) => {
                                        tracing::warn!(error = %e, "ignored a bad X.509 context")
                                    }
                                }
                            }
                            Ok(None) => break,
                            Err(st) => {
                                if st.code() == tonic::Code::PermissionDenied {
                                    // Withdrawn: stop presenting it.
                                    tx.send_replace(None);
                                }
                                tracing::info!(code = ?st.code(), error = %st.message(), "X.509 stream ended");
                                break;
                            }
                        }
                    }
                }
                Err(st) => {
                    if st.code() == tonic::Code::PermissionDenied {
                        tx.send_replace(None);
                    }
                    tracing::info!(code = ?st.code(), error = %st.message(), "FetchX509SVID failed");
                }
            },
            Err(e) => tracing::info!(error = %e, "Workload API unreachable"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// A JWT-SVID and the claims a caller needs.
#[derive(Clone)]
pub struct JwtSvid {
    pub spiffe_id: String,
    pub token: String,
    pub expires_at: SystemTime,
    pub issued_at: SystemTime,
}

impl std::fmt::Debug for JwtSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl JwtSvid {
    fn parse(spiffe_id: String, token: String) -> Result<Self, WorkloadError> {
        use base64::Engine;
        let bad = |r: &str| WorkloadError::Invalid {
            what: "JWT-SVID",
            reason: r.into(),
        };
        let claims = token.split('.').nth(1).ok_or_else(|| bad("not a JWS"))?;
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(claims)
                .map_err(|_| bad("claims are not base64url"))?,
        )
        .map_err(|_| bad("claims are not JSON"))?;
        let t = |k: &str| {
            claims
                .get(k)
                .and_then(serde_json::Value::as_u64)
                .map(|s| UNIX_EPOCH + Duration::from_secs(s))
        };
        let expires_at = t("exp").ok_or_else(|| bad("no exp"))?;
        let issued_at = t("iat").unwrap_or_else(SystemTime::now);
        Ok(Self {
            spiffe_id,
            token,
            expires_at,
            issued_at,
        })
    }

    /// Half-life: when a cache should fetch a fresh one.
    pub fn refresh_at(&self) -> SystemTime {
        let life = self
            .expires_at
            .duration_since(self.issued_at)
            .unwrap_or_default();
        self.issued_at + life / 2
    }
}

/// JWT-SVIDs per audience, cached until half their lifetime.
#[derive(Debug, Clone)]
pub struct JwtSource {
    client: WorkloadClient,
    cache: Arc<Mutex<HashMap<Vec<String>, JwtSvid>>>,
}

impl JwtSource {
    pub async fn new(socket: &Path) -> Result<Self, WorkloadError> {
        Ok(Self {
            client: WorkloadClient::connect(socket).await?,
            cache: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The default identity's JWT-SVID for `audience`.
    pub async fn fetch(&self, audience: &[&str]) -> Result<JwtSvid, WorkloadError> {
        let mut key: Vec<String> = audience.iter().map(|a| (*a).to_owned()).collect();
        key.sort();
        key.dedup();
        let now = SystemTime::now();
        if let Some(j) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .filter(|j| j.refresh_at() > now)
        {
            return Ok(j.clone());
        }
        let j = self
            .client
            .fetch_jwt_svids(&key, None)
            .await?
            .into_iter()
            .next()
            .ok_or(WorkloadError::Invalid {
                what: "JWT-SVID response",
                reason: "no SVID".into(),
            })?;
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.len() > 1024 {
            c.clear();
        }
        c.insert(key, j.clone());
        Ok(j)
    }

    pub fn client(&self) -> &WorkloadClient {
        &self.client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses() {
        assert_eq!(
            socket_path(Some("unix:///run/a.sock")).ok(),
            Some(PathBuf::from("/run/a.sock"))
        );
        assert_eq!(
            socket_path(Some("unix:/run/a.sock")).ok(),
            Some(PathBuf::from("/run/a.sock"))
        );
        assert!(socket_path(Some("tcp://127.0.0.1:1")).is_err());
        assert!(socket_path(Some("unix://relative")).is_err());
    }

    #[test]
    fn trust_domain_of_an_id() {
        assert_eq!(
            trust_domain_of("spiffe://example.org/a/b").as_deref(),
            Some("spiffe://example.org")
        );
        assert_eq!(trust_domain_of("https://x"), None);
    }
}

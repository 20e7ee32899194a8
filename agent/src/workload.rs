//! The SPIFFE Workload API on a unix socket, per the standard:
//!
//! - every request must carry `workload.spiffe.io: true` (INVALID_ARGUMENT otherwise);
//! - before the agent's first sync with a node, UNAVAILABLE (clients retry);
//! - the caller is attested from the kernel (SO_PEERCRED and /proc, see [`crate::attestor`]);
//!   one whose selectors match no entry gets PERMISSION_DENIED;
//! - streams send the full state at once, then again on every change (rotation, bundle
//!   change, a withdrawn entry); a caller left with no identity gets PERMISSION_DENIED, which
//!   ends the stream;
//! - everything is served from the agent's cache: no node is asked on the request path,
//!   except for a JWT-SVID not cached yet for that audience.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use authsec_api::v1::{self, svid_service_client::SvidServiceClient};
use authsec_api::workload::{self as w, spiffe_workload_api_server::SpiffeWorkloadApi};
use futures::Stream;
use tokio::sync::watch;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::attestor::{Attestor, Caller};
use crate::nodes::Nodes;
use crate::state::{EntryInfo, Snapshot};

/// Most audiences in one JWT-SVID request (as the node allows).
pub const AUDIENCES_MAX: usize = 16;
/// Most cached JWT-SVIDs; expired ones go first, then the cache is cleared.
pub const JWT_CACHE_MAX: usize = 10_000;

#[derive(Debug, Clone)]
struct CachedJwt {
    token: String,
    spiffe_id: String,
    renew_at: SystemTime,
}

/// Cached JWT-SVIDs by (entry id, sorted audiences).
type JwtCache = Arc<Mutex<HashMap<(String, Vec<String>), CachedJwt>>>;

#[derive(Debug, Clone)]
pub struct WorkloadApi {
    pub snap: watch::Receiver<Arc<Snapshot>>,
    pub attestor: Arc<Attestor>,
    pub nodes: Nodes,
    jwts: JwtCache,
}

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn concat(ders: &[Vec<u8>]) -> Vec<u8> {
    ders.iter().flatten().copied().collect()
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn no_identity() -> Status {
    Status::permission_denied("no identity issued: this caller's selectors match no entry")
}

impl WorkloadApi {
    pub fn new(
        snap: watch::Receiver<Arc<Snapshot>>,
        attestor: Arc<Attestor>,
        nodes: Nodes,
    ) -> Self {
        Self {
            snap,
            attestor,
            nodes,
            jwts: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The header check, then the caller's selectors.
    async fn attest<T>(&self, req: &Request<T>) -> Result<BTreeSet<String>, Status> {
        let ok = req
            .metadata()
            .get(authsec_api::workload::SECURITY_HEADER)
            .and_then(|v| v.to_str().ok())
            == Some("true");
        if !ok {
            return Err(Status::invalid_argument(
                "security header missing from request: the Workload API needs the metadata workload.spiffe.io: true",
            ));
        }
        if !self.snap.borrow().synced {
            // Not "no identity": the agent does not know yet. Clients retry Unavailable.
            return Err(Status::unavailable(
                "the agent has not synced its entries with a node yet; retry",
            ));
        }
        let cred = req
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|i| i.peer_cred)
            .ok_or_else(|| Status::permission_denied("the caller's credentials are unknown"))?;
        let caller = Caller {
            pid: cred.pid(),
            uid: cred.uid(),
            gid: cred.gid(),
        };
        let needs = self.snap.borrow().needs;
        let attestor = self.attestor.clone();
        // Hashing an executable is file IO: off the async workers.
        tokio::task::spawn_blocking(move || attestor.selectors(caller, needs))
            .await
            .map_err(|e| Status::internal(format!("attestation task: {e}")))?
            .map_err(|e| {
                tracing::info!(error = %e, "workload attestation failed");
                Status::permission_denied(format!("workload attestation failed: {e}"))
            })
    }

    fn x509_response(snap: &Snapshot, matched: &[&EntryInfo]) -> Option<w::X509svidResponse> {
        let own = snap.own().map(|b| concat(&b.x509)).unwrap_or_default();
        let mut fed = BTreeMap::new();
        let svids: Vec<w::X509svid> = matched
            .iter()
            .filter_map(|e| {
                let s = snap.svids.get(&e.id)?;
                for td in &e.federates_with {
                    let key = format!("spiffe://{td}");
                    if let Some(b) = snap.bundles.get(&key) {
                        fed.insert(key, concat(&b.x509));
                    }
                }
                Some(w::X509svid {
                    spiffe_id: s.spiffe_id.clone(),
                    x509_svid: concat(&s.chain),
                    x509_svid_key: s.key.pkcs8_der().to_vec(),
                    bundle: own.clone(),
                    hint: String::new(),
                })
            })
            .collect();
        (!svids.is_empty()).then(|| w::X509svidResponse {
            svids,
            crl: Vec::new(),
            federated_bundles: fed.into_iter().collect(),
        })
    }

    fn x509_bundles(snap: &Snapshot) -> w::X509BundlesResponse {
        w::X509BundlesResponse {
            crl: Vec::new(),
            bundles: snap
                .bundles
                .iter()
                .filter(|(_, b)| !b.x509.is_empty())
                .map(|(k, b)| (k.clone(), concat(&b.x509)))
                .collect(),
        }
    }

    fn jwt_bundles(snap: &Snapshot) -> w::JwtBundlesResponse {
        w::JwtBundlesResponse {
            bundles: snap
                .bundles
                .iter()
                .map(|(k, b)| (k.clone(), b.jwks.clone()))
                .collect(),
        }
    }

    /// A stream that sends `build(snapshot)` at once and whenever it changes; `None` from
    /// `build` means "nothing to send yet" (SVIDs being minted), `Err` ends the stream.
    fn push<T, F>(&self, selectors: BTreeSet<String>, build: F) -> Stream_<T>
    where
        T: PartialEq + Clone + Send + 'static,
        F: Fn(&Snapshot, &BTreeSet<String>) -> Result<Option<T>, Status> + Send + 'static,
    {
        let mut rx = self.snap.clone();
        let (tx, out) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut last: Option<T> = None;
            loop {
                let snap = rx.borrow_and_update().clone();
                match build(&snap, &selectors) {
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                    Ok(Some(m)) if last.as_ref() != Some(&m) => {
                        if tx.send(Ok(m.clone())).await.is_err() {
                            return;
                        }
                        last = Some(m);
                    }
                    Ok(_) => {}
                }
                tokio::select! {
                    r = rx.changed() => if r.is_err() {
                        let _ = tx.send(Err(Status::unavailable("the agent is shutting down"))).await;
                        return;
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))
    }

    /// A stream for an attested caller with an identity: `build` from every snapshot, ended
    /// with PERMISSION_DENIED once the caller matches no entry any more.
    async fn identified<R, T>(
        &self,
        req: &Request<R>,
        build: fn(&Snapshot, &[&EntryInfo]) -> Option<T>,
    ) -> Result<Response<Stream_<T>>, Status>
    where
        T: PartialEq + Clone + Send + 'static,
    {
        let selectors = self.attest(req).await?;
        if self.snap.borrow().matching(&selectors).is_empty() {
            return Err(no_identity());
        }
        Ok(Response::new(self.push(selectors, move |snap, sel| {
            let matched = snap.matching(sel);
            if matched.is_empty() {
                return Err(no_identity());
            }
            Ok(build(snap, &matched))
        })))
    }

    /// A JWT-SVID for `e` and `audience`, from the cache while it is younger than half its
    /// lifetime, else minted by a node.
    async fn jwt_for(&self, e: &EntryInfo, audience: &[String]) -> Result<CachedJwt, Status> {
        let key = (e.id.clone(), audience.to_vec());
        let now = SystemTime::now();
        if let Some(c) = self
            .jwts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .filter(|c| c.renew_at > now && c.spiffe_id == e.spiffe_id)
        {
            return Ok(c.clone());
        }
        let req = v1::MintJwtSvidRequest {
            entry_id: e.id.clone(),
            audience: audience.to_vec(),
            ttl_seconds: 0,
        };
        let r = self
            .nodes
            .call("MintJwtSvid", |ch| {
                let req = req.clone();
                async move {
                    SvidServiceClient::new(ch)
                        .mint_jwt_svid(req)
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await
            .map_err(|s| {
                if crate::nodes::retryable(&s) {
                    Status::unavailable(format!(
                        "no node could mint a JWT-SVID now: {}",
                        s.message()
                    ))
                } else {
                    s
                }
            })?;
        let exp = UNIX_EPOCH + Duration::from_secs(r.expires_at_unix.max(0) as u64);
        let life = exp.duration_since(now).unwrap_or_default();
        let c = CachedJwt {
            token: r.token,
            spiffe_id: r.spiffe_id,
            renew_at: now + life / 2,
        };
        let mut cache = self.jwts.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= JWT_CACHE_MAX {
            cache.retain(|_, v| v.renew_at > now);
            if cache.len() >= JWT_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, c.clone());
        Ok(c)
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = Stream_<w::X509svidResponse>;
    type FetchX509BundlesStream = Stream_<w::X509BundlesResponse>;
    type FetchJWTBundlesStream = Stream_<w::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<w::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        self.identified(&req, Self::x509_response).await
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<w::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        self.identified(&req, |snap, _| snap.own().map(|_| Self::x509_bundles(snap)))
            .await
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<w::JwtsvidRequest>,
    ) -> Result<Response<w::JwtsvidResponse>, Status> {
        let selectors = self.attest(&req).await?;
        let r = req.into_inner();
        if r.audience.is_empty() || r.audience.len() > AUDIENCES_MAX {
            return Err(Status::invalid_argument(format!(
                "audience: 1 to {AUDIENCES_MAX} audiences are required"
            )));
        }
        let mut audience = r.audience;
        audience.sort();
        audience.dedup();
        let matched: Vec<EntryInfo> = {
            let snap = self.snap.borrow();
            snap.matching(&selectors)
                .into_iter()
                .filter(|e| r.spiffe_id.is_empty() || e.spiffe_id == r.spiffe_id)
                .cloned()
                .collect()
        };
        if matched.is_empty() {
            return Err(if r.spiffe_id.is_empty() {
                no_identity()
            } else {
                Status::permission_denied(format!(
                    "no identity issued: this caller is not entitled to {}",
                    r.spiffe_id
                ))
            });
        }
        let mut svids = Vec::with_capacity(matched.len());
        for e in &matched {
            let c = self.jwt_for(e, &audience).await?;
            svids.push(w::Jwtsvid {
                spiffe_id: c.spiffe_id,
                svid: c.token,
                hint: String::new(),
            });
        }
        Ok(Response::new(w::JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<w::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        self.identified(&req, |snap, _| snap.own().map(|_| Self::jwt_bundles(snap)))
            .await
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<w::ValidateJwtsvidRequest>,
    ) -> Result<Response<w::ValidateJwtsvidResponse>, Status> {
        let selectors = self.attest(&req).await?;
        let r = req.into_inner();
        if r.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if r.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let snap = self.snap.borrow().clone();
        if snap.matching(&selectors).is_empty() {
            return Err(no_identity());
        }
        let (spiffe_id, claims) = crate::jwt::validate(&snap, &r.svid, &r.audience, now_s())
            .map_err(|e| Status::invalid_argument(format!("the JWT-SVID is not valid: {e}")))?;
        Ok(Response::new(w::ValidateJwtsvidResponse {
            spiffe_id,
            claims: Some(crate::jwt::to_struct(claims)),
        }))
    }
}

//! Federation on a node: the admin API for federated trust domains, this node's federation
//! bundle endpoint, and the leader's fetcher that keeps the federated bundles current.
//!
//! The endpoint serves this trust domain's bundle (SPIFFE JSON) over HTTPS with no client
//! authentication, as the SPIFFE federation standard asks. It presents the node's own
//! X.509-SVID, so peers consume it with the `https_spiffe` profile; behind a load balancer with
//! a Web PKI certificate it serves `https_web` too.
//!
//! The fetcher runs on the leader only (one writer, no duplicate records): for each federated
//! domain it fetches the bundle when none is recorded yet or when the recorded one's refresh
//! hint has passed, authenticates the endpoint by the profile, and records what it got through
//! the log (`RecordFederatedBundle`; an unchanged bundle writes nothing).

use std::sync::Arc;
use std::time::Duration;

use authsec_api::v1::{self, federation_service_server::FederationService};
use authsec_api::ApiError;
use authsec_domain::codec::{self, Tag};
use authsec_domain::command::Command;
use authsec_domain::federation::{FederatedBundle, Federation, Profile};
use authsec_domain::{Actor, Principal, SpiffeId, TrustDomain};
use authsec_storage::cf;
use base64::Engine;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::services::Ctx;

/// Largest bundle document accepted from a federated endpoint, and largest request served.
const BUNDLE_BYTES_MAX: usize = 1024 * 1024;
const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// Fetch timeout, and the retry delay after a failed fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY: Duration = Duration::from_secs(5);
/// Bounds on how often a recorded refresh hint makes the leader fetch again.
const REFRESH_MIN_S: u64 = 5;
const REFRESH_MAX_S: u64 = 3600;

/// The SPKI DER prefix of an uncompressed P-256 public key.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A SPIFFE bundle document (JWKS) as a [`FederatedBundle`]. X.509 authorities come from
/// `x5c`; JWT authorities must be EC P-256 (what SPIFFE implementations use by default); keys
/// of other types or uses are ignored, as the standard asks.
pub fn parse_spiffe_bundle(json: &str) -> Result<FederatedBundle, String> {
    let doc: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let keys = doc["keys"]
        .as_array()
        .ok_or_else(|| "no \"keys\" array".to_owned())?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut out = FederatedBundle {
        sequence: doc["spiffe_sequence"].as_u64().unwrap_or(0),
        refresh_hint_s: doc["spiffe_refresh_hint"]
            .as_u64()
            .map_or(crate::bundle::REFRESH_HINT_S, |h| {
                h.min(u64::from(u32::MAX)) as u32
            }),
        x509_authorities: Vec::new(),
        jwt_authorities: Vec::new(),
    };
    for k in keys {
        match k["use"].as_str() {
            Some("x509-svid") => {
                let x5c = k["x5c"]
                    .as_array()
                    .filter(|a| a.len() == 1)
                    .and_then(|a| a[0].as_str())
                    .ok_or_else(|| "an x509-svid key needs exactly one x5c".to_owned())?;
                let der = b64.decode(x5c).map_err(|e| format!("x5c: {e}"))?;
                x509_parser::parse_x509_certificate(&der)
                    .map_err(|e| format!("x5c is not a certificate: {e}"))?;
                out.x509_authorities.push(der);
            }
            Some("jwt-svid") if k["kty"] == "EC" && k["crv"] == "P-256" => {
                let kid = k["kid"]
                    .as_str()
                    .ok_or_else(|| "a jwt-svid key needs a kid".to_owned())?;
                let coord = |c: &str| -> Result<Vec<u8>, String> {
                    let v = b64url
                        .decode(k[c].as_str().unwrap_or(""))
                        .map_err(|e| format!("{c}: {e}"))?;
                    if v.len() != 32 {
                        return Err(format!("{c} of {kid} is not a P-256 coordinate"));
                    }
                    Ok(v)
                };
                let mut spki = P256_SPKI_PREFIX.to_vec();
                spki.push(0x04);
                spki.extend(coord("x")?);
                spki.extend(coord("y")?);
                out.jwt_authorities.push((kid.to_owned(), spki));
            }
            _ => {}
        }
    }
    if out.x509_authorities.is_empty() && out.jwt_authorities.is_empty() {
        return Err("the bundle holds no authority this node understands".into());
    }
    Ok(out)
}

/// A federated bundle as SPIFFE JSON (for the API and for holders).
pub fn bundle_json(b: &FederatedBundle) -> Result<String, String> {
    let mut keys = Vec::new();
    for a in &b.x509_authorities {
        keys.push(crate::bundle::x509_jwk(a)?);
    }
    for (kid, spki) in &b.jwt_authorities {
        keys.push(crate::bundle::jwt_jwk(kid, spki)?);
    }
    Ok(serde_json::json!({
        "keys": keys,
        "spiffe_sequence": b.sequence,
        "spiffe_refresh_hint": b.refresh_hint_s,
    })
    .to_string())
}

fn to_proto(f: &Federation) -> v1::Federation {
    let (profile, id) = match &f.profile {
        Profile::HttpsWeb => (v1::FederationProfile::HttpsWeb, String::new()),
        Profile::HttpsSpiffe { endpoint_spiffe_id } => (
            v1::FederationProfile::HttpsSpiffe,
            endpoint_spiffe_id.to_string(),
        ),
    };
    v1::Federation {
        trust_domain: f.trust_domain.to_string(),
        endpoint_url: f.endpoint_url.clone(),
        profile: profile as i32,
        endpoint_spiffe_id: id,
        bundle_sequence: f.bundle.as_ref().map_or(0, |b| b.sequence),
        x509_authorities_der: f
            .bundle
            .as_ref()
            .map(|b| b.x509_authorities.clone())
            .unwrap_or_default(),
        jwt_kids: f
            .bundle
            .as_ref()
            .map(|b| b.jwt_authorities.iter().map(|(k, _)| k.clone()).collect())
            .unwrap_or_default(),
        bundle_at_ms: f.bundle_at_ms,
        created_at_ms: f.created_at_ms,
        refresh_hint_seconds: f.bundle.as_ref().map_or(0, |b| b.refresh_hint_s),
        spiffe_bundle_json: f
            .bundle
            .as_ref()
            .and_then(|b| bundle_json(b).ok())
            .unwrap_or_default(),
    }
}

/// Every federation in the local projection.
pub fn load(
    reader: &authsec_storage::Reader,
) -> Result<Vec<Federation>, authsec_storage::StoreError> {
    let (v, _) = reader.scan(
        cf::PROJ_FEDERATIONS,
        b"",
        None,
        usize::MAX,
        usize::MAX,
        |k, v| {
            codec::decode::<Federation>(Tag::FEDERATION, v)
                .map(Some)
                .map_err(|e| authsec_storage::StoreError::damaged(cf::PROJ_FEDERATIONS, k, e))
        },
    )?;
    Ok(v)
}

/// One federation from the local projection.
pub fn get(
    reader: &authsec_storage::Reader,
    td: &TrustDomain,
) -> Result<Option<Federation>, authsec_storage::StoreError> {
    match reader.row(cf::PROJ_FEDERATIONS, td.as_str().as_bytes())? {
        Some(v) => codec::decode(Tag::FEDERATION, &v).map(Some).map_err(|e| {
            authsec_storage::StoreError::damaged(cf::PROJ_FEDERATIONS, td.as_str().as_bytes(), e)
        }),
        None => Ok(None),
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "federation request failed");
    Status::internal("storage read failed; see the node's log")
}

fn invalid(field: &'static str, reason: impl std::fmt::Display) -> Status {
    ApiError::from(authsec_domain::FieldError::new(field, reason.to_string())).into()
}

#[derive(Debug, Clone)]
pub struct Federations(pub Arc<Ctx>);

#[tonic::async_trait]
impl FederationService for Federations {
    async fn create_federation(
        &self,
        req: Request<v1::CreateFederationRequest>,
    ) -> Result<Response<v1::CreateFederationResponse>, Status> {
        let actor = self.0.actor(&req);
        let r = req.into_inner();
        let td =
            TrustDomain::parse(&r.trust_domain).map_err(|e| Status::from(ApiError::from(e)))?;
        let profile = match v1::FederationProfile::try_from(r.profile) {
            Ok(v1::FederationProfile::HttpsWeb) => Profile::HttpsWeb,
            Ok(v1::FederationProfile::HttpsSpiffe) => Profile::HttpsSpiffe {
                endpoint_spiffe_id: SpiffeId::parse(&r.endpoint_spiffe_id)
                    .map_err(|e| invalid("endpoint_spiffe_id", e))?,
            },
            _ => return Err(invalid("profile", "https_web or https_spiffe")),
        };
        let bundle = if r.bundle_json.is_empty() {
            None
        } else {
            Some(parse_spiffe_bundle(&r.bundle_json).map_err(|e| invalid("bundle_json", e))?)
        };
        let federation = Federation {
            trust_domain: td.clone(),
            endpoint_url: r.endpoint_url,
            profile,
            bundle,
            bundle_at_ms: 0,
            created_at_ms: 0,
        };
        let (receipt, _) = self
            .0
            .write(actor, Command::CreateFederation { federation })
            .await?;
        let f = get(&self.0.reader, &td).map_err(internal)?;
        Ok(Response::new(v1::CreateFederationResponse {
            receipt: Some(receipt),
            federation: f.as_ref().map(to_proto),
        }))
    }

    async fn list_federations(
        &self,
        _req: Request<v1::ListFederationsRequest>,
    ) -> Result<Response<v1::ListFederationsResponse>, Status> {
        Ok(Response::new(v1::ListFederationsResponse {
            federations: load(&self.0.reader)
                .map_err(internal)?
                .iter()
                .map(to_proto)
                .collect(),
        }))
    }

    async fn delete_federation(
        &self,
        req: Request<v1::DeleteFederationRequest>,
    ) -> Result<Response<v1::DeleteFederationResponse>, Status> {
        let actor = self.0.actor(&req);
        let td = TrustDomain::parse(&req.get_ref().trust_domain)
            .map_err(|e| Status::from(ApiError::from(e)))?;
        let (receipt, _) = self
            .0
            .write(actor, Command::DeleteFederation { trust_domain: td })
            .await?;
        Ok(Response::new(v1::DeleteFederationResponse {
            receipt: Some(receipt),
        }))
    }
}

// ---- the endpoint ----

/// The endpoint's TLS: the operator's Web PKI certificate (`https_web`) when configured, else
/// the node's own SVID (`https_spiffe`); `None` when there is neither (`--insecure`).
pub fn endpoint_config(
    cfg: &crate::config::FederationSection,
    tls: Option<&Arc<authsec_raft::tls::TlsState>>,
) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    crate::https::server_config(cfg.cert_file.as_deref(), cfg.key_file.as_deref(), tls)
}

/// Extra roots for `https_web` endpoints (a private PKI), from `web_ca_file`.
pub fn web_roots(
    cfg: &crate::config::FederationSection,
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    use anyhow::Context;
    use rustls::pki_types::pem::PemObject;
    match &cfg.web_ca_file {
        None => Ok(Vec::new()),
        Some(p) => Ok(CertificateDer::pem_file_iter(p)
            .with_context(|| format!("read {}", p.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("parse {}", p.display()))?),
    }
}

/// The document the endpoint serves, or `None` when it cannot be built now.
pub type BundleSource = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// This trust domain's bundle, as the endpoint serves it.
pub fn our_bundle(ctx: Arc<Ctx>) -> BundleSource {
    Arc::new(move || {
        crate::bundle::current(&ctx)
            .ok()
            .map(|b| b.spiffe_bundle_json)
    })
}

/// Serve `bundle` on `listener` until shutdown: `GET` any path answers the SPIFFE bundle JSON.
/// HTTP/1.1, one request per connection, bounded, no client certificate.
pub async fn serve_endpoint(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    bundle: BundleSource,
    shutdown: watch::Receiver<bool>,
) {
    crate::https::accept_loop(
        "federation endpoint",
        listener,
        config,
        FETCH_TIMEOUT,
        256,
        // It asks for no client certificate, so it refuses none.
        None,
        shutdown,
        move |mut tls, remote| {
            let bundle = bundle.clone();
            async move {
                let served = tokio::time::timeout(FETCH_TIMEOUT, async {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = tls.read(&mut buf).await?;
                        if n == 0 || req.len() + n > REQUEST_BYTES_MAX {
                            return Ok::<_, std::io::Error>(());
                        }
                        req.extend_from_slice(&buf[..n]);
                    }
                    let (status, body) = if req.starts_with(b"GET ") {
                        match bundle() {
                            Some(b) => ("200 OK", b),
                            None => ("503 Service Unavailable", "{}".to_owned()),
                        }
                    } else {
                        ("405 Method Not Allowed", "{}".to_owned())
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    tls.write_all(head.as_bytes()).await?;
                    tls.write_all(body.as_bytes()).await?;
                    tls.shutdown().await?;
                    Ok(())
                })
                .await;
                if let Ok(Err(e)) = served {
                    tracing::debug!(%remote, error = %e, "federation endpoint: connection failed");
                }
            }
        },
    )
    .await
}

// ---- the fetcher ----

/// Authenticates an `https_spiffe` endpoint: the chain ends in one of the federated domain's
/// X.509 authorities and the leaf is an X.509-SVID of exactly the expected SPIFFE ID.
#[derive(Debug)]
struct SpiffeEndpointVerifier {
    roots: Arc<rustls::RootCertStore>,
    expect: SpiffeId,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for SpiffeEndpointVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let id = authsec_raft::tls::svid_id(end_entity)?;
        if id != self.expect {
            return Err(rustls::Error::General(format!(
                "the bundle endpoint presented {id}, not {}",
                self.expect
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        authsec_raft::tls::signatures::tls12(&self.provider, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        authsec_raft::tls::signatures::tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        authsec_raft::tls::signatures::schemes(&self.provider)
    }
}

fn client_config(
    f: &Federation,
    web_roots: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = authsec_raft::tls::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut c = match &f.profile {
        Profile::HttpsWeb => {
            let mut roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            for r in web_roots {
                roots
                    .add(r.clone())
                    .map_err(|e| format!("federation.web_ca_file: {e}"))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Profile::HttpsSpiffe { endpoint_spiffe_id } => {
            let mut roots = rustls::RootCertStore::empty();
            for a in f.bundle.iter().flat_map(|b| b.x509_authorities.iter()) {
                roots
                    .add(CertificateDer::from(a.clone()))
                    .map_err(|e| format!("a recorded authority: {e}"))?;
            }
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(SpiffeEndpointVerifier {
                    roots: Arc::new(roots),
                    expect: endpoint_spiffe_id.clone(),
                    provider,
                }))
                .with_no_client_auth()
        }
    };
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// Fetch and parse the bundle of `f` from its endpoint.
pub async fn fetch(
    f: &Federation,
    web_roots: &[CertificateDer<'static>],
) -> Result<FederatedBundle, String> {
    let config = client_config(f, web_roots)?;
    let body = crate::https::get(&f.endpoint_url, config, BUNDLE_BYTES_MAX, true).await?;
    let text = String::from_utf8(body).map_err(|_| "the bundle is not UTF-8".to_owned())?;
    parse_spiffe_bundle(&text)
}

/// On the leader, keep every federated bundle current; elsewhere, idle.
pub async fn fetch_loop(
    ctx: Arc<Ctx>,
    web_roots: Vec<CertificateDer<'static>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut retry_after: std::collections::BTreeMap<TrustDomain, tokio::time::Instant> =
        Default::default();
    let mut fetched: std::collections::BTreeSet<TrustDomain> = Default::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let leads = ctx.writer.raft().metrics().borrow().current_leader == Some(ctx.node_id);
        if !leads {
            fetched.clear();
            continue;
        }
        let federations = match load(&ctx.reader) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "reading federations failed");
                continue;
            }
        };
        let now_ms = crate::issuer::now_ms();
        for f in federations {
            if retry_after
                .get(&f.trust_domain)
                .is_some_and(|t| *t > tokio::time::Instant::now())
            {
                continue;
            }
            // Fetch at once what was never fetched by this leader (a new federation, or one
            // registered with an operator's bundle), then at the recorded refresh hint.
            let due = match &f.bundle {
                _ if !fetched.contains(&f.trust_domain) => true,
                None => true,
                Some(b) => {
                    let hint = u64::from(b.refresh_hint_s).clamp(REFRESH_MIN_S, REFRESH_MAX_S);
                    now_ms >= f.bundle_at_ms + hint * 1000
                }
            };
            if !due {
                continue;
            }
            match fetch(&f, &web_roots).await {
                Ok(bundle) => {
                    retry_after.remove(&f.trust_domain);
                    fetched.insert(f.trust_domain.clone());
                    if f.bundle.as_ref() == Some(&bundle) {
                        // Unchanged: nothing to record; look again after the hint.
                        retry_after.insert(
                            f.trust_domain.clone(),
                            tokio::time::Instant::now()
                                + Duration::from_secs(
                                    u64::from(bundle.refresh_hint_s)
                                        .clamp(REFRESH_MIN_S, REFRESH_MAX_S),
                                ),
                        );
                        continue;
                    }
                    let actor = Actor {
                        principal: Principal::Named(
                            authsec_raft::tls::node_spiffe_id(&ctx.sec.td, ctx.node_id).to_string(),
                        ),
                        via_node: ctx.node_id,
                    };
                    let td = f.trust_domain.clone();
                    match ctx
                        .write(
                            actor,
                            Command::RecordFederatedBundle {
                                trust_domain: td.clone(),
                                bundle,
                            },
                        )
                        .await
                    {
                        Ok(_) => tracing::info!(trust_domain = %td, "federated bundle recorded"),
                        Err(s) => {
                            tracing::warn!(trust_domain = %td, error = %s.message(), "recording a federated bundle failed");
                            retry_after.insert(td, tokio::time::Instant::now() + RETRY);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(trust_domain = %f.trust_domain, url = %f.endpoint_url, error = %e, "fetching a federated bundle failed; retrying");
                    retry_after.insert(f.trust_domain.clone(), tokio::time::Instant::now() + RETRY);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_bundle_round_trips_through_the_parser() {
        let td = TrustDomain::parse("example.org").expect("td");
        let root = crate::pki::Root::generate(&td).expect("root");
        let key = rcgen::KeyPair::generate().expect("key");
        use rcgen::PublicKeyData;
        let b = FederatedBundle {
            sequence: 9,
            refresh_hint_s: 300,
            x509_authorities: vec![root.cert_der.to_vec()],
            jwt_authorities: vec![("k1".into(), key.subject_public_key_info())],
        };
        let json = bundle_json(&b).expect("json");
        assert_eq!(parse_spiffe_bundle(&json).expect("parse"), b);
        assert!(parse_spiffe_bundle("{\"keys\": []}").is_err());
        assert!(parse_spiffe_bundle("nope").is_err());
        // Unknown uses are ignored.
        let with_unknown = json.replacen(
            "\"keys\":[",
            "\"keys\":[{\"use\":\"other\",\"kty\":\"OKP\"},",
            1,
        );
        assert_eq!(parse_spiffe_bundle(&with_unknown).expect("parse"), b);
    }

    /// A CA and a leaf it signs for `san`.
    fn pki(san: rcgen::SanType) -> (CertificateDer<'static>, Arc<rustls::ServerConfig>) {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::default();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let leaf_key = rcgen::KeyPair::generate().expect("key");
        let mut leaf = rcgen::CertificateParams::default();
        leaf.subject_alt_names = vec![san];
        leaf.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf.signed_by(&leaf_key, &issuer).expect("leaf");
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).expect("key");
        let mut c = rustls::ServerConfig::builder_with_provider(authsec_raft::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .expect("config");
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        (ca_cert.der().clone(), Arc::new(c))
    }

    async fn endpoint(
        config: Arc<rustls::ServerConfig>,
        doc: String,
    ) -> (u16, watch::Sender<bool>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        let (tx, rx) = watch::channel(false);
        tokio::spawn(serve_endpoint(
            l,
            config,
            Arc::new(move || Some(doc.clone())),
            rx,
        ));
        (port, tx)
    }

    fn partner(url: String, profile: Profile, bundle: Option<FederatedBundle>) -> Federation {
        Federation {
            trust_domain: TrustDomain::parse("partner.example").expect("td"),
            endpoint_url: url,
            profile,
            bundle,
            bundle_at_ms: 0,
            created_at_ms: 0,
        }
    }

    #[tokio::test]
    async fn bundles_are_fetched_over_both_profiles_and_only_from_the_right_server() {
        let key = rcgen::KeyPair::generate().expect("key");
        use rcgen::PublicKeyData;
        let (web_ca, web) = pki(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        let served = FederatedBundle {
            sequence: 4,
            refresh_hint_s: 60,
            x509_authorities: vec![web_ca.to_vec()],
            jwt_authorities: vec![("k9".into(), key.subject_public_key_info())],
        };
        let doc = bundle_json(&served).expect("json");

        // https_web: only with a root that certifies the server for the URL's host.
        let (port, _stop) = endpoint(web, doc.clone()).await;
        let f = partner(
            format!("https://127.0.0.1:{port}/bundle"),
            Profile::HttpsWeb,
            None,
        );
        let e = fetch(&f, &[]).await.expect_err("not a Web PKI certificate");
        assert!(e.contains("TLS"), "{e}");
        assert_eq!(
            fetch(&f, std::slice::from_ref(&web_ca))
                .await
                .expect("fetched"),
            served
        );

        // https_spiffe: an SVID of exactly the registered ID, chained to the domain's bundle.
        let id = "spiffe://partner.example/bundle-endpoint";
        let (spiffe_ca, spiffe) = pki(rcgen::SanType::URI(id.try_into().expect("uri")));
        let (port, _stop2) = endpoint(spiffe, doc).await;
        let url = format!("https://127.0.0.1:{port}/");
        let known = FederatedBundle {
            x509_authorities: vec![spiffe_ca.to_vec()],
            ..served.clone()
        };
        let ok = partner(
            url.clone(),
            Profile::HttpsSpiffe {
                endpoint_spiffe_id: SpiffeId::parse(id).expect("id"),
            },
            Some(known.clone()),
        );
        assert_eq!(fetch(&ok, &[]).await.expect("fetched"), served);
        let other_id = partner(
            url.clone(),
            Profile::HttpsSpiffe {
                endpoint_spiffe_id: SpiffeId::parse("spiffe://partner.example/other").expect("id"),
            },
            Some(known),
        );
        assert!(fetch(&other_id, &[])
            .await
            .expect_err("wrong ID")
            .contains("TLS"));
        let other_roots = partner(
            url,
            Profile::HttpsSpiffe {
                endpoint_spiffe_id: SpiffeId::parse(id).expect("id"),
            },
            Some(served.clone()), // the web CA, which did not sign this server
        );
        assert!(fetch(&other_roots, &[]).await.is_err(), "unknown issuer");
    }
}

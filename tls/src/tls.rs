//! Mutual TLS between authsec components, with peers authorized by SPIFFE ID.
//!
//! Standard verifiers check DNS names; authsec checks who a peer *is*: the chain must lead to
//! the trust bundle, and the leaf must be an X.509-SVID (exactly one URI SAN, a SPIFFE ID in
//! our trust domain, not a CA, key usage digitalSignature). Authorization by that ID (a node
//! for Raft traffic, an admin for the admin API) happens where the request is served, from the
//! [`PeerInfo`] every accepted connection carries.
//!
//! Certificates and the bundle rotate without a restart: the configs read them from a
//! [`TlsState`] at every handshake. TLS 1.3 only, no session resumption (a resumed session
//! would skip the verifier), ALPN `h2`.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use authsec_domain::{SpiffeId, TrustDomain};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Longest a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("not an X.509-SVID: {0}")]
    NotSvid(String),
    #[error("peer {0} is not in trust domain {1}")]
    ForeignTrustDomain(SpiffeId, TrustDomain),
    #[error("peer {got} is not the expected {expected}")]
    Unexpected { got: SpiffeId, expected: String },
    #[error("{0} is revoked")]
    Revoked(SpiffeId),
    #[error("the server's chain holds no certificate with the pinned fingerprint {0}")]
    PinMismatch(String),
    #[error("the trust bundle is empty")]
    EmptyBundle,
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

impl From<TlsError> for rustls::Error {
    fn from(e: TlsError) -> Self {
        match e {
            TlsError::Rustls(e) => e,
            other => rustls::Error::General(other.to_string()),
        }
    }
}

/// The crypto provider of every TLS config and signature in authsec.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// `spiffe://<td>/authsec/node/<id>`.
pub fn node_spiffe_id(td: &TrustDomain, id: u64) -> SpiffeId {
    // A trust domain and a number always make a valid SPIFFE ID.
    SpiffeId::parse(&format!("spiffe://{}/authsec/node/{id}", td.as_str()))
        .unwrap_or_else(|_| unreachable!("node SPIFFE IDs are always valid"))
}

/// The node id in `spiffe://<td>/authsec/node/<id>`, if `id` is one of `td`'s nodes.
pub fn node_id_of(td: &TrustDomain, id: &SpiffeId) -> Option<u64> {
    let rest = id
        .as_str()
        .strip_prefix("spiffe://")?
        .strip_prefix(td.as_str())?
        .strip_prefix("/authsec/node/")?;
    if rest.starts_with('0') || rest.len() > 20 {
        return None;
    }
    rest.parse().ok()
}

/// The SPIFFE ID of an X.509-SVID leaf, checked per the X.509-SVID standard: exactly one URI
/// SAN holding a valid SPIFFE ID with a path, not a CA, key usage present with
/// digitalSignature and without keyCertSign or cRLSign.
pub fn svid_id(cert: &CertificateDer<'_>) -> Result<SpiffeId, TlsError> {
    use x509_parser::extensions::GeneralName;
    let bad = |s: &str| TlsError::NotSvid(s.to_owned());
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TlsError::NotSvid(format!("unparsable certificate: {e}")))?;
    if x.is_ca() {
        return Err(bad("the leaf is a CA"));
    }
    let ku = x
        .key_usage()
        .map_err(|_| bad("malformed key usage"))?
        .ok_or_else(|| bad("no key usage extension"))?
        .value;
    if !ku.digital_signature() || ku.key_cert_sign() || ku.crl_sign() {
        return Err(bad(
            "key usage must have digitalSignature and neither keyCertSign nor cRLSign",
        ));
    }
    let san = x
        .subject_alternative_name()
        .map_err(|_| bad("malformed subject alternative name"))?
        .ok_or_else(|| bad("no subject alternative name"))?
        .value;
    let mut uris = san.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let uri = uris.next().ok_or_else(|| bad("no URI SAN"))?;
    if uris.next().is_some() {
        return Err(bad("more than one URI SAN"));
    }
    let id = SpiffeId::parse(uri).map_err(|e| TlsError::NotSvid(e.to_string()))?;
    if id
        .as_str()
        .trim_start_matches("spiffe://")
        .find('/')
        .is_none()
    {
        return Err(bad(
            "a SPIFFE ID with no path names a trust domain, not a workload",
        ));
    }
    Ok(id)
}

/// What a certificate claims to be, without judging it: its first URI SAN, if it parses
/// and has one, at most 256 characters of it with control characters replaced by `?` (it
/// comes from a stranger and goes into logs and the audit log). For the audit of a refused
/// certificate, which need not be a valid SVID.
pub fn claimed_uri(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = x.subject_alternative_name().ok()??.value;
    let uri = san.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    })?;
    Some(
        uri.chars()
            .take(256)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect(),
    )
}

/// Which server a client accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Any node of the trust domain.
    AnyNode,
    /// This node only.
    Node(u64),
}

/// Whether a server demands a client certificate at the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No certificate, no connection.
    Required,
    /// A certificate, if presented, must verify; a client without one gets in with no
    /// identity, and each request decides whether that is enough (only joining is).
    Optional,
}

/// What a verified peer presented; in the request extensions of every call on a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    pub spiffe_id: Option<SpiffeId>,
    /// `sha256:<hex>` of the presented leaf certificate.
    pub cert_fingerprint: Option<String>,
    /// The presented leaf certificate itself (which root it chains to matters when a root
    /// is retired: an admin must not retire the root of its own credential).
    pub leaf: Option<CertificateDer<'static>>,
}

struct Material {
    roots: Arc<RootCertStore>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    identity: Arc<CertifiedKey>,
}

/// The trust bundle and this component's own certificate, both replaceable at run time, and
/// the nodes whose certificates are refused although they chain to the bundle.
pub struct TlsState {
    trust_domain: TrustDomain,
    provider: Arc<CryptoProvider>,
    material: RwLock<Arc<Material>>,
    /// The bundle the material trusts, as given by `new`, `replace` or `set_bundle`.
    bundle: RwLock<Vec<CertificateDer<'static>>>,
    revoked: RwLock<Arc<BTreeSet<u64>>>,
    /// Fingerprints (`sha256:<hex>`) of single certificates refused (rotated admins).
    revoked_certs: RwLock<Arc<BTreeSet<String>>>,
}

impl fmt::Debug for TlsState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("TlsState")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl TlsState {
    /// `roots`: the trust bundle (DER). `chain`: own leaf first, then its intermediates.
    pub fn new(
        trust_domain: TrustDomain,
        roots: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<Self>, TlsError> {
        let provider = provider();
        let material = Self::material(&provider, roots.clone(), chain, key)?;
        Ok(Arc::new(Self {
            trust_domain,
            provider,
            material: RwLock::new(Arc::new(material)),
            bundle: RwLock::new(roots),
            revoked: RwLock::new(Arc::new(BTreeSet::new())),
            revoked_certs: RwLock::new(Arc::new(BTreeSet::new())),
        }))
    }

    fn material(
        provider: &Arc<CryptoProvider>,
        roots: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Material, TlsError> {
        let leaf = chain
            .first()
            .ok_or_else(|| TlsError::NotSvid("empty chain".into()))?;
        svid_id(leaf)?;
        let identity = Arc::new(CertifiedKey::from_der(chain, key, provider)?);
        Self::material_for(provider, roots, identity)
    }

    fn material_for(
        provider: &Arc<CryptoProvider>,
        roots: Vec<CertificateDer<'static>>,
        identity: Arc<CertifiedKey>,
    ) -> Result<Material, TlsError> {
        if roots.is_empty() {
            return Err(TlsError::EmptyBundle);
        }
        let mut store = RootCertStore::empty();
        for r in roots {
            store.add(r)?;
        }
        let roots = Arc::new(store);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        Ok(Material {
            roots,
            client_verifier,
            identity,
        })
    }

    fn current(&self) -> Arc<Material> {
        self.material
            .read()
            .map(|m| m.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Replace the bundle and the own certificate together (a rotation); new handshakes use
    /// them at once, open connections keep theirs.
    pub fn replace(
        &self,
        roots: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), TlsError> {
        let mut g = self.bundle.write().unwrap_or_else(|p| p.into_inner());
        let m = Arc::new(Self::material(&self.provider, roots.clone(), chain, key)?);
        *g = roots;
        self.set_material(m);
        Ok(())
    }

    /// Trust exactly `roots` from the next handshake on (the replicated trust bundle, after a
    /// root was prepared or retired); `false` when they are what is trusted already.
    pub fn set_bundle(&self, roots: Vec<CertificateDer<'static>>) -> Result<bool, TlsError> {
        let mut g = self.bundle.write().unwrap_or_else(|p| p.into_inner());
        if *g == roots {
            return Ok(false);
        }
        let m = Arc::new(Self::material_for(
            &self.provider,
            roots.clone(),
            self.current().identity.clone(),
        )?);
        *g = roots;
        self.set_material(m);
        Ok(true)
    }

    fn set_material(&self, m: Arc<Material>) {
        match self.material.write() {
            Ok(mut g) => *g = m,
            Err(p) => *p.into_inner() = m,
        }
    }

    /// Refuse these nodes from now on, on new handshakes (requests on open connections are
    /// checked by the caller through [`TlsState::is_revoked`]).
    pub fn set_revoked(&self, nodes: BTreeSet<u64>) {
        let nodes = Arc::new(nodes);
        match self.revoked.write() {
            Ok(mut g) => *g = nodes,
            Err(p) => *p.into_inner() = nodes,
        }
    }

    /// Refuse these certificates (by `sha256:<hex>` fingerprint) from now on.
    pub fn set_revoked_certs(&self, fingerprints: BTreeSet<String>) {
        let f = Arc::new(fingerprints);
        match self.revoked_certs.write() {
            Ok(mut g) => *g = f,
            Err(p) => *p.into_inner() = f,
        }
    }

    /// True when the certificate with this fingerprint was revoked.
    pub fn is_cert_revoked(&self, fingerprint: &str) -> bool {
        self.revoked_certs
            .read()
            .map(|g| g.contains(fingerprint))
            .unwrap_or_else(|p| p.into_inner().contains(fingerprint))
    }

    /// True when `id` is a revoked node of this trust domain.
    pub fn is_revoked(&self, id: &SpiffeId) -> bool {
        let Some(node) = node_id_of(&self.trust_domain, id) else {
            return false;
        };
        self.revoked
            .read()
            .map(|g| g.contains(&node))
            .unwrap_or_else(|p| p.into_inner().contains(&node))
    }

    fn check_revoked(&self, id: SpiffeId) -> Result<SpiffeId, TlsError> {
        if self.is_revoked(&id) {
            return Err(TlsError::Revoked(id));
        }
        Ok(id)
    }

    /// The current own certificate chain (leaf first).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current().identity.cert.clone()
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The own SPIFFE ID, from the current certificate.
    pub fn own_id(&self) -> Result<SpiffeId, TlsError> {
        let m = self.current();
        let leaf = m
            .identity
            .cert
            .first()
            .ok_or_else(|| TlsError::NotSvid("empty chain".into()))?;
        svid_id(leaf)
    }

    /// A server config; `auth` says whether a client certificate is required. A presented one
    /// must chain to the bundle and be an SVID of the trust domain, not revoked.
    pub fn server_config(
        self: &Arc<Self>,
        auth: ClientAuth,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let mut c = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(ClientVerifier {
                state: self.clone(),
                auth,
            }))
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        c.alpn_protocols = vec![b"h2".to_vec()];
        c.session_storage = Arc::new(NoServerSessionStorage {});
        c.send_tls13_tickets = 0;
        Ok(Arc::new(c))
    }

    /// A client config that accepts only servers matching `expect`.
    pub fn client_config(self: &Arc<Self>, expect: Expect) -> Result<Arc<ClientConfig>, TlsError> {
        let mut c = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier {
                state: self.clone(),
                expect,
            }))
            .with_client_cert_resolver(Arc::new(Resolver(self.clone())));
        c.alpn_protocols = vec![b"h2".to_vec()];
        c.resumption = Resumption::disabled();
        Ok(Arc::new(c))
    }

    fn check_domain(&self, id: SpiffeId) -> Result<SpiffeId, TlsError> {
        if id.trust_domain() != self.trust_domain {
            return Err(TlsError::ForeignTrustDomain(id, self.trust_domain.clone()));
        }
        Ok(id)
    }
}

/// Serves the current certificate to both sides of a handshake.
#[derive(Debug)]
struct Resolver(Arc<TlsState>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().identity.clone())
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().identity.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The client's check of a server: chain to the bundle, an SVID of our trust domain, the
/// expected node. The host name is not checked: the SPIFFE ID is the identity.
#[derive(Debug)]
struct ServerVerifier {
    state: Arc<TlsState>,
    expect: Expect,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let m = self.state.current();
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &m.roots,
            intermediates,
            now,
            self.state.provider.signature_verification_algorithms.all,
        )?;
        let id = self
            .state
            .check_revoked(self.state.check_domain(svid_id(end_entity)?)?)?;
        let node = node_id_of(&self.state.trust_domain, &id);
        match (&self.expect, node) {
            (Expect::AnyNode, Some(_)) => {}
            (Expect::Node(want), Some(got)) if *want == got => {}
            (expect, _) => {
                return Err(TlsError::Unexpected {
                    got: id,
                    expected: match expect {
                        Expect::AnyNode => "an authsec node".into(),
                        Expect::Node(n) => node_spiffe_id(&self.state.trust_domain, *n).to_string(),
                    },
                }
                .into())
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signatures::tls12(&self.state.provider, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signatures::tls13(&self.state.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signatures::schemes(&self.state.provider)
    }
}

/// The server's check of a client: chain to the bundle (webpki, client-auth usage) and an SVID
/// of our trust domain. Which IDs may call what is decided per request.
#[derive(Debug)]
struct ClientVerifier {
    state: Arc<TlsState>,
    auth: ClientAuth,
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        self.auth == ClientAuth::Required
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let checked = (|| -> Result<ClientCertVerified, TlsError> {
            let m = self.state.current();
            m.client_verifier
                .verify_client_cert(end_entity, intermediates, now)?;
            let id = self
                .state
                .check_revoked(self.state.check_domain(svid_id(end_entity)?)?)?;
            if self.state.is_cert_revoked(&sha256_pin(end_entity.as_ref())) {
                return Err(TlsError::Revoked(id));
            }
            Ok(ClientCertVerified::assertion())
        })();
        checked.map_err(|e| {
            // For `accept`, which reports the refusal as a failed authentication: what the
            // certificate claimed to be (unverified) and why it was refused.
            let claimed = claimed_uri(end_entity);
            let _ = REFUSED.try_with(|r| *r.borrow_mut() = Some((claimed, e.to_string())));
            match e {
                TlsError::Rustls(e) => e,
                // An invalid certificate to rustls, so the client gets a
                // `certificate_unknown` alert, not `internal_error` (which has its operator
                // look for a fault in the server); the reason is in our log and the audit
                // record.
                other => rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                    rustls::OtherError(Arc::new(other)),
                )),
            }
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.state
            .current()
            .client_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.state
            .current()
            .client_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.state
            .current()
            .client_verifier
            .supported_verify_schemes()
    }
}

/// A client config for a node that has no certificate yet (`authsec node join`): it trusts
/// the server only if the chain the server sends holds a CA certificate whose SHA-256 is
/// `pin` (`sha256:<hex>`), the leaf chains to it and is a node SVID of `trust_domain`. This
/// is how `kubeadm join` pins its CA. No client certificate is presented.
pub fn pinned_client_config(
    trust_domain: TrustDomain,
    pin: &str,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let mut c = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
            trust_domain,
            pin: pin.trim().to_ascii_lowercase(),
            provider,
        }))
        .with_no_client_auth();
    c.alpn_protocols = vec![b"h2".to_vec()];
    c.resumption = Resumption::disabled();
    Ok(Arc::new(c))
}

/// `sha256:<hex>` of DER bytes: how certificates are pinned and revoked one by one.
pub fn sha256_pin(der: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(der);
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[derive(Debug)]
struct PinnedVerifier {
    trust_domain: TrustDomain,
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let anchor = intermediates
            .iter()
            .find(|c| sha256_pin(c.as_ref()) == self.pin)
            .ok_or_else(|| TlsError::PinMismatch(self.pin.clone()))?;
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone().into_owned())?;
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        // The chain may hold a node intermediate (offline-root mode) before the anchor.
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let id = svid_id(end_entity)?;
        if id.trust_domain() != self.trust_domain {
            return Err(TlsError::ForeignTrustDomain(id, self.trust_domain.clone()).into());
        }
        if node_id_of(&self.trust_domain, &id).is_none() {
            return Err(TlsError::Unexpected {
                got: id,
                expected: "an authsec node".into(),
            }
            .into());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signatures::tls12(&self.provider, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signatures::tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signatures::schemes(&self.provider)
    }
}

/// Handshake signature checks with a provider's algorithms, for custom verifiers (ours, and
/// the SDK's).
pub mod signatures {
    use super::*;

    pub fn tls12(
        p: &CryptoProvider,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &p.signature_verification_algorithms,
        )
    }

    pub fn tls13(
        p: &CryptoProvider,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &p.signature_verification_algorithms,
        )
    }

    pub fn schemes(p: &CryptoProvider) -> Vec<SignatureScheme> {
        p.signature_verification_algorithms.supported_schemes()
    }
}

/// An accepted, verified TLS connection; tonic puts its [`PeerInfo`] in every request.
#[derive(Debug)]
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
    /// This connection's place among the listener's connections, given back when the
    /// server drops the connection (and, without a client certificate, among the anonymous).
    _open: tokio::sync::OwnedSemaphorePermit,
    _anonymous: Option<tokio::sync::OwnedSemaphorePermit>,
    /// When a connection without a client certificate ends: reads give end-of-stream then.
    closes: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl TlsConn {
    pub fn peer(&self) -> &PeerInfo {
        &self.info
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(closes) = &mut this.closes {
            if closes.as_mut().poll(cx).is_ready() {
                // End of stream: the server closes the connection.
                return Poll::Ready(Ok(()));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

tokio::task_local! {
    /// Inside [`accept`]: set by the client verifier when it refuses a certificate.
    static REFUSED: std::cell::RefCell<Option<(Option<String>, String)>>;
}

/// A handshake refused for the client's certificate: a failed authentication.
#[derive(Debug, Clone)]
pub struct Refused {
    pub remote: SocketAddr,
    /// The URI (a SPIFFE ID, for anything of ours) the certificate named. Not verified (the
    /// certificate was refused); `None` when it named none, or when no certificate came
    /// where one is required.
    pub claimed: Option<String>,
    pub reason: String,
}

/// What became of one connection's handshake.
// Returned once per connection and matched at once: boxing the stream would only add an
// allocation per connection.
#[allow(clippy::large_enum_variant)]
pub enum Accepted<IO> {
    Ok(tokio_rustls::server::TlsStream<IO>),
    /// Refused for the client's certificate (see [`Refused`]).
    Refused(Refused),
    /// Anything else: a protocol error, a scanner, a timeout. Not an authentication attempt.
    Failed(String),
}

impl<IO> fmt::Debug for Accepted<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok(_) => f.write_str("Accepted::Ok(..)"),
            Self::Refused(r) => f.debug_tuple("Accepted::Refused").field(r).finish(),
            Self::Failed(e) => f.debug_tuple("Accepted::Failed").field(e).finish(),
        }
    }
}

/// Run one server handshake within `timeout`, telling a client certificate that was refused
/// apart from every other failure, so that the refusal can be audited as a failed
/// authentication while port scans and dropped connections are not.
pub async fn accept<IO>(
    acceptor: &tokio_rustls::TlsAcceptor,
    io: IO,
    remote: SocketAddr,
    timeout: Duration,
) -> Accepted<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    // The verifier runs inside this future's polls, so it sees the task-local.
    REFUSED
        .scope(std::cell::RefCell::new(None), async move {
            let done = tokio::time::timeout(timeout, acceptor.accept(io)).await;
            let refused = REFUSED.with(|r| r.borrow_mut().take());
            match done {
                Ok(Ok(tls)) => Accepted::Ok(tls),
                Ok(Err(e)) => {
                    if let Some((claimed, reason)) = refused {
                        return Accepted::Refused(Refused {
                            remote,
                            claimed,
                            reason,
                        });
                    }
                    let no_certificate = e
                        .get_ref()
                        .and_then(|i| i.downcast_ref::<rustls::Error>())
                        .is_some_and(|r| matches!(r, rustls::Error::NoCertificatesPresented));
                    if no_certificate {
                        Accepted::Refused(Refused {
                            remote,
                            claimed: None,
                            reason: "no client certificate".into(),
                        })
                    } else {
                        Accepted::Failed(e.to_string())
                    }
                }
                Err(_) => Accepted::Failed("timed out".into()),
            }
        })
        .await
}

/// How many connections a listener holds, and for how long those without a certificate.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open at once, handshakes in progress included; more wait in the listen backlog, so a
    /// flood of connections cannot exhaust the node's file descriptors or memory.
    pub connections: usize,
    /// Of those, without a client certificate (a joining node, an agent attesting, anyone
    /// reading the bundle): beyond this, such a connection is closed after its handshake, so
    /// strangers cannot take the places of the cluster's own peers and agents.
    pub anonymous: usize,
    /// A connection without a client certificate is closed this long after its handshake
    /// (what it may call are short unary calls).
    pub anonymous_lifetime: Duration,
}

/// Accept TLS connections on `listener`. Handshakes run on their own tasks, bounded by
/// [`HANDSHAKE_TIMEOUT`], so a slow or hostile client never holds up the accept loop; failed
/// handshakes are logged and dropped, and those refused for the client's certificate are
/// also handed to `on_refused`. The connections are bounded by `limits`. The stream ends
/// when its receiver is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    limits: Limits,
    on_refused: impl Fn(Refused) + Send + Sync + 'static,
) -> impl futures::Stream<Item = Result<TlsConn, std::io::Error>> {
    let on_refused = Arc::new(on_refused);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<TlsConn, std::io::Error>>(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let open = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    let anonymous = Arc::new(tokio::sync::Semaphore::new(limits.anonymous));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = open.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = tx.closed() => return,
            };
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, on_refused, anonymous) = (
                acceptor.clone(),
                tx.clone(),
                on_refused.clone(),
                anonymous.clone(),
            );
            tokio::spawn(async move {
                match accept(&acceptor, tcp, remote, HANDSHAKE_TIMEOUT).await {
                    Accepted::Ok(tls) => {
                        let leaf = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| c.clone().into_owned());
                        let spiffe_id = leaf.as_ref().and_then(|c| svid_id(c).ok());
                        let cert_fingerprint = leaf.as_ref().map(|c| sha256_pin(c.as_ref()));
                        let (anonymous, closes) = if leaf.is_some() {
                            (None, None)
                        } else {
                            match anonymous.try_acquire_owned() {
                                Ok(p) => (
                                    Some(p),
                                    Some(Box::pin(tokio::time::sleep(limits.anonymous_lifetime))),
                                ),
                                Err(_) => {
                                    tracing::info!(
                                        %remote,
                                        max = limits.anonymous,
                                        "connection without a client certificate closed: the listener holds as many as it takes"
                                    );
                                    return;
                                }
                            }
                        };
                        let conn = TlsConn {
                            _open: permit,
                            _anonymous: anonymous,
                            closes,
                            inner: tls,
                            info: PeerInfo {
                                remote: Some(remote),
                                spiffe_id,
                                cert_fingerprint,
                                leaf,
                            },
                        };
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Accepted::Refused(r) => {
                        tracing::info!(
                            %remote,
                            claimed = r.claimed.as_deref().unwrap_or("-"),
                            reason = %r.reason,
                            "TLS handshake refused: the client certificate"
                        );
                        on_refused(r);
                    }
                    Accepted::Failed(e) => {
                        tracing::info!(%remote, error = %e, "TLS handshake failed");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Connect over TCP and TLS to `addr` (`host:port`), for `Endpoint::connect_with_connector`.
pub async fn connect(
    addr: &str,
    config: Arc<ClientConfig>,
) -> Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_matches(['[', ']']);
    let name = ServerName::try_from(host.to_owned()).map_err(std::io::Error::other)?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(std::io::Error::other("the peer did not negotiate HTTP/2"));
    }
    Ok(hyper_util::rt::TokioIo::new(tls))
}

/// The certificate chain the server at `addr` serves (leaf first), as a handshake shows it to
/// `state` expecting `expect`: what its peers and clients verify, not what it says of itself.
pub async fn served_chain(
    state: &Arc<TlsState>,
    addr: &str,
    expect: Expect,
    timeout: Duration,
) -> Result<Vec<CertificateDer<'static>>, std::io::Error> {
    let config = state.client_config(expect).map_err(std::io::Error::other)?;
    let conn = tokio::time::timeout(timeout, connect(addr, config))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no handshake within {timeout:?}"),
            )
        })??;
    Ok(conn
        .inner()
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default())
}

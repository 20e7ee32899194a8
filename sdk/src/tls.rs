//! rustls configs that follow an [`X509Source`]: each handshake presents the current SVID
//! and verifies the peer against the current bundle of the peer's trust domain, so rotation
//! (of the SVID or of the roots) needs no restart and no new config. The peer is authorized by
//! its SPIFFE ID, not a host name.

use std::collections::BTreeSet;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use authsec_tls::signatures;

use crate::workload::X509Source;

/// Who may be on the other end, by SPIFFE ID.
#[derive(Clone)]
pub struct Authorize(Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl std::fmt::Debug for Authorize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authorize(..)")
    }
}

impl Authorize {
    /// Exactly these SPIFFE IDs.
    pub fn ids<I: IntoIterator<Item = S>, S: Into<String>>(ids: I) -> Self {
        let set: BTreeSet<String> = ids.into_iter().map(Into::into).collect();
        Self(Arc::new(move |id| set.contains(id)))
    }

    /// Any SPIFFE ID of trust domain `td` (`example.org`).
    pub fn trust_domain(td: &str) -> Self {
        let prefix = format!("spiffe://{td}/");
        Self(Arc::new(move |id| id.starts_with(&prefix)))
    }

    /// A predicate of your own.
    pub fn with(f: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub fn allows(&self, id: &str) -> bool {
        (self.0)(id)
    }
}

/// The SPIFFE ID (the one URI SAN) of a peer's leaf certificate.
pub fn peer_spiffe_id(certs: &[CertificateDer<'_>]) -> Option<String> {
    certs
        .first()
        .and_then(|c| authsec_tls::svid_id(c).ok())
        .map(|id| id.to_string())
}

fn err(m: impl Into<String>) -> rustls::Error {
    rustls::Error::General(m.into())
}

#[derive(Debug)]
struct Svid(X509Source);

impl ResolvesServerCert for Svid {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.svid().map(|s| s.certified)
    }
}

impl ResolvesClientCert for Svid {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.svid().map(|s| s.certified)
    }

    fn has_certs(&self) -> bool {
        self.0.svid().is_some()
    }
}

/// Verifies a peer of either side: chain to the bundle of the trust domain its SPIFFE ID
/// names, then the authorizer.
#[derive(Debug)]
struct Peer {
    source: X509Source,
    authorize: Authorize,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Peer {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let id = authsec_tls::svid_id(end_entity)
            .map_err(|e| err(format!("the peer's certificate is not an X.509-SVID: {e}")))?
            .to_string();
        let td = format!(
            "spiffe://{}",
            id.trim_start_matches("spiffe://")
                .split('/')
                .next()
                .unwrap_or("")
        );
        let ctx = self
            .source
            .current()
            .ok_or_else(|| err("no X.509 context yet: cannot verify the peer"))?;
        let roots = ctx
            .roots
            .get(&td)
            .ok_or_else(|| err(format!("no bundle for {td}: the peer {id} is not trusted")))?;
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if !self.authorize.allows(&id) {
            return Err(err(format!("the peer {id} is not authorized")));
        }
        Ok(())
    }
}

impl ServerCertVerifier for Peer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now)?;
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

impl ClientCertVerifier for Peer {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
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

/// A client config: presents the source's SVID, accepts a server whose SVID chains to its
/// trust domain's bundle and that `authorize` allows. ALPN is left to the caller (set
/// `alpn_protocols` to `h2` for gRPC).
pub fn client_config(
    source: &X509Source,
    authorize: Authorize,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = authsec_tls::provider();
    Ok(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Peer {
                source: source.clone(),
                authorize,
                provider,
            }))
            .with_client_cert_resolver(Arc::new(Svid(source.clone()))),
    )
}

/// A server config: presents the source's SVID, requires a client SVID that chains to its
/// trust domain's bundle and that `authorize` allows.
pub fn server_config(
    source: &X509Source,
    authorize: Authorize,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = authsec_tls::provider();
    Ok(
        rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(Peer {
                source: source.clone(),
                authorize,
                provider,
            }))
            .with_cert_resolver(Arc::new(Svid(source.clone()))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorizers() {
        let a = Authorize::ids(["spiffe://td/a"]);
        assert!(a.allows("spiffe://td/a"));
        assert!(!a.allows("spiffe://td/b"));
        let t = Authorize::trust_domain("td");
        assert!(t.allows("spiffe://td/x/y"));
        assert!(!t.allows("spiffe://tdx/y"));
        assert!(!t.allows("spiffe://other/td/"));
    }
}

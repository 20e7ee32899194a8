//! SVID issuance on every node (DESIGN.md "credentials from any node"): each node signs
//! X.509-SVIDs with its own intermediate CA and JWT-SVIDs with its own ES256 key, from its own
//! projections, with no consensus round per credential.
//!
//! Invariant: nothing is signed with a key verifiers cannot yet see. A node signs only with the
//! key its *local projection* shows `Active`, and a key becomes active only through the log
//! after it was published through the log. The private halves stay on the node that made them
//! (`<data_dir>/issuer/<kid>.key`, mode 0600); only public keys and the intermediate's
//! certificate travel, in `PublishNodeKey`.
//!
//! Rotation follows SPIRE: a successor is prepared (published) at half the active key's
//! lifetime and activated at a sixth remaining; a superseded key stays in the bundle until it
//! expires, and nothing signed with it outlives it (leaves and tokens are capped by their
//! issuer's `not_after`).
//!
//! A node beyond its freshness bound refuses to issue (UNAVAILABLE with the reason) and resumes
//! by itself; see [`authsec_raft::freshness`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use authsec_domain::identity::Entry;
use authsec_domain::keys::{KeyKind, NodeKey};
use authsec_domain::SpiffeId;
use authsec_raft::freshness::{Freshness, Source};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::Engine;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
};
use rustls::pki_types::CertificateDer;
use sha2::Digest;
use x509_parser::prelude::FromDer;

use crate::pki::{self, CSR_BYTES_MAX};

/// Backdating of `notBefore`, for verifiers whose clocks run a little behind.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Bounds of a node intermediate's (and JWT key's) lifetime. The minimum is for tests of
/// rotation; production keys live hours.
pub const CA_TTL_MIN: Duration = Duration::from_secs(30);
pub const CA_TTL_MAX: Duration = Duration::from_secs(30 * 24 * 3600);
/// Audiences per JWT-SVID, and bytes per audience.
pub const AUDIENCES_MAX: usize = 16;
pub const AUDIENCE_BYTES_MAX: usize = 256;

/// Why a credential was not issued. Each maps to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// INVALID_ARGUMENT: the request cannot be served as sent.
    #[error("{0}")]
    Invalid(String),
    /// UNAVAILABLE: this node cannot issue now (beyond its freshness bound, or no active key
    /// yet); another node may, and this one resumes by itself.
    #[error("{0}")]
    Unavailable(String),
    #[error("signing failed: {0}")]
    Internal(String),
}

impl From<IssueError> for tonic::Status {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::Invalid(m) => tonic::Status::invalid_argument(m),
            IssueError::Unavailable(m) => tonic::Status::unavailable(m),
            IssueError::Internal(m) => {
                tracing::error!(error = %m, "signing an SVID failed");
                tonic::Status::internal("signing failed; see the node's log")
            }
        }
    }
}

fn unix_now() -> Duration {
    crate::clock::unix_now()
}

fn at(t: Duration) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.as_secs() as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The active intermediate CA of this node, ready to sign.
pub struct CaKey {
    pub kid: String,
    pub cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    pub not_after: Duration,
}

impl std::fmt::Debug for CaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The active JWT-SVID key of this node.
pub struct JwtKey {
    pub kid: String,
    key: EcdsaKeyPair,
    pub not_after: Duration,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The active audit key of this node: signs checkpoints of the audit chain (issue 9).
pub struct AuditKey {
    pub kid: String,
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl AuditKey {
    /// Ed25519 over `message` (deterministic, RFC 8032).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.key.sign(message).to_bytes()
    }
}

/// The signature algorithm of OAuth access tokens (`[oauth] alg`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum TokenAlg {
    /// ECDSA P-256 with SHA-256: every JOSE library has it.
    #[default]
    #[serde(rename = "ES256")]
    Es256,
    /// Ed25519.
    #[serde(rename = "EdDSA")]
    EdDsa,
}

impl TokenAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenAlg::Es256 => "ES256",
            TokenAlg::EdDsa => "EdDSA",
        }
    }
}

enum TokenSigner {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// The active access-token key of this node.
pub struct TokenKey {
    pub kid: String,
    pub alg: TokenAlg,
    signer: TokenSigner,
    pub not_after: Duration,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl TokenKey {
    /// The JWS signature of `input` (raw `r || s` for ES256, as JOSE wants).
    pub fn sign(&self, input: &[u8]) -> Result<Vec<u8>, IssueError> {
        match &self.signer {
            TokenSigner::Es256(k) => k
                .sign(&SystemRandom::new(), input)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| IssueError::Internal("ES256 signing failed".into())),
            TokenSigner::EdDsa(k) => Ok(k.sign(input).as_ref().to_vec()),
        }
    }
}

/// A public key taken from a CSR, for rcgen to certify.
#[derive(Debug)]
struct CsrKey {
    raw: Vec<u8>,
    alg: &'static SignatureAlgorithm,
}

impl PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// The CSR's public key, if its self-signature verifies and it asks for nothing an SVID
/// cannot be: no CA, no SPIFFE ID other than `want`. Everything else it requests is ignored.
/// Whether `der` is a CSR this issuer would sign for `want` (what minting checks first).
pub fn check_csr(der: &[u8], want: &SpiffeId) -> Result<(), IssueError> {
    csr_key(der, want).map(|_| ())
}

fn csr_key(der: &[u8], want: &SpiffeId) -> Result<CsrKey, IssueError> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::oid_registry as oids;
    if der.is_empty() || der.len() > CSR_BYTES_MAX {
        return Err(IssueError::Invalid(format!(
            "csr_der must be a DER PKCS#10 request of 1 to {CSR_BYTES_MAX} bytes (got {})",
            der.len()
        )));
    }
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| IssueError::Invalid(format!("csr_der is not a PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(IssueError::Invalid(
            "csr_der has trailing bytes after the request".into(),
        ));
    }
    csr.verify_signature().map_err(|e| {
        IssueError::Invalid(format!(
            "the CSR's signature does not verify with its own key ({e}): it proves no possession of the key"
        ))
    })?;
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            match ext {
                ParsedExtension::BasicConstraints(bc) if bc.ca => {
                    return Err(IssueError::Invalid(
                        "the CSR asks for a CA certificate (basicConstraints CA:true); an X.509-SVID is a leaf".into(),
                    ))
                }
                ParsedExtension::SubjectAlternativeName(san) => {
                    for n in &san.general_names {
                        if let GeneralName::URI(u) = n {
                            if *u != want.as_str() {
                                return Err(IssueError::Invalid(format!(
                                    "the CSR names {u}, but this entry's SPIFFE ID is {want}; an SVID carries only its entry's ID"
                                )));
                            }
                        }
                    }
                }
                _ => {} // requested extensions are advisory: the SVID's come from the entry
            }
        }
    }
    let spki = &csr.certification_request_info.subject_pki;
    let alg_oid = &spki.algorithm.algorithm;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    let alg: &'static SignatureAlgorithm = if *alg_oid == oids::OID_KEY_TYPE_EC_PUBLIC_KEY {
        match curve {
            Some(c) if c == oids::OID_EC_P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Some(c) if c == oids::OID_NIST_EC_P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            _ => {
                return Err(IssueError::Invalid(
                    "the CSR's EC key must be on P-256 or P-384".into(),
                ))
            }
        }
    } else if *alg_oid == oids::OID_SIG_ED25519 {
        &rcgen::PKCS_ED25519
    } else if *alg_oid == oids::OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(k)) => k.key_size(),
            _ => 0,
        };
        if !(2048..=8192).contains(&bits) {
            return Err(IssueError::Invalid(format!(
                "the CSR's RSA key must have 2048 to 8192 bits (has {bits})"
            )));
        }
        &rcgen::PKCS_RSA_SHA256
    } else {
        return Err(IssueError::Invalid(format!(
            "the CSR's key type {alg_oid} is not supported (use EC P-256, P-384, Ed25519 or RSA)"
        )));
    };
    Ok(CsrKey {
        raw: spki.subject_public_key.data.to_vec(),
        alg,
    })
}

/// Serial numbers unique cluster-wide without coordination, carrying the issuing node's applied
/// log index (DESIGN.md: every credential carries it, so "revoke everything of this subject
/// issued below index R" can be judged from the certificate alone):
/// `0x01 || node_id (4 bytes) || applied index (8 bytes) || counter (7 bytes)`. The counter
/// starts at the wall clock in nanoseconds (mod 2^56) when the node starts and only grows, so
/// a restart at the same index does not reuse a value unless the clock went back.
#[derive(Debug)]
struct Serials {
    node_id: u32,
    next: AtomicU64,
}

/// The issuing node and its applied index, from an authsec serial number (what a verifier
/// reads to apply a subject revocation; the SDK will carry the same).
#[cfg(test)]
pub fn serial_origin(serial: &[u8]) -> Option<(u32, u64)> {
    if serial.len() != 20 || serial[0] != 0x01 {
        return None;
    }
    let node = u32::from_be_bytes(serial[1..5].try_into().ok()?);
    let index = u64::from_be_bytes(serial[5..13].try_into().ok()?);
    Some((node, index))
}

impl Serials {
    fn new(node_id: u64) -> Self {
        Self {
            // Config validation keeps node ids within 32 bits.
            node_id: u32::try_from(node_id).unwrap_or(u32::MAX),
            next: AtomicU64::new(unix_now().as_nanos() as u64),
        }
    }

    fn next(&self, applied_index: u64) -> [u8; 20] {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut s = [0u8; 20];
        s[0] = 0x01;
        s[1..5].copy_from_slice(&self.node_id.to_be_bytes());
        s[5..13].copy_from_slice(&applied_index.to_be_bytes());
        s[13..20].copy_from_slice(&n.to_be_bytes()[1..]);
        s
    }
}

/// An issued X.509-SVID.
#[derive(Debug, Clone)]
pub struct X509Svid {
    /// Leaf, then the node's intermediate.
    pub chain: Vec<Vec<u8>>,
    pub serial: [u8; 20],
    pub not_after: Duration,
}

/// An issued JWT-SVID.
#[derive(Debug, Clone)]
pub struct JwtSvid {
    pub jti: String,
    pub token: String,
    pub kid: String,
    pub expires_at: Duration,
}

/// This node's issuer: its active keys and its freshness.
#[derive(Debug)]
pub struct SvidIssuer {
    pub node_id: u64,
    pub dir: PathBuf,
    ca: RwLock<Option<Arc<CaKey>>>,
    jwt: RwLock<Option<Arc<JwtKey>>>,
    token: RwLock<Option<Arc<TokenKey>>>,
    audit: RwLock<Option<Arc<AuditKey>>>,
    /// The algorithm new access-token keys are made for.
    pub token_alg: TokenAlg,
    serials: Serials,
    pub freshness: Arc<Freshness>,
    pub max_staleness: Duration,
    /// How old a view may be for this node to vouch that a credential is not revoked.
    pub revocation_staleness: Duration,
    pub ca_ttl: Duration,
    pub jwt_key_ttl: Duration,
}

fn read_lock<T: Clone>(l: &RwLock<T>) -> T {
    l.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn write_lock<T>(l: &RwLock<T>, v: T) {
    *l.write().unwrap_or_else(|p| p.into_inner()) = v;
}

impl SvidIssuer {
    pub fn new(
        node_id: u64,
        data_dir: &Path,
        freshness: Arc<Freshness>,
        cfg: &crate::config::IssuerSection,
    ) -> Self {
        Self {
            node_id,
            dir: data_dir.join("issuer"),
            ca: RwLock::new(None),
            jwt: RwLock::new(None),
            token: RwLock::new(None),
            audit: RwLock::new(None),
            token_alg: TokenAlg::default(),
            serials: Serials::new(node_id),
            freshness,
            max_staleness: Duration::from_millis(cfg.max_staleness_ms),
            revocation_staleness: Duration::from_millis(cfg.revocation_staleness_ms),
            ca_ttl: Duration::from_secs(cfg.ca_ttl_s),
            jwt_key_ttl: Duration::from_secs(cfg.jwt_key_ttl_s),
        }
    }

    pub fn active_ca(&self) -> Option<Arc<CaKey>> {
        read_lock(&self.ca)
    }

    pub fn active_jwt(&self) -> Option<Arc<JwtKey>> {
        read_lock(&self.jwt)
    }

    pub fn active_token_key(&self) -> Option<Arc<TokenKey>> {
        read_lock(&self.token)
    }

    pub fn active_audit(&self) -> Option<Arc<AuditKey>> {
        read_lock(&self.audit)
    }

    /// A new Ed25519 audit key, its seed on disk (0600), and its certificate for `node` signed
    /// by the active intermediate: `(kid, leaf DER || intermediate DER, not_after_ms)`. `None`
    /// without an active intermediate (it comes first).
    pub fn new_audit_key(
        &self,
        node: &SpiffeId,
        ttl: Duration,
    ) -> anyhow::Result<Option<(String, Vec<u8>, u64)>> {
        let Some(ca) = self.active_ca() else {
            return Ok(None);
        };
        let mut seed = [0u8; 32];
        aws_lc_rs::rand::SecureRandom::fill(&SystemRandom::new(), &mut seed)
            .map_err(|_| anyhow::anyhow!("the OS random source failed"))?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let public = key.verifying_key().to_bytes();
        let kid = format!(
            "n{}-audit-{}",
            self.node_id,
            hex::encode(&sha2::Sha256::digest(public)[..8])
        );
        pki::write_file(&self.key_path(&kid), hex::encode(seed).as_bytes(), 0o600)?;
        let now = unix_now();
        let not_after = (now + ttl).min(ca.not_after);
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "authsec");
        dn.push(
            DnType::CommonName,
            format!("authsec node {} audit", self.node_id),
        );
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::ContentCommitment,
        ];
        p.subject_alt_names = vec![SanType::URI(node.as_str().try_into()?)];
        p.not_before = at(now.saturating_sub(CLOCK_SKEW));
        p.not_after = at(not_after);
        let mut serial = [0u8; 16];
        aws_lc_rs::rand::SecureRandom::fill(&SystemRandom::new(), &mut serial)
            .map_err(|_| anyhow::anyhow!("the OS random source failed"))?;
        serial[0] &= 0x7f;
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        p.use_authority_key_identifier_extension = true;
        let pk = CsrKey {
            raw: public.to_vec(),
            alg: &rcgen::PKCS_ED25519,
        };
        let leaf = match p.signed_by(&pk, &ca.issuer) {
            Ok(c) => c,
            Err(e) => {
                self.forget(&kid);
                return Err(e.into());
            }
        };
        let mut chain = leaf.der().to_vec();
        chain.extend_from_slice(&ca.cert_der);
        Ok(Some((kid, chain, not_after.as_millis() as u64)))
    }

    /// `Err` with the reason when this node is beyond its freshness bound.
    pub fn check_fresh(&self) -> Result<Duration, IssueError> {
        self.check_age(self.max_staleness, "max_staleness", "issuing")
    }

    /// `Err` with the reason when this node's view may miss a revocation acknowledged more
    /// than the revocation bound ago: it then does not vouch that a credential is live.
    /// Call it *before* reading the state the answer comes from: the age then describes a
    /// view no newer than the one read.
    pub fn check_vouch(&self) -> Result<Duration, IssueError> {
        self.check_age(
            self.revocation_staleness.min(self.max_staleness),
            "revocation_staleness",
            "vouching for credentials",
        )
    }

    /// This node's view age (`None`: unknown), for the revocation stream.
    pub fn view_age(&self) -> Option<Duration> {
        if crate::planted::active() == crate::planted::PlantedBug::IgnoreFreshness {
            return Some(Duration::ZERO);
        }
        self.freshness.age().map(|(age, _)| age)
    }

    fn check_age(&self, bound: Duration, knob: &str, what: &str) -> Result<Duration, IssueError> {
        if crate::planted::active() == crate::planted::PlantedBug::IgnoreFreshness {
            return Ok(Duration::ZERO);
        }
        let max = bound.as_millis();
        match self.freshness.age() {
            None => Err(IssueError::Unavailable(format!(
                "node {} has not heard from a Raft leader since it started, so it cannot bound how stale its view is; it resumes {what} once it does (ask another node meanwhile)",
                self.node_id
            ))),
            Some((age, src)) if age > bound => {
                let whose = match src {
                    Source::Leader => "this node (the leader)".to_owned(),
                    Source::Follower { leader } => format!("its leader, node {leader},"),
                };
                Err(IssueError::Unavailable(format!(
                    "node {} is beyond its freshness bound: no quorum has acknowledged {whose} for {} ms ({knob} {max} ms); it resumes {what} by itself once a leader with a quorum reaches it (ask another node meanwhile)",
                    self.node_id,
                    age.as_millis(),
                )))
            }
            Some((age, _)) => Ok(age),
        }
    }

    /// `Ok` when this node issues now; else why not.
    pub fn readiness(&self) -> Result<(), String> {
        self.check_fresh().map_err(|e| e.to_string())?;
        if self.active_ca().is_none() {
            return Err("no active intermediate CA yet".into());
        }
        if self.active_jwt().is_none() {
            return Err("no active JWT-SVID key yet".into());
        }
        if self.active_token_key().is_none() {
            return Err("no active access-token key yet".into());
        }
        Ok(())
    }

    /// Mint an X.509-SVID for `entry` from a CSR. `ttl_s` 0 means the entry's TTL; a larger
    /// request is refused. The leaf never outlives the intermediate.
    pub fn mint_x509(
        &self,
        entry: &Entry,
        csr_der: &[u8],
        ttl_s: u32,
        applied_index: u64,
    ) -> Result<X509Svid, IssueError> {
        let ca = self.active_ca().ok_or_else(|| {
            IssueError::Unavailable(format!(
                "node {} has no active intermediate CA yet (it is being published through the log); ask another node",
                self.node_id
            ))
        })?;
        let key = csr_key(csr_der, &entry.spiffe_id)?;
        let ttl = ttl_for(ttl_s, entry.x509_ttl_s, "x509")?;
        let now = unix_now();
        let not_after = (now + ttl).min(ca.not_after);
        if not_after <= now {
            return Err(IssueError::Unavailable(format!(
                "node {}'s intermediate CA has expired; its successor is being prepared",
                self.node_id
            )));
        }
        let serial = self.serials.next(applied_index);
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "authsec");
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let uri = entry
            .spiffe_id
            .as_str()
            .try_into()
            .map_err(|e| IssueError::Internal(format!("URI SAN: {e}")))?;
        p.subject_alt_names = vec![SanType::URI(uri)];
        for d in &entry.dns_names {
            p.subject_alt_names.push(SanType::DnsName(
                d.as_str()
                    .try_into()
                    .map_err(|e| IssueError::Internal(format!("DNS SAN {d}: {e}")))?,
            ));
        }
        p.not_before = at(now.saturating_sub(CLOCK_SKEW));
        p.not_after = at(not_after);
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        p.use_authority_key_identifier_extension = true;
        let leaf = p
            .signed_by(&key, &ca.issuer)
            .map_err(|e| IssueError::Internal(e.to_string()))?;
        Ok(X509Svid {
            chain: vec![leaf.der().to_vec(), ca.cert_der.to_vec()],
            serial,
            not_after: Duration::from_secs(not_after.as_secs()),
        })
    }

    /// Mint a JWT-SVID (ES256) for `entry`.
    pub fn mint_jwt(
        &self,
        entry: &Entry,
        audience: &[String],
        ttl_s: u32,
        applied_index: u64,
    ) -> Result<JwtSvid, IssueError> {
        let key = self.active_jwt().ok_or_else(|| {
            IssueError::Unavailable(format!(
                "node {} has no active JWT-SVID key yet (it is being published through the log); ask another node",
                self.node_id
            ))
        })?;
        if audience.is_empty() || audience.len() > AUDIENCES_MAX {
            return Err(IssueError::Invalid(format!(
                "audience: a JWT-SVID needs 1 to {AUDIENCES_MAX} audiences"
            )));
        }
        for a in audience {
            if a.is_empty() || a.len() > AUDIENCE_BYTES_MAX || a.chars().any(char::is_control) {
                return Err(IssueError::Invalid(format!(
                    "audience {a:?}: 1 to {AUDIENCE_BYTES_MAX} bytes, no control characters"
                )));
            }
        }
        let ttl = ttl_for(ttl_s, entry.jwt_ttl_s, "jwt")?;
        let now = unix_now();
        let exp = (now + ttl).min(key.not_after);
        if exp <= now {
            return Err(IssueError::Unavailable(format!(
                "node {}'s JWT key has expired; its successor is being prepared",
                self.node_id
            )));
        }
        let header = serde_json::json!({ "alg": "ES256", "kid": key.kid, "typ": "JWT" });
        let aud = if audience.len() == 1 {
            serde_json::json!(audience[0])
        } else {
            serde_json::json!(audience)
        };
        let mut jti = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut jti);
        let jti = hex::encode(jti);
        let claims = serde_json::json!({
            "sub": entry.spiffe_id.as_str(),
            "aud": aud,
            "exp": exp.as_secs(),
            "iat": now.as_secs(),
            // For revocation: by this id, or by the issuing node's applied index.
            "jti": jti,
            "authsec_index": applied_index,
        });
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig = key
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| IssueError::Internal("ES256 signing failed".into()))?;
        Ok(JwtSvid {
            jti,
            token: format!("{signing_input}.{}", b64url(sig.as_ref())),
            kid: key.kid.clone(),
            expires_at: Duration::from_secs(exp.as_secs()),
        })
    }

    // ---- key material on disk ----

    fn key_path(&self, kid: &str) -> PathBuf {
        self.dir.join(format!("{kid}.key"))
    }

    fn cert_path(&self, kid: &str) -> PathBuf {
        self.dir.join(format!("{kid}.crt"))
    }

    /// Whether this node holds the private half of `kid`.
    pub fn holds(&self, key: &NodeKey) -> bool {
        self.key_path(&key.kid).exists()
            && (key.kind != KeyKind::X509Ca || self.cert_path(&key.kid).exists())
    }

    /// Sign with `key` from now on (it is active in the local projection).
    pub fn install(&self, key: &NodeKey) -> anyhow::Result<()> {
        use anyhow::Context;
        match key.kind {
            KeyKind::X509Ca => {
                if self.active_ca().is_some_and(|c| c.kid == key.kid) {
                    return Ok(());
                }
                let pem = std::fs::read_to_string(self.key_path(&key.kid))
                    .with_context(|| format!("read {}", self.key_path(&key.kid).display()))?;
                let kp = KeyPair::from_pem(&pem)?;
                let cert = CertificateDer::from(key.public.clone());
                let issuer = Issuer::from_ca_cert_der(&cert, kp)?;
                write_lock(
                    &self.ca,
                    Some(Arc::new(CaKey {
                        kid: key.kid.clone(),
                        cert_der: cert,
                        issuer,
                        not_after: Duration::from_millis(key.not_after_ms),
                    })),
                );
            }
            KeyKind::Jwt => {
                if self.active_jwt().is_some_and(|k| k.kid == key.kid) {
                    return Ok(());
                }
                let pem = std::fs::read_to_string(self.key_path(&key.kid))
                    .with_context(|| format!("read {}", self.key_path(&key.kid).display()))?;
                let der = KeyPair::from_pem(&pem)?.serialize_der();
                let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                    .map_err(|e| anyhow::anyhow!("JWT key {}: {e}", key.kid))?;
                write_lock(
                    &self.jwt,
                    Some(Arc::new(JwtKey {
                        kid: key.kid.clone(),
                        key: kp,
                        not_after: Duration::from_millis(key.not_after_ms),
                    })),
                );
            }
            KeyKind::Token => {
                if self.active_token_key().is_some_and(|k| k.kid == key.kid) {
                    return Ok(());
                }
                let pem = std::fs::read_to_string(self.key_path(&key.kid))
                    .with_context(|| format!("read {}", self.key_path(&key.kid).display()))?;
                let der = KeyPair::from_pem(&pem)?.serialize_der();
                let bad = |e: &dyn std::fmt::Display| anyhow::anyhow!("token key {}: {e}", key.kid);
                // The key's own type decides its algorithm, whatever the configuration says
                // now: a key published as Ed25519 signs EdDSA until it is replaced.
                let (alg, signer) = match Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
                    Ok(k) => (TokenAlg::EdDsa, TokenSigner::EdDsa(k)),
                    Err(_) => (
                        TokenAlg::Es256,
                        TokenSigner::Es256(
                            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                                .map_err(|e| bad(&e))?,
                        ),
                    ),
                };
                let public = match &signer {
                    TokenSigner::Es256(k) => k.public_key().as_ref().to_vec(),
                    TokenSigner::EdDsa(k) => k.public_key().as_ref().to_vec(),
                };
                if !key.public.ends_with(&public) {
                    return Err(bad(
                        &"the private key on disk does not match the published key",
                    ));
                }
                write_lock(
                    &self.token,
                    Some(Arc::new(TokenKey {
                        kid: key.kid.clone(),
                        alg,
                        signer,
                        not_after: Duration::from_millis(key.not_after_ms),
                    })),
                );
            }
            KeyKind::Audit => {
                if self.active_audit().is_some_and(|k| k.kid == key.kid) {
                    return Ok(());
                }
                let text = std::fs::read_to_string(self.key_path(&key.kid))
                    .with_context(|| format!("read {}", self.key_path(&key.kid).display()))?;
                let seed: [u8; 32] = hex::decode(text.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| anyhow::anyhow!("audit key {}: not a 32-byte seed", key.kid))?;
                let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
                let public = sk.verifying_key().to_bytes();
                if !key.public.windows(32).any(|w| w == public) {
                    anyhow::bail!(
                        "audit key {}: the private key on disk does not match the published certificate",
                        key.kid
                    );
                }
                write_lock(
                    &self.audit,
                    Some(Arc::new(AuditKey {
                        kid: key.kid.clone(),
                        key: sk,
                    })),
                );
            }
        }
        tracing::info!(node_id = self.node_id, kid = %key.kid, kind = key.kind.as_str(), "signing with a new key");
        Ok(())
    }

    /// Stop signing with `kind` (its key is no longer active here).
    pub fn uninstall(&self, kind: KeyKind) {
        match kind {
            KeyKind::X509Ca => write_lock(&self.ca, None),
            KeyKind::Jwt => write_lock(&self.jwt, None),
            KeyKind::Token => write_lock(&self.token, None),
            KeyKind::Audit => write_lock(&self.audit, None),
        }
    }

    /// A new key pair for `kind`, its private half on disk (0600) before anything else learns
    /// of it. Returns the kid and the key.
    pub fn new_key(&self, kind: KeyKind) -> anyhow::Result<(String, KeyPair)> {
        let alg = match (kind, self.token_alg) {
            (KeyKind::Token, TokenAlg::EdDsa) => &rcgen::PKCS_ED25519,
            _ => &rcgen::PKCS_ECDSA_P256_SHA256,
        };
        let kp = KeyPair::generate_for(alg)?;
        let spki = kp.subject_public_key_info();
        let h = hex::encode(&sha2::Sha256::digest(&spki)[..8]);
        let kid = format!(
            "n{}-{}-{h}",
            self.node_id,
            match kind {
                KeyKind::X509Ca => "x509",
                KeyKind::Jwt => "jwt",
                KeyKind::Token => "at",
                KeyKind::Audit => "audit",
            }
        );
        pki::write_file(&self.key_path(&kid), kp.serialize_pem().as_bytes(), 0o600)?;
        Ok((kid, kp))
    }

    /// Keep a key made elsewhere on this node (the offline-mode intermediate's).
    pub fn store_key_pem(&self, kid: &str, pem: &str) -> anyhow::Result<()> {
        pki::write_file(&self.key_path(kid), pem.as_bytes(), 0o600)?;
        Ok(())
    }

    /// Keep the intermediate's certificate beside its key.
    pub fn store_cert(&self, kid: &str, cert_der: &[u8]) -> anyhow::Result<()> {
        let cert = CertificateDer::from(cert_der.to_vec());
        pki::write_file(
            &self.cert_path(kid),
            pki::pem_certs(std::slice::from_ref(&cert)).as_bytes(),
            0o644,
        )?;
        Ok(())
    }

    /// Remove the files of every key `known` does not accept.
    pub fn sweep(&self, known: impl Fn(&str) -> bool) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for f in dir.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let Some(kid) = name
                .strip_suffix(".key")
                .or_else(|| name.strip_suffix(".crt"))
            else {
                continue;
            };
            if !known(kid) {
                tracing::info!(node_id = self.node_id, kid, "removing an unpublished key");
                self.forget(kid);
            }
        }
    }

    /// Forget a retired key's private half.
    pub fn forget(&self, kid: &str) {
        for p in [self.key_path(kid), self.cert_path(kid)] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "removing a retired key failed")
                }
            }
        }
    }
}

/// The SPKI DER of an rcgen key (what `PublishNodeKey` carries for a JWT key).
pub fn spki(kp: &KeyPair) -> Vec<u8> {
    kp.subject_public_key_info()
}

fn ttl_for(requested_s: u32, entry_s: u32, what: &str) -> Result<Duration, IssueError> {
    if requested_s > entry_s {
        return Err(IssueError::Invalid(format!(
            "ttl_seconds {requested_s} exceeds the entry's {what} TTL of {entry_s} s"
        )));
    }
    let s = if requested_s == 0 {
        entry_s
    } else {
        requested_s
    };
    Ok(Duration::from_secs(u64::from(s.max(1))))
}

/// When a key of `ttl` should have a successor published, and when activated (SPIRE's
/// schedule: prepare at half the lifetime, activate at a sixth remaining).
pub fn schedule(key: &NodeKey, ttl: Duration, now_ms: u64) -> (bool, bool) {
    let remaining = key.not_after_ms.saturating_sub(now_ms);
    let ttl_ms = ttl.as_millis() as u64;
    (remaining <= ttl_ms / 2, remaining <= ttl_ms / 6)
}

pub fn now_ms() -> u64 {
    unix_now().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use authsec_domain::keys::KeyState;
    use authsec_domain::TrustDomain;
    use x509_parser::extensions::{GeneralName, ParsedExtension};

    struct Fixture {
        _dir: tempfile::TempDir,
        root: pki::Root,
        issuer: SvidIssuer,
        entry: Entry,
    }

    fn fixture() -> Fixture {
        let td = TrustDomain::parse("example.org").expect("td");
        let dir = tempfile::tempdir().expect("tempdir");
        let fresh = Arc::new(Freshness::default());
        let issuer = SvidIssuer::new(3, dir.path(), fresh, &Default::default());
        let root = pki::Root::generate(&td).expect("root");
        let (kid, kp) = issuer.new_key(KeyKind::X509Ca).expect("key");
        let cert = root
            .sign_intermediate(&td, 3, &kp, Duration::from_secs(3600))
            .expect("intermediate");
        issuer.store_cert(&kid, &cert).expect("store");
        let key = |kid: String, kind, public| NodeKey {
            kid,
            node_id: 3,
            kind,
            public,
            not_after_ms: now_ms() + 3_600_000,
            state: KeyState::Active,
            published_at_ms: 0,
            changed_at_ms: 0,
        };
        let ca_key = key(kid, KeyKind::X509Ca, cert.to_vec());
        assert!(issuer.holds(&ca_key));
        issuer.install(&ca_key).expect("install ca");
        let (jkid, jkp) = issuer.new_key(KeyKind::Jwt).expect("jwt key");
        issuer
            .install(&key(jkid, KeyKind::Jwt, spki(&jkp)))
            .expect("install jwt");
        let entry = Entry {
            entry_id: authsec_domain::EntryId::parse("e-1").expect("id"),
            spiffe_id: SpiffeId::parse("spiffe://example.org/web").expect("id"),
            parent_id: Some(SpiffeId::parse("spiffe://example.org/agent/a").expect("id")),
            selectors: Default::default(),
            x509_ttl_s: 3600,
            jwt_ttl_s: 300,
            dns_names: ["web.example.org".to_owned()].into(),
            client_id: None,
            federates_with: Default::default(),
            revision: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        Fixture {
            _dir: dir,
            root,
            issuer,
            entry,
        }
    }

    fn csr(edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::default();
        edit(&mut p);
        p.serialize_request(&key).expect("csr").der().to_vec()
    }

    #[test]
    fn a_leaf_is_spiffe_conformant_and_chains_to_the_root() {
        let f = fixture();
        let svid = f
            .issuer
            .mint_x509(&f.entry, &csr(|_| {}), 0, 1)
            .expect("mint");
        assert_eq!(svid.chain.len(), 2, "leaf and intermediate");
        let (_, leaf) = x509_parser::parse_x509_certificate(&svid.chain[0]).expect("leaf");
        let (_, ca) = x509_parser::parse_x509_certificate(&svid.chain[1]).expect("ca");
        let (_, root) = x509_parser::parse_x509_certificate(&f.root.cert_der).expect("root");
        leaf.verify_signature(Some(ca.public_key()))
            .expect("leaf by ca");
        ca.verify_signature(Some(root.public_key()))
            .expect("ca by root");
        let mut uris = 0;
        let mut saw = (false, false, false);
        for ext in leaf.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for n in &san.general_names {
                        if let GeneralName::URI(u) = n {
                            uris += 1;
                            assert_eq!(*u, "spiffe://example.org/web");
                        }
                    }
                }
                ParsedExtension::KeyUsage(ku) => {
                    assert!(ext.critical, "key usage is critical");
                    assert!(ku.digital_signature());
                    assert!(!ku.key_cert_sign() && !ku.crl_sign());
                    saw.0 = true;
                }
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    assert!(eku.server_auth && eku.client_auth);
                    saw.1 = true;
                }
                ParsedExtension::BasicConstraints(bc) => {
                    assert!(!bc.ca);
                    saw.2 = true;
                }
                _ => {}
            }
        }
        assert_eq!(uris, 1, "exactly one URI SAN");
        assert_eq!(saw, (true, true, true));
        let ttl = leaf.validity().not_after.timestamp() - unix_now().as_secs() as i64;
        assert!((3500..=3600).contains(&ttl), "the entry's TTL: {ttl}");
        // The intermediate carries the trust domain's ID without a path, and pathLen 0.
        let bc = ca.basic_constraints().expect("bc").expect("present").value;
        assert!(bc.ca && bc.path_len_constraint == Some(0));
    }

    #[test]
    fn token_keys_sign_with_the_algorithm_they_were_made_for() {
        for alg in [TokenAlg::Es256, TokenAlg::EdDsa] {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut issuer = SvidIssuer::new(
                4,
                dir.path(),
                Arc::new(Freshness::default()),
                &Default::default(),
            );
            issuer.token_alg = alg;
            let (kid, kp) = issuer.new_key(KeyKind::Token).expect("key");
            assert!(kid.starts_with("n4-at-"), "{kid}");
            let public = spki(&kp);
            let key = NodeKey {
                kid,
                node_id: 4,
                kind: KeyKind::Token,
                public: public.clone(),
                not_after_ms: now_ms() + 60_000,
                state: KeyState::Active,
                published_at_ms: 0,
                changed_at_ms: 0,
            };
            assert!(issuer.holds(&key));
            // A node made with the other algorithm still signs with this key's own.
            issuer.token_alg = TokenAlg::default();
            issuer.install(&key).expect("install");
            let active = issuer.active_token_key().expect("active");
            assert_eq!(active.alg, alg);
            let sig = active.sign(b"header.claims").expect("sign");
            let verifier = crate::oauth::jose::VerifyKey::from_spki(&public).expect("spki");
            assert_eq!(verifier.alg(), alg.as_str());
            assert!(verifier.verify(b"header.claims", &sig));
            assert!(!verifier.verify(b"header.claimz", &sig));
            // A private key that is not the published one is refused.
            let (_, other) = issuer.new_key(KeyKind::Token).expect("key");
            let mut wrong = key.clone();
            wrong.public = spki(&other);
            issuer.uninstall(KeyKind::Token);
            assert!(issuer.install(&wrong).is_err());
        }
    }

    #[test]
    fn serials_are_unique() {
        let f = fixture();
        let a = f
            .issuer
            .mint_x509(&f.entry, &csr(|_| {}), 60, 77)
            .expect("a");
        let b = f
            .issuer
            .mint_x509(&f.entry, &csr(|_| {}), 60, 77)
            .expect("b");
        assert_ne!(a.serial, b.serial);
        assert_eq!(
            serial_origin(&a.serial),
            Some((3, 77)),
            "node and index are in it"
        );
        let (_, leaf) = x509_parser::parse_x509_certificate(&a.chain[0]).expect("leaf");
        assert_eq!(leaf.raw_serial(), &a.serial[..]);
    }

    #[test]
    fn bad_csrs_are_refused_with_a_reason() {
        let f = fixture();
        let mint = |der: &[u8]| match f.issuer.mint_x509(&f.entry, der, 0, 1) {
            Err(IssueError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        };
        let foreign = csr(|p| {
            p.subject_alt_names = vec![SanType::URI(
                "spiffe://example.org/admin".try_into().expect("uri"),
            )]
        });
        assert!(mint(&foreign).contains("spiffe://example.org/admin"));
        let ca = csr(|p| p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained));
        assert!(mint(&ca).contains("CA:true"));
        assert!(mint(b"not a csr").contains("PKCS#10"));
        assert!(mint(&vec![0x30; CSR_BYTES_MAX + 1]).contains("8192"));
        assert!(mint(&[]).contains("1 to"));
        let mut tampered = csr(|_| {});
        let n = tampered.len();
        tampered[n - 3] ^= 0x55;
        assert!(mint(&tampered).contains("does not verify"));
        // The entry's own ID in the CSR is fine; other requested extensions are ignored.
        let own = csr(|p| {
            p.subject_alt_names = vec![SanType::URI(
                "spiffe://example.org/web".try_into().expect("uri"),
            )];
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        });
        f.issuer.mint_x509(&f.entry, &own, 0, 1).expect("own id");
        match f.issuer.mint_x509(&f.entry, &csr(|_| {}), 3601, 1) {
            Err(IssueError::Invalid(m)) => assert!(m.contains("exceeds")),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn a_jwt_svid_verifies_with_the_published_key() {
        let f = fixture();
        let aud = vec!["https://api.example.org".to_owned()];
        let t = f.issuer.mint_jwt(&f.entry, &aud, 0, 42).expect("jwt");
        let parts: Vec<&str> = t.token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let d = |s: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .expect("b64")
        };
        let header: serde_json::Value = serde_json::from_slice(&d(parts[0])).expect("header");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["kid"], t.kid.as_str());
        let claims: serde_json::Value = serde_json::from_slice(&d(parts[1])).expect("claims");
        assert_eq!(claims["sub"], "spiffe://example.org/web");
        assert_eq!(claims["aud"], "https://api.example.org");
        assert_eq!(claims["jti"], t.jti.as_str());
        assert_eq!(claims["authsec_index"], 42);
        let exp = claims["exp"].as_u64().expect("exp");
        assert!(exp > unix_now().as_secs() && exp <= unix_now().as_secs() + 300);
        let jwt = f.issuer.active_jwt().expect("jwt key");
        let public = aws_lc_rs::signature::KeyPair::public_key(&jwt.key)
            .as_ref()
            .to_vec();
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            public,
        )
        .verify(
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
            &d(parts[2]),
        )
        .expect("signature verifies");
        for bad in [vec![], vec![String::new()], vec!["a".to_owned(); 17]] {
            assert!(matches!(
                f.issuer.mint_jwt(&f.entry, &bad, 0, 1),
                Err(IssueError::Invalid(_))
            ));
        }
    }

    #[test]
    fn no_key_no_credential() {
        let f = fixture();
        f.issuer.uninstall(KeyKind::X509Ca);
        f.issuer.uninstall(KeyKind::Jwt);
        assert!(matches!(
            f.issuer.mint_x509(&f.entry, &csr(|_| {}), 0, 1),
            Err(IssueError::Unavailable(_))
        ));
        assert!(matches!(
            f.issuer.mint_jwt(&f.entry, &["a".to_owned()], 0, 1),
            Err(IssueError::Unavailable(_))
        ));
    }

    #[test]
    fn beyond_the_freshness_bound_no_credential() {
        let f = fixture();
        assert!(
            matches!(f.issuer.check_fresh(), Err(IssueError::Unavailable(m)) if m.contains("has not heard"))
        );
        f.issuer.freshness.heard(1, 10, 0);
        f.issuer.check_fresh().expect("fresh");
        f.issuer.freshness.heard(1, 31_000, 0);
        match f.issuer.check_fresh() {
            Err(IssueError::Unavailable(m)) => {
                assert!(m.contains("freshness bound") && m.contains("node 1"), "{m}")
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[test]
    fn unpublished_key_files_are_swept() {
        let f = fixture();
        let (kept, _) = f.issuer.new_key(KeyKind::Jwt).expect("key");
        let (orphan, _) = f.issuer.new_key(KeyKind::X509Ca).expect("key");
        f.issuer.store_cert(&orphan, b"not really").expect("cert");
        f.issuer.sweep(|kid| kid != orphan);
        assert!(f.issuer.key_path(&kept).exists());
        assert!(!f.issuer.key_path(&orphan).exists());
        assert!(!f.issuer.cert_path(&orphan).exists());
    }

    #[test]
    fn rotation_schedule_is_spires() {
        let k = NodeKey {
            kid: "k".into(),
            node_id: 1,
            kind: KeyKind::Jwt,
            public: vec![],
            not_after_ms: 6_000,
            state: KeyState::Active,
            published_at_ms: 0,
            changed_at_ms: 0,
        };
        let ttl = Duration::from_millis(6_000);
        assert_eq!(schedule(&k, ttl, 0), (false, false));
        assert_eq!(schedule(&k, ttl, 3_000), (true, false));
        assert_eq!(schedule(&k, ttl, 5_000), (true, true));
    }
}

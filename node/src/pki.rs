//! The trust domain's PKI: the root CA, the key-encryption key (KEK) that seals the root key,
//! node and admin certificates, CSRs and join tokens.
//!
//! Every leaf is an X.509-SVID: exactly one URI SAN with its SPIFFE ID, not a CA, key usage
//! digitalSignature only, extended key usage serverAuth and clientAuth. Node leaves also carry
//! the DNS names and IPs of their config, so ordinary HTTPS clients can check the host name.
//! Private keys are generated where they are used and never leave that process in clear: a
//! joining node sends a CSR, and the root key exists outside memory only sealed (AES-256-GCM)
//! under the KEK.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use authsec_domain::{SpiffeId, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// Lifetime of the root CA.
pub const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of an admin certificate.
pub const ADMIN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Default lifetime of a node's transport certificate (renewed at half-life).
pub const NODE_TTL_DEFAULT: Duration = Duration::from_secs(24 * 3600);
/// Shortest node certificate lifetime accepted.
pub const NODE_TTL_MIN: Duration = Duration::from_secs(30);
/// Backdating of `notBefore`, for peers whose clocks run a little behind.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Largest CSR accepted.
pub const CSR_BYTES_MAX: usize = 8 * 1024;
/// Most DNS names (and, separately, IPs) in one node certificate.
pub const SANS_MAX: usize = 16;
/// Longest join token (`<id>.<secret>`).
pub const JOIN_TOKEN_BYTES_MAX: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0}")]
    Invalid(String),
    #[error("the sealed root key does not open under this KEK (wrong KEK file, or damaged)")]
    Unseal,
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Write a file whole or not at all (temp file, fsync, rename), with `mode`.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

/// The key-encryption key: 32 random bytes in a file of mode 0600, hex encoded.
pub struct Kek([u8; 32]);

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

impl Drop for Kek {
    fn drop(&mut self) {
        self.0 = [0; 32];
    }
}

const SEAL_MAGIC: &[u8; 4] = b"ASK1";

impl Kek {
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut k);
        Self(k)
    }

    /// Create the KEK file; refuses to overwrite one (that would orphan the sealed root).
    pub fn create(path: &Path) -> Result<Self, PkiError> {
        if path.exists() {
            return Err(PkiError::Invalid(format!(
                "{} exists; refusing to replace a KEK",
                path.display()
            )));
        }
        let k = Self::generate();
        write_file(path, format!("{}\n", hex::encode(k.0)).as_bytes(), 0o600)?;
        Ok(k)
    }

    pub fn load(path: &Path) -> Result<Self, PkiError> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(io(path))?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "the KEK file is readable by group or others; chmod 600 it");
        }
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let bytes = hex::decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| {
                PkiError::Invalid(format!(
                    "{} is not a KEK (64 hex digits expected)",
                    path.display()
                ))
            })?;
        Ok(Self(bytes))
    }

    fn key(&self) -> aws_lc_rs::aead::LessSafeKey {
        use aws_lc_rs::aead::{LessSafeKey, UnboundKey, AES_256_GCM};
        // A 32-byte key is always valid for AES-256-GCM.
        LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &self.0)
                .unwrap_or_else(|_| unreachable!("32-byte AES-256 key")),
        )
    }

    /// `ASK1 || nonce (12) || ciphertext || tag`, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        use aws_lc_rs::aead::{Aad, Nonce};
        let mut nonce = [0u8; 12];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let mut buf = plain.to_vec();
        // Sealing in place with a valid key and nonce only fails on absurd lengths.
        self.key()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .unwrap_or_else(|_| unreachable!("AES-GCM sealing of a small buffer"));
        let mut out = Vec::with_capacity(16 + buf.len());
        out.extend_from_slice(SEAL_MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        out
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, PkiError> {
        use aws_lc_rs::aead::{Aad, Nonce};
        if sealed.len() < 16 + 16 || &sealed[..4] != SEAL_MAGIC {
            return Err(PkiError::Unseal);
        }
        let nonce: [u8; 12] = sealed[4..16].try_into().map_err(|_| PkiError::Unseal)?;
        let mut buf = sealed[16..].to_vec();
        let plain = self
            .key()
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| PkiError::Unseal)?;
        Ok(plain.to_vec())
    }
}

fn root_aad(td: &TrustDomain) -> Vec<u8> {
    format!("authsec root CA key v1|{td}").into_bytes()
}

/// `sha256:<hex>` of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> String {
    authsec_domain::fingerprint(der)
}

/// Extra names of a node certificate, validated and bounded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sans {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl Sans {
    pub fn parse(dns: &[String], ips: &[String]) -> Result<Self, PkiError> {
        if dns.len() > SANS_MAX || ips.len() > SANS_MAX {
            return Err(PkiError::Invalid(format!(
                "at most {SANS_MAX} DNS names and {SANS_MAX} IPs"
            )));
        }
        for d in dns {
            let ok = !d.is_empty()
                && d.len() <= 253
                && d.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                });
            if !ok {
                return Err(PkiError::Invalid(format!("{d:?} is not a DNS name")));
            }
        }
        let ips = ips
            .iter()
            .map(|s| {
                s.parse::<IpAddr>()
                    .map_err(|_| PkiError::Invalid(format!("{s:?} is not an IP address")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            dns: dns.to_vec(),
            ips,
        })
    }

    pub fn dns_strings(&self) -> Vec<String> {
        self.dns.clone()
    }

    pub fn ip_strings(&self) -> Vec<String> {
        self.ips.iter().map(|i| i.to_string()).collect()
    }
}

fn now() -> Duration {
    crate::clock::unix_now()
}

fn at(t: Duration) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.as_secs() as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn serial() -> SerialNumber {
    let mut s = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut s);
    s[0] &= 0x7f; // positive
    SerialNumber::from_slice(&s)
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::OrganizationName, "authsec");
    d.push(DnType::CommonName, common_name);
    d
}

/// The parameters of an X.509-SVID leaf.
fn leaf_params(id: &SpiffeId, sans: &Sans, ttl: Duration) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(id.as_str());
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
    for d in &sans.dns {
        p.subject_alt_names
            .push(SanType::DnsName(d.as_str().try_into()?));
    }
    for ip in &sans.ips {
        p.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    let t = now();
    p.not_before = at(t.saturating_sub(CLOCK_SKEW));
    p.not_after = at(t + ttl);
    p.serial_number = Some(serial());
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// A node's transport certificate signed by `issuer` (the root, or the node's own
/// intermediate), ending no later than `cap`.
fn sign_node_leaf(
    issuer: &Issuer<'_, &KeyPair>,
    td: &TrustDomain,
    node_id: u64,
    subject: &impl PublicKeyData,
    sans: &Sans,
    ttl: Duration,
    cap: Option<Duration>,
) -> Result<CertificateDer<'static>, PkiError> {
    let id = authsec_raft::tls::node_spiffe_id(td, node_id);
    let mut p = leaf_params(&id, sans, ttl)?;
    if let Some(cap) = cap.map(at).filter(|c| *c < p.not_after) {
        p.not_after = cap;
    }
    Ok(p.signed_by(subject, issuer)?.der().clone())
}

/// `spiffe://<td>/authsec/admin/<name>`.
pub fn admin_spiffe_id(td: &TrustDomain, name: &str) -> Result<SpiffeId, PkiError> {
    SpiffeId::parse(&format!("spiffe://{td}/authsec/admin/{name}"))
        .map_err(|e| PkiError::Invalid(format!("admin name {name:?}: {e}")))
}

/// The admin name in `spiffe://<td>/authsec/admin/<name>`, if `id` is one.
pub fn admin_name_of<'a>(td: &TrustDomain, id: &'a SpiffeId) -> Option<&'a str> {
    id.as_str()
        .strip_prefix("spiffe://")?
        .strip_prefix(td.as_str())?
        .strip_prefix("/authsec/admin/")
        .filter(|n| !n.is_empty() && !n.contains('/'))
}

/// True when `key` is the key `cert` certifies.
pub fn certifies(cert: &CertificateDer<'_>, key: &KeyPair) -> Result<bool, PkiError> {
    key_matches(cert, key)
}

fn key_matches(cert: &CertificateDer<'_>, key: &KeyPair) -> Result<bool, PkiError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| PkiError::Invalid(format!("certificate: {e}")))?;
    Ok(parsed.public_key().raw == key.subject_public_key_info().as_slice())
}

/// The root CA: certificate and key. The key lives only in memory here.
pub struct Root {
    pub cert_der: CertificateDer<'static>,
    key: KeyPair,
}

impl fmt::Debug for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Root")
            .field("fingerprint", &fingerprint(&self.cert_der))
            .finish_non_exhaustive()
    }
}

impl Root {
    /// A new self-signed root CA (ECDSA P-256) for `td`.
    pub fn generate(td: &TrustDomain) -> Result<Self, PkiError> {
        Self::generate_named(td, &format!("authsec root CA {td}"))
    }

    /// A root whose subject names `label` too, so that successive roots have distinct names.
    pub fn generate_labelled(td: &TrustDomain, label: &str) -> Result<Self, PkiError> {
        Self::generate_named(td, &format!("authsec root CA {td} {label}"))
    }

    fn generate_named(td: &TrustDomain, common_name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(common_name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.subject_alt_names = vec![SanType::URI(format!("spiffe://{td}").as_str().try_into()?)];
        let t = now();
        p.not_before = at(t.saturating_sub(CLOCK_SKEW));
        p.not_after = at(t + ROOT_TTL);
        p.serial_number = Some(serial());
        let cert = p.self_signed(&key)?;
        Ok(Self {
            cert_der: cert.der().clone(),
            key,
        })
    }

    pub fn seal(&self, kek: &Kek, td: &TrustDomain) -> Vec<u8> {
        kek.seal(&root_aad(td), self.key.serialized_der())
    }

    pub fn unseal(
        kek: &Kek,
        td: &TrustDomain,
        cert_der: &[u8],
        sealed: &[u8],
    ) -> Result<Self, PkiError> {
        let der = kek.open(&root_aad(td), sealed)?;
        let key = PrivateKeyDer::try_from(der)
            .map_err(|e| PkiError::Invalid(format!("sealed root key: {e}")))?;
        let key = KeyPair::try_from(&key)?;
        let cert_der = CertificateDer::from(cert_der.to_vec());
        if !key_matches(&cert_der, &key)? {
            return Err(PkiError::Invalid(
                "the sealed key does not belong to the root certificate".into(),
            ));
        }
        Ok(Self { cert_der, key })
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_der(&self.cert_der, &self.key)?)
    }

    /// A node's transport certificate for the public key `subject`.
    pub fn sign_node(
        &self,
        td: &TrustDomain,
        node_id: u64,
        subject: &impl PublicKeyData,
        sans: &Sans,
        ttl: Duration,
    ) -> Result<CertificateDer<'static>, PkiError> {
        sign_node_leaf(&self.issuer()?, td, node_id, subject, sans, ttl, None)
    }

    /// Certify `other`'s key under `other`'s own name and extensions, signed by this root: a
    /// cross-certificate. Served after a leaf of `other`, it lets a peer that trusts only this
    /// root verify that leaf (leaf, cross-certificate, this root), while a peer that trusts
    /// `other` verifies the leaf directly. This is how a new root takes over the cluster's
    /// transport without every holder of the old one updating first.
    pub fn cross_certify(&self, other: &Root) -> Result<CertificateDer<'static>, PkiError> {
        let parse = |der: &CertificateDer<'_>| -> Result<_, PkiError> {
            let (_, c) = x509_parser::parse_x509_certificate(der)
                .map_err(|e| PkiError::Invalid(format!("root certificate: {e}")))?;
            let cn = c
                .subject()
                .iter_common_name()
                .next()
                .and_then(|a| a.as_str().ok())
                .map(str::to_owned)
                .ok_or_else(|| PkiError::Invalid("the root has no common name".into()))?;
            let uri = c.subject_alternative_name().ok().flatten().and_then(|san| {
                san.value.general_names.iter().find_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
            });
            Ok((cn, uri, c.validity().not_after.to_datetime()))
        };
        let (cn, uri, not_after) = parse(&other.cert_der)?;
        let (_, _, own_end) = parse(&self.cert_der)?;
        // The subject exactly as `other` names itself (the same attributes, encoded the same
        // way), so its leaves' issuer names match this certificate too.
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(&cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        if let Some(u) = uri {
            p.subject_alt_names = vec![SanType::URI(u.as_str().try_into()?)];
        }
        p.not_before = at(now().saturating_sub(CLOCK_SKEW));
        // Never beyond either root's own life.
        p.not_after = not_after.min(own_end);
        p.serial_number = Some(serial());
        p.use_authority_key_identifier_extension = true;
        Ok(p.signed_by(&other.key, &self.issuer()?)?.der().clone())
    }

    /// An admin certificate for the public key `subject` (the admin made the key).
    pub fn sign_admin(
        &self,
        td: &TrustDomain,
        name: &str,
        subject: &impl PublicKeyData,
    ) -> Result<CertificateDer<'static>, PkiError> {
        let id = admin_spiffe_id(td, name)?;
        let p = leaf_params(&id, &Sans::default(), ADMIN_TTL)?;
        Ok(p.signed_by(subject, &self.issuer()?)?.der().clone())
    }

    /// An admin certificate and its key (generated here: the caller writes both to the
    /// admin's credential directory).
    pub fn issue_admin(
        &self,
        td: &TrustDomain,
        name: &str,
    ) -> Result<(CertificateDer<'static>, KeyPair), PkiError> {
        let id = admin_spiffe_id(td, name)?;
        let key = KeyPair::generate()?;
        let p = leaf_params(&id, &Sans::default(), ADMIN_TTL)?;
        let cert = p.signed_by(&key, &self.issuer()?)?;
        Ok((cert.der().clone(), key))
    }
}

/// A node's intermediate CA in offline-root mode: signed by the offline root, its key made on
/// the node and kept there; it signs this node's own transport certificates.
pub struct NodeCa {
    pub cert_der: CertificateDer<'static>,
    key: KeyPair,
}

impl fmt::Debug for NodeCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCa")
            .field("fingerprint", &fingerprint(&self.cert_der))
            .finish_non_exhaustive()
    }
}

impl NodeCa {
    /// The kid this intermediate has as the node's SVID issuer, and its key (PEM), for the
    /// issuer's own files on this node.
    pub fn svid_kid_and_key(&self, node_id: u64) -> Result<(String, String), PkiError> {
        let spki = self.key.subject_public_key_info();
        let h = hex::encode(&Sha256::digest(&spki)[..8]);
        Ok((format!("n{node_id}-x509-{h}"), self.key.serialize_pem()))
    }

    pub fn sign_node(
        &self,
        td: &TrustDomain,
        node_id: u64,
        subject: &impl PublicKeyData,
        sans: &Sans,
        ttl: Duration,
    ) -> Result<CertificateDer<'static>, PkiError> {
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key)?;
        // Never outlive the intermediate.
        let cap = not_after(&self.cert_der)?;
        sign_node_leaf(&issuer, td, node_id, subject, sans, ttl, Some(cap))
    }
}

impl Root {
    /// An offline root's files: `ca.crt` and `root.key` (0600).
    pub fn write_offline(&self, dir: &Path) -> Result<(), PkiError> {
        if dir.join("root.key").exists() {
            return Err(PkiError::Invalid(format!(
                "{} already holds a root key",
                dir.display()
            )));
        }
        write_file(
            &dir.join("root.key"),
            self.key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write_file(
            &dir.join("ca.crt"),
            pem_certs(std::slice::from_ref(&self.cert_der)).as_bytes(),
            0o644,
        )
    }

    pub fn load_offline(dir: &Path) -> Result<Self, PkiError> {
        let cert = read_certs(&dir.join("ca.crt"))?.remove(0);
        let pem =
            std::fs::read_to_string(dir.join("root.key")).map_err(io(&dir.join("root.key")))?;
        let key = KeyPair::from_pem(&pem)?;
        Ok(Self {
            cert_der: cert,
            key,
        })
    }

    /// The trust domain this root was made for (its URI SAN `spiffe://<td>`).
    pub fn trust_domain(&self) -> Result<TrustDomain, PkiError> {
        use x509_parser::extensions::GeneralName;
        let (_, x) = x509_parser::parse_x509_certificate(&self.cert_der)
            .map_err(|e| PkiError::Invalid(format!("root certificate: {e}")))?;
        let san = x
            .subject_alternative_name()
            .ok()
            .flatten()
            .ok_or_else(|| PkiError::Invalid("the root has no URI SAN".into()))?;
        for n in &san.value.general_names {
            if let GeneralName::URI(u) = n {
                if let Some(td) = u.strip_prefix("spiffe://") {
                    return TrustDomain::parse(td)
                        .map_err(|e| PkiError::Invalid(format!("root trust domain: {e}")));
                }
            }
        }
        Err(PkiError::Invalid(
            "the root has no spiffe:// URI SAN".into(),
        ))
    }

    /// An intermediate CA for node `node_id` (pathLen 0: it signs leaves only), for the public
    /// key of a CSR the node made.
    pub fn sign_intermediate(
        &self,
        td: &TrustDomain,
        node_id: u64,
        subject: &impl PublicKeyData,
        ttl: Duration,
    ) -> Result<CertificateDer<'static>, PkiError> {
        // SPIFFE: a signing certificate carries the trust domain's ID, without a path; the
        // node shows in the subject.
        let id = SpiffeId::parse(&format!("spiffe://{td}"))
            .map_err(|e| PkiError::Invalid(format!("trust domain ID: {e}")))?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(&format!("authsec node {node_id} CA"));
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
        let t = now();
        p.not_before = at(t.saturating_sub(CLOCK_SKEW));
        p.not_after = at(t + ttl);
        p.serial_number = Some(serial());
        p.use_authority_key_identifier_extension = true;
        Ok(p.signed_by(subject, &self.issuer()?)?.der().clone())
    }
}

/// A fresh key and a CSR for it (the CSR's content beyond the key is advisory: the signer
/// builds the certificate from what it knows).
pub fn new_key_and_csr(id: &SpiffeId) -> Result<(KeyPair, Vec<u8>), PkiError> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(id.as_str());
    let csr = p.serialize_request(&key)?;
    Ok((key, csr.der().to_vec()))
}

/// The public key of a CSR whose self-signature verifies. Bounded; nothing else in the CSR
/// is trusted.
pub fn csr_public_key(der: &[u8]) -> Result<rcgen::PublicKey, PkiError> {
    if der.is_empty() || der.len() > CSR_BYTES_MAX {
        return Err(PkiError::Invalid(format!(
            "the CSR must be 1 to {CSR_BYTES_MAX} bytes"
        )));
    }
    let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(der))
        .map_err(|e| PkiError::Invalid(format!("the CSR does not parse or verify: {e}")))?;
    Ok(csr.public_key)
}

/// A join token: `<id>.<secret>`, 16 hex digits of id and 64 of secret.
#[derive(Clone)]
pub struct JoinToken {
    pub id: String,
    secret: [u8; 32],
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({}.<redacted>)", self.id)
    }
}

impl JoinToken {
    pub fn generate() -> Self {
        let mut id = [0u8; 8];
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
        Self {
            id: hex::encode(id),
            secret,
        }
    }

    pub fn parse(s: &str) -> Result<Self, PkiError> {
        let bad =
            || PkiError::Invalid("a join token looks like <16 hex digits>.<64 hex digits>".into());
        if s.len() > JOIN_TOKEN_BYTES_MAX {
            return Err(bad());
        }
        let (id, secret) = s.trim().split_once('.').ok_or_else(bad)?;
        let hexish = |x: &str, n: usize| x.len() == n && x.bytes().all(|b| b.is_ascii_hexdigit());
        if !hexish(id, 16) || !hexish(secret, 64) {
            return Err(bad());
        }
        let secret = hex::decode(secret)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(bad)?;
        Ok(Self {
            id: id.to_ascii_lowercase(),
            secret,
        })
    }

    /// What the log stores.
    pub fn secret_hash(&self) -> [u8; 32] {
        Sha256::digest(self.secret).into()
    }

    /// The token as the operator hands it over; shown once.
    pub fn reveal(&self) -> String {
        format!("{}.{}", self.id, hex::encode(self.secret))
    }
}

impl Drop for JoinToken {
    fn drop(&mut self) {
        self.secret = [0; 32];
    }
}

/// A node's TLS files under `<data_dir>/tls`.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    pub dir: PathBuf,
}

impl NodeFiles {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("tls"),
        }
    }
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.join("node.crt")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("node.key")
    }
    pub fn sealed_root(&self) -> PathBuf {
        self.dir.join("root.sealed")
    }
    /// The bootstrap admin's certificate (public), for the bootstrap to record in the log.
    pub fn bootstrap_admin(&self) -> PathBuf {
        self.dir.join("bootstrap-admin.crt")
    }
    /// Offline-root mode: this node's intermediate CA and its key.
    pub fn node_ca_cert(&self) -> PathBuf {
        self.dir.join("node-ca.crt")
    }
    pub fn node_ca_key(&self) -> PathBuf {
        self.dir.join("node-ca.key")
    }

    /// This node's intermediate CA, if it runs in offline-root mode.
    pub fn node_ca(&self) -> Result<Option<NodeCa>, PkiError> {
        if !self.node_ca_cert().exists() {
            return Ok(None);
        }
        let cert = read_certs(&self.node_ca_cert())?.remove(0);
        let pem = std::fs::read_to_string(self.node_ca_key()).map_err(io(&self.node_ca_key()))?;
        let key = KeyPair::from_pem(&pem)?;
        if !key_matches(&cert, &key)? {
            return Err(PkiError::Invalid(format!(
                "{} is not for the key in {} (signed from another CSR?)",
                self.node_ca_cert().display(),
                self.node_ca_key().display()
            )));
        }
        Ok(Some(NodeCa {
            cert_der: cert,
            key,
        }))
    }

    pub fn exists(&self) -> bool {
        self.cert().exists() && self.key().exists() && self.bundle().exists()
    }

    pub fn write_bundle(&self, roots: &[CertificateDer<'_>]) -> Result<(), PkiError> {
        write_file(&self.bundle(), pem_certs(roots).as_bytes(), 0o644)
    }

    /// Replace the key and certificate: key first, then the certificate, each atomically; a
    /// crash in between leaves a key whose certificate is refused at start, never a
    /// certificate without its key being detectable.
    pub fn write_identity(
        &self,
        chain: &[CertificateDer<'_>],
        key: &KeyPair,
    ) -> Result<(), PkiError> {
        write_file(&self.key(), key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&self.cert(), pem_certs(chain).as_bytes(), 0o644)
    }

    /// Keep a signed chain with its key and its trust bundle: the bundle's roots in the
    /// bundle file, the rest of the chain (the leaf, any cross-certificates of a root
    /// rotation) with the key.
    pub fn write_signed<'a>(
        &self,
        chain: &[CertificateDer<'a>],
        bundle: &[CertificateDer<'a>],
        key: &KeyPair,
    ) -> Result<(), PkiError> {
        let own: Vec<_> = chain
            .iter()
            .filter(|c| !bundle.contains(c))
            .cloned()
            .collect();
        self.write_identity(&own, key)?;
        self.write_bundle(bundle)
    }

    pub fn load_bundle(&self) -> Result<Vec<CertificateDer<'static>>, PkiError> {
        read_certs(&self.bundle())
    }

    pub fn load_identity(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
        let chain = read_certs(&self.cert())?;
        let key = PrivateKeyDer::from_pem_file(self.key())
            .map_err(|e| PkiError::Invalid(format!("{}: {e}", self.key().display())))?;
        Ok((chain, key))
    }
}

/// [`pem_certs`] of DER blobs as the API carries them.
pub fn pem_of_ders(ders: Vec<Vec<u8>>) -> String {
    let certs: Vec<CertificateDer<'static>> = ders.into_iter().map(CertificateDer::from).collect();
    pem_certs(&certs)
}

pub fn pem_certs(certs: &[CertificateDer<'_>]) -> String {
    certs
        .iter()
        .map(|c| {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD.encode(c.as_ref());
            let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
            for line in b64.as_bytes().chunks(64) {
                s.push_str(std::str::from_utf8(line).unwrap_or_default());
                s.push('\n');
            }
            s.push_str("-----END CERTIFICATE-----\n");
            s
        })
        .collect()
}

pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| PkiError::Invalid(format!("{}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Invalid(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(PkiError::Invalid(format!(
            "{} holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// Seconds since the epoch at which a certificate stops being valid.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<Duration, PkiError> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| PkiError::Invalid(format!("certificate: {e}")))?;
    Ok(Duration::from_secs(
        x.validity().not_after.timestamp().max(0) as u64,
    ))
}

/// [`not_after`] in milliseconds since the epoch, as the log records expiries.
pub fn not_after_ms(cert: &CertificateDer<'_>) -> Result<u64, PkiError> {
    Ok(u64::try_from(not_after(cert)?.as_millis()).unwrap_or(u64::MAX))
}

/// How long until `cert` should be renewed: at half its lifetime.
pub fn renew_in(cert: &CertificateDer<'_>) -> Result<Duration, PkiError> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| PkiError::Invalid(format!("certificate: {e}")))?;
    let nb = x.validity().not_before.timestamp().max(0) as u64;
    let na = x.validity().not_after.timestamp().max(0) as u64;
    // notBefore is backdated by the skew allowance; the half-life counts from issuance.
    let issued = nb + CLOCK_SKEW.as_secs();
    let half = issued + na.saturating_sub(issued) / 2;
    Ok(Duration::from_secs(half).saturating_sub(now()))
}

/// Admin credential files: `admin.crt`, `admin.key` (0600) and `ca.crt`.
#[derive(Debug, Clone)]
pub struct AdminFiles {
    pub dir: PathBuf,
}

impl AdminFiles {
    pub fn cert(&self) -> PathBuf {
        self.dir.join("admin.crt")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("admin.key")
    }
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn write(
        &self,
        cert: &CertificateDer<'_>,
        key: &KeyPair,
        roots: &[CertificateDer<'_>],
    ) -> Result<(), PkiError> {
        write_file(&self.key(), key.serialize_pem().as_bytes(), 0o600)?;
        write_file(
            &self.cert(),
            pem_certs(std::slice::from_ref(cert)).as_bytes(),
            0o644,
        )?;
        write_file(&self.bundle(), pem_certs(roots).as_bytes(), 0o644)
    }

    pub fn load(
        &self,
    ) -> Result<
        (
            Vec<CertificateDer<'static>>,
            Vec<CertificateDer<'static>>,
            PrivateKeyDer<'static>,
        ),
        PkiError,
    > {
        let roots = read_certs(&self.bundle())?;
        let chain = read_certs(&self.cert())?;
        let key = PrivateKeyDer::from_pem_file(self.key())
            .map_err(|e| PkiError::Invalid(format!("{}: {e}", self.key().display())))?;
        Ok((roots, chain, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::parse("example.org").expect("valid")
    }

    #[test]
    fn kek_seals_and_refuses_a_wrong_key_or_context() {
        let k = Kek::generate();
        let sealed = k.seal(b"ctx", b"secret root key");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(k.open(b"ctx", &sealed).expect("opens"), b"secret root key");
        assert!(matches!(k.open(b"other", &sealed), Err(PkiError::Unseal)));
        assert!(matches!(
            Kek::generate().open(b"ctx", &sealed),
            Err(PkiError::Unseal)
        ));
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(k.open(b"ctx", &flipped), Err(PkiError::Unseal)));
        assert!(format!("{k:?}").contains("redacted"));
    }

    #[test]
    fn root_round_trips_through_the_seal_and_signs_svids() {
        let root = Root::generate(&td()).expect("root");
        let kek = Kek::generate();
        let sealed = root.seal(&kek, &td());
        let back = Root::unseal(&kek, &td(), &root.cert_der, &sealed).expect("unseal");
        let id = authsec_raft::tls::node_spiffe_id(&td(), 7);
        let (key, csr) = new_key_and_csr(&id).expect("csr");
        let pk = csr_public_key(&csr).expect("csr verifies");
        let sans = Sans::parse(&["node7.example.org".into()], &["127.0.0.1".into()]).expect("sans");
        let cert = back
            .sign_node(&td(), 7, &pk, &sans, NODE_TTL_DEFAULT)
            .expect("sign");
        assert_eq!(
            authsec_raft::tls::svid_id(&cert).expect("an SVID"),
            id,
            "the URI SAN is the node's SPIFFE ID"
        );
        let _ = key;
        let other = Root::generate(&td()).expect("root");
        assert!(
            Root::unseal(&kek, &td(), &other.cert_der, &sealed).is_err(),
            "a sealed key is refused for another root's certificate"
        );
        let (admin, _) = root.issue_admin(&td(), "ops").expect("admin");
        let aid = authsec_raft::tls::svid_id(&admin).expect("svid");
        assert_eq!(admin_name_of(&td(), &aid), Some("ops"));
    }

    /// A root rotation of the transport: a leaf under the new root verifies for a peer
    /// that trusts only the old root once the old root's cross-certificate of the new one is
    /// served beside it, for a peer that trusts only the new root directly, and for one that
    /// trusts only the old root not at all without it.
    #[test]
    fn a_cross_certificate_chains_a_new_roots_leaves_to_the_old_root() {
        use rustls::client::verify_server_cert_signed_by_trust_anchor;
        use rustls::server::ParsedCertificate;
        let old = Root::generate(&td()).expect("root");
        let new = Root::generate_labelled(&td(), "2").expect("root");
        let cross = old.cross_certify(&new).expect("cross-certify");
        let (_, parsed) = x509_parser::parse_x509_certificate(&cross).expect("parses");
        let (_, new_parsed) = x509_parser::parse_x509_certificate(&new.cert_der).expect("parses");
        assert_eq!(
            parsed.subject(),
            new_parsed.subject(),
            "the new root's own name"
        );
        assert_eq!(parsed.public_key().raw, new_parsed.public_key().raw);
        assert!(parsed.validity().not_after <= new_parsed.validity().not_after);
        let id = authsec_raft::tls::node_spiffe_id(&td(), 2);
        let (_, csr) = new_key_and_csr(&id).expect("csr");
        let pk = csr_public_key(&csr).expect("csr verifies");
        let sans = Sans::parse(&[], &["127.0.0.1".into()]).expect("sans");
        let leaf = new
            .sign_node(&td(), 2, &pk, &sans, NODE_TTL_DEFAULT)
            .expect("sign");
        let algs = rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .all;
        let now = rustls::pki_types::UnixTime::now();
        let verify = |anchor: &Root, intermediates: &[CertificateDer<'static>]| {
            let mut store = rustls::RootCertStore::empty();
            store.add(anchor.cert_der.clone()).expect("anchor");
            let leaf = ParsedCertificate::try_from(&leaf).expect("leaf");
            verify_server_cert_signed_by_trust_anchor(&leaf, &store, intermediates, now, algs)
        };
        // What a node serves during the rotation: leaf, cross-certificate, then both roots.
        let served = [cross.clone(), new.cert_der.clone(), old.cert_der.clone()];
        verify(&old, &served).expect("a holder of the old root only");
        verify(&new, &served).expect("a holder of the new root only");
        assert!(
            verify(&old, &[new.cert_der.clone(), old.cert_der.clone()]).is_err(),
            "without the cross-certificate the old root does not vouch for the new one"
        );
        // Cross-certified by a stranger, the chain is still nobody's.
        let stranger = Root::generate(&td()).expect("root");
        let forged = stranger.cross_certify(&new).expect("cross-certify");
        assert!(verify(&old, &[forged]).is_err());
    }

    #[test]
    fn join_tokens_parse_strictly_and_hide_their_secret() {
        let t = JoinToken::generate();
        let s = t.reveal();
        let back = JoinToken::parse(&s).expect("parses");
        assert_eq!(back.secret_hash(), t.secret_hash());
        assert!(!format!("{back:?}").contains(&s[17..]));
        for bad in [
            "",
            ".",
            "abc.def",
            &s[..s.len() - 1],
            &format!("{s}0"),
            &s.replace('.', "-"),
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad:?}");
        }
    }
}

//! A verifier of access tokens (RFC 9068 JWTs) for resource servers, working offline: no call
//! to the authorization server per request.
//!
//! - **Keys** come from the issuer's JWKS (HTTPS), cached; an unknown `kid` refetches it (a
//!   node publishes a key before it signs with it), at most once per
//!   [`VerifierConfig::jwks_refetch_min`], so a storm of forged `kid`s cannot turn into a storm
//!   of fetches; a JWKS older than [`VerifierConfig::jwks_max_age`] is refreshed in the
//!   background on use, so retired keys go away. ES256 and EdDSA, each key bound to its one
//!   algorithm (RFC 8725): `none`, HMAC and a mismatched `alg` never verify.
//! - **Claims**: `typ` `at+jwt`, `iss` one of the accepted issuers, `aud` naming this resource,
//!   `exp`/`nbf`/`iat` with a small leeway, required scopes, and the certificate binding
//!   (`cnf.x5t#S256`, RFC 8705) against the client certificate presented on the connection.
//! - **Revocation** follows the authority's `WatchRevocations` stream (a background task that
//!   reconnects with backoff, trying each node in turn, and keeps the latest full set) and is
//!   decided as the node's own introspection decides it: the `jti` revoked, or the client
//!   (`client:<client_id>`), or for a delegated token its delegation (`delegation:<id>`) or its
//!   delegator, revoked below the log index the token carries (`authsec_index`). A
//!   revocation a node applied reaches a subscriber within its next wake-up (100 ms), so a
//!   revoked token is refused well within a second, with no call per request. The node also
//!   sends heartbeats with the age of its view (how long ago the cluster had acknowledged
//!   nothing it lacks); past `revocation_max_age` (default 750 ms) the verifier refuses
//!   tokens as unverifiable (503) rather than vouch from a view that may miss a revocation:
//!   a node cut off from the majority, or a stalled stream, cannot keep a revoked token alive. What the set
//!   does not carry (a client disabled without revoking its credentials) only introspection
//!   sees; an expired delegation needs no entry, its tokens never outlive it.
//! - **A cache of verified tokens**, keyed by the token's SHA-256 and bounded, skips parsing
//!   and the signature check on a hit; expiry, revocation, binding and scopes are checked on
//!   every call all the same.
//!
//! Errors map to RFC 6750 codes ([`VerifyError::code`]) for the `WWW-Authenticate` answer.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use authsec_api::v1;
use base64::Engine;
use serde_json::Value;
use sha2::Digest;
use tokio::sync::watch;

use crate::token::{get, http1_config, HttpsUrl, TransportError};

/// The longest token accepted (the node accepts no longer a JWS either).
pub const TOKEN_BYTES_MAX: usize = 16 * 1024;
/// The largest JWKS document read.
pub const JWKS_BYTES_MAX: usize = 1 << 20;
/// Keys kept from one JWKS document.
const JWKS_KEYS_MAX: usize = 256;
/// Default clock leeway on `exp`, `nbf` and `iat`.
pub const LEEWAY: Duration = Duration::from_secs(10);
/// Default: at most one JWKS fetch per this interval on unknown `kid`s.
pub const JWKS_REFETCH_MIN: Duration = Duration::from_secs(5);
/// Default age after which a JWKS is refreshed in the background.
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(300);
/// Default bound on a JWKS fetch.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of verified tokens remembered.
pub const CACHE_ENTRIES_MAX: usize = 10_000;
/// Default time the verifier keeps accepting tokens on a revocation set it can no longer
/// refresh (the stream is down) before it refuses them as unverifiable.
pub const REVOCATION_GRACE: Duration = Duration::from_secs(60);
/// Default bound on the age of the revocation view the verifier decides on: the cluster's
/// 1 s revocation promise, less 250 ms for delivery and the age estimate.
pub const REVOCATION_MAX_AGE: Duration = Duration::from_millis(750);
/// The revocation set can be large (every unexpired revoked token); allow it.
const REVOCATION_MESSAGE_BYTES_MAX: usize = 64 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Errors

/// RFC 6750 section 3.1 error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerErrorCode {
    InvalidRequest,
    InvalidToken,
    InsufficientScope,
}

impl BearerErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidToken => "invalid_token",
            Self::InsufficientScope => "insufficient_scope",
        }
    }

    /// The HTTP status RFC 6750 gives the code.
    pub fn status(self) -> http::StatusCode {
        match self {
            Self::InvalidRequest => http::StatusCode::BAD_REQUEST,
            Self::InvalidToken => http::StatusCode::UNAUTHORIZED,
            Self::InsufficientScope => http::StatusCode::FORBIDDEN,
        }
    }
}

impl fmt::Display for BearerErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a token was refused (or could not be checked). The message is the description a
/// client is told; it names no key material and no token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the token's typ must be at+jwt")]
    Typ,
    #[error("the token's algorithm {0:?} is not accepted (ES256, EdDSA)")]
    Algorithm(String),
    #[error("the token's key {kid:?} is not among the issuer's keys")]
    UnknownKey { kid: String },
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token's issuer {0:?} is not accepted")]
    Issuer(String),
    #[error("the token expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is not meant for this resource ({expected})")]
    Audience { expected: String },
    #[error("the token was revoked")]
    Revoked,
    #[error("the token is bound to a client certificate: {0}")]
    Binding(&'static str),
    #[error("the token lacks the scope {}", .missing.join(" "))]
    InsufficientScope { missing: Vec<String> },
    /// The issuer's keys could not be fetched (nothing verified yet): retry later.
    #[error("the issuer's keys are not available: {0}")]
    KeysUnavailable(String),
    /// The revocation set is not known or too old to rely on: retry later.
    #[error("revocations cannot be checked: {0}")]
    RevocationsUnavailable(String),
    #[error("verifier configuration: {0}")]
    Config(String),
}

impl VerifyError {
    /// The RFC 6750 code, or `None` when the fault is not the token's (keys or revocations
    /// unavailable, configuration): those answer 503.
    pub fn code(&self) -> Option<BearerErrorCode> {
        match self {
            Self::InsufficientScope { .. } => Some(BearerErrorCode::InsufficientScope),
            Self::KeysUnavailable(_) | Self::RevocationsUnavailable(_) | Self::Config(_) => None,
            _ => Some(BearerErrorCode::InvalidToken),
        }
    }

    /// The HTTP status of the answer a resource server gives.
    pub fn status(&self) -> http::StatusCode {
        self.code().map_or(
            http::StatusCode::SERVICE_UNAVAILABLE,
            BearerErrorCode::status,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Claims

/// `cnf` (RFC 7800) of a certificate-bound token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Confirmation {
    #[serde(rename = "x5t#S256", default)]
    pub x5t_s256: Option<String>,
}

/// The claims of a verified access token, as the authsec node writes them.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    /// The client; for a delegated token, the delegator (RFC 8693).
    pub sub: String,
    #[serde(deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    /// The client the token was issued to (the acting agent, for a delegated token).
    pub client_id: String,
    pub exp: u64,
    pub iat: u64,
    #[serde(default)]
    pub nbf: Option<u64>,
    pub jti: String,
    /// Space separated.
    #[serde(default)]
    pub scope: String,
    /// The issuing node's applied log index: revocation of a subject is ordered by it.
    #[serde(default, rename = "authsec_index")]
    pub index: u64,
    #[serde(default)]
    pub cnf: Option<Confirmation>,
    /// RFC 8693 actor chain; the outermost entry is the current actor.
    #[serde(default)]
    pub act: Option<Value>,
    #[serde(default, rename = "authsec_delegation")]
    pub delegation: Option<String>,
    /// The delegator's subject key (`client:<id>`, `person:<iss>#<sub>`).
    #[serde(default, rename = "authsec_delegator")]
    pub delegator: Option<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    Ok(match <Aud as serde::Deserialize>::deserialize(d)? {
        Aud::One(a) => vec![a],
        Aud::Many(v) => v,
    })
}

impl AccessClaims {
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split(' ').filter(|s| !s.is_empty())
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|s| s == scope)
    }

    /// Every one of `required` must be granted; else `insufficient_scope` naming what lacks.
    pub fn require_scopes<S: AsRef<str>>(&self, required: &[S]) -> Result<(), VerifyError> {
        let missing: Vec<String> = required
            .iter()
            .map(AsRef::as_ref)
            .filter(|r| !self.has_scope(r))
            .map(str::to_owned)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(VerifyError::InsufficientScope { missing })
        }
    }

    /// The current actor of a delegated token (the outermost `act.sub`).
    pub fn actor(&self) -> Option<&str> {
        self.act.as_ref()?.get("sub")?.as_str()
    }

    /// The thumbprint the token is bound to, if it is bound.
    pub fn bound_thumbprint(&self) -> Option<&str> {
        self.cnf.as_ref()?.x5t_s256.as_deref()
    }
}

// ---------------------------------------------------------------------------------------------
// Certificate binding

/// SHA-256 of a client certificate's DER (RFC 8705 `x5t#S256`), what a bound token names.
/// Not secret: `Debug` shows it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertThumbprint([u8; 32]);

impl fmt::Debug for CertThumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertThumbprint({})", self.to_base64url())
    }
}

impl CertThumbprint {
    /// Of the leaf certificate the client presented (DER).
    pub fn from_der(der: &[u8]) -> Self {
        Self(sha2::Sha256::digest(der).into())
    }

    /// From `sha256:<hex>`, the fingerprint [`authsec_tls::PeerInfo`] carries.
    pub fn from_fingerprint(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("sha256:")?;
        let b = hex::decode(hex).ok()?;
        Some(Self(b.try_into().ok()?))
    }

    /// From the base64url form a token's `cnf` carries.
    pub fn from_base64url(s: &str) -> Option<Self> {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .ok()?;
        Some(Self(b.try_into().ok()?))
    }

    pub fn to_base64url(&self) -> String {
        crate::token::b64url(&self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// A token with `cnf.x5t#S256` is accepted only from the holder of that certificate (RFC 8705
/// section 3); a token without `cnf` from anyone.
pub fn check_binding(
    claims: &AccessClaims,
    presented: Option<&CertThumbprint>,
) -> Result<(), VerifyError> {
    let Some(cnf) = &claims.cnf else {
        return Ok(());
    };
    let Some(want) = &cnf.x5t_s256 else {
        return Err(VerifyError::Binding("cnf has no x5t#S256"));
    };
    let want = CertThumbprint::from_base64url(want).ok_or(VerifyError::Binding(
        "cnf x5t#S256 is not a SHA-256 thumbprint",
    ))?;
    let got = presented.ok_or(VerifyError::Binding(
        "present the client certificate it was issued to",
    ))?;
    aws_lc_rs::constant_time::verify_slices_are_equal(&want.0, &got.0)
        .map_err(|_| VerifyError::Binding("the client certificate is not the one it was issued to"))
}

// ---------------------------------------------------------------------------------------------
// Keys

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Es256,
    EdDsa,
}

impl Alg {
    fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }
}

/// A public key bound to its one algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PublicKey {
    alg: Alg,
    /// Uncompressed P-256 point, or the Ed25519 key.
    bytes: Arc<[u8]>,
}

impl PublicKey {
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ED25519};
        match self.alg {
            Alg::Es256 => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.bytes[..])
                .verify(msg, sig)
                .is_ok(),
            Alg::EdDsa => UnparsedPublicKey::new(&ED25519, &self.bytes[..])
                .verify(msg, sig)
                .is_ok(),
        }
    }

    fn from_jwk(jwk: &serde_json::Map<String, Value>) -> Result<Self, String> {
        let s = |k: &str| jwk.get(k).and_then(Value::as_str);
        let b = |k: &str| {
            s(k).and_then(|v| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(v)
                    .ok()
            })
            .ok_or_else(|| format!("member {k} missing or not base64url"))
        };
        if s("use").is_some_and(|u| u != "sig") {
            return Err("not a signing key (use)".into());
        }
        let key = match (s("kty"), s("crv")) {
            (Some("EC"), Some("P-256")) => {
                let (x, y) = (b("x")?, b("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err("P-256 coordinates are 32 bytes".into());
                }
                let mut p = Vec::with_capacity(65);
                p.push(4);
                p.extend(x);
                p.extend(y);
                Self {
                    alg: Alg::Es256,
                    bytes: p.into(),
                }
            }
            (Some("OKP"), Some("Ed25519")) => {
                let x = b("x")?;
                if x.len() != 32 {
                    return Err("Ed25519 keys are 32 bytes".into());
                }
                Self {
                    alg: Alg::EdDsa,
                    bytes: x.into(),
                }
            }
            (kty, crv) => {
                return Err(format!(
                    "kty {} crv {} is not accepted",
                    kty.unwrap_or("?"),
                    crv.unwrap_or("-")
                ))
            }
        };
        if let Some(alg) = s("alg") {
            if alg != key.alg.as_str() {
                return Err(format!("alg {alg} does not fit the key"));
            }
        }
        Ok(key)
    }
}

/// A JWKS document's usable signing keys, by `kid`.
#[derive(Debug, Clone, Default)]
pub struct Jwks {
    keys: HashMap<String, PublicKey>,
}

impl Jwks {
    /// Parse `{"keys": [...]}`: EC P-256 (ES256) and OKP Ed25519 (EdDSA) keys with a `kid`;
    /// other keys are skipped.
    pub fn parse(doc: &[u8]) -> Result<Self, VerifyError> {
        let bad = |m: String| VerifyError::KeysUnavailable(m);
        if doc.len() > JWKS_BYTES_MAX {
            return Err(bad(format!("the JWKS exceeds {JWKS_BYTES_MAX} bytes")));
        }
        let v: Value =
            serde_json::from_slice(doc).map_err(|e| bad(format!("the JWKS is not JSON: {e}")))?;
        let list = v
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("the JWKS has no keys array".into()))?;
        let mut keys = HashMap::new();
        for k in list.iter().take(JWKS_KEYS_MAX) {
            let Some(obj) = k.as_object() else { continue };
            let Some(kid) = obj.get("kid").and_then(Value::as_str) else {
                tracing::debug!("skipping a JWK without kid");
                continue;
            };
            match PublicKey::from_jwk(obj) {
                Ok(key) => {
                    keys.insert(kid.to_owned(), key);
                }
                Err(e) => tracing::debug!(kid, reason = %e, "skipping a JWK"),
            }
        }
        Ok(Self { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }
}

/// Where the verifier gets the issuer's keys.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// JWKS URLs (`https://...`), tried in order until one answers: the same document from
    /// several nodes, so one node down does not stop verification.
    Jwks {
        uris: Vec<String>,
        tls: Arc<rustls::ClientConfig>,
    },
    /// A fixed key set (tests, air-gapped deployments): an unknown `kid` is refused at once.
    Static(Jwks),
}

impl KeySource {
    pub fn jwks_uri(uri: impl Into<String>, tls: Arc<rustls::ClientConfig>) -> Self {
        Self::Jwks {
            uris: vec![uri.into()],
            tls,
        }
    }
}

/// Allows one fetch per `min` interval.
#[derive(Debug)]
struct FetchLimiter {
    last: Option<Instant>,
    min: Duration,
}

impl FetchLimiter {
    fn allow(&mut self, now: Instant) -> bool {
        match self.last {
            Some(l) if now.saturating_duration_since(l) < self.min => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

#[derive(Debug, Default)]
struct KeySet {
    jwks: Jwks,
    fetched_at: Option<Instant>,
}

#[derive(Debug)]
struct KeyStore {
    remote: Option<(Vec<HttpsUrl>, Arc<rustls::ClientConfig>)>,
    current: RwLock<Arc<KeySet>>,
    fetch: tokio::sync::Mutex<FetchLimiter>,
    refreshing: AtomicBool,
    max_age: Duration,
    timeout: Duration,
}

impl KeyStore {
    fn current(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn store(&self, jwks: Jwks) {
        let set = Arc::new(KeySet {
            jwks,
            fetched_at: Some(Instant::now()),
        });
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = set;
    }

    /// The key `kid` names: from the cache, or after a (rate-limited) refetch.
    async fn key(self: &Arc<Self>, kid: &str) -> Result<PublicKey, VerifyError> {
        let set = self.current();
        if let Some(k) = set.jwks.keys.get(kid) {
            if self.remote.is_some() && set.fetched_at.is_some_and(|t| t.elapsed() > self.max_age) {
                self.refresh_in_background();
            }
            return Ok(k.clone());
        }
        if self.remote.is_none() {
            return Err(VerifyError::UnknownKey { kid: kid.into() });
        }
        let mut limiter = self.fetch.lock().await;
        // Another caller may have fetched while we waited.
        let set = self.current();
        if let Some(k) = set.jwks.keys.get(kid) {
            return Ok(k.clone());
        }
        let never = set.fetched_at.is_none();
        if !limiter.allow(Instant::now()) {
            return Err(if never {
                VerifyError::KeysUnavailable("the last fetch failed; retrying shortly".into())
            } else {
                VerifyError::UnknownKey { kid: kid.into() }
            });
        }
        match self.fetch_now().await {
            Ok(jwks) => {
                tracing::debug!(
                    kid,
                    keys = jwks.len(),
                    "fetched the JWKS for an unknown kid"
                );
                let found = jwks.keys.get(kid).cloned();
                self.store(jwks);
                found.ok_or_else(|| VerifyError::UnknownKey { kid: kid.into() })
            }
            Err(e) => {
                tracing::warn!(kid, error = %e, "fetching the JWKS failed");
                Err(if never {
                    VerifyError::KeysUnavailable(e)
                } else {
                    VerifyError::UnknownKey { kid: kid.into() }
                })
            }
        }
    }

    fn refresh_in_background(self: &Arc<Self>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            {
                let mut limiter = this.fetch.lock().await;
                if limiter.allow(Instant::now()) {
                    match this.fetch_now().await {
                        Ok(jwks) => this.store(jwks),
                        Err(e) => {
                            tracing::warn!(error = %e, "refreshing the JWKS failed; keeping the keys held")
                        }
                    }
                }
            }
            this.refreshing.store(false, Ordering::Release);
        });
    }

    async fn fetch_now(&self) -> Result<Jwks, String> {
        let Some((urls, tls)) = &self.remote else {
            return Err("no JWKS URL".into());
        };
        let mut errors = Vec::new();
        for url in urls {
            let r = get(url, tls.clone(), JWKS_BYTES_MAX, self.timeout).await;
            match r {
                Ok(a) if a.status == http::StatusCode::OK => match Jwks::parse(&a.body) {
                    Ok(j) => return Ok(j),
                    Err(e) => errors.push(format!("{}: {e}", url.url)),
                },
                Ok(a) => errors.push(format!("{}: answered {}", url.url, a.status)),
                Err(e) => errors.push(format!("{}: {e}", url.url)),
            }
        }
        Err(errors.join("; "))
    }
}

// ---------------------------------------------------------------------------------------------
// Revocations

/// The revocation set, indexed for the per-request check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RevocationIndex {
    applied_index: u64,
    /// Revoked single credentials by id (`jti`), with their expiry (ms).
    credentials: HashMap<String, u64>,
    /// Subject key -> every credential issued below this log index is revoked.
    subjects: HashMap<String, u64>,
}

impl RevocationIndex {
    fn from_set(set: &v1::RevocationSet) -> Self {
        Self {
            applied_index: set.applied_index,
            credentials: set
                .credentials
                .iter()
                .map(|c| (c.id.clone(), c.expires_at_ms))
                .collect(),
            subjects: set
                .subjects
                .iter()
                .map(|s| (s.subject.clone(), s.below_index))
                .collect(),
        }
    }

    /// `self` came from a node behind the one `older` came from (a reconnect to a lagging
    /// node): keep what `older` revoked too, so a reconnect never un-revokes.
    fn keep_from(&mut self, older: &RevocationIndex, now_ms: u64) {
        for (id, exp) in &older.credentials {
            if *exp > now_ms {
                self.credentials.entry(id.clone()).or_insert(*exp);
            }
        }
        for (s, below) in &older.subjects {
            let b = self.subjects.entry(s.clone()).or_insert(*below);
            *b = (*b).max(*below);
        }
        self.applied_index = self.applied_index.max(older.applied_index);
    }

    /// Whether the token is revoked, decided as the node's introspection decides it
    /// (`node/src/oauth/token.rs`, `active`): by `jti`; by its client revoked below the index
    /// it carries; for a delegated token, by its delegation revoked (`delegation:<id>`) or its
    /// delegator revoked below that index.
    fn revokes(&self, c: &AccessClaims) -> bool {
        if self.credentials.contains_key(&c.jti) {
            return true;
        }
        let below = |key: &str| self.subjects.get(key).is_some_and(|b| c.index < *b);
        if below(&format!("client:{}", c.client_id)) {
            return true;
        }
        // A delegated token dies with its delegation, and with its delegator.
        c.delegation
            .as_deref()
            .is_some_and(|d| below(&format!("delegation:{d}")))
            || (c.delegation.is_some() && c.delegator.as_deref().is_some_and(below))
    }
}

#[derive(Debug, Clone, Default)]
struct RevocationState {
    set: Option<Arc<RevocationIndex>>,
    connected: bool,
    /// Since when the stream has been down (after having been up, or since the start).
    down_since: Option<Instant>,
    /// The set held has every revocation the cluster acknowledged before this instant (as
    /// the nodes reported their view's age); `None`: no node could say.
    complete_as_of: Option<Instant>,
}

/// What the verifier knows of revocations, for health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationStatus {
    /// The applied log index of the set held (`None`: no set yet).
    pub applied_index: Option<u64>,
    pub connected: bool,
    pub credentials: usize,
    pub subjects: usize,
    /// How old the revocation view held is: it may miss revocations acknowledged longer ago
    /// than this, none before (`None`: unknown).
    pub view_age: Option<Duration>,
}

/// Where the revocation stream comes from: channels to nodes of the trust domain, tried in
/// turn. Any identity of the trust domain may subscribe.
#[derive(Clone)]
pub struct RevocationSource {
    channels: Vec<tonic::transport::Channel>,
}

impl fmt::Debug for RevocationSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationSource")
            .field("channels", &self.channels.len())
            .finish()
    }
}

impl RevocationSource {
    pub fn new(channels: Vec<tonic::transport::Channel>) -> Result<Self, VerifyError> {
        if channels.is_empty() {
            return Err(VerifyError::Config(
                "a revocation source needs at least one channel".into(),
            ));
        }
        Ok(Self { channels })
    }

    /// Mutual TLS as the identity `tls` holds, to the nodes at `addrs` (`host:port`).
    pub fn mutual_tls(
        tls: Arc<authsec_tls::TlsState>,
        addrs: &[String],
    ) -> Result<Self, VerifyError> {
        let t = authsec_tls::Transport::mutual_tls(tls);
        let channels = addrs
            .iter()
            .map(|a| {
                t.channel(a)
                    .map_err(|e| VerifyError::Config(format!("channel to {a}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Self::new(channels)
    }
}

/// Follow the stream until the verifier is dropped (the task is aborted then).
async fn follow_revocations(src: RevocationSource, tx: Arc<watch::Sender<RevocationState>>) {
    let mut backoff = BACKOFF_MIN;
    for attempt in 0usize.. {
        let node = attempt % src.channels.len();
        let mut client =
            v1::svid_service_client::SvidServiceClient::new(src.channels[node].clone())
                .max_decoding_message_size(REVOCATION_MESSAGE_BYTES_MAX);
        let why = match client
            .watch_revocations(v1::WatchRevocationsRequest {
                heartbeats: true,
                heartbeat_ms: 0,
            })
            .await
        {
            Err(s) => format!("subscribing failed: {}: {}", s.code(), s.message()),
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(set)) if set.heartbeat => {
                            apply_heartbeat(&tx, &set);
                            backoff = BACKOFF_MIN;
                        }
                        Ok(Some(set)) => {
                            apply_set(&tx, &set);
                            backoff = BACKOFF_MIN;
                            tracing::debug!(
                                source_index = node,
                                applied_index = set.applied_index,
                                credentials = set.credentials.len(),
                                subjects = set.subjects.len(),
                                "revocation set received"
                            );
                        }
                        Ok(None) => break "the stream ended".to_owned(),
                        Err(s) => {
                            break format!("the stream failed: {}: {}", s.code(), s.message())
                        }
                    }
                }
            }
        };
        tx.send_modify(|s| {
            if s.connected || s.down_since.is_none() {
                s.down_since = Some(Instant::now());
            }
            s.connected = false;
        });
        let jitter = Duration::from_millis(rand::Rng::gen_range(
            &mut rand::thread_rng(),
            0..=backoff.as_millis() as u64 / 2,
        ));
        tracing::warn!(source_index = node, error = %why, retry_in_ms = (backoff + jitter).as_millis() as u64, "revocation stream lost; reconnecting to the next node");
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// When a message with `view_age_ms` received now says the node's view was complete.
fn complete_as_of(set: &v1::RevocationSet) -> Option<Instant> {
    set.view_age_ms
        .and_then(|ms| Instant::now().checked_sub(Duration::from_millis(ms)))
}

/// A heartbeat: the set held still holds, now as of the node's reported view age.
fn apply_heartbeat(tx: &watch::Sender<RevocationState>, hb: &v1::RevocationSet) {
    let as_of = complete_as_of(hb);
    tx.send_modify(|s| {
        if s.set.is_some() {
            s.complete_as_of = s.complete_as_of.max(as_of);
        }
        s.connected = true;
        s.down_since = None;
    });
}

fn apply_set(tx: &watch::Sender<RevocationState>, set: &v1::RevocationSet) {
    let mut new = RevocationIndex::from_set(set);
    let now_ms = unix_now_ms();
    let as_of = complete_as_of(set);
    tx.send_modify(|s| {
        // What is held is a superset of both sets (a set from a node behind keeps what the
        // one before revoked): complete as of the later of the two.
        s.complete_as_of = s.complete_as_of.max(as_of);
        if let Some(old) = &s.set {
            if old.applied_index > new.applied_index {
                new.keep_from(old, now_ms);
            }
        }
        s.set = Some(Arc::new(std::mem::take(&mut new)));
        s.connected = true;
        s.down_since = None;
    });
}

// ---------------------------------------------------------------------------------------------
// The verified-token cache

#[derive(Debug)]
struct VerifiedCache {
    map: HashMap<[u8; 32], Arc<AccessClaims>>,
    order: VecDeque<[u8; 32]>,
    max: usize,
}

impl VerifiedCache {
    fn new(max: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            max: max.max(1),
        }
    }

    fn get(&self, k: &[u8; 32]) -> Option<Arc<AccessClaims>> {
        self.map.get(k).cloned()
    }

    /// Insert; when full, drop the expired first, then the oldest down to nine tenths.
    fn insert(&mut self, k: [u8; 32], c: Arc<AccessClaims>, now_s: u64) {
        if self.map.contains_key(&k) {
            return;
        }
        if self.map.len() >= self.max {
            self.map.retain(|_, c| c.exp > now_s);
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
            while self.map.len() >= self.max * 9 / 10 {
                let Some(old) = self.order.pop_front() else {
                    break;
                };
                self.map.remove(&old);
            }
        }
        self.map.insert(k, c);
        self.order.push_back(k);
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

// ---------------------------------------------------------------------------------------------
// The verifier

/// What a [`Verifier`] accepts.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// Accepted `iss` values (the cluster's issuer; a trailing `/` is ignored).
    pub issuers: Vec<String>,
    /// This resource's identifier: the token's `aud` must contain it.
    pub audience: String,
    pub keys: KeySource,
    /// Scopes every token must carry (a layer can require more per route).
    pub required_scopes: Vec<String>,
    pub leeway: Duration,
    pub cache_entries_max: usize,
    pub jwks_refetch_min: Duration,
    pub jwks_max_age: Duration,
    pub fetch_timeout: Duration,
    /// With a revocation source: how long tokens are still accepted while the stream is down
    /// (on the last set held). `None`: for ever. Before the first set arrives tokens are
    /// refused as unverifiable (503), as a revoked one must never pass.
    pub revocation_grace: Option<Duration>,
    /// With a revocation source: the oldest revocation view the verifier decides on. The
    /// node reports its view's age with every message and heartbeat; once what the verifier
    /// holds may miss a revocation acknowledged longer ago than this, tokens are refused as
    /// unverifiable (503). `None`: not checked, and a lost stream is tolerated for
    /// `revocation_grace` (a revoked token may then pass for that long).
    pub revocation_max_age: Option<Duration>,
}

impl VerifierConfig {
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>, keys: KeySource) -> Self {
        Self {
            issuers: vec![issuer.into()],
            audience: audience.into(),
            keys,
            required_scopes: Vec::new(),
            leeway: LEEWAY,
            cache_entries_max: CACHE_ENTRIES_MAX,
            jwks_refetch_min: JWKS_REFETCH_MIN,
            jwks_max_age: JWKS_MAX_AGE,
            fetch_timeout: FETCH_TIMEOUT,
            revocation_grace: Some(REVOCATION_GRACE),
            revocation_max_age: Some(REVOCATION_MAX_AGE),
        }
    }

    pub fn required_scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, s: I) -> Self {
        self.required_scopes = s.into_iter().map(Into::into).collect();
        self
    }
}

#[derive(Debug)]
struct Inner {
    issuers: Vec<String>,
    audience: String,
    required_scopes: Vec<String>,
    leeway_s: u64,
    revocation_grace: Option<Duration>,
    revocation_max_age: Option<Duration>,
    keys: Arc<KeyStore>,
    cache: Mutex<VerifiedCache>,
    /// Whether a revocation source was given (then no set means "cannot check").
    follows_revocations: bool,
    revocations: Arc<watch::Sender<RevocationState>>,
    task: Option<tokio::task::AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// Verifies access tokens. Cheap to clone; clones share keys, cache and revocations. The
/// revocation subscription ends when the last clone is dropped.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("issuers", &self.inner.issuers)
            .field("audience", &self.inner.audience)
            .field("cached_tokens", &self.cached_tokens())
            .field("revocations", &self.revocation_status())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier; with `revocations`, it subscribes to the revocation stream at once (call
    /// from within a Tokio runtime). Keys are fetched on first use.
    pub fn new(
        config: VerifierConfig,
        revocations: Option<RevocationSource>,
    ) -> Result<Self, VerifyError> {
        if config.issuers.is_empty() || config.audience.is_empty() {
            return Err(VerifyError::Config(
                "an issuer and an audience are required".into(),
            ));
        }
        let (remote, initial) = match config.keys {
            KeySource::Jwks { uris, tls } => {
                if uris.is_empty() {
                    return Err(VerifyError::Config("no JWKS URL".into()));
                }
                let urls = uris
                    .iter()
                    .map(|u| HttpsUrl::parse(u))
                    .collect::<Result<Vec<_>, TransportError>>()
                    .map_err(|e| VerifyError::Config(e.to_string()))?;
                (Some((urls, http1_config(&tls))), KeySet::default())
            }
            KeySource::Static(jwks) => (
                None,
                KeySet {
                    jwks,
                    fetched_at: Some(Instant::now()),
                },
            ),
        };
        let keys = Arc::new(KeyStore {
            remote,
            current: RwLock::new(Arc::new(initial)),
            fetch: tokio::sync::Mutex::new(FetchLimiter {
                last: None,
                min: config.jwks_refetch_min,
            }),
            refreshing: AtomicBool::new(false),
            max_age: config.jwks_max_age,
            timeout: config.fetch_timeout,
        });
        let (tx, _) = watch::channel(RevocationState {
            down_since: Some(Instant::now()),
            ..RevocationState::default()
        });
        let tx = Arc::new(tx);
        let follows_revocations = revocations.is_some();
        let task = match revocations {
            Some(src) => {
                let handle = tokio::runtime::Handle::try_current().map_err(|_| {
                    VerifyError::Config("a revocation source needs a Tokio runtime".into())
                })?;
                Some(
                    handle
                        .spawn(follow_revocations(src, tx.clone()))
                        .abort_handle(),
                )
            }
            None => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                issuers: config
                    .issuers
                    .iter()
                    .map(|i| i.trim_end_matches('/').to_owned())
                    .collect(),
                audience: config.audience,
                required_scopes: config.required_scopes,
                leeway_s: config.leeway.as_secs(),
                revocation_grace: config.revocation_grace,
                revocation_max_age: config.revocation_max_age,
                keys,
                cache: Mutex::new(VerifiedCache::new(config.cache_entries_max)),
                follows_revocations,
                revocations: tx,
                task,
            }),
        })
    }

    /// Verify `token`, presented over a connection whose client certificate has `cert` (needed
    /// only for certificate-bound tokens). Checks everything, including the configured
    /// required scopes; the claims are shared with the cache.
    pub async fn verify(
        &self,
        token: &str,
        cert: Option<&CertThumbprint>,
    ) -> Result<Arc<AccessClaims>, VerifyError> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(VerifyError::Malformed("longer than 16 KiB"));
        }
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = unix_now_s();
        let cached = self
            .inner
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key);
        let claims = match cached {
            Some(c) => c,
            None => {
                let c = Arc::new(self.verify_signed(token, now).await?);
                self.inner
                    .cache
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(key, c.clone(), now);
                c
            }
        };
        check_times(&claims, now, self.inner.leeway_s)?;
        self.check_revocation(&claims)?;
        check_binding(&claims, cert)?;
        claims.require_scopes(&self.inner.required_scopes)?;
        Ok(claims)
    }

    /// Verify and require `scopes` besides the configured ones.
    pub async fn verify_scopes<S: AsRef<str>>(
        &self,
        token: &str,
        cert: Option<&CertThumbprint>,
        scopes: &[S],
    ) -> Result<Arc<AccessClaims>, VerifyError> {
        let c = self.verify(token, cert).await?;
        c.require_scopes(scopes)?;
        Ok(c)
    }

    /// The audience this verifier accepts.
    pub fn audience(&self) -> &str {
        &self.inner.audience
    }

    /// Use this revocation set (when you follow the stream yourself). With a source, the
    /// stream's next set replaces it.
    pub fn set_revocations(&self, set: &v1::RevocationSet) {
        apply_set(&self.inner.revocations, set);
    }

    pub fn revocation_status(&self) -> RevocationStatus {
        let s = self.inner.revocations.borrow();
        RevocationStatus {
            applied_index: s.set.as_ref().map(|r| r.applied_index),
            connected: s.connected,
            credentials: s.set.as_ref().map_or(0, |r| r.credentials.len()),
            subjects: s.set.as_ref().map_or(0, |r| r.subjects.len()),
            view_age: s.complete_as_of.map(|t| t.elapsed()),
        }
    }

    /// Wait until a revocation set is held (a readiness check), at most `timeout`.
    pub async fn wait_revocations(
        &self,
        timeout: Duration,
    ) -> Result<RevocationStatus, VerifyError> {
        let mut rx = self.inner.revocations.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| s.set.is_some()))
            .await
            .map_err(|_| {
                VerifyError::RevocationsUnavailable(format!("no revocation set within {timeout:?}"))
            })?
            .map_err(|_| VerifyError::RevocationsUnavailable("the subscription ended".into()))?;
        Ok(self.revocation_status())
    }

    /// Verified tokens held in the cache.
    pub fn cached_tokens(&self) -> usize {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    fn check_revocation(&self, claims: &AccessClaims) -> Result<(), VerifyError> {
        let s = self.inner.revocations.borrow();
        match &s.set {
            Some(set) if set.revokes(claims) => {
                tracing::debug!(jti = %claims.jti, client_id = %claims.client_id, "refused a revoked token");
                Err(VerifyError::Revoked)
            }
            Some(_)
                if self.inner.follows_revocations
                    && self
                        .inner
                        .revocation_max_age
                        .is_some_and(|max| s.complete_as_of.is_none_or(|t| t.elapsed() > max)) =>
            {
                let max = self.inner.revocation_max_age.unwrap_or_default();
                Err(VerifyError::RevocationsUnavailable(match s.complete_as_of {
                    Some(t) => format!(
                        "the revocation view is {} ms old (at most {} ms): it may miss a revocation; the node followed is cut off or the stream stalled",
                        t.elapsed().as_millis(),
                        max.as_millis()
                    ),
                    None => "the node followed cannot tell how old its revocation view is (it has not heard from a leader with a quorum)".into(),
                }))
            }
            Some(_) => match (s.down_since, self.inner.revocation_grace) {
                (Some(since), Some(grace))
                    if self.inner.follows_revocations && since.elapsed() > grace =>
                {
                    Err(VerifyError::RevocationsUnavailable(format!(
                        "the revocation stream has been down for {} s",
                        since.elapsed().as_secs()
                    )))
                }
                _ => Ok(()),
            },
            None if self.inner.follows_revocations => Err(VerifyError::RevocationsUnavailable(
                "no revocation set received yet".into(),
            )),
            None => Ok(()),
        }
    }

    /// Signature, header and the claims that never change (issuer, audience); times too, so
    /// an expired token is not cached.
    async fn verify_signed(&self, token: &str, now: u64) -> Result<AccessClaims, VerifyError> {
        let jws = Jws::parse(token)?;
        let typ = jws.header.get("typ").and_then(Value::as_str).unwrap_or("");
        if !typ.eq_ignore_ascii_case("at+jwt") && !typ.eq_ignore_ascii_case("application/at+jwt") {
            return Err(VerifyError::Typ);
        }
        let alg = jws.header.get("alg").and_then(Value::as_str).unwrap_or("");
        let alg = match alg {
            "ES256" => Alg::Es256,
            "EdDSA" => Alg::EdDsa,
            other => return Err(VerifyError::Algorithm(other.chars().take(32).collect())),
        };
        if jws.header.contains_key("crit") {
            return Err(VerifyError::Malformed(
                "crit header parameters are not understood",
            ));
        }
        let kid = jws
            .header
            .get("kid")
            .and_then(Value::as_str)
            .ok_or(VerifyError::Malformed("no kid in the header"))?;
        let key = self.inner.keys.key(kid).await?;
        if key.alg != alg || !key.verify(jws.signing_input.as_bytes(), &jws.signature) {
            tracing::debug!(kid, "a token's signature did not verify");
            return Err(VerifyError::Signature);
        }
        let claims: AccessClaims = serde_json::from_slice(&jws.payload)
            .map_err(|_| VerifyError::Malformed("the claims lack iss, sub, aud, client_id, exp, iat or jti, or have the wrong types"))?;
        if authsec_domain::ClientId::parse(&claims.client_id).is_err() {
            return Err(VerifyError::Malformed("client_id is not a client id"));
        }
        if !self.inner.issuers.contains(&claims.iss) {
            return Err(VerifyError::Issuer(claims.iss.chars().take(128).collect()));
        }
        if !claims.aud.contains(&self.inner.audience) {
            return Err(VerifyError::Audience {
                expected: self.inner.audience.clone(),
            });
        }
        check_times(&claims, now, self.inner.leeway_s)?;
        Ok(claims)
    }
}

/// `exp` in the future, `nbf` and `iat` not, each with `leeway_s` of slack.
fn check_times(c: &AccessClaims, now: u64, leeway_s: u64) -> Result<(), VerifyError> {
    if c.exp.saturating_add(leeway_s) <= now {
        return Err(VerifyError::Expired);
    }
    if c.nbf.is_some_and(|n| n > now.saturating_add(leeway_s))
        || c.iat > now.saturating_add(leeway_s)
    {
        return Err(VerifyError::NotYetValid);
    }
    Ok(())
}

/// A compact JWS, parsed, not verified.
struct Jws {
    header: serde_json::Map<String, Value>,
    payload: Vec<u8>,
    signing_input: String,
    signature: Vec<u8>,
}

impl Jws {
    fn parse(token: &str) -> Result<Self, VerifyError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(VerifyError::Malformed("not a compact JWS (three parts)"));
        };
        let unb64 = |x: &str, what: &'static str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(x)
                .map_err(|_| VerifyError::Malformed(what))
        };
        let header = match serde_json::from_slice(&unb64(h, "the header is not base64url")?) {
            Ok(Value::Object(m)) => m,
            _ => return Err(VerifyError::Malformed("the header is not a JSON object")),
        };
        Ok(Self {
            header,
            payload: unb64(p, "the payload is not base64url")?,
            signing_input: format!("{h}.{p}"),
            signature: unb64(s, "the signature is not base64url")?,
        })
    }
}

fn unix_now_s() -> u64 {
    crate::token::unix_now_s()
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{
        EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
    };

    fn b64(b: &[u8]) -> String {
        crate::token::b64url(b)
    }

    fn claims(v: Value) -> AccessClaims {
        serde_json::from_value(v).expect("claims")
    }

    fn base_claims() -> Value {
        serde_json::json!({
            "iss": "https://authsec.test", "sub": "svc", "aud": "https://orders.example",
            "client_id": "svc", "iat": 1_000, "exp": 1_300, "jti": "j1",
            "scope": "orders:read orders:list", "authsec_index": 50,
        })
    }

    struct Es {
        key: EcdsaKeyPair,
    }

    impl Es {
        fn new() -> Self {
            let der = EcdsaKeyPair::generate_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &SystemRandom::new(),
            )
            .expect("key");
            Self {
                key: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.as_ref())
                    .expect("key"),
            }
        }

        fn jwk(&self, kid: &str) -> Value {
            let p = self.key.public_key().as_ref();
            serde_json::json!({"kty":"EC","crv":"P-256","kid":kid,"alg":"ES256","use":"sig","x":b64(&p[1..33]),"y":b64(&p[33..65])})
        }

        fn sign(&self, header: &Value, claims: &Value) -> String {
            let input = format!(
                "{}.{}",
                b64(header.to_string().as_bytes()),
                b64(claims.to_string().as_bytes())
            );
            let sig = self
                .key
                .sign(&SystemRandom::new(), input.as_bytes())
                .expect("sign");
            format!("{input}.{}", b64(sig.as_ref()))
        }
    }

    fn verifier(jwks: Value, revocations: bool) -> Verifier {
        let jwks = Jwks::parse(jwks.to_string().as_bytes()).expect("jwks");
        let mut cfg = VerifierConfig::new(
            "https://authsec.test/",
            "https://orders.example",
            KeySource::Static(jwks),
        );
        cfg.cache_entries_max = 4;
        let v = Verifier::new(cfg, None).expect("verifier");
        if revocations {
            v.set_revocations(&v1::RevocationSet::default());
        }
        v
    }

    fn now_claims() -> Value {
        let now = unix_now_s();
        let mut c = base_claims();
        c["iat"] = now.into();
        c["exp"] = (now + 300).into();
        c
    }

    #[test]
    fn scopes_are_checked_one_by_one() {
        let c = claims(base_claims());
        assert!(c.has_scope("orders:read"));
        assert!(!c.has_scope("orders"));
        assert_eq!(c.require_scopes(&["orders:read", "orders:list"]), Ok(()));
        assert_eq!(
            c.require_scopes(&["orders:read", "orders:write", "x:y"]),
            Err(VerifyError::InsufficientScope {
                missing: vec!["orders:write".into(), "x:y".into()]
            })
        );
        let e = c.require_scopes(&["orders:write"]).expect_err("missing");
        assert_eq!(e.code(), Some(BearerErrorCode::InsufficientScope));
        assert_eq!(e.status(), http::StatusCode::FORBIDDEN);
        assert_eq!(e.to_string(), "the token lacks the scope orders:write");
        let mut v = base_claims();
        v["scope"] = "".into();
        assert!(claims(v).require_scopes(&["a:b"]).is_err());
        assert_eq!(claims(base_claims()).require_scopes::<&str>(&[]), Ok(()));
    }

    #[test]
    fn a_bound_token_needs_its_certificate() {
        let der = b"certificate bytes";
        let t = CertThumbprint::from_der(der);
        let mut v = base_claims();
        v["cnf"] = serde_json::json!({"x5t#S256": t.to_base64url()});
        let bound = claims(v);
        assert_eq!(bound.bound_thumbprint(), Some(t.to_base64url().as_str()));
        assert_eq!(check_binding(&bound, Some(&t)), Ok(()));
        assert!(matches!(
            check_binding(&bound, None),
            Err(VerifyError::Binding(_))
        ));
        let other = CertThumbprint::from_der(b"another certificate");
        assert!(matches!(
            check_binding(&bound, Some(&other)),
            Err(VerifyError::Binding(_))
        ));
        // An unbound token is fine with or without a certificate.
        let free = claims(base_claims());
        assert_eq!(check_binding(&free, None), Ok(()));
        assert_eq!(check_binding(&free, Some(&other)), Ok(()));
        // The fingerprint PeerInfo carries is the same hash.
        let fp = format!("sha256:{}", hex::encode(sha2::Sha256::digest(der)));
        assert_eq!(CertThumbprint::from_fingerprint(&fp), Some(t));
        assert_eq!(CertThumbprint::from_fingerprint("sha1:00"), None);
        let mut v = base_claims();
        v["cnf"] = serde_json::json!({"x5t#S256": "bm90IDMyIGJ5dGVz"});
        assert!(check_binding(&claims(v), Some(&t)).is_err());
    }

    #[test]
    fn times_have_a_leeway() {
        let c = claims(base_claims()); // iat 1000, exp 1300
        assert_eq!(check_times(&c, 1_299, 0), Ok(()));
        assert_eq!(check_times(&c, 1_300, 0), Err(VerifyError::Expired));
        assert_eq!(check_times(&c, 1_309, 10), Ok(()));
        assert_eq!(check_times(&c, 1_310, 10), Err(VerifyError::Expired));
        assert_eq!(check_times(&c, 990, 10), Ok(()));
        assert_eq!(check_times(&c, 989, 10), Err(VerifyError::NotYetValid));
        let mut v = base_claims();
        v["nbf"] = 1_100.into();
        assert_eq!(
            check_times(&claims(v), 1_050, 10),
            Err(VerifyError::NotYetValid)
        );
    }

    #[test]
    fn revocation_is_decided_as_the_node_decides_it() {
        let set = |creds: &[&str], subjects: &[(&str, u64)]| {
            RevocationIndex::from_set(&v1::RevocationSet {
                applied_index: 100,
                credentials: creds
                    .iter()
                    .map(|c| v1::RevokedCredential {
                        id: (*c).into(),
                        expires_at_ms: u64::MAX,
                        revoked_at_index: 90,
                    })
                    .collect(),
                subjects: subjects
                    .iter()
                    .map(|(s, b)| v1::RevokedSubjectSet {
                        subject: (*s).into(),
                        below_index: *b,
                    })
                    .collect(),
                ..Default::default()
            })
        };
        let c = claims(base_claims()); // jti j1, client svc, index 50
        assert!(!set(&[], &[]).revokes(&c));
        assert!(set(&["j1"], &[]).revokes(&c));
        assert!(!set(&["j2"], &[]).revokes(&c));
        // By the client, below the index the token carries.
        assert!(set(&[], &[("client:svc", 51)]).revokes(&c));
        assert!(
            !set(&[], &[("client:svc", 50)]).revokes(&c),
            "issued at the revocation's index"
        );
        assert!(!set(&[], &[("client:other", 99)]).revokes(&c));
        // `sub` is not what is revoked: the client is.
        assert!(!set(&[], &[("svc", 99)]).revokes(&c));
        // A token without an index counts as index 0.
        let mut v = base_claims();
        v.as_object_mut().map(|o| o.remove("authsec_index"));
        assert!(set(&[], &[("client:svc", 1)]).revokes(&claims(v)));
        // A delegated token dies with its delegator too; a delegator key alone does not
        // count without a delegation (as on the node).
        let mut v = base_claims();
        v["authsec_delegation"] = "d1".into();
        v["authsec_delegator"] = "person:https://idp.example#alice".into();
        let delegated = claims(v.clone());
        assert!(set(&[], &[("person:https://idp.example#alice", 60)]).revokes(&delegated));
        assert!(!set(&[], &[("person:https://idp.example#alice", 50)]).revokes(&delegated));
        // ... and with its delegation, revoked at a later index.
        assert!(set(&[], &[("delegation:d1", 60)]).revokes(&delegated));
        assert!(!set(&[], &[("delegation:d2", 60)]).revokes(&delegated));
        v.as_object_mut().map(|o| o.remove("authsec_delegation"));
        assert!(!set(&[], &[("person:https://idp.example#alice", 60)]).revokes(&claims(v)));
    }

    #[test]
    fn an_older_set_never_unrevokes() {
        let mut newer = RevocationIndex {
            applied_index: 10,
            credentials: HashMap::from([("a".into(), u64::MAX)]),
            subjects: HashMap::from([("client:x".into(), 5)]),
        };
        let held = RevocationIndex {
            applied_index: 20,
            credentials: HashMap::from([("b".into(), u64::MAX), ("expired".into(), 1)]),
            subjects: HashMap::from([("client:x".into(), 15), ("client:y".into(), 3)]),
        };
        newer.keep_from(&held, 1_000);
        assert_eq!(newer.applied_index, 20);
        assert!(newer.credentials.contains_key("a") && newer.credentials.contains_key("b"));
        assert!(!newer.credentials.contains_key("expired"));
        assert_eq!(newer.subjects.get("client:x"), Some(&15));
        assert_eq!(newer.subjects.get("client:y"), Some(&3));
    }

    #[test]
    fn the_fetch_limiter_allows_one_fetch_per_interval() {
        let mut l = FetchLimiter {
            last: None,
            min: Duration::from_secs(5),
        };
        let t0 = Instant::now();
        assert!(l.allow(t0));
        assert!(!l.allow(t0 + Duration::from_millis(10)));
        assert!(!l.allow(t0 + Duration::from_millis(4_999)));
        assert!(l.allow(t0 + Duration::from_secs(5)));
        assert!(!l.allow(t0 + Duration::from_secs(6)));
    }

    #[test]
    fn jwks_keep_only_usable_signing_keys() {
        let es = Es::new();
        let ed = Ed25519KeyPair::from_pkcs8(
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .expect("key")
                .as_ref(),
        )
        .expect("key");
        let doc = serde_json::json!({"keys": [
            es.jwk("k-es"),
            {"kty":"OKP","crv":"Ed25519","kid":"k-ed","x": b64(ed.public_key().as_ref())},
            {"kty":"RSA","kid":"k-rsa","n":"AQAB","e":"AQAB"},
            {"kty":"EC","crv":"P-384","kid":"k-384","x":"AA","y":"AA"},
            {"kty":"OKP","crv":"Ed25519","x": b64(ed.public_key().as_ref())},
            {"kty":"OKP","crv":"Ed25519","kid":"k-enc","use":"enc","x": b64(ed.public_key().as_ref())},
            {"kty":"OKP","crv":"Ed25519","kid":"k-alg","alg":"ES256","x": b64(ed.public_key().as_ref())},
        ]});
        let j = Jwks::parse(doc.to_string().as_bytes()).expect("jwks");
        let mut kids: Vec<&str> = j.kids().collect();
        kids.sort();
        assert_eq!(kids, ["k-ed", "k-es"]);
        assert!(Jwks::parse(b"{}").is_err());
        assert!(Jwks::parse(b"[").is_err());
    }

    #[test]
    fn the_verified_cache_is_bounded() {
        let mut c = VerifiedCache::new(10);
        let cl = |exp: u64| {
            let mut v = base_claims();
            v["exp"] = exp.into();
            Arc::new(claims(v))
        };
        for i in 0..10u8 {
            c.insert([i; 32], cl(if i < 3 { 5 } else { 500 }), 100);
        }
        assert_eq!(c.len(), 10);
        // Full: the three expired go, then the oldest down to nine.
        c.insert([99; 32], cl(500), 100);
        assert!(c.len() <= 10, "{}", c.len());
        assert!(c.get(&[0; 32]).is_none() && c.get(&[99; 32]).is_some());
        for i in 100..200u8 {
            c.insert([i; 32], cl(500), 100);
        }
        assert!(c.len() <= 10);
        assert!(c.get(&[199; 32]).is_some());
    }

    #[tokio::test]
    async fn tokens_verify_with_their_key_and_are_refused_for_the_right_reason() {
        let es = Es::new();
        let v = verifier(serde_json::json!({"keys": [es.jwk("k1")]}), true);
        let header = serde_json::json!({"alg":"ES256","typ":"at+jwt","kid":"k1"});
        let good = es.sign(&header, &now_claims());
        let c = v.verify(&good, None).await.expect("verifies");
        assert_eq!(c.client_id, "svc");
        assert_eq!(c.aud, ["https://orders.example"]);
        assert_eq!(v.cached_tokens(), 1);
        // A hit still re-checks revocation.
        let again = v.verify(&good, None).await.expect("cached");
        assert!(Arc::ptr_eq(&c, &again));
        v.set_revocations(&v1::RevocationSet {
            applied_index: 2,
            credentials: vec![v1::RevokedCredential {
                id: "j1".into(),
                expires_at_ms: u64::MAX,
                revoked_at_index: 2,
            }],
            ..Default::default()
        });
        assert_eq!(v.verify(&good, None).await, Err(VerifyError::Revoked));
        v.set_revocations(&v1::RevocationSet {
            applied_index: 3,
            ..Default::default()
        });
        assert!(v.verify(&good, None).await.is_ok());

        let with = |f: &dyn Fn(&mut Value, &mut Value)| {
            let (mut h, mut c) = (header.clone(), now_claims());
            f(&mut h, &mut c);
            es.sign(&h, &c)
        };
        let cases: Vec<(String, VerifyError)> = vec![
            (with(&|_, c| c["aud"] = "https://billing.example".into()), VerifyError::Audience { expected: "https://orders.example".into() }),
            (with(&|_, c| c["iss"] = "https://evil.example".into()), VerifyError::Issuer("https://evil.example".into())),
            (with(&|_, c| c["exp"] = (unix_now_s() - 60).into()), VerifyError::Expired),
            (with(&|h, _| h["typ"] = "JWT".into()), VerifyError::Typ),
            (with(&|h, _| h["alg"] = "HS256".into()), VerifyError::Algorithm("HS256".into())),
            (with(&|h, _| h["alg"] = "EdDSA".into()), VerifyError::Signature),
            (with(&|h, _| h["kid"] = "k2".into()), VerifyError::UnknownKey { kid: "k2".into() }),
            (with(&|_, c| { c.as_object_mut().map(|o| o.remove("jti")); }), VerifyError::Malformed("the claims lack iss, sub, aud, client_id, exp, iat or jti, or have the wrong types")),
        ];
        for (token, want) in cases {
            let got = v.verify(&token, None).await;
            assert_eq!(got.as_ref().err(), Some(&want), "{want}");
            assert_eq!(want.code(), Some(BearerErrorCode::InvalidToken));
        }
        // A forged payload under a good signature.
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        let mut forged = now_claims();
        forged["scope"] = "orders:admin".into();
        parts[1] = b64(forged.to_string().as_bytes());
        assert_eq!(
            v.verify(&parts.join("."), None).await,
            Err(VerifyError::Signature)
        );
        assert!(matches!(
            v.verify("a.b", None).await,
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            v.verify(&"a".repeat(TOKEN_BYTES_MAX + 1), None).await,
            Err(VerifyError::Malformed(_))
        ));
        // Scopes beyond the configured ones.
        assert!(v.verify_scopes(&good, None, &["orders:read"]).await.is_ok());
        assert!(matches!(
            v.verify_scopes(&good, None, &["orders:write"]).await,
            Err(VerifyError::InsufficientScope { .. })
        ));
        // The cache stays bounded (4 in this verifier).
        for i in 0..10 {
            let t = with(&|_, c| c["jti"] = format!("x{i}").into());
            v.verify(&t, None).await.expect("verifies");
        }
        assert!(v.cached_tokens() <= 4);
    }

    #[tokio::test]
    async fn eddsa_tokens_verify() {
        let kp = Ed25519KeyPair::from_pkcs8(
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .expect("key")
                .as_ref(),
        )
        .expect("key");
        let jwk = serde_json::json!({"kty":"OKP","crv":"Ed25519","kid":"ed","alg":"EdDSA","x": b64(kp.public_key().as_ref())});
        let v = verifier(serde_json::json!({"keys":[jwk]}), true);
        let input = format!(
            "{}.{}",
            b64(serde_json::json!({"alg":"EdDSA","typ":"at+jwt","kid":"ed"})
                .to_string()
                .as_bytes()),
            b64(now_claims().to_string().as_bytes())
        );
        let token = format!("{input}.{}", b64(kp.sign(input.as_bytes()).as_ref()));
        assert!(v.verify(&token, None).await.is_ok());
        // ES256 claimed for an Ed25519 key: refused.
        let input = format!(
            "{}.{}",
            b64(serde_json::json!({"alg":"ES256","typ":"at+jwt","kid":"ed"})
                .to_string()
                .as_bytes()),
            b64(now_claims().to_string().as_bytes())
        );
        let token = format!("{input}.{}", b64(kp.sign(input.as_bytes()).as_ref()));
        assert_eq!(v.verify(&token, None).await, Err(VerifyError::Signature));
    }

    /// A verifier following a revocation source that never answers (nothing listens on port
    /// 1), and a token it would accept but for revocation.
    fn following_verifier() -> (Verifier, String) {
        let es = Es::new();
        let jwks = Jwks::parse(
            serde_json::json!({"keys": [es.jwk("k1")]})
                .to_string()
                .as_bytes(),
        )
        .expect("jwks");
        let never = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let v = Verifier::new(
            VerifierConfig::new(
                "https://authsec.test",
                "https://orders.example",
                KeySource::Static(jwks),
            ),
            Some(RevocationSource::new(vec![never]).expect("source")),
        )
        .expect("verifier");
        let good = es.sign(
            &serde_json::json!({"alg":"ES256","typ":"at+jwt","kid":"k1"}),
            &now_claims(),
        );
        (v, good)
    }

    #[tokio::test]
    async fn without_a_revocation_set_a_following_verifier_refuses() {
        let (v, good) = following_verifier();
        let e = v.verify(&good, None).await.expect_err("no set");
        assert!(matches!(e, VerifyError::RevocationsUnavailable(_)), "{e}");
        assert_eq!(e.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code(), None);
        // A set whose node cannot say how old its view is vouches for nothing.
        v.set_revocations(&v1::RevocationSet::default());
        let e = v.verify(&good, None).await.expect_err("age unknown");
        assert!(e.to_string().contains("cannot tell how old"), "{e}");
        v.set_revocations(&v1::RevocationSet {
            view_age_ms: Some(0),
            ..Default::default()
        });
        assert!(v.verify(&good, None).await.is_ok());
        assert_eq!(v.revocation_status().applied_index, Some(0));
    }

    #[tokio::test]
    async fn a_verifier_refuses_on_a_revocation_view_older_than_its_bound() {
        let (v, good) = following_verifier();
        let tx = v.inner.revocations.clone();
        // A set from a node whose view is 5 s old: a revocation acknowledged 1 s ago may be
        // missing from it, so no token passes.
        apply_set(
            &tx,
            &v1::RevocationSet {
                applied_index: 7,
                view_age_ms: Some(5_000),
                ..Default::default()
            },
        );
        let e = v.verify(&good, None).await.expect_err("stale view");
        assert!(matches!(e, VerifyError::RevocationsUnavailable(_)), "{e}");
        assert!(e.to_string().contains("ms old (at most 750 ms)"), "{e}");
        assert!(v.revocation_status().view_age >= Some(Duration::from_secs(5)));
        // A heartbeat from the same node, now current: the set held holds again.
        let beat = |ms: Option<u64>| v1::RevocationSet {
            applied_index: 7,
            view_age_ms: ms,
            heartbeat: true,
            ..Default::default()
        };
        apply_heartbeat(&tx, &beat(Some(20)));
        assert!(v.verify(&good, None).await.is_ok());
        // A heartbeat that cannot tell (the node lost its leader) or that reports an older
        // view never makes what is held look younger than it is, nor older.
        apply_heartbeat(&tx, &beat(None));
        apply_heartbeat(&tx, &beat(Some(60_000)));
        assert!(v.verify(&good, None).await.is_ok());
        assert!(v.revocation_status().view_age < Some(Duration::from_secs(1)));
        // A heartbeat revokes nothing and un-revokes nothing: the revoked token stays refused.
        apply_set(
            &tx,
            &v1::RevocationSet {
                applied_index: 8,
                view_age_ms: Some(0),
                credentials: vec![v1::RevokedCredential {
                    id: "j1".into(),
                    expires_at_ms: u64::MAX,
                    revoked_at_index: 8,
                }],
                ..Default::default()
            },
        );
        apply_heartbeat(&tx, &beat(Some(0)));
        assert_eq!(v.verify(&good, None).await, Err(VerifyError::Revoked));
    }
}

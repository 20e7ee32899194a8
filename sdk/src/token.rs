//! An OAuth 2.0 token client for workloads and agents: client credentials (RFC 6749 section
//! 4.4) and token exchange for delegated tokens (RFC 8693), authenticated by a client secret
//! (`client_secret_basic`), a signed assertion (`private_key_jwt`, RFC 7523) or the client
//! certificate (`tls_client_auth`, RFC 8705).
//!
//! Tokens are cached per request (grant, scopes, resources, audiences and, for an exchange, the
//! SHA-256 of the tokens exchanged) and refreshed before they expire, so a caller can ask for a
//! token before every call without reaching the authorization server each time. Concurrent
//! callers for the same request share one refresh: an authorization server limits failed
//! authentications per client, and a thundering herd of refreshes would look like an attack.
//!
//! The HTTPS plumbing here (one HTTP/1.1 exchange over tokio-rustls, bodies bounded) is shared
//! with [`crate::verify`], which fetches JWKS documents the same way.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use rustls::pki_types::ServerName;
use serde_json::Value;
use sha2::Digest;

/// `grant_type` of token exchange.
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 token type of an OAuth access token.
pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
/// RFC 8693 token type of a JWT (a JWT-SVID as an actor token).
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// RFC 7523 client assertion type.
pub const ASSERTION_JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The largest answer read from a token or JWKS endpoint; a larger one is an error, so a
/// misbehaving server cannot make a client buffer without bound.
pub const RESPONSE_BYTES_MAX: usize = 1 << 20;
/// A request's whole exchange (connect, TLS, request, answer) is bounded by this by default.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Cached tokens (distinct requests) kept by one client by default.
pub const CACHE_ENTRIES_MAX: usize = 1024;
/// Lifetime (`exp - iat`) of a `private_key_jwt` assertion: short, as each is used once.
const ASSERTION_LIFETIME_S: u64 = 60;
/// Refresh at most this long before expiry (see [`refresh_after`]).
const REFRESH_MARGIN: Duration = Duration::from_secs(30);
/// After a failed refresh while the cached token is still valid, serve it this long before
/// trying again, so an unreachable server is not asked on every call.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// A token answer without `expires_in` is cached this long at most.
const LIFETIME_UNKNOWN: Duration = Duration::from_secs(60);
/// The longest lifetime believed (a day); a server's larger value is capped.
const LIFETIME_MAX: Duration = Duration::from_secs(86_400);
/// Longest error description kept from an answer.
const DESCRIPTION_CHARS_MAX: usize = 512;

// ---------------------------------------------------------------------------------------------
// Secrets

/// A secret string (client secret, token): `Debug` prints `"..."` so it never reaches a log,
/// and equality takes the same time wherever the strings differ.
#[derive(Clone)]
pub struct Secret(String);

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(self.0.as_bytes(), other.0.as_bytes())
            .is_ok()
    }
}

impl Eq for Secret {}

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, to send.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"...\"")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// An OAuth error code from a token endpoint's JSON error body (RFC 6749 section 5.2, RFC
/// 8693, RFC 8707).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    InvalidTarget,
    TemporarilyUnavailable,
    ServerError,
    Other(String),
}

impl ErrorCode {
    pub fn parse(s: &str) -> Self {
        match s {
            "invalid_request" => Self::InvalidRequest,
            "invalid_client" => Self::InvalidClient,
            "invalid_grant" => Self::InvalidGrant,
            "unauthorized_client" => Self::UnauthorizedClient,
            "unsupported_grant_type" => Self::UnsupportedGrantType,
            "invalid_scope" => Self::InvalidScope,
            "invalid_target" => Self::InvalidTarget,
            "temporarily_unavailable" => Self::TemporarilyUnavailable,
            "server_error" => Self::ServerError,
            other => Self::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidTarget => "invalid_target",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::ServerError => "server_error",
            Self::Other(s) => s,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an HTTPS exchange failed before an answer could be read (shared with the JWKS fetch).
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("bad URL {url:?}: {reason}")]
    Url { url: String, reason: &'static str },
    #[error("connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("TLS with {addr}: {reason}")]
    Tls { addr: String, reason: String },
    #[error("HTTP exchange with {addr}: {reason}")]
    Http { addr: String, reason: String },
    #[error("the answer exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// What went wrong getting a token. The server's refusal ([`TokenError::Oauth`]) is apart
/// from not reaching it ([`TokenError::Transport`]): only the latter is worth retrying as is.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The token endpoint answered with an OAuth error body.
    #[error("the token endpoint refused ({status}): {code}{}", .description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Oauth {
        status: u16,
        code: ErrorCode,
        description: Option<String>,
    },
    /// An answer that is neither a token nor an OAuth error.
    #[error("unexpected answer from the token endpoint ({status}): {reason}")]
    Protocol { status: u16, reason: String },
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The client's own configuration (a key that cannot sign, a bad URL).
    #[error("token client configuration: {0}")]
    Config(String),
}

impl TokenError {
    /// The OAuth error code, when the server answered with one.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            Self::Oauth { code, .. } => Some(code),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTPS

/// An `https://` URL split into what a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpsUrl {
    pub url: String,
    pub host: String,
    pub port: u16,
    /// `host[:port]` as the `Host` header carries it.
    pub authority: String,
    /// Path and query (origin form).
    pub path: String,
}

impl HttpsUrl {
    pub(crate) fn parse(url: &str) -> Result<Self, TransportError> {
        let bad = |reason| TransportError::Url {
            url: url.to_owned(),
            reason,
        };
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| bad("not an https:// URL"))?;
        if url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("too long, or has spaces"));
        }
        let rest = rest.split('#').next().unwrap_or("");
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        if authority.contains('@') {
            return Err(bad("user information in the URL"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed IPv6 bracket"))?;
            match after.strip_prefix(':') {
                Some(p) => (h, p.parse().map_err(|_| bad("bad port"))?),
                None if after.is_empty() => (h, 443),
                None => return Err(bad("bad authority")),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().map_err(|_| bad("bad port"))?),
                None => (authority, 443),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Self {
            url: url.to_owned(),
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            path,
        })
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// A TLS config for HTTP/1.1: whatever ALPN the given config offered (a gRPC config offers
/// only `h2`) is replaced, since our endpoints speak HTTP/1.1.
pub(crate) fn http1_config(config: &rustls::ClientConfig) -> Arc<rustls::ClientConfig> {
    let mut c = config.clone();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// Open an HTTP/1.1 connection over TLS to `url`'s host (also its TLS server name).
pub(crate) async fn connect(
    url: &HttpsUrl,
    config: Arc<rustls::ClientConfig>,
) -> Result<SendRequest<Full<Bytes>>, TransportError> {
    let addr = url.addr();
    let tcp = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| TransportError::Connect {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(url.host.clone()).map_err(|_| TransportError::Url {
        url: url.url.clone(),
        reason: "the host is not a valid TLS server name",
    })?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| TransportError::Tls {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| TransportError::Http {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(addr = %addr, error = %e, "HTTPS connection ended with an error");
        }
    });
    Ok(send)
}

/// An answer, its body read in full (at most `limit` bytes).
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: http::StatusCode,
    pub body: Bytes,
}

/// Send `req` on `send` and read the whole answer, at most `limit` body bytes.
pub(crate) async fn exchange(
    send: &mut SendRequest<Full<Bytes>>,
    addr: &str,
    req: http::Request<Full<Bytes>>,
    limit: usize,
) -> Result<Answer, TransportError> {
    let http_err = |e: &dyn fmt::Display| TransportError::Http {
        addr: addr.to_owned(),
        reason: e.to_string(),
    };
    send.ready().await.map_err(|e| http_err(&e))?;
    let resp = send.send_request(req).await.map_err(|e| http_err(&e))?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                TransportError::TooLarge { limit }
            } else {
                http_err(&e)
            }
        })?
        .to_bytes();
    Ok(Answer {
        status: parts.status,
        body,
    })
}

/// One GET over a fresh connection (used for JWKS documents, fetched rarely).
pub(crate) async fn get(
    url: &HttpsUrl,
    config: Arc<rustls::ClientConfig>,
    limit: usize,
    timeout: Duration,
) -> Result<Answer, TransportError> {
    let work = async {
        let mut send = connect(url, config).await?;
        let req = http::Request::get(url.path.as_str())
            .header(http::header::HOST, url.authority.as_str())
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| TransportError::Http {
                addr: url.addr(),
                reason: e.to_string(),
            })?;
        exchange(&mut send, &url.addr(), req, limit).await
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| TransportError::Timeout(timeout))?
}

// ---------------------------------------------------------------------------------------------
// Client authentication

/// A P-256 key that signs `private_key_jwt` assertions (ES256). `Debug` never shows it.
pub struct AssertionKey {
    key: EcdsaKeyPair,
    kid: Option<String>,
}

impl fmt::Debug for AssertionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl AssertionKey {
    /// From a PKCS#8 v1 or v2 document (DER), as `openssl genpkey` or rcgen writes.
    pub fn from_pkcs8_der(der: &[u8], kid: Option<String>) -> Result<Self, TokenError> {
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|e| TokenError::Config(format!("not a P-256 PKCS#8 key: {e}")))?;
        Ok(Self { key, kid })
    }

    /// A fresh key (register its [`AssertionKey::public_jwk`] with the client).
    pub fn generate(kid: Option<String>) -> Result<Self, TokenError> {
        let der =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|e| TokenError::Config(format!("generating a key: {e}")))?;
        Self::from_pkcs8_der(der.as_ref(), kid)
    }

    /// The public key as a JWK (`kty` EC, `crv` P-256), with `kid` when it has one.
    pub fn public_jwk(&self) -> Value {
        let p = self.key.public_key().as_ref();
        let mut jwk = serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": b64url(p.get(1..33).unwrap_or_default()),
            "y": b64url(p.get(33..65).unwrap_or_default()),
        });
        if let (Some(kid), Some(o)) = (&self.kid, jwk.as_object_mut()) {
            o.insert("kid".into(), Value::String(kid.clone()));
        }
        jwk
    }

    /// A signed assertion (RFC 7523 section 3): `iss` and `sub` the client id, `aud` one
    /// string, a random `jti` (the server refuses a replay), and a short life.
    fn assertion(&self, client_id: &str, audience: &str, now_s: u64) -> Result<String, TokenError> {
        let mut header = serde_json::json!({ "alg": "ES256", "typ": "JWT" });
        if let (Some(kid), Some(o)) = (&self.kid, header.as_object_mut()) {
            o.insert("kid".into(), Value::String(kid.clone()));
        }
        let claims = serde_json::json!({
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "jti": random_hex(16),
            "iat": now_s,
            "exp": now_s + ASSERTION_LIFETIME_S,
        });
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .map_err(|e| TokenError::Config(format!("signing the client assertion: {e}")))?;
        Ok(format!("{input}.{}", b64url(sig.as_ref())))
    }
}

/// How the client proves who it is at the token endpoint.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// `client_secret_basic`: id and secret in the `Authorization` header.
    SecretBasic { client_id: String, secret: Secret },
    /// `private_key_jwt`: a fresh signed assertion per request. `audience` is what the
    /// server expects as `aud` (its issuer or its token endpoint URL); `None` sends the token
    /// endpoint URL this client was made with.
    PrivateKeyJwt {
        client_id: String,
        key: Arc<AssertionKey>,
        audience: Option<String>,
    },
    /// `tls_client_auth`: the TLS config presents the client certificate (an X.509-SVID);
    /// the body names the client.
    TlsClientAuth { client_id: String },
}

impl ClientAuth {
    pub fn secret_basic(client_id: impl Into<String>, secret: impl Into<Secret>) -> Self {
        Self::SecretBasic {
            client_id: client_id.into(),
            secret: secret.into(),
        }
    }

    pub fn private_key_jwt(client_id: impl Into<String>, key: AssertionKey) -> Self {
        Self::PrivateKeyJwt {
            client_id: client_id.into(),
            key: Arc::new(key),
            audience: None,
        }
    }

    /// `private_key_jwt` with an explicit assertion audience (the issuer's URL, say, when the
    /// token endpoint is reached at another address than the issuer names).
    pub fn private_key_jwt_for(
        client_id: impl Into<String>,
        key: AssertionKey,
        audience: impl Into<String>,
    ) -> Self {
        Self::PrivateKeyJwt {
            client_id: client_id.into(),
            key: Arc::new(key),
            audience: Some(audience.into()),
        }
    }

    pub fn tls_client_auth(client_id: impl Into<String>) -> Self {
        Self::TlsClientAuth {
            client_id: client_id.into(),
        }
    }

    pub fn client_id(&self) -> &str {
        match self {
            Self::SecretBasic { client_id, .. }
            | Self::PrivateKeyJwt { client_id, .. }
            | Self::TlsClientAuth { client_id } => client_id,
        }
    }

    pub fn method(&self) -> &'static str {
        match self {
            Self::SecretBasic { .. } => "client_secret_basic",
            Self::PrivateKeyJwt { .. } => "private_key_jwt",
            Self::TlsClientAuth { .. } => "tls_client_auth",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requests and tokens

#[derive(Clone, PartialEq, Eq)]
enum Grant {
    ClientCredentials,
    Exchange {
        subject_token: Secret,
        subject_token_type: String,
        actor: Option<(Secret, String)>,
    },
}

/// What to ask the token endpoint for. Scopes, resources and audiences are sets: their order
/// does not change the cache key.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenRequest {
    grant: Grant,
    scopes: Vec<String>,
    resources: Vec<String>,
    audiences: Vec<String>,
}

impl fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the tokens an exchange carries.
        f.debug_struct("TokenRequest")
            .field("grant", &self.grant_type())
            .field("scopes", &self.scopes)
            .field("resources", &self.resources)
            .field("audiences", &self.audiences)
            .finish()
    }
}

impl TokenRequest {
    /// The client's own token (RFC 6749 section 4.4).
    pub fn client_credentials() -> Self {
        Self {
            grant: Grant::ClientCredentials,
            scopes: Vec::new(),
            resources: Vec::new(),
            audiences: Vec::new(),
        }
    }

    /// A delegated token (RFC 8693): `subject_token` is an access token of whoever delegates.
    pub fn token_exchange(subject_token: impl Into<Secret>) -> Self {
        Self {
            grant: Grant::Exchange {
                subject_token: subject_token.into(),
                subject_token_type: TOKEN_TYPE_ACCESS.to_owned(),
                actor: None,
            },
            ..Self::client_credentials()
        }
    }

    /// The subject token's type (default: an access token). No effect on client credentials.
    pub fn subject_token_type(mut self, t: impl Into<String>) -> Self {
        if let Grant::Exchange {
            subject_token_type, ..
        } = &mut self.grant
        {
            *subject_token_type = t.into();
        }
        self
    }

    /// An actor token (the acting agent's access token or JWT-SVID) and its type. No effect on
    /// client credentials.
    pub fn actor_token(mut self, token: impl Into<Secret>, token_type: impl Into<String>) -> Self {
        if let Grant::Exchange { actor, .. } = &mut self.grant {
            *actor = Some((token.into(), token_type.into()));
        }
        self
    }

    /// Ask for these scopes (space separated or one at a time; repeated calls add).
    pub fn scope(mut self, scope: &str) -> Self {
        for s in scope.split(' ').filter(|s| !s.is_empty()) {
            if !self.scopes.iter().any(|x| x == s) {
                self.scopes.push(s.to_owned());
            }
        }
        self.scopes.sort();
        self
    }

    /// A resource the token is for (RFC 8707): it becomes the token's `aud`.
    pub fn resource(mut self, uri: impl Into<String>) -> Self {
        push_sorted(&mut self.resources, uri.into());
        self
    }

    /// A logical audience (RFC 8693 `audience`).
    pub fn audience(mut self, name: impl Into<String>) -> Self {
        push_sorted(&mut self.audiences, name.into());
        self
    }

    pub fn grant_type(&self) -> &'static str {
        match self.grant {
            Grant::ClientCredentials => "client_credentials",
            Grant::Exchange { .. } => GRANT_TOKEN_EXCHANGE,
        }
    }

    /// The cache key: SHA-256 over the canonical request, so the tokens of an exchange are
    /// not kept as keys.
    fn cache_key(&self, client_id: &str) -> [u8; 32] {
        let mut h = sha2::Sha256::new();
        let mut field = |name: &str, value: &str| {
            h.update((name.len() as u64).to_be_bytes());
            h.update(name.as_bytes());
            h.update((value.len() as u64).to_be_bytes());
            h.update(value.as_bytes());
        };
        field("client_id", client_id);
        field("grant_type", self.grant_type());
        for s in &self.scopes {
            field("scope", s);
        }
        for r in &self.resources {
            field("resource", r);
        }
        for a in &self.audiences {
            field("audience", a);
        }
        if let Grant::Exchange {
            subject_token,
            subject_token_type,
            actor,
        } = &self.grant
        {
            field("subject_token", subject_token.expose());
            field("subject_token_type", subject_token_type);
            if let Some((t, ty)) = actor {
                field("actor_token", t.expose());
                field("actor_token_type", ty);
            }
        }
        h.finalize().into()
    }

    /// The form parameters of the request (without client authentication).
    fn params(&self) -> Vec<(&'static str, String)> {
        let mut p = vec![("grant_type", self.grant_type().to_owned())];
        if !self.scopes.is_empty() {
            p.push(("scope", self.scopes.join(" ")));
        }
        p.extend(self.resources.iter().map(|r| ("resource", r.clone())));
        p.extend(self.audiences.iter().map(|a| ("audience", a.clone())));
        if let Grant::Exchange {
            subject_token,
            subject_token_type,
            actor,
        } = &self.grant
        {
            p.push(("subject_token", subject_token.expose().to_owned()));
            p.push(("subject_token_type", subject_token_type.clone()));
            if let Some((t, ty)) = actor {
                p.push(("actor_token", t.expose().to_owned()));
                p.push(("actor_token_type", ty.clone()));
            }
        }
        p
    }
}

fn push_sorted(v: &mut Vec<String>, s: String) {
    if !v.contains(&s) {
        v.push(s);
        v.sort();
    }
}

/// An access token from the token endpoint. `Debug` never shows the token.
#[derive(Clone)]
pub struct AccessToken {
    token: Secret,
    /// `token_type` as answered (`Bearer`).
    pub token_type: String,
    /// The scope granted, when the server said (it does when it differs from the request).
    pub scope: Option<String>,
    /// RFC 8693 `issued_token_type` of an exchange.
    pub issued_token_type: Option<String>,
    /// When the token expires, by the wall clock (from `expires_in`, counted from the request).
    pub expires_at: SystemTime,
    expires: Instant,
    refresh_at: Instant,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &self.token)
            .field("token_type", &self.token_type)
            .field("scope", &self.scope)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl AccessToken {
    /// The token, to send.
    pub fn secret(&self) -> &str {
        self.token.expose()
    }

    /// The `Authorization` header value: `Bearer <token>`.
    pub fn authorization(&self) -> String {
        format!("Bearer {}", self.token.expose())
    }

    /// Whether it is still valid by the monotonic clock.
    pub fn is_valid(&self) -> bool {
        Instant::now() < self.expires
    }

    /// Parse a token endpoint's success answer; `sent` is when the request left (lifetimes
    /// count from then, erring early).
    fn parse(body: &[u8], sent: Instant, sent_wall: SystemTime) -> Result<Self, String> {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
        let token = v
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or("the answer has no access_token")?;
        let token_type = v
            .get("token_type")
            .and_then(Value::as_str)
            .ok_or("the answer has no token_type")?;
        // RFC 8693 section 2.2.1: N_A for tokens that are not access tokens.
        if !token_type.eq_ignore_ascii_case("bearer") && token_type != "N_A" {
            return Err(format!(
                "token_type {token_type:?} is not supported (only Bearer)"
            ));
        }
        let lifetime = match v.get("expires_in") {
            None | Some(Value::Null) => LIFETIME_UNKNOWN,
            Some(e) => Duration::from_secs(
                e.as_u64()
                    .or_else(|| e.as_str().and_then(|s| s.parse().ok()))
                    .ok_or("expires_in is not a number of seconds")?,
            ),
        }
        .min(LIFETIME_MAX);
        let str_field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok(Self {
            token: Secret::new(token),
            token_type: token_type.to_owned(),
            scope: str_field("scope"),
            issued_token_type: str_field("issued_token_type"),
            expires_at: sent_wall + lifetime,
            expires: sent + lifetime,
            refresh_at: sent + refresh_after(lifetime),
        })
    }
}

/// How long after issuance a token of `lifetime` is refreshed: at 80 % of its life or
/// [`REFRESH_MARGIN`] before it expires, whichever is earlier, but never before half its life
/// (a 20 s token would otherwise be refreshed on every call).
pub fn refresh_after(lifetime: Duration) -> Duration {
    let at_80 = lifetime * 4 / 5;
    let before_exp = lifetime.saturating_sub(REFRESH_MARGIN);
    at_80.min(before_exp).max(lifetime / 2)
}

// ---------------------------------------------------------------------------------------------
// The client

/// One cached request: the current token, and a lock held by whoever refreshes it.
#[derive(Debug, Default)]
struct Slot {
    current: Mutex<Option<AccessToken>>,
    /// Held while one caller refreshes; the value is when a failed refresh may be retried.
    refresh: tokio::sync::Mutex<Option<Instant>>,
}

impl Slot {
    fn current(&self) -> Option<AccessToken> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, t: AccessToken) {
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(t);
    }

    fn clear(&self) {
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

/// Builds a [`TokenClient`].
#[derive(Debug)]
pub struct TokenClientBuilder {
    endpoint: String,
    tls: Arc<rustls::ClientConfig>,
    auth: ClientAuth,
    timeout: Duration,
    cache_entries_max: usize,
}

impl TokenClientBuilder {
    /// The bound on one exchange with the token endpoint (default [`REQUEST_TIMEOUT`]).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Distinct requests whose tokens are cached (default [`CACHE_ENTRIES_MAX`]).
    pub fn cache_entries_max(mut self, n: usize) -> Self {
        self.cache_entries_max = n.max(1);
        self
    }

    pub fn build(self) -> Result<TokenClient, TokenError> {
        let url = HttpsUrl::parse(&self.endpoint)?;
        Ok(TokenClient {
            inner: Arc::new(Inner {
                tls: http1_config(&self.tls),
                url,
                auth: self.auth,
                timeout: self.timeout,
                cache_entries_max: self.cache_entries_max,
                cache: Mutex::new(HashMap::new()),
                idle: Mutex::new(None),
            }),
        })
    }
}

struct Inner {
    url: HttpsUrl,
    tls: Arc<rustls::ClientConfig>,
    auth: ClientAuth,
    timeout: Duration,
    cache_entries_max: usize,
    cache: Mutex<HashMap<[u8; 32], Arc<Slot>>>,
    /// One idle keep-alive connection, reused by the next request.
    idle: Mutex<Option<SendRequest<Full<Bytes>>>>,
}

/// An OAuth 2.0 token client for one token endpoint and one client identity. Cheap to clone
/// (clones share the cache and the connection).
#[derive(Clone)]
pub struct TokenClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenClient")
            .field("token_endpoint", &self.inner.url.url)
            .field("client_id", &self.inner.auth.client_id())
            .field("method", &self.inner.auth.method())
            .finish_non_exhaustive()
    }
}

impl TokenClient {
    /// A client of the token endpoint at `token_endpoint` (`https://...`), trusting the
    /// servers `tls` trusts (and presenting its client certificate, for `tls_client_auth`).
    pub fn builder(
        token_endpoint: impl Into<String>,
        tls: Arc<rustls::ClientConfig>,
        auth: ClientAuth,
    ) -> TokenClientBuilder {
        TokenClientBuilder {
            endpoint: token_endpoint.into(),
            tls,
            auth,
            timeout: REQUEST_TIMEOUT,
            cache_entries_max: CACHE_ENTRIES_MAX,
        }
    }

    /// [`TokenClient::builder`] with the defaults.
    pub fn new(
        token_endpoint: impl Into<String>,
        tls: Arc<rustls::ClientConfig>,
        auth: ClientAuth,
    ) -> Result<Self, TokenError> {
        Self::builder(token_endpoint, tls, auth).build()
    }

    pub fn client_id(&self) -> &str {
        self.inner.auth.client_id()
    }

    /// A token for `req`: the cached one while it is fresh, else a new one. Callers asking for
    /// the same request while it is refreshed share that refresh; while a cached token is
    /// still valid, a failed refresh serves it (and is retried a second later).
    pub async fn token(&self, req: &TokenRequest) -> Result<AccessToken, TokenError> {
        let slot = self.slot(req.cache_key(self.client_id()));
        if let Some(t) = slot.current() {
            if Instant::now() < t.refresh_at {
                return Ok(t);
            }
        }
        let mut retry_at = match slot.refresh.try_lock() {
            Ok(g) => g,
            Err(_) => {
                // Someone is refreshing: a still valid token need not wait for them.
                if let Some(t) = slot.current().filter(AccessToken::is_valid) {
                    return Ok(t);
                }
                slot.refresh.lock().await
            }
        };
        let now = Instant::now();
        let current = slot.current();
        if let Some(t) = &current {
            if now < t.refresh_at {
                return Ok(t.clone()); // refreshed while we waited
            }
            if t.is_valid() && retry_at.is_some_and(|r| now < r) {
                return Ok(t.clone());
            }
        }
        match self.fetch(req).await {
            Ok(t) => {
                slot.set(t.clone());
                *retry_at = None;
                Ok(t)
            }
            Err(e) => match current.filter(AccessToken::is_valid) {
                Some(t) => {
                    tracing::warn!(client_id = %self.client_id(), grant_type = req.grant_type(), error = %e, "refreshing a token failed; the cached one is still valid");
                    *retry_at = Some(Instant::now() + RETRY_AFTER_FAILURE);
                    Ok(t)
                }
                None => Err(e),
            },
        }
    }

    /// Forget the cached token for `req` (a resource server refused it, say): the next
    /// [`TokenClient::token`] fetches a new one.
    pub fn invalidate(&self, req: &TokenRequest) {
        let key = req.cache_key(self.client_id());
        let slot = self
            .inner
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .cloned();
        if let Some(s) = slot {
            s.clear();
        }
    }

    /// Fetch a new token for `req`, bypassing the cache.
    pub async fn fetch(&self, req: &TokenRequest) -> Result<AccessToken, TokenError> {
        let started = Instant::now();
        let sent_wall = SystemTime::now();
        let timeout = self.inner.timeout;
        let answer = tokio::time::timeout(timeout, self.send(req))
            .await
            .map_err(|_| TransportError::Timeout(timeout))??;
        let result = if answer.status == http::StatusCode::OK {
            AccessToken::parse(&answer.body, started, sent_wall).map_err(|reason| {
                TokenError::Protocol {
                    status: answer.status.as_u16(),
                    reason,
                }
            })
        } else {
            Err(oauth_error(answer.status.as_u16(), &answer.body))
        };
        match &result {
            Ok(t) => {
                tracing::debug!(client_id = %self.client_id(), grant_type = req.grant_type(), expires_in_s = t.expires.saturating_duration_since(started).as_secs(), elapsed_ms = started.elapsed().as_millis() as u64, "got a token")
            }
            Err(e) => {
                tracing::info!(client_id = %self.client_id(), grant_type = req.grant_type(), error = %e, "the token request failed")
            }
        }
        result
    }

    fn slot(&self, key: [u8; 32]) -> Arc<Slot> {
        let mut cache = self
            .inner
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = cache.get(&key) {
            return s.clone();
        }
        if cache.len() >= self.inner.cache_entries_max {
            // Keep what is valid or in use; then, if still full, drop anything not in use.
            cache.retain(|_, s| {
                Arc::strong_count(s) > 1 || s.current().is_some_and(|t| t.is_valid())
            });
            if cache.len() >= self.inner.cache_entries_max {
                let victim = cache
                    .iter()
                    .find(|(_, s)| Arc::strong_count(s) == 1)
                    .map(|(k, _)| *k);
                if let Some(k) = victim {
                    cache.remove(&k);
                }
            }
        }
        cache.entry(key).or_default().clone()
    }

    fn http_request(&self, req: &TokenRequest) -> Result<http::Request<Full<Bytes>>, TokenError> {
        let inner = &self.inner;
        let mut params = req.params();
        let mut builder = http::Request::post(inner.url.path.as_str())
            .header(http::header::HOST, inner.url.authority.as_str())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json");
        match &inner.auth {
            ClientAuth::SecretBasic { client_id, secret } => {
                builder = builder.header(
                    http::header::AUTHORIZATION,
                    basic_authorization(client_id, secret.expose()),
                );
            }
            ClientAuth::PrivateKeyJwt {
                client_id,
                key,
                audience,
            } => {
                let aud = audience.as_deref().unwrap_or(&inner.url.url);
                params.push(("client_id", client_id.clone()));
                params.push(("client_assertion_type", ASSERTION_JWT_BEARER.to_owned()));
                params.push((
                    "client_assertion",
                    key.assertion(client_id, aud, unix_now_s())?,
                ));
            }
            ClientAuth::TlsClientAuth { client_id } => {
                params.push(("client_id", client_id.clone()));
            }
        }
        let mut form = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &params {
            form.append_pair(k, v);
        }
        builder
            .body(Full::new(Bytes::from(form.finish())))
            .map_err(|e| TokenError::Config(format!("building the request: {e}")))
    }

    /// Send over the idle connection if there is one, else a new one; keep the connection for
    /// the next request when the server kept it open. A kept connection the server closed
    /// meanwhile (servers end idle keep-alive connections) fails before an answer: the
    /// request is then built again (a fresh assertion: the first one's `jti` may have been
    /// seen) and sent on a new connection.
    async fn send(&self, req: &TokenRequest) -> Result<Answer, TokenError> {
        let inner = &self.inner;
        let addr = inner.url.addr();
        let idle = inner
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .filter(|s| !s.is_closed() && s.is_ready());
        if let Some(mut send) = idle {
            match exchange(
                &mut send,
                &addr,
                self.http_request(req)?,
                RESPONSE_BYTES_MAX,
            )
            .await
            {
                Ok(answer) => {
                    self.keep(send);
                    return Ok(answer);
                }
                Err(TransportError::Http { reason, .. }) => {
                    tracing::debug!(addr = %addr, error = %reason, "the kept connection failed; sending on a new one");
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut send = connect(&inner.url, inner.tls.clone()).await?;
        let answer = exchange(
            &mut send,
            &addr,
            self.http_request(req)?,
            RESPONSE_BYTES_MAX,
        )
        .await?;
        self.keep(send);
        Ok(answer)
    }

    fn keep(&self, send: SendRequest<Full<Bytes>>) {
        if !send.is_closed() {
            *self
                .inner
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(send);
        }
    }
}

/// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 section 2.3.1).
fn basic_authorization(id: &str, secret: &str) -> String {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
    )
}

/// The error of a non-200 answer: the OAuth error body if it has one.
fn oauth_error(status: u16, body: &[u8]) -> TokenError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    match parsed
        .as_ref()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(|c| (v, c)))
    {
        Some((v, code)) => TokenError::Oauth {
            status,
            code: ErrorCode::parse(code),
            description: v
                .get("error_description")
                .and_then(Value::as_str)
                .map(|d| d.chars().take(DESCRIPTION_CHARS_MAX).collect()),
        },
        None => TokenError::Protocol {
            status,
            reason: format!(
                "no OAuth error body: {:?}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
        },
    }
}

pub(crate) fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    hex::encode(b)
}

pub(crate) fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_comes_at_80_percent_or_30_s_before_expiry_whichever_is_earlier() {
        let s = Duration::from_secs;
        // 300 s: 80 % is 240 s, 30 s before is 270 s.
        assert_eq!(refresh_after(s(300)), s(240));
        // 3600 s: 80 % is 2880 s; 30 s before is 3570 s.
        assert_eq!(refresh_after(s(3600)), s(2880));
        // 100 s: 80 s vs 70 s.
        assert_eq!(refresh_after(s(100)), s(70));
        // 60 s: 48 s vs 30 s; half its life is 30 s.
        assert_eq!(refresh_after(s(60)), s(30));
        // Short tokens: never before half their life.
        assert_eq!(refresh_after(s(20)), s(10));
        assert_eq!(refresh_after(s(0)), s(0));
    }

    #[test]
    fn a_success_answer_parses_and_counts_from_the_request() {
        let sent = Instant::now();
        let wall = SystemTime::now();
        let t = AccessToken::parse(
            br#"{"access_token":"eyJ.x.y","token_type":"Bearer","expires_in":300,"scope":"a:b c:d"}"#,
            sent,
            wall,
        )
        .expect("parse");
        assert_eq!(t.secret(), "eyJ.x.y");
        assert_eq!(t.authorization(), "Bearer eyJ.x.y");
        assert_eq!(t.scope.as_deref(), Some("a:b c:d"));
        assert_eq!(t.expires, sent + Duration::from_secs(300));
        assert_eq!(t.refresh_at, sent + Duration::from_secs(240));
        assert_eq!(t.expires_at, wall + Duration::from_secs(300));
        assert!(!format!("{t:?}").contains("eyJ"), "Debug shows the token");
        // No expires_in: cached a minute at most; an absurd one is capped.
        let t = AccessToken::parse(br#"{"access_token":"t","token_type":"bearer"}"#, sent, wall)
            .expect("parse");
        assert_eq!(t.expires, sent + LIFETIME_UNKNOWN);
        let t = AccessToken::parse(
            br#"{"access_token":"t","token_type":"Bearer","expires_in":99999999}"#,
            sent,
            wall,
        )
        .expect("parse");
        assert_eq!(t.expires, sent + LIFETIME_MAX);
        for bad in [
            &b"not json"[..],
            br#"{"token_type":"Bearer"}"#,
            br#"{"access_token":"t"}"#,
            br#"{"access_token":"t","token_type":"DPoP"}"#,
            br#"{"access_token":"t","token_type":"Bearer","expires_in":-5}"#,
        ] {
            assert!(AccessToken::parse(bad, sent, wall).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn error_answers_are_typed() {
        let e = oauth_error(
            400,
            br#"{"error":"invalid_scope","error_description":"orders:write is not allowed"}"#,
        );
        assert_eq!(e.code(), Some(&ErrorCode::InvalidScope));
        assert_eq!(
            e.to_string(),
            "the token endpoint refused (400): invalid_scope: orders:write is not allowed"
        );
        let e = oauth_error(401, br#"{"error":"invalid_client"}"#);
        assert!(matches!(
            e,
            TokenError::Oauth {
                status: 401,
                code: ErrorCode::InvalidClient,
                description: None
            }
        ));
        let e = oauth_error(418, br#"{"error":"made_up"}"#);
        assert_eq!(e.code(), Some(&ErrorCode::Other("made_up".into())));
        let e = oauth_error(502, b"<html>bad gateway</html>");
        assert!(matches!(e, TokenError::Protocol { status: 502, .. }), "{e}");
    }

    #[test]
    fn basic_credentials_are_form_encoded_before_base64() {
        let h = basic_authorization("svc a", "s:e/c+r%t");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(h.strip_prefix("Basic ").expect("Basic"))
            .expect("base64");
        assert_eq!(
            String::from_utf8(raw).expect("utf8"),
            "svc+a:s%3Ae%2Fc%2Br%25t"
        );
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let auth = ClientAuth::secret_basic("svc", "as_cs_hunter2");
        assert!(!format!("{auth:?}").contains("hunter2"));
        let req = TokenRequest::token_exchange("eyJsubject")
            .actor_token("eyJactor", TOKEN_TYPE_JWT)
            .scope("a:b");
        let shown = format!("{req:?}");
        assert!(!shown.contains("eyJ"), "{shown}");
        let key = AssertionKey::generate(Some("k1".into())).expect("key");
        assert!(format!("{key:?}").contains("k1"));
    }

    #[test]
    fn cache_keys_ignore_order_and_separate_what_differs() {
        let a = TokenRequest::client_credentials()
            .scope("b:x a:y")
            .resource("https://r2")
            .resource("https://r1");
        let b = TokenRequest::client_credentials()
            .scope("a:y")
            .scope("b:x")
            .resource("https://r1")
            .resource("https://r2");
        assert_eq!(a.cache_key("svc"), b.cache_key("svc"));
        assert_ne!(a.cache_key("svc"), a.cache_key("other"));
        assert_ne!(a.cache_key("svc"), a.clone().scope("c:z").cache_key("svc"));
        let x = TokenRequest::token_exchange("t1");
        let y = TokenRequest::token_exchange("t2");
        assert_ne!(x.cache_key("svc"), y.cache_key("svc"));
        assert_ne!(
            TokenRequest::client_credentials().cache_key("svc"),
            x.cache_key("svc")
        );
        // Exchange parameters as the node expects them.
        let p = TokenRequest::token_exchange("subj")
            .actor_token("act", TOKEN_TYPE_JWT)
            .scope("a:b")
            .resource("https://r")
            .params();
        let get = |k: &str| p.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("grant_type"), Some(GRANT_TOKEN_EXCHANGE));
        assert_eq!(get("subject_token"), Some("subj"));
        assert_eq!(get("subject_token_type"), Some(TOKEN_TYPE_ACCESS));
        assert_eq!(get("actor_token_type"), Some(TOKEN_TYPE_JWT));
        assert_eq!(get("resource"), Some("https://r"));
        assert_eq!(get("scope"), Some("a:b"));
    }

    #[test]
    fn assertions_carry_what_the_node_checks() {
        let key = AssertionKey::generate(Some("k1".into())).expect("key");
        let a = key
            .assertion("svc", "https://issuer.example/oauth2/token", 1_000)
            .expect("sign");
        let parts: Vec<&str> = a.split('.').collect();
        assert_eq!(parts.len(), 3);
        let json = |p: &str| -> Value {
            serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .expect("b64"),
            )
            .expect("json")
        };
        let (h, c) = (json(parts[0]), json(parts[1]));
        assert_eq!(h["alg"], "ES256");
        assert_eq!(h["kid"], "k1");
        assert_eq!(c["iss"], "svc");
        assert_eq!(c["sub"], "svc");
        assert_eq!(c["aud"], "https://issuer.example/oauth2/token");
        assert_eq!(c["exp"].as_u64(), Some(1_000 + ASSERTION_LIFETIME_S));
        assert_eq!(c["jti"].as_str().map(str::len), Some(32));
        // The signature verifies with the published JWK.
        let jwk = key.public_jwk();
        let unb = |k: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(jwk[k].as_str().expect("member"))
                .expect("b64")
        };
        let mut point = vec![4];
        point.extend(unb("x"));
        point.extend(unb("y"));
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[2])
            .expect("b64");
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            &point,
        )
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .expect("verifies");
        // A fresh jti every time.
        let b = key.assertion("svc", "x", 1_000).expect("sign");
        assert_ne!(
            json(a.split('.').nth(1).unwrap_or("")),
            json(b.split('.').nth(1).unwrap_or(""))
        );
    }

    #[tokio::test]
    async fn a_failed_refresh_serves_the_still_valid_token_and_waits_before_retrying() {
        // Nothing listens on the port: every fetch fails at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port");
        let tls = rustls::ClientConfig::builder_with_provider(authsec_tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let client = TokenClient::new(
            format!("https://{closed}/oauth2/token"),
            Arc::new(tls),
            ClientAuth::secret_basic("svc", "s"),
        )
        .expect("client");
        let req = TokenRequest::client_credentials();
        assert!(matches!(
            client.token(&req).await,
            Err(TokenError::Transport(TransportError::Connect { .. }))
        ));
        // A token due for refresh but still valid.
        let now = Instant::now();
        let slot = client.slot(req.cache_key(client.client_id()));
        slot.set(AccessToken {
            token: Secret::new("held"),
            token_type: "Bearer".into(),
            scope: None,
            issued_token_type: None,
            expires_at: SystemTime::now() + Duration::from_secs(60),
            expires: now + Duration::from_secs(60),
            refresh_at: now,
        });
        assert_eq!(client.token(&req).await.expect("held").secret(), "held");
        let retry_at = *slot.refresh.lock().await;
        assert!(retry_at.is_some_and(|r| r > now), "a retry is scheduled");
        // Within the retry delay no fetch is tried: the held token comes back at once.
        assert_eq!(client.token(&req).await.expect("held").secret(), "held");
        // Once it has expired, the failure is the caller's.
        slot.set(AccessToken {
            expires: now,
            refresh_at: now,
            ..slot.current().expect("held")
        });
        *slot.refresh.lock().await = None;
        assert!(client.token(&req).await.is_err());
    }

    #[test]
    fn urls_split() {
        let u = HttpsUrl::parse("https://127.0.0.1:7443/oauth2/token").expect("url");
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 7443, "/oauth2/token")
        );
        assert_eq!(u.authority, "127.0.0.1:7443");
        let u = HttpsUrl::parse("https://a.example").expect("url");
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("a.example", 443, "/")
        );
        let u = HttpsUrl::parse("https://[::1]:8443/x?y=1#frag").expect("url");
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 8443, "/x?y=1")
        );
        let u = HttpsUrl::parse("https://a.example?x=1").expect("url");
        assert_eq!(u.path, "/?x=1");
        for bad in [
            "http://a.example/",
            "https://",
            "https://:80/",
            "https://a.example:x/",
            "https://u:p@a.example/",
            "https://a b/",
        ] {
            assert!(HttpsUrl::parse(bad).is_err(), "{bad}");
        }
    }
}

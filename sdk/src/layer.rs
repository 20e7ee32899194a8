//! A tower layer that makes a service an OAuth 2.0 protected resource: it takes the bearer
//! token of each request (`Authorization: Bearer`, RFC 6750 section 2.1, the only method
//! offered), verifies it with a [`Verifier`], requires the configured scopes, and hands the
//! verified claims to the service as a request extension (`Arc<AccessClaims>`).
//!
//! Refusals follow RFC 6750 section 3 and RFC 9728 section 5.1: 401 with
//! `WWW-Authenticate: Bearer resource_metadata="<url>"` (plus `error` and `error_description`
//! once a token was presented), 403 `insufficient_scope` naming the scope needed, 400
//! `invalid_request` for a malformed header. A gRPC request (content type `application/grpc`)
//! gets the gRPC form instead, `grpc-status` UNAUTHENTICATED or PERMISSION_DENIED with the same
//! `WWW-Authenticate`, so tonic clients see a status rather than a transport error.
//!
//! The layer also answers RFC 9728 protected-resource metadata at
//! `/.well-known/oauth-protected-resource` (and at that path followed by the resource's own
//! path, where RFC 9728 section 3.1 puts it), which MCP servers must serve.
//!
//! The same layer works for axum (`Router::layer`) and tonic (`Server::builder().layer`): it
//! is generic over the request and response bodies and adds its own answers as the right arm
//! of an [`Either`] body.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Bytes;
use serde_json::json;

use crate::verify::{AccessClaims, BearerErrorCode, CertThumbprint, Verifier, VerifyError};

/// Where RFC 9728 puts protected-resource metadata.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// RFC 9728 protected-resource metadata.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ResourceMetadata {
    /// The resource identifier: what tokens for it carry as `aud` (an `https` URL).
    pub resource: String,
    /// Issuers whose tokens the resource accepts.
    pub authorization_servers: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes_supported: Vec<String>,
    /// Always `["header"]`: the layer reads no token from a body or a query.
    pub bearer_methods_supported: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_name: Option<String>,
}

impl ResourceMetadata {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(
        resource: impl Into<String>,
        authorization_servers: I,
    ) -> Self {
        Self {
            resource: resource.into(),
            authorization_servers: authorization_servers.into_iter().map(Into::into).collect(),
            scopes_supported: Vec::new(),
            bearer_methods_supported: vec!["header".to_owned()],
            resource_name: None,
        }
    }

    pub fn scopes_supported<I: IntoIterator<Item = S>, S: Into<String>>(mut self, s: I) -> Self {
        self.scopes_supported = s.into_iter().map(Into::into).collect();
        self
    }

    pub fn resource_name(mut self, name: impl Into<String>) -> Self {
        self.resource_name = Some(name.into());
        self
    }

    /// The resource split into origin (`https://host:port`) and path (`""` or `/...`).
    fn split(&self) -> (&str, &str) {
        let r = self.resource.split(['?', '#']).next().unwrap_or("");
        let after_scheme = r.find("://").map_or(0, |i| i + 3);
        match r[after_scheme..].find('/') {
            Some(i) => {
                let (origin, path) = r.split_at(after_scheme + i);
                (origin, path.trim_end_matches('/'))
            }
            None => (r, ""),
        }
    }

    /// The path the metadata is served at: the well-known path, then the resource's path
    /// (RFC 9728 section 3.1).
    pub fn well_known_path(&self) -> String {
        format!("{METADATA_PATH}{}", self.split().1)
    }

    /// The metadata URL `WWW-Authenticate` names.
    pub fn metadata_url(&self) -> String {
        format!("{}{}", self.split().0, self.well_known_path())
    }
}

/// What the layer's services share.
struct Shared {
    verifier: Verifier,
    metadata: ResourceMetadata,
    /// The metadata document, serialized once.
    document: Bytes,
    metadata_url: String,
    paths: [String; 2],
}

/// Requires a verified bearer token (and scopes) on every request to the wrapped service;
/// answers protected-resource metadata.
#[derive(Clone)]
pub struct BearerLayer {
    shared: Arc<Shared>,
    scopes: Arc<[String]>,
}

impl fmt::Debug for BearerLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerLayer")
            .field("resource", &self.shared.metadata.resource)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl BearerLayer {
    pub fn new(verifier: Verifier, metadata: ResourceMetadata) -> Self {
        let document =
            Bytes::from(serde_json::to_vec(&metadata).unwrap_or_else(|_| b"{}".to_vec()));
        let paths = [METADATA_PATH.to_owned(), metadata.well_known_path()];
        Self {
            shared: Arc::new(Shared {
                verifier,
                metadata_url: metadata.metadata_url(),
                metadata,
                document,
                paths,
            }),
            scopes: Arc::from(Vec::new()),
        }
    }

    /// Require these scopes (besides the verifier's own) on every request through this layer.
    /// Layers made from one another share the verifier: one per route with its scopes.
    pub fn require_scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, s: I) -> Self {
        self.scopes = s.into_iter().map(Into::into).collect::<Vec<_>>().into();
        self
    }

    pub fn metadata(&self) -> &ResourceMetadata {
        &self.shared.metadata
    }

    /// The challenge's parameters: `resource_metadata`, then (with a refusal) `error` and
    /// `error_description`, then `scope` when scopes are required.
    pub fn www_authenticate(&self, error: Option<(BearerErrorCode, &str)>) -> String {
        let mut v = format!(
            "Bearer resource_metadata=\"{}\"",
            quoted(&self.shared.metadata_url)
        );
        if let Some((code, description)) = error {
            v += &format!(
                ", error=\"{}\", error_description=\"{}\"",
                code.as_str(),
                quoted(description)
            );
        }
        if !self.scopes.is_empty() {
            v += &format!(", scope=\"{}\"", quoted(&self.scopes.join(" ")));
        }
        v
    }

    fn is_metadata_path(&self, path: &str) -> bool {
        self.shared.paths.iter().any(|p| p == path)
    }

    fn metadata_response(&self, method: &Method) -> Response<Full<Bytes>> {
        if method == Method::GET || method == Method::HEAD {
            let mut r = Response::new(Full::new(if method == Method::GET {
                self.shared.document.clone()
            } else {
                Bytes::new()
            }));
            let h = r.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            h.insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            );
            // Public metadata, read by browser-based clients too.
            h.insert(
                http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
            r
        } else {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            r.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        }
    }

    /// The answer to a refused request.
    fn refuse(&self, refusal: &Refusal, grpc: bool) -> Response<Full<Bytes>> {
        let (status, code, description) = match refusal {
            Refusal::NoToken => (
                StatusCode::UNAUTHORIZED,
                None,
                "a bearer token is required".to_owned(),
            ),
            Refusal::BadRequest(d) => (
                StatusCode::BAD_REQUEST,
                Some(BearerErrorCode::InvalidRequest),
                (*d).to_owned(),
            ),
            Refusal::Token(e) => (e.status(), e.code(), e.to_string()),
        };
        let challenge = match (status, code) {
            (StatusCode::SERVICE_UNAVAILABLE, _) => None,
            (_, Some(c)) => Some(self.www_authenticate(Some((c, &description)))),
            (_, None) => Some(self.www_authenticate(None)),
        };
        let mut r = if grpc {
            let grpc_status = match status {
                StatusCode::UNAUTHORIZED => "16", // UNAUTHENTICATED
                StatusCode::FORBIDDEN => "7",     // PERMISSION_DENIED
                StatusCode::BAD_REQUEST => "3",   // INVALID_ARGUMENT
                _ => "14",                        // UNAVAILABLE
            };
            let mut r = Response::new(Full::new(Bytes::new()));
            let h = r.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            h.insert("grpc-status", HeaderValue::from_static(grpc_status));
            if let Ok(v) = HeaderValue::from_str(&grpc_message(&description)) {
                h.insert("grpc-message", v);
            }
            r
        } else {
            let body = match code {
                Some(c) => json!({ "error": c.as_str(), "error_description": description }),
                None if status == StatusCode::SERVICE_UNAVAILABLE => {
                    json!({ "error": "temporarily_unavailable", "error_description": description })
                }
                None => json!({ "error_description": description }),
            };
            let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
            *r.status_mut() = status;
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if status == StatusCode::SERVICE_UNAVAILABLE {
                r.headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            r
        };
        if let Some(c) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            r.headers_mut().insert(WWW_AUTHENTICATE, c);
        }
        r
    }
}

impl<S> tower::Layer<S> for BearerLayer {
    type Service = Bearer<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bearer {
            inner,
            layer: self.clone(),
        }
    }
}

/// Why the layer refused a request.
#[derive(Debug)]
enum Refusal {
    /// No bearer token: a plain challenge, no error code (RFC 6750 section 3.1).
    NoToken,
    BadRequest(&'static str),
    Token(VerifyError),
}

/// The bearer token of a request: `Ok(None)` without one (or with another scheme).
fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, &'static str> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("more than one Authorization header");
    }
    let v = v
        .to_str()
        .map_err(|_| "the Authorization header is not ASCII")?;
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = rest.trim_matches(' ');
    // RFC 6750 section 2.1: b64token.
    let body = token.trim_end_matches('=');
    if body.is_empty()
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
    {
        return Err("the Authorization header's bearer token is empty or malformed");
    }
    Ok(Some(token))
}

/// The client certificate's thumbprint, from what the server put in the request extensions:
/// a [`CertThumbprint`] of its own, or authsec-tls's [`authsec_tls::PeerInfo`].
fn presented_cert(ext: &http::Extensions) -> Option<CertThumbprint> {
    ext.get::<CertThumbprint>().copied().or_else(|| {
        ext.get::<authsec_tls::PeerInfo>()?
            .cert_fingerprint
            .as_deref()
            .and_then(CertThumbprint::from_fingerprint)
    })
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// A quoted-string's content (RFC 6750 section 3: `error_description` is %x20-21 / %x23-5B /
/// %x5D-7E): quotes and backslashes become `'`, anything else outside printable ASCII `?`.
fn quoted(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            ' '..='~' => c,
            _ => '?',
        })
        .collect()
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2, "Responses").
fn grpc_message(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out += &format!("%{b:02X}");
        }
    }
    out
}

/// The service [`BearerLayer`] makes.
#[derive(Clone)]
pub struct Bearer<S> {
    inner: S,
    layer: BearerLayer,
}

impl<S> fmt::Debug for Bearer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bearer")
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

impl<S, B, RB> tower::Service<Request<B>> for Bearer<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Either<RB, Full<Bytes>>>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The service that was polled ready handles this request; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let right = |r: Response<Full<Bytes>>| r.map(Either::Right);
            if layer.is_metadata_path(req.uri().path()) {
                return Ok(right(layer.metadata_response(req.method())));
            }
            let grpc = is_grpc(req.headers());
            let token = match bearer_token(req.headers()) {
                Ok(Some(t)) => t.to_owned(),
                Ok(None) => return Ok(right(layer.refuse(&Refusal::NoToken, grpc))),
                Err(e) => return Ok(right(layer.refuse(&Refusal::BadRequest(e), grpc))),
            };
            let cert = presented_cert(req.extensions());
            match layer
                .shared
                .verifier
                .verify_scopes(&token, cert.as_ref(), &layer.scopes)
                .await
            {
                Ok(claims) => {
                    req.extensions_mut().insert::<Arc<AccessClaims>>(claims);
                    inner.call(req).await.map(|r| r.map(Either::Left))
                }
                Err(e) => {
                    tracing::debug!(path = %req.uri().path(), error = %e, "refused a bearer token");
                    Ok(right(layer.refuse(&Refusal::Token(e), grpc)))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{Jwks, KeySource, VerifierConfig};
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use tower::{Layer, ServiceExt};

    fn b64(b: &[u8]) -> String {
        crate::token::b64url(b)
    }

    fn layer_with_key() -> (BearerLayer, EcdsaKeyPair) {
        let der =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .expect("key");
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.as_ref()).expect("key");
        let p = key.public_key().as_ref();
        let jwks = json!({"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":b64(&p[1..33]),"y":b64(&p[33..65])}]});
        let v = Verifier::new(
            VerifierConfig::new(
                "https://authsec.test",
                "https://mcp.example/tools",
                KeySource::Static(Jwks::parse(jwks.to_string().as_bytes()).expect("jwks")),
            ),
            None,
        )
        .expect("verifier");
        let md = ResourceMetadata::new("https://mcp.example/tools", ["https://authsec.test"])
            .scopes_supported(["tools:call", "tools:list"]);
        (BearerLayer::new(v, md), key)
    }

    fn token(key: &EcdsaKeyPair, scope: &str) -> String {
        let now = crate::token::unix_now_s();
        let claims = json!({"iss":"https://authsec.test","sub":"agent","aud":"https://mcp.example/tools","client_id":"agent","iat":now,"exp":now+300,"jti":"j","scope":scope});
        let input = format!(
            "{}.{}",
            b64(json!({"alg":"ES256","typ":"at+jwt","kid":"k1"})
                .to_string()
                .as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = key
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("sign");
        format!("{input}.{}", b64(sig.as_ref()))
    }

    #[test]
    fn metadata_urls_insert_the_well_known_path() {
        let m = ResourceMetadata::new("https://mcp.example", ["https://as.example"]);
        assert_eq!(m.well_known_path(), METADATA_PATH);
        assert_eq!(
            m.metadata_url(),
            "https://mcp.example/.well-known/oauth-protected-resource"
        );
        let m = ResourceMetadata::new("https://mcp.example:8443/tools/v1/", ["https://as.example"]);
        assert_eq!(
            m.well_known_path(),
            "/.well-known/oauth-protected-resource/tools/v1"
        );
        assert_eq!(
            m.metadata_url(),
            "https://mcp.example:8443/.well-known/oauth-protected-resource/tools/v1"
        );
        let doc: serde_json::Value = serde_json::to_value(
            ResourceMetadata::new("https://r.example", ["https://as.example"])
                .scopes_supported(["a:b"]),
        )
        .expect("json");
        assert_eq!(
            doc,
            json!({"resource":"https://r.example","authorization_servers":["https://as.example"],"scopes_supported":["a:b"],"bearer_methods_supported":["header"]})
        );
    }

    #[test]
    fn challenges_are_formatted_per_rfc_6750_and_9728() {
        let (l, _) = layer_with_key();
        let url = "https://mcp.example/.well-known/oauth-protected-resource/tools";
        assert_eq!(
            l.www_authenticate(None),
            format!("Bearer resource_metadata=\"{url}\"")
        );
        assert_eq!(
            l.www_authenticate(Some((BearerErrorCode::InvalidToken, "the token \"x\" expired\n"))),
            format!("Bearer resource_metadata=\"{url}\", error=\"invalid_token\", error_description=\"the token 'x' expired?\"")
        );
        let l = l.require_scopes(["tools:call", "tools:list"]);
        assert_eq!(
            l.www_authenticate(Some((BearerErrorCode::InsufficientScope, "the token lacks the scope tools:call"))),
            format!("Bearer resource_metadata=\"{url}\", error=\"insufficient_scope\", error_description=\"the token lacks the scope tools:call\", scope=\"tools:call tools:list\"")
        );
        assert_eq!(grpc_message("50% done\u{e9}"), "50%25 done%C3%A9");
    }

    #[test]
    fn bearer_tokens_are_read_from_one_header() {
        let h = |vals: &[&str]| {
            let mut m = HeaderMap::new();
            for v in vals {
                m.append(AUTHORIZATION, HeaderValue::from_str(v).expect("value"));
            }
            m
        };
        assert_eq!(bearer_token(&h(&[])), Ok(None));
        assert_eq!(
            bearer_token(&h(&["Bearer abc.def-_~+/=="])),
            Ok(Some("abc.def-_~+/=="))
        );
        assert_eq!(bearer_token(&h(&["bearer abc"])), Ok(Some("abc")));
        assert_eq!(bearer_token(&h(&["Basic dXNlcjpwdw=="])), Ok(None));
        assert!(bearer_token(&h(&["Bearer"])).is_err());
        assert!(bearer_token(&h(&["Bearer "])).is_err());
        assert!(bearer_token(&h(&["Bearer a b"])).is_err());
        assert!(bearer_token(&h(&["Bearer a", "Bearer b"])).is_err());
    }

    #[tokio::test]
    async fn the_layer_refuses_passes_and_serves_metadata() {
        let (l, key) = layer_with_key();
        let svc = l.require_scopes(["tools:call"]).layer(tower::service_fn(
            |req: Request<String>| async move {
                let who = req
                    .extensions()
                    .get::<Arc<AccessClaims>>()
                    .map(|c| c.client_id.clone())
                    .unwrap_or_default();
                Ok::<_, std::convert::Infallible>(Response::new(who))
            },
        ));
        let call = |auth: Option<String>, path: &str, grpc: bool| {
            let mut b = Request::get(path);
            if let Some(a) = auth {
                b = b.header(AUTHORIZATION, a);
            }
            if grpc {
                b = b.header(CONTENT_TYPE, "application/grpc");
            }
            svc.clone().oneshot(b.body(String::new()).expect("request"))
        };
        let www = |r: &Response<Either<String, Full<Bytes>>>| {
            r.headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        // No token: 401 with the metadata URL and no error code.
        let r = call(None, "/tools", false).await.expect("call");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(www(&r).starts_with("Bearer resource_metadata=\"https://mcp.example/.well-known/oauth-protected-resource/tools\""), "{}", www(&r));
        assert!(!www(&r).contains("error="));
        // A bad token: invalid_token.
        let r = call(Some("Bearer abc.def.ghi".into()), "/tools", false)
            .await
            .expect("call");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(www(&r).contains("error=\"invalid_token\""), "{}", www(&r));
        // A good token without the scope: 403 insufficient_scope.
        let r = call(
            Some(format!("Bearer {}", token(&key, "tools:list"))),
            "/tools",
            false,
        )
        .await
        .expect("call");
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(
            www(&r).contains("error=\"insufficient_scope\""),
            "{}",
            www(&r)
        );
        // The same over gRPC: a status, not an HTTP error.
        let r = call(
            Some(format!("Bearer {}", token(&key, "tools:list"))),
            "/pkg.Svc/Call",
            true,
        )
        .await
        .expect("call");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers().get("grpc-status").and_then(|v| v.to_str().ok()),
            Some("7")
        );
        assert!(www(&r).contains("insufficient_scope"));
        // A malformed header: 400 invalid_request.
        let r = call(Some("Bearer ".into()), "/tools", false)
            .await
            .expect("call");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(www(&r).contains("error=\"invalid_request\""));
        // A good token passes, with its claims in the extensions.
        let r = call(
            Some(format!("Bearer {}", token(&key, "tools:call tools:list"))),
            "/tools",
            false,
        )
        .await
        .expect("call");
        assert_eq!(r.status(), StatusCode::OK);
        match r.into_body() {
            Either::Left(who) => assert_eq!(who, "agent"),
            Either::Right(_) => panic!("the layer answered instead of the service"),
        }
        // Metadata, at both paths, without a token.
        for path in [METADATA_PATH, "/.well-known/oauth-protected-resource/tools"] {
            let r = call(None, path, false).await.expect("call");
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            let Either::Right(body) = r.into_body() else {
                panic!("metadata answered by the service")
            };
            let bytes = http_body_util::BodyExt::collect(body)
                .await
                .expect("body")
                .to_bytes();
            let doc: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
            assert_eq!(doc["resource"], "https://mcp.example/tools");
            assert_eq!(
                doc["authorization_servers"],
                json!(["https://authsec.test"])
            );
            assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
            assert_eq!(doc["scopes_supported"], json!(["tools:call", "tools:list"]));
        }
    }
}

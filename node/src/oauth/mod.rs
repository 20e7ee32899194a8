//! The OAuth 2.0 authorization server every node runs (HTTPS, HTTP/1.1 keep-alive): the token
//! endpoint (client credentials), introspection, revocation, metadata and JWKS. Tokens are
//! minted by the answering node from its own projections and keys, with no consensus round;
//! each is in the node's synced outbox before it is returned (see [`crate::outbox`]).
//!
//! Errors follow RFC 6749 section 5.2: a JSON body `{error, error_description}`, 400, or 401
//! with `WWW-Authenticate` when client authentication failed. Every answer carries
//! `Cache-Control: no-store`.

pub mod client_auth;
pub mod external;
pub mod jose;
pub mod limiter;
pub mod token;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use authsec_domain::keys::{KeyKind, NodeKey};
use authsec_storage::StateView;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::OauthSection;
use crate::issuer::SvidIssuer;
use crate::outbox::Recorder;
use crate::secrets::SecretKey;
use crate::services::Ctx;

/// A request body larger than this is refused (413) before it is parsed.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// Time to finish a TLS handshake and to send a request's headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections open at once (keep-alive clients hold one each).
const CONNECTIONS_MAX: usize = 4096;

/// Check an issuer URL: `https`, a host, no query or fragment (RFC 8414 section 2).
pub fn check_issuer_url(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| anyhow::anyhow!("an issuer URL starts with https://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        anyhow::bail!("an issuer URL names a host");
    }
    if url.contains(['?', '#']) || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        anyhow::bail!("an issuer URL has no query, fragment or spaces");
    }
    if url.len() > 512 {
        anyhow::bail!("an issuer URL is at most 512 bytes");
    }
    Ok(())
}

/// What a connection brought: the peer address and, over mTLS, its certificate.
#[derive(Debug, Clone)]
pub struct Conn {
    pub remote: SocketAddr,
    pub peer_cert: Option<rustls::pki_types::CertificateDer<'static>>,
}

/// The authorization server's shared state.
pub struct Oauth {
    pub ctx: Arc<Ctx>,
    pub view: StateView,
    pub issuer: Arc<SvidIssuer>,
    pub recorder: Recorder,
    pub cfg: OauthSection,
    /// This node's `iss`.
    pub issuer_url: String,
    /// Every `iss` this node accepts as its cluster's: its own and the configured others.
    pub accepted_issuers: Vec<String>,
    pub token_endpoint: String,
    secret_key: RwLock<Option<Arc<SecretKey>>>,
    pub replay: Mutex<limiter::ReplayCache>,
    pub failures: Mutex<limiter::FailureLimiter>,
    pub external: external::External,
}

impl std::fmt::Debug for Oauth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oauth")
            .field("issuer_url", &self.issuer_url)
            .finish_non_exhaustive()
    }
}

impl Oauth {
    pub fn new(
        ctx: Arc<Ctx>,
        view: StateView,
        issuer: Arc<SvidIssuer>,
        recorder: Recorder,
        cfg: OauthSection,
        local_addr: SocketAddr,
    ) -> anyhow::Result<Arc<Self>> {
        let issuer_url = cfg
            .issuer
            .clone()
            .unwrap_or_else(|| format!("https://{local_addr}"));
        let issuer_url = issuer_url.trim_end_matches('/').to_owned();
        let mut accepted_issuers = vec![issuer_url.clone()];
        accepted_issuers.extend(
            cfg.accepted_issuers
                .iter()
                .map(|u| u.trim_end_matches('/').to_owned()),
        );
        let token_endpoint = format!("{issuer_url}/oauth2/token");
        let failures = limiter::FailureLimiter::new(cfg.auth_failures_per_minute);
        let external = external::External::new(&cfg.trusted_issuers)?;
        Ok(Arc::new(Self {
            ctx,
            view,
            issuer,
            recorder,
            cfg,
            issuer_url,
            accepted_issuers,
            token_endpoint,
            secret_key: RwLock::new(None),
            replay: Mutex::new(limiter::ReplayCache::default()),
            failures: Mutex::new(failures),
            external,
        }))
    }

    /// The cluster's client-secret key, loaded once it is installed.
    pub fn secret_key(&self) -> Option<Arc<SecretKey>> {
        if let Some(k) = self
            .secret_key
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        {
            return Some(k);
        }
        let s = &self.ctx.sec;
        match SecretKey::load(&self.ctx.reader, s.kek_path(), &s.td, s.tls_dir()) {
            Ok(k) => {
                let k = Arc::new(k);
                *self
                    .secret_key
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(k.clone());
                Some(k)
            }
            Err(e) => {
                tracing::warn!(error = %e, "the client-secret key is not available; secret authentication fails");
                None
            }
        }
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/oauth2/token", post(token::token))
            .route("/oauth2/introspect", post(token::introspect))
            .route("/oauth2/revoke", post(token::revoke))
            .route("/.well-known/oauth-authorization-server", get(metadata))
            .route("/.well-known/jwks.json", get(jwks))
            .fallback(|| async {
                error(
                    StatusCode::NOT_FOUND,
                    "invalid_request",
                    "no such endpoint; see /.well-known/oauth-authorization-server",
                )
            })
            .layer(axum::extract::DefaultBodyLimit::max(BODY_BYTES_MAX))
            .with_state(self.clone())
    }
}

/// An OAuth error answer.
pub fn error(status: StatusCode, code: &str, description: impl Into<String>) -> Response {
    let body = json!({ "error": code, "error_description": description.into() });
    no_store(json_response(status, &body))
}

/// `invalid_client`: 401 with `WWW-Authenticate` naming the scheme the client tried (or Basic).
pub fn invalid_client(description: impl Into<String>) -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, "invalid_client", description);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"authsec\", charset=\"UTF-8\""),
    );
    r
}

/// `temporarily_unavailable`: 503 with `Retry-After: 1`; this node cannot answer now, another
/// may.
pub fn unavailable(description: impl Into<String>) -> Response {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        description,
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// A JSON answer.
pub fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

pub fn no_store(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

pub fn json_ok(v: Value) -> Response {
    no_store(json_response(StatusCode::OK, &v))
}

async fn metadata(axum::extract::State(s): axum::extract::State<Arc<Oauth>>) -> Response {
    let base = &s.issuer_url;
    let auth_methods = json!([
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
        "tls_client_auth"
    ]);
    json_ok(json!({
        "issuer": base,
        "token_endpoint": s.token_endpoint,
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "introspection_endpoint": format!("{base}/oauth2/introspect"),
        "revocation_endpoint": format!("{base}/oauth2/revoke"),
        "grant_types_supported": ["client_credentials", token::GRANT_TOKEN_EXCHANGE],
        // No authorization endpoint: machines only.
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": auth_methods,
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "EdDSA", "RS256"],
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "tls_client_certificate_bound_access_tokens": true,
        "authorization_response_iss_parameter_supported": false,
    }))
}

/// The JWK of an access-token key.
pub fn token_jwk(k: &NodeKey) -> Option<Value> {
    let key = jose::VerifyKey::from_spki(&k.public).ok()?;
    let mut jwk = key.to_jwk();
    let obj = jwk.as_object_mut()?;
    obj.insert("kid".into(), json!(k.kid));
    obj.insert("alg".into(), json!(key.alg()));
    obj.insert("use".into(), json!("sig"));
    Some(jwk)
}

async fn jwks(axum::extract::State(s): axum::extract::State<Arc<Oauth>>) -> Response {
    let keys: Vec<Value> = {
        let state = s.view.read();
        state
            .keys
            .values()
            .filter(|k| k.kind == KeyKind::Token && k.state.in_bundle())
            .filter_map(token_jwk)
            .collect()
    };
    // Verifiers may cache it briefly; a key is published well before it signs.
    let mut r = json_response(StatusCode::OK, &json!({ "keys": keys }));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    r
}

/// Serve `app` over TLS on `listener` until `shutdown`, one task per connection, keep-alive.
pub async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
    refusals: Arc<crate::audit::FailureLog>,
    shutdown: watch::Receiver<bool>,
) {
    use hyper_util::rt::TokioIo;
    use tower::ServiceExt;
    let stop = shutdown.clone();
    crate::https::accept_loop(
        "oauth",
        listener,
        config,
        HANDSHAKE_TIMEOUT,
        CONNECTIONS_MAX,
        Some(refusals),
        shutdown,
        move |tls, remote| {
            let (app, mut stop) = (app.clone(), stop.clone());
            async move {
                let conn = Conn {
                    remote,
                    peer_cert: tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| c.clone().into_owned()),
                };
                let svc = hyper::service::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(conn.clone());
                        app.clone().oneshot(req)
                    },
                );
                let served = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .header_read_timeout(HANDSHAKE_TIMEOUT)
                    .timer(hyper_util::rt::TokioTimer::new())
                    .serve_connection(TokioIo::new(tls), svc);
                tokio::pin!(served);
                tokio::select! {
                    r = served.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%remote, error = %e, "oauth: connection ended with an error");
                        }
                    }
                    _ = stop.wait_for(|s| *s) => {}
                }
            }
        },
    )
    .await
}

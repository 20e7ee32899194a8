//! The token client against a local HTTPS token endpoint: what each client authentication
//! method puts on the wire, the cache shared by concurrent callers, and typed errors.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use authsec_sdk::token::{
    AssertionKey, ClientAuth, ErrorCode, TokenClient, TokenError, TokenRequest, TransportError,
    GRANT_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS, TOKEN_TYPE_JWT,
};
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};

/// One request as the endpoint saw it.
#[derive(Debug, Clone)]
struct Seen {
    authorization: Option<String>,
    form: BTreeMap<String, Vec<String>>,
}

impl Seen {
    fn one(&self, k: &str) -> Option<&str> {
        self.form.get(k).and_then(|v| v.first()).map(String::as_str)
    }
}

type Handler = Arc<dyn Fn(usize, &Seen) -> (u16, String) + Send + Sync>;

struct Endpoint {
    url: String,
    tls: Arc<rustls::ClientConfig>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// TCP connections accepted.
    connections: Arc<AtomicUsize>,
}

impl Endpoint {
    fn count(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }

    fn last(&self) -> Seen {
        self.seen
            .lock()
            .ok()
            .and_then(|s| s.last().cloned())
            .expect("a request")
    }
}

fn self_signed(name: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let c = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("certificate");
    (
        c.cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.signing_key.serialize_der())),
    )
}

fn roots(ca: &CertificateDer<'static>) -> rustls::RootCertStore {
    let mut r = rustls::RootCertStore::empty();
    r.add(ca.clone()).expect("root");
    r
}

/// A token endpoint on loopback answering with `handler`; with `client_ca`, it requires a
/// client certificate issued by it.
async fn endpoint(handler: Handler, client_ca: Option<CertificateDer<'static>>) -> Endpoint {
    endpoint_with(handler, client_ca, true).await
}

async fn endpoint_with(
    handler: Handler,
    client_ca: Option<CertificateDer<'static>>,
    keep_alive: bool,
) -> Endpoint {
    let (cert, key) = self_signed("127.0.0.1");
    let builder = rustls::ServerConfig::builder_with_provider(authsec_tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let mut cfg = match &client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)),
                authsec_tls::provider(),
            )
            .build()
            .expect("verifier"),
        ),
        None => builder.with_no_client_auth(),
    }
    .with_single_cert(vec![cert.clone()], key)
    .expect("server config");
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let counter = Arc::new(AtomicUsize::new(0));
    let record = seen.clone();
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let (acceptor, handler, record, counter) = (
                acceptor.clone(),
                handler.clone(),
                record.clone(),
                counter.clone(),
            );
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (handler, record, counter) =
                            (handler.clone(), record.clone(), counter.clone());
                        async move {
                            let authorization = req
                                .headers()
                                .get(http::header::AUTHORIZATION)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let body = req.into_body().collect().await?.to_bytes();
                            let mut form: BTreeMap<String, Vec<String>> = BTreeMap::new();
                            for (k, v) in form_urlencoded::parse(&body) {
                                form.entry(k.into_owned()).or_default().push(v.into_owned());
                            }
                            let s = Seen {
                                authorization,
                                form,
                            };
                            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                            let (status, body) = handler(n, &s);
                            if let Ok(mut r) = record.lock() {
                                r.push(s);
                            }
                            let mut resp = http::Response::new(Full::new(Bytes::from(body)));
                            *resp.status_mut() =
                                http::StatusCode::from_u16(status).unwrap_or_default();
                            resp.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(keep_alive)
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let tls = rustls::ClientConfig::builder_with_provider(authsec_tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots(&cert))
        .with_no_client_auth();
    Endpoint {
        url: format!("https://{addr}/oauth2/token"),
        tls: Arc::new(tls),
        seen,
        connections,
    }
}

fn ok_token(n: usize, expires_in: u64) -> (u16, String) {
    (
        200,
        json!({"access_token": format!("token-{n}"), "token_type": "Bearer", "expires_in": expires_in})
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_credentials_are_cached_and_concurrent_callers_share_one_request() {
    let ep = endpoint(
        Arc::new(|n, s: &Seen| {
            if s.one("scope") == Some("short:lived") {
                ok_token(n, 0)
            } else {
                ok_token(n, 300)
            }
        }),
        None,
    )
    .await;
    let client = TokenClient::new(
        &ep.url,
        ep.tls.clone(),
        ClientAuth::secret_basic("svc", "s3cret:with/odd+chars"),
    )
    .expect("client");
    let req = TokenRequest::client_credentials()
        .scope("orders:read")
        .resource("https://orders.example");

    // Twenty callers at once: one request, one token for all.
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let (c, r) = (client.clone(), req.clone());
            tokio::spawn(async move { c.token(&r).await })
        })
        .collect();
    for call in calls {
        let t = call.await.expect("task").expect("token");
        assert_eq!(t.secret(), "token-1");
        assert_eq!(t.token_type, "Bearer");
    }
    assert_eq!(ep.count(), 1, "concurrent callers shared one request");
    let seen = ep.last();
    let basic = seen
        .authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Basic "))
        .expect("Basic credentials");
    let raw = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(basic)
            .expect("base64"),
    )
    .expect("utf8");
    let (id, secret) = raw.split_once(':').expect("id:secret");
    let dec = |s: &str| {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    assert_eq!(
        (dec(id).as_str(), dec(secret).as_str()),
        ("svc", "s3cret:with/odd+chars")
    );
    assert_eq!(seen.one("grant_type"), Some("client_credentials"));
    assert_eq!(seen.one("scope"), Some("orders:read"));
    assert_eq!(seen.one("resource"), Some("https://orders.example"));
    assert_eq!(
        seen.one("client_secret"),
        None,
        "the secret goes in the header only"
    );

    // The same request again: from the cache. Another scope: a new request.
    assert_eq!(client.token(&req).await.expect("token").secret(), "token-1");
    assert_eq!(ep.count(), 1);
    let other = TokenRequest::client_credentials().scope("orders:write");
    assert_eq!(
        client.token(&other).await.expect("token").secret(),
        "token-2"
    );
    // Invalidated: fetched anew.
    client.invalidate(&req);
    assert_eq!(client.token(&req).await.expect("token").secret(), "token-3");
    // A token that is due at once is fetched on every call.
    let short = TokenRequest::client_credentials().scope("short:lived");
    let a = client.token(&short).await.expect("token");
    let b = client.token(&short).await.expect("token");
    assert_ne!(a.secret(), b.secret());
    assert_eq!(ep.count(), 5);
    assert!(!format!("{client:?}").contains("s3cret"));
}

#[tokio::test]
async fn errors_are_typed_oauth_protocol_or_transport() {
    let ep = endpoint(
        Arc::new(|_, s: &Seen| match s.one("scope") {
            Some("bad") => (
                400,
                json!({"error": "invalid_scope", "error_description": "bad is not allowed"})
                    .to_string(),
            ),
            Some("html") => (502, "<html>bad gateway</html>".into()),
            Some("huge") => (200, "x".repeat(2 << 20)),
            Some("nojson") => (200, "not json".into()),
            _ => (
                401,
                json!({"error": "invalid_client", "error_description": "unknown client or wrong credentials"})
                    .to_string(),
            ),
        }),
        None,
    )
    .await;
    let client = TokenClient::new(
        &ep.url,
        ep.tls.clone(),
        ClientAuth::secret_basic("svc", "wrong"),
    )
    .expect("client");
    let get = |scope: &str| {
        let (c, r) = (
            client.clone(),
            TokenRequest::client_credentials().scope(scope),
        );
        async move { c.token(&r).await }
    };
    match get("bad").await {
        Err(TokenError::Oauth {
            status: 400,
            code: ErrorCode::InvalidScope,
            description,
        }) => assert_eq!(description.as_deref(), Some("bad is not allowed")),
        other => panic!("{other:?}"),
    }
    let e = get("any:thing").await.expect_err("refused");
    assert_eq!(e.code(), Some(&ErrorCode::InvalidClient));
    assert!(matches!(
        get("html").await,
        Err(TokenError::Protocol { status: 502, .. })
    ));
    assert!(matches!(
        get("nojson").await,
        Err(TokenError::Protocol { status: 200, .. })
    ));
    assert!(matches!(
        get("huge").await,
        Err(TokenError::Transport(TransportError::TooLarge { .. }))
    ));

    // Nothing listens: a transport error.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let nowhere = TokenClient::new(
        format!("https://{closed}/oauth2/token"),
        ep.tls.clone(),
        ClientAuth::secret_basic("svc", "s"),
    )
    .expect("client");
    assert!(matches!(
        nowhere.token(&TokenRequest::client_credentials()).await,
        Err(TokenError::Transport(TransportError::Connect { .. }))
    ));
    // A server whose certificate is not trusted: a TLS error.
    let untrusted = rustls::ClientConfig::builder_with_provider(authsec_tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots(&self_signed("127.0.0.1").0))
        .with_no_client_auth();
    let c = TokenClient::new(
        &ep.url,
        Arc::new(untrusted),
        ClientAuth::secret_basic("svc", "s"),
    )
    .expect("client");
    assert!(matches!(
        c.token(&TokenRequest::client_credentials()).await,
        Err(TokenError::Transport(TransportError::Tls { .. }))
    ));
    assert!(TokenClient::new(
        "http://127.0.0.1/token",
        ep.tls.clone(),
        ClientAuth::tls_client_auth("x")
    )
    .is_err());
}

#[tokio::test]
async fn private_key_jwt_signs_a_fresh_assertion_for_each_request() {
    let ep = endpoint(Arc::new(|n, _: &Seen| ok_token(n, 0)), None).await;
    let key = AssertionKey::generate(Some("k1".into())).expect("key");
    let jwk = key.public_jwk();
    let client = TokenClient::new(
        &ep.url,
        ep.tls.clone(),
        ClientAuth::private_key_jwt_for("pkj", key, "https://authsec.test/oauth2/token"),
    )
    .expect("client");
    let req = TokenRequest::client_credentials().scope("orders:read");
    client.token(&req).await.expect("token");
    let first = ep.last();
    client.token(&req).await.expect("token");
    let second = ep.last();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut jtis = Vec::new();
    for s in [&first, &second] {
        assert_eq!(s.authorization, None);
        assert_eq!(s.one("client_id"), Some("pkj"));
        assert_eq!(
            s.one("client_assertion_type"),
            Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        );
        let a = s.one("client_assertion").expect("assertion");
        let parts: Vec<&str> = a.split('.').collect();
        let header: Value =
            serde_json::from_slice(&b64.decode(parts[0]).expect("b64")).expect("json");
        let claims: Value =
            serde_json::from_slice(&b64.decode(parts[1]).expect("b64")).expect("json");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], "k1");
        assert_eq!(
            (claims["iss"].as_str(), claims["sub"].as_str()),
            (Some("pkj"), Some("pkj"))
        );
        assert_eq!(claims["aud"], "https://authsec.test/oauth2/token");
        let (iat, exp) = (
            claims["iat"].as_u64().expect("iat"),
            claims["exp"].as_u64().expect("exp"),
        );
        assert!(exp > iat && exp - iat <= 300, "a short-lived assertion");
        jtis.push(claims["jti"].as_str().expect("jti").to_owned());
        let mut point = vec![4u8];
        point.extend(b64.decode(jwk["x"].as_str().expect("x")).expect("x"));
        point.extend(b64.decode(jwk["y"].as_str().expect("y")).expect("y"));
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            &point,
        )
        .verify(
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
            &b64.decode(parts[2]).expect("sig"),
        )
        .expect("the assertion verifies with the registered key");
    }
    assert_ne!(jtis[0], jtis[1], "an assertion is never reused");
    // Without an explicit audience, the token endpoint URL.
    let client = TokenClient::new(
        &ep.url,
        ep.tls.clone(),
        ClientAuth::private_key_jwt("pkj", AssertionKey::generate(None).expect("key")),
    )
    .expect("client");
    client.token(&req).await.expect("token");
    let a = ep.last();
    let claims: Value = serde_json::from_slice(
        &b64.decode(
            a.one("client_assertion")
                .and_then(|x| x.split('.').nth(1))
                .expect("claims"),
        )
        .expect("b64"),
    )
    .expect("json");
    assert_eq!(claims["aud"], ep.url.as_str());
}

#[tokio::test]
async fn tls_client_auth_presents_the_certificate_and_names_the_client() {
    let (client_cert, client_key) = self_signed("agent.example");
    let ep = endpoint(
        Arc::new(|n, _: &Seen| ok_token(n, 300)),
        Some(client_cert.clone()),
    )
    .await;
    // Without the certificate the handshake fails.
    let anonymous = TokenClient::new(
        &ep.url,
        ep.tls.clone(),
        ClientAuth::tls_client_auth("agent"),
    )
    .expect("client");
    assert!(matches!(
        anonymous.token(&TokenRequest::client_credentials()).await,
        Err(TokenError::Transport(_))
    ));
    let mut tls = (*ep.tls).clone();
    tls.client_auth_cert_resolver =
        rustls::ClientConfig::builder_with_provider(authsec_tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_client_auth_cert(vec![client_cert], client_key)
            .expect("client cert")
            .client_auth_cert_resolver;
    let client = TokenClient::new(&ep.url, Arc::new(tls), ClientAuth::tls_client_auth("agent"))
        .expect("client");
    let t = client
        .token(&TokenRequest::client_credentials().scope("tools:call"))
        .await
        .expect("token");
    assert!(t.secret().starts_with("token-"));
    let s = ep.last();
    assert_eq!(s.authorization, None);
    assert_eq!(s.one("client_id"), Some("agent"));
    assert_eq!(s.one("client_assertion"), None);
}

#[tokio::test]
async fn token_exchange_carries_subject_and_actor_and_is_cached_per_subject() {
    let ep = endpoint(
        Arc::new(|n, _: &Seen| {
            (
                200,
                json!({"access_token": format!("delegated-{n}"), "token_type": "Bearer", "expires_in": 120,
                       "issued_token_type": TOKEN_TYPE_ACCESS, "scope": "orders:read"})
                .to_string(),
            )
        }),
        None,
    )
    .await;
    let client = TokenClient::new(
        &ep.url,
        ep.tls.clone(),
        ClientAuth::secret_basic("agent", "s"),
    )
    .expect("client");
    let req = |subject: &str| {
        TokenRequest::token_exchange(subject)
            .actor_token("actor.jwt.svid", TOKEN_TYPE_JWT)
            .scope("orders:read")
            .resource("https://orders.example")
    };
    let t = client.token(&req("alice.token")).await.expect("token");
    assert_eq!(t.secret(), "delegated-1");
    assert_eq!(t.issued_token_type.as_deref(), Some(TOKEN_TYPE_ACCESS));
    assert_eq!(t.scope.as_deref(), Some("orders:read"));
    let s = ep.last();
    assert_eq!(s.one("grant_type"), Some(GRANT_TOKEN_EXCHANGE));
    assert_eq!(s.one("subject_token"), Some("alice.token"));
    assert_eq!(s.one("subject_token_type"), Some(TOKEN_TYPE_ACCESS));
    assert_eq!(s.one("actor_token"), Some("actor.jwt.svid"));
    assert_eq!(s.one("actor_token_type"), Some(TOKEN_TYPE_JWT));
    assert_eq!(s.one("resource"), Some("https://orders.example"));
    // Cached per subject token.
    assert_eq!(
        client
            .token(&req("alice.token"))
            .await
            .expect("token")
            .secret(),
        "delegated-1"
    );
    assert_eq!(
        client
            .token(&req("bob.token"))
            .await
            .expect("token")
            .secret(),
        "delegated-2"
    );
    assert_eq!(ep.count(), 2);
}

#[tokio::test]
async fn a_kept_connection_is_reused_and_a_closed_one_replaced() {
    let req = TokenRequest::client_credentials();
    // Keep-alive: three requests, one connection.
    let ep = endpoint(Arc::new(|n, _: &Seen| ok_token(n, 300)), None).await;
    let client = TokenClient::new(
        &ep.url,
        ep.tls.clone(),
        ClientAuth::secret_basic("svc", "s"),
    )
    .expect("client");
    for n in 1..=3 {
        assert_eq!(
            client.fetch(&req).await.expect("token").secret(),
            format!("token-{n}")
        );
    }
    assert_eq!(ep.connections.load(Ordering::SeqCst), 1);
    // A server that closes after each answer: every request still succeeds, on a new
    // connection; private_key_jwt assertions are never resent.
    let ep = endpoint_with(Arc::new(|n, _: &Seen| ok_token(n, 300)), None, false).await;
    let client = TokenClient::new(
        &ep.url,
        ep.tls.clone(),
        ClientAuth::private_key_jwt("pkj", AssertionKey::generate(None).expect("key")),
    )
    .expect("client");
    for n in 1..=3 {
        assert_eq!(
            client.fetch(&req).await.expect("token").secret(),
            format!("token-{n}")
        );
    }
    assert_eq!(ep.connections.load(Ordering::SeqCst), 3);
    let assertions: std::collections::BTreeSet<String> = ep
        .seen
        .lock()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.one("client_assertion").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(assertions.len(), 3);
}

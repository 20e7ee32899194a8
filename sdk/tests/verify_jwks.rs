//! The verifier against a local HTTPS JWKS endpoint: keys fetched on first use, refetched on
//! an unknown `kid` (a rotation), a storm of unknown `kid`s held to the refetch interval, and
//! an oversized or unreachable JWKS reported as unavailable rather than as a bad token.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use authsec_sdk::verify::{KeySource, Verifier, VerifierConfig, VerifyError};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::Engine;
use http_body_util::Full;
use hyper::body::Bytes;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};

const ISSUER: &str = "https://authsec.test";
const AUDIENCE: &str = "https://orders.example";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

struct Signer {
    key: EcdsaKeyPair,
    kid: String,
}

impl Signer {
    fn new(kid: &str) -> Self {
        let der =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .expect("key");
        Self {
            key: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.as_ref())
                .expect("key"),
            kid: kid.into(),
        }
    }

    fn jwk(&self) -> Value {
        let p = self.key.public_key().as_ref();
        json!({"kty":"EC","crv":"P-256","alg":"ES256","use":"sig","kid":self.kid,"x":b64(&p[1..33]),"y":b64(&p[33..65])})
    }

    fn token(&self, kid: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = json!({"iss":ISSUER,"sub":"svc","aud":AUDIENCE,"client_id":"svc","iat":now,"exp":now+300,
                            "jti":format!("j-{kid}"),"scope":"orders:read","authsec_index":7});
        let input = format!(
            "{}.{}",
            b64(json!({"alg":"ES256","typ":"at+jwt","kid":kid})
                .to_string()
                .as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("sign");
        format!("{input}.{}", b64(sig.as_ref()))
    }
}

/// A JWKS endpoint serving whatever `doc` holds, counting fetches.
struct JwksServer {
    url: String,
    tls: Arc<rustls::ClientConfig>,
    doc: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

async fn jwks_server(doc: String) -> JwksServer {
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("cert");
    let cert: CertificateDer<'static> = c.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.signing_key.serialize_der()));
    let mut cfg = rustls::ServerConfig::builder_with_provider(authsec_tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("server config");
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let doc = Arc::new(Mutex::new(doc));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (d, f) = (doc.clone(), fetches.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, d, f) = (acceptor.clone(), d.clone(), f.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |_req: http::Request<hyper::body::Incoming>| {
                        f.fetch_add(1, Ordering::SeqCst);
                        let body = d.lock().map(|s| s.clone()).unwrap_or_default();
                        async move {
                            Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::from(body))))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("root");
    let tls = rustls::ClientConfig::builder_with_provider(authsec_tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    JwksServer {
        url: format!("https://{addr}/.well-known/jwks.json"),
        tls: Arc::new(tls),
        doc,
        fetches,
    }
}

fn set_keys(s: &JwksServer, keys: &[Value]) {
    if let Ok(mut d) = s.doc.lock() {
        *d = json!({ "keys": keys }).to_string();
    }
}

fn verifier(s: &JwksServer, refetch_min: Duration) -> Verifier {
    let mut cfg = VerifierConfig::new(ISSUER, AUDIENCE, KeySource::jwks_uri(&s.url, s.tls.clone()));
    cfg.jwks_refetch_min = refetch_min;
    Verifier::new(cfg, None).expect("verifier")
}

#[tokio::test]
async fn keys_are_fetched_once_and_refetched_for_a_rotated_kid() {
    let (k1, k2) = (Signer::new("k1"), Signer::new("k2"));
    let s = jwks_server(String::new()).await;
    set_keys(&s, &[k1.jwk()]);
    let v = verifier(&s, Duration::ZERO);
    let c = v.verify(&k1.token("k1"), None).await.expect("verifies");
    assert_eq!(c.client_id, "svc");
    assert_eq!(c.index, 7);
    assert_eq!(s.fetches.load(Ordering::SeqCst), 1);
    // Another token under the same key: no fetch.
    let other = k1.token("k1"); // ECDSA signatures differ: another token
    v.verify(&other, None).await.expect("verifies");
    assert_eq!(s.fetches.load(Ordering::SeqCst), 1);
    // The issuer rotates to k2 (published before it signs): the unknown kid refetches.
    set_keys(&s, &[k1.jwk(), k2.jwk()]);
    v.verify(&k2.token("k2"), None)
        .await
        .expect("verifies after the refetch");
    assert_eq!(s.fetches.load(Ordering::SeqCst), 2);
    // A kid nobody has: one more fetch, then refused as invalid_token.
    assert_eq!(
        v.verify(&k2.token("k9"), None).await.err(),
        Some(VerifyError::UnknownKey { kid: "k9".into() })
    );
}

#[tokio::test]
async fn a_storm_of_unknown_kids_fetches_at_most_once_per_interval() {
    let k1 = Signer::new("k1");
    let s = jwks_server(String::new()).await;
    set_keys(&s, &[k1.jwk()]);
    // An interval no test outlives: after the first fetch, none.
    let v = verifier(&s, Duration::from_secs(3600));
    v.verify(&k1.token("k1"), None).await.expect("verifies");
    assert_eq!(s.fetches.load(Ordering::SeqCst), 1);
    let storm: Vec<_> = (0..50)
        .map(|i| {
            let (v, t) = (v.clone(), k1.token(&format!("forged-{i}")));
            tokio::spawn(async move { v.verify(&t, None).await })
        })
        .collect();
    for call in storm {
        let e = call.await.expect("task").expect_err("unknown kid");
        assert!(matches!(e, VerifyError::UnknownKey { .. }), "{e}");
        assert_eq!(e.status(), http::StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        s.fetches.load(Ordering::SeqCst),
        1,
        "the storm fetched nothing"
    );
    // Known keys still verify meanwhile.
    v.verify(&k1.token("k1"), None).await.expect("verifies");
}

#[tokio::test]
async fn an_unusable_jwks_is_unavailable_not_a_bad_token() {
    let k1 = Signer::new("k1");
    // Larger than the 1 MiB bound.
    let s = jwks_server(format!(
        "{{\"keys\":[],\"pad\":\"{}\"}}",
        "x".repeat(2 << 20)
    ))
    .await;
    let v = verifier(&s, Duration::from_secs(3600));
    let e = v.verify(&k1.token("k1"), None).await.expect_err("no keys");
    assert!(matches!(e, VerifyError::KeysUnavailable(_)), "{e}");
    assert_eq!(e.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(e.code(), None);
    // Within the interval, no new fetch: still unavailable.
    let e = v.verify(&k1.token("k1"), None).await.expect_err("no keys");
    assert!(matches!(e, VerifyError::KeysUnavailable(_)), "{e}");
    assert_eq!(s.fetches.load(Ordering::SeqCst), 1);
    // Several JWKS URLs: the first that answers serves.
    let good = jwks_server(String::new()).await;
    set_keys(&good, &[k1.jwk()]);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let cfg = VerifierConfig::new(
        ISSUER,
        AUDIENCE,
        KeySource::Jwks {
            uris: vec![format!("https://{closed}/jwks"), good.url.clone()],
            tls: good.tls.clone(),
        },
    );
    let v = Verifier::new(cfg, None).expect("verifier");
    v.verify(&k1.token("k1"), None)
        .await
        .expect("the second URL served");
}

//! The bearer layer on an axum router and on tonic's routes, as servers use it: claims reach
//! the handler, refusals carry the RFC 6750 / RFC 9728 challenge, and tonic gets gRPC
//! statuses.

use std::sync::Arc;

use authsec_sdk::layer::{BearerLayer, ResourceMetadata, METADATA_PATH};
use authsec_sdk::verify::{AccessClaims, Jwks, KeySource, Verifier, VerifierConfig};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::Engine;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::{Layer, ServiceExt};

const ISSUER: &str = "https://authsec.test";
const RESOURCE: &str = "https://mcp.example";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

struct Issuer {
    key: EcdsaKeyPair,
}

impl Issuer {
    fn new() -> Self {
        let der =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .expect("key");
        Self {
            key: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.as_ref())
                .expect("key"),
        }
    }

    fn layer(&self) -> BearerLayer {
        let p = self.key.public_key().as_ref();
        let jwks = json!({"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":b64(&p[1..33]),"y":b64(&p[33..65])}]});
        let v = Verifier::new(
            VerifierConfig::new(
                ISSUER,
                RESOURCE,
                KeySource::Static(Jwks::parse(jwks.to_string().as_bytes()).expect("jwks")),
            ),
            None,
        )
        .expect("verifier");
        BearerLayer::new(
            v,
            ResourceMetadata::new(RESOURCE, [ISSUER]).scopes_supported(["tools:call"]),
        )
        .require_scopes(["tools:call"])
    }

    fn token(&self, scope: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = json!({"iss":ISSUER,"sub":"agent-7","aud":RESOURCE,"client_id":"agent-7","iat":now,
                            "exp":now+300,"jti":"j","scope":scope});
        let input = format!(
            "{}.{}",
            b64(json!({"alg":"ES256","typ":"at+jwt","kid":"k1"})
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

fn header(r: &http::Response<impl Sized>, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn an_axum_router_gets_the_claims_and_clients_get_the_challenge() {
    let issuer = Issuer::new();
    let app = axum::Router::new()
        .route(
            "/mcp",
            axum::routing::post(
                |axum::Extension(claims): axum::Extension<Arc<AccessClaims>>| async move {
                    format!("hello {}", claims.client_id)
                },
            ),
        )
        .layer(issuer.layer());
    let req = |auth: Option<String>, path: &str| {
        let mut b = http::Request::post(path);
        if let Some(a) = auth {
            b = b.header(http::header::AUTHORIZATION, a);
        }
        b.body(axum::body::Body::empty()).expect("request")
    };
    let r = app.clone().oneshot(req(None, "/mcp")).await.expect("call");
    assert_eq!(r.status(), 401);
    assert_eq!(
        header(&r, "www-authenticate"),
        format!("Bearer resource_metadata=\"{RESOURCE}{METADATA_PATH}\", scope=\"tools:call\"")
    );
    let r = app
        .clone()
        .oneshot(req(
            Some(format!("Bearer {}", issuer.token("tools:list"))),
            "/mcp",
        ))
        .await
        .expect("call");
    assert_eq!(r.status(), 403);
    assert!(header(&r, "www-authenticate").contains("error=\"insufficient_scope\""));
    let body: Value =
        serde_json::from_slice(&r.into_body().collect().await.expect("body").to_bytes())
            .expect("json");
    assert_eq!(body["error"], "insufficient_scope");
    let r = app
        .clone()
        .oneshot(req(
            Some(format!("Bearer {}", issuer.token("tools:call"))),
            "/mcp",
        ))
        .await
        .expect("call");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.into_body().collect().await.expect("body").to_bytes(),
        "hello agent-7"
    );
    // Metadata is public.
    let r = app
        .clone()
        .oneshot(
            http::Request::get(METADATA_PATH)
                .body(axum::body::Body::empty())
                .expect("request"),
        )
        .await
        .expect("call");
    assert_eq!(r.status(), 200);
    let doc: Value =
        serde_json::from_slice(&r.into_body().collect().await.expect("body").to_bytes())
            .expect("json");
    assert_eq!(doc["resource"], RESOURCE);
    assert_eq!(doc["authorization_servers"], json!([ISSUER]));
    assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
}

#[tokio::test]
async fn tonic_routes_get_grpc_statuses() {
    let issuer = Issuer::new();
    let svc = issuer.layer().layer(tonic::service::Routes::default());
    let req = |auth: Option<String>| {
        let mut b = http::Request::post("/pkg.Tools/Call")
            .header(http::header::CONTENT_TYPE, "application/grpc");
        if let Some(a) = auth {
            b = b.header(http::header::AUTHORIZATION, a);
        }
        b.body(tonic::body::Body::empty()).expect("request")
    };
    let r = svc.clone().oneshot(req(None)).await.expect("call");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "grpc-status"), "16", "UNAUTHENTICATED");
    assert!(header(&r, "www-authenticate").starts_with("Bearer resource_metadata="));
    let r = svc
        .clone()
        .oneshot(req(Some("Bearer not.a.token".into())))
        .await
        .expect("call");
    assert_eq!(header(&r, "grpc-status"), "16");
    assert!(header(&r, "www-authenticate").contains("error=\"invalid_token\""));
    let r = svc
        .clone()
        .oneshot(req(Some(format!("Bearer {}", issuer.token("tools:list")))))
        .await
        .expect("call");
    assert_eq!(header(&r, "grpc-status"), "7", "PERMISSION_DENIED");
    // A good token reaches the routes (which know no such method: UNIMPLEMENTED).
    let r = svc
        .oneshot(req(Some(format!("Bearer {}", issuer.token("tools:call")))))
        .await
        .expect("call");
    assert_eq!(header(&r, "grpc-status"), "12", "passed to the service");
}

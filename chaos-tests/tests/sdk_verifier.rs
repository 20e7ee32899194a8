//! The SDK against a real three-node cluster: a token from the SDK's token client (client
//! credentials with a secret) verifies with the SDK's verifier (JWKS from the nodes, the
//! revocation stream from another node than the one that revokes); a wrong audience or a
//! missing scope is refused with the RFC 6750 code; a token revoked through the node's
//! revocation endpoint, and then a whole client revoked by the admin, is refused within a
//! second of the acknowledgement, without a call per request; the tower layer answers 401 with
//! the RFC 9728 challenge and lets a good token through.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use authsec_api::v1;
use authsec_chaos_tests::oauth::Admin;
use authsec_chaos_tests::{Cluster, Options, OAUTH_ISSUER};
use authsec_sdk::layer::{BearerLayer, ResourceMetadata};
use authsec_sdk::token::{ClientAuth, TokenClient, TokenRequest};
use authsec_sdk::verify::{
    AccessClaims, BearerErrorCode, KeySource, RevocationSource, Verifier, VerifierConfig,
    VerifyError,
};
use tonic::codegen::http;
use tower::{Layer, ServiceExt};

const T: Duration = Duration::from_secs(60);
const ORDERS: &str = "https://orders.example";
/// What the revocation must take at most, from its acknowledgement to the verifier refusing.
const REVOCATION_BOUND: Duration = Duration::from_secs(1);

/// Poll the verifier until it refuses `token` as revoked; the time that took since `acked`.
async fn refused_within(
    v: &Verifier,
    token: &str,
    acked: Instant,
    bound: Duration,
) -> anyhow::Result<Duration> {
    loop {
        match v.verify(token, None).await {
            Err(VerifyError::Revoked) => return Ok(acked.elapsed()),
            Ok(_) => {}
            Err(e) => anyhow::bail!("refused for another reason than revocation: {e}"),
        }
        anyhow::ensure!(
            acked.elapsed() < bound,
            "the verifier still accepts the token {:?} after the revocation was acknowledged ({:?})",
            acked.elapsed(),
            v.revocation_status()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_tokens_verify_and_revocations_reach_the_verifier_within_a_second() -> anyhow::Result<()>
{
    authsec_chaos_tests::init_test_tracing();
    let mut c = Cluster::start(3, Options::default())?;
    c.wait_leader(&[1, 2, 3], T).await?;
    c.wait_issuing(&[1, 2, 3], T).await?;
    let admin = Admin(&c);
    admin
        .role("orders-reader", &["orders:read", "orders:list"])
        .await?;
    let secret = admin
        .client(v1::CreateClientRequest {
            client_id: "svc".into(),
            kind: v1::ClientKind::Service as i32,
            allowed_scopes: vec!["orders:*".into()],
            default_audience: ORDERS.into(),
            ..Default::default()
        })
        .await?;
    admin.bind("orders-reader", "client:svc").await?;
    let tls = c.https_roots()?;

    tracing::info!("phase: a token from the SDK client verifies with the SDK verifier");
    // Node 1 took the admin's writes and answered once it applied them: ask it.
    let tokens = TokenClient::new(
        format!("https://{}/oauth2/token", c.oauth_addr(1)?),
        tls.clone(),
        ClientAuth::secret_basic("svc", secret.as_str()),
    )?;
    let orders = TokenRequest::client_credentials()
        .scope("orders:read")
        .resource(ORDERS);
    let token = tokens.token(&orders).await?;
    assert_eq!(token.token_type, "Bearer");
    // Revocations from node 2 first: not the node that will take the revocation.
    let transport = c.client_transport()?;
    let channels = [2, 3, 1]
        .into_iter()
        .map(|i| Ok(transport.channel(&c.addr(i)?)?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let jwks_uris = (1..=3)
        .map(|i| {
            Ok(format!(
                "https://{}/.well-known/jwks.json",
                c.oauth_addr(i)?
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let keys = KeySource::Jwks {
        uris: jwks_uris,
        tls: tls.clone(),
    };
    let verifier = Verifier::new(
        VerifierConfig::new(OAUTH_ISSUER, ORDERS, keys.clone()),
        Some(RevocationSource::new(channels)?),
    )?;
    let status = verifier.wait_revocations(T).await?;
    tracing::info!(?status, "the verifier holds the revocation set");
    let claims = verifier.verify(token.secret(), None).await?;
    assert_eq!(claims.client_id, "svc");
    assert_eq!(claims.sub, "svc");
    assert_eq!(claims.iss, OAUTH_ISSUER);
    assert!(claims.has_scope("orders:read"), "{claims:?}");
    assert!(claims.index > 0, "the token carries its issuing index");

    tracing::info!("phase: a delegated token dies with its delegation, within a second");
    admin.role("orders-agent", &["orders:read"]).await?;
    let bot_secret = admin
        .client(v1::CreateClientRequest {
            client_id: "bot".into(),
            kind: v1::ClientKind::AiAgent as i32,
            allowed_scopes: vec!["orders:read".into()],
            ..Default::default()
        })
        .await?;
    admin.bind("orders-agent", "client:bot").await?;
    admin
        .delegate("d-bot", "client:svc", "bot", &["orders:read"])
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // The subject token is for authsec itself: what svc hands the agent to act for it.
    let subject = tokens
        .token(
            &TokenRequest::client_credentials()
                .scope("orders:read")
                .resource(OAUTH_ISSUER),
        )
        .await?;
    let bot = TokenClient::new(
        format!("https://{}/oauth2/token", c.oauth_addr(1)?),
        tls.clone(),
        ClientAuth::secret_basic("bot", bot_secret.as_str()),
    )?;
    let delegated = bot
        .token(
            &TokenRequest::token_exchange(subject.secret().to_owned())
                .scope("orders:read")
                .resource(ORDERS),
        )
        .await?;
    let dc = verifier.verify(delegated.secret(), None).await?;
    assert_eq!(dc.delegation.as_deref(), Some("d-bot"));
    assert_eq!((dc.sub.as_str(), dc.client_id.as_str()), ("svc", "bot"));
    admin.revoke_delegation("d-bot").await?;
    let took = refused_within(
        &verifier,
        delegated.secret(),
        Instant::now(),
        Duration::from_secs(1),
    )
    .await?;
    eprintln!("delegation d-bot revoked; the SDK verifier refused its delegated token {took:?} after the acknowledgement");
    verifier
        .verify(token.secret(), None)
        .await
        .context("svc's own token is not under the delegation")?;

    tracing::info!("phase: a wrong audience and a missing scope are refused with their codes");
    let billing = tokens
        .token(
            &TokenRequest::client_credentials()
                .scope("orders:read")
                .resource("https://billing.example"),
        )
        .await?;
    let e = verifier
        .verify(billing.secret(), None)
        .await
        .expect_err("another audience");
    assert!(matches!(e, VerifyError::Audience { .. }), "{e}");
    assert_eq!(e.code(), Some(BearerErrorCode::InvalidToken));
    let e = verifier
        .verify_scopes(token.secret(), None, &["orders:write"])
        .await
        .expect_err("a scope the token lacks");
    assert_eq!(
        e,
        VerifyError::InsufficientScope {
            missing: vec!["orders:write".into()]
        }
    );
    assert_eq!(e.code(), Some(BearerErrorCode::InsufficientScope));
    // Another resource's verifier refuses the orders token.
    let elsewhere = Verifier::new(
        VerifierConfig::new(OAUTH_ISSUER, "https://billing.example", keys),
        None,
    )?;
    assert!(matches!(
        elsewhere.verify(token.secret(), None).await,
        Err(VerifyError::Audience { .. })
    ));

    tracing::info!("phase: the layer challenges a request without a token and passes a good one");
    let app = BearerLayer::new(
        verifier.clone(),
        ResourceMetadata::new(ORDERS, [OAUTH_ISSUER]).scopes_supported(["orders:read"]),
    )
    .require_scopes(["orders:read"])
    .layer(tower::service_fn(
        |req: http::Request<tonic::body::Body>| async move {
            let who = req
                .extensions()
                .get::<Arc<AccessClaims>>()
                .map(|c| c.client_id.clone())
                .unwrap_or_default();
            let mut r = http::Response::new(tonic::body::Body::empty());
            if let Ok(v) = http::HeaderValue::from_str(&who) {
                r.headers_mut().insert("x-client-id", v);
            }
            Ok::<_, Infallible>(r)
        },
    ));
    let call = |auth: Option<String>| {
        let mut b = http::Request::get("/orders/42");
        if let Some(a) = auth {
            b = b.header(http::header::AUTHORIZATION, a);
        }
        app.clone()
            .oneshot(b.body(tonic::body::Body::empty()).expect("request"))
    };
    let header = |r: &http::Response<_>, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let r = call(None).await?;
    assert_eq!(r.status(), http::StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(&r, "www-authenticate"),
        format!(
            "Bearer resource_metadata=\"{ORDERS}/.well-known/oauth-protected-resource\", scope=\"orders:read\""
        )
    );
    let r = call(Some(token.authorization())).await?;
    assert_eq!(r.status(), http::StatusCode::OK);
    assert_eq!(header(&r, "x-client-id"), "svc");

    tracing::info!("phase: a token revoked through node 1 is refused within a second");
    // A second token of the same client, which only a subject revocation will reach.
    let other = tokens.fetch(&orders).await?;
    verifier.verify(other.secret(), None).await?;
    let r = c
        .https()?
        .post_form(
            &c.oauth_addr(1)?,
            "/oauth2/revoke",
            Some(("svc", &secret)),
            &[
                ("token", token.secret()),
                ("token_type_hint", "access_token"),
            ],
        )
        .await?;
    anyhow::ensure!(r.status == 200, "revoke: {r:?}");
    let took = refused_within(&verifier, token.secret(), Instant::now(), REVOCATION_BOUND).await?;
    eprintln!("token revoked via node 1; the SDK verifier (following node 2) refused it {took:?} after the acknowledgement");
    assert!(took < REVOCATION_BOUND);
    let r = call(Some(token.authorization())).await?;
    assert_eq!(r.status(), http::StatusCode::UNAUTHORIZED);
    assert!(
        header(&r, "www-authenticate").contains("error=\"invalid_token\""),
        "{r:?}"
    );
    verifier
        .verify(other.secret(), None)
        .await
        .context("only the revoked token is refused")?;

    tracing::info!("phase: the admin revokes the client's credentials: refused by index");
    let revoked = v1::revocation_service_client::RevocationServiceClient::new(c.channel(1).await?)
        .revoke(v1::RevokeRequest {
            target: Some(v1::revoke_request::Target::Subject("client:svc".into())),
        })
        .await?
        .into_inner();
    let acked = Instant::now();
    assert!(other.secret() != token.secret());
    let took = refused_within(&verifier, other.secret(), acked, REVOCATION_BOUND).await?;
    eprintln!(
        "client:svc revoked below index {}; the SDK verifier refused its token {took:?} after the acknowledgement",
        revoked.revoked_at_index
    );
    assert!(took < REVOCATION_BOUND);
    // A token issued after the revocation carries a later index and verifies.
    tokens.invalidate(&orders);
    let fresh = tokens.token(&orders).await?;
    let claims = verifier.verify(fresh.secret(), None).await?;
    assert!(
        claims.index >= revoked.revoked_at_index,
        "{} < {}",
        claims.index,
        revoked.revoked_at_index
    );

    tracing::info!("phase: the node the verifier follows dies; it follows the next one");
    c.kill9(2)?;
    // With node 2 gone (perhaps the leader), the revocation waits for a quorum again.
    let deadline = Instant::now() + T;
    loop {
        let r = c
            .https()?
            .post_form(
                &c.oauth_addr(1)?,
                "/oauth2/revoke",
                Some(("svc", &secret)),
                &[("token", fresh.secret())],
            )
            .await;
        match r {
            Ok(r) if r.status == 200 => break,
            other => {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "revoke without node 2: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let took = refused_within(&verifier, fresh.secret(), Instant::now(), REVOCATION_BOUND).await?;
    eprintln!("with node 2 dead, the SDK verifier refused a token revoked via node 1 {took:?} after the acknowledgement ({:?})", verifier.revocation_status());
    assert!(verifier.revocation_status().connected);
    Ok(())
}

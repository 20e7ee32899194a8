//! Delegated tokens through the HTTP layer of a real node: token exchange (RFC 8693) with
//! subject tokens from the cluster and from a trusted external identity provider (a JWKS served
//! over HTTPS by the test), the no-escalation invariant driven by random grants, actor tokens
//! that must name the caller, certificate-bound tokens for tls_client_auth, and the cap on
//! failed client authentications.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use authsec_api::v1;
use authsec_chaos_tests::oauth::{claims, Admin, Https, Resp};
use authsec_chaos_tests::{Cluster, Options, OAUTH_ISSUER, TRUST_DOMAIN};
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use base64::Engine;
use rand::{Rng, SeedableRng};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(60);
const IDP: &str = "https://idp.test";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The test's identity provider: one ES256 key and one Ed25519 key, both in its JWKS.
struct Idp {
    es: EcdsaKeyPair,
    ed: Ed25519KeyPair,
}

impl Idp {
    fn new() -> anyhow::Result<Self> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let es = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow!("keygen"))?;
        let ed = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| anyhow!("keygen"))?;
        Ok(Self {
            es: EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, es.as_ref())
                .map_err(|_| anyhow!("key"))?,
            ed: Ed25519KeyPair::from_pkcs8(ed.as_ref()).map_err(|_| anyhow!("key"))?,
        })
    }

    fn jwks(&self) -> String {
        let p = self.es.public_key().as_ref();
        json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "es", "use": "sig", "x": b64(&p[1..33]), "y": b64(&p[33..65])},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "use": "sig", "x": b64(self.ed.public_key().as_ref())},
        ]})
        .to_string()
    }

    fn es256(&self, claims: &Value) -> anyhow::Result<String> {
        let input = format!(
            "{}.{}",
            b64(json!({"alg": "ES256", "kid": "es", "typ": "JWT"})
                .to_string()
                .as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self
            .es
            .sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes())
            .map_err(|_| anyhow!("sign"))?;
        Ok(format!("{input}.{}", b64(sig.as_ref())))
    }

    fn eddsa(&self, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(json!({"alg": "EdDSA", "kid": "ed", "typ": "JWT"})
                .to_string()
                .as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        format!("{input}.{}", b64(self.ed.sign(input.as_bytes()).as_ref()))
    }

    fn person(&self, sub: &str, extra: Value) -> anyhow::Result<String> {
        let mut c = json!({"iss": IDP, "sub": sub, "aud": OAUTH_ISSUER, "iat": now_s(), "exp": now_s() + 300});
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        self.es256(&c)
    }
}

/// Serve `jwks` at `https://127.0.0.1:<port>/jwks` with a certificate the returned PEM roots.
async fn serve_jwks(jwks: String) -> anyhow::Result<(u16, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])?;
    params.is_ca = rcgen::IsCa::NoCa;
    let cert = params.self_signed(&key)?;
    let config = rustls::ServerConfig::builder_with_provider(authsec_tls::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| anyhow!("{e}"))?,
        )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, jwks) = (acceptor.clone(), jwks.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{jwks}",
                    jwks.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Ok((port, cert.pem()))
}

fn agent_req(id: &str, allowed: &[&str]) -> v1::CreateClientRequest {
    v1::CreateClientRequest {
        client_id: id.into(),
        kind: v1::ClientKind::AiAgent as i32,
        allowed_scopes: allowed.iter().map(|s| s.to_string()).collect(),
        default_audience: "https://orders.example".into(),
        ..Default::default()
    }
}

async fn exchange(
    h: &Https,
    addr: &str,
    agent: (&str, &str),
    subject: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<Resp> {
    let mut form = vec![
        ("grant_type", EXCHANGE),
        ("subject_token", subject),
        ("subject_token_type", JWT),
    ];
    form.extend_from_slice(extra);
    h.post_form(addr, "/oauth2/token", Some(agent), &form).await
}

/// A client-credentials token with `scope`.
async fn access_token(
    h: &Https,
    addr: &str,
    id: &str,
    secret: &str,
    scope: &str,
) -> anyhow::Result<String> {
    let r = h
        .client_credentials(addr, id, secret, &[("scope", scope)])
        .await?;
    anyhow::ensure!(r.status == 200, "token for {id}: {r:?}");
    Ok(r.json()?["access_token"]
        .as_str()
        .context("access_token")?
        .to_owned())
}

fn granted(r: &Resp) -> anyhow::Result<BTreeSet<String>> {
    anyhow::ensure!(r.status == 200, "{} {}", r.status, r.body);
    let t = r.json()?["access_token"]
        .as_str()
        .context("access_token")?
        .to_owned();
    Ok(claims(&t)?["scope"]
        .as_str()
        .unwrap_or("")
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegated_tokens_never_escalate() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    let idp = Idp::new()?;
    let (port, ca_pem) = serve_jwks(idp.jwks()).await?;
    let dir = tempfile::tempdir()?;
    let ca_file = dir.path().join("idp-ca.pem");
    std::fs::write(&ca_file, ca_pem)?;
    let c = Cluster::start(
        1,
        Options {
            oauth_extra: format!(
                "auth_failures_per_minute = 5\n[[oauth.trusted_issuers]]\nissuer = {IDP:?}\njwks_url = \"https://127.0.0.1:{port}/jwks\"\nalgorithms = [\"ES256\"]\nca_file = {:?}\nallow_internal = true\n",
                ca_file.display().to_string()
            ),
            ..Options::default()
        },
    )?;
    c.wait_leader(&[1], T).await?;
    c.wait_issuing(&[1], T).await?;
    let h = c.https()?;
    let addr = c.oauth_addr(1)?;
    let admin = Admin(&c);
    let alice = format!("person:{IDP}#alice");

    // Alice may read and write orders; the agent's role covers both; she delegates both.
    admin
        .role("orders-rw", &["orders:read", "orders:write"])
        .await?;
    admin.bind("orders-rw", &alice).await?;
    let agent = admin.client(agent_req("agent", &["orders:*"])).await?;
    admin.bind("orders-rw", "client:agent").await?;
    admin
        .delegate("d-alice", &alice, "agent", &["orders:read", "orders:write"])
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let me = ("agent", agent.as_str());

    // Alice's token from the trusted provider, traded by the agent.
    let subject = idp.person("alice", json!({}))?;
    let r = exchange(&h, &addr, me, &subject, &[]).await?;
    assert_eq!(
        granted(&r)?,
        BTreeSet::from(["orders:read".into(), "orders:write".into()])
    );
    let body = r.json()?;
    assert_eq!(body["issued_token_type"], ACCESS);
    let t = claims(body["access_token"].as_str().context("token")?)?;
    assert_eq!(t["sub"], "alice");
    assert_eq!(t["act"], json!({"sub": "agent"}));
    assert_eq!(t["client_id"], "agent");
    assert_eq!(t["authsec_delegation"], "d-alice");
    assert!(
        t["exp"].as_u64().context("exp")? <= now_s() + 120,
        "capped by the delegation"
    );
    let delegated = body["access_token"].as_str().context("token")?.to_owned();

    // Exactly the intersection; more is invalid_scope, never a silent cut.
    let r = exchange(
        &h,
        &addr,
        me,
        &subject,
        &[("scope", "orders:read orders:delete")],
    )
    .await?;
    assert_eq!(r.error(), "invalid_scope", "{r:?}");
    let r = exchange(&h, &addr, me, &subject, &[("scope", "orders:read")]).await?;
    assert_eq!(granted(&r)?, BTreeSet::from(["orders:read".into()]));
    // The agent's roles change: the next exchange grants what they now allow.
    admin.role("agent-read", &["orders:read"]).await?;
    admin.bind("agent-read", "client:agent").await?;
    admin.unbind("orders-rw", "client:agent").await?;
    let r = exchange(&h, &addr, me, &subject, &[("scope", "orders:write")]).await?;
    assert_eq!(r.error(), "invalid_scope", "{r:?}");
    let r = exchange(&h, &addr, me, &subject, &[]).await?;
    assert_eq!(granted(&r)?, BTreeSet::from(["orders:read".into()]));
    admin.bind("orders-rw", "client:agent").await?;

    // The external token must be exactly what the provider is trusted for.
    let wrong_iss = idp.es256(&json!({"iss": "https://evil.test", "sub": "alice", "aud": OAUTH_ISSUER, "exp": now_s() + 60}))?;
    let r = exchange(&h, &addr, me, &wrong_iss, &[]).await?;
    assert_eq!(r.error(), "invalid_grant", "wrong iss: {r:?}");
    let eddsa =
        idp.eddsa(&json!({"iss": IDP, "sub": "alice", "aud": OAUTH_ISSUER, "exp": now_s() + 60}));
    let r = exchange(&h, &addr, me, &eddsa, &[]).await?;
    assert_eq!(r.error(), "invalid_grant", "disallowed alg: {r:?}");
    assert!(r.body.contains("alg"), "{r:?}");
    let r = exchange(
        &h,
        &addr,
        me,
        &idp.person("alice", json!({"aud": "https://elsewhere"}))?,
        &[],
    )
    .await?;
    assert_eq!(r.error(), "invalid_grant", "wrong aud: {r:?}");
    let r = exchange(
        &h,
        &addr,
        me,
        &idp.person("alice", json!({"may_act": {"sub": "someone-else"}}))?,
        &[],
    )
    .await?;
    assert_eq!(r.error(), "invalid_grant", "may_act names another: {r:?}");
    let r = exchange(
        &h,
        &addr,
        me,
        &idp.person("alice", json!({"may_act": {"sub": "agent"}}))?,
        &[],
    )
    .await?;
    assert_eq!(r.status, 200, "may_act names the agent: {r:?}");
    let r = exchange(&h, &addr, me, &idp.person("bob", json!({}))?, &[]).await?;
    assert_eq!(r.error(), "invalid_grant", "no delegation from bob: {r:?}");

    // The actor token must name the caller.
    let svc = admin
        .client(v1::CreateClientRequest {
            client_id: "svc".into(),
            kind: v1::ClientKind::Service as i32,
            allowed_scopes: vec!["orders:*".into()],
            default_audience: OAUTH_ISSUER.into(),
            ..Default::default()
        })
        .await?;
    admin.bind("orders-rw", "client:svc").await?;
    let svc_token = access_token(&h, &addr, "svc", &svc, "orders:read").await?;
    let r = exchange(
        &h,
        &addr,
        me,
        &subject,
        &[("actor_token", &svc_token), ("actor_token_type", ACCESS)],
    )
    .await?;
    assert_eq!(r.error(), "invalid_grant", "actor names svc: {r:?}");
    let agent_token = access_token(&h, &addr, "agent", &agent, "orders:read").await?;
    let r = exchange(
        &h,
        &addr,
        me,
        &subject,
        &[("actor_token", &agent_token), ("actor_token_type", ACCESS)],
    )
    .await?;
    assert_eq!(r.status, 200, "actor names the agent: {r:?}");
    let r = exchange(&h, &addr, me, &subject, &[("actor_token", &agent_token)]).await?;
    assert_eq!(
        r.error(),
        "invalid_request",
        "actor_token without its type: {r:?}"
    );

    // A client-to-agent delegation from the client's own token, and its revocation.
    admin
        .delegate("d-svc", "client:svc", "agent", &["orders:read"])
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let r = exchange(&h, &addr, me, &svc_token, &[("subject_token_type", ACCESS)]).await;
    // subject_token_type given twice is a repeated parameter.
    assert_eq!(r?.error(), "invalid_request");
    let r = h
        .post_form(
            &addr,
            "/oauth2/token",
            Some(me),
            &[
                ("grant_type", EXCHANGE),
                ("subject_token", &svc_token),
                ("subject_token_type", ACCESS),
            ],
        )
        .await?;
    assert_eq!(granted(&r)?, BTreeSet::from(["orders:read".into()]));
    let via_svc = r.json()?["access_token"].as_str().context("t")?.to_owned();
    assert_eq!(claims(&via_svc)?["sub"], "svc");
    admin.revoke_delegation("d-alice").await?;
    for (t, active) in [(&delegated, false), (&via_svc, true)] {
        let r = h
            .post_form(&addr, "/oauth2/introspect", Some(me), &[("token", t)])
            .await?;
        assert_eq!(r.json()?["active"], active, "{r:?}");
    }
    let r = exchange(&h, &addr, me, &subject, &[]).await?;
    assert_eq!(r.error(), "invalid_grant", "revoked delegation: {r:?}");

    // No escalation, driven by random grants: whatever the roles, allow-list, grant and
    // request, a delegated token carries exactly the request when every part allows it, and
    // the exchange is refused otherwise.
    let seed = std::env::var("AUTHSEC_PROP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("random grants: seed {seed} (replay with AUTHSEC_PROP_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let universe = ["inv:a", "inv:b", "inv:c", "inv:d"];
    let bob = format!("person:{IDP}#bob");
    let bob_token = idp.person("bob", json!({}))?;
    admin.bind("bob-role", &bob).await.ok();
    let agent2 = admin.client(agent_req("agent2", &universe)).await?;
    let me2 = ("agent2", agent2.as_str());
    // Non-empty subsets (the rules refuse empty roles and grants).
    fn subset<'a>(rng: &mut rand::rngs::StdRng, from: &[&'a str], p: f64) -> Vec<&'a str> {
        let mut s: Vec<&str> = from.iter().copied().filter(|_| rng.gen_bool(p)).collect();
        if s.is_empty() && !from.is_empty() {
            s.push(from[rng.gen_range(0..from.len())]);
        }
        s
    }
    let pick = |rng: &mut rand::rngs::StdRng| subset(rng, &universe, 0.75);
    // Mostly grants the rules accept and requests inside them, so both outcomes are common.
    let grant_from = |rng: &mut rand::rngs::StdRng, inter: &[&'static str]| {
        if !inter.is_empty() && rng.gen_bool(0.8) {
            subset(rng, inter, 0.7)
        } else {
            subset(rng, &universe, 0.5)
        }
    };
    let (mut refused, mut granted_n) = (0, 0);
    for case in 0..40 {
        let (bob_perms, agent_perms, allow) = (pick(&mut rng), pick(&mut rng), pick(&mut rng));
        let inter: Vec<&'static str> = universe
            .iter()
            .copied()
            .filter(|s| bob_perms.contains(s) && agent_perms.contains(s) && allow.contains(s))
            .collect();
        let grant = grant_from(&mut rng, &inter);
        admin.role("bob-role", &bob_perms).await?;
        admin.bind("bob-role", &bob).await.ok();
        admin.role("agent2-role", &agent_perms).await?;
        admin.bind("agent2-role", "client:agent2").await.ok();
        admin.allow("agent2", &allow).await?;
        let id = format!("p-{case}");
        let created = admin.delegate(&id, &bob, "agent2", &grant).await;
        // The roles move after the grant: the exchange must follow them.
        let keep = |rng: &mut rand::rngs::StdRng, was: &Vec<&'static str>| {
            if rng.gen_bool(0.5) {
                was.clone()
            } else {
                subset(rng, &universe, 0.75)
            }
        };
        let (bob_now, agent_now) = (keep(&mut rng, &bob_perms), keep(&mut rng, &agent_perms));
        admin.role("bob-role", &bob_now).await?;
        admin.role("agent2-role", &agent_now).await?;
        let request: Vec<&str> = if rng.gen_bool(0.7) {
            subset(&mut rng, &grant, 0.6)
        } else {
            pick(&mut rng)
        };
        let r = exchange(&h, &addr, me2, &bob_token, &[("scope", &request.join(" "))]).await?;
        let allowed = created.is_ok()
            && request.iter().all(|s| {
                grant.contains(s)
                    && bob_now.contains(s)
                    && agent_now.contains(s)
                    && allow.contains(s)
            });
        if allowed {
            let want: BTreeSet<String> = request.iter().map(|s| s.to_string()).collect();
            assert_eq!(granted(&r)?, want, "case {case} (seed {seed}): {r:?}");
            granted_n += 1;
        } else {
            assert!(
                r.status == 400 && ["invalid_scope", "invalid_grant"].contains(&r.error().as_str()),
                "case {case} (seed {seed}): bob {bob_now:?} agent {agent_now:?} allow {allow:?} grant {grant:?} (created: {}) request {request:?} got {r:?}",
                created.is_ok()
            );
            refused += 1;
        }
        if created.is_ok() {
            admin.revoke_delegation(&id).await?;
        }
    }
    eprintln!("random grants: {granted_n} granted exactly, {refused} refused");
    assert!(
        granted_n >= 5 && refused >= 5,
        "the random cases should exercise both outcomes (seed {seed})"
    );

    // tls_client_auth: a workload's X.509-SVID is its client credential, and its token is
    // bound to that certificate.
    let entry = v1::entry_service_client::EntryServiceClient::new(c.channel(1).await?)
        .create_entry(v1::CreateEntryRequest {
            spiffe_id: format!("spiffe://{TRUST_DOMAIN}/ci/job"),
            ..Default::default()
        })
        .await?
        .into_inner()
        .entry
        .context("entry")?
        .entry_id;
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    let svid = v1::svid_service_client::SvidServiceClient::new(c.channel(1).await?)
        .mint_x509_svid(v1::MintX509SvidRequest {
            entry_id: entry,
            csr_der: csr.der().to_vec(),
            ttl_seconds: 0,
        })
        .await?
        .into_inner();
    admin
        .client(v1::CreateClientRequest {
            client_id: "ci".into(),
            kind: v1::ClientKind::Ci as i32,
            allowed_scopes: vec!["orders:*".into()],
            default_audience: "https://orders.example".into(),
            spiffe_id: format!("spiffe://{TRUST_DOMAIN}/ci/job"),
            ..Default::default()
        })
        .await?;
    admin.bind("orders-rw", "client:ci").await?;
    let chain: Vec<CertificateDer<'static>> = svid
        .cert_chain_der
        .iter()
        .map(|d| CertificateDer::from(d.clone()))
        .collect();
    let mtls = Https::with_client_cert(
        &c.dir.path().join("pki").join("ca.crt"),
        chain.clone(),
        PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| anyhow!("{e}"))?,
    )?;
    let r = mtls
        .post_form(
            &addr,
            "/oauth2/token",
            None,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "ci"),
                ("scope", "orders:read"),
            ],
        )
        .await?;
    anyhow::ensure!(r.status == 200, "tls_client_auth: {r:?}");
    let t = claims(r.json()?["access_token"].as_str().context("token")?)?;
    assert_eq!(t["client_id"], "ci");
    assert_eq!(
        t["cnf"]["x5t#S256"],
        b64(&sha2::Sha256::digest(chain[0].as_ref())),
        "certificate-bound"
    );

    // The same workload authenticates with a JWT-SVID instead (the OAuth SPIFFE client
    // authentication draft): aud is the issuer; one for another audience is refused.
    let jwt_svid = |aud: &str| {
        let (c, aud) = (&c, aud.to_owned());
        async move {
            let entry = v1::entry_service_client::EntryServiceClient::new(c.channel(1).await?)
                .list_entries(v1::ListEntriesRequest {
                    spiffe_id: format!("spiffe://{TRUST_DOMAIN}/ci/job"),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .entries
                .into_iter()
                .next()
                .context("the ci entry")?
                .entry_id;
            anyhow::Ok(
                v1::svid_service_client::SvidServiceClient::new(c.channel(1).await?)
                    .mint_jwt_svid(v1::MintJwtSvidRequest {
                        entry_id: entry,
                        audience: vec![aud],
                        ttl_seconds: 0,
                    })
                    .await?
                    .into_inner()
                    .token,
            )
        }
    };
    const JWT_SPIFFE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe";
    let svid_token = jwt_svid(OAUTH_ISSUER).await?;
    let r = h
        .post_form(
            &addr,
            "/oauth2/token",
            None,
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", JWT_SPIFFE),
                ("client_assertion", &svid_token),
                ("scope", "orders:read"),
            ],
        )
        .await?;
    anyhow::ensure!(r.status == 200, "JWT-SVID client assertion: {r:?}");
    assert_eq!(
        claims(r.json()?["access_token"].as_str().context("token")?)?["client_id"],
        "ci"
    );
    let elsewhere = jwt_svid("https://elsewhere.example").await?;
    let r = h
        .post_form(
            &addr,
            "/oauth2/token",
            None,
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", JWT_SPIFFE),
                ("client_assertion", &elsewhere),
            ],
        )
        .await?;
    assert_eq!(
        (r.status, r.error().as_str()),
        (401, "invalid_client"),
        "{r:?}"
    );

    // Failed authentications are capped per client id and per address (5 a minute here):
    // the refused JWT-SVID above was this address's first, so four wrong secrets fill it,
    // and then even the right secret waits.
    for _ in 0..4 {
        let r = h
            .client_credentials(&addr, "svc", "as_cs_wrong", &[])
            .await?;
        assert_eq!(r.status, 401, "{r:?}");
    }
    let r = h.client_credentials(&addr, "svc", &svc, &[]).await?;
    assert_eq!(r.status, 429, "{r:?}");
    assert!(r.header("retry-after").is_some(), "{r:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eddsa_tokens_by_configuration_verify_with_the_jwks() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    let c = Cluster::start(
        1,
        Options {
            oauth_extra: "alg = \"EdDSA\"".into(),
            ..Options::default()
        },
    )?;
    c.wait_leader(&[1], T).await?;
    c.wait_issuing(&[1], T).await?;
    let h = c.https()?;
    let addr = c.oauth_addr(1)?;
    let admin = Admin(&c);
    admin.role("reader", &["orders:read"]).await?;
    let secret = admin
        .client(v1::CreateClientRequest {
            client_id: "svc".into(),
            kind: v1::ClientKind::Service as i32,
            allowed_scopes: vec!["orders:read".into()],
            default_audience: "https://orders.example".into(),
            ..Default::default()
        })
        .await?;
    admin.bind("reader", "client:svc").await?;
    let r = h
        .client_credentials(&addr, "svc", &secret, &[("scope", "orders:read")])
        .await?;
    anyhow::ensure!(r.status == 200, "{r:?}");
    let token = r.json()?["access_token"]
        .as_str()
        .context("token")?
        .to_owned();
    let head = authsec_chaos_tests::oauth::header(&token)?;
    assert_eq!(head["alg"], "EdDSA");
    assert_eq!(head["typ"], "at+jwt");
    let jwks = h
        .request(&addr, "GET", "/.well-known/jwks.json", &[], b"")
        .await?
        .json()?;
    let jwk = jwks["keys"]
        .as_array()
        .context("keys")?
        .iter()
        .find(|k| k["kid"] == head["kid"])
        .context("the token's kid in the JWKS")?;
    assert_eq!(
        (jwk["kty"].as_str(), jwk["crv"].as_str()),
        (Some("OKP"), Some("Ed25519"))
    );
    let x =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(jwk["x"].as_str().context("x")?)?;
    let (input, sig) = token.rsplit_once('.').context("JWS")?;
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig)?;
    signature::UnparsedPublicKey::new(&signature::ED25519, &x)
        .verify(input.as_bytes(), &sig)
        .map_err(|_| anyhow!("the EdDSA token does not verify with the JWKS key"))?;
    Ok(())
}

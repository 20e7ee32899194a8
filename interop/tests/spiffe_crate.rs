//! The published `spiffe` crate (rust-spiffe), which authsec did not write, against a real
//! authsec agent serving three real nodes: it fetches X.509-SVIDs, JWT-SVIDs and bundles, and
//! they validate by its own rules (SVID profile, JWT-SVID signature, audience and expiry against
//! the JWT bundle it fetched).

use std::time::{Duration, Instant};

use authsec_api::v1;
use authsec_chaos_tests::{AgentProc, Cluster, Options, TRUST_DOMAIN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spiffe_crate_fetches_and_validates_what_the_agent_serves() -> anyhow::Result<()> {
    let c = Cluster::start(3, Options::default())?;
    c.wait_issuing(&[1, 2, 3], Duration::from_secs(30)).await?;
    let t = v1::agent_service_client::AgentServiceClient::new(c.channel(1).await?)
        .create_join_token(v1::CreateAgentTokenRequest {
            ttl_seconds: 600,
            name: "interop".into(),
        })
        .await?
        .into_inner();
    // This test process is the workload: its uid and its own executable's path.
    let exe = std::env::current_exe()?;
    let want = format!("spiffe://{TRUST_DOMAIN}/interop/rust-spiffe");
    v1::entry_service_client::EntryServiceClient::new(c.channel(1).await?)
        .create_entry(v1::CreateEntryRequest {
            spiffe_id: want.clone(),
            parent_id: t.agent_id.clone(),
            selectors: vec![
                format!("unix:uid:{}", authsec_chaos_tests::current_uid()),
                format!("unix:path:{}", exe.display()),
            ],
            ..Default::default()
        })
        .await?;
    let dir = tempfile::tempdir()?;
    let mut agent = AgentProc::spawn(&c, dir.path(), &[1, 2, 3], &t.token)?;
    agent.wait_serving(Duration::from_secs(30))?;
    let endpoint = format!("unix:{}", agent.socket.display());
    let client = spiffe::WorkloadApiClient::connect_to(&endpoint).await?;

    // X.509: the SVID parses as an X.509-SVID (the crate checks the SPIFFE profile) and names
    // this workload; its bundle is our trust domain's.
    let deadline = Instant::now() + Duration::from_secs(20);
    let ctx = loop {
        match client.fetch_x509_context().await {
            Ok(ctx) => break ctx,
            Err(e) => {
                anyhow::ensure!(Instant::now() < deadline, "no X.509 context: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let svid = ctx
        .default_svid()
        .ok_or_else(|| anyhow::anyhow!("no SVID"))?;
    assert_eq!(svid.spiffe_id().to_string(), want);
    assert_eq!(
        svid.cert_chain().len(),
        2,
        "leaf and the node's intermediate"
    );
    let td = spiffe::TrustDomain::new(TRUST_DOMAIN)?;
    let bundle = ctx
        .bundle_set()
        .get(&td)
        .ok_or_else(|| anyhow::anyhow!("no bundle for {TRUST_DOMAIN}"))?;
    assert!(!bundle.authorities().is_empty());
    // The chain verifies against that bundle (with rustls' webpki, as a TLS peer would).
    {
        let mut roots = rustls::RootCertStore::empty();
        for a in bundle.authorities() {
            roots.add(rustls::pki_types::CertificateDer::from(
                a.as_bytes().to_vec(),
            ))?;
        }
        let leaf = rustls::pki_types::CertificateDer::from(svid.leaf().as_bytes().to_vec());
        let inter: Vec<_> = svid.cert_chain()[1..]
            .iter()
            .map(|c| rustls::pki_types::CertificateDer::from(c.as_bytes().to_vec()))
            .collect();
        let parsed = rustls::server::ParsedCertificate::try_from(&leaf)?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &inter,
            rustls::pki_types::UnixTime::now(),
            provider.signature_verification_algorithms.all,
        )?;
    }
    let bundles = client.fetch_x509_bundles().await?;
    assert!(bundles.get(&td).is_some());

    // JWT: the crate validates the JWT-SVID's signature, audience and expiry against the JWT
    // bundle it fetched itself; a wrong audience is refused.
    let jwt = client.fetch_jwt_svid(["interop-aud"], None).await?;
    assert_eq!(jwt.spiffe_id().to_string(), want);
    let jwt_bundles = client.fetch_jwt_bundles().await?;
    let checked = spiffe::JwtSvid::parse_and_validate(jwt.token(), &jwt_bundles, &["interop-aud"])?;
    assert_eq!(checked.spiffe_id().to_string(), want);
    eprintln!(
        "validated JWT-SVID of {} with audience {:?}",
        checked.spiffe_id(),
        checked.audience()
    );
    assert!(
        spiffe::JwtSvid::parse_and_validate(jwt.token(), &jwt_bundles, &["other-aud"]).is_err()
    );
    // And the agent's own validation, through the crate.
    let v = client
        .validate_jwt_token("interop-aud", jwt.token())
        .await?;
    assert_eq!(v.spiffe_id().to_string(), want);

    // The crate's X509Source follows the agent.
    let source = spiffe::X509Source::builder()
        .endpoint(&endpoint)
        .build()
        .await?;
    assert_eq!(source.svid()?.spiffe_id().to_string(), want);
    drop(agent);
    Ok(())
}

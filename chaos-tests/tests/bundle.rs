//! The trust bundle, as every node serves it: the SPIFFE bundle format (a JWKS with
//! `use: x509-svid`, `spiffe_sequence`, `spiffe_refresh_hint`), the same from every node,
//! readable without a client certificate, and as PEM for `openssl verify`.

use std::time::Duration;

use authsec_api::v1;
use authsec_chaos_tests::{Cluster, Options};
use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_serves_the_same_spiffe_bundle() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    let c = Cluster::start(3, Options::default())?;
    c.wait_leader(&[1, 2, 3], T).await?;
    // Every node has published its signing keys before it signs: the JWT keys are in.
    c.wait_issuing(&[1, 2, 3], T).await?;
    c.wait_converged(&[1, 2, 3], 0, T).await?;
    let root: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(c.admin_dir().join("ca.crt"))?.collect::<Result<_, _>>()?;

    let mut seen = Vec::new();
    for id in 1..=3 {
        let b = v1::bundle_service_client::BundleServiceClient::new(c.channel(id).await?)
            .get_bundle(v1::GetBundleRequest {})
            .await?
            .into_inner();
        assert_eq!(b.trust_domain, authsec_chaos_tests::TRUST_DOMAIN);
        assert_eq!(b.x509_authorities_der, vec![root[0].to_vec()]);
        let doc: serde_json::Value = serde_json::from_str(&b.spiffe_bundle_json)?;
        assert_eq!(doc["spiffe_sequence"].as_u64(), Some(b.sequence));
        assert!(
            b.sequence >= 7,
            "the root, then each node's JWT key published and activated: {}",
            b.sequence
        );
        assert_eq!(doc["spiffe_refresh_hint"].as_u64(), Some(300));
        let keys = doc["keys"].as_array().cloned().unwrap_or_default();
        let (x509, jwt): (Vec<_>, Vec<_>) = keys.iter().partition(|k| k["use"] == "x509-svid");
        assert_eq!(x509.len(), 1, "the root: {doc}");
        assert!(
            x509[0].get("kid").is_none(),
            "X.509 authorities have no kid"
        );
        assert_eq!(x509[0]["kty"], "EC");
        assert_eq!(x509[0]["crv"], "P-256");
        let x5c = base64::engine::general_purpose::STANDARD
            .decode(x509[0]["x5c"][0].as_str().unwrap_or(""))?;
        assert_eq!(x5c, root[0].to_vec(), "x5c holds the root certificate");
        // One ES256 key per node, each with a kid.
        assert_eq!(jwt.len(), 3, "{doc}");
        let mut kids: Vec<&str> = jwt.iter().filter_map(|k| k["kid"].as_str()).collect();
        kids.sort();
        kids.dedup();
        assert_eq!(kids.len(), 3);
        for k in &jwt {
            assert_eq!(k["use"], "jwt-svid");
            assert_eq!(k["crv"], "P-256");
        }
        seen.push(b.spiffe_bundle_json);
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "one bundle on every node"
    );

    // Public: a caller with no client certificate, that only trusts the root, reads it.
    let td = authsec_domain::TrustDomain::parse(authsec_chaos_tests::TRUST_DOMAIN)?;
    let anon = authsec_tls::tls::pinned_client_config(td, &authsec_domain::fingerprint(&root[0]))?;
    let ch = authsec_tls::transport::tls_channel(c.addr(2)?, anon)?;
    let b = v1::bundle_service_client::BundleServiceClient::new(ch)
        .get_bundle(v1::GetBundleRequest {})
        .await?
        .into_inner();
    assert_eq!(b.spiffe_bundle_json, seen[0]);
    // ...and nothing else.
    let ch = authsec_tls::transport::tls_channel(
        c.addr(2)?,
        authsec_tls::tls::pinned_client_config(
            authsec_domain::TrustDomain::parse(authsec_chaos_tests::TRUST_DOMAIN)?,
            &authsec_domain::fingerprint(&root[0]),
        )?,
    )?;
    let refused = v1::client_service_client::ClientServiceClient::new(ch)
        .list_clients(v1::ListClientsRequest::default())
        .await
        .expect_err("the admin API needs a client certificate");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // The CLI's PEM is what `openssl verify -CAfile` takes.
    let out = std::process::Command::new(authsec_chaos_tests::authsec_bin()?)
        .args([
            "bundle",
            "show",
            "--format",
            "pem",
            "--endpoint",
            &c.addr(3)?,
        ])
        .arg("--admin-dir")
        .arg(c.admin_dir())
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&out.stdout).collect::<Result<_, _>>()?;
    assert_eq!(pem, root);
    Ok(())
}

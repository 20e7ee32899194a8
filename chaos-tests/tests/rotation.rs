//! Node certificates rotate under write load with no failed request.
//!
//! A cluster made of one `init` node (which holds the KEK) and two joined nodes (which do
//! not, so they renew through it) runs with a short certificate lifetime while writers hammer
//! it, half of them opening a new TLS connection for every request (so every handshake meets
//! whatever certificate the node serves at that moment). Every request must succeed, and
//! every node must have renewed. Half way, the trust domain's root is rotated under them
//! (prepared, then activated): each node re-issues its certificate under the new root while
//! the writers, holding only the old root, go on.
//!
//! The default run is short (30 s certificates, 65 s of load: two renewals per node). The
//! issue's acceptance run is `scripts/rotation.sh` (60 s certificates, 5 minutes):
//! `AUTHSEC_ROTATION_TTL_S=60 AUTHSEC_ROTATION_SECS=300`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use authsec_api::v1;
use authsec_chaos_tests::{register_req, Cluster, Options};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_certificates_and_their_root_rotate_under_load_without_a_failed_request(
) -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    let ttl = env_u64("AUTHSEC_ROTATION_TTL_S", 30);
    let secs = env_u64("AUTHSEC_ROTATION_SECS", 65);
    let env: BTreeMap<u64, Vec<(String, String)>> = (1..=3)
        .map(|id| (id, vec![("AUTHSEC_CERT_TTL_S".to_owned(), ttl.to_string())]))
        .collect();
    let mut c = Cluster::start(
        1,
        Options {
            spare: 2,
            env,
            ..Options::default()
        },
    )?;
    let t = Duration::from_secs(60);
    c.wait_leader(&[1], t).await?;
    for id in [2u64, 3] {
        c.join(1, id, t).await?;
    }
    let cert_of = |c: &Cluster, id: u64| -> anyhow::Result<CertificateDer<'static>> {
        Ok(CertificateDer::from_pem_file(
            c.data_dir(id)?.join("tls").join("node.crt"),
        )?)
    };
    let initial: Vec<_> = (1..=3)
        .map(|id| cert_of(&c, id))
        .collect::<Result<_, _>>()?;

    let addrs: Vec<String> = (1..=3).map(|id| c.addr(id)).collect::<Result<_, _>>()?;
    let transport = c.client_transport()?;
    let (ok, failed, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut writers = Vec::new();
    for w in 0..4usize {
        let (ok, failed, stop, addrs, transport) = (
            ok.clone(),
            failed.clone(),
            stop.clone(),
            addrs.clone(),
            transport.clone(),
        );
        writers.push(tokio::spawn(async move {
            let long_lived: Vec<_> = addrs
                .iter()
                .map(|a| transport.channel(a))
                .collect::<Result<_, _>>()
                .expect("channels");
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let i = (n + w) % addrs.len();
                // Even writers: a new connection (and handshake) for every request.
                let ch = if w % 2 == 0 {
                    transport.channel(&addrs[i]).expect("channel")
                } else {
                    long_lived[i].clone()
                };
                let mut req = tonic::Request::new(register_req(&format!("rot-w{w}-{n:06}")));
                req.set_timeout(Duration::from_secs(10));
                match v1::client_service_client::ClientServiceClient::new(ch)
                    .register_client(req)
                    .await
                {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(s) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(writer = w, node = i + 1, code = ?s.code(), message = s.message(), "request failed");
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    // The load runs for `secs`. A third of the way in, a new root is prepared; half way, it
    // is activated: every node re-issues its certificate under it while the writers, which
    // hold only the old root, go on (the nodes serve the old root's cross-certificate).
    tokio::time::sleep(Duration::from_secs(secs / 3)).await;
    let mut roots = v1::root_service_client::RootServiceClient::new(c.channel(1).await?);
    let prepared = roots
        .prepare_root(v1::PrepareRootRequest {})
        .await?
        .into_inner()
        .root
        .context("the prepared root")?;
    tokio::time::sleep(Duration::from_secs(secs / 2 - secs / 3)).await;
    roots
        .activate_root(v1::ActivateRootRequest {
            fingerprint: prepared.fingerprint.clone(),
            force: true,
        })
        .await?;
    tokio::time::sleep(Duration::from_secs(secs - secs / 2)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await?;
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let mut renewals = Vec::new();
    for id in 1..=3u64 {
        let log = std::fs::read_to_string(&c.nodes[&id].log)?;
        renewals.push(log.matches("node certificate renewed").count());
    }
    println!(
        "rotation: ttl {ttl} s, {secs} s of load: {ok} requests succeeded, {failed} failed; renewals per node {renewals:?}"
    );
    assert_eq!(failed, 0, "no request fails while certificates rotate");
    assert!(ok > 100, "the load ran ({ok} requests)");
    // At half-life: about secs / (ttl / 2) renewals each; allow one for start-up skew.
    let expected = (secs / (ttl / 2)).saturating_sub(1).max(1) as usize;
    for (i, n) in renewals.iter().enumerate() {
        assert!(
            *n >= expected,
            "node {} renewed {n} times, expected at least {expected}",
            i + 1
        );
        assert_ne!(
            cert_of(&c, i as u64 + 1)?,
            initial[i],
            "node {}'s certificate on disk is the renewed one",
            i + 1
        );
    }
    for id in 1..=3u64 {
        let chain = c.served_chain(id).await?;
        let leaf = chain.first().context("no certificate served")?;
        let (_, leaf) = x509_parser::parse_x509_certificate(leaf)?;
        let (_, root) = x509_parser::parse_x509_certificate(&prepared.cert_der)?;
        assert!(
            leaf.verify_signature(Some(root.public_key())).is_ok(),
            "node {id} serves a certificate of the new root"
        );
    }
    c.wait_converged(&[1, 2, 3], ok, t).await?;
    Ok(())
}

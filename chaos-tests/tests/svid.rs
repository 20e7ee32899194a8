//! Credentials from any node, against real clusters over mutual TLS: X.509- and JWT-SVIDs from
//! every node that verify with any node's bundle; an agent that mints for the entries it
//! parents and nothing else; bad input that is refused with a reason and writes nothing;
//! issuance that goes on while the leader is killed; and the freshness bound, which stops a
//! node cut off from the quorum (and a deposed leader with the follower it still reaches) and
//! lets it resume by itself.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use authsec_api::v1::{self, svid_service_client::SvidServiceClient};
use authsec_chaos_tests::{staleness_env, Cluster, Options, TRUST_DOMAIN};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::Channel;

const T: Duration = Duration::from_secs(60);

fn csr() -> anyhow::Result<(rcgen::KeyPair, Vec<u8>)> {
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    Ok((key, csr.der().to_vec()))
}

async fn svids(c: &Cluster, id: u64) -> anyhow::Result<SvidServiceClient<Channel>> {
    Ok(SvidServiceClient::new(c.channel(id).await?))
}

async fn create_entry(
    c: &Cluster,
    via: u64,
    path: &str,
    parent: Option<&str>,
) -> anyhow::Result<String> {
    let r = v1::entry_service_client::EntryServiceClient::new(c.channel(via).await?)
        .create_entry(v1::CreateEntryRequest {
            spiffe_id: format!("spiffe://{TRUST_DOMAIN}/{path}"),
            parent_id: parent
                .map(|p| format!("spiffe://{TRUST_DOMAIN}/{p}"))
                .unwrap_or_default(),
            selectors: if parent.is_some() {
                vec!["unix:uid:1000".into()]
            } else {
                vec![]
            },
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(r.entry.map(|e| e.entry_id).unwrap_or_default())
}

async fn mint(
    client: &mut SvidServiceClient<Channel>,
    entry: &str,
    csr: &[u8],
) -> Result<v1::MintX509SvidResponse, tonic::Status> {
    let mut req = tonic::Request::new(v1::MintX509SvidRequest {
        entry_id: entry.into(),
        csr_der: csr.to_vec(),
        ttl_seconds: 0,
    });
    req.set_timeout(Duration::from_secs(3));
    client.mint_x509_svid(req).await.map(|r| r.into_inner())
}

/// `leaf` is signed by `chain[1]`, which is signed by one of `roots`.
fn verify_chain(chain: &[Vec<u8>], roots: &[Vec<u8>]) -> anyhow::Result<String> {
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0])?;
    let (_, ca) = x509_parser::parse_x509_certificate(&chain[1])?;
    leaf.verify_signature(Some(ca.public_key()))
        .map_err(|e| anyhow::anyhow!("leaf: {e}"))?;
    let ok = roots.iter().any(|r| {
        x509_parser::parse_x509_certificate(r)
            .map(|(_, root)| ca.verify_signature(Some(root.public_key())).is_ok())
            .unwrap_or(false)
    });
    anyhow::ensure!(ok, "the intermediate does not chain to the bundle's roots");
    let uris: Vec<String> = leaf
        .subject_alternative_name()?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    anyhow::ensure!(uris.len() == 1, "URI SANs: {uris:?}");
    Ok(uris[0].clone())
}

/// The ES256 key of `kid` from a SPIFFE bundle document, and a check of `token` with it.
fn verify_jwt(token: &str, bundle_json: &str, audience: &str) -> anyhow::Result<serde_json::Value> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s);
    let parts: Vec<&str> = token.split('.').collect();
    anyhow::ensure!(parts.len() == 3, "not a compact JWS");
    let header: serde_json::Value = serde_json::from_slice(&b64(parts[0])?)?;
    let claims: serde_json::Value = serde_json::from_slice(&b64(parts[1])?)?;
    let doc: serde_json::Value = serde_json::from_str(bundle_json)?;
    let jwk = doc["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|k| k["use"] == "jwt-svid" && k["kid"] == header["kid"])
        .ok_or_else(|| anyhow::anyhow!("kid {} is not in the bundle", header["kid"]))?;
    let mut point = vec![4u8];
    point.extend(b64(jwk["x"].as_str().unwrap_or(""))?);
    point.extend(b64(jwk["y"].as_str().unwrap_or(""))?);
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        point,
    )
    .verify(
        format!("{}.{}", parts[0], parts[1]).as_bytes(),
        &b64(parts[2])?,
    )
    .map_err(|_| anyhow::anyhow!("the signature does not verify"))?;
    anyhow::ensure!(header["alg"] == "ES256", "{header}");
    anyhow::ensure!(claims["aud"] == audience, "{claims}");
    Ok(claims)
}

async fn bundle(c: &Cluster, id: u64) -> anyhow::Result<v1::Bundle> {
    Ok(
        v1::bundle_service_client::BundleServiceClient::new(c.channel(id).await?)
            .get_bundle(v1::GetBundleRequest {})
            .await?
            .into_inner(),
    )
}

/// Mutual TLS as the holder of an X.509-SVID.
fn svid_transport(
    chain: &[Vec<u8>],
    key: &rcgen::KeyPair,
    roots: &[Vec<u8>],
) -> anyhow::Result<authsec_tls::Transport> {
    let td = authsec_domain::TrustDomain::parse(TRUST_DOMAIN)?;
    let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let state = authsec_tls::tls::TlsState::new(
        td,
        roots
            .iter()
            .map(|r| CertificateDer::from(r.clone()))
            .collect(),
        chain
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect(),
        key,
    )?;
    Ok(authsec_tls::Transport::mutual_tls(state))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svids_from_every_node_verify_everywhere_and_bad_input_writes_nothing() -> anyhow::Result<()>
{
    authsec_chaos_tests::init_test_tracing();
    let c = Cluster::start(3, Options::default())?;
    c.wait_leader(&[1, 2, 3], T).await?;
    c.wait_issuing(&[1, 2, 3], T).await?;
    let agent_entry = create_entry(&c, 1, "agent/a1", None).await?;
    let web = create_entry(&c, 1, "web", Some("agent/a1")).await?;
    let other = create_entry(&c, 1, "db", Some("agent/a2")).await?;
    c.wait_converged(&[1, 2, 3], 0, T).await?;

    // Every credential minted before the refusals: their issuance records reach the log
    // after the answer, so the head is read once they are all in.
    let mut minted = BTreeSet::new();
    // An admin mints on every node; each chain verifies with another node's bundle.
    for id in 1..=3u64 {
        let (_, der) = csr()?;
        let r = mint(&mut svids(&c, id).await?, &web, &der).await?;
        minted.insert(r.serial_hex.clone());
        assert_eq!(r.issuer_node_id, id);
        let roots = bundle(&c, id % 3 + 1).await?.x509_authorities_der;
        let uri = verify_chain(&r.cert_chain_der, &roots)?;
        assert_eq!(uri, format!("spiffe://{TRUST_DOMAIN}/web"));
        let jwt = svids(&c, id)
            .await?
            .mint_jwt_svid(v1::MintJwtSvidRequest {
                entry_id: web.clone(),
                audience: vec!["orders".into()],
                ttl_seconds: 0,
            })
            .await?
            .into_inner();
        minted.insert(jwt.jti.clone());
        let claims = verify_jwt(
            &jwt.token,
            &bundle(&c, id % 3 + 1).await?.spiffe_bundle_json,
            "orders",
        )?;
        assert_eq!(claims["sub"], format!("spiffe://{TRUST_DOMAIN}/web"));
    }

    // The agent, with its own SVID, mints for the entry it parents and for nothing else.
    let (agent_key, der) = csr()?;
    let a = mint(&mut svids(&c, 2).await?, &agent_entry, &der).await?;
    let roots = bundle(&c, 2).await?.x509_authorities_der;
    let as_agent = svid_transport(&a.cert_chain_der, &agent_key, &roots)?;
    let mut agent =
        SvidServiceClient::new(authsec_chaos_tests::channel(&as_agent, &c.addr(3)?).await?);
    let (_, der) = csr()?;
    let ok = mint(&mut agent, &web, &der).await?;
    verify_chain(&ok.cert_chain_der, &roots)?;
    minted.extend([a.serial_hex.clone(), ok.serial_hex.clone()]);
    c.wait_recorded(1, &minted, T).await?;

    let c = &c;
    let head = |id| async move {
        c.status(id)
            .await
            .map(|s| s.archive_head.unwrap_or_default())
    };
    let before = head(1).await?;
    let denied = mint(&mut agent, &other, &der)
        .await
        .expect_err("not its entry");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("only its parent"),
        "{}",
        denied.message()
    );
    // Nor may it use the admin API.
    let admin_api = v1::entry_service_client::EntryServiceClient::new(
        authsec_chaos_tests::channel(&as_agent, &c.addr(3)?).await?,
    )
    .list_entries(v1::ListEntriesRequest::default())
    .await
    .expect_err("an agent is no admin");
    assert_eq!(admin_api.code(), tonic::Code::PermissionDenied);

    let bad_csr = |edit: &dyn Fn(&mut rcgen::CertificateParams)| -> anyhow::Result<Vec<u8>> {
        let key = rcgen::KeyPair::generate()?;
        let mut p = rcgen::CertificateParams::default();
        edit(&mut p);
        Ok(p.serialize_request(&key)?.der().to_vec())
    };
    let foreign = bad_csr(&|p| {
        p.subject_alt_names = vec![rcgen::SanType::URI(
            format!("spiffe://{TRUST_DOMAIN}/authsec/admin/root")
                .as_str()
                .try_into()
                .expect("uri"),
        )]
    })?;
    let ca = bad_csr(&|p| p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained))?;
    let mut admin = svids(c, 1).await?;
    for (what, der, needle) in [
        ("foreign ID", foreign, "authsec/admin/root"),
        ("CA:true", ca, "CA:true"),
        ("malformed", b"garbage".to_vec(), "PKCS#10"),
        ("too large", vec![0x30; 9000], "8192"),
    ] {
        let e = mint(&mut admin, &web, &der).await.expect_err(what);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{what}: {e:?}");
        assert!(e.message().contains(needle), "{what}: {}", e.message());
    }
    let e = mint(&mut admin, "e-does-not-exist", &der)
        .await
        .expect_err("no entry");
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = svids(c, 1)
        .await?
        .mint_jwt_svid(v1::MintJwtSvidRequest {
            entry_id: web.clone(),
            audience: vec![],
            ttl_seconds: 0,
        })
        .await
        .expect_err("no audience");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("audience"), "{}", e.message());
    assert_eq!(head(1).await?, before, "refused requests wrote nothing");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svids_keep_coming_from_the_others_while_the_leader_is_killed() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    let mut c = Cluster::start(3, Options::default())?;
    let leader = c.wait_leader(&[1, 2, 3], T).await?;
    c.wait_issuing(&[1, 2, 3], T).await?;
    let web = create_entry(&c, leader, "web", None).await?;
    c.wait_converged(&[1, 2, 3], 0, T).await?;
    let others: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let csrs: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..16)
            .map(|_| csr().map(|c| c.1))
            .collect::<Result<_, _>>()?,
    );

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for id in others.clone() {
        let mut client = svids(&c, id).await?;
        let (stop, ok, csrs, web) = (stop.clone(), ok.clone(), csrs.clone(), web.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                match mint(&mut client, &web, &csrs[i % csrs.len()]).await {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.push(format!("node {id}: {e:?}")),
                }
                i += 1;
            }
            failures
        }));
    }
    // Some issuance before, then the leader dies with SIGKILL mid-stream.
    let deadline = Instant::now() + T;
    while ok.load(Ordering::Relaxed) < 50 {
        anyhow::ensure!(Instant::now() < deadline, "no SVIDs before the kill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before_kill = ok.load(Ordering::Relaxed);
    let killed_at = Instant::now();
    c.kill9(leader)?;
    let new_leader = c.wait_leader(&others, T).await?;
    let failover = killed_at.elapsed();
    // Keep minting well past the failover.
    let at_failover = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await?);
    }
    let total = ok.load(Ordering::Relaxed);
    eprintln!(
        "leader {leader} killed; node {new_leader} leads after {failover:?}; SVIDs: {before_kill} before the kill, {} during the failover, {} after; failed requests: {}",
        at_failover - before_kill,
        total - at_failover,
        failures.len()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        at_failover > before_kill,
        "issuance went on during the failover"
    );
    Ok(())
}

/// Poll `id` until it refuses to issue; the reason it gives and when.
async fn wait_refusal(
    c: &Cluster,
    id: u64,
    entry: &str,
    csr: &[u8],
) -> anyhow::Result<(Instant, String)> {
    let deadline = Instant::now() + T;
    let mut client = svids(c, id).await?;
    loop {
        match mint(&mut client, entry, csr).await {
            Err(e)
                if e.code() == tonic::Code::Unavailable
                    && e.message().contains("freshness bound") =>
            {
                return Ok((Instant::now(), e.message().to_owned()))
            }
            _ => {}
        }
        anyhow::ensure!(Instant::now() < deadline, "node {id} never stopped issuing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_issues(c: &Cluster, id: u64, entry: &str, csr: &[u8]) -> anyhow::Result<()> {
    wait_issues_within(c, id, entry, csr, T).await
}

async fn wait_issues_within(
    c: &Cluster,
    id: u64,
    entry: &str,
    csr: &[u8],
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let mut client = svids(c, id).await?;
    loop {
        let r = mint(&mut client, entry, csr).await;
        if r.is_ok() {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "node {id} does not issue: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// openraft restores a node whose persisted vote is a committed vote for itself as leader at
/// once, in the same term, so a leader killed and restarted before any follower stands for
/// election leads on, with a process clock that starts over. Its followers must not take the
/// jump for a message held in flight as long as the old process ran: a credentials soak saw
/// every follower refuse to issue for 35 s after a rolling restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_restarted_in_its_term_leaves_the_followers_issuing() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    const BOUND_MS: u64 = 1_500;
    let started = Instant::now();
    let mut c = Cluster::start(
        3,
        Options {
            // Followers wait 3 s or more before they stand: the restart below is quicker.
            timeouts_ms: Some((100, 3_000, 4_000)),
            env: staleness_env(&[1, 2, 3], BOUND_MS),
            ..Options::default()
        },
    )?;
    let leader = c.wait_leader(&[1, 2, 3], T).await?;
    c.wait_issuing(&[1, 2, 3], T).await?;
    let web = create_entry(&c, leader, "web", None).await?;
    c.wait_converged(&[1, 2, 3], 0, T).await?;
    let followers: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let (_, der) = csr()?;
    for id in &followers {
        wait_issues(&c, *id, &web, &der).await?;
    }
    // Let the leader's process run for well over the bound (not a wait for a condition: the
    // scenario needs an old clock), so a follower that took the restarted process's clock for
    // a late one would refuse.
    tokio::time::sleep(
        (started + Duration::from_secs(4)).saturating_duration_since(Instant::now()),
    )
    .await;
    let term = c.status(leader).await?.term;
    c.kill9(leader)?;
    c.spawn(leader)?;
    let deadline = Instant::now() + T;
    let back = loop {
        if let Ok(s) = c.status(leader).await {
            if s.state == "leader" || s.term != term {
                break s;
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "node {leader} did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    anyhow::ensure!(
        back.state == "leader" && back.term == term,
        "the scenario did not happen: node {leader} came back as {} in term {} (it led term \
         {term}); a follower stood for election before it was back",
        back.state,
        back.term
    );
    let back_at = Instant::now();
    for id in &followers {
        wait_issues_within(&c, *id, &web, &der, Duration::from_millis(3 * BOUND_MS)).await?;
    }
    eprintln!(
        "node {leader} led term {term} again after its restart; followers {followers:?} issued \
         within {:?}",
        back_at.elapsed()
    );
    Ok(())
}

/// openraft 0.9 gives each AppendEntries one heartbeat interval to come back, so a round
/// trip longer than the heartbeat stops replication altogether: no write commits, no leader is
/// acknowledged by a quorum, and every node stops issuing once the bound passes. With the
/// node's default timeouts, 40 ms each way (what the soak's slow links draw) must cost nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_of_40_ms_each_way_cost_neither_writes_nor_issuance() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    const BOUND_MS: u64 = 1_500;
    let c = Cluster::start(
        3,
        Options {
            proxied: true,
            // The node's defaults: what users run.
            timeouts_ms: None,
            env: staleness_env(&[1, 2, 3], BOUND_MS),
            ..Options::default()
        },
    )?;
    let leader = c.wait_leader(&[1, 2, 3], T).await?;
    c.wait_issuing(&[1, 2, 3], T).await?;
    let web = create_entry(&c, leader, "web", None).await?;
    c.wait_converged(&[1, 2, 3], 0, T).await?;
    let (_, der) = csr()?;
    c.net()?.all(
        &[1, 2, 3],
        authsec_chaos_tests::proxy::LinkFault {
            delay_ms: 40,
            ..Default::default()
        },
    );
    // Twice the bound: every write through the leader commits, every node issues each time.
    let slow_at = Instant::now();
    let mut clients = c.clients(leader).await?;
    let mut svid_clients = Vec::new();
    for id in 1..=3 {
        svid_clients.push((id, svids(&c, id).await?));
    }
    let (mut writes, mut minted) = (0, 0);
    while slow_at.elapsed() < Duration::from_millis(2 * BOUND_MS) {
        let mut req =
            tonic::Request::new(authsec_chaos_tests::register_req(&format!("slow-{writes}")));
        req.set_timeout(Duration::from_secs(5));
        clients.register_client(req).await.with_context(|| {
            format!(
                "write {writes}, {:?} into the slow links",
                slow_at.elapsed()
            )
        })?;
        writes += 1;
        for (id, client) in &mut svid_clients {
            mint(client, &web, &der).await.with_context(|| {
                format!("node {id}, {:?} into the slow links", slow_at.elapsed())
            })?;
            minted += 1;
        }
    }
    c.net()?.heal();
    eprintln!("{writes} writes committed and {minted} SVIDs minted over links of 40 ms each way");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_stops_issuing_beyond_the_bound_and_resumes() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    const BOUND_MS: u64 = 3_000;
    let c = Cluster::start(
        3,
        Options {
            proxied: true,
            env: staleness_env(&[1, 2, 3], BOUND_MS),
            ..Options::default()
        },
    )?;
    let leader = c.wait_leader(&[1, 2, 3], T).await?;
    c.wait_issuing(&[1, 2, 3], T).await?;
    let web = create_entry(&c, leader, "web", None).await?;
    c.wait_converged(&[1, 2, 3], 0, T).await?;
    let cut = (1..=3).find(|i| *i != leader).unwrap_or(3);
    let rest: Vec<u64> = (1..=3).filter(|i| *i != cut).collect();
    let (_, der) = csr()?;
    wait_issues(&c, cut, &web, &der).await?;

    let cut_at = Instant::now();
    c.net()?.partition(&[cut], &rest);
    let (stopped_at, reason) = wait_refusal(&c, cut, &web, &der).await?;
    let after = stopped_at.duration_since(cut_at);
    eprintln!("node {cut} stopped issuing {after:?} after the cut: {reason}");
    assert!(
        after >= Duration::from_millis(BOUND_MS - 500),
        "not before the bound: {after:?}"
    );
    assert!(
        after <= Duration::from_millis(BOUND_MS + 3_000),
        "soon after the bound: {after:?}"
    );
    assert!(
        reason.contains(&format!("max_staleness {BOUND_MS} ms")),
        "{reason}"
    );
    // The majority keeps issuing.
    for id in &rest {
        wait_issues(&c, *id, &web, &der).await?;
    }
    // Healed, it resumes by itself.
    c.net()?.heal();
    wait_issues(&c, cut, &web, &der).await?;
    Ok(())
}

/// The chaos scenario of the freshness bound: in five nodes, the leader and one follower are
/// cut off from the other three. The old leader still reaches its follower, so the follower
/// keeps hearing from it; but no quorum acknowledges the old leader any more, so both stop
/// within the bound, while the three elect a leader and go on issuing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_cut_off_with_one_follower_stops_both() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    const BOUND_MS: u64 = 3_000;
    let ids = [1, 2, 3, 4, 5];
    let c = Cluster::start(
        5,
        Options {
            proxied: true,
            env: staleness_env(&ids, BOUND_MS),
            ..Options::default()
        },
    )?;
    let leader = c.wait_leader(&ids, T).await?;
    c.wait_issuing(&ids, T).await?;
    let web = create_entry(&c, leader, "web", None).await?;
    c.wait_converged(&ids, 0, T).await?;
    let follower = ids.iter().copied().find(|i| *i != leader).unwrap_or(1);
    let minority = [leader, follower];
    let majority: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|i| !minority.contains(i))
        .collect();
    let (_, der) = csr()?;

    let cut_at = Instant::now();
    c.net()?.partition(&minority, &majority);
    for id in minority {
        let (at, reason) = wait_refusal(&c, id, &web, &der).await?;
        let after = at.duration_since(cut_at);
        eprintln!("node {id} (of the cut-off pair) stopped {after:?} after the cut: {reason}");
        assert!(
            after <= Duration::from_millis(BOUND_MS + 3_000),
            "node {id}: {after:?}"
        );
    }
    let new_leader = c.wait_leader(&majority, T).await?;
    assert!(majority.contains(&new_leader));
    for id in &majority {
        wait_issues(&c, *id, &web, &der).await?;
    }
    c.net()?.heal();
    for id in minority {
        wait_issues(&c, id, &web, &der).await?;
    }
    Ok(())
}

/// An issuer replica: a node that joins as a non-voting learner issues like any other node,
/// its SVIDs verify with every node's bundle, and `cluster status` shows it as a learner with
/// its freshness. Removing it takes its keys out of the bundle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_issues_like_any_node_and_its_removal_retires_its_keys() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    let mut c = Cluster::start(
        3,
        Options {
            spare: 1,
            ..Options::default()
        },
    )?;
    let leader = c.wait_leader(&[1, 2, 3], T).await?;
    c.wait_issuing(&[1, 2, 3], T).await?;
    let token = c.create_join_token(leader, 600).await?;
    c.prepare(4, None)?;
    let peer = c.addr(leader)?;
    c.spawn_join_as(4, &token, &[peer], true)?;
    c.wait_issuing(&[4], T).await?;
    let s = c.status(4).await?;
    let me = s
        .members
        .iter()
        .find(|m| m.node_id == 4)
        .cloned()
        .unwrap_or_default();
    assert_eq!(me.role, "learner", "{:?}", s.members);
    assert!(s.freshness_ms.is_some_and(|ms| ms < 30_000), "{s:?}");
    let web = create_entry(&c, leader, "web", None).await?;
    c.wait_converged(&[1, 2, 3, 4], 0, T).await?;

    let (_, der) = csr()?;
    let r = mint(&mut svids(&c, 4).await?, &web, &der).await?;
    assert_eq!(r.issuer_node_id, 4);
    let jwt = svids(&c, 4)
        .await?
        .mint_jwt_svid(v1::MintJwtSvidRequest {
            entry_id: web.clone(),
            audience: vec!["orders".into()],
            ttl_seconds: 0,
        })
        .await?
        .into_inner();
    for id in 1..=3 {
        let b = bundle(&c, id).await?;
        verify_chain(&r.cert_chain_der, &b.x509_authorities_der)?;
        verify_jwt(&jwt.token, &b.spiffe_bundle_json, "orders")?;
    }

    // Removed, its JWT key leaves every bundle: its tokens no longer verify.
    let leader = c.wait_leader(&[1, 2, 3], T).await?;
    v1::cluster_service_client::ClusterServiceClient::new(c.channel(leader).await?)
        .remove_node(v1::RemoveNodeRequest {
            node_id: 4,
            revoke_keys: false,
        })
        .await?;
    let deadline = Instant::now() + T;
    for id in 1..=3 {
        loop {
            let b = bundle(&c, id).await?;
            if verify_jwt(&jwt.token, &b.spiffe_bundle_json, "orders").is_err() {
                assert!(!b.spiffe_bundle_json.contains(&jwt.kid));
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "node {id} still trusts node 4's key"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Revocation as verifiers see it: a subscriber to `WatchRevocations` gets the full set at
/// once and again on every change; an SVID revoked by serial shows up by its serial, and a
/// subject revocation names the log index below which that subject's credentials are refused,
/// which the serial number of every SVID carries (so one minted after it is not refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_stream_to_subscribers_by_serial_and_by_index() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    let mut c = Cluster::start(3, Options::default())?;
    let leader = c.wait_leader(&[1, 2, 3], T).await?;
    c.wait_issuing(&[1, 2, 3], T).await?;
    let web = create_entry(&c, leader, "web", None).await?;
    c.wait_converged(&[1, 2, 3], 0, T).await?;

    let mut stream = svids(&c, 3)
        .await?
        .watch_revocations(v1::WatchRevocationsRequest::default())
        .await?
        .into_inner();
    let first = tokio::time::timeout(T, stream.message())
        .await??
        .context("first set")?;
    assert!(
        first.credentials.is_empty() && first.subjects.is_empty(),
        "{first:?}"
    );

    let (_, der) = csr()?;
    let old = mint(&mut svids(&c, 1).await?, &web, &der).await?;
    let index_of = |serial_hex: &str| -> anyhow::Result<u64> {
        let b = hex::decode(serial_hex)?;
        anyhow::ensure!(
            b.len() == 20 && b[0] == 1,
            "not an authsec serial: {serial_hex}"
        );
        Ok(u64::from_be_bytes(b[5..13].try_into()?))
    };
    assert_eq!(index_of(&old.serial_hex)?, old.issued_at_index);

    let revocations = || async {
        Ok::<_, anyhow::Error>(v1::revocation_service_client::RevocationServiceClient::new(
            c.channel(2).await?,
        ))
    };
    revocations()
        .await?
        .revoke(v1::RevokeRequest {
            target: Some(v1::revoke_request::Target::Token(v1::TokenRef {
                jti: format!("x509:{}", old.serial_hex),
                expires_at_ms: old.expires_at_unix as u64 * 1000,
            })),
        })
        .await?;
    let next = async {
        loop {
            let m = stream.message().await?.context("stream ended")?;
            if !m.credentials.is_empty() {
                return Ok::<_, anyhow::Error>(m);
            }
        }
    };
    let set = tokio::time::timeout(T, next).await??;
    assert_eq!(set.credentials[0].id, format!("x509:{}", old.serial_hex));

    let r = revocations()
        .await?
        .revoke(v1::RevokeRequest {
            target: Some(v1::revoke_request::Target::Subject(format!(
                "spiffe://{TRUST_DOMAIN}/web"
            ))),
        })
        .await?
        .into_inner();
    let next = async {
        loop {
            let m = stream.message().await?.context("stream ended")?;
            if !m.subjects.is_empty() {
                return Ok::<_, anyhow::Error>(m);
            }
        }
    };
    let set = tokio::time::timeout(T, next).await??;
    let below = set.subjects[0].below_index;
    assert_eq!(
        set.subjects[0].subject,
        format!("spiffe://{TRUST_DOMAIN}/web")
    );
    assert_eq!(below, r.revoked_at_index);
    assert!(
        index_of(&old.serial_hex)? < below,
        "the old SVID is refused by index"
    );
    // Minted once the node applied the revocation: carries an index at or above it.
    let deadline = Instant::now() + T;
    loop {
        let (_, der) = csr()?;
        let new = mint(&mut svids(&c, 3).await?, &web, &der).await?;
        if index_of(&new.serial_hex)? >= below {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "node 3 never applied the revocation"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Heartbeats: a subscriber that asks for them learns how old node 3's view is, at least
    // every 100 ms here. A nonsense interval is refused.
    let e = svids(&c, 3)
        .await?
        .watch_revocations(v1::WatchRevocationsRequest {
            heartbeats: true,
            heartbeat_ms: 5,
        })
        .await
        .expect_err("5 ms heartbeats");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("50 to 10000"), "{}", e.message());
    let mut beats = svids(&c, 3)
        .await?
        .watch_revocations(v1::WatchRevocationsRequest {
            heartbeats: true,
            heartbeat_ms: 100,
        })
        .await?
        .into_inner();
    let first = tokio::time::timeout(T, beats.message())
        .await??
        .context("first set")?;
    assert!(!first.heartbeat && !first.subjects.is_empty(), "{first:?}");
    assert!(first.view_age_ms.is_some_and(|a| a < 750), "{first:?}");
    for _ in 0..3 {
        let m = tokio::time::timeout(T, beats.message())
            .await??
            .context("heartbeat")?;
        if m.heartbeat {
            assert!(m.credentials.is_empty() && m.subjects.is_empty(), "{m:?}");
            assert!(m.view_age_ms.is_some_and(|a| a < 750), "{m:?}");
        }
    }
    // Node 3 cut off from the majority (the other two killed): its heartbeats go on, and the
    // view age they report grows past the 750 ms revocation bound, so no verifier following
    // it vouches for a token any more.
    c.kill9(1)?;
    c.kill9(2)?;
    let stale = async {
        loop {
            let m = beats.message().await?.context("stream ended")?;
            if m.heartbeat && m.view_age_ms.is_none_or(|a| a > 750) {
                return Ok::<_, anyhow::Error>(m);
            }
        }
    };
    let m = tokio::time::timeout(T, stale).await??;
    assert!(m.credentials.is_empty() && m.subjects.is_empty(), "{m:?}");
    Ok(())
}

/// Node keys rotate on SPIRE's schedule (30 s keys here: a successor published at 15 s left,
/// activated at 5 s left, the old one retired when it expires) while workloads keep renewing:
/// each fetches the bundle, then mints, and verifies what it got with the bundle it holds.
/// No verification fails, and the keys did change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_keys_rotate_under_renewals_with_no_verification_failure() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    let ids = [1, 2, 3];
    let c = Cluster::start(
        3,
        Options {
            env: ids
                .iter()
                .map(|id| {
                    (
                        *id,
                        vec![("AUTHSEC_ISSUER_KEY_TTL_S".to_owned(), "30".to_owned())],
                    )
                })
                .collect(),
            ..Options::default()
        },
    )?;
    let leader = c.wait_leader(&ids, T).await?;
    c.wait_issuing(&ids, T).await?;
    let web = create_entry(&c, leader, "web", None).await?;
    c.wait_converged(&ids, 0, T).await?;
    let first_kids: std::collections::BTreeSet<String> = {
        let doc: serde_json::Value =
            serde_json::from_str(&bundle(&c, 1).await?.spiffe_bundle_json)?;
        doc["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k["kid"].as_str().map(str::to_owned))
            .collect()
    };

    let end = Instant::now() + Duration::from_secs(45);
    let (mut renewals, mut failures, mut kids, mut issuers) = (
        0u64,
        Vec::new(),
        std::collections::BTreeSet::new(),
        std::collections::BTreeSet::new(),
    );
    let mut i = 0u64;
    while Instant::now() < end {
        let (held, from) = (bundle(&c, 1 + i % 3).await?, 1 + (i + 1) % 3);
        let mut client = svids(&c, from).await?;
        let (_, der) = csr()?;
        match mint(&mut client, &web, &der).await {
            Ok(x) => {
                if let Err(e) = verify_chain(&x.cert_chain_der, &held.x509_authorities_der) {
                    failures.push(format!("x509 from node {from}: {e}"));
                }
                let (_, ca) = x509_parser::parse_x509_certificate(&x.cert_chain_der[1])?;
                issuers.insert(hex::encode(ca.raw_serial()));
            }
            Err(e) => failures.push(format!("mint x509 on node {from}: {e:?}")),
        }
        match client
            .mint_jwt_svid(v1::MintJwtSvidRequest {
                entry_id: web.clone(),
                audience: vec!["orders".into()],
                ttl_seconds: 0,
            })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                kids.insert(r.kid.clone());
                if let Err(e) = verify_jwt(&r.token, &held.spiffe_bundle_json, "orders") {
                    failures.push(format!("jwt from node {from} ({}): {e}", r.kid));
                }
            }
            Err(e) => failures.push(format!("mint jwt on node {from}: {e:?}")),
        }
        renewals += 1;
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rotated: Vec<&String> = kids.iter().filter(|k| !first_kids.contains(*k)).collect();
    eprintln!(
        "{renewals} renewals; {} JWT keys used ({} new since the start), {} intermediates; failures: {}",
        kids.len(),
        rotated.len(),
        issuers.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(
        !rotated.is_empty(),
        "JWT keys rotated during the run: {kids:?}"
    );
    assert!(
        issuers.len() > 3,
        "intermediates rotated: {}",
        issuers.len()
    );
    // Retired keys leave the bundle: it never grows without bound.
    let doc: serde_json::Value = serde_json::from_str(&bundle(&c, 2).await?.spiffe_bundle_json)?;
    let jwt_keys = doc["keys"]
        .as_array()
        .map_or(0, |k| k.iter().filter(|k| k["use"] == "jwt-svid").count());
    assert!(
        jwt_keys <= 6,
        "at most an active and a successor or predecessor per node: {doc}"
    );
    Ok(())
}

/// Root rotation under renewals: workloads keep fetching the bundle, minting on every node and
/// verifying what they got with the bundle they hold, while an admin prepares a new root (it
/// joins every bundle), activates it (every node re-issues its intermediate from it) and
/// retires the bootstrap root from the bundle (and from the cluster's transport, once the
/// admin re-issued its credential). No verification fails, and at the end every node's SVIDs
/// chain to the new root, which alone is in the bundle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_rotation_under_renewals_with_no_verification_failure() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    let ids = [1, 2, 3];
    let mut c = Cluster::start(3, Options::default())?;
    let leader = c.wait_leader(&ids, T).await?;
    c.wait_issuing(&ids, T).await?;
    let web = create_entry(&c, leader, "web", None).await?;
    c.wait_converged(&ids, 0, T).await?;
    async fn roots_api(
        c: &Cluster,
    ) -> anyhow::Result<v1::root_service_client::RootServiceClient<tonic::transport::Channel>> {
        Ok(v1::root_service_client::RootServiceClient::new(
            c.channel(1).await?,
        ))
    }
    let old_root = bundle(&c, 1).await?.x509_authorities_der;
    assert_eq!(old_root.len(), 1);

    #[derive(Debug, PartialEq)]
    enum Phase {
        Before,
        Prepared,
        Activated,
        Retired,
    }
    let mut phase = Phase::Before;
    let (mut renewals, mut failures) = (0u64, Vec::new());
    let mut new_root: Vec<u8> = Vec::new();
    let mut phase_at = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut i = 0u64;
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "stuck in {phase:?}: {failures:?}"
        );
        // One renewal: the bundle first (what the workload holds), then a mint elsewhere.
        let held = bundle(&c, 1 + i % 3).await?.x509_authorities_der;
        let from = 1 + (i + 1) % 3;
        let (_, der) = csr()?;
        let minted = mint(&mut svids(&c, from).await?, &web, &der).await;
        let mut chained_to_new = false;
        match &minted {
            Ok(x) => {
                if let Err(e) = verify_chain(&x.cert_chain_der, &held) {
                    failures.push(format!(
                        "{phase:?}: node {from}'s SVID with the held bundle: {e}"
                    ));
                }
                chained_to_new = !new_root.is_empty()
                    && verify_chain(&x.cert_chain_der, &[new_root.clone()]).is_ok();
            }
            Err(e) => failures.push(format!("{phase:?}: mint on node {from}: {e:?}")),
        }
        renewals += 1;
        i += 1;
        let settled = phase_at.elapsed() > Duration::from_secs(2);
        match phase {
            Phase::Before if settled => {
                let r = roots_api(&c)
                    .await?
                    .prepare_root(v1::PrepareRootRequest {})
                    .await?
                    .into_inner();
                new_root = r.root.context("the prepared root")?.cert_der;
                phase = Phase::Prepared;
                phase_at = Instant::now();
            }
            Phase::Prepared if settled => {
                // Every node's bundle holds both before the switch.
                for id in ids {
                    let b = bundle(&c, id).await?.x509_authorities_der;
                    anyhow::ensure!(
                        b.contains(&new_root) && b.contains(&old_root[0]),
                        "node {id}: {}",
                        b.len()
                    );
                }
                // Too early for holders that refresh at the hint: refused unless forced.
                let early = roots_api(&c)
                    .await?
                    .activate_root(v1::ActivateRootRequest {
                        fingerprint: authsec_domain::fingerprint(&new_root),
                        force: false,
                    })
                    .await
                    .expect_err("activation before a refresh hint");
                assert_eq!(early.code(), tonic::Code::FailedPrecondition, "{early:?}");
                assert!(early.message().contains("Wait"), "{}", early.message());
                roots_api(&c)
                    .await?
                    .activate_root(v1::ActivateRootRequest {
                        fingerprint: authsec_domain::fingerprint(&new_root),
                        force: true,
                    })
                    .await?;
                phase = Phase::Activated;
                phase_at = Instant::now();
            }
            Phase::Activated if chained_to_new => {
                // Wait until every node signs under the new root, then retire the old one.
                let mut all = true;
                for id in ids {
                    let (_, der) = csr()?;
                    let x = mint(&mut svids(&c, id).await?, &web, &der).await?;
                    all &= verify_chain(&x.cert_chain_der, &[new_root.clone()]).is_ok();
                }
                if all {
                    // The old root anchors the cluster's transport too: the nodes re-issue
                    // their certificates on their own, the admin's is re-issued here (else
                    // the retirement is refused: it would lock the admin out).
                    c.rotate_admin(1)?;
                    // The old intermediates (superseded, not expired) still anchor SVIDs.
                    let early = roots_api(&c)
                        .await?
                        .retire_root(v1::RetireRootRequest {
                            fingerprint: authsec_domain::fingerprint(&old_root[0]),
                            force: false,
                        })
                        .await
                        .expect_err("retiring a root that anchors live intermediates");
                    assert_eq!(early.code(), tonic::Code::FailedPrecondition, "{early:?}");
                    assert!(
                        early.message().contains("intermediates in use"),
                        "{}",
                        early.message()
                    );
                    roots_api(&c)
                        .await?
                        .retire_root(v1::RetireRootRequest {
                            fingerprint: authsec_domain::fingerprint(&old_root[0]),
                            force: true,
                        })
                        .await?;
                    phase = Phase::Retired;
                    phase_at = Instant::now();
                }
            }
            Phase::Retired if settled => break,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{renewals} renewals through prepare, activate and retire; failures: {}",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    for id in ids {
        let b = bundle(&c, id).await?.x509_authorities_der;
        assert_eq!(b, vec![new_root.clone()], "node {id}: only the new root");
        let (_, der) = csr()?;
        let x = mint(&mut svids(&c, id).await?, &web, &der).await?;
        verify_chain(&x.cert_chain_der, &b)?;
    }
    // The cluster's own TLS runs on the new root: the re-issued admin and the nodes go on.
    c.wait_converged(&ids, 0, T).await?;
    Ok(())
}

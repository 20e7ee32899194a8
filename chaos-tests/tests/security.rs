//! Cluster security with real processes on loopback: a cluster formed by `authsec node init`
//! and two `authsec node join`s over mutual TLS, single-use and expiring join tokens, callers
//! refused by SPIFFE ID, revocation that applies at once, and no secret in any readable output.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use authsec_api::v1;
use authsec_chaos_tests::{register_req, Cluster, Options, TRUST_DOMAIN};
use authsec_tls::tls::{self, TlsState};
use authsec_tls::Transport;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const T: Duration = Duration::from_secs(60);

fn certs(p: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    Ok(CertificateDer::pem_file_iter(p)
        .with_context(|| p.display().to_string())?
        .collect::<Result<_, _>>()?)
}

/// Mutual TLS with a node's own credential, as that node would dial.
fn node_transport(data_dir: &Path) -> anyhow::Result<Transport> {
    let dir = data_dir.join("tls");
    let key = PrivateKeyDer::from_pem_file(dir.join("node.key"))?;
    let td = authsec_domain::TrustDomain::parse(TRUST_DOMAIN)?;
    let state = TlsState::new(
        td,
        certs(&dir.join("ca.crt"))?,
        certs(&dir.join("node.crt"))?,
        key,
    )?;
    Ok(Transport::mutual_tls(state))
}

async fn head(c: &Cluster, id: u64) -> anyhow::Result<u64> {
    Ok(c.status(id).await?.archive_head.map_or(0, |h| h.sequence))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_then_two_joins_over_mtls_with_single_use_expiring_tokens() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    let mut c = Cluster::start(
        1,
        Options {
            spare: 2,
            snapshot_logs_since_last: 20,
            max_in_snapshot_log_to_keep: 5,
            ..Options::default()
        },
    )?;
    c.wait_leader(&[1], T).await?;
    let first = c.addr(1)?;

    // Node 2 joins with a token.
    let token = c.create_join_token(1, 600).await?;
    c.prepare(2, None)?;
    c.spawn_join(2, &token, std::slice::from_ref(&first))?;
    c.wait_voter(1, 2, T).await?;
    // The admission's audit record is written after the membership change commits: wait for
    // it, so that it is not counted as a write of what follows.
    let deadline = Instant::now() + T;
    while !c
        .records(1)
        .await?
        .iter()
        .any(|r| r.kind == "node.member_recorded" && r.subject == "node:2")
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "node 2's admission was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Node 2 publishes its signing keys once it is a member: let it finish first.
    c.wait_issuing(&[1, 2], T).await?;
    c.wait_converged(&[1, 2], 0, T).await?;
    let before = head(&c, 1).await?;

    // The same token again, for node 3: refused, and nothing is written.
    c.prepare(3, None)?;
    c.spawn_join(3, &token, std::slice::from_ref(&first))?;
    let st = c.wait_exit(3, T)?;
    assert!(!st.success(), "a reused token is refused");
    assert!(
        c.log_tail(3, 5)
            .contains("unknown or has already been used"),
        "{}",
        c.log_tail(3, 5)
    );
    // An expired token: refused too.
    let short = c.create_join_token(1, 1).await?;
    let after_create = head(&c, 1).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await; // let the 1 s lifetime pass
    c.spawn_join(3, &short, std::slice::from_ref(&first))?;
    let st = c.wait_exit(3, T)?;
    assert!(!st.success(), "an expired token is refused");
    assert!(c.log_tail(3, 5).contains("expired"), "{}", c.log_tail(3, 5));
    // A made-up token of the right shape.
    c.spawn_join(
        3,
        &format!("{}.{}", "ab".repeat(8), "cd".repeat(32)),
        std::slice::from_ref(&first),
    )?;
    assert!(!c.wait_exit(3, T)?.success(), "an unknown token is refused");
    assert_eq!(
        head(&c, 1).await?,
        after_create,
        "refused joins write nothing"
    );
    let since: Vec<String> = c
        .records(1)
        .await?
        .into_iter()
        .filter(|r| r.sequence > before)
        .map(|r| format!("#{} {} {}", r.sequence, r.kind, r.subject))
        .collect();
    assert_eq!(
        after_create,
        before + 1,
        "only the token creation was recorded: {since:?}"
    );
    assert!(
        !c.data_dir(3)?.join("tls").join("node.crt").exists(),
        "a refused node gets no certificate"
    );

    // Node 3 joins through node 2, which holds no KEK: it is told to ask a node that does,
    // and the join goes through node 1.
    let token = c.create_join_token(1, 600).await?;
    c.spawn_join(3, &token, &[c.addr(2)?, first.clone()])?;
    c.wait_voter(1, 3, T).await?;
    for id in [2, 3] {
        assert!(
            !c.data_dir(id)?.join("kek").exists(),
            "joined nodes hold no KEK"
        );
        let cert = certs(&c.data_dir(id)?.join("tls").join("node.crt"))?;
        assert_eq!(
            tls::svid_id(&cert[0])?.as_str(),
            format!("spiffe://{TRUST_DOMAIN}/authsec/node/{id}")
        );
    }

    // The event log works over mutual TLS through every node, and all converge.
    let mut n = 0;
    for round in 0..20 {
        for id in 1..=3u64 {
            let mut cl = c.clients(id).await?;
            cl.register_client(register_req(&format!("r{round}-n{id}")))
                .await
                .with_context(|| format!("write through node {id}"))?;
            n += 1;
        }
    }
    let all = c.wait_converged(&[1, 2, 3], before + 2 + n, T).await?;
    assert_eq!(all.len(), 3);

    // Joined nodes got the client-secret key with their certificate (0600, beside node.key),
    // so they onboard clients with secrets without the KEK.
    let key_of = |id: u64| -> anyhow::Result<String> {
        let path = c.data_dir(id)?.join("tls").join("client-secret.key");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o600
        );
        Ok(std::fs::read_to_string(path)?)
    };
    assert_eq!(key_of(2)?, key_of(3)?, "one cluster key");
    for id in [2, 3] {
        let r = c
            .clients(id)
            .await?
            .create_client(v1::CreateClientRequest {
                client_id: format!("agent-via-{id}"),
                kind: v1::ClientKind::AiAgent as i32,
                generate_secret: true,
                ..Default::default()
            })
            .await
            .with_context(|| format!("onboard through node {id}"))?
            .into_inner();
        assert!(r.client_secret.starts_with("as_cs_") && r.entry.is_some());
    }

    // Node 3 is removed (not revoked): its still-valid certificate neither readmits it nor
    // gets renewed. Rejoining takes a new token.
    let leader = c.wait_leader(&[1, 2, 3], T).await?;
    v1::cluster_service_client::ClusterServiceClient::new(c.channel(leader).await?)
        .remove_node(v1::RemoveNodeRequest {
            node_id: 3,
            revoke_keys: false,
        })
        .await?;
    let former = node_transport(c.data_dir(3)?)?;
    let leader_addr = c.addr(leader)?;
    let s = v1::node_service_client::NodeServiceClient::new(former.channel(&leader_addr)?)
        .admit(v1::AdmitRequest {
            addr: c.addr(3)?,
            learner_only: false,
        })
        .await
        .expect_err("no pending admission");
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    let s = v1::node_service_client::NodeServiceClient::new(former.channel(&leader_addr)?)
        .renew(v1::RenewRequest::default())
        .await
        .expect_err("not a member");
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");

    // No secret in any readable output: logs, the event feed, snapshots.
    let mut secrets: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let kek = std::fs::read_to_string(c.kek_file())?;
    secrets.insert("KEK (hex)".into(), kek.trim().as_bytes().to_vec());
    secrets.insert("KEK (raw)".into(), hex::decode(kek.trim())?);
    for id in 1..=3u64 {
        let key = PrivateKeyDer::from_pem_file(c.data_dir(id)?.join("tls").join("node.key"))?;
        secrets.insert(format!("node {id} key (DER)"), key.secret_der().to_vec());
        let pem = std::fs::read_to_string(c.data_dir(id)?.join("tls").join("node.key"))?;
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        secrets.insert(
            format!("node {id} key (PEM)"),
            body.as_bytes()[..40].to_vec(),
        );
    }
    let admin = PrivateKeyDer::from_pem_file(c.admin_dir().join("admin.key"))?;
    secrets.insert("admin key (DER)".into(), admin.secret_der().to_vec());
    for (i, t) in [&token, &short].iter().enumerate() {
        let secret = t.split_once('.').map(|x| x.1).unwrap_or_default();
        secrets.insert(format!("join token {i} secret"), secret.as_bytes().to_vec());
    }
    let sealed = std::fs::read(c.data_dir(1)?.join("tls").join("root.sealed"))?;

    let mut haystacks: Vec<(String, Vec<u8>)> = Vec::new();
    for id in 1..=3u64 {
        let log = c.nodes[&id].log.clone();
        haystacks.push((format!("node {id} log"), std::fs::read(log)?));
    }
    let feed: Vec<u8> = c
        .archive(1)
        .await?
        .into_iter()
        .flat_map(|(_, json, bytes)| [json.into_bytes(), bytes].concat())
        .collect();
    haystacks.push(("event feed".into(), feed.clone()));
    for (name, h) in &haystacks {
        for (what, s) in &secrets {
            assert!(
                !h.windows(s.len()).any(|w| w == s.as_slice()),
                "{what} appears in the {name}"
            );
        }
        assert!(
            !h.windows(sealed.len()).any(|w| w == sealed.as_slice()),
            "the sealed root key appears in the {name}"
        );
    }
    let mut snapshots = 0;
    for id in 1..=3u64 {
        let dir = c.data_dir(id)?.join("snapshots");
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let bytes = std::fs::read(e.path())?;
            snapshots += 1;
            for (what, s) in &secrets {
                assert!(
                    !bytes.windows(s.len()).any(|w| w == s.as_slice()),
                    "{what} appears in snapshot {}",
                    e.path().display()
                );
            }
        }
    }
    assert!(snapshots > 0, "snapshots were built and checked");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_wrong_roles_are_refused_and_nothing_is_written() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    let c = Cluster::start(3, Options::default())?;
    c.wait_leader(&[1, 2, 3], T).await?;
    c.clients(1)
        .await?
        .register_client(register_req("first"))
        .await?;
    c.wait_issuing(&[1, 2, 3], T).await?;
    let all = c.wait_converged(&[1, 2, 3], 1, T).await?;
    let head0 = all[0].archive_head.clone();
    let addr = c.addr(1)?;
    let register = |t: Transport| {
        let addr = addr.clone();
        async move {
            let mut cl = v1::client_service_client::ClientServiceClient::new(t.channel(&addr)?);
            let mut req = tonic::Request::new(register_req("intruder"));
            req.set_timeout(Duration::from_secs(5));
            cl.register_client(req)
                .await
                .map(|_| ())
                .map_err(anyhow::Error::from)
        }
    };
    let code = |r: anyhow::Result<()>| -> Option<tonic::Code> {
        r.err()
            .and_then(|e| e.downcast_ref::<tonic::Status>().map(|s| s.code()))
    };

    // Plaintext against a TLS port: no connection.
    let r = register(Transport::plaintext()).await;
    assert!(r.is_err(), "plaintext is refused");

    // TLS with no client certificate (the server is checked by the pinned root): in at the
    // handshake, which joining needs, and refused with UNAUTHENTICATED.
    let td = authsec_domain::TrustDomain::parse(TRUST_DOMAIN)?;
    let anon = tls::pinned_client_config(td.clone(), &c.ca_fingerprint()?)?;
    let ch = authsec_tls::tls_channel(addr.clone(), anon)?;
    let s = v1::client_service_client::ClientServiceClient::new(ch)
        .register_client(register_req("anonymous"))
        .await
        .expect_err("no certificate, no write");
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");

    // An admin of another root with the same trust domain name: refused at the handshake.
    let other = tempfile::tempdir()?;
    let cfg = other.path().join("n.toml");
    std::fs::write(
        &cfg,
        format!(
            "node_id = 1\ndata_dir = {:?}\ngrpc_addr = \"127.0.0.1:1\"\nhttp_addr = \"127.0.0.1:2\"\ntrust_domain = {TRUST_DOMAIN:?}\n",
            other.path().join("data").display().to_string()
        ),
    )?;
    let out = std::process::Command::new(authsec_chaos_tests::authsec_bin()?)
        .args(["node", "init", "--config"])
        .arg(&cfg)
        .arg("--admin-dir")
        .arg(other.path().join("admin"))
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let foreign = authsec_chaos_tests::admin_transport(&other.path().join("admin"))?;
    let r = register(foreign).await;
    assert!(r.is_err(), "a foreign root's admin is refused");
    assert_ne!(code(r), Some(tonic::Code::Ok));

    // A node's certificate where an admin one is required: PERMISSION_DENIED.
    let node2 = node_transport(c.data_dir(2)?)?;
    assert_eq!(
        code(register(node2.clone()).await),
        Some(tonic::Code::PermissionDenied),
        "a node identity cannot use the admin API"
    );
    // And an admin where a node is required (Raft's neighbour, node renewal).
    let admin = c.client_transport()?;
    let s = v1::node_service_client::NodeServiceClient::new(admin.channel(&addr)?)
        .renew(v1::RenewRequest::default())
        .await
        .expect_err("admins do not renew node certificates");
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");

    // Nothing was written anywhere.
    let all = c.wait_converged(&[1, 2, 3], 1, T).await?;
    for s in &all {
        assert_eq!(s.archive_head, head0, "node {} wrote something", s.node_id);
    }
    // The foreign admin trusts only its own root, so it gives up on our server before it
    // shows its certificate: the handshake fails (it is not refused for a certificate).
    assert!(
        c.log_tail(1, 200).contains("TLS handshake failed"),
        "the foreign admin's handshake failed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_refused_at_once() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    let c = Cluster::start(3, Options::default())?;
    let leader = c.wait_leader(&[1, 2, 3], T).await?;
    let victim = (1..=3).find(|i| *i != leader).unwrap_or(3);
    let other = (1..=3).find(|i| *i != leader && *i != victim).unwrap_or(1);
    let stolen = node_transport(c.data_dir(victim)?)?;
    let renew = |ch: tonic::transport::Channel| async move {
        // A CSR is not needed to see the refusal: authorization comes first.
        let mut req = tonic::Request::new(v1::RenewRequest::default());
        req.set_timeout(Duration::from_secs(5));
        v1::node_service_client::NodeServiceClient::new(ch)
            .renew(req)
            .await
            .map(|_| ())
    };
    // Before: the node's identity is accepted (the empty CSR is what is refused).
    let open = stolen.channel(&c.addr(leader)?)?;
    let s = renew(open.clone()).await.expect_err("an empty CSR");
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");

    let mut cl = v1::cluster_service_client::ClusterServiceClient::new(c.channel(leader).await?);
    cl.remove_node(v1::RemoveNodeRequest {
        node_id: victim,
        revoke_keys: true,
    })
    .await?;
    // At once, on the leader: on the connection opened before the revocation...
    let s = renew(open).await.expect_err("revoked");
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    // ... and on a new one (refused at the handshake).
    let s = renew(stolen.channel(&c.addr(leader)?)?)
        .await
        .expect_err("revoked");
    assert_ne!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    // Every other node refuses it as soon as it has applied the revocation.
    c.wait_converged(&[leader, other], 0, T).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = renew(stolen.channel(&c.addr(other)?)?)
            .await
            .expect_err("an empty CSR or a refusal");
        if s.code() != tonic::Code::InvalidArgument {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {other} still accepts node {victim}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The cluster goes on without it.
    c.clients(leader)
        .await?
        .register_client(register_req("after-revocation"))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_admin_is_issued_and_a_rotated_credential_is_refused() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    let c = Cluster::start(3, Options::default())?;
    c.wait_leader(&[1, 2, 3], T).await?;
    let addr = c.addr(2)?;
    let tmp = tempfile::tempdir()?;
    let cli = |args: &[&str], admin: &Path| -> anyhow::Result<std::process::Output> {
        let out = std::process::Command::new(authsec_chaos_tests::authsec_bin()?)
            .args(args)
            .args(["--endpoint", &addr])
            .arg("--admin-dir")
            .arg(admin)
            .output()?;
        Ok(out)
    };
    let register = |t: Transport, id: &'static str| {
        let addr = addr.clone();
        async move {
            let mut req = tonic::Request::new(register_req(id));
            req.set_timeout(Duration::from_secs(5));
            v1::client_service_client::ClientServiceClient::new(t.channel(&addr)?)
                .register_client(req)
                .await
                .map(|_| ())
                .map_err(anyhow::Error::from)
        }
    };

    // A second admin, issued by the first; its key is made by the CLI, never sent.
    let ops = tmp.path().join("ops");
    let out = cli(
        &[
            "admin",
            "issue",
            "--name",
            "ops",
            "--out",
            &ops.display().to_string(),
        ],
        &c.admin_dir(),
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ops_t = authsec_chaos_tests::admin_transport(&ops)?;
    // A new admin holds no admin permission until a role grants it.
    let denied = register(ops_t.clone(), "by-ops-too-early").await;
    assert!(
        denied
            .as_ref()
            .err()
            .and_then(|e| e.downcast_ref::<tonic::Status>())
            .is_some_and(|s| s.code() == tonic::Code::PermissionDenied),
        "{denied:?}"
    );
    for args in [
        vec![
            "role",
            "create",
            "ops-admins",
            "--permission",
            "authsec.admin:*",
        ],
        vec![
            "bind",
            "ops-admins",
            "spiffe://test.authsec/authsec/admin/ops",
        ],
    ] {
        let out = cli(&args, &c.admin_dir())?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    register(ops_t.clone(), "by-ops").await?;

    // Rotate the first admin's credential in place; keep a copy of the old one.
    let old = tmp.path().join("root-old");
    std::fs::create_dir_all(&old)?;
    for f in ["admin.crt", "admin.key", "ca.crt"] {
        std::fs::copy(c.admin_dir().join(f), old.join(f))?;
    }
    let out = cli(&["admin", "rotate"], &c.admin_dir())?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(
        std::fs::read(c.admin_dir().join("admin.crt"))?,
        std::fs::read(old.join("admin.crt"))?,
        "a new certificate"
    );
    register(
        authsec_chaos_tests::admin_transport(&c.admin_dir())?,
        "by-new-root",
    )
    .await?;
    // The old credential: refused on every node (at the handshake or per request) once the
    // node has applied the rotation.
    let mut attempt = 0;
    for id in 1..=3u64 {
        let t = authsec_chaos_tests::admin_transport(&old)?;
        let a = c.addr(id)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            attempt += 1;
            let mut req = tonic::Request::new(register_req(&format!("by-old-root-{attempt}")));
            req.set_timeout(Duration::from_secs(5));
            let r = v1::client_service_client::ClientServiceClient::new(t.channel(&a)?)
                .register_client(req)
                .await;
            if r.is_err() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} still accepts the rotated-out admin certificate"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // An admin can rotate only its own credential (refused before the CSR is even read).
    let s = v1::cluster_service_client::ClusterServiceClient::new(ops_t.channel(&addr)?)
        .issue_admin(v1::IssueAdminRequest {
            name: "root".into(),
            csr_der: Vec::new(),
            rotate: true,
        })
        .await
        .expect_err("ops cannot rotate root");
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_root_mode_signs_nodes_from_csrs_and_keeps_the_root_out() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    let env: BTreeMap<u64, Vec<(String, String)>> = (1..=4)
        .map(|id| (id, vec![("AUTHSEC_CERT_TTL_S".to_owned(), "30".to_owned())]))
        .collect();
    let mut c = Cluster::start(
        3,
        Options {
            offline_root: true,
            spare: 1,
            env,
            ..Options::default()
        },
    )?;
    c.wait_leader(&[1, 2, 3], T).await?;
    for i in 0..10 {
        c.clients(1 + i % 3)
            .await?
            .register_client(register_req(&format!("off-{i}")))
            .await?;
    }
    c.wait_converged(&[1, 2, 3], 10, T).await?;
    // Each node presents leaf -> its own intermediate (pathLen 0) -> the offline root, and no
    // node holds a KEK or a sealed root.
    for id in 1..=3u64 {
        let tls_dir = c.data_dir(id)?.join("tls");
        let chain = certs(&tls_dir.join("node.crt"))?;
        assert_eq!(chain.len(), 2, "leaf and intermediate");
        let (_, inter) = x509_parser::parse_x509_certificate(&chain[1])?;
        let bc = inter.basic_constraints()?.map(|b| b.value.clone());
        assert!(
            bc.as_ref()
                .is_some_and(|b| b.ca && b.path_len_constraint == Some(0)),
            "{bc:?}"
        );
        assert!(!tls_dir.join("root.sealed").exists());
        assert!(!c.kek_file().exists());
    }
    // The intermediate renews the node's certificate locally (30 s lifetime, half-life 15 s).
    let deadline = Instant::now() + Duration::from_secs(40);
    while !c.log_tail(1, 400).contains("node certificate renewed") {
        assert!(Instant::now() < deadline, "node 1 did not renew");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.clients(2)
        .await?
        .register_client(register_req("after-renewal"))
        .await?;
    // A join token cannot work: no node can sign without the root.
    let token = c.create_join_token(1, 60).await?;
    c.prepare(4, None)?;
    c.spawn_join(4, &token, &[c.addr(1)?])?;
    assert!(!c.wait_exit(4, T)?.success());
    assert!(
        c.log_tail(4, 5).contains("offline-root"),
        "{}",
        c.log_tail(4, 5)
    );
    Ok(())
}

/// Whether `chain`'s leaf verifies up to `anchor` (DER), with the rest of `chain` as the
/// intermediates a server sends.
fn chains_to(chain: &[CertificateDer<'static>], anchor: &[u8]) -> bool {
    let Some(leaf) = chain.first() else {
        return false;
    };
    let mut store = rustls::RootCertStore::empty();
    if store.add(CertificateDer::from(anchor.to_vec())).is_err() {
        return false;
    }
    let Ok(leaf) = rustls::server::ParsedCertificate::try_from(leaf) else {
        return false;
    };
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &leaf,
        &store,
        &chain[1..],
        rustls::pki_types::UnixTime::now(),
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .all,
    )
    .is_ok()
}

/// `ClusterService/Status` as the holder of `t`: the code the call ends with. A server that
/// answers at all (even "permission denied") accepted the caller's certificate.
/// `authsec admin list -o json` through `admin`: (name, root, whether it is `admin`'s own),
/// sorted.
fn admins_under(c: &Cluster, admin: &Path) -> anyhow::Result<Vec<(String, String, bool)>> {
    let out = authsec_chaos_tests::cli_ok(&authsec_chaos_tests::run_cli(
        &c.addr(1)?,
        admin,
        &["admin", "list", "-o", "json"],
    )?)?;
    let mut rows = Vec::new();
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        rows.push((
            v["name"].as_str().context("name")?.to_owned(),
            v["root"].as_str().context("root")?.to_owned(),
            v["yours"].as_bool().context("yours")?,
        ));
    }
    rows.sort();
    Ok(rows)
}

/// Wait (10 s at most) until `t`'s credential is refused at the handshake by `addr` (the
/// client reads the alert as a transport error), not answered.
async fn refused_at_handshake(t: &Transport, addr: &str, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let code = status_code(t, addr).await;
        if code != tonic::Code::PermissionDenied {
            anyhow::ensure!(code != tonic::Code::Ok, "{what}: answered");
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{what}: still accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status_code(t: &Transport, addr: &str) -> tonic::Code {
    let Ok(ch) = t.channel(addr) else {
        return tonic::Code::Unavailable;
    };
    let mut req = tonic::Request::new(v1::StatusRequest {});
    req.set_timeout(Duration::from_secs(5));
    match v1::cluster_service_client::ClusterServiceClient::new(ch)
        .status(req)
        .await
    {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    }
}

async fn roots_api(
    c: &Cluster,
) -> anyhow::Result<v1::root_service_client::RootServiceClient<tonic::transport::Channel>> {
    Ok(v1::root_service_client::RootServiceClient::new(
        c.channel(1).await?,
    ))
}

/// `RootService/RetireRoot` through node 1: what refused it, if anything.
async fn retire(c: &Cluster, fingerprint: &str, force: bool) -> anyhow::Result<Option<String>> {
    let r = roots_api(c)
        .await?
        .retire_root(v1::RetireRootRequest {
            fingerprint: fingerprint.to_owned(),
            force,
        })
        .await;
    match r {
        Ok(_) => Ok(None),
        Err(s) if s.code() == tonic::Code::FailedPrecondition => Ok(Some(s.message().to_owned())),
        Err(s) => Err(s.into()),
    }
}

/// Rotating the root of the cluster's own transport. A prepared root is trusted at once;
/// once it is activated every member re-issues its certificate under it (node 2, which holds
/// no KEK, through node 1), served with the old root's cross-certificate, so an admin holding
/// only the old root keeps calling; a node joins with a token pinned to the new root.
/// Retiring the old root is refused while the caller's own credential depends on it, and
/// while other admins' (tracked by the log: `authsec admin list`), a member's or an
/// intermediate's do, all named in one answer; once it is retired (by force, past an admin who
/// did not rotate), a credential under it is refused at the handshake and the cluster goes
/// on, a restarted member too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transport_root_rotates_with_no_member_or_admin_cut_off() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    let mut c = Cluster::start(
        1,
        Options {
            spare: 2,
            ..Options::default()
        },
    )?;
    c.wait_leader(&[1], T).await?;
    let first = c.addr(1)?;
    c.join(1, 2, T).await?;
    c.wait_converged(&[1, 2], 0, T).await?;

    // A second admin, issued before the rotation: it trusts the old root only.
    let tmp = tempfile::tempdir()?;
    let ops_dir = tmp.path().join("ops");
    c.issue_admin(1, "ops", &ops_dir)?;
    let old_root = certs(&ops_dir.join("ca.crt"))?;
    assert_eq!(old_root.len(), 1);
    let old_root = old_root[0].to_vec();
    let ops = authsec_chaos_tests::admin_transport(&ops_dir)?;
    // A third, who will not rotate: it is cut off once the old root is retired (by force).
    let legacy_dir = tmp.path().join("legacy");
    c.issue_admin(1, "legacy", &legacy_dir)?;
    let legacy = authsec_chaos_tests::admin_transport(&legacy_dir)?;
    // It has no role: the node answers "permission denied", past the handshake.
    assert_eq!(
        status_code(&ops, &c.addr(2)?).await,
        tonic::Code::PermissionDenied
    );

    let prepared = roots_api(&c)
        .await?
        .prepare_root(v1::PrepareRootRequest {})
        .await?
        .into_inner()
        .root
        .context("the prepared root")?;
    let new_root = prepared.cert_der.clone();
    roots_api(&c)
        .await?
        .activate_root(v1::ActivateRootRequest {
            fingerprint: prepared.fingerprint.clone(),
            force: true,
        })
        .await?;
    // Every member re-issues its certificate under the new root within seconds.
    let deadline = Instant::now() + T;
    for id in [1, 2] {
        loop {
            let chain = c.served_chain(id).await?;
            if chains_to(&chain[..1], &new_root) {
                // The old root vouches for it through the cross-certificate in the chain.
                assert!(
                    chains_to(&chain, &old_root),
                    "node {id}: no path to the old root"
                );
                assert!(!chains_to(&chain[..1], &old_root));
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "node {id} still serves a certificate of the old root"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The admin holding only the old root still gets through to both.
    for id in [1, 2] {
        assert_eq!(
            status_code(&ops, &c.addr(id)?).await,
            tonic::Code::PermissionDenied,
            "node {id}"
        );
    }
    // A node joins with a token pinned to the new root, and gets a certificate under it.
    let (token, pin) = c.create_pinned_join_token(1, 600).await?;
    assert_eq!(pin, prepared.fingerprint, "tokens pin the signing root");
    c.prepare(3, None)?;
    c.spawn_join_pinned(3, &token, std::slice::from_ref(&first), false, &pin)?;
    c.wait_voter(1, 3, T).await?;
    c.wait_converged(&[1, 2, 3], 0, T).await?;
    assert!(chains_to(&c.served_chain(3).await?[..1], &new_root));

    // Retiring the old root as an admin whose own certificate it signed: refused.
    let fp_old = authsec_domain::fingerprint(&old_root);
    let refused = retire(&c, &fp_old, false).await?.unwrap_or_default();
    assert!(refused.contains("your own admin certificate"), "{refused}");
    // `authsec admin list` (the real CLI) shows both admins under the old root: the
    // bootstrap admin, recorded at the bootstrap, and ops.
    assert_eq!(
        admins_under(&c, &c.admin_dir())?,
        vec![
            ("legacy".to_owned(), fp_old.clone(), false),
            ("ops".to_owned(), fp_old.clone(), false),
            ("root".to_owned(), fp_old.clone(), true),
        ],
        "name, root, yours"
    );
    // Re-issued under the new root (the real CLI), the admin trusts both roots.
    c.rotate_admin(1)?;
    assert_eq!(certs(&c.admin_dir().join("ca.crt"))?.len(), 2);
    assert!(chains_to(
        &certs(&c.admin_dir().join("admin.crt"))?,
        &new_root
    ));
    // The other admin, who did not rotate, holds the retirement back, by name; so does a
    // member that cannot be asked which certificate it serves.
    c.stop(3)?;
    let refused = retire(&c, &fp_old, false).await?.unwrap_or_default();
    assert!(refused.contains("node 3 could not be checked"), "{refused}");
    assert!(refused.contains(r#"admin "ops""#), "{refused}");
    assert!(!refused.contains(r#"admin "root""#), "rotated: {refused}");
    c.spawn(3)?;
    c.wait_converged(&[1, 2, 3], 0, T).await?;
    let refused = retire(&c, &fp_old, false).await?.unwrap_or_default();
    assert!(refused.contains(r#"admin "ops""#), "{refused}");
    assert!(!refused.contains("node 3"), "{refused}");
    // ops rotates too (the real CLI, with its own credential and no role at all).
    authsec_chaos_tests::cli_ok(&authsec_chaos_tests::run_cli(
        &c.addr(1)?,
        &ops_dir,
        &["admin", "rotate"],
    )?)?;
    let new_fp = authsec_domain::fingerprint(&new_root);
    assert_eq!(
        admins_under(&c, &c.admin_dir())?,
        vec![
            ("legacy".to_owned(), fp_old.clone(), false),
            ("ops".to_owned(), new_fp.clone(), false),
            ("root".to_owned(), new_fp.clone(), true),
        ]
    );
    // Its new credential gets through to every node; its old one is refused.
    let ops_old = ops;
    let ops = authsec_chaos_tests::admin_transport(&ops_dir)?;
    for id in [1, 2, 3] {
        assert_eq!(
            status_code(&ops, &c.addr(id)?).await,
            tonic::Code::PermissionDenied,
            "node {id}"
        );
    }
    refused_at_handshake(&ops_old, &c.addr(1)?, "the replaced certificate").await?;
    // What is left: the admin who did not rotate, and the SVID intermediates the old root
    // signed, named together.
    let refused = retire(&c, &fp_old, false).await?.unwrap_or_default();
    assert!(refused.contains(r#"admin "legacy""#), "{refused}");
    assert!(refused.contains("intermediates in use"), "{refused}");
    assert!(!refused.contains(r#"admin "ops""#), "rotated: {refused}");
    assert!(!refused.contains("node "), "{refused}");
    assert_eq!(retire(&c, &fp_old, true).await?, None);
    // Every node refuses a credential under the retired root from the commit on.
    c.wait_converged(&[1, 2, 3], 0, T).await?;
    for id in [1, 2, 3] {
        refused_at_handshake(
            &legacy,
            &c.addr(id)?,
            &format!("node {id}: a certificate of the retired root"),
        )
        .await?;
    }
    // Node 2 holds no KEK, node 3 joined under the new root; a restart of node 2 comes back
    // on the trust it kept on disk, and the cluster writes.
    c.stop(2)?;
    c.spawn(2)?;
    c.wait_converged(&[1, 2, 3], 0, T).await?;
    assert_eq!(
        certs(&c.data_dir(2)?.join("tls").join("ca.crt"))?,
        vec![CertificateDer::from(new_root.clone())],
        "node 2 trusts the new root only"
    );
    c.clients(2)
        .await?
        .register_client(register_req("after-rotation"))
        .await?;
    Ok(())
}

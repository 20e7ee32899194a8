//! The identity model against a real three-node cluster over mutual TLS, driven the way a new
//! user drives it: the `authsec` CLI as a separate process. Onboarding an AI agent, a
//! delegation from grant to revocation, a race between two nodes, admin permissions, and bad
//! input that names its field and writes nothing.

use std::time::{Duration, Instant};

use authsec_api::v1;
use authsec_chaos_tests::{Cluster, Options, TRUST_DOMAIN};
use authsec_domain::AuditRecord;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

use authsec_chaos_tests::{cli_ok as ok, run_cli as run};

fn json_lines(s: &str) -> anyhow::Result<Vec<Value>> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

/// The archive head (sequence) of a node.
async fn head(c: &Cluster, id: u64) -> anyhow::Result<u64> {
    Ok(c.status(id).await?.archive_head.map_or(0, |h| h.sequence))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_an_ai_agent_from_the_cli_on_three_nodes() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    let c = Cluster::start(3, Options::default())?;
    c.wait_leader(&[1, 2, 3], T).await?;
    let admin = c.admin_dir();
    let a1 = c.addr(1)?;

    // Onboard through node 2 (a follower or the leader: either forwards or commits).
    let out = run(
        &c.addr(2)?,
        &admin,
        &[
            "client",
            "create",
            "--kind",
            "ai-agent",
            "--id",
            "billing-agent",
            "--scope",
            "orders:*",
            "--owner",
            "payments-team",
            "--output",
            "json",
        ],
    )?;
    let created = json_lines(&ok(&out)?)?.remove(0);
    let index = created["log_index"].as_u64().unwrap_or(0);
    assert!(index > 0, "{created}");
    let secret = created["client_secret"].as_str().unwrap_or("").to_owned();
    assert!(
        secret.starts_with("as_cs_") && secret.len() == 6 + 43,
        "{secret}"
    );
    let entry = &created["entry"];
    assert_eq!(
        entry["spiffe_id"],
        format!("spiffe://{TRUST_DOMAIN}/agent/billing-agent"),
        "{created}"
    );
    assert_eq!(entry["status"], "awaiting-agent");
    assert_eq!(entry["client_id"], "billing-agent");
    assert_eq!(created["next_steps"].as_array().map(Vec::len), Some(4));
    let entry_id = entry["entry_id"].as_str().unwrap_or("").to_owned();

    // The table a person sees names the secret once and the next steps.
    let table = ok(&run(
        &a1,
        &admin,
        &[
            "client",
            "create",
            "--kind",
            "ai-agent",
            "--id",
            "support-agent",
        ],
    )?)?;
    assert!(table.contains("Client secret (shown once"), "{table}");
    assert!(table.contains("awaiting-agent"), "{table}");
    assert!(table.contains("Next steps:"), "{table}");

    // Client and entry were created by one command at one committed index, and every node
    // has both.
    c.wait_converged(&[1, 2, 3], 0, T).await?;
    for id in 1..=3 {
        let recs = c.records(id).await?;
        let at = |kind: &str, subject: &str| {
            recs.iter()
                .filter(|r| r.kind == kind && r.subject == subject)
                .filter_map(|r| AuditRecord::from_bytes(&r.bytes).ok())
                .map(|r| r.log_index)
                .collect::<Vec<_>>()
        };
        assert_eq!(at("client.created", "client:billing-agent"), vec![index]);
        assert_eq!(
            at("entry.created", &format!("entry:{entry_id}")),
            vec![index]
        );
        for r in &recs {
            assert!(
                !String::from_utf8_lossy(&r.bytes).contains(&secret[6..]),
                "the secret is in an audit record on node {id}"
            );
        }
        let listed = json_lines(&ok(&run(
            &c.addr(id)?,
            &admin,
            &[
                "entry",
                "list",
                "--client",
                "billing-agent",
                "--output",
                "json",
            ],
        )?)?)?;
        assert_eq!(listed.len(), 1, "node {id}: {listed:?}");
        assert_eq!(listed[0]["status"], "awaiting-agent");
        assert_eq!(listed[0]["entry_id"], entry_id.as_str());
    }
    let table = ok(&run(&c.addr(3)?, &admin, &["entry", "list"])?)?;
    assert!(
        table.contains("awaiting-agent") && table.contains("billing-agent"),
        "{table}"
    );

    // The operator's next step: a parent agent and selectors. The entry stays awaiting-agent
    // until that agent attests (tests/agent.rs shows it turn active, then agent-offline).
    ok(&run(
        &a1,
        &admin,
        &[
            "entry",
            "update",
            &entry_id,
            "--parent",
            &format!("spiffe://{TRUST_DOMAIN}/authsec/agent/host-1"),
            "--selector",
            "unix:uid:1000",
            "--expected-revision",
            "1",
        ],
    )?)?;
    let got = json_lines(&ok(&run(
        &a1,
        &admin,
        &["entry", "get", &entry_id, "--output", "json"],
    )?)?)?;
    assert_eq!(got[0]["status"], "awaiting-agent", "{got:?}");
    assert_eq!(
        got[0]["parent_id"],
        format!("spiffe://{TRUST_DOMAIN}/authsec/agent/host-1")
    );
    assert_eq!(got[0]["revision"], 2);

    // Rotating the secret: a new one, the old one valid for the overlap.
    let rotated = json_lines(&ok(&run(
        &a1,
        &admin,
        &[
            "client",
            "rotate-secret",
            "billing-agent",
            "--overlap",
            "1h",
            "--output",
            "json",
        ],
    )?)?)?;
    let new_secret = rotated[0]["client_secret"].as_str().unwrap_or("");
    assert!(
        new_secret.starts_with("as_cs_") && new_secret != secret,
        "{rotated:?}"
    );
    assert!(rotated[0]["previous_valid_until_ms"].as_u64().unwrap_or(0) > 0);
    let detail = json_lines(&ok(&run(
        &a1,
        &admin,
        &["client", "get", "billing-agent", "--output", "json"],
    )?)?)?;
    assert_eq!(
        detail[0]["auth_methods"],
        serde_json::json!(["client_secret"])
    );
    assert_eq!(
        detail[0]["revision"], 2,
        "a rotation bumps the client's revision"
    );

    // Delegation as a user sets it up: roles, bindings, a grant, a check, a revocation.
    for args in [
        vec![
            "role",
            "create",
            "order-reader",
            "--permission",
            "orders:read",
            "--permission",
            "orders:list",
        ],
        vec!["role", "create", "order-admin", "--permission", "orders:*"],
        vec!["bind", "order-reader", "client:billing-agent"],
        vec![
            "client", "create", "--kind", "service", "--id", "checkout", "--scope", "orders:*",
        ],
        vec!["bind", "order-admin", "client:checkout"],
    ] {
        ok(&run(&a1, &admin, &args)?)?;
    }
    let grant = json_lines(&ok(&run(
        &a1,
        &admin,
        &[
            "delegation",
            "create",
            "--from",
            "client:checkout",
            "--to",
            "billing-agent",
            "--permission",
            "orders:read",
            "--ttl",
            "1h",
            "--id",
            "d-checkout-1",
            "--output",
            "json",
        ],
    )?)?)?;
    assert_eq!(grant[0]["status"], "active", "{grant:?}");
    let check = |scopes: &[&str]| {
        let mut args = vec!["delegation", "check", "billing-agent"];
        args.extend_from_slice(scopes);
        args.extend_from_slice(&["--delegation", "d-checkout-1", "--output", "json"]);
        run(&a1, &admin, &args)
    };
    let allowed = check(&["orders:read"])?;
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    // More than the grant: refused, not cut (exit 5, FAILED_PRECONDITION).
    let more = check(&["orders:read", "orders:list"])?;
    assert_eq!(more.status.code(), Some(5));
    // More than the agent's roles, asked of the grant itself: refused with the reason.
    let over = run(
        &a1,
        &admin,
        &[
            "delegation",
            "create",
            "--from",
            "client:checkout",
            "--to",
            "billing-agent",
            "--permission",
            "orders:delete",
        ],
    )?;
    assert_eq!(
        over.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&over.stderr)
    );
    assert!(String::from_utf8_lossy(&over.stderr).contains("no role of the delegate"));
    // Admin permissions are never delegable.
    let adm = run(
        &a1,
        &admin,
        &[
            "delegation",
            "create",
            "--from",
            "client:checkout",
            "--to",
            "billing-agent",
            "--permission",
            "authsec.admin:clients.write",
        ],
    )?;
    assert_eq!(
        adm.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&adm.stderr)
    );
    ok(&run(
        &a1,
        &admin,
        &["revoke", "delegation", "d-checkout-1"],
    )?)?;
    let after = check(&["orders:read"])?;
    assert_eq!(after.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&after.stdout).contains("revoked"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_client_created_on_two_nodes_at_once_succeeds_once() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    let c = Cluster::start(3, Options::default())?;
    c.wait_leader(&[1, 2, 3], T).await?;
    let admin = c.admin_dir();
    let (a1, a2) = (c.addr(1)?, c.addr(2)?);
    for round in 0..5 {
        let id = format!("racer-{round}");
        let spawn = |addr: &str| {
            std::process::Command::new(authsec_chaos_tests::authsec_bin()?)
                .args(["client", "create", "--kind", "service", "--id", &id])
                .args(["--endpoint", addr])
                .arg("--admin-dir")
                .arg(&admin)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(anyhow::Error::from)
        };
        // Both processes are started before either is waited on.
        let (p1, p2) = (spawn(&a1)?, spawn(&a2)?);
        let outs = [p1.wait_with_output()?, p2.wait_with_output()?];
        let won = outs.iter().filter(|o| o.status.success()).count();
        assert_eq!(won, 1, "round {round}: exactly one succeeds");
        let lost = outs
            .iter()
            .find(|o| !o.status.success())
            .ok_or_else(|| anyhow::anyhow!("no loser"))?;
        let err = String::from_utf8_lossy(&lost.stderr);
        assert_eq!(lost.status.code(), Some(4), "round {round}: {err}");
        assert!(err.contains("ALREADY_EXISTS") && err.contains(&id), "{err}");
    }
    c.wait_converged(&[1, 2, 3], 0, T).await?;
    for id in 1..=3 {
        let ids = c.client_ids(id).await?;
        assert_eq!(ids.iter().filter(|c| c.starts_with("racer-")).count(), 5);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_permissions_and_bad_input_are_refused_and_write_nothing() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    let c = Cluster::start(3, Options::default())?;
    let leader = c.wait_leader(&[1, 2, 3], T).await?;
    let admin = c.admin_dir();
    let a1 = c.addr(1)?;
    let tmp = tempfile::tempdir()?;

    // A reader: an admin whose role grants only clients.read.
    let reader_dir = tmp.path().join("reader");
    c.issue_admin(1, "reader", &reader_dir)?;
    ok(&run(
        &a1,
        &admin,
        &[
            "role",
            "create",
            "client-readers",
            "--permission",
            "authsec.admin:clients.read",
        ],
    )?)?;
    ok(&run(
        &a1,
        &admin,
        &[
            "bind",
            "client-readers",
            &format!("spiffe://{TRUST_DOMAIN}/authsec/admin/reader"),
        ],
    )?)?;
    ok(&run(
        &a1,
        &admin,
        &["client", "create", "--kind", "service", "--id", "existing"],
    )?)?;
    // The nodes' own key publications are done before counting.
    c.wait_issuing(&[1, 2, 3], T).await?;
    c.wait_converged(&[1, 2, 3], 0, T).await?;

    let before = head(&c, leader).await?;
    // Allowed: reading.
    ok(&run(&a1, &reader_dir, &["client", "list"])?)?;
    // Refused: writing, on every node, with PERMISSION_DENIED (exit 6).
    for id in 1..=3 {
        let out = run(
            &c.addr(id)?,
            &reader_dir,
            &["client", "create", "--kind", "service", "--id", "by-reader"],
        )?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "node {id}: {err}");
        assert!(
            err.contains("PERMISSION_DENIED") && err.contains("authsec.admin:clients.write"),
            "{err}"
        );
        let out = run(&c.addr(id)?, &reader_dir, &["role", "list"])?;
        assert_eq!(
            out.status.code(),
            Some(6),
            "roles.read is not granted either"
        );
    }

    // Bad input: INVALID_ARGUMENT (exit 2) naming the field.
    let long = "x".repeat(5000);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["entry", "create", "--spiffe-id", "spiffe://Test/x"],
            "spiffe_id",
        ),
        (
            vec![
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://test.authsec/a//b",
            ],
            "spiffe_id",
        ),
        (vec!["bind", "no-such-role", "client:existing"], "role"),
        (
            vec!["role", "create", "bad", "--permission", "ord*:read"],
            "permissions",
        ),
        (
            vec!["role", "create", "bad2", "--permission", "orders"],
            "permissions",
        ),
        (
            vec![
                "client",
                "create",
                "--kind",
                "service",
                "--id",
                "long",
                "--description",
                &long,
            ],
            "description",
        ),
        (
            vec!["client", "create", "--kind", "service", "--id", "bad id"],
            "client_id",
        ),
        (
            vec![
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://test.authsec/w",
                "--selector",
                "nocolon",
            ],
            "selectors",
        ),
    ];
    for (args, field) in &cases {
        let out = run(&a1, &admin, args)?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("INVALID_ARGUMENT") && err.contains(&format!("invalid {field}")),
            "{args:?}: {err}"
        );
    }
    // Page size over the limit, straight through the API.
    let status = v1::client_service_client::ClientServiceClient::new(c.channel(1).await?)
        .list_clients(v1::ListClientsRequest {
            page_size: 1001,
            ..Default::default()
        })
        .await
        .expect_err("over the limit");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("page_size"),
        "{}",
        status.message()
    );

    // A stale expected revision: FAILED_PRECONDITION (exit 5) naming the field.
    let out = run(
        &a1,
        &admin,
        &[
            "client",
            "update",
            "existing",
            "--owner",
            "me",
            "--expected-revision",
            "7",
        ],
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("FAILED_PRECONDITION") && err.contains("expected_revision"),
        "{err}"
    );

    // Nothing above wrote an event, on any node.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut all = Vec::new();
        for id in 1..=3 {
            all.push(head(&c, id).await?);
        }
        if all.iter().all(|h| *h == before) {
            break;
        }
        assert!(
            Instant::now() < deadline && all.iter().all(|h| *h <= before),
            "heads {all:?}, expected {before}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = run(&a1, &admin, &["client", "get", "by-reader"])?;
    assert_eq!(
        out.status.code(),
        Some(3),
        "NOT_FOUND: the refused create wrote nothing"
    );
    Ok(())
}

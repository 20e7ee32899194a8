//! The console in a real browser: headless Chromium (Debian's `chromium`, driven over
//! WebDriver by `chromium-driver`) against a three-node cluster. The operator's flow, end to
//! end: sign in with a one-time link, onboard an AI agent and see its workload entry
//! `awaiting-agent`, start an agent and see the entry turn `active` without reloading, create
//! a role and a delegation and see the effective permissions, revoke it seeing the cascade.
//! Every page is saved as a screenshot at 1280 px and at 390 px
//! (`target/console-screenshots/`, or `$AUTHSEC_SCREENSHOTS`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use authsec_api::v1::{self, agent_service_client::AgentServiceClient};
use authsec_chaos_tests::webdriver::Browser;
use authsec_chaos_tests::{cli_ok, run_cli, AgentProc, Cluster, Options};

const T: Duration = Duration::from_secs(30);

fn shots_dir() -> PathBuf {
    std::env::var_os("AUTHSEC_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots")
        })
}

/// Both widths of the page now open.
async fn shoot(b: &Browser, name: &str) -> anyhow::Result<()> {
    for (w, h) in [(1280, 900), (390, 844)] {
        b.resize(w, h).await?;
        b.screenshot(&shots_dir().join(format!("{name}-{w}.png")))
            .await?;
    }
    b.resize(1280, 900).await
}

/// Fill and submit the Clients page's create form (the page must be open).
async fn create_client(b: &Browser, kind: &str, id: &str, scopes: &str) -> anyhow::Result<()> {
    b.select("#create-client select[name=kind]", kind).await?;
    b.fill("#create-client input[name=client_id]", id).await?;
    b.fill("#create-client input[name=display_name]", id)
        .await?;
    b.fill("#create-client input[name=allowed_scopes]", scopes)
        .await?;
    b.click("#create-client button[type=submit]").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_onboards_an_agent_and_delegates_in_the_browser() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    let c = Cluster::start(
        3,
        Options {
            extra_toml: "[agents]\nheartbeat_s = 1\noffline_after_heartbeats = 3\n".into(),
            ..Options::default()
        },
    )?;
    c.wait_leader(&[1, 2, 3], T).await?;
    c.wait_issuing(&[1, 2, 3], T).await?;
    let base = format!("https://{}", c.oauth_addr(1)?);
    let b = Browser::start(1280, 900).await?;

    // Signed out: the console sends the browser to sign in.
    b.goto(&format!("{base}/ui/clients")).await?;
    b.wait_text("h1", "Sign in", T).await?;
    shoot(&b, "sign-in").await?;

    // Sign in with a one-time link from the CLI.
    let out = run_cli(&c.addr(1)?, &c.admin_dir(), &["console", "login", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(cli_ok(&out)?.trim())?;
    let link = v["url"].as_str().context("url")?.to_owned();
    b.goto(&link).await?;
    b.wait_text("main", "/authsec/admin/root", T).await?;
    b.click("#sign-in").await?;
    b.wait_text("h1", "Clients", T).await?;
    shoot(&b, "clients-empty").await?;

    // Onboard an AI agent: its workload entry is there at once, awaiting its agent.
    create_client(&b, "ai_agent", "research-agent", "orders:read orders:list").await?;
    b.wait_text("#entry-status", "awaiting-agent", T).await?;
    let spiffe_id = b.text("#entry-spiffe-id").await?;
    assert!(spiffe_id.ends_with("/research-agent"), "{spiffe_id}");
    shoot(&b, "client-created").await?;

    // The workloads page, open while the agent starts: the entry turns active without a
    // reload (server-sent events).
    let entry_id = {
        let list = v1::entry_service_client::EntryServiceClient::new(c.channel(1).await?)
            .list_entries(v1::ListEntriesRequest {
                spiffe_id: spiffe_id.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        list.entries.first().context("the entry")?.entry_id.clone()
    };
    b.goto(&format!("{base}/ui/workloads")).await?;
    let row = format!("tr[data-entry=\"{entry_id}\"] .status");
    b.wait_text(&row, "awaiting-agent", T).await?;
    b.wait_text("#live", "Live", T).await?;
    shoot(&b, "workloads-awaiting").await?;
    let t = AgentServiceClient::new(c.channel(1).await?)
        .create_join_token(v1::CreateAgentTokenRequest {
            ttl_seconds: 600,
            name: "host1".into(),
        })
        .await?
        .into_inner();
    let ai_bin = authsec_chaos_tests::example_bin("ai-agent")?;
    v1::entry_service_client::EntryServiceClient::new(c.channel(1).await?)
        .update_entry(v1::UpdateEntryRequest {
            entry_id: entry_id.clone(),
            parent_id: Some(t.agent_id.clone()),
            selectors: Some(v1::StringList {
                values: vec![
                    format!("unix:uid:{}", authsec_chaos_tests::current_uid()),
                    format!("unix:path:{}", ai_bin.display()),
                ],
            }),
            ..Default::default()
        })
        .await?;
    let dir = tempfile::tempdir()?;
    let mut agent = AgentProc::spawn(&c, &dir.path().join("a1"), &[1, 2, 3], &t.token)?;
    agent.wait_serving(T)?;
    b.wait_text(&row, "active", T).await?;
    assert_eq!(
        b.url().await?,
        format!("{base}/ui/workloads"),
        "no navigation happened"
    );
    shoot(&b, "workloads-active").await?;
    // The entry's page lists the SVIDs its agent was issued, and when they renew.
    let edit_url = format!("{base}/ui/workloads/edit?id={entry_id}");
    let deadline = std::time::Instant::now() + T;
    loop {
        b.goto(&edit_url).await?;
        if b.source().await?.contains("X.509-SVID") {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no SVID listed for the entry: {}",
            b.source().await?
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shoot(&b, "workload").await?;
    b.goto(&format!("{base}/ui/agents")).await?;
    b.wait_text("#agents", "/authsec/agent/host1", T).await?;
    shoot(&b, "agents").await?;

    // Roles and a delegation. Both ends hold orders:read and orders:list and the delegation
    // grants both; when the agent's roles shrink to orders:read, the effective permissions
    // shown are the intersection.
    b.goto(&format!("{base}/ui/clients")).await?;
    create_client(&b, "service", "orders-svc", "orders:read orders:list").await?;
    b.wait_text("h1", "orders-svc", T).await?;
    b.goto(&format!("{base}/ui/access")).await?;
    for (name, perms) in [
        ("orders-reader", "orders:read orders:list"),
        ("orders-basic", "orders:read"),
    ] {
        b.fill("#create-role input[name=name]", name).await?;
        b.fill("#create-role input[name=permissions]", perms)
            .await?;
        b.click("#create-role button[type=submit]").await?;
        b.wait_text("#roles", name, T).await?;
    }
    let bind = |role: &'static str, subject: &'static str| {
        let b = &b;
        async move {
            b.fill("#bind-role input[name=role]", role).await?;
            b.fill("#bind-role input[name=subject]", subject).await?;
            b.click("#bind-role button[type=submit]").await?;
            b.wait_text("#roles", subject, T).await
        }
    };
    bind("orders-reader", "client:research-agent").await?;
    bind("orders-reader", "client:orders-svc").await?;
    b.fill(
        "#create-delegation input[name=delegator]",
        "client:orders-svc",
    )
    .await?;
    b.fill(
        "#create-delegation input[name=delegate]",
        "client:research-agent",
    )
    .await?;
    b.fill(
        "#create-delegation input[name=permissions]",
        "orders:read orders:list",
    )
    .await?;
    b.fill("#create-delegation input[name=delegation_id]", "d1")
        .await?;
    b.click("#create-delegation button[type=submit]").await?;
    let d1 = "tr[data-delegation=\"d1\"]";
    b.wait_text(&format!("{d1} .effective"), "orders:list orders:read", T)
        .await?;
    authsec_chaos_tests::oauth::Admin(&c)
        .unbind("orders-reader", "client:research-agent")
        .await?;
    bind("orders-basic", "client:research-agent").await?;
    c.wait_converged(&[1, 2, 3], 0, T).await?;
    b.goto(&format!("{base}/ui/access")).await?;
    let effective = b.text(&format!("{d1} .effective")).await?;
    assert_eq!(effective, "orders:read", "the intersection, not the grant");
    shoot(&b, "delegation").await?;

    // Revoke it, seeing the cascade first.
    b.click(&format!("{d1} a")).await?;
    b.wait_text("#cascade", "d1", T).await?;
    shoot(&b, "revoke-cascade").await?;
    b.click("#confirm-revoke").await?;
    b.wait_text(&format!("{d1} .status"), "revoked", T).await?;

    // All of it on the audit page, and a record appearing there live.
    b.goto(&format!("{base}/ui/audit")).await?;
    for want in [
        "client:research-agent",
        "delegation:d1",
        "/authsec/admin/root",
    ] {
        b.wait_text("#audit", want, T).await?;
    }
    b.wait_text("#live", "Following", T).await?;
    shoot(&b, "audit").await?;
    authsec_chaos_tests::oauth::Admin(&c)
        .role("late-role", &["orders:read"])
        .await?;
    b.wait_text("#audit", "role:late-role", T).await?;

    b.goto(&format!("{base}/ui/cluster")).await?;
    b.wait_text("#members", "leader", T).await?;
    shoot(&b, "cluster").await?;

    // Ban the agent from its page: it shows banned, and the agent, refused at its next
    // call, withdraws its SVIDs and exits.
    b.goto(&format!("{base}/ui/agents")).await?;
    b.click("#agents button").await?;
    b.wait_text("#agents", "banned", T).await?;
    let exit = agent.wait_exit(T)?;
    eprintln!("the banned agent exited: {exit}");
    // Once banned, its record may go.
    b.click("#agents .delete-agent").await?;
    b.wait_text("main", "No agent has attested yet", T).await?;
    eprintln!("screenshots in {}", shots_dir().display());
    drop(agent);
    Ok(())
}

//! The authsec agent end to end: three real nodes, a real `authsec-agent` process attested
//! with a join token, and workloads that are separate processes calling its Workload API over
//! a unix socket. Issue 8's acceptance.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use authsec_api::v1::{self, agent_service_client::AgentServiceClient};
use authsec_api::workload as w;
use authsec_chaos_tests::{agent_bin, AgentProc, Cluster, Options, TRUST_DOMAIN};
use tonic::transport::Channel;

fn opts() -> Options {
    Options {
        extra_toml: "[agents]\nheartbeat_s = 1\noffline_after_heartbeats = 3\n".into(),
        ..Options::default()
    }
}

async fn token(c: &Cluster, name: &str) -> anyhow::Result<v1::CreateAgentTokenResponse> {
    Ok(AgentServiceClient::new(c.channel(1).await?)
        .create_join_token(v1::CreateAgentTokenRequest {
            ttl_seconds: 600,
            name: name.into(),
        })
        .await?
        .into_inner())
}

async fn entry(
    c: &Cluster,
    path: &str,
    parent: &str,
    selectors: Vec<String>,
    x509_ttl: u32,
) -> anyhow::Result<String> {
    let r = v1::entry_service_client::EntryServiceClient::new(c.channel(1).await?)
        .create_entry(v1::CreateEntryRequest {
            spiffe_id: format!("spiffe://{TRUST_DOMAIN}/{path}"),
            parent_id: parent.into(),
            selectors,
            x509_ttl_seconds: x509_ttl,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(r.entry.map(|e| e.entry_id).unwrap_or_default())
}

async fn entry_status(c: &Cluster, id: &str) -> anyhow::Result<String> {
    Ok(
        v1::entry_service_client::EntryServiceClient::new(c.channel(2).await?)
            .get_entry(v1::GetEntryRequest {
                entry_id: id.into(),
                consistency: 0,
            })
            .await?
            .into_inner()
            .status,
    )
}

async fn wait_status(c: &Cluster, id: &str, want: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = entry_status(c, id).await?;
        if s == want {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "entry {id} is {s}, not {want}, after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A child process killed when the test ends, however it ends.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the example tool service; wait for the line that says it listens.
fn start_tool(
    mut cmd: std::process::Command,
    out: &Path,
    err: &Path,
) -> anyhow::Result<ChildGuard> {
    let mut tool = ChildGuard(
        cmd.stdout(std::fs::File::create(out)?)
            .stderr(std::fs::File::create(err)?)
            .spawn()?,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(out)?.contains("listening") {
        anyhow::ensure!(
            tool.0.try_wait()?.is_none() && Instant::now() < deadline,
            "the tool service did not start: {}",
            std::fs::read_to_string(err)?
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(tool)
}

/// A Workload API client in this (test) process, over the agent's socket.
async fn workload_client(
    socket: &Path,
) -> anyhow::Result<w::spiffe_workload_api_client::SpiffeWorkloadApiClient<Channel>> {
    let ch = authsec_chaos_tests::unix_channel(socket).await?;
    Ok(w::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(
        ch,
    ))
}

/// A Workload API request with the security header.
fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    r
}

/// Run `authsec-agent api <args>` until it prints a line that satisfies `ok`, within
/// `timeout` (the entry may still be syncing to the agent).
fn api_until(
    agent: &AgentProc,
    args: &[&str],
    timeout: Duration,
    ok: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let (st, out, err) = agent.api(args)?;
        if st.success() && ok(&out) {
            return Ok(out);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "`authsec-agent api {}` never answered as expected: status {st}, stdout {out}, stderr {err}",
            args.join(" ")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Issue 8, end to end: attestation, status, workload attestation by path, the security header,
/// no identity, another workload's SVID never served, rotation every half-life with no failed
/// call across kill -9 of the leader and of the agent's node, a root rotation pushed as a bundle
/// update, withdrawal on entry deletion, a consumed token refused, a ban, and agent-offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_serves_workloads_through_rotation_failures_and_withdrawal() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    let mut c = Cluster::start(3, opts())?;
    c.wait_issuing(&[1, 2, 3], Duration::from_secs(30)).await?;
    let dir = tempfile::tempdir()?;
    let agent_id = format!("spiffe://{TRUST_DOMAIN}/authsec/agent/host1");

    // The operator names the agent and its workloads before the agent runs.
    let t = token(&c, "host1").await?;
    assert_eq!(t.agent_id, agent_id);
    let probe_path = agent_bin()?;
    let uid_sel = format!("unix:uid:{}", authsec_chaos_tests::current_uid());
    let probe = entry(
        &c,
        "workload/probe",
        &agent_id,
        vec![
            uid_sel.clone(),
            format!("unix:path:{}", probe_path.display()),
        ],
        30,
    )
    .await?;
    let other = entry(
        &c,
        "workload/other",
        &agent_id,
        vec![uid_sel.clone(), "unix:path:/opt/other/bin/other".into()],
        30,
    )
    .await?;
    assert_eq!(entry_status(&c, &probe).await?, "awaiting-agent");
    // The example AI agent and the tool service it calls: workloads of their own (by path).
    let ai_bin = authsec_chaos_tests::example_bin("ai-agent")?;
    let tool_bin = authsec_chaos_tests::example_bin("tool-service")?;
    let ai_id = format!("spiffe://{TRUST_DOMAIN}/agents/ai");
    let tool_id = format!("spiffe://{TRUST_DOMAIN}/tools/echo");
    entry(
        &c,
        "agents/ai",
        &agent_id,
        vec![uid_sel.clone(), format!("unix:path:{}", ai_bin.display())],
        30,
    )
    .await?;
    entry(
        &c,
        "tools/echo",
        &agent_id,
        vec![uid_sel.clone(), format!("unix:path:{}", tool_bin.display())],
        30,
    )
    .await?;

    // Attestation: the agent serves; its entries turn active.
    let mut agent = AgentProc::spawn(&c, &dir.path().join("a1"), &[1, 2, 3], &t.token)?;
    agent.wait_serving(Duration::from_secs(30))?;
    wait_status(&c, &probe, "active", Duration::from_secs(10)).await?;

    // The probe (a separate process, matched by its path) gets its own SVID, never the other's.
    let out = api_until(&agent, &["fetch-x509"], Duration::from_secs(20), |o| {
        o.contains("workload/probe")
    })?;
    assert!(!out.contains("workload/other"), "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim())?;
    assert_eq!(v["svids"].as_array().map(Vec::len), Some(1), "{out}");
    assert_eq!(
        v["svids"][0]["chain_len"], 2,
        "leaf and node intermediate: {out}"
    );

    // This test process matches no entry (its path differs): PermissionDenied. Without the
    // security header: InvalidArgument.
    let mut wc = workload_client(&agent.socket).await?;
    let denied = wc
        .fetch_x509svid(with_header(w::X509svidRequest {}))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(denied, Some(tonic::Code::PermissionDenied));
    let no_header = wc
        .fetch_jwtsvid(tonic::Request::new(w::JwtsvidRequest {
            audience: vec!["x".into()],
            spiffe_id: String::new(),
        }))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(no_header, Some(tonic::Code::InvalidArgument));

    // JWT-SVIDs: issued, cached, validated by the agent.
    let jwt_out = api_until(
        &agent,
        &["fetch-jwt", "--audience", "tools"],
        Duration::from_secs(10),
        |o| o.contains("workload/probe"),
    )?;
    let jwt: serde_json::Value = serde_json::from_str(jwt_out.lines().next().unwrap_or(""))?;
    let token_s = jwt["token"].as_str().unwrap_or("").to_owned();
    let again = api_until(
        &agent,
        &["fetch-jwt", "--audience", "tools"],
        Duration::from_secs(5),
        |_| true,
    )?;
    assert!(again.contains(&token_s), "served from the cache: {again}");
    let valid = api_until(
        &agent,
        &["validate-jwt", "--audience", "tools", &token_s],
        Duration::from_secs(5),
        |o| o.contains("workload/probe"),
    )?;
    assert!(valid.contains("workload/probe"));
    let (st, _, err) = agent.api(&["validate-jwt", "--audience", "elsewhere", &token_s])?;
    assert!(!st.success() && err.contains("InvalidArgument"), "{err}");

    // The tool service, over mTLS with its own SVID, accepting only the AI agent's SPIFFE ID.
    let socket_url = format!("unix://{}", agent.socket.display());
    let tool_port = authsec_chaos_tests::free_port()?;
    let tool_addr = format!("127.0.0.1:{tool_port}");
    let tool_log = dir.path().join("tool.log");
    let mut cmd = std::process::Command::new(&tool_bin);
    cmd.args(["--listen", &tool_addr, "--workload-api", &socket_url])
        .args(["--trust-domain", TRUST_DOMAIN, "--allow", &ai_id]);
    let tool = start_tool(cmd, &tool_log, &dir.path().join("tool.err"))?;
    // The AI agent calls it once a second for the whole window below.
    let ai_log = dir.path().join("ai.jsonl");
    let mut ai = ChildGuard(
        std::process::Command::new(&ai_bin)
            .args([
                "--workload-api",
                &socket_url,
                "--tool",
                &tool_addr,
                "--tool-id",
                &tool_id,
            ])
            .args(["--calls", "68"])
            .stdout(std::fs::File::create(&ai_log)?)
            .stderr(std::fs::File::create(dir.path().join("ai.err"))?)
            .spawn()?,
    );

    // Rotation over a 70 s window (TTL 30 s: renewed at half-life), while the leader and then
    // the node the agent prefers are killed with -9: the stream never fails.
    let watch_log = dir.path().join("watch.jsonl");
    let mut watcher = std::process::Command::new(agent_bin()?)
        .args(["api", "watch-x509", "--socket"])
        .arg(&agent.socket)
        .stdout(std::fs::File::create(&watch_log)?)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let window = Instant::now();
    let mut jwt_calls = 0;
    let mut jwt_failures = Vec::new();
    let mut killed = Vec::new();
    // Root rotation: a prepared root enters the bundle, pushed to the workload.
    let roots = v1::root_service_client::RootServiceClient::new(c.channel(1).await?)
        .prepare_root(v1::PrepareRootRequest {})
        .await?
        .into_inner();
    let new_root = roots.root.map(|r| r.fingerprint).unwrap_or_default();
    let mut activated = false;
    while window.elapsed() < Duration::from_secs(70) {
        let e = window.elapsed();
        if e > Duration::from_secs(8) && !activated {
            // Activate it: nodes' intermediates move under the new root; SVIDs follow at
            // their next rotation, and the workloads' calls continue.
            v1::root_service_client::RootServiceClient::new(c.channel(1).await?)
                .activate_root(v1::ActivateRootRequest {
                    fingerprint: new_root.clone(),
                    force: true,
                })
                .await?;
            activated = true;
        }
        if e > Duration::from_secs(20) && killed.is_empty() {
            let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(10)).await?;
            c.kill9(leader)?;
            killed.push(leader);
        } else if e > Duration::from_secs(40) && killed.len() == 1 {
            // Bring the first back, then kill the node the agent talks to now. The agent
            // prefers its servers in order (1, 2, 3) and fails over to the next: if the leader
            // killed first was node 1, it moved to node 2; otherwise it is still on node 1.
            // Either way that is the first node other than the one killed first.
            let first = killed[0];
            c.spawn(first)?;
            c.wait_issuing(&[first], Duration::from_secs(30)).await?;
            let victim = [1u64, 2, 3].into_iter().find(|n| *n != first).unwrap_or(1);
            c.kill9(victim)?;
            killed.push(victim);
        }
        // A fresh audience each time: a node must mint it, through failover.
        let aud = format!("aud-{jwt_calls}");
        let (st, out, err) = agent.api(&["fetch-jwt", "--audience", &aud])?;
        jwt_calls += 1;
        if !st.success() || !out.contains("workload/probe") {
            jwt_failures.push(format!("{aud}: {err}"));
        }
        // Cached X.509: always served.
        let (st, _, err) = agent.api(&["fetch-x509"])?;
        anyhow::ensure!(st.success(), "fetch-x509 failed during the window: {err}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&watch_log)?
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        lines.iter().all(|l| l.get("error").is_none()),
        "the stream failed: {lines:?}"
    );
    let serials: BTreeSet<String> = lines
        .iter()
        .filter_map(|l| l["svids"][0]["serial"].as_str().map(str::to_owned))
        .collect();
    assert!(
        serials.len() >= 3,
        "the initial SVID and at least two rotated ones in 70 s: {serials:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["svids"][0]["bundle_certs"].as_u64() == Some(2)),
        "the prepared root was pushed as a bundle update: {lines:?}"
    );
    assert!(
        jwt_failures.is_empty(),
        "{jwt_calls} JWT-SVID calls, failures: {jwt_failures:?}"
    );
    // Every call of the AI agent to the tool over mTLS succeeded, across at least two
    // rotations of its SVID and the root's activation.
    let deadline = Instant::now() + Duration::from_secs(20);
    let st = loop {
        if let Some(st) = ai.0.try_wait()? {
            break st;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the AI agent did not finish its calls"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let calls: Vec<serde_json::Value> = std::fs::read_to_string(&ai_log)?
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        st.success(),
        "the AI agent failed after {} calls: {}",
        calls.len(),
        std::fs::read_to_string(dir.path().join("ai.err"))?
    );
    assert_eq!(calls.len(), 68);
    assert!(calls
        .iter()
        .all(|c| c["status"] == 200 && c["answer"]["caller"] == ai_id.as_str()));
    let ai_serials: BTreeSet<&str> = calls
        .iter()
        .filter_map(|c| c["svid_serial"].as_str())
        .collect();
    assert!(
        ai_serials.len() >= 3,
        "the AI agent's SVID rotated at least twice: {ai_serials:?}"
    );
    drop(tool);
    let down = killed[1];
    c.spawn(down)?;
    c.wait_issuing(&[1, 2, 3], Duration::from_secs(30)).await?;

    // Every node unreachable: the agent serves what it holds (the X.509-SVID, a cached
    // JWT-SVID), and picks up again once they are back.
    let held = api_until(&agent, &["fetch-x509"], Duration::from_secs(10), |_| true)?;
    api_until(
        &agent,
        &["fetch-jwt", "--audience", "tools"],
        Duration::from_secs(10),
        |_| true,
    )?;
    for id in [1, 2, 3] {
        c.kill9(id)?;
    }
    let (st, during, err) = agent.api(&["fetch-x509"])?;
    assert!(st.success(), "with every node down: {err}");
    assert!(
        during.contains("workload/probe"),
        "the SVID held is served: {during} (before: {held})"
    );
    let (st, jwt_during, err) = agent.api(&["fetch-jwt", "--audience", "tools"])?;
    assert!(
        st.success() && jwt_during.contains("workload/probe"),
        "a cached JWT-SVID with every node down: {err}"
    );
    for id in [1, 2, 3] {
        c.spawn(id)?;
    }
    c.wait_issuing(&[1, 2, 3], Duration::from_secs(30)).await?;

    // A revoked subject: the agent drops the SVID it holds for it at once (the revocation
    // stream) and serves a freshly minted one.
    let serial_now = |out: &str| -> String {
        serde_json::from_str::<serde_json::Value>(out.trim())
            .ok()
            .and_then(|v| v["svids"][0]["serial"].as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let before = serial_now(&api_until(
        &agent,
        &["fetch-x509"],
        Duration::from_secs(10),
        |_| true,
    )?);
    v1::revocation_service_client::RevocationServiceClient::new(c.channel(1).await?)
        .revoke(v1::RevokeRequest {
            target: Some(v1::revoke_request::Target::Subject(format!(
                "spiffe://{TRUST_DOMAIN}/workload/probe"
            ))),
        })
        .await?;
    let after = api_until(&agent, &["fetch-x509"], Duration::from_secs(5), |o| {
        let s = serial_now(o);
        !s.is_empty() && s != before
    })?;
    assert_ne!(serial_now(&after), before);

    // Deleting the entry withdraws its SVID: the open stream ends with PermissionDenied.
    v1::entry_service_client::EntryServiceClient::new(c.channel(1).await?)
        .delete_entry(v1::DeleteEntryRequest {
            entry_id: probe.clone(),
            ..Default::default()
        })
        .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while watcher.try_wait()?.is_none() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the stream was not ended by the withdrawal"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let last = std::fs::read_to_string(&watch_log)?;
    assert!(
        last.lines()
            .last()
            .unwrap_or("")
            .contains("PermissionDenied"),
        "{last}"
    );
    let (st, _, err) = agent.api(&["fetch-x509"])?;
    assert!(!st.success() && err.contains("PermissionDenied"), "{err}");
    let _ = other;

    // The consumed token is refused to a second agent.
    let mut second = AgentProc::spawn(&c, &dir.path().join("a2"), &[1, 2, 3], &t.token)?;
    let st = second.wait_exit(Duration::from_secs(20))?;
    assert!(!st.success());
    let log = std::fs::read_to_string(&second.log)?;
    assert!(log.contains("attestation refused"), "{log}");

    // A ban: the agent loses access at its next sync, withdraws and stops.
    AgentServiceClient::new(c.channel(2).await?)
        .set_banned(v1::SetAgentBannedRequest {
            spiffe_id: agent_id.clone(),
            banned: true,
        })
        .await?;
    let st = agent.wait_exit(Duration::from_secs(10))?;
    assert_eq!(st.code(), Some(3), "{}", agent.log_tail(10));
    assert!(std::fs::read_to_string(&agent.log)?.contains("banned"));

    // Heartbeats stopped: agent-offline (unbanned, the agent killed).
    let t3 = token(&c, "host3").await?;
    let host3 = t3.agent_id.clone();
    let e3 = entry(&c, "workload/three", &host3, vec![uid_sel], 30).await?;
    let mut a3 = AgentProc::spawn(&c, &dir.path().join("a3"), &[2], &t3.token)?;
    a3.wait_serving(Duration::from_secs(30))?;
    wait_status(&c, &e3, "active", Duration::from_secs(10)).await?;
    a3.kill9();
    wait_status(&c, &e3, "agent-offline", Duration::from_secs(15)).await?;
    drop(c);
    Ok(())
}

/// The examples, as issue 8 describes them: the AI agent gets its SVID from the agent and a
/// delegated token from authsec (token exchange of a service's token, authenticated with the
/// SVID), then calls the tool service over mTLS; the tool checks the SVID, the token, its
/// audience and scope with the SDK's bearer layer, and refuses a call without a token with a
/// 401 that points to its protected-resource metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_ai_agent_calls_the_tool_with_a_delegated_token() -> anyhow::Result<()> {
    use authsec_chaos_tests::oauth::Admin;
    authsec_chaos_tests::init_test_tracing();
    let c = Cluster::start(3, opts())?;
    c.wait_issuing(&[1, 2, 3], Duration::from_secs(30)).await?;
    let dir = tempfile::tempdir()?;
    let admin = Admin(&c);
    let t = token(&c, "host1").await?;
    let uid_sel = format!("unix:uid:{}", authsec_chaos_tests::current_uid());
    let ai_bin = authsec_chaos_tests::example_bin("ai-agent")?;
    let tool_bin = authsec_chaos_tests::example_bin("tool-service")?;

    // Onboarding: the AI agent client and its workload entry in one command; a service that
    // delegates to it; the role that grants the tool's scope.
    admin.role("tool-users", &["tools:call"]).await?;
    let created = v1::client_service_client::ClientServiceClient::new(c.channel(1).await?)
        .create_client(v1::CreateClientRequest {
            client_id: "researcher".into(),
            kind: v1::ClientKind::AiAgent as i32,
            allowed_scopes: vec!["tools:call".into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    let ai_entry = created.entry.ok_or_else(|| anyhow::anyhow!("no entry"))?;
    assert_eq!(ai_entry.status, "awaiting-agent");
    admin.bind("tool-users", "client:researcher").await?;
    let svc_secret = admin
        .client(v1::CreateClientRequest {
            client_id: "svc".into(),
            kind: v1::ClientKind::Service as i32,
            allowed_scopes: vec!["tools:*".into()],
            // Its tokens are for authsec itself: what it hands an agent to act for it.
            default_audience: authsec_chaos_tests::OAUTH_ISSUER.into(),
            ..Default::default()
        })
        .await?;
    admin.bind("tool-users", "client:svc").await?;
    admin
        .delegate("d-svc", "client:svc", "researcher", &["tools:call"])
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // The operator tells the agent how to recognize both workloads.
    v1::entry_service_client::EntryServiceClient::new(c.channel(1).await?)
        .update_entry(v1::UpdateEntryRequest {
            entry_id: ai_entry.entry_id.clone(),
            parent_id: Some(t.agent_id.clone()),
            selectors: Some(v1::StringList {
                values: vec![uid_sel.clone(), format!("unix:path:{}", ai_bin.display())],
            }),
            ..Default::default()
        })
        .await?;
    let tool_id = format!("spiffe://{TRUST_DOMAIN}/tools/echo");
    entry(
        &c,
        "tools/echo",
        &t.agent_id,
        vec![uid_sel, format!("unix:path:{}", tool_bin.display())],
        3600,
    )
    .await?;
    let mut agent = AgentProc::spawn(&c, &dir.path().join("a1"), &[1, 2, 3], &t.token)?;
    agent.wait_serving(Duration::from_secs(30))?;
    wait_status(&c, &ai_entry.entry_id, "active", Duration::from_secs(10)).await?;

    // The tool service, requiring tokens for its resource with scope tools:call.
    let socket_url = format!("unix://{}", agent.socket.display());
    let resource = "https://tools.test/echo";
    let tool_addr = format!("127.0.0.1:{}", authsec_chaos_tests::free_port()?);
    let tool_log = dir.path().join("tool.log");
    let mut cmd = std::process::Command::new(&tool_bin);
    cmd.args(["--listen", &tool_addr, "--workload-api", &socket_url])
        .args([
            "--trust-domain",
            TRUST_DOMAIN,
            "--allow",
            &ai_entry.spiffe_id,
        ])
        .args([
            "--issuer",
            authsec_chaos_tests::OAUTH_ISSUER,
            "--audience",
            resource,
        ])
        .args([
            "--required-scope",
            "tools:call",
            "--authsec-trust-domain",
            TRUST_DOMAIN,
        ]);
    for id in [1, 2, 3] {
        cmd.args([
            "--jwks-url",
            &format!("https://{}/.well-known/jwks.json", c.oauth_addr(id)?),
        ])
        .args(["--authsec-node", &c.addr(id)?]);
    }
    let tool = start_tool(cmd, &tool_log, &dir.path().join("tool.err"))?;

    // The service's own token: the subject the AI agent acts for.
    let h = c.https()?;
    let r = h
        .client_credentials(
            &c.oauth_addr(1)?,
            "svc",
            &svc_secret,
            &[("scope", "tools:call")],
        )
        .await?;
    anyhow::ensure!(r.status == 200, "svc token: {r:?}");
    let svc_token = r.json()?["access_token"].as_str().unwrap_or("").to_owned();
    let subject_file = dir.path().join("subject-token");
    std::fs::write(&subject_file, &svc_token)?;

    let run_ai = |extra: &[&str]| -> anyhow::Result<std::process::Output> {
        Ok(std::process::Command::new(&ai_bin)
            .args([
                "--workload-api",
                &socket_url,
                "--tool",
                &tool_addr,
                "--tool-id",
                &tool_id,
            ])
            .args(extra)
            .output()?)
    };
    // Without a token: 401, and the challenge names the metadata.
    let out = run_ai(&[])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );
    // With a delegated token, obtained with the SVID (tls_client_auth) from node 2.
    let endpoint = format!("https://{}/oauth2/token", c.oauth_addr(2)?);
    let out = run_ai(&[
        "--token-endpoint",
        &endpoint,
        "--client-id",
        "researcher",
        "--subject-token-file",
        &subject_file.display().to_string(),
        "--scope",
        "tools:call",
        "--resource",
        resource,
        "--authsec-trust-domain",
        TRUST_DOMAIN,
    ])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim())?;
    assert_eq!(v["status"], 200);
    assert_eq!(v["answer"]["caller"], ai_entry.spiffe_id.as_str());
    let tok = &v["answer"]["token"];
    assert_eq!(tok["sub"], "svc", "the delegator: {tok}");
    assert_eq!(tok["client_id"], "researcher", "the acting agent: {tok}");
    assert_eq!(tok["scope"], "tools:call");
    assert_eq!(tok["delegation"], "d-svc");
    drop(tool);
    drop(agent);
    Ok(())
}

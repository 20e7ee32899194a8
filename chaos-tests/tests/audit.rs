//! Issue 9's acceptance: the audit export of a three-node cluster with snapshots and log
//! compaction on, after 10,000 mixed operations (clients, roles, entries, access tokens,
//! X.509- and JWT-SVIDs, revocations, failed client authentications):
//!
//! - `authsec audit export` from each node gives the same bytes (same head hash), and
//!   `authsec audit verify` passes; a changed byte fails verify at that record;
//! - a node wiped and rejoined through a snapshot exports the same full history;
//! - every token and SVID the clients got is in the export (counts equal), and every failed
//!   authentication is counted;
//! - follow mode delivers a new record within a second, and a follower whose node dies resumes
//!   on another with nothing missed and nothing repeated;
//! - no secret the test created (client secrets, tokens, private keys) is anywhere in it;
//! - export needs `authsec.admin:audit.read`; bad filters are INVALID_ARGUMENT with a reason.
//!
//! And the sinks: a webhook that fails at first still receives every record (at least once),
//! a rotating file sink holds exactly the export, and a lagging `refuse_writes` sink holds
//! admin writes back until it catches up.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use authsec_api::v1;
use authsec_chaos_tests::oauth::{claims, Admin};
use authsec_chaos_tests::runner::{change_membership, wait_up};
use authsec_chaos_tests::{authsec_bin, init_test_tracing, Cluster, Options, TRUST_DOMAIN};
use base64::Engine;
use serde_json::Value;
use tonic::transport::Channel;

const T: Duration = Duration::from_secs(60);
const OPS: u64 = 10_000;
const WORKERS: u64 = 12;

use authsec_chaos_tests::{cli_ok as ok, run_cli as cli};

/// Roles `{prefix}0` to `{prefix}{n-1}`, each granting `orders:read`: committed records.
async fn create_roles(
    roles: &mut v1::role_service_client::RoleServiceClient<tonic::transport::Channel>,
    prefix: &str,
    n: usize,
) -> anyhow::Result<()> {
    for k in 0..n {
        roles
            .create_role(v1::CreateRoleRequest {
                name: format!("{prefix}{k}"),
                permissions: vec!["orders:read".into()],
                ..Default::default()
            })
            .await?;
    }
    Ok(())
}

/// `authsec audit export` from node `id` into `file`.
fn export_to(c: &Cluster, id: u64, file: &Path) -> anyhow::Result<()> {
    let out = Command::new(authsec_bin()?)
        .args(["audit", "export", "--endpoint", &c.addr(id)?])
        .arg("--admin-dir")
        .arg(c.admin_dir())
        .stdout(std::fs::File::create(file)?)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "export from node {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `authsec audit export` from nodes 1 to 3 into `{dir}/{name}{id}.jsonl`; asserts the three
/// files are byte for byte the same (`what` says what they share); answers the first's path
/// and bytes.
fn export_same_everywhere(
    c: &Cluster,
    dir: &Path,
    name: &str,
    what: &str,
) -> anyhow::Result<(PathBuf, Vec<u8>)> {
    let files: Vec<PathBuf> = (1..=3)
        .map(|id| dir.join(format!("{name}{id}.jsonl")))
        .collect();
    for (id, f) in (1..=3).zip(&files) {
        export_to(c, id, f)?;
    }
    let text = std::fs::read(&files[0])?;
    for f in &files[1..] {
        assert_eq!(std::fs::read(f)?, text, "{what}");
    }
    Ok((files[0].clone(), text))
}

fn verify(c: &Cluster, file: &Path) -> anyhow::Result<Output> {
    Ok(Command::new(authsec_bin()?)
        .args(["audit", "verify"])
        .arg(file)
        .arg("--admin-dir")
        .arg(c.admin_dir())
        .output()?)
}

async fn head(c: &Cluster, id: u64) -> anyhow::Result<v1::AuditHeadResponse> {
    c.audit_head(id).await
}

/// Wait until every node in `ids` has the same head and a checkpoint covers it (the record
/// after a checkpoint is that checkpoint's own).
async fn wait_signed(c: &Cluster, ids: &[u64]) -> anyhow::Result<v1::AuditHeadResponse> {
    let deadline = Instant::now() + T;
    loop {
        let mut heads = Vec::new();
        for &id in ids {
            heads.push(head(c, id).await?);
        }
        let same = heads.windows(2).all(|w| w[0].head_hash == w[1].head_hash);
        let h = &heads[0];
        if same && h.checkpoint_sequence + 1 >= h.head_sequence && h.checkpoint_sequence > 0 {
            return Ok(h.clone());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no common signed head: {heads:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Take node `target` out, wipe it, and bring it back as a new member, which catches up through
/// a snapshot (the others' logs are compacted): returns once it holds one.
async fn wipe_and_rejoin(c: &mut Cluster, target: u64) -> anyhow::Result<()> {
    change_membership(c, None, Some(target)).await?;
    c.kill9(target)?;
    c.wipe(target)?;
    c.unbootstrap(target);
    c.prepare(target, None)?;
    c.spawn(target)?;
    wait_up(c, target).await?;
    change_membership(c, Some((target, c.addr(target)?)), None).await?;
    let deadline = Instant::now() + T;
    loop {
        let s = c.status(target).await?;
        if s.snapshot_index > 0 && s.applied_index > 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "node {target} holds no snapshot: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Records of an export file: the lines as JSON.
fn lines(file: &Path) -> anyhow::Result<Vec<Value>> {
    std::fs::read_to_string(file)?
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

/// Credentials recorded by kind, and failed authentications counted, in an export.
fn recorded(lines: &[Value]) -> (BTreeMap<String, u64>, u64) {
    let mut kinds = BTreeMap::new();
    let mut failures = 0;
    for l in lines {
        if l["kind"] == "credential.issued" {
            let b = &l["event"]["IssuanceBatchRecorded"]["batch"];
            for i in b["items"].as_array().into_iter().flatten() {
                let p = &b["profiles"][i["profile"].as_u64().unwrap_or(u64::MAX) as usize];
                *kinds
                    .entry(p["kind"].as_str().unwrap_or("?").to_owned())
                    .or_default() += 1;
            }
        }
        if l["kind"] == "auth.failed" {
            for f in l["event"]["AuthFailuresRecorded"]["failures"]
                .as_array()
                .into_iter()
                .flatten()
            {
                failures += f["count"].as_u64().unwrap_or(0);
            }
        }
    }
    (kinds, failures)
}

/// What the clients got and did.
#[derive(Debug, Default)]
struct Tally {
    tokens: AtomicU64,
    x509: AtomicU64,
    jwt_svids: AtomicU64,
    failures: AtomicU64,
    writes: AtomicU64,
    /// Every secret the test saw: client secrets, tokens, private keys.
    secrets: Mutex<Vec<String>>,
}

impl Tally {
    fn secret(&self, s: impl Into<String>) {
        self.secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(s.into());
    }
}

struct Worker {
    id: u64,
    channels: Vec<Channel>,
    oauth: Vec<String>,
    https: authsec_chaos_tests::oauth::Https,
    tally: Arc<Tally>,
    clients: Vec<(String, String)>,
    entries: Vec<String>,
    tokens: Vec<(String, u64)>,
}

impl Worker {
    async fn create_client(&mut self, via: usize, name: String) -> anyhow::Result<()> {
        let r = v1::client_service_client::ClientServiceClient::new(self.channels[via].clone())
            .create_client(v1::CreateClientRequest {
                client_id: name.clone(),
                kind: v1::ClientKind::Service as i32,
                allowed_scopes: vec!["orders:read".into()],
                default_audience: "orders".into(),
                generate_secret: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        self.tally.secret(r.client_secret.clone());
        self.clients.push((name, r.client_secret));
        Ok(())
    }

    async fn create_entry(&mut self, via: usize, i: u64) -> anyhow::Result<()> {
        let r = v1::entry_service_client::EntryServiceClient::new(self.channels[via].clone())
            .create_entry(v1::CreateEntryRequest {
                spiffe_id: format!("spiffe://{TRUST_DOMAIN}/svc/{i}"),
                ..Default::default()
            })
            .await?
            .into_inner();
        self.entries
            .push(r.entry.map(|e| e.entry_id).context("entry")?);
        Ok(())
    }

    async fn op(&mut self, i: u64) -> anyhow::Result<()> {
        let via = (i % 3) as usize;
        let pick = (i / WORKERS) as usize;
        match i % 10 {
            0 => {
                self.create_client(via, format!("w{}-c{i}", self.id))
                    .await?
            }
            1 => {
                v1::role_service_client::RoleServiceClient::new(self.channels[via].clone())
                    .create_role(v1::CreateRoleRequest {
                        name: format!("r{i}"),
                        permissions: vec!["orders:read".into()],
                        ..Default::default()
                    })
                    .await?;
            }
            2 => self.create_entry(via, i).await?,
            3..=5 => {
                let (id, secret) = self.clients[pick % self.clients.len()].clone();
                let r = self
                    .https
                    .client_credentials(&self.oauth[via], &id, &secret, &[])
                    .await?;
                anyhow::ensure!(r.status == 200, "token: {r:?}");
                let token = r.json()?["access_token"]
                    .as_str()
                    .context("access_token")?
                    .to_owned();
                let c = claims(&token)?;
                self.tokens.push((
                    c["jti"].as_str().context("jti")?.to_owned(),
                    c["exp"].as_u64().context("exp")? * 1000,
                ));
                self.tally.tokens.fetch_add(1, Ordering::Relaxed);
                self.tally.secret(token);
                return Ok(());
            }
            6 => {
                let key = rcgen::KeyPair::generate()?;
                let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
                let entry = self.entries[pick % self.entries.len()].clone();
                v1::svid_service_client::SvidServiceClient::new(self.channels[via].clone())
                    .mint_x509_svid(v1::MintX509SvidRequest {
                        entry_id: entry,
                        csr_der: csr.der().to_vec(),
                        ttl_seconds: 0,
                    })
                    .await?;
                self.tally.x509.fetch_add(1, Ordering::Relaxed);
                self.tally.secret(key.serialize_pem());
                return Ok(());
            }
            7 => {
                if let Some((jti, exp)) = self.tokens.pop() {
                    v1::revocation_service_client::RevocationServiceClient::new(
                        self.channels[via].clone(),
                    )
                    .revoke(v1::RevokeRequest {
                        target: Some(v1::revoke_request::Target::Token(v1::TokenRef {
                            jti,
                            expires_at_ms: exp,
                        })),
                    })
                    .await?;
                } else {
                    self.create_client(via, format!("w{}-c{i}", self.id))
                        .await?;
                }
            }
            8 => {
                let (id, _) = self.clients[pick % self.clients.len()].clone();
                let wrong = format!("as_cs_wrong{i}");
                let r = self
                    .https
                    .client_credentials(&self.oauth[via], &id, &wrong, &[])
                    .await?;
                anyhow::ensure!(r.status == 401 || r.status == 429, "a wrong secret: {r:?}");
                self.tally.failures.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            _ => {
                let entry = self.entries[pick % self.entries.len()].clone();
                let r = v1::svid_service_client::SvidServiceClient::new(self.channels[via].clone())
                    .mint_jwt_svid(v1::MintJwtSvidRequest {
                        entry_id: entry,
                        audience: vec!["orders".into()],
                        ttl_seconds: 0,
                    })
                    .await?
                    .into_inner();
                self.tally.jwt_svids.fetch_add(1, Ordering::Relaxed);
                self.tally.secret(r.token);
                return Ok(());
            }
        }
        self.tally.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Run the mixed workload; returns the tally.
async fn workload(c: &Cluster) -> anyhow::Result<Arc<Tally>> {
    let tally = Arc::new(Tally::default());
    let mut channels = Vec::new();
    let mut oauth = Vec::new();
    for id in 1..=3 {
        channels.push(c.channel(id).await?);
        oauth.push(c.oauth_addr(id)?);
    }
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let mut worker = Worker {
            id: w,
            channels: channels.clone(),
            oauth: oauth.clone(),
            https: c.https()?,
            tally: tally.clone(),
            clients: Vec::new(),
            entries: Vec::new(),
            tokens: Vec::new(),
        };
        tasks.push(tokio::spawn(async move {
            // Each worker's first client and entry (two of its operations).
            worker
                .create_client(w as usize % 3, format!("w{w}-base"))
                .await?;
            worker.create_entry(w as usize % 3, 1_000_000 + w).await?;
            worker.tally.writes.fetch_add(2, Ordering::Relaxed);
            let mut i = w + 2 * WORKERS;
            while i < OPS {
                worker
                    .op(i)
                    .await
                    .with_context(|| format!("operation {i}"))?;
                i += WORKERS;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(tally)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_is_complete_identical_verifiable_and_secret_free() -> anyhow::Result<()> {
    init_test_tracing();
    let mut c = Cluster::start(
        3,
        Options {
            snapshot_logs_since_last: 300,
            max_in_snapshot_log_to_keep: 30,
            // Every client here calls from 127.0.0.1: the per-source lockout would refuse the
            // good calls after the deliberate failures.
            oauth_extra: "auth_failures_per_minute = 1000000\n".into(),
            extra_toml: "[audit]\ncheckpoint_records = 1000\ncheckpoint_interval_s = 2\nfailure_interval_s = 1\n".into(),
            ..Options::default()
        },
    )?;
    c.wait_issuing(&[1, 2, 3], T).await?;
    let dir = tempfile::tempdir()?;

    // 10,000 mixed operations.
    let started = Instant::now();
    let tally = workload(&c).await?;
    let (tokens, x509, jwts, failures) = (
        tally.tokens.load(Ordering::Relaxed),
        tally.x509.load(Ordering::Relaxed),
        tally.jwt_svids.load(Ordering::Relaxed),
        tally.failures.load(Ordering::Relaxed),
    );
    let total = tokens + x509 + jwts + failures + tally.writes.load(Ordering::Relaxed);
    assert_eq!(total, OPS, "the workload ran every operation");
    tracing::info!(
        secs = started.elapsed().as_secs_f64(),
        tokens,
        x509,
        jwts,
        failures,
        "phase: 10,000 operations done"
    );

    // The issuance outboxes and the failure windows drain into the log; then every node
    // holds the same chain, signed to its head.
    let deadline = Instant::now() + T;
    let f1 = dir.path().join("node1.jsonl");
    loop {
        export_to(&c, 1, &f1)?;
        let (kinds, failed) = recorded(&lines(&f1)?);
        let got = (
            kinds.get("AccessToken").copied().unwrap_or(0),
            kinds.get("X509Svid").copied().unwrap_or(0),
            kinds.get("JwtSvid").copied().unwrap_or(0),
            failed,
        );
        if got == (tokens, x509, jwts, failures) {
            tracing::info!(?got, "every credential and failure is in the export");
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the export records (tokens, x509, jwt, failures) = {got:?}, the clients saw {:?}",
            (tokens, x509, jwts, failures)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let signed = wait_signed(&c, &[1, 2, 3]).await?;
    let statuses = c.wait_converged(&[1, 2, 3], 0, T).await?;
    assert!(
        statuses
            .iter()
            .any(|s| s.purged_index > 0 && s.snapshot_index > 0),
        "snapshots and log compaction ran: {statuses:?}"
    );

    // The same bytes from every node.
    let mut files = Vec::new();
    for id in 1..=3 {
        let f = dir.path().join(format!("node{id}.jsonl"));
        export_to(&c, id, &f)?;
        files.push(std::fs::read(&f)?);
    }
    assert!(
        files.windows(2).all(|w| w[0] == w[1]),
        "every node exports the same bytes"
    );
    let all = lines(&f1)?;
    let last = all.last().context("records")?;
    assert_eq!(
        last["hash"], signed.head_hash,
        "the export ends at the head"
    );
    assert_eq!(last["sequence"], signed.head_sequence);
    tracing::info!(
        records = all.len(),
        head = %signed.head_hash,
        "phase: three identical exports"
    );

    // verify passes...
    let out = verify(&c, &f1)?;
    let report = ok(&out)?;
    assert!(report.starts_with("ok: "), "{report}");
    tracing::info!(report = report.trim(), "phase: verify passed");

    // ...and fails at the record whose line changed: in the hashed bytes, in the readable
    // part, or by a line removed.
    let text = std::fs::read_to_string(&f1)?;
    let original: Vec<&str> = text.lines().collect();
    let n = original.len() / 2;
    let seq = all[n]["sequence"].as_u64().context("sequence")?;
    let tampered = |f: &dyn Fn(&str) -> String, name: &str| -> anyhow::Result<String> {
        let mut ls: Vec<String> = original.iter().map(|s| s.to_string()).collect();
        ls[n] = f(&ls[n]);
        let path = dir.path().join(name);
        std::fs::write(&path, ls.join("\n") + "\n")?;
        let out = verify(&c, &path)?;
        anyhow::ensure!(
            !out.status.success(),
            "{name}: verify passed a changed file"
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let flip = |line: &str, at: usize| -> String {
        let mut b = line.as_bytes().to_vec();
        b[at] = if b[at] == b'A' { b'B' } else { b'A' };
        String::from_utf8_lossy(&b).into_owned()
    };
    let in_bytes = tampered(
        &|l: &str| flip(l, l.find("\"record_bytes\":\"").unwrap_or(0) + 20),
        "bytes.jsonl",
    )?;
    assert!(
        in_bytes.contains(&format!("record {seq} ")),
        "names record {seq}: {in_bytes}"
    );
    let in_text = tampered(
        &|l: &str| flip(l, l.find("\"subject\":\"").unwrap_or(0) + 11),
        "text.jsonl",
    )?;
    assert!(
        in_text.contains(&format!("record {seq} ")),
        "names record {seq}: {in_text}"
    );
    let removed = {
        let mut ls: Vec<&str> = original.clone();
        ls.remove(n);
        let path = dir.path().join("removed.jsonl");
        std::fs::write(&path, ls.join("\n") + "\n")?;
        String::from_utf8_lossy(&verify(&c, &path)?.stdout).into_owned()
    };
    assert!(
        removed.contains(&format!("record {} ", seq + 1)),
        "names the record after the gap: {removed}"
    );
    tracing::info!(
        in_bytes = in_bytes.trim(),
        in_text = in_text.trim(),
        removed = removed.trim(),
        "phase: changed files fail"
    );

    // No secret anywhere: not in the text, not in the hashed bytes.
    let mut haystack = text.clone().into_bytes();
    for l in &all {
        haystack.extend(
            base64::engine::general_purpose::STANDARD
                .decode(l["record_bytes"].as_str().unwrap_or(""))?,
        );
    }
    let mut secrets = tally
        .secrets
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    secrets.push(std::fs::read_to_string(c.admin_dir().join("admin.key"))?);
    secrets.push(hex::encode(std::fs::read(c.kek_file())?));
    // The whole secret, and for PEM keys each base64 body line (a key's bytes in any
    // encoding of the export would show one).
    let mut needles: Vec<&str> = Vec::new();
    for s in &secrets {
        needles.push(s.trim());
        if s.contains("-----BEGIN") {
            needles.extend(
                s.lines()
                    .filter(|l| !l.starts_with("-----") && l.len() >= 40),
            );
        }
    }
    assert!(
        find_any(&haystack, &[signed.head_hash.as_str()]).is_some(),
        "the search finds what is there"
    );
    if let Some(found) = find_any(&haystack, &needles) {
        panic!(
            "a secret is in the export: {}…",
            &found[..found.len().min(12)]
        );
    }
    let needles = needles.len();
    tracing::info!(
        secrets = secrets.len(),
        needles,
        "phase: no secret in the export"
    );

    // A node wiped and rejoined through a snapshot exports the same full history.
    let target = 3;
    wipe_and_rejoin(&mut c, target).await?;
    wait_signed(&c, &[1, 2, 3]).await?;
    let (a, b) = (
        dir.path().join("after1.jsonl"),
        dir.path().join("after3.jsonl"),
    );
    export_to(&c, 1, &a)?;
    export_to(&c, target, &b)?;
    let (after1, after3) = (std::fs::read(&a)?, std::fs::read(&b)?);
    assert_eq!(after1, after3, "the rejoined node exports the same history");
    assert!(
        after3.starts_with(&files[0]),
        "and it begins with the history exported before the wipe"
    );
    assert!(ok(&verify(&c, &b)?)?.starts_with("ok: "));
    tracing::info!(
        bytes = after3.len(),
        "phase: the rejoined node exports the same history"
    );

    // Follow: a new record within a second; a follower whose node dies resumes elsewhere.
    follow_and_resume(&mut c).await?;

    // Export needs audit.read; bad input is INVALID_ARGUMENT with a reason.
    permissions_and_bad_input(&c, dir.path()).await?;
    Ok(())
}

/// The first of `needles` (each at least `K` bytes) that occurs in `hay`: every needle's
/// first `K` bytes in a set, one pass over the haystack's windows.
fn find_any<'a>(hay: &[u8], needles: &[&'a str]) -> Option<&'a str> {
    const K: usize = 16;
    let mut by_prefix: std::collections::HashMap<&[u8], Vec<&'a str>> = Default::default();
    for n in needles {
        assert!(n.len() >= K, "a secret shorter than {K} bytes: {n:?}");
        by_prefix.entry(&n.as_bytes()[..K]).or_default().push(n);
    }
    for (i, w) in hay.windows(K).enumerate() {
        if let Some(ns) = by_prefix.get(w) {
            if let Some(n) = ns.iter().find(|n| hay[i..].starts_with(n.as_bytes())) {
                return Some(n);
            }
        }
    }
    None
}

async fn follow_and_resume(c: &mut Cluster) -> anyhow::Result<()> {
    let h = head(c, 1).await?.head_sequence;
    let eps = format!("{},{},{}", c.addr(1)?, c.addr(2)?, c.addr(3)?);
    let mut child = Command::new(authsec_bin()?)
        .args(["audit", "export", "--follow", "--endpoint", &eps])
        .args(["--from-seq", &(h + 1).to_string()])
        .arg("--admin-dir")
        .arg(c.admin_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Value)>();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                if tx.send((Instant::now(), v)).is_err() {
                    return;
                }
            }
        }
    });
    let result = async {
        let mut got: Vec<Value> = Vec::new();
        let mut wait_for = |subject: &str, deadline: Instant| -> anyhow::Result<Instant> {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let (at, v) = rx
                    .recv_timeout(left)
                    .map_err(|_| anyhow!("{subject} never reached the follower"))?;
                let hit = v["subject"] == subject;
                got.push(v);
                if hit {
                    return Ok(at);
                }
            }
        };
        // Latency of a new record, measured three times.
        for k in 0..3 {
            let name = format!("follow-{k}");
            let sent = Instant::now();
            Admin(c).role(&name, &["orders:read"]).await?;
            let at = wait_for(
                &format!("role:{name}"),
                Instant::now() + Duration::from_secs(10),
            )?;
            let latency = at.duration_since(sent);
            tracing::info!(ms = latency.as_millis() as u64, "follow latency");
            anyhow::ensure!(
                latency < Duration::from_secs(1),
                "a record reached the follower after {latency:?}"
            );
        }
        // The follower is on node 1 (the first endpoint): kill it, write elsewhere, and the
        // follower resumes from node 2 with its last sequence.
        c.kill9(1)?;
        let leader = c.wait_leader(&[2, 3], T).await?;
        let mut roles = v1::role_service_client::RoleServiceClient::new(c.channel(leader).await?);
        create_roles(&mut roles, "after-kill-", 20).await?;
        wait_for("role:after-kill-19", Instant::now() + T)?;
        let seqs: Vec<u64> = got.iter().filter_map(|v| v["sequence"].as_u64()).collect();
        let want: Vec<u64> = (h + 1..=*seqs.last().context("records")?).collect();
        anyhow::ensure!(
            seqs == want,
            "the follower got {} records from {} to {}, with gaps or repeats",
            seqs.len(),
            h + 1,
            seqs.last().copied().unwrap_or(0)
        );
        tracing::info!(
            records = seqs.len(),
            "phase: follow resumed without gaps or repeats"
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result?;
    c.spawn(1)?;
    wait_up(c, 1).await?;
    Ok(())
}

async fn permissions_and_bad_input(c: &Cluster, dir: &Path) -> anyhow::Result<()> {
    let addr = c.addr(2)?;
    let admin = c.admin_dir();
    let auditor = dir.join("auditor");
    ok(&cli(
        &addr,
        &admin,
        &[
            "admin",
            "issue",
            "--name",
            "auditor",
            "--out",
            auditor.to_str().context("path")?,
        ],
    )?)?;
    let out = cli(&addr, &auditor, &["audit", "export", "--to-seq", "5"])?;
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PERMISSION_DENIED") && err.contains("authsec.admin:audit.read"),
        "{err}"
    );
    let mut roles = v1::role_service_client::RoleServiceClient::new(c.channel(2).await?);
    roles
        .create_role(v1::CreateRoleRequest {
            name: "auditor".into(),
            permissions: vec!["authsec.admin:audit.read".into()],
            ..Default::default()
        })
        .await?;
    roles
        .bind(v1::Binding {
            role: "auditor".into(),
            subject: format!("spiffe://{TRUST_DOMAIN}/authsec/admin/auditor"),
        })
        .await?;
    let out = ok(&cli(
        &addr,
        &auditor,
        &["audit", "export", "--to-seq", "5"],
    )?)?;
    assert_eq!(out.lines().count(), 5, "the auditor exports: {out}");

    for (args, code, want) in [
        (vec!["--type", "nosuch.*"], 2, "matches no record type"),
        (vec!["--type", "Bad Type"], 2, "not a record type pattern"),
        (vec!["--from-seq", "99999999"], 2, "past the archive's head"),
        (
            vec!["--from-seq", "10", "--to-seq", "5"],
            2,
            "before from_sequence",
        ),
        (vec!["--since", "1h", "--until", "2h"], 2, "ends"),
        (vec!["--client", "not a client!"], 2, "client_id"),
        (vec!["--spiffe-id", "http://x"], 2, "spiffe_id"),
        (vec!["--since", "yesterday"], 2, "is not a time"),
    ] {
        let mut a = vec!["audit", "export"];
        a.extend(args.iter().copied());
        let out = cli(&addr, &admin, &a)?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        if code == 2 {
            assert!(err.contains("INVALID_ARGUMENT"), "{args:?}: {err}");
        }
        assert!(out.stdout.is_empty(), "{args:?} wrote records");
    }
    // Refused join tokens, of an agent and of a node, are failed authentications too.
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&rcgen::KeyPair::generate()?)?
        .der()
        .to_vec();
    let refused = v1::agent_api_service_client::AgentApiServiceClient::new(c.channel(2).await?)
        .attest(v1::AttestAgentRequest {
            join_token: format!("ghost.{}", "0".repeat(64)),
            csr_der: csr.clone(),
        })
        .await
        .expect_err("an unknown agent token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let refused = v1::node_service_client::NodeServiceClient::new(c.channel(2).await?)
        .join(v1::JoinRequest {
            token: format!("{}.{}", "ab".repeat(8), "0".repeat(64)),
            node_id: 77,
            csr_der: csr,
            ..Default::default()
        })
        .await
        .expect_err("an unknown node token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    // So is a client certificate the cluster never issued, refused at the handshake of the
    // API and of the OAuth listener: recorded under `mtls` with the identity it claimed.
    let mallory = format!("spiffe://{TRUST_DOMAIN}/authsec/admin/mallory");
    let (chain, key) = stranger_cert(&mallory)?;
    let h = authsec_chaos_tests::oauth::Https::with_client_cert(
        &c.admin_dir().join("ca.crt"),
        chain,
        key,
    )?;
    for a in [c.addr(2)?, c.oauth_addr(2)?] {
        let r = h.request(&a, "GET", "/", &[], b"").await;
        anyhow::ensure!(r.is_err(), "{a} served a stranger: {r:?}");
    }
    let deadline = Instant::now() + T;
    loop {
        let out = ok(&cli(
            &addr,
            &admin,
            &["audit", "export", "--type", "auth.failed", "--since", "5m"],
        )?)?;
        let seen = |endpoint: &str, client: &str| {
            out.lines().any(|l| {
                serde_json::from_str::<Value>(l).is_ok_and(|v| {
                    v["event"]["AuthFailuresRecorded"]["failures"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|f| f["endpoint"] == endpoint && f["client_id"] == client)
                })
            })
        };
        if seen("agent_attest", "ghost")
            && seen("node_join", &"ab".repeat(8))
            && seen("mtls", &mallory)
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the refused join tokens and certificate are not in the log: {out}\nnode 2's log: {}",
            c.log_tail(2, 1_000_000)
                .lines()
                .filter(|l| l.contains("refused") || l.contains("failures"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // A filter that matches: only those records, each with its own link.
    let out = ok(&cli(
        &addr,
        &admin,
        &["audit", "export", "--type", "role.*", "--format", "csv"],
    )?)?;
    let rows: Vec<&str> = out.lines().collect();
    assert!(rows[0].starts_with("sequence,time,kind"), "{out}");
    assert!(rows.len() > 1000, "role records: {}", rows.len());
    assert!(rows[1..]
        .iter()
        .all(|r| r.split(',').nth(2).is_some_and(|k| k.starts_with("role."))));
    Ok(())
}

/// An X.509-SVID for `id` from a CA of its own, which the cluster does not trust.
fn stranger_cert(
    id: &str,
) -> anyhow::Result<(
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
)> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate()?;
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(Vec::<String>::new())?;
    leaf.subject_alt_names = vec![SanType::URI(id.try_into()?)];
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok((
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    ))
}

/// A tiny HTTP/1.1 receiver: each POST body's lines, by the sending node; answers 500 while
/// `failing` (and to the first `fail_first` requests), else 200.
#[derive(Default)]
struct Receiver {
    lines: Mutex<BTreeMap<u64, Vec<String>>>,
    requests: AtomicU64,
    fail_first: u64,
    failing: AtomicBool,
}

async fn serve(r: Arc<Receiver>) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let r = r.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                let (head_end, len) = loop {
                    let n = match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (i + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let node = head
                    .lines()
                    .find_map(|l| l.strip_prefix("x-authsec-node:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                let n = r.requests.fetch_add(1, Ordering::SeqCst);
                let fail = n < r.fail_first || r.failing.load(Ordering::SeqCst);
                if !fail {
                    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
                    r.lines
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(node)
                        .or_default()
                        .extend(body.lines().map(str::to_owned));
                }
                let status = if fail {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_receive_every_record_and_a_lagging_required_sink_holds_writes() -> anyhow::Result<()>
{
    init_test_tracing();
    let siem = Arc::new(Receiver {
        fail_first: 3,
        ..Default::default()
    });
    let strict = Arc::new(Receiver::default());
    strict.failing.store(true, Ordering::SeqCst);
    let (siem_addr, strict_addr) = (serve(siem.clone()).await?, serve(strict.clone()).await?);
    let toml = format!(
        r#"
[audit]
checkpoint_interval_s = 1

[[audit.sinks]]
name = "siem"
kind = "webhook"
url = "http://{siem_addr}/ingest"
batch_records = 100

[[audit.sinks]]
name = "file"
kind = "file"
path = "audit/audit.jsonl"
max_bytes = 65536
keep_files = 1000

[[audit.sinks]]
name = "strict"
kind = "webhook"
url = "http://{strict_addr}/ingest"
max_lag_records = 20
on_lag = "refuse_writes"
"#
    );
    let c = Cluster::start(
        3,
        Options {
            extra_toml: toml,
            ..Options::default()
        },
    )?;
    c.wait_issuing(&[1, 2, 3], T).await?;

    // The strict sink is down and behind: admin writes are refused, naming it.
    let mut roles = v1::role_service_client::RoleServiceClient::new(c.channel(1).await?);
    let refused = roles
        .create_role(v1::CreateRoleRequest {
            name: "held-back".into(),
            permissions: vec!["orders:read".into()],
            ..Default::default()
        })
        .await
        .expect_err("a lagging refuse_writes sink holds writes back");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("audit sink strict"),
        "{refused:?}"
    );
    // It comes back: writes are taken again once it caught up.
    strict.failing.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + T;
    loop {
        match roles
            .create_role(v1::CreateRoleRequest {
                name: "held-back".into(),
                permissions: vec!["orders:read".into()],
                ..Default::default()
            })
            .await
        {
            Ok(_) => break,
            Err(e) if e.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => return Err(e.into()),
        }
    }

    create_roles(&mut roles, "s", 500).await?;
    let h = wait_signed(&c, &[1, 2, 3]).await?;
    let dir = tempfile::tempdir()?;
    let export = dir.path().join("export.jsonl");
    export_to(&c, 1, &export)?;
    let want: Vec<String> = std::fs::read_to_string(&export)?
        .lines()
        .map(str::to_owned)
        .take(h.head_sequence as usize)
        .collect();

    // Every node's webhook deliveries hold every record (a failed batch is sent again, so a
    // line may come twice, never zero times), each line exactly the export's.
    let deadline = Instant::now() + T;
    loop {
        let done = {
            let got = siem.lines.lock().unwrap_or_else(|p| p.into_inner());
            (1..=3).all(|node| {
                got.get(&node).is_some_and(|ls| {
                    let set: BTreeSet<&String> = ls.iter().collect();
                    want.iter().all(|w| set.contains(w))
                })
            })
        };
        if done {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the webhook misses records");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        siem.requests.load(Ordering::SeqCst) > 3,
        "the first batches failed and were sent again"
    );

    // Each node's file sink, rotated files oldest first, is exactly the export.
    for node in 1..=3u64 {
        let base: PathBuf = c.data_dir(node)?.join("audit").join("audit.jsonl");
        let deadline = Instant::now() + T;
        loop {
            let mut numbered: Vec<(u32, PathBuf)> = Vec::new();
            for e in std::fs::read_dir(base.parent().context("dir")?)? {
                let p = e?.path();
                let name = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("")
                    .to_owned();
                if let Some(n) = name
                    .strip_prefix("audit.jsonl.")
                    .and_then(|n| n.parse().ok())
                {
                    numbered.push((n, p));
                }
            }
            numbered.sort_by_key(|e| std::cmp::Reverse(e.0));
            let mut text = String::new();
            for (_, p) in &numbered {
                text += &std::fs::read_to_string(p)?;
            }
            text += &std::fs::read_to_string(&base).unwrap_or_default();
            let got: Vec<&str> = text.lines().take(want.len()).collect();
            if got.len() == want.len() {
                assert!(numbered.len() > 1, "node {node}'s file sink rotated");
                assert_eq!(got, want, "node {node}'s file sink is the export");
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "node {node}'s file sink has {} lines",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // And what a sink wrote verifies like an export.
    let sink_copy = dir.path().join("sink.jsonl");
    let mut f = std::fs::File::create(&sink_copy)?;
    for l in &want {
        writeln!(f, "{l}")?;
    }
    assert!(ok(&verify(&c, &sink_copy)?)?.starts_with("ok: "));
    Ok(())
}

/// Every node's audit head and first record, polled until they agree and stay so for seven
/// seconds (retention, checkpoints and the sinks' last progress reports settle: a node
/// reports at most every 5 s, and a checkpoint signs the report within a second), within the
/// deadline.
async fn wait_settled(c: &Cluster, ids: &[u64]) -> anyhow::Result<v1::AuditHeadResponse> {
    let deadline = Instant::now() + T;
    let mut since: Option<(Instant, (String, u64))> = None;
    loop {
        let mut heads = Vec::new();
        for &id in ids {
            heads.push(head(c, id).await?);
        }
        let same = heads.windows(2).all(|w| {
            (&w[0].head_hash, w[0].first_sequence) == (&w[1].head_hash, w[1].first_sequence)
        });
        let now = (heads[0].head_hash.clone(), heads[0].first_sequence);
        match &since {
            Some((t, was)) if same && *was == now => {
                if t.elapsed() >= Duration::from_secs(7) {
                    return Ok(heads[0].clone());
                }
            }
            _ => since = same.then(|| (Instant::now(), now)),
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the audit heads never settled: {heads:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A three-node cluster whose nodes send to one webhook sink ("siem", failing until the test
/// lets it take records) and retain per `bounds` (lines of `[audit.retention]`) behind it,
/// with a checkpoint every 50 records or second.
async fn retention_cluster(
    bounds: &str,
    opts: Options,
) -> anyhow::Result<(Arc<Receiver>, Cluster)> {
    init_test_tracing();
    let siem = Arc::new(Receiver::default());
    siem.failing.store(true, Ordering::SeqCst);
    let siem_addr = serve(siem.clone()).await?;
    let extra_toml = format!(
        r#"
[audit]
checkpoint_records = 50
checkpoint_interval_s = 1

[[audit.sinks]]
name = "siem"
kind = "webhook"
url = "http://{siem_addr}/ingest"
batch_records = 100

[audit.retention]
{bounds}after_sinks = ["siem"]
check_interval_s = 1
"#
    );
    let c = Cluster::start(3, Options { extra_toml, ..opts })?;
    Ok((siem, c))
}

/// The sequences of the lines `r` received from node `node`.
fn delivered(r: &Receiver, node: u64) -> BTreeSet<u64> {
    r.lines
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&node)
        .map(|ls| {
            ls.iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok()?["sequence"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

/// Retention waits for every node's sinks, not only the proposer's: node 1 retains behind its
/// own sink, which takes every record at once; node 3 sends to a SIEM that is down. Node 1
/// prunes nothing node 3's sink has not delivered, however old and signed, and prunes once it
/// has, every node alike; a refused prune names the sink that holds it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_waits_for_the_sinks_of_every_node() -> anyhow::Result<()> {
    init_test_tracing();
    let (own, slow) = (Arc::new(Receiver::default()), Arc::new(Receiver::default()));
    own.failing.store(true, Ordering::SeqCst);
    slow.failing.store(true, Ordering::SeqCst);
    let (own_addr, slow_addr) = (serve(own.clone()).await?, serve(slow.clone()).await?);
    let node_toml = BTreeMap::from([
        (
            1,
            format!(
                r#"
[[audit.sinks]]
name = "siem"
kind = "webhook"
url = "http://{own_addr}/ingest"
batch_records = 100

[audit.retention]
max_age_s = 1
after_sinks = ["siem"]
check_interval_s = 1
"#
            ),
        ),
        (
            3,
            format!(
                r#"
[[audit.sinks]]
name = "archive"
kind = "webhook"
url = "http://{slow_addr}/ingest"
batch_records = 100
"#
            ),
        ),
    ]);
    let c = Cluster::start(
        3,
        Options {
            extra_toml: "[audit]\ncheckpoint_records = 50\ncheckpoint_interval_s = 1\n".into(),
            node_toml,
            ..Options::default()
        },
    )?;
    c.wait_issuing(&[1, 2, 3], T).await?;
    // A sink bounds retention from its node's first report on: node 1's sink takes records
    // only once node 3 has reported its own.
    let deadline = Instant::now() + T;
    while !head(&c, 1)
        .await?
        .sinks
        .iter()
        .any(|s| s.node_id == 3 && s.name == "archive")
    {
        anyhow::ensure!(Instant::now() < deadline, "node 3 never reported its sink");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    own.failing.store(false, Ordering::SeqCst);
    let mut roles = v1::role_service_client::RoleServiceClient::new(c.channel(1).await?);
    create_roles(&mut roles, "r", 300).await?;
    let signed = wait_signed(&c, &[1, 2, 3]).await?;

    // Node 1's own sink has every signed record: without node 3's sink, node 1 would prune
    // them within a second or two. For four seconds after that, nothing is pruned anywhere.
    let deadline = Instant::now() + T;
    while !(1..=signed.checkpoint_sequence).all(|s| delivered(&own, 1).contains(&s)) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "node 1's sink never took records 1 to {}",
            signed.checkpoint_sequence
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let watch_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < watch_until {
        for id in 1..=3 {
            let h = head(&c, id).await?;
            assert_eq!(
                h.first_sequence, 1,
                "node {id} pruned records node 3's sink never acknowledged: {h:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = std::fs::read_to_string(&c.nodes[&1].log)?;
    assert!(
        log.contains("retention waits for an audit sink") && log.contains("holder_node=3"),
        "node 1 says which sink holds retention back"
    );
    // Every node's Head shows each member's sinks as last reported: node 3's at nothing yet.
    for id in 1..=3 {
        let sinks: Vec<(u64, String, u64)> = head(&c, id)
            .await?
            .sinks
            .into_iter()
            .map(|s| (s.node_id, s.name, s.acked_sequence))
            .collect();
        assert!(
            sinks.contains(&(3, "archive".into(), 0))
                && sinks.iter().any(|s| s.0 == 1 && s.1 == "siem" && s.2 > 0),
            "node {id}'s head: {sinks:?}"
        );
    }
    let said: Value =
        serde_json::from_str(&ok(&cli(&c.addr(2)?, &c.admin_dir(), &["audit", "head"])?)?)?;
    assert!(
        said["sinks"].as_array().is_some_and(|v| v
            .iter()
            .any(|s| s["node_id"] == 3 && s["name"] == "archive" && s["acked_sequence"] == 0)),
        "authsec audit head: {said}"
    );

    // Node 3's SIEM comes back: its sink delivers, node 3 reports, node 1 prunes; every node
    // starts at the same record, and node 3's sink has every record pruned.
    slow.failing.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + T;
    let first = loop {
        let h = head(&c, 1).await?;
        if h.first_sequence > 1 {
            break h.first_sequence;
        }
        anyhow::ensure!(Instant::now() < deadline, "nothing was pruned: {h:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let got = delivered(&slow, 3);
    assert!(
        (1..first).all(|s| got.contains(&s)),
        "records up to {} were pruned; node 3's sink has {} of them",
        first - 1,
        (1..first).filter(|s| got.contains(s)).count()
    );
    let settled = wait_settled(&c, &[1, 2, 3]).await?;
    assert!(settled.first_sequence >= first, "{settled:?}");
    // The reports are in the history like any other record.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("export.jsonl");
    export_to(&c, 2, &file)?;
    let reports: Vec<Value> = lines(&file)?
        .into_iter()
        .filter(|l| l["kind"] == "audit.sinks_acknowledged")
        .collect();
    assert!(
        reports.iter().any(|r| r["subject"] == "node:3"),
        "node 3's reports in the export: {reports:?}"
    );
    assert!(ok(&verify(&c, &file)?)?.starts_with("ok: "));
    Ok(())
}

/// Retention (`[audit.retention]`): nothing is pruned while the required sink has not
/// acknowledged; once it has, every node's archive starts at the same record, right after a
/// signed checkpoint; the export verifies from there with the trust bundle alone; a pruned
/// sequence is refused with where the archive starts; a restarted node and a node rejoined
/// through a snapshot hold the same pruned history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_behind_a_signed_checkpoint_once_the_sink_has_the_records(
) -> anyhow::Result<()> {
    let (siem, mut c) = retention_cluster(
        "max_age_s = 1\n",
        Options {
            snapshot_logs_since_last: 100,
            max_in_snapshot_log_to_keep: 10,
            ..Options::default()
        },
    )
    .await?;
    c.wait_issuing(&[1, 2, 3], T).await?;
    let mut roles = v1::role_service_client::RoleServiceClient::new(c.channel(1).await?);
    create_roles(&mut roles, "r", 300).await?;
    let signed = wait_signed(&c, &[1, 2, 3]).await?;
    // The sink has acknowledged nothing: for three seconds after every record is older than
    // the bound and signed, nothing is pruned anywhere.
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        for id in 1..=3 {
            let h = head(&c, id).await?;
            assert_eq!(
                h.first_sequence, 1,
                "node {id} pruned records the sink never acknowledged: {h:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The sink takes records; let retention prune behind them, then stop the sink again so
    // the acknowledged point (and with it the prunes) comes to rest.
    siem.failing.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + T;
    loop {
        let h = head(&c, 1).await?;
        if h.first_sequence > signed.checkpoint_sequence.min(200) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "nothing was pruned: {h:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    siem.failing.store(true, Ordering::SeqCst);
    // Records the sink never acknowledged stay, however old.
    create_roles(&mut roles, "k", 100).await?;
    let settled = wait_settled(&c, &[1, 2, 3]).await?;
    let first = settled.first_sequence;
    assert!(first > 1, "{settled:?}");
    for id in 1..=3u64 {
        let (code, metrics) = authsec_chaos_tests::http_get(&c.nodes[&id].http, "/metrics")?;
        assert_eq!(code, 200);
        assert!(
            metrics.contains(&format!(
                "authsec_archive_first_sequence{{node_id=\"{id}\"}} {first}"
            )),
            "node {id}'s metrics: {metrics}"
        );
    }
    tracing::info!(
        first,
        head = settled.head_sequence,
        "phase: retention pruned"
    );

    let dir = tempfile::tempdir()?;
    let (file, text) = export_same_everywhere(
        &c,
        dir.path(),
        "pruned",
        "every node holds the same pruned history",
    )?;
    let exported = lines(&file)?;
    assert_eq!(exported[0]["sequence"].as_u64(), Some(first));
    // The prune is a record of its own, naming what it pruned and who asked.
    let prunes: Vec<&Value> = exported
        .iter()
        .filter(|l| l["kind"] == "audit.pruned")
        .collect();
    let last = prunes.last().context("an audit.pruned record")?;
    let pruned = &last["event"]["AuditPruned"]["prune"];
    assert_eq!(
        pruned["through_sequence"].as_u64(),
        Some(first - 1),
        "{last}"
    );
    assert_eq!(pruned["acked_by"], serde_json::json!(["siem"]), "{last}");
    // Only records the proposing node's sink had acknowledged were pruned.
    let proposer = pruned["node_id"].as_u64().context("node_id")?;
    let delivered: BTreeSet<u64> = siem
        .lines
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&proposer)
        .map(|ls| {
            ls.iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok()?["sequence"].as_u64())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        (1..first).all(|s| delivered.contains(&s)),
        "node {proposer}'s sink acknowledged every pruned record"
    );

    // Verify from the checkpoint, with the bundle alone (the audit keys' publication records
    // were pruned; the prune record certifies them).
    let out = ok(&verify(&c, &file)?)?;
    tracing::info!(%out, "verify of the pruned export");
    assert!(out.starts_with("ok: "), "{out}");
    assert!(
        out.contains(&format!(
            "history starts at {first}: records 1 to {} were pruned by retention",
            first - 1
        )) && out.contains("anchors its first link"),
        "{out}"
    );
    // A changed byte still fails at its record.
    let mut changed: Vec<String> = std::fs::read_to_string(&file)?
        .lines()
        .map(str::to_owned)
        .collect();
    let at = changed
        .iter()
        .position(|l| l.contains("\"subject\":\"role:k"))
        .context("the roles the sink never acknowledged are kept")?;
    assert_eq!(
        exported
            .iter()
            .filter(|l| l["kind"] == "role.created")
            .count(),
        100,
        "exactly the 100 roles created after the sink stopped are kept"
    );
    changed[at] = changed[at].replacen("\"role:k", "\"role:x", 1);
    let bad = dir.path().join("changed.jsonl");
    std::fs::write(&bad, changed.join("\n") + "\n")?;
    let out = verify(&c, &bad)?;
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("record {} (line {})", first + at as u64, at + 1)),
        "{said}"
    );
    // Cut the first kept record off: the export no longer passes for the pruned history.
    let cut = dir.path().join("cut.jsonl");
    let kept: Vec<&str> = std::str::from_utf8(&text)?.lines().skip(1).collect();
    std::fs::write(&cut, kept.join("\n") + "\n")?;
    let out = verify(&c, &cut)?;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !said.contains("were pruned by retention")
            && said.contains(&format!("records 1 to {first} are not in it")),
        "a shortened export is not taken for the pruned one: {said}"
    );

    // Asking for a pruned sequence names where the archive starts.
    let mut audit = v1::audit_service_client::AuditServiceClient::new(c.channel(2).await?);
    let refused = audit
        .export(v1::ExportRequest {
            from_sequence: 1,
            ..Default::default()
        })
        .await
        .expect_err("a pruned sequence");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused
            .message()
            .contains(&format!("the archive starts at {first}")),
        "{refused:?}"
    );

    // A restarted node checks its pruned archive at start and serves the same history.
    c.stop(2)?;
    c.spawn(2)?;
    wait_up(&c, 2).await?;
    let again = dir.path().join("restarted.jsonl");
    export_to(&c, 2, &again)?;
    assert_eq!(std::fs::read(&again)?, text, "node 2 after a restart");

    // A node wiped and rejoined through a snapshot starts where the others do.
    let target = 3;
    wipe_and_rejoin(&mut c, target).await?;
    let h = wait_settled(&c, &[1, 2, 3]).await?;
    // Removing node 3 dropped its last sink report, which may have held retention a few
    // records back (a sink bounds retention again from its rejoined node's first report).
    assert!(
        h.first_sequence >= first,
        "retention never moves back: {h:?}"
    );
    let rejoined = dir.path().join("rejoined.jsonl");
    export_to(&c, target, &rejoined)?;
    export_to(&c, 1, &file)?;
    let (a, b) = (std::fs::read(&file)?, std::fs::read(&rejoined)?);
    assert_eq!(a, b, "the rejoined node holds the same pruned history");
    let before: String = std::str::from_utf8(&text)?
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v["sequence"].as_u64())
                .is_some_and(|s| s >= h.first_sequence)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        b.starts_with(before.as_bytes()),
        "which holds what the earlier export held from its first record on"
    );
    assert!(ok(&verify(&c, &rejoined)?)?.starts_with("ok: "));
    Ok(())
}

/// Client `svc`, bound to a role granting `orders:read`: its generated secret.
async fn reader_client(c: &Cluster) -> anyhow::Result<String> {
    let admin = Admin(c);
    admin.role("reader", &["orders:read"]).await?;
    let secret = admin
        .client(v1::CreateClientRequest {
            client_id: "svc".into(),
            kind: v1::ClientKind::Service as i32,
            allowed_scopes: vec!["orders:*".into()],
            default_audience: "https://orders.example".into(),
            ..Default::default()
        })
        .await?;
    admin.bind("reader", "client:svc").await?;
    Ok(secret)
}

/// Retention's shorter bound for issuance records (`issuance_max_age_s`): once the sink has
/// them, every `credential.issued` record is replaced by a remnant on every node, while the rest
/// stays whole; the export verifies, each remnant accounted for by an `audit.issuances_elided`
/// record; no token id is left in the export; a remnant that is added, removed or changed fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuance_records_are_elided_sooner_and_the_chain_still_verifies() -> anyhow::Result<()> {
    let (siem, mut c) = retention_cluster(
        "max_age_s = 3600\nissuance_max_age_s = 1\n",
        Options::default(),
    )
    .await?;
    c.wait_issuing(&[1, 2, 3], T).await?;
    let secret = reader_client(&c).await?;
    let h = c.https()?;
    let mut jtis = Vec::new();
    for k in 0..60u64 {
        let addr = c.oauth_addr(1 + k % 3)?;
        let r = h
            .client_credentials(&addr, "svc", &secret, &[("scope", "orders:read")])
            .await?;
        anyhow::ensure!(r.status == 200, "token {k}: {r:?}");
        let token = r.json()?["access_token"]
            .as_str()
            .context("access_token")?
            .to_owned();
        jtis.push(claims(&token)?["jti"].as_str().context("jti")?.to_owned());
    }
    // Every token's record is in the log and signed before the sink comes up.
    let deadline = Instant::now() + T;
    let dir = tempfile::tempdir()?;
    let before = dir.path().join("before.jsonl");
    loop {
        wait_signed(&c, &[1, 2, 3]).await?;
        export_to(&c, 1, &before)?;
        let text = std::fs::read_to_string(&before)?;
        if jtis.iter().all(|j| text.contains(j.as_str())) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "tokens missing from the export");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let issued_before: Vec<u64> = lines(&before)?
        .iter()
        .filter(|l| l["kind"] == "credential.issued")
        .filter_map(|l| l["sequence"].as_u64())
        .collect();
    assert!(!issued_before.is_empty());

    // The sink takes the records: the issuance records become remnants, then the sink stops so
    // retention comes to rest.
    siem.failing.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + T;
    let after = dir.path().join("after.jsonl");
    loop {
        export_to(&c, 1, &after)?;
        let ls = lines(&after)?;
        let elided_all = issued_before.iter().all(|s| {
            ls.iter()
                .any(|l| l["sequence"].as_u64() == Some(*s) && l["elided"] == true)
        });
        if elided_all {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "issuance records not elided");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    siem.failing.store(true, Ordering::SeqCst);
    let settled = wait_settled(&c, &[1, 2, 3]).await?;
    assert_eq!(settled.first_sequence, 1, "nothing else was pruned");

    let (file, text) = export_same_everywhere(
        &c,
        dir.path(),
        "elided",
        "every node holds the same remnants",
    )?;
    let exported = lines(&file)?;
    // The rest of the history is whole: the role, the client, the binding, the keys.
    for kind in [
        "role.created",
        "client.created",
        "role.bound",
        "node_key.published",
    ] {
        assert!(
            exported
                .iter()
                .any(|l| l["kind"] == kind && l["record_bytes"].is_string()),
            "{kind} is kept whole"
        );
    }
    // No token id is left anywhere, and the remnants say no more than where and when.
    let s = String::from_utf8_lossy(&text);
    for j in &jtis {
        assert!(!s.contains(j.as_str()), "token {j} is still in the export");
    }
    let remnant = exported
        .iter()
        .find(|l| l["elided"] == true)
        .context("a remnant")?;
    assert!(
        remnant.get("record_bytes").is_none() && remnant.get("event").is_none(),
        "{remnant}"
    );
    assert!(exported
        .iter()
        .any(|l| l["kind"] == "audit.issuances_elided"));

    let out = ok(&verify(&c, &file)?)?;
    tracing::info!(%out, "verify of the export with remnants");
    assert!(
        out.starts_with("ok: ")
            && out.contains(&format!(
                "{} issuance record(s) elided by retention",
                issued_before.len()
            )),
        "{out}"
    );
    // The sink's copy, written before the elision, holds those records whole: it verifies
    // too, the elision record committing to what it holds.
    let sink_copy = dir.path().join("sink.jsonl");
    {
        let got = siem.lines.lock().unwrap_or_else(|p| p.into_inner());
        let mut by_seq = BTreeMap::new();
        for l in got.values().flatten() {
            let v: Value = serde_json::from_str(l)?;
            by_seq
                .entry(v["sequence"].as_u64().context("sequence")?)
                .or_insert(l.clone());
        }
        let contiguous: Vec<&String> = by_seq
            .iter()
            .enumerate()
            .take_while(|(i, (seq, _))| **seq == *i as u64 + 1)
            .map(|(_, (_, l))| l)
            .collect();
        std::fs::write(
            &sink_copy,
            contiguous
                .iter()
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
        )?;
    }
    assert!(ok(&verify(&c, &sink_copy)?)?.starts_with("ok: "));

    // Tampering with remnants fails: a whole record turned into a remnant, a remnant removed, a
    // remnant's hash changed.
    let all: Vec<String> = std::str::from_utf8(&text)?
        .lines()
        .map(str::to_owned)
        .collect();
    let remnant_at = all
        .iter()
        .position(|l| l.contains("\"elided\":true"))
        .context("remnant line")?;
    let whole_at = all
        .iter()
        .position(|l| l.contains("\"kind\":\"role.created\""))
        .context("role line")?;
    let fails = |lines: &[String], what: &str| -> anyhow::Result<String> {
        let f = dir.path().join("t.jsonl");
        std::fs::write(&f, lines.join("\n") + "\n")?;
        let out = verify(&c, &f)?;
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        anyhow::ensure!(!out.status.success(), "{what} verified: {said}");
        Ok(said)
    };
    let mut forged = all.clone();
    let w: Value = serde_json::from_str(&all[whole_at])?;
    // The canonical remnant line (as the node renders one) for a record that was no issuance.
    forged[whole_at] = format!(
        r#"{{"sequence":{},"time":{},"time_ms":{},"kind":"credential.issued","subject":"node:1","via_node":1,"log_index":{},"elided":true,"prev_hash":{},"hash":{}}}"#,
        w["sequence"], w["time"], w["time_ms"], w["log_index"], w["prev_hash"], w["hash"]
    );
    let said = fails(&forged, "a record passed off as an elided one")?;
    assert!(said.contains("elided"), "{said}");
    // An export that starts inside an elided part holds only some of what the elision
    // committed to for it: verify says its remnants there are not checked, instead of
    // counting them as accounted for (the parts after it are checked).
    let cut = dir.path().join("cut.jsonl");
    let parsed: Vec<Value> = all
        .iter()
        .map(|l| serde_json::from_str(l))
        .collect::<Result<_, _>>()?;
    let remnant_seqs: Vec<u64> = parsed
        .iter()
        .filter(|l| l["elided"] == true)
        .filter_map(|l| l["sequence"].as_u64())
        .collect();
    // A part with two remnants or more: the cut goes right after its first.
    let cut_after = parsed
        .iter()
        .filter_map(|l| l["event"].get("IssuancePartsElided"))
        .flat_map(|e| {
            let mut from = e["elision"]["from_sequence"].as_u64().unwrap_or(0);
            let mut ranges = Vec::new();
            for p in e["elision"]["parts"].as_array().into_iter().flatten() {
                let through = p["through_sequence"].as_u64().unwrap_or(0);
                ranges.push((from, through));
                from = through + 1;
            }
            ranges
        })
        .find_map(|(from, through)| {
            let inside: Vec<u64> = remnant_seqs
                .iter()
                .copied()
                .filter(|s| (from..=through).contains(s))
                .collect();
            (inside.len() >= 2).then(|| inside[0])
        })
        .context("an elided part with two remnants")?;
    let at = parsed
        .iter()
        .position(|l| l["sequence"].as_u64() == Some(cut_after))
        .context("the remnant's line")?;
    std::fs::write(&cut, all[at + 1..].join("\n") + "\n")?;
    let raw = Command::new(authsec_bin()?)
        .args(["audit", "verify"])
        .arg(&cut)
        .arg("--keys")
        .arg(&file)
        .arg("--admin-dir")
        .arg(c.admin_dir())
        .output()?;
    let out = String::from_utf8_lossy(&raw.stdout).into_owned();
    assert!(
        raw.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&raw.stderr)
    );
    assert!(
        out.contains("elided in a range this export holds only the end of"),
        "{out}"
    );
    let mut removed = all.clone();
    removed.remove(remnant_at);
    fails(&removed, "a removed remnant")?;
    let mut changed = all.clone();
    let sv: Value = serde_json::from_str(&all[remnant_at])?;
    let h = sv["hash"].as_str().context("hash")?;
    let flipped = format!("{}{}", if h.starts_with('0') { "1" } else { "0" }, &h[1..]);
    changed[remnant_at] = all[remnant_at].replace(h, &flipped);
    fails(&changed, "a remnant with another hash")?;

    // A restarted node checks its archive, remnants included, and serves the same.
    c.stop(2)?;
    c.spawn(2)?;
    wait_up(&c, 2).await?;
    let again = dir.path().join("restarted.jsonl");
    export_to(&c, 2, &again)?;
    assert_eq!(std::fs::read(&again)?, text, "node 2 after a restart");
    Ok(())
}

/// A metric of node `id` (its value on the line `name{node_id="id"} value`).
fn metric(c: &Cluster, id: u64, name: &str) -> anyhow::Result<u64> {
    let (code, text) = authsec_chaos_tests::http_get(&c.nodes[&id].http, "/metrics")?;
    anyhow::ensure!(code == 200, "metrics of node {id}: {code}");
    let prefix = format!("{name}{{node_id=\"{id}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .with_context(|| format!("{name} in node {id}'s metrics"))
}

/// Prunes and elisions both run while tokens are issued: every prune ends at a checkpoint,
/// and every elision is committed in parts that end at checkpoints, so an export taken while
/// the archive starts after a prune and still holds remnants checks every one of them
/// against its elision record (none is left "not checked").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remnants_left_after_a_prune_are_all_checked() -> anyhow::Result<()> {
    let (siem, c) = retention_cluster(
        "max_age_s = 3\nissuance_max_age_s = 1\n",
        Options::default(),
    )
    .await?;
    siem.failing.store(false, Ordering::SeqCst);
    c.wait_issuing(&[1, 2, 3], T).await?;
    let secret = reader_client(&c).await?;
    let h = c.https()?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("export.jsonl");
    let deadline = Instant::now() + T;
    let mut tokens = 0u64;
    // Issue until an export starts inside a range an elision committed to (a prune ended
    // inside it) with remnants after its first record.
    let (exported, first) = loop {
        for _ in 0..10 {
            let r = h
                .client_credentials(
                    &c.oauth_addr(1 + tokens % 3)?,
                    "svc",
                    &secret,
                    &[("scope", "orders:read")],
                )
                .await?;
            anyhow::ensure!(r.status == 200, "token {tokens}: {r:?}");
            tokens += 1;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no export started inside an elided range ({tokens} tokens)"
        );
        if metric(&c, 1, "authsec_archive_first_sequence")? == 1 {
            continue;
        }
        export_to(&c, 1, &file)?;
        let exported = lines(&file)?;
        let first = exported[0]["sequence"].as_u64().context("sequence")?;
        let cut = exported.iter().any(|l| {
            let e = &l["event"];
            let e = e
                .get("IssuancePartsElided")
                .or_else(|| e.get("IssuancesElided"));
            e.is_some_and(|e| {
                let (from, through) = (
                    e["elision"]["from_sequence"].as_u64().unwrap_or(0),
                    e["elision"]["through_sequence"].as_u64().unwrap_or(0),
                );
                from < first
                    && exported.iter().any(|r| {
                        r["elided"] == true && r["sequence"].as_u64().is_some_and(|s| s <= through)
                    })
            })
        });
        if cut {
            break (exported, first);
        }
    };
    let remnants = exported.iter().filter(|l| l["elided"] == true).count();
    let out = ok(&verify(&c, &file)?)?;
    tracing::info!(%out, first, tokens, "verify of a pruned export with remnants");
    assert!(
        out.contains(&format!(
            "{remnants} issuance record(s) elided by retention, each accounted for"
        )) && !out.contains("not checked"),
        "{out}"
    );
    Ok(())
}

//! The agent at run time: its own identity (attested once with a join token, kept on disk,
//! renewed at half-life), and four loops around one [`Snapshot`]:
//!
//! - **sync**: a stream from any node of the entries this agent serves and the bundles,
//!   resumed by digest after a reconnect, failing over between nodes with backoff;
//! - **rotate**: an X.509-SVID per entry, minted from a CSR (the key is made here and never
//!   leaves the host), renewed at half-life minus up to 10% jitter, re-minted at once when the
//!   entry changes;
//! - **heartbeat**: keeps the agent's last-seen time current in the log;
//! - **renew**: the agent's own SVID, at half-life;
//! - **revocations**: the set streamed by any node; a cached SVID it names is dropped and
//!   minted afresh.
//!
//! With every node unreachable the snapshot stays as it was: cached SVIDs are served until
//! they expire. A ban (or deletion) answers PERMISSION_DENIED at the next sync or heartbeat:
//! the agent then withdraws every SVID, forgets its own, and stops, as SPIRE's agent does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use authsec_api::v1::{
    self, agent_api_service_client::AgentApiServiceClient, svid_service_client::SvidServiceClient,
};
use authsec_domain::TrustDomain;
use authsec_tls::TlsState;
use base64::Engine;
use futures::StreamExt;
use rand::Rng;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tonic::{Code, Status};

use crate::attestor::Needs;
use crate::config::AgentConfig;
use crate::keys::{key_and_csr, PrivateKey};
use crate::nodes::Nodes;
use crate::state::{jwt_only, EntryInfo, Snapshot, TdBundle, X509};

/// Why the agent stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error("the cluster refused this agent ({0}); it withdrew every SVID. Attest again with a new join token once an operator allows it")]
    Refused(String),
    #[error("the agent's own SVID expired at {0:?} while no node could renew it; attest again with a new join token (authsec agent token create --name <this agent's name>)")]
    Expired(SystemTime),
}

/// The agent's own identity, as kept in `<data_dir>/agent.json` and `agent.key`.
#[derive(Debug, Clone)]
pub struct Identity {
    pub spiffe_id: String,
    pub chain: Vec<Vec<u8>>,
    pub key: PrivateKey,
    pub roots: Vec<Vec<u8>>,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    spiffe_id: String,
    chain: Vec<String>,
    roots: Vec<String>,
    issued_at_unix: u64,
    expires_at_unix: u64,
}

fn b64e(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn at(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

/// Write `bytes` to `path` durably: a temporary file, fsync, rename, with `mode`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Identity {
    fn from_wire(s: v1::AgentSvid, key: PrivateKey) -> Self {
        Self {
            spiffe_id: s.spiffe_id,
            chain: s.cert_chain_der,
            key,
            roots: s.bundle_der,
            issued_at: SystemTime::now(),
            expires_at: at(s.expires_at_unix.max(0) as u64),
        }
    }

    pub fn load(dir: &Path) -> anyhow::Result<Option<Self>> {
        let meta = dir.join("agent.json");
        if !meta.exists() {
            return Ok(None);
        }
        let s: Stored = serde_json::from_slice(&std::fs::read(&meta)?)
            .with_context(|| format!("reading {}", meta.display()))?;
        let key = std::fs::read(dir.join("agent.key")).context("reading agent.key")?;
        let d = |v: Vec<String>| -> anyhow::Result<Vec<Vec<u8>>> {
            v.iter()
                .map(|x| Ok(base64::engine::general_purpose::STANDARD.decode(x)?))
                .collect()
        };
        Ok(Some(Self {
            spiffe_id: s.spiffe_id,
            chain: d(s.chain)?,
            key: PrivateKey::from_pkcs8(key),
            roots: d(s.roots)?,
            issued_at: at(s.issued_at_unix),
            expires_at: at(s.expires_at_unix),
        }))
    }

    pub fn store(&self, dir: &Path) -> anyhow::Result<()> {
        write_atomic(&dir.join("agent.key"), self.key.pkcs8_der(), 0o600)?;
        let s = Stored {
            spiffe_id: self.spiffe_id.clone(),
            chain: self.chain.iter().map(|c| b64e(c)).collect(),
            roots: self.roots.iter().map(|c| b64e(c)).collect(),
            issued_at_unix: unix(self.issued_at),
            expires_at_unix: unix(self.expires_at),
        };
        write_atomic(
            &dir.join("agent.json"),
            &serde_json::to_vec_pretty(&s)?,
            0o600,
        )?;
        Ok(())
    }

    pub fn forget(dir: &Path) {
        let _ = std::fs::remove_file(dir.join("agent.json"));
        let _ = std::fs::remove_file(dir.join("agent.key"));
    }

    /// Half-life.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .expires_at
            .duration_since(self.issued_at)
            .unwrap_or_default();
        self.issued_at + life / 2
    }

    fn ders(v: &[Vec<u8>]) -> Vec<CertificateDer<'static>> {
        v.iter().map(|c| CertificateDer::from(c.clone())).collect()
    }
}

/// First attestation: the join token, over TLS that pins the cluster's CA.
pub async fn attest(cfg: &AgentConfig, td: &TrustDomain) -> anyhow::Result<Identity> {
    let token = cfg.join_token()?.context(
        "this agent holds no SVID yet: give it a join token (join_token_file), from `authsec agent token create --name <name>`",
    )?;
    let pin = cfg
        .ca_pin
        .as_deref()
        .context("the first attestation needs ca_pin (sha256:<hex> of the cluster's root CA, as `authsec node init` printed it)")?;
    let tls = authsec_tls::pinned_client_config(td.clone(), pin)?;
    let mut last = None;
    for addr in &cfg.servers {
        let (key, csr) = key_and_csr()?;
        let ch = authsec_tls::tls_channel(addr.clone(), tls.clone())?;
        let req = v1::AttestAgentRequest {
            join_token: token.0.clone(),
            csr_der: csr,
        };
        match AgentApiServiceClient::new(ch).attest(req).await {
            Ok(r) => {
                let id = Identity::from_wire(r.into_inner(), key);
                tracing::info!(agent = %id.spiffe_id, node = addr, "attested");
                return Ok(id);
            }
            Err(s) if crate::nodes::retryable(&s) => {
                tracing::warn!(node = addr, error = %s.message(), "attestation failed; trying the next node");
                last = Some(s);
            }
            Err(s) => anyhow::bail!("attestation refused by {addr}: {}", s.message()),
        }
    }
    anyhow::bail!(
        "no node could attest this agent: {}",
        last.map_or("no servers".into(), |s| s.message().to_owned())
    )
}

/// The running agent.
#[derive(Debug)]
pub struct Agent {
    pub td: TrustDomain,
    pub data_dir: PathBuf,
    pub tls: Arc<TlsState>,
    pub nodes: Nodes,
    pub identity: Mutex<Identity>,
    pub tx: watch::Sender<Arc<Snapshot>>,
    pub backoff_max: Duration,
}

fn jittered(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    Duration::from_millis(ms / 2 + rand::thread_rng().gen_range(0..=ms / 2 + 1))
}

/// The issuing node's applied index an authsec serial number carries (bytes 5..13).
fn issuing_index(serial_hex: &str) -> Option<u64> {
    let b = hex::decode(serial_hex).ok()?;
    let i: [u8; 8] = b.get(5..13)?.try_into().ok()?;
    Some(u64::from_be_bytes(i))
}

fn refused(s: &Status) -> bool {
    s.code() == Code::PermissionDenied
}

impl Agent {
    pub fn new(
        cfg: &AgentConfig,
        td: TrustDomain,
        identity: Identity,
    ) -> anyhow::Result<Arc<Self>> {
        let tls = TlsState::new(
            td.clone(),
            Identity::ders(&identity.roots),
            Identity::ders(&identity.chain),
            identity.key.rustls(),
        )?;
        let nodes = Nodes::new(cfg.servers.clone(), tls.clone())?;
        let (tx, _) = watch::channel(Arc::new(Snapshot {
            td_id: format!("spiffe://{td}"),
            ..Snapshot::default()
        }));
        Ok(Arc::new(Self {
            td,
            data_dir: cfg.data_dir.clone(),
            tls,
            nodes,
            identity: Mutex::new(identity),
            tx,
            backoff_max: cfg.backoff_max(),
        }))
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// Withdraw every SVID: streams answer PERMISSION_DENIED at their next push.
    pub fn withdraw(&self) {
        self.tx.send_modify(|s| {
            let s = Arc::make_mut(s);
            s.entries.clear();
            s.svids.clear();
        });
    }

    /// Replace the entries and bundles with a complete sync.
    fn apply(&self, head: &v1::AgentSyncMessage, entries: Vec<v1::Entry>) {
        let entries: BTreeMap<String, EntryInfo> = entries
            .into_iter()
            .map(|e| {
                (
                    e.entry_id.clone(),
                    EntryInfo {
                        id: e.entry_id,
                        spiffe_id: e.spiffe_id,
                        selectors: e.selectors.into_iter().collect(),
                        federates_with: e.federates_with,
                        revision: e.revision,
                    },
                )
            })
            .collect();
        let needs = Needs::of(
            entries
                .values()
                .flat_map(|e| e.selectors.iter().map(String::as_str)),
        );
        let mut bundles = BTreeMap::new();
        let own = format!("spiffe://{}", self.td);
        if let Some(b) = &head.bundle {
            bundles.insert(
                own.clone(),
                TdBundle {
                    x509: b.x509_authorities_der.clone(),
                    jwks: jwt_only(&b.spiffe_bundle_json),
                },
            );
            // Our own connections trust exactly the synced bundle from the next handshake
            // on: a prepared root at once, a retired one no longer.
            if let Err(e) = self.tls.set_bundle(Identity::ders(&b.x509_authorities_der)) {
                tracing::warn!(error = %e, "the synced bundle could not be trusted");
            }
        }
        for (k, f) in &head.federated {
            bundles.insert(
                k.clone(),
                TdBundle {
                    x509: f.x509_authorities_der.clone(),
                    jwks: jwt_only(&f.spiffe_bundle_json),
                },
            );
        }
        let n = entries.len();
        self.tx.send_modify(|s| {
            let s = Arc::make_mut(s);
            s.svids.retain(|id, _| entries.contains_key(id));
            s.entries = entries;
            if s.bundles != bundles {
                s.bundles = bundles;
                s.bundle_version += 1;
            }
            s.needs = needs;
            s.synced = true;
        });
        tracing::info!(entries = n, applied_index = head.applied_index, "synced");
    }

    /// The sync loop; returns only on a refusal.
    pub async fn sync_loop(self: Arc<Self>) -> Fatal {
        let mut known: Vec<u8> = Vec::new();
        let mut backoff = Duration::from_millis(100);
        let mut node = self.nodes.preferred();
        loop {
            let (ch, addr) = self.nodes.at(node);
            let addr = addr.to_owned();
            let started = AgentApiServiceClient::new(ch)
                .sync(v1::AgentSyncRequest {
                    known_digest: known.clone(),
                })
                .await;
            match started {
                Err(s) if refused(&s) => return Fatal::Refused(s.message().to_owned()),
                Err(s) => tracing::info!(node = %addr, error = %s.message(), "sync failed"),
                Ok(r) => {
                    let mut stream = r.into_inner();
                    let mut head: Option<v1::AgentSyncMessage> = None;
                    let mut pages: Vec<v1::Entry> = Vec::new();
                    loop {
                        match stream.message().await {
                            Ok(Some(mut m)) => {
                                backoff = Duration::from_millis(100);
                                self.nodes.prefer(node);
                                if m.unchanged {
                                    self.tx.send_if_modified(|s| {
                                        let was = s.synced;
                                        Arc::make_mut(s).synced = true;
                                        !was
                                    });
                                    continue;
                                }
                                pages.append(&mut m.entries);
                                if head.is_none() {
                                    head = Some(m.clone());
                                }
                                if m.last {
                                    if let Some(h) = head.take() {
                                        self.apply(&h, std::mem::take(&mut pages));
                                    }
                                    known = m.digest;
                                }
                            }
                            Ok(None) => break,
                            Err(s) if refused(&s) => return Fatal::Refused(s.message().to_owned()),
                            Err(s) => {
                                tracing::info!(node = %addr, error = %s.message(), "sync stream broke");
                                break;
                            }
                        }
                    }
                }
            }
            node = (node + 1) % self.nodes.len();
            tokio::time::sleep(jittered(backoff)).await;
            backoff = (backoff * 2).min(self.backoff_max);
        }
    }

    async fn mint(&self, e: EntryInfo) -> Result<(String, X509), Status> {
        let (key, csr) = key_and_csr().map_err(|e| Status::internal(e.to_string()))?;
        let req = v1::MintX509SvidRequest {
            entry_id: e.id.clone(),
            csr_der: csr,
            ttl_seconds: 0,
        };
        let r = self
            .nodes
            .call("MintX509Svid", |ch| {
                let req = req.clone();
                async move {
                    SvidServiceClient::new(ch)
                        .mint_x509_svid(req)
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await?;
        let now = SystemTime::now();
        let expires_at = at(r.expires_at_unix.max(0) as u64);
        let life = expires_at.duration_since(now).unwrap_or_default();
        let jitter_ms = rand::thread_rng().gen_range(0..=(life.as_millis() as u64 / 10));
        let renew_at = now + life / 2 - Duration::from_millis(jitter_ms).min(life / 2);
        tracing::debug!(entry = %e.id, spiffe_id = %r.spiffe_id, serial = %r.serial_hex, "minted an X.509-SVID");
        Ok((
            e.id,
            X509 {
                spiffe_id: r.spiffe_id,
                chain: r.cert_chain_der,
                key,
                serial: r.serial_hex,
                expires_at,
                renew_at,
                revision: e.revision,
            },
        ))
    }

    /// Keep an SVID for every entry: mint what is missing, stale or past half-life.
    pub async fn rotate_loop(self: Arc<Self>) {
        let mut rx = self.tx.subscribe();
        loop {
            let snap = rx.borrow_and_update().clone();
            let now = SystemTime::now();
            let due: Vec<EntryInfo> = snap
                .entries
                .values()
                .filter(|e| match snap.svids.get(&e.id) {
                    None => true,
                    Some(s) => {
                        s.revision != e.revision || s.spiffe_id != e.spiffe_id || now >= s.renew_at
                    }
                })
                .cloned()
                .collect();
            let mut failed = false;
            if !due.is_empty() {
                let results: Vec<_> = futures::stream::iter(due)
                    .map(|e| self.mint(e))
                    .buffer_unordered(8)
                    .collect()
                    .await;
                let mut minted = Vec::new();
                for r in results {
                    match r {
                        Ok(m) => minted.push(m),
                        Err(s) => {
                            failed = true;
                            tracing::warn!(code = ?s.code(), error = %s.message(), "minting an X.509-SVID failed; the cached one (if any) is served meanwhile");
                        }
                    }
                }
                if !minted.is_empty() {
                    let n = minted.len();
                    self.tx.send_modify(|s| {
                        let s = Arc::make_mut(s);
                        for (id, x) in minted {
                            if s.entries.get(&id).is_some_and(|e| e.revision == x.revision) {
                                s.svids.insert(id, x);
                            }
                        }
                    });
                    tracing::info!(svids = n, "X.509-SVIDs rotated");
                }
            }
            let snap = rx.borrow().clone();
            let now = SystemTime::now();
            let wait = if failed {
                Duration::from_secs(1)
            } else {
                snap.svids
                    .values()
                    .map(|s| s.renew_at.duration_since(now).unwrap_or_default())
                    .min()
                    .unwrap_or(Duration::from_secs(60))
                    .min(Duration::from_secs(60))
            };
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Drop every cached SVID the revocation set names (by serial, or its subject revoked below
    /// the index it was issued at); the rotator mints a fresh one at once and the workloads get
    /// it at the next push. Answers how many were dropped.
    pub fn apply_revocations(&self, set: &v1::RevocationSet) -> usize {
        let serials: std::collections::HashSet<String> = set
            .credentials
            .iter()
            .filter_map(|c| c.id.strip_prefix("x509:").map(str::to_ascii_lowercase))
            .collect();
        let subjects: BTreeMap<&str, u64> = set
            .subjects
            .iter()
            .map(|s| (s.subject.as_str(), s.below_index))
            .collect();
        let mut dropped = 0;
        self.tx.send_if_modified(|s| {
            let s = Arc::make_mut(s);
            let before = s.svids.len();
            s.svids.retain(|_, x| {
                let by_serial = serials.contains(&x.serial.to_ascii_lowercase());
                let by_subject = subjects
                    .get(x.spiffe_id.as_str())
                    .is_some_and(|below| issuing_index(&x.serial).is_some_and(|i| i < *below));
                !(by_serial || by_subject)
            });
            dropped = before - s.svids.len();
            dropped > 0
        });
        if dropped > 0 {
            tracing::info!(
                svids = dropped,
                "revoked SVIDs withdrawn; fresh ones follow"
            );
        }
        dropped
    }

    /// Follow the revocation set from any node (reconnecting with backoff).
    pub async fn revocation_loop(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        let mut node = self.nodes.preferred();
        loop {
            let (ch, addr) = self.nodes.at(node);
            let addr = addr.to_owned();
            match SvidServiceClient::new(ch)
                .watch_revocations(v1::WatchRevocationsRequest::default())
                .await
            {
                Ok(r) => {
                    let mut stream = r.into_inner();
                    while let Ok(Some(set)) = stream.message().await {
                        backoff = Duration::from_millis(100);
                        if set.heartbeat {
                            continue; // not asked for; the set held still holds
                        }
                        self.apply_revocations(&set);
                    }
                    tracing::debug!(node = %addr, "revocation stream ended");
                }
                Err(s) => {
                    tracing::debug!(node = %addr, error = %s.message(), "revocation stream failed")
                }
            }
            node = (node + 1) % self.nodes.len();
            tokio::time::sleep(jittered(backoff)).await;
            backoff = (backoff * 2).min(self.backoff_max);
        }
    }

    /// Heartbeats, as often as the node asks; returns only on a refusal.
    pub async fn heartbeat_loop(self: Arc<Self>) -> Fatal {
        let mut next = Duration::from_secs(30);
        loop {
            let r = self
                .nodes
                .call("Heartbeat", |ch| async move {
                    AgentApiServiceClient::new(ch)
                        .heartbeat(v1::AgentHeartbeatRequest {})
                        .await
                        .map(|r| r.into_inner())
                })
                .await;
            match r {
                Ok(h) => next = Duration::from_secs(u64::from(h.next_in_seconds.clamp(1, 3600))),
                Err(s) if refused(&s) => return Fatal::Refused(s.message().to_owned()),
                Err(s) => tracing::info!(error = %s.message(), "heartbeat failed"),
            }
            tokio::time::sleep(next).await;
        }
    }

    /// Renew the agent's own SVID at half-life; returns only when it cannot be kept.
    pub async fn renew_loop(self: Arc<Self>) -> Fatal {
        loop {
            let (renew_at, expires_at) = {
                let id = self.identity.lock().unwrap_or_else(|p| p.into_inner());
                (id.renew_at(), id.expires_at)
            };
            if let Ok(d) = renew_at.duration_since(SystemTime::now()) {
                tokio::time::sleep(d).await;
            }
            let mut backoff = Duration::from_millis(200);
            loop {
                match self.renew_once().await {
                    Ok(()) => break,
                    Err(s) if refused(&s) => return Fatal::Refused(s.message().to_owned()),
                    Err(s) => {
                        if SystemTime::now() >= expires_at {
                            return Fatal::Expired(expires_at);
                        }
                        tracing::warn!(error = %s.message(), "renewing the agent SVID failed; retrying");
                        tokio::time::sleep(jittered(backoff)).await;
                        backoff = (backoff * 2).min(self.backoff_max);
                    }
                }
            }
        }
    }

    async fn renew_once(&self) -> Result<(), Status> {
        let (key, csr) = key_and_csr().map_err(|e| Status::internal(e.to_string()))?;
        let r = self
            .nodes
            .call("RenewAgent", |ch| {
                let csr = csr.clone();
                async move {
                    AgentApiServiceClient::new(ch)
                        .renew_agent(v1::RenewAgentRequest { csr_der: csr })
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await?;
        let id = Identity::from_wire(r, key);
        self.tls
            .replace(
                Identity::ders(&id.roots),
                Identity::ders(&id.chain),
                id.key.rustls(),
            )
            .map_err(|e| Status::internal(format!("installing the renewed SVID: {e}")))?;
        if let Err(e) = id.store(&self.data_dir) {
            tracing::error!(error = %e, "storing the renewed agent SVID failed");
        }
        tracing::info!(expires_at = unix(id.expires_at), "agent SVID renewed");
        *self.identity.lock().unwrap_or_else(|p| p.into_inner()) = id;
        Ok(())
    }

    /// Run every loop until one reports a fatal condition.
    pub async fn run_loops(self: &Arc<Self>) -> Fatal {
        let (ftx, mut frx) = mpsc::channel::<Fatal>(4);
        for f in [
            tokio::spawn(self.clone().sync_loop()),
            tokio::spawn(self.clone().heartbeat_loop()),
            tokio::spawn(self.clone().renew_loop()),
        ] {
            let ftx = ftx.clone();
            tokio::spawn(async move {
                if let Ok(fatal) = f.await {
                    let _ = ftx.send(fatal).await;
                }
            });
        }
        tokio::spawn(self.clone().rotate_loop());
        tokio::spawn(self.clone().revocation_loop());
        match frx.recv().await {
            Some(f) => f,
            None => Fatal::Refused("every loop stopped".into()),
        }
    }
}

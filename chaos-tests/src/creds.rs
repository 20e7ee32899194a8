//! The credential workload of a chaos run (part two): agents onboarded, roles bound and
//! changed, delegations granted and revoked, and credentials requested from every node,
//! issuer replicas included, while faults are injected. Every request is recorded with its
//! start and end on the run's one monotonic clock ([`Oracle::now`]), the node that answered,
//! and what it answered; every revocation is then probed, one second after its
//! acknowledgement, through every node's introspection and through an SDK verifier subscribed
//! to each node. The checkers judge the log afterwards.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use authsec_api::v1;
use authsec_sdk::{KeySource, RevocationSource, Verifier, VerifierConfig, VerifyError};
use tonic::transport::Channel;

use crate::oauth::{claims, Https};
use crate::oracle::Oracle;
use crate::{Cluster, OAUTH_ISSUER};

/// The audience every workload client's tokens name.
pub const ORDERS: &str = "https://orders.example";
pub const READ: &str = "orders:read";
pub const WRITE: &str = "orders:write";
/// The role bound to every workload client; its permissions flip between both scopes and
/// read only.
pub const ROLE: &str = "cw-orders";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
/// When a revocation is probed, after its acknowledgement: just past the 1 s bound, and
/// again later (a node that was excused at the first probe is judged at the second).
pub const PROBE_AFTER: [Duration; 2] = [Duration::from_millis(1050), Duration::from_millis(3500)];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CredKind {
    /// client_credentials.
    Access,
    /// Token exchange under a delegation.
    Delegated,
    X509,
    JwtSvid,
}

impl CredKind {
    pub fn name(self) -> &'static str {
        match self {
            CredKind::Access => "access token",
            CredKind::Delegated => "delegated token",
            CredKind::X509 => "X.509-SVID",
            CredKind::JwtSvid => "JWT-SVID",
        }
    }
}

/// A credential a node handed out, as the client received it.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The `jti`, or the certificate serial in lowercase hex.
    pub id: String,
    pub client_id: String,
    pub scopes: BTreeSet<String>,
    pub delegation: Option<String>,
    /// The log index the issuing node's state stood at (`authsec_index`, `issued_at_index`).
    pub index: u64,
    /// The node that signed it, when the answer names it.
    pub issuer_node: Option<u64>,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Issued(Issued),
    /// The node answered and refused (freshness, scope, unknown client yet, ...).
    Refused(String),
    /// No answer: a connection error or a timeout.
    Failed(String),
}

/// One credential request.
#[derive(Debug, Clone)]
pub struct Request {
    pub kind: CredKind,
    pub node: u64,
    pub start: Duration,
    pub end: Duration,
    pub outcome: Outcome,
}

impl Request {
    pub fn issued(&self) -> Option<&Issued> {
        match &self.outcome {
            Outcome::Issued(i) => Some(i),
            _ => None,
        }
    }
}

/// An acknowledged revocation of one token.
#[derive(Debug, Clone)]
pub struct Revocation {
    pub jti: String,
    pub node: u64,
    pub start: Duration,
    /// When the client had the acknowledgement.
    pub acked: Duration,
    pub index: u64,
    /// Revoked as every credential of this subject below `index` (the token's own index is
    /// below it), rather than by its `jti`: ordered by the log, never by a node's clock.
    pub subject: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeVia {
    Introspection,
    /// An SDK verifier subscribed to this node's revocation stream.
    Verifier,
}

/// One look at a revoked token after its revocation.
#[derive(Debug, Clone)]
pub struct Probe {
    pub jti: String,
    pub node: u64,
    pub via: ProbeVia,
    pub start: Duration,
    pub end: Duration,
    /// `Some(true)`: honoured; `Some(false)`: refused; `None`: no answer (or unavailable).
    pub accepted: Option<bool>,
    pub detail: String,
}

/// A write the workload made (onboarding, binding, role change, delegation), for the report.
#[derive(Debug, Clone)]
pub struct Write {
    pub what: &'static str,
    pub node: u64,
    pub ok: bool,
}

/// Everything the credential workload saw.
#[derive(Debug, Clone, Default)]
pub struct CredLog {
    pub requests: Vec<Request>,
    pub revocations: Vec<Revocation>,
    pub probes: Vec<Probe>,
    pub writes: Vec<Write>,
}

type Log = Arc<Mutex<CredLog>>;

fn push<T>(log: &Log, f: impl FnOnce(&mut CredLog) -> &mut Vec<T>, v: T) {
    let mut g = log.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut g).push(v);
}

#[derive(Debug, Clone)]
pub struct CredOptions {
    pub workers: usize,
    pub think: Duration,
}

impl Default for CredOptions {
    fn default() -> Self {
        Self {
            workers: 4,
            think: Duration::from_millis(40),
        }
    }
}

/// Work a scenario asks for now, ahead of the workers' rotation.
#[derive(Debug, Default)]
pub struct Urgent {
    pub revocations: AtomicU64,
    pub role_changes: AtomicU64,
}

fn take(c: &AtomicU64) -> bool {
    c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

/// One node the workload talks to.
#[derive(Debug, Clone)]
struct Target {
    id: u64,
    grpc: Channel,
    oauth: String,
}

/// The running workload.
pub struct CredWorkload {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    log: Log,
    pub urgent: Arc<Urgent>,
    _verifiers: Arc<Vec<(u64, Verifier)>>,
}

impl std::fmt::Debug for CredWorkload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredWorkload")
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

/// One worker: it issues in its own loop; its writes (revocations, role changes,
/// delegations, onboarding) run beside it, one at a time, so a write stuck behind a cut-off
/// leader never stops it from asking for credentials.
#[derive(Clone)]
struct Worker {
    w: usize,
    targets: Vec<Target>,
    https: Https,
    oracle: Arc<Oracle>,
    log: Log,
    svc: (String, String),
    agent: (String, String),
    entry: String,
    delegation: Arc<AtomicU64>,
    /// Recent access tokens: (jti, expiry ms, the token).
    tokens: Vec<(String, u64, String)>,
    /// Revocations asked for so far (every fourth is by subject).
    revoked: Arc<AtomicU64>,
    verifiers: Arc<Vec<(u64, Verifier)>>,
    probes: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

/// A write, retried while the cluster settles (set-up runs before any fault).
async fn settle<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.code() == tonic::Code::AlreadyExists => {
                return Err(anyhow!("{what}: already exists: {}", e.message()))
            }
            Err(e) if Instant::now() < deadline => {
                tracing::info!(what, error = %e, "set-up write retried");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(anyhow!("{what}: {e}")),
        }
    }
}

fn client_req(id: &str, kind: v1::ClientKind) -> v1::CreateClientRequest {
    v1::CreateClientRequest {
        client_id: id.into(),
        kind: kind as i32,
        allowed_scopes: vec![READ.into(), WRITE.into()],
        default_audience: ORDERS.into(),
        generate_secret: true,
        ..Default::default()
    }
}

impl CredWorkload {
    /// Set up the role, each worker's service (the delegator) and AI agent (the delegate), and
    /// a first delegation, then start the workers over `nodes` (voters and issuer replicas).
    pub async fn start(
        cluster: &Cluster,
        nodes: &[u64],
        oracle: Arc<Oracle>,
        tag: &str,
        opts: CredOptions,
    ) -> anyhow::Result<Self> {
        let mut targets = Vec::new();
        for id in nodes {
            targets.push(Target {
                id: *id,
                grpc: cluster.channel(*id).await?,
                oauth: cluster.oauth_addr(*id)?,
            });
        }
        let first = targets[0].grpc.clone();
        let roles = v1::role_service_client::RoleServiceClient::new(first.clone());
        settle("create the workload role", || {
            let mut r = roles.clone();
            async move {
                r.create_role(v1::CreateRoleRequest {
                    name: ROLE.into(),
                    permissions: vec![READ.into(), WRITE.into()],
                    ..Default::default()
                })
                .await
            }
        })
        .await
        .or_else(|e| {
            if e.to_string().contains("already exists") {
                Ok(tonic::Response::new(Default::default()))
            } else {
                Err(e)
            }
        })?;

        // SDK verifiers, one subscribed to each node's revocation stream.
        let tls = cluster.https_roots()?;
        let jwks: Vec<String> = targets
            .iter()
            .map(|t| format!("https://{}/.well-known/jwks.json", t.oauth))
            .collect();
        let transport = cluster.client_transport()?;
        let mut verifiers = Vec::new();
        for t in &targets {
            let ch = transport.channel(&cluster.addr(t.id)?)?;
            let v = Verifier::new(
                VerifierConfig::new(
                    OAUTH_ISSUER,
                    ORDERS,
                    KeySource::Jwks {
                        uris: jwks.clone(),
                        tls: tls.clone(),
                    },
                ),
                Some(RevocationSource::new(vec![ch])?),
            )?;
            verifiers.push((t.id, v));
        }
        let verifiers = Arc::new(verifiers);

        let log: Log = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let urgent = Arc::new(Urgent::default());
        let mut workers = Vec::new();
        for w in 0..opts.workers {
            let via = targets[w % targets.len()].grpc.clone();
            let clients = v1::client_service_client::ClientServiceClient::new(via.clone());
            let svc_id = format!("{tag}-cw{w}-svc");
            let agent_id = format!("{tag}-cw{w}-agent");
            let svc = settle("create a delegator service", || {
                let mut c = clients.clone();
                let req = client_req(&svc_id, v1::ClientKind::Service);
                async move { c.create_client(req).await }
            })
            .await?
            .into_inner();
            let agent = settle("onboard an AI agent", || {
                let mut c = clients.clone();
                let req = client_req(&agent_id, v1::ClientKind::AiAgent);
                async move { c.create_client(req).await }
            })
            .await?
            .into_inner();
            let entry = agent
                .entry
                .map(|e| e.entry_id)
                .context("an AI agent's client comes with its workload entry")?;
            for subject in [format!("client:{svc_id}"), format!("client:{agent_id}")] {
                let r = v1::role_service_client::RoleServiceClient::new(via.clone());
                settle("bind the workload role", || {
                    let mut r = r.clone();
                    let b = v1::Binding {
                        role: ROLE.into(),
                        subject: subject.clone(),
                    };
                    async move { r.bind(b).await }
                })
                .await?;
            }
            let d = v1::delegation_service_client::DelegationServiceClient::new(via.clone());
            let did = format!("{tag}-cw{w}-d0");
            settle("grant the first delegation", || {
                let mut d = d.clone();
                let req = delegation_req(&did, &svc_id, &agent_id, &[READ, WRITE]);
                async move { d.create_delegation(req).await }
            })
            .await?;
            workers.push(Worker {
                w,
                targets: targets.clone(),
                https: cluster.https()?,
                oracle: oracle.clone(),
                log: log.clone(),
                svc: (svc_id, svc.client_secret),
                agent: (agent_id, agent.client_secret),
                entry,
                delegation: Arc::default(),
                tokens: Vec::new(),
                revoked: Arc::default(),
                verifiers: verifiers.clone(),
                probes: Arc::default(),
            });
        }
        let mut tasks = Vec::new();
        for mut worker in workers {
            let (stop, urgent, think) = (stop.clone(), urgent.clone(), opts.think);
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                let mut pending = None;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    worker.step(i, &urgent, &mut pending).await;
                    // Pacing, so the nodes keep CPU on two cores; not synchronisation.
                    tokio::time::sleep(think).await;
                }
                if let Some(p) = pending {
                    let _ = p.await;
                }
                let probes: Vec<_> = worker
                    .probes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .drain(..)
                    .collect();
                for p in probes {
                    let _ = p.await;
                }
            }));
        }
        Ok(Self {
            stop,
            tasks,
            log,
            urgent,
            _verifiers: verifiers,
        })
    }

    /// Ask for `n` revocations now (a scenario's fault is in place).
    pub fn revoke_now(&self, n: u64) {
        self.urgent.revocations.fetch_add(n, Ordering::Relaxed);
    }

    /// Ask for `n` role changes now.
    pub fn change_roles_now(&self, n: u64) {
        self.urgent.role_changes.fetch_add(n, Ordering::Relaxed);
    }

    /// Stop, let every pending probe finish, and hand over the log.
    pub async fn stop(self) -> CredLog {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let g = self.log.lock().unwrap_or_else(|p| p.into_inner());
        g.clone()
    }

    /// Requests so far (for waiting on progress).
    pub fn issued_since(&self, since: Duration) -> usize {
        let g = self.log.lock().unwrap_or_else(|p| p.into_inner());
        g.requests
            .iter()
            .filter(|r| r.end > since && r.issued().is_some())
            .count()
    }
}

fn delegation_req(id: &str, from: &str, to: &str, perms: &[&str]) -> v1::CreateDelegationRequest {
    v1::CreateDelegationRequest {
        delegation_id: id.into(),
        delegator: format!("client:{from}"),
        delegate: to.into(),
        permissions: perms.iter().map(|p| p.to_string()).collect(),
        max_token_ttl_seconds: 600,
        ttl_seconds: 24 * 3600,
        ..Default::default()
    }
}

fn scopes_of(c: &serde_json::Value) -> BTreeSet<String> {
    c["scope"]
        .as_str()
        .unwrap_or("")
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A token from an OAuth answer, or the outcome to record.
fn token_of(r: anyhow::Result<crate::oauth::Resp>) -> Result<String, Outcome> {
    match r {
        Err(e) => Err(Outcome::Failed(format!("{e:#}"))),
        Ok(r) if r.status == 200 => r
            .json()
            .ok()
            .and_then(|j| j["access_token"].as_str().map(str::to_owned))
            .ok_or_else(|| Outcome::Failed(format!("200 without a token: {}", r.body))),
        Ok(r) => Err(Outcome::Refused(format!("{} {}", r.status, r.body))),
    }
}

fn issued_token(token: &str, kind_delegated: bool) -> Outcome {
    match claims(token) {
        Ok(c) => Outcome::Issued(Issued {
            id: c["jti"].as_str().unwrap_or_default().to_owned(),
            client_id: c["client_id"].as_str().unwrap_or_default().to_owned(),
            scopes: scopes_of(&c),
            delegation: kind_delegated
                .then(|| c["authsec_delegation"].as_str().map(str::to_owned))
                .flatten(),
            index: c["authsec_index"].as_u64().unwrap_or(0),
            issuer_node: None,
        }),
        Err(e) => Outcome::Failed(format!("an unreadable token: {e:#}")),
    }
}

fn status_outcome(e: tonic::Status) -> Outcome {
    match e.code() {
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Unknown
        | tonic::Code::Cancelled
        | tonic::Code::Internal
            if !e.message().contains("freshness") =>
        {
            Outcome::Failed(e.to_string())
        }
        _ => Outcome::Refused(e.to_string()),
    }
}

impl Worker {
    fn target(&self, i: u64) -> Target {
        self.targets[(self.w + i as usize) % self.targets.len()].clone()
    }

    fn record(&self, kind: CredKind, node: u64, start: Duration, outcome: Outcome) {
        push(
            &self.log,
            |l| &mut l.requests,
            Request {
                kind,
                node,
                start,
                end: self.oracle.now(),
                outcome,
            },
        );
    }

    fn wrote(&self, what: &'static str, node: u64, ok: bool) {
        push(&self.log, |l| &mut l.writes, Write { what, node, ok });
    }

    async fn step(
        &mut self,
        i: u64,
        urgent: &Urgent,
        pending: &mut Option<tokio::task::JoinHandle<()>>,
    ) {
        let t = self.target(i);
        let write = match i % 10 {
            _ if urgent.revocations.load(Ordering::Relaxed) > 0 => Some(0),
            _ if urgent.role_changes.load(Ordering::Relaxed) > 0 => Some(1),
            6 => Some(0),
            8 => Some(1 + (i / 10) % 3),
            _ => None,
        };
        if let Some(which) = write {
            if pending.as_ref().is_none_or(|p| p.is_finished()) {
                let which = if which == 0 && take(&urgent.revocations) {
                    0
                } else if which == 1 && take(&urgent.role_changes) {
                    1
                } else {
                    which
                };
                let mut me = self.clone();
                if which == 0 {
                    // The token goes with the write: no other write revokes it again.
                    me.tokens = self.tokens.pop().into_iter().collect();
                }
                *pending = Some(tokio::spawn(async move {
                    match which {
                        0 => me.revoke(&t).await,
                        1 => me.change_role(&t, i).await,
                        2 => me.redelegate(&t).await,
                        _ => me.onboard(&t, i).await,
                    }
                }));
                return;
            }
        }
        match i % 10 {
            2 | 7 => self.delegated(&t, i).await,
            3 => self.x509(&t).await,
            4 => self.jwt_svid(&t).await,
            _ => self.access(&t).await,
        }
    }

    async fn access(&mut self, t: &Target) {
        let start = self.oracle.now();
        let r = self
            .https
            .client_credentials(&t.oauth, &self.agent.0, &self.agent.1, &[("scope", READ)])
            .await;
        let outcome = match token_of(r) {
            Ok(token) => {
                let o = issued_token(&token, false);
                if let (Outcome::Issued(i), Ok(c)) = (&o, claims(&token)) {
                    self.tokens.push((
                        i.id.clone(),
                        c["exp"].as_u64().unwrap_or(0) * 1000,
                        token.clone(),
                    ));
                    if self.tokens.len() > 64 {
                        self.tokens.remove(0);
                    }
                }
                o
            }
            Err(o) => o,
        };
        self.record(CredKind::Access, t.id, start, outcome);
    }

    async fn delegated(&mut self, t: &Target, i: u64) {
        // Ask for both scopes most of the time: whether write is allowed depends on the role
        // and the delegation as they stand, which the other workers keep changing.
        let scope = match i % 3 {
            0 => READ.to_owned(),
            _ => format!("{READ} {WRITE}"),
        };
        // The delegator's own token first (an access token of its own, recorded as such),
        // for this authorization server and with the scopes it delegates.
        let start = self.oracle.now();
        let r = self
            .https
            .client_credentials(
                &t.oauth,
                &self.svc.0,
                &self.svc.1,
                &[("scope", scope.as_str()), ("resource", OAUTH_ISSUER)],
            )
            .await;
        let subject = match token_of(r) {
            Ok(tok) => {
                self.record(CredKind::Access, t.id, start, issued_token(&tok, false));
                tok
            }
            Err(o) => return self.record(CredKind::Access, t.id, start, o),
        };
        let form = vec![
            ("grant_type", EXCHANGE),
            ("subject_token", subject.as_str()),
            ("subject_token_type", ACCESS),
            ("scope", scope.as_str()),
        ];
        let start = self.oracle.now();
        let r = self
            .https
            .post_form(
                &t.oauth,
                "/oauth2/token",
                Some((&self.agent.0, &self.agent.1)),
                &form,
            )
            .await;
        let outcome = match token_of(r) {
            Ok(tok) => issued_token(&tok, true),
            Err(o) => o,
        };
        self.record(CredKind::Delegated, t.id, start, outcome);
    }

    async fn x509(&mut self, t: &Target) {
        let start = self.oracle.now();
        let csr = match rcgen::KeyPair::generate()
            .and_then(|k| rcgen::CertificateParams::default().serialize_request(&k))
        {
            Ok(c) => c.der().to_vec(),
            Err(e) => {
                return self.record(CredKind::X509, t.id, start, Outcome::Failed(e.to_string()))
            }
        };
        let mut c = v1::svid_service_client::SvidServiceClient::new(t.grpc.clone());
        let mut req = tonic::Request::new(v1::MintX509SvidRequest {
            entry_id: self.entry.clone(),
            csr_der: csr,
            ttl_seconds: 0,
        });
        req.set_timeout(Duration::from_secs(10));
        let outcome = match c.mint_x509_svid(req).await {
            Ok(r) => {
                let r = r.into_inner();
                Outcome::Issued(Issued {
                    id: r.serial_hex.to_ascii_lowercase(),
                    client_id: self.agent.0.clone(),
                    scopes: BTreeSet::new(),
                    delegation: None,
                    index: r.issued_at_index,
                    issuer_node: Some(r.issuer_node_id),
                })
            }
            Err(e) => status_outcome(e),
        };
        self.record(CredKind::X509, t.id, start, outcome);
    }

    async fn jwt_svid(&mut self, t: &Target) {
        let start = self.oracle.now();
        let mut c = v1::svid_service_client::SvidServiceClient::new(t.grpc.clone());
        let mut req = tonic::Request::new(v1::MintJwtSvidRequest {
            entry_id: self.entry.clone(),
            audience: vec![ORDERS.into()],
            ttl_seconds: 0,
        });
        req.set_timeout(Duration::from_secs(10));
        let outcome = match c.mint_jwt_svid(req).await {
            Ok(r) => {
                let r = r.into_inner();
                let jti = claims(&r.token)
                    .ok()
                    .and_then(|c| c["jti"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                Outcome::Issued(Issued {
                    id: jti,
                    client_id: self.agent.0.clone(),
                    scopes: BTreeSet::new(),
                    delegation: None,
                    index: 0,
                    issuer_node: Some(r.issuer_node_id),
                })
            }
            Err(e) => status_outcome(e),
        };
        self.record(CredKind::JwtSvid, t.id, start, outcome);
    }

    async fn revoke(&mut self, t: &Target) {
        let Some((jti, exp, token)) = self.tokens.pop() else {
            return self.access(t).await;
        };
        let start = self.oracle.now();
        // Every fourth revocation is of the agent as a subject: every credential it holds
        // below the revocation's log index, this token among them, whichever node's clock
        // stamped it (the clock-skew scenario's ordering).
        let subject = (self.revoked.fetch_add(1, Ordering::Relaxed) % 4 == 3)
            .then(|| format!("client:{}", self.agent.0));
        let token_index = claims(&token)
            .ok()
            .and_then(|c| c["authsec_index"].as_u64())
            .unwrap_or(0);
        let mut c = v1::revocation_service_client::RevocationServiceClient::new(t.grpc.clone());
        let target = match &subject {
            Some(s) => v1::revoke_request::Target::Subject(s.clone()),
            None => v1::revoke_request::Target::Token(v1::TokenRef {
                jti: jti.clone(),
                expires_at_ms: exp,
            }),
        };
        let mut req = tonic::Request::new(v1::RevokeRequest {
            target: Some(target),
        });
        req.set_timeout(Duration::from_secs(12));
        let r = match c.revoke(req).await {
            Ok(r) => r.into_inner(),
            Err(_) => {
                // Outcome unknown: it may still commit; nothing is probed for it.
                self.wrote("revoke a token", t.id, false);
                return;
            }
        };
        self.wrote("revoke a token", t.id, true);
        if subject.is_some() && token_index >= r.revoked_at_index {
            // Issued at or after the revocation's index: not covered, nothing to probe.
            return;
        }
        let rev = Revocation {
            jti: jti.clone(),
            node: t.id,
            start,
            acked: self.oracle.now(),
            index: r.revoked_at_index,
            subject,
        };
        push(&self.log, |l| &mut l.revocations, rev.clone());
        // The token is probed through every node and every subscribed verifier once the
        // 1 s bound has passed since the acknowledgement.
        let (targets, verifiers, https, oracle, log) = (
            self.targets.clone(),
            self.verifiers.clone(),
            self.https.clone(),
            self.oracle.clone(),
            self.log.clone(),
        );
        let caller = self.agent.clone();
        let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        probes.retain(|p| !p.is_finished());
        probes.push(tokio::spawn(async move {
            for after in PROBE_AFTER {
                let at = rev.acked + after;
                let now = oracle.now();
                if at > now {
                    // The probe's schedule, not synchronisation.
                    tokio::time::sleep(at - now).await;
                }
                let mut looks = Vec::new();
                for t in &targets {
                    looks.push(introspect(&https, t, &caller, &token, &jti, &oracle));
                }
                for p in futures::future::join_all(looks).await {
                    push(&log, |l| &mut l.probes, p);
                }
                for (node, v) in verifiers.iter() {
                    let start = oracle.now();
                    // Asked whatever its stream's state: a verifier decides only on a
                    // revocation view younger than its bound, so one whose node is cut off
                    // or whose stream is down answers "unavailable", never "accepted".
                    let (accepted, detail) = match v.verify(&token, None).await {
                        Ok(_) => (Some(true), "accepted".to_owned()),
                        Err(e @ VerifyError::RevocationsUnavailable(_)) => (None, e.to_string()),
                        Err(e) => (Some(false), e.to_string()),
                    };
                    push(
                        &log,
                        |l| &mut l.probes,
                        Probe {
                            jti: jti.clone(),
                            node: *node,
                            via: ProbeVia::Verifier,
                            start,
                            end: oracle.now(),
                            accepted,
                            detail,
                        },
                    );
                }
            }
        }));
    }

    async fn change_role(&mut self, t: &Target, i: u64) {
        let perms: Vec<String> = if (i / 10 + self.w as u64).is_multiple_of(2) {
            vec![READ.into()]
        } else {
            vec![READ.into(), WRITE.into()]
        };
        let mut c = v1::role_service_client::RoleServiceClient::new(t.grpc.clone());
        let mut req = tonic::Request::new(v1::UpdateRoleRequest {
            name: ROLE.into(),
            permissions: Some(v1::StringList { values: perms }),
            ..Default::default()
        });
        req.set_timeout(Duration::from_secs(12));
        let ok = c.update_role(req).await.is_ok();
        self.wrote("change the role's permissions", t.id, ok);
    }

    async fn redelegate(&mut self, t: &Target) {
        let current = self.delegation.load(Ordering::Relaxed);
        let next = current + 1;
        let perms: &[&str] = if next % 2 == 1 {
            &[READ]
        } else {
            &[READ, WRITE]
        };
        let id = format!("{}-d{next}", self.svc.0.trim_end_matches("-svc"));
        let mut c = v1::delegation_service_client::DelegationServiceClient::new(t.grpc.clone());
        let mut req = tonic::Request::new(delegation_req(&id, &self.svc.0, &self.agent.0, perms));
        req.set_timeout(Duration::from_secs(12));
        let ok = c.create_delegation(req).await.is_ok();
        self.wrote("grant a delegation", t.id, ok);
        if !ok {
            return;
        }
        let old = format!("{}-d{current}", self.svc.0.trim_end_matches("-svc"));
        self.delegation.store(next, Ordering::Relaxed);
        let mut r = v1::revocation_service_client::RevocationServiceClient::new(t.grpc.clone());
        let mut req = tonic::Request::new(v1::RevokeRequest {
            target: Some(v1::revoke_request::Target::DelegationId(old)),
        });
        req.set_timeout(Duration::from_secs(12));
        let ok = r.revoke(req).await.is_ok();
        self.wrote("revoke a delegation", t.id, ok);
    }

    async fn onboard(&mut self, t: &Target, i: u64) {
        let id = format!("{}-a{i}", self.svc.0.trim_end_matches("-svc"));
        let mut c = v1::client_service_client::ClientServiceClient::new(t.grpc.clone());
        let mut req = tonic::Request::new(client_req(&id, v1::ClientKind::AiAgent));
        req.set_timeout(Duration::from_secs(12));
        let ok = c
            .create_client(req)
            .await
            .is_ok_and(|r| r.into_inner().entry.is_some());
        self.wrote("onboard an AI agent", t.id, ok);
        if !ok {
            return;
        }
        // Bind it through the next node.
        let next = self.target(i + 1);
        let mut r = v1::role_service_client::RoleServiceClient::new(next.grpc.clone());
        let mut req = tonic::Request::new(v1::Binding {
            role: ROLE.into(),
            subject: format!("client:{id}"),
        });
        req.set_timeout(Duration::from_secs(12));
        let ok = r.bind(req).await.is_ok();
        self.wrote("bind the role to the new agent", next.id, ok);
    }
}

async fn introspect(
    https: &Https,
    t: &Target,
    caller: &(String, String),
    token: &str,
    jti: &str,
    oracle: &Oracle,
) -> Probe {
    let start = oracle.now();
    let r = https
        .post_form(
            &t.oauth,
            "/oauth2/introspect",
            Some((&caller.0, &caller.1)),
            &[("token", token)],
        )
        .await;
    let (accepted, detail) = match r {
        Ok(r) if r.status == 200 => match r.json() {
            Ok(j) => (
                Some(j["active"].as_bool() == Some(true)),
                format!("active: {}", j["active"]),
            ),
            Err(e) => (None, format!("unreadable: {e}")),
        },
        Ok(r) => (None, format!("{} {}", r.status, r.body)),
        Err(e) => (None, format!("{e:#}")),
    };
    Probe {
        jti: jti.to_owned(),
        node: t.id,
        via: ProbeVia::Introspection,
        start,
        end: oracle.now(),
        accepted,
        detail,
    }
}

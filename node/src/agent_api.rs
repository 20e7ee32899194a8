//! `AgentApiService`: what an authsec-agent asks of a node.
//!
//! - `Attest`: node attestation with a single-use join token. The token is consumed through
//!   the log (`AttestAgent`), so a second agent presenting it is refused on every node; then
//!   this node mints the agent's X.509-SVID (`spiffe://<td>/authsec/agent/<name>`) from the
//!   agent's CSR. The CSR and this node's readiness are checked *before* the token is spent.
//! - `RenewAgent`, `Heartbeat`, `Sync`: the caller's own SVID names the agent; a banned or
//!   deleted agent is refused (PERMISSION_DENIED) at its next call, which is how a ban takes
//!   effect within one sync.
//! - `Sync` streams the entries whose parent is the agent and the bundles, read from this
//!   node's in-memory projections (an index by parent, no scan), whole and paged, then again
//!   whenever the content's digest changes.

use std::collections::BTreeMap;
use std::sync::Arc;

use authsec_api::v1::{self, agent_api_service_server::AgentApiService};
use authsec_domain::identity::{agent_name_of, agent_spiffe_id, Agent, Entry};
use authsec_domain::{Command, EntryId, SpiffeId};
use authsec_storage::StateView;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::config::AgentsSection;
use crate::services::Ctx;
use crate::svid_api::Svids;

/// Entries per sync message: far below the 4 MiB gRPC limit SPIRE hit at ~17k entries in one.
pub const SYNC_PAGE: usize = 200;

/// Most entries one agent may serve (bounded input, bounded memory per stream).
pub const ENTRIES_PER_AGENT_MAX: usize = 100_000;

#[derive(Debug, Clone)]
pub struct AgentApi {
    pub svids: Svids,
    pub view: StateView,
    pub cfg: AgentsSection,
}

/// A join token as the operator hands it to an agent: `<name>.<64 hex digits>`.
struct AgentJoinToken {
    name: String,
    secret_hash: [u8; 32],
}

impl AgentJoinToken {
    fn parse(s: &str) -> Result<Self, Status> {
        let bad = || {
            Status::invalid_argument(
                "join_token: an agent join token looks like <name>.<64 hex digits>, as `authsec agent token create` printed it",
            )
        };
        if s.len() > 256 {
            return Err(bad());
        }
        let (name, secret) = s.trim().split_once('.').ok_or_else(bad)?;
        let name_ok = !name.is_empty()
            && name.len() <= authsec_domain::limits::JOIN_TOKEN_ID_BYTES_MAX
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !name_ok || secret.len() != 64 {
            return Err(bad());
        }
        let secret = hex::decode(secret).map_err(|_| bad())?;
        Ok(Self {
            name: name.to_owned(),
            secret_hash: Sha256::digest(&secret).into(),
        })
    }
}

/// The synthetic entry an agent's own SVID is minted for.
fn agent_entry(id: &SpiffeId, ttl_s: u32) -> Result<Entry, Status> {
    Ok(Entry {
        entry_id: EntryId::parse("authsec-agent")
            .map_err(|e| Status::internal(format!("agent entry id: {e}")))?,
        spiffe_id: id.clone(),
        parent_id: None,
        selectors: Default::default(),
        x509_ttl_s: ttl_s,
        jwt_ttl_s: 0,
        dns_names: Default::default(),
        client_id: None,
        federates_with: Default::default(),
        revision: 0,
        created_at_ms: 0,
        updated_at_ms: 0,
    })
}

fn denied_agent(id: &SpiffeId, agent: Option<&Agent>) -> Option<Status> {
    match agent {
        None => Some(Status::permission_denied(format!(
            "agent {id} is not attested (or was deleted); attest again with a new join token"
        ))),
        Some(a) if a.banned => Some(Status::permission_denied(format!(
            "agent {id} is banned; an operator must unban it (authsec agent unban {id})"
        ))),
        Some(_) => None,
    }
}

impl AgentApi {
    fn ctx(&self) -> &Arc<Ctx> {
        &self.svids.ctx
    }

    /// The calling agent, attested and not banned.
    fn agent<T>(&self, req: &Request<T>) -> Result<SpiffeId, Status> {
        let td = &self.ctx().sec.td;
        let Some(id) = crate::authz::caller(req) else {
            return Err(Status::unauthenticated(
                "an agent call needs the agent's X.509-SVID as client certificate",
            ));
        };
        if agent_name_of(td, &id).is_none() {
            return Err(Status::permission_denied(format!(
                "{id} is not an agent identity (spiffe://{td}/authsec/agent/<name>)"
            )));
        }
        if let Some(s) = denied_agent(&id, self.view.read().agents.get(&id)) {
            return Err(s);
        }
        Ok(id)
    }

    /// Mint the agent's X.509-SVID and record it (no audit, no credential).
    async fn mint(&self, id: &SpiffeId, csr_der: &[u8]) -> Result<v1::AgentSvid, Status> {
        let entry = agent_entry(id, self.cfg.svid_ttl_s)?;
        let index = crate::svid_api::applied_index(self.ctx());
        let issuer = &self.svids.issuer;
        let svid = issuer.mint_x509(&entry, csr_der, 0, index)?;
        self.svids
            .record(
                Some(id.to_string()),
                &entry,
                authsec_domain::issuance::CredentialKind::X509Svid,
                hex::encode(svid.serial),
                Vec::new(),
                svid.not_after.as_millis() as u64,
                index,
            )
            .await?;
        let bundle = self.ctx().reader.bundle_roots().map_err(|e| {
            tracing::error!(error = %e, "reading the trust bundle failed");
            Status::internal("storage read failed; see the node's log")
        })?;
        Ok(v1::AgentSvid {
            spiffe_id: id.to_string(),
            cert_chain_der: svid.chain,
            bundle_der: bundle,
            expires_at_unix: svid.not_after.as_secs() as i64,
            issuer_node_id: issuer.node_id,
        })
    }
}

/// One agent's sync state: its entries (sorted by id), the bundle and the federated bundles
/// they name, and their digest.
struct SyncState {
    applied_index: u64,
    digest: Vec<u8>,
    entries: Vec<v1::Entry>,
    bundle: v1::Bundle,
    federated: BTreeMap<String, v1::FederatedBundle>,
}

fn federated_jwks(b: &authsec_domain::federation::FederatedBundle) -> String {
    let mut keys = Vec::new();
    for der in &b.x509_authorities {
        if let Ok(k) = crate::bundle::x509_jwk(der) {
            keys.push(k);
        }
    }
    for (kid, spki) in &b.jwt_authorities {
        if let Ok(k) = crate::bundle::jwt_jwk(kid, spki) {
            keys.push(k);
        }
    }
    serde_json::json!({ "keys": keys, "spiffe_sequence": b.sequence }).to_string()
}

/// The entries an agent serves, in id order: those whose parent it is, with selectors.
fn served<'a>(
    st: &'a authsec_domain::State,
    agent: &SpiffeId,
) -> impl Iterator<Item = &'a Entry> + 'a {
    st.idx
        .entries_by_parent
        .get(agent)
        .into_iter()
        .flatten()
        .take(ENTRIES_PER_AGENT_MAX)
        .filter_map(|id| st.entries.get(id))
        // An entry without selectors matches no workload: nothing to serve yet.
        .filter(|e| !e.selectors.is_empty() && !authsec_domain::identity::is_reserved(&e.spiffe_id))
}

/// SHA-256 over what an agent is sent: the bundle's sequence, each entry's id and revision,
/// each federated bundle's sequence. From memory alone, so cheap to take on every wake.
fn digest(st: &authsec_domain::State, agent: &SpiffeId, bundle_sequence: u64) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(bundle_sequence.to_be_bytes());
    let mut feds = std::collections::BTreeSet::new();
    for e in served(st, agent) {
        h.update(e.entry_id.as_str().as_bytes());
        h.update([0]);
        h.update(e.revision.to_be_bytes());
        feds.extend(e.federates_with.iter());
    }
    for td in feds {
        if let Some(b) = st.federations.get(td).and_then(|f| f.bundle.as_ref()) {
            h.update(format!("spiffe://{td}").as_bytes());
            h.update(b.sequence.to_be_bytes());
        }
    }
    h.finalize().to_vec()
}

/// The digest from memory, after checking the agent may still sync.
fn quick_digest(view: &StateView, agent: &SpiffeId) -> Result<Vec<u8>, Status> {
    let st = view.read();
    if let Some(s) = denied_agent(agent, st.agents.get(agent)) {
        return Err(s);
    }
    Ok(digest(&st, agent, st.keys_meta.bundle_sequence))
}

/// The whole state to send, its digest taken with the bundle as read from storage.
fn sync_state(ctx: &Ctx, view: &StateView, agent: &SpiffeId) -> Result<SyncState, Status> {
    let bundle = crate::bundle::current(ctx)?;
    let applied_index = crate::svid_api::applied_index(ctx);
    let st = view.read();
    if let Some(s) = denied_agent(agent, st.agents.get(agent)) {
        return Err(s);
    }
    let mut entries = Vec::new();
    let mut federated = BTreeMap::new();
    for e in served(&st, agent) {
        entries.push(authsec_api::identity::entry_to_wire(e));
        for td in &e.federates_with {
            let key = format!("spiffe://{td}");
            if federated.contains_key(&key) {
                continue;
            }
            if let Some(b) = st.federations.get(td).and_then(|f| f.bundle.as_ref()) {
                federated.insert(
                    key,
                    v1::FederatedBundle {
                        x509_authorities_der: b.x509_authorities.clone(),
                        spiffe_bundle_json: federated_jwks(b),
                        sequence: b.sequence,
                    },
                );
            }
        }
    }
    Ok(SyncState {
        applied_index,
        digest: digest(&st, agent, bundle.sequence),
        entries,
        bundle,
        federated,
    })
}

type SyncStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<v1::AgentSyncMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentApiService for AgentApi {
    type SyncStream = SyncStream;

    async fn attest(
        &self,
        req: Request<v1::AttestAgentRequest>,
    ) -> Result<Response<v1::AgentSvid>, Status> {
        let actor = self.ctx().actor(&req);
        let source = crate::audit::source_of(&req);
        let r = req.into_inner();
        let token = AgentJoinToken::parse(&r.join_token)?;
        let td = &self.ctx().sec.td;
        let id = agent_spiffe_id(td, &token.name)
            .map_err(|e| Status::invalid_argument(format!("join_token: {e}")))?;
        // Check all that can fail before spending the token: this node issues, and the CSR
        // is one we would sign.
        self.svids.issuer.check_fresh()?;
        crate::issuer::check_csr(&r.csr_der, &id)?;
        let written = self
            .ctx()
            .write(
                actor,
                Command::AttestAgent {
                    token_id: token.name.clone(),
                    secret_hash: token.secret_hash,
                    agent_id: id.clone(),
                },
            )
            .await;
        let (receipt, _) = match written {
            Ok(w) => w,
            Err(s) => {
                // A wrong, spent or expired token: a failed authentication, counted.
                if s.code() == tonic::Code::Unauthenticated {
                    if let Some(ip) = source {
                        self.ctx().auth_failures.record(
                            Some(&token.name),
                            ip,
                            "agent_attest",
                            s.message(),
                        );
                    }
                }
                return Err(s);
            }
        };
        tracing::info!(agent = %id, log_index = receipt.log_index, "agent attested");
        Ok(Response::new(self.mint(&id, &r.csr_der).await?))
    }

    async fn renew_agent(
        &self,
        req: Request<v1::RenewAgentRequest>,
    ) -> Result<Response<v1::AgentSvid>, Status> {
        let id = self.agent(&req)?;
        self.svids.issuer.check_fresh()?;
        let r = req.into_inner();
        Ok(Response::new(self.mint(&id, &r.csr_der).await?))
    }

    async fn heartbeat(
        &self,
        req: Request<v1::AgentHeartbeatRequest>,
    ) -> Result<Response<v1::AgentHeartbeatResponse>, Status> {
        let id = self.agent(&req)?;
        let actor = self.ctx().actor(&req);
        self.ctx()
            .write(actor, Command::RecordAgentSeen { agent_id: id })
            .await?;
        Ok(Response::new(v1::AgentHeartbeatResponse {
            next_in_seconds: self.cfg.heartbeat_s,
        }))
    }

    async fn sync(
        &self,
        req: Request<v1::AgentSyncRequest>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let agent = self.agent(&req)?;
        let mut known = req.into_inner().known_digest;
        // An empty digest never equals a state's: the first message is the whole state.
        if known.len() > 64 {
            return Err(Status::invalid_argument("known_digest: at most 64 bytes"));
        }
        let ctx = self.ctx().clone();
        let view = self.view.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            let mut changes = ctx.head_rx.clone();
            let mut first = true;
            // The memory digest the last full read matched: while it holds, nothing to read.
            let mut seen: Vec<u8> = Vec::new();
            loop {
                let quick = match quick_digest(&view, &agent) {
                    Ok(q) => q,
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                };
                // Unchanged since the last consistent read: nothing to read or send.
                let st = if quick == seen {
                    None
                } else {
                    match sync_state(&ctx, &view, &agent) {
                        Ok(st) => Some(st),
                        Err(s) => {
                            let _ = tx.send(Err(s)).await;
                            return;
                        }
                    }
                };
                if let Some(st) = &st {
                    // Storage may lag memory by a moment: only a consistent read settles it.
                    if st.digest == quick {
                        seen = quick;
                    }
                }
                match st {
                    None => {}
                    // Tell a resuming agent, once, that what it holds is current.
                    Some(st) if st.digest == known && first => {
                        let m = v1::AgentSyncMessage {
                            applied_index: st.applied_index,
                            digest: st.digest,
                            unchanged: true,
                            last: true,
                            ..Default::default()
                        };
                        if tx.send(Ok(m)).await.is_err() {
                            return;
                        }
                    }
                    Some(st) if st.digest == known => {}
                    Some(st) => {
                        let pages: Vec<&[v1::Entry]> = if st.entries.is_empty() {
                            vec![&[]]
                        } else {
                            st.entries.chunks(SYNC_PAGE).collect()
                        };
                        let n = pages.len();
                        for (i, page) in pages.into_iter().enumerate() {
                            let m = v1::AgentSyncMessage {
                                applied_index: st.applied_index,
                                digest: st.digest.clone(),
                                unchanged: false,
                                entries: page.to_vec(),
                                last: i + 1 == n,
                                bundle: (i == 0).then(|| st.bundle.clone()),
                                federated: if i == 0 {
                                    st.federated.clone().into_iter().collect()
                                } else {
                                    Default::default()
                                },
                            };
                            if tx.send(Ok(m)).await.is_err() {
                                return;
                            }
                        }
                        known = st.digest;
                    }
                }
                first = false;
                let read_at = std::time::Instant::now();
                // Wake on the next applied record (at most every 10 ms): the memory digest
                // says at once whether anything of this agent's changed, and only then is the
                // state read and sent. Notice an agent that left even when nothing changes.
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                }
                let pace = std::time::Duration::from_millis(10);
                if let Some(rest) = pace.checked_sub(read_at.elapsed()) {
                    tokio::time::sleep(rest).await;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

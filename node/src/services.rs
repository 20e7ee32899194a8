//! The admin gRPC services of `authsec.v1`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use authsec_api::v1::event_service_server::EventService;
use authsec_api::v1::{
    self, client_service_server::ClientService, cluster_service_server::ClusterService,
};
use authsec_api::{convert, ApiError};
use authsec_domain::command::Command;
use authsec_domain::{Actor, ArchiveHead, AuditRecord, Principal};
use authsec_storage::Reader;
use futures::Stream;
use openraft::{BasicNode, ChangeMembers};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::security::Security;
use crate::writer::{Committed, Writer};

/// Everything the services share.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub node_id: u64,
    pub addr: String,
    pub writer: Writer,
    pub reader: Reader,
    pub head_rx: watch::Receiver<ArchiveHead>,
    pub sec: Arc<Security>,
    /// SPIFFE ID template of an AI agent's workload entry.
    pub agent_template: String,
    /// This node's SVID issuer.
    pub issuer: Arc<crate::issuer::SvidIssuer>,
    /// What agents are told, and when their entries show `agent-offline`.
    pub agents: crate::config::AgentsSection,
    /// Failed authentications of the current interval (recorded by `audit::failure_flusher`).
    pub auth_failures: Arc<crate::audit::FailureLog>,
    /// Audit sinks that hold writes back while they lag (`on_lag = "refuse_writes"`).
    pub sink_gate: Arc<crate::sink::Gate>,
    /// Each sink's acknowledged sequence and lag, for `/metrics`.
    pub sink_stats: Arc<crate::sink::SinkStats>,
}

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "request failed");
    ApiError::Internal("storage read failed; see the node's log".into()).into()
}

impl Ctx {
    /// The caller as the audit log records it: its SPIFFE ID, or anonymous under
    /// `--insecure`.
    pub fn actor<T>(&self, req: &Request<T>) -> Actor {
        Actor {
            principal: match crate::authz::caller(req) {
                Some(id) => Principal::Named(id.to_string()),
                None => Principal::Anonymous,
            },
            via_node: self.node_id,
        }
    }

    /// This node's own principal, as its upkeep writes name it.
    pub fn node_principal(&self) -> String {
        authsec_raft::tls::node_spiffe_id(&self.sec.td, self.node_id).to_string()
    }

    pub async fn write(
        &self,
        actor: Actor,
        command: Command,
    ) -> Result<(v1::WriteReceipt, authsec_domain::Applied), Status> {
        // A lagging required sink holds back what callers ask for; the node's own upkeep
        // (keys, checkpoints, the issuance audit) goes on.
        let own = match &actor.principal {
            Principal::System => true,
            Principal::Named(p) => *p == self.node_principal(),
            Principal::Anonymous => false,
        };
        if !own {
            if let Some(reason) = self.sink_gate.refusal() {
                return Err(Status::unavailable(reason));
            }
        }
        let Committed {
            log_index,
            leader_id,
            outcome,
        } = self.writer.submit(actor, command).await?;
        // Read your writes: answer once this node has applied the entry too, so a read sent
        // here next (and the registration's answer) sees it. Bounded; a slow follower still
        // answers, the write being committed either way.
        let _ = self
            .writer
            .raft()
            .wait(Some(Duration::from_secs(5)))
            .applied_index_at_least(Some(log_index), "read your writes")
            .await;
        let applied = outcome.map_err(ApiError::from)?;
        let (first, last) = applied.sequences.unwrap_or((0, 0));
        Ok((
            v1::WriteReceipt {
                log_index,
                sequence_first: first,
                sequence_last: last,
                via_node: self.node_id,
                leader_id,
            },
            applied,
        ))
    }

    pub async fn read_point(&self, consistency: i32) -> Result<(), Status> {
        match v1::Consistency::try_from(consistency) {
            Ok(v1::Consistency::Local) => Ok(()),
            Ok(v1::Consistency::Linearizable) => Ok(self.writer.linearize().await?),
            Err(_) => Err(ApiError::from(authsec_domain::FieldError::new(
                "consistency",
                "unknown value",
            ))
            .into()),
        }
    }

    /// Add a node as a learner that catches up, then (unless `learner_only`) as a voter.
    pub async fn add_member(
        &self,
        actor: Actor,
        node_id: u64,
        addr: String,
        learner_only: bool,
    ) -> Result<v1::MembershipResponse, Status> {
        if node_id == 0 {
            return Err(ApiError::from(authsec_domain::FieldError::new(
                "node_id",
                "must be 1 or more",
            ))
            .into());
        }
        if addr.is_empty()
            || addr.len() > authsec_domain::limits::NODE_ADDR_BYTES_MAX
            || !addr.contains(':')
        {
            return Err(ApiError::from(authsec_domain::FieldError::new(
                "addr",
                "must be host:port",
            ))
            .into());
        }
        let raft = self.writer.raft();
        if raft.metrics().borrow().current_leader != Some(self.node_id) {
            return Err(not_leader(raft));
        }
        tracing::info!(node_id, addr = %addr, "adding node as learner");
        let resp = raft
            .add_learner(node_id, BasicNode { addr: addr.clone() }, true)
            .await
            .map_err(|e| ApiError::Unavailable {
                reason: format!("add learner: {e}"),
                leader: None,
            })?;
        let mut index = resp.log_id.index;
        if !learner_only {
            tracing::info!(node_id, "promoting learner to voter");
            let resp = raft
                .change_membership(ChangeMembers::AddVoterIds([node_id].into()), false)
                .await
                .map_err(|e| ApiError::Unavailable {
                    reason: format!("promote to voter: {e}"),
                    leader: None,
                })?;
            index = resp.log_id.index;
        }
        if let Err(e) = self
            .write(actor, Command::RecordNodeMember { node_id, addr })
            .await
        {
            // The membership change is committed; only its audit record is missing. Answer the
            // change, as remove_node does, and say so in the log.
            tracing::warn!(node_id, error = %e.message(), "node added, but its addition was not recorded");
        }
        Ok(membership_answer(raft, index))
    }

    pub async fn status(&self) -> Result<v1::StatusResponse, Status> {
        let m = self.writer.raft().metrics().borrow().clone();
        let issuing = self.issuer.readiness();
        let reader = self.reader.clone();
        let (view, meta) = tokio::task::spawn_blocking(move || {
            Ok::<_, authsec_storage::StoreError>((reader.status_view()?, reader.meta()?))
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        let membership = m.membership_config.membership();
        let members = members_of(&m);
        let leader_addr = m
            .current_leader
            .and_then(|l| membership.get_node(&l).map(|n| n.addr.clone()))
            .unwrap_or_default();
        let state = match m.state {
            openraft::ServerState::Leader => "leader",
            openraft::ServerState::Follower => "follower",
            openraft::ServerState::Candidate => "candidate",
            openraft::ServerState::Learner => "learner",
            openraft::ServerState::Shutdown => "shutdown",
        };
        Ok(v1::StatusResponse {
            node_id: self.node_id,
            addr: self.addr.clone(),
            leader_id: m.current_leader.unwrap_or(0),
            leader_addr,
            term: m.current_term,
            state: state.into(),
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: view.applied.map_or(0, |l| l.index),
            millis_since_quorum_ack: m.millis_since_quorum_ack.map_or(-1, |v| v as i64),
            projection_digest: hex::encode(view.digest),
            archive_head: Some(v1::ArchiveHead {
                sequence: view.head.sequence,
                hash: hex::encode(view.head.hash),
            }),
            members,
            trust_domain: meta.trust_domain.map(|t| t.to_string()).unwrap_or_default(),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            freshness_ms: self
                .issuer
                .freshness
                .age()
                .map(|(a, _)| a.as_millis() as u64),
            max_staleness_ms: self.issuer.max_staleness.as_millis() as u64,
            issuing: issuing.is_ok(),
            issuing_reason: issuing.err().unwrap_or_default(),
        })
    }
}

#[derive(Debug, Clone)]
pub struct Cluster(pub Arc<Ctx>);

/// The membership as the API shows it: every node with its role.
fn members_of(m: &openraft::RaftMetrics<u64, BasicNode>) -> Vec<v1::Member> {
    let membership = m.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    membership
        .nodes()
        .map(|(id, n)| v1::Member {
            node_id: *id,
            addr: n.addr.clone(),
            role: if voters.contains(id) {
                "voter"
            } else {
                "learner"
            }
            .into(),
        })
        .collect()
}

fn not_leader(raft: &authsec_raft::Raft) -> Status {
    ApiError::Unavailable {
        reason: "membership changes are served by the leader; ask it".into(),
        leader: crate::writer::leader_hint(raft),
    }
    .into()
}

fn membership_answer(raft: &authsec_raft::Raft, log_index: u64) -> v1::MembershipResponse {
    let m = raft.metrics().borrow().clone();
    v1::MembershipResponse {
        members: members_of(&m),
        log_index,
    }
}

impl Cluster {
    /// The calling admin's name and its certificate's fingerprint.
    fn admin_caller<T>(&self, req: &Request<T>) -> Result<(String, String), Status> {
        let peer = req.extensions().get::<authsec_raft::tls::PeerInfo>();
        let Some(tls) = &self.0.sec.tls else {
            return Err(Status::failed_precondition(
                "an --insecure cluster has no admin certificates",
            ));
        };
        let name = peer
            .and_then(|p| p.spiffe_id.as_ref())
            .and_then(|id| crate::pki::admin_name_of(tls.trust_domain(), id));
        match (name, peer.and_then(|p| p.cert_fingerprint.clone())) {
            (Some(name), Some(fingerprint)) => Ok((name.to_owned(), fingerprint)),
            _ => Err(Status::permission_denied(
                "only an admin can rotate its credential, with its own certificate",
            )),
        }
    }

    /// Sign an admin certificate for the CSR's key under the signing root, and record it
    /// (with `revokes`, the caller's certificate it replaces) before it is returned.
    async fn sign_and_record_admin(
        &self,
        actor: authsec_domain::Actor,
        name: String,
        csr_der: &[u8],
        revokes: Option<String>,
    ) -> Result<v1::IssueAdminResponse, Status> {
        let sec = &self.0.sec;
        if sec.tls.is_none() {
            return Err(Status::failed_precondition(
                "an --insecure cluster has no admin certificates",
            ));
        }
        crate::pki::admin_spiffe_id(&sec.td, &name)
            .map_err(|e| Status::invalid_argument(format!("invalid request: {e}")))?;
        let signed = sec
            .sign_admin(&self.0.reader, &name, csr_der)
            .map_err(crate::join::signer_status)?;
        let rotate = revokes.is_some();
        let (receipt, _) = self
            .0
            .write(
                actor,
                Command::RecordAdminCertificate {
                    name: name.clone(),
                    fingerprint: crate::pki::fingerprint(&signed.cert),
                    root: signed.root,
                    not_after_ms: signed.not_after_ms,
                    revokes,
                },
            )
            .await?;
        if let Ok(s) = self.0.reader.security() {
            sec.enforce(&s);
        }
        tracing::info!(%name, rotate, "admin certificate issued");
        Ok(v1::IssueAdminResponse {
            cert_chain_der: vec![signed.cert],
            bundle_der: signed.bundle,
            receipt: Some(receipt),
        })
    }
}

#[tonic::async_trait]
impl ClusterService for Cluster {
    async fn status(
        &self,
        _req: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        Ok(Response::new(self.0.status().await?))
    }

    async fn add_node(
        &self,
        req: Request<v1::AddNodeRequest>,
    ) -> Result<Response<v1::MembershipResponse>, Status> {
        let actor = self.0.actor(&req);
        let r = req.into_inner();
        Ok(Response::new(
            self.0
                .add_member(actor, r.node_id, r.addr, r.learner_only)
                .await?,
        ))
    }

    async fn remove_node(
        &self,
        req: Request<v1::RemoveNodeRequest>,
    ) -> Result<Response<v1::MembershipResponse>, Status> {
        let actor = self.0.actor(&req);
        let r = req.into_inner();
        let raft = self.0.writer.raft();
        if raft.metrics().borrow().current_leader != Some(self.0.node_id) {
            return Err(not_leader(raft));
        }
        if r.revoke_keys {
            // Revoke first: from this commit on, every node refuses the node's certificates,
            // so a compromised node cannot act during its removal.
            self.0
                .write(actor.clone(), Command::RevokeNode { node_id: r.node_id })
                .await?;
            // Applied here already (the write waits for it): refuse it on this node now, not
            // when the revocation watcher next runs.
            if let Ok(s) = self.0.reader.security() {
                self.0.sec.enforce(&s);
            }
            tracing::warn!(
                node_id = r.node_id,
                "node revoked: its certificates are refused from now on"
            );
        }
        let m = raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        if membership.get_node(&r.node_id).is_none() {
            if r.revoke_keys {
                // Revoking a node that already left is what an operator does after the fact.
                return Ok(Response::new(membership_answer(raft, 0)));
            }
            return Err(ApiError::NotFound(format!("node {}", r.node_id)).into());
        }
        let is_voter = membership.voter_ids().any(|v| v == r.node_id);
        let change = if is_voter {
            ChangeMembers::RemoveVoters([r.node_id].into())
        } else {
            ChangeMembers::RemoveNodes([r.node_id].into())
        };
        let resp = raft
            .change_membership(change, false)
            .await
            .map_err(|e| ApiError::FailedPrecondition(format!("remove node {}: {e}", r.node_id)))?;
        if let Err(e) = self
            .0
            .write(actor, Command::RecordNodeRemoved { node_id: r.node_id })
            .await
        {
            // The membership change itself is committed; only its audit bookkeeping failed
            // (a node never recorded, or a lost leadership). Say so and answer the change.
            tracing::warn!(node_id = r.node_id, error = %e.message(), "node removed, but its removal was not recorded");
        }
        Ok(Response::new(membership_answer(raft, resp.log_id.index)))
    }

    type SaveSnapshotStream =
        Pin<Box<dyn Stream<Item = Result<v1::SnapshotChunk, Status>> + Send + 'static>>;

    async fn save_snapshot(
        &self,
        _req: Request<v1::SaveSnapshotRequest>,
    ) -> Result<Response<Self::SaveSnapshotStream>, Status> {
        let reader = self.0.reader.clone();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = reader.dir().join(format!("backup-{nanos}.part"));
        let p = path.clone();
        let written = tokio::task::spawn_blocking(move || reader.backup(&p))
            .await
            .map_err(internal)?
            .map_err(|e| {
                let _ = std::fs::remove_file(&path);
                internal(e)
            })?;
        let (index, term) = written
            .applied
            .map_or((0, 0), |l| (l.index, l.leader_id.term));
        tracing::info!(
            last_log_index = index,
            bytes = written.bytes,
            archive_head = written.head.sequence,
            "backup taken"
        );
        let info = v1::SnapshotInfo {
            last_log_index: index,
            last_log_term: term,
            projection_digest: hex::encode(written.digest),
            archive_head: Some(v1::ArchiveHead {
                sequence: written.head.sequence,
                hash: hex::encode(written.head.hash),
            }),
            total_bytes: written.bytes,
            node_id: self.0.node_id,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let result = async {
                let mut f = tokio::fs::File::open(&path).await?;
                let mut info = Some(info);
                loop {
                    let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
                    let n = f.read(&mut buf).await?;
                    if n == 0 && info.is_none() {
                        return Ok::<_, std::io::Error>(());
                    }
                    buf.truncate(n);
                    let chunk = v1::SnapshotChunk {
                        info: info.take(),
                        data: buf,
                    };
                    if tx.send(Ok(chunk)).await.is_err() {
                        return Ok(()); // the caller went away
                    }
                    if n == 0 {
                        return Ok(());
                    }
                }
            }
            .await;
            if let Err(e) = result {
                let _ = tx.send(Err(internal(e))).await;
            }
            let _ = tokio::fs::remove_file(&path).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn issue_admin(
        &self,
        req: Request<v1::IssueAdminRequest>,
    ) -> Result<Response<v1::IssueAdminResponse>, Status> {
        let actor = self.0.actor(&req);
        let caller = self.admin_caller(&req);
        let r = req.into_inner();
        let rotate = if r.rotate {
            // Rotation replaces the caller's own certificate: it must be this admin's.
            let (caller, fingerprint) = caller?;
            if caller != r.name {
                return Err(Status::permission_denied(format!(
                    "rotate replaces the caller's own certificate: call it as admin {:?}",
                    r.name
                )));
            }
            Some(fingerprint)
        } else {
            None
        };
        self.sign_and_record_admin(actor, r.name, &r.csr_der, rotate)
            .await
            .map(Response::new)
    }

    async fn rotate_admin(
        &self,
        req: Request<v1::RotateAdminRequest>,
    ) -> Result<Response<v1::IssueAdminResponse>, Status> {
        let actor = self.0.actor(&req);
        let (name, fingerprint) = self.admin_caller(&req)?;
        let r = req.into_inner();
        self.sign_and_record_admin(actor, name, &r.csr_der, Some(fingerprint))
            .await
            .map(Response::new)
    }

    async fn list_admins(
        &self,
        _req: Request<v1::ListAdminsRequest>,
    ) -> Result<Response<v1::ListAdminsResponse>, Status> {
        let reader = &self.0.reader;
        let security = reader.security().map_err(internal)?;
        let signing = reader
            .load_roots()
            .map_err(internal)?
            .signing_with(security.root_cert.as_deref())
            .map(authsec_domain::fingerprint);
        let admins = reader.load_admins().map_err(internal)?;
        let certificates = admins
            .live(&security.revoked_certs, crate::issuer::now_ms())
            .map(|(name, c)| v1::AdminCertificate {
                name: name.to_owned(),
                fingerprint: c.fingerprint.clone(),
                root: c.root.clone(),
                not_after_ms: c.not_after_ms,
                issued_at_ms: c.issued_at_ms,
                under_signing_root: signing.as_deref() == Some(c.root.as_str()),
            })
            .collect();
        Ok(Response::new(v1::ListAdminsResponse { certificates }))
    }

    async fn create_join_token(
        &self,
        req: Request<v1::CreateJoinTokenRequest>,
    ) -> Result<Response<v1::CreateJoinTokenResponse>, Status> {
        let actor = self.0.actor(&req);
        let r = req.into_inner();
        let max = authsec_domain::limits::JOIN_TOKEN_TTL_MS_MAX / 1000;
        if r.ttl_seconds == 0 || r.ttl_seconds > max {
            return Err(ApiError::from(authsec_domain::FieldError::new(
                "ttl_seconds",
                format!("must be 1 to {max}"),
            ))
            .into());
        }
        let token = crate::pki::JoinToken::generate();
        let (receipt, _) = self
            .0
            .write(
                actor,
                Command::CreateJoinToken {
                    token_id: token.id.clone(),
                    secret_hash: token.secret_hash(),
                    ttl_ms: r.ttl_seconds * 1000,
                },
            )
            .await?;
        let meta = self.0.reader.security().map_err(internal)?;
        let expires_at_ms = meta
            .join_tokens
            .get(&token.id)
            .map_or(0, |t| t.expires_at_ms);
        tracing::info!(token_id = %token.id, expires_at_ms, "join token created");
        Ok(Response::new(v1::CreateJoinTokenResponse {
            token: token.reveal(),
            expires_at_ms,
            // The root that signs node certificates now (after a root rotation, not the
            // bootstrap root): every node serves it in its chain for the joiner to pin.
            ca_fingerprint: self
                .0
                .reader
                .load_roots()
                .map_err(internal)?
                .signing_with(meta.root_cert.as_deref())
                .map(crate::pki::fingerprint)
                .unwrap_or_default(),
            receipt: Some(receipt),
        }))
    }
}

#[derive(Debug, Clone)]
pub struct Clients(pub Arc<Ctx>);

/// Bytes per backup chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

#[tonic::async_trait]
impl ClientService for Clients {
    async fn register_client(
        &self,
        req: Request<v1::RegisterClientRequest>,
    ) -> Result<Response<v1::RegisterClientResponse>, Status> {
        let actor = self.0.actor(&req);
        let cmd = convert::register_client(req.into_inner()).map_err(ApiError::from)?;
        let (receipt, applied) = self
            .0
            .write(actor, Command::RegisterClient(cmd.clone()))
            .await?;
        let id = cmd
            .client_id
            .or(applied.generated_client_id)
            .ok_or_else(|| internal("registration without an id"))?;
        let client = self
            .0
            .reader
            .client(&id)
            .map_err(internal)?
            .map(|c| convert::client_to_wire(&c));
        Ok(Response::new(v1::RegisterClientResponse {
            receipt: Some(receipt),
            client,
        }))
    }

    async fn update_client(
        &self,
        req: Request<v1::UpdateClientRequest>,
    ) -> Result<Response<v1::UpdateClientResponse>, Status> {
        let actor = self.0.actor(&req);
        let (client_id, patch, expected_revision) =
            convert::update_client(req.into_inner()).map_err(ApiError::from)?;
        let (receipt, _) = self
            .0
            .write(
                actor,
                Command::UpdateClient {
                    client_id,
                    patch,
                    expected_revision,
                },
            )
            .await?;
        Ok(Response::new(v1::UpdateClientResponse {
            receipt: Some(receipt),
        }))
    }

    async fn remove_client(
        &self,
        req: Request<v1::RemoveClientRequest>,
    ) -> Result<Response<v1::RemoveClientResponse>, Status> {
        let actor = self.0.actor(&req);
        let client_id = convert::client_id(&req.into_inner().client_id).map_err(ApiError::from)?;
        let (receipt, _) = self
            .0
            .write(actor, Command::RemoveClient { client_id })
            .await?;
        Ok(Response::new(v1::RemoveClientResponse {
            receipt: Some(receipt),
        }))
    }

    async fn get_client(
        &self,
        req: Request<v1::GetClientRequest>,
    ) -> Result<Response<v1::Client>, Status> {
        let r = req.into_inner();
        let id = convert::client_id(&r.client_id).map_err(ApiError::from)?;
        self.0.read_point(r.consistency).await?;
        match self.0.reader.client(&id).map_err(internal)? {
            Some(c) => Ok(Response::new(convert::client_to_wire(&c))),
            None => Err(ApiError::NotFound(format!("client {id}")).into()),
        }
    }

    async fn list_clients(
        &self,
        req: Request<v1::ListClientsRequest>,
    ) -> Result<Response<v1::ListClientsResponse>, Status> {
        crate::identity_api::list_clients(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn create_client(
        &self,
        req: Request<v1::CreateClientRequest>,
    ) -> Result<Response<v1::CreateClientResponse>, Status> {
        crate::identity_api::create_client(&self.0, req).await
    }

    async fn describe_client(
        &self,
        req: Request<v1::GetClientRequest>,
    ) -> Result<Response<v1::ClientDetail>, Status> {
        crate::identity_api::describe_client(&self.0, req).await
    }

    async fn rotate_secret(
        &self,
        req: Request<v1::RotateSecretRequest>,
    ) -> Result<Response<v1::RotateSecretResponse>, Status> {
        crate::identity_api::rotate_secret(&self.0, req).await
    }

    async fn set_credentials(
        &self,
        req: Request<v1::SetCredentialsRequest>,
    ) -> Result<Response<v1::WriteResponse>, Status> {
        crate::identity_api::set_credentials(&self.0, req).await
    }

    async fn delete_client(
        &self,
        req: Request<v1::DeleteClientRequest>,
    ) -> Result<Response<v1::WriteResponse>, Status> {
        crate::identity_api::delete_client(&self.0, req).await
    }
}

#[derive(Debug, Clone)]
pub struct Events(pub Arc<Ctx>);

/// Records read per archive scan while streaming.
const FEED_PAGE: usize = 256;
const FEED_PAGE_BYTES: usize = 4 << 20;

pub fn record_to_wire(
    seq: u64,
    prev: &[u8; 32],
    hash: &[u8; 32],
    bytes: Vec<u8>,
) -> Result<v1::AuditRecord, String> {
    if let Some(remnant) = authsec_domain::record::ElidedRecord::from_bytes(&bytes) {
        return Ok(crate::audit::elided_to_wire(seq, &remnant, prev, hash));
    }
    let r = AuditRecord::from_bytes(&bytes)
        .map_err(|e| format!("record {seq} does not decode: {e}"))?;
    crate::audit::to_wire(r, prev, hash, bytes)
}

#[tonic::async_trait]
impl EventService for Events {
    type FeedStream = Pin<Box<dyn Stream<Item = Result<v1::AuditRecord, Status>> + Send + 'static>>;

    async fn feed(
        &self,
        req: Request<v1::FeedRequest>,
    ) -> Result<Response<Self::FeedStream>, Status> {
        let r = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let reader = self.0.reader.clone();
        let mut head_rx = self.0.head_rx.clone();
        tokio::spawn(async move {
            // From 0: the archive's first record (after what retention pruned, if anything).
            let pruned = match reader.pruned() {
                Ok(p) => p.through_sequence,
                Err(e) => {
                    let _ = tx.send(Err(internal(e))).await;
                    return;
                }
            };
            if r.from_sequence != 0 && r.from_sequence <= pruned {
                let _ = tx
                    .send(Err(Status::invalid_argument(format!(
                        "from_sequence: records 1 to {pruned} were pruned by retention; the archive starts at {}",
                        pruned + 1
                    ))))
                    .await;
                return;
            }
            let mut next = r.from_sequence.max(pruned + 1);
            let mut prev = {
                let rd = reader.clone();
                match crate::audit::blocking(move || crate::audit::chain_hash(&rd, next - 1)).await
                {
                    Ok(h) => h,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            };
            loop {
                let rd = reader.clone();
                let page = match crate::audit::blocking(move || {
                    rd.records(next, FEED_PAGE, FEED_PAGE_BYTES)
                })
                .await
                {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                if page.is_empty() {
                    if !r.follow {
                        return;
                    }
                    if head_rx.borrow_and_update().sequence >= next {
                        // The head is past `next` yet nothing was read: a snapshot installation
                        // is replacing the archive. Give it a moment instead of spinning.
                        tokio::select! {
                            _ = head_rx.changed() => {},
                            _ = tx.closed() => return,
                            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                        }
                        continue;
                    }
                    // Wait for the head to pass `next`, or the client to go away.
                    loop {
                        if head_rx.borrow_and_update().sequence >= next {
                            break;
                        }
                        tokio::select! {
                            changed = head_rx.changed() => if changed.is_err() { return },
                            _ = tx.closed() => return,
                            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                        }
                    }
                    continue;
                }
                for rec in page {
                    next = rec.sequence + 1;
                    let item =
                        record_to_wire(rec.sequence, &prev, &rec.hash, rec.bytes).map_err(internal);
                    prev = rec.hash;
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

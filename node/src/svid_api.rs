//! `SvidService`: X.509-SVIDs and JWT-SVIDs, minted by the answering node from its own
//! projections and keys (see [`crate::issuer`]). Nothing here writes to the log.
//!
//! Checks, in order: the node is within its freshness bound (UNAVAILABLE), the entry exists
//! (NOT_FOUND), the caller is the entry's parent agent or an admin holding
//! `authsec.admin:svids.write` (PERMISSION_DENIED), the request is well formed
//! (INVALID_ARGUMENT).

use std::sync::Arc;
use std::time::Duration;

use authsec_api::v1::{self, svid_service_server::SvidService};
use authsec_api::ApiError;
use authsec_domain::codec::{self, Tag};
use authsec_domain::identity::Entry;
use authsec_storage::cf;
use tonic::{Request, Response, Status};

use crate::issuer::SvidIssuer;
use crate::services::Ctx;

#[derive(Debug, Clone)]
pub struct Svids {
    pub ctx: Arc<Ctx>,
    pub issuer: Arc<SvidIssuer>,
    /// Every SVID is in this node's synced outbox before it is returned.
    pub recorder: crate::outbox::Recorder,
    /// The in-memory projections (agents' ban status).
    pub view: authsec_storage::StateView,
}

impl Svids {
    /// The entry, and the log index of the state it was read from: the credential carries
    /// that index, so a revocation "below index R" covers exactly what was decided before it.
    fn entry(&self, id: &str) -> Result<(Entry, u64), Status> {
        let id =
            authsec_api::identity::entry_id(id).map_err(|e| Status::from(ApiError::from(e)))?;
        let (entry, index) = {
            let state = self.view.read();
            match state.entries.get(&id) {
                Some(e) => (e.clone(), state.applied_index),
                None => return Err(Status::not_found(format!("entry {id} does not exist"))),
            }
        };
        // Never a node's or an admin's credential, whatever the entry says (the rules refuse
        // such entries; this holds for any written before they did).
        if authsec_domain::identity::is_reserved(&entry.spiffe_id) {
            return Err(Status::permission_denied(format!(
                "{} is in the reserved namespace of authsec's nodes and admins",
                entry.spiffe_id
            )));
        }
        Ok((entry, index))
    }

    /// The entry's parent agent, or an admin allowed to mint for any entry.
    fn authorize<T>(&self, req: &Request<T>, entry: &Entry) -> Result<(), Status> {
        let Some(tls) = &self.ctx.sec.tls else {
            return Ok(()); // --insecure: anyone who reaches the port controls the cluster
        };
        let Some(caller) = crate::authz::caller(req) else {
            return Err(Status::unauthenticated(
                "minting an SVID needs a client certificate of the trust domain",
            ));
        };
        if entry.parent_id.as_ref() == Some(&caller) {
            let td = tls.trust_domain();
            if authsec_domain::identity::agent_name_of(td, &caller).is_some() {
                // An authsec agent mints only while it is attested and not banned.
                let st = self.view.read();
                match st.agents.get(&caller) {
                    Some(a) if !a.banned => {}
                    Some(_) => {
                        return Err(Status::permission_denied(format!(
                            "agent {caller} is banned"
                        )))
                    }
                    None => {
                        return Err(Status::permission_denied(format!(
                            "agent {caller} is not attested (or was deleted)"
                        )))
                    }
                }
            }
            return Ok(());
        }
        let td = tls.trust_domain();
        if crate::pki::admin_name_of(td, &caller).is_some() {
            return crate::authz::AdminPolicy {
                reader: self.ctx.reader.clone(),
            }
            .check(td, &caller, "svids.write");
        }
        Err(Status::permission_denied(format!(
            "{caller} may not mint SVIDs for entry {} ({}): only its parent ({}) or an admin with authsec.admin:svids.write may",
            entry.entry_id,
            entry.spiffe_id,
            entry
                .parent_id
                .as_ref()
                .map_or("none yet".to_owned(), |p| p.to_string())
        )))
    }

    /// The X.509 authorities of every trust domain the entry federates with, as recorded.
    fn federated(
        &self,
        entry: &Entry,
    ) -> Result<std::collections::HashMap<String, v1::BundleDer>, Status> {
        let mut out = std::collections::HashMap::new();
        for td in &entry.federates_with {
            let f = crate::federation::get(&self.ctx.reader, td).map_err(|e| {
                tracing::error!(error = %e, "reading a federation failed");
                Status::internal("storage read failed; see the node's log")
            })?;
            if let Some(b) = f.and_then(|f| f.bundle) {
                out.insert(
                    format!("spiffe://{td}"),
                    v1::BundleDer {
                        der: b.x509_authorities,
                    },
                );
            }
        }
        Ok(out)
    }

    /// No audit, no credential: record the issuance (synced) before answering.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn record(
        &self,
        req_caller: Option<String>,
        entry: &Entry,
        kind: authsec_domain::issuance::CredentialKind,
        id: String,
        audience: Vec<String>,
        expires_at_ms: u64,
        applied_index: u64,
    ) -> Result<(), Status> {
        let rec = authsec_domain::issuance::Issuance {
            seq: 0,
            kind,
            id,
            subject: entry.spiffe_id.to_string(),
            client_id: req_caller.unwrap_or_else(|| "anonymous".into()),
            method: "svid_api".into(),
            audience,
            scopes: Vec::new(),
            delegation: None,
            actor: None,
            issued_at_ms: crate::issuer::now_ms(),
            expires_at_ms,
            applied_index,
        };
        self.recorder.record(rec).await.map_err(|e| {
            tracing::error!(error = %e, "an SVID was not issued: its audit record could not be written");
            Status::unavailable("this node cannot record issuances now; ask another node")
        })?;
        Ok(())
    }

    /// What every mint checks first: the freshness bound, the entry, the caller. Answers the
    /// entry and this node's applied index, which the credential will carry.
    fn admit<T>(&self, req: &Request<T>, entry_id: &str) -> Result<(Entry, u64), Status> {
        self.issuer.check_fresh()?;
        let (entry, index) = self.entry(entry_id)?;
        self.authorize(req, &entry)?;
        Ok((entry, index))
    }
}

/// This node's applied log index.
pub fn applied_index(ctx: &Ctx) -> u64 {
    ctx.writer
        .raft()
        .metrics()
        .borrow()
        .last_applied
        .map_or(0, |l| l.index)
}

/// The revocation set as this node's projections hold it (expired single credentials left
/// out: nothing can present them any more).
fn revocations(
    ctx: &Ctx,
    view: &authsec_storage::StateView,
) -> Result<v1::RevocationSet, authsec_storage::StoreError> {
    use authsec_domain::identity::{RevokedSubject, RevokedToken};
    use authsec_domain::persist::{REVOKED_SUBJECT_PREFIX, REVOKED_TOKEN_PREFIX};
    let applied_index = applied_index(ctx);
    let now = crate::issuer::now_ms();
    let (credentials, _) = ctx.reader.scan(
        cf::PROJ_REVOCATIONS,
        REVOKED_TOKEN_PREFIX,
        None,
        usize::MAX,
        usize::MAX,
        |k, v| {
            let t: RevokedToken = codec::decode(Tag::REVOKED_TOKEN, v)
                .map_err(|e| authsec_storage::StoreError::damaged(cf::PROJ_REVOCATIONS, k, e))?;
            Ok((t.expires_at_ms > now).then_some(v1::RevokedCredential {
                id: t.jti,
                expires_at_ms: t.expires_at_ms,
                revoked_at_index: t.revoked_at_index,
            }))
        },
    )?;
    let (subjects, _) = ctx.reader.scan(
        cf::PROJ_REVOCATIONS,
        REVOKED_SUBJECT_PREFIX,
        None,
        usize::MAX,
        usize::MAX,
        |k, v| {
            let s: RevokedSubject = codec::decode(Tag::REVOKED_SUBJECT, v)
                .map_err(|e| authsec_storage::StoreError::damaged(cf::PROJ_REVOCATIONS, k, e))?;
            Ok(Some(v1::RevokedSubjectSet {
                subject: s.subject,
                below_index: s.below_index,
            }))
        },
    )?;
    // Revoked delegations not yet expired (a token under one never outlives it): every token
    // issued under one carries `authsec_delegation`, and was issued below its revocation.
    let mut subjects = subjects;
    {
        let st = view.read();
        subjects.extend(st.delegations.values().filter_map(|d| {
            let at = d.revoked_at_index?;
            (d.expires_at_ms > now).then(|| v1::RevokedSubjectSet {
                subject: format!("delegation:{}", d.delegation_id),
                below_index: at,
            })
        }));
    }
    Ok(v1::RevocationSet {
        applied_index,
        credentials,
        subjects,
        ..Default::default()
    })
}

/// How often the revocation stream sends a heartbeat to a subscriber that asks for them.
const HEARTBEAT_DEFAULT: Duration = Duration::from_millis(200);

type RevocationStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<v1::RevocationSet, Status>> + Send>>;

#[tonic::async_trait]
impl SvidService for Svids {
    type WatchRevocationsStream = RevocationStream;

    async fn watch_revocations(
        &self,
        req: Request<v1::WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        let r = req.into_inner();
        let beat = match (r.heartbeats, r.heartbeat_ms) {
            (false, _) => None,
            (true, 0) => Some(HEARTBEAT_DEFAULT),
            (true, ms @ 50..=10_000) => Some(Duration::from_millis(u64::from(ms))),
            (true, ms) => {
                return Err(Status::invalid_argument(format!(
                    "heartbeat_ms {ms}: must be 0 (the default, 200 ms) or 50 to 10000"
                )))
            }
        };
        let (ctx, view, issuer) = (self.ctx.clone(), self.view.clone(), self.issuer.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut changes = ctx.head_rx.clone();
            let mut last: Option<(Vec<v1::RevokedCredential>, Vec<v1::RevokedSubjectSet>)> = None;
            // The applied index read before the last scan: while it holds, so does the set.
            let mut scanned_at: Option<u64> = None;
            let mut next_beat = beat.map(|b| tokio::time::Instant::now() + b);
            loop {
                // The view's age first, then the applied index, then the set: the age then
                // describes a view no newer than the set sent, so a subscriber that trusts it
                // never misses a revocation the age claims is in.
                let age = issuer.view_age();
                let view_age_ms = age.map(|a| a.as_millis() as u64);
                let applied = applied_index(&ctx);
                let mut sent = false;
                if scanned_at != Some(applied) {
                    let mut set = match revocations(&ctx, &view) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::error!(error = %e, "reading revocations failed");
                            let _ = tx
                                .send(Err(Status::internal(
                                    "storage read failed; see the node's log",
                                )))
                                .await;
                            return;
                        }
                    };
                    scanned_at = Some(applied);
                    let content = (set.credentials.clone(), set.subjects.clone());
                    if last.as_ref() != Some(&content) {
                        set.view_age_ms = view_age_ms;
                        if tx.send(Ok(set)).await.is_err() {
                            return; // the subscriber left
                        }
                        last = Some(content);
                        sent = true;
                    }
                }
                if let (Some(b), Some(at)) = (beat, next_beat.as_mut()) {
                    let now = tokio::time::Instant::now();
                    if sent {
                        *at = now + b;
                    } else if now >= *at {
                        let hb = v1::RevocationSet {
                            applied_index: applied,
                            view_age_ms,
                            heartbeat: true,
                            ..Default::default()
                        };
                        if tx.send(Ok(hb)).await.is_err() {
                            return;
                        }
                        *at = now + b;
                    }
                }
                // Wake on the next applied record (at most ten times a second) or the next
                // heartbeat; notice a subscriber that left even when nothing changes.
                let beat_due = async {
                    match next_beat {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = changes.changed() => {
                        if r.is_err() { return }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    _ = beat_due => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn mint_x509_svid(
        &self,
        req: Request<v1::MintX509SvidRequest>,
    ) -> Result<Response<v1::MintX509SvidResponse>, Status> {
        let (entry, issued_at_index) = self.admit(&req, &req.get_ref().entry_id)?;
        let caller = crate::authz::caller(&req).map(|c| c.to_string());
        let r = req.into_inner();
        let svid = self
            .issuer
            .mint_x509(&entry, &r.csr_der, r.ttl_seconds, issued_at_index)?;
        self.record(
            caller,
            &entry,
            authsec_domain::issuance::CredentialKind::X509Svid,
            hex::encode(svid.serial),
            Vec::new(),
            svid.not_after.as_millis() as u64,
            issued_at_index,
        )
        .await?;
        let bundle = self.ctx.reader.bundle_roots().map_err(|e| {
            tracing::error!(error = %e, "reading the trust bundle failed");
            Status::internal("storage read failed; see the node's log")
        })?;
        tracing::debug!(
            node_id = self.issuer.node_id,
            entry_id = %entry.entry_id,
            spiffe_id = %entry.spiffe_id,
            serial = %hex::encode(svid.serial),
            "minted an X.509-SVID"
        );
        Ok(Response::new(v1::MintX509SvidResponse {
            spiffe_id: entry.spiffe_id.to_string(),
            cert_chain_der: svid.chain,
            bundle_der: bundle,
            expires_at_unix: svid.not_after.as_secs() as i64,
            serial_hex: hex::encode(svid.serial),
            issuer_node_id: self.issuer.node_id,
            issued_at_index,
            federated_bundles: self.federated(&entry)?,
        }))
    }

    async fn mint_jwt_svid(
        &self,
        req: Request<v1::MintJwtSvidRequest>,
    ) -> Result<Response<v1::MintJwtSvidResponse>, Status> {
        let (entry, issued_at_index) = self.admit(&req, &req.get_ref().entry_id)?;
        let caller = crate::authz::caller(&req).map(|c| c.to_string());
        let r = req.into_inner();
        let svid = self
            .issuer
            .mint_jwt(&entry, &r.audience, r.ttl_seconds, issued_at_index)?;
        self.record(
            caller,
            &entry,
            authsec_domain::issuance::CredentialKind::JwtSvid,
            svid.jti.clone(),
            r.audience.clone(),
            svid.expires_at.as_millis() as u64,
            issued_at_index,
        )
        .await?;
        Ok(Response::new(v1::MintJwtSvidResponse {
            spiffe_id: entry.spiffe_id.to_string(),
            token: svid.token,
            expires_at_unix: svid.expires_at.as_secs() as i64,
            kid: svid.kid,
            issuer_node_id: self.issuer.node_id,
            issued_at_index,
            jti: svid.jti,
        }))
    }

    async fn issuer_status(
        &self,
        _req: Request<v1::IssuerStatusRequest>,
    ) -> Result<Response<v1::IssuerStatusResponse>, Status> {
        let ca = self.issuer.active_ca();
        let jwt = self.issuer.active_jwt();
        let reason = self.issuer.readiness().err().unwrap_or_default();
        let m = self.ctx.writer.raft().metrics().borrow().clone();
        Ok(Response::new(v1::IssuerStatusResponse {
            node_id: self.issuer.node_id,
            issuing: reason.is_empty(),
            reason,
            freshness_ms: self
                .issuer
                .freshness
                .age()
                .map(|(a, _)| a.as_millis() as u64),
            max_staleness_ms: self.issuer.max_staleness.as_millis() as u64,
            x509_kid: ca.map(|c| c.kid.clone()).unwrap_or_default(),
            jwt_kid: jwt.map(|k| k.kid.clone()).unwrap_or_default(),
            raft_role: format!("{:?}", m.state).to_lowercase(),
        }))
    }
}

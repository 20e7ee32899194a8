//! `authsec.v1.NodeService`: a new node joins with a single-use token, is admitted as a
//! learner and promoted, and every node renews its certificate through it.
//!
//! The order of `Join` is chosen so that bad input never burns a token: the request is
//! bounded and parsed, the CSR's signature checked and this node's ability to sign confirmed
//! first; only then is the token spent through the log (once, cluster-wide, before expiry),
//! and only a spent token gets a certificate.

use std::sync::Arc;

use authsec_api::v1::{self, node_service_server::NodeService};
use authsec_domain::command::Command;
use authsec_domain::{Actor, Principal};
use authsec_raft::tls::node_id_of;
use tonic::{Request, Response, Status};

use crate::pki::{self, JoinToken, Sans};
use crate::security::SignerError;
use crate::services::Ctx;

#[derive(Debug, Clone)]
pub struct Nodes(pub Arc<Ctx>);

/// Everything about a join request that can be checked without the cluster: the token's
/// shape, the node id, the names, the CSR's signature. Pure, bounded, and fuzzed
/// (`fuzz::fuzz_join_request`).
pub fn check_join_request(r: &v1::JoinRequest) -> Result<(JoinToken, Sans), Status> {
    let token = JoinToken::parse(&r.token)
        .map_err(|e| Status::unauthenticated(format!("join token: {e}")))?;
    if r.node_id == 0 {
        return Err(Status::invalid_argument(
            "invalid request: node_id must be 1 or more",
        ));
    }
    let sans = Sans::parse(&r.dns_names, &r.ip_addrs)
        .map_err(|e| Status::invalid_argument(format!("invalid request: {e}")))?;
    pki::csr_public_key(&r.csr_der)
        .map_err(|e| Status::invalid_argument(format!("invalid request: {e}")))?;
    Ok((token, sans))
}

pub fn signer_status(e: SignerError) -> Status {
    match e {
        SignerError::NoKek(..) | SignerError::NoRoot | SignerError::Offline => {
            Status::failed_precondition(e.to_string())
        }
        SignerError::Pki(pki::PkiError::Invalid(m)) => {
            Status::invalid_argument(format!("invalid request: {m}"))
        }
        other => {
            tracing::error!(error = %other, "signing failed");
            Status::internal("signing failed; see the node's log")
        }
    }
}

impl Nodes {
    /// Whether `node_id` is a voter or learner in this node's membership view.
    fn is_member(&self, node_id: u64) -> bool {
        self.0
            .writer
            .raft()
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&node_id)
            .is_some()
    }

    /// The calling node's id, from its verified certificate.
    fn caller_node<T>(&self, req: &Request<T>) -> Result<u64, Status> {
        crate::authz::caller(req)
            .and_then(|id| node_id_of(&self.0.sec.td, &id))
            .ok_or_else(|| {
                Status::unauthenticated("this call needs a node certificate of the trust domain")
            })
    }
}

#[tonic::async_trait]
impl NodeService for Nodes {
    async fn join(
        &self,
        req: Request<v1::JoinRequest>,
    ) -> Result<Response<v1::JoinResponse>, Status> {
        let source = crate::audit::source_of(&req);
        let r = req.into_inner();
        let (token, sans) = check_join_request(&r)?;
        // Can this node sign at all? Ask before spending the token.
        self.0.sec.signer(&self.0.reader).map_err(signer_status)?;
        let actor = Actor {
            principal: Principal::Named(format!("join-token:{}", token.id)),
            via_node: self.0.node_id,
        };
        let consumed = self
            .0
            .write(
                actor,
                Command::ConsumeJoinToken {
                    token_id: token.id.clone(),
                    secret_hash: token.secret_hash(),
                    node_id: r.node_id,
                },
            )
            .await;
        if let Err(s) = consumed {
            // A wrong, spent or expired token: a failed authentication, counted.
            if let (tonic::Code::Unauthenticated, Some(ip)) = (s.code(), source) {
                self.0
                    .auth_failures
                    .record(Some(&token.id), ip, "node_join", s.message());
            }
            return Err(s);
        }
        let (cert_chain_der, bundle_der) = self
            .0
            .sec
            .sign_for(&self.0.reader, r.node_id, &r.csr_der, &sans)
            .map_err(signer_status)?;
        // The client-secret key goes with the certificate, so the new node can hash and verify
        // client secrets without holding the KEK.
        let client_secret_key = match crate::secrets::SecretKey::raw(
            &self.0.reader,
            self.0.sec.kek_path(),
            &self.0.sec.td,
        ) {
            Ok(k) => k.0.clone(),
            Err(crate::secrets::SecretKeyError::NotInstalled) => Vec::new(),
            Err(e) => {
                tracing::error!(error = %e, "the client-secret key could not be unsealed");
                return Err(Status::internal(
                    "the client-secret key could not be unsealed; see the node's log",
                ));
            }
        };
        tracing::info!(node_id = r.node_id, token_id = %token.id, "join token spent; node certificate issued");
        let m = self.0.writer.raft().metrics().borrow().clone();
        let members = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| v1::Member {
                node_id: *id,
                addr: n.addr.clone(),
                role: String::new(),
            })
            .collect();
        Ok(Response::new(v1::JoinResponse {
            cert_chain_der,
            bundle_der,
            trust_domain: self.0.sec.td.to_string(),
            members,
            client_secret_key,
        }))
    }

    async fn admit(
        &self,
        req: Request<v1::AdmitRequest>,
    ) -> Result<Response<v1::MembershipResponse>, Status> {
        let node_id = self.caller_node(&req)?;
        let actor = self.0.actor(&req);
        let r = req.into_inner();
        let already = self.is_member(node_id);
        let pending = self
            .0
            .reader
            .security()
            .map_err(|e| Status::internal(format!("read the security state: {e}")))?
            .pending_admission
            .contains(&node_id);
        // A retry of an admission that went through is answered; anything else needs a spent
        // join token for this node id.
        if !pending && !already {
            return Err(Status::permission_denied(format!(
                "node {node_id} has no pending admission: spend a join token for it first (`authsec node join`)"
            )));
        }
        Ok(Response::new(
            self.0
                .add_member(actor, node_id, r.addr, r.learner_only)
                .await?,
        ))
    }

    async fn sign_node_ca(
        &self,
        req: Request<v1::SignNodeCaRequest>,
    ) -> Result<Response<v1::SignNodeCaResponse>, Status> {
        let node_id = self.caller_node(&req)?;
        if !self.is_member(node_id) {
            return Err(Status::permission_denied(format!(
                "node {node_id} is not a member; it gets no intermediate CA"
            )));
        }
        let r = req.into_inner();
        let ttl = std::time::Duration::from_secs(r.ttl_seconds);
        if !(crate::issuer::CA_TTL_MIN..=crate::issuer::CA_TTL_MAX).contains(&ttl) {
            return Err(Status::invalid_argument(format!(
                "ttl_seconds must be {} to {}",
                crate::issuer::CA_TTL_MIN.as_secs(),
                crate::issuer::CA_TTL_MAX.as_secs()
            )));
        }
        let pk = pki::csr_public_key(&r.csr_der)
            .map_err(|e| Status::invalid_argument(format!("invalid request: {e}")))?;
        let (cert_der, root_der) = self
            .0
            .sec
            .sign_node_ca(&self.0.reader, node_id, &pk, ttl)
            .map_err(signer_status)?;
        tracing::info!(node_id, "signed a peer's intermediate CA");
        Ok(Response::new(v1::SignNodeCaResponse { cert_der, root_der }))
    }

    async fn peer_status(
        &self,
        req: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        self.caller_node(&req)?;
        Ok(Response::new(self.0.status().await?))
    }

    async fn renew(
        &self,
        req: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::RenewResponse>, Status> {
        let node_id = self.caller_node(&req)?;
        // Only members renew: a removed node's certificate runs out instead of living on.
        if !self.is_member(node_id) {
            return Err(Status::permission_denied(format!(
                "node {node_id} is not a member; its certificate is not renewed"
            )));
        }
        let r = req.into_inner();
        let sans = Sans::parse(&r.dns_names, &r.ip_addrs)
            .map_err(|e| Status::invalid_argument(format!("invalid request: {e}")))?;
        let (cert_chain_der, bundle_der) = self
            .0
            .sec
            .sign_for(&self.0.reader, node_id, &r.csr_der, &sans)
            .map_err(signer_status)?;
        tracing::info!(node_id, "renewed a peer's certificate");
        Ok(Response::new(v1::RenewResponse {
            cert_chain_der,
            bundle_der,
        }))
    }
}

//! Events: what happened, in the past tense. Events are the archived truth; projections are
//! derived from them. Events hold no secrets (secret material has its own column family).

use serde::{Deserialize, Serialize};

use crate::command::ClientPatch;
use crate::ids::{ClientId, TrustDomain};
use crate::state::Client;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    TrustDomainConfigured {
        trust_domain: TrustDomain,
    },
    NodeMemberRecorded {
        node_id: u64,
        addr: String,
    },
    NodeMemberRemoved {
        node_id: u64,
    },
    ClientRegistered {
        client: Client,
    },
    ClientUpdated {
        client_id: ClientId,
        patch: ClientPatch,
        revision: u64,
    },
    ClientRemoved {
        client_id: ClientId,
    },
    /// The root CA certificate (public); its sealed key is not part of the event.
    RootInstalled {
        /// `sha256:<hex>` of the certificate's DER, what `authsec node join` pins.
        fingerprint: String,
        cert_der: Vec<u8>,
    },
    JoinTokenCreated {
        token_id: String,
        /// SHA-256 of a 256-bit random secret: useless to whoever reads it.
        secret_hash: [u8; 32],
        expires_at_ms: u64,
    },
    JoinTokenConsumed {
        token_id: String,
        node_id: u64,
    },
    NodeRevoked {
        node_id: u64,
    },
    AdminIssued {
        name: String,
        fingerprint: String,
    },
    CertificateRevoked {
        fingerprint: String,
    },
}

impl Event {
    /// The record type, `<entity>.<what happened>`, used for filtering exports.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::TrustDomainConfigured { .. } => "trust_domain.configured",
            Event::NodeMemberRecorded { .. } => "node.member_recorded",
            Event::NodeMemberRemoved { .. } => "node.member_removed",
            Event::ClientRegistered { .. } => "client.registered",
            Event::ClientUpdated { .. } => "client.updated",
            Event::ClientRemoved { .. } => "client.removed",
            Event::RootInstalled { .. } => "ca.root_installed",
            Event::JoinTokenCreated { .. } => "join_token.created",
            Event::JoinTokenConsumed { .. } => "join_token.consumed",
            Event::NodeRevoked { .. } => "node.revoked",
            Event::AdminIssued { .. } => "admin.issued",
            Event::CertificateRevoked { .. } => "certificate.revoked",
        }
    }

    /// What the event is about, `<entity>:<id>`.
    pub fn subject(&self) -> String {
        match self {
            Event::TrustDomainConfigured { trust_domain } => format!("trust_domain:{trust_domain}"),
            Event::NodeMemberRecorded { node_id, .. } | Event::NodeMemberRemoved { node_id } => {
                format!("node:{node_id}")
            }
            Event::ClientRegistered { client } => format!("client:{}", client.client_id),
            Event::ClientUpdated { client_id, .. } | Event::ClientRemoved { client_id } => {
                format!("client:{client_id}")
            }
            Event::RootInstalled { fingerprint, .. } => format!("ca:{fingerprint}"),
            Event::JoinTokenCreated { token_id, .. }
            | Event::JoinTokenConsumed { token_id, .. } => {
                format!("join_token:{token_id}")
            }
            Event::NodeRevoked { node_id } => format!("node:{node_id}"),
            Event::AdminIssued { name, .. } => format!("admin:{name}"),
            Event::CertificateRevoked { fingerprint } => format!("certificate:{fingerprint}"),
        }
    }
}

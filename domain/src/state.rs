//! Projections: the state every node derives from the log.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::{ClientId, Scope, TrustDomain};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ClientKind {
    Service,
    AiAgent,
    Ci,
    Device,
}

impl ClientKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientKind::Service => "service",
            ClientKind::AiAgent => "ai_agent",
            ClientKind::Ci => "ci",
            ClientKind::Device => "device",
        }
    }

    /// Accepts the wire names (`ai_agent`) and the CLI spelling (`ai-agent`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "service" => Some(ClientKind::Service),
            "ai_agent" | "ai-agent" => Some(ClientKind::AiAgent),
            "ci" => Some(ClientKind::Ci),
            "device" => Some(ClientKind::Device),
            _ => None,
        }
    }
}

/// An OAuth client as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    pub client_id: ClientId,
    pub kind: ClientKind,
    pub display_name: String,
    pub description: String,
    pub owner: String,
    /// Caps every token the client gets.
    pub allowed_scopes: BTreeSet<Scope>,
    pub default_scopes: BTreeSet<Scope>,
    pub default_audience: String,
    pub enabled: bool,
    /// Starts at 1, increases by one on every update.
    pub revision: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: u64,
    pub addr: String,
    pub recorded_at_ms: u64,
}

/// An unspent join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub secret_hash: [u8; 32],
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
}

/// Cluster-wide settings and the replicated clock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMeta {
    pub trust_domain: Option<TrustDomain>,
    /// The largest stamp time applied so far: audit time never runs backwards, even when a new
    /// leader's clock is behind the old one's.
    pub clock_ms: u64,
}

/// The cluster's own trust: its root, unspent join tokens, revoked nodes. Stored apart from
/// [`StateMeta`] (whose v1 bytes are pinned by the golden tests).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityState {
    /// The root CA certificate (DER): the trust bundle of the cluster's own components.
    pub root_cert: Option<Vec<u8>>,
    /// Unspent join tokens by id; expired ones are dropped when the next token is created.
    pub join_tokens: BTreeMap<String, JoinToken>,
    /// Nodes whose certificates every node refuses.
    pub revoked_nodes: BTreeSet<u64>,
    /// Single certificates every node refuses (`sha256:<hex>`): rotated admin credentials.
    pub revoked_certs: BTreeSet<String>,
    /// Nodes that spent a join token and may ask to be admitted once: a node certificate
    /// alone (say, of a node removed without `--revoke-keys`) does not let its holder rejoin.
    pub pending_admission: BTreeSet<u64>,
}

/// Which stored projection entry an event changes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProjectionKey {
    Meta,
    Security,
    Node(u64),
    Client(ClientId),
}

/// All projections. Ordered maps only, so iteration (and so the digest) is deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub meta: StateMeta,
    pub security: SecurityState,
    pub nodes: BTreeMap<u64, NodeRecord>,
    pub clients: BTreeMap<ClientId, Client>,
}

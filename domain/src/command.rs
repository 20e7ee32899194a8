//! Commands: what a caller asks the cluster to do. A command is proposed inside a [`Proposal`]
//! that the leader stamps with the time and random seed the decision needs.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{ClientId, Scope, TrustDomain};
use crate::state::ClientKind;

/// Who asked. Until mutual TLS arrives every caller is `Anonymous`; the node a write came
/// through is always recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Principal {
    /// No authenticated identity (plaintext development transport).
    Anonymous,
    /// The cluster itself (bootstrap, membership bookkeeping).
    System,
    /// An authenticated SPIFFE ID or admin principal.
    Named(String),
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Anonymous => f.write_str("anonymous"),
            Principal::System => f.write_str("system"),
            Principal::Named(n) => f.write_str(n),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub principal: Principal,
    /// The node the request entered the cluster through.
    pub via_node: u64,
}

/// What the leader decides once for everyone: the time and the randomness of a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Leader wall-clock time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Random bytes from which generated ids are derived.
    pub seed: [u8; 16],
}

/// Changes to a client; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientPatch {
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub owner: Option<String>,
    pub allowed_scopes: Option<BTreeSet<Scope>>,
    pub default_scopes: Option<BTreeSet<Scope>>,
    pub default_audience: Option<String>,
    pub enabled: Option<bool>,
}

impl ClientPatch {
    pub fn is_empty(&self) -> bool {
        *self == ClientPatch::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterClient {
    /// `None`: the leader generates one from the stamp's seed.
    pub client_id: Option<ClientId>,
    pub kind: ClientKind,
    pub display_name: String,
    pub description: String,
    pub owner: String,
    pub allowed_scopes: BTreeSet<Scope>,
    pub default_scopes: BTreeSet<Scope>,
    pub default_audience: String,
}

/// Secret bytes that are already encrypted (sealed under the KEK). They ride in the Raft log
/// and land in the `sealed_secrets` column family, never in an event or the archive, and
/// `Debug` never shows them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sealed(pub Vec<u8>);

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed(<{} bytes redacted>)", self.0.len())
    }
}

/// The key under which the sealed root CA key is kept in `sealed_secrets`.
pub const SEALED_ROOT_KEY: &[u8] = b"root_ca_key";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set the cluster's trust domain. Allowed once.
    ConfigureTrustDomain {
        trust_domain: TrustDomain,
    },
    /// Record that a node is a member, with the address peers reach it at.
    RecordNodeMember {
        node_id: u64,
        addr: String,
    },
    /// Record that a node left the membership.
    RecordNodeRemoved {
        node_id: u64,
    },
    RegisterClient(RegisterClient),
    /// Update a client. With `expected_revision`, the update applies only at that revision.
    UpdateClient {
        client_id: ClientId,
        patch: ClientPatch,
        expected_revision: Option<u64>,
    },
    RemoveClient {
        client_id: ClientId,
    },
    /// Install the trust domain's root CA: its certificate (public) and its key sealed under
    /// the KEK (to `sealed_secrets` only), or no key in offline-root mode. Allowed once; the
    /// same root again is a no-op.
    InstallRoot {
        cert_der: Vec<u8>,
        sealed_key: Option<Sealed>,
    },
    /// A single-use join token. Only the SHA-256 of its secret enters the log.
    CreateJoinToken {
        token_id: String,
        secret_hash: [u8; 32],
        ttl_ms: u64,
    },
    /// Spend a join token for `node_id`: works once, cluster-wide, before the token expires.
    ConsumeJoinToken {
        token_id: String,
        secret_hash: [u8; 32],
        node_id: u64,
    },
    /// A compromised or retired node: its certificates are refused from now on and its id is
    /// never admitted again.
    RevokeNode {
        node_id: u64,
    },
    /// Record an admin certificate the serving node signed (by fingerprint), and with
    /// `revokes`, the certificate it replaces (a rotation): refused from now on.
    RecordAdminIssued {
        name: String,
        fingerprint: String,
        revokes: Option<String>,
    },
}

impl Command {
    /// A stable name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::ConfigureTrustDomain { .. } => "configure_trust_domain",
            Command::RecordNodeMember { .. } => "record_node_member",
            Command::RecordNodeRemoved { .. } => "record_node_removed",
            Command::RegisterClient(_) => "register_client",
            Command::UpdateClient { .. } => "update_client",
            Command::RemoveClient { .. } => "remove_client",
            Command::InstallRoot { .. } => "install_root",
            Command::CreateJoinToken { .. } => "create_join_token",
            Command::ConsumeJoinToken { .. } => "consume_join_token",
            Command::RevokeNode { .. } => "revoke_node",
            Command::RecordAdminIssued { .. } => "record_admin_issued",
        }
    }

    /// Sealed material an accepted command stores in `sealed_secrets` (key, sealed bytes).
    pub fn sealed_material(&self) -> Option<(&'static [u8], &[u8])> {
        match self {
            Command::InstallRoot {
                sealed_key: Some(k),
                ..
            } => Some((SEALED_ROOT_KEY, &k.0)),
            _ => None,
        }
    }
}

/// A command with its actor and the leader's stamp: the unit the state machine decides on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub stamp: Stamp,
    pub actor: Actor,
    pub command: Command,
}

/// The application data of one Raft log entry: many proposals share one entry and one fsync.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub proposals: Vec<Proposal>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_material_never_shows_in_debug() {
        let secret = b"root key bytes".to_vec();
        let c = Command::InstallRoot {
            cert_der: vec![0x30],
            sealed_key: Some(Sealed(secret.clone())),
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains(&format!("{secret:?}")), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
        assert_eq!(c.sealed_material(), Some((SEALED_ROOT_KEY, &secret[..])));
    }
}

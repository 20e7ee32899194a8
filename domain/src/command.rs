//! Commands: what a caller asks the cluster to do. A command is proposed inside a [`Proposal`]
//! that the leader stamps with the time and random seed the decision needs.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::identity::{Delegator, PublicKey, SecretHash, Subject};
use crate::ids::{
    ClientId, DelegationId, EntryId, RoleName, Scope, Selector, SpiffeId, TrustDomain,
};
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

/// A client with its credentials, and for an `ai_agent`, its workload entry, in one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateClient {
    pub client_id: ClientId,
    pub kind: ClientKind,
    pub display_name: String,
    pub description: String,
    pub owner: String,
    pub allowed_scopes: BTreeSet<Scope>,
    pub default_scopes: BTreeSet<Scope>,
    pub default_audience: String,
    /// Keyed hash of the generated secret (the secret itself never enters the log).
    pub secret_hash: Option<SecretHash>,
    pub public_keys: Vec<PublicKey>,
    pub spiffe_id: Option<SpiffeId>,
    /// For `ai_agent` clients: the entry to create, and the SPIFFE ID template
    /// (`{trust_domain}`, `{client_id}`) that names it.
    pub agent_entry: Option<(EntryId, String)>,
}

/// A workload entry to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntrySpec {
    pub entry_id: EntryId,
    pub spiffe_id: SpiffeId,
    pub parent_id: Option<SpiffeId>,
    pub selectors: BTreeSet<Selector>,
    pub x509_ttl_s: u32,
    pub jwt_ttl_s: u32,
    pub dns_names: BTreeSet<String>,
    pub client_id: Option<ClientId>,
    pub federates_with: BTreeSet<TrustDomain>,
}

/// Changes to an entry; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryPatch {
    pub parent_id: Option<Option<SpiffeId>>,
    pub selectors: Option<BTreeSet<Selector>>,
    pub x509_ttl_s: Option<u32>,
    pub jwt_ttl_s: Option<u32>,
    pub dns_names: Option<BTreeSet<String>>,
    pub federates_with: Option<BTreeSet<TrustDomain>>,
}

/// A change to how a client authenticates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CredentialChange {
    /// A new secret; the old one keeps working for `overlap_ms` (0: stops at once).
    RotateSecret {
        secret_hash: SecretHash,
        overlap_ms: u64,
    },
    SetPublicKeys(Vec<PublicKey>),
    SetSpiffeId(Option<SpiffeId>),
}

/// A delegation to grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegationSpec {
    pub delegation_id: DelegationId,
    pub delegator: Delegator,
    pub delegate: ClientId,
    pub permissions: BTreeSet<Scope>,
    pub max_token_ttl_s: u32,
    pub max_depth: u8,
    /// Lifetime from the commit time.
    pub ttl_ms: u64,
    /// Re-delegation: the delegation the delegator (its delegate) holds.
    pub parent: Option<DelegationId>,
}

/// What a revocation covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevocationTarget {
    /// One token by `jti`, remembered until it would have expired.
    Token { jti: String, expires_at_ms: u64 },
    /// Every credential of a subject (`client:<id>` or a SPIFFE ID) issued below this index.
    Subject(Subject),
    /// A delegation and everything derived from it.
    Delegation(DelegationId),
    /// A client: disabled, and every credential it holds revoked.
    Client(ClientId),
    /// An agent: banned, and every credential it holds revoked.
    Agent(SpiffeId),
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
    // Identity, roles and delegation. New variants go last: earlier ones keep their encoding.
    CreateClient(CreateClient),
    /// Change how a client authenticates (bumps its revision).
    ChangeClientCredentials {
        client_id: ClientId,
        change: CredentialChange,
        expected_revision: Option<u64>,
    },
    /// Remove a client at an expected revision (with its bindings, entries and delegations).
    DeleteClient {
        client_id: ClientId,
        expected_revision: Option<u64>,
    },
    CreateEntry(EntrySpec),
    UpdateEntry {
        entry_id: EntryId,
        patch: EntryPatch,
        expected_revision: Option<u64>,
    },
    DeleteEntry {
        entry_id: EntryId,
        expected_revision: Option<u64>,
    },
    CreateRole {
        name: RoleName,
        description: String,
        permissions: BTreeSet<Scope>,
    },
    UpdateRole {
        name: RoleName,
        description: Option<String>,
        permissions: Option<BTreeSet<Scope>>,
        expected_revision: Option<u64>,
    },
    DeleteRole {
        name: RoleName,
        expected_revision: Option<u64>,
    },
    Bind {
        role: RoleName,
        subject: Subject,
    },
    Unbind {
        role: RoleName,
        subject: Subject,
    },
    CreateDelegation(DelegationSpec),
    Revoke(RevocationTarget),
    /// A single-use agent join token; only the SHA-256 of its secret enters the log.
    CreateAgentToken {
        token_id: String,
        secret_hash: [u8; 32],
        ttl_ms: u64,
    },
    /// An agent attests with a join token: works once, before the token expires.
    AttestAgent {
        token_id: String,
        secret_hash: [u8; 32],
        agent_id: SpiffeId,
    },
    /// An agent's heartbeat.
    RecordAgentSeen {
        agent_id: SpiffeId,
    },
    SetAgentBanned {
        agent_id: SpiffeId,
        banned: bool,
    },
    DeleteAgent {
        agent_id: SpiffeId,
    },
    /// The cluster's client-secret HMAC key, sealed under the KEK. Allowed once.
    InstallClientSecretKey {
        sealed_key: Sealed,
    },
    // Node signing keys (issue 6). New variants go last.
    /// Publish a node's public key material (state and times are set by the rules).
    PublishNodeKey {
        key: crate::keys::NodeKey,
    },
    ActivateNodeKey {
        kid: String,
    },
    RetireNodeKey {
        kid: String,
    },
    // Federation (issue 6). New variants go last.
    /// Register another trust domain whose bundle this cluster consumes.
    CreateFederation {
        federation: crate::federation::Federation,
    },
    DeleteFederation {
        trust_domain: TrustDomain,
    },
    /// A bundle a node fetched from a federated domain's endpoint.
    RecordFederatedBundle {
        trust_domain: TrustDomain,
        bundle: crate::federation::FederatedBundle,
    },
    // SVID root rotation (issue 6). New variants go last.
    /// A new root in the bundle, its key sealed under the KEK (stored apart, never archived).
    PrepareRoot {
        cert_der: Vec<u8>,
        sealed_key: Sealed,
    },
    ActivateRoot {
        fingerprint: String,
    },
    RetireRoot {
        fingerprint: String,
    },
    // The issuance audit (issue 7). New variants go last.
    /// Credentials a node issued, from its outbox (see [`crate::issuance`]).
    RecordIssuances {
        node_id: u64,
        issuances: Vec<crate::issuance::Issuance>,
    },
    /// Forget single-token revocations whose token has expired by the command's time (a
    /// revoked token that expired can be presented nowhere): keeps the revocation list, which
    /// every node holds in memory, bounded by the tokens still alive.
    PruneRevocations,
    // The audit export (issue 9). New variants go last.
    /// A signed checkpoint of the audit chain (see [`crate::audit`]).
    RecordCheckpoint(crate::audit::Checkpoint),
    /// Failed authentications a node saw in one interval, aggregated per client and source.
    RecordAuthFailures {
        node_id: u64,
        failures: Vec<crate::audit::AuthFailure>,
    },
    /// Credentials a node issued, in the compact form (what the outbox proposes since issue 9).
    RecordIssuanceBatch {
        node_id: u64,
        batch: crate::issuance::IssuanceBatch,
    },
    /// Retention: delete the archive's records up to a signed checkpoint (issue 9).
    PruneAudit(crate::audit::Prune),
    /// Retention's shorter bound: replace issuance records by remnants (issue 9).
    ElideIssuances(crate::audit::Elision),
    /// How far a node's audit sinks have delivered: retention's cluster-wide bound.
    RecordSinkProgress {
        node_id: u64,
        sinks: Vec<crate::audit::SinkAck>,
    },
    /// Retention's shorter bound, committed part by part (what nodes propose since
    /// `ElideIssuances`' single digest could be cut by a prune).
    ElideIssuanceParts(crate::audit::SplitElision),
    // Admin credentials, tracked (see [`crate::admins`]). New variants go last.
    /// An admin certificate the serving node signed: its fingerprint, the root that signed it
    /// and its expiry; with `revokes`, the certificate it replaces (a rotation), refused from
    /// now on. Replaces `RecordAdminIssued`, which stays for the log's older entries.
    RecordAdminCertificate {
        name: String,
        fingerprint: String,
        root: String,
        not_after_ms: u64,
        revokes: Option<String>,
    },
}

/// Where a rotated root's sealed key is kept in `sealed_secrets`.
pub fn svid_root_key(fingerprint: &str) -> Vec<u8> {
    format!("svid_root:{fingerprint}").into_bytes()
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
            Command::CreateClient(_) => "create_client",
            Command::ChangeClientCredentials { .. } => "change_client_credentials",
            Command::DeleteClient { .. } => "delete_client",
            Command::CreateEntry(_) => "create_entry",
            Command::UpdateEntry { .. } => "update_entry",
            Command::DeleteEntry { .. } => "delete_entry",
            Command::CreateRole { .. } => "create_role",
            Command::UpdateRole { .. } => "update_role",
            Command::DeleteRole { .. } => "delete_role",
            Command::Bind { .. } => "bind",
            Command::Unbind { .. } => "unbind",
            Command::CreateDelegation(_) => "create_delegation",
            Command::Revoke(_) => "revoke",
            Command::CreateAgentToken { .. } => "create_agent_token",
            Command::AttestAgent { .. } => "attest_agent",
            Command::RecordAgentSeen { .. } => "record_agent_seen",
            Command::SetAgentBanned { .. } => "set_agent_banned",
            Command::DeleteAgent { .. } => "delete_agent",
            Command::InstallClientSecretKey { .. } => "install_client_secret_key",
            Command::PublishNodeKey { .. } => "publish_node_key",
            Command::ActivateNodeKey { .. } => "activate_node_key",
            Command::RetireNodeKey { .. } => "retire_node_key",
            Command::CreateFederation { .. } => "create_federation",
            Command::DeleteFederation { .. } => "delete_federation",
            Command::RecordFederatedBundle { .. } => "record_federated_bundle",
            Command::PrepareRoot { .. } => "prepare_root",
            Command::ActivateRoot { .. } => "activate_root",
            Command::RetireRoot { .. } => "retire_root",
            Command::RecordIssuances { .. } => "record_issuances",
            Command::PruneRevocations => "prune_revocations",
            Command::RecordCheckpoint(_) => "record_checkpoint",
            Command::RecordAuthFailures { .. } => "record_auth_failures",
            Command::RecordIssuanceBatch { .. } => "record_issuance_batch",
            Command::PruneAudit(_) => "prune_audit",
            Command::ElideIssuances(_) => "elide_issuances",
            Command::RecordSinkProgress { .. } => "record_sink_progress",
            Command::ElideIssuanceParts(_) => "elide_issuance_parts",
            Command::RecordAdminCertificate { .. } => "record_admin_certificate",
        }
    }

    /// Sealed material an accepted command stores in `sealed_secrets` (key, sealed bytes).
    pub fn sealed_material(&self) -> Option<(Vec<u8>, &[u8])> {
        match self {
            Command::InstallRoot {
                sealed_key: Some(k),
                ..
            } => Some((SEALED_ROOT_KEY.to_vec(), &k.0)),
            Command::InstallClientSecretKey { sealed_key } => Some((
                crate::identity::SEALED_CLIENT_SECRET_KEY.to_vec(),
                &sealed_key.0,
            )),
            Command::PrepareRoot {
                cert_der,
                sealed_key,
            } => Some((svid_root_key(&crate::fingerprint(cert_der)), &sealed_key.0)),
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
        assert_eq!(
            c.sealed_material(),
            Some((SEALED_ROOT_KEY.to_vec(), &secret[..]))
        );
    }
}

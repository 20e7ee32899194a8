//! Events: what happened, in the past tense. Events are the archived truth; projections are
//! derived from them. Events hold no secrets (secret material has its own column family).

use serde::{Deserialize, Serialize};

use crate::command::ClientPatch;
use crate::identity::{
    Agent, ClientAuth, Delegation, Entry, RevokedSubject, RevokedToken, Role, Subject,
};
use crate::ids::{ClientId, DelegationId, EntryId, RoleName, SpiffeId, TrustDomain};
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
    // Identity, roles and delegation. New variants go last: earlier ones keep their encoding.
    /// A client and how it authenticates (a keyed secret hash at most, never a secret).
    ClientCreated {
        client: Client,
        auth: ClientAuth,
    },
    ClientCredentialsChanged {
        client_id: ClientId,
        auth: ClientAuth,
        revision: u64,
    },
    EntryCreated {
        entry: Entry,
    },
    EntryUpdated {
        entry: Entry,
    },
    EntryDeleted {
        entry_id: EntryId,
        spiffe_id: SpiffeId,
    },
    RoleCreated {
        role: Role,
    },
    RoleUpdated {
        role: Role,
    },
    RoleDeleted {
        name: RoleName,
    },
    RoleBound {
        role: RoleName,
        subject: Subject,
    },
    RoleUnbound {
        role: RoleName,
        subject: Subject,
    },
    DelegationCreated {
        delegation: Delegation,
    },
    /// Revoked itself (`cause` = its own id) or as part of revoking `cause`, an ancestor.
    DelegationRevoked {
        delegation_id: DelegationId,
        cause: DelegationId,
        at_index: u64,
    },
    TokenRevoked {
        revoked: RevokedToken,
    },
    SubjectRevoked {
        revoked: RevokedSubject,
    },
    AgentTokenCreated {
        token_id: String,
        secret_hash: [u8; 32],
        expires_at_ms: u64,
    },
    AgentAttested {
        agent: Agent,
    },
    AgentSeen {
        agent_id: SpiffeId,
    },
    AgentBanned {
        agent_id: SpiffeId,
        banned: bool,
    },
    AgentDeleted {
        agent_id: SpiffeId,
    },
    ClientSecretKeyInstalled,
    // Node signing keys (issue 6). New variants go last.
    NodeKeyPublished {
        key: crate::keys::NodeKey,
    },
    NodeKeyActivated {
        kid: String,
    },
    NodeKeySuperseded {
        kid: String,
    },
    NodeKeyRetired {
        kid: String,
    },
    // Federation (issue 6). New variants go last.
    FederationCreated {
        federation: crate::federation::Federation,
    },
    FederationDeleted {
        trust_domain: TrustDomain,
    },
    FederatedBundleUpdated {
        trust_domain: TrustDomain,
        bundle: crate::federation::FederatedBundle,
    },
    // SVID root rotation (issue 6). New variants go last.
    RootPrepared {
        root: crate::roots::SvidRoot,
    },
    RootActivated {
        fingerprint: String,
    },
    RootRetired {
        fingerprint: String,
    },
    // The issuance audit (issue 7). New variants go last.
    /// Credentials a node issued (one record per outbox batch).
    IssuancesRecorded {
        node_id: u64,
        issuances: Vec<crate::issuance::Issuance>,
    },
    /// Single-token revocations forgotten because their tokens expired.
    RevocationsPruned {
        jtis: Vec<String>,
    },
    // The audit export (issue 9). New variants go last.
    CheckpointRecorded {
        checkpoint: crate::audit::Checkpoint,
    },
    AuthFailuresRecorded {
        node_id: u64,
        failures: Vec<crate::audit::AuthFailure>,
    },
    /// Credentials a node issued, in the compact form (one profile per shared set of fields).
    IssuanceBatchRecorded {
        node_id: u64,
        batch: crate::issuance::IssuanceBatch,
    },
    /// Retention pruned the archive up to a signed checkpoint. Carries the audit keys that
    /// could still sign, with their certificate chains.
    AuditPruned {
        prune: crate::audit::Prune,
        audit_keys: Vec<crate::keys::NodeKey>,
    },
    /// Retention replaced the issuance records of a range by remnants, committing to their
    /// sequences and hashes.
    IssuancesElided {
        elision: crate::audit::Elision,
    },
    /// How far a node's audit sinks had delivered when it reported (none: it has no sinks).
    SinksAcknowledged {
        node_id: u64,
        sinks: Vec<crate::audit::SinkAck>,
    },
    /// As `IssuancesElided`, committing to each part of the range apart.
    IssuancePartsElided {
        elision: crate::audit::SplitElision,
    },
    /// An admin certificate, with the root that signed it and its expiry (what `AdminIssued`
    /// recorded before, by fingerprint only).
    AdminCertificateIssued {
        name: String,
        cert: crate::admins::AdminCert,
    },
}

/// Every record type ([`Event::kind`]), for validating export filters.
pub const KINDS: &[&str] = &[
    "trust_domain.configured",
    "node.member_recorded",
    "node.member_removed",
    "client.registered",
    "client.updated",
    "client.removed",
    "ca.root_installed",
    "join_token.created",
    "join_token.consumed",
    "node.revoked",
    "admin.issued",
    "certificate.revoked",
    "client.created",
    "client.credentials_changed",
    "entry.created",
    "entry.updated",
    "entry.deleted",
    "role.created",
    "role.updated",
    "role.deleted",
    "role.bound",
    "role.unbound",
    "delegation.created",
    "delegation.revoked",
    "token.revoked",
    "subject.revoked",
    "agent_token.created",
    "agent.attested",
    "agent.seen",
    "agent.banned",
    "agent.deleted",
    "cluster.client_secret_key_installed",
    "node_key.published",
    "node_key.activated",
    "node_key.superseded",
    "node_key.retired",
    "federation.created",
    "federation.deleted",
    "federation.bundle_updated",
    "ca.root_prepared",
    "ca.root_activated",
    "ca.root_retired",
    "credential.issued",
    "token.revocations_pruned",
    "audit.checkpoint",
    "auth.failed",
    "audit.pruned",
    "audit.issuances_elided",
    "audit.sinks_acknowledged",
];

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
            Event::ClientCreated { .. } => "client.created",
            Event::ClientCredentialsChanged { .. } => "client.credentials_changed",
            Event::EntryCreated { .. } => "entry.created",
            Event::EntryUpdated { .. } => "entry.updated",
            Event::EntryDeleted { .. } => "entry.deleted",
            Event::RoleCreated { .. } => "role.created",
            Event::RoleUpdated { .. } => "role.updated",
            Event::RoleDeleted { .. } => "role.deleted",
            Event::RoleBound { .. } => "role.bound",
            Event::RoleUnbound { .. } => "role.unbound",
            Event::DelegationCreated { .. } => "delegation.created",
            Event::DelegationRevoked { .. } => "delegation.revoked",
            Event::TokenRevoked { .. } => "token.revoked",
            Event::SubjectRevoked { .. } => "subject.revoked",
            Event::AgentTokenCreated { .. } => "agent_token.created",
            Event::AgentAttested { .. } => "agent.attested",
            Event::AgentSeen { .. } => "agent.seen",
            Event::AgentBanned { .. } => "agent.banned",
            Event::AgentDeleted { .. } => "agent.deleted",
            Event::ClientSecretKeyInstalled => "cluster.client_secret_key_installed",
            Event::NodeKeyPublished { .. } => "node_key.published",
            Event::NodeKeyActivated { .. } => "node_key.activated",
            Event::NodeKeySuperseded { .. } => "node_key.superseded",
            Event::NodeKeyRetired { .. } => "node_key.retired",
            Event::FederationCreated { .. } => "federation.created",
            Event::FederationDeleted { .. } => "federation.deleted",
            Event::FederatedBundleUpdated { .. } => "federation.bundle_updated",
            Event::RootPrepared { .. } => "ca.root_prepared",
            Event::RootActivated { .. } => "ca.root_activated",
            Event::RootRetired { .. } => "ca.root_retired",
            Event::IssuancesRecorded { .. } => "credential.issued",
            Event::RevocationsPruned { .. } => "token.revocations_pruned",
            Event::CheckpointRecorded { .. } => "audit.checkpoint",
            Event::AuthFailuresRecorded { .. } => "auth.failed",
            Event::IssuanceBatchRecorded { .. } => "credential.issued",
            Event::AuditPruned { .. } => "audit.pruned",
            Event::IssuancesElided { .. } => "audit.issuances_elided",
            Event::SinksAcknowledged { .. } => "audit.sinks_acknowledged",
            Event::IssuancePartsElided { .. } => "audit.issuances_elided",
            Event::AdminCertificateIssued { .. } => "admin.issued",
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
            Event::ClientCreated { client, .. } => format!("client:{}", client.client_id),
            Event::ClientCredentialsChanged { client_id, .. } => format!("client:{client_id}"),
            Event::EntryCreated { entry } | Event::EntryUpdated { entry } => {
                format!("entry:{}", entry.entry_id)
            }
            Event::EntryDeleted { entry_id, .. } => format!("entry:{entry_id}"),
            Event::RoleCreated { role } | Event::RoleUpdated { role } => {
                format!("role:{}", role.name)
            }
            Event::RoleDeleted { name } => format!("role:{name}"),
            Event::RoleBound { role, .. } | Event::RoleUnbound { role, .. } => {
                format!("role:{role}")
            }
            Event::DelegationCreated { delegation } => {
                format!("delegation:{}", delegation.delegation_id)
            }
            Event::DelegationRevoked { delegation_id, .. } => format!("delegation:{delegation_id}"),
            Event::TokenRevoked { revoked } => format!("token:{}", revoked.jti),
            Event::SubjectRevoked { revoked } => revoked.subject.clone(),
            Event::AgentTokenCreated { token_id, .. } => format!("agent_token:{token_id}"),
            Event::AgentAttested { agent } => agent.spiffe_id.to_string(),
            Event::AgentSeen { agent_id }
            | Event::AgentBanned { agent_id, .. }
            | Event::AgentDeleted { agent_id } => agent_id.to_string(),
            Event::ClientSecretKeyInstalled => "cluster:client_secret_key".into(),
            Event::NodeKeyPublished { key } => format!("node_key:{}", key.kid),
            Event::NodeKeyActivated { kid }
            | Event::NodeKeySuperseded { kid }
            | Event::NodeKeyRetired { kid } => format!("node_key:{kid}"),
            Event::FederationCreated { federation } => {
                format!("federation:{}", federation.trust_domain)
            }
            Event::FederationDeleted { trust_domain }
            | Event::FederatedBundleUpdated { trust_domain, .. } => {
                format!("federation:{trust_domain}")
            }
            Event::RootPrepared { root } => format!("root:{}", root.fingerprint),
            Event::RootActivated { fingerprint } | Event::RootRetired { fingerprint } => {
                format!("root:{fingerprint}")
            }
            Event::IssuancesRecorded { node_id, .. } => format!("node:{node_id}"),
            Event::RevocationsPruned { .. } => "revocations".into(),
            Event::CheckpointRecorded { checkpoint } => format!("node:{}", checkpoint.node_id),
            Event::AuthFailuresRecorded { node_id, .. }
            | Event::IssuanceBatchRecorded { node_id, .. } => format!("node:{node_id}"),
            Event::AuditPruned { prune, .. } => format!("node:{}", prune.node_id),
            Event::IssuancesElided { elision } => format!("node:{}", elision.node_id),
            Event::SinksAcknowledged { node_id, .. } => format!("node:{node_id}"),
            Event::IssuancePartsElided { elision } => format!("node:{}", elision.node_id),
            Event::AdminCertificateIssued { name, .. } => format!("admin:{name}"),
        }
    }
}

//! Projections: the state every node derives from the log.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::identity::{
    Agent, ClientAuth, Delegation, Entry, IdentityMeta, RevokedSubject, RevokedToken, Role, Subject,
};
use crate::ids::{ClientId, DelegationId, EntryId, RoleName, Scope, SpiffeId, TrustDomain};
use crate::permissions::PermissionSet;

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
    Identity,
    ClientAuth(ClientId),
    Entry(EntryId),
    Role(RoleName),
    Binding(Subject, RoleName),
    Delegation(DelegationId),
    Agent(SpiffeId),
    RevokedToken(String),
    RevokedSubject(String),
    NodeKey(String),
    KeysMeta,
    Federation(crate::TrustDomain),
    RootsMeta,
    IssuanceMeta,
    AuditMeta,
    AuditPruned,
    SinkAcks,
    Admins,
}

/// All projections. Ordered maps only, so iteration (and so the digest) is deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// The log index of the last entry these projections include, whole: a credential
    /// decided on this state carries it (`authsec_index`), so "revoked below index R" and
    /// "as the log stood at issuance" mean exactly this state. Kept in memory only: the state
    /// machine sets it in the same critical section as the entry's changes.
    pub applied_index: u64,
    pub meta: StateMeta,
    pub security: SecurityState,
    pub nodes: BTreeMap<u64, NodeRecord>,
    pub clients: BTreeMap<ClientId, Client>,
    pub identity: IdentityMeta,
    /// How each client authenticates; kept apart from [`Client`] so listings never carry it.
    pub client_auth: BTreeMap<ClientId, ClientAuth>,
    pub entries: BTreeMap<EntryId, Entry>,
    pub roles: BTreeMap<RoleName, Role>,
    /// Roles bound to each subject.
    pub bindings: BTreeMap<Subject, BTreeSet<RoleName>>,
    pub delegations: BTreeMap<DelegationId, Delegation>,
    pub agents: BTreeMap<SpiffeId, Agent>,
    pub revoked_tokens: BTreeMap<String, RevokedToken>,
    pub revoked_subjects: BTreeMap<String, RevokedSubject>,
    /// Node signing keys by kid, and the bundle's sequence.
    pub keys: BTreeMap<String, crate::keys::NodeKey>,
    pub keys_meta: crate::keys::KeysMeta,
    /// Rotated SVID roots.
    pub roots_meta: crate::roots::RootsMeta,
    /// Federated trust domains and their bundles.
    pub federations: BTreeMap<crate::TrustDomain, crate::federation::Federation>,
    /// Per node, the last outbox record in the log.
    pub issuance_meta: crate::issuance::IssuanceMeta,
    /// The last signed checkpoint of the audit chain.
    pub audit_meta: crate::audit::AuditMeta,
    /// Where retention has pruned the archive to.
    pub audit_pruned: crate::audit::PruneMeta,
    /// What each node last reported of its audit sinks (retention's cluster-wide bound).
    pub sink_acks: crate::audit::SinkAcks,
    /// Live admin certificates, with the root that signed each.
    pub admins: crate::admins::Admins,
    /// Derived lookups, rebuilt from the rows above on load; never stored.
    pub idx: Indexes,
}

/// Lookups derived from the projections (rebuilt by [`State::rebuild_indexes`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Indexes {
    pub entries_by_spiffe: BTreeMap<SpiffeId, BTreeSet<EntryId>>,
    pub entries_by_client: BTreeMap<ClientId, BTreeSet<EntryId>>,
    /// Entries by parent (the agent that serves them), so an agent's sync never scans them all.
    pub entries_by_parent: BTreeMap<SpiffeId, BTreeSet<EntryId>>,
    /// How many subjects each role is bound to.
    pub role_bindings: BTreeMap<RoleName, usize>,
    pub delegation_children: BTreeMap<DelegationId, BTreeSet<DelegationId>>,
    /// Delegations by delegate and by client delegator.
    pub delegations_by_client: BTreeMap<ClientId, BTreeSet<DelegationId>>,
    /// Compiled permission sets, so deciding a scope never builds one: each role's
    /// permissions, each client's allow-list, each delegation's grant.
    pub role_sets: BTreeMap<RoleName, PermissionSet>,
    pub allow_sets: BTreeMap<ClientId, PermissionSet>,
    pub grant_sets: BTreeMap<DelegationId, PermissionSet>,
    /// Single-token revocations by expiry, soonest first, so pruning never scans them all.
    pub revoked_by_expiry: BTreeSet<(u64, String)>,
    /// Clients by the SPIFFE ID their certificate carries (tls_client_auth), so the token
    /// endpoint finds the client of a presented SVID without scanning them all.
    pub clients_by_spiffe: BTreeMap<SpiffeId, BTreeSet<ClientId>>,
}

impl Indexes {
    pub fn add_entry(&mut self, e: &Entry) {
        self.entries_by_spiffe
            .entry(e.spiffe_id.clone())
            .or_default()
            .insert(e.entry_id.clone());
        if let Some(c) = &e.client_id {
            self.entries_by_client
                .entry(c.clone())
                .or_default()
                .insert(e.entry_id.clone());
        }
        if let Some(p) = &e.parent_id {
            self.entries_by_parent
                .entry(p.clone())
                .or_default()
                .insert(e.entry_id.clone());
        }
    }

    pub fn remove_entry(&mut self, e: &Entry) {
        fn drop_from<K: Ord, V: Ord>(m: &mut BTreeMap<K, BTreeSet<V>>, k: &K, v: &V) {
            if let Some(set) = m.get_mut(k) {
                set.remove(v);
                if set.is_empty() {
                    m.remove(k);
                }
            }
        }
        drop_from(&mut self.entries_by_spiffe, &e.spiffe_id, &e.entry_id);
        if let Some(c) = &e.client_id {
            drop_from(&mut self.entries_by_client, c, &e.entry_id);
        }
        if let Some(p) = &e.parent_id {
            drop_from(&mut self.entries_by_parent, p, &e.entry_id);
        }
    }

    pub fn add_delegation(&mut self, d: &Delegation) {
        if let Some(p) = &d.parent {
            self.delegation_children
                .entry(p.clone())
                .or_default()
                .insert(d.delegation_id.clone());
        }
        self.grant_sets
            .insert(d.delegation_id.clone(), PermissionSet::new(&d.permissions));
        self.delegations_by_client
            .entry(d.delegate.clone())
            .or_default()
            .insert(d.delegation_id.clone());
        if let crate::identity::Delegator::Client(c) = &d.delegator {
            self.delegations_by_client
                .entry(c.clone())
                .or_default()
                .insert(d.delegation_id.clone());
        }
    }
}

impl Indexes {
    /// Follow a change of a client's authentication methods (`None`: none, or removed).
    pub fn change_client_auth(
        &mut self,
        id: &ClientId,
        old: Option<&crate::identity::ClientAuth>,
        new: Option<&crate::identity::ClientAuth>,
    ) {
        if let Some(s) = old.and_then(|a| a.spiffe_id.as_ref()) {
            if let Some(set) = self.clients_by_spiffe.get_mut(s) {
                set.remove(id);
                if set.is_empty() {
                    self.clients_by_spiffe.remove(s);
                }
            }
        }
        if let Some(s) = new.and_then(|a| a.spiffe_id.as_ref()) {
            self.clients_by_spiffe
                .entry(s.clone())
                .or_default()
                .insert(id.clone());
        }
    }
}

impl State {
    /// Recompute every derived lookup from the projections.
    pub fn rebuild_indexes(&mut self) {
        let mut idx = Indexes::default();
        for e in self.entries.values() {
            idx.add_entry(e);
        }
        for roles in self.bindings.values() {
            for r in roles {
                *idx.role_bindings.entry(r.clone()).or_default() += 1;
            }
        }
        for d in self.delegations.values() {
            idx.add_delegation(d);
        }
        for (name, r) in &self.roles {
            idx.role_sets
                .insert(name.clone(), PermissionSet::new(&r.permissions));
        }
        for (id, c) in &self.clients {
            idx.allow_sets
                .insert(id.clone(), PermissionSet::new(&c.allowed_scopes));
        }
        for (id, a) in &self.client_auth {
            idx.change_client_auth(id, None, Some(a));
        }
        for t in self.revoked_tokens.values() {
            idx.revoked_by_expiry
                .insert((t.expires_at_ms, t.jti.clone()));
        }
        self.idx = idx;
    }
}

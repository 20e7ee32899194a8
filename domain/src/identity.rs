//! The identity model: client credentials, workload entries, roles and bindings, delegations,
//! agents and revocations. Each type here is a stored projection row (see [`crate::persist`]).

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{
    ClientId, DelegationId, EntryId, RoleName, Scope, Selector, SpiffeId, TrustDomain,
};

/// HMAC-SHA-256 of a client secret under the cluster's sealed secret key. Without that key it
/// says nothing about the secret; with it, it still cannot be inverted (the secret holds 256
/// random bits). `Debug` hides it anyway.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretHash(pub [u8; 32]);

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(<redacted>)")
    }
}

/// A client's generated secret: the current hash, and the previous one during a rotation's
/// overlap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSecret {
    pub current: SecretHash,
    pub created_at_ms: u64,
    /// The secret replaced by the last rotation, valid until the time given.
    pub previous: Option<(SecretHash, u64)>,
}

/// A public key a client signs `private_key_jwt` assertions with.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublicKey {
    pub kid: String,
    /// A JWK (JSON) or a PEM `PUBLIC KEY` block.
    pub key: String,
}

/// How a client proves who it is at the token endpoint: any of the methods it has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientAuth {
    /// `client_secret_basic` / `client_secret_post`.
    pub secret: Option<ClientSecret>,
    /// `private_key_jwt` (RFC 7523).
    pub public_keys: Vec<PublicKey>,
    /// `tls_client_auth` or an X.509-SVID: the SPIFFE ID its certificate must carry.
    pub spiffe_id: Option<SpiffeId>,
}

impl ClientAuth {
    pub fn methods(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        if self.secret.is_some() {
            m.push("client_secret");
        }
        if !self.public_keys.is_empty() {
            m.push("private_key_jwt");
        }
        if self.spiffe_id.is_some() {
            m.push("tls_client_auth");
        }
        m
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryStatus {
    /// Onboarded; no agent attests the workload yet (no parent or no selectors, or the parent
    /// authsec agent has not attested).
    AwaitingAgent,
    /// A parent agent and selectors: an agent can issue it.
    Active,
    /// The parent authsec agent attested, but its heartbeats stopped.
    AgentOffline,
    /// The parent authsec agent is banned: it gets no SVIDs for the entry.
    AgentBanned,
}

impl EntryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryStatus::AwaitingAgent => "awaiting-agent",
            EntryStatus::Active => "active",
            EntryStatus::AgentOffline => "agent-offline",
            EntryStatus::AgentBanned => "agent-banned",
        }
    }
}

/// The path (below the trust domain) of authsec agents' SPIFFE IDs: `/authsec/agent/<name>`.
pub const AGENT_PATH: &str = "/authsec/agent/";

/// The SPIFFE ID of the authsec agent `name` (a join token's id).
pub fn agent_spiffe_id(td: &crate::TrustDomain, name: &str) -> Result<SpiffeId, crate::FieldError> {
    SpiffeId::parse(&format!("spiffe://{td}{AGENT_PATH}{name}"))
}

/// The name of an authsec agent's SPIFFE ID of trust domain `td`, if it is one.
pub fn agent_name_of<'a>(td: &crate::TrustDomain, id: &'a SpiffeId) -> Option<&'a str> {
    let rest = id.as_str().strip_prefix("spiffe://")?;
    let path = rest.strip_prefix(td.as_str())?;
    let name = path.strip_prefix(AGENT_PATH)?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// A registration entry: who a workload is (its SPIFFE ID) and how an agent recognizes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub entry_id: EntryId,
    pub spiffe_id: SpiffeId,
    /// The agent that may issue it.
    pub parent_id: Option<SpiffeId>,
    pub selectors: BTreeSet<Selector>,
    pub x509_ttl_s: u32,
    pub jwt_ttl_s: u32,
    pub dns_names: BTreeSet<String>,
    /// The OAuth client this workload acts as, if any.
    pub client_id: Option<ClientId>,
    pub federates_with: BTreeSet<TrustDomain>,
    pub revision: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// The first path segment reserved for authsec's own identities (nodes, admins).
pub const RESERVED_PATH: &str = "authsec";

/// Whether `id` is in the reserved namespace `spiffe://<td>/authsec` (or below it).
pub fn is_reserved(id: &SpiffeId) -> bool {
    let s = id.as_str();
    let path = s
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or("");
    path == "/authsec" || path.starts_with("/authsec/")
}

impl Entry {
    /// From the entry alone: whether an agent can issue it at all.
    pub fn status(&self) -> EntryStatus {
        if self.parent_id.is_some() && !self.selectors.is_empty() {
            EntryStatus::Active
        } else {
            EntryStatus::AwaitingAgent
        }
    }

    /// With its parent, when the parent is an authsec agent (`parent` is that agent's row,
    /// `None` if it has not attested): awaiting the agent until it attests, then active while
    /// its heartbeats are younger than `offline_after_ms` at `now_ms`. Read time only: the
    /// state machine never calls this (it reads a clock).
    pub fn status_with_agent(
        &self,
        parent_is_agent: bool,
        parent: Option<&Agent>,
        now_ms: u64,
        offline_after_ms: u64,
    ) -> EntryStatus {
        let base = self.status();
        if base != EntryStatus::Active || !parent_is_agent {
            return base;
        }
        match parent {
            None => EntryStatus::AwaitingAgent,
            Some(a) if a.banned => EntryStatus::AgentBanned,
            Some(a)
                if now_ms.saturating_sub(a.last_seen_ms.max(a.attested_at_ms))
                    > offline_after_ms =>
            {
                EntryStatus::AgentOffline
            }
            Some(_) => EntryStatus::Active,
        }
    }
}

/// A named set of permissions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub name: RoleName,
    pub description: String,
    pub permissions: BTreeSet<Scope>,
    pub revision: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// Who a role is bound to, or who delegates.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Subject {
    Client(ClientId),
    Entry(EntryId),
    Spiffe(SpiffeId),
    /// A person, as an external identity provider names them.
    Person {
        issuer: String,
        subject: String,
    },
}

impl Subject {
    /// `client:<id>`, `entry:<id>`, `spiffe://...`, `person:<issuer>#<subject>`.
    pub fn key(&self) -> String {
        match self {
            Subject::Client(c) => format!("client:{c}"),
            Subject::Entry(e) => format!("entry:{e}"),
            Subject::Spiffe(s) => s.to_string(),
            Subject::Person { issuer, subject } => format!("person:{issuer}#{subject}"),
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

/// Who grants a delegation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delegator {
    Client(ClientId),
    Person { issuer: String, subject: String },
}

impl Delegator {
    pub fn subject(&self) -> Subject {
        match self {
            Delegator::Client(c) => Subject::Client(c.clone()),
            Delegator::Person { issuer, subject } => Subject::Person {
                issuer: issuer.clone(),
                subject: subject.clone(),
            },
        }
    }
}

/// A grant of permissions from a delegator to a delegate (an agent client).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    pub delegation_id: DelegationId,
    pub delegator: Delegator,
    pub delegate: ClientId,
    /// What was granted (patterns allowed): what a token under it may carry is this, further
    /// cut to the delegator's and delegate's current permissions at each use.
    pub permissions: BTreeSet<Scope>,
    pub max_token_ttl_s: u32,
    /// How many further hops of re-delegation this grant allows (0: none).
    pub max_depth: u8,
    /// 0 for a direct grant, parent's depth + 1 for a re-delegation.
    pub depth: u8,
    pub parent: Option<DelegationId>,
    pub expires_at_ms: u64,
    pub created_at_ms: u64,
    /// The log index of the revocation, once revoked.
    pub revoked_at_index: Option<u64>,
}

/// An unspent agent join token (only the SHA-256 of its secret is kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentToken {
    pub token_id: String,
    pub secret_hash: [u8; 32],
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
}

/// A node agent that attested with a join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    pub spiffe_id: SpiffeId,
    pub token_id: String,
    pub attested_at_ms: u64,
    pub last_seen_ms: u64,
    pub banned: bool,
}

/// A revoked single token, kept until it would have expired anyway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedToken {
    pub jti: String,
    pub expires_at_ms: u64,
    pub revoked_at_index: u64,
}

/// Every credential of `subject` carrying an issuing index below `below_index` is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedSubject {
    pub subject: String,
    pub below_index: u64,
}

/// Cluster-wide identity settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityMeta {
    /// Whether the client-secret HMAC key is in `sealed_secrets`.
    pub client_secret_key: bool,
    /// Unspent agent join tokens by id (bounded; expired ones go when a new one comes).
    pub agent_tokens: std::collections::BTreeMap<String, AgentToken>,
}

/// The key under which the sealed client-secret HMAC key is kept in `sealed_secrets`.
pub const SEALED_CLIENT_SECRET_KEY: &[u8] = b"client_secret_hmac_key";

/// Default SPIFFE ID template of an AI agent's workload entry.
pub const AGENT_TEMPLATE_DEFAULT: &str = "spiffe://{trust_domain}/agent/{client_id}";

/// Expand a SPIFFE ID template (`{trust_domain}`, `{client_id}`) and validate the result.
pub fn expand_template(
    template: &str,
    td: &TrustDomain,
    client: &ClientId,
) -> Result<SpiffeId, crate::FieldError> {
    if template.len() > crate::limits::TEMPLATE_BYTES_MAX {
        return Err(crate::FieldError::new(
            "spiffe_id_template",
            format!("longer than {} bytes", crate::limits::TEMPLATE_BYTES_MAX),
        ));
    }
    let s = template
        .replace("{trust_domain}", td.as_str())
        .replace("{client_id}", client.as_str());
    let id = SpiffeId::parse(&s).map_err(|e| {
        crate::FieldError::new(
            "spiffe_id_template",
            format!("expands to {s:?}: {}", e.reason),
        )
    })?;
    if id.trust_domain() != *td {
        return Err(crate::FieldError::new(
            "spiffe_id_template",
            format!("expands to {s}, outside the trust domain {td}"),
        ));
    }
    Ok(id)
}

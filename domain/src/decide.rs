//! `decide`: the rules. Given the state at a log index and a stamped proposal, either the events
//! it produces or a rejection. Rejections are committed outcomes too: every node reaches the same
//! one, and the caller gets it with a reason.

use serde::{Deserialize, Serialize};

use crate::command::{Command, Proposal, RegisterClient};
use crate::event::Event;
use crate::evolve::evolve;
use crate::ids::{ClientId, Scope};
use crate::limits;
use crate::state::{Client, State};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("the trust domain is already configured as {current}")]
    TrustDomainAlreadyConfigured { current: String },
    #[error("client {client_id} already exists")]
    ClientAlreadyExists { client_id: String },
    #[error("client {client_id} does not exist")]
    ClientNotFound { client_id: String },
    #[error("expected_revision: client {client_id} is at revision {actual}, not the expected {expected}")]
    RevisionMismatch {
        client_id: String,
        expected: u64,
        actual: u64,
    },
    #[error("default scope {scope} is not in the client's allowed scopes")]
    DefaultScopeNotAllowed { scope: String },
    #[error("invalid {field}: {reason}")]
    InvalidField { field: String, reason: String },
    #[error("limit reached: at most {limit} {what}")]
    LimitReached { what: String, limit: u64 },
    #[error("node {node_id} is not a recorded member")]
    NodeNotFound { node_id: u64 },
    #[error("the cluster already has a different root CA ({current})")]
    RootAlreadyInstalled { current: String },
    /// Unknown, already used, or a wrong secret: one answer, so a caller learns nothing.
    #[error("the join token is unknown or has already been used")]
    JoinTokenInvalid,
    #[error("the join token expired at {expires_at_ms} ms since the epoch")]
    JoinTokenExpired { expires_at_ms: u64 },
    #[error("node {node_id} was revoked and can never rejoin; give the new node another id")]
    NodeRevoked { node_id: u64 },
    // Identity, roles and delegation. New variants go last.
    #[error("{kind} {id} does not exist")]
    NotFound { kind: String, id: String },
    #[error("{kind} {id} already exists")]
    AlreadyExists { kind: String, id: String },
    #[error("expected_revision: {kind} {id} is at revision {actual}, not the expected {expected}")]
    StaleRevision {
        kind: String,
        id: String,
        expected: u64,
        actual: u64,
    },
    #[error("role {role} is bound to {bindings} subject(s); unbind it first")]
    RoleInUse { role: String, bindings: u64 },
    #[error("the trust domain is not configured yet")]
    TrustDomainNotConfigured,
    #[error("agent {agent_id} is banned")]
    AgentBanned { agent_id: String },
    /// A delegation asked for more than the rules allow: refused, never cut.
    #[error("{0}")]
    Denied(crate::permissions::Denial),
}

/// What an accepted proposal did, as its caller is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Sequence of the first and last audit record it produced; `None` if it produced none.
    pub sequences: Option<(u64, u64)>,
    /// The client id the leader generated, for registrations that named none.
    pub generated_client_id: Option<ClientId>,
}

pub type Outcome = Result<Applied, Rejection>;

/// The application response of one log entry: one outcome per proposal, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOutcome {
    pub log_index: u64,
    pub outcomes: Vec<Outcome>,
}

pub(crate) fn text(field: &'static str, value: &str) -> Result<(), Rejection> {
    if value.len() > limits::TEXT_BYTES_MAX {
        return Err(Rejection::InvalidField {
            field: field.into(),
            reason: format!("longer than {} bytes", limits::TEXT_BYTES_MAX),
        });
    }
    Ok(())
}

pub(crate) fn scopes(
    field: &'static str,
    set: &std::collections::BTreeSet<Scope>,
) -> Result<(), Rejection> {
    if set.len() > limits::SCOPES_PER_CLIENT_MAX {
        return Err(Rejection::InvalidField {
            field: field.into(),
            reason: format!("more than {} scopes", limits::SCOPES_PER_CLIENT_MAX),
        });
    }
    Ok(())
}

/// Default scopes are concrete and each is covered by the allow-list.
pub(crate) fn defaults_allowed(
    allowed: &std::collections::BTreeSet<Scope>,
    defaults: &std::collections::BTreeSet<Scope>,
) -> Result<(), Rejection> {
    for d in defaults {
        if d.is_wildcard() {
            return Err(Rejection::InvalidField {
                field: "default_scopes".into(),
                reason: format!("{d} has a '*' segment; default scopes must be concrete"),
            });
        }
        if !allowed.iter().any(|a| scope_covers(a, d)) {
            return Err(Rejection::DefaultScopeNotAllowed {
                scope: d.to_string(),
            });
        }
    }
    Ok(())
}

/// True when `pattern` (which may hold `*` segments) covers the concrete scope `s`.
pub fn scope_covers(pattern: &Scope, s: &Scope) -> bool {
    let split = |x: &str| -> Option<(Vec<String>, Vec<String>)> {
        let (r, a) = x.split_once(':')?;
        Some((
            r.split('.').map(str::to_owned).collect(),
            a.split('.').map(str::to_owned).collect(),
        ))
    };
    let (Some((pr, pa)), Some((sr, sa))) = (split(pattern.as_str()), split(s.as_str())) else {
        return false;
    };
    let part = |p: &[String], s: &[String]| {
        // A trailing `*` covers any remaining segments; elsewhere it covers exactly one.
        let mut i = 0;
        while i < p.len() {
            if p[i] == "*" && i == p.len() - 1 {
                return s.len() > i;
            }
            match s.get(i) {
                Some(seg) if p[i] == "*" || p[i] == *seg => i += 1,
                _ => return false,
            }
        }
        s.len() == p.len()
    };
    part(&pr, &sr) && part(&pa, &sa)
}

fn register(
    state: &State,
    p: &Proposal,
    r: &RegisterClient,
    time_ms: u64,
) -> Result<Vec<Event>, Rejection> {
    let client_id = r
        .client_id
        .clone()
        .unwrap_or_else(|| ClientId::generated(&p.stamp.seed));
    if state.clients.contains_key(&client_id) {
        return Err(Rejection::ClientAlreadyExists {
            client_id: client_id.to_string(),
        });
    }
    if state.clients.len() >= limits::CLIENTS_MAX {
        return Err(Rejection::LimitReached {
            what: "clients".into(),
            limit: limits::CLIENTS_MAX as u64,
        });
    }
    text("display_name", &r.display_name)?;
    text("description", &r.description)?;
    text("owner", &r.owner)?;
    text("default_audience", &r.default_audience)?;
    scopes("allowed_scopes", &r.allowed_scopes)?;
    scopes("default_scopes", &r.default_scopes)?;
    crate::rules::no_admin_scopes("allowed_scopes", &r.allowed_scopes)?;
    defaults_allowed(&r.allowed_scopes, &r.default_scopes)?;
    Ok(vec![Event::ClientRegistered {
        client: Client {
            client_id,
            kind: r.kind,
            display_name: r.display_name.clone(),
            description: r.description.clone(),
            owner: r.owner.clone(),
            allowed_scopes: r.allowed_scopes.clone(),
            default_scopes: r.default_scopes.clone(),
            default_audience: r.default_audience.clone(),
            enabled: true,
            revision: 1,
            created_at_ms: time_ms,
            updated_at_ms: time_ms,
        },
    }])
}

/// Equality of two secret hashes in time that does not depend on where they differ.
pub(crate) fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:<hex>` of a certificate's DER: how operators name and pin a root.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex_lower(&Sha256::digest(der)))
}

pub(crate) fn token_id_valid(id: &str) -> Result<(), Rejection> {
    if id.is_empty()
        || id.len() > limits::JOIN_TOKEN_ID_BYTES_MAX
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(Rejection::InvalidField {
            field: "token_id".into(),
            reason: format!(
                "1 to {} ASCII letters, digits or '-'",
                limits::JOIN_TOKEN_ID_BYTES_MAX
            ),
        });
    }
    Ok(())
}

fn cluster_rules(state: &State, c: &Command, time_ms: u64) -> Result<Vec<Event>, Rejection> {
    match c {
        Command::InstallRoot { cert_der, .. } => {
            if cert_der.is_empty() || cert_der.len() > limits::ROOT_CERT_BYTES_MAX {
                return Err(Rejection::InvalidField {
                    field: "cert_der".into(),
                    reason: format!("must be 1 to {} bytes", limits::ROOT_CERT_BYTES_MAX),
                });
            }
            match &state.security.root_cert {
                Some(current) if current == cert_der => Ok(vec![]),
                Some(current) => Err(Rejection::RootAlreadyInstalled {
                    current: fingerprint(current),
                }),
                None => Ok(vec![Event::RootInstalled {
                    fingerprint: fingerprint(cert_der),
                    cert_der: cert_der.clone(),
                }]),
            }
        }
        Command::CreateJoinToken {
            token_id,
            secret_hash,
            ttl_ms,
        } => {
            token_id_valid(token_id)?;
            if *ttl_ms == 0 || *ttl_ms > limits::JOIN_TOKEN_TTL_MS_MAX {
                return Err(Rejection::InvalidField {
                    field: "ttl".into(),
                    reason: format!("must be 1 ms to {} s", limits::JOIN_TOKEN_TTL_MS_MAX / 1000),
                });
            }
            if state.security.join_tokens.contains_key(token_id) {
                return Err(Rejection::InvalidField {
                    field: "token_id".into(),
                    reason: "a token with this id exists".into(),
                });
            }
            let live = state
                .security
                .join_tokens
                .values()
                .filter(|t| t.expires_at_ms > time_ms)
                .count();
            if live >= limits::JOIN_TOKENS_MAX {
                return Err(Rejection::LimitReached {
                    what: "unspent join tokens".into(),
                    limit: limits::JOIN_TOKENS_MAX as u64,
                });
            }
            Ok(vec![Event::JoinTokenCreated {
                token_id: token_id.clone(),
                secret_hash: *secret_hash,
                expires_at_ms: time_ms.saturating_add(*ttl_ms),
            }])
        }
        Command::ConsumeJoinToken {
            token_id,
            secret_hash,
            node_id,
        } => {
            let t = state
                .security
                .join_tokens
                .get(token_id)
                .ok_or(Rejection::JoinTokenInvalid)?;
            if !ct_eq(&t.secret_hash, secret_hash) {
                return Err(Rejection::JoinTokenInvalid);
            }
            if time_ms >= t.expires_at_ms {
                return Err(Rejection::JoinTokenExpired {
                    expires_at_ms: t.expires_at_ms,
                });
            }
            if *node_id == 0 {
                return Err(Rejection::InvalidField {
                    field: "node_id".into(),
                    reason: "must be 1 or more".into(),
                });
            }
            if state.security.revoked_nodes.contains(node_id) {
                return Err(Rejection::NodeRevoked { node_id: *node_id });
            }
            Ok(vec![Event::JoinTokenConsumed {
                token_id: token_id.clone(),
                node_id: *node_id,
            }])
        }
        Command::RevokeNode { node_id } => {
            // Its signing keys leave the bundle in the same commit.
            let mut out = crate::keys::retire_all_of(state, *node_id);
            if !state.security.revoked_nodes.contains(node_id) {
                out.push(Event::NodeRevoked { node_id: *node_id });
            }
            Ok(out)
        }
        Command::RecordAdminIssued {
            name,
            fingerprint,
            revokes,
        } => {
            crate::admins::check_name(name)?;
            crate::admins::check_pin("fingerprint", fingerprint)?;
            if let Some(r) = revokes {
                crate::admins::check_pin("fingerprint", r)?;
            }
            let mut events = vec![Event::AdminIssued {
                name: name.clone(),
                fingerprint: fingerprint.clone(),
            }];
            events.extend(crate::admins::revoke(state, revokes.as_deref())?);
            Ok(events)
        }
        _ => unreachable!("cluster_rules is called for cluster commands only"),
    }
}

/// The rules: the events a proposal produces against `state`, or why it is rejected.
/// `time_ms` is the replicated clock for this proposal (see [`apply_proposal`]).
pub fn decide(
    state: &State,
    p: &Proposal,
    time_ms: u64,
    log_index: u64,
) -> Result<Vec<Event>, Rejection> {
    if let Some(result) = crate::rules::decide_identity(state, &p.command, time_ms, log_index) {
        return result;
    }
    match &p.command {
        Command::ConfigureTrustDomain { trust_domain } => match &state.meta.trust_domain {
            Some(current) if current == trust_domain => Ok(vec![]),
            Some(current) => Err(Rejection::TrustDomainAlreadyConfigured {
                current: current.to_string(),
            }),
            None => Ok(vec![Event::TrustDomainConfigured {
                trust_domain: trust_domain.clone(),
            }]),
        },
        Command::RecordNodeMember { node_id, addr } => {
            if addr.is_empty() || addr.len() > limits::NODE_ADDR_BYTES_MAX {
                return Err(Rejection::InvalidField {
                    field: "addr".into(),
                    reason: format!("must be 1 to {} bytes", limits::NODE_ADDR_BYTES_MAX),
                });
            }
            match state.nodes.get(node_id) {
                Some(n) if n.addr == *addr => Ok(vec![]),
                _ => Ok(vec![Event::NodeMemberRecorded {
                    node_id: *node_id,
                    addr: addr.clone(),
                }]),
            }
        }
        Command::RecordNodeRemoved { node_id } => {
            if state.nodes.contains_key(node_id) {
                // A node that left signs nothing more: its keys leave the bundle with it.
                let mut events = vec![Event::NodeMemberRemoved { node_id: *node_id }];
                events.extend(crate::keys::retire_all_of(state, *node_id));
                Ok(events)
            } else {
                Err(Rejection::NodeNotFound { node_id: *node_id })
            }
        }
        Command::RegisterClient(r) => register(state, p, r, time_ms),
        c @ (Command::InstallRoot { .. }
        | Command::CreateJoinToken { .. }
        | Command::ConsumeJoinToken { .. }
        | Command::RevokeNode { .. }
        | Command::RecordAdminIssued { .. }) => cluster_rules(state, c, time_ms),
        Command::UpdateClient {
            client_id,
            patch,
            expected_revision,
        } => {
            let current =
                state
                    .clients
                    .get(client_id)
                    .ok_or_else(|| Rejection::ClientNotFound {
                        client_id: client_id.to_string(),
                    })?;
            if let Some(expected) = expected_revision {
                if *expected != current.revision {
                    return Err(Rejection::RevisionMismatch {
                        client_id: client_id.to_string(),
                        expected: *expected,
                        actual: current.revision,
                    });
                }
            }
            for (field, value) in [
                ("display_name", &patch.display_name),
                ("description", &patch.description),
                ("owner", &patch.owner),
                ("default_audience", &patch.default_audience),
            ] {
                if let Some(v) = value {
                    text(field, v)?;
                }
            }
            if let Some(s) = &patch.allowed_scopes {
                scopes("allowed_scopes", s)?;
                crate::rules::no_admin_scopes("allowed_scopes", s)?;
            }
            if let Some(s) = &patch.default_scopes {
                scopes("default_scopes", s)?;
            }
            let allowed = patch
                .allowed_scopes
                .as_ref()
                .unwrap_or(&current.allowed_scopes);
            let defaults = patch
                .default_scopes
                .as_ref()
                .unwrap_or(&current.default_scopes);
            defaults_allowed(allowed, defaults)?;
            if patch.is_empty() {
                return Ok(vec![]);
            }
            Ok(vec![Event::ClientUpdated {
                client_id: client_id.clone(),
                patch: patch.clone(),
                revision: current.revision + 1,
            }])
        }
        Command::RemoveClient { client_id } => {
            crate::rules::remove_client(state, client_id, log_index)
        }
        _ => unreachable!("identity commands are decided by rules::decide_identity"),
    }
}

/// Decide a proposal and, if accepted, evolve the state with its events. Returns the events and
/// the replicated time they happened at: `max(clock, stamp)`, so time never runs backwards.
/// `log_index` is the index of the entry that carries the proposal: revocations are ordered by
/// it.
pub fn apply_proposal(
    state: &mut State,
    p: &Proposal,
    log_index: u64,
) -> Result<(Vec<Event>, u64), Rejection> {
    let time_ms = state.meta.clock_ms.max(p.stamp.time_ms);
    let events = decide(state, p, time_ms, log_index)?;
    state.meta.clock_ms = time_ms;
    for e in &events {
        evolve(state, e, time_ms);
    }
    Ok((events, time_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Scope {
        Scope::parse(x).expect("valid scope")
    }

    #[test]
    fn wildcard_coverage() {
        assert!(scope_covers(&s("orders:*"), &s("orders:read")));
        assert!(scope_covers(&s("orders:*"), &s("orders:read.all")));
        assert!(!scope_covers(&s("orders:*"), &s("billing:read")));
        assert!(scope_covers(&s("billing.*:read"), &s("billing.eu:read")));
        assert!(
            scope_covers(&s("billing.*:read"), &s("billing.eu.x:read")),
            "a trailing * covers the rest"
        );
        assert!(scope_covers(&s("a.*.c:read"), &s("a.b.c:read")));
        assert!(
            !scope_covers(&s("a.*.c:read"), &s("a.b.x.c:read")),
            "a middle * covers one segment"
        );
        assert!(
            !scope_covers(&s("billing.*:read"), &s("billing:read")),
            "a * needs a segment to cover"
        );
        assert!(scope_covers(&s("orders:read"), &s("orders:read")));
        assert!(!scope_covers(&s("orders:read"), &s("orders:read.x")));
    }
}

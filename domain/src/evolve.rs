//! `evolve`: how an event changes the projections. It cannot fail: a decided event always
//! applies. A violated precondition here is a bug in `decide`, so it panics loudly.

use crate::event::Event;
use crate::identity::AgentToken;
use crate::keys::KeyState;
use crate::permissions::PermissionSet;
use crate::state::{JoinToken, NodeRecord, ProjectionKey, State};

fn set_key_state(state: &mut State, kid: &str, to: KeyState, time_ms: u64) {
    let Some(k) = state.keys.get_mut(kid) else {
        missing("key", kid)
    };
    k.state = to;
    k.changed_at_ms = time_ms;
}

fn missing(what: &str, id: impl std::fmt::Display) -> ! {
    panic!("evolve: {what} {id} does not exist: decide let the event through")
}

/// Apply one event at the replicated time `time_ms`.
pub fn evolve(state: &mut State, event: &Event, time_ms: u64) {
    match event {
        Event::TrustDomainConfigured { trust_domain } => {
            state.meta.trust_domain = Some(trust_domain.clone());
        }
        Event::NodeMemberRecorded { node_id, addr } => {
            state.security.pending_admission.remove(node_id);
            state.nodes.insert(
                *node_id,
                NodeRecord {
                    node_id: *node_id,
                    addr: addr.clone(),
                    recorded_at_ms: time_ms,
                },
            );
        }
        Event::NodeMemberRemoved { node_id } => {
            state.nodes.remove(node_id);
            // A removed node's sinks no longer hold retention back.
            state.sink_acks.by_node.remove(node_id);
        }
        Event::ClientRegistered { client } => {
            state.idx.allow_sets.insert(
                client.client_id.clone(),
                PermissionSet::new(&client.allowed_scopes),
            );
            state
                .clients
                .insert(client.client_id.clone(), client.clone());
        }
        Event::ClientUpdated {
            client_id,
            patch,
            revision,
        } => {
            let Some(c) = state.clients.get_mut(client_id) else {
                panic!(
                    "evolve: ClientUpdated for unknown client {client_id}: decide let it through"
                );
            };
            if let Some(v) = &patch.display_name {
                c.display_name = v.clone();
            }
            if let Some(v) = &patch.description {
                c.description = v.clone();
            }
            if let Some(v) = &patch.owner {
                c.owner = v.clone();
            }
            if let Some(v) = &patch.allowed_scopes {
                c.allowed_scopes = v.clone();
                state
                    .idx
                    .allow_sets
                    .insert(client_id.clone(), PermissionSet::new(v));
            }
            if let Some(v) = &patch.default_scopes {
                c.default_scopes = v.clone();
            }
            if let Some(v) = &patch.default_audience {
                c.default_audience = v.clone();
            }
            if let Some(v) = patch.enabled {
                c.enabled = v;
            }
            c.revision = *revision;
            c.updated_at_ms = time_ms;
        }
        Event::ClientRemoved { client_id } => {
            state.clients.remove(client_id);
            let old = state.client_auth.remove(client_id);
            state.idx.change_client_auth(client_id, old.as_ref(), None);
            state.idx.allow_sets.remove(client_id);
        }
        Event::RootInstalled { cert_der, .. } => {
            state.security.root_cert = Some(cert_der.clone());
            state.keys_meta.bundle_sequence += 1;
        }
        Event::JoinTokenCreated {
            token_id,
            secret_hash,
            expires_at_ms,
        } => {
            // Expired tokens go when a new one comes: the set stays bounded.
            state
                .security
                .join_tokens
                .retain(|_, t| t.expires_at_ms > time_ms);
            state.security.join_tokens.insert(
                token_id.clone(),
                JoinToken {
                    secret_hash: *secret_hash,
                    created_at_ms: time_ms,
                    expires_at_ms: *expires_at_ms,
                },
            );
        }
        Event::JoinTokenConsumed { token_id, node_id } => {
            state.security.join_tokens.remove(token_id);
            state.security.pending_admission.insert(*node_id);
        }
        Event::NodeRevoked { node_id } => {
            state.security.revoked_nodes.insert(*node_id);
        }
        Event::AdminIssued { .. } => {}
        Event::CertificateRevoked { fingerprint } => {
            state.security.revoked_certs.insert(fingerprint.clone());
        }
        Event::ClientCreated { client, auth } => {
            state.idx.allow_sets.insert(
                client.client_id.clone(),
                PermissionSet::new(&client.allowed_scopes),
            );
            state
                .clients
                .insert(client.client_id.clone(), client.clone());
            let old = state
                .client_auth
                .insert(client.client_id.clone(), auth.clone());
            state
                .idx
                .change_client_auth(&client.client_id, old.as_ref(), Some(auth));
        }
        Event::ClientCredentialsChanged {
            client_id,
            auth,
            revision,
        } => {
            let Some(c) = state.clients.get_mut(client_id) else {
                missing("client", client_id)
            };
            c.revision = *revision;
            c.updated_at_ms = time_ms;
            let old = state.client_auth.insert(client_id.clone(), auth.clone());
            state
                .idx
                .change_client_auth(client_id, old.as_ref(), Some(auth));
        }
        Event::EntryCreated { entry } | Event::EntryUpdated { entry } => {
            if let Some(old) = state.entries.insert(entry.entry_id.clone(), entry.clone()) {
                state.idx.remove_entry(&old);
            }
            state.idx.add_entry(entry);
        }
        Event::EntryDeleted { entry_id, .. } => {
            let Some(old) = state.entries.remove(entry_id) else {
                missing("entry", entry_id)
            };
            state.idx.remove_entry(&old);
        }
        Event::RoleCreated { role } | Event::RoleUpdated { role } => {
            state
                .idx
                .role_sets
                .insert(role.name.clone(), PermissionSet::new(&role.permissions));
            state.roles.insert(role.name.clone(), role.clone());
        }
        Event::RoleDeleted { name } => {
            state.roles.remove(name);
            state.idx.role_sets.remove(name);
        }
        Event::RoleBound { role, subject } => {
            if state
                .bindings
                .entry(subject.clone())
                .or_default()
                .insert(role.clone())
            {
                *state.idx.role_bindings.entry(role.clone()).or_default() += 1;
            }
        }
        Event::RoleUnbound { role, subject } => {
            let removed = state
                .bindings
                .get_mut(subject)
                .is_some_and(|r| r.remove(role));
            if state.bindings.get(subject).is_some_and(|r| r.is_empty()) {
                state.bindings.remove(subject);
            }
            if removed {
                if let Some(n) = state.idx.role_bindings.get_mut(role) {
                    *n -= 1;
                    if *n == 0 {
                        state.idx.role_bindings.remove(role);
                    }
                }
            }
        }
        Event::DelegationCreated { delegation } => {
            state.idx.add_delegation(delegation);
            state
                .delegations
                .insert(delegation.delegation_id.clone(), delegation.clone());
        }
        Event::DelegationRevoked {
            delegation_id,
            at_index,
            ..
        } => {
            let Some(d) = state.delegations.get_mut(delegation_id) else {
                missing("delegation", delegation_id)
            };
            d.revoked_at_index = Some(*at_index);
        }
        Event::TokenRevoked { revoked } => {
            if let Some(old) = state
                .revoked_tokens
                .insert(revoked.jti.clone(), revoked.clone())
            {
                state
                    .idx
                    .revoked_by_expiry
                    .remove(&(old.expires_at_ms, old.jti));
            }
            state
                .idx
                .revoked_by_expiry
                .insert((revoked.expires_at_ms, revoked.jti.clone()));
        }
        Event::SubjectRevoked { revoked } => {
            state
                .revoked_subjects
                .insert(revoked.subject.clone(), revoked.clone());
        }
        Event::AgentTokenCreated {
            token_id,
            secret_hash,
            expires_at_ms,
        } => {
            let tokens = &mut state.identity.agent_tokens;
            tokens.retain(|_, t| t.expires_at_ms > time_ms);
            tokens.insert(
                token_id.clone(),
                AgentToken {
                    token_id: token_id.clone(),
                    secret_hash: *secret_hash,
                    created_at_ms: time_ms,
                    expires_at_ms: *expires_at_ms,
                },
            );
        }
        Event::AgentAttested { agent } => {
            state.identity.agent_tokens.remove(&agent.token_id);
            state.agents.insert(agent.spiffe_id.clone(), agent.clone());
        }
        Event::AgentSeen { agent_id } => {
            let Some(a) = state.agents.get_mut(agent_id) else {
                missing("agent", agent_id)
            };
            a.last_seen_ms = time_ms;
        }
        Event::AgentBanned { agent_id, banned } => {
            let Some(a) = state.agents.get_mut(agent_id) else {
                missing("agent", agent_id)
            };
            a.banned = *banned;
        }
        Event::AgentDeleted { agent_id } => {
            state.agents.remove(agent_id);
        }
        Event::ClientSecretKeyInstalled => state.identity.client_secret_key = true,
        Event::NodeKeyPublished { key } => {
            state.keys.insert(key.kid.clone(), key.clone());
            // Audit keys are not in the bundle.
            if key.kind != crate::keys::KeyKind::Audit {
                state.keys_meta.bundle_sequence += 1;
            }
        }
        Event::NodeKeyActivated { kid } => set_key_state(state, kid, KeyState::Active, time_ms),
        Event::NodeKeySuperseded { kid } => {
            set_key_state(state, kid, KeyState::Superseded, time_ms)
        }
        Event::NodeKeyRetired { kid } => {
            set_key_state(state, kid, KeyState::Retired, time_ms);
            state.keys_meta.bundle_sequence += 1;
        }
        Event::FederationCreated { federation } => {
            state
                .federations
                .insert(federation.trust_domain.clone(), federation.clone());
        }
        Event::FederationDeleted { trust_domain } => {
            state.federations.remove(trust_domain);
        }
        Event::FederatedBundleUpdated {
            trust_domain,
            bundle,
        } => {
            if let Some(f) = state.federations.get_mut(trust_domain) {
                f.bundle = Some(bundle.clone());
                f.bundle_at_ms = time_ms;
            }
        }
        e @ (Event::RootPrepared { .. } | Event::RootRetired { .. }) => {
            crate::roots::evolve(state, e, time_ms);
            state.keys_meta.bundle_sequence += 1;
        }
        e @ Event::RootActivated { .. } => crate::roots::evolve(state, e, time_ms),
        Event::IssuancesRecorded { node_id, issuances } => {
            crate::issuance::evolve(state, *node_id, issuances)
        }
        Event::CheckpointRecorded { checkpoint } => {
            crate::audit::evolve_checkpoint(state, checkpoint, time_ms)
        }
        Event::AuthFailuresRecorded { .. } => {}
        Event::AuditPruned { prune, .. } => crate::audit::evolve_prune(state, prune, time_ms),
        Event::IssuancesElided { elision } => crate::audit::evolve_elide(state, elision),
        Event::SinksAcknowledged { node_id, sinks } => {
            crate::audit::evolve_sink_progress(state, *node_id, sinks)
        }
        Event::IssuancePartsElided { elision } => {
            state.audit_pruned.issuance_elided_through = elision.through_sequence;
        }
        Event::AdminCertificateIssued { name, cert } => {
            crate::admins::evolve(state, name, cert, time_ms)
        }
        Event::IssuanceBatchRecorded { node_id, batch } => {
            crate::issuance::evolve_batch(state, *node_id, batch)
        }
        Event::RevocationsPruned { jtis } => {
            for j in jtis {
                if let Some(t) = state.revoked_tokens.remove(j) {
                    state
                        .idx
                        .revoked_by_expiry
                        .remove(&(t.expires_at_ms, t.jti));
                }
            }
        }
    }
}

impl Event {
    /// A second stored projection entry this event changes, if any.
    pub fn also_touches(&self) -> Option<ProjectionKey> {
        match self {
            // Recording a member ends its pending admission.
            Event::NodeMemberRecorded { .. } => Some(ProjectionKey::Security),
            Event::ClientRemoved { client_id }
            | Event::ClientCredentialsChanged { client_id, .. } => {
                Some(ProjectionKey::ClientAuth(client_id.clone()))
            }
            Event::ClientCreated { client, .. } => {
                Some(ProjectionKey::ClientAuth(client.client_id.clone()))
            }
            // Attesting spends the token.
            Event::AgentAttested { .. } => Some(ProjectionKey::Identity),
            // The bundle's content changes: its sequence grows.
            Event::RootInstalled { .. }
            | Event::NodeKeyPublished { .. }
            | Event::NodeKeyRetired { .. }
            | Event::RootPrepared { .. }
            | Event::RootRetired { .. } => Some(ProjectionKey::KeysMeta),
            _ => None,
        }
    }

    /// The stored projection entry this event changes (besides [`ProjectionKey::Meta`], which
    /// holds the replicated clock and changes with every applied proposal).
    pub fn touches(&self) -> ProjectionKey {
        match self {
            Event::TrustDomainConfigured { .. } => ProjectionKey::Meta,
            Event::NodeMemberRecorded { node_id, .. } | Event::NodeMemberRemoved { node_id } => {
                ProjectionKey::Node(*node_id)
            }
            Event::ClientRegistered { client } => ProjectionKey::Client(client.client_id.clone()),
            Event::ClientUpdated { client_id, .. } | Event::ClientRemoved { client_id } => {
                ProjectionKey::Client(client_id.clone())
            }
            Event::RootInstalled { .. }
            | Event::JoinTokenCreated { .. }
            | Event::JoinTokenConsumed { .. }
            | Event::NodeRevoked { .. }
            | Event::AdminIssued { .. }
            | Event::CertificateRevoked { .. } => ProjectionKey::Security,
            Event::ClientCreated { client, .. } => ProjectionKey::Client(client.client_id.clone()),
            Event::ClientCredentialsChanged { client_id, .. } => {
                ProjectionKey::Client(client_id.clone())
            }
            Event::EntryCreated { entry } | Event::EntryUpdated { entry } => {
                ProjectionKey::Entry(entry.entry_id.clone())
            }
            Event::EntryDeleted { entry_id, .. } => ProjectionKey::Entry(entry_id.clone()),
            Event::RoleCreated { role } | Event::RoleUpdated { role } => {
                ProjectionKey::Role(role.name.clone())
            }
            Event::RoleDeleted { name } => ProjectionKey::Role(name.clone()),
            Event::RoleBound { role, subject } | Event::RoleUnbound { role, subject } => {
                ProjectionKey::Binding(subject.clone(), role.clone())
            }
            Event::DelegationCreated { delegation } => {
                ProjectionKey::Delegation(delegation.delegation_id.clone())
            }
            Event::DelegationRevoked { delegation_id, .. } => {
                ProjectionKey::Delegation(delegation_id.clone())
            }
            Event::TokenRevoked { revoked } => ProjectionKey::RevokedToken(revoked.jti.clone()),
            Event::SubjectRevoked { revoked } => {
                ProjectionKey::RevokedSubject(revoked.subject.clone())
            }
            Event::AgentTokenCreated { .. } | Event::ClientSecretKeyInstalled => {
                ProjectionKey::Identity
            }
            Event::AgentAttested { agent } => ProjectionKey::Agent(agent.spiffe_id.clone()),
            Event::NodeKeyPublished { key } => ProjectionKey::NodeKey(key.kid.clone()),
            Event::NodeKeyActivated { kid }
            | Event::NodeKeySuperseded { kid }
            | Event::NodeKeyRetired { kid } => ProjectionKey::NodeKey(kid.clone()),
            Event::AgentSeen { agent_id }
            | Event::AgentBanned { agent_id, .. }
            | Event::AgentDeleted { agent_id } => ProjectionKey::Agent(agent_id.clone()),
            Event::FederationCreated { federation } => {
                ProjectionKey::Federation(federation.trust_domain.clone())
            }
            Event::FederationDeleted { trust_domain }
            | Event::FederatedBundleUpdated { trust_domain, .. } => {
                ProjectionKey::Federation(trust_domain.clone())
            }
            Event::RootPrepared { .. }
            | Event::RootActivated { .. }
            | Event::RootRetired { .. } => ProjectionKey::RootsMeta,
            Event::IssuancesRecorded { .. } => ProjectionKey::IssuanceMeta,
            // Every row it deletes is in `more_touches`.
            Event::RevocationsPruned { .. } => ProjectionKey::Meta,
            Event::CheckpointRecorded { .. } => ProjectionKey::AuditMeta,
            Event::AuthFailuresRecorded { .. } => ProjectionKey::Meta,
            Event::IssuanceBatchRecorded { .. } => ProjectionKey::IssuanceMeta,
            Event::AuditPruned { .. }
            | Event::IssuancesElided { .. }
            | Event::IssuancePartsElided { .. } => ProjectionKey::AuditPruned,
            Event::SinksAcknowledged { .. } => ProjectionKey::SinkAcks,
            Event::AdminCertificateIssued { .. } => ProjectionKey::Admins,
        }
    }

    /// Further stored entries an event changes, for events that change many.
    pub fn more_touches(&self) -> Vec<ProjectionKey> {
        match self {
            Event::RevocationsPruned { jtis } => jtis
                .iter()
                .map(|j| ProjectionKey::RevokedToken(j.clone()))
                .collect(),
            Event::NodeMemberRemoved { .. } => vec![ProjectionKey::SinkAcks],
            _ => Vec::new(),
        }
    }
}

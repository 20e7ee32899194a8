//! `evolve`: how an event changes the projections. It cannot fail: a decided event always
//! applies. A violated precondition here is a bug in `decide`, so it panics loudly.

use crate::event::Event;
use crate::state::{JoinToken, NodeRecord, ProjectionKey, State};

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
        }
        Event::ClientRegistered { client } => {
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
        }
        Event::RootInstalled { cert_der, .. } => {
            state.security.root_cert = Some(cert_der.clone());
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
    }
}

impl Event {
    /// A second stored projection entry this event changes, if any.
    pub fn also_touches(&self) -> Option<ProjectionKey> {
        match self {
            // Recording a member ends its pending admission.
            Event::NodeMemberRecorded { .. } => Some(ProjectionKey::Security),
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
        }
    }
}

//! How the identity projections are stored: one row per entity, in one column family per
//! projection. The storage crate writes [`State::row`] for each key an event touches and feeds
//! every stored row back through [`State::load_row`] on open, so a new projection is a change
//! to this file (and a family name), not to the storage engine.

use crate::codec::{self, CodecError, Tag};
use crate::identity::{
    Agent, ClientAuth, Delegation, Entry, IdentityMeta, RevokedSubject, RevokedToken, Role, Subject,
};
use crate::ids::{ClientId, RoleName};
use crate::state::{ProjectionKey, State};

/// `proj_meta`: the identity settings live beside the trust domain, under their own key.
pub const FAMILY_META: &str = "proj_meta";
pub const KEY_IDENTITY: &[u8] = b"identity";
pub const FAMILY_CLIENT_AUTH: &str = "proj_client_auth";
pub const FAMILY_ENTRIES: &str = "proj_entries";
pub const FAMILY_ROLES: &str = "proj_roles";
pub const FAMILY_BINDINGS: &str = "proj_bindings";
pub const FAMILY_DELEGATIONS: &str = "proj_delegations";
pub const FAMILY_AGENTS: &str = "proj_agents";
pub const FAMILY_REVOCATIONS: &str = "proj_revocations";
pub const FAMILY_KEYS: &str = "proj_keys";
pub const FAMILY_FEDERATIONS: &str = "proj_federations";
/// In `proj_meta`: the bundle's sequence.
pub const KEY_KEYS_META: &[u8] = b"keys";
pub const KEY_ROOTS_META: &[u8] = b"roots";
pub const KEY_ISSUANCE_META: &[u8] = b"issuance";
pub const KEY_AUDIT_META: &[u8] = b"audit";
pub const KEY_AUDIT_PRUNED: &[u8] = b"audit_pruned";
pub const KEY_SINK_ACKS: &[u8] = b"sink_acks";
pub const KEY_ADMINS: &[u8] = b"admins";
/// The `proj_meta` keys this module owns.
pub const META_KEYS: &[&[u8]] = &[
    KEY_IDENTITY,
    KEY_KEYS_META,
    KEY_ROOTS_META,
    KEY_ISSUANCE_META,
    KEY_AUDIT_META,
    KEY_AUDIT_PRUNED,
    KEY_SINK_ACKS,
    KEY_ADMINS,
];

/// The row families this module owns, in a fixed order (snapshots and digests follow it).
pub const FAMILIES: &[&str] = &[
    FAMILY_CLIENT_AUTH,
    FAMILY_ENTRIES,
    FAMILY_ROLES,
    FAMILY_BINDINGS,
    FAMILY_DELEGATIONS,
    FAMILY_AGENTS,
    FAMILY_REVOCATIONS,
    FAMILY_KEYS,
    FAMILY_FEDERATIONS,
];

/// One stored row: where it lives and its bytes (`None`: delete it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub family: &'static str,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

fn prefixed(prefix: &[u8], rest: &str) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(rest.as_bytes());
    k
}

/// The bindings-family key of `(subject, role)`: all of a subject's roles are adjacent.
pub fn binding_key(subject: &Subject, role: &RoleName) -> Vec<u8> {
    let mut k = subject.key().into_bytes();
    k.push(0);
    k.extend_from_slice(role.as_str().as_bytes());
    k
}

/// The bindings-family key prefix of all of `subject`'s roles.
pub fn binding_prefix(subject: &Subject) -> Vec<u8> {
    let mut k = subject.key().into_bytes();
    k.push(0);
    k
}

pub const AGENT_PREFIX: &[u8] = b"a\0";
pub const REVOKED_TOKEN_PREFIX: &[u8] = b"t\0";
pub const REVOKED_SUBJECT_PREFIX: &[u8] = b"s\0";

fn put<T: serde::Serialize>(family: &'static str, key: Vec<u8>, tag: Tag, v: Option<&T>) -> Row {
    Row {
        family,
        key,
        value: v.map(|v| codec::encode(tag, v)),
    }
}

impl State {
    /// The row for `key` as the state holds it now, for the keys this module owns (`None` for
    /// the storage crate's own: meta, security, nodes, clients).
    pub fn row(&self, key: &ProjectionKey) -> Option<Row> {
        Some(match key {
            ProjectionKey::Meta
            | ProjectionKey::Security
            | ProjectionKey::Node(_)
            | ProjectionKey::Client(_) => return None,
            ProjectionKey::Identity => put(
                FAMILY_META,
                KEY_IDENTITY.to_vec(),
                Tag::IDENTITY_META,
                Some(&self.identity),
            ),
            ProjectionKey::ClientAuth(id) => put(
                FAMILY_CLIENT_AUTH,
                id.as_str().as_bytes().to_vec(),
                Tag::CLIENT_AUTH,
                self.client_auth.get(id).map(|a| (id, a)).as_ref(),
            ),
            ProjectionKey::Entry(id) => put(
                FAMILY_ENTRIES,
                id.as_str().as_bytes().to_vec(),
                Tag::ENTRY,
                self.entries.get(id),
            ),
            ProjectionKey::Role(name) => put(
                FAMILY_ROLES,
                name.as_str().as_bytes().to_vec(),
                Tag::ROLE,
                self.roles.get(name),
            ),
            ProjectionKey::Binding(subject, role) => {
                let bound = self
                    .bindings
                    .get(subject)
                    .is_some_and(|roles| roles.contains(role));
                put(
                    FAMILY_BINDINGS,
                    binding_key(subject, role),
                    Tag::BINDING,
                    bound.then_some(&(subject, role)),
                )
            }
            ProjectionKey::Delegation(id) => put(
                FAMILY_DELEGATIONS,
                id.as_str().as_bytes().to_vec(),
                Tag::DELEGATION,
                self.delegations.get(id),
            ),
            ProjectionKey::Agent(id) => put(
                FAMILY_AGENTS,
                prefixed(AGENT_PREFIX, id.as_str()),
                Tag::AGENT,
                self.agents.get(id),
            ),
            ProjectionKey::RevokedToken(jti) => put(
                FAMILY_REVOCATIONS,
                prefixed(REVOKED_TOKEN_PREFIX, jti),
                Tag::REVOKED_TOKEN,
                self.revoked_tokens.get(jti),
            ),
            ProjectionKey::NodeKey(kid) => put(
                FAMILY_KEYS,
                kid.as_bytes().to_vec(),
                Tag::NODE_KEY,
                self.keys.get(kid),
            ),
            ProjectionKey::Federation(td) => put(
                FAMILY_FEDERATIONS,
                td.as_str().as_bytes().to_vec(),
                Tag::FEDERATION,
                self.federations.get(td),
            ),
            ProjectionKey::RootsMeta => put(
                FAMILY_META,
                KEY_ROOTS_META.to_vec(),
                Tag::ROOTS_META,
                Some(&self.roots_meta),
            ),
            ProjectionKey::IssuanceMeta => put(
                FAMILY_META,
                KEY_ISSUANCE_META.to_vec(),
                Tag::ISSUANCE_META,
                Some(&self.issuance_meta),
            ),
            ProjectionKey::AuditMeta => put(
                FAMILY_META,
                KEY_AUDIT_META.to_vec(),
                Tag::AUDIT_META,
                Some(&self.audit_meta),
            ),
            ProjectionKey::AuditPruned => put(
                FAMILY_META,
                KEY_AUDIT_PRUNED.to_vec(),
                Tag::AUDIT_PRUNED,
                Some(&self.audit_pruned),
            ),
            // No row until a node reports a sink, and none once none does: a cluster without
            // sinks stores (and digests) exactly what it did before sinks reported.
            ProjectionKey::SinkAcks => put(
                FAMILY_META,
                KEY_SINK_ACKS.to_vec(),
                Tag::SINK_ACKS,
                (!self.sink_acks.by_node.is_empty()).then_some(&self.sink_acks),
            ),
            // No row until an admin certificate is recorded, and none once none is live.
            ProjectionKey::Admins => put(
                FAMILY_META,
                KEY_ADMINS.to_vec(),
                Tag::ADMINS,
                (!self.admins.by_name.is_empty()).then_some(&self.admins),
            ),
            ProjectionKey::KeysMeta => put(
                FAMILY_META,
                KEY_KEYS_META.to_vec(),
                Tag::KEYS_META,
                Some(&self.keys_meta),
            ),
            ProjectionKey::RevokedSubject(s) => put(
                FAMILY_REVOCATIONS,
                prefixed(REVOKED_SUBJECT_PREFIX, s),
                Tag::REVOKED_SUBJECT,
                self.revoked_subjects.get(s),
            ),
        })
    }

    /// Load one stored row of a family this module owns. Call [`State::rebuild_indexes`]
    /// after the last one.
    pub fn load_row(&mut self, family: &str, key: &[u8], value: &[u8]) -> Result<(), CodecError> {
        match family {
            FAMILY_META if key == KEY_IDENTITY => {
                self.identity = codec::decode::<IdentityMeta>(Tag::IDENTITY_META, value)?;
            }
            FAMILY_META if key == KEY_ROOTS_META => {
                self.roots_meta = codec::decode(Tag::ROOTS_META, value)?;
            }
            FAMILY_META if key == KEY_ISSUANCE_META => {
                self.issuance_meta = codec::decode(Tag::ISSUANCE_META, value)?;
            }
            FAMILY_META if key == KEY_AUDIT_META => {
                self.audit_meta = codec::decode(Tag::AUDIT_META, value)?;
            }
            FAMILY_META if key == KEY_AUDIT_PRUNED => {
                self.audit_pruned = codec::decode(Tag::AUDIT_PRUNED, value)?;
            }
            FAMILY_META if key == KEY_SINK_ACKS => {
                self.sink_acks = codec::decode(Tag::SINK_ACKS, value)?;
            }
            FAMILY_META if key == KEY_ADMINS => {
                self.admins = codec::decode(Tag::ADMINS, value)?;
            }
            FAMILY_META if key == KEY_KEYS_META => {
                self.keys_meta = codec::decode(Tag::KEYS_META, value)?;
            }
            FAMILY_FEDERATIONS => {
                let f: crate::federation::Federation = codec::decode(Tag::FEDERATION, value)?;
                self.federations.insert(f.trust_domain.clone(), f);
            }
            FAMILY_KEYS => {
                let k: crate::keys::NodeKey = codec::decode(Tag::NODE_KEY, value)?;
                self.keys.insert(k.kid.clone(), k);
            }
            FAMILY_CLIENT_AUTH => {
                let (id, auth): (ClientId, ClientAuth) = codec::decode(Tag::CLIENT_AUTH, value)?;
                self.client_auth.insert(id, auth);
            }
            FAMILY_ENTRIES => {
                let e: Entry = codec::decode(Tag::ENTRY, value)?;
                self.entries.insert(e.entry_id.clone(), e);
            }
            FAMILY_ROLES => {
                let r: Role = codec::decode(Tag::ROLE, value)?;
                self.roles.insert(r.name.clone(), r);
            }
            FAMILY_BINDINGS => {
                let (s, r): (Subject, RoleName) = codec::decode(Tag::BINDING, value)?;
                self.bindings.entry(s).or_default().insert(r);
            }
            FAMILY_DELEGATIONS => {
                let d: Delegation = codec::decode(Tag::DELEGATION, value)?;
                self.delegations.insert(d.delegation_id.clone(), d);
            }
            FAMILY_AGENTS => {
                let a: Agent = codec::decode(Tag::AGENT, value)?;
                self.agents.insert(a.spiffe_id.clone(), a);
            }
            FAMILY_REVOCATIONS if key.starts_with(REVOKED_TOKEN_PREFIX) => {
                let t: RevokedToken = codec::decode(Tag::REVOKED_TOKEN, value)?;
                self.revoked_tokens.insert(t.jti.clone(), t);
            }
            FAMILY_REVOCATIONS => {
                let s: RevokedSubject = codec::decode(Tag::REVOKED_SUBJECT, value)?;
                self.revoked_subjects.insert(s.subject.clone(), s);
            }
            _ => {}
        }
        Ok(())
    }
}
